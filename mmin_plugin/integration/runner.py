"""Running one `MMSA_run` and getting its numbers back: per-seed results, the trainer's epochs and
validation scores, MMSA's log handlers cleaned up. Every temporary patch of MMSA is a context
manager on `patching.per_thread` / `patching.shared`: trials may run on several threads of one
process, and each sees only its own instrumentation. Design notes: docs/design/experiments.md.
"""
from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections import Counter
from typing import Callable, Dict, List, Optional

from ..constants import LOWER_IS_BETTER
from . import patching

logger = logging.getLogger("MMSA." + __name__)

__all__ = ["own_mmsa_handlers", "capture_results", "TrialProbe", "selection_rule", "instrument_trainers", "epoch_cap",
           "mmsa_run", "capture_predictions", "test_metrics"]


@contextlib.contextmanager
def own_mmsa_handlers():
    """Remove (and close) the handlers each MMSA_run call adds to the 'MMSA' logger (MMSA adds a
    file and a console handler per call, so without this every later line is printed N times)."""
    lg = logging.getLogger("MMSA")
    before = list(lg.handlers)
    try:
        yield
    finally:
        for h in list(lg.handlers):
            if h not in before:
                lg.removeHandler(h)
                with contextlib.suppress(Exception):
                    h.close()


_capturing = threading.local()  # .depth: open capture_results blocks of this thread


class _NoSleep:
    """`MMSA.run`'s view of the `time` module without `sleep` in a thread inside `capture_results`:
    `_run` ends with `time.sleep(1)` (for its optional database's sake), a second of every trial spent
    doing nothing."""

    def __getattr__(self, name):
        return getattr(time, name)

    @staticmethod
    def sleep(seconds) -> None:
        if not getattr(_capturing, "depth", 0):
            time.sleep(seconds)


@contextlib.contextmanager
def capture_results():
    """Collect the result dict of every `MMSA.run._run` call made inside the block (and skip the
    one-second sleep at the end of each, see `_NoSleep`)."""
    import MMSA.run as mrun

    captured: List[Dict] = []

    def wrap(inner):
        def _run(args, *a, **kw):
            result = inner(args, *a, **kw)
            if isinstance(result, dict):
                captured.append({k: v for k, v in result.items() if isinstance(v, (int, float))})
            return result
        return _run

    _capturing.depth = getattr(_capturing, "depth", 0) + 1
    try:
        with patching.per_thread(mrun, "_run", wrap), patching.shared(mrun, "time", _NoSleep()):
            yield captured
    finally:
        _capturing.depth -= 1


def _numbers(result) -> Dict[str, float]:
    return {k: float(v) for k, v in (result or {}).items() if isinstance(v, (int, float))}


class _RecordingLoader:
    """Iterates `loader` like `do_test` does, keeping each batch's sample ids and labels ('M')."""

    def __init__(self, loader):
        self.loader, self.ids, self.labels, self.broken = loader, [], [], False

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        for batch in self.loader:
            try:
                self.ids.extend(str(i) for i in batch["id"])
                self.labels.append(batch["labels"]["M"].detach().cpu().reshape(-1).double().numpy())
            except Exception:  # a batch without ids/labels: no predictions file, never a failed trial
                self.broken = True
            yield batch


def capture_predictions(do_test, model, dataloader, mode, *a, **kw):
    """Run `do_test(model, dataloader, mode, ...)` while recording, per sample, its id, its label
    and the model's output 'M' (a forward hook on `model`, a recording wrapper on the loader).
    Returns (result, {"ids", "labels", "preds"} or None). None (with a warning) when the capture
    does not line up: not one forward call per batch, or a MAE recomputed from the captured
    arrays that differs from the trainer's own (MetricsTop rounds to 4 decimals) by more than 1e-4."""
    import numpy as np

    loader, outs = _RecordingLoader(dataloader), []

    def hook(_module, _inputs, output):
        if isinstance(output, dict) and "M" in output:
            outs.append(output["M"].detach().cpu().reshape(-1).double().numpy())

    if not hasattr(model, "register_forward_hook"):
        return do_test(model, dataloader, mode, *a, **kw), None
    handle = model.register_forward_hook(hook)
    try:
        result = do_test(model, loader, mode, *a, **kw)
    finally:
        handle.remove()
    if loader.broken or len(outs) != len(loader.labels) or not outs:
        logger.warning("test predictions not captured: %d forward call(s) for %d batch(es)", len(outs),
                       len(loader.labels))
        return result, None
    preds, labels = np.concatenate(outs), np.concatenate(loader.labels)
    mae = (result or {}).get("MAE")
    if len(preds) != len(labels) or len(loader.ids) != len(labels) or (
            mae is not None and not abs(float(np.mean(np.abs(preds - labels))) - float(mae)) <= 1e-4):
        logger.warning("test predictions not captured: they do not reproduce the trainer's MAE %s", mae)
        return result, None
    return result, {"ids": np.asarray(loader.ids, dtype=str), "labels": labels, "preds": preds}


def test_metrics(dataset: str):
    """MMSA's own regression metric function for `dataset` (`MetricsTop('regression').getMetics`),
    taking numpy arrays (predictions, labels) instead of tensors."""
    import torch
    from MMSA.utils.metricsTop import MetricsTop

    fn = MetricsTop("regression").getMetics(dataset)

    def metrics(preds, labels) -> Dict[str, float]:
        return {k: float(v) for k, v in fn(torch.as_tensor(preds), torch.as_tensor(labels)).items()}

    return metrics


def selection_rule(trainer, key_eval: str):
    """(lower_is_better, initial best) by which `trainer` keeps its checkpoint: MMSA 2.2.1's own
    trainers minimise only KeyEval 'Loss' and maximise every other key (even MAE), starting from
    1e8 / 0; trainers outside MMSA (MMIN's) minimise the keys in LOWER_IS_BETTER, from no best."""
    if type(trainer).__module__.startswith("MMSA."):
        lower = key_eval == "Loss"
        return lower, (1e8 if lower else 0.0)
    return key_eval in LOWER_IS_BETTER, None


class TrialProbe:
    """Instruments the trainer MMSA builds for one run (every MMSA 2.2.1 trainer runs: train an
    epoch, `do_test(valid, "VAL")`, keep the best checkpoint, `if epochs - best_epoch >= early_stop:
    return`; `_run` then calls `do_test(test, "TEST")` once).

    * epoch cap: after the `max_epochs`-th validation pass inside `do_train`, `args.early_stop` is set
      to 0 (restored when `do_train` returns), so that epoch's checkpoint decision is made first and
      the trainer's own patience test then ends training;
    * records `epochs`, `stopped_by` ('early_stop' / 'max_epochs'), the validation results of every
      epoch (`valid`), the `do_test` calls that ran, by mode (`modes`), and the args the trainer got;
    * `best_valid()` is the epoch whose weights the trainer kept, by the trainer's own rule
      (`selection_rule`; `lower_is_better` says which direction that was); a non-finite score never
      becomes the best;
    * `skip_test=True` (tuning): `do_test(..., mode="TEST")` is NOT run; it returns the best
      validation result instead (the epoch whose checkpoint the trainer kept), so the test split is
      never read and MMSA's `_run` hands back the validation score; otherwise the TEST pass's
      per-sample predictions are kept in `test_predictions` (see `capture_predictions`);
    * `on_valid(epoch, result)` is called after each validation pass (TensorBoard, pruning: an
      exception it raises, e.g. optuna.TrialPruned, ends the run).
    """

    def __init__(self, max_epochs: Optional[int] = None, skip_test: bool = False,
                 on_valid: Optional[Callable[[int, Dict], None]] = None):
        self.max_epochs, self.skip_test, self.on_valid = max_epochs, skip_test, on_valid
        self.epochs, self.stopped_by = 0, None
        self.valid: List[Dict[str, float]] = []
        self.modes: Counter = Counter()
        self.args = None
        self.test_predictions = None  # {"ids", "labels", "preds"} of the TEST pass (capture_predictions)
        self.rule: Optional[tuple] = None

    @property
    def key_eval(self) -> str:
        return str((self.args or {}).get("KeyEval") or "Loss")

    @property
    def lower_is_better(self) -> bool:
        """The direction in which the trainer selected its weights by `key_eval`."""
        return self.rule[0] if self.rule else self.key_eval in LOWER_IS_BETTER

    def best_valid(self) -> Optional[Dict[str, float]]:
        """The validation result of the epoch the trainer kept (a later epoch must beat the best by
        1e-6, and the first the trainer's initial best; non-finite scores are skipped)."""
        key, best = self.key_eval, None
        lower, best_val = self.rule or (self.key_eval in LOWER_IS_BETTER, None)
        for res in self.valid:
            v = res.get(key)
            if v is None or not math.isfinite(v):
                continue
            if best_val is None or (v <= best_val - 1e-6 if lower else v >= best_val + 1e-6):
                best, best_val = res, v
        return best

    def instrument(self, trainer) -> None:
        orig_train, orig_test = trainer.do_train, trainer.do_test
        state = {"training": False}
        self.args = trainer.args
        self.rule = selection_rule(trainer, self.key_eval)

        def do_test(model, dataloader, mode="VAL", *a, **kw):
            tag = str(mode).upper()
            if tag.startswith("TEST") and self.skip_test:
                best = self.best_valid()
                if best is None:
                    raise RuntimeError("tuning: no validation result to report instead of TEST")
                self.modes["TEST (skipped)"] += 1
                return dict(best)
            if tag.startswith("TEST"):
                result, self.test_predictions = capture_predictions(orig_test, model, dataloader, mode, *a, **kw)
            else:
                result = orig_test(model, dataloader, mode, *a, **kw)
            self.modes[tag] += 1
            if state["training"] and tag.startswith("VAL"):
                self.epochs += 1
                self.valid.append(_numbers(result))
                if self.on_valid is not None:
                    self.on_valid(self.epochs, self.valid[-1])
                if self.max_epochs and self.epochs >= self.max_epochs:
                    self.stopped_by = "max_epochs"
                    trainer.args["early_stop"] = 0  # read by the trainer right after the checkpoint decision
            return result

        def do_train(model, dataloader, *a, **kw):
            state["training"] = True
            had, saved = "early_stop" in trainer.args, trainer.args.get("early_stop")
            self.epochs, self.stopped_by, self.valid = 0, "early_stop", []
            try:
                return orig_train(model, dataloader, *a, **kw)
            finally:
                state["training"] = False
                if had:
                    trainer.args["early_stop"] = saved

        trainer.do_train, trainer.do_test = do_train, do_test


@contextlib.contextmanager
def instrument_trainers(probe: TrialProbe):
    """Within the block, every trainer `ATIO.getTrain` builds in this thread is instrumented by `probe`."""
    from MMSA.trains import ATIO

    def wrap(inner):
        def getTrain(self, args):
            trainer = inner(self, args)
            probe.instrument(trainer)
            return trainer
        return getTrain

    with patching.per_thread(ATIO, "getTrain", wrap):
        yield probe


@contextlib.contextmanager
def epoch_cap(max_epochs: Optional[int]):
    """Within the block, trainers MMSA builds stop after at most `max_epochs` epochs (None: no cap);
    yields the `TrialProbe` (`epochs`, `stopped_by`)."""
    with instrument_trainers(TrialProbe(max_epochs)) as probe:
        yield probe


def mmsa_run(model: str, dataset: str, **kwargs) -> List[Dict]:
    """`MMSA_run(model, dataset, **kwargs)`, returning one result dict per seed. A registered dataset's
    spec in `config[datasets.SPEC_KEY]` (how `compare` / `tune` hand it to a trial's process) is
    registered here first and taken out of the config."""
    from MMSA import MMSA_run  # importing MMSA registers MMIN (autoregister.py)

    from .datasets import SPEC_KEY, ensure_dataset

    config = kwargs.get("config")
    if isinstance(config, dict) and SPEC_KEY in config:
        config = dict(config)
        ensure_dataset(config.pop(SPEC_KEY))
        kwargs["config"] = config
    with own_mmsa_handlers(), capture_results() as results:
        MMSA_run(model, dataset, **kwargs)
    return results


def mmsa_config(model: str, dataset: str, config_file: str = "") -> Dict:
    """MMSA's merged regression config of `model` on `dataset` (registered models included), as
    `MMSA_run` would build it from `config_file` (default: MMSA's own file)."""
    from MMSA.config import get_config_regression  # patched by mmin_plugin for registered names

    return dict(get_config_regression(model, dataset, config_file or ""))


def mmsa_config_file(name: str) -> Dict:
    """One of MMSA's bundled config files (`config_regression.json`, `config_tune.json`), parsed."""
    import json
    from pathlib import Path

    import MMSA

    return json.loads((Path(MMSA.__file__).parent / "config" / name).read_text(encoding="utf-8"))


def mmsa_package_dir():
    """The folder MMSA is installed in (its sources, configs and bundled files: the fingerprint
    hashes it)."""
    from pathlib import Path

    import MMSA

    return Path(MMSA.__file__).resolve().parent
