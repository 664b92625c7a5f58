"""`--backend slurm`: each trial a Slurm job through submitit (`pip install -e ".[slurm]"`).

* resources from the same flags as Ray: `--cpus-per-trial` -> `cpus_per_task` (rounded up),
  `--gpus-per-trial` -> `gpus_per_node` (a whole number of GPUs); at most `--max-concurrent` jobs at
  once (default `DEFAULT_JOBS`); anything else submitit takes (partition, time limit, account...)
  via `slurm_params` (`--slurm-param KEY=VALUE`, e.g. `slurm_partition=gpu`, `timeout_min=120`);
* requeue-safe: the job is checkpointable (submitit's `checkpoint` protocol), so on preemption or time-out Slurm
  requeues it and it runs the trial again in the same trial folder, from the start (the folder is
  the trial's whole state; MMSA keeps no resumable training state);
* submitit's files (the pickled job, its stdout/stderr, its pickled result) go to a folder made
  fresh for each submission, `<trial folder>/submitit-<random token>/` (created here, refused if it
  exists): submitit treats a job as done as soon as a result file exists and unpickles it, so a
  result planted in a results folder must never be where a job of ours looks. Only the Job
  objects this process submitted are ever asked for a result. A scheduler folder of an earlier
  attempt (or any other, e.g. one in a copied folder) moves to `attempt-<k>/` with the rest of the
  previous attempt when the job's trial starts (trial.archive_previous_attempt); the running
  job's own stays;
* `cluster='local'` runs the jobs as local processes (submitit's LocalExecutor; used by the tests,
  no Slurm needed), `None` lets submitit pick (Slurm when `sbatch` is there).
Design notes: docs/design/experiments.md ("Slurm through submitit").
"""
from __future__ import annotations

import logging
import math
import secrets
from typing import Dict

from ..errors import MMINConfigError
from .backend import Backend, place_devices, trial_data
from .options import SweepOptions
from .record import check_trial_folder
from .threads import trial_env
from .trial import SCHEDULER_PREFIX, Trial, error_text, run_trial

logger = logging.getLogger("MMSA." + __name__)

__all__ = ["SlurmBackend", "DEFAULT_JOBS"]

#: jobs in the queue at once when `--max-concurrent` is not given
DEFAULT_JOBS = 8


def _submitit():
    try:
        import submitit
    except ImportError as exc:
        raise MMINConfigError("backend 'slurm': expected the submitit package; found it is not installed "
                              "(pip install -e \".[slurm]\")") from exc
    return submitit


class _Job:
    """What a Slurm job runs: one trial (requeued on preemption/time-out with the same arguments)."""

    def __call__(self, data: Dict, trial_fn, gpus: int):
        import os

        import torch

        from .threads import trial_threads

        trial = Trial(**data)
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


class SlurmBackend(Backend):
    """Trials as submitit jobs (one job per trial), at most `max_concurrent` queued or running."""

    name = "slurm"

    def __init__(self, options: SweepOptions):
        super().__init__(options)
        self.submitit = _submitit()
        cpus, gpus = options.cpus_per_trial, options.gpus_per_trial
        if cpus <= 0 or gpus < 0 or gpus != int(gpus):
            raise MMINConfigError(f"backend 'slurm': expected cpus_per_trial > 0 and a whole gpus_per_trial >= 0; "
                                  f"found {cpus}/{gpus}")
        self.cpus, self.gpus = int(math.ceil(cpus)), int(gpus)
        params = dict(options.slurm_params or {})
        self.cluster = params.pop("cluster", None)  # 'local': submitit's LocalExecutor (tests, no Slurm)
        self.params = params
        self.user_fn = options.trial_fn
        self.slots = int(options.max_concurrent or DEFAULT_JOBS)

    def start(self, trial: Trial):
        d = check_trial_folder(trial.out, *trial.key)
        d.mkdir(parents=True, exist_ok=True)
        trial.scheduler_dir = f"{SCHEDULER_PREFIX}{secrets.token_hex(8)}"
        folder = d / trial.scheduler_dir
        folder.mkdir()  # fresh: FileExistsError if it were there (never reused, never read from before)
        ex = self.submitit.AutoExecutor(folder=str(folder), cluster=self.cluster)
        params = dict(self.params)
        # threads and a passive OpenMP wait policy set before the job's Python starts (runs/threads.py)
        params["slurm_setup"] = [f"export {k}={v}" for k, v in trial_env(self.cpus).items()] + list(
            params.get("slurm_setup") or [])
        ex.update_parameters(name=f"mmin-{trial.run}-{trial.dataset}-s{trial.seed}", cpus_per_task=self.cpus,
                             gpus_per_node=self.gpus, tasks_per_node=1, nodes=1, **params)
        job = ex.submit(_Job(), trial_data(trial), self.user_fn, self.gpus)
        logger.info("slurm: trial %s/%s/seed%s is job %s", trial.run, trial.dataset, trial.seed, job.job_id)
        return job

    def describe_failure(self, job, exc: BaseException) -> str:
        return f"slurm job {job.job_id}: {error_text(exc)}"

    def close(self) -> None:
        while self._running:
            _, job = self._running.popleft()
            job.cancel(check=False)
