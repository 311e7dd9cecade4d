"""`make gpu-check` (python -m benchmarks.gpu) on a machine without CUDA: one line saying what it needs, exit 0,
nothing written (CI and laptops run `make gpu-check` harmlessly; on a GPU machine it runs the whole check)."""

import os
import subprocess
import sys

from tests.conftest import ROOT


def test_without_cuda_the_gpu_check_says_it_needs_one_and_exits_0(tmp_path):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "benchmarks.gpu", "--out", str(tmp_path / "gpu")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines() == [proc.stdout.strip()] and "needs a CUDA GPU" in proc.stdout
    assert proc.stderr == "" and not (tmp_path / "gpu").exists()
