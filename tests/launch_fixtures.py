"""Running a stage under `accelerate launch` on CPU processes (gloo), for the tests of training on several
processes: the launch, and what its artifact logged."""

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT


def launch(module: str, args: list[str], processes: int = 2, config: str = "cpu_ddp.yaml",
           timeout: int = 600, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """`python -m module args` on `processes` local CPU processes; one thread each, so two processes on two
    cores do not fight over them. `env`: more variables; check=False: a failing launch is returned, not an error."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "RLHF_DEBUG": "1", **(env or {})}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", f"configs/accelerate/{config}",
           "--num_processes", str(processes), "-m", module, *args]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0 or not check, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


def logged(artifact: Path, key: str) -> list[tuple[int, float]]:
    """(step, value) of every line of the artifact's metrics.jsonl that has `key`."""
    rows = [json.loads(line) for line in (artifact / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r[key]) for r in rows if key in r]


def launch_record(artifact: Path) -> dict:
    return json.loads((artifact / "manifest.json").read_text())["launch"]
