"""`--backend ray`: a local Ray instance or `--address auto|ray://...`. By default a pool of
long-lived actors (runs/pool.py), each trial a forked child of one of them; `pool=False`: each trial
a Ray task in a fresh worker process. Design notes: docs/design/experiments.md ("Backends",
"Ray: the actor pool").
"""
from __future__ import annotations

import contextlib
import logging
import math
from typing import Dict, Optional, Tuple

from ..errors import MMINConfigError
from .backend import Backend, place_devices, trial_data
from .options import SweepOptions
from .record import TrialRecord
from .threads import trial_threads
from .trial import Trial, run_trial

logger = logging.getLogger("MMSA." + __name__)

__all__ = ["RayBackend", "ray_session", "session_pool"]


def _ray_entry(data: Dict, trial_fn, use_gpu: bool, threads: int):
    """Runs in the Ray worker: one torch thread per CPU given (`trial_threads`); on a GPU the trial's device is cuda:0
    of the devices Ray assigned (CUDA_VISIBLE_DEVICES), since MMSA's own free-GPU pick reads NVML
    and would ignore the assignment."""
    import ray

    trial = Trial(**data)
    place_devices(trial, ray.get_gpu_ids() if use_gpu else [])
    import torch

    torch.set_num_threads(trial_threads(threads))
    return (trial_fn or run_trial)(trial)


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


def session_pool(ray, size: int, cpus: float, gpus: float):
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


class _RayHandle:
    """A running Ray trial: its ObjectRef and, in a pool, the actor slot it holds."""

    def __init__(self, ray, ref, index: Optional[int]):
        self.ray, self.ref, self.index = ray, ref, index

    def done(self) -> bool:
        return bool(self.ray.wait([self.ref], timeout=0)[0])

    def result(self):
        return self.ray.get(self.ref)

    def cancel(self) -> None:
        self.ray.cancel(self.ref, force=True)


class RayBackend(Backend):
    """Trials with `cpus_per_trial` CPUs and `gpus_per_trial` GPUs each (fractions allowed); at most
    `max_concurrent` at once (default: what the cluster's resources allow). `pool` (default): one
    long-lived actor per slot, each trial a forked child of one (runs/pool.py); otherwise
    each trial a Ray task (a fresh worker process per trial unless `reuse_workers`). Without
    `address` a local Ray instance is started (and shut down at the end); `address='auto'` or
    `'ray://host:10001'` joins a running cluster."""

    name = "ray"

    def __init__(self, options: SweepOptions):
        super().__init__(options)
        ray = _import_ray()
        cpus, gpus = options.cpus_per_trial, options.gpus_per_trial
        if cpus <= 0 or gpus < 0:
            raise MMINConfigError(f"cpus_per_trial/gpus_per_trial: expected > 0 / >= 0; found {cpus}/{gpus}")
        self.ray = ray
        self.user_fn = options.trial_fn  # None: run_trial in the worker
        self._owns = _ray_init(options.address, options.num_cpus)
        res = ray.cluster_resources()
        fits = math.floor(res.get("CPU", 1) / cpus + 1e-9)
        if gpus > 0:
            fits = min(fits, math.floor(res.get("GPU", 0) / gpus + 1e-9))
            if fits < 1:
                raise MMINConfigError(f"gpus_per_trial={gpus}: expected GPUs in the Ray cluster; "
                                      f"found {res.get('GPU', 0)}")
        mc = options.max_concurrent
        self.slots = max(1, min(int(mc), fits) if mc else fits)
        self.cpus_per_trial, self.gpus_per_trial = cpus, gpus
        # max_calls=1: a fresh worker process per trial (GPU memory and module state released);
        # reuse_workers: a worker runs trial after trial (imports paid once; the serial backend's isolation)
        self._pool, self._owns_pool, self._free = None, False, []
        if options.pool:
            self._pool, self._owns_pool = session_pool(ray, self.slots, cpus, gpus)
            self._free = list(range(self.slots))
        else:
            _release_session_pools()
        self._remote = ray.remote(num_cpus=cpus, num_gpus=gpus, max_calls=0 if options.reuse_workers else 1,
                                  max_retries=0)(_ray_entry)
        logger.info("ray backend: %s CPU, %s GPU in the cluster; %d trial(s) at once", res.get("CPU"),
                    res.get("GPU", 0), self.slots)

    def start(self, trial: Trial) -> _RayHandle:
        threads = int(math.ceil(self.cpus_per_trial))
        if self._pool is not None:
            index = self._free.pop(0)
            return _RayHandle(self.ray, self._pool.submit(index, trial_data(trial), self.user_fn, threads), index)
        ref = self._remote.remote(trial_data(trial), self.user_fn, self.gpus_per_trial > 0, threads)
        return _RayHandle(self.ray, ref, None)

    def wait(self) -> Tuple[Trial, TrialRecord]:
        """Blocks on `ray.wait` over every running trial (no polling)."""
        refs = [h.ref for _, h in self._running]
        ready, _ = self.ray.wait(refs, num_returns=1)
        i = refs.index(ready[0])
        trial, handle = self._running[i]
        del self._running[i]
        if handle.index is not None:
            self._free.append(handle.index)
        return trial, self.collect(trial, handle)

    def close(self) -> None:
        super().close()
        if self._owns_pool:
            self._pool.close()
        if self._owns:
            self.ray.shutdown()
