"""Best of n: how much gold the reward model can win by choosing among the policy's own answers.

The rank stage sampled several answers to each held-out prompt. One answer at the lowest sampling
temperature stands for "the policy's answer" (evaluation samples near there); another of the prompt's
answers is chosen, and the two are compared on gold as evaluation compares PPO with SFT (win rate,
ties half, interval over prompts). Chosen by the reward model (its highest score), the figure is roughly
what a policy would win that only learned this model's preferences among answers it already writes;
chosen by gold itself, the most those answers allow; chosen blindly (the exact expectation over the
other answers), the floor. Where the reward model sits between floor and ceiling says, in seconds and
without a PPO run, whether it leaves PPO room to improve gold. Floor and ceiling depend on how many
answers there are and how much hotter the others were sampled (with rank.k 4 even the gold pick can stay
below 0.5), so compare figures only between runs with the same rank.k and rank.temperatures.

Every lowest-temperature answer takes its turn as the standing one; a prompt's turns are averaged, so
the interval counts prompts. The rank stage merges identical answers, keeping the first one's
temperature: when the two lowest-temperature answers coincide the prompt gets one turn, and the copy
that would have tied is not in the pool, which lowers all three figures a little.
"""

from __future__ import annotations

from collections.abc import Sequence

from pipeline.judge.stats import outcome, win_rate_of_outcomes

PICKS = ("blind", "reward_model", "gold")


def best_of_n(rewards: Sequence[Sequence[float]], golds: Sequence[Sequence[float]],
              temperatures: Sequence[Sequence[float] | None]) -> dict | None:
    """Per prompt: each answer's reward, gold score and sampling temperature (None: every answer takes
    a turn as the standing one). Returns {"prompts", "answers_per_prompt", "gap_closed"} and a
    win_rate dict for each of PICKS; None when no prompt has two answers. gap_closed is the share of the
    way from the blind pick to the gold pick that the reward model's pick goes (None without a gap)."""
    outcomes: dict[str, list[float]] = {k: [] for k in PICKS}
    turn_prompt: list[int] = []
    answers = 0
    for p, (r, g, t) in enumerate(zip(rewards, golds, temperatures, strict=True)):
        if len(r) != len(g) or (t is not None and len(t) != len(g)):
            raise ValueError(f"prompt {p}: {len(r)} rewards, {len(g)} gold scores, "
                             f"{len(t) if t is not None else '-'} temperatures")
        if len(g) < 2:
            continue
        answers += len(g)
        lowest = min(t) if t is not None else None
        for b in (i for i in range(len(g)) if t is None or t[i] == lowest):
            pool = [i for i in range(len(g)) if i != b]
            by_reward = max(pool, key=lambda i: r[i])  # the first of equal rewards
            outcomes["reward_model"].append(outcome(g[by_reward], g[b]))
            outcomes["gold"].append(outcome(max(g[i] for i in pool), g[b]))
            outcomes["blind"].append(sum(outcome(g[i], g[b]) for i in pool) / len(pool))
            turn_prompt.append(p)
    if not turn_prompt:
        return None
    prompts = len(set(turn_prompt))
    out = {"prompts": prompts, "answers_per_prompt": answers / prompts,
           **{k: win_rate_of_outcomes(v, clusters=turn_prompt) for k, v in outcomes.items()}}
    blind, rm, gold = (out[k]["win_rate"] for k in PICKS)
    out["gap_closed"] = (rm - blind) / (gold - blind) if gold - blind > 1e-9 else None
    return out
