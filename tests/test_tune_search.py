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
from mmin_plugin.runs import study as study_mod

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


# ---- issue 18: the Optuna study --------------------------------------------------------------------
def _loss(args, seed):
    """Validation Loss per epoch: lower with a larger learning rate, a few epochs of improvement."""
    base = {0.001: 1.0, 0.0005: 2.0, 0.0001: 3.0}[args["learning_rate"]]
    return [{"Loss": base + 1.0 / e} for e in range(1, 5)]


def test_search_is_a_seeded_optuna_study_in_the_output_folder(scripted, tmp_path, capsys):
    import optuna

    scripted["script"] = _loss
    runs = [_tune(tmp_path / name, capsys, search="optuna", seed=7, trials=5) for name in ("a", "b")]
    space = tune.search_space("mmin")
    assert [r["chosen"] for r in runs[0:1]] == [runs[1]["chosen"]]
    assert [r["overrides"] for r in runs[0]["search"]] == [r["overrides"] for r in runs[1]["search"]]
    for r in runs[0]["search"]:
        assert all(r["overrides"][k] in space[k] for k in ("learning_rate", "batch_size", "dropout"))
    study = optuna.load_study(study_name="mmin-mosi", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / "a" / "tune-mmin-mosi.optuna.log"))))
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 5
    assert study.best_trial.number == runs[0]["best_trial"]
    assert study.best_value == pytest.approx(runs[0]["search"][runs[0]["best_trial"]]["valid_score"])
    from mmin_plugin.runs.lock import LOCK_FILE

    assert not (tmp_path / "a" / LOCK_FILE).exists()  # a finished tune releases its --out


def test_next_trial_is_asked_when_a_slot_frees_not_in_rounds(monkeypatch, tmp_path):
    from mmin_plugin.runs import sweep
    from mmin_plugin.runs.trial import Trial

    events = []

    class TwoSlots:  # finishes the newest trial first
        slots = 2

        def __init__(self):
            self.running = []

        def submit(self, t):
            events.append(("submit", t.run))
            self.running.append(t)

        def wait(self):
            t = self.running.pop()
            events.append(("done", t.run))
            return t, {"status": "ok", "run": t.run, "wall_time_s": 0.0, "epochs": 1, "stopped_by": "x"}

        def close(self):
            pass

    monkeypatch.setattr(sweep, "make_backend", lambda *a, **k: TwoSlots())
    made = iter(range(5))

    def source():
        i = next(made, None)
        return None if i is None else Trial(run=f"t{i}", model="m", dataset="mosi", seed=1,
                                            directory=str(tmp_path / f"t{i}"))

    finals = []
    rows = sweep.run_trials([], sweep.SweepOptions(), source=source, total=5,
                            on_final=lambda t, r: finals.append(t.run))
    assert [r["run"] for r in rows] == ["t0", "t1", "t2", "t3", "t4"]
    assert sorted(finals) == sorted(r["run"] for r in rows)
    # two in flight from the start; every result frees a slot that is refilled before the next wait
    assert events[:4] == [("submit", "t0"), ("submit", "t1"), ("done", "t1"), ("submit", "t2")]
    assert events[4:6] == [("done", "t2"), ("submit", "t3")]


def test_a_killed_tune_resumes_the_same_study(scripted, tmp_path, capsys, monkeypatch):
    from mmin_plugin.runs.sweep import SweepOptions

    scripted["script"] = _loss
    real = runner.mmsa_run

    def killed_at_third(model, dataset, **kw):
        if len(scripted["calls"]) == 2:
            raise KeyboardInterrupt
        return real(model, dataset, **kw)

    monkeypatch.setattr(runner, "mmsa_run", killed_at_third)
    with pytest.raises(KeyboardInterrupt):
        _tune(tmp_path, capsys, trials=4, search="optuna", seed=3)
    monkeypatch.setattr(runner, "mmsa_run", real)
    before = len(scripted["calls"])
    res = _tune(tmp_path, capsys, trials=4, search="optuna", seed=3, sweep=SweepOptions(resume=True))
    # trials 0 and 1 are not run again; trial 2 (killed) reruns in its own folder, then trial 3; then the final
    assert len(scripted["calls"]) - before == 2 + 1
    assert [r["run"] for r in res["search"]] == [f"mmin-trial-{i:03d}" for i in range(4)]
    assert all(r["status"] == "ok" for r in res["search"])
    fresh = _tune(tmp_path / "fresh", capsys, trials=4, search="optuna", seed=3)
    assert [r["overrides"] for r in fresh["search"][:3]] == [r["overrides"] for r in res["search"][:3]]


def test_pruned_trials_are_recorded_as_pruned_and_never_chosen(scripted, tmp_path, capsys):
    import optuna

    from mmin_plugin.runs.sweep import SweepOptions

    def script(args, seed):  # the first trial is the best; every later one is worse from epoch 1 on
        n = len(scripted["calls"])
        return [{"Loss": (1.0 if n == 1 else 5.0 + n) + 1.0 / e} for e in range(1, 7)]

    scripted["script"] = script
    startup = study_mod.MEDIAN_STARTUP_TRIALS  # trials the median pruner lets finish before it prunes
    res = _tune(tmp_path, capsys, trials=startup + 2, prune="median", sweep=SweepOptions(retries=2))
    states = [r["status"] for r in res["search"]]
    assert states == ["ok"] * startup + ["pruned", "pruned"] and res["best_trial"] == 0
    # pruned as soon as the median pruner may (after its warm-up epochs), instead of 6 epochs
    assert all(r["epochs"] == 6 for r in res["search"][:startup])
    assert all(r["epochs"] == max(1, study_mod.MEDIAN_WARMUP_EPOCHS) for r in res["search"][startup:])
    assert len(scripted["calls"]) == startup + 2 + 1  # no retry of a pruned trial; then the final run
    assert all(not list(Path(r["directory"], "models").glob("*.pth")) for r in res["search"])
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / "tune-mmin-mosi.optuna.log")))
    study = optuna.load_study(study_name="mmin-mosi", storage=storage)
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * startup + ["PRUNED", "PRUNED"]
    md = (tmp_path / "tune-mmin-mosi.md").read_text()
    assert f"{startup} finished, 2 pruned; pruner median" in md


# ---- issue 16: --rescore-top ----------------------------------------------------------------------
def test_rescore_top_chooses_the_config_that_holds_on_more_seeds(scripted, tmp_path, capsys):
    def script(args, seed):  # lr 1e-3 is lucky on the search seed only; lr 5e-4 is steady
        lr = args["learning_rate"]
        v = {0.001: 1.0 if seed == 2222 else 4.0, 0.0005: 1.5, 0.0001: 3.0}[lr]
        return [{"Loss": v}]

    scripted["script"] = script
    plain = _tune(tmp_path / "plain", capsys, trials=6, seed=2222)
    lrs = [r["overrides"]["learning_rate"] for r in plain["search"]]
    assert {0.001, 0.0005} <= set(lrs)  # both were drawn
    assert plain["chosen"]["learning_rate"] == 0.001
    res = _tune(tmp_path / "rescored", capsys, trials=6, seed=2222, rescore_top=3)
    assert res["chosen"]["learning_rate"] == 0.0005
    assert {r["seed"] for r in res["rescore"]} == {2223, 2224}
    assert all(r["do_test_calls"].get("TEST", 0) == 0 and r["status"] == "ok" for r in res["rescore"])
    assert not {r["seed"] for r in res["final"]} & {2222, 2223, 2224}


# ---- issue 18: the Ray actor pool; issue 16 item 8: placement --------------------------------------
_STATE = {"touched": 0}


def _probe_trial(trial):
    """A trial function that reports its process, what it sees, and whether an earlier trial's
    module state leaked into it."""
    import os

    import torch

    leaked = _STATE["touched"]
    _STATE["touched"] += 1
    torch.nn.Linear(2, 2)(torch.ones(1, 2))  # torch used in the trial (the parent never runs it)
    return {"status": "ok", "run": trial.run, "seed": trial.seed, "pid": os.getpid(), "ppid": os.getppid(),
            "leaked": leaked, "cuda_visible": os.environ.get("CUDA_VISIBLE_DEVICES"), "gpu_ids": trial.gpu_ids,
            "wall_time_s": 0.0, "epochs": 1, "stopped_by": "x", "metrics": {}}


@pytest.mark.e2e
def test_ray_pool_isolates_trials_and_hides_gpus_from_cpu_trials(tmp_path):
    pytest.importorskip("ray")
    from mmin_plugin.runs import sweep
    from mmin_plugin.runs.backends import ray_session
    from mmin_plugin.runs.trial import Trial

    def trials(tag, n):
        return [Trial(run=f"{tag}{i}", model="m", dataset="mosi", seed=i, directory=str(tmp_path / f"{tag}{i}"))
                for i in range(n)]

    opts = sweep.SweepOptions(backend="ray", num_cpus=2, cpus_per_trial=1, trial_fn=_probe_trial)
    with ray_session("ray", num_cpus=2):
        first = sweep.run_trials(trials("a", 4), opts)
        second = sweep.run_trials(trials("b", 2), opts)  # the same actors: the pool lives for the session
        tasks = sweep.run_trials(trials("c", 1), sweep.SweepOptions(backend="ray", pool=False,
                                                                    trial_fn=_probe_trial))
    rows = first + second
    assert all(r["leaked"] == 0 for r in rows)  # every trial in a process of its own
    assert len({r["pid"] for r in rows}) == 6 and len({r["ppid"] for r in rows}) == 2  # 2 long-lived parents
    assert all(r["cuda_visible"] == "" and r["gpu_ids"] == [] for r in rows + tasks)


# ---- issue 18: Slurm through submitit (its local executor) -----------------------------------------
def test_slurm_job_requeues_the_same_trial():
    pytest.importorskip("submitit")
    from mmin_plugin.runs.slurm import _Job

    job = _Job()
    again = job.checkpoint({"run": "r", "seed": 1}, None, 0)
    assert again.function is job and again.args == ({"run": "r", "seed": 1}, None, 0)


@pytest.mark.e2e
def test_slurm_backend_on_the_local_executor_matches_serial(small_mosi, tmp_path, capsys):
    pytest.importorskip("submitit")
    from mmin_plugin.experiments import compare
    from mmin_plugin.runs.sweep import SweepOptions

    kw = dict(models=["mmin"], dataset="mosi", seeds=[1111], feature_path=small_mosi["feature_path"],
              pretrained=small_mosi["bert_dir"], max_epochs=1, overrides=dict(TINY))
    serial = compare.run_comparison(out_dir=tmp_path / "serial", **kw)
    opts = SweepOptions(backend="slurm", slurm_params={"cluster": "local", "timeout_min": 10})
    slurm = compare.run_comparison(out_dir=tmp_path / "slurm", sweep=opts, **kw)
    capsys.readouterr()
    assert [r["status"] for r in slurm] == ["ok"]
    assert slurm[0]["metrics"] == pytest.approx(serial[0]["metrics"], rel=1e-6, abs=1e-9)
    assert slurm[0]["do_test_calls"] == {"VAL": 1, "TEST": 1}
    assert list(Path(slurm[0]["directory"], "submitit").glob("*_result.pkl"))
