"""A model from elsewhere through every stage: a tiny Qwen2 with its own ChatML template and BOS
(tests/foreign_models.py) goes SFT -> reward -> PPO -> eval on small local files in the public
layouts (TL;DR prompt/completion and UltraFeedback message lists for SFT, HH transcripts and TL;DR
pairs for the reward model, HH transcripts as PPO's prompts, UltraFeedback records as development and
evaluation prompts), and its format survives into every artifact: the template, <|im_start|>/<|im_end|>,
BOS once, and answers that end at <|im_end|> (not only at EOS) in PPO's rollouts."""

import json
import random

import pytest
import torch
from transformers import AutoTokenizer

from pipeline.artifacts.store import read_manifest
from tests.foreign_models import CHATML, build_tiny_chatml_model

COLOURS = ["red", "green", "blue", "yellow", "black", "white"]
THINGS = ["apple", "river", "castle", "horse", "sword", "crown", "letter", "candle", "garden", "ship"]


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def hh(*turns: str) -> str:
    """An HH-RLHF transcript: alternating Human/Assistant turns."""
    return "".join(f"\n\n{'Human' if i % 2 == 0 else 'Assistant'}: {t}" for i, t in enumerate(turns))


def uf(question: str, chosen: str, rejected: str) -> dict:
    """An UltraFeedback-binarized record: a prompt and two message lists that share it."""
    user = {"role": "user", "content": question}
    return {"prompt": question, "chosen": [user, {"role": "assistant", "content": chosen}],
            "rejected": [user, {"role": "assistant", "content": rejected}]}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Each stage's input in a public layout: SFT from TL;DR prompt/completion (validation: UltraFeedback),
    reward pairs from HH transcripts plus TL;DR prompt/chosen/rejected, PPO prompts from HH transcripts
    (the conversation up to the last assistant turn), development and evaluation prompts from
    UltraFeedback records (the chosen answer is the reference)."""
    d = tmp_path_factory.mktemp("foreign_data")
    rng = random.Random(0)
    facts = [(t, c) for t in THINGS for c in COLOURS]
    rng.shuffle(facts)
    q = "What colour is the {}?".format
    sft = [{"prompt": q(t), "completion": f"The {t} is {c}."} for t, c in facts[:50]]
    sft_val = [uf(q(t), f"The {t} is {c}.", f"No {t} here.") for t, c in facts[50:58]]
    hh_pairs = [{"chosen": hh(q(t), f"The {t} is {c}."), "rejected": hh(q(t), f"No {t} here, {c}!")}
                for t, c in facts[:20]]
    tldr_pairs = [{"prompt": q(t), "chosen": f"The {t} is {c}.", "rejected": f"{c} {c} {c}"} for t, c in facts[20:40]]
    # multi-turn transcripts: PPO's prompt is everything up to the last assistant turn
    prompts = [{"chosen": hh("Hello.", "Hi! Ask me about colours.", q(t), "It is red."),
                "rejected": hh("Hello.", "Hi! Ask me about colours.", q(t), "Go away.")} for t in THINGS]
    golds = [uf(q(t), f"The {t} is {c}.", f"No {t}.") for t, c in facts[:6]]
    return {"sft": write_jsonl(d / "sft.jsonl", sft), "sft_val": write_jsonl(d / "sft_val.jsonl", sft_val),
            "pairs": write_jsonl(d / "hh.jsonl", hh_pairs) + "+" + write_jsonl(d / "tldr.jsonl", tldr_pairs),
            "prompts": write_jsonl(d / "prompts.jsonl", prompts), "golds": write_jsonl(d / "golds.jsonl", golds)}


@pytest.fixture(scope="module")
def chain(tmp_path_factory, files):
    """(run dir, PPO's rollouts as (prompt ids, response ids, mask, has_eos)) after sft, reward, ppo and eval."""
    import stages.ppo.trainer as ppo_trainer
    from stages.eval.stage import main as eval_main
    from stages.ppo.stage import main as ppo_main
    from stages.reward.stage import main as reward_main
    from stages.reward.statistics import main as stats_main
    from stages.sft.stage import main as sft_main

    tmp = tmp_path_factory.mktemp("foreign_chain")
    base = build_tiny_chatml_model(tmp / "qwen2-chatml")
    common = ["--config", "configs/test.yaml", f"run.out_dir={tmp / 'runs'}", "run.name=f",
              f"ppo.data={files['prompts']}", f"ppo.eval_data={files['golds']}", "reward.stats_prompts=4"]
    torch.manual_seed(0)
    assert sft_main([*common, f"sft.init_from={base}", f"sft.data={files['sft']}", f"sft.val_data={files['sft_val']}",
                     "sft.max_steps=30", "sft.lr=0.01", "sft.eval_every=30", "sft.save_every=30", "sft.log_every=10",
                     "sft.gold_prompts=2", "sft.num_samples=1"]) == 0
    assert reward_main([*common, f"reward.data={files['pairs']}", "reward.max_steps=4", "reward.eval_every=4",
                        "reward.save_every=4", "reward.log_every=2"]) == 0
    assert stats_main([*common, "ppo.max_new_tokens=10", "ppo.forward_batch_size=8"]) == 0  # as PPO samples below
    rollouts = []
    real_generate = ppo_trainer.generate

    def recording_generate(policy, q_ids, q_mask, *args):
        out = real_generate(policy, q_ids, q_mask, *args)
        rollouts.append((q_ids.cpu(), q_mask.cpu(), *(t.cpu() for t in out)))
        return out

    ppo_trainer.generate = recording_generate
    try:
        assert ppo_main([*common, "ppo.total_episodes=16", "ppo.batch_size=8", "ppo.num_minibatches=2",
                         "ppo.max_new_tokens=10", "ppo.forward_batch_size=8"]) == 0
    finally:
        ppo_trainer.generate = real_generate
    eval_main([*common, f"eval.prompts={files['golds']}", "eval.lm_data=none", "eval.num_prompts=4",
               "eval.max_new_tokens=10", "eval.batch_size=4"])
    return tmp / "runs" / "f", rollouts


@pytest.mark.slow
def test_template_special_tokens_and_bos_survive_into_every_artifact(chain):
    run, _ = chain
    for stage in ("sft", "reward", "ppo"):
        tok = AutoTokenizer.from_pretrained(run / stage)
        assert tok.chat_template == CHATML, stage
        assert {"<|im_start|>", "<|im_end|>"} <= set(tok.all_special_tokens), stage
        assert tok.bos_token == "<|startoftext|>" and tok.eos_token == "<|endoftext|>", stage
        assert tok.pad_token_id not in (tok.eos_token_id, tok.convert_tokens_to_ids("<|im_end|>")), stage
        ids = tok.apply_chat_template([{"role": "user", "content": "Hi?"}], add_generation_prompt=True,
                                      tokenize=True, return_dict=False)
        assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1, stage
    assert "<|user|>" not in AutoTokenizer.from_pretrained(run / "sft").get_vocab()  # ours was not added
    # SFT taught the model to end its answers with <|im_end|>, and the stage counts that as an ended answer.
    assert read_manifest(run / "sft")["metrics"]["eos_rate"] > 0
    assert read_manifest(run / "eval")["status"] == "complete"


@pytest.mark.slow
def test_ppo_renders_prompts_with_chatml_and_ends_answers_at_im_end(chain):
    run, rollouts = chain
    tok = AutoTokenizer.from_pretrained(run / "ppo")
    end, eos = tok.convert_tokens_to_ids("<|im_end|>"), tok.eos_token_id
    assert rollouts
    ended = 0
    for q_ids, q_mask, resp, mask, has_eos in rollouts:
        for q, qm, r, m, e in zip(q_ids, q_mask, resp, mask, has_eos):
            prompt = tok.decode(q[qm.bool()])
            assert prompt.startswith("<|startoftext|><|im_start|>user\nHello.<|im_end|>\n<|im_start|>assistant\n"
                                     "Hi! Ask me about colours.<|im_end|>\n<|im_start|>user\nWhat colour is the ")
            assert prompt.endswith("?<|im_end|>\n<|im_start|>assistant\n")  # HH's last answer is not in it
            answer = r[m].tolist()
            assert end not in answer[:-1] and eos not in answer[:-1]  # the answer ends at its first turn end
            assert bool(e) == (answer[-1] in (end, eos))
            ended += answer[-1] == end
    assert ended > 0  # after SFT the policy closes its answers with <|im_end|>, and PPO counts that as their end


def test_make_runs_no_pretraining_or_demo_data_for_a_given_model(files, tmp_path):
    import subprocess

    base = tmp_path / "model"  # the plan reads the config only: the folder need not exist for -n
    args = ["make", "-n", "sft", "reward", "ppo", f"sft.init_from={base}", f"sft.data={files['sft']}",
            f"sft.val_data={files['sft_val']}", f"reward.data={files['pairs']}", f"ppo.data={files['prompts']}",
            f"ppo.eval_data={files['golds']}", f"eval.prompts={files['golds']}", f"OUT={tmp_path}"]
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    assert "stages.sft" in out and "stages.reward" in out and "stages.ppo" in out
    assert "stages.pretrain" not in out and "data.demo" not in out
