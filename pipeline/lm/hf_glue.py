"""Glue between our config/artifacts/metrics and the Hugging Face `Trainer` family (TRL's SFT and
reward trainers are `Trainer` subclasses), so every trainer-based stage behaves the same way:

    kwargs = trainer_kwargs(cfg.sft, output_dir=writer.checkpoint_dir, run=cfg.run)
    args = SFTConfig(**kwargs, max_length=...)                     # or RewardConfig(...)
    resume = resume_checkpoint(writer.checkpoint_dir, "sft.resume")
    callback = MetricsCallback(writer.out_dir, desc="sft", resume_step=step_of(resume))
    trainer = SFTTrainer(..., callbacks=[callback, RunGuard("sft")]); use_our_progress(trainer)
    trainer.train(resume_from_checkpoint=resume)

Our own progress bar, metrics.jsonl and TensorBoard replace HF's printer and `report_to`. RunGuard
stops a run at a non-finite loss and marks each checkpoint complete once it is on disk, so a
resume never starts from a checkpoint cut short by a kill.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import time
from pathlib import Path

import torch
from transformers import TrainerCallback
from transformers.trainer_callback import PrinterCallback, ProgressCallback

from pipeline.artifacts.atomic import fsync_tree, write_text
from pipeline.artifacts.finite import check_finite, check_finite_params
from pipeline.artifacts.metrics import MetricsLogger, progress
from pipeline.config.schema import LoraSection, RunSection
from pipeline.errors import UserError
from pipeline.lm.tokenizer import ensure_chat_ready
from pipeline.runtime.batch import BatchSplit, process_count
from pipeline.runtime.device import mixed_precision, pick_device

log = logging.getLogger(__name__)
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
COMPLETE = "complete.json"  # written by RunGuard after the Trainer's save: {file: size}
_NOISE = ("_runtime", "_per_second", "_preparation_time", "total_flos", "num_tokens")


# --------------------------------------------------------------------------- arguments


def trainer_kwargs(section, *, output_dir: str | Path, run: RunSection, eval: bool = True,
                   batch: BatchSplit | None = None) -> dict:
    """TrainingArguments keyword arguments from a stage section with the usual fields
    (lr, epochs, max_steps, batch_size, grad_accum, warmup_ratio, weight_decay, eval_every,
    log_every, save_every). Works for TrainingArguments, SFTConfig and RewardConfig alike.
    `batch`: the stage's global batch split over this launch's processes (pipeline.runtime.batch);
    without it each process runs batch_size x grad_accum."""
    device = pick_device(run.device)
    precision = mixed_precision(run.dtype, device.type)
    kwargs = dict(
        output_dir=str(output_dir),
        learning_rate=section.lr,
        num_train_epochs=section.epochs,
        max_steps=section.max_steps,
        per_device_train_batch_size=batch.micro if batch else section.batch_size,
        per_device_eval_batch_size=section.batch_size,
        gradient_accumulation_steps=batch.accum if batch else section.grad_accum,
        warmup_steps=section.warmup_ratio,  # a float below 1 is a share of the total steps
        weight_decay=section.weight_decay,
        lr_scheduler_type="cosine",
        max_grad_norm=1.0,
        logging_steps=section.log_every,
        logging_first_step=True,
        eval_strategy="steps" if eval else "no",
        eval_steps=section.eval_every,
        save_strategy="steps",
        save_steps=section.save_every,
        save_total_limit=2,  # the newest may be cut by a kill; the one before it still resumes
        seed=run.seed,
        data_seed=run.seed,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        use_cpu=device.type == "cpu",
        # TRL turns it on by default; it only costs time on small models, so it is an option (off)
        activation_checkpointing=getattr(section, "gradient_checkpointing", False),
        report_to="none",  # metrics.jsonl + TensorBoard come from MetricsCallback
        disable_tqdm=True,  # our progress bar instead
        include_num_input_tokens_seen="non_padding",
        dataloader_num_workers=0,
        torch_compile=run.compile,
        log_level="warning",
    )
    return kwargs


# --------------------------------------------------------------------------- checkpoints


def last_checkpoint(checkpoint_dir: str | Path) -> str | None:
    """The newest `checkpoint-N` under checkpoint_dir that RunGuard marked complete, or None."""
    d = Path(checkpoint_dir)
    if not d.is_dir():
        return None
    found = [(int(m.group(1)), p) for p in d.iterdir() if (m := _CHECKPOINT.match(p.name)) and p.is_dir()]
    for _, path in sorted(found, reverse=True):
        if (path / COMPLETE).is_file():
            return str(path)
    return None


def checkpoint_processes(checkpoint: str | Path) -> int:
    """How many processes wrote a Trainer checkpoint: the Trainer saves one RNG state per process
    (rng_state_<rank>.pth) under a launch, and rng_state.pth alone on one process."""
    ranks = len(list(Path(checkpoint).glob("rng_state_*.pth")))
    return ranks or 1


class _SameGlobalBatch(logging.Filter):
    """Drops the Trainer's resume warning whose only complaint is the per-process batch: the global batch is
    in the artifact's key (pipeline/runtime/batch.py), so only its share per process changed with N."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if "do not match the ones in the `trainer_state.json`" not in text:
            return True
        complaints = [line for line in text.splitlines()[1:] if line.strip()]
        return not all(line.strip().startswith("per_device_train_batch_size:") for line in complaints)


_same_global_batch = _SameGlobalBatch()


def resume_checkpoint(checkpoint_dir: str | Path, resume_flag: str, same_processes: str | None = None) -> str | None:
    """The checkpoint to resume from: checkpoints cut short by a kill are removed, and a complete
    one whose files were truncated since is one line naming the file and what to do. One written by another
    number of processes resumes with the same global batch, unless `same_processes` (the stage's name) says
    its run would not continue the same (each process samples from its own saved RNG state): one line then."""
    last = last_checkpoint(checkpoint_dir)
    if last and _is_final(last):
        # Resuming the Trainer at its last step takes a path that differs from a finished run (an
        # extra evaluation, another step count): redo the last save interval from the one before.
        shutil.rmtree(last, ignore_errors=True)
        last = last_checkpoint(checkpoint_dir)
    newest = int(Path(last).name.split("-")[1]) if last else -1
    for p in Path(checkpoint_dir).glob("checkpoint-*") if Path(checkpoint_dir).is_dir() else []:
        if (m := _CHECKPOINT.match(p.name)) and int(m.group(1)) > newest:
            shutil.rmtree(p, ignore_errors=True)  # unfinished save: the Trainer would write into it again
    if last is None:
        return None
    try:
        sizes = json.loads((Path(last) / COMPLETE).read_text())
    except (OSError, json.JSONDecodeError):
        sizes = None
    for name, size in (sizes or {}).items():
        f = Path(last) / name
        have = f.stat().st_size if f.is_file() else None
        if have != size:
            state = "missing" if have is None else f"truncated: {have} of {size} bytes"
            raise UserError(f"{f} is {state}, so the run cannot resume from {last}: delete that folder to resume "
                            f"from the checkpoint before it, or re-run with {resume_flag}=false to start fresh.")
    if sizes is None:
        raise UserError(f"{Path(last) / COMPLETE} is corrupt: delete {last} to resume from the checkpoint before "
                        f"it, or re-run with {resume_flag}=false to start fresh.")
    wrote, now = checkpoint_processes(last), process_count()
    if wrote != now and same_processes:
        raise UserError(f"{last} was written by {wrote} process{'es' * (wrote > 1)} and this launch has {now}: "
                        f"{same_processes} resumes only on as many processes as it started on (each process's "
                        f"sampling continues from its own saved state), so launch it on {wrote}, or re-run with "
                        f"{resume_flag}=false to start fresh.")
    if wrote != now:
        logging.getLogger("transformers.trainer_utils").addFilter(_same_global_batch)
    return last


def _is_final(checkpoint: str) -> bool:
    try:
        state = json.loads((Path(checkpoint) / "trainer_state.json").read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return bool(state.get("max_steps")) and state.get("global_step", 0) >= state["max_steps"]


def step_of(checkpoint: str | None) -> int | None:
    """The optimizer step a checkpoint path was saved at (None for no checkpoint)."""
    if not checkpoint:
        return None
    m = _CHECKPOINT.match(Path(checkpoint).name)
    return int(m.group(1)) if m else None


# --------------------------------------------------------------------------- metrics + progress


def mean_train_loss(log_history: list[dict], steps: int, fallback: float) -> float:
    """The mean loss per step of the whole run, from the logged interval means (each weighted by its
    steps): the history survives a resume in the checkpoint's trainer state, the Trainer's running sum
    does not. `fallback` where the history does not reach the last step."""
    total, last = 0.0, 0
    for row in log_history:
        if "loss" in row and row.get("step", 0) > last:
            total += row["loss"] * (row["step"] - last)
            last = row["step"]
    return total / last if last == steps and last > 0 else fallback


class MetricsCallback(TrainerCallback):
    """Feeds the Trainer's logs to our MetricsLogger (metrics.jsonl + TensorBoard) and drives our
    progress bar (loss and tokens/s). Adds `eval_ppl` = exp(eval_loss) to every evaluation.

    `resume_step` is the checkpoint step a resumed run starts from: later lines are dropped so the
    file reads as one run. `logger` is usable before training (e.g. a step-0 baseline)."""

    def __init__(self, out_dir: str | Path, *, desc: str, resume_step: int | None = None,
                 enabled: bool | None = None, prefix_eval: str = "eval_"):
        if enabled is None:  # only the main process writes (under `accelerate launch` too)
            from pipeline.runtime.device import is_main_process

            enabled = is_main_process()
        self.desc = desc
        self.enabled = enabled
        self.prefix_eval = prefix_eval
        self.logger = MetricsLogger(out_dir, enabled=enabled, resume_step=resume_step)
        self.bar = None
        self.last = {}  # most recent train + eval values, for the stage's summary
        self.last_eval_step = None  # the step of the most recent evaluation
        self._shown = {}  # what the progress bar shows
        self._tokens = None  # (time, tokens seen) at the previous train log
        # test hook, as pretraining's: stop after this optimizer step as Ctrl-C does (every process of a launch)
        self.stop_after = int(os.environ.get("RLHF_STOP_AFTER_STEP", 0))

    def on_train_begin(self, args, state, control, **kwargs):
        self.enabled = self.enabled and state.is_world_process_zero
        for logged in state.log_history:  # a resumed run: what was logged before its checkpoint
            self.last.update(self._clean({k: v for k, v in logged.items()
                                          if k not in ("step", "num_input_tokens_seen")}))
        self.bar = progress(total=state.max_steps, initial=state.global_step, desc=self.desc, enabled=self.enabled)
        self._tokens = (time.time(), state.num_input_tokens_seen)

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)
        # Log at every checkpoint and at the last step, so a resumed run's logged intervals (and the losses
        # they average) are an uninterrupted run's, and every step's loss is in the history train_loss reads.
        if control.should_save or state.global_step >= state.max_steps:
            control.should_log = True
        if self.stop_after and state.global_step == self.stop_after:
            raise KeyboardInterrupt
        return control

    def _clean(self, logs: dict) -> dict:
        for k in [k for k in logs if k.endswith(_NOISE)]:
            logs.pop(k)  # per-call timings and cumulative counters: noise in the metrics file
        eval_loss = logs.get(f"{self.prefix_eval}loss")
        if eval_loss is not None and math.isfinite(eval_loss):
            logs[f"{self.prefix_eval}ppl"] = math.exp(min(eval_loss, 50.0))
        return logs

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = dict(logs or {})
        if not logs:
            return
        if "train_loss" in logs:  # the Trainer's mean covers only the steps this process ran
            logs["train_loss"] = mean_train_loss(state.log_history, state.global_step, logs["train_loss"])
        logs = self._clean(logs)
        if f"{self.prefix_eval}loss" in logs:
            self.last_eval_step = state.global_step
        if "loss" in logs and self._tokens is not None:
            now, seen = time.time(), state.num_input_tokens_seen
            t0, s0 = self._tokens
            if now > t0 and seen > s0:
                logs["tokens_per_s"] = (seen - s0) / (now - t0)
            self._tokens = (now, seen)
        logs.pop("num_input_tokens_seen", None)
        logs["tokens"] = state.num_input_tokens_seen
        self.last.update(logs)
        if self.enabled:
            self.logger.log(state.global_step, **logs)
        if self.bar is not None:
            self._shown.update({k: f"{logs[k]:.4g}" for k in ("loss", f"{self.prefix_eval}loss") if k in logs})
            if "tokens_per_s" in logs:
                self._shown["tok/s"] = f"{logs['tokens_per_s']:.0f}"
            if self._shown:
                self.bar.set_postfix(self._shown, refresh=False)

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def close(self) -> None:
        self.logger.close()


class RunGuard(TrainerCallback):
    """Finite or nothing, and complete checkpoints only, for a Trainer-based stage:
    a non-finite logged loss stops training (before the step's checkpoint is saved), a checkpoint
    with non-finite weights is deleted and stops it too, and a checkpoint that made it to disk
    gets `complete.json` (its files' sizes) after an fsync; `last_checkpoint` trusts only those."""

    def __init__(self, stage: str):
        self.stage = stage

    def _last_good(self, args) -> str | None:
        return last_checkpoint(args.output_dir)

    def on_log(self, args, state, control, logs=None, **kwargs):
        losses = {k: v for k, v in (logs or {}).items() if k == "loss" or k.endswith("_loss")}
        check_finite(self.stage, losses, step=state.global_step, last_good=self._last_good(args))

    def on_save(self, args, state, control, model=None, **kwargs):
        path = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if model is not None:
            try:
                check_finite_params(self.stage, model, step=state.global_step, last_good=self._last_good(args))
            except UserError:
                if state.is_world_process_zero:
                    shutil.rmtree(path, ignore_errors=True)
                raise
        if state.is_world_process_zero and path.is_dir():
            fsync_tree(path)
            sizes = {str(f.relative_to(path)): f.stat().st_size for f in sorted(path.rglob("*")) if f.is_file()}
            write_text(path / COMPLETE, json.dumps(sizes, indent=1) + "\n")


def use_our_progress(trainer) -> None:
    """Drop HF's own printer and tqdm bar (MetricsCallback shows progress instead)."""
    for cb in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(cb)


# --------------------------------------------------------------------------- models


def make_chat_ready(model, tokenizer, *, source: str = "") -> list[str]:
    """Make a foreign tokenizer chat-ready (it keeps its own template; one without gets ours; PAD
    distinct from EOS and the end of a turn), grow the model's embeddings to match, and point the
    model config at PAD. Returns (and logs) what was changed."""
    changes = ensure_chat_ready(tokenizer)
    n_emb = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > n_emb:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
        changes.append(f"resized embeddings {n_emb} -> {len(tokenizer)}")
    model.config.pad_token_id = tokenizer.pad_token_id
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    for c in changes:
        log.warning("%s: %s", source or "tokenizer", c)
    return changes


def lora_config(lora: LoraSection, task_type: str = "CAUSAL_LM"):
    """peft.LoraConfig from our LoraSection (task_type SEQ_CLS for reward/value models)."""
    from peft import LoraConfig

    return LoraConfig(
        r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=list(lora.target_modules),
        task_type=task_type, bias="none",
    )


def quantization_config(lora: LoraSection):
    """4-bit NF4 BitsAndBytesConfig for QLoRA, or None when QLoRA is off; a UserError where it
    cannot run (no CUDA GPU or no bitsandbytes)."""
    if not (lora.enabled and lora.qlora):
        return None
    if not torch.cuda.is_available():
        raise UserError(
            "lora.qlora=true needs a CUDA GPU (bitsandbytes 4-bit kernels); none is visible. "
            "Use plain LoRA (lora.qlora=false) or full fine-tuning (lora.enabled=false) on this machine."
        )
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise UserError(
            "lora.qlora=true needs the bitsandbytes package: `pip install bitsandbytes`, "
            "or set lora.qlora=false."
        ) from None
    from transformers import BitsAndBytesConfig

    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=dtype)


def save_lora(model, out_dir: str | Path, tokenizer=None, *, reload_base=None):
    """A LoRA run's artifact: the adapter in out_dir/adapter and merged full weights in out_dir,
    so later stages load it like any full model. Returns the merged model.

    A 4-bit (QLoRA) base cannot take the merge losslessly: `reload_base()` must then return the
    base model in full precision, and the saved adapter is merged into that instead."""
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir / "adapter")
    base = model.get_base_model()
    if getattr(base, "is_loaded_in_4bit", False) or getattr(base, "is_loaded_in_8bit", False):
        if reload_base is None:
            raise ValueError("merging a quantized LoRA base needs reload_base")
        from peft import PeftModel

        model = PeftModel.from_pretrained(reload_base(), out_dir / "adapter")
    merged = model.merge_and_unload()
    merged.save_pretrained(out_dir)
    if tokenizer is not None:
        tokenizer.save_pretrained(out_dir)
        tokenizer.save_pretrained(out_dir / "adapter")
    return merged
