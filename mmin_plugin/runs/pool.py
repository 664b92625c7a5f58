"""Long-lived Ray workers: a pool of actors that pay the imports once and run trial after trial, each
trial still in a process of its own.

Each actor starts a `multiprocessing` fork server that imports torch, MMSA, transformers, TensorBoard,
matplotlib and this package once (`PRELOAD`); every trial is then a child forked from that server:
started in milliseconds with everything imported, and gone when the trial ends (MMSA's module state,
patches, log handlers, GPU memory: nothing carries over to the next trial). The fork server is a
fresh single-threaded process that never initialises CUDA, so forking it is safe (forking the Ray
worker itself, with its threads, would not be). Devices: the child sets CUDA_VISIBLE_DEVICES to the
actor's Ray GPUs (none for a CPU-only actor) before anything touches CUDA.
Design notes: docs/design/experiments.md ("Ray: the actor pool").
"""
from __future__ import annotations

import contextlib
import logging
import multiprocessing
import pickle
import sys
from typing import Callable, Dict, List, Optional

logger = logging.getLogger("MMSA." + __name__)

__all__ = ["TrialPool", "PRELOAD", "run_forked"]

#: modules the fork server imports once (what a trial would otherwise import each time)
PRELOAD = ["torch", "transformers", "MMSA", "MMSA.run", "torch.utils.tensorboard", "matplotlib.pyplot",
           "mmin_plugin", "mmin_plugin.runs.trial", "mmin_plugin.integration.curves",
           "mmin_plugin.runs.study", "mmin_plugin.runs.pool"]


def _child(conn, trial_data: Dict, trial_fn: Optional[bytes], gpus: List, threads: int) -> None:
    """In the forked child: place devices, run the trial, send the row back."""
    from .backend import place_devices
    from .threads import trial_threads
    from .trial import Trial, run_trial

    trial_fn = pickle.loads(trial_fn) if trial_fn else None
    trial = Trial(**trial_data)
    place_devices(trial, gpus)
    import torch

    torch.set_num_threads(trial_threads(threads))  # the slot's CPUs
    try:
        conn.send(("row", (trial_fn or run_trial)(trial)))
    except BaseException as exc:  # the trial function raised (run_trial itself records failures)
        from .trial import error_text

        conn.send(("error", error_text(exc)))
    finally:
        conn.close()


def _noop() -> None:
    return None


@contextlib.contextmanager
def _without_main():
    """Start processes without multiprocessing re-importing `__main__` in them (in a Ray actor that is
    Ray's worker script; in a test, pytest): its `__file__` and `__spec__` are hidden meanwhile."""
    main = sys.modules.get("__main__")
    spec, file = getattr(main, "__spec__", None), getattr(main, "__file__", None)
    main.__spec__ = None
    if file is not None:
        del main.__file__
    try:
        yield
    finally:
        main.__spec__ = spec
        if file is not None:
            main.__file__ = file


class _Forker:
    """One fork server with everything imported; `run(...)` runs one trial in a child of it."""

    def __init__(self, preload: List[str]):
        self.ctx = multiprocessing.get_context("forkserver")
        self.ctx.set_forkserver_preload(list(preload))
        p = self.ctx.Process(target=_noop)  # starts the server now (its imports), not at the first trial
        with _without_main():
            p.start()
        p.join()

    def run(self, trial_data: Dict, trial_fn: Optional[bytes], gpus, threads: int) -> Dict:
        from .trial import Trial, failed_record

        recv, send = self.ctx.Pipe(duplex=False)
        p = self.ctx.Process(target=_child, args=(send, trial_data, trial_fn, list(gpus), int(threads)), daemon=True)
        with _without_main():
            p.start()
        send.close()
        try:
            kind, value = recv.recv()
        except EOFError:  # the child died without a word (killed, segfault, out of memory)
            p.join()
            return failed_record(Trial(**trial_data), f"the trial's process ended with exit code {p.exitcode}")
        finally:
            recv.close()
        p.join()
        if kind == "error":
            raise RuntimeError(value)
        return value


def _dumps(obj) -> bytes:
    """cloudpickle (trial functions may be closures, e.g. in tests), readable by plain pickle."""
    try:
        from ray import cloudpickle
    except ImportError:  # pragma: no cover - Ray is how the pool exists at all
        import cloudpickle
    return cloudpickle.dumps(obj)


def run_forked(trial_data: Dict, trial_fn: Optional[Callable] = None, gpus=(), threads: int = 1,
               preload: Optional[List[str]] = None) -> Dict:
    """One trial in a forked child of a fresh fork server (no Ray; what each pool actor does)."""
    return _Forker(PRELOAD if preload is None else preload).run(trial_data, _dumps(trial_fn) if trial_fn else None,
                                                                gpus, threads)


class _Actor:
    """The body of a Ray actor of the pool."""

    def __init__(self, preload: List[str]):
        import os

        self.pid = os.getpid()
        self.forker = _Forker(preload)

    def ready(self) -> int:
        return self.pid

    def run(self, trial_data: Dict, trial_fn: Optional[bytes], use_gpu: bool, threads: int) -> Dict:
        import ray

        return self.forker.run(trial_data, trial_fn, ray.get_gpu_ids() if use_gpu else [], threads)


class TrialPool:
    """`size` actors, each with `cpus` CPUs and `gpus` GPUs, started at once (in parallel) and kept
    until `close()`; `submit(actor_index, trial_data, trial_fn)` returns an ObjectRef of the row."""

    def __init__(self, ray, size: int, cpus: float, gpus: float, preload: Optional[List[str]] = None):
        self.ray, self.cpus, self.gpus = ray, cpus, gpus
        actor = ray.remote(num_cpus=cpus, num_gpus=gpus, max_restarts=0)(_Actor)
        self.actors = [actor.remote(PRELOAD if preload is None else preload) for _ in range(size)]
        self.pids = ray.get([a.ready.remote() for a in self.actors])
        logger.info("ray pool: %d actor(s) ready (%s CPU, %s GPU each)", size, cpus, gpus)

    def fits(self, cpus: float, gpus: float) -> bool:
        return (cpus, gpus) == (self.cpus, self.gpus)

    def submit(self, index: int, trial_data: Dict, trial_fn: Optional[Callable], threads: int):
        return self.actors[index].run.remote(trial_data, _dumps(trial_fn) if trial_fn else None, self.gpus > 0,
                                             threads)

    def close(self) -> None:
        for a in self.actors:
            self.ray.kill(a)
        self.actors = []
