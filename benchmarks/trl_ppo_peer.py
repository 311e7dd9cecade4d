"""The peer side of the PPO benchmark: TRL 1.12's `trl.experimental.ppo.PPOTrainer` on the
models that benchmarks/ppo_setup.py built, timed the same way as ours.

Runs inside the throwaway venv .bench/trl112-venv (TRL 1.13+ has no PPOTrainer), so it imports
only torch, transformers, datasets and trl, never this project's packages:

    .bench/trl112-venv/bin/python benchmarks/trl_ppo_peer.py --models .bench/ppo_models --out result.json

The helpers above `main` (prompt encoding, held-out scoring, peak memory) use torch and
transformers only; our side of the benchmark imports them too, so both policies are judged by
the very same code.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

import torch


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def read_prompts(path: Path) -> list[str]:
    return [json.loads(line)["prompt"] for line in path.read_text().splitlines() if line.strip()]


def encode_prompts(tokenizer, prompts: list[str]) -> list[list[int]]:
    """The chat-templated prompt ending in `<|assistant|>`: what both trainers generate from."""
    out = []
    for p in prompts:
        ids = tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                            tokenize=True)
        out.append(list(ids["input_ids"] if hasattr(ids, "keys") else ids))
    return out


def left_pad(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, width - len(s):] = torch.tensor(s)
        mask[i, width - len(s):] = 1
    return ids, mask


@torch.no_grad()
def heldout_score(policy, reward_model, tokenizer, prompts: list[str], max_new_tokens: int,
                  temperature: float, seed: int = 0, batch_size: int = 64) -> dict:
    """Mean reward-model score of sampled answers to held-out prompts (and the share that end in
    EOS). The answer is cut after its first EOS and scored at its last real token."""
    from transformers import GenerationConfig

    policy.eval()
    gen = GenerationConfig(do_sample=True, temperature=temperature, top_k=0, top_p=1.0,
                           max_new_tokens=max_new_tokens, eos_token_id=tokenizer.eos_token_id,
                           pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    scores, ended = [], []
    encoded = encode_prompts(tokenizer, prompts)
    for s in range(0, len(encoded), batch_size):
        q, m = left_pad(encoded[s:s + batch_size], tokenizer.pad_token_id)
        out = policy.generate(input_ids=q, attention_mask=m, generation_config=gen)
        resp = out[:, q.size(1):]
        is_eos = resp == tokenizer.eos_token_id
        has_eos = is_eos.any(1)
        first = torch.where(has_eos, is_eos.int().argmax(1), torch.full_like(has_eos, resp.size(1), dtype=torch.long))
        keep = torch.arange(resp.size(1))[None] <= first[:, None]
        ids = torch.cat([q, resp.masked_fill(~keep, tokenizer.pad_token_id)], 1)
        mask = torch.cat([m, keep.long()], 1)
        pos = (mask.cumsum(1) - 1).clamp(min=0)
        h = getattr(reward_model, reward_model.base_model_prefix)(
            input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False).last_hidden_state
        last = mask.cumsum(1).argmax(1)
        scores.append(reward_model.score(h[torch.arange(h.size(0)), last]).squeeze(-1).float())
        ended.append(has_eos.float())
    scores, ended = torch.cat(scores), torch.cat(ended)
    return {"score_mean": scores.mean().item(), "score_std": scores.std().item(), "eos_frac": ended.mean().item(),
            "n": len(scores)}


class StepClock:
    """Rollout / update split of TRL's loop, which has no timers of its own: a rollout starts
    when generation is called, the update at the first forward with gradients after it, and
    the step ends at `on_step_end`."""

    def __init__(self):
        self.rollout_start = None
        self.update_start = None
        self.generation_s = 0.0
        self.steps: list[dict] = []

    def wrap_generation(self, fn):
        def timed(*args, **kwargs):
            self.rollout_start, self.update_start = time.perf_counter(), None
            out = fn(*args, **kwargs)
            self.generation_s = time.perf_counter() - self.rollout_start
            return out
        return timed

    def wrap_forward(self, fn):
        def timed(*args, **kwargs):
            if torch.is_grad_enabled() and self.update_start is None:
                self.update_start = time.perf_counter()
            return fn(*args, **kwargs)
        return timed

    def step_end(self):
        end = time.perf_counter()
        self.steps.append({"rollout_s": self.update_start - self.rollout_start,
                           "generation_s": self.generation_s, "update_s": end - self.update_start})


def train_trl(models: Path, setup: dict, work: Path) -> dict:
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    from datasets import Dataset
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        AutoTokenizer,
        TrainerCallback,
    )
    from trl.experimental.ppo import PPOConfig, PPOTrainer
    from trl.experimental.ppo import ppo_trainer as trl_ppo

    tok = AutoTokenizer.from_pretrained(models / "policy")
    tok.padding_side = "left"  # TRL reads the prompt width from a left-padded batch
    policy = AutoModelForCausalLM.from_pretrained(models / "policy")
    ref = AutoModelForCausalLM.from_pretrained(models / "policy")
    reward = AutoModelForSequenceClassification.from_pretrained(models / "reward", num_labels=1)
    value = AutoModelForSequenceClassification.from_pretrained(models / "value", num_labels=1)
    for m in (ref, reward):
        m.requires_grad_(False)
    train_ids = encode_prompts(tok, read_prompts(models / "prompts.jsonl"))
    eval_prompts = read_prompts(models / "eval_prompts.jsonl")
    dataset = Dataset.from_dict({"input_ids": train_ids})

    b = setup["batch_size"]
    args = PPOConfig(
        output_dir=str(work), report_to="none", save_strategy="no", logging_steps=1, disable_tqdm=True,
        use_cpu=True, seed=setup["seed"], learning_rate=setup["lr"], adam_epsilon=1e-5,
        # One micro-batch per minibatch and one optimizer step per minibatch, as in ours: TRL's
        # rollout batch is per_device_train_batch_size * gradient_accumulation_steps.
        per_device_train_batch_size=b, gradient_accumulation_steps=1, num_mini_batches=setup["num_minibatches"],
        num_ppo_epochs=setup["ppo_epochs"], total_episodes=setup["total_episodes"],
        local_rollout_forward_batch_size=setup["forward_batch_size"], response_length=setup["max_new_tokens"],
        temperature=setup["temperature"], stop_token="eos", missing_eos_penalty=setup["missing_eos_penalty"],
        kl_coef=setup["kl_coef"], kl_estimator="k1", cliprange=0.2, cliprange_value=0.2, vf_coef=setup["vf_coef"],
        gamma=1.0, lam=0.95, whiten_rewards=False, num_sample_generations=0, dataloader_num_workers=0,
    )

    clock = StepClock()
    trl_ppo.batch_generation = clock.wrap_generation(trl_ppo.batch_generation)
    trl_ppo.forward = clock.wrap_forward(trl_ppo.forward)
    logged: list[dict] = []

    class Recorder(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            clock.step_end()

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "objective/scores" in logs:
                logged.append(dict(logs))

    trainer = PPOTrainer(args=args, processing_class=tok, model=policy, ref_model=ref, reward_model=reward,
                         train_dataset=dataset, value_model=value, eval_dataset=dataset.select(range(b)),
                         callbacks=[Recorder()])
    start = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - start
    episodes = trainer.state.episode
    before_rss = peak_rss_mib()

    trained = trainer.accelerator.unwrap_model(trainer.model).policy
    after = heldout_score(trained, reward, tok, eval_prompts, setup["max_new_tokens"], setup["temperature"],
                          seed=setup["eval_seed"])
    return {
        "side": "trl", "episodes": episodes, "train_s": train_s, "episodes_per_s": episodes / train_s,
        "steps": [dict(t, score=log["objective/scores"], kl=log["objective/kl"]) for t, log in zip(clock.steps, logged)],
        "peak_rss_mib": before_rss, "heldout_after": after,
        "mixed_precision": trainer.accelerator.mixed_precision, "dtype": str(trained.dtype),
    }


def side_arguments(argv: list[str] | None, description: str) -> tuple[argparse.Namespace, dict]:
    """The command line both sides share: (arguments, the setup to train with). Threads are set and
    the training seed is applied; the held-out evaluation keeps the setup's seed (`eval_seed`)."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--models", type=Path, required=True, help="the dir benchmarks/ppo_setup.py wrote")
    ap.add_argument("--out", type=Path, required=True, help="where to write the JSON result")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--seed", type=int, default=None, help="training seed (default: the setup's)")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    setup = json.loads((a.models / "setup.json").read_text())
    train_setup = dict(setup, seed=setup["seed"] if a.seed is None else a.seed, eval_seed=setup["seed"])
    torch.manual_seed(train_setup["seed"])
    return a, train_setup


def main(argv: list[str] | None = None) -> int:
    a, setup = side_arguments(argv, __doc__.split("\n\n")[0])
    result = train_trl(a.models, setup, a.out.parent / "trl_work")
    import transformers
    import trl
    result["versions"] = {"trl": trl.__version__, "transformers": transformers.__version__,
                          "torch": torch.__version__}
    result["threads"] = torch.get_num_threads()
    a.out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
