"""`tune`'s selection and placement (issues 16 and 18): non-finite scores, search seeds apart from the
final seeds, the checkpoint a trainer keeps, checkpoints of search trials, GPUs of CPU-only trials,
the Optuna study (async, journal, resume, pruning), re-scoring.

Fast tests run `tune` in-process with a scripted trainer: `runner.mmsa_run` is replaced by a fake
that builds the trainer through MMSA's `ATIO.getTrain` (so `TrialProbe` instruments it exactly as it
does a real one) and runs MMSA's loop (train, VAL each epoch, patience, TEST once).
"""
import json
import math
from pathlib import Path

import pytest

import mmin_plugin.integration.runner as runner
from mmin_plugin.errors import MMINConfigError
from mmin_plugin.experiments import tune

TINY = {"mmin.d_model": 16, "mmin.nheads": 4, "mmin.fine_layers": 1, "mmin.fusion_ff_dim": 32,
        "mmin.disc_hidden": 8}


class Scripted:
    """MMSA's trainer loop over scripted validation results (`vals`: one dict per epoch)."""

    def __init__(self, args, vals):
        self.args, self.vals, self.modes = args, list(vals), []

    def do_train(self, model, dataloader, return_epoch_results=False):
        lower = self.args["KeyEval"] == "Loss"
        epochs, best_epoch, best = 0, 0, 1e8 if lower else 0
        while self.vals:
            epochs += 1
            cur = self.do_test(None, None, mode="VAL")[self.args["KeyEval"]]
            if (cur <= best - 1e-6) if lower else (cur >= best + 1e-6):
                best, best_epoch = cur, epochs
            if epochs - best_epoch >= self.args["early_stop"]:
                return

    def do_test(self, model, dataloader, mode="VAL", return_sample_results=False):
        self.modes.append(mode)
        return dict(self.vals.pop(0)) if mode == "VAL" else {"Loss": -1.0, "MAE": -1.0, "Corr": -1.0}


class MMSALike(Scripted):
    """As a trainer of MMSA's own (its selection rule: only 'Loss' is minimised)."""


MMSALike.__module__ = "MMSA.trains.singleTask.Fake"


@pytest.fixture
def scripted(monkeypatch):
    """`script(config, seed) -> [per-epoch validation dicts]` is set by the test (`plan['script']`)."""
    from MMSA.trains import ATIO

    plan = {"calls": []}

    def get_train(self, args):
        return Scripted(args, plan["script"](args, args["cur_seed"]))

    def fake_run(model, dataset, config=None, seeds=(), model_save_dir=None, **kw):
        args = {"early_stop": 2, "KeyEval": "Loss", "cur_seed": seeds[0], **(config or {})}
        plan["calls"].append(args)
        trainer = ATIO().getTrain(args)
        trainer.do_train(None, None)
        Path(model_save_dir, f"{model}-{dataset}.pth").write_bytes(b"weights")
        return [trainer.do_test(None, None, mode="TEST")]

    monkeypatch.setattr(ATIO, "getTrain", get_train)
    monkeypatch.setattr(runner, "mmsa_run", fake_run)
    return plan


def _tune(tmp_path, capsys, **kw):
    kw = {"trials": 4, "search": "random", "final_seeds": [1111], "out_dir": tmp_path, "overrides": dict(TINY), **kw}
    res = tune.run_tune("mmin", "mosi", **kw)
    capsys.readouterr()
    return res


# ---- issue 16, item 3: a non-finite score never wins ----------------------------------------------
def test_probe_never_keeps_a_nan_epoch():
    t = Scripted({"early_stop": 5, "KeyEval": "Loss"}, [{"Loss": math.nan}, {"Loss": 2.0}, {"Loss": 1.0}])
    probe = runner.TrialProbe(skip_test=True)
    probe.instrument(t)
    t.do_train(None, None)
    assert probe.best_valid() == {"Loss": 1.0}
    assert t.do_test(None, None, mode="TEST") == {"Loss": 1.0}


def test_mmin_trainer_does_not_keep_a_first_nan_epoch():
    from types import SimpleNamespace

    from mmin_plugin.integration.trainer import MMINTrainer

    stub = SimpleNamespace(config=SimpleNamespace(KeyEval="MAE"))
    assert not MMINTrainer._is_better(stub, math.nan, None)
    assert MMINTrainer._is_better(stub, 0.9, None) and MMINTrainer._is_better(stub, 0.8, 0.9)


def test_tune_treats_a_non_finite_score_as_failed(scripted, tmp_path, capsys):
    # the first trial's validation Loss is NaN in every epoch; the others are finite
    scripted["script"] = lambda args, seed: ([{"Loss": math.nan}] * 3 if len(scripted["calls"]) == 1
                                             else [{"Loss": 1.0 + len(scripted["calls"]) / 10}])
    res = _tune(tmp_path, capsys)
    assert res["search"][0]["status"] == "failed" and res["best_trial"] == 1


# ---- item 4: final seeds apart from the search seeds; item 9: search checkpoints deleted ---------
def test_search_seeds_are_not_final_seeds_and_search_checkpoints_are_deleted(scripted, tmp_path, capsys):
    scripted["script"] = lambda args, seed: [{"Loss": 2.0}, {"Loss": 1.0 + args.get("d_model", 0) / 1000}]
    res = tune.run_tune("mmin", "mosi", trials=2, out_dir=tmp_path, overrides=dict(TINY))  # default seeds
    capsys.readouterr()
    search_seeds = {r["seed"] for r in res["search"]}
    final_seeds = {r["seed"] for r in res["final"]}
    assert final_seeds == {1111, 1112, 1113, 1114, 1115} and not search_seeds & final_seeds
    for r in res["search"]:
        assert r["status"] == "ok" and r["checkpoint"] == ""
        assert not list(Path(r["directory"], "models").glob("*.pth"))
        assert json.loads(Path(r["directory"], "row.json").read_text())["valid_score"] == r["valid_score"]
    assert all(Path(r["checkpoint"]).is_file() for r in res["final"])
    with pytest.raises(MMINConfigError, match="not one of the final seeds"):
        tune.run_tune("mmin", "mosi", trials=2, seed=1111, out_dir=tmp_path / "x", overrides=dict(TINY))


# ---- item 5: ranked on the quantity the trainer kept its weights by -------------------------------
def test_probe_reports_the_epoch_an_mmsa_trainer_kept():
    # MMSA's trainers maximise every KeyEval but Loss: with MAE they keep the epoch of the highest MAE
    t = MMSALike({"early_stop": 5, "KeyEval": "MAE"}, [{"MAE": 0.9}, {"MAE": 0.7}, {"MAE": 0.95}])
    probe = runner.TrialProbe(skip_test=True)
    probe.instrument(t)
    t.do_train(None, None)
    assert probe.best_valid() == {"MAE": 0.95} and probe.lower_is_better is False
    ours = Scripted({"early_stop": 5, "KeyEval": "MAE"}, [{"MAE": 0.9}, {"MAE": 0.7}])
    probe = runner.TrialProbe()
    probe.instrument(ours)
    assert probe.lower_is_better is True


def test_tune_refuses_a_key_eval_an_mmsa_trainer_selects_the_wrong_way(tmp_path):
    with pytest.raises(MMINConfigError, match="highest validation MAE"):
        tune.run_tune("tfn", "mosi", trials=1, out_dir=tmp_path, overrides={"KeyEval": "MAE"})
