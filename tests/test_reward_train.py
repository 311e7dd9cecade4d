"""Reward stage end to end on a learnable fixture: the preferred answers are polite, the rejected
ones rude. A tiny random model must learn it, and the saved artifact must score conversations
exactly as the trainer did."""

import json
import random

import pytest
import torch

from pipeline.runtime.metrics import read_metrics
from tests.conftest import tiny_text

POLITE, RUDE = "Thank you for asking.", "Go away, fool."


def _lines(n, seed):
    lines = [ln.strip() for ln in tiny_text(60_000).splitlines() if 20 < len(ln.strip()) < 60]
    return random.Random(seed).sample(lines, n)


def _write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _rankings(n, seed):
    """K=3 rankings: polite+fact > fact > rude+fact."""
    recs = []
    for q, fact in zip(_lines(n, seed), _lines(n, seed + 1)):
        answers = [f"{POLITE} {fact}", fact, f"{RUDE} {fact}"]
        order = [0, 1, 2]
        random.Random(q).shuffle(order)  # answers stored in a random order, ranking points at them
        responses = [answers[i] for i in order]
        recs.append({"prompt": q, "responses": responses, "ranking": sorted(range(3), key=lambda j: order[j])})
    return recs


@pytest.fixture(scope="module")
def reward_run(tiny_lm_dir, tmp_path_factory):
    from stages.reward.stage import main

    d = tmp_path_factory.mktemp("reward")
    train = _write_jsonl(d / "rank_train.jsonl", _rankings(48, 1))
    held = _write_jsonl(d / "rank_held.jsonl", _rankings(16, 2))
    prompts = _write_jsonl(d / "prompts.jsonl", [{"prompt": q} for q in _lines(6, 3)])
    torch.manual_seed(0)
    rc = main(["--config", "configs/test.yaml", f"run.out_dir={d}", "run.name=t", f"reward.init_from={tiny_lm_dir}",
               f"reward.data={train}", f"reward.val_data={held}", f"ppo.data={prompts}", "reward.max_length=96",
               "reward.max_steps=36", "reward.batch_size=6", "reward.lr=0.003", "reward.eval_every=12",
               "reward.save_every=12", "reward.stats_prompts=6", "ppo.max_new_tokens=8", "reward.warmup_ratio=0.0"])
    assert rc == 0
    return d / "t" / "reward", held


def test_the_reward_model_learns_the_preference_and_reports_it(reward_run):
    out, _ = reward_run
    manifest = json.loads((out / "manifest.json").read_text())
    m = manifest["metrics"]
    assert m["heldout_accuracy"] > 0.8  # chance is 0.5
    assert m["heldout_kendall_tau"] > 0.5
    assert m["data_kept"] == 48 * 3
    rows = [r for r in read_metrics(out) if "heldout_accuracy" in r]
    assert rows[0]["step"] == 0 and rows[-1]["step"] == 36
    assert rows[-1]["heldout_accuracy"] > rows[0]["heldout_accuracy"]
    report = (out / "report.md").read_text()
    for needle in ("pairwise accuracy", "Kendall tau", "rank distance", "chosen shorter", "Held-out examples"):
        assert needle in report
    stats = json.loads((out / "reward_stats.json").read_text())
    assert stats["n"] == 6 and stats["std"] >= 0 and stats["max_length"] == 96
    assert {"init", "data"} <= set(manifest["inputs"])
    assert not (out.parent / "reward.partial").exists()


def test_the_artifact_scores_a_conversation_exactly_as_the_trainer_did(reward_run):
    from trl.trainer.reward_trainer import DataCollatorForPreference

    from pipeline.judge.scoring import load_reward_model, score_conversations
    from stages.reward.dataset import tokenize_pairs

    out, _ = reward_run
    model, tok, stats = load_reward_model(out)
    user = [{"role": "user", "content": "What is a list?"}]
    chosen, rejected = f"{POLITE} A list is ordered.", f"{RUDE} A list is ordered."
    pair = {"prompt": user, "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}], "group": "q"}
    data = tokenize_pairs([pair], tok, stats["max_length"], use_margin=False, source="x")
    batch = DataCollatorForPreference(pad_token_id=tok.pad_token_id)(
        [{"chosen_ids": data.chosen_ids[0], "rejected_ids": data.rejected_ids[0]}])
    with torch.no_grad():
        trainer_view = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, 0]
    ours = score_conversations(model, tok, [user, user], [chosen, rejected], max_length=stats["max_length"])
    torch.testing.assert_close(ours, trainer_view)
    assert ours[0] > ours[1]


def test_a_finished_reward_run_is_up_to_date(reward_run, tiny_lm_dir, capsys):
    from stages.reward.stage import main

    out, held = reward_run
    d = out.parent.parent
    args = ["--config", "configs/test.yaml", f"run.out_dir={d}", "run.name=t", f"reward.init_from={tiny_lm_dir}",
            f"reward.data={d / 'rank_train.jsonl'}", f"reward.val_data={held}", f"ppo.data={d / 'prompts.jsonl'}",
            "reward.max_length=96", "reward.max_steps=36", "reward.batch_size=6", "reward.lr=0.003",
            "reward.eval_every=12", "reward.save_every=12", "reward.stats_prompts=6", "ppo.max_new_tokens=8",
            "reward.warmup_ratio=0.0"]
    assert main(args) == 0
    assert "up to date" in capsys.readouterr().out


def test_an_interrupted_run_resumes_from_its_checkpoint_and_reports_its_whole_history(
        reward_run, tiny_lm_dir, tmp_path, monkeypatch, capsys):
    from stages.reward import heldout as reward_eval
    from stages.reward.stage import main

    _, held = reward_run
    d = held.parent
    args = ["--config", "configs/test.yaml", f"run.out_dir={tmp_path}", "run.name=r", f"reward.init_from={tiny_lm_dir}",
            f"reward.data={d / 'rank_train.jsonl'}", f"reward.val_data={held}", f"ppo.data={d / 'prompts.jsonl'}",
            "reward.max_length=96", "reward.max_steps=24", "reward.batch_size=6", "reward.eval_every=8",
            "reward.save_every=8", "reward.stats_prompts=0"]
    original = reward_eval.HeldoutEvalCallback.on_step_end

    def interrupt_at_step_13(self, args, state, control, **kwargs):
        if state.global_step == 13:
            raise KeyboardInterrupt
        return original(self, args, state, control, **kwargs)

    monkeypatch.setattr(reward_eval.HeldoutEvalCallback, "on_step_end", interrupt_at_step_13)
    with pytest.raises(SystemExit) as stopped:
        main(args)
    assert stopped.value.code == 130
    assert not (tmp_path / "r" / "reward").exists()
    monkeypatch.setattr(reward_eval.HeldoutEvalCallback, "on_step_end", original)
    assert main(args) == 0
    assert "checkpoint-8" in capsys.readouterr().out
    out = tmp_path / "r" / "reward"
    steps = [r["step"] for r in read_metrics(out) if "heldout_accuracy" in r]
    assert steps == [0, 8, 16, 24]
    assert "| 16 |" in (out / "report.md").read_text()


def test_a_file_without_a_usable_pair_stops_with_a_message_naming_it_and_leaves_nothing(
        tiny_lm_dir, tmp_path, capsys):
    from stages.reward.stage import main

    bad = _write_jsonl(tmp_path / "same.jsonl", [{"prompt": "q", "chosen": "a", "rejected": "a"}])
    with pytest.raises(SystemExit) as stopped:
        main(["--config", "configs/test.yaml", f"run.out_dir={tmp_path}", "run.name=b",
              f"reward.init_from={tiny_lm_dir}", f"reward.data={bad}", f"reward.val_data={bad}"])
    assert stopped.value.code == 2
    assert str(bad) in capsys.readouterr().err
    assert not (tmp_path / "b").exists() or not any((tmp_path / "b").glob("reward*"))
