"""A data source's records, normalised once into a memory-mapped Arrow file (a `datasets.Dataset`): SFT's
conversations (`records-*` entries) and the reward stage's preference pairs (`pairs-*`).

A 200 MB JSONL of short conversations held as Python dicts takes gigabytes; as Arrow on disk, mapped,
it takes the pages being read. Records go from data.loaders.normalized to the file one at a time, so
memory stays bounded however big the source is (and a record over MAX_RECORD_BYTES is never held).

An entry lives under the run's cache folder (never beside the user's data), named by a fingerprint of
the source's content, the kind of record and this layout's version: a changed file gets a fresh entry,
an unchanged one is mapped again without reading the file. What was read and dropped is kept beside
the records (meta.json), so a reused entry reports the same counts as the first reading. The stages
tokenize these records with a batched `Dataset.map` (on worker processes for a big set: map_processes).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from collections import Counter
from pathlib import Path

from data.loaders import PAIRS, SFT, Kind, Tally, normalized
from pipeline.artifacts.atomic import publish_dir, scratch_name, translating_disk_errors

LAYOUT = 1  # bump when what an entry holds changes: older entries are then never read
PREFIX = "records-"  # SFT entries' folder names (data.token_cache.prune_cache keeps the newest)
PAIRS_PREFIX = "pairs-"  # the reward stage's: each stage prunes its own kind, never the other's entries


def entry_prefix(kind: Kind) -> str:
    return PAIRS_PREFIX if kind is PAIRS else PREFIX


def features(kind: Kind):
    """The Arrow layout of a kind's canonical records (data.formats)."""
    from datasets import Features, List, Value

    messages = List({"role": Value("string"), "content": Value("string")})
    if kind is SFT:
        return Features({"messages": messages})
    if kind is PAIRS:
        return Features({"prompt": messages, "chosen": messages, "rejected": messages, "group": Value("string"),
                         "rank_gap": Value("int64"), "margin": Value("float64")})
    raise ValueError(f"no Arrow layout for {kind.what} records")


def entry_key(source: str, kind: Kind) -> str:
    """From the source's content (a hub dataset by its name, as the stages' manifests record it)."""
    from data.loaders import MAX_RECORD_BYTES
    from pipeline.artifacts.store import source_fingerprint

    record = [LAYOUT, kind.what, source_fingerprint(source), MAX_RECORD_BYTES]
    return hashlib.sha256(json.dumps(record).encode()).hexdigest()[:16]


def cached_records(source: str, kind: Kind, cache_root: str | Path):
    """The source's records as a memory-mapped Dataset (built on first use); a UserError, as
    data.loaders' list readers give, for a bad record or a source with nothing usable."""
    from datasets import Dataset

    root = Path(cache_root) / f"{entry_prefix(kind)}{entry_key(source, kind)}"
    if not (root / "meta.json").is_file():
        _build(source, kind, root)
    meta = json.loads((root / "meta.json").read_text())
    Tally(meta["seen"], Counter(meta["dropped"])).close(source, kind, meta["used"])  # the same log lines
    return Dataset.from_file(str(root / "records.arrow"))


def _build(source: str, kind: Kind, root: Path) -> None:
    """Write the entry in a folder private to this process and publish it whole: a kill or a bad
    record never leaves a half-written entry under the real name."""
    from datasets.arrow_writer import ArrowWriter

    if root.exists():
        shutil.rmtree(root)  # no meta.json: left by a crash of an older version
    scratch = scratch_name(root)
    shutil.rmtree(scratch, ignore_errors=True)
    try:
        with translating_disk_errors(root):
            scratch.mkdir(parents=True)
            tally, used = Tally(), 0
            with ArrowWriter(features=features(kind), path=str(scratch / "records.arrow")) as writer:
                for record in normalized(source, kind, tally):
                    writer.write(record)
                    used += 1
                writer.finalize()
            if not used:
                tally.close(source, kind, used)  # nothing usable: refused before anything is published
            meta = {"source": source, "kind": kind.what, "seen": tally.seen, "used": used,
                    "dropped": dict(tally.dropped)}
            (scratch / "meta.json").write_text(json.dumps(meta, indent=1))
            publish_dir(scratch, root)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


PARALLEL_FROM = 50_000  # records: below this, starting worker processes for a batched map costs more than it saves


def map_processes(n_records: int) -> int:
    """Worker processes for a batched tokenizing `Dataset.map` over n_records (1: in this process)."""
    return min(os.cpu_count() or 1, 8) if n_records >= PARALLEL_FROM else 1


@contextlib.contextmanager
def tokenizer_threads_off(forking: bool):
    """While worker processes are forked, the Rust tokenizer's own threads off (each worker encodes one
    record at a time; tokenizers warns at every fork otherwise)."""
    before = os.environ.get("TOKENIZERS_PARALLELISM")
    if forking:
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        yield
    finally:
        if forking and before is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        elif forking:
            os.environ["TOKENIZERS_PARALLELISM"] = before
