"""The backend protocol: where trials run. One abstract method, `start(trial)`, which starts a trial
and returns a handle on it (anything with `done()` and `result()`, like a
`concurrent.futures.Future`; `cancel()` is used when present). Everything else (the queue of
running trials, waiting for the next to finish, a failure of the worker turned into a failed
record, cancelling at the end) is the base class's; a backend may override `wait` to block more
cleverly than polling `done()`, and sets `slots` (trials at once).

A new backend is one module with a `Backend` subclass and one line in `backends.BACKENDS`
(docs/design/experiments.md, "Backends", shows a toy one). `serial` is here: trials one after
another in this process.
"""
from __future__ import annotations

import abc
import os
import time
from collections import deque
from typing import Any, ClassVar, Deque, Dict, Tuple

from .options import SweepOptions
from .record import TrialRecord
from .threads import threads_for_trial, trial_threads
from .trial import Trial, error_text, failed_record, run_trial

__all__ = ["Backend", "SerialBackend", "place_devices", "as_record"]

#: seconds between two looks at the running trials (polling backends)
POLL_S = 0.2


def as_record(trial: Trial, value) -> TrialRecord:
    """A trial function's return value as the trial's record (a TrialRecord, or its JSON object)."""
    if isinstance(value, TrialRecord):
        return value
    return TrialRecord.from_json(value, key=trial.key, source=f"the result of trial {trial.run}/{trial.dataset}/"
                                                            f"seed{trial.seed}")


class Backend(abc.ABC):
    """Runs trials (module docstring). `options`: the sweep's `SweepOptions`; `trial_fn`: what a
    worker calls with the trial (default `trial.run_trial`)."""

    name: ClassVar[str] = ""
    slots: int = 1

    def __init__(self, options: SweepOptions):
        self.options = options
        self.trial_fn = options.trial_fn or run_trial
        self._running: Deque[Tuple[Trial, Any]] = deque()

    @abc.abstractmethod
    def start(self, trial: Trial):
        """Start `trial`; return a handle with `done() -> bool` and `result() -> TrialRecord` (which
        raises if the worker failed without a record)."""

    def describe_failure(self, handle, exc: BaseException) -> str:
        """The error a failed worker's record gets (a backend may add e.g. its job id)."""
        return error_text(exc)

    def submit(self, trial: Trial) -> None:
        self._running.append((trial, self.start(trial)))

    def collect(self, trial: Trial, handle) -> TrialRecord:
        """The finished `handle`'s record; a worker that failed without one gets a failed record."""
        try:
            return as_record(trial, handle.result())
        except Exception as exc:  # the worker died or raised: a failed record, retried by the sweep
            return failed_record(trial, self.describe_failure(handle, exc))

    def wait(self) -> Tuple[Trial, TrialRecord]:
        """The next trial to finish, with its record (polls the handles' `done()`)."""
        while True:
            for i, (trial, handle) in enumerate(self._running):
                if handle.done():
                    del self._running[i]
                    return trial, self.collect(trial, handle)
            time.sleep(POLL_S)

    def close(self) -> None:
        """Cancel what still runs (the sweep was interrupted) and release the backend's resources."""
        while self._running:
            _, handle = self._running.popleft()
            cancel = getattr(handle, "cancel", None)
            if cancel is not None:
                cancel()


class _Deferred:
    """A handle that runs the trial when its result is asked for (the serial backend)."""

    def __init__(self, fn, trial: Trial):
        self.fn, self.trial = fn, trial

    def done(self) -> bool:
        return True

    def result(self):
        return self.fn(self.trial)


class SerialBackend(Backend):
    """Trials one after another in this process (MMSA's global patches are context managers, its log
    handlers are removed after each call, so trials leave nothing behind)."""

    name = "serial"

    def start(self, trial: Trial) -> _Deferred:
        return _Deferred(self.trial_fn, trial)

    def collect(self, trial: Trial, handle) -> TrialRecord:
        with threads_for_trial(trial_threads()):  # the cores free now (runs/threads.py)
            return as_record(trial, handle.result())  # run_trial records its own failures; others propagate


def place_devices(trial: Trial, gpus) -> None:
    """Make the trial see only the GPUs it was given (`gpus`, as the scheduler numbers them; none: no
    GPU at all): CUDA_VISIBLE_DEVICES is set before CUDA is initialised (Ray no longer blanks it for
    num_gpus=0, and MMSA's own pick of the freest GPU reads NVML, outside any scheduler's
    accounting), and the trial's device is cuda:0 of what it sees."""
    os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in gpus)
    trial.gpu_ids = [0] if gpus else []


def trial_data(trial: Trial) -> Dict:
    """The trial as plain data for another process (Trial(**data) rebuilds it)."""
    import dataclasses

    return dataclasses.asdict(trial)
