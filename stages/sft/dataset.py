"""SFT data: load the conversations, split off a validation set, and screen them against the
tokenizer and max_length before the trainer sees them.

TRL's SFTTrainer truncates long conversations and drops ones left without assistant tokens
without saying so; screening here first lets the stage count and report both, and turns
"nothing usable" into a clear error instead of an empty run.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field

from pipeline.errors import UserError
from pipeline.lm.chat_format import (
    MaskError,
    assistant_mask,
    check_assistant_mask,
    encode_chat,
    refusal,
)

log = logging.getLogger(__name__)


@dataclass
class Screened:
    """The usable conversations and what happened to the rest."""

    records: list[dict]  # {"messages": ...}
    # per record {"input_ids"(, "assistant_masks")} as screened: what SFTTrainer trains on, so TRL never
    # tokenizes a conversation itself (it would read special strings in the content as the template's tokens)
    encoded: list[dict] = field(default_factory=list)
    total: int = 0
    no_assistant: int = 0  # conversations without any assistant turn: dropped
    truncated: int = 0  # longer than max_length: cut at max_length, kept
    dropped_too_long: int = 0  # no assistant token left within max_length: dropped
    lengths: list[int] = field(default_factory=list)

    def summary(self, name: str, max_length: int) -> str:
        parts = [f"{name}: {len(self.records)} of {self.total} conversations used"]
        if self.no_assistant:
            parts.append(f"{self.no_assistant} dropped (no assistant turn)")
        if self.dropped_too_long:
            parts.append(f"{self.dropped_too_long} dropped (no assistant token within max_length={max_length})")
        if self.truncated:
            parts.append(f"{self.truncated} truncated to max_length={max_length}")
        return "; ".join(parts)

    def counts(self) -> dict:
        return {"used": len(self.records), "total": self.total, "no_assistant": self.no_assistant,
                "truncated": self.truncated, "dropped_too_long": self.dropped_too_long}


def _load(source: str) -> list[dict]:
    from data.loaders import load_sft

    return load_sft(source)


def _source_record(source: str) -> dict:
    from pipeline.artifacts.store import source_fingerprint

    return {"path": source, "fingerprint": source_fingerprint(source)}


def load_sft_splits(cfg) -> tuple[list[dict], list[dict], dict]:
    """(train, validation, inputs-record) for cfg.sft: the demo set by default, else any file or
    hub name data.loaders.load_sft reads; without val_data, a seeded val_fraction of the data."""
    from data.demo import input_path
    from pipeline.chain.table import inputs_of

    s = cfg.sft
    inputs = inputs_of(cfg, "sft")  # as pipeline/chain/table.py declares them: the demo's sets, or the files named
    train_src = input_path(cfg, inputs["train"])
    val_src = input_path(cfg, inputs["val"]) if "val" in inputs else None
    train = _load(train_src)
    inputs = {"train": _source_record(train_src)}
    if val_src:
        val = _load(val_src)
        inputs["val"] = _source_record(val_src)
    else:
        if not 0 < s.val_fraction < 1:
            raise UserError(f"sft.val_fraction={s.val_fraction} must be between 0 and 1 (exclusive) when "
                            "sft.val_data is not set.")
        order = list(range(len(train)))
        random.Random(cfg.run.seed).shuffle(order)
        n_val = max(1, round(len(train) * s.val_fraction)) if len(train) > 1 else 0
        val = [train[i] for i in order[:n_val]]
        train = [train[i] for i in order[n_val:]]
        inputs["val"] = {"split_of": "train", "fraction": s.val_fraction, "seed": cfg.run.seed}
    return train, val, inputs


def _messages(record: dict) -> list[dict]:
    return [{"role": m["role"], "content": m["content"]} for m in record["messages"]]


def screen(records: list[dict], tokenizer, max_length: int, assistant_only: bool = True,
           source: str = "sft.data") -> Screened:
    """Keep conversations that still teach something within max_length: count truncations,
    drop those without an assistant turn or (assistant-only loss) with no assistant token inside
    the window. Token ids and assistant masks come from the model's own chat template, each message's
    content encoded as plain text (pipeline.lm.chat_format.encode_chat)."""
    out = Screened(records=[], total=len(records))
    for n_rec, rec in enumerate(records, 1):
        msgs = _messages(rec)
        if not any(m["role"] == "assistant" and m["content"] for m in msgs):
            out.no_assistant += 1
            continue
        if assistant_only:
            try:
                ids, mask = assistant_mask(tokenizer, msgs)
            except MaskError as e:
                raise UserError(refusal(f"{source}, conversation {n_rec}", str(e))) from None
        else:
            ids = encode_chat(tokenizer, msgs)
            mask = [1] * len(ids)
        n = len(ids)
        out.lengths.append(min(n, max_length))
        if not any(mask[:max_length]):
            out.dropped_too_long += 1
            continue
        if n > max_length:
            out.truncated += 1
        out.records.append({"messages": msgs})
        out.encoded.append({"input_ids": ids, "assistant_masks": mask} if assistant_only else {"input_ids": ids})
    return out


def screen_splits(train: list[dict], val: list[dict], tokenizer, max_length: int,
                  assistant_only: bool = True) -> tuple[Screened, Screened]:
    """Screen both splits, log what was dropped or cut, and fail on a split left empty (or, with
    assistant-only loss, on a chat template that cannot mark the assistant's tokens)."""
    if assistant_only:
        try:
            check_assistant_mask(tokenizer, "the model's tokenizer")
        except MaskError as e:
            raise UserError(str(e)) from None
    result = []
    for name, records in (("train", train), ("validation", val)):
        s = screen(records, tokenizer, max_length, assistant_only, source=f"the {name} split")
        msg = s.summary(name, max_length)
        (log.warning if s.total != len(s.records) or s.truncated else log.info)(msg)
        if not s.records:
            reason = (f"{s.no_assistant} have no assistant turn, {s.dropped_too_long} have no assistant token "
                      f"within sft.max_length={max_length}")
            raise UserError(f"no usable SFT conversations in the {name} split ({s.total} read: {reason}). "
                            "Check sft.data / sft.val_data (records need an assistant answer) or raise "
                            "sft.max_length.")
        result.append(s)
    return result[0], result[1]


def heldout_prompts(records: list[dict], n: int) -> list[tuple[list[dict], str]]:
    """(prompt messages, reference answer) from the first n validation conversations: the
    conversation up to its last assistant turn, and that turn's text."""
    out = []
    for rec in records:
        msgs = rec["messages"]
        last = max(i for i, m in enumerate(msgs) if m["role"] == "assistant")
        out.append((msgs[:last], msgs[last]["content"]))
        if len(out) >= n:
            break
    return out
