"""results/stats.py: metrics equal to MMSA's MetricsTop, the paired bootstrap and t-test on
constructed cases whose answer is known, the tables built from saved predictions."""
import contextlib
import io
import json

import numpy as np
import pandas as pd
import pytest
import torch

from mmin_plugin.errors import MMINDataError
from mmin_plugin.experiments import compare
from mmin_plugin.integration import runner
from mmin_plugin.results import stats
from mmin_plugin.runs.trial import read_predictions, trial_dir, write_predictions

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


def test_identical_predictions_give_zero_difference_and_no_significance():
    rng = np.random.default_rng(2)
    data = _data(rng, {"a": lambda p, s: p, "b": lambda p, s: p.copy()})
    st = stats.compare_to_reference(data, "a", "mosi", n_boot=300)
    for k in ("MAE", "Corr", "Has0_acc_2", "Non0_F1_score", "Mult_acc_7"):
        assert st.at["b", f"{k}|diff"] == 0.0
        assert st.at["b", f"{k}|ci_low"] <= 0.0 <= st.at["b", f"{k}|ci_high"]
        assert st.at["b", f"{k}|p"] == 1.0 and not st.at["b", f"{k}|significant"]
    assert st.at["a", "n_seeds"] == 3 and st.at["a", "MAE|diff"] == 0.0


def test_a_constant_shift_is_detected_and_an_unrelated_run_is_not():
    rng = np.random.default_rng(3)
    data = _data(rng, {"ref": lambda p, s: p, "shifted": lambda p, s: p + 0.7,
                       "same": lambda p, s: p + rng.normal(0, 0.01, N)}, seeds=(1, 2, 3, 4, 5))
    st = stats.compare_to_reference(data, "ref", "mosi", n_boot=500)
    assert st.at["shifted", "MAE|diff"] > 0.1 and st.at["shifted", "MAE|ci_low"] > 0
    assert st.at["shifted", "MAE|p"] < 0.01 and st.at["shifted", "MAE|significant"]
    assert st.at["same", "MAE|ci_low"] <= 0 <= st.at["same", "MAE|ci_high"] and not st.at["same", "MAE|significant"]
    # the own interval holds the run's own mean
    assert st.at["shifted", "MAE|own_low"] < st.at["shifted", "MAE|mean"] < st.at["shifted", "MAE|own_high"]
    assert "5 paired seeds" in stats.mdd_line(st)


def test_seed_variation_widens_the_interval():
    """Resampling seeds: a run whose advantage flips sign between seeds gets a wider CI than one
    with the same mean advantage on every seed."""
    rng = np.random.default_rng(4)
    flips = {1: 0.6, 2: -0.4, 3: 0.6, 4: -0.4, 5: 0.1}
    data = _data(rng, {"ref": lambda p, s: p, "steady": lambda p, s: p + 0.1,
                       "erratic": lambda p, s: p + flips[s]}, seeds=(1, 2, 3, 4, 5))
    st = stats.compare_to_reference(data, "ref", "mosi", n_boot=500)
    width = {r: st.at[r, "MAE|ci_high"] - st.at[r, "MAE|ci_low"] for r in ("steady", "erratic")}
    assert width["erratic"] > 2 * width["steady"]


def test_one_seed_has_no_test_and_samples_are_aligned_by_id():
    rng = np.random.default_rng(5)
    data = _data(rng, {"a": lambda p, s: p, "b": lambda p, s: p}, seeds=(7,))
    perm = rng.permutation(N)
    data["b"][7] = {k: v[perm] for k, v in data["b"][7].items()}  # other order, same clips
    st = stats.compare_to_reference(data, "a", "mosi", n_boot=200)
    assert st.at["b", "MAE|diff"] == 0.0 and np.isnan(st.at["b", "MAE|p"])
    assert "no test across seeds" in stats.mdd_line(st)
    data["b"][7]["labels"] = data["b"][7]["labels"] + 1.0
    with pytest.raises(MMINDataError, match="same labels"):
        stats.compare_to_reference(data, "a", "mosi", n_boot=10)


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


def _session(tmp_path, data, reference=None):
    """A compare Session whose trial folders hold rows and predictions from `data`."""
    runs = list(data)
    seeds = sorted(next(iter(data.values())))
    for run, by_seed in data.items():
        for seed, pred in by_seed.items():
            d = trial_dir(tmp_path, run, "mosi", seed)
            d.mkdir(parents=True)
            m = {k: float(v[0]) for k, v in stats.batch_metrics(pred["preds"], pred["labels"], "mosi").items()}
            row = {"run": run, "model": run, "dataset": "mosi", "seed": seed, "status": "ok", "error": "",
                   "wall_time_s": 1.0, "epochs": 1, "metrics": m, "predictions": "predictions.npz"}
            (d / "row.json").write_text(json.dumps(row))
            write_predictions(d, pred)
    specs = [compare.RunSpec(name=r, model=r, label=r) for r in runs]
    return compare.Session("compare", specs, "mosi", seeds, out_dir=tmp_path, reference=reference)


def test_tables_carry_difference_interval_p_and_marks(tmp_path):
    rng = np.random.default_rng(6)
    data = _data(rng, {"mmin": lambda p, s: p, "tfn": lambda p, s: p + 0.7, "misa": lambda p, s: p})
    sess = _session(tmp_path, data)
    assert read_predictions(trial_dir(tmp_path, "tfn", "mosi", 1))["preds"].shape == (N,)
    with contextlib.redirect_stdout(io.StringIO()):
        md = sess.write("mosi")
    df = pd.read_csv(tmp_path / "compare-mosi.csv")
    assert (df["reference"] == "mmin").all()
    for col in ("MAE|diff", "MAE|ci_low", "MAE|ci_high", "MAE|p", "Corr|p", "Non0_acc_2|diff"):
        assert col in df.columns
    tfn = df[df["run"] == "tfn"].iloc[0]
    assert tfn["MAE|diff"] > 0 and tfn["MAE|ci_low"] > 0 and tfn["MAE|p"] < 0.05
    assert (df[df["run"] == "misa"]["MAE|diff"] == 0).all()
    assert "## Against the reference: mmin" in md and "What this run can show:" in md
    tfn_line = next(line for line in md.splitlines() if line.startswith("| tfn | 3 |"))
    assert "**+" in tfn_line and stats_mark() in tfn_line
    misa_line = next(line for line in md.splitlines() if line.startswith("| misa | 3 |"))
    assert stats_mark() not in misa_line
    assert "Published number vs measured 95% interval" in md  # mmin, tfn have paper rows
    assert r"$^\dagger$" in (tmp_path / "compare-mosi.tex").read_text()
    from mmin_plugin.results import aggregate

    back = aggregate.read_rows(tmp_path / "compare-mosi.csv")
    assert "MAE" in back[0]["metrics"] and not any("|" in k for k in back[0]["metrics"])
    # another reference, named
    sess = _session(tmp_path / "again", data, reference="tfn")
    assert sess.reference == "tfn"
    with pytest.raises(Exception, match="reference"):
        _session(tmp_path / "bad", data, reference="nope")


def stats_mark():
    from mmin_plugin.results.report import SIG_MARK

    return SIG_MARK
