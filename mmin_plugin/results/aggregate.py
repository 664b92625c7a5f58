"""Per-seed rows -> a tidy pandas frame (-> CSV) and a per-run summary (mean, std, counts).

A row is a dict with the `CSV_BASE_COLUMNS` keys and `metrics` ({MMSA metric key: float}).
std is numpy's (ddof=0), as in MMSA's own results CSV.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence

import numpy as np
import pandas as pd

from ..atomic import atomic_write_text
from ..constants import METRIC_ORDER

__all__ = ["CSV_BASE_COLUMNS", "CSV_STAT_FIELDS", "metric_keys", "tidy_frame", "write_csv", "read_rows", "summarize",
           "rows_from_trial_dirs"]

CSV_BASE_COLUMNS = ["run", "model", "ablation", "dataset", "seed", "status", "error", "wall_time_s", "epochs",
                    "stopped_by", "max_epochs", "early_stop", "feature_path", "pretrained", "checkpoint"]
_INT_COLUMNS = ("seed", "epochs", "max_epochs", "early_stop")


def metric_keys(keys: Iterable[str]) -> List[str]:
    """`keys` in METRIC_ORDER, anything else after it, sorted."""
    keys = set(keys)
    return [k for k in METRIC_ORDER if k in keys] + sorted(keys - set(METRIC_ORDER))


def tidy_frame(rows: Sequence[Dict]) -> pd.DataFrame:
    """One row per (run, seed): the base columns then every metric (NaN where a run has none)."""
    base = pd.DataFrame([{c: r.get(c) for c in CSV_BASE_COLUMNS} for r in rows], columns=CSV_BASE_COLUMNS)
    metrics = pd.DataFrame([r.get("metrics") or {} for r in rows], index=base.index, dtype="float64")
    metrics = metrics[metric_keys(metrics.columns)]
    for c in _INT_COLUMNS:
        base[c] = pd.to_numeric(base[c], errors="coerce").astype("Int64")
    base["wall_time_s"] = pd.to_numeric(base["wall_time_s"], errors="coerce")
    return pd.concat([base, metrics], axis=1)


#: per-metric columns `<metric>|<field>` the CSV gains from `stats.compare_to_reference` (run-level
#: values, repeated on each seed's line of the run): difference vs the reference, its 95% CI, p
CSV_STAT_FIELDS = ("diff", "ci_low", "ci_high", "p")


def write_csv(rows: Sequence[Dict], path, stats: Optional[pd.DataFrame] = None) -> None:
    """The tidy frame as CSV (empty cell = none), written atomically; with `stats` (indexed by run,
    `stats.attrs['reference']`), a `reference` column and `<metric>|diff|ci_low|ci_high|p` columns."""
    df = tidy_frame(rows)
    if stats is not None and len(df):
        df["reference"] = stats.attrs.get("reference")
        keys = [k for k in df.columns if f"{k}|diff" in stats.columns]
        cols = [f"{k}|{f}" for k in keys for f in CSV_STAT_FIELDS]
        df = df.join(stats[cols], on="run")
    atomic_write_text(path, df.to_csv(index=False, na_rep="", lineterminator="\n"))


def read_rows(csv_path) -> List[Dict]:
    """A `<kind>-<dataset>.csv` back as rows (metrics as floats; an empty cell is left out)."""
    df = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    metric_cols = [c for c in df.columns if c not in CSV_BASE_COLUMNS and c != "reference" and "|" not in c]
    out = []
    for rec in df.to_dict("records"):
        row = {k: rec[k] for k in CSV_BASE_COLUMNS if k in rec}
        row["metrics"] = {k: float(rec[k]) for k in metric_cols if rec[k] != ""}
        out.append(row)
    return out


def summarize(rows: Sequence[Dict], runs: Sequence[str]) -> pd.DataFrame:
    """Per run (index, in `runs` order): `n_run`, `n_ok`, `wall` (total seconds), `epochs` (list over
    ok seeds), `errors` (list of 'seed S: error'), and for each metric `<key>|mean`, `<key>|std`
    (ddof=0) and `<key>|n` over the seeds that finished."""
    df = tidy_frame(rows)
    ok = df[df["status"] == "ok"]
    metrics = [c for c in df.columns if c not in CSV_BASE_COLUMNS]
    out = pd.DataFrame(index=pd.Index(list(runs), name="run"))
    out["n_run"] = df.groupby("run").size().reindex(out.index, fill_value=0)
    out["n_ok"] = ok.groupby("run").size().reindex(out.index, fill_value=0)
    out["wall"] = df.groupby("run")["wall_time_s"].sum().reindex(out.index, fill_value=0.0)
    out["epochs"] = pd.Series({r: [int(e) for e in g["epochs"].dropna()] for r, g in ok.groupby("run")},
                              dtype=object).reindex(out.index)
    failed = df[df["status"] != "ok"]
    out["errors"] = pd.Series({r: [f"seed {s}: {e}" for s, e in zip(g["seed"], g["error"])]
                               for r, g in failed.groupby("run")}, dtype=object).reindex(out.index)
    for col in ("epochs", "errors"):
        out[col] = out[col].apply(lambda v: v if isinstance(v, list) else [])
    if metrics and len(ok):
        g = ok.groupby("run")[metrics]
        # ddof=0: numpy.std's default, what MMSA's results CSV reports
        parts = {"mean": g.mean(), "std": g.std(ddof=0), "n": g.count()}
        out = out.join(pd.concat([parts[s].add_suffix(f"|{s}") for s in parts], axis=1))
        for k in metrics:  # a metric no seed of a run returned is absent for that run, not 0
            out.loc[out[f"{k}|n"].fillna(0) == 0, [f"{k}|mean", f"{k}|std"]] = np.nan
    return out


def measured_metrics(summary: pd.DataFrame) -> List[str]:
    """The metric keys with a mean for at least one run."""
    keys = [c.split("|")[0] for c in summary.columns if c.endswith("|mean") and summary[c].notna().any()]
    return metric_keys(keys)


def rows_from_trial_dirs(root) -> List[Dict]:
    """Every sound `row.json` under `root` (`runs/<run>/<dataset>/seed<seed>/row.json`), as rows; a
    malformed one is logged and left out (trial.read_row)."""
    from ..runs.trial import read_row

    rows = (read_row(p.parent) for p in sorted(Path(root).glob("runs/*/*/seed*/row.json")))
    return [r for r in rows if r is not None]
