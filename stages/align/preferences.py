"""DPO's preference pairs: by default exactly the pairs the reward model learns from (every part of
reward.data: the demo's rankings and the rank stage's rankings of the model's own answers, K-way
rankings expanded to all pairs); screened against max_length with counts."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

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


def pair_sources(cfg) -> tuple[list[str], str | None]:
    """(training sources, held-out source or None) for cfg.dpo, as the stage graph declares them
    (pipeline/chain/table.py): dpo.data=reward means the pairs the reward model learns from, every part of
    reward.data (demo+rank: the demo's rankings and this run's rankings of the model's own answers)."""
    from data.demo import input_path
    from pipeline.chain.table import inputs_of

    inputs = inputs_of(cfg, "dpo")
    train = [input_path(cfg, inp) for name, inp in inputs.items() if name.startswith("pairs")]
    held = input_path(cfg, inputs["heldout"]) if inputs.get("heldout") else None
    return train, held


def load_pairs(sources: list[str]) -> Pairs:
    from data.feedback import feedback_pairs, is_store
    from data.loaders import load_pairs
    from pipeline.artifacts.store import source_fingerprint

    records = []
    for src in sources:
        read = feedback_pairs if is_store(src) else load_pairs  # reward.data's feedback part: data/feedback.py
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
