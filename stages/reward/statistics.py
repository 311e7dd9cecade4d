"""The reward-stats step (`python -m stages.reward.stats`): the mean/std of the reward model's scores of the policy's own answers to
PPO's prompts: the normalisation PPO, GRPO and RLOO apply to every reward (runs/<name>/reward-stats/).

A step of its own, keyed on the reward model's and the policy's fingerprints and PPO's sampling settings
(pipeline/chain/table.py), so `make ppo ppo.temperature=0.9` measures the statistics again in seconds and never
retrains the reward model. The answers are scored exactly as PPO scores its rollouts: the chat-formatted
prompt's ids followed by the sampled ids, cut after the first end of turn (no decoding, no template
applied again), so the statistics describe the distribution PPO normalises.
"""

from __future__ import annotations

import json

import torch

from data.demo import input_path
from pipeline.artifacts.store import start_artifact
from pipeline.chain.table import STAGES, inputs_of, is_up_to_date, key
from pipeline.config.cli import stage_config
from pipeline.config.loader import to_dict
from pipeline.errors import UserError, main_guard
from pipeline.graph.declare import artifact_dir, default_dir, override_of
from pipeline.graph.rounds import current_round, make_command
from pipeline.judge.ensemble import ensemble_members, with_ensemble
from pipeline.judge.scoring import STATS_FILE, load_reward_model, score_ids
from pipeline.lm.chat_format import encode_chat
from pipeline.runtime.device import pick_device, seed_everything, share_cpu_threads


def model_source(cfg, name: str) -> str:
    """The reward model or policy the statistics read (require_artifact names the command that builds it)."""
    from pipeline.artifacts.store import resolve_model_source

    inp = STAGES["reward-stats"].inputs(cfg)[name]
    producer = "make sft" if inp.stage == "sft" else make_command(inp.stage, current_round(cfg))
    return resolve_model_source(override_of(cfg, inp), default_dir(cfg, inp, STAGES), producer)[0]


def encoded_prompts(cfg, tokenizer) -> tuple[list, list[list[int]], int, str]:
    """The first reward.stats_prompts prompts of ppo.data that PPO would keep (within max_prompt_length)."""
    from data.loaders import load_prompts

    source = input_path(cfg, inputs_of(cfg, "reward-stats")["prompts"])
    prompts, ids, too_long = [], [], 0
    for record in load_prompts(source):
        if len(prompts) == cfg.reward.stats_prompts:
            break
        x = encode_chat(tokenizer, record["prompt"], add_generation_prompt=True)
        if len(x) > cfg.ppo.max_prompt_length:  # PPO drops these too (stages/ppo/rollout.encode_prompts)
            too_long += 1
            continue
        prompts.append(record["prompt"])
        ids.append(list(x))
    if not prompts:
        raise UserError(f"{source} holds no prompt for the reward statistics (reward.stats_prompts) within "
                        f"ppo.max_prompt_length={cfg.ppo.max_prompt_length} tokens ({too_long} longer).")
    return prompts, ids, too_long, source


@torch.no_grad()
def measure(cfg, policy, reward_model, tokenizer, prompt_ids: list[list[int]]) -> dict:
    """Sample one answer per prompt with PPO's settings and score prompt + answer ids as PPO does."""
    from pipeline.lm.chat_format import turn_end_ids
    from pipeline.lm.generation import generate_batched

    p = cfg.ppo
    ends = turn_end_ids(tokenizer)  # where PPO's sampling stops (stages/ppo/rollout.py)
    gen = torch.Generator(device=next(policy.parameters()).device).manual_seed(cfg.run.seed)
    answers = generate_batched(policy, prompt_ids, batch_size=p.forward_batch_size, max_new_tokens=p.max_new_tokens,
                               eos_ids=ends, pad_id=tokenizer.pad_token_id, temperature=p.temperature,
                               top_k=p.top_k, top_p=p.top_p, generator=gen)
    scores = score_ids(reward_model, [q + a for q, a in zip(prompt_ids, answers)], tokenizer.pad_token_id,
                       batch_size=p.forward_batch_size)
    return {"mean": float(scores.mean()), "std": float(scores.std(unbiased=False)), "n": len(answers),
            "min": float(scores.min()), "max": float(scores.max()),
            "ended_with_eos": sum(bool(a) and a[-1] in ends for a in answers)}


@main_guard
def main(argv=None) -> int:
    cfg = stage_config("reward-stats", argv, description=__doc__.splitlines()[0])
    if is_up_to_date(cfg, "reward-stats"):
        return 0
    from pipeline.lm.model import load_causal_lm, model_dtype

    reward_src, policy_src = model_source(cfg, "reward_model"), model_source(cfg, "policy")
    device = pick_device(cfg.run.device)
    share_cpu_threads(device.type)
    seed_everything(cfg.run.seed)
    dtype = model_dtype(cfg.run.dtype, device)  # as PPO holds its frozen models
    reward_model, tokenizer, info = load_reward_model(reward_src, dtype=dtype, device=device)
    reward_model = with_ensemble(reward_model, reward_src, how=cfg.ppo.reward_aggregate,  # as PPO scores
                                 coef=cfg.ppo.reward_uncertainty_coef, dtype=dtype, device=device)
    prompts, prompt_ids, too_long, source = encoded_prompts(cfg, tokenizer)
    policy = load_causal_lm(policy_src, dtype=dtype).to(device).eval()
    if policy.get_input_embeddings().num_embeddings < len(tokenizer):
        raise UserError(f"{policy_src} and {reward_src} use different tokenizers; the reward model must read the "
                        "policy's tokens (train it from this SFT model with `make reward`).")
    final = artifact_dir(cfg, STAGES["reward-stats"])
    writer = start_artifact(final, "reward-stats", resume=False, key=key(cfg, "reward-stats"))
    stats = measure(cfg, policy, reward_model, tokenizer, prompt_ids)
    stats.update(max_length=info.get("max_length"), prompts_source=source, prompts_too_long=too_long,
                 policy=policy_src, reward_model=reward_src, temperature=cfg.ppo.temperature,
                 max_new_tokens=cfg.ppo.max_new_tokens, ensemble=len(ensemble_members(reward_src)),
                 reward_aggregate=cfg.ppo.reward_aggregate)
    if stats["std"] < 1e-3:
        print(f"reward-stats: warning: the reward model's scores of the policy's answers barely vary (std "
              f"{stats['std']:.2g}); normalised rewards will be large. Was the reward model trained?")
    (writer.out_dir / STATS_FILE).write_text(json.dumps(stats, indent=2) + "\n")
    writer.commit(config=to_dict(cfg), metrics={k: stats[k] for k in ("mean", "std", "n")})
    print(f"reward-stats: {stats['n']} answers to {source} score {stats['mean']:.3f} +- {stats['std']:.3f} "
          f"({stats['ended_with_eos']} ended their turn) -> {final}")
    return 0
