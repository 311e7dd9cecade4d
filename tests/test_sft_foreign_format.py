"""SFT on a model that brings its own chat format: TRL trains on exactly the assistant's tokens the
template marks (the answer and its <|im_end|>), `sft.assistant_only_loss=false` trains on everything,
and a template whose assistant turns cannot be found stops the stage in one line naming that option."""

import json

import pytest

from pipeline.config.loader import load_config
from tests.foreign_models import build_tiny_chatml_model, build_tiny_llama3_model

CHATS = [{"messages": [{"role": "user", "content": f"What colour is the {t}?"},
                       {"role": "assistant", "content": f"The {t} is red."}]}
         for t in ("apple", "river", "castle", "horse", "sword", "crown", "letter", "candle")]


@pytest.fixture(scope="module")
def chatml_dir(tmp_path_factory):
    return build_tiny_chatml_model(tmp_path_factory.mktemp("chatml"))


@pytest.fixture(scope="module")
def llama3_dir(tmp_path_factory):
    return build_tiny_llama3_model(tmp_path_factory.mktemp("llama3"))


def first_batch(tmp_path, model_dir, *overrides):
    from pipeline.artifacts.store import ArtifactWriter
    from pipeline.lm.hf_glue import MetricsCallback
    from stages.sft.dataset import screen_splits
    from stages.sft.stage import build_trainer, load_model

    cfg = load_config("configs/test.yaml", [f"run.out_dir={tmp_path}", *overrides])
    model, tok, _, new_ids = load_model(str(model_dir), cfg)
    train, val = screen_splits(CHATS, CHATS, tok, cfg.sft.max_length, cfg.sft.assistant_only_loss)
    writer = ArtifactWriter(cfg.stage_dir("sft"), "sft")
    trainer = build_trainer(cfg, model, tok, train, val, writer,
                            MetricsCallback(writer.out_dir, desc="sft", enabled=False), new_ids)
    return tok, next(iter(trainer.get_train_dataloader()))


@pytest.mark.parametrize("family, turn_end, start", [
    ("chatml", "<|im_end|>", "<|startoftext|><|im_start|>user\n"),
    ("llama3", "<|eot_id|>", "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n"),
])
def test_trl_trains_on_the_answer_and_its_turn_end_only(tmp_path, request, family, turn_end, start):
    tok, batch = first_batch(tmp_path, request.getfixturevalue(f"{family}_dir"))
    answers = {c["messages"][1]["content"] + turn_end for c in CHATS}
    for ids, labels in zip(batch["input_ids"], batch["labels"]):
        assert tok.decode(ids[labels != -100]) in answers
        real = ids[ids != tok.pad_token_id]
        assert tok.decode(real).startswith(start)
        assert (real == tok.bos_token_id).sum() == 1  # the Llama-3 tokenizer also adds BOS on encode: not twice


def test_assistant_only_loss_off_trains_on_the_whole_conversation(tmp_path, chatml_dir):
    tok, batch = first_batch(tmp_path, chatml_dir, "sft.assistant_only_loss=false")
    for ids, labels in zip(batch["input_ids"], batch["labels"]):
        real = ids != tok.pad_token_id
        assert (labels[real] == ids[real]).all()


def test_a_template_without_readable_assistant_turns_is_refused_in_one_line(tmp_path, chatml_dir, capsys):
    import shutil

    from stages.sft.stage import main

    model_dir = tmp_path / "odd"
    shutil.copytree(chatml_dir, model_dir)
    # Every assistant turn is rendered as "ok": the answer's text is nowhere to be found.
    (model_dir / "chat_template.jinja").write_text(
        "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + (m['content'] if m['role'] != 'assistant' "
        "else 'ok') + '<|im_end|>\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
    data = tmp_path / "chats.jsonl"
    data.write_text("".join(json.dumps(c) + "\n" for c in CHATS))
    with pytest.raises(SystemExit) as exit_info:
        main(["--config", "configs/test.yaml", f"run.out_dir={tmp_path}", f"sft.init_from={model_dir}",
              f"sft.data={data}", f"sft.val_data={data}"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "sft.assistant_only_loss=false" in err[0]
    assert not (tmp_path / "test" / "sft").exists()
