"""`compare` (paper Table 1: MMIN vs MMSA's models) and `ablate` (paper Table 2 and design variants):
one trial per (run, dataset, seed) on a backend (serial or Ray), tables rebuilt from the trials'
`row.json`: `<kind>-<dataset>.{csv,md,tex,png}` under `out_dir`, trials under `runs/`.
What each file holds, the epoch cap and the fairness notes: docs/design/experiments.md.
"""
from __future__ import annotations

import datetime as _dt
import logging
import os
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from .. import datasets as _datasets
from ..bounded import UnreadableFile, read_json
from ..constants import DEFAULT_SEEDS
from ..errors import MMINConfigError, MMINDataError
from ..results import rebuild, stats
from ..results.aggregate import CSV_BASE_COLUMNS, read_rows
from ..results.report import render_figure, render_markdown
from ..runs.record import TrialRecord, read_record
from ..runs.sweep import SweepOptions, check_folders, prepare_out, run_trials
from ..runs.trial import Trial
from .variants import ABLATION_VARIANTS, VARIANTS, RunSpec

logger = logging.getLogger("MMSA." + __name__)

__all__ = ["run_comparison", "run_ablation", "ABLATION_VARIANTS", "CSV_BASE_COLUMNS", "split_overrides",
           "render_markdown", "render_figure", "read_rows", "RunSpec", "SweepOptions",
           "config_file_models"]

#: the comparison figure is re-rendered after a trial only if this many seconds passed since the
#: last rendering (and always at the end, also when interrupted)
FIGURE_EVERY_S = 60.0


# --- configuration ----------------------------------------------------------------------------
def split_overrides(overrides: Optional[Dict]) -> tuple:
    """Split `overrides` into (common, {model: {key: value}}); `model.key` keys are scoped."""
    common, scoped = {}, {}
    for k, v in (overrides or {}).items():
        k = str(k)
        if "." in k:
            model, key = k.split(".", 1)
            if not model or not key:
                raise MMINConfigError(f"override {k!r}: expected 'key' or 'model.key'")
            scoped.setdefault(model.lower(), {})[key] = v
        else:
            common[k] = v
    return common, scoped


def _uses_bert(model: str, dataset: str, config: Dict, config_file: Optional[str] = None) -> bool:
    """Whether `model`'s MMSA config (with `config` merged over it) encodes text with a BERT; an
    unknown model is not (MMSA_run then reports it in the trial)."""
    from ..integration.runner import mmsa_config

    try:
        merged = mmsa_config(model, dataset, config_file or "")
    except Exception:
        return bool(config.get("use_bert"))
    merged.update(config)
    return bool(merged.get("use_bert"))


def check_datasets(datasets, feature_path=None, dataset_options: Optional[Dict] = None) -> List[str]:
    """The dataset names, lower case, each known to `mmin_plugin.datasets`. A name MMSA has never heard of
    is registered from `feature_path` (`register_dataset(name, feature_path, **dataset_options)`); so is a
    registered one given a feature path other than its own, or options."""
    names = [datasets] if isinstance(datasets, str) else list(datasets or [])
    names = list(dict.fromkeys(str(d).lower() for d in names))
    if not names:
        raise MMINConfigError(f"dataset: expected one or more of {list(_datasets.names())}; found none")
    for name in names:
        if _datasets.is_builtin(name):
            continue
        spec = _datasets.lookup(name)
        same_file = spec is not None and (feature_path is None or Path(os.path.expanduser(str(feature_path))).resolve()
                                          == Path(spec.feature_path))
        if spec is not None and same_file and not dataset_options:
            continue
        if feature_path is None:
            raise MMINConfigError(f"dataset: expected one of {list(_datasets.names())}, or a new name with its "
                                  f"feature file (--feature-path FILE) to register it from; found {name!r}")
        from ..integration.datasets import register_dataset

        register_dataset(name, feature_path, **(dataset_options or {}))
    return names


def dataset_config(name: str) -> Dict:
    """What a trial's config carries about its dataset: a registered dataset's spec (so that the process
    that runs the trial registers it too; the spec is part of the trial's fingerprint), else nothing."""
    from ..integration.datasets import SPEC_KEY

    spec = None if _datasets.is_builtin(name) else _datasets.lookup(name)
    return {SPEC_KEY: spec.to_dict()} if spec is not None else {}


def check_seeds(seeds) -> List[int]:
    seeds = [int(s) for s in (seeds or [])]
    if not seeds:
        raise MMINConfigError("seeds: expected at least one seed")
    if len(set(seeds)) != len(seeds):
        raise MMINConfigError(f"seeds: expected distinct seeds; found {seeds}")
    return seeds


def check_max_epochs(max_epochs) -> Optional[int]:
    if max_epochs is not None and (int(max_epochs) != max_epochs or max_epochs < 1):
        raise MMINConfigError(f"max_epochs: expected None or a positive integer; found {max_epochs!r}")
    return int(max_epochs) if max_epochs else None


def check_file(path, what: str, error=MMINDataError) -> Optional[str]:
    if path is None:
        return None
    fp = Path(os.path.expanduser(str(path))).resolve()
    if not fp.is_file():
        raise error(f"{what} not found: {fp}")
    return str(fp)


def config_file_models(config_files: Sequence) -> Dict[str, str]:
    """{model: config file} for MMSA config JSON files (`tune`'s output or MMSA's own schema): each
    top-level key other than `datasetCommonParams` names a model the file configures."""
    out = {}
    for f in config_files or []:
        path = check_file(f, "config file", MMINConfigError)
        try:  # bounded: a regular file, at most 16 MiB, nested at most 32 deep, a JSON object
            data = read_json(path, expect=dict)
        except UnreadableFile as exc:
            raise MMINConfigError(f"config file: expected MMSA config JSON; {exc}") from None
        models = [k for k in data if k != "datasetCommonParams" and isinstance(data[k], dict)]
        if not isinstance(data.get("datasetCommonParams"), dict) or not models:
            raise MMINConfigError(f"config file {path}: expected MMSA's schema ({{model: {{commonParams, "
                                  f"datasetParams}}, datasetCommonParams}}); found keys {sorted(data)}")
        for m in models:
            out[m.lower()] = path
    return out


# --- the driver -------------------------------------------------------------------------------
class Session:
    """One `compare` / `ablate` sweep: trials of `specs` x `datasets` x `seeds` under `out_dir`."""

    def __init__(self, kind, specs, datasets, seeds, feature_path=None, pretrained=None, max_epochs=None,
                 out_dir="mmin-results", overrides=None, gpu_ids=(), num_workers=0, verbose_level=0,
                 config_files=(), sweep: Optional[SweepOptions] = None, reference: Optional[str] = None,
                 primary: str = stats.PRIMARY, dataset_options: Optional[Dict] = None):
        from ..integration.registry import register

        register()  # MMIN registered and MMSA's compatibility layer applied now (idempotent)

        self.kind, self.specs = kind, list(specs)
        self.reference = self._reference(reference)
        self.datasets = check_datasets(datasets, feature_path, dataset_options)
        self.seeds = check_seeds(seeds)
        self.max_epochs = check_max_epochs(max_epochs)
        self.feature_path = check_file(feature_path, "feature file")
        self.pretrained = str(pretrained) if pretrained else None
        self.overrides = dict(overrides or {})
        self.common, self.scoped = split_overrides(self.overrides)
        self.config_files = config_file_models(config_files)
        self.sweep = sweep or SweepOptions()
        models = {s.model for s in self.specs}
        for m in sorted(set(self.scoped) - models):
            logger.warning("[%s] overrides for '%s' ignored: no such model in this run (%s)", kind, m, sorted(models))
        for m in sorted(set(self.config_files) - models):
            logger.warning("[%s] config file %s for '%s' ignored: no such model in this run", kind,
                           self.config_files[m], m)
        self.gpu_ids, self.num_workers, self.verbose_level = list(gpu_ids or []), int(num_workers or 0), verbose_level
        self.out = Path(out_dir).resolve()
        self._figure_time: Dict[str, float] = {}
        self._warned = set()
        self.plan = rebuild.Plan(kind, tuple(rebuild.RunInfo(s.name, s.model, s.label, s.ablation) for s in self.specs),
                                 self.reference, str(primary or stats.PRIMARY),
                                 {"seeds": self.seeds, "feature_path": self.feature_path, "max_epochs": self.max_epochs,
                                  "pretrained": self.pretrained, "overrides": self.overrides})

    def _reference(self, name: Optional[str]) -> str:
        """The run every other is compared with: `name` (a run name, or for `ablate` a variant name)
        or the first run."""
        if name is None:
            return self.specs[0].name
        for spec in self.specs:
            if str(name).lower() in (spec.name, spec.name.removeprefix("mmin-")):
                return spec.name
        raise MMINConfigError(f"reference: expected one of the runs {[s.name for s in self.specs]}; found {name!r}")

    def config_for(self, spec: RunSpec, dataset: str) -> Dict:
        """featurePath/pretrained/max_epochs < common overrides < model-scoped overrides < the run's own."""
        cfg = dataset_config(dataset)
        if self.feature_path:
            cfg["featurePath"] = self.feature_path
        if self.max_epochs:
            cfg["max_epochs"] = self.max_epochs
        user = {**self.common, **self.scoped.get(spec.model, {})}
        cfg.update(user)
        for key in sorted(set(spec.config) & set(user)):
            if (spec.name, key) not in self._warned:
                self._warned.add((spec.name, key))
                logger.warning("[%s] override '%s' replaced by run %s's own value", self.kind, key, spec.name)
        cfg.update(spec.config)
        if (self.pretrained and "pretrained" not in user
                and _uses_bert(spec.model, dataset, cfg, self.config_files.get(spec.model))):
            cfg["pretrained"] = self.pretrained
        return cfg

    def trials(self) -> List[Trial]:
        return [Trial(out=str(self.out), run=spec.name, model=spec.model, dataset=ds, seed=seed,
                      config=self.config_for(spec, ds), label=spec.label, config_file=self.config_files.get(spec.model),
                      gpu_ids=self.gpu_ids, num_workers=self.num_workers, verbose_level=self.verbose_level)
                for ds in self.datasets for spec in self.specs for seed in self.seeds]

    # -- tables, rebuilt from the row.json files ---------------------------------------------------
    def rows(self, dataset: str) -> List[TrialRecord]:
        """The records of this sweep's finished or failed trials on `dataset` (an unreadable row is
        logged and left out)."""
        out = []
        for spec in self.specs:
            for seed in self.seeds:
                rec, problem = read_record(self.out, spec.name, dataset, seed)
                if problem:
                    logger.warning("[%s] %s; left out of the tables", self.kind, problem)
                if rec is not None and rec.status in ("ok", "failed"):
                    out.append(rec)
        return out

    def statistics(self, dataset: str):
        """`stats.ComparisonTable` of the saved test predictions of the finished trials, or None
        (no predictions of the reference yet, or predictions that do not line up: logged)."""
        return rebuild.statistics(self.out, self.rows(dataset), self.plan, dataset)

    def info(self, dataset: str) -> Dict:
        return {"dataset": dataset, "seeds": self.seeds, "feature_path": self.feature_path,
                "max_epochs": self.max_epochs, "pretrained": self.pretrained, "overrides": self.overrides,
                "n_planned": len(self.specs) * len(self.seeds), "backend": self.sweep.backend,
                "updated": _dt.datetime.now().isoformat(timespec="seconds")}

    def paths(self, dataset: str) -> Dict[str, Path]:
        return {e: self.out / f"{self.kind}-{dataset}.{e}" for e in ("csv", "md", "tex", "png")}

    def write(self, dataset: str, figure: bool = True) -> str:
        """Rebuild the tables and the statistics (results/rebuild.py, as `report OUT` does); the figure
        only if `figure`."""
        rows = self.rows(dataset)
        if figure:
            self._figure_time[dataset] = time.monotonic()
        paths = rebuild.write_tables(self.out, self.plan, dataset, rows, self.statistics(dataset), self.info(dataset),
                                     figure=figure)
        return paths["md"].read_text(encoding="utf-8")

    def _after_trial(self, trial: Trial, row: Dict) -> None:
        last = self._figure_time.get(trial.dataset, 0.0)
        self.write(trial.dataset, figure=time.monotonic() - last >= FIGURE_EVERY_S)

    def run(self) -> List[Dict]:
        trials = self.trials()
        lock = prepare_out(self.out, self.sweep.resume, self.sweep.overwrite)
        try:
            check_folders(trials)  # a symlinked trial folder: refused before any table is written
            rebuild.write_plan(self.out, self.plan)  # lets `report OUT` lay out the same tables later
            for ds in self.datasets:
                self.write(ds, figure=False)
                self._figure_time[ds] = time.monotonic()
            try:
                rows = run_trials(trials, self.sweep, desc=f"{self.kind} {' '.join(self.datasets)}",
                                  on_row=self._after_trial)
            finally:  # also on KeyboardInterrupt: the files show every finished trial
                mds = [self.write(ds) for ds in self.datasets]
        finally:
            lock.release()
        for ds, md in zip(self.datasets, mds):
            p = self.paths(ds)
            print()
            print(md)
            print("written: " + "\n         ".join(str(p[e]) for e in ("md", "csv", "tex", "png")), flush=True)
        return rows


def run_comparison(models=("mmin", "misa", "mult"), dataset="mosi", seeds=DEFAULT_SEEDS, feature_path=None,
                   pretrained=None, max_epochs=None, out_dir="mmin-results", overrides=None, gpu_ids=(),
                   num_workers=0, verbose_level=0, config_files=(), sweep: Optional[SweepOptions] = None,
                   reference: Optional[str] = None, primary: str = stats.PRIMARY,
                   dataset_options: Optional[Dict] = None) -> List[Dict]:
    """Train and test every model of `models` (MMIN or any MMSA model name) with `MMSA_run`, one trial
    per (model, dataset, seed) on the same feature file and seeds. `dataset`: a name or a list;
    `overrides` keys `model.key` apply to one model; `config_files`: MMSA config JSONs (e.g. `tune`'s),
    each used for the models it configures; `sweep`: backend, resume/overwrite, retries;
    `reference`: the model every other is compared with (default: the first); a dataset MMSA does not know
    is registered from `feature_path` with `dataset_options` (`register_dataset`'s keywords).
    Writes `compare-<dataset>.{csv,md,tex,png}` under `out_dir`; returns the per-trial rows."""
    names = list(dict.fromkeys(str(m).lower() for m in models or []))
    if not names:
        raise MMINConfigError("models: expected at least one model name")
    specs = [RunSpec(name=m, model=m, label=m) for m in names]
    return Session("compare", specs, dataset, seeds, feature_path, pretrained, max_epochs, out_dir, overrides,
                   gpu_ids, num_workers, verbose_level, config_files, sweep, reference, primary, dataset_options).run()


def ablation_specs(variants=None) -> List[RunSpec]:
    """RunSpecs of `variants` (names in `variants.VARIANTS`; default: paper Table 2's nine)."""
    chosen = list(variants) if variants else [name for name, _, _ in ABLATION_VARIANTS]
    bad = [v for v in chosen if v not in VARIANTS]
    if bad:
        raise MMINConfigError(f"variants: unknown {bad}; expected a subset of {list(VARIANTS)}")
    return [VARIANTS[v].spec() for v in chosen]


def run_ablation(dataset="mosi", seeds=DEFAULT_SEEDS, feature_path=None, pretrained=None, max_epochs=None,
                 out_dir="mmin-results", overrides=None, gpu_ids=(), num_workers=0, verbose_level=0,
                 variants=None, config_files=(), sweep: Optional[SweepOptions] = None,
                 reference: Optional[str] = None, primary: str = stats.PRIMARY,
                 dataset_options: Optional[Dict] = None) -> List[Dict]:
    """Full MMIN and the Table 2 variants (or the named `variants`, design variants included), as
    `run_comparison` (`reference`: a variant name, default the first);
    writes `ablation-<dataset>.{csv,md,tex,png}` under `out_dir`."""
    return Session("ablation", ablation_specs(variants), dataset, seeds, feature_path, pretrained, max_epochs,
                   out_dir, overrides, gpu_ids, num_workers, verbose_level, config_files, sweep, reference,
                   primary, dataset_options).run()
