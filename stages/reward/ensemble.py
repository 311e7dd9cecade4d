"""reward.ensemble=k: k reward models in one artifact, and what the ensemble knows that one model does not
(the layout and the aggregates: pipeline/judge/ensemble.py).

The first member is the model the stage trains anyway (reward.ensemble=1's, unchanged). Member i > 0 is the
same stage run again with run.seed + i -- a new head initialisation and data order, the same pairs and the
same held-out data -- as its own resumable artifact inside the reward stage's work directory
(members/m<i>/), from which its weights are copied into ensemble/<i>/. The report then measures each
member, and the ensemble under each aggregate, on the same held-out data and own answers as the single model.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

from pipeline.errors import UserError
from pipeline.graph.rounds import round_dir
from pipeline.judge.ensemble import AGGREGATES, ENSEMBLE_FILE, MEMBERS_DIR, RewardEnsemble, member_scale

# what a member's artifact holds besides the model: not copied into the ensemble
_NOT_COPIED = ("manifest.json", "metrics.jsonl", "report.md", "tb", "reward_model.json")


def check_ensemble(cfg, held_src: str | None) -> None:
    """Members must be judged on the held-out data the first member was: a split of reward.data would
    differ with each member's seed, so an ensemble needs held-out data of its own."""
    if cfg.reward.ensemble > 1 and not held_src:
        raise UserError(f"reward.ensemble={cfg.reward.ensemble} needs held-out preferences outside reward.data "
                        "(reward.val_data=FILE, the demo's, or a rank artifact's): each member's seed would hold out "
                        "another share of the training prompts.")


def member_config(cfg, i: int, *, init_source: str, train_srcs: list[str], held_src: str, work_dir: Path):
    """The config of member i: this run's, with run.seed + i, its inputs named explicitly (so the member's
    own run folder, inside the work directory, needs none of this run's artifacts) and no ensemble."""
    m = copy.deepcopy(cfg)
    m.run.out_dir, m.run.name, m.run.seed = str(work_dir / "members"), f"m{i}", cfg.run.seed + i
    m.reward.ensemble, m.reward.init_from = 1, init_source
    m.reward.data, m.reward.val_data = "+".join(train_srcs), held_src
    return m


def train_members(cfg, stage_main, *, init_source: str, train_srcs: list[str], held_src: str, work_dir: Path,
                  out_dir: Path, main_process: bool) -> list[str]:
    """Members 1..k-1 trained by `stage_main` (the reward stage's main) or found finished, on a resumed run,
    and copied into out_dir/ensemble/<i>; their folders relative to out_dir, the first member's (".") first."""
    members = ["."]
    for i in range(1, cfg.reward.ensemble):
        mcfg = member_config(cfg, i, init_source=init_source, train_srcs=train_srcs, held_src=held_src,
                             work_dir=work_dir)
        print(f"reward: ensemble member {i + 1} of {cfg.reward.ensemble} (run.seed={mcfg.run.seed})")
        stage_main.__wrapped__(mcfg)  # unguarded: the outer stage's guard reports a failure, once
        rel = f"{MEMBERS_DIR}/{i}"
        if main_process:
            shutil.copytree(round_dir(mcfg, "reward"), out_dir / rel, ignore=shutil.ignore_patterns(*_NOT_COPIED))
        members.append(rel)
    return members


def evaluate_ensemble(cfg, first, tokenizer, members: list[str], out_dir: Path, *, heldout, own: dict,
                      max_length: int | None, batch_size: int, main_process: bool) -> dict:
    """Each member's held-out accuracy, and the ensemble's held-out accuracy and own-answer best of n under
    each aggregate; writes reward_ensemble.json (the members and the scale each is standardised by)."""
    import torch

    from pipeline.lm.loading import load_sequence_scorer
    from stages.reward.heldout import evaluate_heldout
    from stages.reward.own_answers import evaluate_own_answers

    device = next(first.parameters()).device
    models = [first] + [load_sequence_scorer(out_dir / m, "reward ensemble member", trained_head=True,
                                             dtype=torch.float32).to(device).eval() for m in members[1:]]
    singles, scale = [], []
    for m in models:
        metrics, scores = evaluate_heldout(m, tokenizer, heldout, max_length=max_length, batch_size=batch_size)
        singles.append(metrics)
        scale.append(member_scale(scores))  # put on one scale by their scores of the held-out answers
    if main_process:
        (out_dir / ENSEMBLE_FILE).write_text(json.dumps({
            "members": members, "seeds": [cfg.run.seed + i for i in range(len(members))], "scale": scale,
            "scale_measured_on": "the held-out answers (reward.val_data or its default)"}, indent=2) + "\n")
    coef = cfg.ppo.reward_uncertainty_coef
    out = {"k": len(models), "coef": coef, "members": singles, "aggregates": {}}
    for how in AGGREGATES:
        ensemble = RewardEnsemble(models, scale, how, coef)
        metrics, _ = evaluate_heldout(ensemble, tokenizer, heldout, max_length=max_length, batch_size=batch_size)
        own_metrics = evaluate_own_answers(ensemble, tokenizer, own, max_length=max_length, batch_size=batch_size)
        out["aggregates"][how] = {"heldout": metrics, "own_answers": own_metrics}
    return out


def ensemble_summary(ensemble: dict) -> dict:
    """The ensemble's headline numbers for the manifest."""
    out = {"ensemble_k": ensemble["k"]}
    for how, a in ensemble["aggregates"].items():
        out[f"ensemble_{how}_heldout_accuracy"] = a["heldout"].get("accuracy")
        for name, m in a["own_answers"].items():
            if m.get("best_of_n_reward_model") is not None:
                out[f"ensemble_{how}_own_{name}_best_of_n"] = m["best_of_n_reward_model"]
    return out


def ensemble_report(ensemble: dict, single: dict, single_own: dict) -> list[str]:
    """The report's ensemble section: each member, then the ensemble under each aggregate, beside the single
    model (the first member, the model reward.ensemble=1 trains)."""
    def f(v):
        return "-" if v is None else f"{v:.3f}"

    def row(name: str, heldout: dict, own: dict | None) -> str:
        bon = [f(own.get(n, {}).get("best_of_n_reward_model")) for n in single_own] if own is not None else [""] * len(
            single_own)
        return " | ".join([f"| {name}", f(heldout.get("accuracy")), f(heldout.get("kendall_tau")), *bon]) + " |"

    lines = [f"## The ensemble (reward.ensemble={ensemble['k']})", "",
             "Members trained from seeds run.seed + i on the same pairs; each member's scores are standardised by "
             "their mean and std on the held-out answers before aggregating (pipeline/judge/ensemble.py)."
             + (" Best of n: the gold win rate of the answer chosen among the policy's own held-out answers, as "
                "for the single model above." if single_own else ""), "",
             "| model | held-out accuracy | Kendall tau |" + "".join(f" best of n ({n}) |" for n in single_own),
             "|---|---:|---:|" + "---:|" * len(single_own),
             row("single model (member 1)", single, single_own)]
    lines += [row(f"member {i + 1}", m, None) for i, m in enumerate(ensemble["members"][1:], 1)]
    for how, a in ensemble["aggregates"].items():
        name = f"mean - {ensemble['coef']:g} x std" if how == "mean_minus_std" else how
        lines.append(row(f"ensemble, {name}", a["heldout"], a["own_answers"]))
    return lines + [""]
