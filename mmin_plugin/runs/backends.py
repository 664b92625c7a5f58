"""Where trials run, by name: `BACKENDS` maps each `--backend` choice to its `backend.Backend`
subclass. `serial` (this process, one after another; no dependency), `ray` (runs/ray_backend.py:
a local instance or a cluster, an actor pool by default), `slurm` (runs/slurm.py: submitit jobs).
All give back the trial's record; the tables never depend on the backend.

Adding a backend is one module (a `Backend` subclass with `start(trial)`) and one line here.
Design notes: docs/design/experiments.md ("Backends").
"""
from __future__ import annotations

from typing import Dict, Type

from ..errors import MMINConfigError
from .backend import Backend, SerialBackend
from .options import SweepOptions
from .ray_backend import RayBackend, ray_session
from .slurm import SlurmBackend

__all__ = ["BACKENDS", "make_backend", "ray_session", "Backend"]

BACKENDS: Dict[str, Type[Backend]] = {
    "serial": SerialBackend,
    "ray": RayBackend,
    "slurm": SlurmBackend,
}


def make_backend(options: SweepOptions) -> Backend:
    """The backend `options.backend` names, built from the sweep's options."""
    cls = BACKENDS.get(options.backend)
    if cls is None:
        raise MMINConfigError(f"backend: expected one of {list(BACKENDS)}; found {options.backend!r}")
    return cls(options)
