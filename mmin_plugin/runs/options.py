"""How a sweep's trials run: one options record, read by the sweep and by every backend.
Design notes: docs/design/experiments.md ("Backends").
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Dict, Optional

__all__ = ["SweepOptions"]


@dataclasses.dataclass
class SweepOptions:
    """`backend` (a name in `backends.BACKENDS`: 'serial' | 'ray' | 'slurm'), Ray's `address`,
    resources per trial, `max_concurrent`, `retries` (extra attempts of a failed trial), `resume` /
    `overwrite`, `resume_across_code_versions` (resume keeps rows whose fingerprint differs only in
    the code versions, and older rows without a fingerprint whose overrides match), `pool` (Ray:
    long-lived actors, a forked child per trial; else a Ray task per trial), `reuse_workers` (Ray
    tasks: a worker process runs several trials), `slurm_params` (submitit's executor parameters;
    'cluster': 'local' runs the jobs locally), and (for tests) `num_cpus` of a local Ray instance
    and `trial_fn` (default trial.run_trial)."""

    backend: str = "serial"
    address: Optional[str] = None
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    max_concurrent: Optional[int] = None
    retries: int = 0
    resume: bool = False
    overwrite: bool = False
    num_cpus: Optional[int] = None
    trial_fn: Optional[Callable] = None
    reuse_workers: bool = False
    resume_across_code_versions: bool = False
    pool: bool = True
    slurm_params: Dict = dataclasses.field(default_factory=dict)
