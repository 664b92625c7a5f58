"""`--backend slurm`: each trial a Slurm job through submitit (`pip install -e ".[slurm]"`).

* resources from the same flags as Ray: `--cpus-per-trial` -> `cpus_per_task` (rounded up),
  `--gpus-per-trial` -> `gpus_per_node` (a whole number of GPUs); at most `--max-concurrent` jobs at
  once (default `DEFAULT_JOBS`); anything else submitit takes (partition, time limit, account...)
  via `slurm_params` (`--slurm-param KEY=VALUE`, e.g. `slurm_partition=gpu`, `timeout_min=120`);
* requeue-safe: the job is checkpointable (submitit's `checkpoint` protocol), so on preemption or time-out Slurm
  requeues it and it runs the trial again in the same trial folder, from the start (the folder is
  the trial's whole state; MMSA keeps no resumable training state);
* submitit's files (the pickled job, its stdout/stderr) go to `<trial folder>/submitit/`;
* `cluster='local'` runs the jobs as local processes (submitit's LocalExecutor; used by the tests,
  no Slurm needed), `None` lets submitit pick (Slurm when `sbatch` is there).
Design notes: docs/design/experiments.md ("Slurm through submitit").
"""
from __future__ import annotations

import logging
import math
import time
from typing import Callable, Dict, Optional, Tuple

from ..errors import MMINConfigError
from .threads import trial_env
from .trial import SCHEDULER_DIR, Trial, _error_text, run_trial

logger = logging.getLogger("MMSA." + __name__)

__all__ = ["SlurmBackend", "DEFAULT_JOBS"]

#: jobs in the queue at once when `--max-concurrent` is not given
DEFAULT_JOBS = 8
#: seconds between two looks at the jobs' states
POLL_S = 0.5


def _submitit():
    try:
        import submitit
    except ImportError as exc:
        raise MMINConfigError("backend 'slurm': expected the submitit package; found it is not installed "
                              "(pip install -e \".[slurm]\")") from exc
    return submitit


class _Job:
    """What a Slurm job runs: one trial (requeued on preemption/time-out with the same arguments)."""

    def __call__(self, trial_data: Dict, trial_fn: Optional[Callable], gpus: int) -> Dict:
        import os

        import torch

        from .backends import place_devices
        from .threads import trial_threads

        trial = Trial(**trial_data)
        # Slurm already limits CUDA_VISIBLE_DEVICES to the job's GPUs; a CPU-only job sees none
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
        place_devices(trial, [g for g in visible.split(",") if g][:gpus] if gpus else [])
        # the job's CPUs (SLURM_CPUS_PER_TASK); outside Slurm (submitit's local executor) the free cores
        torch.set_num_threads(trial_threads(os.environ.get("SLURM_CPUS_PER_TASK") or None))
        return (trial_fn or run_trial)(trial)

    def checkpoint(self, *args, **kwargs):
        """Called by submitit before a preemption/time-out (having this method makes the job
        checkpointable, as `submitit.helpers.Checkpointable`): requeue the same trial."""
        return _submitit().helpers.DelayedSubmission(self, *args, **kwargs)


class SlurmBackend:
    """Trials as submitit jobs (one job per trial), at most `max_concurrent` queued or running."""

    name = "slurm"

    def __init__(self, cpus_per_trial: float = 1.0, gpus_per_trial: float = 0.0, max_concurrent: Optional[int] = None,
                 trial_fn: Optional[Callable[[Trial], Dict]] = None, cluster: Optional[str] = None,
                 slurm_params: Optional[Dict] = None):
        self.submitit = _submitit()
        if cpus_per_trial <= 0 or gpus_per_trial < 0 or gpus_per_trial != int(gpus_per_trial):
            raise MMINConfigError(f"backend 'slurm': expected cpus_per_trial > 0 and a whole gpus_per_trial >= 0; "
                                  f"found {cpus_per_trial}/{gpus_per_trial}")
        self.cpus, self.gpus = int(math.ceil(cpus_per_trial)), int(gpus_per_trial)
        self.trial_fn, self.cluster, self.params = trial_fn, cluster, dict(slurm_params or {})
        self.slots = int(max_concurrent or DEFAULT_JOBS)
        self._pending: Dict = {}

    def _executor(self, trial: Trial):
        ex = self.submitit.AutoExecutor(folder=str(trial.path / SCHEDULER_DIR), cluster=self.cluster)
        params = dict(self.params)
        # threads and a passive OpenMP wait policy set before the job's Python starts (runs/threads.py)
        params["slurm_setup"] = [f"export {k}={v}" for k, v in trial_env(self.cpus).items()] + list(
            params.get("slurm_setup") or [])
        ex.update_parameters(name=f"mmin-{trial.run}-{trial.dataset}-s{trial.seed}", cpus_per_task=self.cpus,
                             gpus_per_node=self.gpus, tasks_per_node=1, nodes=1, **params)
        return ex

    def submit(self, trial: Trial) -> None:
        import dataclasses

        trial.path.mkdir(parents=True, exist_ok=True)
        job = self._executor(trial).submit(_Job(), dataclasses.asdict(trial), self.trial_fn, self.gpus)
        logger.info("slurm: trial %s/%s/seed%s is job %s", trial.run, trial.dataset, trial.seed, job.job_id)
        self._pending[job] = trial

    def wait(self) -> Tuple[Trial, Dict]:
        from .backends import failed_row

        while True:
            for job, trial in list(self._pending.items()):
                if job.done():
                    del self._pending[job]
                    try:
                        return trial, job.result()
                    except Exception as exc:  # the job failed or was cancelled: a failed row, retried by the sweep
                        return trial, failed_row(trial, f"slurm job {job.job_id}: {_error_text(exc)}")
            time.sleep(POLL_S)

    def close(self) -> None:
        for job in list(self._pending):
            job.cancel(check=False)
        self._pending.clear()
