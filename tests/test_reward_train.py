"""Reward stage end to end on a learnable fixture: the preferred answers are polite, the rejected
ones rude. A tiny random model must learn it, and the saved artifact must score conversations
exactly as the trainer did."""

import json
import random

import pytest
import torch

from pipeline.artifacts.metrics import read_metrics
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
    from stages.reward.statistics import main as measure

    assert measure(["--config", "configs/test.yaml", f"run.out_dir={d}", "run.name=t", f"ppo.policy={tiny_lm_dir}",
                    f"ppo.data={prompts}", "reward.stats_prompts=6", "ppo.max_new_tokens=8"]) == 0
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
    stats = json.loads((out.parent / "reward-stats" / "reward_stats.json").read_text())
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
            "reward.save_every=8"]
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


def test_new_sampling_settings_measure_the_statistics_again_and_leave_the_reward_model_alone(reward_run, tiny_lm_dir):
    from stages.reward.statistics import main as measure

    out, _ = reward_run
    d = out.parent.parent
    before = {f.name: f.read_bytes() for f in out.iterdir() if f.is_file()}
    old_stats = json.loads((out.parent / "reward-stats" / "manifest.json").read_text())
    assert measure(["--config", "configs/test.yaml", f"run.out_dir={d}", "run.name=t", f"ppo.policy={tiny_lm_dir}",
                    f"ppo.data={d / 'prompts.jsonl'}", "reward.stats_prompts=6", "ppo.max_new_tokens=8",
                    "ppo.temperature=1.3"]) == 0
    new_stats = json.loads((out.parent / "reward-stats" / "manifest.json").read_text())
    assert new_stats["key"]["config"]["ppo"]["temperature"] == 1.3 != old_stats["key"]["config"]["ppo"]["temperature"]
    assert {f.name: f.read_bytes() for f in out.iterdir() if f.is_file()} == before  # the reward model untouched


def test_the_statistics_score_the_sampled_ids_as_ppo_does(reward_run, tiny_lm_dir):
    """PPO scores prompt ids + sampled ids (cut after the end of turn); decoding and templating the answer
    again would score another sequence (an end of turn added to a cut answer, text re-tokenised)."""
    from pipeline.config.loader import load_config
    from pipeline.judge.scoring import load_reward_model, score_ids
    from pipeline.lm.model import load_causal_lm
    from stages.ppo.rollout import sequence_scores
    from stages.reward.statistics import measure

    out, _ = reward_run
    cfg = load_config("configs/test.yaml", ["ppo.max_new_tokens=8", "ppo.forward_batch_size=2"])
    rm, tok, _ = load_reward_model(out)
    policy = load_causal_lm(str(tiny_lm_dir)).eval()
    prompts = [tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, tokenize=True,
                                       return_dict=True)["input_ids"] for q in ("What is a list?", "Why sort?")]
    stats = measure(cfg, policy, rm, tok, prompts)
    # the same draw, scored the way PPO's trainer scores a rollout (stages/ppo/rollout.sequence_scores)
    from pipeline.lm.chat_format import turn_end_ids
    from pipeline.lm.generation import generate_batched

    gen = torch.Generator().manual_seed(cfg.run.seed)
    answers = generate_batched(policy, prompts, batch_size=2, max_new_tokens=8, eos_ids=turn_end_ids(tok),
                               pad_id=tok.pad_token_id, temperature=cfg.ppo.temperature, top_k=0, top_p=1.0,
                               generator=gen)
    seqs = [q + a for q, a in zip(prompts, answers)]
    ids = torch.nn.utils.rnn.pad_sequence([torch.tensor(s) for s in seqs], batch_first=True,
                                          padding_value=tok.pad_token_id)
    mask = torch.nn.utils.rnn.pad_sequence([torch.ones(len(s), dtype=torch.long) for s in seqs], batch_first=True)
    with torch.no_grad():
        ppo_view = sequence_scores(rm, ids, mask)
    assert stats["mean"] == pytest.approx(float(ppo_view.mean()), abs=1e-4)
    assert score_ids(rm, seqs, tok.pad_token_id).tolist() == pytest.approx(ppo_view.tolist(), abs=1e-4)
