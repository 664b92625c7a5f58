"""Per-seed rows -> a tidy pandas frame (-> CSV) and a per-run summary (mean, std, counts).

A row is a `runs.record.TrialRecord` (or, read back from a CSV, a dict with the `CSV_BASE_COLUMNS`
keys and `metrics`: {MMSA metric key: float}).

The summary's ± is the sample sd over seeds (`STD_DDOF` = 1; MMSA's own results CSV uses numpy's
ddof=0, 18% smaller at 3 seeds); a metric undefined (NaN) on one seed makes the run's mean NaN for
that metric (reported as such, never silently averaged over the other seeds).
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence

import numpy as np
import pandas as pd

from ..atomic import atomic_write_text
from ..constants import METRIC_ORDER
from ..runs.record import TrialRecord, read_record

__all__ = ["CSV_BASE_COLUMNS", "CSV_STAT_FIELDS", "STD_DDOF", "metric_keys", "tidy_frame", "write_csv", "read_rows",
           "summarize", "rows_from_trial_dirs", "measured_metrics"]

#: ddof of the ± (sd over seeds) in every table: the sample sd
STD_DDOF = 1

CSV_BASE_COLUMNS = ["run", "model", "ablation", "dataset", "seed", "status", "error", "wall_time_s", "epochs",
                    "stopped_by", "max_epochs", "early_stop", "feature_path", "pretrained", "checkpoint"]
_INT_COLUMNS = ("seed", "epochs", "max_epochs", "early_stop")


def metric_keys(keys: Iterable[str]) -> List[str]:
    """`keys` in METRIC_ORDER, anything else after it, sorted."""
    keys = set(keys)
    return [k for k in METRIC_ORDER if k in keys] + sorted(keys - set(METRIC_ORDER))


def _fields(row) -> Dict:
    return row.to_json() if isinstance(row, TrialRecord) else row


def tidy_frame(rows: Sequence) -> pd.DataFrame:
    """One row per (run, seed): the base columns then every metric (NaN where a run has none)."""
    rows = [_fields(r) for r in rows]
    base = pd.DataFrame([{c: r.get(c) for c in CSV_BASE_COLUMNS} for r in rows], columns=CSV_BASE_COLUMNS)
    metrics = pd.DataFrame([{k: (np.nan if v is None else v) for k, v in (r.get("metrics") or {}).items()}
                            for r in rows], index=base.index, dtype="float64")
    metrics = metrics[metric_keys(metrics.columns)]
    for c in _INT_COLUMNS:
        base[c] = pd.to_numeric(base[c], errors="coerce").astype("Int64")
    base["wall_time_s"] = pd.to_numeric(base["wall_time_s"], errors="coerce")
    return pd.concat([base, metrics], axis=1)


#: per-metric columns `<metric>|<field>` the CSV gains from a `stats.ComparisonTable` (run-level
#: values, repeated on each seed's line of the run): the run's mean over the seeds used, the
#: difference from the reference, its 95% CI (two-way), p, Holm-adjusted p, significant (adjusted p < alpha)
CSV_STAT_FIELDS = ("mean", "diff", "ci_low", "ci_high", "p", "p_adj", "significant")
#: run-level columns besides the metrics: the reference, the primary metric, whether this seed is one
#: of the seeds the table uses
CSV_EXTRA_COLUMNS = ("reference", "primary", "used")


def write_csv(rows: Sequence, path, table=None) -> None:
    """The tidy frame as CSV (empty cell = none), written atomically; with `table` (a
    `stats.ComparisonTable`): `reference`, `primary`, `used` (1 if the line's seed is one of the
    seeds the table uses) and `<metric>|<field>` for `CSV_STAT_FIELDS`."""
    df = tidy_frame(rows)
    if table is not None and len(df):
        df["reference"], df["primary"] = table.reference, table.primary
        df["used"] = (df["seed"].isin(table.seeds) & (df["status"] == "ok")).astype(int)
        frame = table.frame()
        keys = [k for k in table.metrics if f"{k}|mean" in frame.columns]
        cols = [f"{k}|{f}" for k in keys for f in CSV_STAT_FIELDS if f"{k}|{f}" in frame.columns]
        df = df.join(frame[cols], on="run")
    atomic_write_text(path, df.to_csv(index=False, na_rep="", lineterminator="\n"))


def read_rows(csv_path) -> List[Dict]:
    """A `<kind>-<dataset>.csv` back as rows (metrics as floats; an empty cell is left out)."""
    df = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    metric_cols = [c for c in df.columns if c not in CSV_BASE_COLUMNS and c not in CSV_EXTRA_COLUMNS and "|" not in c]
    out = []
    for rec in df.to_dict("records"):
        row = {k: rec[k] for k in CSV_BASE_COLUMNS if k in rec}
        row["metrics"] = {k: float(rec[k]) for k in metric_cols if rec[k] != ""}
        out.append(row)
    return out


def summarize(rows: Sequence, runs: Sequence[str], seeds: Optional[Iterable[int]] = None) -> pd.DataFrame:
    """Per run (index, in `runs` order): `n_run`, `n_ok`, `wall` (total seconds), `epochs` (list over
    ok seeds), `errors` (list of 'seed S: error'), and for each metric `<key>|mean`, `<key>|std`
    (ddof `STD_DDOF`) and `<key>|n` over the seeds that finished, or only over `seeds` if given
    (the seeds a comparison uses). A metric NaN on one of those seeds has a NaN mean."""
    df = tidy_frame(rows)
    ok = df[df["status"] == "ok"]
    if seeds is not None:
        ok = ok[ok["seed"].isin(list(seeds))]
    metrics = [c for c in df.columns if c not in CSV_BASE_COLUMNS]
    out = pd.DataFrame(index=pd.Index(list(runs), name="run"))
    out["n_run"] = df.groupby("run").size().reindex(out.index, fill_value=0)
    out["n_ok"] = df[df["status"] == "ok"].groupby("run").size().reindex(out.index, fill_value=0)
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
        # numpy's mean and std propagate a NaN seed (pandas' would skip it)
        parts = {"mean": g.agg(lambda x: float(np.mean(x.to_numpy(float)))),
                 "std": g.agg(lambda x: float(np.std(x.to_numpy(float), ddof=STD_DDOF)) if len(x) > STD_DDOF
                              else np.nan),
                 "n": pd.DataFrame({k: g.size() for k in metrics})}
        out = out.join(pd.concat([parts[s].add_suffix(f"|{s}") for s in parts], axis=1))
        for k in metrics:  # a metric no seed of a run returned is absent for that run, not 0
            none = ok.groupby("run")[k].apply(lambda x: x.isna().all()).reindex(out.index, fill_value=True)
            out.loc[none.to_numpy(), [f"{k}|mean", f"{k}|std"]] = np.nan
            out.loc[none.to_numpy(), f"{k}|n"] = 0
    return out


def measured_metrics(summary: pd.DataFrame) -> List[str]:
    """The metric keys with a mean for at least one run."""
    keys = [c.split("|")[0] for c in summary.columns if c.endswith("|mean") and summary[c].notna().any()]
    return metric_keys(keys)


def rows_from_trial_dirs(root) -> List[TrialRecord]:
    """Every sound record under `root` (`runs/<run>/<dataset>/seed<seed>/row.json`), the trial's
    identity taken from its folder's names; an unreadable one (a symlink, a row of another folder,
    a malformed field: runs.record) is logged and left out."""
    import logging

    out = []
    for p in sorted(Path(root).glob("runs/*/*/seed*/row.json")):
        run, dataset, seed = p.parts[-4], p.parts[-3], p.parts[-2][len("seed"):]
        if not seed.isdigit():
            continue
        rec, problem = read_record(root, run, dataset, int(seed))
        if problem:
            logging.getLogger("MMSA." + __name__).warning("%s; left out", problem)
        elif rec is not None:
            out.append(rec)
    return out
