"""`python -m stages.align`: DPO, GRPO or RLOO of the SFT model on TRL's trainers, beside PPO.

    make dpo    # python -m stages.align --config configs/tiny.yaml align.method=dpo
    make grpo   #   ... align.method=grpo   (grpo.num_generations=8 grpo.beta=0.02 ...)
    make rloo   #   ... align.method=rloo

DPO learns from the reward model's own preference pairs; GRPO and RLOO sample answers and are
rewarded by the reward model exactly as PPO is, with PPO's budget of sampled answers. Output
runs/<name>/<method>/: the policy as a Hugging Face causal LM with the chat template (LoRA: merged,
plus adapter/), manifest.json (wall time, pairs or answers used), metrics.jsonl, tb/, samples.md,
report.json. A killed run resumes from its last checkpoint; `make compare` judges all methods.
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from pathlib import Path

from transformers import TrainerCallback

from data.demo import input_path
from data.held_out_judge import held_out_judge
from data.report_prompts import report_prompts
from pipeline.artifacts.store import resolve_model_source, start_artifact
from pipeline.chain.table import inputs_of, is_up_to_date, key, reward_stats
from pipeline.config.cli import stage_config
from pipeline.config.loader import to_dict
from pipeline.errors import UserError, main_guard
from pipeline.judge.comparison import headline, summary_line
from pipeline.judge.curve_report import curve_headline, plot_curve
from pipeline.judge.evaluate import RewardJudge, reward_max_length
from pipeline.lm.hf_glue import MetricsCallback, RunGuard, resume_checkpoint, save_lora, step_of
from pipeline.lm.loading import loading
from pipeline.lm.model import load_causal_lm, set_generation_defaults
from pipeline.runtime.device import accelerate_state, pick_device, seed_everything, share_cpu_threads
from stages.align import dpo, online, preferences
from stages.align import report as heldout
from stages.align.curve import curve_prompts, dev_curve

log = logging.getLogger("stages.align")
ELAPSED = "elapsed.json"  # training seconds so far, saved with each checkpoint: wall time survives a resume


class TrainingClock(TrainerCallback):
    """Training wall time across kills: the time saved with the checkpoint resumed from, plus this run's."""

    def __init__(self, resumed_from: str | None):
        f = Path(resumed_from or "") / ELAPSED
        self.before = json.loads(f.read_text())["seconds"] if resumed_from and f.is_file() else 0.0
        self.start = time.time()

    @property
    def seconds(self) -> float:
        return self.before + time.time() - self.start

    def on_save(self, args, state, control, **kwargs):
        d = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if d.is_dir():
            (d / ELAPSED).write_text(json.dumps({"seconds": self.seconds}))


def load_policy(source: str):
    from transformers import AutoTokenizer

    model = load_causal_lm(source)
    with loading(source, "tokenizer", model=False, tokenizer=True):
        tokenizer = AutoTokenizer.from_pretrained(source)
    if not tokenizer.chat_template or tokenizer.pad_token_id in (None, tokenizer.eos_token_id):
        raise UserError(f"{source} is not a chat model with a PAD token distinct from EOS: align an SFT model "
                        "(`make sft`, or point policy at one).")
    tokenizer.padding_side = "left"  # prompts end where answers start
    return model, tokenizer


def prepare(cfg, method: str, policy_src: str):
    """Everything read before training, so that bad input fails before a work directory exists:
    (inputs record, model, tokenizer, train data, held-out data, extras)."""
    s = getattr(cfg, method)
    inputs = {"policy": None}
    model, tokenizer = load_policy(policy_src)
    if method == "dpo":
        train_src, held_src = preferences.pair_sources(cfg)
        train = preferences.screen(preferences.load_pairs(train_src), tokenizer, s.max_length, "train")
        held = preferences.screen(preferences.load_pairs([held_src]), tokenizer, s.max_length, "held-out",
                                  keep=s.eval_pairs) if held_src else None
        inputs["data"] = {"train": train.sources, "heldout": held.sources if held else {}}
        return inputs, model, tokenizer, train, held, {}
    from data.loaders import load_prompts
    from pipeline.artifacts.store import source_fingerprint
    from pipeline.judge.ensemble import with_ensemble
    from pipeline.judge.scoring import load_reward_model

    reward_src, reward_rec = resolve_model_source(s.reward_model, cfg.stage_dir("reward"), "make reward")
    prompt_src = input_path(cfg, inputs_of(cfg, method)["prompts"])
    prompts, dropped = online.prompt_dataset([r["prompt"] for r in load_prompts(prompt_src)], tokenizer,
                                             s.max_prompt_length, method)
    rm, rm_tok, _ = load_reward_model(reward_src)
    rm = with_ensemble(rm, reward_src, how=cfg.ppo.reward_aggregate, coef=cfg.ppo.reward_uncertainty_coef)  # as PPO
    if rm_tok.get_vocab() != tokenizer.get_vocab():
        raise UserError(f"{reward_src} and {policy_src} use different tokenizers; the reward model must read the "
                        "policy's tokens (train it from this SFT model with `make reward`).")
    reward_fn = online.reward_function(cfg, rm, rm_tok, reward_stats(cfg, reward_rec)[:2])
    inputs.update(reward_model=reward_rec, prompts={prompt_src: source_fingerprint(prompt_src)})
    return inputs, model, tokenizer, prompts, None, {"reward_fn": reward_fn, "prompts_dropped": dropped,
                                                     "reward_max_length": reward_max_length(reward_src)}


@main_guard
def main(argv: list[str] | None = None) -> int:
    cfg = stage_config("align", argv, description=__doc__.splitlines()[0])
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    import datasets

    datasets.disable_progress_bars()
    # TRL 1.16 still reads transformers' old `is_gradient_checkpointing` name: nothing of ours to fix
    warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
    method = cfg.align.method
    s = getattr(cfg, method)
    final = cfg.stage_dir(method)
    policy_src, policy_rec = resolve_model_source(s.policy, cfg.stage_dir("sft"), "make sft")
    device = pick_device(cfg.run.device)
    share_cpu_threads(device.type)
    seed_everything(cfg.run.seed)
    inputs, model, tokenizer, train, held, extra = prepare(cfg, method, policy_src)
    inputs["policy"] = policy_rec
    if method != "dpo":
        curve_prompts(cfg, method)  # keep=best / early stop without gold to choose by: refused before any work
    if is_up_to_date(cfg, method):
        return 0

    state = accelerate_state()
    writer = start_artifact(final, method, resume=s.resume,
                            key=key(cfg, method))
    state.wait_for_everyone()
    # GRPO and RLOO sample as they train: another process count would not continue the same run
    same_processes = method.upper() if method in ("grpo", "rloo") else None
    checkpoint = resume_checkpoint(writer.checkpoint_dir, f"{method}.resume", same_processes) if s.resume else None
    callback = MetricsCallback(writer.out_dir, desc=method, resume_step=step_of(checkpoint))
    clock = TrainingClock(checkpoint)
    if method == "dpo":
        ref = load_causal_lm(policy_src)
        trainer = dpo.build_trainer(cfg, model, ref, tokenizer, train.records, held.records if held else None,
                                    output_dir=writer.checkpoint_dir, callback=callback)
        print(f"dpo: {len(train.records)} pairs from {', '.join(train.sources)}"
              f"{f'; held out {len(held.records)}' if held else ''}; beta {s.beta}")
    else:
        budget = online.episodes(cfg, method)
        steps = online.optimizer_steps(budget, s)
        extra["reward_fn"].model.to(device)
        trainer = online.build_trainer(method, cfg, model, tokenizer, train, extra["reward_fn"],
                                       output_dir=writer.checkpoint_dir, callback=callback, max_steps=steps)
        print(f"{method}: {len(train)} prompts, {budget} sampled answers in {steps} steps of {online.answers_per_step(s)} "
              f"({s.num_generations} per prompt); reward as PPO's (normalised, missing-EOS penalty "
              f"{cfg.ppo.missing_eos_penalty})")
    trainer.add_callback(clock)
    curve = None if method == "dpo" else dev_curve(cfg, method, policy_src, tokenizer, extra["reward_fn"],
                                                   callback.logger, checkpoint, device)
    if curve:  # before RunGuard: a checkpoint is complete only with the curve in it
        trainer.add_callback(curve)
    if checkpoint:
        print(f"resuming from {checkpoint}")
    trainer.add_callback(RunGuard(method))  # finite losses, and only complete checkpoints are resumed
    trainer.train(resume_from_checkpoint=checkpoint)
    train_seconds = clock.seconds
    callback.close()

    policy = trainer.accelerator.unwrap_model(trainer.model)
    if curve:
        curve.restore_best(policy)  # keep=best: the best development point's weights, not the last step's
    if not s.lora.enabled:
        trainer.save_model(str(writer.out_dir))  # gathers FSDP/ZeRO-3 shards; writes on the main process
    trainer.accelerator.wait_for_everyone()
    if not trainer.is_world_process_zero():
        return 0
    if s.lora.enabled:
        policy = save_lora(policy, writer.out_dir, tokenizer)
    (writer.out_dir / "training_args.bin").unlink(missing_ok=True)  # a pickle: no place in an artifact
    tokenizer.save_pretrained(writer.out_dir)
    set_generation_defaults(policy, tokenizer)
    policy.generation_config.save_pretrained(writer.out_dir)

    sft = curve.sft if curve else load_causal_lm(policy_src).to(policy.device)
    chosen = report_prompts(cfg, method)
    reward_fn = extra.get("reward_fn")  # DPO has none: its report has no RM scores
    reward = None if reward_fn is None else RewardJudge(reward_fn.model, reward_fn.tokenizer, extra["reward_max_length"],
                                                        stats=(reward_fn.mean, reward_fn.std))
    report, rows = heldout.heldout_report(policy, sft, tokenizer, chosen, heldout.sampling(cfg, method), method=method,
                                          reward=reward, gold=held_out_judge(cfg, policy.device),
                                          kl_budget=cfg.ppo.kl_budget)
    summary = curve.curve.summary() if curve else {}
    heldout.write_samples(writer.out_dir / "samples.md", method, report, rows, chosen.source, curve=summary,
                          plot=plot_curve(summary, writer.out_dir))
    metrics = {k: v for k, v in callback.last.items() if isinstance(v, (int, float))}
    metrics.update(headline(report, "heldout_") if report else {})
    metrics.update(curve_headline(summary))
    metrics.update(steps=trainer.state.global_step, train_wall_time_s=round(train_seconds, 1))
    if method == "dpo":
        metrics.update(pairs=len(train.records), pairs_seen=dpo.pairs_seen(trainer),
                       **{f"train_{k}": v for k, v in train.counts().items()})
    else:
        metrics.update(answers_sampled=online.answers_sampled(trainer.state.global_step, s),
                       prompts_dropped=extra["prompts_dropped"])
    (writer.out_dir / "report.json").write_text(json.dumps({**metrics, "heldout": report, "curve": summary}, indent=2)
                                                + "\n")
    writer.commit(config=to_dict(cfg), inputs=inputs, metrics=metrics)
    print_summary(method, final, metrics, report)
    return 0


def print_summary(method: str, final, m: dict, report: dict) -> None:
    used = (f"{m['pairs_seen']} pair updates over {m['pairs']} pairs" if method == "dpo"
            else f"{m['answers_sampled']} sampled answers")
    print(f"\n{method} done -> {final}: {m['steps']} steps, {used}, {m['train_wall_time_s']:.0f} s of training")
    if report:
        print(f"  {summary_line(report, 'development prompts')}")
        if "quality_bar" in report:
            print(f"  {report['quality_bar']['verdict']}")
    print(f"  samples: {final}/samples.md; compare all methods with `make compare`")


if __name__ == "__main__":
    raise SystemExit(main())
