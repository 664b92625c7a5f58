"""mmin_plugin.runs.threads: every backend's trial computes with the cores it was granted."""
import os

import pytest
import torch

from mmin_plugin.runs import threads as T
from mmin_plugin.runs.backends import SerialBackend
from mmin_plugin.runs.options import SweepOptions


def test_slot_threads_are_its_cpus_rounded_up_and_capped(monkeypatch):
    monkeypatch.setattr(T, "usable_cores", lambda: 4)
    assert [T.trial_threads(c) for c in (0.5, 1, 1.5, 2, "3", 16)] == [1, 1, 2, 2, 3, 4]


@pytest.mark.parametrize("busy,expect", [(0.0, 2), (0.4, 2), (0.9, 1), (1.0, 1), (1.6, 1), (2.0, 1)])
def test_serial_threads_are_the_free_cores(monkeypatch, busy, expect):
    """2 usable cores; `busy` cores' worth of CPU time used by others over the sample."""
    monkeypatch.setattr(T, "usable_cores", lambda: 2)
    monkeypatch.setattr(T.os, "cpu_count", lambda: 2)
    samples = iter([(0, 0), (1000, int(1000 * (1 - busy / 2)))])  # (total, idle) jiffies
    monkeypatch.setattr(T, "_cpu_times", lambda: next(samples))
    monkeypatch.setattr(T.time, "sleep", lambda s: None)
    assert T.trial_threads(None) == expect


def test_free_cores_falls_back_to_the_load_average(monkeypatch):
    monkeypatch.setattr(T, "usable_cores", lambda: 2)

    def no_proc():
        raise OSError("no /proc")

    monkeypatch.setattr(T, "_cpu_times", no_proc)
    monkeypatch.setattr(T.os, "getloadavg", lambda: (1.2, 0.0, 0.0))
    assert T.free_cores(0) == 1


def test_trial_env_sets_threads_and_a_passive_wait_policy():
    assert T.trial_env(3) == {"OMP_NUM_THREADS": "3", "MKL_NUM_THREADS": "3", "OMP_WAIT_POLICY": "PASSIVE"}


def test_serial_backend_runs_each_trial_with_the_free_cores_and_restores(monkeypatch):
    from mmin_plugin.runs import backend as B

    monkeypatch.setattr(B, "trial_threads", lambda cores=None: 1 if cores is None else 9)
    monkeypatch.setattr(B, "as_record", lambda trial, value: value)  # the record itself is not the point
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        seen = []
        backend = SerialBackend(SweepOptions(trial_fn=lambda trial: seen.append(torch.get_num_threads()) or "rec"))
        backend.submit(object())
        assert backend.wait()[1] == "rec"
        assert seen == [1] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_a_real_sample_is_within_the_usable_cores():
    assert 1 <= T.free_cores(0.05) <= T.usable_cores() <= (os.cpu_count() or 1)
