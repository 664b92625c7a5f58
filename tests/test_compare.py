"""`compare` / `ablate`: MMIN vs MMSA's own models and the Table 2 variants through MMSA_run.

Two kinds of tests:
* end to end on the demo data (tiny BERT, 32/16/16 samples, sequences 16/40/30, 1 seed, 1 epoch):
  `run_comparison` with MMIN, MISA, MulT and a bogus model name; `ablate` through the CLI; and
  `python -m mmin_plugin compare` once as a subprocess. MMIN is shrunk with model-scoped overrides
  (`mmin.<key>`), MMSA's models keep MMSA's configuration.
* fast ones with `runner.mmsa_run` replaced by a fake: table/CSV contents, failures, interruption,
  SIMS metric names, the config each model receives, the epoch cap's trainer instrumentation.
"""
import contextlib
import csv
import io
import logging
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import mmin_plugin
import mmin_plugin.integration.runner
from mmin_plugin.errors import MMINConfigError, MMINDataError
from mmin_plugin.experiments import compare
from mmin_plugin.integration import runner
from mmin_plugin.results import paper

REPO = Path(__file__).resolve().parent.parent
FAST_MMIN = {"mmin.d_model": 16, "mmin.nheads": 4, "mmin.fine_layers": 1, "mmin.fusion_ff_dim": 32,
             "mmin.disc_hidden": 8}
MOSI_METRICS = {"MAE", "Corr", "Has0_acc_2", "Non0_acc_2", "Has0_F1_score", "Non0_F1_score", "Mult_acc_7",
                "Mult_acc_5", "Loss"}
NUM = r"-?\d+\.\d+"


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------
def read_csv(path):
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        return reader.fieldnames, list(reader)


def md_table(md_text, first_header):
    """Rows (lists of cells) of the markdown table whose first header cell is `first_header`."""
    lines = md_text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_header} |"))
    header = [c.strip() for c in lines[start].strip().strip("|").split("|")]
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in re.split(r"(?<!\\)\|", line.strip()[1:-1])])
    return header, rows


def assert_png(path, min_bytes=10_000):
    data = Path(path).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    assert len(data) > min_bytes, f"{path}: only {len(data)} bytes"
    import matplotlib.image as mpimg

    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 200
    assert float(np.std(img[..., :3])) > 0.01  # not a blank canvas


def cell_mean(cell):
    m = re.search(NUM, cell.replace("*", ""))
    return float(m.group(0)) if m else None


@pytest.fixture(scope="module")
def demo(tmp_path_factory, tiny_bert):
    from mmin_plugin.experiments.demo import ensure_demo

    files = ensure_demo(tmp_path_factory.mktemp("cmpdata"), dataset="mosi", n_train=32, n_valid=16, n_test=16,
                        seq_lens=(16, 40, 30), bert_dir=tiny_bert)
    return {"feature_path": str(Path(files["feature_path"]).resolve()), "bert_dir": files["bert_dir"]}


# ------------------------------------------------------------------------------------------------
# end to end: run_comparison (MMIN, MISA, MulT, a bogus model) on the demo data
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def comparison(demo, tmp_path_factory):
    out = tmp_path_factory.mktemp("compare")
    n_handlers = len(logging.getLogger("MMSA").handlers)
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rows = compare.run_comparison(models=["mmin", "misa", "mult", "no_such_model"], dataset="mosi", seeds=[1111],
                                      feature_path=demo["feature_path"], pretrained=demo["bert_dir"], max_epochs=1,
                                      out_dir=out, overrides=dict(FAST_MMIN), gpu_ids=[], num_workers=0)
    return {"out": out, "rows": rows, "stdout": buf.getvalue(), "n_handlers": n_handlers}


@pytest.mark.e2e
def test_compare_csv_one_row_per_model_and_seed(comparison, demo):
    fields, rows = read_csv(comparison["out"] / "compare-mosi.csv")
    assert fields[:len(compare.CSV_BASE_COLUMNS)] == compare.CSV_BASE_COLUMNS
    rest = fields[len(compare.CSV_BASE_COLUMNS):]
    assert {f for f in rest if "|" not in f and f != "reference"} == MOSI_METRICS
    # statistics against the reference (mmin) for every metric but Loss (not recomputable from predictions)
    assert {f.split("|")[0] for f in rest if "|" in f} == MOSI_METRICS - {"Loss"}
    assert [r["run"] for r in rows] == ["mmin", "misa", "mult", "no_such_model"]
    by = {r["run"]: r for r in rows}
    for name in ("mmin", "misa", "mult"):
        r = by[name]
        assert r["status"] == "ok" and r["error"] == "" and r["seed"] == "1111" and r["dataset"] == "mosi"
        for k in MOSI_METRICS:
            assert math.isfinite(float(r[k])), (name, k, r[k])
        assert 0 <= float(r["Has0_acc_2"]) <= 1  # raw MMSA fractions in the CSV
        assert float(r["wall_time_s"]) > 0
        # the epoch cap holds for MMSA's own trainers too (their early_stop is 8)
        assert r["epochs"] == "1" and r["stopped_by"] == "max_epochs" and r["max_epochs"] == "1"
        assert r["early_stop"] == "8"  # each model's own MMSA patience, untouched
        assert r["feature_path"] == demo["feature_path"]
        assert Path(r["checkpoint"]).is_file()
        assert r["checkpoint"].endswith(f"runs/{name}/mosi/seed1111/models/{name}-mosi.pth")
        # each model's TEST predictions were captured and reproduce MMSA's metrics
        from mmin_plugin.results.stats import batch_metrics
        from mmin_plugin.runs.trial import read_predictions

        pred = read_predictions(Path(r["checkpoint"]).parent.parent)
        again = batch_metrics(pred["preds"], pred["labels"], "mosi")
        assert all(round(float(again[k][0]), 4) == pytest.approx(float(r[k]), abs=1e-4) for k in again), name
    # pretrained goes to BERT-based models only (MulT reads the file's precomputed text features)
    assert by["mmin"]["pretrained"] == by["misa"]["pretrained"] == demo["bert_dir"]
    assert by["mult"]["pretrained"] == ""
    bad = by["no_such_model"]
    assert bad["status"] == "failed" and "KeyError" in bad["error"] and "no_such_model" in bad["error"]
    assert all(bad[k] == "" for k in MOSI_METRICS)
    assert (comparison["out"] / "runs" / "no_such_model" / "mosi" / "seed1111" / "error.txt").read_text().startswith(
        "Traceback")


@pytest.mark.e2e
def test_compare_markdown_table(comparison):
    md = (comparison["out"] / "compare-mosi.md").read_text()
    header, rows = md_table(md, "Model")
    assert header == ["Model", "MAE ↓", "Corr", "Acc-2 (has-0/non-0)", "F1 (has-0/non-0)", "Acc-7", "Seeds ok",
                      "Epochs", "Wall time", "Status"]
    assert [r[0] for r in rows] == ["mmin", "misa", "mult", "no_such_model"]
    _, csv_rows = read_csv(comparison["out"] / "compare-mosi.csv")
    by_csv = {r["run"]: r for r in csv_rows}
    for r in rows[:3]:
        assert r[-1] == "ok" and r[6] == "1/1" and r[7] == "1"
        assert abs(cell_mean(r[1]) - float(by_csv[r[0]]["MAE"])) < 1e-3
        has0, non0 = r[3].split(" / ")
        assert abs(cell_mean(has0) - 100 * float(by_csv[r[0]]["Has0_acc_2"])) < 1e-2  # percent in the table
        assert abs(cell_mean(non0) - 100 * float(by_csv[r[0]]["Non0_acc_2"])) < 1e-2
        assert re.fullmatch(r"\d+(\.\d)? s|\d+ m \d\d s", r[8])
    # best per column in bold: the lowest MAE, the highest Corr
    maes = {r[0]: cell_mean(r[1]) for r in rows[:3]}
    bold_mae = [r[0] for r in rows[:3] if r[1].startswith("**")]
    assert bold_mae and all(maes[m] == min(maes.values()) for m in bold_mae)
    corrs = {r[0]: cell_mean(r[2]) for r in rows[:3]}
    assert all(corrs[r[0]] == max(corrs.values()) for r in rows[:3] if r[2].startswith("**"))
    failed = rows[3]
    assert failed[1] == "–" and failed[6] == "0/1" and failed[-1].startswith("failed") and "KeyError" in failed[-1]
    # the paper's Table 1, labelled as published numbers
    assert "## Published reference: paper Table 1, MOSI (published numbers, not measured here)" in md
    _, paper_rows = md_table(md, "Model (paper)")
    assert [r[0] for r in paper_rows] == [r["model"] + (r["source"] or "") for r in paper.table1("mosi")]
    mmin_paper = paper_rows[-1]
    assert mmin_paper[:5] == ["MMIN (Ours)", "0.741", "0.795", "83.53/85.52", "83.46/85.51"]
    assert "negative/non-negative" in md and "status: complete (4/4" in md


@pytest.mark.e2e
def test_compare_figures_history_and_terminal(comparison):
    out = comparison["out"]
    assert_png(out / "compare-mosi.png")
    trial = out / "runs" / "mmin" / "mosi" / "seed1111"
    assert_png(trial / "curves.png")
    assert not (out / "runs" / "misa" / "mosi" / "seed1111" / "curves.png").exists()
    import json

    hist = json.loads((trial / "models" / "mmin-mosi.history.json").read_text())
    assert len(hist) == 1 and {"train_L_senti", "train_L_sep", "train_L_ac", "train_L_ap"} <= set(hist[0])
    # every trial has its own MMSA folders; MMSA's results CSV one row per call
    for name in ("mmin", "misa", "mult"):
        d = out / "runs" / name / "mosi" / "seed1111"
        assert (d / "results" / "normal" / "mosi.csv").is_file()
        assert (d / "logs" / f"{name}-mosi.log").is_file()
        row = json.loads((d / "row.json").read_text())
        assert row["status"] == "ok" and row["environment"]["torch"] and row["config"]["model_name"] == name
        assert row["do_test_calls"] == {"VAL": 1, "TEST": 1}
        events = list((d / "tb").glob("events.out.tfevents.*"))  # per-epoch validation curves
        assert events and events[0].stat().st_size > 0
    assert (out / "compare-mosi.tex").read_text().count(r"\textbf{") >= 2
    stdout = comparison["stdout"]
    assert "[compare mosi] 1/4 mmin mosi seed 1111: running" in stdout
    assert "no_such_model mosi seed 1111: FAILED" in stdout
    assert "| mmin |" in stdout and "Published reference" in stdout
    # MMSA_run's per-call logging handlers do not pile up
    assert len(logging.getLogger("MMSA").handlers) == comparison["n_handlers"]
    assert [r["status"] for r in comparison["rows"]] == ["ok", "ok", "ok", "failed"]


# ------------------------------------------------------------------------------------------------
# end to end: ablate through the CLI, compare through `python -m mmin_plugin`
# ------------------------------------------------------------------------------------------------
def _fast_set():
    return [f"{k}={v}" for k, v in FAST_MMIN.items()]


@pytest.mark.e2e
def test_cli_ablate_all_table2_variants(demo, tmp_path, capsys):
    from mmin_plugin import cli

    out = tmp_path / "abl"
    rc = cli.main(["ablate", "--dataset", "mosi", "--seeds", "1111", "--max-epochs", "1",
                   "--feature-path", demo["feature_path"], "--pretrained", demo["bert_dir"], "--out", str(out),
                   "--set", *_fast_set()])
    assert rc == 0
    fields, rows = read_csv(out / "ablation-mosi.csv")
    names = [f"mmin-{n}" for n, _, _ in compare.ABLATION_VARIANTS]
    assert [r["run"] for r in rows] == names
    assert [r["ablation"] for r in rows] == [",".join(a) for _, a, _ in compare.ABLATION_VARIANTS]
    assert all(r["model"] == "mmin" and r["status"] == "ok" and r["epochs"] == "1" for r in rows), rows
    for r in rows:
        assert all(math.isfinite(float(r[k])) for k in MOSI_METRICS)
        run_dir = out / "runs" / r["run"] / "mosi" / "seed1111"
        assert Path(r["checkpoint"]) == run_dir / "models" / "mmin-mosi.pth" and Path(r["checkpoint"]).is_file()
        import pandas as pd

        assert len(pd.read_csv(run_dir / "results" / "normal" / "mosi.csv")) == 1  # per-variant MMSA CSV
        assert_png(run_dir / "curves.png")
    # variants really differ: 'w/o text' trains a different network than the full model
    assert rows[0]["MAE"] != rows[3]["MAE"] or rows[0]["Corr"] != rows[3]["Corr"]
    md = (out / "ablation-mosi.md").read_text()
    header, md_rows = md_table(md, "Variant")
    assert header[:3] == ["Variant", "`ablation`", "MAE ↓"]
    assert [r[0] for r in md_rows] == [label for _, _, label in compare.ABLATION_VARIANTS]
    assert [r[1] for r in md_rows] == ["[]"] + [a[0] for _, a, _ in compare.ABLATION_VARIANTS[1:]]
    assert all(cell_mean(r[2]) is not None for r in md_rows)
    assert "## Published reference: paper Table 2, ablations on MOSI (published numbers, not measured here)" in md
    _, paper_rows = md_table(md, "Ablation (paper)")
    assert len(paper_rows) == 9 and paper_rows[2][:3] == ["w/o Text", "1.313", "0.554"]
    assert_png(out / "ablation-mosi.png")
    assert "| MMIN (full) |" in capsys.readouterr().out


@pytest.mark.e2e
def test_cli_compare_reports_statistics_against_the_reference(demo, tmp_path, capsys):
    """Issue 16's acceptance on the demo data: `compare --models mmin tfn --seeds ...` writes a CSV
    with the difference, CI bounds and p per metric against the reference, from saved predictions."""
    from mmin_plugin import cli
    from mmin_plugin.results import stats
    from mmin_plugin.runs.trial import read_predictions

    out = tmp_path / "st"
    rc = cli.main(["compare", "--models", "mmin", "tfn", "--seeds", "1111", "1112", "--max-epochs", "1",
                   "--feature-path", demo["feature_path"], "--pretrained", demo["bert_dir"], "--out", str(out),
                   "--set", *_fast_set()])
    assert rc == 0
    fields, rows = read_csv(out / "compare-mosi.csv")
    for k in ("MAE", "Corr", "Non0_acc_2"):
        assert {f"{k}|diff", f"{k}|ci_low", f"{k}|ci_high", f"{k}|p"} <= set(fields)
    tfn = [r for r in rows if r["run"] == "tfn"]
    assert all(r["reference"] == "mmin" for r in rows) and len(tfn) == 2
    lo, diff, hi = (float(tfn[0][f"MAE|{f}"]) for f in ("ci_low", "diff", "ci_high"))
    assert lo <= diff <= hi and 0 <= float(tfn[0]["MAE|p"]) <= 1
    # the difference is recomputed from the saved predictions and agrees with MMSA's rounded metrics
    maes = {r["run"]: np.mean([float(x["MAE"]) for x in rows if x["run"] == r["run"]]) for r in rows}
    assert diff == pytest.approx(maes["tfn"] - maes["mmin"], abs=2e-4)
    pred = read_predictions(out / "runs" / "tfn" / "mosi" / "seed1111")
    assert len(pred["ids"]) == 16 and stats.batch_metrics(pred["preds"], pred["labels"], "mosi")["MAE"][0] == \
        pytest.approx(float(tfn[0]["MAE"]), abs=1e-4)
    md = (out / "compare-mosi.md").read_text()
    assert "## Against the reference: mmin" in md and "With 2 paired seeds" in md
    assert "### Published number vs measured 95% interval" in md
    capsys.readouterr()


@pytest.mark.e2e
def test_python_m_compare_subprocess_default_feature_path(demo, tmp_path):
    """`python -m mmin_plugin compare` without --feature-path: MMSA's configured featurePath
    (MOSI/Processed/unaligned_50.pkl), re-rooted by $MMSA_DATASET_ROOT."""
    root = tmp_path / "datasets"
    (root / "MOSI" / "Processed").mkdir(parents=True)
    expected = root / "MOSI" / "Processed" / "unaligned_50.pkl"
    expected.symlink_to(demo["feature_path"])
    out = tmp_path / "cli"
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONPATH=str(REPO),
               MMSA_DATASET_ROOT=str(root), OMP_NUM_THREADS="1")
    args = [sys.executable, "-m", "mmin_plugin", "compare", "--dataset", "mosi", "--models", "mmin", "bogus",
            "--seeds", "1111", "--max-epochs", "1", "--pretrained", demo["bert_dir"], "--out", str(out),
            "--set", *_fast_set()]
    # an unknown model name is refused before anything trains (issue 11)
    proc = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2 and "error:" in proc.stderr and "bogus" in proc.stderr
    assert "Traceback" not in proc.stderr and not out.exists()
    args.remove("bogus")
    proc = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _, rows = read_csv(out / "compare-mosi.csv")
    assert [(r["run"], r["status"]) for r in rows] == [("mmin", "ok")]
    assert rows[0]["feature_path"] == str(expected)
    assert "| mmin |" in proc.stdout
    assert_png(out / "compare-mosi.png")


# ------------------------------------------------------------------------------------------------
# fast: runner.mmsa_run replaced by a fake
# ------------------------------------------------------------------------------------------------
def _metrics(seed, offset=0.0):
    r = (seed % 10) / 100
    return {"Has0_acc_2": 0.6 + r + offset, "Has0_F1_score": 0.55 + r + offset, "Non0_acc_2": 0.62 + r + offset,
            "Non0_F1_score": 0.6 + r + offset, "Mult_acc_5": 0.3, "Mult_acc_7": 0.25 + offset,
            "MAE": 0.9 - r - offset, "Corr": 0.5 + r + offset, "Loss": 1.0}


@pytest.fixture
def fake_run(monkeypatch, tmp_path):
    """Replace mmsa_run; records (model, config, seeds, kwargs); behaviour per model via `plan`."""
    calls, plan = [], {}

    def fake(model, dataset, config=None, seeds=(), **kw):
        calls.append({"model": model, "dataset": dataset, "config": dict(config), "seeds": list(seeds), **kw})
        action = plan.get(model, 0.0)
        if isinstance(action, BaseException) or (isinstance(action, type) and issubclass(action, BaseException)):
            raise action
        if callable(action):
            return action(seeds[0], len(calls))
        Path(kw["model_save_dir"], f"{model}-{dataset}.pth").write_bytes(b"x")
        return [_metrics(seeds[0], action)]

    monkeypatch.setattr(mmin_plugin.integration.runner, "mmsa_run", fake)
    return {"calls": calls, "plan": plan, "out": tmp_path / "out"}


def _quiet(fn, *a, **kw):
    with contextlib.redirect_stdout(io.StringIO()):
        return fn(*a, **kw)


def test_failure_of_one_model_keeps_the_others(fake_run, tmp_path):
    fake_run["plan"].update({"mmin": 0.05, "misa": RuntimeError("MISA exploded | badly\nsecond line"), "mult": 0.0})
    fp = tmp_path / "f.pkl"
    fp.write_bytes(b"")
    _quiet(compare.run_comparison, models=["mmin", "misa", "mult"], dataset="mosi", seeds=[1111, 1112],
           feature_path=fp, max_epochs=3, out_dir=fake_run["out"])
    _, rows = read_csv(fake_run["out"] / "compare-mosi.csv")
    assert [(r["run"], r["seed"], r["status"]) for r in rows] == [
        ("mmin", "1111", "ok"), ("mmin", "1112", "ok"), ("misa", "1111", "failed"), ("misa", "1112", "failed"),
        ("mult", "1111", "ok"), ("mult", "1112", "ok")]
    assert rows[2]["error"] == "RuntimeError: MISA exploded | badly second line"
    md = (fake_run["out"] / "compare-mosi.md").read_text()
    _, md_rows = md_table(md, "Model")
    by = {r[0]: r for r in md_rows}
    # mean ± std (ddof=0) over the two seeds, in the table's units
    maes = [0.9 - 0.01 - 0.05, 0.9 - 0.02 - 0.05]
    assert by["mmin"][1] == f"**{np.mean(maes):.3f} ± {np.std(maes):.3f}**"
    accs = [100 * (0.6 + 0.01 + 0.05), 100 * (0.6 + 0.02 + 0.05)]
    assert by["mmin"][3].split(" / ")[0] == f"**{np.mean(accs):.2f} ± {np.std(accs):.2f}**"
    assert not any(c.startswith("**") for c in by["mult"][1:6])  # mmin is better everywhere
    assert by["misa"][6] == "0/2" and by["misa"][-1].startswith("failed")
    assert "MISA exploded \\| badly" in by["misa"][-1]
    assert by["mult"][-1] == "ok"
    assert_png(fake_run["out"] / "compare-mosi.png")


def test_interrupted_run_keeps_finished_seeds(fake_run):
    def interrupt(seed, n):
        raise KeyboardInterrupt

    fake_run["plan"].update({"misa": interrupt})
    with pytest.raises(KeyboardInterrupt):
        _quiet(compare.run_comparison, models=["mmin", "mult", "misa"], dataset="mosi", seeds=[1111],
               out_dir=fake_run["out"])
    _, rows = read_csv(fake_run["out"] / "compare-mosi.csv")
    assert [(r["run"], r["status"]) for r in rows] == [("mmin", "ok"), ("mult", "ok")]
    md = (fake_run["out"] / "compare-mosi.md").read_text()
    assert "IN PROGRESS (2/3" in md
    _, md_rows = md_table(md, "Model")
    assert md_rows[2][0] == "misa" and md_rows[2][-1] == "not run yet"
    assert_png(fake_run["out"] / "compare-mosi.png")
    # a second run into the same folder is refused and changes nothing; --resume runs only the rest
    fake_run["plan"].clear()
    before = {p: p.read_bytes() for p in fake_run["out"].rglob("*") if p.is_file()}
    with pytest.raises(MMINConfigError, match="--resume"):
        compare.run_comparison(models=["mmin", "mult", "misa"], dataset="mosi", seeds=[1111],
                               out_dir=fake_run["out"])
    assert {p: p.read_bytes() for p in fake_run["out"].rglob("*") if p.is_file()} == before
    n_calls = len(fake_run["calls"])
    out = _quiet(compare.run_comparison, models=["mmin", "mult", "misa"], dataset="mosi", seeds=[1111],
                 out_dir=fake_run["out"], sweep=compare.SweepOptions(resume=True))
    assert [c["model"] for c in fake_run["calls"][n_calls:]] == ["misa"]
    assert [r["status"] for r in out] == ["ok", "ok", "ok"]
    assert len(read_csv(fake_run["out"] / "compare-mosi.csv")[1]) == 3


def test_sims_metric_names_do_not_crash(fake_run):
    sims = {"Mult_acc_2": 0.7, "Mult_acc_3": 0.6, "Mult_acc_5": 0.4, "F1_score": 0.69, "MAE": 0.45, "Corr": 0.55,
            "Loss": 0.3}
    fake_run["plan"].update({"mmin": lambda seed, n: [dict(sims)], "misa": lambda seed, n: [dict(sims, MAE=0.5)]})
    _quiet(compare.run_comparison, models=["mmin", "misa"], dataset="sims", seeds=[1111], out_dir=fake_run["out"])
    fields, rows = read_csv(fake_run["out"] / "compare-sims.csv")
    assert set(fields[len(compare.CSV_BASE_COLUMNS):]) == set(sims)
    md = (fake_run["out"] / "compare-sims.md").read_text()
    header, md_rows = md_table(md, "Model")
    assert header[1:7] == ["MAE ↓", "Corr", "Acc-2", "Acc-3", "Acc-5", "F1"]
    assert md_rows[0][1] == "**0.450**" and md_rows[1][1] == "0.500"
    assert "The paper reports no SIMS results" in md
    assert_png(fake_run["out"] / "compare-sims.png")


def test_each_model_gets_the_same_data_and_its_own_config(fake_run, demo):
    _quiet(compare.run_comparison, models=["MMIN", "misa", "mult", "self_mm", "mmin"], dataset="mosi",
           seeds=[1111, 1112], feature_path=os.path.relpath(demo["feature_path"]), pretrained="/some/bert",
           max_epochs=4, out_dir=fake_run["out"],
           overrides={"batch_size": 8, "mmin.d_model": 16, "misa.hidden_size": 32},
           gpu_ids=[], num_workers=0)
    calls = fake_run["calls"]
    assert [(c["model"], c["seeds"]) for c in calls] == [
        (m, [s]) for m in ("mmin", "misa", "mult", "self_mm") for s in (1111, 1112)]  # deduplicated, one seed a call
    for c in calls:
        cfg = c["config"]
        assert cfg["featurePath"] == demo["feature_path"] and cfg["max_epochs"] == 4 and cfg["batch_size"] == 8
        assert ("pretrained" in cfg) == (c["model"] != "mult") and cfg.get("pretrained", "/some/bert") == "/some/bert"
        assert ("d_model" in cfg) == (c["model"] == "mmin") and ("hidden_size" in cfg) == (c["model"] == "misa")
        trial = fake_run["out"].resolve() / "runs" / c["model"] / "mosi" / f"seed{c['seeds'][0]}"
        assert Path(c["model_save_dir"]) == trial / "models"
        assert Path(c["res_save_dir"]).parent == trial and c["gpu_ids"] == [] and c["num_workers"] == 0


def test_ablation_variants_configs_and_folders(fake_run):
    _quiet(compare.run_ablation, dataset="mosi", seeds=[1111], out_dir=fake_run["out"],
           overrides={"mmin.alpha": 0.5, "ablation": ["text"]}, variants=["full", "wo-cin", "wo-sep"])
    calls = fake_run["calls"]
    assert [c["model"] for c in calls] == ["mmin"] * 3
    assert [c["config"]["ablation"] for c in calls] == [[], ["cin"], ["sep"]]  # the variant wins
    assert all(c["config"]["alpha"] == 0.5 for c in calls)
    assert len({c["model_save_dir"] for c in calls}) == 3 and len({c["res_save_dir"] for c in calls}) == 3
    md = (fake_run["out"] / "ablation-mosi.md").read_text()
    _, md_rows = md_table(md, "Variant")
    assert [r[0] for r in md_rows] == ["MMIN (full)", "w/o CIN", "w/o L_sep"]
    assert_png(fake_run["out"] / "ablation-mosi.png")
    with pytest.raises(MMINConfigError, match="wo-nothing"):
        compare.run_ablation(dataset="mosi", seeds=[1], out_dir=fake_run["out"], variants=["wo-nothing"])


def test_bad_arguments_fail_before_any_run(fake_run, tmp_path):
    with pytest.raises(MMINDataError, match="feature file not found"):
        compare.run_comparison(models=["mmin"], dataset="mosi", seeds=[1], feature_path=tmp_path / "missing.pkl",
                               out_dir=fake_run["out"])
    with pytest.raises(MMINConfigError, match="seeds"):
        compare.run_comparison(models=["mmin"], dataset="mosi", seeds=[], out_dir=fake_run["out"])
    with pytest.raises(MMINConfigError, match="dataset"):
        compare.run_comparison(models=["mmin"], dataset="iemocap", seeds=[1], out_dir=fake_run["out"])
    with pytest.raises(MMINConfigError, match="max_epochs"):
        compare.run_ablation(dataset="mosi", seeds=[1], max_epochs=0, out_dir=fake_run["out"])
    assert fake_run["calls"] == []


def test_split_overrides():
    common, scoped = compare.split_overrides({"a": 1, "MMIN.d_model": 16, "misa.x": [1]})
    assert common == {"a": 1} and scoped == {"mmin": {"d_model": 16}, "misa": {"x": [1]}}
    with pytest.raises(MMINConfigError):
        compare.split_overrides({".x": 1})


# ------------------------------------------------------------------------------------------------
# the epoch cap, on a trainer that follows MMSA's loop exactly
# ------------------------------------------------------------------------------------------------
class _MMSALikeTrainer:
    """MMSA 2.2.1's trainer loop: train, VAL do_test, save if better, patience check."""

    def __init__(self, args, val_losses):
        from easydict import EasyDict

        self.args = EasyDict(args)
        self.val_losses = list(val_losses)
        self.saved_at = []

    def do_train(self, model, dataloader, return_epoch_results=False):
        epochs, best_epoch, best_valid = 0, 0, 1e8
        while True:
            epochs += 1
            cur_valid = self.do_test(model, dataloader["valid"], mode="VAL")["Loss"]
            if cur_valid <= best_valid - 1e-6:
                best_valid, best_epoch = cur_valid, epochs
                self.saved_at.append(epochs)
            if epochs - best_epoch >= self.args.early_stop:
                return None

    def do_test(self, model, dataloader, mode="VAL", return_sample_results=False):
        return {"Loss": self.val_losses.pop(0) if mode == "VAL" else 0.0}


@pytest.mark.parametrize("max_epochs, losses, expect_epochs, expect_saved, stopped_by", [
    (3, [5, 4, 3, 2, 1, 0], 3, [1, 2, 3], "max_epochs"),     # improving: the cap stops it, epoch 3 saved first
    (None, [5, 4, 6, 6, 6, 6], 4, [1, 2], "early_stop"),     # no cap: patience (2) stops it
    (10, [5, 6, 6, 6, 6, 6], 3, [1], "early_stop"),          # patience before the cap
])
def test_epoch_cap_instrumentation(max_epochs, losses, expect_epochs, expect_saved, stopped_by):
    trainer = _MMSALikeTrainer({"early_stop": 2}, losses)
    probe = runner.TrialProbe(max_epochs)
    probe.instrument(trainer)
    trainer.do_train(None, {"valid": None})
    assert (probe.epochs, probe.stopped_by) == (expect_epochs, stopped_by)
    assert trainer.saved_at == expect_saved
    assert trainer.args.early_stop == 2 and trainer.args["early_stop"] == 2  # restored
    trainer.do_test(None, None, mode="VAL")  # outside do_train: not counted
    assert probe.epochs == expect_epochs


def test_epoch_cap_restores_mmsa_get_train():
    from MMSA.trains import ATIO

    before = ATIO.getTrain
    with runner.epoch_cap(2):
        assert ATIO.getTrain is not before
    assert ATIO.getTrain is before


def test_paper_tables_are_the_published_numbers():
    t1 = {r["model"]: r for r in paper.table1("mosei")}
    assert (t1["MMIN (Ours)"]["MAE"], t1["MMIN (Ours)"]["Acc-2"]) == (0.542, (83.84, 85.88))
    assert paper.value(t1["MISA"], "Has0_acc_2") == 83.6 and paper.value(t1["MISA"], "Non0_F1_score") == 85.3
    assert paper.value(t1["MulT"], "Has0_acc_2") is None and paper.table1("sims") == []
    assert [r["model"] for r in paper.table2()][-1] == "MMIN (Full)"
    assert paper.paper_row_for_ablation(["text"])["MAE"] == 1.313
    assert {tuple(r["ablation"]) for r in paper.table2()} == {tuple(a) for _, a, _ in compare.ABLATION_VARIANTS}
    assert "not measured here" in paper.TABLE1_NOTE and "not measured here" in paper.TABLE2_NOTE
