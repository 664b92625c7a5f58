"""`compare` (paper Table 1: MMIN vs MMSA's models) and `ablate` (paper Table 2 and design variants)
through `MMSA_run`, on the same data and seeds. Outputs under `out_dir`: `<kind>-<dataset>.{csv,md,tex,png}`,
MMIN's `curves-<run>-<dataset>-seed<seed>.png` and `runs/<run>/`. What each file holds, the epoch
cap and the fairness notes: docs/design/experiments.md.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import json
import logging
import os
import shutil
import time
import traceback
from pathlib import Path
from typing import Dict, List, Optional

from ..atomic import atomic_write_bytes, atomic_write_text
from ..constants import DATASETS, DEFAULT_SEEDS
from ..errors import MMINConfigError, MMINDataError
from . import aggregate, report
from .aggregate import CSV_BASE_COLUMNS, read_rows
from .report import plot_training_curves, render_figure, render_markdown
from .variants import ABLATION_VARIANTS, VARIANTS, RunSpec

logger = logging.getLogger("MMSA." + __name__)

__all__ = ["run_comparison", "run_ablation", "ABLATION_VARIANTS", "CSV_BASE_COLUMNS", "split_overrides",
           "render_markdown", "render_figure", "plot_training_curves", "read_rows", "RunSpec"]

#: the comparison figure is re-rendered after a seed only if this many seconds passed since the
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


def _uses_bert(model: str, dataset: str, config: Dict) -> bool:
    """Whether `model`'s MMSA config (with `config` merged over it) encodes text with a BERT."""
    from MMSA.config import get_config_regression  # patched by mmin_plugin for registered names

    merged = dict(get_config_regression(model, dataset))
    merged.update(config)
    return bool(merged.get("use_bert"))


def _error_text(exc: BaseException) -> str:
    msg = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {msg}"[:500] if msg else type(exc).__name__


def check_dataset(dataset) -> str:
    dataset = str(dataset).lower()
    if dataset not in DATASETS:
        raise MMINConfigError(f"dataset: expected one of {list(DATASETS)}; found {dataset!r}")
    return dataset


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


def check_feature_path(feature_path) -> Optional[str]:
    if feature_path is None:
        return None
    fp = Path(os.path.expanduser(str(feature_path))).resolve()
    if not fp.is_file():
        raise MMINDataError(f"feature file not found: {fp}")
    return str(fp)


# --- the driver -------------------------------------------------------------------------------
class _Session:
    def __init__(self, kind, specs, dataset, seeds, feature_path, pretrained, max_epochs, out_dir, overrides,
                 gpu_ids, num_workers, verbose_level):
        import mmin_plugin  # noqa: F401  (MMIN registered, compatibility layer applied)

        self.kind, self.specs = kind, list(specs)
        self.dataset, self.seeds = check_dataset(dataset), check_seeds(seeds)
        self.max_epochs = check_max_epochs(max_epochs)
        self.feature_path, self.pretrained = check_feature_path(feature_path), (str(pretrained) if pretrained else None)
        self.overrides = dict(overrides or {})
        self.common, self.scoped = split_overrides(self.overrides)
        models = {s.model for s in self.specs}
        for m in sorted(set(self.scoped) - models):
            logger.warning("[%s] overrides for '%s' ignored: no such model in this run (%s)", kind, m, sorted(models))
        self.gpu_ids, self.num_workers, self.verbose_level = list(gpu_ids or []), int(num_workers or 0), verbose_level
        self.out = Path(out_dir).resolve()
        self.out.mkdir(parents=True, exist_ok=True)
        stem = f"{kind}-{self.dataset}"
        self.csv_path, self.md_path, self.tex_path, self.png_path = (
            self.out / f"{stem}.{e}" for e in ("csv", "md", "tex", "png"))
        if self.csv_path.exists():  # a previous run's numbers are kept, not silently overwritten
            shutil.copyfile(self.csv_path, self.out / f"{stem}.prev.csv")
        self.rows: List[Dict] = []
        self._figure_rows = -1  # number of rows the PNG on disk shows
        self._figure_time = time.monotonic()

    def _config_for(self, spec: RunSpec) -> Dict:
        """featurePath/pretrained/max_epochs < common overrides < model-scoped overrides < the run's own."""
        cfg = {}
        if self.feature_path:
            cfg["featurePath"] = self.feature_path
        if self.max_epochs:
            cfg["max_epochs"] = self.max_epochs
        user = {**self.common, **self.scoped.get(spec.model, {})}
        cfg.update(user)
        for key in sorted(set(spec.config) & set(user)):
            logger.warning("[%s] override '%s' replaced by run %s's own value", self.kind, key, spec.name)
        cfg.update(spec.config)
        if self.pretrained and "pretrained" not in user and _uses_bert(spec.model, self.dataset, cfg):
            cfg["pretrained"] = self.pretrained
        return cfg

    def run_one(self, spec: RunSpec, seed: int) -> Dict:
        from . import runner

        run_dir = self.out / "runs" / spec.name
        dirs = {"model_save_dir": run_dir / "models", "res_save_dir": run_dir / "results", "log_dir": run_dir / "logs"}
        ckpt = dirs["model_save_dir"] / f"{spec.model.lower()}-{self.dataset}.pth"
        history = ckpt.with_name(ckpt.stem + ".history.json")
        row = {"run": spec.name, "model": spec.model, "ablation": ",".join(spec.ablation or []),
               "dataset": self.dataset, "seed": seed, "status": "failed", "error": "", "wall_time_s": 0.0,
               "epochs": None, "stopped_by": None, "max_epochs": self.max_epochs, "early_stop": None,
               "feature_path": self.feature_path or "", "pretrained": "", "checkpoint": "", "metrics": {}}
        t0 = time.perf_counter()
        for d in dirs.values():
            d.mkdir(parents=True, exist_ok=True)
        probe = runner.TrialProbe()
        try:
            cfg = self._config_for(spec)
            row["pretrained"], row["max_epochs"] = cfg.get("pretrained", ""), cfg.get("max_epochs")
            probe.max_epochs = cfg.get("max_epochs")
            history.unlink(missing_ok=True)  # never attribute a previous seed's curves to this one
            with runner.own_mmsa_handlers(), runner.instrument_trainers(probe):
                results = runner.mmsa_run(spec.model, self.dataset, config=cfg, seeds=[seed],
                                          gpu_ids=list(self.gpu_ids), num_workers=self.num_workers,
                                          verbose_level=self.verbose_level, **{k: str(v) for k, v in dirs.items()})
            if not results:
                raise RuntimeError("MMSA_run returned no test results")
            row.update(status="ok", metrics={k: float(v) for k, v in results[-1].items()},
                       epochs=probe.epochs, stopped_by=probe.stopped_by,
                       checkpoint=str(ckpt) if ckpt.is_file() else "")
        except Exception as exc:  # one model's failure must not lose the others' results
            row["error"] = _error_text(exc)
            with contextlib.suppress(OSError):
                (run_dir / f"error-seed{seed}.txt").write_text(traceback.format_exc(), encoding="utf-8")
        if probe.args is not None:  # what MMSA's _run really used (after $MMSA_DATASET_ROOT re-rooting)
            a = probe.args
            row["feature_path"] = str(a.get("custom_feature") or a.get("featurePath") or "")
            row["pretrained"] = str(a.get("pretrained") or "") if a.get("use_bert") else ""
            row["early_stop"] = a.get("early_stop")
        row["wall_time_s"] = round(time.perf_counter() - t0, 3)
        if history.is_file():
            self._curves(spec, seed, history)
        return row

    def _curves(self, spec: RunSpec, seed: int, history_path: Path) -> None:
        try:
            kept = self.out / "runs" / spec.name / f"history-{self.dataset}-seed{seed}.json"
            shutil.copyfile(history_path, kept)
            hist = json.loads(kept.read_text())
            if hist:
                png = plot_training_curves(hist, f"{spec.label} on {self.dataset.upper()}, seed {seed}: "
                                                 "training curves (MMIN trainer history)")
                atomic_write_bytes(self.out / f"curves-{spec.name}-{self.dataset}-seed{seed}.png", png)
        except Exception as exc:  # the figure is a convenience; never lose a result over it
            logger.warning("[%s] training-curve figure for %s seed %s failed: %s", self.kind, spec.name, seed,
                           _error_text(exc))

    def info(self) -> Dict:
        return {"dataset": self.dataset, "seeds": self.seeds, "feature_path": self.feature_path,
                "max_epochs": self.max_epochs, "pretrained": self.pretrained, "overrides": self.overrides,
                "n_planned": len(self.specs) * len(self.seeds),
                "updated": _dt.datetime.now().isoformat(timespec="seconds")}

    def write(self, figure=True) -> str:
        aggregate.write_csv(self.rows, self.csv_path)
        md = render_markdown(self.rows, self.specs, self.kind, self.info())
        atomic_write_text(self.md_path, md)
        atomic_write_text(self.tex_path, report.render_latex(self.rows, self.specs, self.kind, self.dataset))
        if figure and self._figure_rows != len(self.rows):
            self._figure_rows, self._figure_time = len(self.rows), time.monotonic()
            try:
                atomic_write_bytes(self.png_path, render_figure(self.rows, self.specs, self.kind, self.dataset))
            except Exception as exc:
                logger.warning("[%s] figure failed: %s", self.kind, _error_text(exc))
        return md

    def _progress(self, i, total, spec, seed, row=None) -> None:
        head = f"[{self.kind} {self.dataset}] {i}/{total} {spec.label} seed {seed}:"
        if row is None:
            print(f"{head} running", flush=True)
        elif row["status"] == "ok":
            m = row["metrics"]
            brief = " ".join(f"{k} {m[k]:.4f}" for k in ("MAE", "Corr") if k in m)
            print(f"{head} ok in {row['wall_time_s']:.1f} s, {row['epochs']} epoch(s) (stopped by "
                  f"{row['stopped_by']}), {brief}", flush=True)
        else:
            print(f"{head} FAILED after {row['wall_time_s']:.1f} s: {row['error']}", flush=True)

    def run(self) -> List[Dict]:
        total = len(self.specs) * len(self.seeds)
        self.write(figure=False)
        i = 0
        try:
            for spec in self.specs:
                for seed in self.seeds:
                    i += 1
                    self._progress(i, total, spec, seed)
                    row = self.run_one(spec, seed)
                    self.rows.append(row)
                    self._progress(i, total, spec, seed, row)
                    self.write(figure=time.monotonic() - self._figure_time >= FIGURE_EVERY_S)
        finally:  # also on KeyboardInterrupt: the files show every finished seed
            md = self.write()
        print()
        print(md)
        print(f"written: {self.md_path}\n         {self.csv_path}\n         {self.tex_path}\n         {self.png_path}",
              flush=True)
        return self.rows


def run_comparison(models=("mmin", "misa", "mult"), dataset="mosi", seeds=DEFAULT_SEEDS, feature_path=None,
                   pretrained=None, max_epochs=None, out_dir="mmin-results", overrides=None, gpu_ids=(),
                   num_workers=0, verbose_level=0) -> List[Dict]:
    """Train and test every model of `models` (MMIN or any MMSA model name) with `MMSA_run`, one call
    per seed, on the same feature file and seeds; `overrides` keys `model.key` apply to one model.
    Writes `compare-<dataset>.{csv,md,tex,png}` under `out_dir`; returns the per-seed rows."""
    names = list(dict.fromkeys(str(m).lower() for m in models or []))
    if not names:
        raise MMINConfigError("models: expected at least one model name")
    specs = [RunSpec(name=m, model=m, label=m) for m in names]
    return _Session("compare", specs, dataset, seeds, feature_path, pretrained, max_epochs, out_dir, overrides,
                    gpu_ids, num_workers, verbose_level).run()


def ablation_specs(variants=None) -> List[RunSpec]:
    """RunSpecs of `variants` (names in `variants.VARIANTS`; default: paper Table 2's nine)."""
    chosen = list(variants) if variants else [name for name, _, _ in ABLATION_VARIANTS]
    bad = [v for v in chosen if v not in VARIANTS]
    if bad:
        raise MMINConfigError(f"variants: unknown {bad}; expected a subset of {list(VARIANTS)}")
    return [RunSpec(name=f"mmin-{v}", model="mmin", label=VARIANTS[v].label, config=dict(VARIANTS[v].config),
                    ablation=VARIANTS[v].ablation) for v in chosen]


def run_ablation(dataset="mosi", seeds=DEFAULT_SEEDS, feature_path=None, pretrained=None, max_epochs=None,
                 out_dir="mmin-results", overrides=None, gpu_ids=(), num_workers=0, verbose_level=0,
                 variants=None) -> List[Dict]:
    """Full MMIN and the Table 2 variants (or the named `variants`, design variants included), as
    `run_comparison`; writes `ablation-<dataset>.{csv,md,tex,png}` under `out_dir`."""
    specs = ablation_specs(variants)
    return _Session("ablation", specs, dataset, seeds, feature_path, pretrained, max_epochs, out_dir, overrides,
                    gpu_ids, num_workers, verbose_level).run()
