"""results/rebuild.py and `python -m mmin_plugin report`: a compare folder's tables rebuilt from its
records and predictions (training nothing), and comparisons of models trained anywhere from a spec
of `.npz` files; bad inputs end as one `error:` line and exit status 2; `report` loads neither
torch nor MMSA."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mmin_plugin import cli
from mmin_plugin.results import rebuild, simulate, stats
from mmin_plugin.runs.record import TrialRecord, trial_dir, write_predictions, write_record

REPO = Path(__file__).resolve().parent.parent
SEEDS = (1111, 1112, 1113)


def _world(runs=("mmin", "misa", "mult"), seeds=SEEDS, missing=None, n_clips=150):
    effects = {r: (0.08 if r == "misa" else 0.0) for r in runs}
    w = simulate.make_world(simulate.World(n_clips=n_clips, seed_sd=0.02), np.random.default_rng(5), effects, seeds,
                            missing=missing)
    return w["data"]


def _folder(out, data, dataset="mosi"):
    """A compare folder: a record and predictions per trial, as `compare` leaves them."""
    for run, by_seed in data.items():
        for seed, pred in by_seed.items():
            d = trial_dir(out, run, dataset, seed)
            d.mkdir(parents=True)
            m = {k: float(v[0]) for k, v in stats.batch_metrics(pred["preds"], pred["labels"], dataset).items()}
            write_record(d, TrialRecord(run=run, dataset=dataset, seed=seed, model=run, status="ok", label=run,
                                        metrics=m, has_predictions=True, wall_time_s=1.0, epochs=1))
            write_predictions(d, pred)


def _spec(tmp_path, data, reference="mmin", dataset="mosi"):
    spec = {"dataset": dataset, "reference": reference, "runs": {}}
    for run, by_seed in data.items():
        for seed, pred in by_seed.items():
            np.savez(tmp_path / f"{run}-{seed}.npz", **pred)
            spec["runs"].setdefault(run, {})[str(seed)] = f"{run}-{seed}.npz"
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    return path


def _stable(md: str) -> str:
    return "\n".join(line for line in md.splitlines() if "updated" not in line and not line.startswith("- source"))


def test_report_out_reproduces_the_tables_compare_wrote(tmp_path, capsys):
    """The tables compare's Session writes after its last trial, rebuilt by `report OUT` from the
    records and predictions alone (nothing trained: no MMSA_run is reachable from rebuild)."""
    from mmin_plugin.experiments import compare

    _folder(tmp_path, _world(missing={"mult": (1112,)}))
    specs = [compare.RunSpec(name=r, model=r, label=r) for r in ("mmin", "misa", "mult")]
    sess = compare.Session("compare", specs, "mosi", list(SEEDS), out_dir=tmp_path)
    rebuild.write_plan(tmp_path, sess.plan)
    md = sess.write("mosi")
    before = {e: (tmp_path / f"compare-mosi.{e}").read_text() for e in ("csv", "tex")}
    for e in ("csv", "md", "tex", "png"):
        (tmp_path / f"compare-mosi.{e}").unlink()
    assert cli.main(["report", str(tmp_path)]) == 0
    assert "compare-mosi.md" in capsys.readouterr().out
    assert _stable((tmp_path / "compare-mosi.md").read_text()) == _stable(md)
    assert {e: (tmp_path / f"compare-mosi.{e}").read_text() for e in ("csv", "tex")} == before
    assert (tmp_path / "compare-mosi.png").read_bytes()[:4] == b"\x89PNG"
    # the missing seed: every mean, difference and † over the seeds mult has
    assert "Seeds used: 1111, 1113" in md and "Left out: mmin seed(s) 1112; misa seed(s) 1112" in md
    df = pd.read_csv(tmp_path / "compare-mosi.csv")
    assert set(df.loc[df["used"] == 1, "seed"]) == {1111, 1113}
    misa = df[df["run"] == "misa"].iloc[0]
    mmin = df[df["run"] == "mmin"].iloc[0]
    assert misa["MAE|diff"] == pytest.approx(misa["MAE|mean"] - mmin["MAE|mean"], abs=1e-12)
    # the measured table's means come from the same seeds
    used = df[(df["used"] == 1)].groupby("run")["MAE"].mean()
    assert f"{used['misa']:.3f}" in next(line for line in md.splitlines() if line.startswith("| misa |"))
    # another reference and primary metric, from the command line
    assert cli.main(["report", str(tmp_path), "--reference", "misa", "--primary", "Corr"]) == 0
    df = pd.read_csv(tmp_path / "compare-mosi.csv")
    assert set(df["reference"]) == {"misa"} and set(df["primary"]) == {"Corr"}


def test_report_from_predictions_writes_the_tables(tmp_path, capsys):
    spec = _spec(tmp_path, _world(seeds=(1, 2, 3, 4, 5)))
    out = tmp_path / "out"
    assert cli.main(["report", "--from-predictions", str(spec), "--out", str(out)]) == 0
    df = pd.read_csv(out / "compare-mosi.csv")
    for k in ("MAE", "Corr", "Has0_acc_2"):
        for f in ("diff", "ci_low", "ci_high", "p", "p_adj", "significant", "mean"):
            assert f"{k}|{f}" in df.columns
    misa = df[df["run"] == "misa"].iloc[0]
    assert misa["MAE|diff"] > 0 and misa["MAE|significant"]  # a real 0.08 difference
    md = (out / "compare-mosi.md").read_text()
    assert "## Against the reference: mmin" in md and "Published number vs one more seed" in md
    assert "What this comparison can show" in md and "would take about" in md or "below what any number" in md
    assert not (out / "compare-mosi.png").exists()  # the figure only when asked for
    assert cli.main(["report", "--from-predictions", str(spec), "--out", str(out), "--figure"]) == 0
    assert (out / "compare-mosi.png").read_bytes()[:4] == b"\x89PNG"
    capsys.readouterr()


@pytest.mark.parametrize("spoil, message", [
    (lambda d: d.update(ids=np.array([f"other{i}" for i in range(len(d["ids"]))])), "sample ids"),
    (lambda d: d.update(preds=d["preds"][:-2], labels=d["labels"][:-2], ids=d["ids"][:-2]), "sample ids"),
    (lambda d: d.update(preds=d["preds"][:-2]), "one length"),
    (lambda d: d.update(labels=d["labels"] + 0.5), "same label"),
    (lambda d: d["preds"].__setitem__(0, np.inf), "finite"),
])
def test_report_refuses_predictions_that_do_not_line_up(tmp_path, capsys, spoil, message):
    data = _world(seeds=(1, 2))
    data["mult"][2] = {k: np.array(v, copy=True) for k, v in data["mult"][2].items()}
    spoil(data["mult"][2])
    rc = cli.main(["report", "--from-predictions", str(_spec(tmp_path, data)), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and err.count("\n") == 1 and message in err and "Traceback" not in err


@pytest.mark.parametrize("edit, message", [
    (lambda s: s.update(dataset="imdb"), "dataset"),
    (lambda s: s.update(reference="nope"), "reference"),
    (lambda s: s["runs"]["misa"].update({"x": "a.npz"}), "integer seeds"),
    (lambda s: s["runs"]["misa"].update({"9": "missing.npz"}), "no such file"),
    (lambda s: s.update(runs={"mmin": s["runs"]["mmin"]}), "at least 2 runs"),
])
def test_report_refuses_a_bad_spec(tmp_path, capsys, edit, message):
    path = _spec(tmp_path, _world(seeds=(1, 2)))
    spec = json.loads(path.read_text())
    edit(spec)
    path.write_text(json.dumps(spec))
    rc = cli.main(["report", "--from-predictions", str(path), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and message in err and "Traceback" not in err


def test_report_needs_exactly_one_source(tmp_path, capsys):
    assert cli.main(["report"]) == 2
    assert cli.main(["report", str(tmp_path)]) == 2  # not a compare folder
    err = capsys.readouterr().err
    assert "expected a folder OUT or --from-predictions" in err and "no runs/ folder" in err


@pytest.mark.e2e
def test_report_loads_neither_torch_nor_mmsa(tmp_path):
    """`report --from-predictions` in a fresh interpreter whose package root is a bare stub (the
    root may register MMIN into MMSA): the command's own imports load neither torch nor MMSA."""
    spec = _spec(tmp_path, _world(seeds=(1, 2, 3)))
    code = ("import sys, types; pkg = types.ModuleType('mmin_plugin'); "
            f"pkg.__path__ = [{str(REPO / 'mmin_plugin')!r}]; sys.modules['mmin_plugin'] = pkg; "
            "from mmin_plugin.cli import main; "
            f"rc = main(['report', '--from-predictions', {str(spec)!r}, '--out', {str(tmp_path / 'o')!r}]); "
            "print(rc, sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'MMSA')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "0 []"
    assert (tmp_path / "o" / "compare-mosi.md").is_file()


@pytest.mark.parametrize("edit, message", [
    (lambda p: p.update(kind="tune"), "kind"),
    (lambda p: p.update(reference="nope"), "reference"),
    (lambda p: p["runs"][0].update(name="../x"), "name"),
    (lambda p: p.update(settings={"seeds": "1, 2"}), "settings.seeds"),
])
def test_report_out_refuses_a_malformed_plan(tmp_path, capsys, edit, message):
    _folder(tmp_path, _world(seeds=(1, 2)))
    plan = rebuild.Plan("compare", tuple(rebuild.RunInfo(r, r, r) for r in ("mmin", "misa", "mult")), "mmin",
                        settings={"seeds": [1, 2], "overrides": {"mmin.d_model": 16}})
    rebuild.write_plan(tmp_path, plan)
    assert rebuild.read_plan(tmp_path) == plan
    data = json.loads((tmp_path / rebuild.PLAN_FILE).read_text())
    edit(data)
    (tmp_path / rebuild.PLAN_FILE).write_text(json.dumps(data))
    assert cli.main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err
