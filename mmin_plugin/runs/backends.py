"""Where trials run: `serial` (this process, one after another; no dependency), `ray` (a local
instance or `--address auto|ray://...`: by default a pool of long-lived actors, runs/pool.py,
each trial a forked child of one of them; `pool=False`: each trial a Ray task in a fresh worker
process) or `slurm` (submitit, runs/slurm.py). All give back the trial's row; the tables
never depend on the backend. Design notes: docs/design/experiments.md.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
from collections import deque
from typing import Callable, Dict, Optional, Tuple

from ..atomic import atomic_write_text
from ..errors import MMINConfigError
from .threads import threads_for_trial, trial_threads
from .trial import ROW_FILE, Trial, _error_text, _row_skeleton, run_trial

logger = logging.getLogger("MMSA." + __name__)

__all__ = ["SerialBackend", "RayBackend", "make_backend", "ray_session", "BACKENDS"]

BACKENDS = ("serial", "ray", "slurm")


def failed_row(trial: Trial, error: str) -> Dict:
    """The row of a trial whose worker died before it wrote one (written to its row.json)."""
    row = _row_skeleton(trial)
    row.update(status="failed", error=error[:500])
    trial.path.mkdir(parents=True, exist_ok=True)
    atomic_write_text(trial.path / ROW_FILE, json.dumps(row, indent=1, default=str))
    return row


class SerialBackend:
    """Trials one after another in this process (MMSA's global patches are context managers, its log
    handlers are removed after each call, so trials leave nothing behind)."""

    name = "serial"

    def __init__(self, trial_fn: Optional[Callable[[Trial], Dict]] = None):
        self.trial_fn = trial_fn or run_trial
        self.slots = 1
        self._queue: deque = deque()

    def submit(self, trial: Trial) -> None:
        self._queue.append(trial)

    def wait(self) -> Tuple[Trial, Dict]:
        trial = self._queue.popleft()
        with threads_for_trial(trial_threads()):  # the cores free now (runs/threads.py)
            return trial, self.trial_fn(trial)

    def close(self) -> None:
        self._queue.clear()


def _ray_entry(trial_data: Dict, trial_fn, use_gpu: bool, threads: int) -> Dict:
    """Runs in the Ray worker: one torch thread per CPU given (`trial_threads`); on a GPU the trial's device is cuda:0
    of the devices Ray assigned (CUDA_VISIBLE_DEVICES), since MMSA's own free-GPU pick reads NVML
    and would ignore the assignment."""
    import ray

    trial = Trial(**trial_data)
    place_devices(trial, ray.get_gpu_ids() if use_gpu else [])
    import torch

    torch.set_num_threads(trial_threads(threads))
    return (trial_fn or run_trial)(trial)


def place_devices(trial: Trial, gpus) -> None:
    """Make the trial see only the GPUs it was given (`gpus`, as the scheduler numbers them; none: no
    GPU at all): CUDA_VISIBLE_DEVICES is set before CUDA is initialised (Ray no longer blanks it for
    num_gpus=0, and MMSA's own pick of the freest GPU reads NVML, outside any scheduler's
    accounting), and the trial's device is cuda:0 of what it sees."""
    os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in gpus)
    trial.gpu_ids = [0] if gpus else []


def _import_ray():
    try:
        import ray
    except ImportError as exc:
        raise MMINConfigError("backend 'ray': expected the Ray package; found it is not installed "
                              "(pip install -e \".[ray]\" or pip install 'ray[default]')") from exc
    return ray


def _ray_init(address: Optional[str], num_cpus: Optional[int]) -> bool:
    """Start a local Ray instance, or join `address`, unless Ray is already up; True if started here."""
    ray = _import_ray()
    if ray.is_initialized():
        return False
    kw = {"address": address} if address else {"num_cpus": num_cpus, "include_dashboard": False}
    ray.init(log_to_driver=False, configure_logging=False, **kw)
    return True


#: actor pools kept by the open `ray_session` (reused by every sweep inside it, closed at its end)
_SESSION: Dict[str, list] = {}


@contextlib.contextmanager
def ray_session(backend: str, address: Optional[str] = None, num_cpus: Optional[int] = None):
    """Keep one Ray instance and its actor pools up over several sweeps (e.g. `tune`'s search,
    re-scoring and final retrain)."""
    owns = backend == "ray" and _ray_init(address, num_cpus)
    outer = "pools" in _SESSION
    if backend == "ray" and not outer:
        _SESSION["pools"] = []
    try:
        yield
    finally:
        if backend == "ray" and not outer:
            _release_session_pools()
            _SESSION.pop("pools", None)
        if owns:
            _import_ray().shutdown()


def _release_session_pools() -> None:
    """Close the open session's pools: their actors hold their CPUs/GPUs while they live, so any other
    pool or task would wait for them forever."""
    pools = _SESSION.get("pools") or []
    while pools:
        pools.pop().close()


def _pool(ray, size: int, cpus: float, gpus: float):
    """(pool, owned): the open session's pool if it has these resources and enough actors (else it is
    replaced), or a pool of the caller's own when no session is open."""
    from .pool import TrialPool

    pools = _SESSION.get("pools")
    if pools is None:
        return TrialPool(ray, size, cpus, gpus), True
    if pools and pools[0].fits(cpus, gpus) and len(pools[0].actors) >= size:
        return pools[0], False
    _release_session_pools()
    pools.append(TrialPool(ray, size, cpus, gpus))
    return pools[0], False


class RayBackend:
    """Trials with `cpus_per_trial` CPUs and `gpus_per_trial` GPUs each (fractions allowed); at most
    `max_concurrent` at once (default: what the cluster's resources allow). `pool` (default): one
    long-lived actor per slot, each trial a forked child of one (runs/pool.py); otherwise
    each trial a Ray task (a fresh worker process per trial unless `reuse_workers`). Without
    `address` a local Ray instance is started (and shut down at the end); `address='auto'` or
    `'ray://host:10001'` joins a running cluster."""

    name = "ray"

    def __init__(self, address: Optional[str] = None, cpus_per_trial: float = 1.0, gpus_per_trial: float = 0.0,
                 max_concurrent: Optional[int] = None, num_cpus: Optional[int] = None,
                 trial_fn: Optional[Callable[[Trial], Dict]] = None, reuse_workers: bool = False, pool: bool = True):
        ray = _import_ray()
        if cpus_per_trial <= 0 or gpus_per_trial < 0:
            raise MMINConfigError(f"cpus_per_trial/gpus_per_trial: expected > 0 / >= 0; found "
                                  f"{cpus_per_trial}/{gpus_per_trial}")
        self.ray, self.trial_fn = ray, trial_fn
        self._owns = _ray_init(address, num_cpus)
        res = ray.cluster_resources()
        fits = math.floor(res.get("CPU", 1) / cpus_per_trial + 1e-9)
        if gpus_per_trial > 0:
            fits = min(fits, math.floor(res.get("GPU", 0) / gpus_per_trial + 1e-9))
            if fits < 1:
                raise MMINConfigError(f"gpus_per_trial={gpus_per_trial}: expected GPUs in the Ray cluster; "
                                      f"found {res.get('GPU', 0)}")
        self.slots = max(1, min(int(max_concurrent), fits) if max_concurrent else fits)
        self.cpus_per_trial, self.gpus_per_trial = cpus_per_trial, gpus_per_trial
        # max_calls=1: a fresh worker process per trial (GPU memory and module state released);
        # reuse_workers: a worker runs trial after trial (imports paid once; the serial backend's isolation)
        self._pool, self._owns_pool, self._free = None, False, []
        if pool:
            self._pool, self._owns_pool = _pool(ray, self.slots, cpus_per_trial, gpus_per_trial)
            self._free = list(range(self.slots))
        else:
            _release_session_pools()
        self._remote = ray.remote(num_cpus=cpus_per_trial, num_gpus=gpus_per_trial,
                                  max_calls=0 if reuse_workers else 1, max_retries=0)(_ray_entry)
        self._pending: Dict = {}
        logger.info("ray backend: %s CPU, %s GPU in the cluster; %d trial(s) at once", res.get("CPU"),
                    res.get("GPU", 0), self.slots)

    def submit(self, trial: Trial) -> None:
        threads = int(math.ceil(self.cpus_per_trial))
        if self._pool is not None:
            index = self._free.pop(0)
            ref = self._pool.submit(index, dataclasses.asdict(trial), self.trial_fn, threads)
        else:
            index = None
            ref = self._remote.remote(dataclasses.asdict(trial), self.trial_fn, self.gpus_per_trial > 0, threads)
        self._pending[ref] = (trial, index)

    def wait(self) -> Tuple[Trial, Dict]:
        ready, _ = self.ray.wait(list(self._pending), num_returns=1)
        trial, index = self._pending.pop(ready[0])
        if index is not None:
            self._free.append(index)
        try:
            return trial, self.ray.get(ready[0])
        except Exception as exc:  # the worker died or the task raised: a failed row, retried by the sweep
            return trial, failed_row(trial, _error_text(exc))

    def close(self) -> None:
        for ref in list(self._pending):
            self.ray.cancel(ref, force=True)
        self._pending.clear()
        if self._owns_pool:
            self._pool.close()
        if self._owns:
            self.ray.shutdown()


def make_backend(name: str = "serial", address=None, cpus_per_trial=1.0, gpus_per_trial=0.0, max_concurrent=None,
                 num_cpus=None, trial_fn=None, reuse_workers=False, pool=True, slurm_params=None):
    if name == "serial":
        return SerialBackend(trial_fn)
    if name == "slurm":
        from .slurm import SlurmBackend

        params = dict(slurm_params or {})
        cluster = params.pop("cluster", None)  # 'local': submitit's LocalExecutor (tests, no Slurm)
        return SlurmBackend(cpus_per_trial, gpus_per_trial, max_concurrent, trial_fn, cluster, params)
    if name == "ray":
        return RayBackend(address, cpus_per_trial, gpus_per_trial, max_concurrent, num_cpus, trial_fn, reuse_workers,
                          pool)
    raise MMINConfigError(f"backend: expected one of {list(BACKENDS)}; found {name!r}")
