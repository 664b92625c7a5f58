"""One trial = one (run, dataset, seed) in its own directory `<out>/runs/<run>/<dataset>/seed<seed>/`:
MMSA's `models/`, `results/`, `logs/`, MMIN's history, TensorBoard events in `tb/`, and `row.json`
(metrics, wall time, the resolved config, the environment). No two trials share a file.
Design notes: docs/design/experiments.md.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import platform
import socket
import subprocess
import time
import traceback
from pathlib import Path
from typing import Dict, List, Optional

from ..atomic import atomic_write_text
from ..errors import MMINConfigError, MMINDataError, NonFiniteLossError

logger = logging.getLogger("MMSA." + __name__)

__all__ = ["Trial", "run_trial", "read_row", "environment", "trial_dir", "read_predictions", "PREDICTIONS_FILE",
           "write_outputs"]

ROW_FILE = "row.json"
#: a previous attempt's files move to `<trial>/attempt-<k>/` (k = 1, 2, ...) before the trial runs again
ATTEMPT_PREFIX = "attempt-"
#: errors that recur on every attempt with the same inputs (not retried): bad data, bad config, NaN loss
DETERMINISTIC_ERRORS = (MMINDataError, MMINConfigError, NonFiniteLossError)
#: the TEST pass's per-sample predictions: arrays `ids` (str), `labels`, `preds` (float64), one entry a sample
PREDICTIONS_FILE = "predictions.npz"
#: the scheduler's own files of the running job (slurm backend: submitit's pickled job and logs, named
#: by job id); they stay in place across attempts, since the job that runs this attempt reads them
SCHEDULER_DIR = "submitit"


def trial_dir(out, run: str, dataset: str, seed: int) -> Path:
    return Path(out) / "runs" / run / dataset / f"seed{int(seed)}"


@dataclasses.dataclass
class Trial:
    """Everything a worker needs to run one trial (plain JSON-able data, so it travels to Ray
    workers and subprocesses). `skip_test`: a tuning trial, scored on its best VALID KeyEval; the
    trainer's TEST evaluation is not run (see runner.TrialProbe)."""

    run: str
    model: str
    dataset: str
    seed: int
    directory: str
    config: Dict = dataclasses.field(default_factory=dict)
    label: str = ""
    ablation: Optional[List[str]] = None
    config_file: Optional[str] = None
    skip_test: bool = False
    gpu_ids: List[int] = dataclasses.field(default_factory=list)
    num_workers: int = 0
    verbose_level: int = 0
    study: Optional[Dict] = None  # tune with pruning: where to report each epoch (study.epoch_reporter)

    @property
    def key(self) -> tuple:
        return self.run, self.dataset, int(self.seed)

    @property
    def path(self) -> Path:
        return Path(self.directory)


_NUMBER = (int, float)
#: row.json fields the tables and `--resume` rely on: field -> (accepted types, required); bool is
#: never accepted where a number is expected
ROW_FIELDS = {
    "run": (str, True), "dataset": (str, True), "seed": (int, True), "status": (str, True),
    "metrics": (dict, True), "error": (str, False), "wall_time_s": (_NUMBER, False),
    "epochs": ((int, type(None)), False), "max_epochs": ((int, type(None)), False),
    "early_stop": ((int, type(None)), False), "stopped_by": ((str, type(None)), False),
    "model": (str, False), "ablation": (str, False), "label": (str, False), "feature_path": (str, False),
    "pretrained": (str, False), "checkpoint": (str, False), "predictions": (str, False),
    "overrides": (dict, False), "config_file": ((str, type(None)), False), "fingerprint": ((dict, type(None)), False),
}


def row_problem(row) -> Optional[str]:
    """Why `row` (parsed row.json) cannot be trusted as a trial's record, or None: not a JSON object,
    a required field missing, a field of the wrong type, a metric that is not a number."""
    if not isinstance(row, dict):
        return f"expected a JSON object; found {type(row).__name__}"
    for key, (types, required) in ROW_FIELDS.items():
        if key not in row:
            if required:
                return f"field '{key}' missing"
            continue
        v = row[key]
        if (isinstance(v, bool) and bool not in (types if isinstance(types, tuple) else (types,))) \
                or not isinstance(v, types):
            return f"field '{key}': expected {_type_names(types)}; found {type(v).__name__} {str(v)[:40]!r}"
    for k, v in row["metrics"].items():
        if isinstance(v, bool) or not isinstance(v, _NUMBER):
            return f"metric '{k}': expected a number; found {type(v).__name__} {str(v)[:40]!r}"
    return None


def _type_names(types) -> str:
    types = types if isinstance(types, tuple) else (types,)
    return " or ".join("null" if t is type(None) else t.__name__ for t in types)


def read_row_checked(directory) -> tuple:
    """(row, problem): (the trial's row.json, None) if it is a sound row; (None, None) if absent;
    (None, why) if unreadable or malformed (`row_problem`)."""
    path = Path(directory) / ROW_FILE
    try:
        row = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None, None
    except (OSError, ValueError) as exc:
        return None, f"{path}: unreadable ({_error_text(exc)})"
    problem = row_problem(row)
    return (None, f"{path}: {problem}") if problem else (row, None)


def read_row(directory) -> Optional[Dict]:
    """The trial's `row.json`, or None if absent, unreadable or malformed (logged: counted as not
    finished, so `--resume` runs it again and the tables leave it out)."""
    row, problem = read_row_checked(directory)
    if problem:
        logger.warning("%s; counted as not finished", problem)
    return row


def write_predictions(directory, pred: Dict) -> None:
    """`pred` ({"ids", "labels", "preds"}) as `predictions.npz` in `directory` (atomic, no pickle)."""
    import io

    import numpy as np

    from ..atomic import atomic_write_bytes

    buf = io.BytesIO()
    np.savez_compressed(buf, ids=np.asarray(pred["ids"], dtype=str), labels=np.asarray(pred["labels"], float),
                        preds=np.asarray(pred["preds"], float))
    atomic_write_bytes(Path(directory) / PREDICTIONS_FILE, buf.getvalue())


def read_predictions(directory) -> Optional[Dict]:
    """The trial's `predictions.npz` as {"ids", "labels", "preds"} numpy arrays of one length, or None
    if absent, unreadable or malformed (read without pickle)."""
    import numpy as np

    try:
        with np.load(Path(directory) / PREDICTIONS_FILE, allow_pickle=False) as z:
            out = {k: z[k] for k in ("ids", "labels", "preds")}
    except (OSError, ValueError, KeyError):
        return None
    n = len(out["ids"])
    if n == 0 or any(v.ndim != 1 or len(v) != n for v in out.values()):
        return None
    out["labels"], out["preds"] = out["labels"].astype(float), out["preds"].astype(float)
    return out


def _version(dist: str) -> Optional[str]:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _git_commit() -> Optional[str]:
    here = Path(__file__).resolve().parent
    with contextlib.suppress(Exception):
        out = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        if out.returncode == 0:
            dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                                   capture_output=True, text=True, timeout=5).stdout.strip()
            return out.stdout.strip() + ("-dirty" if dirty else "")
    return None


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
            "torch": torch.__version__, "mmsa": _version("mmsa"), "transformers": _version("transformers"),
            "numpy": numpy.__version__, "pandas": _version("pandas"), "ray": _version("ray"),
            "cuda": torch.version.cuda, "cuda_available": cuda,
            "gpu": torch.cuda.get_device_name(0) if cuda else None,
            "mmin_plugin": _version("mmin-plugin"), "git_commit": _git_commit()}


def _error_text(exc: BaseException) -> str:
    msg = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {msg}"[:500] if msg else type(exc).__name__


def _jsonable(args) -> Dict:
    return json.loads(json.dumps(dict(args or {}), default=str))


class _Scalars:
    """TensorBoard writer for the trial's `tb/` folder (None-safe: a trial never fails over it)."""

    def __init__(self, folder: Path):
        self.writer = None
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(folder))
        except Exception as exc:  # tensorboard missing or broken: the numbers are in row.json anyway
            logger.warning("TensorBoard events not written for %s: %s", folder, _error_text(exc))

    def add(self, prefix: str, step: int, values: Dict) -> None:
        if self.writer is None:
            return
        for k, v in values.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                self.writer.add_scalar(f"{prefix}/{k}", float(v), int(step))

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _history_scalars(scalars: _Scalars, history_path: Path) -> Optional[List[Dict]]:
    """MMIN's per-epoch history (each loss term, train and valid) -> TensorBoard `mmin/<key>`."""
    if not history_path.is_file():
        return None
    history = json.loads(history_path.read_text(encoding="utf-8"))
    for i, rec in enumerate(history):
        scalars.add("mmin", int(rec.get("epoch", i + 1)), {k: v for k, v in rec.items() if k != "epoch"})
    return history


def archive_previous_attempt(directory) -> int:
    """Move everything in the trial folder (a previous attempt's checkpoint, results, logs, TensorBoard
    events, row.json) into a new `attempt-<k>/`, so that nothing of it can be mistaken for this
    attempt's (MMSA's `assert Path(model_save_path).exists()` would otherwise pass on the old
    checkpoint when a retry never beats the trainer's initial best, and test it). Returns this
    attempt's number (1 for a fresh folder)."""
    d = Path(directory)
    if not d.is_dir():
        return 1
    done = [int(p.name[len(ATTEMPT_PREFIX):]) for p in d.iterdir()
            if p.name.startswith(ATTEMPT_PREFIX) and p.name[len(ATTEMPT_PREFIX):].isdigit()]
    entries = [p for p in d.iterdir()
               if not ((p.name.startswith(ATTEMPT_PREFIX) or p.name == SCHEDULER_DIR) and p.is_dir())]
    if not entries:
        return max(done, default=0) + 1
    k = max(done, default=0) + 1
    target = d / f"{ATTEMPT_PREFIX}{k}"
    target.mkdir()
    for p in entries:
        p.rename(target / p.name)
    logger.info("%s: the previous attempt's files moved to %s", d, target.name)
    return k + 1


def _row_skeleton(trial: Trial) -> Dict:
    return {"run": trial.run, "model": trial.model, "ablation": ",".join(trial.ablation or []),
            "dataset": trial.dataset, "seed": int(trial.seed), "status": "running", "error": "",
            "wall_time_s": 0.0, "epochs": None, "stopped_by": None, "max_epochs": trial.config.get("max_epochs"),
            "early_stop": None, "feature_path": str(trial.config.get("featurePath") or ""),
            "pretrained": str(trial.config.get("pretrained") or ""), "checkpoint": "", "predictions": "", "metrics": {},
            "label": trial.label or trial.run, "kind": "search" if trial.skip_test else "train",
            "directory": str(trial.path), "config_file": trial.config_file, "overrides": _jsonable(trial.config),
            "gpu_ids": list(trial.gpu_ids)}


def _curves(trial: Trial, history: List[Dict]) -> None:
    """MMIN's training curves as `curves.png` in the trial's folder."""
    from ..atomic import atomic_write_bytes
    from ..results.report import plot_training_curves

    title = (f"{trial.label or trial.run} on {trial.dataset.upper()}, seed {trial.seed}: training curves "
             "(MMIN trainer history)")
    atomic_write_bytes(trial.path / "curves.png", plot_training_curves(history, title))


def run_trial(trial: Trial) -> Dict:
    """Run `trial` in this process (MMSA_run for one seed, instrumented); write and return its row.
    A failure is recorded in the row (status 'failed', the traceback in `error.txt`), not raised;
    KeyboardInterrupt is raised."""
    from ..integration import runner
    from .fingerprint import fingerprint

    d = trial.path
    attempt = archive_previous_attempt(d)
    dirs = {"model_save_dir": d / "models", "res_save_dir": d / "results", "log_dir": d / "logs"}
    for p in dirs.values():
        p.mkdir(parents=True, exist_ok=True)
    ckpt = dirs["model_save_dir"] / f"{trial.model.lower()}-{trial.dataset}.pth"
    history = ckpt.with_name(ckpt.stem + ".history.json")
    row = _row_skeleton(trial)
    row["attempt"] = attempt
    try:
        row["fingerprint"] = fingerprint(trial)
    except Exception as exc:  # e.g. an unreadable feature file: the trial reports it; resume reruns this row
        row["fingerprint"] = None
        logger.warning("no fingerprint for %s: %s", d, _error_text(exc))
    row["started"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    row["t_start"] = time.time()
    row["environment"] = environment()
    atomic_write_text(d / ROW_FILE, json.dumps(row, indent=1, default=str))
    report = None
    if trial.study:
        from .study import epoch_reporter

        report = epoch_reporter(trial.study, lambda: probe.key_eval)

    probe = runner.TrialProbe(max_epochs=trial.config.get("max_epochs"), skip_test=trial.skip_test,
                              on_valid=report)  # report may raise optuna.TrialPruned
    t0 = time.perf_counter()
    try:
        with runner.own_mmsa_handlers(), runner.instrument_trainers(probe):
            results = runner.mmsa_run(trial.model, trial.dataset, config=dict(trial.config),
                                      config_file=trial.config_file or None, seeds=[int(trial.seed)],
                                      gpu_ids=list(trial.gpu_ids), num_workers=trial.num_workers,
                                      verbose_level=trial.verbose_level, **{k: str(v) for k, v in dirs.items()})
        if not results:
            raise RuntimeError("MMSA_run returned no results")
        final = {k: float(v) for k, v in results[-1].items()}
        row.update(status="ok", epochs=probe.epochs, stopped_by=probe.stopped_by,
                   checkpoint=str(ckpt) if ckpt.is_file() else "")
        if trial.skip_test:  # what _run handed back is the best validation result, not a test score
            row["metrics"] = {}
            if ckpt.is_file():  # a search trial is scored: its weights are never tested, so not kept
                ckpt.unlink()
                row["checkpoint"] = ""
        else:
            row["metrics"] = final
            if probe.test_predictions is not None:
                write_predictions(d, probe.test_predictions)
                row["predictions"] = PREDICTIONS_FILE
    except Exception as exc:  # recorded; the sweep goes on
        from .study import is_pruned

        if is_pruned(exc):  # stopped by the study's pruner: neither failed nor a finished result
            row.update(status="pruned", error=_error_text(exc), epochs=probe.epochs, stopped_by="pruned")
            with contextlib.suppress(OSError):
                ckpt.unlink(missing_ok=True)
        else:
            row.update(status="failed", error=_error_text(exc),
                       deterministic=isinstance(exc, DETERMINISTIC_ERRORS))
            with contextlib.suppress(OSError):
                (d / "error.txt").write_text(traceback.format_exc(), encoding="utf-8")
    finally:
        row["wall_time_s"], row["t_end"] = round(time.perf_counter() - t0, 3), time.time()
        best = probe.best_valid()
        row.update(key_eval=probe.key_eval, valid_lower_is_better=probe.lower_is_better, valid_metrics=best or {},
                   valid_score=(best or {}).get(probe.key_eval), valid_per_epoch=probe.valid,
                   do_test_calls=dict(probe.modes))
        if probe.args is not None:  # what MMSA's _run really used (after $MMSA_DATASET_ROOT re-rooting)
            a = probe.args
            row["feature_path"] = str(a.get("custom_feature") or a.get("featurePath") or "")
            row["pretrained"] = str(a.get("pretrained") or "") if a.get("use_bert") else ""
            row["early_stop"] = a.get("early_stop")
            row["config"] = _jsonable(a)
        row["has_history"] = history.is_file()
        if row["status"] == "running":  # interrupted (KeyboardInterrupt): not finished
            row.update(status="interrupted", error="interrupted")
        atomic_write_text(d / ROW_FILE, json.dumps(row, indent=1, default=str))
    return row


def write_outputs(trial: Trial, row: Dict) -> None:
    """TensorBoard events (`tb/`: validation per epoch, MMIN's history) and `curves.png` of a finished
    trial, from its row and history file. Run by the sweep on the driver after the trial, so neither
    TensorBoard nor matplotlib is in the trial's process or time; a trial folder the driver cannot
    see (a multi-node cluster without a shared file system) gets the validation events only."""
    scalars = _Scalars(trial.path / "tb")
    try:
        for i, res in enumerate(row.get("valid_per_epoch") or []):
            scalars.add("valid", i + 1, res)
        ckpt = trial.path / "models" / f"{trial.model.lower()}-{trial.dataset}.pth"
        hist = _history_scalars(scalars, ckpt.with_name(ckpt.stem + ".history.json"))
        if hist:
            _curves(trial, hist)
    except Exception as exc:  # curves are a convenience; never lose a result over them
        logger.warning("training curves of %s not written: %s", trial.path, _error_text(exc))
    finally:
        scalars.close()


def main(argv=None) -> int:
    """`python -m mmin_plugin.runs.trial TRIAL.json`: run one trial in a fresh process."""
    import sys

    argv = sys.argv[1:] if argv is None else argv
    spec = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
    trial = Trial(**spec)
    row = run_trial(trial)
    write_outputs(trial, row)
    return 0 if row["status"] == "ok" else 1


if __name__ == "__main__":
    raise SystemExit(main())
