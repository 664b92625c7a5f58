"""`tune`'s search engine: one Optuna study per (model, dataset) in the output folder.

* samplers: `random` = `RandomSampler(seed)`, `optuna` = `TPESampler(seed, constant_liar=True)` (so
  trials asked while others are still running are spread out, not piled on the same guess);
* storage: `JournalStorage` over a file in `--out` (`tune-<model>-<dataset>.optuna.log`); a killed
  `tune --resume` reopens the same study, and optuna-dashboard can show it
  (`optuna-dashboard tune-mmin-mosi.optuna.log`);
* pruning (opt-in): a search trial reports its validation KeyEval after every epoch (through
  `runner.TrialProbe.on_valid`, so for MMIN's trainer and MMSA's alike) to the study, from whatever
  process runs it; `MedianPruner` / `SuccessiveHalvingPruner` decide, and a pruned trial ends with
  `optuna.TrialPruned`, recorded as pruned (neither failed nor finished).

The categorical dimensions of MMSA's tune space are Optuna categoricals over value *indices* (the
values themselves may be lists, which Optuna's categoricals do not hold).
Design notes: docs/design/experiments.md ("tune: the Optuna study").
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Callable, Dict, Optional

from ..errors import MMINConfigError

logger = logging.getLogger("MMSA." + __name__)

__all__ = ["PRUNERS", "SAMPLERS", "journal_path", "open_study", "epoch_reporter", "is_pruned"]

SAMPLERS = ("random", "optuna")
PRUNERS = ("none", "median", "halving")
#: epochs every trial runs before the median pruner may stop it
MEDIAN_WARMUP_EPOCHS = 1
#: finished trials before the median pruner stops any (Optuna: 5; a median of fewer is noise)
MEDIAN_STARTUP_TRIALS = 3


def _optuna():
    try:
        import optuna
    except ImportError as exc:
        raise MMINConfigError("tune: expected the optuna package; found it is not installed "
                              "(pip install -e \".[tune]\")") from exc
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def journal_path(stem: Path) -> Path:
    return Path(f"{stem}.optuna.log")


def _storage(path):
    optuna = _optuna()
    from optuna.storages.journal import JournalFileBackend

    return optuna.storages.JournalStorage(JournalFileBackend(str(path)))


def make_pruner(kind: str):
    optuna = _optuna()
    if kind == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=MEDIAN_STARTUP_TRIALS, n_warmup_steps=MEDIAN_WARMUP_EPOCHS)
    if kind == "halving":
        return optuna.pruners.SuccessiveHalvingPruner()
    if kind == "none":
        return optuna.pruners.NopPruner()
    raise MMINConfigError(f"prune: expected one of {list(PRUNERS)}; found {kind!r}")


def open_study(path: Path, name: str, search: str, seed: int, lower_is_better: bool, prune: str = "none"):
    """The study `name` in the journal file `path` (created, or reopened with its trials)."""
    optuna = _optuna()
    if search == "random":
        sampler = optuna.samplers.RandomSampler(seed=seed)
    elif search == "optuna":
        sampler = optuna.samplers.TPESampler(seed=seed, constant_liar=True)
    else:
        raise MMINConfigError(f"search: expected one of {list(SAMPLERS)}; found {search!r}")
    return optuna.create_study(study_name=name, storage=_storage(path), sampler=sampler, pruner=make_pruner(prune),
                               direction="minimize" if lower_is_better else "maximize", load_if_exists=True)


def epoch_reporter(spec: Dict, key_eval: Callable[[], str]) -> Callable[[int, Dict], None]:
    """In the process that runs a search trial: `report(epoch, valid_result)` sends the epoch's
    validation `key_eval()` to the study `spec` names ({'journal', 'study', 'trial_id', 'prune'}) and
    raises `optuna.TrialPruned` when the pruner says so. Non-finite scores are not reported."""
    optuna = _optuna()
    study = optuna.load_study(study_name=spec["study"], storage=_storage(spec["journal"]),
                              pruner=make_pruner(spec.get("prune") or "none"))
    trial = optuna.trial.Trial(study, int(spec["trial_id"]))

    def report(epoch: int, result: Dict) -> None:
        v = result.get(key_eval())
        if v is None or not math.isfinite(v):
            return
        if int(epoch) not in trial.storage.get_trial(trial._trial_id).intermediate_values:  # a rerun's epochs
            trial.report(float(v), int(epoch))
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned after epoch {epoch} ({key_eval()} {v:.4f})")

    return report


def is_pruned(exc: BaseException) -> bool:
    """Whether `exc` is Optuna's signal that the trial was pruned (without importing Optuna)."""
    return any(c.__name__ == "TrialPruned" and c.__module__.startswith("optuna") for c in type(exc).__mro__)


def study_trial(study, trial_id: int):
    """A FrozenTrial of `study` by its id."""
    return study._storage.get_trial(int(trial_id))


def spec_for(path: Path, study, trial_id: int, prune: str) -> Optional[Dict]:
    """What a search trial needs to report to the study (None without pruning: nothing to report)."""
    if prune == "none":
        return None
    return {"journal": str(path), "study": study.study_name, "trial_id": int(trial_id), "prune": prune}
