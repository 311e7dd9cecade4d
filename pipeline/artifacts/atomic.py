"""Crash-safe writes: a file or a directory appears complete under its name, or not at all.

The rule everywhere: write the new copy under a temporary name, fsync its files and its directory,
then rename it into place. A directory cannot be renamed over another, so swapping one keeps the old
copy as `<name>.old` for the moment between the two renames, and `recover_dir` puts it back after a
kill at that moment. A full disk (or a file-size limit) becomes one `DiskFullError` line and leaves
no temporary file behind.
"""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path

from pipeline.errors import DiskFullError, disk_full_error, is_disk_full


@contextmanager
def translating_disk_errors(path):
    """Turn a disk-full failure of the writes inside into one DiskFullError line naming `path`."""
    try:
        yield
    except DiskFullError:
        raise
    except Exception as e:
        if is_disk_full(e):
            raise disk_full_error(path, e) from None
        raise


def fsync_file(path: str | Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str | Path) -> None:
    """Make a rename or a new file in `path` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_tree(path: str | Path) -> None:
    """fsync every file and directory under `path` (and `path` itself)."""
    path = Path(path)
    if path.is_file():
        fsync_file(path)
        return
    for sub in sorted(path.rglob("*")):
        if sub.is_file():
            fsync_file(sub)
    for sub in sorted((p for p in path.rglob("*") if p.is_dir()), reverse=True):
        fsync_dir(sub)
    fsync_dir(path)


def write_file(path: str | Path, write) -> Path:
    """Write `path` through `write(tmp_path)`, then fsync and rename it into place.

    On any failure the temporary file is removed; a full disk becomes a DiskFullError."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with translating_disk_errors(path):
            write(tmp)
            fsync_file(tmp)
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)
    return path


def write_text(path: str | Path, text: str) -> Path:
    return write_file(path, lambda tmp: Path(tmp).write_text(text))


def save_torch(obj, path: str | Path) -> Path:
    import torch

    return write_file(path, lambda tmp: torch.save(obj, tmp))


def swap_dir(new: str | Path, final: str | Path) -> Path:
    """Replace directory `final` with the finished directory `new` (fsynced first).

    Between the two renames only `<final>.old` exists; `recover_dir(final)` restores it."""
    new, final = Path(new), Path(final)
    old = final.with_name(final.name + ".old")
    fsync_tree(new)
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
        fsync_dir(final.parent)
    os.replace(new, final)  # a kill before this line leaves only `old`: recover_dir puts it back
    fsync_dir(final.parent)
    shutil.rmtree(old, ignore_errors=True)
    return final


def recover_dir(final: str | Path) -> bool:
    """After a kill inside `swap_dir`: put `<final>.old` back when `final` is missing, drop it
    otherwise. Returns True when the old copy was restored."""
    final = Path(final)
    old = final.with_name(final.name + ".old")
    if not old.exists():
        return False
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        return False
    os.replace(old, final)
    fsync_dir(final.parent)
    return True


def publish_dir(tmp: str | Path, final: str | Path) -> Path:
    """Move a freshly built cache entry `tmp` to `final` unless a concurrent writer got there first
    (then its copy, identical by construction, wins and ours is dropped)."""
    tmp, final = Path(tmp), Path(final)
    fsync_tree(tmp)
    try:
        os.rename(tmp, final)  # fails when `final` exists and is not empty
    except OSError:
        if not final.exists():
            raise
        shutil.rmtree(tmp, ignore_errors=True)
    fsync_dir(final.parent)
    return final


def scratch_name(final: str | Path) -> Path:
    """A temporary sibling of `final` private to this process (a hidden name: cache pruning skips it)."""
    final = Path(final)
    return final.with_name(f".{final.name}.tmp-{os.getpid()}")
