"""PPO for language models: one rollout, then K epochs of clipped updates, repeated.

Programmatic use (tests, benchmarks/ppo.py):

    from stages.ppo.trainer import PPOTrainer
    trainer = PPOTrainer(cfg.ppo, policy, ref_policy, reward_model, value_model, tokenizer, prompts,
                         reward_stats=(mean, std))          # or reward_fn=callable(RolloutBatch)->[B]
    history = trainer.train()                              # all updates of cfg.total_episodes
    m = trainer.step()                                     # or one rollout + update at a time

  * models are plain HF modules: policy/ref_policy causal LMs, reward_model/value_model
    AutoModelForSequenceClassification (num_labels=1). ref_policy=None means LoRA: the policy is a
    peft model and the reference is the same model with its adapters disabled; value_model may
    then be a `stages.ppo.value.ValueHead` on the policy's own hidden states (one shared base).
  * prompts: user strings or message lists; they get the chat template + `<|assistant|>`.
  * every metrics dict has "time/rollout", "time/update" (seconds), "episodes", "tokens_per_s".
  * out_dir (metrics.jsonl, samples.md) and checkpoint_dir are optional; with checkpoint_dir an
    existing checkpoint is resumed. eval_prompts/eval_golds add held-out samples every
    cfg.sample_every updates. Pass an `accelerate.Accelerator` to run under `accelerate launch`.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from pathlib import Path

import torch

from pipeline.artifacts.finite import check_finite, check_finite_params
from pipeline.artifacts.metrics import MetricsLogger, progress
from pipeline.errors import UserError
from pipeline.judge.overoptimisation import Curve
from pipeline.judge.scoring import process_scores
from pipeline.lm.forward import checkpoint_layers
from pipeline.runtime import sharding
from pipeline.runtime.device import reuse_freed_cpu_memory
from stages.ppo import checkpointing
from stages.ppo.advantages import (
    compute_gae,
    kl_per_token,
    masked_mean,
    masked_var,
    masked_whiten,
    shape_rewards,
)
from stages.ppo.evaluation import SampleWriter
from stages.ppo.kl_controller import make_kl_controller
from stages.ppo.losses import ppo_loss
from stages.ppo.models import adapters_off
from stages.ppo.rollout import (
    RolloutBatch,
    answer_token_logprobs,
    encode_prompts,
    generate,
    left_pad,
    micro_batched,
    pad_answer_columns,
    sampling_config,
    sequence_scores,
    trim_padding,
)
from stages.ppo.value import PolicyAndValue


class PPOTrainer:
    def __init__(self, cfg, policy, ref_policy, reward_model, value_model, tokenizer, prompts, *,
                 reward_fn=None, reward_stats=(0.0, 1.0), eval_prompts=None, eval_golds=None,
                 out_dir=None, checkpoint_dir=None, seed: int = 0, accelerator=None, show_progress=True,
                 gold_judge=None):
        from accelerate import Accelerator

        if tokenizer.pad_token_id is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
            raise UserError("PPO needs a PAD token distinct from EOS, to tell padding from a finished answer.")
        if reward_model is None and reward_fn is None:
            raise ValueError("give a reward_model or a reward_fn")
        self.cfg, self.tok = cfg, tokenizer
        self.acc = accelerator or Accelerator(cpu=not torch.cuda.is_available())
        self.world, self.rank = self.acc.num_processes, self.acc.process_index
        self._check_batch_sizes()
        self.num_updates = cfg.total_episodes // cfg.batch_size
        self.local_batch = cfg.batch_size // self.world
        self.acc.print(f"ppo: {cfg.batch_size} episodes per rollout ({self.local_batch} per process x {self.world} "
                       f"processes); {cfg.num_minibatches} minibatches of {cfg.batch_size // cfg.num_minibatches}, "
                       f"each {cfg.grad_accum} micro-batches of {self.local_batch // cfg.num_minibatches // cfg.grad_accum}"
                       " per process")
        self.prompt_ids, dropped = encode_prompts(tokenizer, prompts, cfg.max_prompt_length)
        if not self.prompt_ids:
            raise UserError(f"no PPO prompt fits ppo.max_prompt_length={cfg.max_prompt_length}; raise it.")
        if dropped:
            print(f"ppo: dropped {dropped} of {len(prompts)} prompts longer than ppo.max_prompt_length tokens")

        device = self.acc.device
        if device.type == "cpu":
            reuse_freed_cpu_memory()  # every update frees and re-allocates the same large blocks
        for m in (policy, ref_policy, reward_model, value_model):
            if m is not None:
                m.eval()  # dropout off in all four: the ratio and the KL must not be noise
        for frozen in (ref_policy, reward_model):
            if frozen is not None:
                frozen.requires_grad_(False).to(device)
        self.ref, self.rm, self.reward_fn = ref_policy, reward_model, reward_fn
        self.score_mean, self.score_std = float(reward_stats[0]), float(reward_stats[1]) or 1.0
        params = [p for m in (policy, value_model) for p in m.parameters() if p.requires_grad]
        self.optimizer = make_adamw(params, lr=cfg.lr, eps=1e-5)
        total_opt_steps = max(1, self.num_updates * cfg.ppo_epochs * cfg.num_minibatches)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: max(0.0, 1.0 - s / total_opt_steps))
        self.sharded = sharding.shard_cpu_launch(self.acc)
        if self.sharded and (ref_policy is None or getattr(cfg, "keep", "last") == "best"):
            raise UserError("PPO under FSDP shards the policy across processes; ppo.keep=best (which copies the "
                            "weights on one process) and LoRA (whose reference is the policy itself) are not "
                            "supported with it: set ppo.keep=last and ppo.lora.enabled=false, or launch with DDP.")
        self.model, self.optimizer = self.acc.prepare(PolicyAndValue(policy, value_model).eval(), self.optimizer)
        sharding.describe_shards(self.acc, self.model, "policy and value")
        if getattr(cfg, "gradient_checkpointing", False):
            for m in (policy, value_model):
                if hasattr(m, "gradient_checkpointing_enable") or hasattr(m, "get_base_model"):
                    checkpoint_layers(m)
        self.kl_ctl = make_kl_controller(cfg)
        self.gen_config = sampling_config(tokenizer, cfg.max_new_tokens, cfg.temperature, cfg.top_k, cfg.top_p)
        # Same prompt order on every rank (same seed); each rank takes its own slice.
        self.sampler = torch.Generator().manual_seed(seed)
        self.order, self.cursor, self.step_no = torch.randperm(len(self.prompt_ids), generator=self.sampler), 0, 0
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir else None
        self.history: list[dict] = []
        self.curve = Curve(getattr(cfg, "keep", "last"), getattr(cfg, "early_stop_patience", 0))
        resumed = checkpointing.exists(self.checkpoint_dir)
        if resumed:
            self._load()
        # A fresh start begins new files: what a run killed before its first checkpoint wrote (the step-0
        # samples) would otherwise be kept and written again.
        since = self.step_no if resumed else None
        main = self.acc.is_main_process
        self.logger = MetricsLogger(out_dir, enabled=main, resume_step=since) if out_dir else None
        self.samples = (SampleWriter(out_dir, tokenizer, eval_prompts, eval_golds, enabled=main, resume_step=since,
                                     curve=self.curve, gold_judge=gold_judge) if out_dir and eval_prompts else None)
        self.show_progress = show_progress and main

    # ---------------------------------------------------------------- the loop
    def train(self, num_updates: int | None = None) -> list[dict]:
        """Run until cfg.total_episodes (or `num_updates` more updates); returns the metrics history."""
        end = self.num_updates if num_updates is None else min(self.num_updates, self.step_no + num_updates)
        bar = progress(self.num_updates, initial=self.step_no, desc="ppo", enabled=self.show_progress)
        if self.samples and self.step_no == 0:
            with full_weights_for_generation(self.acc, self.model):
                self.samples.write(0, self)  # the SFT policy's answers: the baseline to read the rest against
        while self.step_no < end and not self.curve.stopped:  # early stop (stages/ppo/curve.py)
            m = self.step()
            bar.update(1)
            bar.set_postfix(score=f"{m['score']:.3f}", kl=f"{m['kl']:.2f}", loss=f"{m['loss/policy']:.3f}",
                            tok_s=f"{m['tokens_per_s']:.0f}")
            if self.samples and (self.step_no % self.cfg.sample_every == 0 or self.step_no == self.num_updates):
                with full_weights_for_generation(self.acc, self.model):
                    self.samples.write(self.step_no, self)
            if self.checkpoint_dir and (self.step_no % self.cfg.save_every == 0 or self.step_no == self.num_updates
                                        or self.curve.stopped):
                self._save()
        bar.close()
        # FSDP: the stage's report and save run on the main process alone, on whole copies
        sharding.whole_copies(self.acc, self.acc.unwrap_model(self.model), ("policy", "value"))
        return self.history

    def step(self) -> dict:
        lr = self.scheduler.get_last_lr()[0]
        t0 = time.perf_counter()
        batch = self.rollout(self._next_prompts())
        t1 = time.perf_counter()
        update_stats = self.update(batch)
        t2 = time.perf_counter()
        metrics = {**self._rollout_stats(batch), **update_stats, "kl_coef": self.kl_ctl.value,
                   "lr": lr, "time/rollout": t1 - t0, "time/update": t2 - t1}
        self.kl_ctl.update(metrics["kl"], self.cfg.batch_size)
        self.step_no += 1
        metrics["episodes"] = self.step_no * self.cfg.batch_size
        tokens = batch.response_mask.sum().item() * self.world
        metrics["tokens_per_s"] = tokens / max(t2 - t0, 1e-9)
        check_finite("ppo", {k: v for k, v in metrics.items() if not k.startswith("time/")}, step=self.step_no,
                     last_good=self._last_good())
        self.history.append(metrics)
        if self.logger and self.step_no % self.cfg.log_every == 0:
            self.logger.log(self.step_no, **metrics)
        return metrics

    # ---------------------------------------------------------------- rollout
    @torch.no_grad()
    def rollout(self, prompt_ids: list[list[int]]) -> RolloutBatch:
        dev = self.acc.device
        q_ids, q_mask = left_pad(prompt_ids, self.tok.pad_token_id)
        q_ids, q_mask = q_ids.to(dev), q_mask.to(dev)
        policy = self.acc.unwrap_model(self.model).policy
        with full_weights_for_generation(self.acc, self.model), self.acc.autocast():
            resp, resp_mask, has_eos = generate(policy, q_ids, q_mask, self.gen_config,
                                                self.tok.eos_token_id, self.tok.pad_token_id,
                                                self.cfg.generation_batch_size or len(prompt_ids))
        return self.score_rollout(RolloutBatch(q_ids, q_mask, resp, resp_mask, has_eos))

    @torch.no_grad()
    def score_rollout(self, b: RolloutBatch) -> RolloutBatch:
        """Old-policy and reference logprobs, values and scores (micro-batched, no grad), then rewards."""
        cfg, dev, fb = self.cfg, self.acc.device, self.cfg.forward_batch_size
        ids, attn, P, resp = b.input_ids, b.attention_mask, b.prompt_len, b.response_ids
        n = len(b)

        def logprobs_of(model):
            def piece(s):
                i, a, p, kept = trim_padding(ids[s], attn[s], P)
                lp = answer_token_logprobs(model, i, a, resp[s, :kept], p, cfg.temperature)
                return pad_answer_columns(lp, resp.size(1))
            return micro_batched(piece, n, fb)

        with self.acc.autocast():
            # Old logprobs and values through the same (wrapped) forward the update uses.
            parts = [self.model(ids[s:s + fb], attn[s:s + fb], resp[s:s + fb], P, cfg.temperature)
                     for s in range(0, n, fb)]
            b.logprobs = torch.cat([lp for lp, _ in parts])
            b.values = torch.cat([v for _, v in parts])
            with self._reference() as ref:
                b.ref_logprobs = logprobs_of(ref)
            if self.reward_fn is not None:
                b.raw_scores = torch.as_tensor(self.reward_fn(b), dtype=torch.float32, device=dev)
            else:
                b.raw_scores = micro_batched(lambda s: sequence_scores(self.rm, *trim_padding(ids[s], attn[s], P)[:2]),
                                             n, fb)
        self._shape(b)
        return b

    def _shape(self, b: RolloutBatch) -> None:
        """Scores -> per-token rewards -> GAE advantages and returns."""
        cfg, mask = self.cfg, b.response_mask
        b.scores = process_scores(b.raw_scores, b.has_eos, self.score_mean, self.score_std, clip=cfg.reward_clip,
                                  missing_eos_penalty=cfg.missing_eos_penalty, mode=cfg.missing_eos_mode)
        b.kl = kl_per_token(b.logprobs, b.ref_logprobs, cfg.kl_estimator) * mask
        b.rewards, b.non_score_rewards = shape_rewards(b.scores, b.kl, mask, self.kl_ctl.value)
        if cfg.whiten_rewards:
            b.rewards = masked_whiten(b.rewards, mask, shift_mean=False)
        b.values = b.values * mask
        adv, b.returns = compute_gae(b.rewards, b.values, mask, cfg.gamma, cfg.lam)
        b.advantages = masked_whiten(adv, mask)

    # ---------------------------------------------------------------- update
    def update(self, b: RolloutBatch) -> dict:
        cfg = self.cfg
        mb_size = self.local_batch // cfg.num_minibatches
        micro = mb_size // cfg.grad_accum
        totals: dict[str, float] = {}
        first_ratio = None
        for _ in range(cfg.ppo_epochs):
            perm = torch.randperm(self.local_batch)
            for start in range(0, self.local_batch, mb_size):
                mb_idx = perm[start:start + mb_size].to(b.response_mask.device)
                for key, v in self.accumulate_gradients(b, mb_idx, micro).items():
                    totals[key] = totals.get(key, 0.0) + v
                if first_ratio is None:  # first minibatch of the first epoch: must be exactly on-policy
                    first_ratio = dict(totals)
                self.acc.clip_grad_norm_(self.model.parameters(), cfg.max_grad_norm)
                self.optimizer.step()
                self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
        # Statistics stay tensors inside the loop (no per-micro-batch sync); read out once here.
        totals = {k: float(v) for k, v in totals.items()}
        first_ratio = {k: float(v) for k, v in first_ratio.items()}
        t = max(totals["tokens"], 1.0)
        r0 = max(first_ratio["tokens"], 1.0)
        ratio_mean = totals["ratio"] / t
        first_mean = first_ratio["ratio"] / r0
        return {
            "loss/policy": totals["pg_loss"] / t, "loss/value": totals["vf_loss"] / t,
            "policy/clipfrac": totals["pg_clipfrac"] / t, "value/clipfrac": totals["vf_clipfrac"] / t,
            "policy/approx_kl": totals["approx_kl"] / t, "policy/ratio_mean": ratio_mean,
            "policy/ratio_var": totals["ratio_sq"] / t - ratio_mean**2,
            "policy/first_ratio_mean": first_mean,
            "policy/first_ratio_var": first_ratio["ratio_sq"] / r0 - first_mean**2,
        }

    def accumulate_gradients(self, b: RolloutBatch, mb_idx: torch.Tensor, micro: int) -> dict:
        """Backward of one minibatch in micro-batches of `micro` rows; returns summed loss statistics
        (0-d tensors)."""
        cfg, totals = self.cfg, {}
        # Token count of the whole (global) minibatch: the divisor of every micro-batch's loss.
        n_tok = self.acc.reduce(b.response_mask[mb_idx].sum().float(), "sum") / self.world
        for k in range(0, len(mb_idx), micro):
            sub = b.select(mb_idx[k:k + micro])
            last = k + micro >= len(mb_idx)
            with self.acc.no_sync(self.model) if not last else nullcontext():
                with self.acc.autocast():
                    new_logp, new_v = self.model(sub.input_ids, sub.attention_mask, sub.response_ids,
                                                 sub.prompt_len, cfg.temperature)
                terms = ppo_loss(new_logp, sub.logprobs, sub.advantages, new_v, sub.values, sub.returns,
                                 sub.response_mask, n_tokens=n_tok, cliprange=cfg.cliprange,
                                 cliprange_value=cfg.cliprange_value, vf_coef=cfg.vf_coef)
                self.acc.backward(terms.loss)
            for key, v in terms.stats.items():
                # float64 sums, as Python floats were (the ratio variance is a difference); MPS has none.
                v = v.to(torch.float32 if v.device.type == "mps" else torch.float64)
                totals[key] = totals[key] + v if key in totals else v
        return totals

    # ---------------------------------------------------------------- helpers
    def _rollout_stats(self, b: RolloutBatch) -> dict:
        mask, red = b.response_mask, (lambda x: self.acc.reduce(x.float(), "mean").item())
        kl_seq = (kl_per_token(b.logprobs, b.ref_logprobs, "k1") * mask).sum(1)
        non_score = b.non_score_rewards.sum(1)
        var_ret = masked_var(b.returns, mask)
        explained = 1 - masked_var(b.returns - b.values, mask) / var_ret.clamp(min=1e-8)
        stats = {
            "score": red(b.scores.mean()), "score/raw": red(b.raw_scores.mean()),
            "reward/non_score": red(non_score.mean()), "reward/total": red((b.scores + non_score).mean()),
            "kl": red(kl_seq.mean()), "kl/k3": red((kl_per_token(b.logprobs, b.ref_logprobs, "k3") * mask).sum(1).mean()),
            "entropy": red(masked_mean(-b.logprobs, mask)),  # sampled-token estimate of the entropy
            "value/explained_variance": red(explained), "value/mean": red(masked_mean(b.values, mask)),
            "advantage/mean": red(masked_mean(b.advantages, mask)),
            "response_length": red(mask.sum(1).float().mean()), "eos_fraction": red(b.has_eos.float().mean()),
        }
        return stats

    def _next_prompts(self) -> list[list[int]]:
        picked = []
        for _ in range(self.cfg.batch_size):
            if self.cursor >= len(self.order):
                self.order, self.cursor = torch.randperm(len(self.prompt_ids), generator=self.sampler), 0
            picked.append(int(self.order[self.cursor]))
            self.cursor += 1
        return [self.prompt_ids[i] for i in picked[self.rank::self.world]]

    def _reference(self):
        if self.ref is not None:
            return nullcontext(self.ref)
        policy = self.acc.unwrap_model(self.model).policy
        return adapters_off(policy)

    def _check_batch_sizes(self) -> None:
        cfg = self.cfg
        per_rank, rem = divmod(cfg.batch_size, self.world)
        mb = per_rank // max(cfg.num_minibatches, 1)
        if rem or per_rank % cfg.num_minibatches or mb % cfg.grad_accum or mb == 0:
            raise UserError(
                f"ppo.batch_size={cfg.batch_size} must split evenly over {self.world} process(es), "
                f"ppo.num_minibatches={cfg.num_minibatches} minibatches and ppo.grad_accum={cfg.grad_accum} "
                "micro-batches each; pick a batch size that is a multiple of their product.")
        if cfg.total_episodes < cfg.batch_size:
            raise UserError(f"ppo.total_episodes={cfg.total_episodes} is below one batch (ppo.batch_size="
                            f"{cfg.batch_size}); raise total_episodes.")

    def _ckpt_models(self, saving: bool = False) -> dict:
        if self.sharded:  # the full state, gathered from every process's shards (a collective when saving)
            return {"model": sharding.WholeState(self.acc, self.model, gather=saving), "scheduler": self.scheduler,
                    "optimizer": sharding.WholeState(self.acc, self.model, self.optimizer, gather=saving)}
        return {"model": self.acc.unwrap_model(self.model), "optimizer": self.optimizer, "scheduler": self.scheduler}

    def _last_good(self) -> str | None:
        return str(self.checkpoint_dir / checkpointing.NAME) if checkpointing.exists(self.checkpoint_dir) else None

    def _save(self) -> None:
        check_finite_params("ppo", self.acc.unwrap_model(self.model), step=self.step_no, last_good=self._last_good())
        state = {"step": self.step_no, "kl_ctl": self.kl_ctl.state_dict(), "sampler": self.sampler.get_state(),
                 "order": self.order, "cursor": self.cursor,
                 "last_metrics": self.history[-1] if self.history else None, "curve": self.curve.state_dict()}
        checkpointing.save(self.checkpoint_dir, rank=self.rank, is_main=self.acc.is_main_process,
                           barrier=self.acc.wait_for_everyone, models=self._ckpt_models(saving=True), trainer_state=state)

    def _load(self) -> None:
        state = checkpointing.load(self.checkpoint_dir, rank=self.rank, world=self.world,
                                   models=self._ckpt_models())
        self.step_no, self.cursor, self.order = state["step"], state["cursor"], state["order"]
        if state.get("last_metrics"):  # the stage reports the last step's metrics, even right after a resume
            self.history = [state["last_metrics"]]
        self.kl_ctl.load_state_dict(state["kl_ctl"])
        self.sampler.set_state(state["sampler"])
        self.curve.load_state_dict(state.get("curve"))


def make_adamw(params: list, **kw) -> torch.optim.Optimizer:
    """AdamW with its fused kernel (one pass over all tensors instead of a Python loop per
    tensor) where torch has one for these parameters' device and dtype; the same update rule."""
    try:
        return torch.optim.AdamW(params, fused=True, **kw)
    except (RuntimeError, ValueError):  # e.g. a device or dtype without a fused kernel
        return torch.optim.AdamW(params, foreach=True, **kw)


def full_weights_for_generation(acc, model):
    """Sharded training (FSDP, DeepSpeed ZeRO-3) keeps each weight on one rank; token-by-token
    generation would gather every layer at every token, in step with the other processes. Gather them once per
    rollout instead. DDP and single-process runs hold full weights already. (FSDP2: tests/test_distributed_fsdp.py;
    ZeRO-3 not exercised.)"""
    from accelerate.utils import DistributedType

    if acc.distributed_type == DistributedType.FSDP:
        return sharding.whole_weights(acc, model)
    if acc.distributed_type == DistributedType.DEEPSPEED and acc.state.deepspeed_plugin.zero_stage == 3:
        import deepspeed

        return deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None)
    return nullcontext()
