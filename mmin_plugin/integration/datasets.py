"""`register_dataset(name, feature_path, **overrides)`: a dataset MMSA has never heard of, for every model.

MMSA 2.2.1 knows a dataset by name in three places, each keyed by 'mosi' / 'mosei' / 'sims':
`datasetCommonParams` of its config files, `DATASET_MAP` of its data loader and the metrics map of
`MetricsTop`. The patches of :mod:`~mmin_plugin.integration.registry` (recorded, undoable, listed
by `python -m mmin_plugin patches`) consult :mod:`mmin_plugin.datasets` in all three, so that after
`register_dataset` the name works for `MMSA_run('mmin' | 'misa' | 'mult' | ..., name)`, for
`compare` / `ablate` / `tune` and for `MMSA_test`. How-to: docs/own-dataset.md.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Mapping, Union

from .. import datasets
from ..errors import MMINConfigError, MMINDataError

logger = logging.getLogger("MMSA." + __name__)

__all__ = ["register_dataset", "unregister_dataset", "ensure_dataset", "SPEC_KEY"]

#: the run-config key under which a driver (compare, tune) hands a registered dataset's spec to the
#: process that runs the trial (a Ray worker, a Slurm job), which registers it before `MMSA_run`
SPEC_KEY = "dataset_spec"


def _announce(spec: datasets.Dataset) -> datasets.Dataset:
    """Put `spec` in the registry and make MMSA consult it (the patches are idempotent)."""
    from MMSA import run

    from .registry import _install_patches

    _install_patches()
    datasets.add(spec)
    if spec.name.upper() not in run.SUPPORTED_DATASETS:
        run.SUPPORTED_DATASETS.append(spec.name.upper())
    logger.debug("registered dataset '%s' into MMSA: %s", spec.name, spec)
    return spec


def register_dataset(name: str, feature_path: Union[str, os.PathLike], **overrides) -> datasets.Dataset:
    """Make `name` a dataset of MMSA, read from the feature file `feature_path`; return its spec.

    The file (MMSA's pickle or the pickle-free safe format, read with the safe loader) goes through
    the feature-file checks; its padded lengths, feature widths, samples per split, label range,
    unimodal labels and language are read from it (:func:`mmin_plugin.features.infer.infer_dataset`;
    `overrides` are the keys of its ``OVERRIDES``: ``metric_family``, ``label_range``, ``language``,
    ``key_eval``, ``hyperparams_from``, ``text_dim``). A metric family or text width that cannot be
    inferred is an :class:`MMINConfigError` saying which keyword to give.

    Registering the same name again re-reads the file (a rebuilt file replaces the spec); MMSA's own
    names are refused. Registration lasts for this process; `compare` / `tune` hand the spec on to the
    processes that run their trials.
    """
    from ..features.infer import infer_dataset
    from ..features.load import clear_cache, safe_load

    name = str(name).lower()
    if datasets.is_builtin(name):
        raise MMINConfigError(f"register_dataset('{name}'): '{name}' is one of MMSA's own datasets; choose "
                              f"another name")
    path = Path(os.path.expanduser(os.fspath(feature_path))).resolve()
    if not path.is_file():
        raise MMINDataError(f"register_dataset('{name}'): feature file not found: {path}")
    try:
        spec = infer_dataset(name, safe_load(path), path, **overrides)
    finally:
        clear_cache()  # the run parses the file again when it needs it
    return _announce(spec)


def ensure_dataset(spec: Union[datasets.Dataset, Mapping]) -> datasets.Dataset:
    """Register `spec` (a spec or its `to_dict()`) as it is, without reading its file again, unless
    this process knows it already: how a trial's process learns its driver's dataset."""
    if not isinstance(spec, datasets.Dataset):
        spec = datasets.Dataset.from_dict(spec)
    if datasets.lookup(spec.name) == spec:
        return spec
    return _announce(spec)


def unregister_dataset(name: str) -> None:
    """Forget a registered dataset (MMSA's own are refused); the patches stay, inert for it."""
    from MMSA import run

    name = str(name).lower()
    datasets.remove(name)
    if name.upper() in run.SUPPORTED_DATASETS:
        run.SUPPORTED_DATASETS.remove(name.upper())
