"""Process setup on any OS: each CPU process's share of the cores, where the OS can say which cores
the process may use (Linux) and where it cannot (macOS has no os.sched_getaffinity)."""

import pytest
import torch

from pipeline.runtime import device


@pytest.fixture
def cpu_of_eight(monkeypatch):
    """A machine of 8 cores, no thread count forced by the environment; the torch setting restored after."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.setattr(device.os, "cpu_count", lambda: 8)
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_without_sched_getaffinity_as_on_macos_the_processes_share_every_core(cpu_of_eight, monkeypatch):
    monkeypatch.delattr(device.os, "sched_getaffinity", raising=False)
    device.share_cpu_threads("cpu")
    assert torch.get_num_threads() == 8
    device.share_cpu_threads("cpu", processes_here=3)
    assert torch.get_num_threads() == 2  # 8 cores // 3 processes


def test_where_the_os_keeps_an_affinity_only_the_allowed_cores_are_shared(cpu_of_eight, monkeypatch):
    monkeypatch.setattr(device.os, "sched_getaffinity", lambda pid: {0, 1, 2}, raising=False)  # e.g. taskset -c 0-2
    device.share_cpu_threads("cpu")
    assert torch.get_num_threads() == 3
    device.share_cpu_threads("cpu", processes_here=4)
    assert torch.get_num_threads() == 1  # never below one thread
