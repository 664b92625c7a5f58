"""How many threads a trial computes with: the one place every backend asks (`trial_threads`).

torch's default is one thread per core of the machine. When other processes hold some of those
cores, OpenMP's worker threads spin-wait for cores they cannot get, and a step slows down by
several times (measured on 2 cores with one competing process: about 0.6 s -> 8-10 s a batch with
2 threads, 1.2 s with 1; docs/speed.md). So each trial computes with the cores it was granted:

* a Ray or Slurm slot: its CPUs (`cores` = cpus_per_trial, or Slurm's SLURM_CPUS_PER_TASK);
* the serial backend: the cores not busy right now (`cores=None`: the usable cores minus the
  others' load, sampled from /proc/stat over a short window; at least 1).

`trial_env(threads)` is the environment for a trial started in a fresh process (a Slurm job):
the same count for OpenMP/MKL and OMP_WAIT_POLICY=PASSIVE, so idle OpenMP threads sleep instead
of spinning. The wait policy only takes effect before torch loads its OpenMP runtime, so it
cannot be applied to a trial that runs inside an already started process (serial, Ray's pool).
"""
from __future__ import annotations

import contextlib
import math
import os
import time
from typing import Dict, Iterator, Optional

__all__ = ["usable_cores", "free_cores", "trial_threads", "trial_env", "threads_for_trial"]

#: how long `free_cores` watches the machine's CPU counters
SAMPLE_SECONDS = 0.2


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _cpu_times():
    with open("/proc/stat", "rb") as f:  # first line: "cpu  user nice system idle iowait irq softirq steal ..."
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return sum(fields[:8]), idle


def free_cores(sample_seconds: float = SAMPLE_SECONDS) -> int:
    """Usable cores minus the cores other processes keep busy (call it while this process idles).

    Busy cores = (1 - idle share of the machine's CPU time over `sample_seconds`) x cores online;
    without /proc/stat, the 1-minute load average. Rounded to the nearest core, at least 1."""
    usable = usable_cores()
    try:
        total0, idle0 = _cpu_times()
        time.sleep(sample_seconds)
        total1, idle1 = _cpu_times()
        busy = (1.0 - (idle1 - idle0) / max(total1 - total0, 1)) * (os.cpu_count() or usable)
    except (OSError, ValueError, IndexError):
        try:
            busy = os.getloadavg()[0]
        except (AttributeError, OSError):
            busy = 0.0
    return max(1, min(usable, int(math.floor(usable - busy + 0.5))))


def trial_threads(cores: Optional[float] = None) -> int:
    """Threads for one trial: ceil(`cores`) for a slot of that many CPUs (Ray, Slurm); `cores=None`
    (the serial backend): :func:`free_cores`. Never more than the usable cores, at least 1."""
    if cores is None:
        return free_cores()
    return max(1, min(usable_cores(), int(math.ceil(float(cores)))))


def trial_env(threads: int) -> Dict[str, str]:
    """Environment of a trial started in a fresh process with `threads` threads (see module doc)."""
    n = str(max(1, int(threads)))
    return {"OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n, "OMP_WAIT_POLICY": "PASSIVE"}


@contextlib.contextmanager
def threads_for_trial(threads: int) -> Iterator[int]:
    """torch computes with `threads` threads inside the block (restored after it)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(max(1, int(threads)))
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
