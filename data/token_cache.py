"""Pretraining text, tokenized once into memory-mapped token files (like nanoGPT's `.bin`).

Documents are joined with EOS (the model learns where a document ends). A cache directory is
keyed by a fingerprint of the inputs' content, the split settings and the tokenizer, so a re-run
with unchanged inputs maps the existing files and a changed input gets a fresh cache. Each split
also records how many UTF-8 bytes of text it holds, for tokenizer-independent bits per byte.

Sources come as (source, role): role "train" or "val" for a source that is one split, "split"
for one whose documents are divided: every round(1/val_fraction)-th document goes to validation.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.artifacts.atomic import publish_dir, scratch_name, translating_disk_errors
from pipeline.errors import UserError

_TEXT_SUFFIXES = (".txt", ".md", ".jsonl", ".json", ".parquet", ".csv", ".gz", ".text")
_BATCH_DOCS = 256
_BATCH_CHARS = 1 << 22  # documents tokenized together: bounded in characters too, so memory stays bounded


@dataclass
class TokenSplit:
    """One split: tokens [start, stop) of a token file, and the bytes of text they encode."""

    path: Path
    dtype: str
    start: int
    stop: int
    n_bytes: int
    n_docs: int

    @property
    def n_tokens(self) -> int:
        return self.stop - self.start

    @property
    def bytes_per_token(self) -> float:
        return self.n_bytes / max(self.n_tokens, 1)

    def tokens(self) -> np.ndarray:
        return np.memmap(self.path, dtype=self.dtype, mode="r")[self.start:self.stop]


def source_fingerprint(source: str) -> str:
    """data.loaders.source_fingerprint, refusing a path-like source that does not exist."""
    from pipeline.artifacts.store import source_fingerprint as fingerprint_source

    found = fingerprint_source(source)
    looks_local = source.startswith((".", "/", "~")) or source.endswith(_TEXT_SUFFIXES) or glob.has_magic(source)
    if found.startswith("hub:") and (looks_local or os.sep in source and source.count("/") > 1):
        raise UserError(
            f"pretraining data '{source}' does not exist (no file, folder or glob match). Set train.data to "
            ".txt/.jsonl/.parquet files, folders or globs, a `datasets` hub name, or `demo`."
        )
    return found


def tokenizer_fingerprint(tokenizer) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    return hashlib.sha256((text + str(tokenizer.eos_token_id)).encode()).hexdigest()[:16]


def _is_val(index: int, val_fraction: float) -> bool:
    # Evenly spread, deterministic: document i is held out when the running share crosses an integer.
    return val_fraction > 0 and int((index + 1) * val_fraction) > int(index * val_fraction)


def iter_documents(sources: list[tuple[str, str]], split: str, text_field: str, val_fraction: float) -> Iterator[str]:
    """The documents of one split ("train" or "val"), read through data.loaders.iter_texts."""
    from data.loaders import iter_texts

    for source, role in sources:
        if role in ("train", "val"):
            if role == split:
                yield from iter_texts([source], text_field=text_field)
            continue
        for i, doc in enumerate(iter_texts([source], text_field=text_field)):
            if _is_val(i, val_fraction) == (split == "val"):
                yield doc


def cache_key(sources: list[tuple[str, str]], text_field: str, val_fraction: float, extra: str = "") -> str:
    record = [[s, role, source_fingerprint(s)] for s, role in sources] + [text_field, val_fraction, extra]
    return hashlib.sha256(json.dumps(record).encode()).hexdigest()[:16]


def _write_tokens(docs: Iterator[str], tokenizer, path: Path, dtype: str) -> tuple[int, int, int]:
    eos = tokenizer.eos_token_id
    backend = getattr(tokenizer, "backend_tokenizer", None)
    n_tokens = n_bytes = n_docs = 0
    tmp = path.with_name(path.name + ".tmp")

    def flush(batch: list[str], fh) -> int:
        # A template's markers in raw text are text: "<|end|>" inside a document is not EOS, "<|user|>" no turn.
        if backend is not None:
            as_text, backend.encode_special_tokens = backend.encode_special_tokens, True
            try:
                ids = [e.ids for e in backend.encode_batch(batch, add_special_tokens=False)]
            finally:
                backend.encode_special_tokens = as_text
        else:
            ids = tokenizer(batch, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        flat = np.fromiter((t for seq in ids for t in (*seq, eos)), dtype=dtype)
        flat.tofile(fh)
        return flat.size

    with translating_disk_errors(path), open(tmp, "wb") as fh:
        batch: list[str] = []
        chars = 0
        for doc in docs:
            if not doc:
                continue
            batch.append(doc)
            chars += len(doc)
            n_bytes += len(doc.encode("utf-8"))
            n_docs += 1
            if len(batch) == _BATCH_DOCS or chars >= _BATCH_CHARS:
                n_tokens += flush(batch, fh)
                batch, chars = [], 0
        if batch:
            n_tokens += flush(batch, fh)
    os.replace(tmp, path)
    return n_tokens, n_bytes, n_docs


def build_token_cache(sources: list[tuple[str, str]], tokenizer, cache_root: str | Path, *, text_field: str = "text",
                      val_fraction: float = 0.05, min_val_tokens: int = 2) -> tuple[dict[str, TokenSplit], Path]:
    """Tokenize the train and val splits (or reuse the cache); returns the splits and the cache dir."""
    # "markers as text": caches from before special strings in documents were encoded as text are not reused
    key = cache_key(sources, text_field, val_fraction, tokenizer_fingerprint(tokenizer) + ":markers as text")
    root = Path(cache_root) / f"tokens-{key}"
    meta_path = root / "meta.json"
    if not meta_path.is_file():
        _build_tokens(sources, tokenizer, root, text_field, val_fraction, min_val_tokens)
    meta = json.loads(meta_path.read_text())
    splits = {
        name: TokenSplit(root / s["file"], meta["dtype"], s["start"], s["stop"], s["n_bytes"], s["n_docs"])
        for name, s in meta["splits"].items()
    }
    return splits, root


def _build_tokens(sources, tokenizer, root: Path, text_field: str, val_fraction: float, min_val_tokens: int) -> None:
    """Build the cache entry in a folder private to this process and publish it whole, so a
    concurrent run (or a kill) never leaves a half-written entry under the real name."""
    import shutil

    if root.exists() and not (root / "meta.json").is_file():
        shutil.rmtree(root)  # no meta.json: a half-written entry from an older version
    scratch = scratch_name(root)
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    try:
        vocab = len(tokenizer)
        dtype = "uint16" if vocab <= np.iinfo(np.uint16).max + 1 else "uint32"
        meta = {"dtype": dtype, "vocab_size": vocab, "sources": [list(s) for s in sources], "splits": {}}
        for split in ("train", "val"):
            docs = iter_documents(sources, split, text_field, val_fraction)
            n_tokens, n_bytes, n_docs = _write_tokens(docs, tokenizer, scratch / f"{split}.bin", dtype)
            meta["splits"][split] = {"file": f"{split}.bin", "start": 0, "stop": n_tokens,
                                     "n_bytes": n_bytes, "n_docs": n_docs}
        train, val = meta["splits"]["train"], meta["splits"]["val"]
        if train["stop"] == 0:
            raise UserError(
                f"the pretraining data {', '.join(s for s, _ in sources)} holds no text. Point train.data at "
                "non-empty .txt/.jsonl/.parquet files (or `demo`)."
            )
        if val["stop"] < min_val_tokens:
            # Too few documents to hold some out: validate on the tail of the training tokens instead.
            cut = int(train["stop"] * (1 - max(val_fraction, 0.01)))
            share = (train["stop"] - cut) / train["stop"]
            meta["splits"]["val"] = {"file": "train.bin", "start": cut, "stop": train["stop"],
                                     "n_bytes": int(train["n_bytes"] * share), "n_docs": 0}
            train.update(stop=cut, n_bytes=train["n_bytes"] - meta["splits"]["val"]["n_bytes"])
        (scratch / "meta.json").write_text(json.dumps(meta, indent=2))
        publish_dir(scratch, root)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def prune_cache(cache_root: str | Path, in_use: list[Path], keep_others: int = 1, log=print,
                kinds: tuple[str, ...] = ("tokens-", "tokenizer-")) -> list[Path]:
    """Delete old cache entries so `runs/<name>/cache/` does not grow with every data or tokenizer change.

    Per kind (`tokens-*`, `tokenizer-*`; SFT's `records-*`), the entries in use stay, and so do the `keep_others` most
    recently used others (switching a setting back and forth stays cheap). Entries in use are touched,
    so "recently used" means used, not built. Returns the deleted paths."""
    import shutil

    root = Path(cache_root)
    in_use = [Path(p).resolve() for p in in_use]
    for p in in_use:
        if p.exists():
            os.utime(p)
    removed: list[Path] = []
    from pipeline.artifacts.resume import pid_alive

    for scratch in root.glob(".*.tmp-*"):  # left by a killed build (a live one is still writing)
        pid = scratch.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(scratch, ignore_errors=True)
    for kind in kinds:
        others = sorted((p for p in root.glob(f"{kind}*") if p.is_dir() and p.resolve() not in in_use),
                        key=lambda p: p.stat().st_mtime, reverse=True)
        for old in others[keep_others:]:
            shutil.rmtree(old, ignore_errors=True)
            removed.append(old)
    if removed:
        log(f"cache: removed {len(removed)} old entr{'y' if len(removed) == 1 else 'ies'} from {root} "
            f"({', '.join(p.name for p in removed)})")
    return removed
