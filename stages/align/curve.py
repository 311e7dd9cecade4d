"""The over-optimisation curve during GRPO and RLOO (TRL's trainers), as PPO draws it (stages/ppo/curve.py).

`DevCurve` is a TrainerCallback: at step 0 (the SFT model itself) and every `<method>.sample_every` optimizer steps
it answers the first `ppo.num_eval_prompts` development prompts under one seed, at the method's sampling settings,
and adds a point to a `pipeline.judge.overoptimisation.Curve`: the proxy (the reward model's score normalised by the
reward statistics, before the clip and missing-EOS penalty, as PPO's curve), gold (the held-out judge), win rates
over SFT's answers (step 0's), KL(policy || SFT) on these answers (k1 and k3 per answer, k3 per token) and the
length. Each point goes to metrics.jsonl/TensorBoard as eval/...

`<method>.keep=best` keeps the best point's trainable weights on the CPU and `<method>.early_stop_patience` stops
training; both survive a kill: the curve (with those weights) is saved into every checkpoint the Trainer writes
(CURVE_FILE) and read back from the checkpoint a run resumes from. A run that stopped early and is resumed takes one
more step before the Trainer sees the stop again; with keep=best that step is never kept.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import TrainerCallback

from pipeline.artifacts.atomic import save_torch
from pipeline.artifacts.checkpoint import load_state_file
from pipeline.judge.answering import Sampling, answer, logprobs_under
from pipeline.judge.overoptimisation import Curve
from pipeline.judge.scoring import score_ids
from pipeline.judge.stats import kl_estimates

CURVE_FILE = "curve.pt"


class DevCurve(TrainerCallback):
    def __init__(self, method: str, s, *, sft, tokenizer, prompts: list, golds: list, reward_fn, gold_judge, logger,
                 seed: int = 1234, resumed_from: str | None = None):
        self.method, self.every = method, s.sample_every
        self.curve = Curve(s.keep, s.early_stop_patience, section=method)
        self.curve.judge = gold_judge.name
        self.sft, self.tok, self.prompts, self.golds = sft, tokenizer, prompts, golds
        self.reward_fn, self.gold_judge, self.logger = reward_fn, gold_judge, logger
        self.sampling = Sampling(temperature=s.temperature, max_new_tokens=s.max_new_tokens, seed=seed,
                                 batch_size=reward_fn.batch_size, top_k=s.top_k, top_p=s.top_p, section=method)
        f = Path(resumed_from or "") / CURVE_FILE
        if resumed_from and f.is_file():
            self.curve.load_state_dict(load_state_file(f, f"{method}.resume"))

    def evaluate(self, step: int, model) -> dict:
        ans = answer(model, self.tok, self.prompts, self.sampling, name=self.method, logprobs=True)
        ref = logprobs_under(self.sft, self.tok, ans, self.sampling)
        kl = kl_estimates(ans.logprobs, ref)
        tokens = max(sum(len(a) for a in ans.answer_ids), 1)
        kl_point = {"kl_k1": kl["k1_mean"], "kl_k3": kl["k3_mean"], "kl_k1_token": kl["k1_per_token"] or 0.0,
                    "kl_k3_token": kl["k3_mean"] * kl["n"] / tokens}
        rf = self.reward_fn
        raw = score_ids(rf.model, [list(p) + list(a) for p, a in zip(ans.prompt_ids, ans.answer_ids)],
                        rf.tokenizer.pad_token_id, rf.batch_size)
        point = self.curve.add(step, proxy=((raw - rf.mean) / rf.std).tolist(),
                               gold=self.gold_judge.score(self.prompts, ans.answers, self.golds), kl=kl_point,
                               length=tokens / len(ans.answer_ids), model=model)
        metrics = {f"eval/{k}": point[k] for k in ("proxy", "gold", "win_rate_proxy", "win_rate_gold", "kl_k1",
                                                    "kl_k3", "kl_k1_token", "kl_k3_token", "length")
                   if point[k] is not None}
        if self.logger is not None:
            self.logger.log(step, **metrics)
        return point

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if state.global_step == 0 and not self.curve.points:
            self.evaluate(0, model)  # the SFT model: the baseline every later point is read against

    def on_step_end(self, args, state, control, model=None, **kwargs):
        step = state.global_step
        if step % self.every == 0 or step >= state.max_steps:
            self.evaluate(step, model)
            if self.curve.stopped:
                control.should_training_stop = True
                control.should_save = True  # the stop goes into a checkpoint: a resumed run knows it
        return control

    def on_save(self, args, state, control, **kwargs):
        d = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if d.is_dir() and state.is_world_process_zero:
            save_torch(self.curve.state_dict(), d / CURVE_FILE)

    def restore_best(self, model) -> None:
        """keep=best: the best point's weights back into `model` (before the stage saves it)."""
        if self.curve.keep == "best":
            with torch.no_grad():
                self.curve.restore_best(model)


def curve_prompts(cfg, method: str) -> tuple[list, list]:
    """The curve's prompts and gold answers: the first ppo.num_eval_prompts development prompts of the report rule
    (data/report_prompts.py). keep=best and early stop are refused (one line, before any work) where there are none
    to choose by, as PPO refuses them."""
    from data.report_prompts import report_prompts
    from pipeline.errors import UserError

    s = getattr(cfg, method)
    chosen = report_prompts(cfg, method)
    n = min(cfg.ppo.num_eval_prompts, chosen.distinct)
    prompts, golds = chosen.prompts[:n], chosen.golds[:n]
    choosing = s.keep == "best" or s.early_stop_patience
    settings = f"{method}.keep={s.keep} {method}.early_stop_patience={s.early_stop_patience}"
    if choosing and n == 0:
        raise UserError(f"{settings} need development prompts ({chosen.source}): give ppo.eval_data, or "
                        f"{method}.keep=last {method}.early_stop_patience=0.")
    if choosing and cfg.judge.gold == "demo" and not any(golds):
        raise UserError(f"{settings} choose by the gold of the development prompts, and they have no gold answer: "
                        f"give ppo.eval_data with gold answers, another judge (judge.gold), or {method}.keep=last "
                        f"{method}.early_stop_patience=0.")
    return prompts, golds


def dev_curve(cfg, method: str, policy_src: str, tokenizer, reward_fn, logger, checkpoint: str | None, device):
    """The curve's callback for a GRPO/RLOO run, with SFT loaded beside the policy for the KL and the held-out judge
    (judge.gold); None without development prompts."""
    from data.held_out_judge import held_out_judge
    from pipeline.lm.model import load_causal_lm

    prompts, golds = curve_prompts(cfg, method)
    if not prompts:
        return None
    sft = load_causal_lm(policy_src).to(device).eval()
    return DevCurve(method, getattr(cfg, method), sft=sft, tokenizer=tokenizer, prompts=prompts, golds=golds,
                    reward_fn=reward_fn, gold_judge=held_out_judge(cfg, device), logger=logger,
                    resumed_from=checkpoint)
