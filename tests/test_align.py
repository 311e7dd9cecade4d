"""`python -m stages.align` (DPO, GRPO, RLOO on TRL's trainers) end to end on tiny artifacts:
what each writes, resuming after a kill, and what it refuses."""

import json
import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import stages.align.stage as align
from pipeline.artifacts.metrics import read_metrics
from pipeline.artifacts.store import read_manifest
from tests.stage_fixtures import (
    StepsRun,
    StopAtStep,
    fake_artifact,
    fixed_reward_stats,
    sft_and_reward,
    with_callbacks,
)


@pytest.fixture
def run_dir(tiny_lm_dir, tmp_path):
    sft_and_reward(tiny_lm_dir, tmp_path)
    rankings = tmp_path / "rankings.jsonl"
    rankings.write_text("".join(json.dumps({
        "prompt": f"What does function number {i} do?",
        "responses": [f"It returns {i}.", f"It prints {i} twice.", "No idea.", f"Number {i} is a function."],
        "ranking": [0, 3, 1, 2]}) + "\n" for i in range(12)))
    (tmp_path / "held_rankings.jsonl").write_text("".join(rankings.read_text().splitlines(keepends=True)[:2]))
    (tmp_path / "prompts.jsonl").write_text(
        "".join(json.dumps({"prompt": f"What does function number {i} do?"}) + "\n" for i in range(20)))
    (tmp_path / "held.jsonl").write_text(
        "".join(json.dumps({"prompt": f"Explain object {i}", "gold": f"object {i} does things"}) + "\n"
                for i in range(4)))
    return tmp_path


def argv(root, method, *extra):
    """The stage's command line, with reward statistics current for it (as make leaves them)."""
    args = ["--config", "configs/test.yaml", f"run.out_dir={root / 'runs'}", "run.name=t", f"align.method={method}",
            f"dpo.data={root / 'rankings.jsonl'}", f"dpo.val_data={root / 'held_rankings.jsonl'}",
            f"ppo.data={root / 'prompts.jsonl'}", f"ppo.eval_data={root / 'held.jsonl'}",
            f"grpo.data={root / 'prompts.jsonl'}", f"rloo.data={root / 'prompts.jsonl'}", *extra]
    if (root / "runs" / "t" / "reward").is_dir():
        fixed_reward_stats(args)
    return args


@pytest.mark.parametrize("method", ["dpo", "rloo", "grpo"])
def test_stage_writes_a_loadable_chat_model_with_manifest_metrics_and_samples(run_dir, method, capsys):
    assert align.main(argv(run_dir, method)) == 0
    out = run_dir / "runs" / "t" / method
    manifest = read_manifest(out)
    assert manifest["status"] == "complete" and manifest["stage"] == method
    assert manifest["inputs"]["policy"]["fingerprint"] == read_manifest(run_dir / "runs/t/sft")["fingerprint"]
    AutoModelForCausalLM.from_pretrained(out)
    assert AutoTokenizer.from_pretrained(out).chat_template
    m = manifest["metrics"]
    assert m["train_wall_time_s"] > 0 and m["heldout_prompts"] == 4
    # the judge's comparison with SFT on PPO's development prompts (ppo.eval_data), as PPO's report makes it
    heldout = json.loads((out / "report.json").read_text())["heldout"]
    assert (heldout["split"], heldout["prompts_source"], heldout["candidate"]) == ("development", str(run_dir / "held.jsonl"), method)
    assert m[f"heldout_gold_{method}"] == heldout["gold_candidate"] and "kl" in heldout
    if method == "dpo":
        assert m["pairs"] == 12 * 6 and m["pairs_seen"] == 6 * 4  # all K-way pairs; 6 steps of 4
        assert "win_rate_rm" not in heldout  # DPO holds no reward model
    else:
        assert m["answers_sampled"] == 32 and m["steps"] == 4  # the budget: 32 answers in steps of 8
        assert manifest["inputs"]["reward_model"]["fingerprint"] == read_manifest(run_dir / "runs/t/reward")["fingerprint"]
        assert m["heldout_win_rate_rm"] == heldout["win_rate_rm"]["win_rate"] and m["verdict"] == heldout["quality_bar"]["verdict"]
    assert [r["step"] for r in read_metrics(out) if "loss" in r][-1] == m["steps"]
    assert (out / "tb").is_dir() and "*Gold:*" in (out / "samples.md").read_text()
    assert not (out / "training_args.bin").exists()  # a pickle has no place in an artifact
    assert align.main(argv(run_dir, method)) == 0
    assert "up to date" in capsys.readouterr().out


@pytest.mark.parametrize("method,kill_at", [("dpo", 4), ("rloo", 3)])
def test_a_killed_run_resumes_and_ends_with_the_same_metrics(run_dir, method, kill_at, monkeypatch, capsys):
    module = align.dpo if method == "dpo" else align.online
    killed = argv(run_dir, method)
    with_callbacks(monkeypatch, module, StopAtStep(kill_at))
    with pytest.raises(SystemExit):
        align.main(killed)
    partial = run_dir / "runs" / "t" / f"{method}.partial"
    assert (partial / "checkpoints").is_dir() and not (run_dir / "runs" / "t" / method).exists()
    steps_run = StepsRun()
    with_callbacks(monkeypatch, module, steps_run)
    assert align.main(killed) == 0
    assert "resuming from" in capsys.readouterr().out
    save_every = 3 if method == "dpo" else 2  # configs/test.yaml
    last_saved = kill_at // save_every * save_every
    assert steps_run.steps[0] == last_saved + 1  # continued after the last checkpoint, not from scratch
    with_callbacks(monkeypatch, module)
    resumed = read_manifest(run_dir / "runs" / "t" / method)["metrics"]
    steps = [r["step"] for r in read_metrics(run_dir / "runs" / "t" / method) if "loss" in r]
    assert steps == sorted(set(steps))  # one record: the steps after the checkpoint are not logged twice

    shutil.rmtree(run_dir / "runs" / "t" / method)
    assert align.main(killed) == 0  # the same run, never interrupted
    straight = read_manifest(run_dir / "runs" / "t" / method)["metrics"]
    for key in ("loss", "heldout_kl_to_sft", f"heldout_gold_{method}", "steps"):
        assert resumed[key] == pytest.approx(straight[key], rel=1e-4, abs=1e-6), key
    assert resumed["train_wall_time_s"] > 0


def test_rl_methods_name_the_missing_reward_model_and_leave_nothing_behind(run_dir, capsys):
    shutil.rmtree(run_dir / "runs" / "t" / "reward")
    with pytest.raises(SystemExit) as e:
        align.main(argv(run_dir, "grpo"))
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "make reward" in err and "Traceback" not in err
    assert not (run_dir / "runs" / "t" / "grpo.partial").exists()


def test_a_bad_preference_record_is_one_line_naming_file_and_line(run_dir, capsys):
    bad = run_dir / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "q", "responses": ["a", "b"], "ranking": [0, 0]}) + "\n")
    with pytest.raises(SystemExit) as e:
        align.main(argv(run_dir, "dpo", f"dpo.data={bad}"))
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert f"{bad}, line 1" in err and "ranking" in err and "Traceback" not in err
    assert not (run_dir / "runs" / "t" / "dpo.partial").exists()


def test_a_group_batch_that_splits_a_prompts_answers_is_refused(run_dir, capsys):
    with pytest.raises(SystemExit) as e:
        align.main(argv(run_dir, "rloo", "rloo.batch_size=6"))
    assert e.value.code == 2 and "rloo.batch_size=6 is not a multiple of rloo.num_generations=4" in capsys.readouterr().err


@pytest.mark.parametrize("method", ["dpo", "rloo"])
def test_lora_saves_the_adapter_and_merged_weights(run_dir, method):
    assert align.main(argv(run_dir, method, f"{method}.lora.enabled=true", f"{method}.lora.r=4",
                           f"{method}.lr=1e-2")) == 0
    out = run_dir / "runs" / "t" / method
    assert (out / "adapter" / "adapter_config.json").is_file()
    merged = AutoModelForCausalLM.from_pretrained(out)
    sft = AutoModelForCausalLM.from_pretrained(run_dir / "runs" / "t" / "sft")
    changed = [n for n, p in merged.named_parameters() if not torch.equal(p, sft.state_dict()[n])]
    assert changed and all("proj" in n for n in changed)  # only the adapted layers moved


def test_dpo_by_default_learns_from_the_pairs_the_reward_model_learns_from(run_dir):
    """dpo.data=reward reads every part of reward.data (here a file of rankings and this run's rank artifact,
    demo+rank's shape) and reward.val_data, as the stage graph declares them; no reward model is needed."""
    from pipeline.artifacts.store import source_fingerprint

    rankings, held = str(run_dir / "rankings.jsonl"), str(run_dir / "held_rankings.jsonl")
    own = run_dir / "runs" / "t" / "rank"
    fake_artifact(run_dir, "rank", lambda out: shutil.copy(held, out / "rankings.jsonl"))
    shutil.rmtree(run_dir / "runs" / "t" / "reward")  # DPO never reads the reward model
    assert align.main(argv(run_dir, "dpo", "dpo.data=reward", "dpo.val_data=reward", f"reward.data={rankings}+rank",
                           f"reward.val_data={held}", "dpo.max_steps=1")) == 0
    manifest = read_manifest(run_dir / "runs" / "t" / "dpo")
    assert manifest["inputs"]["data"]["train"] == {rankings: source_fingerprint(rankings),
                                                   str(own / "rankings.jsonl"): source_fingerprint(str(own / "rankings.jsonl"))}
    assert manifest["inputs"]["data"]["heldout"] == {held: source_fingerprint(held)}
    assert manifest["metrics"]["pairs"] == 12 * 6 + 2 * 6  # every pair of each 4-way ranking, of both parts
