"""The recipe does not change with the number of processes: each preset states its global batch, the stages
split it over the launch's processes (pipeline/runtime/batch.py), a batch that does not split is refused in one
line, `make <stage> NPROC=N` launches N processes, and launcher configs that cannot run here say so."""

import subprocess
import sys

import pytest
import yaml

from pipeline.config.loader import load_config
from pipeline.errors import UserError
from pipeline.runtime.batch import section_split, split
from pipeline.runtime.device import pick_device
from stages.pretrain.loop import batch_split
from tests.conftest import ROOT

PRESETS = sorted(p.name for p in (ROOT / "configs").glob("*.yaml") if p.name != "test.yaml")


def test_a_global_batch_is_shared_equally_in_micro_batches_no_larger_than_batch_size():
    one, two, four = (split(32, n, 8, key="k", unit="u") for n in (1, 2, 4))
    assert (one.micro, one.accum) == (8, 4) and (two.micro, two.accum) == (8, 2) and (four.micro, four.accum) == (8, 1)
    uneven = split(12, 2, 4, key="k", unit="u")  # 6 each, at most 4 at a time: 2 micro-batches of 3
    assert (uneven.micro, uneven.accum) == (3, 2)
    assert "12 u per step (3 per micro-batch x 2 processes x 2 accumulation steps)" == uneven.describe()


def test_a_batch_the_processes_cannot_share_is_refused_naming_the_key():
    with pytest.raises(UserError, match=r"sft.sequences_per_step=10 conversations cannot be shared by 4 processes"):
        split(10, 4, 8, key="sft.sequences_per_step", unit="conversations")


def test_a_global_batch_and_a_gradient_accumulation_together_are_refused():
    cfg = load_config(ROOT / "configs/tiny.yaml", ["sft.grad_accum=2"])
    with pytest.raises(UserError, match=r"sft.grad_accum=2 and sft.sequences_per_step=16 both set the batch"):
        section_split(cfg.sft, "sft", "conversations", processes=1)


def test_without_a_global_batch_the_one_process_recipe_holds_for_any_number():
    cfg = load_config(ROOT / "configs/test.yaml", ["sft.batch_size=4", "sft.grad_accum=2"])
    assert cfg.sft.sequences_per_step is None
    assert [section_split(cfg.sft, "sft", "c", processes=n).global_size for n in (1, 2, 4, 8)] == [8, 8, 8, 8]


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_states_its_global_batches_and_they_hold_on_one_or_two_processes(preset):
    text = yaml.safe_load((ROOT / "configs" / preset).read_text())
    cfg = load_config(ROOT / "configs" / preset)
    stated = {"train": "tokens_per_step", "sft": "sequences_per_step", "reward": "pairs_per_step",
              "dpo": "pairs_per_step", "grpo": "answers_per_step", "rloo": "answers_per_step"}
    for section, key in stated.items():
        if section in text:  # a section the preset tunes states its global batch
            assert text[section].get(key) is not None, f"{preset}: {section}.{key}"
    block = cfg.model.block_size
    assert batch_split(cfg.train, block, 1).global_size == batch_split(cfg.train, block, 2).global_size
    for section, unit in (("sft", "c"), ("reward", "p"), ("dpo", "p"), ("grpo", "a"), ("rloo", "a")):
        s = getattr(cfg, section)
        assert section_split(s, section, unit, processes=1).global_size == \
            section_split(s, section, unit, processes=2).global_size


def test_the_tiny_presets_pretraining_batch_no_longer_doubles_on_two_processes():
    cfg = load_config(ROOT / "configs/tiny.yaml")
    one, two = batch_split(cfg.train, 128, 1), batch_split(cfg.train, 128, 2)
    assert one.global_size * 128 == two.global_size * 128 == 4096
    assert (two.micro, two.accum) == (16, 1)


def test_a_tokens_per_step_that_is_not_whole_sequences_is_refused():
    cfg = load_config(ROOT / "configs/tiny.yaml", ["train.tokens_per_step=4000"])
    with pytest.raises(UserError, match=r"train.tokens_per_step=4000 is not a whole number of sequences"):
        batch_split(cfg.train, 128, 1)


def make_dry_run(*args) -> subprocess.CompletedProcess:
    return subprocess.run(["make", "-n", "-C", str(ROOT), *args, f"PY={sys.executable}"], capture_output=True,
                          text=True, timeout=120)


def test_make_nproc_launches_the_training_stages_on_n_processes():
    out = make_dry_run("pretrain", "NPROC=2").stdout
    assert "-m accelerate.commands.launch --config_file configs/accelerate/cpu_ddp.yaml --num_processes 2" in out
    assert "-m stages.pretrain" in out
    assert "accelerate" not in make_dry_run("pretrain").stdout  # without NPROC: one plain process
    custom = make_dry_run("pretrain", "NPROC=2", "LAUNCH=mylauncher").stdout
    assert "mylauncher -m stages.pretrain" in custom  # LAUNCH= still wins
    bad = make_dry_run("pretrain", "NPROC=two")
    assert bad.returncode != 0 and "NPROC=two is not a number of processes" in bad.stderr


def test_a_deepspeed_launch_without_gpus_is_refused_instead_of_training_unsharded(monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    with pytest.raises(UserError, match=r"asks for DeepSpeed .* runs only on CUDA GPUs.*cpu_ddp.yaml"):
        pick_device("cpu")


def test_an_fsdp_launch_on_cpus_runs_only_the_stages_that_shard_there(monkeypatch):
    """pretrain, sft and ppo shard on CPU processes (tests/test_distributed_fsdp.py); any other stage would train
    unsharded under an FSDP config, so it is refused. (The flag is per process: one stage per process.)"""
    from pipeline.runtime import sharding
    from pipeline.runtime.device import refuse_sharding_without_gpus

    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setitem(sharding._STAGE, "shards_on_cpu", False)
    with pytest.raises(UserError, match=r"asks for FSDP, which runs here on CPU processes only for pretrain, sft and ppo"):
        pick_device("cpu")
    monkeypatch.setitem(sharding._STAGE, "shards_on_cpu", True)
    assert pick_device("cpu").type == "cpu"
    with pytest.raises(UserError, match=r"asks for FSDP, which runs here on CUDA GPUs and CPUs; this stage on mps"):
        refuse_sharding_without_gpus("mps")


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "configs" / "accelerate").glob("*.yaml")))
def test_every_launcher_config_is_one_accelerate_reads(name):
    """A dry run of the launcher configs the README offers (DeepSpeed and FSDP cannot run on a CPU machine):
    accelerate's own reader takes each, with the backend it says."""
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(ROOT / "configs" / "accelerate" / name))
    expected = {"cpu_ddp.yaml": "MULTI_GPU", "ddp.yaml": "MULTI_GPU", "fsdp.yaml": "FSDP", "cpu_fsdp.yaml": "FSDP",
                "deepspeed_zero2.yaml": "DEEPSPEED", "deepspeed_zero3.yaml": "DEEPSPEED"}[name]
    assert str(config.distributed_type).split(".")[-1] == expected
    if expected == "DEEPSPEED":
        assert config.deepspeed_config["zero_stage"] == int(name[-6])
    if expected == "FSDP":
        assert config.fsdp_config["fsdp_version"] == 2
