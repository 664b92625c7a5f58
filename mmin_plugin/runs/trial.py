"""One trial = one (run, dataset, seed) in its own folder `<out>/runs/<run>/<dataset>/seed<seed>/`:
MMSA's `models/`, `results/`, `logs/`, MMIN's history, TensorBoard events in `tb/`, the TEST
predictions and `row.json` (a `record.TrialRecord`). No two trials share a file. The folder's path
comes from the trial's identity (`record.trial_dir`), and a folder that is not the project's (a
symlink, or outside `--out`) is refused before anything in it is moved or written.
Design notes: docs/design/experiments.md.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import time
import traceback
from pathlib import Path
from typing import Dict, List, Optional

from ..errors import MMINConfigError, MMINDataError, NonFiniteLossError
from .environment import environment, expects_gpu
from .record import RecordError, TrialRecord, check_trial_folder, trial_dir, write_predictions, write_record

logger = logging.getLogger("MMSA." + __name__)

__all__ = ["Trial", "run_trial", "failed_record", "error_text", "archive_previous_attempt", "ATTEMPT_PREFIX",
           "DETERMINISTIC_ERRORS", "SCHEDULER_PREFIX", "checkpoint_path"]

#: a previous attempt's files move to `<trial>/attempt-<k>/` (k = 1, 2, ...) before the trial runs again
ATTEMPT_PREFIX = "attempt-"
#: errors that recur on every attempt with the same inputs (not retried): bad data, bad config, NaN loss
DETERMINISTIC_ERRORS = (MMINDataError, MMINConfigError, NonFiniteLossError)
#: a scheduler's folder for one submission is `<trial>/<prefix><token>/` (runs/slurm.py); the
#: running job's own stays in place across attempts (it writes its result there), any other moves
SCHEDULER_PREFIX = "submitit-"


@dataclasses.dataclass
class Trial:
    """Everything a worker needs to run one trial (plain JSON-able data, so it travels to Ray
    workers, subprocesses and Slurm jobs). `out`: the output folder (the trial's folder is
    `trial_dir(out, run, dataset, seed)`); `config`: the overrides given to MMSA (MMIN's `ablation`
    among them); `skip_test`: a tuning trial, scored on its best VALID KeyEval, TEST not run
    (runner.TrialProbe); `study`: where a search trial reports each epoch (study.epoch_reporter);
    `scheduler_dir`: the name of the folder the scheduler's job of this attempt writes into."""

    out: str
    run: str
    model: str
    dataset: str
    seed: int
    config: Dict = dataclasses.field(default_factory=dict)
    label: str = ""
    config_file: Optional[str] = None
    skip_test: bool = False
    gpu_ids: List[int] = dataclasses.field(default_factory=list)
    num_workers: int = 0
    verbose_level: int = 0
    study: Optional[Dict] = None
    scheduler_dir: Optional[str] = None

    @property
    def key(self) -> tuple:
        return self.run, self.dataset, int(self.seed)

    @property
    def path(self) -> Path:
        return trial_dir(self.out, self.run, self.dataset, int(self.seed))

    @property
    def ablation(self) -> str:
        """MMIN's `ablation` switches, comma-joined ('' for none or another model)."""
        a = self.config.get("ablation") if self.model == "mmin" else None
        return ",".join(str(x) for x in a) if isinstance(a, (list, tuple)) else str(a or "")


def checkpoint_path(trial: Trial) -> Path:
    """Where MMSA saves the trial's weights (`<model>-<dataset>.pth` in `models/`)."""
    return trial.path / "models" / f"{trial.model.lower()}-{trial.dataset}.pth"


def error_text(exc: BaseException) -> str:
    """`ExceptionType: message` on one line, at most 500 characters."""
    msg = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {msg}"[:500] if msg else type(exc).__name__


def _jsonable(args) -> Dict:
    return json.loads(json.dumps(dict(args or {}), default=str))


def start_record(trial: Trial) -> TrialRecord:
    """The record of a trial that has not run yet (status 'running')."""
    return TrialRecord(run=trial.run, dataset=trial.dataset, seed=int(trial.seed), model=trial.model,
                       label=trial.label or trial.run, ablation=trial.ablation,
                       kind="search" if trial.skip_test else "train", max_epochs=trial.config.get("max_epochs"),
                       feature_path=str(trial.config.get("featurePath") or ""),
                       pretrained=str(trial.config.get("pretrained") or ""), config_file=trial.config_file,
                       overrides=_jsonable(trial.config), gpu_ids=list(trial.gpu_ids))


def failed_record(trial: Trial, error: str) -> TrialRecord:
    """The record of a trial whose worker died before it wrote one (written to its row.json)."""
    record = start_record(trial).replace(status="failed", error=error[:500])
    check_trial_folder(trial.out, *trial.key)
    trial.path.mkdir(parents=True, exist_ok=True)
    write_record(trial.path, record)
    return record


def archive_previous_attempt(trial: Trial) -> int:
    """Move everything in the trial folder (a previous attempt's checkpoint, results, logs, TensorBoard
    events, row.json, an earlier scheduler folder) into a new `attempt-<k>/`, so that nothing of it
    can be mistaken for this attempt's (MMSA's `assert Path(model_save_path).exists()` would
    otherwise pass on the old checkpoint when a retry never beats the trainer's initial best, and
    test it). Earlier `attempt-<k>/` folders and this attempt's scheduler folder stay. A folder
    that is not the project's is refused first (record.check_trial_folder). Returns this attempt's
    number (1 for a fresh folder)."""
    d = check_trial_folder(trial.out, *trial.key)
    if not d.is_dir():
        return 1
    done, entries = [], []
    with os.scandir(d) as it:
        for e in it:
            real_dir = e.is_dir(follow_symlinks=False)
            if real_dir and e.name.startswith(ATTEMPT_PREFIX) and e.name[len(ATTEMPT_PREFIX):].isdigit():
                done.append(int(e.name[len(ATTEMPT_PREFIX):]))
            elif not (real_dir and trial.scheduler_dir and e.name == trial.scheduler_dir):
                entries.append(Path(e.path))
    k = max(done, default=0) + 1
    if not entries:
        return k
    target = d / f"{ATTEMPT_PREFIX}{k}"
    target.mkdir()
    for p in entries:
        p.rename(target / p.name)  # a symlink among them is moved as a link: its target is untouched
    logger.info("%s: the previous attempt's files moved to %s", d, target.name)
    return k + 1


def run_trial(trial: Trial) -> TrialRecord:
    """Run `trial` in this process (MMSA_run for one seed, instrumented); write and return its record.
    A failure is recorded (status 'failed', the traceback in `error.txt`), not raised;
    KeyboardInterrupt is raised."""
    from ..integration import runner
    from .fingerprint import fingerprint

    d = trial.path
    attempt = archive_previous_attempt(trial)
    dirs = {"model_save_dir": d / "models", "res_save_dir": d / "results", "log_dir": d / "logs"}
    for p in dirs.values():
        p.mkdir(parents=True, exist_ok=True)
    ckpt = checkpoint_path(trial)
    history = ckpt.with_name(ckpt.stem + ".history.json")
    record = start_record(trial).replace(attempt=attempt)
    try:
        fp = fingerprint(trial, use_gpu=expects_gpu())
    except Exception as exc:  # e.g. an unreadable feature file: the trial reports it; resume reruns this row
        fp = None
        logger.warning("no fingerprint for %s: %s", d, error_text(exc))
    record = record.replace(fingerprint=fp, started=time.strftime("%Y-%m-%dT%H:%M:%S%z"), t_start=time.time(),
                            environment=environment())
    write_record(d, record)
    report = None
    if trial.study:
        from .study import epoch_reporter

        report = epoch_reporter(trial.study, lambda: probe.key_eval)

    probe = runner.TrialProbe(max_epochs=trial.config.get("max_epochs"), skip_test=trial.skip_test,
                              on_valid=report)  # report may raise optuna.TrialPruned
    t0 = time.perf_counter()
    done: Dict = {}
    try:
        with runner.own_mmsa_handlers(), runner.instrument_trainers(probe):
            results = runner.mmsa_run(trial.model, trial.dataset, config=dict(trial.config),
                                      config_file=trial.config_file or None, seeds=[int(trial.seed)],
                                      gpu_ids=list(trial.gpu_ids), num_workers=trial.num_workers,
                                      verbose_level=trial.verbose_level, **{k: str(v) for k, v in dirs.items()})
        if not results:
            raise RuntimeError("MMSA_run returned no results")
        final = {k: float(v) for k, v in results[-1].items()}
        done.update(status="ok", epochs=probe.epochs, stopped_by=probe.stopped_by,
                    checkpoint=str(ckpt) if ckpt.is_file() else "")
        if trial.skip_test:  # what _run handed back is the best validation result, not a test score
            if ckpt.is_file():  # a search trial is scored: its weights are never tested, so not kept
                ckpt.unlink()
                done["checkpoint"] = ""
        else:
            done["metrics"] = final
            if probe.test_predictions is not None:
                write_predictions(d, probe.test_predictions)
                done["has_predictions"] = True
    except Exception as exc:  # recorded; the sweep goes on
        from .study import is_pruned

        if is_pruned(exc):  # stopped by the study's pruner: neither failed nor a finished result
            done.update(status="pruned", error=error_text(exc), epochs=probe.epochs, stopped_by="pruned")
            with contextlib.suppress(OSError):
                ckpt.unlink(missing_ok=True)
        else:
            done.update(status="failed", error=error_text(exc), deterministic=isinstance(exc, DETERMINISTIC_ERRORS))
            with contextlib.suppress(OSError):
                (d / "error.txt").write_text(traceback.format_exc(), encoding="utf-8")
    finally:
        best = probe.best_valid()
        done.update(wall_time_s=round(time.perf_counter() - t0, 3), t_end=time.time(), key_eval=probe.key_eval,
                    valid_lower_is_better=probe.lower_is_better, valid_metrics=best or {},
                    valid_score=(best or {}).get(probe.key_eval), valid_per_epoch=list(probe.valid),
                    do_test_calls=dict(probe.modes), has_history=history.is_file())
        if probe.args is not None:  # what MMSA's _run really used (after $MMSA_DATASET_ROOT re-rooting)
            a = probe.args
            done.update(feature_path=str(a.get("custom_feature") or a.get("featurePath") or ""),
                        pretrained=str(a.get("pretrained") or "") if a.get("use_bert") else "",
                        early_stop=a.get("early_stop"), config=_jsonable(a))
        done.setdefault("status", "interrupted")  # KeyboardInterrupt: not finished
        if done["status"] == "interrupted":
            done["error"] = "interrupted"
        record = record.replace(**done)
        try:  # as readers will see it (non-finite numbers as None)
            record = TrialRecord.from_json(record.to_json(), source=f"{d}: this trial's own record")
        except RecordError as exc:  # written anyway; readers will find it unreadable and rerun the trial
            logger.error("%s", exc)
        write_record(d, record)
    return record
