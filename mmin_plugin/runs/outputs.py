"""A finished trial's convenience outputs, written by the sweep on the driver after the trial (so
neither TensorBoard nor matplotlib is in the trial's process or time): TensorBoard events in `tb/`
(validation per epoch; MMIN's per-epoch history) and MMIN's `curves.png` (integration/curves.py).
A trial folder the driver cannot see (a multi-node cluster without a shared file system) gets the
validation events only. Design notes: docs/design/experiments.md ("Ray: the actor pool").
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Dict, List, Optional

from ..atomic import atomic_write_bytes
from ..bounded import UnreadableFile, read_json
from .record import TrialRecord
from .trial import Trial, checkpoint_path, error_text

logger = logging.getLogger("MMSA." + __name__)

__all__ = ["write_outputs", "read_history", "MAX_HISTORY_BYTES"]

#: bound of MMIN's history file (a few KB an epoch)
MAX_HISTORY_BYTES = 64 << 20


class _Scalars:
    """TensorBoard writer for the trial's `tb/` folder (None-safe: a trial never fails over it)."""

    def __init__(self, folder: Path):
        self.writer = None
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(folder))
        except Exception as exc:  # tensorboard missing or broken: the numbers are in row.json anyway
            logger.warning("TensorBoard events not written for %s: %s", folder, error_text(exc))

    def add(self, prefix: str, step: int, values: Dict) -> None:
        if self.writer is None:
            return
        for k, v in values.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                self.writer.add_scalar(f"{prefix}/{k}", float(v), int(step))

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def read_history(trial: Trial) -> Optional[List[Dict]]:
    """MMIN's per-epoch history of the trial (a list of objects), or None if there is none; read
    bounded, inside `--out` (UnreadableFile if refused)."""
    ckpt = checkpoint_path(trial)
    path = ckpt.with_name(ckpt.stem + ".history.json")
    try:
        history = read_json(path, MAX_HISTORY_BYTES, 8, root=trial.out, expect=list)
    except FileNotFoundError:
        return None
    return [h for h in history if isinstance(h, dict)]


def _curves(trial: Trial, history: List[Dict]) -> None:
    from ..integration.curves import plot_training_curves

    title = (f"{trial.label or trial.run} on {trial.dataset.upper()}, seed {trial.seed}: training curves "
             "(MMIN trainer history)")
    atomic_write_bytes(trial.path / "curves.png", plot_training_curves(history, title))


def write_outputs(trial: Trial, record: TrialRecord) -> None:
    """TensorBoard events and `curves.png` of a finished trial, from its record and history file."""
    scalars = _Scalars(trial.path / "tb")
    try:
        for i, res in enumerate(record.valid_per_epoch):
            scalars.add("valid", i + 1, res)
        history = read_history(trial) if record.has_history else None
        for i, rec in enumerate(history or []):
            step = rec.get("epoch", i + 1)
            step = step if isinstance(step, int) and not isinstance(step, bool) else i + 1
            scalars.add("mmin", step, {k: v for k, v in rec.items() if k != "epoch"})
        if history:
            _curves(trial, history)
    except (Exception, UnreadableFile) as exc:  # curves are a convenience; never lose a result over them
        logger.warning("training curves of %s not written: %s", trial.path, error_text(exc))
    finally:
        scalars.close()
