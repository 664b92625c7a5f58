"""How sure a comparison is: every run against a reference run, per metric, from the saved test
predictions, as result objects (frozen dataclasses, in the style of scipy.stats results).

Set-up. Runs R (the reference) and A were trained with the same seeds s = 1..S and tested on the
same n clips i. For a metric m, d_s = m(A_s) - m(R_s) (each on all n clips). The difference shown is
the mean of the d_s over the seeds used (the seeds every run of the table finished: `common_seeds`),
the same seeds the table's means use.

Variance: two-way random effects, seeds x clips. The per-clip contribution of clip i to d_s is its
jackknife pseudo-value D_si = n d_s - (n-1) d_s(-i) (for MAE and the accuracies, which are means
over clips, exactly the per-clip difference; for Corr and F1 the usual linearisation). Model:
D_si = mu + a_s + b_i + e_si with seed effect a (variance sigma_a^2: training noise), clip effect b
(sigma_b^2: the part of the difference that belongs to the clips, e.g. a model better on some
kinds of clip) and residual e (sigma_e^2). From the two-way ANOVA mean squares MS_seed, MS_clip,
MS_res (expectations sigma_e^2 + n sigma_a^2, sigma_e^2 + S sigma_b^2, sigma_e^2):

* **for new clips and seeds** (`ci`, p, significance): Var(mean) = (MS_seed + MS_clip - MS_res) / (S n)
  (never below the test-set variance MS_seed / (S n)), a t-interval with Satterthwaite's df
  (df = V^2 / sum(MS_k^2 / df_k)) computed with MS_seed at its 90% upper confidence bound, never
  below S - 1 (`_guarded_df`: plain Satterthwaite is liberal at 3 seeds). This is what a
  reader means by "A is better than R": other clips of the same population, other seeds. It
  decides significance;
* **on this test set** (`ci_test_set`): the seed-level t-interval, mean(d_s) +- t_{S-1} sd(d_s)/sqrt(S):
  the clips fixed, only training noise; narrower, shown for reference, never decides anything.

Why these and not a bootstrap: the percentile bootstrap over 3 seeds undercovers (its replicates
see at most 3 distinct seed values: 0.84-0.93 coverage in the issue's simulation), and a seed-only
test answers "on these clips", which at equal population MAE fires 20-29% of the time when models
differ per clip. `benchmarks/bench_calibration.py` measures the coverage and error rates of these
intervals on simulated worlds (docs/design/experiments.md, "Statistics").

* p: two-sided, from t = diff / se with the same df; adjusted by Holm across the runs compared with
  the same reference (per metric); significant = adjusted p < `ALPHA`. In the tables, † is decided
  on the primary metric alone (`PRIMARY`, MAE by default).
* probability of improvement: P(A_s beats R_s), the fraction of paired seeds where A is better
  (ties count 1/2), with a Wilson score interval over the S seeds.
* smallest detectable difference: (t_{1-alpha/(2K), df} + t_{power, df}) x se for K runs compared
  (Holm's first step, the strictest), from the same variance components and rule, projected to
  other seed counts (`VarianceComponents.se(n_seeds)`): how many seeds a given difference needs.
* the published-number check: a seed-only prediction interval for one more seed's result on the
  same clips, mean +- t_{S-1} sd sqrt(1 + 1/S) (the paper tested the same clips, so clip
  resampling does not apply); best-of-N reporting shifts a published number by about
  E[max of N standard normals] x sd (`best_of_n_shift`).

Metrics are MMSA 2.2.1's `MetricsTop` regression metrics, re-implemented as weighted sums (so that
leave-one-out and weighted replicates are one matrix product, and without MetricsTop's rounding to
4 decimals); tests/test_stats.py checks them equal to MetricsTop itself.
"""
from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Callable, Dict, Mapping, Optional, Sequence, Tuple

import numpy as np

from .. import datasets
from ..constants import LOWER_IS_BETTER
from ..errors import MMINDataError

__all__ = ["ALPHA", "POWER", "PRIMARY", "Interval", "VarianceComponents", "Comparison", "RunMeans",
           "ComparisonTable", "batch_metrics", "loo_metrics", "metric_family", "compare_runs", "compare_pair",
           "holm", "common_seeds", "prediction_interval", "best_of_n_shift", "seeds_to_detect",
           "smallest_detectable", "align_predictions", "higher_is_better", "table_frame"]

#: two-sided significance level; intervals are (1 - ALPHA)
ALPHA = 0.05
#: power for the smallest detectable difference
POWER = 0.8
#: the metric that decides † unless told otherwise
PRIMARY = "MAE"
#: confidence of the upper bound on the seed mean square used for the df (`_guarded_df`); chosen on
#: the simulation: 0.5 (plain Satterthwaite) gives 7.6% false positives at 3 seeds, high seed
#: variance; 0.8 holds alpha but not alpha/8 (Holm's first step: 9% family-wise over 8 null
#: variants); 0.9 holds both; 0.95 costs power without need
DF_GUARD_LEVEL = 0.9
#: a standard error or sd this small (relative to the difference, at least 1) is rounding error:
#: the difference is constant, reported as such (a t-test on it would print p = 0)
_ROUNDOFF = 1e-10


# --- MetricsTop, as weighted sums ---------------------------------------------------------------
# Every MetricsTop metric is a function of sums over samples (of |p - t|, of hits, of per-class
# counts, of the moments Corr needs). A replicate is a vector of sample weights w, so all
# replicates' sums are one matrix product W @ F; leaving sample i out is total - F[i].
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
    ok = (vx > 1e-12 * np.maximum(sums["xx"], 1e-300)) & (vy > 1e-12 * np.maximum(sums["yy"], 1e-300))
    r = np.where(ok, _ratio(cov, np.sqrt(np.where(ok, vx * vy, 1.0))), np.nan)
    return np.clip(r, -1.0, 1.0)


def _moments(cols: Dict, p: np.ndarray, t: np.ndarray) -> None:
    x, y = _centred(p), _centred(t)
    cols.update({"n": np.ones(len(p)), "abs": np.abs(p - t), "x": x, "y": y, "xx": x * x, "yy": y * y,
                 "xy": x * y})


def _mosi_columns(p: np.ndarray, t: np.ndarray) -> Dict[str, np.ndarray]:
    cols: Dict[str, np.ndarray] = {}
    _moments(cols, p, t)
    _task(cols, "has0", p >= 0, t >= 0, (False, True))
    _task(cols, "non0", p > 0, t > 0, (False, True), mask=t != 0)
    _task(cols, "a5", np.round(np.clip(p, -2, 2)), np.round(np.clip(t, -2, 2)), ())
    _task(cols, "a7", np.round(np.clip(p, -3, 3)), np.round(np.clip(t, -3, 3)), ())
    return cols


def _mosi_metrics(s: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    return {
        "MAE": s["abs"] / s["n"], "Corr": _corr(s),
        "Has0_acc_2": _acc(s, "has0"), "Has0_F1_score": _f1_weighted(s, "has0", (False, True)),
        "Non0_acc_2": _acc(s, "non0"), "Non0_F1_score": _f1_weighted(s, "non0", (False, True)),
        "Mult_acc_5": _acc(s, "a5"), "Mult_acc_7": _acc(s, "a7"),
    }


def _sims_columns(p: np.ndarray, t: np.ndarray) -> Dict[str, np.ndarray]:
    p, t = np.clip(p, -1, 1), np.clip(t, -1, 1)

    def cls(x, edges):  # MetricsTop: class i is (edges[i], edges[i+1]]
        return np.digitize(x, edges, right=True)

    two, three, five = (0.0,), (-0.1, 0.1), (-0.7, -0.1, 0.1, 0.7)
    cols: Dict[str, np.ndarray] = {}
    _moments(cols, p, t)
    _task(cols, "a2", cls(p, two), cls(t, two), (0, 1))
    _task(cols, "a3", cls(p, three), cls(t, three), ())
    _task(cols, "a5", cls(p, five), cls(t, five), ())
    return cols


def _sims_metrics(s: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    return {"Mult_acc_2": _acc(s, "a2"), "Mult_acc_3": _acc(s, "a3"), "Mult_acc_5": _acc(s, "a5"),
            "F1_score": _f1_weighted(s, "a2", (0, 1)), "MAE": s["abs"] / s["n"], "Corr": _corr(s)}


#: a metric family: (per-sample columns of (preds, labels), metrics from column sums)
Family = Tuple[Callable[[np.ndarray, np.ndarray], Dict[str, np.ndarray]],
               Callable[[Dict[str, np.ndarray]], Dict[str, np.ndarray]]]


def metric_family(dataset: str) -> Family:
    """The MetricsTop family of `dataset`: its spec's `metric_family` (mmin_plugin.datasets) when the
    name is known in this process, else the name itself; SIMS's for 'sims', MOSI's (MOSEI's too) otherwise.
    The one place that maps a dataset to its metrics."""
    spec = datasets.lookup(dataset)
    family = spec.metric_family if spec is not None else str(dataset).lower()
    return (_sims_columns, _sims_metrics) if family == "sims" else (_mosi_columns, _mosi_metrics)


def _columns(preds, labels, dataset) -> Tuple[np.ndarray, list, Callable]:
    cols_fn, metrics_fn = metric_family(dataset)
    p, t = np.asarray(preds, float).reshape(-1), np.asarray(labels, float).reshape(-1)
    cols = cols_fn(p, t)
    names = list(cols)
    return np.stack([np.asarray(cols[k], float) for k in names], axis=1), names, metrics_fn


def batch_metrics(preds, labels, dataset: str, weights=None) -> Dict[str, np.ndarray]:
    """MMSA's MetricsTop regression metrics of `dataset` for 1-D `preds` / `labels`, unrounded, once
    per row of `weights` (B x n sample counts, e.g. a bootstrap's; default: each sample once).
    {key: array of B values}."""
    F, names, metrics_fn = _columns(preds, labels, dataset)
    W = np.ones((1, F.shape[0])) if weights is None else np.atleast_2d(np.asarray(weights, float))
    sums = W @ F
    return metrics_fn({k: sums[:, i] for i, k in enumerate(names)})


def loo_metrics(preds, labels, dataset: str) -> Tuple[Dict[str, float], Dict[str, np.ndarray]]:
    """(metrics on all n samples, {key: n values with sample i left out}). The leave-one-out sums
    are total - F[i]: O(n), no n x n matrix."""
    F, names, metrics_fn = _columns(preds, labels, dataset)
    total = F.sum(axis=0)
    full = {k: float(v[0]) for k, v in metrics_fn({k: total[i:i + 1] for i, k in enumerate(names)}).items()}
    loo = total[None, :] - F
    return full, metrics_fn({k: loo[:, i] for i, k in enumerate(names)})


def higher_is_better(metric: str) -> bool:
    return metric not in LOWER_IS_BETTER


# --- predictions ----------------------------------------------------------------------------------
def align_predictions(data: Mapping[str, Mapping[int, Mapping]], reference: str) -> Tuple[np.ndarray, Dict]:
    """(labels, {run: {seed: preds}}) in the order of the reference's first seed's sample ids.
    Every (run, seed) must hold exactly the same ids with the same labels (another order is fine)
    and finite predictions; else MMINDataError naming the run and seed."""
    if reference not in data or not data[reference]:
        raise MMINDataError(f"reference {reference!r}: expected test predictions; found none")
    first = min(data[reference])
    ref_ids = np.asarray(data[reference][first]["ids"]).astype(str)
    labels = np.asarray(data[reference][first]["labels"], float)
    if len(set(ref_ids.tolist())) != len(ref_ids):
        raise MMINDataError(f"predictions of {reference} seed {first}: expected distinct sample ids; found repeats")
    pos = {k: i for i, k in enumerate(ref_ids.tolist())}
    out: Dict[str, Dict[int, np.ndarray]] = {}
    for run, seeds in data.items():
        for seed, pred in seeds.items():
            where = f"predictions of {run} seed {seed}"
            ids = np.asarray(pred["ids"]).astype(str)
            y, p = np.asarray(pred["labels"], float), np.asarray(pred["preds"], float)
            if not (len(ids) == len(y) == len(p)):
                raise MMINDataError(f"{where}: expected ids, labels and preds of one length; found "
                                    f"{len(ids)}, {len(y)}, {len(p)}")
            if len(ids) != len(ref_ids) or set(ids.tolist()) != set(pos):
                raise MMINDataError(f"{where}: expected the {len(ref_ids)} sample ids of {reference} seed {first}; "
                                    f"found {len(ids)} ids, {len(set(ids.tolist()) ^ set(pos))} not shared")
            if not np.all(np.isfinite(p)) or not np.all(np.isfinite(y)):
                raise MMINDataError(f"{where}: expected finite predictions and labels; found "
                                    f"{int(np.sum(~np.isfinite(p)) + np.sum(~np.isfinite(y)))} non-finite values")
            order = np.argsort([pos[k] for k in ids.tolist()], kind="stable")
            if not np.allclose(y[order], labels, atol=1e-6):
                raise MMINDataError(f"{where}: expected the same label per sample id as {reference} seed {first}; "
                                    "found different ones (another feature file or split?)")
            out.setdefault(run, {})[int(seed)] = p[order]
    return labels, out


def common_seeds(seeds_by_run: Mapping[str, Sequence[int]]) -> Tuple[Tuple[int, ...], Dict[str, Tuple[int, ...]]]:
    """(the seeds every run with at least one finished seed finished, {run: its finished seeds left
    out}). The table's means, differences and significance all use these seeds."""
    present = {r: set(int(s) for s in ss) for r, ss in seeds_by_run.items() if ss}
    if not present:
        return (), {}
    used = set.intersection(*present.values())
    return tuple(sorted(used)), {r: tuple(sorted(ss - used)) for r, ss in present.items() if ss - used}


# --- distributions (scipy.special's ufuncs: scipy.stats' t.ppf costs ~1 ms a call, they ~2 us) ---
def _t_ppf(q: float, df: float) -> float:
    from scipy import special

    return float(special.stdtrit(df, q)) if math.isfinite(df) else float(special.ndtri(q))


def _t_two_sided(t: float, df: float) -> float:
    """2 P(T_df > |t|)."""
    from scipy import special

    return float(2 * (special.stdtr(df, -abs(t)) if math.isfinite(df) else special.ndtr(-abs(t))))


def _chi2_ppf(q: float, k: int) -> float:
    from scipy import special

    return float(special.chdtri(k, 1 - q))


# --- result objects -------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Interval:
    """A two-sided interval: `low`, `high` at `level`; `method` says how (NaN bounds: none)."""

    low: float
    high: float
    level: float
    method: str
    df: float = float("nan")

    def excludes(self, value: float = 0.0) -> bool:
        return bool(math.isfinite(self.low) and math.isfinite(self.high) and not self.low <= value <= self.high)

    def contains(self, value: float) -> bool:
        return bool(math.isfinite(self.low) and math.isfinite(self.high) and self.low <= value <= self.high)


NO_INTERVAL = Interval(float("nan"), float("nan"), 1 - ALPHA, "none")


def _guarded_df(ms_s: float, ms_c: float, ms_e: float, S: int, n: int) -> float:
    """Satterthwaite's df of MS_seed + MS_clip - MS_res, with MS_seed at its one-sided
    `DF_GUARD_LEVEL` upper confidence bound, MS_seed (S-1) / chi2_{1-level}(S-1). Plain Satterthwaite
    lets a seed mean square that is small by chance also claim many df (7.6% false positives at
    3 seeds, high seed variance, and 3x too many at alpha/8); the guard keeps both near nominal
    (benchmarks/bench_calibration.py)."""
    ms_u = ms_s * (S - 1) / _chi2_ppf(1 - DF_GUARD_LEVEL, S - 1)
    v = ms_u + ms_c - ms_e
    denom = ms_u ** 2 / (S - 1) + ms_c ** 2 / (n - 1) + ms_e ** 2 / ((S - 1) * (n - 1))
    return max(float(S - 1), v * v / denom) if denom > 0 else float("inf")


@dataclasses.dataclass(frozen=True)
class VarianceComponents:
    """Two-way random effects of the per-clip difference D_si: `seed` (sigma_a^2), `clip`
    (sigma_b^2), `residual` (sigma_e^2), estimated from the ANOVA mean squares of `n_seeds` x
    `n_clips` (negative estimates clipped at 0); `ms_seed`, `ms_clip`, `ms_res` as measured."""

    seed: float
    clip: float
    residual: float
    n_seeds: int
    n_clips: int
    ms_seed: float
    ms_clip: float
    ms_res: float

    @classmethod
    def from_table(cls, D: np.ndarray) -> VarianceComponents:
        S, n = D.shape
        grand = D.mean()
        r, c = D.mean(axis=1), D.mean(axis=0)
        ms_s = n * float(np.sum((r - grand) ** 2)) / (S - 1) if S > 1 else float("nan")
        ms_c = S * float(np.sum((c - grand) ** 2)) / (n - 1) if n > 1 else float("nan")
        resid = D - r[:, None] - c[None, :] + grand
        ms_e = float(np.sum(resid ** 2)) / ((S - 1) * (n - 1)) if S > 1 and n > 1 else float("nan")
        seed = max((ms_s - ms_e) / n, 0.0) if S > 1 else float("nan")
        clip = max((ms_c - ms_e) / S, 0.0) if S > 1 else float("nan")
        return cls(seed, clip, ms_e, S, n, ms_s, ms_c, ms_e)

    def _expected_ms(self, n_seeds: int) -> Tuple[float, float, float]:
        n = self.n_clips
        return (self.residual + n * self.seed, self.residual + n_seeds * self.clip, self.residual)

    def se_df(self, n_seeds: Optional[int] = None, new_clips: bool = True) -> Tuple[float, float]:
        """(standard error of the mean difference, Satterthwaite df) over `n_seeds` seeds (default:
        as measured: the measured mean squares; otherwise their expectations under the estimated
        components). `new_clips` False: the test-set (seed-only) variance, df S - 1."""
        S = self.n_seeds if n_seeds is None else int(n_seeds)
        if S < 2:
            return float("nan"), float("nan")
        ms_s, ms_c, ms_e = ((self.ms_seed, self.ms_clip, self.ms_res) if n_seeds is None
                            else self._expected_ms(S))
        n = self.n_clips
        if not new_clips or ms_c - ms_e <= 0:  # no clip component measured: the seed-level test
            return math.sqrt(max(ms_s, 0.0) / (S * n)), float(S - 1)
        v = ms_s + ms_c - ms_e
        return math.sqrt(v / (S * n)), _guarded_df(ms_s, ms_c, ms_e, S, n)


@dataclasses.dataclass(frozen=True)
class Comparison:
    """Run `run` against `reference` on `metric`, over `seeds` (the seeds the table's means use).

    `diff`: mean over seeds of m(run_s) - m(reference_s) (`per_seed`); `ci`: for new clips and
    seeds (two-way, decides `significant`); `ci_test_set`: on this test set (seed-level t);
    `statistic`, `df`, `pvalue`: the two-way t-test; `pvalue_adjusted`: Holm across the runs
    compared with `reference` on this metric; `significant`: `pvalue_adjusted` < ALPHA;
    `prob_improvement` (P(run_s beats reference_s), `pi_ci`); `variance`; `mdd`: the smallest
    difference detected with power POWER at this rule; `note`: why something is missing."""

    run: str
    reference: str
    metric: str
    seeds: Tuple[int, ...]
    diff: float
    per_seed: Tuple[float, ...]
    ci: Interval
    ci_test_set: Interval
    statistic: float
    df: float
    pvalue: float
    pvalue_adjusted: float
    significant: bool
    prob_improvement: float
    pi_ci: Interval
    variance: Optional[VarianceComponents]
    mdd: float
    note: str = ""

    @property
    def n_seeds(self) -> int:
        return len(self.seeds)


@dataclasses.dataclass(frozen=True)
class RunMeans:
    """A run's metrics over `seeds`: `values` {metric: per-seed tuple}; mean and sd (ddof=1)."""

    run: str
    seeds: Tuple[int, ...]
    values: Mapping[str, Tuple[float, ...]]

    def mean(self, metric: str) -> float:
        v = self.values.get(metric)
        return float(np.mean(v)) if v else float("nan")

    def sd(self, metric: str, ddof: int = 1) -> float:
        v = self.values.get(metric)
        return float(np.std(v, ddof=ddof)) if v and len(v) > ddof else float("nan")


@dataclasses.dataclass(frozen=True)
class ComparisonTable:
    """Every run against `reference` on `dataset`: `comparisons` {(run, metric): Comparison} (the
    reference itself is not compared), `means` {run: RunMeans}, all over `seeds`; `left_out` {run:
    finished seeds not used (another run lacks them)}; `primary` decides †; `n_clips` test clips."""

    dataset: str
    reference: str
    primary: str
    runs: Tuple[str, ...]
    metrics: Tuple[str, ...]
    seeds: Tuple[int, ...]
    left_out: Mapping[str, Tuple[int, ...]]
    n_clips: int
    means: Mapping[str, RunMeans]
    comparisons: Mapping[Tuple[str, str], Comparison]
    alpha: float = ALPHA

    def get(self, run: str, metric: str) -> Optional[Comparison]:
        return self.comparisons.get((run, metric))

    def marked(self, run: str) -> bool:
        """† : the run differs from the reference on the primary metric (Holm-adjusted p < alpha)."""
        c = self.get(run, self.primary)
        return bool(c is not None and c.significant)

    @property
    def n_compared(self) -> int:
        return len([r for r in self.runs if r != self.reference and r in self.means])

    def frame(self):
        """`table_frame(self)`: a pandas frame, one row per run."""
        return table_frame(self)


# --- the pieces ---------------------------------------------------------------------------------
def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values (NaN entries stay NaN and do not count in the family)."""
    p = np.asarray(pvalues, float)
    out = np.full_like(p, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    m = len(ok)
    if m == 0:
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    adj = np.maximum.accumulate([(m - k) * p[i] for k, i in enumerate(order)])
    out[order] = np.minimum(adj, 1.0)
    return out


def _wilson(successes: float, n: int, level: float = 1 - ALPHA) -> Interval:
    from scipy import special

    if n == 0:
        return NO_INTERVAL
    z = float(special.ndtri(1 - (1 - level) / 2))
    ph = successes / n
    centre = (ph + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(ph * (1 - ph) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return Interval(max(0.0, centre - half), min(1.0, centre + half), level, "Wilson score over seeds")


def _t_interval(mean: float, se: float, df: float, level: float, method: str) -> Interval:
    if not (math.isfinite(se) and se > 0 and df > 0):
        return Interval(float("nan"), float("nan"), level, method, df)
    q = _t_ppf(1 - (1 - level) / 2, df)
    return Interval(mean - q * se, mean + q * se, level, method, df)


def smallest_detectable(var: VarianceComponents, n_seeds: Optional[int] = None, n_compared: int = 1,
                        alpha: float = ALPHA, power: float = POWER) -> float:
    """The difference the rule that decides significance (two-way t-test, Holm over `n_compared`
    runs: alpha / n_compared at its first step) detects with probability `power`, at the variance
    components `var` and `n_seeds` seeds (default: as measured)."""
    se, df = var.se_df(n_seeds)
    if not (math.isfinite(se) and se > 0):
        return float("nan")
    a = alpha / max(1, n_compared)
    return (_t_ppf(1 - a / 2, df) + _t_ppf(power, df)) * se


def seeds_to_detect(var: VarianceComponents, difference: float, n_compared: int = 1, max_seeds: int = 100,
                    alpha: float = ALPHA, power: float = POWER) -> Optional[int]:
    """The fewest seeds (2..max_seeds) at which `smallest_detectable` <= |difference|, or None (the
    clip variance alone is too large: more seeds cannot help on this many clips)."""
    for s in range(2, max_seeds + 1):
        m = smallest_detectable(var, s, n_compared, alpha, power)
        if math.isfinite(m) and m <= abs(difference):
            return s
    return None


def prediction_interval(values: Sequence[float], level: float = 1 - ALPHA, n_new: int = 1) -> Interval:
    """Seed-only prediction interval for the mean of `n_new` more seeds' results on the same test
    clips: mean +- t_{S-1} sd sqrt(1/n_new + 1/S) (sd with ddof=1)."""
    v = np.asarray(values, float)
    S = len(v)
    if S < 2 or not np.all(np.isfinite(v)):
        return Interval(float("nan"), float("nan"), level, "seed-only prediction interval")
    se = float(np.std(v, ddof=1)) * math.sqrt(1.0 / n_new + 1.0 / S)
    return _t_interval(float(v.mean()), se, S - 1, level, "seed-only prediction interval")


def best_of_n_shift(n: int) -> float:
    """E[max of n independent standard normals]: how many seed sd a best-of-n result sits above a
    typical one (1: 0, 3: 0.846, 5: 1.163); the integral of x n phi(x) Phi(x)^(n-1) on a fine grid."""
    from scipy import special

    if n <= 1:
        return 0.0
    x = np.linspace(-12.0, 12.0, 24001)
    f = x * n * np.exp(-0.5 * x * x) / math.sqrt(2 * math.pi) * special.ndtr(x) ** (n - 1)
    return float(np.sum(f) * (x[1] - x[0]))


# --- one comparison ---------------------------------------------------------------------------------
def _note_nan(run: str, reference: str, metric: str, seeds, point) -> str:
    bad = [f"{r} seed {s}" for r in (run, reference) for s in seeds if not math.isfinite(point[(r, s)][metric])]
    return f"{metric} undefined (NaN) on {', '.join(bad)}: not compared" if bad else ""


def compare_pair(run: str, reference: str, metric: str, seeds: Sequence[int], point: Mapping, pseudo: Mapping,
                 n_compared: int = 1, level: float = 1 - ALPHA) -> Comparison:
    """`run` vs `reference` on `metric` over `seeds`. `point` {(run, seed): {metric: value}},
    `pseudo` {(run, seed): {metric: n jackknife pseudo-values}}. Adjusted p and significance are
    filled by `compare_runs` (here: unadjusted)."""
    seeds = tuple(seeds)
    nan = float("nan")
    blank = dict(run=run, reference=reference, metric=metric, seeds=seeds, ci=NO_INTERVAL, ci_test_set=NO_INTERVAL,
                 statistic=nan, df=nan, pvalue=nan, pvalue_adjusted=nan, significant=False,
                 prob_improvement=nan, pi_ci=NO_INTERVAL, variance=None, mdd=nan)
    if not seeds:
        return Comparison(diff=nan, per_seed=(), note="no seed finished by both", **blank)
    note = _note_nan(run, reference, metric, seeds, point)
    d = np.array([point[(run, s)][metric] - point[(reference, s)][metric] for s in seeds])
    if note:
        return Comparison(diff=nan, per_seed=tuple(float(x) for x in d), note=note, **blank)
    diff, S = float(d.mean()), len(seeds)
    sign = 1.0 if higher_is_better(metric) else -1.0
    wins = float(np.sum(sign * d > 0) + 0.5 * np.sum(d == 0))
    blank.update(prob_improvement=wins / S, pi_ci=_wilson(wins, S, level))
    if S < 2:
        return Comparison(diff=diff, per_seed=tuple(d.tolist()),
                          note="1 seed: no test across seeds (run more seeds)", **blank)
    D = np.stack([pseudo[(run, s)][metric] - pseudo[(reference, s)][metric] for s in seeds])
    if not np.all(np.isfinite(D)):  # e.g. Corr undefined with one clip left out
        D = np.where(np.isfinite(D), D, d[:, None])
    var = VarianceComponents.from_table(D)
    se, df = var.se_df()
    sd_seed = float(np.std(d, ddof=1))
    if sd_seed <= _ROUNDOFF * max(1.0, abs(diff)):
        sd_seed = 0.0
    ci_test = (_t_interval(diff, sd_seed / math.sqrt(S), S - 1, level, "seed-level t, this test set")
               if sd_seed > 0 else Interval(nan, nan, level, "seed-level t, this test set (constant across seeds)"))
    notes = [] if sd_seed > 0 else ["the per-seed differences are exactly constant: no seed-to-seed variation measured"]
    blank.update(variance=var, ci_test_set=ci_test, mdd=smallest_detectable(var, None, n_compared))
    if not (math.isfinite(se) and se > _ROUNDOFF * max(1.0, abs(diff))):
        blank["mdd"] = nan
        if np.all(D == 0) and diff == 0:
            return Comparison(diff=0.0, per_seed=tuple(d.tolist()), **{**blank, "pvalue": 1.0, "statistic": 0.0},
                              note="identical on every seed and clip")
        return Comparison(diff=diff, per_seed=tuple(d.tolist()),
                          note="constant difference on every seed and clip: no variance, not tested", **blank)
    t = diff / se
    p = _t_two_sided(t, df)
    ci = _t_interval(diff, se, df, level, "two-way random effects (clips x seeds), Satterthwaite df")
    return Comparison(diff=diff, per_seed=tuple(d.tolist()), **{**blank, "ci": ci, "statistic": float(t), "df": df,
                                                                 "pvalue": p}, note="; ".join(notes))


# --- the table ------------------------------------------------------------------------------------
def compare_runs(data: Mapping[str, Mapping[int, Mapping]], reference: str, dataset: str,
                 primary: str = PRIMARY, runs: Optional[Sequence[str]] = None,
                 seeds: Optional[Sequence[int]] = None, level: float = 1 - ALPHA) -> ComparisonTable:
    """Every run of `data` ({run: {seed: {"ids", "labels", "preds"}}}) against `reference`, every
    metric of `dataset`'s family, over `seeds` (default: `common_seeds` of `data`). `runs`: display
    order (default: `data`'s). Raises MMINDataError for predictions that do not line up."""
    runs = tuple(runs or data)
    labels, preds = align_predictions({r: data[r] for r in runs if data.get(r)}, reference)
    used, left_out = (common_seeds({r: list(preds.get(r, {})) for r in runs}) if seeds is None
                      else (tuple(sorted(int(s) for s in seeds)), {}))
    point, pseudo = {}, {}
    n = len(labels)
    for r in preds:
        for s in used:
            if s not in preds[r]:
                raise MMINDataError(f"predictions of {r}: expected seed {s} (used by the table); found none")
            full, loo = loo_metrics(preds[r][s], labels, dataset)
            point[(r, s)] = full
            pseudo[(r, s)] = {k: n * full[k] - (n - 1) * v for k, v in loo.items()}
    metrics = tuple(next(iter(point.values()))) if point else ()
    if primary not in metrics and metrics:
        raise MMINDataError(f"primary metric: expected one of {list(metrics)}; found {primary!r}")
    means = {r: RunMeans(r, used, {k: tuple(point[(r, s)][k] for s in used) for k in metrics}) for r in preds}
    others = [r for r in runs if r != reference and r in preds]
    comps: Dict[Tuple[str, str], Comparison] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for k in metrics:
            row = [compare_pair(r, reference, k, used, point, pseudo, len(others), level) for r in others]
            adj = holm([c.pvalue for c in row])
            for c, pa in zip(row, adj):
                comps[(c.run, k)] = dataclasses.replace(c, pvalue_adjusted=float(pa),
                                                        significant=bool(np.isfinite(pa) and pa < 1 - level))
    return ComparisonTable(dataset=str(dataset).lower(), reference=reference, primary=primary, runs=runs,
                           metrics=metrics, seeds=used, left_out=left_out, n_clips=n, means=means, comparisons=comps,
                           alpha=1 - level)


def _frame_fields(c: Comparison) -> Dict[str, object]:
    return {"diff": c.diff, "ci_low": c.ci.low, "ci_high": c.ci.high, "p": c.pvalue, "p_adj": c.pvalue_adjusted,
            "significant": c.significant, "ci_test_low": c.ci_test_set.low, "ci_test_high": c.ci_test_set.high,
            "df": c.df, "prob_improvement": c.prob_improvement, "pi_low": c.pi_ci.low, "pi_high": c.pi_ci.high,
            "mdd": c.mdd, "note": c.note}


def table_frame(table: ComparisonTable):
    """One row per run (index `run`), columns `n_seeds`, `n_clips` and per metric `<metric>|<field>`:
    mean, sd (over the seeds used) and, for runs other than the reference, every field of its
    Comparison (diff, ci_low/high, p, p_adj, significant, ci_test_low/high, df, prob_improvement,
    pi_low/high, mdd, note)."""
    import pandas as pd

    records = {}
    for run in table.runs:
        if run not in table.means:
            continue
        m = table.means[run]
        rec: Dict[str, object] = {"n_seeds": len(table.seeds), "n_clips": table.n_clips}
        for k in table.metrics:
            rec[f"{k}|mean"], rec[f"{k}|sd"] = m.mean(k), m.sd(k)
            c = table.get(run, k)
            if c is not None:
                rec.update({f"{k}|{f}": v for f, v in _frame_fields(c).items()})
        records[run] = rec
    frame = pd.DataFrame.from_dict(records, orient="index")
    frame.index.name = "run"
    return frame

