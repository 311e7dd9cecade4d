"""A data source's records, normalised once into a memory-mapped Arrow file (a `datasets.Dataset`).

A 200 MB JSONL of short conversations held as Python dicts takes gigabytes; as Arrow on disk, mapped,
it takes the pages being read. Records go from data.loaders.normalized to the file one at a time, so
memory stays bounded however big the source is (and a record over MAX_RECORD_BYTES is never held).

An entry lives under the run's cache folder (never beside the user's data), named by a fingerprint of
the source's content, the kind of record and this layout's version: a changed file gets a fresh entry,
an unchanged one is mapped again without reading the file. What was read and dropped is kept beside
the records (meta.json), so a reused entry reports the same counts as the first reading.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections import Counter
from pathlib import Path

from data.loaders import SFT, Kind, Tally, normalized
from pipeline.artifacts.atomic import publish_dir, scratch_name, translating_disk_errors

LAYOUT = 1  # bump when what an entry holds changes: older entries are then never read
PREFIX = "records-"  # entries' folder names (data.token_cache.prune_cache keeps the newest)


def _features(kind: Kind):
    from datasets import Features, List, Value

    if kind is SFT:
        return Features({"messages": List({"role": Value("string"), "content": Value("string")})})
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

    root = Path(cache_root) / f"{PREFIX}{entry_key(source, kind)}"
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
            with ArrowWriter(features=_features(kind), path=str(scratch / "records.arrow")) as writer:
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
