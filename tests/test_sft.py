"""The SFT stage: assistant-only loss, learning on held-out chats, a reloadable chat model,
LoRA adapter + merged weights, and clear errors on bad input."""

import json
import random

import pytest
import torch

from pipeline.artifacts.metrics import read_metrics
from pipeline.config.loader import load_config
from pipeline.errors import UserError
from pipeline.lm.tokenizer import load_tokenizer

COLOURS = ["red", "green", "blue", "yellow", "black", "white"]
THINGS = ["apple", "river", "castle", "horse", "sword", "crown", "letter", "candle", "garden", "ship",
          "tower", "mirror", "bell", "bridge", "cloak", "lantern"]


def conversation(thing: str, colour: str) -> dict:
    return {"messages": [{"role": "user", "content": f"What colour is the {thing}?"},
                         {"role": "assistant", "content": f"The {thing} is {colour}."}]}


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture(scope="module")
def chat_files(tmp_path_factory):
    """A small instruction set with one learnable pattern: 80 train, 8 validation chats."""
    rng = random.Random(0)
    d = tmp_path_factory.mktemp("sft_data")
    pairs = [(t, c) for t in THINGS for c in COLOURS]
    rng.shuffle(pairs)
    train = [conversation(t, c) for t, c in pairs[:80]]
    val = [conversation(t, c) for t, c in pairs[80:88]]
    return write_jsonl(d / "train.jsonl", train), write_jsonl(d / "val.jsonl", val)


def sft_args(out_dir, lm_dir, files, *extra):
    train, val = files
    return ["--config", "configs/test.yaml", f"run.out_dir={out_dir}", f"sft.init_from={lm_dir}",
            f"sft.data={train}", f"sft.val_data={val}", "sft.max_steps=40", "sft.eval_every=10",
            "sft.save_every=20", "sft.lr=0.003", "sft.batch_size=8", "sft.gold_prompts=4", "sft.num_samples=2",
            "sft.max_new_tokens=12", *extra]


def run_sft(argv):
    from stages.sft.stage import main

    torch.manual_seed(0)
    return main(argv)


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory, tiny_lm_dir, chat_files):
    out = tmp_path_factory.mktemp("runs")
    assert run_sft(sft_args(out, tiny_lm_dir, chat_files)) == 0
    return out / "test" / "sft"


def test_only_assistant_tokens_carry_loss(tmp_path, tiny_lm_dir, chat_files):
    from pipeline.artifacts.store import ArtifactWriter
    from pipeline.lm.hf_glue import MetricsCallback
    from pipeline.lm.model import load_causal_lm
    from stages.sft.dataset import screen_splits
    from stages.sft.stage import build_trainer

    cfg = load_config("configs/test.yaml", [f"run.out_dir={tmp_path}"])
    tok, _ = load_tokenizer(str(tiny_lm_dir))
    model = load_causal_lm(str(tiny_lm_dir))
    records = [json.loads(line) for line in chat_files[0].read_text().splitlines()][:8]
    writer = ArtifactWriter(cfg.stage_dir("sft"), "sft")
    screened, _ = screen_splits(records, records, tok, cfg.sft.max_length)
    trainer = build_trainer(cfg, model, tok, screened, screened, writer,
                            MetricsCallback(writer.out_dir, desc="sft", enabled=False), [])
    batch = next(iter(trainer.get_train_dataloader()))
    answers = {r["messages"][1]["content"] + tok.eos_token for r in records}
    assistant_id = tok.convert_tokens_to_ids("<|assistant|>")
    for ids, labels in zip(batch["input_ids"], batch["labels"]):
        trained = ids[labels != -100]
        assert tok.decode(trained) in answers  # exactly the answer and its EOS, nothing else
        start = (ids == assistant_id).nonzero()[0].item()
        assert (labels[:start + 1] == -100).all()  # the question and the role tag carry no loss


def test_screening_counts_truncated_and_dropped_conversations(tiny_lm_dir):
    from stages.sft.dataset import screen, screen_splits

    tok, _ = load_tokenizer(str(tiny_lm_dir))
    long_answer = {"messages": [{"role": "user", "content": "Tell me."},
                                {"role": "assistant", "content": "word " * 200}]}
    long_question = {"messages": [{"role": "user", "content": "why " * 200},
                                  {"role": "assistant", "content": "Because."}]}
    no_answer = {"messages": [{"role": "user", "content": "Hello?"}]}
    ok = conversation("apple", "red")
    s = screen([ok, long_answer, long_question, no_answer], tok, max_length=64)
    assert [r["messages"] for r in s.records] == [ok["messages"], long_answer["messages"]]
    assert (s.truncated, s.dropped_too_long, s.no_assistant, s.total) == (1, 1, 1, 4)
    with pytest.raises(UserError, match="no usable SFT conversations"):
        screen_splits([long_question, no_answer], [ok], tok, max_length=64)


def test_sft_learns_and_writes_a_reloadable_chat_model(sft_run, chat_files):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    manifest = json.loads((sft_run / "manifest.json").read_text())
    m = manifest["metrics"]
    # Held-out assistant-token loss: clearly below the starting model's on the same chats.
    assert m["eval_loss"] < m["pretrained_eval_loss"] - 1.0
    evals = [r["eval_loss"] for r in read_metrics(sft_run) if "eval_loss" in r]
    assert len(evals) >= 4 and evals[-1] < evals[0]
    assert {"eval_ppl", "loss", "tokens_per_s"} <= {k for r in read_metrics(sft_run) for k in r}
    assert m["val_used"] == 8 and m["train_truncated"] == 0 and 0 <= m["gold_score"] <= 1
    # Inputs record the starting model and the data files by content.
    assert manifest["inputs"]["model"]["fingerprint"]
    assert manifest["inputs"]["data"]["train"]["path"] == str(chat_files[0])
    assert "sft, temperature 0.7" in (sft_run / "samples.md").read_text()
    assert not (sft_run / "training_args.bin").exists()

    tok = AutoTokenizer.from_pretrained(sft_run)
    model = AutoModelForCausalLM.from_pretrained(sft_run)
    prompt = tok.apply_chat_template([{"role": "user", "content": "What colour is the apple?"}],
                                     add_generation_prompt=True, return_tensors="pt", return_dict=True)
    assert tok.decode(prompt["input_ids"][0]).endswith("<|assistant|>")
    out = model.generate(**prompt, max_new_tokens=8, do_sample=False)
    answer = tok.decode(out[0, prompt["input_ids"].shape[1]:], skip_special_tokens=True)
    assert answer.strip().startswith("The")  # answers in the taught form, not a continuation


def test_rerun_with_same_config_and_inputs_is_a_no_op(sft_run, tiny_lm_dir, chat_files, capsys):
    before = (sft_run / "manifest.json").read_text()
    assert run_sft(sft_args(sft_run.parents[1], tiny_lm_dir, chat_files)) == 0
    assert "up to date" in capsys.readouterr().out
    assert (sft_run / "manifest.json").read_text() == before


def test_lora_saves_adapter_and_merged_model_with_the_same_logits(tmp_path, tiny_lm_dir, chat_files):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    args = sft_args(tmp_path, tiny_lm_dir, chat_files, "sft.max_steps=6", "sft.eval_every=3",
                    "sft.lora.enabled=true", "sft.lora.r=4", "sft.lora.dropout=0.0")
    assert run_sft(args) == 0
    art = tmp_path / "test" / "sft"
    assert (art / "adapter" / "adapter_config.json").is_file()
    ids = torch.tensor([[3, 40, 41, 42, 1, 4, 50, 51]])
    merged = AutoModelForCausalLM.from_pretrained(art).eval()
    base = AutoModelForCausalLM.from_pretrained(tiny_lm_dir).eval()
    with torch.no_grad():
        base_logits = base(ids).logits
        adapted = PeftModel.from_pretrained(base, art / "adapter").eval()
        assert torch.allclose(merged(ids).logits, adapted(ids).logits, atol=1e-4)
        assert not torch.allclose(merged(ids).logits, base_logits, atol=1e-4)  # the adapter did train


def test_missing_pretrain_artifact_names_the_make_target(tmp_path, chat_files, capsys):
    from stages.sft.stage import main

    train, val = chat_files
    with pytest.raises(SystemExit) as exit_info:
        main(["--config", "configs/test.yaml", f"run.out_dir={tmp_path}", f"sft.data={train}"])
    assert exit_info.value.code == 2
    assert "make pretrain" in capsys.readouterr().err


def test_data_without_usable_conversations_is_a_clear_error(tmp_path, tiny_lm_dir, chat_files, capsys):
    from stages.sft.stage import main

    too_long = {"messages": [{"role": "user", "content": "why " * 300}, {"role": "assistant", "content": "No."}]}
    bad = write_jsonl(tmp_path / "bad.jsonl", [too_long] * 3)
    with pytest.raises(SystemExit) as exit_info:
        main(sft_args(tmp_path, tiny_lm_dir, (bad, chat_files[1])))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "no usable SFT conversations" in err and "3 have no assistant token within" in err
    assert not (tmp_path / "test" / "sft").exists()


def test_packing_keeps_attention_inside_each_conversation(tmp_path, tiny_lm_dir, chat_files):
    from pipeline.artifacts.store import ArtifactWriter
    from pipeline.lm.hf_glue import MetricsCallback
    from pipeline.lm.model import load_causal_lm
    from stages.sft.dataset import screen_splits
    from stages.sft.stage import build_trainer

    cfg = load_config("configs/test.yaml", [f"run.out_dir={tmp_path}", "sft.packing=true"])
    tok, _ = load_tokenizer(str(tiny_lm_dir))
    model = load_causal_lm(str(tiny_lm_dir)).eval()
    records = [json.loads(line) for line in chat_files[0].read_text().splitlines()][:8]
    writer = ArtifactWriter(cfg.stage_dir("sft"), "sft")
    screened, _ = screen_splits(records, records, tok, cfg.sft.max_length)
    trainer = build_trainer(cfg, model, tok, screened, screened, writer,
                            MetricsCallback(writer.out_dir, desc="sft", enabled=False), [])
    batch = next(iter(trainer.get_train_dataloader()))
    positions = batch["position_ids"][0]
    starts = (positions == 0).nonzero().flatten().tolist() + [len(positions)]
    assert len(starts) > 2  # several conversations share one row
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits
        alone = torch.cat([model(input_ids=batch["input_ids"][:, a:b]).logits
                           for a, b in zip(starts, starts[1:])], dim=1)
    assert torch.allclose(packed, alone, atol=1e-5)


def test_qlora_needs_a_cuda_gpu_and_bitsandbytes():
    from pipeline.config.schema import LoraSection
    from pipeline.lm.hf_glue import quantization_config

    assert quantization_config(LoraSection(enabled=True, qlora=False)) is None
    try:
        import bitsandbytes  # noqa: F401
        has_bnb = True
    except ImportError:
        has_bnb = False
    if torch.cuda.is_available() and has_bnb:
        assert quantization_config(LoraSection(enabled=True, qlora=True)).load_in_4bit
    else:
        with pytest.raises(UserError, match="CUDA GPU|bitsandbytes"):
            quantization_config(LoraSection(enabled=True, qlora=True))


def test_a_foreign_model_without_chat_template_is_made_chat_ready(tmp_path, chat_files):
    from conftest import tiny_text
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        LlamaConfig,
        LlamaForCausalLM,
        PreTrainedTokenizerFast,
    )

    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    raw.train_from_iterator([tiny_text(20_000)], trainers.BpeTrainer(
        vocab_size=300, special_tokens=["</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    foreign_tok = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="</s>")  # no PAD, roles or template
    torch.manual_seed(0)
    foreign = LlamaForCausalLM(LlamaConfig(vocab_size=len(foreign_tok), hidden_size=32, intermediate_size=64,
                                           num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=128))
    lm = tmp_path / "foreign"
    foreign.save_pretrained(lm)
    foreign_tok.save_pretrained(lm)

    assert run_sft(sft_args(tmp_path, lm, chat_files, "sft.max_steps=3", "sft.eval_every=3")) == 0
    art = tmp_path / "test" / "sft"
    changes = json.loads((art / "manifest.json").read_text())["metrics"]["tokenizer_changes"]
    assert any("chat template" in c for c in changes) and any("resized embeddings" in c for c in changes)
    tok = AutoTokenizer.from_pretrained(art)
    model = AutoModelForCausalLM.from_pretrained(art)
    assert model.get_input_embeddings().num_embeddings == len(tok) > len(foreign_tok)
    assert tok.pad_token_id != tok.eos_token_id and "<|assistant|>" in tok.get_vocab()


def test_a_killed_run_resumes_from_its_last_checkpoint(tmp_path, tiny_lm_dir, chat_files, monkeypatch, capsys):
    import stages.sft.stage as sft
    from tests.stage_fixtures import StepsRun, StopAtStep, with_callbacks

    argv = sft_args(tmp_path, tiny_lm_dir, chat_files, "sft.max_steps=10", "sft.save_every=5", "sft.eval_every=5",
                    "sft.log_every=1")
    with_callbacks(monkeypatch, sft, StopAtStep(7))
    with pytest.raises(SystemExit):
        run_sft(argv)
    partial = tmp_path / "test" / "sft.partial"
    assert (partial / "checkpoints" / "checkpoint-5").is_dir() and not (tmp_path / "test" / "sft").exists()

    steps_run = StepsRun()
    with_callbacks(monkeypatch, sft, steps_run)
    assert run_sft(argv) == 0
    assert "resuming from" in capsys.readouterr().out
    assert steps_run.steps == [6, 7, 8, 9, 10]  # continued after checkpoint-5, not from scratch
    rows = read_metrics(tmp_path / "test" / "sft")
    train_steps = [r["step"] for r in rows if "loss" in r]
    assert train_steps == list(range(1, 11))  # one uninterrupted record: steps 6-7 not logged twice
    assert json.loads((tmp_path / "test" / "sft" / "manifest.json").read_text())["metrics"]["steps"] == 10


def test_checkpoints_from_other_inputs_are_refused_not_resumed(tmp_path):
    from pipeline.artifacts.store import start_artifact
    from pipeline.errors import UserError

    def start(fingerprint, resume=True):
        return start_artifact(tmp_path / "sft", "sft", resume=resume, key={
            "config": {"sft": {"lr": 1e-3}}, "inputs": {"model": {"fingerprint": fingerprint}}})

    writer = start("a")
    (writer.checkpoint_dir / "checkpoint-5").mkdir()
    (writer.checkpoint_dir / "checkpoint-5" / "model.safetensors").write_text("w")
    assert (start("a").checkpoint_dir / "checkpoint-5").is_dir()  # same key: resumed
    with pytest.raises(UserError, match=r"inputs\.model\.fingerprint: a -> b.*sft\.resume=false"):
        start("b")
    assert (writer.checkpoint_dir / "checkpoint-5").is_dir()  # refused, and nothing discarded
    assert not (start("b", resume=False).checkpoint_dir / "checkpoint-5").exists()  # the way out: start fresh


def test_without_val_data_a_seeded_share_of_the_data_is_held_out(tmp_path, chat_files):
    from stages.sft.dataset import load_sft_splits

    cfg = load_config("configs/test.yaml", [f"run.out_dir={tmp_path}", f"sft.data={chat_files[0]}",
                                            "sft.val_fraction=0.1"])
    train, val, inputs = load_sft_splits(cfg)
    assert (len(train), len(val)) == (72, 8)
    assert not {json.dumps(r) for r in train} & {json.dumps(r) for r in val}
    assert inputs["val"] == {"split_of": "train", "fraction": 0.1, "seed": cfg.run.seed}
    assert list(load_sft_splits(cfg)[1]) == list(val)  # the same split every time
