"""Our side of the PPO benchmark: stages.ppo's PPOTrainer on the models benchmarks/ppo_setup.py
built, timed and scored exactly like the TRL side (benchmarks/trl_ppo_peer.py), in its own
process so its peak memory is its own:

    .venv/bin/python -m benchmarks.ppo_ours --models .bench/ppo_models --out result.json
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

from benchmarks.trl_ppo_peer import heldout_score, peak_rss_mib, read_prompts, side_arguments
from pipeline.config.schema import PPOSection


def ppo_section(setup: dict) -> PPOSection:
    """The benchmark's shared settings in our config's terms; everything else stays our default."""
    return PPOSection(
        total_episodes=setup["total_episodes"], batch_size=setup["batch_size"],
        num_minibatches=setup["num_minibatches"], ppo_epochs=setup["ppo_epochs"], grad_accum=1, lr=setup["lr"],
        max_new_tokens=setup["max_new_tokens"], temperature=setup["temperature"], top_k=0, top_p=1.0,
        kl_coef=setup["kl_coef"], kl_estimator="k1", adaptive_kl=False, gamma=1.0, lam=0.95, cliprange=0.2,
        cliprange_value=0.2, vf_coef=setup["vf_coef"], whiten_rewards=False,
        missing_eos_penalty=setup["missing_eos_penalty"], reward_clip=None,
        forward_batch_size=setup["forward_batch_size"],
    )


def train_ours(models: Path, setup: dict) -> dict:
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    import stages.ppo.trainer as ours

    tok = AutoTokenizer.from_pretrained(models / "policy")
    policy = AutoModelForCausalLM.from_pretrained(models / "policy")
    ref = AutoModelForCausalLM.from_pretrained(models / "policy")
    reward = AutoModelForSequenceClassification.from_pretrained(models / "reward", num_labels=1)
    value = AutoModelForSequenceClassification.from_pretrained(models / "value", num_labels=1)
    prompts = read_prompts(models / "prompts.jsonl")
    eval_prompts = read_prompts(models / "eval_prompts.jsonl")

    generation = {"s": 0.0}
    plain_generate = ours.generate

    def timed_generate(*args, **kwargs):
        t = time.perf_counter()
        out = plain_generate(*args, **kwargs)
        generation["s"] = time.perf_counter() - t
        return out

    ours.generate = timed_generate
    trainer = ours.PPOTrainer(ppo_section(setup), policy, ref, reward, value, tok, prompts,
                              reward_stats=(0.0, 1.0), seed=setup["seed"], show_progress=False)
    steps = []
    start = time.perf_counter()
    while trainer.step_no < trainer.num_updates:
        m = trainer.step()
        steps.append({"rollout_s": m["time/rollout"], "generation_s": generation["s"], "update_s": m["time/update"],
                      "score": m["score"], "kl": m["kl"]})
    train_s = time.perf_counter() - start
    episodes = trainer.step_no * setup["batch_size"]
    rss = peak_rss_mib()
    after = heldout_score(policy, reward, tok, eval_prompts, setup["max_new_tokens"], setup["temperature"],
                          seed=setup["eval_seed"])
    return {"side": "ours", "episodes": episodes, "train_s": train_s, "episodes_per_s": episodes / train_s,
            "steps": steps, "peak_rss_mib": rss, "heldout_after": after,
            "mixed_precision": trainer.acc.mixed_precision, "dtype": str(policy.dtype)}


def main(argv: list[str] | None = None) -> int:
    a, setup = side_arguments(argv, __doc__.split("\n\n")[0])
    result = train_ours(a.models, setup)
    import transformers
    result["versions"] = {"transformers": transformers.__version__, "torch": torch.__version__}
    result["threads"] = torch.get_num_threads()
    a.out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
