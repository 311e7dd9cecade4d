"""DPO's preference pairs: by default exactly the pairs the reward model learns from (the reward
stage's data, K-way rankings expanded to all pairs), plus the rank stage's rankings of the
model's own answers where `make rank` has produced them; screened against max_length with counts."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.artifacts.store import is_complete, read_manifest
from pipeline.errors import UserError
from pipeline.judge.scoring import encode_conversation

log = logging.getLogger(__name__)


@dataclass
class Pairs:
    """Usable pairs for TRL (`prompt`, `chosen`, `rejected` as chat messages) and what was dropped."""

    records: list[dict]
    sources: dict = field(default_factory=dict)  # source -> fingerprint: the stage's inputs
    total: int = 0
    too_long: int = 0  # prompt + answer over max_length: dropped

    def counts(self) -> dict:
        return {"used": len(self.records), "total": self.total, "dropped_too_long": self.too_long}


def _demo(cfg, stem: str) -> str:
    from data.demo import demo_file

    return str(demo_file(cfg, stem))


def rank_rankings(cfg) -> str | None:
    """runs/<name>/rank/rankings.jsonl when the rank stage has finished it."""
    d = cfg.stage_dir("rank")
    f = d / "rankings.jsonl"
    return str(f) if is_complete(d) and f.is_file() else None


def reward_sources(cfg) -> tuple[list[str], str | None] | None:
    """The training and held-out sources the finished reward model recorded in its manifest, if any."""
    d = cfg.stage_dir("reward")
    data = ((read_manifest(d) or {}).get("inputs") or {}).get("data") or {} if is_complete(d) else {}
    train, held = data.get("train"), data.get("heldout")
    if not isinstance(train, dict) or not train or not all(Path(s).is_file() for s in train):
        return None
    return list(train), next(iter(held), None) if isinstance(held, dict) else None


def pair_sources(cfg) -> tuple[list[str], str | None]:
    """(training sources, held-out source or None) for cfg.dpo. `reward` means the pairs the reward
    model learnt from: those its artifact records, else what the reward section would read (plus
    the rank stage's rankings of the model's own answers when they exist)."""
    d, r = cfg.dpo, cfg.reward
    recorded = reward_sources(cfg)
    if d.data == "reward":
        if recorded:
            train = recorded[0]
        else:
            train = [_demo(cfg, "rankings_train.jsonl") if r.data == "demo" else r.data]
            own = rank_rankings(cfg)
            if own:
                train.append(own)
    else:
        train = [d.data]
    held = d.val_data
    if held == "reward":
        held = recorded[1] if recorded else (r.val_data or (_demo(cfg, "rankings_heldout.jsonl")
                                                             if r.data == "demo" else None))
    return train, held


def load_pairs(sources: list[str]) -> Pairs:
    from data.loaders import load_pairs as read
    from data.loaders import source_fingerprint

    records = []
    for src in sources:
        records += [{"prompt": p["prompt"], "chosen": p["chosen"], "rejected": p["rejected"]} for p in read(src)]
    return Pairs(records, sources={s: source_fingerprint(s) for s in sources}, total=len(records))


def screen(pairs: Pairs, tokenizer, max_length: int, name: str, keep: int | None = None) -> Pairs:
    """Drop (and count) pairs whose prompt + chosen or prompt + rejected exceeds max_length: cutting
    an answer would teach a preference between two texts nobody ranked. `keep`: use only the first
    that many of the rest (held-out evaluation costs two forwards per pair)."""
    kept = []
    for p in pairs.records:
        if any(encode_conversation(tokenizer, p["prompt"], p[k], max_length)[1] != "ok" for k in ("chosen", "rejected")):
            pairs.too_long += 1
            continue
        kept.append(p)
    pairs.records = kept[:keep] if keep else kept
    msg = f"dpo {name}: {len(pairs.records)} of {pairs.total} pairs used"
    if keep and len(kept) > keep:
        msg += f" (the first {keep}: dpo.eval_pairs)"
    if pairs.too_long:
        msg += f"; {pairs.too_long} dropped (over dpo.max_length={max_length})"
        log.warning(msg)
    else:
        log.info(msg)
    if not kept:
        raise UserError(f"no usable preference pair in the {name} data ({', '.join(pairs.sources)}): "
                        f"{pairs.too_long} of {pairs.total} are longer than dpo.max_length={max_length}. "
                        "Raise dpo.max_length or give shorter pairs with dpo.data.")
    return pairs
