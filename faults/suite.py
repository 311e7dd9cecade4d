"""The fault-injection suite: stages killed, changed, poisoned, starved of disk and run twice at once.

    python -m faults [--kills 20] [--stages pretrain,ppo] [--out DIR]     (make faults)

On the test preset (seconds per stage) it first builds the chain uninterrupted: the reference.
Then, per stage, in copies of the reference run directory holding only the stage's inputs:
  kills     kill -9 at a random moment after the stage took its lock (kill_trials); re-run, perhaps
            killed again, until a run finishes; its metrics, metrics history and weights must equal
            the reference's, and after every kill every artifact directory must be whole
  change    after a kill with a checkpoint, a run with a changed config must refuse in one line
            naming the key; the unchanged command then resumes
  diverge   a huge learning rate: the run stops with one line, nothing committed
  disk      a file-size limit (ulimit -f) on a re-run over a finished artifact: one line about
            space, the old artifact intact, no *.tmp left
  twice     a second run on the same run directory refuses at once, naming the first one's PID
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from faults.stages import STAGES, Stage
from pipeline.artifacts.metrics import read_metrics
from pipeline.artifacts.store import fingerprint, read_manifest

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "test.yaml"
NAME = "test"
_VOLATILE = re.compile(r"per_s|time|runtime|wall|start_step|sampling_s")  # clocks, and where a run started


# ------------------------------------------------------------------------------------------ running


@dataclass
class Run:
    rc: int | None
    out: str
    seconds: float
    killed: bool = False


def command(stage: str, out_dir: Path, *overrides: str) -> list[str]:
    from pipeline.chain.table import STAGES as DECLARED

    declared = DECLARED[stage]
    return [sys.executable, "-m", declared.entry, "--config", str(CONFIG), *declared.args, f"run.name={NAME}",
            f"run.out_dir={out_dir}", *overrides]


def _env() -> dict:
    # The thread count of the reference run (tests/conftest.py's chain): float sums depend on it.
    return {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2"), "HF_HUB_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def start(stage: str, out_dir: Path, *overrides: str, file_limit: int | None = None) -> subprocess.Popen:
    def limit():  # in the child only: the file-size limit of `ulimit -f`
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_limit, file_limit))

    return subprocess.Popen(command(stage, out_dir, *overrides), cwd=ROOT, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, preexec_fn=limit if file_limit else None)


def finish(proc: subprocess.Popen, t0: float, timeout: float = 600) -> Run:
    out, _ = proc.communicate(timeout=timeout)
    return Run(proc.returncode, out, time.perf_counter() - t0)


def run(stage: str, out_dir: Path, *overrides: str, **kw) -> Run:
    t0 = time.perf_counter()
    return finish(start(stage, out_dir, *overrides, **kw), t0)


def lock_path(run_dir: Path, stage: str) -> Path:
    return run_dir / f"{stage}.lock"


def wait_for_lock(proc: subprocess.Popen, lock: Path, timeout: float = 120) -> bool:
    """Wait until `proc` holds the stage's lock (its PID is in the file); False if it ended first."""
    deadline = time.perf_counter() + timeout
    while proc.poll() is None and time.perf_counter() < deadline:
        try:
            if lock.read_text().strip() == str(proc.pid):
                return True
        except OSError:
            pass
        time.sleep(0.01)
    return False


def has_checkpoint(run_dir: Path, stage: Stage) -> bool:
    return any((run_dir / f"{stage.name}.partial" / "checkpoints").glob(stage.checkpoint))


# ------------------------------------------------------------------------------------------ results


def tensors_digest(path: Path) -> str:
    """A hash of a safetensors file's tensors and metadata, not of its bytes: the library writes the
    metadata's keys in no fixed order, so two equal files can differ byte for byte."""
    from safetensors import safe_open

    h = hashlib.sha256()
    with safe_open(str(path), framework="np") as f:
        h.update(json.dumps(f.metadata() or {}, sort_keys=True).encode())
        for key in sorted(f.keys()):
            t = f.get_tensor(key)
            h.update(f"{key}:{t.dtype}:{t.shape}".encode())
            h.update(t.tobytes())
    return h.hexdigest()


def result(run_dir: Path, stage: Stage) -> dict:
    """What must not depend on kills: final metrics, the metrics history, the weights."""
    d = run_dir / stage.name
    manifest = read_manifest(d) or {}
    rows = [{k: v for k, v in r.items() if not _VOLATILE.search(k)} for r in read_metrics(d)]
    weights = {str(f.relative_to(d)): tensors_digest(f) for f in sorted(d.rglob("*.safetensors"))}
    return {"metrics": {k: v for k, v in (manifest.get("metrics") or {}).items() if not _VOLATILE.search(k)},
            "rows": rows, "weights": weights}


def max_difference(a, b) -> float:
    """0.0 for equal structures, the largest numeric difference, or inf for a structural one."""
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            return float("inf")
        return max((max_difference(a[k], b[k]) for k in a), default=0.0)
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return float("inf")
        return max((max_difference(x, y) for x, y in zip(a, b)), default=0.0)
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return abs(float(a) - float(b))
    return 0.0 if a == b else float("inf")


def differences(a, b, path: str = "") -> list[str]:
    """Where two results differ (`metrics.train_loss: 0.0025 != 0.0048`), for a failure message."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = [f"{path}{k}: only in {'the first' if k in a else 'the second'}" for k in a.keys() ^ b.keys()]
        return out + [d for k in a.keys() & b.keys() for d in differences(a[k], b[k], f"{path}{k}.")]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f"{path}{i}.")]
    return [] if max_difference(a, b) == 0.0 else [f"{path.rstrip('.')}: {a!r} != {b!r}"]


def half_written(run_dir: Path) -> list[str]:
    """Artifact directories that are not whole: no complete manifest, content not matching it, or *.tmp."""
    bad = []
    for d in sorted(run_dir.iterdir()):
        if not d.is_dir() or d.name == "cache" or d.name.endswith((".partial", ".old")):
            continue
        m = read_manifest(d)
        if not m or m.get("status") != "complete" or m.get("fingerprint") != fingerprint(d) or any(d.rglob("*.tmp")):
            bad.append(d.name)
    return bad


# ------------------------------------------------------------------------------------------ scenarios


@dataclass
class Report:
    stage: str
    kills: int = 0
    trials: int = 0
    resumed: int = 0  # runs that continued from a checkpoint
    stale_locks: int = 0  # runs after a kill that took over the killed run's lock, and said so
    identical: int = 0  # final runs whose metrics, history and weights equal the reference's exactly
    within: int = 0  # ... within the stage's tolerance
    max_diff: float = 0.0
    corrupt: int = 0  # artifact directories found half-written after a kill
    checks: dict = field(default_factory=dict)  # scenario -> "ok" or what went wrong
    failures: list = field(default_factory=list)

    def fail(self, what: str, out: str = "") -> None:
        self.failures.append(f"{self.stage}: {what}" + (f"\n{out[-1500:]}" if out else ""))


class Suite:
    def __init__(self, out: Path, stages=STAGES, seed: int = 0, log=print, reference: Path | None = None):
        """`reference`: a directory holding an uninterrupted run of the chain on the test preset
        (`<reference>/test/<stage>`), e.g. the end-to-end test's; built by build_reference otherwise."""
        self.out, self.stages, self.log = Path(out), list(stages), log
        # the chain up to the last stage under test: each stage's inputs come from the ones before it
        self.chain = STAGES[:max(STAGES.index(s) for s in self.stages) + 1]
        self.rng = random.Random(seed)
        self.base = Path(reference) if reference else self.out / "reference"
        self.reference: dict[str, dict] = {}
        self.work_seconds: dict[str, float] = {}  # reference time from taking the lock to exit
        self._trial_no = 0
        if reference:
            for stage in self.chain:
                self.reference[stage.name] = result(self.base / NAME, stage)
                self.work_seconds[stage.name] = (read_manifest(self.base / NAME / stage.name) or {})["wall_time_s"]

    # the uninterrupted chain
    def build_reference(self) -> None:
        shutil.rmtree(self.base, ignore_errors=True)
        r = run("data", self.base)
        if r.rc != 0:
            raise RuntimeError(f"data failed:\n{r.out[-3000:]}")
        for stage in self.chain:
            t0 = time.perf_counter()
            proc = start(stage.name, self.base)
            wait_for_lock(proc, lock_path(self.base / NAME, stage.name))
            t_lock = time.perf_counter()
            r = finish(proc, t0)
            if r.rc != 0:
                raise RuntimeError(f"{stage.name} failed:\n{r.out[-3000:]}")
            self.work_seconds[stage.name] = time.perf_counter() - t_lock
            self.reference[stage.name] = result(self.base / NAME, stage)
            self.log(f"reference {stage.name}: {r.seconds:.1f}s")

    def trial_dir(self, stage: Stage, *, with_own: bool = False) -> Path:
        """A fresh run directory holding the stage's inputs (and, if asked, its finished artifact)."""
        self._trial_no += 1
        out = self.out / f"trial-{self._trial_no:03d}-{stage.name}"
        shutil.rmtree(out, ignore_errors=True)
        keep = {"data", *[s.name for s in self.chain[:self.chain.index(stage)]]} | ({stage.name} if with_own else set())
        if stage.name != "pretrain" or with_own:
            keep.add("cache")  # pretrain builds its tokenizer and token cache under the kills too
        for name in keep:
            shutil.copytree(self.base / NAME / name, out / NAME / name)
        return out

    def compare(self, rep: Report, run_dir: Path, stage: Stage) -> float:
        diff = max_difference(result(run_dir, stage), self.reference[stage.name])
        rep.max_diff = max(rep.max_diff, diff)
        if diff > stage.tolerance:
            where = "; ".join(sorted(differences(result(run_dir, stage), self.reference[stage.name]))[:8])
            rep.fail(f"the result differs from the uninterrupted run's by {diff} in {run_dir}: {where}")
        return diff

    # kill -9 at random moments
    def kill_trials(self, stage: Stage, kills: int, per_trial: int, rep: Report) -> None:
        """Trials in fresh run directories: up to `per_trial` runs killed at random moments after they
        took the lock, then one allowed to finish; it must match the reference.

        On a busy machine a moment drawn from the quiet reference's time lands mostly before the first
        checkpoint, and resuming is never tried; so every second trial waits for a checkpoint and then
        kills at a random moment after it."""
        while rep.kills < kills:
            if rep.trials >= 5 * kills:  # every run ended before a kill could land, or failed: say so, stop
                rep.fail(f"{rep.trials} trials gave only {rep.kills} of {kills} kills")
                return
            out = self.trial_dir(stage)
            run_dir = out / NAME
            rep.trials += 1
            killed = None  # the PID of the last killed run: the next run must take over its lock
            for attempt in range(per_trial + 1):
                may_kill = attempt < per_trial and rep.kills < kills
                t0 = time.perf_counter()
                proc = start(stage.name, out)
                if wait_for_lock(proc, lock_path(run_dir, stage.name)) and may_kill:
                    window = self.work_seconds[stage.name]
                    if rep.trials % 2 == 0:
                        while proc.poll() is None and not has_checkpoint(run_dir, stage):
                            time.sleep(0.01)
                        window /= 2  # part of the work is done: land the kill before the commit
                    time.sleep(self.rng.uniform(0, window))
                kill_now = may_kill and proc.poll() is None
                if kill_now:
                    proc.send_signal(signal.SIGKILL)
                r = finish(proc, t0)
                if killed is not None and "up to date" not in r.out:  # killed after its commit: no lock taken
                    took_over = "took over the stale lock" in r.out and f"PID {killed}" in r.out
                    rep.stale_locks += took_over
                    if not took_over:
                        rep.fail(f"the run after a kill did not say it took over the lock of PID {killed}", r.out)
                rep.resumed += "resuming" in r.out
                if kill_now:
                    killed = proc.pid
                    rep.kills += 1
                    bad = half_written(run_dir)
                    if bad:
                        rep.corrupt += len(bad)
                        rep.fail(f"half-written artifact(s) after a kill: {bad} in {run_dir}")
                    continue
                if r.rc != 0:
                    rep.fail(f"the run after {attempt} kill(s) failed (exit {r.rc})", r.out)
                    break
                diff = self.compare(rep, run_dir, stage)
                rep.identical += diff == 0.0
                rep.within += diff <= stage.tolerance
                break

    def check_change(self, stage: Stage, rep: Report) -> None:
        """Killed right after its first checkpoint, re-run with a changed config: refused; the same
        command as before then resumes to the reference result."""
        out = self.trial_dir(stage)
        t0 = time.perf_counter()
        proc = start(stage.name, out)
        while proc.poll() is None and not has_checkpoint(out / NAME, stage):
            time.sleep(0.01)
        if proc.poll() is not None:
            finish(proc, t0)
            rep.checks["change"] = "finished before its first checkpoint could be seen"
            return
        proc.send_signal(signal.SIGKILL)
        finish(proc, t0)
        r = run(stage.name, out, stage.change)
        key = stage.change.split("=")[0]
        line = _error_line(r.out)
        ok = r.rc not in (0, None) and key in line and f"{stage.resume_flag}=false" in line and _one_line(r.out)
        again = run(stage.name, out)
        ok = ok and again.rc == 0 and "resuming" in again.out and self.compare(rep, out / NAME, stage) <= stage.tolerance
        rep.checks["change"] = "ok" if ok else f"not refused as expected: {line or r.out[-300:]}"
        if not ok:
            rep.fail(f"a changed config after a kill ({stage.change}) was not refused in one line, or no resume",
                     r.out + again.out)

    def check_diverge(self, stage: Stage, rep: Report) -> None:
        if stage.diverge is None:
            rep.checks["diverge"] = "n/a"  # nothing trained, nothing to diverge
            return
        out = self.trial_dir(stage)
        r = run(stage.name, out, stage.diverge)
        line = _error_line(r.out)
        committed = (out / NAME / stage.name).exists()
        ok = r.rc not in (0, None) and "not finite at step" in line and not committed and _one_line(r.out)
        rep.checks["diverge"] = "ok" if ok else f"{'committed' if committed else 'not stopped'}: {line}"
        if not ok:
            rep.fail(f"{stage.diverge} was not stopped cleanly", r.out)

    def check_disk_full(self, stage: Stage, rep: Report, limit_bytes: int | None = None) -> None:
        limit_bytes = limit_bytes or stage.disk_limit
        out = self.trial_dir(stage, with_own=True)
        own = out / NAME / stage.name
        before = fingerprint(own)
        r = run(stage.name, out, stage.change, file_limit=limit_bytes)
        line = _error_line(r.out)
        tmp = [str(p.relative_to(out)) for p in out.rglob("*.tmp")]
        intact = read_manifest(own) is not None and fingerprint(own) == before
        ok = r.rc not in (0, None) and "disk is full" in line and intact and not tmp and _one_line(r.out)
        rep.checks["disk"] = "ok" if ok else f"rc {r.rc}, intact {intact}, tmp {tmp[:3]}: {line or r.out[-300:]}"
        if not ok:
            rep.fail("a full disk was not handled cleanly", r.out)

    def check_twice(self, stage: Stage, rep: Report) -> None:
        """The first run is paused (SIGSTOP) once it holds the lock, so the second surely meets it."""
        out = self.trial_dir(stage)
        t0 = time.perf_counter()
        first = start(stage.name, out)
        if not wait_for_lock(first, lock_path(out / NAME, stage.name)):
            rep.checks["twice"] = "the first run ended before the second started"
            finish(first, t0)
            return
        first.send_signal(signal.SIGSTOP)
        try:
            second = run(stage.name, out)
        finally:
            first.send_signal(signal.SIGCONT)
        r1 = finish(first, t0)
        line = _error_line(second.out)
        ok = second.rc not in (0, None) and f"PID {first.pid}" in line and r1.rc == 0 and _one_line(second.out)
        ok = ok and self.compare(rep, out / NAME, stage) <= stage.tolerance  # the first run was not disturbed
        rep.checks["twice"] = "ok" if ok else f"second exit {second.rc}, first exit {r1.rc}: {line}"
        if not ok:
            rep.fail("a second run on the same directory was not refused cleanly", second.out + r1.out)


def _error_line(out: str) -> str:
    lines = [ln for ln in out.splitlines() if ln.startswith("error:")]
    return lines[-1] if lines else ""


def _one_line(out: str) -> bool:
    """A user-facing failure: exactly one `error:` line and no traceback."""
    return "Traceback" not in out and sum(ln.startswith("error:") for ln in out.splitlines()) == 1


def format_table(reports: list[Report]) -> str:
    head = ("stage", "kills", "trials", "resumed", "stale locks", "identical", "within tol", "max diff", "corrupt",
            "change", "diverge", "disk", "twice")
    rows = [head]
    for r in reports:
        rows.append((r.stage, str(r.kills), str(r.trials), str(r.resumed), str(r.stale_locks), str(r.identical),
                     str(r.within), f"{r.max_diff:.3g}", str(r.corrupt),
                     *[(r.checks.get(k, "-") if r.checks.get(k, "-") in ("ok", "n/a", "-") else "FAIL")
                       for k in ("change", "diverge", "disk", "twice")]))
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |" for row in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)
