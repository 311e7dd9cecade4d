"""Load any stage's data from local files or the Hugging Face hub, in the canonical shapes.

    load_sft(source)      -> [{"messages": [...]}]
    load_pairs(source)    -> [{"prompt", "chosen", "rejected", "group", "rank_gap", "margin"}]
    load_rankings(source) -> [{"prompt", "responses", "ranking"}]
    load_prompts(source)  -> [{"prompt", "gold"}]
    iter_texts(sources)   -> pretraining documents (str)

A source is a local .jsonl/.json/.parquet/.csv/.txt file (optionally .gz), a folder or glob of
such files, a dataset saved with `datasets.save_to_disk`, or a hub name `owner/name[:split]`
(default split "train"; a slice such as `Anthropic/hh-rlhf:test[:50%]` takes part of one).
Records are normalised by data.formats; a record that fits no format raises a UserError naming
the file, the line and the accepted formats; usable-but-empty records are dropped and counted, and
so is a JSONL/.txt record over MAX_RECORD_BYTES, skipped while reading without ever being held whole.
`normalized` gives the records one at a time (data.record_cache writes them to a memory-mapped Arrow
file, so a 200 MB file never becomes Python objects all at once).

Plain-text pretraining files (.txt) are split into documents at blank lines (one paragraph or
block = one document), and at lines that are exactly `<|endoftext|>` (the TinyStories convention),
so a corpus in one file still has many documents to hold some out for validation. A document over
MAX_DOCUMENT_CHARS (a file with no blank lines, a huge record) is cut into pieces of at most that
size, at line or word breaks, and the cuts are counted and reported: tokenizing one 50 MB string
takes gigabytes of memory, pieces keep it bounded.
"""

from __future__ import annotations

import csv
import glob
import gzip
import io
import json
import logging
import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from data import formats
from data.formats import BadRecord, Drop
from data.lines import suffix, text_lines
from pipeline.artifacts.store import is_saved_dataset
from pipeline.errors import UserError

log = logging.getLogger(__name__)
SUFFIXES = (".jsonl", ".json", ".parquet", ".csv", ".txt")
_HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?(:[\w.-]+(\[[\w%:+-]*\])?)?$")
_DOC_SEPARATOR = "<|endoftext|>"
MAX_DOCUMENT_CHARS = 1 << 20
# A record (a JSONL or .txt line) over this many bytes is dropped and counted while it is read, in bounded
# chunks, never held whole: tokenizing one 20 MB conversation takes gigabytes, and no max_length keeps
# more than a sliver of it. Pretraining text is cut into pieces instead (iter_texts).
MAX_RECORD_BYTES = 1 << 20
TOO_LONG = f"longer than {MAX_RECORD_BYTES >> 20} MiB (a record this long is dropped unread)"
_MAX_CSV_FIELD = 1 << 26


def _looks_like_hub(source: str) -> bool:
    return bool(_HUB_NAME.match(source)) and suffix(Path(source.split(":")[0]))[0] not in SUFFIXES


def resolve(source: str) -> list[Path] | str:
    """The files a source names (sorted), or the source itself when it is a hub name."""
    source = str(source)
    if not source.strip():  # Path("") is the current folder: never read the repo, .venv and runs/ as data
        raise UserError("a data source is empty (a data key set to nothing, e.g. train.data=): name a file, "
                        "folder, glob or hub dataset.")
    if source == "demo":
        raise UserError('"demo" names the embedded demo data: resolve it with data.demo.demo_file(cfg, name) '
                        "before calling a loader.")
    p = Path(source).expanduser()
    if p.exists() and not (p.is_file() or p.is_dir()):
        raise UserError(f"{p} is not a regular file or folder (a pipe, socket or device): give a data file.")
    if not p.exists() and is_saved_dataset(Path(source.rpartition(":")[0])):
        return source  # a split of a saved DatasetDict: folder:split
    if p.is_file():
        return [p]
    if p.is_dir():
        if is_saved_dataset(p):
            return source  # saved with datasets.save_to_disk: read by _hub_records
        files = sorted(f for f in p.rglob("*") if f.is_file() and suffix(f)[0] in SUFFIXES)
        if not files:
            raise UserError(f"{p} is a folder without data files ({', '.join(SUFFIXES)}, optionally .gz).")
        return files
    if any(c in source for c in "*?[") and not _looks_like_hub(source):  # hub splits may be sliced: name:test[:50%]
        files = sorted(Path(f) for f in glob.glob(source, recursive=True) if Path(f).is_file())
        if not files:
            raise UserError(f"{source} matches no file.")
        return files
    if _looks_like_hub(source):
        return source
    raise UserError(f"{source} does not exist. Give a local file ({', '.join(SUFFIXES)}, optionally .gz), "
                    "a folder or glob of them, or a hub dataset name such as Anthropic/hh-rlhf:train.")


def _hub_records(source: str) -> Iterator[tuple[str, int, dict]]:
    try:
        import datasets
    except ImportError:
        raise UserError(f"{source}: reading hub datasets needs the `datasets` package (pip install datasets).") from None
    folder, _, split = (source, "", "") if Path(source).is_dir() else source.rpartition(":")
    if folder and Path(folder).is_dir():
        try:
            ds = datasets.load_from_disk(folder)
        except Exception as e:  # any failure of a foreign directory is the user's to fix
            raise UserError(f"{folder}: cannot load the saved dataset ({e}).") from None
        if isinstance(ds, datasets.DatasetDict):
            if split and split not in ds:
                raise UserError(f"{source}: the saved dataset has no split {split!r}; it has {', '.join(ds)} "
                                f"(write {folder}:{next(iter(ds))}).")
            ds = ds[split or ("train" if "train" in ds else next(iter(ds)))]
        elif split:
            raise UserError(f"{source}: {folder} holds one split; name the folder without ':{split}'.")
    else:
        name, _, split = source.partition(":")
        try:
            ds = datasets.load_dataset(name, split=split or "train")
        except Exception as e:  # offline, unknown name, missing split: all need the same advice
            raise UserError(
                f"Could not load the hub dataset {name!r} (split {split or 'train'!r}): {type(e).__name__}: {e}. "
                f"No local file or folder {name!r} exists either. Hub datasets need network access (unset HF_HUB_OFFLINE / HF_DATASETS_OFFLINE) and an exact "
                "name and split such as Anthropic/hh-rlhf:test (a dataset without a train split needs one: "
                "HuggingFaceH4/ultrafeedback_binarized:train_prefs); offline, download it once or give a local file."
            ) from None
    for i, rec in enumerate(ds, 1):
        yield source, i, rec


def _maybe_json(value):
    """CSV cells are strings; message lists and rankings are stored in them as JSON."""
    if isinstance(value, str) and value[:1] in "[{":
        try:
            return json.loads(value)
        except (json.JSONDecodeError, RecursionError):
            return value
    return value


def _json_problem(e: Exception) -> str:
    return e.msg if isinstance(e, json.JSONDecodeError) else "nested too deeply"


def _file_records(path: Path, txt_field: str | None, max_bytes: int | None = None
                  ) -> Iterator[tuple[str, int, dict | None]]:
    """(where, line, record) of one file; the record is None for a line over max_bytes (.jsonl, .txt)."""
    kind, gz = suffix(path)
    where = str(path)
    if kind == ".jsonl":
        for n, line in text_lines(path, max_bytes):
            if line is None:
                yield where, n, None
            elif line.strip():
                try:
                    rec = json.loads(line)
                except (json.JSONDecodeError, RecursionError) as e:
                    raise UserError(f"{where}, line {n}: not valid JSON ({_json_problem(e)}). Each line must be one "
                                    "JSON object.") from None
                yield where, n, rec
    elif kind == ".json":
        text = "".join(line for _, line in text_lines(path))
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, RecursionError) as e:
            at = f", line {e.lineno}" if isinstance(e, json.JSONDecodeError) else ""
            raise UserError(f"{where}{at}: not valid JSON ({_json_problem(e)}).") from None
        if isinstance(data, dict) and isinstance(data.get("data"), list):
            data = data["data"]
        if not isinstance(data, list):
            raise UserError(f'{where}: a .json file must hold a list of records (or {{"data": [...]}}).')
        for i, rec in enumerate(data, 1):
            yield f"{where} (record {i})", i, rec
    elif kind == ".csv":
        rows = (line for _, line in text_lines(path))
        csv.field_size_limit(max(csv.field_size_limit(), _MAX_CSV_FIELD))  # long answers are fine; 128 KiB is not
        reader = csv.DictReader(rows)
        while True:
            try:
                rec = next(reader)
            except StopIteration:
                break
            except csv.Error as e:
                raise UserError(f"{where}, line {reader.line_num}: not valid CSV ({e}).") from None
            yield where, reader.line_num, {k: _maybe_json(v) for k, v in rec.items() if k is not None}
    elif kind == ".parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(io.BytesIO(gzip.open(path).read()) if gz else path)
        except Exception as e:  # pyarrow raises several types for a corrupt file
            raise UserError(f"{where}: not a readable Parquet file ({e}).") from None
        for i, rec in enumerate(table.to_pylist(), 1):
            yield f"{where} (row {i})", i, rec
    elif kind == ".txt" and txt_field:
        for n, line in text_lines(path, max_bytes):
            if line is None:
                yield where, n, None
            elif line.strip():
                yield where, n, {txt_field: line.strip()}
    elif kind == ".txt":
        raise UserError(f"{where}: a .txt file holds plain text; this stage needs records "
                        "(.jsonl, .json, .parquet or .csv).")
    else:
        raise UserError(f"{where}: unsupported file type; use {', '.join(SUFFIXES)} (optionally .gz).")


def read_records(source: str, txt_field: str | None = None, max_bytes: int | None = None
                 ) -> Iterator[tuple[str, int, dict | None]]:
    """(where, line, raw record) for every record of a source, in order; with max_bytes, a JSONL or
    .txt line over that many bytes comes as None, unread."""
    resolved = resolve(source)
    if isinstance(resolved, str):
        yield from _hub_records(resolved)
        return
    for path in resolved:
        yield from _file_records(path, txt_field, max_bytes)


@dataclass(frozen=True)
class Kind:
    """What a loader makes of records: its normaliser (data.formats), accepted formats and name."""

    normalize: Callable
    accepted: tuple[str, ...]
    what: str
    txt_field: str | None = None


SFT = Kind(formats.sft, formats.SFT_FORMATS, "SFT")
PAIRS = Kind(formats.pairs, formats.PAIR_FORMATS, "preference")
RANKINGS = Kind(formats.ranking, formats.RANKING_FORMATS, "ranking")
PROMPTS = Kind(formats.prompt, formats.PROMPT_FORMATS, "prompt", txt_field="prompt")


@dataclass
class Tally:
    """Records read, and dropped by reason, while a source is normalised."""

    seen: int = 0
    dropped: Counter = field(default_factory=Counter)

    def close(self, source: str, kind: Kind, used: int) -> None:
        """Refuse a source left with nothing usable; log what was dropped."""
        reasons = ", ".join(f"{n} {why}" for why, n in self.dropped.most_common())
        if not used:
            raise UserError(f"{source}: no usable {kind.what} records ({self.seen} read"
                            f"{'; dropped: ' + reasons if reasons else ''}).")
        if self.dropped:
            log.warning("%s: dropped %d of %d %s records (%s)", source, sum(self.dropped.values()), self.seen,
                        kind.what, reasons)
        log.info("%s: %d %s records from %d read", source, used, kind.what, self.seen)


def normalized(source: str, kind: Kind, tally: Tally) -> Iterator[dict]:
    """The source's records in the kind's canonical shape, one at a time: a record that fits no format
    is a UserError naming file and line; unusable ones (and lines over MAX_RECORD_BYTES) are counted
    in `tally` and skipped."""
    for where, line, rec in read_records(source, kind.txt_field, MAX_RECORD_BYTES):
        tally.seen += 1
        try:
            if rec is None:
                raise Drop(TOO_LONG)
            if not isinstance(rec, dict):
                raise BadRecord(f"a record must be a JSON object, got {type(rec).__name__}")
            result = kind.normalize(rec)
        except BadRecord as e:
            raise UserError(f"{where}, line {line}: {e}. Accepted {kind.what} formats: "
                            + "; ".join(kind.accepted)) from None
        except Drop as e:
            tally.dropped[str(e)] += 1
            continue
        yield from result if isinstance(result, list) else [result]


def _load(source: str, kind: Kind) -> list[dict]:
    tally = Tally()
    out = list(normalized(source, kind, tally))
    tally.close(source, kind, len(out))
    return out


def load_sft(source: str) -> list[dict]:
    return _load(source, SFT)


def load_pairs(source: str) -> list[dict]:
    return _load(source, PAIRS)


def load_rankings(source: str) -> list[dict]:
    return _load(source, RANKINGS)


def load_prompts(source: str) -> list[dict]:
    return _load(source, PROMPTS)


class _Piece(str):
    """A piece of a document over MAX_DOCUMENT_CHARS; `first` marks the first piece of each."""

    def __new__(cls, text: str, first: bool):
        piece = super().__new__(cls, text)
        piece.first = first
        return piece


def _txt_documents(path: Path) -> Iterator[str]:
    block: list[str] = []
    size, cut = 0, False
    for _, line in text_lines(path):
        if not line.strip() or line.strip() == _DOC_SEPARATOR:
            if block:
                yield _Piece("".join(block).strip("\n"), False) if cut else "".join(block).strip("\n")
            block, size, cut = [], 0, False
        else:
            block.append(line)
            size += len(line)
            if size > MAX_DOCUMENT_CHARS:  # no blank line for a long while: never hold the whole document
                *pieces, rest = bounded_pieces("".join(block))
                for piece in pieces:
                    yield _Piece(piece, first=not cut)
                    cut = True
                block, size = [rest], len(rest)
    if block:
        yield _Piece("".join(block).strip("\n"), False) if cut else "".join(block).strip("\n")


def bounded_pieces(text: str, limit: int | None = None) -> list[str]:
    """`text` cut into pieces of at most `limit` characters (default MAX_DOCUMENT_CHARS), at the last
    line break (else space) before the limit when there is one in its second half."""
    limit = limit or MAX_DOCUMENT_CHARS
    pieces = []
    while len(text) > limit:
        cut = text.rfind("\n", limit // 2, limit)
        if cut < 0:
            cut = text.rfind(" ", limit // 2, limit)
        cut = cut + 1 if cut >= 0 else limit
        pieces.append(text[:cut])
        text = text[cut:]
    pieces.append(text)
    return pieces


def _source_texts(source: str, text_field: str) -> Iterator[str]:
    resolved = resolve(source)
    if isinstance(resolved, str):
        streams = [_hub_records(resolved)]
    else:
        streams = [_txt_documents(p) if suffix(p)[0] == ".txt" else _file_records(p, None) for p in resolved]
    for stream in streams:
        for item in stream:
            if isinstance(item, str):
                yield item
                continue
            where, line, rec = item
            text = rec.get(text_field) if isinstance(rec, dict) else None
            if not isinstance(text, str):
                found = ", ".join(sorted(rec)) if isinstance(rec, dict) else type(rec).__name__
                raise UserError(f'{where}, line {line}: no text field "{text_field}" (found: {found}). '
                                "Set train.text_field to the column holding the documents.")
            if text.strip():
                yield text


def iter_texts(sources: list[str] | str, text_field: str = "text") -> Iterator[str]:
    """Pretraining documents from files, folders, globs or hub names, in order."""
    for source in [sources] if isinstance(sources, str) else sources:
        empty, long_docs, pieces = True, 0, 0
        for text in _source_texts(str(source), text_field):
            empty = False
            if isinstance(text, _Piece):  # already cut while reading a .txt file
                long_docs += text.first
                pieces += 1
                yield str(text)
            elif len(text) <= MAX_DOCUMENT_CHARS:
                yield text
            else:
                long_docs += 1
                for piece in bounded_pieces(text):
                    pieces += 1
                    yield piece
        if empty:
            raise UserError(f"{source} holds no text documents (empty file?).")
        if long_docs:
            log.warning("%s: cut %d text%s over %s characters (no blank lines?) into %d pieces, to bound memory",
                        source, long_docs, "s" if long_docs > 1 else "", f"{MAX_DOCUMENT_CHARS:,}", pieces)
