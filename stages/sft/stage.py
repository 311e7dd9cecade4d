"""Supervised fine-tuning: turn the pretrained GPT into a chat model that answers instructions.

    python -m stages.sft --config configs/tiny.yaml [sft.init_from=DIR_OR_HUB_NAME] [sft.lora.enabled=true]

Built on TRL's SFTTrainer with the loss on assistant tokens only (our chat template's
{% generation %} markers, or a foreign model's own template read by pipeline/lm/chat_format.py;
sft.assistant_only_loss=false trains on whole conversations). Output runs/<name>/sft/: model + tokenizer (chat template), for LoRA
runs merged weights plus adapter/, manifest.json, metrics.jsonl, tb/, samples.md. Before and after
training it measures the held-out assistant-token loss, and scores greedy answers to held-out
prompts with the gold metric: the baseline later stages are compared against.
"""

from __future__ import annotations

import logging
import math
import sys

from pipeline.artifacts.atomic import translating_disk_errors
from pipeline.artifacts.store import resolve_model_source, start_artifact
from pipeline.chain.table import is_up_to_date, key
from pipeline.config.cli import stage_config
from pipeline.config.loader import to_dict
from pipeline.errors import main_guard
from pipeline.lm.hf_glue import (
    MetricsCallback,
    RunGuard,
    lora_config,
    make_chat_ready,
    quantization_config,
    resume_checkpoint,
    save_lora,
    step_of,
    trainer_kwargs,
    use_our_progress,
)
from pipeline.lm.model import count_parameters, load_causal_lm, set_generation_defaults
from pipeline.lm.tokenizer import load_tokenizer
from pipeline.runtime.batch import announce, section_split
from pipeline.runtime.device import accelerate_state, seed_everything
from pipeline.runtime.sharding import describe_shards, shard_cpu_launch, stage_shards_on_cpu
from stages.sft.dataset import Screened, heldout_prompts, load_sft_splits, screen_splits
from stages.sft.report import answer, gold_eval, write_samples

log = logging.getLogger("stages.sft")


def load_model(source: str, cfg, quant=None):
    """Tokenizer (made chat-ready) and causal LM (embeddings grown to match) from `source`."""
    tokenizer, changes = load_tokenizer(source)
    attn = cfg.model.attn_implementation
    if quant is None:
        model = load_causal_lm(source, attn_implementation=attn)
    else:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(source, quantization_config=quant, attn_implementation=attn,
                                                     dtype=quant.bnb_4bit_compute_dtype)
    for c in changes:
        log.warning("%s: %s", source, c)
    rows = model.get_input_embeddings().num_embeddings
    changes += make_chat_ready(model, tokenizer, source=source)
    set_generation_defaults(model, tokenizer)
    new_ids = list(range(rows, len(tokenizer)))
    return model, tokenizer, changes, new_ids


def build_trainer(cfg, model, tokenizer, train: Screened, val: Screened, writer, callback, new_token_ids,
                  max_length=None):
    from trl import SFTConfig, SFTTrainer

    s = cfg.sft
    if s.packing and model.config._attn_implementation != "flash_attention_2":
        # Correct (position ids restart per conversation, so attention stays inside each), but
        # without flash-attention's varlen kernels SDPA attends over the whole flattened batch.
        log.warning("sft.packing=true without flash_attention_2: correct but usually slower than padded "
                    "batches; set model.attn_implementation=flash_attention_2 on a GPU")
    args = SFTConfig(
        **trainer_kwargs(s, output_dir=writer.checkpoint_dir, run=cfg.run,
                         batch=announce("sft", section_split(s, "sft", "conversations"))),
        max_length=max_length or s.max_length,
        # The screening's token ids and assistant masks (none: whole conversations) go to TRL pre-tokenized, the
        # content encoded as plain text (pipeline/lm/chat_format.encode_chat): TRL's own tokenization would read a
        # `<|end|>` typed in the data as the end of a turn.
        assistant_only_loss=False,
        packing=s.packing,
        packing_strategy="bfd",  # whole conversations per row; position ids restart at each one
        eval_packing=False,  # held-out loss per conversation, comparable across runs
        # Without packing, batches of similar lengths waste less compute on padding.
        train_sampling_strategy="random" if s.packing else "group_by_length",
        dataset_num_proc=None,
        # The screening's rows are final (cut at max_length, labels built): TRL's per-row passes over them would
        # take minutes on a big set. Packing still needs TRL's preparation (it packs the screened rows).
        dataset_kwargs={"skip_prepare_dataset": not s.packing},
    )
    peft_config = None
    if s.lora.enabled:
        peft_config = lora_config(s.lora)
        if new_token_ids:
            # Tokens added to a foreign tokenizer start untrained; LoRA alone would never fit them.
            peft_config.trainable_token_indices = {"embed_tokens": list(new_token_ids)}
    trainer = sharded_on_cpu_launch(grouped_by_global_batch(SFTTrainer), lora=s.lora.enabled)(
        model=model, args=args, processing_class=tokenizer,
        train_dataset=train.encoded, eval_dataset=val.encoded,
        peft_config=peft_config, callbacks=[callback, RunGuard("sft")],
    )
    use_our_progress(trainer)
    return trainer


def grouped_by_global_batch(trainer_cls):
    """`trainer_cls` whose length-grouped order is drawn for the global batch from the run's seed, so every
    optimizer step trains on the same conversations whatever the number of processes (the Trainer groups
    by one process's batch and draws from the global RNG: 2 processes would see other batches than 1)."""
    import torch
    from transformers.trainer_pt_utils import LengthGroupedSampler

    class GroupedByGlobalBatch(trainer_cls):
        def _get_train_sampler(self, train_dataset=None):
            a = self.args
            if a.train_sampling_strategy != "group_by_length":
                return super()._get_train_sampler(train_dataset)
            dataset = train_dataset if train_dataset is not None else self.train_dataset
            return LengthGroupedSampler(a.per_device_train_batch_size * a.gradient_accumulation_steps * a.world_size,
                                        dataset=dataset, model_input_name="input_ids",
                                        generator=torch.Generator().manual_seed(a.data_seed or a.seed))

    return GroupedByGlobalBatch


def sharded_on_cpu_launch(trainer_cls, lora: bool):
    """`trainer_cls` that shards its model when a CPU launch asks for FSDP, as the Trainer does on GPUs
    (pipeline.runtime.sharding: accelerate turns FSDP on only for GPU process groups)."""

    class ShardedOnCpuLaunch(trainer_cls):
        def create_accelerator_and_postprocess(self):
            super().create_accelerator_and_postprocess()
            if shard_cpu_launch(self.accelerator) and not self.is_fsdp_enabled:
                if lora:
                    from pipeline.errors import UserError

                    raise UserError("sft.lora.enabled with FSDP on CPU processes is not supported here: launch "
                                    "with configs/accelerate/cpu_ddp.yaml, or set sft.lora.enabled=false.")
                self.is_fsdp_enabled = True  # what the Trainer reads from accelerate's state on GPUs

    return ShardedOnCpuLaunch


def evaluate_loss(trainer, callback, *, log_it: bool) -> float:
    enabled = callback.enabled
    callback.enabled = enabled and log_it
    untrained = trainer.model_wrapped is trainer.model
    # Before training, FSDP2 cannot shard the model alone (accelerate shards a model with its optimizer): each
    # process evaluates its share of the held-out set on its whole, unsharded copy, as under DDP.
    sharded, trainer.is_fsdp_enabled = trainer.is_fsdp_enabled, trainer.is_fsdp_enabled and not untrained
    try:
        return float(trainer.evaluate()["eval_loss"])
    finally:
        trainer.is_fsdp_enabled = sharded
        callback.enabled = enabled
        if untrained:
            # evaluate() marks the bare model as prepared for evaluation; train() would then skip wrapping it in
            # DDP, and each process would train its own copy on its own share of the batch (never synchronised)
            model = trainer.model
            model.__dict__.pop("_is_accelerate_prepared", None)
            trainer.accelerator._models = [m for m in trainer.accelerator._models if m is not model]


def save_artifact(trainer, tokenizer, out_dir, lora: bool, source: str):
    """Write the model into the artifact; returns the model to evaluate (merged for LoRA)."""
    model = trainer.accelerator.unwrap_model(trainer.model)
    if lora:
        if not trainer.is_world_process_zero():
            return None

        def reload_base():
            base = load_causal_lm(source)
            make_chat_ready(base, tokenizer)
            return base

        merged = save_lora(model, out_dir, tokenizer, reload_base=reload_base)
        set_generation_defaults(merged, tokenizer)
        merged.generation_config.save_pretrained(out_dir)
        return merged.to(trainer.args.device)
    set_generation_defaults(model, tokenizer)
    trainer.save_model(str(out_dir))  # handles FSDP/DeepSpeed gathering; writes on the main process
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(out_dir)
        (out_dir / "training_args.bin").unlink(missing_ok=True)  # a pickle: no place in an artifact
    if trainer.is_fsdp_enabled:  # the report samples on the main process alone: the saved, whole model
        return load_causal_lm(str(out_dir)).to(trainer.args.device) if trainer.is_world_process_zero() else None
    return model


@main_guard
def main(argv: list[str] | None = None) -> int:
    cfg = stage_config("sft", argv, description=__doc__.splitlines()[0])
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()  # weight loading/saving bars: noise next to ours
    import datasets

    datasets.disable_progress_bars()
    s = cfg.sft
    stage_shards_on_cpu()
    seed_everything(cfg.run.seed)
    final_dir = cfg.stage_dir("sft")

    source, source_record = resolve_model_source(s.init_from, cfg.stage_dir("pretrain"), "make pretrain")
    with accelerate_state().main_process_first():  # under `accelerate launch`, one process builds the demo data
        train_raw, val_raw, data_record = load_sft_splits(cfg)
    inputs = {"model": source_record, "data": data_record}
    if is_up_to_date(cfg, "sft"):
        return 0

    quant = quantization_config(s.lora)
    model, tokenizer, changes, new_token_ids = load_model(source, cfg, quant)
    max_length = s.max_length
    context = getattr(model.config, "max_position_embeddings", None)
    if context and max_length > context:
        log.warning("sft.max_length=%d is over the model's context of %d positions; using %d",
                    max_length, context, context)
        max_length = context
    with accelerate_state().main_process_first():  # one process screens into the cache, the others map it
        train_s, val_s = screen_splits(train_raw, val_raw, tokenizer, max_length, s.assistant_only_loss)

    with accelerate_state().main_process_first():
        writer = start_artifact(final_dir, "sft", resume=s.resume,
                                key=key(cfg, "sft"))
    resume = resume_checkpoint(writer.checkpoint_dir, "sft.resume")
    if resume:
        print(f"resuming from {resume}")
    callback = MetricsCallback(writer.out_dir, desc="sft", resume_step=step_of(resume))
    trainer = build_trainer(cfg, model, tokenizer, train_s, val_s, writer, callback, new_token_ids,
                            max_length=max_length)
    main_process = trainer.is_world_process_zero()
    if main_process:
        print(f"sft: {source} ({count_parameters(model) / 1e6:.2f}M parameters"
              f"{f', LoRA r={s.lora.r}' if s.lora.enabled else ''}), {len(train_s.records)} train / "
              f"{len(val_s.records)} validation conversations, max_length {max_length}")

    pre_loss = evaluate_loss(trainer, callback, log_it=resume is None)
    if main_process:
        print(f"held-out assistant-token loss before sft: {pre_loss:.3f}")
    with translating_disk_errors(writer.work_dir):  # checkpoints: one line when the disk is full
        trainer.train(resume_from_checkpoint=resume)
    describe_shards(trainer.accelerator, trainer.model, "model")
    if callback.last_eval_step == trainer.state.global_step:
        post_loss = float(callback.last["eval_loss"])
    else:
        post_loss = evaluate_loss(trainer, callback, log_it=True)
    callback.close()

    final_model = save_artifact(trainer, tokenizer, writer.out_dir, s.lora.enabled, source)
    trainer.accelerator.wait_for_everyone()
    if not main_process:
        return 0

    metrics = report(cfg, source, final_model, tokenizer, val_s.records, writer.out_dir, pre_loss, post_loss)
    metrics.update({f"train_{k}": v for k, v in train_s.counts().items()})
    metrics.update({f"val_{k}": v for k, v in val_s.counts().items()})
    metrics["steps"] = trainer.state.global_step
    metrics["tokenizer_changes"] = changes
    writer.commit(config=to_dict(cfg), inputs=inputs, metrics=metrics)
    print_summary(final_dir, metrics)
    return 0


def report(cfg, source, model, tokenizer, val_records, out_dir, pre_loss, post_loss) -> dict:
    """Held-out answers: gold score for the SFT model and for its starting point, samples.md."""
    s = cfg.sft
    heldout = heldout_prompts(val_records, max(s.gold_prompts, s.num_samples))
    model.eval()
    sft_gold = gold_eval(model, tokenizer, heldout[:s.gold_prompts], max_new_tokens=s.max_new_tokens,
                         seed=cfg.run.seed)
    base, _, _, _ = load_model(source, cfg)
    base.to(next(model.parameters()).device)
    base_gold = gold_eval(base, tokenizer, heldout[:s.gold_prompts], max_new_tokens=s.max_new_tokens,
                          seed=cfg.run.seed)
    shown = heldout[:s.num_samples]
    columns = {
        "sft, temperature 0": sft_gold["answers"][:len(shown)],
        "sft, temperature 0.7": answer(model, tokenizer, [p for p, _ in shown], temperature=0.7,
                                       max_new_tokens=s.max_new_tokens, seed=cfg.run.seed),
        "before sft (pretrained), temperature 0": base_gold["answers"][:len(shown)],
    }
    del base
    metrics = {
        "pretrained_eval_loss": pre_loss,
        "eval_loss": post_loss,
        "eval_ppl": math.exp(min(post_loss, 50.0)),
        "pretrained_eval_ppl": math.exp(min(pre_loss, 50.0)),
        "gold_score": sft_gold["gold_score"],
        "pretrained_gold_score": base_gold["gold_score"],
        "eos_rate": sft_gold["eos_rate"],
        "pretrained_eos_rate": base_gold["eos_rate"],
        "gold_prompts": len(sft_gold["answers"]),
    }
    header = (f"Held-out assistant-token loss {pre_loss:.3f} -> {post_loss:.3f}; gold score (greedy, "
              f"{metrics['gold_prompts']} prompts) {_fmt(base_gold['gold_score'])} -> {_fmt(sft_gold['gold_score'])}.")
    write_samples(out_dir / "samples.md", shown, columns, header=header)
    return metrics


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def print_summary(final_dir, m: dict) -> None:
    print(f"\nsft done -> {final_dir}")
    print(f"  held-out assistant-token loss: pretrained {m['pretrained_eval_loss']:.3f} -> sft {m['eval_loss']:.3f}"
          f"  (perplexity {m['pretrained_eval_ppl']:.1f} -> {m['eval_ppl']:.1f})")
    print(f"  gold score of greedy answers ({m['gold_prompts']} held-out prompts): pretrained "
          f"{_fmt(m['pretrained_gold_score'])} -> sft {_fmt(m['gold_score'])}")
    print(f"  answers that stop with EOS: pretrained {_fmt(m['pretrained_eos_rate'])} -> sft {_fmt(m['eos_rate'])}")
    print(f"  data: train {m['train_used']}/{m['train_total']} used ({m['train_truncated']} truncated, "
          f"{m['train_dropped_too_long']} too long, {m['train_no_assistant']} without assistant turn)")
    print(f"  samples: {final_dir}/samples.md")


if __name__ == "__main__":
    sys.exit(main())
