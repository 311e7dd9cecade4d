"""The stage graph (pipeline/chain/table.py) declares each stage once; staleness, make's prerequisites and the
up-to-date check come from it.

Staleness is exact: a key makes an artifact stale if and only if it changes what the artifact holds --
directly (the stage's declared config values or inputs change) or through an artifact it reads (which is
rebuilt, so its fingerprint changes). The table below is the specification; the test checks the
declarations against it."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.chain.table import STAGES, is_up_to_date, key
from pipeline.config.loader import load_config
from pipeline.graph.declare import Artifact, artifact_dir

ROOT = Path(__file__).resolve().parents[1]
TRAINED_FROM_SFT = {"sft", "rank", "reward", "reward-stats", "ppo", "dpo", "grpo", "rloo", "eval", "compare"}
EVERYTHING = {"pretrain"} | TRAINED_FROM_SFT
REWARD_ON = {"reward-stats", "ppo", "grpo", "rloo", "eval", "compare"}  # what the reward model's scores reach

STALE = [  # (override, the artifacts it makes stale); every other artifact stays up to date
    ("ppo.temperature=0.9", REWARD_ON),  # the statistics are measured at PPO's temperature: never the reward model
    ("ppo.max_new_tokens=32", REWARD_ON),
    ("ppo.forward_batch_size=8", REWARD_ON),
    ("ppo.kl_coef=0.05", {"ppo", "eval", "compare"}),
    ("ppo.total_episodes=1024", {"ppo", "grpo", "rloo", "eval", "compare"}),  # GRPO/RLOO take PPO's answer budget
    ("ppo.kl_budget=5", {"ppo", "dpo", "grpo", "rloo", "eval", "compare"}),  # every verdict judges KL against it
    ("eval.lm_max_tokens=1024", {"eval"}),  # language-model metrics: eval's alone
    ("eval.num_side_by_side=2", {"eval"}),
    ("ppo.log_every=5", set()),
    ("ppo.save_every=3", set()),
    ("ppo.resume=false", set()),
    ("ppo.gradient_checkpointing=true", set()),
    ("ppo.check_memory=false", set()),
    ("reward.lr=0.00003", {"reward"} | REWARD_ON),
    ("reward.stats_prompts=32", REWARD_ON),  # the statistics (and what reads them), never the reward model
    ("reward.save_every=7", set()),
    ("sft.lr=0.0001", TRAINED_FROM_SFT),
    ("sft.log_every=3", set()),
    ("train.max_steps=10", EVERYTHING),
    ("train.log_every=3", set()),
    ("train.checkpoint_every=3", set()),
    ("model.n_layer=3", EVERYTHING),
    ("run.seed=7", EVERYTHING),
    ("run.name=elsewhere", set()),  # where, not what
    ("rank.k=6", {"rank", "reward", "dpo"} | REWARD_ON),
    ("rank.noise=0.1", {"rank", "reward", "dpo"} | REWARD_ON),
    ("rank.port=9001", set()),
    ("rank.ui=terminal", set()),
    ("eval.num_prompts=10", {"eval", "compare"}),
    ("eval.seed=3", {"eval", "compare"}),
    ("dpo.beta=0.2", {"dpo", "compare"}),
    ("grpo.lr=0.0002", {"grpo", "compare"}),
    ("rloo.lr=0.0002", {"rloo", "compare"}),
    # PPO's prompts: the statistics' prompts, and (no ppo.eval_data) the held-out tail every report is judged on
    ("ppo.data=my_prompts.jsonl", {"dpo"} | REWARD_ON),
    ("ppo.eval_data=my_dev.jsonl", {"ppo", "dpo", "grpo", "rloo", "eval", "compare"}),  # every report's dev prompts
]


def declared(cfg, name: str) -> str:
    """What decides a stage's artifact apart from its inputs' content: its config values and which inputs."""
    s = STAGES[name]
    text = json.dumps([s.config(cfg), {k: repr(v) for k, v in s.inputs(cfg).items()}], sort_keys=True, default=str)
    return text.replace(str(cfg.run_dir), "<run>")  # the key records this run's files by name, not by where


def readers_of(name: str, cfg) -> set[str]:
    """The stages that read `name`'s artifact (so a rebuilt `name` makes them stale)."""
    return {s for s, stage in STAGES.items()
            if any(isinstance(i, Artifact) and i.stage == name for i in stage.inputs(cfg).values())}


def stale_after(override: str) -> set[str]:
    base, new = load_config(ROOT / "configs/tiny.yaml"), load_config(ROOT / "configs/tiny.yaml", [override])
    stale = {s for s in STAGES if s != "data" and declared(base, s) != declared(new, s)}
    todo = list(stale)
    while todo:
        for reader in readers_of(todo.pop(), new) - stale:
            stale.add(reader)
            todo.append(reader)
    return stale


def test_the_table_covers_at_least_25_keys():
    assert len(STALE) >= 25


@pytest.mark.parametrize("override,expected", STALE, ids=[o for o, _ in STALE])
def test_a_key_makes_stale_exactly_the_artifacts_whose_content_it_changes(override, expected):
    assert stale_after(override) == expected


def _finished(d: Path, fingerprint: str, **extra) -> None:
    d.mkdir(parents=True, exist_ok=True)
    (d / "manifest.json").write_text(json.dumps({"status": "complete", "fingerprint": fingerprint, **extra}))


def fake_finished_ppo_run(tmp_path) -> tuple[object, list[str]]:
    """A run directory whose PPO artifact is finished for today's key (inputs stand in for real models)."""
    args = ["--config", str(ROOT / "configs/tiny.yaml"), f"run.out_dir={tmp_path}",
            f"ppo.data={tmp_path / 'prompts.jsonl'}", f"ppo.eval_data={tmp_path / 'dev.jsonl'}"]
    (tmp_path / "prompts.jsonl").write_text('{"prompt": "What is a list?"}\n')
    (tmp_path / "dev.jsonl").write_text('{"prompt": "What is a dict?", "gold": "a mapping"}\n')
    cfg = load_config(ROOT / "configs/tiny.yaml", args[2:])
    for stage, fp in (("sft", "a1"), ("reward", "b2"), ("reward-stats", "c3")):
        _finished(artifact_dir(cfg, STAGES[stage]), fp)
    _finished(artifact_dir(cfg, STAGES["ppo"]), "d4", key=key(cfg, "ppo"))
    return cfg, args


def test_a_finished_stage_says_up_to_date_before_importing_torch(tmp_path):
    cfg, args = fake_finished_ppo_run(tmp_path)
    probe = ("import runpy, sys\n"
             f"sys.argv = ['stages.ppo', *{args!r}]\n"
             "try:\n    runpy.run_module('stages.ppo', run_name='__main__')\n"
             "except SystemExit as e:\n    print('exit', e.code)\n"
             "print('torch imported:', 'torch' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=tmp_path, timeout=60,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert "is up to date" in out.stdout, out.stderr
    assert "exit 0" in out.stdout and "torch imported: False" in out.stdout


def test_editing_a_prompt_file_in_place_makes_ppo_stale(tmp_path):
    cfg, _ = fake_finished_ppo_run(tmp_path)
    assert is_up_to_date(cfg, "ppo", say=False)
    (tmp_path / "prompts.jsonl").write_text('{"prompt": "What is a set?"}\n')  # same path, new content
    assert not is_up_to_date(cfg, "ppo", say=False)


def test_a_rebuilt_input_artifact_makes_its_readers_stale(tmp_path):
    cfg, _ = fake_finished_ppo_run(tmp_path)
    _finished(artifact_dir(cfg, STAGES["reward-stats"]), "c3-again")
    assert not is_up_to_date(cfg, "ppo", say=False)


def test_no_effect_keys_leave_a_finished_ppo_up_to_date(tmp_path):
    cfg, args = fake_finished_ppo_run(tmp_path)
    again = load_config(ROOT / "configs/tiny.yaml", [*args[2:], "ppo.log_every=7", "ppo.resume=false"])
    assert is_up_to_date(again, "ppo", say=False)
    hotter = load_config(ROOT / "configs/tiny.yaml", [*args[2:], "ppo.temperature=0.9"])
    assert not is_up_to_date(hotter, "ppo", say=False)


def test_rounds_know_the_loop_stages_the_graph_declares():
    from pipeline.graph.rounds import (
        LOOP_STAGES,  # pipeline/ cannot read pipeline/chain/table.py: it keeps the names
    )

    assert set(LOOP_STAGES) == {name for name, s in STAGES.items() if s.loop}
