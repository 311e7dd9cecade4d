"""Finished upstream artifacts for a stage test: an SFT model, a reward model and its normalisation
statistics committed under <root>/runs/t/, as `make sft reward reward-stats` would leave them."""

from __future__ import annotations

import json
import shutil

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, TrainerCallback

from pipeline.artifacts.store import ArtifactWriter


def fake_artifact(root, stage, build, inputs=None):
    """Commit <root>/runs/t/<stage>, its files written by `build(out_dir)`."""
    writer = ArtifactWriter(root / "runs" / "t" / stage, stage)
    build(writer.out_dir)
    return writer.commit(config={}, inputs=inputs)


def sft_and_reward(tiny_lm_dir, root) -> None:
    """runs/t/sft: the tiny LM; runs/t/reward: a scalar head on it (seed 0)."""
    def sft(out):
        shutil.copytree(tiny_lm_dir, out, dirs_exist_ok=True)

    def reward(out):
        torch.manual_seed(0)
        AutoModelForSequenceClassification.from_pretrained(tiny_lm_dir, num_labels=1).save_pretrained(out)
        AutoTokenizer.from_pretrained(tiny_lm_dir).save_pretrained(out)
        (out / "reward_model.json").write_text(json.dumps({"max_length": 96}))

    fake_artifact(root, "sft", sft)
    fake_artifact(root, "reward", reward)


def fixed_reward_stats(argv: list[str]) -> None:
    """A reward-stats artifact with fixed statistics (mean 0.5, std 2), current for the stage command `argv`
    (the step that measures them is tested in test_reward_train.py)."""
    from pipeline.artifacts.store import start_artifact
    from pipeline.chain.table import STAGES, key
    from pipeline.config.loader import load_config
    from pipeline.errors import UserError
    from pipeline.graph.declare import artifact_dir

    try:
        cfg = load_config(argv[argv.index("--config") + 1], [a for a in argv if "=" in a and not a.startswith("--")])
    except UserError:  # a config the test makes unreadable: the stage says so before it reads any statistics
        return
    writer = start_artifact(artifact_dir(cfg, STAGES["reward-stats"]), "reward-stats", resume=False,
                            key=key(cfg, "reward-stats"))
    (writer.out_dir / "reward_stats.json").write_text(json.dumps({"mean": 0.5, "std": 2.0, "max_length": 96}))
    writer.commit(config={})


class StopAtStep(TrainerCallback):
    """Ends a Trainer stage after optimizer step `step` as Ctrl-C does; it leaves the checkpoints a kill -9 leaves."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise KeyboardInterrupt


class StepsRun(TrainerCallback):
    """The optimizer steps a Trainer stage ran, in order (a resumed run starts after its checkpoint)."""

    def __init__(self):
        self.steps: list[int] = []

    def on_step_end(self, args, state, control, **kwargs):
        self.steps.append(state.global_step)


def with_callbacks(monkeypatch, stage_module, *callbacks) -> None:
    """The Trainers `stage_module.build_trainer` builds from now on also run `callbacks` (none: as unpatched)."""
    build = getattr(stage_module.build_trainer, "unpatched", stage_module.build_trainer)

    def build_with_callbacks(*args, **kwargs):
        trainer = build(*args, **kwargs)
        for callback in callbacks:
            trainer.add_callback(callback)
        return trainer

    build_with_callbacks.unpatched = build
    monkeypatch.setattr(stage_module, "build_trainer", build_with_callbacks)
