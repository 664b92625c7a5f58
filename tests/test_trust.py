"""No silent wrong numbers (issue 16): malformed row.json files, attempts kept apart, the lock
on `--out`, and the trial fingerprint that `--resume` checks. `runner.mmsa_run` is a fake."""
import json
from pathlib import Path

import pytest

import mmin_plugin.integration.runner as runner
from mmin_plugin.experiments import aggregate, compare, sweep
from mmin_plugin.experiments.trial import read_row, trial_dir


@pytest.fixture
def fake(monkeypatch):
    calls, plan = [], {}

    def fake_run(model, dataset, config=None, seeds=(), **kw):
        calls.append({"model": model, "seed": seeds[0], **kw})
        action = plan.get((model, seeds[0]))
        if action is not None:
            action(kw)
        Path(kw["model_save_dir"], f"{model}-{dataset}.pth").write_bytes(b"x")
        return [{"MAE": 0.5 + seeds[0] % 10 / 100, "Corr": 0.3, "Loss": 0.4}]

    monkeypatch.setattr(runner, "mmsa_run", fake_run)
    return calls, plan


def _compare(capsys, **kw):
    rows = compare.run_comparison(**kw)
    return rows, capsys.readouterr().out


@pytest.mark.parametrize("bad", [[], "a string", {"run": "mmin"}, "METRIC", "SEED"])
def test_malformed_row_is_reported_and_rerun_never_a_traceback(fake, tmp_path, capsys, bad):
    calls, _ = fake
    kw = dict(models=["mmin", "misa"], seeds=[1111], out_dir=tmp_path / "o")
    _compare(capsys, **kw)
    path = trial_dir(tmp_path / "o", "misa", "mosi", 1111) / "row.json"
    row = json.loads(path.read_text())
    if bad == "METRIC":
        row["metrics"]["MAE"] = "0.5"
    elif bad == "SEED":
        row["seed"] = {"value": 1111}
    else:
        row = bad
    path.write_text(json.dumps(row))
    assert read_row(path.parent) is None
    assert [r["run"] for r in aggregate.rows_from_trial_dirs(tmp_path / "o")] == ["mmin"]
    n = len(calls)
    rows, out = _compare(capsys, sweep=sweep.SweepOptions(resume=True), **kw)
    assert [c["model"] for c in calls[n:]] == ["misa"] and "counted as not finished, runs again" in out
    assert str(path) in out and [r["status"] for r in rows] == ["ok", "ok"]
    assert read_row(path.parent)["metrics"]["MAE"] == pytest.approx(0.51)


def test_a_row_of_another_trial_is_not_reused(fake, tmp_path, capsys):
    calls, _ = fake
    kw = dict(models=["mmin"], seeds=[1111, 1112], out_dir=tmp_path / "o")
    _compare(capsys, **kw)
    src, dst = (trial_dir(tmp_path / "o", "mmin", "mosi", s) / "row.json" for s in (1111, 1112))
    dst.write_text(src.read_text())  # a hand-copied row
    n = len(calls)
    _, out = _compare(capsys, sweep=sweep.SweepOptions(resume=True), **kw)
    assert [c["seed"] for c in calls[n:]] == [1112] and "not of this trial" in out
