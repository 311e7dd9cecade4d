"""User-facing errors: one paragraph that says what is wrong and what to do, no traceback."""

from __future__ import annotations

import errno
import functools
import os
import re
import sys


class UserError(Exception):
    """Bad input from the user (config, data, missing artifact). Printed without a traceback."""


_DISK_ERRNOS = {errno.ENOSPC, errno.EFBIG, getattr(errno, "EDQUOT", errno.ENOSPC)}
# How the writers that do not raise OSError say it: torch's zip writer, safetensors (Rust), numpy.
_DISK_PHRASES = ("no space left", "file too large", "disk quota", "os error 27", "os error 28", "file write failed",
                 "unexpected pos")


_SHORT_WRITE = re.compile(r"\d+ requested and \d+ written")  # numpy's tofile


class DiskFullError(UserError):
    """A write failed for lack of space (or over a file-size limit)."""


def is_disk_full(exc: BaseException) -> bool:
    if isinstance(exc, OSError) and exc.errno in _DISK_ERRNOS:
        return True
    text = str(exc).lower()
    return any(p in text for p in _DISK_PHRASES) or bool(_SHORT_WRITE.search(text))


def disk_full_error(path, exc: BaseException) -> DiskFullError:
    return DiskFullError(f"could not write {path}: the disk is full or a file-size limit was hit ({_short(exc)}). "
                         "Free some space (or raise the limit) and re-run the same command to resume; "
                         "the previous artifact, if any, is untouched.")


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:160]


_OS_REFUSALS = {errno.EACCES: "permission denied", errno.EPERM: "not permitted", errno.EROFS: "a read-only file system",
                errno.ENOTDIR: "a part of the path is a file, not a folder", errno.EISDIR: "a folder, not a file"}


def os_error_line(e: BaseException) -> str | None:
    """One line for what the operating system refused (a full disk, permissions, a path through a file, memory),
    naming the path and what to do; None for anything else (a bug: its traceback is the useful thing)."""
    if is_disk_full(e):
        return str(disk_full_error(getattr(e, "filename", None) or "a file", e))
    if isinstance(e, OSError) and e.errno in _OS_REFUSALS:
        where = e.filename or "a path"
        return (f"cannot use {where}: {_OS_REFUSALS[e.errno]}. Check run.out_dir (and the paths the config names): "
                "the run writes only under run.out_dir/run.name.")
    if isinstance(e, MemoryError) or "DefaultCPUAllocator: can't allocate memory" in str(e):
        return (f"out of memory ({_short(e)}): the model or batch is too large for this machine; lower model.* "
                "(n_layer, n_embd), the batch size, or the sequence length.")
    return None


_RESUMED: list[str] = []  # what this process resumed, said again if it fails (the failure may repeat)


def note_resumed(work_dir, resume_flag: str) -> None:
    """Called when a stage continues unfinished work: if it fails, the way out of a failure that every
    resume would repeat is named with the error."""
    _RESUMED[:] = [f"note: this run resumed the unfinished work in {work_dir}; if it fails the same way again, "
                   f"start fresh with {resume_flag}=false."]


def _say_resumed() -> None:
    for line in _RESUMED:
        print(line, file=sys.stderr)
    _RESUMED.clear()


def main_guard(fn):
    """Wrap a stage's `main` so a UserError exits with code 2 and a short message.

    Set RLHF_DEBUG=1 to see the full traceback instead.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        _RESUMED.clear()  # a note of this run only (a test may run several stages in one process)
        try:
            return fn(*args, **kwargs)
        except UserError as e:
            if os.environ.get("RLHF_DEBUG"):
                raise
            print(f"\nerror: {e}", file=sys.stderr)
            _say_resumed()
            sys.exit(2)
        except Exception as e:  # a full disk or another refusal of the OS, from code we did not wrap (torch, HF)
            line = os_error_line(e)
            if line is None or os.environ.get("RLHF_DEBUG"):
                _say_resumed()
                raise
            print(f"\nerror: {line}", file=sys.stderr)
            sys.exit(2)
        except KeyboardInterrupt:
            print("\ninterrupted: nothing was committed; re-run the same command to resume.", file=sys.stderr)
            sys.exit(130)

    return wrapper
