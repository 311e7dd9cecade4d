"""`python -m stages.ppo`: RLHF of the SFT model against the reward model, as a stage artifact.

    python -m stages.ppo --config configs/tiny.yaml [ppo.kl_coef=0.05 ppo.total_episodes=4096 ...]

Reads runs/<name>/sft and runs/<name>/reward (reward-rN in round N, run.round); writes runs/<name>/ppo/
(ppo-rN in round N): the policy as a Hugging Face causal LM with the tokenizer/chat template (with LoRA
also adapter/), value/ (the value model, or with LoRA by default its head on the shared base),
manifest.json, metrics.jsonl, samples.md, report.json, report.md. A killed run resumes from its last
checkpoint when re-run.

The stage reports on development prompts (`ppo.eval_data`, by default the demo's ppo_dev.jsonl:
objects disjoint from PPO's training prompts, SFT, the rankings and evaluation). Tune PPO on that
report; evaluation's prompts are the test set and are not looked at while tuning.
"""

from __future__ import annotations

import json
import os

import torch

from data.demo import input_path
from data.held_out_judge import held_out_judge
from data.report_prompts import report_prompts
from pipeline.artifacts.store import resolve_model_source, start_artifact
from pipeline.chain.table import inputs_of, is_up_to_date, key, reward_stats
from pipeline.config.cli import stage_config
from pipeline.config.loader import to_dict
from pipeline.errors import UserError, main_guard
from pipeline.graph.rounds import current_round, make_command, round_dir
from pipeline.judge.comparison import summary_line
from pipeline.judge.curve_report import curve_headline, plot_curve
from pipeline.judge.evaluate import reward_max_length
from pipeline.lm.model import model_dtype
from pipeline.runtime.device import mixed_precision, pick_device, seed_everything, share_cpu_threads
from pipeline.runtime.sharding import stage_shards_on_cpu
from stages.ppo.evaluation import development_report
from stages.ppo.models import check_memory, load_models, merged_policy, save_value
from stages.ppo.report import dev_headline, render_report
from stages.ppo.trainer import PPOTrainer


def prompt_sources(cfg) -> tuple[str, str | None]:
    """(training prompts, development prompts with gold answers or None), as pipeline/chain/table.py declares them."""
    inputs = inputs_of(cfg, "ppo")
    dev = inputs["dev_prompts"]
    return input_path(cfg, inputs["prompts"]), input_path(cfg, dev) if dev else None


def load_prompt_sets(cfg):
    from data.loaders import load_prompts

    train_src, eval_src = prompt_sources(cfg)
    train = load_prompts(train_src)
    if eval_src:
        dev = load_prompts(eval_src)
    else:  # no development set given: keep the last prompts aside (never trained on)
        n = min(cfg.ppo.num_eval_prompts, len(train) // 5)
        train, dev = train[: len(train) - n], train[len(train) - n:]
        eval_src = f"the last {n} prompts of {train_src}"
    if not train:
        raise UserError(f"{train_src} holds no prompt for PPO (ppo.data).")
    if len(train) < cfg.ppo.batch_size:  # refused before any work: a run that cannot make one batch never starts
        raise UserError(f"{train_src} holds {len(train)} training prompts (ppo.data), fewer than one batch "
                        f"(ppo.batch_size={cfg.ppo.batch_size}): give more prompts or a smaller ppo.batch_size.")
    if not dev:
        raise UserError(f"no development prompts for PPO's report: {eval_src} is empty; give ppo.eval_data (prompts "
                        "with gold answers, never trained on) or more prompts in ppo.data.")
    return [r["prompt"] for r in train], [r["prompt"] for r in dev], [r.get("gold") for r in dev], eval_src


def check_keep(p, judge: str, curve_golds: list) -> None:
    """keep=best and early stop choose by the held-out judge's score of the development answers: refused, before
    any work, where the demo's judge has no gold answers to judge by (the proxy would choose, and it keeps rising
    while gold falls)."""
    if p.keep == "last" and not p.early_stop_patience:
        return
    if p.num_eval_prompts == 0:
        raise UserError(f"ppo.keep={p.keep} ppo.early_stop_patience={p.early_stop_patience} need development "
                        "evaluations: set ppo.num_eval_prompts > 0, or ppo.keep=last ppo.early_stop_patience=0.")
    if judge == "demo" and not any(curve_golds):
        raise UserError(f"ppo.keep={p.keep} ppo.early_stop_patience={p.early_stop_patience} choose by the gold of "
                        "the development prompts, and the first ppo.num_eval_prompts of them have no gold answer: "
                        "give ppo.eval_data with gold answers, another judge (judge.gold), or ppo.keep=last "
                        "ppo.early_stop_patience=0.")


def read_score_stats(cfg, ppo_cfg) -> tuple[float, float]:
    """The mean/std of the reward model's scores of the policy's answers (the reward-stats step, current)."""
    mean, std, stats = reward_stats(cfg)
    length = ppo_cfg.max_prompt_length + ppo_cfg.max_new_tokens
    if stats.get("max_length") and length > stats["max_length"]:
        print(f"ppo: warning: prompts + answers reach {length} tokens but the reward model was trained on "
              f"{stats['max_length']}; its scores of longer sequences are extrapolation.")
    return mean, std


@main_guard
def main(argv: list[str] | None = None) -> int:
    from accelerate import Accelerator

    cfg = stage_config("ppo", argv, description="PPO: optimise the SFT policy against the reward model.")
    p = cfg.ppo
    final = round_dir(cfg, "ppo")  # round N > 1 (run.round): ppo-rN, from SFT against reward-rN
    policy_src, policy_rec = resolve_model_source(p.policy, cfg.stage_dir("sft"), "make sft")
    reward_src, reward_rec = resolve_model_source(p.reward_model, round_dir(cfg, "reward"),
                                                  make_command("reward", current_round(cfg)))
    inputs = {"policy": policy_rec, "reward_model": reward_rec}
    if is_up_to_date(cfg, "ppo"):
        return 0
    # bad input before a work directory exists: the prompts, then the statistics (built by make reward-stats)
    prompts, dev_prompts, dev_golds, dev_source = load_prompt_sets(cfg)  # builds a missing demo first
    check_keep(p, cfg.judge.gold, dev_golds[: p.num_eval_prompts])
    score_stats = read_score_stats(cfg, p)

    stage_shards_on_cpu()  # the trainer shards the policy and value under an FSDP launch (pipeline.runtime.sharding)
    device = pick_device(cfg.run.device)
    share_cpu_threads(device.type)
    frozen_dtype = model_dtype(cfg.run.dtype, device)  # reference, reward model, a LoRA base
    check_memory(cfg, policy_src, reward_src, device, frozen_dtype, world=int(os.environ.get("WORLD_SIZE", 1)))
    acc = Accelerator(mixed_precision=mixed_precision(cfg.run.dtype, device.type), cpu=device.type == "cpu")
    seed_everything(cfg.run.seed + acc.process_index)  # a different sample stream on each rank
    writer = start_artifact(final, "ppo", resume=p.resume, key=key(cfg, "ppo"))
    acc.wait_for_everyone()

    models = load_models(p, policy_src, reward_src, frozen_dtype)
    eval_prompts, eval_golds = dev_prompts[: p.num_eval_prompts], dev_golds[: p.num_eval_prompts]
    chosen = report_prompts(cfg, "ppo", development=([{"prompt": q, "gold": g} for q, g in zip(dev_prompts, dev_golds)],
                                                     dev_source))
    if acc.is_main_process:
        print(f"ppo: {len(prompts)} training prompts, {len(dev_prompts)} development prompts (not trained on) "
              f"from {dev_source}; {p.total_episodes} episodes "
              f"in {p.total_episodes // p.batch_size} rollouts of {p.batch_size}; reward normalised with "
              f"mean {score_stats[0]:.3f} std {score_stats[1]:.3f}")
    gold = held_out_judge(cfg, acc.device, batch_size=p.forward_batch_size)  # the curve's and the report's
    trainer = PPOTrainer(p, models.policy, models.ref, models.reward, models.value, models.tokenizer, prompts,
                         reward_stats=score_stats, eval_prompts=eval_prompts, eval_golds=eval_golds,
                         out_dir=writer.out_dir, checkpoint_dir=writer.checkpoint_dir, seed=cfg.run.seed,
                         accelerator=acc, gold_judge=gold)
    if trainer.step_no:
        print(f"ppo: resuming after rollout {trainer.step_no} from {writer.checkpoint_dir}")
    history = trainer.train()
    acc.wait_for_everyone()
    if not acc.is_main_process:
        return 0

    curve = trainer.curve.summary()
    if p.keep == "best":  # the development evaluation with the best gold, not the last update
        trainer.curve.restore_best(acc.unwrap_model(trainer.model))
    if curve:
        print(f"ppo: kept update {curve['kept_step']}: {curve['kept_why']}")
    policy = acc.unwrap_model(trainer.model).policy
    value = acc.unwrap_model(trainer.model).value
    ref = models.ref
    if p.lora.enabled:  # the merged fp32 policy is saved; the comparison holds no more than training did
        from pipeline.lm.model import load_causal_lm

        policy = merged_policy(policy, writer.out_dir, policy_src, models.tokenizer)
        policy.save_pretrained(writer.out_dir)
        if policy.device != acc.device:  # merged on the CPU into a reloaded fp32 base: the training copy leaves
            trainer.model.to("cpu")
            policy = policy.to(acc.device, frozen_dtype)
        ref = load_causal_lm(policy_src, dtype=frozen_dtype).to(acc.device).eval()  # the SFT model
        if acc.device.type == "cuda":
            torch.cuda.empty_cache()
    report = development_report(policy, ref, models.reward, models.tokenizer, chosen, ppo_cfg=p, seed=cfg.run.seed,
                                score_stats=score_stats, reward_max_length=reward_max_length(reward_src),
                                gold=gold)
    if not p.lora.enabled:
        policy.save_pretrained(writer.out_dir)
    models.tokenizer.save_pretrained(writer.out_dir)
    save_value(value, writer.out_dir)
    report["curve"] = curve
    (writer.out_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (writer.out_dir / "report.md").write_text(render_report(report, plot_curve(curve, writer.out_dir)))
    last = history[-1] if history else {}
    summary = {k: last[k] for k in ("score", "kl", "response_length", "eos_fraction") if k in last}
    summary.update(dev_headline(report))
    summary.update(curve_headline(curve))
    if trainer.logger:
        trainer.logger.close()
    writer.commit(config=to_dict(cfg), inputs=inputs, metrics=summary)
    print_report(report, final)
    return 0


def print_report(r: dict, final) -> None:
    print(f"ppo: {summary_line(r, 'development prompts')}")
    print(f"ppo: {r['quality_bar']['verdict']} -> {final}")
