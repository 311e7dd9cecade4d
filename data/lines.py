"""Reading a data file's lines with bounded memory: gunzipped, refused early when it looks binary, decoded
one line at a time so a UTF-8 error names its line, and a line over a byte bound skipped in chunks without
ever being held whole (data.loaders drops and counts such records: MAX_RECORD_BYTES)."""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from pathlib import Path

from pipeline.errors import UserError


def suffix(path: Path) -> tuple[str, bool]:
    """(.jsonl | .json | ... , gzipped?)"""
    suffixes = [s.lower() for s in path.suffixes]
    gz = bool(suffixes) and suffixes[-1] == ".gz"
    if gz:
        suffixes = suffixes[:-1]
    return (suffixes[-1] if suffixes else ""), gz


def open_bytes(path: Path):
    """The file as a binary stream (gunzipped), refused at once if its start looks binary."""
    _, gz = suffix(path)
    raw = gzip.open(path, "rb") if gz else open(path, "rb")
    try:
        head = raw.read(8192)
    except (OSError, EOFError) as e:
        raw.close()
        raise UserError(f"{path}: cannot read it ({e}); a .gz file must be valid gzip.") from None
    if b"\x00" in head:
        raw.close()
        raise UserError(f"{path} looks like a binary file, not UTF-8 text; give a text, JSON, CSV or Parquet file.")
    raw.seek(0)
    return raw


def raw_lines(f, max_bytes: int | None) -> Iterator[bytes | None]:
    """The byte lines of a binary stream; None for a line over max_bytes, whose rest is skipped in
    chunks of at most 1 MiB (so memory stays bounded whatever the line's length)."""
    while raw := f.readline() if max_bytes is None else f.readline(max_bytes + 1):
        if max_bytes is not None and len(raw) > max_bytes:
            while raw and not raw.endswith(b"\n"):
                raw = f.readline(1 << 20)
            yield None
        else:
            yield raw


def text_lines(path: Path, max_bytes: int | None = None) -> Iterator[tuple[int, str | None]]:
    """Numbered lines of a (possibly gzipped) UTF-8 file (None for a line over max_bytes bytes); a line
    that is not UTF-8 is a UserError naming it (each line is decoded on its own, so the number is exact)."""
    try:
        with open_bytes(path) as f:
            for n, raw in enumerate(raw_lines(f, max_bytes), 1):
                if raw is None:
                    yield n, None
                    continue
                try:
                    line = raw.decode("utf-8-sig" if n == 1 else "utf-8")  # a BOM (Windows editors) is no text
                except UnicodeDecodeError as e:
                    raise UserError(f"{path}, line {n}: not UTF-8 text (byte {raw[e.start]:#04x} at position "
                                    f"{e.start + 1} of the line). Convert the file to UTF-8.") from None
                yield n, line
    except (OSError, EOFError) as e:
        raise UserError(f"{path}: cannot read it ({e}); a .gz file must be valid gzip.") from None
