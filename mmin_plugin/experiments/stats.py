"""How sure a comparison is: every run against a reference run, per metric, from the saved test
predictions (`predictions.npz`) rather than the rounded metrics.

For a run A, the reference R and a metric m, on the seeds both finished (paired by seed: same seed,
same data, same test clips):

* difference: mean over seeds s of d_s = m(A_s) - m(R_s), each m computed on all test samples;
* 95% CI: percentile interval of that mean over `n_boot` bootstrap replicates, each resampling the
  seeds (with replacement) AND the test samples (with replacement; one draw shared by every seed
  and both runs, since they are all tested on the same clips): seed-to-seed and clip-to-clip
  variation both widen it;
* p: a two-sided one-sample t-test of the d_s against 0 (`scipy.stats.ttest_1samp`, i.e. the
  paired t-test `ttest_rel`). Not a rank or sign-flip test: with S seeds the smallest two-sided
  p any exact distribution-free test across seeds can give is 2 / 2**S (0.25 at 3 seeds, 0.0625
  at 5), so with the usual 3-5 seeds it could never call anything significant; the t-test assumes
  the d_s are roughly normal (each is an average over hundreds of clips). d_s all exactly 0: p = 1;
  fewer than 2 seeds: no p;
* significant: p < `ALPHA` and the CI excludes 0 (both the seed-level test and the bootstrap agree);
* smallest detectable difference (`mdd`): (t_{0.975, S-1} + t_{0.8, S-1}) * sd(d_s) / sqrt(S), the
  difference a paired t-test at alpha 0.05 would detect with 80% power if the seed-to-seed sd were
  the one measured (itself uncertain with few seeds);
* a run's own interval (`own_low`, `own_high`): the same bootstrap of its mean over seeds (used to
  say whether a published number is inside it).

Metrics are MMSA 2.2.1's `MetricsTop` regression metrics, re-implemented vectorised over bootstrap
replicates (and without MetricsTop's rounding to 4 decimals); tests/test_stats.py checks them equal
to MetricsTop itself (reached through integration.runner.test_metrics). Design notes:
docs/design/experiments.md.
"""
from __future__ import annotations

import math
import warnings
from typing import Dict, Mapping, Optional, Sequence

import numpy as np
import pandas as pd

from ..errors import MMINDataError

__all__ = ["ALPHA", "N_BOOT", "POWER", "batch_metrics", "compare_to_reference", "STAT_FIELDS", "mdd_line"]

#: two-sided significance level; the CI is the matching (1 - ALPHA) percentile interval
ALPHA = 0.05
#: power for the smallest detectable difference
POWER = 0.8
#: bootstrap replicates
N_BOOT = 2000
#: replicates computed at once (memory: a few arrays of _CHUNK x n_test floats)
_CHUNK = 250
#: the per-run, per-metric fields of `compare_to_reference` (column `<metric>|<field>`)
STAT_FIELDS = ("mean", "diff", "ci_low", "ci_high", "p", "significant", "mdd", "own_low", "own_high")


# --- MetricsTop, vectorised ---------------------------------------------------------------------
def _corr(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    xm, ym = x - x.mean(axis=1, keepdims=True), y - y.mean(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (xm * ym).sum(axis=1) / np.sqrt((xm * xm).sum(axis=1) * (ym * ym).sum(axis=1))
    return np.clip(r, -1.0, 1.0)


def _acc(p: np.ndarray, t: np.ndarray, w: Optional[np.ndarray] = None) -> np.ndarray:
    hit = (p == t).astype(float)
    if w is None:
        return hit.mean(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (hit * w).sum(axis=1) / w.sum(axis=1)


def _f1_weighted(p: np.ndarray, t: np.ndarray, classes, w: Optional[np.ndarray] = None) -> np.ndarray:
    """sklearn's `f1_score(t, p, average='weighted')` per row (`w`: 0/1 sample mask); a class with no
    true and no predicted sample has weight 0, an ill-defined F1 counts 0 (sklearn's zero_division)."""
    w = np.ones_like(p, dtype=float) if w is None else w
    num, support = 0.0, 0.0
    for c in classes:
        tc, pc = (t == c) * w, (p == c) * w
        n_true, n_pred, tp = tc.sum(axis=1), pc.sum(axis=1), (tc * pc).sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            f1 = np.where(n_true + n_pred > 0, 2.0 * tp / (n_true + n_pred), 0.0)
        num, support = num + n_true * f1, support + n_true
    with np.errstate(invalid="ignore", divide="ignore"):
        return num / support


def _mosi(p: np.ndarray, t: np.ndarray) -> Dict[str, np.ndarray]:
    non0 = (t != 0).astype(float)
    return {
        "MAE": np.abs(p - t).mean(axis=1),
        "Corr": _corr(p, t),
        "Has0_acc_2": _acc(p >= 0, t >= 0),
        "Has0_F1_score": _f1_weighted(p >= 0, t >= 0, (False, True)),
        "Non0_acc_2": _acc(p > 0, t > 0, non0),
        "Non0_F1_score": _f1_weighted(p > 0, t > 0, (False, True), non0),
        "Mult_acc_5": _acc(np.round(np.clip(p, -2, 2)), np.round(np.clip(t, -2, 2))),
        "Mult_acc_7": _acc(np.round(np.clip(p, -3, 3)), np.round(np.clip(t, -3, 3))),
    }


def _sims(p: np.ndarray, t: np.ndarray) -> Dict[str, np.ndarray]:
    p, t = np.clip(p, -1, 1), np.clip(t, -1, 1)

    def cls(x, edges):  # MetricsTop: class i is (edges[i], edges[i+1]]
        return np.digitize(x, edges, right=True)

    two, three, five = (0.0,), (-0.1, 0.1), (-0.7, -0.1, 0.1, 0.7)
    return {
        "Mult_acc_2": _acc(cls(p, two), cls(t, two)),
        "Mult_acc_3": _acc(cls(p, three), cls(t, three)),
        "Mult_acc_5": _acc(cls(p, five), cls(t, five)),
        "F1_score": _f1_weighted(cls(p, two), cls(t, two), (0, 1)),
        "MAE": np.abs(p - t).mean(axis=1),
        "Corr": _corr(p, t),
    }


def batch_metrics(preds, labels, dataset: str) -> Dict[str, np.ndarray]:
    """MMSA's MetricsTop regression metrics of `dataset` for each row of `preds` / `labels` (2-D,
    one row a replicate; 1-D: one replicate), unrounded. {key: array of one value per row}."""
    p, t = np.atleast_2d(np.asarray(preds, float)), np.atleast_2d(np.asarray(labels, float))
    return (_sims if str(dataset).lower() == "sims" else _mosi)(p, np.broadcast_to(t, p.shape))


# --- the comparison -------------------------------------------------------------------------------
def _align(data: Mapping[str, Mapping[int, Dict]]) -> tuple:
    """(sample ids, labels, {run: {seed: preds}}) on the ids every (run, seed) has, in one order."""
    common = None
    for seeds in data.values():
        for pred in seeds.values():
            ids = set(pred["ids"].tolist())
            common = ids if common is None else common & ids
    order = np.array(sorted(common or ()))
    if len(order) == 0:
        raise MMINDataError("test predictions: expected sample ids shared by every run; found none in common")
    labels, out = None, {}
    for run, seeds in data.items():
        out[run] = {}
        for seed, pred in seeds.items():
            pos = {k: i for i, k in enumerate(pred["ids"].tolist())}
            take = np.array([pos[k] for k in order])
            y = pred["labels"][take]
            if labels is None:
                labels = y
            elif not np.allclose(labels, y, atol=1e-6):
                raise MMINDataError(f"test predictions of {run} seed {seed}: expected the same labels per sample id "
                                    "as the other runs; found different ones (another feature file?)")
            out[run][seed] = pred["preds"][take]
    return order, labels, out


def _replicates(preds_by_seed: Sequence[np.ndarray], labels, dataset, idx) -> Dict[str, np.ndarray]:
    """{metric: (S, B) array}: each seed's metric on each bootstrap sample draw `idx` (B, n)."""
    per_seed = [batch_metrics(p[idx], labels[idx], dataset) for p in preds_by_seed]
    return {k: np.stack([m[k] for m in per_seed]) for k in per_seed[0]}


def _t_test(d: np.ndarray) -> float:
    if len(d) < 2:
        return float("nan")
    if np.all(d == 0):
        return 1.0  # identical results: no evidence of a difference (the t statistic is 0/0)
    from scipy import stats

    with warnings.catch_warnings():  # near-constant d: scipy warns about precision, the p is still right
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(stats.ttest_1samp(d, 0.0).pvalue)


def _mdd(d: np.ndarray) -> float:
    if len(d) < 2:
        return float("nan")
    from scipy import stats

    s = len(d)
    return float((stats.t.ppf(1 - ALPHA / 2, s - 1) + stats.t.ppf(POWER, s - 1)) * np.std(d, ddof=1) / math.sqrt(s))


def compare_to_reference(data: Mapping[str, Mapping[int, Dict]], reference: str, dataset: str,
                         n_boot: int = N_BOOT, seed: int = 0) -> pd.DataFrame:
    """`data`: {run: {seed: {"ids", "labels", "preds"}}} (runs without predictions left out);
    `reference`: one of its runs. One row per run (the reference included, difference 0), columns
    `n_seeds` (paired with the reference), `n_samples` and `<metric>|<field>` for `STAT_FIELDS`
    (module docstring). Deterministic for a given `seed`."""
    if reference not in data or not data[reference]:
        raise MMINDataError(f"reference {reference!r}: expected test predictions; found none")
    _, labels, preds = _align({r: s for r, s in data.items() if s})
    n = len(labels)
    records = {}
    for run in preds:
        seeds = sorted(set(preds[run]) & set(preds[reference]))
        own_seeds = sorted(preds[run])
        rng = np.random.default_rng([seed, len(records)])
        rec: Dict[str, float] = {"n_seeds": len(seeds), "n_samples": n}
        full = _replicates([preds[run][s] for s in own_seeds], labels, dataset, np.arange(n)[None, :])
        for k, v in full.items():
            rec[f"{k}|mean"] = float(np.mean(v[:, 0]))
        d = {}
        if seeds:
            a = _replicates([preds[run][s] for s in seeds], labels, dataset, np.arange(n)[None, :])
            b = _replicates([preds[reference][s] for s in seeds], labels, dataset, np.arange(n)[None, :])
            d = {k: a[k][:, 0] - b[k][:, 0] for k in a}
        boot_d: Dict[str, list] = {k: [] for k in d}
        boot_own: Dict[str, list] = {k: [] for k in full}
        for start in range(0, n_boot, _CHUNK):
            size = min(_CHUNK, n_boot - start)
            idx = rng.integers(0, n, size=(size, n))
            own = _replicates([preds[run][s] for s in own_seeds], labels, dataset, idx)
            pick = rng.integers(0, len(own_seeds), size=(size, len(own_seeds)))
            for k, v in own.items():
                boot_own[k].append(np.take_along_axis(v.T, pick, axis=1).mean(axis=1))
            if seeds:
                a = _replicates([preds[run][s] for s in seeds], labels, dataset, idx)
                b = _replicates([preds[reference][s] for s in seeds], labels, dataset, idx)
                pick = rng.integers(0, len(seeds), size=(size, len(seeds)))
                for k in d:
                    boot_d[k].append(np.take_along_axis((a[k] - b[k]).T, pick, axis=1).mean(axis=1))
        q = (100 * ALPHA / 2, 100 * (1 - ALPHA / 2))
        for k, parts in boot_own.items():
            rec[f"{k}|own_low"], rec[f"{k}|own_high"] = np.nanpercentile(np.concatenate(parts), q)
        for k, dk in d.items():
            lo, hi = np.nanpercentile(np.concatenate(boot_d[k]), q)
            p = _t_test(dk)
            rec.update({f"{k}|diff": float(np.mean(dk)), f"{k}|ci_low": float(lo), f"{k}|ci_high": float(hi),
                        f"{k}|p": p, f"{k}|mdd": _mdd(dk),
                        f"{k}|significant": bool(p < ALPHA and not lo <= 0.0 <= hi)})
        records[run] = rec
    frame = pd.DataFrame.from_dict(records, orient="index")
    frame.index.name = "run"
    frame.attrs["reference"] = reference
    return frame


def mdd_line(stats: pd.DataFrame, key: str = "MAE", scale=lambda k, v: v) -> str:
    """One sentence on what the run can and cannot show: the smallest `key` difference a paired
    t-test over this many seeds would detect (largest over the compared runs), or why none."""
    ref = stats.attrs.get("reference")
    others = stats.drop(index=ref, errors="ignore")
    col = f"{key}|mdd"
    if others.empty or col not in others.columns:
        return f"No run to compare with the reference {ref} yet (or no {key} in its predictions)."
    s = int(others["n_seeds"].min())
    if s < 2:
        return (f"With {s} paired seed(s) there is no test across seeds: the intervals show only test-sample "
                f"variation, not seed-to-seed variation; run more seeds to test differences.")
    mdd = others[col].dropna()
    if mdd.empty:
        return f"The smallest detectable {key} difference is undefined (no seed-to-seed variation measured)."
    return (f"With {s} paired seeds, the smallest {key} difference this run could detect (paired t-test, "
            f"alpha {ALPHA}, power {POWER}, the measured seed-to-seed sd of the difference) is about "
            f"{scale(key, float(mdd.max())):.3g}; smaller true differences are likely to go undetected.")
