"""Faults under several processes: the checks `python -m faults --checks distributed` (make faults) runs on
the launched stages, two CPU processes over gloo each.

  kill-rank     kill -9 one process that is not the main one, once the run has a checkpoint: every process
                must exit within KILL_BOUND_S, the survivor saying why in one line; nothing is committed and
                no artifact is half-written; the same command then resumes and finishes, writing each metrics
                row once. While it runs, the stage's lock names the main process (rank 0), not another rank.
  two-launches  two launches started together on the same run directory: the one that reaches the lock
                second refuses at once ("already running"), the other finishes.
  other-count   a run killed on 2 processes is re-run on 1: pretrain, SFT, reward and DPO resume (same global
                batch) and finish; GRPO and RLOO refuse in one line and keep the checkpoint (their sampling
                would not continue the same on another number of processes).

Why an exit is bounded: on one machine torchrun stops the other processes as soon as one dies, and gloo
fails a collective whose partner is gone; across machines a stuck partner is bounded by the collective
timeout (RLHF_COLLECTIVE_TIMEOUT, pipeline/runtime/processes.py).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ACCELERATE_CONFIG = ROOT / "configs" / "accelerate" / "cpu_ddp.yaml"
KILL_BOUND_S = 60.0  # from the kill to the launch's exit; measured ~2-3 s on 2 busy cores (docs/scale-out.md)
SURVIVOR_LINE = "another process of this launch stopped"
STOPPED_LINE = "stopped by the launcher"


def free_port() -> int:
    """A TCP port nobody listens on now: each launch gets its own rendezvous (tests run beside each other)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launched(command: list[str], processes: int = 2) -> list[str]:
    """`python -m <stage> args` (a command as faults.suite.command makes it) under `accelerate launch`."""
    assert command[1] == "-m", command
    return [command[0], "-m", "accelerate.commands.launch", "--config_file", str(ACCELERATE_CONFIG),
            "--num_processes", str(processes), "--main_process_port", str(free_port()), *command[1:]]


def env() -> dict:
    """One thread per process (2 processes on 2 cores), unbuffered output, offline."""
    return {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1",
            "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false"}


def start(command: list[str]) -> subprocess.Popen:
    """The launch in its own process group, its output in a file (a pipe nobody reads while we wait would
    fill and stall it); `output(proc)` reads it."""
    log = tempfile.NamedTemporaryFile("w+", prefix="launch-", suffix=".log", delete=False)
    proc = subprocess.Popen(command, cwd=ROOT, env=env(), stdout=log, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    proc.log_path = log.name  # type: ignore[attr-defined]
    log.close()
    return proc


def output(proc: subprocess.Popen) -> str:
    path = Path(proc.log_path)  # type: ignore[attr-defined]
    text = path.read_text(errors="replace") if path.exists() else ""
    path.unlink(missing_ok=True)
    return text


def wait(proc: subprocess.Popen, timeout: float) -> tuple[int | None, str]:
    """(exit code, output) once `proc` ends; (None, output) when it overran `timeout` and was stopped."""
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, stop(proc)
    return proc.returncode, output(proc)


def workers(run_dir: Path) -> dict[int, int]:
    """{rank: PID} of the launched processes working in `run_dir` (torchrun gives each its RANK)."""
    found = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmdline = (d / "cmdline").read_bytes().decode(errors="replace")
            variables = (d / "environ").read_bytes().decode(errors="replace").split("\0")
        except OSError:  # gone, or not ours to read
            continue
        if f"run.out_dir={run_dir}" not in cmdline.split("\0"):
            continue
        rank = next((v.split("=", 1)[1] for v in variables if v.startswith("RANK=")), None)
        if rank is not None and rank.isdigit():
            found[int(rank)] = int(d.name)
    return found


def wait_until(ready: Callable[[], bool], proc: subprocess.Popen, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if ready():
            return True
        time.sleep(0.1)
    return False


def stop(proc: subprocess.Popen) -> str:
    """End a launch that overran (its whole process group) and return its output."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    return output(proc)


@dataclass
class KillResult:
    killed: bool  # a rank was killed (False: the run ended or never reached the moment)
    rc: int | None
    seconds: float  # from the kill to the launch's exit
    output: str
    lock_rank: int | None  # whose PID the stage's lock held while both ran


def kill_one_rank(command: list[str], run_dir: Path, lock: Path, ready: Callable[[], bool], *, rank: int = 1,
                  timeout: float = 300) -> KillResult:
    """Launch `command` on 2 processes, wait for `ready()` (a checkpoint), kill -9 process `rank`, and time
    how long the launch takes to end."""
    proc = start(launched(command))
    ranks: dict[int, int] = {}

    def both_ready() -> bool:
        ranks.update(workers(run_dir))
        return len(ranks) == 2 and ready()

    if not wait_until(both_ready, proc, timeout):
        return KillResult(False, proc.poll(), 0.0, stop(proc), None)
    try:
        owner = int(lock.read_text().strip())
    except (OSError, ValueError):
        owner = None
    lock_rank = next((r for r, pid in ranks.items() if pid == owner), None)
    os.kill(ranks[rank], signal.SIGKILL)
    t0 = time.monotonic()
    rc, out = wait(proc, KILL_BOUND_S)
    return KillResult(True, rc, time.monotonic() - t0, out, lock_rank)


def finished(command: list[str], timeout: float = 600) -> tuple[int | None, str]:
    """(exit code, output) of `command` launched on 2 processes, run to its end."""
    return wait(start(launched(command)), timeout)


def kill_problems(result: KillResult, final_dir: Path) -> list[str]:
    """What a kill of one rank did wrong: a hang, a success, silence, the lock on another rank, a commit."""
    problems = []
    if not result.killed:
        return [f"the run never reached the moment to kill (exit {result.rc})"]
    if result.rc is None:
        problems.append(f"the launch was still running {KILL_BOUND_S:g} s after a rank was killed")
    elif result.rc == 0:
        problems.append("the launch exited 0 after a rank was killed")
    if SURVIVOR_LINE not in result.output and STOPPED_LINE not in result.output:
        problems.append("the surviving process said nothing about why it stopped")
    if result.lock_rank != 0:
        problems.append(f"the stage's lock was held by rank {result.lock_rank}, not by the main process")
    if final_dir.exists():
        problems.append(f"{final_dir} exists after the kill: something was committed")
    return problems


def check_distributed(suite, stage, rep, log=print) -> None:
    """kill-rank and two-launches for one stage of the fault suite (faults/__main__.py), on copies of the
    suite's reference inputs; results go into `rep` (a faults.suite.Report)."""
    from faults.suite import NAME, command, half_written, has_checkpoint, lock_path
    from pipeline.artifacts.metrics import read_metrics

    run_root = suite.trial_dir(stage)
    run_dir = run_root / NAME
    cmd = command(stage.name, run_root)
    result = kill_one_rank(cmd, run_root, lock_path(run_dir, stage.name), lambda: has_checkpoint(run_dir, stage))
    problems = kill_problems(result, run_dir / stage.name) + [f"half-written: {d}" for d in half_written(run_dir)]
    if not problems:
        rc, out = finished(cmd)
        rows = [(r.get("step"), tuple(sorted(r))) for r in read_metrics(run_dir / stage.name)]
        if rc != 0:
            problems.append(f"the rerun after the kill failed (exit {rc})")
        elif "resum" not in out.lower():
            problems.append("the rerun after the kill did not resume")
        elif len(rows) != len(set(rows)):
            problems.append("metrics.jsonl repeats a row of one step: more than one process wrote it")
        result.output = out if rc != 0 else result.output
    rep.checks["kill-rank"] = "ok" if not problems else "FAILED"
    for p in problems:
        rep.fail(f"kill-rank: {p}", result.output)
    log(f"{stage.name}: kill -9 of rank 1 -> the launch ended in {result.seconds:.1f}s (exit {result.rc})")

    run_root = suite.trial_dir(stage)
    cmd = command(stage.name, run_root)
    both = [start(launched(cmd)), start(launched(cmd))]  # together: neither is done before the other locks
    ends = sorted((wait(proc, 600) for proc in both), key=lambda end: end[0] != 0)
    (rc_ran, out_ran), (rc_refused, out_refused) = ends
    problems = []
    if rc_ran != 0:
        problems.append(f"neither launch finished (exits {rc_ran} and {rc_refused})")
    elif rc_refused in (0, None) or "already running" not in out_refused:
        problems.append(f"the launch that came second did not refuse in one line (exit {rc_refused})")
    rep.checks["two-launches"] = "ok" if not problems else "FAILED"
    for p in problems:
        rep.fail(f"two-launches: {p}", out_refused if rc_ran == 0 else out_ran)


REFUSE_OTHER_COUNT = ("grpo", "rloo")  # online methods on the Trainer: refuse (pipeline/lm/hf_glue.py)


def check_other_count(suite, stage, rep, log=print) -> None:
    """other-count for one stage: kill rank 1 of a 2-process run once it has a checkpoint, then re-run the same
    command on 1 process."""
    from faults.suite import NAME, command, has_checkpoint, lock_path

    run_root = suite.trial_dir(stage)
    run_dir = run_root / NAME
    cmd = command(stage.name, run_root)
    result = kill_one_rank(cmd, run_root, lock_path(run_dir, stage.name), lambda: has_checkpoint(run_dir, stage))
    problems = [] if result.killed else [f"the 2-process run never reached a checkpoint (exit {result.rc})"]
    out = result.output
    if not problems:
        proc = subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=600)
        out = proc.stdout + proc.stderr
        if stage.name in REFUSE_OTHER_COUNT:
            errors = [line for line in out.splitlines() if line.startswith("error:")]
            if proc.returncode != 2 or len(errors) != 1 or "written by 2 processes" not in errors[0]:
                problems.append(f"the 1-process re-run did not refuse in one line (exit {proc.returncode})")
            if "Traceback" in out:
                problems.append("the refusal printed a traceback")
            if not has_checkpoint(run_dir, stage):
                problems.append("the refusal discarded the 2 processes' checkpoint")
        elif proc.returncode != 0:
            problems.append(f"the 1-process re-run failed (exit {proc.returncode})")
        elif "resum" not in out.lower():
            problems.append("the 1-process re-run started afresh instead of resuming")
    rep.checks["other-count"] = "ok" if not problems else "FAILED"
    for p in problems:
        rep.fail(f"other-count: {p}", out)
    log(f"{stage.name}: killed on 2 processes, re-run on 1 -> {'ok' if not problems else problems[0]}")
