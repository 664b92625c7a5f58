"""Trials, backends, resume/overwrite, retries and `tune` (issue 12).

Fast tests replace `runner.mmsa_run` by a fake (serial backend, in-process). The e2e tests run MMSA
on the tiny demo data (`small_mosi`, d_model 16, 1 epoch): a local Ray (num_cpus=2) against the
serial backend, a retried trial, resume, the refusal of a non-empty folder, and a small `tune`.
"""
import json
from pathlib import Path

import pytest

import mmin_plugin.integration.runner as runner
from mmin_plugin.errors import MMINConfigError
from mmin_plugin.experiments import compare, tune
from mmin_plugin.runs import sweep
from mmin_plugin.runs.trial import read_row, run_trial

TINY = {"mmin.d_model": 16, "mmin.nheads": 4, "mmin.fine_layers": 1, "mmin.fusion_ff_dim": 32,
        "mmin.disc_hidden": 8}


@pytest.fixture
def fake(fake_mmsa_run):
    return fake_mmsa_run


def _quiet_compare(capsys, **kw):
    rows = compare.run_comparison(**kw)
    capsys.readouterr()
    return rows


def test_failed_trial_is_retried(fake, tmp_path, capsys):
    calls, plan = fake
    failures = []

    def fail_once(kw):
        if not failures:
            failures.append(kw)
            raise RuntimeError("worker hiccup")

    plan[("mmin", 1112)] = fail_once
    rows = _quiet_compare(capsys, models=["mmin"], seeds=[1111, 1112], out_dir=tmp_path / "a",
                          sweep=sweep.SweepOptions(retries=1))
    assert [r["status"] for r in rows] == ["ok", "ok"] and [c["seed"] for c in calls] == [1111, 1112, 1112]
    failures.clear()
    rows = _quiet_compare(capsys, models=["mmin"], seeds=[1112], out_dir=tmp_path / "b")  # retries=0
    assert rows[0]["status"] == "failed" and "worker hiccup" in rows[0]["error"]
    assert "RuntimeError" in (tmp_path / "b" / "runs" / "mmin" / "mosi" / "seed1112" / "error.txt").read_text()


def test_overwrite_replaces_results_only(fake, tmp_path, capsys):
    calls, _ = fake
    out = tmp_path / "o"
    _quiet_compare(capsys, models=["mmin", "misa"], seeds=[1111], out_dir=out)
    (out / "notes.txt").write_text("mine")
    _quiet_compare(capsys, models=["mmin"], seeds=[1112], out_dir=out, sweep=sweep.SweepOptions(overwrite=True))
    assert sorted(p.name for p in (out / "runs").iterdir()) == ["mmin"]
    assert sorted(p.name for p in (out / "runs" / "mmin" / "mosi").iterdir()) == ["seed1112"]
    assert (out / "notes.txt").read_text() == "mine" and "misa" not in (out / "compare-mosi.csv").read_text()
    with pytest.raises(MMINConfigError, match="at most one"):
        compare.run_comparison(models=["mmin"], seeds=[1], out_dir=out,
                               sweep=sweep.SweepOptions(overwrite=True, resume=True))


def test_resume_skips_finished_trials_and_reruns_a_changed_config(fake, tmp_path, capsys):
    calls, _ = fake
    kw = dict(models=["mmin", "misa"], seeds=[1111], out_dir=tmp_path / "r")
    compare.run_comparison(**kw)
    n = len(calls)
    compare.run_comparison(sweep=sweep.SweepOptions(resume=True), **kw)
    assert len(calls) == n and "resume: 2 of 2 trial(s) already finished, skipped; running 0" in capsys.readouterr().out
    compare.run_comparison(sweep=sweep.SweepOptions(resume=True), overrides={"misa.hidden_size": 8}, **kw)
    assert [c["model"] for c in calls[n:]] == ["misa"]
    assert "resume: 1 of 2 trial(s) already finished" in capsys.readouterr().out


def test_several_datasets_one_call(fake, tmp_path, capsys):
    calls, _ = fake
    rows = _quiet_compare(capsys, models=["mmin"], dataset=["mosi", "mosei"], seeds=[1111], out_dir=tmp_path)
    assert [(r["dataset"], r["status"]) for r in rows] == [("mosi", "ok"), ("mosei", "ok")]
    assert (tmp_path / "compare-mosi.md").is_file() and (tmp_path / "compare-mosei.tex").is_file()
    assert read_row(tmp_path / "runs" / "mmin" / "mosei" / "seed1111")["dataset"] == "mosei"


def test_config_file_goes_to_its_model_only(fake, tmp_path, capsys):
    calls, _ = fake
    cfg = tmp_path / "tuned.json"
    cfg.write_text(json.dumps(tune.mmsa_config_file("mmin", "mosi", {"d_model": 32})))
    _quiet_compare(capsys, models=["mmin", "misa"], seeds=[1111], out_dir=tmp_path / "o", config_files=[cfg])
    assert [(c["model"], c["config_file"]) for c in calls] == [("mmin", str(cfg)), ("misa", None)]
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    with pytest.raises(MMINConfigError, match="MMSA's schema"):
        compare.config_file_models([bad])


class _Trainer:
    """MMSA's loop: train, VAL, keep the best, patience; `_run` then tests once."""

    def __init__(self, val_losses):
        self.args = {"early_stop": 2, "KeyEval": "Loss"}
        self.val, self.modes = list(val_losses), []

    def do_train(self, model, dataloader, return_epoch_results=False):
        epochs, best_epoch, best = 0, 0, 1e8
        while True:
            epochs += 1
            cur = self.do_test(None, None, mode="VAL")["Loss"]
            if cur <= best - 1e-6:
                best, best_epoch = cur, epochs
            if epochs - best_epoch >= self.args["early_stop"]:
                return

    def do_test(self, model, dataloader, mode="VAL", return_sample_results=False):
        self.modes.append(mode)
        return {"Loss": self.val.pop(0), "MAE": 1.0} if mode == "VAL" else {"Loss": -1.0, "MAE": -1.0}


def test_probe_skips_test_and_reports_the_best_validation():
    t = _Trainer([3.0, 1.0, 2.0, 1.0])
    seen = []
    probe = runner.TrialProbe(skip_test=True, on_valid=lambda e, r: seen.append(e))
    probe.instrument(t)
    t.do_train(None, None)
    assert t.do_test(None, None, mode="TEST") == {"Loss": 1.0, "MAE": 1.0}  # epoch 2's, not a test score
    assert t.modes == ["VAL"] * 4 and dict(probe.modes) == {"VAL": 4, "TEST (skipped)": 1}
    assert seen == [1, 2, 3, 4] and probe.best_valid() is probe.valid[1]
    plain = _Trainer([3.0, 1.0, 2.0, 2.0])
    runner.TrialProbe().instrument(plain)
    plain.do_train(None, None)
    assert plain.do_test(None, None, mode="TEST")["Loss"] == -1.0 and plain.modes[-1] == "TEST"


def test_search_space_of_mmin_and_mmsa_models():
    space = tune.search_space("mmin")
    assert "d_model" in space and space["d_model"] == [64, 128]
    assert "hidden_size" in tune.search_space("misa")
    with pytest.raises(MMINConfigError, match="no_such"):
        tune.search_space("no_such")


# ------------------------------------------------------------------------------------------------
# end to end on the tiny demo data
# ------------------------------------------------------------------------------------------------
def _demo_kw(small_mosi, out):
    return dict(models=["mmin"], dataset="mosi", seeds=[1111, 1112], feature_path=small_mosi["feature_path"],
                pretrained=small_mosi["bert_dir"], max_epochs=1, out_dir=out, overrides=dict(TINY))


def _flaky_trial_fn(marker):
    """The first attempt of seed 1112 trains, keeps its row in `marker`, then fails; later attempts
    (and seed 1111) run normally."""
    def trial_fn(trial):
        row = run_trial(trial)
        if trial.seed == 1112 and not Path(marker).exists():
            Path(marker).write_text(json.dumps(row))
            raise RuntimeError("simulated worker failure")
        return row
    return trial_fn


@pytest.mark.e2e
def test_ray_runs_concurrently_matches_serial_retries_resumes_and_refuses(small_mosi, tmp_path, capsys,
                                                                         monkeypatch):
    pytest.importorskip("ray")
    serial = _quiet_compare(capsys, **_demo_kw(small_mosi, tmp_path / "serial"))
    marker = tmp_path / "marker"
    opts = sweep.SweepOptions(backend="ray", num_cpus=2, cpus_per_trial=1, retries=1,
                              trial_fn=_flaky_trial_fn(str(marker)))
    ray_rows = _quiet_compare(capsys, sweep=opts, **_demo_kw(small_mosi, tmp_path / "ray"))
    first = json.loads(marker.read_text())  # seed 1112 failed once on Ray and was retried
    assert [r["status"] for r in serial] == [r["status"] for r in ray_rows] == ["ok", "ok"]
    for s, r in zip(serial, ray_rows):  # CPU runs are deterministic: the same per-seed metrics
        assert r["seed"] == s["seed"] and r["metrics"] == pytest.approx(s["metrics"], rel=1e-6, abs=1e-9)
        assert r["environment"]["ray"] and r["do_test_calls"] == {"VAL": 1, "TEST": 1}
    # seed 1111 and the first attempt of seed 1112 ran at the same time
    assert max(first["t_start"], ray_rows[0]["t_start"]) < min(first["t_end"], ray_rows[0]["t_end"])
    assert first["metrics"] == ray_rows[1]["metrics"]
    assert ray_rows[0]["environment"]["host"] and ray_rows[0]["config"]["featurePath"] == small_mosi["feature_path"]

    # --resume after a finished run starts no MMSA_run
    import MMSA

    def no_run(*a, **kw):
        raise AssertionError("MMSA_run called on resume")

    monkeypatch.setattr(MMSA, "MMSA_run", no_run)
    rows = compare.run_comparison(sweep=sweep.SweepOptions(resume=True), **_demo_kw(small_mosi, tmp_path / "ray"))
    assert "resume: 2 of 2 trial(s) already finished, skipped; running 0" in capsys.readouterr().out
    assert [r["metrics"] for r in rows] == [r["metrics"] for r in ray_rows]

    # without --resume / --overwrite a non-empty folder is refused and nothing changes
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in (tmp_path / "ray").rglob("*") if p.is_file()}
    with pytest.raises(MMINConfigError, match="not empty|--resume"):
        compare.run_comparison(**_demo_kw(small_mosi, tmp_path / "ray"))
    assert {p: (p.stat().st_mtime_ns, p.read_bytes())
            for p in (tmp_path / "ray").rglob("*") if p.is_file()} == before


@pytest.mark.e2e
def test_tune_never_evaluates_test_during_search(small_mosi, tmp_path, capsys, monkeypatch):
    from mmin_plugin.integration.trainer import MMINTrainer

    seen = []
    orig = MMINTrainer.do_test

    def spy(self, model, dataloader, mode="VAL", *a, **kw):
        seen.append((Path(self.args["model_save_path"]).parts[-5], str(mode)))  # <run>/<ds>/seed/models/x.pth
        return orig(self, model, dataloader, mode, *a, **kw)

    monkeypatch.setattr(MMINTrainer, "do_test", spy)
    fixed = {**TINY, "mmin.batch_size": 16, "mmin.learning_rate_bert": 5e-5}
    res = tune.run_tune("mmin", "mosi", trials=2, search="random", seed=3, final_seeds=[1111], prune="median",
                        feature_path=small_mosi["feature_path"], pretrained=small_mosi["bert_dir"], max_epochs=1,
                        out_dir=tmp_path, overrides=fixed)
    md = capsys.readouterr().out
    search = [m for run, m in seen if "trial" in run]
    final = [m for run, m in seen if run == "mmin-final"]
    assert search == ["VAL", "VAL"] and final == ["VAL", "TEST"]  # TEST only once, in the final retrain
    csv = (tmp_path / "tune-mmin-mosi.csv").read_text().splitlines()
    header = csv[0].split(",")
    assert len(csv) == 3 and "valid_score" in header and not {"MAE", "Corr", "Has0_acc_2"} & set(header)
    assert "d_model" not in header and "fine_layers" not in header  # fixed by --set: not searched
    cfg_path = tmp_path / "tune-mmin-mosi.json"
    from MMSA.config import get_config_regression

    args = get_config_regression("mmin", "mosi", str(cfg_path))
    for k, v in res["chosen"].items():
        assert args[k] == v, k
    assert args["d_model"] == 16 and "featurePath" not in json.loads(cfg_path.read_text())["mmin"]["datasetParams"]
    text = (tmp_path / "tune-mmin-mosi.md").read_text()
    assert "evaluated 0 time(s) during the search" in text and "| mmin (tuned) |" in text and text in md
    assert res["final"][0]["metrics"]["MAE"] > 0 and res["search"][0]["metrics"] == {}
