"""What a number came from besides its inputs: package versions, the git commit, the device.

`environment()` is recorded in every row (computed once per process, in the process that ran the
trial, since it describes that machine); `device(use_gpu)` is the fingerprint's `device` part.
Design notes: docs/design/experiments.md ("Fingerprint").
"""
from __future__ import annotations

import contextlib
import functools
import json
import platform
import socket
import subprocess
from pathlib import Path
from typing import Dict, Optional

__all__ = ["package_version", "git_commit", "environment", "device", "expects_gpu"]


def package_version(dist: str) -> Optional[str]:
    """The installed version of distribution `dist`, or None if it is not installed."""
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


@functools.lru_cache(maxsize=1)
def git_commit() -> Optional[str]:
    """This package's git commit (`-dirty` when tracked files have changes), or None outside git."""
    here = Path(__file__).resolve().parent
    with contextlib.suppress(Exception):
        out = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        if out.returncode == 0:
            dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                                   capture_output=True, text=True, timeout=5).stdout.strip()
            return out.stdout.strip() + ("-dirty" if dirty else "")
    return None


def expects_gpu(gpu_ids=None, gpus_per_trial: float = 0.0, backend: str = "serial") -> bool:
    """Whether a trial will run on CUDA: on Ray and Slurm only with GPUs given to it (the trial sees
    no other); in this process (serial) when CUDA is available, as MMSA's `assign_gpu` picks it."""
    if backend != "serial":
        return gpus_per_trial > 0
    import torch

    return torch.cuda.is_available()


def device(use_gpu: bool) -> Dict:
    """The fingerprint's `device` part: kind ('cpu' / 'cuda'), GPU model and CUDA version (None where
    not known from this process: e.g. a driver without the workers' GPUs), and the sparsemax backend
    MMIN's attention runs on that device."""
    import torch

    from ..modeling.sparsemax import backend_for

    gpu = None
    if use_gpu and torch.cuda.is_available():
        with contextlib.suppress(Exception):
            gpu = torch.cuda.get_device_name(0)
    try:
        sparsemax = "torch" if use_gpu else backend_for(torch.zeros(1))
    except Exception as exc:  # e.g. MMIN_SPARSEMAX_BACKEND=native without a compiler: the trial reports it
        sparsemax = f"unavailable ({type(exc).__name__})"
    return {"kind": "cuda" if use_gpu else "cpu", "gpu": gpu, "cuda": torch.version.cuda if use_gpu else None,
            "sparsemax": sparsemax}


@functools.lru_cache(maxsize=1)
def _environment() -> str:
    return json.dumps(_environment_now())


def environment() -> Dict:
    """Versions and hardware a number came from (computed once per process)."""
    return json.loads(_environment())


def _environment_now() -> Dict:
    import numpy
    import torch

    cuda = torch.cuda.is_available()
    return {"python": platform.python_version(), "platform": platform.platform(), "host": socket.gethostname(),
            "torch": torch.__version__, "mmsa": package_version("mmsa"),
            "transformers": package_version("transformers"), "numpy": numpy.__version__,
            "pandas": package_version("pandas"), "ray": package_version("ray"),
            "cuda": torch.version.cuda, "cuda_available": cuda,
            "gpu": torch.cuda.get_device_name(0) if cuda else None,
            "mmin_plugin": package_version("mmin-plugin"), "git_commit": git_commit()}
