"""One resume scheme for every stage: a keyed work directory and one run at a time.

A stage's unfinished work (`runs/<name>/<stage>.partial/`) carries `key.json`: the config values
and input fingerprints that decide its artifact (the stage's declared key, pipeline/chain/table.py). A
re-run with the same key resumes from the checkpoints there; with another key it refuses, naming
what changed (`ppo.kl_coef: 0.1 -> 0.05`) and the two ways out, because continuing would silently
mix two runs. `RunLock` keeps a second process off the same stage of the same run directory.
"""

from __future__ import annotations

import atexit
import json
import os
from pathlib import Path

from pipeline.artifacts.atomic import write_text
from pipeline.errors import UserError

KEY_FILE = "key.json"
_SHOWN_CHANGES = 4
_HELD: dict[Path, RunLock] = {}  # locks this process holds (a test may run a stage's main twice)


def plain(value):
    """Config/input records as they read back from JSON (tuples as lists, paths as strings)."""
    return json.loads(json.dumps(value, default=str))


def changed_keys(old, new, prefix: str = "") -> list[str]:
    """`a.b: old -> new` for every dotted key whose value differs (added and removed keys too)."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in sorted(set(old) | set(new), key=str):
            name = f"{prefix}.{k}" if prefix else str(k)
            if k not in old:
                out.append(f"{name}: (absent) -> {_show(new[k])}")
            elif k not in new:
                out.append(f"{name}: {_show(old[k])} -> (absent)")
            else:
                out += changed_keys(old[k], new[k], name)
        return out
    return [] if old == new else [f"{prefix}: {_show(old)} -> {_show(new)}"]


def check_resume_key(work_dir: str | Path, stage: str, *, key: dict, resume_flag: str, has_work: bool) -> None:
    """Refuse to continue `work_dir` if it was started with another key; record the key otherwise."""
    work_dir = Path(work_dir)
    key_path = work_dir / KEY_FILE
    wanted = plain(key)
    ways_out = f"re-run with {resume_flag}=false to start fresh, or revert the change to resume it"
    if key_path.is_file():
        try:
            have = json.loads(key_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise UserError(f"{key_path} is corrupt, so the unfinished {stage} run in {work_dir} cannot be matched "
                            f"to this config; re-run with {resume_flag}=false to start fresh.") from None
        changes = changed_keys(have.get("config"), wanted["config"])
        changes += changed_keys(have.get("inputs"), wanted["inputs"], "inputs")
        if changes and not has_work:  # nothing checkpointed under the old key: nothing to mix up
            write_text(key_path, json.dumps(wanted, indent=1) + "\n")
            return
        if changes:
            more = f" and {len(changes) - _SHOWN_CHANGES} more" if len(changes) > _SHOWN_CHANGES else ""
            raise UserError(f"{work_dir} holds an unfinished {stage} run made with other settings "
                            f"({'; '.join(changes[:_SHOWN_CHANGES])}{more}): {ways_out}.")
        return
    if has_work:
        raise UserError(f"{work_dir} holds checkpoints of an unfinished {stage} run with no {KEY_FILE} (an older "
                        f"version made it), so it cannot be matched to this config: re-run with {resume_flag}=false "
                        "to start fresh.")
    work_dir.mkdir(parents=True, exist_ok=True)
    write_text(key_path, json.dumps(wanted, indent=1) + "\n")


class RunLock:
    """An exclusive lock on one stage of one run directory, held until the process exits.

    The file holds the owner's PID. The kernel drops the lock of a process that dies (kill -9
    included), so a leftover file with a dead PID is a stale lock: it is taken over, and said so."""

    def __init__(self, path: str | Path, what: str):
        self.path = Path(path)
        self.what = what
        self._fd = None

    def acquire(self, log=print) -> RunLock:
        try:
            import fcntl
        except ImportError:  # Windows: no advisory locks; one run at a time is then up to the user
            return self
        held = _HELD.get(self.path.resolve())
        if held is not None and held._fd is not None:
            return held
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                owner = _read_pid(fd)
                os.close(fd)
                raise UserError(f"{self.what} is already running (PID {owner or '?'}, lock {self.path}); wait for "
                                "it to finish or stop it, then re-run.") from None
            if _same_file(fd, self.path):
                break
            os.close(fd)  # the owner released and removed the file meanwhile: lock the new one
        previous = _read_pid(fd)
        if previous and previous != os.getpid():
            state = "no longer running" if not pid_alive(previous) else "not holding it"
            log(f"{self.what}: took over the stale lock {self.path} of PID {previous} ({state})")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        os.fsync(fd)
        self._fd = fd
        _HELD[self.path.resolve()] = self
        atexit.register(self.release)
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        if _same_file(self._fd, self.path):
            self.path.unlink(missing_ok=True)  # while still locked: no one can hold the old file
        os.close(self._fd)
        self._fd = None
        _HELD.pop(self.path.resolve(), None)


def _read_pid(fd: int) -> int | None:
    try:
        return int(os.pread(fd, 32, 0).decode().strip() or 0) or None
    except (OSError, ValueError):
        return None


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _show(v) -> str:
    text = json.dumps(v) if isinstance(v, (dict, list)) else str(v)
    return text if len(text) <= 60 else text[:57] + "..."
