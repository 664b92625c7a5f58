"""results/stats.py: metrics equal to MMSA's MetricsTop; the comparison (two-way interval, Holm,
probability of improvement, detectable difference, prediction interval) on constructed cases whose
answer is known; edge cases (one seed, constant differences, a NaN seed, a missing seed); and a
small seeded simulation of calibration (results/simulate.py; the larger one is
benchmarks/bench_calibration.py)."""
import math

import numpy as np
import pytest
import torch

from mmin_plugin.errors import MMINDataError
from mmin_plugin.integration import runner
from mmin_plugin.results import simulate, stats

N = 120
IDS = np.array([f"clip{i:03d}" for i in range(N)])


def _labels(rng):
    y = np.round(rng.uniform(-3, 3, N) * 3) / 3
    y[:10] = 0.0  # MOSI has zero-labelled clips: Non0 metrics exclude them
    return y


def _data(rng, runs, seeds=(1, 2, 3), noise=0.8):
    """{run: {seed: predictions}}; `runs` {name: fn(reference preds, seed) -> preds}."""
    y = _labels(rng)
    base = {s: y + rng.normal(0, noise, N) for s in seeds}
    return {r: {s: {"ids": IDS, "labels": y, "preds": fn(base[s], s)} for s in seeds} for r, fn in runs.items()}


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # MetricsTop's corrcoef, constant input
@pytest.mark.parametrize("dataset", ["mosi", "sims"])
def test_metrics_equal_mmsa_metrics_top(dataset):
    rng = np.random.default_rng(1)
    mmsa = runner.test_metrics(dataset)
    for case in range(12):
        if dataset == "mosi":
            y, p = _labels(rng), rng.normal(0, 1.5, N)
        else:
            y, p = np.round(rng.uniform(-1, 1, N), 1), rng.normal(0, 0.6, N)
        if case == 0:
            p = np.full(N, 0.5)  # constant predictions: Corr undefined in both
        if case == 1:
            p = np.round(y)  # ties on class edges
        ours = {k: float(v[0]) for k, v in stats.batch_metrics(p, y, dataset).items()}
        theirs = mmsa(p, y)
        assert set(ours) == set(theirs)
        for k, v in theirs.items():
            assert (np.isnan(v) and np.isnan(ours[k])) or round(ours[k], 4) == pytest.approx(v, abs=1e-12), k
        # a bootstrap replicate as sample counts = MetricsTop on the resampled arrays
        idx = rng.integers(0, N, size=(2, N))
        counts = np.stack([np.bincount(i, minlength=N) for i in idx])
        weighted = stats.batch_metrics(p, y, dataset, counts)
        for row, i in enumerate(idx):
            for k, v in mmsa(p[i], y[i]).items():
                got = weighted[k][row]
                assert (np.isnan(v) and np.isnan(got)) or round(got, 4) == pytest.approx(v, abs=1e-12), (k, row)



def _table(data, ref, **kw):
    return stats.compare_runs(data, ref, "mosi", **kw)


def test_leave_one_out_metrics_equal_recomputing_without_the_sample():
    rng = np.random.default_rng(11)
    y, p = _labels(rng)[:40], rng.normal(0, 1.5, 40)
    full, loo = stats.loo_metrics(p, y, "mosi")
    for i in (0, 7, 39):
        keep = np.arange(40) != i
        again = stats.batch_metrics(p[keep], y[keep], "mosi")
        for k, v in again.items():
            assert loo[k][i] == pytest.approx(float(v[0]), abs=1e-12, nan_ok=True), (k, i)
    assert full["MAE"] == pytest.approx(np.mean(np.abs(p - y)))


def test_identical_predictions_give_zero_difference_and_no_significance():
    rng = np.random.default_rng(2)
    t = _table(_data(rng, {"a": lambda p, s: p, "b": lambda p, s: p.copy()}), "a")
    for k in ("MAE", "Corr", "Has0_acc_2", "Non0_F1_score", "Mult_acc_7"):
        c = t.get("b", k)
        assert c.diff == 0.0 and c.pvalue == 1.0 and not c.significant and "identical" in c.note
    assert t.seeds == (1, 2, 3) and t.get("a", "MAE") is None and not t.marked("b")


def test_a_shift_is_detected_an_unrelated_run_is_not_and_intervals_agree_with_p():
    rng = np.random.default_rng(3)
    data = _data(rng, {"ref": lambda p, s: p, "shifted": lambda p, s: p + 0.7,
                       "same": lambda p, s: p + rng.normal(0, 0.01, N)}, seeds=(1, 2, 3, 4, 5))
    t = _table(data, "ref")
    c = t.get("shifted", "MAE")
    assert c.diff > 0.1 and c.ci.low > 0 and c.pvalue < 0.01 and c.significant and t.marked("shifted")
    assert c.pvalue_adjusted == pytest.approx(min(1.0, 2 * c.pvalue)) or c.pvalue_adjusted >= c.pvalue
    assert c.prob_improvement == 0.0 and c.pi_ci.high < 1  # MAE worse on every seed
    same = t.get("same", "MAE")
    assert same.ci.contains(0.0) and not same.significant and not t.marked("same")
    for x in (c, same):  # the interval excludes 0 exactly when p < alpha (one t, one df)
        assert x.ci.excludes(0.0) == (x.pvalue < stats.ALPHA)
        assert x.ci.low < x.diff < x.ci.high and x.ci.high - x.ci.low >= x.ci_test_set.high - x.ci_test_set.low


def test_holm_is_the_step_down_maximum():
    p = [0.01, np.nan, 0.04, 0.03, 0.2]
    got = stats.holm(p)
    # sorted 0.01, 0.03, 0.04, 0.2 (m = 4): 0.04, 0.09, 0.09 (monotone), 0.2
    assert got[0] == pytest.approx(0.04) and got[3] == pytest.approx(0.09) and got[2] == pytest.approx(0.09)
    assert got[4] == pytest.approx(0.2) and np.isnan(got[1])


def test_dagger_follows_the_adjusted_p_of_the_primary_metric():
    rng = np.random.default_rng(12)
    data = _data(rng, {"ref": lambda p, s: p, "b": lambda p, s: p * 1.3}, seeds=(1, 2, 3, 4))
    t = _table(data, "ref")
    assert t.marked("b") == t.get("b", "MAE").significant
    t_corr = _table(data, "ref", primary="Corr")
    assert t_corr.primary == "Corr" and t_corr.marked("b") == t_corr.get("b", "Corr").significant
    with pytest.raises(MMINDataError, match="primary metric"):
        _table(data, "ref", primary="Nope")


def test_means_differences_and_marks_use_the_same_seeds():
    """A run missing seed 2: every mean, difference and † uses seeds {1, 3, 4}; the old table's
    mean used all of the reference's seeds while the difference used the paired ones."""
    rng = np.random.default_rng(13)
    data = _data(rng, {"ref": lambda p, s: p, "b": lambda p, s: p + (0.6 if s == 2 else -0.05)}, seeds=(1, 2, 3, 4))
    del data["b"][2]
    t = _table(data, "ref")
    assert t.seeds == (1, 3, 4) and t.left_out == {"ref": (2,)}
    c = t.get("b", "MAE")
    assert c.seeds == t.seeds == t.means["ref"].seeds == t.means["b"].seeds
    assert c.diff == pytest.approx(t.means["b"].mean("MAE") - t.means["ref"].mean("MAE"), abs=1e-12)
    frame = t.frame()
    assert frame.at["b", "MAE|diff"] == pytest.approx(frame.at["b", "MAE|mean"] - frame.at["ref", "MAE|mean"])


def test_one_seed_has_no_test():
    rng = np.random.default_rng(5)
    t = _table(_data(rng, {"a": lambda p, s: p, "b": lambda p, s: p + 0.3}, seeds=(7,)), "a")
    c = t.get("b", "MAE")
    assert c.diff > 0 and math.isnan(c.pvalue) and not c.significant and "1 seed" in c.note


def test_constant_per_seed_differences_are_reported_not_p0():
    """Per-seed differences exactly equal across seeds: the old test gave p = 0 and mdd = 0. Now the
    clip variance still measures uncertainty (finite p, mdd > 0) and the seed-only interval says
    there is no seed-to-seed variation."""
    rng = np.random.default_rng(14)
    y = _labels(rng)
    base = y + rng.normal(0, 0.8, N)
    other = base + rng.normal(0.1, 0.5, N)
    data = {r: {s: {"ids": IDS, "labels": y, "preds": p} for s in (1, 2, 3)} for r, p in (("a", base), ("b", other))}
    c = _table(data, "a").get("b", "MAE")
    assert len(set(c.per_seed)) == 1
    assert 0 < c.pvalue < 1 and c.mdd > 0 and "exactly constant" in c.note and math.isnan(c.ci_test_set.low)
    # constant on every seed AND clip: no variance at all, not tested (not p = 0)
    data["b"] = {s: {"ids": IDS, "labels": y, "preds": np.where(base >= y, base + 0.5, base - 0.5)} for s in (1, 2, 3)}
    c = _table(data, "a").get("b", "MAE")
    assert c.diff == pytest.approx(0.5) and math.isnan(c.pvalue) and "no variance" in c.note and not c.significant


def test_a_nan_seed_is_reported_not_dropped():
    """Corr undefined on one seed (constant predictions): that metric is not compared, the note
    names the seed, the mean is NaN (the old bootstrap dropped the replicates and printed [0, 0])."""
    rng = np.random.default_rng(15)
    data = _data(rng, {"ref": lambda p, s: p, "b": lambda p, s: np.full(N, 0.5) if s == 2 else p + 0.1})
    t = _table(data, "ref")
    c = t.get("b", "Corr")
    assert math.isnan(c.diff) and "b seed 2" in c.note and not c.significant and math.isnan(c.ci.low)
    assert math.isnan(t.means["b"].mean("Corr")) and math.isfinite(t.get("b", "MAE").diff)


def test_predictions_that_do_not_line_up_are_refused():
    rng = np.random.default_rng(16)
    base = _data(rng, {"a": lambda p, s: p, "b": lambda p, s: p}, seeds=(1, 2))
    cases = {
        "sample ids": lambda d: d.update(ids=np.array([f"x{i}" for i in range(N)])),
        "one length": lambda d: d.update(preds=d["preds"][:-1]),
        "same label": lambda d: d.update(labels=d["labels"] + 1.0),
        "finite": lambda d: d["preds"].__setitem__(3, np.nan),
    }
    for match, spoil in cases.items():
        data = {r: {s: dict(v) for s, v in seeds.items()} for r, seeds in base.items()}
        data["b"][2] = {k: np.array(v, copy=True) for k, v in data["b"][2].items()}
        spoil(data["b"][2])
        with pytest.raises(MMINDataError, match=match):
            _table(data, "a")
    perm = rng.permutation(N)  # another order of the same clips is fine
    base["b"][1] = {k: v[perm] for k, v in base["b"][1].items()}
    assert _table(base, "a").get("b", "MAE").diff == 0.0


def test_prediction_interval_and_best_of_n():
    v = [0.74, 0.76, 0.75]
    pi = stats.prediction_interval(v)
    half = 4.302652729911275 * np.std(v, ddof=1) * math.sqrt(1 + 1 / 3)  # t_{0.975, 2}
    assert pi.low == pytest.approx(0.75 - half) and pi.high == pytest.approx(0.75 + half)
    assert math.isnan(stats.prediction_interval([0.7]).low)
    assert stats.best_of_n_shift(1) == 0 and stats.best_of_n_shift(5) == pytest.approx(1.16296, abs=1e-4)


def test_detectable_difference_is_the_rule_that_decides_the_mark():
    """mdd = (t_{1-alpha/2K} + t_power) x the same se and df as the test; more seeds never detect
    less; a difference below the clip-variance floor needs no finite number of seeds."""
    from scipy import stats as sps

    rng = np.random.default_rng(17)
    data = _data(rng, {"ref": lambda p, s: p, "b": lambda p, s: p + rng.normal(0, 0.3, N),
                       "c": lambda p, s: p + rng.normal(0, 0.3, N)}, seeds=(1, 2, 3))
    t = _table(data, "ref")
    c = t.get("b", "MAE")
    se = (c.ci.high - c.ci.low) / 2 / sps.t.ppf(0.975, c.df)
    want = (sps.t.ppf(1 - stats.ALPHA / 4, c.df) + sps.t.ppf(stats.POWER, c.df)) * se  # K = 2 runs
    assert c.mdd == pytest.approx(want, rel=1e-9)
    mdds = [stats.smallest_detectable(c.variance, s, 2) for s in (2, 3, 5, 10, 40)]
    assert all(a >= b for a, b in zip(mdds, mdds[1:]))
    need = stats.seeds_to_detect(c.variance, mdds[2], 2)
    assert need is not None and need <= 5
    assert stats.seeds_to_detect(c.variance, stats.smallest_detectable(c.variance, 10 ** 4, 2) / 2, 2) is None
    from mmin_plugin.results.report import detectable_line

    line = detectable_line(t)
    assert "3 seeds" in line and "Holm over 2 run(s)" in line and f"{max(c.mdd, t.get('c', 'MAE').mdd):.3g}" in line


def test_calibration_on_simulated_worlds():
    """A small seeded simulation (results/simulate.py): at 3 seeds and high seed variance, an
    8-variant null table marks any † no more often than 5% and the two-way interval covers, both
    within Monte Carlo error; a 0.05 MAE difference at 5 seeds, low variance, is mostly detected.
    Without Holm the family-wise rate is far above 5% (the test can fail)."""
    world = simulate.World(n_clips=300, seed_sd=0.03)
    res = simulate.calibration(world, n_seeds=3, n_worlds=60, seed=1, n_variants=8)
    assert res["fwer"] <= 0.05 + 3 * max(res["fwer_mcse"], 0.028)
    assert res["fwer_unadjusted"] > res["fwer"]
    assert res["coverage"] >= 0.95 - 3 * 0.028
    assert res["fpr"] <= 0.05 + 3 * 0.028
    low = simulate.calibration(simulate.World(n_clips=686, seed_sd=0.01), n_seeds=5, n_worlds=30, seed=2,
                               n_variants=1)
    assert low["power"] >= 0.8 - 3 * 0.073


def test_capture_predictions_records_ids_labels_and_outputs():
    class Net(torch.nn.Module):
        def forward(self, x):
            return {"M": 2 * x}

    batches = [{"id": ["a", "b"], "x": torch.tensor([[1.0], [2.0]]), "labels": {"M": torch.tensor([1.0, 1.0])}},
               {"id": ["c"], "x": torch.tensor([[3.0]]), "labels": {"M": torch.tensor([0.0])}}]

    def do_test(model, loader, mode="VAL", forward_twice=False):
        preds, labels = [], []
        for b in loader:
            out = model(b["x"])
            if forward_twice:
                model(b["x"])
            preds.append(out["M"].view(-1))
            labels.append(b["labels"]["M"])
        p, t = torch.cat(preds), torch.cat(labels)
        return {"MAE": round(float((p - t).abs().mean()), 4)}

    res, pred = runner.capture_predictions(do_test, Net(), batches, "TEST")
    assert res["MAE"] == pytest.approx(10 / 3, abs=1e-4) and list(pred["ids"]) == ["a", "b", "c"]
    assert pred["preds"].tolist() == [2.0, 4.0, 6.0] and pred["labels"].tolist() == [1.0, 1.0, 0.0]
    _, bad = runner.capture_predictions(do_test, Net(), batches, "TEST", forward_twice=True)
    assert bad is None  # calls that do not line up with batches: nothing saved rather than a wrong file


