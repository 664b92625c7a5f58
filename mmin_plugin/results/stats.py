"""How sure a comparison is: every run against a reference run, per metric, from the saved test
predictions (`predictions.npz`) rather than the rounded metrics.

For a run A, the reference R and a metric m, on the seeds both finished (paired by seed: same seed,
same data, same test clips):

* difference: mean over seeds s of d_s = m(A_s) - m(R_s), each m computed on all test samples;
* 95% CI: percentile interval of that mean over `n_boot` bootstrap replicates, each resampling the
  seeds (with replacement) AND the test samples (with replacement; one draw shared by every seed
  and every run, since they are all tested on the same clips): seed-to-seed and clip-to-clip
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

Metrics are MMSA 2.2.1's `MetricsTop` regression metrics, re-implemented as weighted sums so that
all bootstrap replicates are one matrix product (and without MetricsTop's rounding to 4 decimals);
tests/test_stats.py checks them equal to MetricsTop itself (reached through
integration.runner.test_metrics). Design notes: docs/design/experiments.md.
"""
from __future__ import annotations

import math
import warnings
from typing import Dict, Mapping

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
#: replicates computed at once (memory: a _CHUNK x n_test matrix of counts)
_CHUNK = 500
#: the per-run, per-metric fields of `compare_to_reference` (column `<metric>|<field>`)
STAT_FIELDS = ("mean", "diff", "ci_low", "ci_high", "p", "significant", "mdd", "own_low", "own_high")


# --- MetricsTop, as weighted sums ---------------------------------------------------------------
# Every MetricsTop metric is a function of sums over samples (of |p - t|, of hits, of per-class
# counts, of the moments Corr needs). A bootstrap replicate is a vector of counts w (how often each
# sample was drawn), so all replicates' sums are one matrix product W @ F: no resampled copies.
def _weighted_sums(W: np.ndarray, cols: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    names = list(cols)
    sums = W @ np.stack([np.asarray(cols[k], float) for k in names], axis=1)
    return {k: sums[:, i] for i, k in enumerate(names)}


def _ratio(a, b):
    with np.errstate(invalid="ignore", divide="ignore"):
        return a / b


def _centred(x: np.ndarray) -> np.ndarray:
    """`x` minus its mean (Corr is shift-invariant; centring avoids cancellation); a constant `x`
    becomes exactly 0, so its correlation is undefined (NaN), as np.corrcoef's."""
    return np.zeros_like(x) if np.ptp(x) == 0 else x - x.mean()


def _task(cols: Dict, name: str, pred, true, classes, mask=None) -> None:
    """Columns for accuracy and sklearn's weighted F1 of one classification view of the predictions."""
    m = np.ones(len(true)) if mask is None else mask.astype(float)
    cols[f"{name}:n"] = m
    cols[f"{name}:hit"] = (pred == true) * m
    for c in classes:
        cols[f"{name}:true{c}"] = (true == c) * m
        cols[f"{name}:pred{c}"] = (pred == c) * m
        cols[f"{name}:tp{c}"] = ((true == c) & (pred == c)) * m


def _acc(sums, name):
    return _ratio(sums[f"{name}:hit"], sums[f"{name}:n"])


def _f1_weighted(sums, name, classes):
    """sklearn's `f1_score(average='weighted')`: per-class F1 weighted by true counts; a class with no
    true and no predicted sample has weight 0, an ill-defined F1 counts 0 (sklearn's zero_division)."""
    num = support = 0.0
    for c in classes:
        n_true, n_pred, tp = sums[f"{name}:true{c}"], sums[f"{name}:pred{c}"], sums[f"{name}:tp{c}"]
        f1 = np.where(n_true + n_pred > 0, _ratio(2.0 * tp, n_true + n_pred), 0.0)
        num, support = num + n_true * f1, support + n_true
    return _ratio(num, support)


def _corr(sums) -> np.ndarray:
    n = sums["n"]
    cov = sums["xy"] - sums["x"] * sums["y"] / n
    vx, vy = sums["xx"] - sums["x"] ** 2 / n, sums["yy"] - sums["y"] ** 2 / n
    ok = (vx > 0) & (vy > 0)
    r = np.where(ok, _ratio(cov, np.sqrt(np.where(ok, vx * vy, 1.0))), np.nan)
    return np.clip(r, -1.0, 1.0)


def _moments(cols: Dict, p: np.ndarray, t: np.ndarray) -> None:
    x, y = _centred(p), _centred(t)
    cols.update({"n": np.ones(len(p)), "abs": np.abs(p - t), "x": x, "y": y, "xx": x * x, "yy": y * y,
                 "xy": x * y})


def _mosi(p: np.ndarray, t: np.ndarray, W: np.ndarray) -> Dict[str, np.ndarray]:
    cols: Dict[str, np.ndarray] = {}
    _moments(cols, p, t)
    _task(cols, "has0", p >= 0, t >= 0, (False, True))
    _task(cols, "non0", p > 0, t > 0, (False, True), mask=t != 0)
    _task(cols, "a5", np.round(np.clip(p, -2, 2)), np.round(np.clip(t, -2, 2)), ())
    _task(cols, "a7", np.round(np.clip(p, -3, 3)), np.round(np.clip(t, -3, 3)), ())
    s = _weighted_sums(W, cols)
    return {
        "MAE": s["abs"] / s["n"], "Corr": _corr(s),
        "Has0_acc_2": _acc(s, "has0"), "Has0_F1_score": _f1_weighted(s, "has0", (False, True)),
        "Non0_acc_2": _acc(s, "non0"), "Non0_F1_score": _f1_weighted(s, "non0", (False, True)),
        "Mult_acc_5": _acc(s, "a5"), "Mult_acc_7": _acc(s, "a7"),
    }


def _sims(p: np.ndarray, t: np.ndarray, W: np.ndarray) -> Dict[str, np.ndarray]:
    p, t = np.clip(p, -1, 1), np.clip(t, -1, 1)

    def cls(x, edges):  # MetricsTop: class i is (edges[i], edges[i+1]]
        return np.digitize(x, edges, right=True)

    two, three, five = (0.0,), (-0.1, 0.1), (-0.7, -0.1, 0.1, 0.7)
    cols: Dict[str, np.ndarray] = {}
    _moments(cols, p, t)
    _task(cols, "a2", cls(p, two), cls(t, two), (0, 1))
    _task(cols, "a3", cls(p, three), cls(t, three), ())
    _task(cols, "a5", cls(p, five), cls(t, five), ())
    s = _weighted_sums(W, cols)
    return {"Mult_acc_2": _acc(s, "a2"), "Mult_acc_3": _acc(s, "a3"), "Mult_acc_5": _acc(s, "a5"),
            "F1_score": _f1_weighted(s, "a2", (0, 1)), "MAE": s["abs"] / s["n"], "Corr": _corr(s)}


def batch_metrics(preds, labels, dataset: str, weights=None) -> Dict[str, np.ndarray]:
    """MMSA's MetricsTop regression metrics of `dataset` for 1-D `preds` / `labels`, unrounded, once
    per row of `weights` (B x n sample counts, e.g. a bootstrap's; default: each sample once).
    {key: array of B values}."""
    p, t = np.asarray(preds, float).reshape(-1), np.asarray(labels, float).reshape(-1)
    W = np.ones((1, len(p))) if weights is None else np.atleast_2d(np.asarray(weights, float))
    return (_sims if str(dataset).lower() == "sims" else _mosi)(p, t, W)


def _counts(idx: np.ndarray, n: int) -> np.ndarray:
    """(B, n) how often each sample occurs in each row of the draws `idx` (B, n)."""
    b = idx.shape[0]
    return np.bincount((idx + n * np.arange(b)[:, None]).ravel(), minlength=b * n).reshape(b, n).astype(float)


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
    rng = np.random.default_rng(seed)
    point = {(r, s): batch_metrics(p, labels, dataset) for r in preds for s, p in preds[r].items()}
    boot: Dict[tuple, Dict[str, list]] = {key: {} for key in point}
    for start in range(0, n_boot, _CHUNK):  # one draw of test samples per replicate, shared by all
        W = _counts(rng.integers(0, n, size=(min(_CHUNK, n_boot - start), n)), n)
        for (r, s) in point:
            for k, v in batch_metrics(preds[r][s], labels, dataset, W).items():
                boot[(r, s)].setdefault(k, []).append(v)
    boot_m = {key: {k: np.concatenate(v) for k, v in m.items()} for key, m in boot.items()}
    keys = list(next(iter(point.values())))
    q = (100 * ALPHA / 2, 100 * (1 - ALPHA / 2))

    def seed_mean(run_seeds, k, values):  # (S, B) -> B means over seeds resampled with replacement
        arr = np.stack([values[(r, s)][k] for r, s in run_seeds])
        pick = rng.integers(0, len(run_seeds), size=(arr.shape[1], len(run_seeds)))
        return np.take_along_axis(arr.T, pick, axis=1).mean(axis=1)

    records = {}
    for run in preds:
        own, seeds = sorted(preds[run]), sorted(set(preds[run]) & set(preds[reference]))
        rec: Dict[str, float] = {"n_seeds": len(seeds), "n_samples": n}
        for k in keys:
            rec[f"{k}|mean"] = float(np.mean([point[(run, s)][k][0] for s in own]))
            lo, hi = np.nanpercentile(seed_mean([(run, s) for s in own], k, boot_m), q)
            rec[f"{k}|own_low"], rec[f"{k}|own_high"] = float(lo), float(hi)
            if not seeds:
                continue
            d = np.array([point[(run, s)][k][0] - point[(reference, s)][k][0] for s in seeds])
            diffs = {(run, s): {k: boot_m[(run, s)][k] - boot_m[(reference, s)][k]} for s in seeds}
            lo, hi = np.nanpercentile(seed_mean([(run, s) for s in seeds], k, diffs), q)
            p = _t_test(d)
            rec.update({f"{k}|diff": float(np.mean(d)), f"{k}|ci_low": float(lo), f"{k}|ci_high": float(hi),
                        f"{k}|p": p, f"{k}|mdd": _mdd(d),
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
