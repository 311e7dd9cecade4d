"""A reward-model ensemble and the conservative reward it gives (Coste et al. 2023, "Reward Model Ensembles
Help Mitigate Overoptimization").

`reward.ensemble=k` trains k reward models on the same pairs from different seeds (head initialisation and
data order). The artifact keeps the first at its top level -- exactly the model `reward.ensemble=1` trains, so
every reader that wants one reward model (the value model's start, eval's RM scores) still finds it -- and
the others in `ensemble/1 ... ensemble/<k-1>`, listed in `reward_ensemble.json` with each member's mean and
std on the held-out answers. Separate models rather than k heads on one trunk: members that share every
layer but the last disagree little, and the disagreement is the signal; and TRL's RewardTrainer trains each
member unchanged.

PPO, GRPO and RLOO read `ppo.reward_aggregate` over the members' standardised scores (each member's
Bradley-Terry scores are defined only up to a shift and scale, so they are put on one scale first):
  mean             the ensemble's mean;
  min              the most pessimistic member (worst-case optimisation);
  mean_minus_std   mean - lambda * std over members (uncertainty-weighted; lambda = ppo.reward_uncertainty_coef).
`RewardEnsemble` behaves as one sequence classifier (its forward's logits are the aggregate), so scoring
code written for one reward model scores the ensemble unchanged.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import torch

ENSEMBLE_FILE = "reward_ensemble.json"
MEMBERS_DIR = "ensemble"
AGGREGATES = ("mean", "min", "mean_minus_std")


def aggregate(scores: torch.Tensor, how: str, coef: float = 0.0) -> torch.Tensor:
    """[k, N] member scores -> [N]: their mean, their minimum, or mean - coef * std (over members, the
    population std: k members are the whole ensemble, not a sample of one)."""
    if scores.dim() != 2 or scores.shape[0] < 1:
        raise ValueError(f"aggregate: expected [members, answers] scores, got shape {tuple(scores.shape)}")
    if how == "mean":
        return scores.mean(0)
    if how == "min":
        return scores.min(0).values
    if how == "mean_minus_std":
        return scores.mean(0) - coef * scores.std(0, unbiased=False)
    raise ValueError(f"unknown reward aggregate {how!r}; use one of {', '.join(AGGREGATES)}")


def standardise(scores: torch.Tensor, scale: list[tuple[float, float]]) -> torch.Tensor:
    """[k, N] raw member scores -> each member's (score - mean) / std."""
    mean = torch.tensor([m for m, _ in scale], dtype=scores.dtype, device=scores.device)[:, None]
    std = torch.tensor([s or 1.0 for _, s in scale], dtype=scores.dtype, device=scores.device)[:, None]
    return (scores - mean) / std


def member_scale(scores: torch.Tensor) -> tuple[float, float]:
    """The (mean, std) a member's scores are standardised by."""
    return float(scores.mean()), float(scores.std(unbiased=False)) or 1.0


class RewardEnsemble(torch.nn.Module):
    """k reward models as one: forward(input_ids, attention_mask).logits is the [B, 1] aggregate of the
    members' standardised scores; `combine` aggregates scores computed elsewhere (PPO's lean forward)."""

    def __init__(self, members: list, scale: list[tuple[float, float]], how: str = "mean", coef: float = 0.0):
        super().__init__()
        if len(members) != len(scale):
            raise ValueError(f"{len(members)} members but {len(scale)} scales")
        self.members = torch.nn.ModuleList(members)
        self.scale, self.how, self.coef = [tuple(s) for s in scale], how, coef

    @property
    def config(self):  # what callers read of one reward model (pad id, position limit)
        return self.members[0].config

    def combine(self, member_scores: torch.Tensor) -> torch.Tensor:
        return aggregate(standardise(member_scores.float(), self.scale), self.how, self.coef)

    def forward(self, input_ids=None, attention_mask=None, **kwargs):
        scores = torch.stack([m(input_ids=input_ids, attention_mask=attention_mask, **kwargs).logits[:, 0]
                              for m in self.members])
        return SimpleNamespace(logits=self.combine(scores)[:, None])


def ensemble_members(path: str | Path) -> list[Path]:
    """The member directories of a reward artifact, first the top level; [path] for a single model."""
    f = Path(path) / ENSEMBLE_FILE
    if not f.is_file():
        return [Path(path)]
    return [Path(path) / m for m in json.loads(f.read_text())["members"]]


def with_ensemble(model, path: str | Path, *, how: str, coef: float, dtype=None, device=None):
    """`model` (the top level of the reward artifact at `path`, already loaded) with the artifact's other
    members as a RewardEnsemble aggregating by `how`; `model` itself when the artifact holds one model."""
    f = Path(path) / ENSEMBLE_FILE
    if not f.is_file():
        return model
    from pipeline.lm.loading import load_sequence_scorer

    info = json.loads(f.read_text())
    members = [model] + [load_sequence_scorer(Path(path) / m, "reward ensemble member", trained_head=True, dtype=dtype)
                         for m in info["members"][1:]]
    device = device or next(model.parameters()).device
    for m in members[1:]:
        m.config.pad_token_id = model.config.pad_token_id
        m.eval().to(device)
    return RewardEnsemble(members, info["scale"], how, coef)
