"""Make targets follow the config: a stage whose input is given does not build the stage before it,
whether the key comes from a command-line override or from the preset file, and a target the config
gives no job (pretrain when SFT starts from an existing model, data when nothing reads the demo)
says why instead of running. `make -n` shows what would run; no stage is run here."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.chain.table import demo_readers
from pipeline.chain.table import make_needs as needs
from pipeline.config.loader import load_config

ROOT = Path(__file__).resolve().parents[1]
CHAIN = ["pretrain", "sft", "rank", "reward", "ppo", "eval"]
COMMAND = re.compile(r"-m (pipeline\.chain\.plan --why [\w-]+|data\.demo|stages\.[\w.]+)")
NAMES = {"data.demo": "demo", "stages.reward.stats": "reward-stats"}


def make(*args, dry=True) -> subprocess.CompletedProcess:
    cmd = ["make", "-C", str(ROOT), *(["-n"] if dry else []), *args, f"PY={sys.executable}"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


def commands(*args) -> list[str]:
    """The stage commands `make -n ARGS` would run, in order: data, pretrain, ... (skip:X for a skipped target)."""
    proc = make(*args)
    assert proc.returncode == 0, proc.stderr
    out = []
    for m in COMMAND.finditer(proc.stdout):
        word = m.group(1)
        out.append("skip:" + word.split()[-1] if " --why " in word else NAMES.get(word, word.split(".")[-1]))
    return out


def test_the_tiny_preset_runs_the_whole_chain_in_order():
    assert commands(*CHAIN) == ["demo", "pretrain", "sft", "rank", "reward", "reward-stats", "ppo", "eval"]
    assert commands("sft") == ["demo", "pretrain", "sft"]
    assert commands("ppo") == ["demo", "pretrain", "sft", "rank", "reward", "reward-stats", "ppo"]


def test_later_rounds_follow_round_one_under_make_ppo():
    round_two = ["rank", "reward", "reward-stats", "ppo"]
    assert commands("ppo", "run.rounds=2") == ["demo", "pretrain", "sft", *round_two, *round_two]
    assert commands("ppo", "run.rounds=3")[-8:] == round_two * 2
    rounds = re.findall(r"run\.round=(\d)", make("ppo", "run.rounds=3").stdout)
    assert rounds == ["2"] * 4 + ["3"] * 4  # each later stage command names its round
    # a stage command of round 2 alone: its rank reads round 1's PPO model, which it does not build
    assert commands("rank", "run.round=2") == ["demo", "rank"]
    assert commands("ppo", "run.round=2", "run.rounds=2") == ["demo", "pretrain", "sft", *round_two]


def test_sft_from_an_existing_model_runs_no_pretraining():
    assert commands("sft", "sft.init_from=some/model") == ["demo", "sft"]  # the demo's SFT data is still read
    assert commands("sft", "sft.init_from=some/model", "sft.data=chat.jsonl") == ["sft"]
    assert commands("pretrain", "sft", "sft.init_from=some/model", "sft.data=chat.jsonl") == ["skip:pretrain", "sft"]


def test_given_models_are_not_built():
    # the reward statistics are measured for whatever policy and reward model PPO is given
    assert commands("ppo", "ppo.policy=a", "ppo.reward_model=b") == ["demo", "reward-stats", "ppo"]
    assert commands("ppo", "ppo.reward_model=b") == ["demo", "pretrain", "sft", "reward-stats", "ppo"]
    assert commands("rank", "rank.policy=a") == ["demo", "rank"]
    assert commands("grpo", "grpo.policy=a", "grpo.reward_model=b", "ppo.policy=a",
                    "ppo.reward_model=b", "grpo.data=p.jsonl", "ppo.data=p.jsonl") == ["reward-stats", "align"]
    # DPO reads the pairs the reward model learns from (demo+rank): this run's rankings, never a reward model
    assert commands("dpo") == ["demo", "pretrain", "sft", "rank", "align"]
    # the reward model's own start needs no SFT model; its rankings of this run's answers still do
    assert commands("reward", "reward.init_from=a", "reward.data=pairs.jsonl", "ppo.data=p.jsonl") == ["reward"]
    assert commands("reward", "reward.init_from=a") == ["demo", "pretrain", "sft", "rank", "reward"]


def test_a_preset_file_that_names_its_inputs_runs_no_pretraining_and_no_demo_build(tmp_path):
    assert commands(*CHAIN, "CONFIG=configs/hh-smollm.yaml") == ["skip:pretrain", "sft", "rank", "reward",
                                                                  "reward-stats", "ppo", "eval"]
    preset = tmp_path / "mine.yaml"
    preset.write_text(f"base: {ROOT / 'configs/tiny.yaml'}\nsft:\n  init_from: some/model\n")
    assert commands("sft", f"CONFIG={preset}") == ["demo", "sft"]


def test_a_skipped_target_says_why_and_succeeds(tmp_path):
    args = ("data", "pretrain", "CONFIG=configs/hh-smollm.yaml", f"OUT={tmp_path}")
    assert commands(*args) == ["skip:data", "skip:pretrain"]  # checked first: never start a real stage here
    proc = make(*args, dry=False)
    assert proc.returncode == 0, proc.stderr
    assert "data: skipped: no stage of this config reads the demo data" in proc.stdout
    assert "pretrain: skipped: sft.init_from=HuggingFaceTB/SmolLM2-135M-Instruct" in proc.stdout


def test_an_unreadable_config_runs_the_stage_alone_so_that_it_reports_the_problem():
    assert commands("sft", "CONFIG=configs/no-such-preset.yaml") == ["sft"]
    proc = make("sft", "sft.no_such_key=1", dry=False)
    assert proc.returncode != 0 and "sft.no_such_key" in proc.stderr and "Traceback" not in proc.stderr


def test_the_hh_smollm_preset_validates_and_reads_no_demo_data():
    cfg = load_config(ROOT / "configs/hh-smollm.yaml")
    assert cfg.run.name == "hh-smollm" and cfg.sft.init_from == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert demo_readers(cfg) == []
    assert needs(cfg)["sft"] == [] and needs(cfg)["ppo"] == ["sft", "reward", "reward-stats"]
    assert cfg.ppo.max_prompt_length + cfg.ppo.max_new_tokens <= cfg.reward.max_length
    # development and test prompts are disjoint halves of HH's test split
    assert cfg.ppo.eval_data.endswith("test[:50%]") and cfg.eval.prompts.endswith("test[50%:]")


@pytest.mark.parametrize("preset", sorted(p.name for p in (ROOT / "configs").glob("*.yaml")))
def test_every_preset_plans(preset):
    cfg = load_config(ROOT / "configs" / preset)
    assert set(needs(cfg)) >= {"data", "pretrain", "sft", "rank", "reward", "ppo"}


def test_chat_and_serve_talk_to_the_newest_finished_rounds_ppo_model_else_sft(tmp_path):
    run = tmp_path / "tiny"
    for stage in ("sft", "ppo", "ppo-r2", "ppo-r3"):
        (run / stage).mkdir(parents=True)
        (run / stage / "manifest.json").write_text('{"status": "complete"}')
    (run / "ppo-r3" / "manifest.json").write_text('{"status": "running"}')  # round 3 unfinished

    def model(target, *args):
        out = make(target, f"OUT={tmp_path}", *args).stdout
        return re.search(r"--model (\S+)", out).group(1)

    assert model("chat") == str(run / "ppo")  # the preset's one round, whatever later rounds lie on disk
    assert model("chat", "run.rounds=2") == model("serve", "run.rounds=3") == str(run / "ppo-r2")
    (run / "ppo-r2" / "manifest.json").unlink()
    assert model("chat", "run.rounds=2") == str(run / "ppo")
    (run / "ppo" / "manifest.json").unlink()
    assert model("serve") == str(run / "sft")
    assert model("chat", "MODEL=elsewhere") == "elsewhere"
