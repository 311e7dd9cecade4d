"""What an alignment stage shows when it finishes: answers of the tuned model and of SFT to the
held-out prompts PPO reports on, with their reward (PPO's) and gold scores, in samples.md and
report.json. The verdict across methods is `make compare`'s (stages/compare)."""

from __future__ import annotations

import torch

from pipeline.lm.generation import answer_logprobs, eos_ids_of, generate_batched
from pipeline.judge.stats import mean_std


def heldout_prompts(cfg, n: int) -> list[dict]:
    """PPO's held-out prompts ({"prompt": messages, "gold": str | None}): the demo's, or ppo.eval_data."""
    from data.loaders import load_prompts

    if cfg.ppo.data == "demo":
        from data.demo import demo_file

        source = str(demo_file(cfg, "ppo_dev.jsonl"))
    elif cfg.ppo.eval_data:
        source = cfg.ppo.eval_data
    else:
        return []
    return load_prompts(source)[:n]


@torch.no_grad()
def answers(model, tokenizer, prompt_ids: list[list[int]], *, max_new_tokens: int, temperature: float,
            seed: int) -> list[list[int]]:
    was_training = model.training
    model.eval()
    gen = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    out = generate_batched(model, prompt_ids, batch_size=32, max_new_tokens=max_new_tokens,
                           eos_ids=eos_ids_of(model, tokenizer), pad_id=tokenizer.pad_token_id,
                           temperature=temperature, generator=gen)
    model.train(was_training)
    return out


def heldout_report(policy, sft, tokenizer, prompts: list[dict], *, reward_fn=None, max_new_tokens: int,
                   temperature: float, seed: int) -> tuple[dict, list[dict]]:
    """(numbers, rows for samples.md): the tuned model and SFT answer the same prompts with the same
    seed; RM scores are PPO's processed reward; KL(tuned || SFT) per answer at the sampling temperature."""
    from data.gold import gold_score

    if not prompts:
        return {}, []
    ids = [list(tokenizer.apply_chat_template(p["prompt"], add_generation_prompt=True, tokenize=True,
                                              return_dict=True)["input_ids"]) for p in prompts]
    rows = [{"prompt": p["prompt"][-1]["content"], "gold": p.get("gold")} for p in prompts]
    out: dict = {"prompts": len(prompts)}
    own = None
    for name, model in (("tuned", policy), ("sft", sft)):
        a = answers(model, tokenizer, ids, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed)
        texts = [tokenizer.decode(x, skip_special_tokens=True).strip() for x in a]
        out[f"length_{name}"] = mean_std([len(x) for x in a])[0]
        if reward_fn is not None:
            scores = reward_fn.score_ids(ids, a).tolist()
            out[f"rm_{name}"] = mean_std(scores)[0]
        golds = [gold_score(t, p["gold"]) if p.get("gold") else None for t, p in zip(texts, prompts)]
        known = [g for g in golds if g is not None]
        out[f"gold_{name}"] = mean_std(known)[0] if known else None
        for i, row in enumerate(rows):
            row[name] = {"text": texts[i], "rm": scores[i] if reward_fn is not None else None, "gold": golds[i]}
        if name == "tuned":
            own = a
    pad = tokenizer.pad_token_id
    lp_tuned = answer_logprobs(policy, ids, own, pad_id=pad, temperature=temperature)
    lp_sft = answer_logprobs(sft, ids, own, pad_id=pad, temperature=temperature)
    out["kl_to_sft"] = mean_std([sum(a) - sum(b) for a, b in zip(lp_tuned, lp_sft)])[0]
    return out, rows


def write_samples(path, method: str, numbers: dict, rows: list[dict], shown: int = 8) -> None:
    lines = [f"# {method.upper()} samples on held-out prompts", ""]
    if numbers:
        lines += [", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in numbers.items()), ""]
    for i, row in enumerate(rows[:shown]):
        lines += [f"## {i + 1}. {row['prompt'].splitlines()[0][:100]}", ""]
        if row.get("gold"):
            lines += [f"*Gold:* {row['gold']}", ""]
        for name in ("tuned", "sft"):
            a = row[name]
            score = "" if a["rm"] is None else f" (reward {a['rm']:+.2f})"
            lines += [f"**{method if name == 'tuned' else 'sft'}**{score}: {a['text'] or '(empty)'}", ""]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
