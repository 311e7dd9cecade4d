"""Preference data for the reward stage: where it comes from, the held-out split, tokenised
pairs with counts of what was dropped, and the prompt-grouped sampler (InstructGPT).

Parsing (pairwise files, HH transcripts, K-way expansion, validation) lives in data.loaders;
this module turns its records into what RewardTrainer consumes: `chosen_ids`/`rejected_ids`
encoded exactly as pipeline.judge.scoring scores conversations.
"""

from __future__ import annotations

import logging
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import Sampler

from pipeline.errors import UserError
from pipeline.graph.rounds import reward_parts
from pipeline.judge.scoring import encode_conversation
from stages.reward.heldout import Heldout, evaluate_heldout, heldout_from_pairs, heldout_from_rankings

log = logging.getLogger(__name__)

# Without a `margin` column, use_margin derives one from the rank distance: K-way pairs ranked
# further apart must be separated by more (the Llama 2 margin idea with ranks as strength).
MARGIN_PER_RANK = 0.5


RANK_SOURCE = re.compile(r"rank(-r\d+)?")  # this run's rank stage artifacts: rank, rank-r2, ...


def data_parts(cfg) -> list[str]:
    """reward.data split at "+": demo, rank, rank-r2, feedback or files, e.g. demo+rank (the default)."""
    parts = reward_parts(cfg)
    if not all(parts):
        raise UserError(f"reward.data={cfg.reward.data!r} has an empty part; join sources with '+', "
                        "e.g. demo+rank or demo+rank+rank-r2.")
    return parts


def training_sources(cfg) -> list[str]:
    """The files of reward.data's parts (demo, rank, rank-r2, files), as pipeline/chain/table.py declares them."""
    from data.demo import input_path
    from pipeline.chain.table import reward_data_inputs

    data_parts(cfg)  # an empty part is one clear line
    return [input_path(cfg, inp) for name, inp in reward_data_inputs(cfg).items() if name != "heldout"]


def heldout_source(cfg) -> str | None:
    """reward.val_data; else the demo's held-out rankings when the demo is trained on; else the first rank
    artifact's held-out own-answer rankings; else None (a share of the training prompts is held out)."""
    from data.demo import input_path
    from pipeline.chain.table import reward_data_inputs

    inputs = reward_data_inputs(cfg)
    if "heldout" in inputs:
        return input_path(cfg, inputs["heldout"])
    ranks = [inp for name, inp in inputs.items() if RANK_SOURCE.fullmatch(name)]
    return input_path(cfg, ranks[0], "heldout_rankings.jsonl") if ranks else None


def load_training_pairs(sources: list[str]) -> list[dict]:
    """Pairs of every source; a prompt's pairs from different sources form separate groups (their
    answers differ: the prepared candidates and the model's own). An empty source beside others (a
    rank stage whose answers all tied) is skipped with a warning."""
    from data.feedback import feedback_pairs, is_store
    from data.loaders import load_pairs

    out = []
    for n, source in enumerate(sources):
        if len(sources) > 1 and Path(source).is_file() and Path(source).stat().st_size == 0:
            log.warning("%s is empty (no prompt was ranked: see the report beside it); training on the other "
                        "sources.", source)
            continue
        pairs = feedback_pairs(source) if is_store(source) else load_pairs(source)
        if len(sources) > 1:
            pairs = [{**p, "group": f"{n}:{_group_key(p)}"} for p in pairs]
        out += pairs
    if not out:
        raise UserError(f"{' + '.join(sources)} holds no usable preference pair; see data/README.md for the accepted "
                        "formats.")
    return out


def feedback_report(sources: list[str], model, tokenizer, *, max_length: int, batch_size: int) -> dict | None:
    """The feedback store's counts (data/feedback.py) and, when it has enough rankings, the reward model's
    metrics on its held-out conversations (never trained on); None when reward.data has no feedback."""
    from data.feedback import feedback_data, is_store

    store = next((s for s in sources if is_store(s)), None)
    if store is None:
        return None
    data = feedback_data(store)
    out = dict(data.counts)
    ranked = [r for r in data.heldout_rankings if len(r["groups"]) > 1]  # an all-tied ranking has no pair
    if ranked:
        out["heldout"] = evaluate_heldout(model, tokenizer, heldout_from_rankings(ranked), max_length=max_length,
                                          batch_size=batch_size)[0]
    return out


def load_heldout(source: str) -> Heldout:
    """K-way rankings keep their full order (for rank correlation); anything else is read as pairs."""
    from data.loaders import load_pairs, load_rankings

    try:
        records = load_rankings(source)
    except UserError:
        records = None
    h = heldout_from_rankings(records) if records else heldout_from_pairs(load_pairs(source))
    if not h.pairs:
        raise UserError(f"{source} holds no usable held-out pair; see data/README.md for the accepted formats.")
    return h


def split_by_group(pairs: list[dict], fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """Hold out a share of prompts (whole groups, so no prompt is in both halves)."""
    groups = sorted({_group_key(p) for p in pairs})
    if len(groups) < 2 or fraction <= 0:
        raise UserError(
            f"cannot hold out {fraction:.0%} of {len(groups)} prompt(s) for evaluation: give reward.val_data "
            "or more data."
        )
    random.Random(seed).shuffle(groups)
    held = set(groups[: max(1, round(len(groups) * fraction))])
    return [p for p in pairs if _group_key(p) not in held], [p for p in pairs if _group_key(p) in held]


def _group_key(pair: dict) -> str:
    return str(pair.get("group") or pair["prompt"])


@dataclass
class PairData:
    chosen_ids: list[list[int]] = field(default_factory=list)
    rejected_ids: list[list[int]] = field(default_factory=list)
    margins: list[float] = field(default_factory=list)
    groups: list[int] = field(default_factory=list)  # prompt index of each pair
    counts: dict = field(default_factory=lambda: {"pairs_in": 0, "kept": 0, "identical": 0, "truncated": 0,
                                                   "too_long": 0})

    def columns(self, use_margin: bool) -> dict:
        cols = {"chosen_ids": self.chosen_ids, "rejected_ids": self.rejected_ids}
        if use_margin:
            cols["margin"] = self.margins
        return cols

    def __len__(self) -> int:
        return len(self.chosen_ids)


def tokenize_pairs(pairs: list[dict], tokenizer, max_length: int, *, use_margin: bool, source: str) -> PairData:
    """Encode every pair; drop (and count) pairs whose two sides encode identically and pairs whose
    response alone exceeds max_length; count pairs whose prompt lost its oldest tokens."""
    out = PairData()
    group_ids: dict[str, int] = {}
    margin_from_rank = 0
    for p in pairs:
        out.counts["pairs_in"] += 1
        chosen, c_status = encode_conversation(tokenizer, p["prompt"], p["chosen"], max_length)
        rejected, r_status = encode_conversation(tokenizer, p["prompt"], p["rejected"], max_length)
        if chosen == rejected:
            out.counts["identical"] += 1
            continue
        if "too_long" in (c_status, r_status):
            out.counts["too_long"] += 1
            continue
        if "truncated" in (c_status, r_status):
            out.counts["truncated"] += 1
        if use_margin:
            margin = p.get("margin")
            if margin is None:
                if p.get("rank_gap") is None:
                    raise UserError(
                        f"reward.use_margin=true but a pair in {source} has neither a `margin` nor a rank "
                        "distance (K-way data); add a margin column or set reward.use_margin=false."
                    )
                margin = MARGIN_PER_RANK * (int(p["rank_gap"]) - 1)
                margin_from_rank += 1
            out.margins.append(float(margin))
        out.chosen_ids.append(chosen)
        out.rejected_ids.append(rejected)
        out.groups.append(group_ids.setdefault(_group_key(p), len(group_ids)))
    out.counts["kept"] = len(out)
    out.counts["prompts"] = len(group_ids)
    c = out.counts
    if c["identical"] or c["too_long"] or c["truncated"]:
        log.warning(
            "%s: %d of %d pairs kept; dropped %d with chosen == rejected and %d whose response is longer than "
            "reward.max_length=%d tokens; %d had their prompt shortened from the left to fit.",
            source, c["kept"], c["pairs_in"], c["identical"], c["too_long"], max_length, c["truncated"],
        )
    if margin_from_rank:
        log.warning("%s: %d pairs have no margin column; using %.1f x (rank distance - 1).",
                    source, margin_from_rank, MARGIN_PER_RANK)
    if not len(out):
        raise UserError(
            f"{source} has no usable preference pair after filtering ({c['pairs_in']} read: {c['identical']} with "
            f"chosen == rejected, {c['too_long']} longer than reward.max_length={max_length} tokens). "
            "Fix the data or raise reward.max_length."
        )
    return out


def straddling_batches(groups: list[int], batch_size: int) -> str | None:
    """Why whole prompts will not fill batches exactly, when every prompt has the same number of pairs and
    batch_size is not a multiple of it; None otherwise (mixed counts, as prepared K=4 rankings beside
    own answers with ties, straddle batches whatever the size, and that is no mistake to warn about)."""
    sizes = set(Counter(groups).values())
    if len(sizes) != 1 or (size := sizes.pop()) <= 1 or batch_size % size == 0:
        return None
    return (f"batch_size={batch_size} is not a multiple of the {size} pairs per prompt, so some prompts' pairs "
            "straddle two batches.")


class GroupedPairSampler(Sampler):
    """Pairs of one prompt next to each other, prompts in a random order, so a batch holds whole
    prompts' comparisons (exactly when the batch size is a multiple of the pairs per prompt).

    InstructGPT trains on all K(K-1)/2 comparisons of a prompt as one batch element: shuffled
    independently, the same K answers are seen in many batches and the model overfits them."""

    def __init__(self, groups: list[int], seed: int):
        self.members: dict[int, list[int]] = {}
        for i, g in enumerate(groups):
            self.members.setdefault(g, []).append(i)
        self.n = len(groups)
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        gen = torch.Generator().manual_seed(self.seed * 1000 + self.epoch)
        keys = list(self.members)
        for k in torch.randperm(len(keys), generator=gen).tolist():
            idx = self.members[keys[k]]
            for j in torch.randperm(len(idx), generator=gen).tolist():
                yield idx[j]

    def __len__(self) -> int:
        return self.n

