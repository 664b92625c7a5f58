"""Tables and figures rebuilt from finished trials, training nothing: from a `compare` / `ablate`
output folder (its trial records and saved predictions), or from predictions made anywhere (a spec
naming `.npz` files). Imports neither torch nor MMSA.

A folder's plan (`report-plan.json`, written by compare/ablate: kind, runs in order with model,
label and ablation, reference, primary metric) says how to lay the tables out; without one (a
folder from before it existed) the runs are taken from the trial records in name order, the kind
from the records (every run MMIN with a name `mmin-<variant>`: ablation) and the reference is the
first run unless named. Paths always come from the trial identities (`runs.record.trial_dir`),
never from a file's contents.

The spec of `from_predictions` (a JSON object, read bounded):
`{"dataset": "mosi", "reference": "<run>", "runs": {"<run>": {"<seed>": "<file.npz>", ...}, ...}}`;
each file holds `ids`, `labels`, `preds` (the `predictions.npz` format); relative paths are taken
from the spec's folder.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import logging
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from .. import datasets
from ..atomic import atomic_write_bytes, atomic_write_text
from ..bounded import UnreadableFile, read_json
from ..errors import MMINConfigError, MMINDataError
from ..runs.record import TrialRecord, check_name, load_predictions_file, read_predictions
from . import aggregate, report, stats

logger = logging.getLogger("MMSA." + __name__)

__all__ = ["RunInfo", "Plan", "PLAN_FILE", "write_plan", "read_plan", "write_tables", "rebuild_folder",
           "read_spec", "from_predictions", "statistics"]

PLAN_FILE = "report-plan.json"
KINDS = ("compare", "ablation")
#: bounds of a spec / plan file (a few KB in practice)
MAX_SPEC_BYTES = 1 << 20


@dataclasses.dataclass(frozen=True)
class RunInfo:
    """A row of a table: `name` (the run), the MMSA `model`, the `label` shown, MMIN's `ablation`
    list of an ablation variant (None otherwise). `experiments.variants.RunSpec` has the same fields."""

    name: str
    model: str
    label: str
    ablation: Optional[List[str]] = None


@dataclasses.dataclass(frozen=True)
class Plan:
    """How a folder's tables are laid out: `kind` ('compare' or 'ablation'), `runs` in order, the
    `reference` run, the `primary` metric."""

    kind: str
    runs: Tuple[RunInfo, ...]
    reference: str
    primary: str = stats.PRIMARY
    #: the sweep's settings shown in the markdown: seeds (planned), feature_path, max_epochs,
    #: pretrained, overrides (as the user gave them)
    settings: Dict = dataclasses.field(default_factory=dict)

    def to_json(self) -> Dict:
        return {"kind": self.kind, "reference": self.reference, "primary": self.primary,
                "runs": [dataclasses.asdict(r) for r in self.runs], "settings": self.settings}


def write_plan(out, plan: Plan) -> None:
    import json

    atomic_write_text(Path(out) / PLAN_FILE, json.dumps(plan.to_json(), indent=1, default=str))


def _str(v, what: str, source: str) -> str:
    if not isinstance(v, str) or not v or len(v) > 200:
        raise MMINDataError(f"{source}: {what}: expected a non-empty string; found {str(v)[:80]!r}")
    return v


def read_plan(out) -> Optional[Plan]:
    """The folder's plan, or None if it has none; MMINDataError if it is unreadable or malformed."""
    path = Path(out) / PLAN_FILE
    try:
        data = read_json(path, MAX_SPEC_BYTES, 8, root=out, expect=dict)
    except FileNotFoundError:
        return None
    src = str(path)
    kind = data.get("kind")
    if kind not in KINDS:
        raise MMINDataError(f"{src}: kind: expected one of {list(KINDS)}; found {str(kind)[:40]!r}")
    runs = data.get("runs")
    if not isinstance(runs, list) or not runs:
        raise MMINDataError(f"{src}: runs: expected a non-empty list; found {type(runs).__name__}")
    infos = []
    for i, r in enumerate(runs):
        if not isinstance(r, dict):
            raise MMINDataError(f"{src}: runs[{i}]: expected an object; found {type(r).__name__}")
        abl = r.get("ablation")
        if abl is not None and not (isinstance(abl, list) and all(isinstance(a, str) for a in abl)):
            raise MMINDataError(f"{src}: runs[{i}].ablation: expected null or a list of strings; found {abl!r:.80}")
        infos.append(RunInfo(check_name(_str(r.get("name"), f"runs[{i}].name", src), f"{src}: runs[{i}].name"),
                             _str(r.get("model"), f"runs[{i}].model", src),
                             _str(r.get("label"), f"runs[{i}].label", src), abl))
    ref = _str(data.get("reference"), "reference", src)
    if ref not in [r.name for r in infos]:
        raise MMINDataError(f"{src}: reference: expected one of the runs {[r.name for r in infos]}; found {ref!r}")
    return Plan(kind, tuple(infos), ref, _str(data.get("primary", stats.PRIMARY), "primary", src),
                _settings(data.get("settings", {}), src))


_SETTINGS = {"seeds": list, "feature_path": (str, type(None)), "max_epochs": (int, type(None)),
             "pretrained": (str, type(None)), "overrides": dict}


def _settings(v, src: str) -> Dict:
    """A plan's `settings`, each key of `_SETTINGS` checked by type (shown only, never used as a path)."""
    if not isinstance(v, dict):
        raise MMINDataError(f"{src}: settings: expected an object; found {type(v).__name__}")
    out = {}
    for k, tp in _SETTINGS.items():
        if k in v:
            if not isinstance(v[k], tp) or isinstance(v[k], bool):
                raise MMINDataError(f"{src}: settings.{k}: expected {tp}; found {str(v[k])[:60]!r}")
            out[k] = v[k]
    if not all(isinstance(x, int) and not isinstance(x, bool) for x in out.get("seeds", [])):
        raise MMINDataError(f"{src}: settings.seeds: expected a list of integers")
    return out


def _inferred_plan(records: Sequence[TrialRecord], reference: Optional[str]) -> Plan:
    names = sorted({r.run for r in records})
    first = {}
    for r in records:
        first.setdefault(r.run, r)
    ablation = all(first[n].model == "mmin" and n.startswith("mmin-") for n in names)
    runs = tuple(RunInfo(n, first[n].model, first[n].label or n,
                         ([a for a in first[n].ablation.split(",") if a] if ablation else None)) for n in names)
    return Plan("ablation" if ablation else "compare", runs, reference or names[0])


def _choose(plan: Plan, reference: Optional[str], primary: Optional[str]) -> Plan:
    if reference is not None:
        match = [r.name for r in plan.runs if reference.lower() in (r.name, r.name.removeprefix("mmin-"))]
        if not match:
            raise MMINConfigError(f"reference: expected one of the runs {[r.name for r in plan.runs]}; "
                                  f"found {reference!r}")
        plan = dataclasses.replace(plan, reference=match[0])
    return dataclasses.replace(plan, primary=primary) if primary else plan


# --- statistics from a folder -------------------------------------------------------------------
def statistics(out, records: Sequence[TrialRecord], plan: Plan, dataset: str) -> Optional[stats.ComparisonTable]:
    """The ComparisonTable of the finished trials' saved predictions, or None (no predictions of the
    reference or of any other run yet; predictions that do not line up are logged)."""
    data: Dict[str, Dict[int, Dict]] = {}
    for rec in records:
        if rec.status == "ok" and rec.has_predictions:
            pred = read_predictions(out, rec.run, dataset, rec.seed)
            if pred is not None:
                data.setdefault(rec.run, {})[rec.seed] = pred.as_dict()
    if not data.get(plan.reference) or len(data) < 2:
        return None
    # the seeds every run with a finished trial finished: runs without predictions for one of them
    # are left out of the statistics rather than shrinking every comparison
    runs = [r.name for r in plan.runs if r.name in data]
    try:
        return stats.compare_runs(data, plan.reference, dataset, plan.primary, runs=runs)
    except MMINDataError as exc:
        logger.warning("[%s] no statistics for %s: %s", plan.kind, dataset, exc)
        return None


def _paths(out, kind: str, dataset: str) -> Dict[str, Path]:
    return {e: Path(out) / f"{kind}-{dataset}.{e}" for e in ("csv", "md", "tex", "png")}


def write_tables(out, plan: Plan, dataset: str, records: Sequence, table: Optional[stats.ComparisonTable],
                 info: Dict, figure: bool = True, detect: Optional[float] = None) -> Dict[str, Path]:
    """`<kind>-<dataset>.{csv,md,tex,png}` under `out` from `records` (TrialRecords) and `table`; the
    PNG only if `figure`. Returns the paths written."""
    p = _paths(out, plan.kind, dataset)
    specs = list(plan.runs)
    summary = aggregate.summarize(records, [s.name for s in specs], None if table is None else table.seeds)
    aggregate.write_csv(records, p["csv"], table)
    md = report.render_markdown(records, specs, plan.kind, info, summary, table, detect)
    atomic_write_text(p["md"], md)
    atomic_write_text(p["tex"], report.render_latex(records, specs, plan.kind, dataset, summary, table))
    written = {k: v for k, v in p.items() if k != "png"}
    if figure:
        try:
            atomic_write_bytes(p["png"], report.render_figure(records, specs, plan.kind, dataset, summary, table))
            written["png"] = p["png"]
        except Exception as exc:  # the figure is a convenience; never lose a table over it
            logger.warning("[%s] figure for %s failed: %s: %s", plan.kind, dataset, type(exc).__name__, exc)
    return written


def _now() -> str:
    return _dt.datetime.now().isoformat(timespec="seconds")


def rebuild_folder(out, reference: Optional[str] = None, primary: Optional[str] = None,
                   detect: Optional[float] = None) -> List[Path]:
    """Every table and figure of a compare/ablate folder `out`, from its records and predictions."""
    out = Path(out)
    if not (out / "runs").is_dir():
        raise MMINDataError(f"{out}: expected a compare/ablate output folder (with runs/<run>/<dataset>/seed<seed>/); "
                            "found no runs/ folder")
    records = [r for r in aggregate.rows_from_trial_dirs(out) if r.status in ("ok", "failed") and r.kind == "train"]
    if not records:
        raise MMINDataError(f"{out}: expected finished trials (runs/<run>/<dataset>/seed<seed>/row.json); found none")
    plan = _choose(read_plan(out) or _inferred_plan(records, reference), reference, primary)
    known = {r.name for r in plan.runs}
    written = []
    for dataset in sorted({r.dataset for r in records}):
        recs = [r for r in records if r.dataset == dataset and r.run in known]
        order = {r.name: i for i, r in enumerate(plan.runs)}
        recs.sort(key=lambda r: (order[r.run], r.seed))
        got = plan.settings
        seeds = got.get("seeds") or sorted({r.seed for r in recs})
        info = {"dataset": dataset, "seeds": seeds, "n_planned": len(plan.runs) * len(seeds), "updated": _now(),
                "feature_path": got.get("feature_path", next((r.feature_path for r in recs if r.feature_path), "")),
                "max_epochs": got.get("max_epochs", next((r.max_epochs for r in recs if r.max_epochs), None)),
                "pretrained": got.get("pretrained", next((r.pretrained for r in recs if r.pretrained), "")),
                "overrides": got.get("overrides", {}),
                "source": f"rebuilt from the trial records and saved predictions under {out} (nothing trained)"}
        table = statistics(out, recs, plan, dataset)
        written += list(write_tables(out, plan, dataset, recs, table, info, detect=detect).values())
    return written


# --- statistics from predictions made anywhere -----------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Spec:
    dataset: str
    reference: str
    files: Dict[str, Dict[int, Path]]


def read_spec(path) -> Spec:
    """The `--from-predictions` spec (module docstring), checked; MMINDataError naming what is wrong."""
    path = Path(path)
    src = str(path)
    try:
        data = read_json(path, MAX_SPEC_BYTES, 8, expect=dict)
    except FileNotFoundError:
        raise MMINDataError(f"{src}: no such file") from None
    except UnreadableFile as exc:
        raise MMINDataError(str(exc)) from None
    dataset = data.get("dataset")
    if not isinstance(dataset, str) or datasets.lookup(dataset) is None:
        raise MMINDataError(f"{src}: dataset: expected one of {list(datasets.names())}; found {str(dataset)[:40]!r}")
    runs = data.get("runs")
    if not isinstance(runs, dict) or len(runs) < 2:
        raise MMINDataError(f"{src}: runs: expected an object of at least 2 runs; found "
                            f"{len(runs) if isinstance(runs, dict) else type(runs).__name__}")
    files: Dict[str, Dict[int, Path]] = {}
    for run, seeds in runs.items():
        _str(run, "run name", src)
        if not isinstance(seeds, dict) or not seeds:
            raise MMINDataError(f"{src}: runs.{run}: expected an object {{seed: file.npz}}; found {str(seeds)[:60]!r}")
        for seed, f in seeds.items():
            if not (isinstance(seed, str) and seed.isdigit() and len(seed) <= 18):
                raise MMINDataError(f"{src}: runs.{run}: expected integer seeds as keys; found {seed!r:.40}")
            fp = Path(_str(f, f"runs.{run}.{seed}", src)).expanduser()
            files.setdefault(run, {})[int(seed)] = fp if fp.is_absolute() else path.parent / fp
    ref = data.get("reference")
    if ref not in files:
        raise MMINDataError(f"{src}: reference: expected one of the runs {list(files)}; found {str(ref)[:40]!r}")
    return Spec(dataset.lower(), ref, files)


def _record(run: str, dataset: str, seed: int, metrics: Dict[str, float]) -> TrialRecord:
    return TrialRecord(run=run, dataset=dataset, seed=seed, model=run, status="ok", label=run, metrics=metrics,
                       has_predictions=True)


def load_spec_predictions(spec: Spec) -> Dict[str, Dict[int, Dict]]:
    data: Dict[str, Dict[int, Dict]] = {}
    for run, seeds in spec.files.items():
        for seed, f in seeds.items():
            try:
                data.setdefault(run, {})[seed] = load_predictions_file(f).as_dict()
            except FileNotFoundError:
                raise MMINDataError(f"predictions of {run} seed {seed}: {f}: no such file") from None
            except UnreadableFile as exc:
                raise MMINDataError(f"predictions of {run} seed {seed}: {exc}") from None
    return data


def from_predictions(spec_path, out_dir, primary: Optional[str] = None, detect: Optional[float] = None,
                     figure: bool = False) -> List[Path]:
    """`compare-<dataset>.{csv,md,tex}` (and `.png` if `figure`: matplotlib's drawing is most of
    the time) in `out_dir` for the runs of the spec at `spec_path`."""
    spec = read_spec(spec_path)
    data = load_spec_predictions(spec)
    runs = [spec.reference] + [r for r in spec.files if r != spec.reference]
    table = stats.compare_runs(data, spec.reference, spec.dataset, primary or stats.PRIMARY, runs=runs)
    records = []
    for r in runs:  # the per-seed metrics, on the seeds the table uses (the others left out, said in the table)
        for s in sorted(data[r]):
            m = table.means[r].values if s in table.seeds else None
            vals = ({k: m[k][table.seeds.index(s)] for k in m} if m is not None else
                    {k: float(v[0]) for k, v in stats.batch_metrics(data[r][s]["preds"], data[r][s]["labels"],
                                                                     spec.dataset).items()})
            records.append(_record(r, spec.dataset, s, vals))
    plan = Plan("compare", tuple(RunInfo(r, r, r) for r in runs), spec.reference, table.primary)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    seeds = sorted({s for v in data.values() for s in v})
    info = {"dataset": spec.dataset, "seeds": seeds, "n_planned": len(records), "updated": _now(),
            "title": "Comparison from saved predictions",
            "source": f"predictions named in {Path(spec_path).name} (trained elsewhere; nothing trained here)"}
    return list(write_tables(out_dir, plan, spec.dataset, records, table, info, figure, detect).values())
