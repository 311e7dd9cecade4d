"""Reward model: the SFT model with a scalar head, trained on human preferences with TRL's
RewardTrainer (Bradley-Terry loss: -log sigmoid(r_chosen - r_rejected)).

    python -m stages.reward --config configs/tiny.yaml [reward.data=demo+rank|rank|rankings.jsonl.gz] [key=value ...]
    accelerate launch --config_file configs/accelerate/ddp.yaml -m stages.reward --config ...

Output runs/<name>/reward/: a sequence-classification model (AutoModelForSequenceClassification),
its tokenizer with the chat template, reward_model.json (the training max_length), report.md,
metrics.jsonl, TensorBoard logs and manifest.json. The mean/std of its scores that PPO normalises by
are measured by the next step, `python -m stages.reward.stats` (runs/<name>/reward-stats/).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from pipeline.artifacts.atomic import translating_disk_errors
from pipeline.artifacts.finite import check_finite
from pipeline.artifacts.metrics import read_metrics
from pipeline.artifacts.store import resolve_model_source, source_fingerprint, start_artifact
from pipeline.chain.table import is_up_to_date, key
from pipeline.config.cli import stage_config
from pipeline.config.loader import to_dict
from pipeline.errors import main_guard
from pipeline.graph.rounds import round_dir
from pipeline.judge.scoring import TRAINING_FILE
from pipeline.lm.hf_glue import (
    MetricsCallback,
    RunGuard,
    last_checkpoint,
    lora_config,
    make_chat_ready,
    quantization_config,
    resume_checkpoint,
    save_lora,
    step_of,
    trainer_kwargs,
    use_our_progress,
)
from pipeline.runtime.batch import announce, section_split
from pipeline.runtime.device import pick_device, seed_everything, share_cpu_threads
from stages.reward.dataset import (
    feedback_report,
    heldout_source,
    load_heldout,
    load_training_pairs,
    split_by_group,
    straddling_batches,
    tokenize_pairs,
    training_sources,
)
from stages.reward.ensemble import (
    check_ensemble,
    ensemble_report,
    ensemble_summary,
    evaluate_ensemble,
    train_members,
)
from stages.reward.heldout import HeldoutEvalCallback, evaluate_heldout, heldout_from_pairs
from stages.reward.own_answers import evaluate_own_answers, own_answer_inputs, own_answer_sources
from stages.reward.report import write_report
from stages.reward.trainer import make_trainer_class

log = logging.getLogger("stages.reward")


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.3f}"


def load_reward_init(source: str, cfg):
    """The SFT model with a fresh scalar head (num_labels=1), tokenizer made chat-ready."""
    from transformers import AutoTokenizer
    from trl.trainer.reward_trainer import suppress_seqcls_warning

    from pipeline.lm.loading import load_sequence_scorer, loading

    with loading(source, "tokenizer", model=False, tokenizer=True):
        tokenizer = AutoTokenizer.from_pretrained(source)
    with suppress_seqcls_warning():  # the new `score` head and the unused lm_head are expected
        model = load_sequence_scorer(source, "model to start the reward model from", trained_head=False,
                                     dtype=torch.float32, quantization_config=quantization_config(cfg.reward.lora))
    make_chat_ready(model, tokenizer, source=source)
    model.config.pad_token_id = tokenizer.pad_token_id
    tokenizer.padding_side = "right"
    return model, tokenizer


def heldout_history(metrics_dir: Path) -> list[dict]:
    """Held-out evaluations so far, from metrics.jsonl (so a resumed run reports its whole history)."""
    by_step = {}
    for row in read_metrics(metrics_dir):
        if "heldout_accuracy" in row:
            by_step[row["step"]] = {"step": row["step"], **{k[len("heldout_"):]: v for k, v in row.items()
                                                            if k.startswith("heldout_")}}
    return [by_step[k] for k in sorted(by_step)]


@main_guard
def main(argv: list[str] | None = None) -> int:
    cfg = stage_config("reward", argv, description="Train a reward model on preference data (TRL RewardTrainer).")
    r = cfg.reward
    final = round_dir(cfg, "reward")
    init_source, init_record = resolve_model_source(r.init_from, cfg.stage_dir("sft"), "make sft")
    train_srcs, held_src = training_sources(cfg), heldout_source(cfg)
    train_src = "+".join(train_srcs)
    own = own_answer_sources(cfg)
    inputs = {"init": init_record, "data": {"train": {s: source_fingerprint(s) for s in train_srcs},
                                            "heldout": {held_src: source_fingerprint(held_src)} if held_src else {},
                                            "own_answers": own_answer_inputs(own)}}
    check_ensemble(cfg, held_src)
    if is_up_to_date(cfg, "reward"):
        return 0

    from trl import RewardConfig

    device = pick_device(cfg.run.device)
    share_cpu_threads(device.type)
    seed_everything(cfg.run.seed)

    model, tokenizer = load_reward_init(init_source, cfg)
    max_length = r.max_length
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit and max_length > limit:
        log.warning("reward.max_length=%d is over the model's %d positions; using %d.", max_length, limit, limit)
        max_length = limit
    pairs = load_training_pairs(train_srcs, cache=cfg.run_dir / "cache")  # memory-mapped, never Python lists
    if held_src:
        heldout = load_heldout(held_src)
    else:
        pairs, held_pairs = split_by_group(pairs, r.val_fraction, cfg.run.seed)
        heldout = heldout_from_pairs(held_pairs)
    data = tokenize_pairs(pairs, tokenizer, max_length, use_margin=r.use_margin, source=train_src)
    # the work directory only once the inputs are known to be usable: bad data leaves nothing behind
    writer = start_artifact(final, "reward", resume=r.resume,
                            key=key(cfg, "reward"))
    per_prompt = data.counts["kept"] / max(1, data.counts["prompts"])
    print(f"reward data: {data.counts['kept']} pairs from {data.counts['prompts']} prompts ({per_prompt:.1f} per "
          f"prompt); held out: {len(heldout)} pairs ({len(heldout.rankings)} rankings) from {held_src or 'a split'}")
    batch = announce("reward", section_split(r, "reward", "pairs"))
    if r.group_by_prompt and (why := straddling_batches(data.groups, batch.micro)):
        log.warning("reward.group_by_prompt: %s", why)

    args = RewardConfig(**trainer_kwargs(r, output_dir=writer.checkpoint_dir, run=cfg.run, eval=False, batch=batch),
                        max_length=None,  # tokenize_pairs already dropped and counted over-long pairs
                        center_rewards_coefficient=r.center_rewards_coefficient, disable_dropout=True,
                        ddp_find_unused_parameters=False)  # every parameter takes part in the reward
    checkpoint = resume_checkpoint(writer.checkpoint_dir, "reward.resume") if r.resume else None
    metrics_cb = MetricsCallback(writer.out_dir, desc="reward", resume_step=step_of(checkpoint))
    eval_cb = HeldoutEvalCallback(heldout, tokenizer, every=r.eval_every, max_length=max_length,
                                  batch_size=r.batch_size * 2, metrics_callback=metrics_cb)
    peft_config = None
    if r.lora.enabled:
        peft_config = lora_config(r.lora, task_type="SEQ_CLS")
        peft_config.modules_to_save = ["score"]  # the fresh head trains in full
    trainer_cls = make_trainer_class()
    trainer = trainer_cls(
        model=model, args=args, train_dataset=data.dataset(r.use_margin),
        processing_class=tokenizer, callbacks=[metrics_cb, eval_cb, RunGuard("reward")], peft_config=peft_config,
        pair_groups=data.groups if r.group_by_prompt else None,
    )
    use_our_progress(trainer)
    main_process = trainer.is_world_process_zero()
    if checkpoint is None:
        eval_cb.run(trainer.model, 0)  # the untrained head: a baseline for the report
    else:
        print(f"resuming from {checkpoint}")
    with translating_disk_errors(writer.work_dir):  # checkpoints: one line when the disk is full
        trainer.train(resume_from_checkpoint=checkpoint)
    step = trainer.state.global_step
    final_metrics, scores = evaluate_heldout(trainer.model, tokenizer, heldout, max_length=max_length,
                                             batch_size=r.batch_size * 2)
    check_finite("reward", final_metrics, step=step, last_good=last_checkpoint(writer.checkpoint_dir))
    if metrics_cb.enabled:
        metrics_cb.logger.log(step, **{f"heldout_{k}": v for k, v in final_metrics.items() if isinstance(v, float)})
    own_metrics = evaluate_own_answers(trainer.model, tokenizer, own, max_length=max_length,
                                       batch_size=r.batch_size * 2)
    feedback = feedback_report(train_srcs, trainer.model, tokenizer, max_length=max_length,
                               batch_size=r.batch_size * 2)

    if r.lora.enabled:
        if main_process:
            save_lora(trainer.model, writer.out_dir, tokenizer)
    else:
        trainer.save_model(str(writer.out_dir))
    trainer.accelerator.wait_for_everyone()
    ensemble = None
    if r.ensemble > 1:  # the members after the first: the stage again from other seeds (stages/reward/ensemble.py)
        members = train_members(cfg, main, init_source=init_source, train_srcs=train_srcs, held_src=held_src,
                                work_dir=writer.work_dir, out_dir=writer.out_dir, main_process=main_process)
        trainer.accelerator.wait_for_everyone()
        ensemble = evaluate_ensemble(cfg, trainer.model, tokenizer, members, writer.out_dir, heldout=heldout,
                                     own=own, max_length=max_length, batch_size=r.batch_size * 2,
                                     main_process=main_process)
    if main_process:
        (writer.out_dir / "training_args.bin").unlink(missing_ok=True)
        tokenizer.save_pretrained(writer.out_dir)
        (writer.out_dir / TRAINING_FILE).write_text(json.dumps({"max_length": max_length}) + "\n")
        settings = {"init_from": init_source, "data": train_src, "group_by_prompt": r.group_by_prompt,
                    "use_margin": r.use_margin, "center_rewards_coefficient": r.center_rewards_coefficient,
                    "lora": r.lora.enabled, "steps": step, "batch_size": r.batch_size, "lr": r.lr,
                    "max_length": max_length}
        write_report(writer.out_dir / "report.md", title=f"Reward model: {cfg.run.name}", final=final_metrics,
                     history=heldout_history(writer.out_dir), counts=data.counts, heldout=heldout, feedback=feedback,
                     scores=scores, settings=settings, own_answers=own_metrics,
                     ensemble=ensemble_report(ensemble, final_metrics, own_metrics) if ensemble else None)
        summary = {f"heldout_{k}": v for k, v in final_metrics.items() if v is not None}
        summary.update({f"data_{k}": v for k, v in data.counts.items()})
        for name, m in own_metrics.items():
            summary.update({f"own_{name}_{k}": v for k, v in m.items() if isinstance(v, (int, float))})
        # the last training log, from the Trainer's history (a resumed run has it from its checkpoint)
        last_log = next((h for h in reversed(trainer.state.log_history) if "loss" in h), {})
        summary.update({k: v for k, v in last_log.items() if k in ("loss", "accuracy", "margin")})
        summary["steps"] = step
        summary.update({f"feedback_{k}": v for k, v in (feedback or {}).items() if isinstance(v, (int, float))})
        summary.update(ensemble_summary(ensemble) if ensemble else {})
        metrics_cb.close()
        writer.commit(config=to_dict(cfg), inputs=inputs, metrics=summary)
        acc = final_metrics.get("accuracy")
        print(f"reward: held-out accuracy {acc:.3f}" + (
            f", Kendall tau {final_metrics['kendall_tau']:.3f}" if final_metrics.get("kendall_tau") is not None
            else "") + "".join(
            f"; own answers ({name}): accuracy {_fmt(m.get('accuracy'))}, Spearman with gold "
            f"{_fmt(m.get('spearman_gold'))}, best-of-n gold win rate {_fmt(m.get('best_of_n_reward_model'))} "
            f"(blind {_fmt(m.get('best_of_n_blind'))}, by gold {_fmt(m.get('best_of_n_gold'))})"
            for name, m in own_metrics.items()) + f" -> {final}")
        fc = trainer.forward_counts  # not in the manifest: a resumed run counts only what it trained itself
        if fc.get("rows"):
            print(f"reward: the training batches held {fc['rows']:,} answers, {fc['forwarded']:,} distinct, each "
                  "forwarded once" + (" (since the resume)" if checkpoint else ""))
    trainer.accelerator.wait_for_everyone()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
