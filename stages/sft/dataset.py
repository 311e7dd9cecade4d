"""SFT data: load the conversations, split off a validation set, and screen them against the
tokenizer and max_length before the trainer sees them.

Conversations stay on disk: the records are a memory-mapped Arrow file (data.record_cache) and the
screening a batched `Dataset.map` written beside it, so a 200 MB JSONL trains with bounded memory
(benchmarks/data_memory.py measures it) and a rerun on unchanged data maps both files again.

TRL's SFTTrainer truncates long conversations and drops ones left without assistant tokens
without saying so; screening here first lets the stage count and report both, and turns
"nothing usable" into a clear error instead of an empty run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipeline.errors import UserError
from pipeline.lm.chat_format import (
    MaskError,
    assistant_mask,
    check_assistant_mask,
    encode_chat,
    refusal,
)

if TYPE_CHECKING:
    from datasets import Dataset

log = logging.getLogger(__name__)


@dataclass
class Screened:
    """The usable conversations and what happened to the rest."""

    records: Dataset  # {"messages": ...}
    # per record {"input_ids", "labels"} as screened, cut at max_length, -100 on what carries no loss: what
    # SFTTrainer trains on, so TRL never tokenizes a conversation itself (it would read special strings in
    # the content as the template's tokens)
    encoded: Dataset
    total: int = 0
    no_assistant: int = 0  # conversations without any assistant turn: dropped
    truncated: int = 0  # longer than max_length: cut at max_length, kept
    dropped_too_long: int = 0  # no assistant token left within max_length: dropped
    lengths: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int32))  # tokens kept, screened ones

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


def _source_record(source: str) -> dict:
    from pipeline.artifacts.store import source_fingerprint

    return {"path": source, "fingerprint": source_fingerprint(source)}


def load_sft_splits(cfg) -> tuple[Dataset, Dataset, dict]:
    """(train, validation, inputs-record) for cfg.sft: the demo set by default, else any file or hub name
    data.loaders reads; without val_data, a seeded val_fraction of the data. The splits are memory-mapped
    Arrow (data.record_cache, under the run's cache folder), so a big file never sits in memory whole."""
    from data.demo import input_path
    from data.loaders import SFT
    from data.record_cache import PREFIX, cached_records
    from data.token_cache import prune_cache
    from pipeline.chain.table import inputs_of

    s = cfg.sft
    cache = cfg.run_dir / "cache"
    inputs = inputs_of(cfg, "sft")  # as pipeline/chain/table.py declares them: the demo's sets, or the files named
    train_src = input_path(cfg, inputs["train"])
    val_src = input_path(cfg, inputs["val"]) if "val" in inputs else None
    train = cached_records(train_src, SFT, cache)
    inputs = {"train": _source_record(train_src)}
    if val_src:
        val = cached_records(val_src, SFT, cache)
        inputs["val"] = _source_record(val_src)
    else:
        if not 0 < s.val_fraction < 1:
            raise UserError(f"sft.val_fraction={s.val_fraction} must be between 0 and 1 (exclusive) when "
                            "sft.val_data is not set.")
        order = list(range(len(train)))
        random.Random(cfg.run.seed).shuffle(order)
        n_val = max(1, round(len(train) * s.val_fraction)) if len(train) > 1 else 0
        # index maps over the one mapped file, kept in memory (4 bytes a record), never a copy of the records
        val = train.select(order[:n_val], keep_in_memory=True)
        train = train.select(order[n_val:], keep_in_memory=True)
        inputs["val"] = {"split_of": "train", "fraction": s.val_fraction, "seed": cfg.run.seed}
    entries = {Path(f["filename"]).parent for d in (train, val) for f in d.cache_files}
    prune_cache(cache, sorted(entries), kinds=(PREFIX,), log=log.info)
    return train, val, inputs


# Screening outcome per conversation (the "status" column); used below TOO_LONG, dropped from it.
KEPT, TRUNCATED, TOO_LONG, NO_ASSISTANT = 0, 1, 2, 3
_LAYOUT = 1  # bump when the screened columns change: older cached screenings are then never read


def _screen_batch(batch: dict, indices: list[int], tokenizer, max_length: int, assistant_only: bool,
                  source: str) -> dict:
    out = {"input_ids": [], "labels": [], "length": [], "status": []}
    for messages, i in zip(batch["messages"], indices):
        msgs = [{"role": m["role"], "content": m["content"]} for m in messages]
        ids: list[int] = []
        labels: list[int] = []
        if not any(m["role"] == "assistant" and m["content"] for m in msgs):
            status = NO_ASSISTANT
        else:
            if assistant_only:
                try:
                    ids, mask = assistant_mask(tokenizer, msgs)
                except MaskError as e:
                    raise UserError(refusal(f"{source}, conversation {i + 1}", str(e))) from None
                labels = [t if m else -100 for t, m in zip(ids, mask)]
            else:
                ids = encode_chat(tokenizer, msgs)
                labels = list(ids)
            status = TRUNCATED if len(ids) > max_length else KEPT
            ids, labels = ids[:max_length], labels[:max_length]
        out["length"].append(len(ids))
        if all(label == -100 for label in labels) and status != NO_ASSISTANT:
            status, ids, labels = TOO_LONG, [], []  # nothing to learn within the window: not stored
        out["input_ids"].append(ids)
        out["labels"].append(labels)
        out["status"].append(status)
    return out


def _screen_cache_file(records: Dataset, tokenizer, max_length: int, assistant_only: bool) -> tuple[str, str | None]:
    """(fingerprint of the screening, the file to keep it in: beside the mapped records, None when they
    are in memory). The records' fingerprint follows their file and selection; the tokenizer's covers its
    vocabulary, EOS and chat template."""
    from data.token_cache import tokenizer_fingerprint

    template = json.dumps(tokenizer.chat_template, sort_keys=True)
    key = hashlib.sha256(json.dumps([_LAYOUT, records._fingerprint, tokenizer_fingerprint(tokenizer), template,
                                     max_length, assistant_only]).encode()).hexdigest()[:16]
    files = records.cache_files
    return key, str(Path(files[0]["filename"]).parent / f"screened-{key}.arrow") if files else None


def screen(records, tokenizer, max_length: int, assistant_only: bool = True, source: str = "sft.data") -> Screened:
    """Keep conversations that still teach something within max_length: count truncations,
    drop those without an assistant turn or (assistant-only loss) with no assistant token inside
    the window. Token ids and assistant masks come from the model's own chat template, each message's
    content encoded as plain text (pipeline.lm.chat_format.encode_chat).

    `records` is a Dataset of {"messages"} (load_sft_splits) or a list of them; the encoding is a batched
    `Dataset.map` written to a file beside mapped records (reused by a rerun with the same tokenizer and
    settings), on several processes for a big set."""
    from datasets import Dataset, Features, List, Value

    from data.record_cache import map_processes, tokenizer_threads_off

    if not isinstance(records, Dataset):
        records = Dataset.from_list([{"messages": _messages(r)} for r in records])
    key, cache_file = _screen_cache_file(records, tokenizer, max_length, assistant_only)
    features = Features({**records.features, "input_ids": List(Value("int32")), "labels": List(Value("int32")),
                         "length": Value("int32"), "status": Value("int8")})
    procs = map_processes(len(records))
    with tokenizer_threads_off(procs > 1):
        screened = records.map(
            _screen_batch, batched=True, with_indices=True, features=features, cache_file_name=cache_file,
            new_fingerprint=key, num_proc=procs if procs > 1 else None, desc="screening conversations",
            fn_kwargs={"tokenizer": tokenizer, "max_length": max_length, "assistant_only": assistant_only,
                       "source": source})
    columns = screened.with_format("numpy", columns=["status", "length"])[:]  # whole columns at once, not per row
    status, lengths = columns["status"], columns["length"]
    kept = np.flatnonzero(status < TOO_LONG)
    used = screened.select(kept, keep_in_memory=True)
    lengths = lengths[status != NO_ASSISTANT]
    return Screened(records=used.select_columns(["messages"]), encoded=used.select_columns(["input_ids", "labels"]),
                    total=len(status), no_assistant=int((status == NO_ASSISTANT).sum()),
                    truncated=int((status == TRUNCATED).sum()), dropped_too_long=int((status == TOO_LONG).sum()),
                    lengths=lengths)


def _messages(record: dict) -> list[dict]:
    return [{"role": m["role"], "content": m["content"]} for m in record["messages"]]


def screen_splits(train, val, tokenizer, max_length: int, assistant_only: bool = True) -> tuple[Screened, Screened]:
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
