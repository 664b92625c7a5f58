"""integration/schedule.py (issue 26): the per-step learning-rate factor, the scheduler inside MMIN's
trainer and its state beside the checkpoint, the weight EMA, schedule-aware early stopping, and the
paper's constant learning rate kept by name."""
import json
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mmin_plugin.errors import MMINConfigError
from mmin_plugin.integration import schedule as sch
from mmin_plugin.integration import trainer as trainer_mod
from mmin_plugin.modeling.config import LR_RECIPES, MMINConfig
from mmin_plugin.modeling.model import MMIN

from .builders import make_loader, make_trainer_args


# ---- the factor ----------------------------------------------------------------------------------
def test_factor_values_by_hand():
    # 4 warm-up steps, horizon 14 steps (10 of decay), floor 0.1
    assert [sch.lr_factor(s, 4, 14, "cosine", 0.1) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert sch.lr_factor(4, 4, 14, "cosine", 0.1) == 1.0  # first decay step: p = 0
    assert sch.lr_factor(9, 4, 14, "cosine", 0.1) == pytest.approx(0.1 + 0.9 * 0.5)  # p = 1/2
    assert sch.lr_factor(14, 4, 14, "cosine", 0.1) == pytest.approx(0.1)
    assert sch.lr_factor(1000, 4, 14, "cosine", 0.1) == pytest.approx(0.1)  # stays at the floor after the horizon
    assert sch.lr_factor(9, 4, 14, "linear", 0.0) == pytest.approx(0.5)
    assert sch.lr_factor(6, 4, 14, "linear", 0.2) == pytest.approx(1 - 0.8 * 0.2)
    assert sch.lr_factor(2, 4, 14, "constant") == 0.75 and sch.lr_factor(500, 4, 14, "constant") == 1.0
    assert all(sch.lr_factor(s, 0, 10, "constant") == 1.0 for s in range(20))  # the paper's: 1 at every step
    with pytest.raises(MMINConfigError, match="lr_schedule"):
        sch.lr_factor(0, 0, 10, "step")


@settings(max_examples=200, deadline=None)
@given(w=st.integers(0, 50), extra=st.integers(0, 200), r=st.floats(0, 1), kind=st.sampled_from(["linear", "cosine"]))
def test_factor_rises_then_falls_within_its_bounds(w, extra, r, kind):
    total = w + extra
    f = [sch.lr_factor(s, w, total, kind, r) for s in range(total + 5)]
    assert all(r - 1e-12 <= x <= 1.0 for x in f[w:])
    assert all(a <= b for a, b in zip(f[:w], f[1:w + 1]))  # warm-up: rising to 1
    assert all(a >= b - 1e-12 for a, b in zip(f[w:], f[w + 1:]))  # decay: non-increasing
    assert f[-1] == pytest.approx(r)


# ---- the scheduler on an optimizer ---------------------------------------------------------------
def _optimizer():
    a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(3))
    return torch.optim.Adam([{"params": [a], "lr": 1e-3}, {"params": [b], "lr": 5e-5}])


def _cfg(**kw):
    return MMINConfig(**{"lr_schedule": "cosine", "warmup_epochs": 0.5, "lr_decay_epochs": 3.0,
                         "lr_min_ratio": 0.1, **kw})


def test_every_group_follows_the_factor_per_step():
    opt = _optimizer()
    sched = sch.make_scheduler(opt, _cfg(), steps_per_epoch=8)  # W = 4, T = 24
    seen = []
    for _ in range(30):
        seen.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    for s, (lr_a, lr_b) in enumerate(seen):
        f = sch.lr_factor(s, 4, 24, "cosine", 0.1)
        assert lr_a == pytest.approx(1e-3 * f) and lr_b == pytest.approx(5e-5 * f)


def test_decay_horizon_defaults_to_max_epochs_and_is_required_otherwise():
    assert sch.Schedule(MMINConfig(lr_schedule="linear", max_epochs=5), 10).total_steps == 50
    assert sch.Schedule(MMINConfig(lr_schedule="linear", max_epochs=5, lr_decay_epochs=2.5), 10).total_steps == 25
    with pytest.raises(MMINConfigError, match="lr_decay_epochs"):
        MMINConfig(lr_schedule="cosine")
    MMINConfig(lr_schedule="constant", warmup_epochs=1.0)  # warm-up then constant needs no horizon


def test_scheduler_state_round_trip(tmp_path):
    opt = _optimizer()
    sched = sch.make_scheduler(opt, _cfg(), steps_per_epoch=8)
    for _ in range(11):
        opt.step()
        sched.step()
    path = tmp_path / "m.train_state.pt"
    trainer_mod.atomic_save({"format": 1, "epoch": 2, "step": sched.last_epoch, "best_epoch": 1, "best_valid": 0.5,
                             "scheduler": sched.state_dict(), "ema_updates": 0}, path)
    state = trainer_mod.read_train_state(path)
    opt2 = _optimizer()
    sched2 = sch.make_scheduler(opt2, _cfg(), steps_per_epoch=8)
    sch.restore_scheduler(sched2, state["scheduler"])
    assert sched2.last_epoch == 11 and [g["lr"] for g in opt2.param_groups] == [g["lr"] for g in opt.param_groups]
    for _ in range(20):  # and it goes on exactly as the original would have
        for o, s in ((opt, sched), (opt2, sched2)):
            o.step()
            s.step()
        assert [g["lr"] for g in opt2.param_groups] == [g["lr"] for g in opt.param_groups]
    other = sch.make_scheduler(_optimizer(), _cfg(lr_schedule="linear"), steps_per_epoch=8)
    with pytest.raises(MMINConfigError, match="schedule of this run"):
        sch.restore_scheduler(other, state["scheduler"])


def test_a_train_state_of_another_shape_is_refused(tmp_path):
    path = tmp_path / "x.train_state.pt"
    torch.save({"epoch": 1}, path)
    with pytest.raises(ValueError, match="expected a training state"):
        trainer_mod.read_train_state(path)


# ---- the EMA -------------------------------------------------------------------------------------
def test_ema_matches_the_recursion_and_copies_integer_buffers():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    ema = sch.ModelEma(model, decay=0.9)
    expected = {k: v.clone().double() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for t in range(25):
        model(torch.randn(8, 3)).pow(2).sum().backward()
        opt.step()
        opt.zero_grad()
        ema.update(model)
        d = min(0.9, (1 + t) / (10 + t))
        for k, v in model.state_dict().items():
            expected[k] = d * expected[k] + (1 - d) * v.double() if v.dtype.is_floating_point else v.double()
    got = ema.module.state_dict()
    for k, v in expected.items():
        assert torch.allclose(got[k].double(), v, atol=1e-6), k
    assert got["1.num_batches_tracked"] == model.state_dict()["1.num_batches_tracked"] == 25
    assert ema.updates == 25 and not ema.module.training
    assert all(not p.requires_grad for p in ema.module.parameters())
    assert sch.ema_decay_at(0.999, 0) == pytest.approx(0.1) and sch.ema_decay_at(0.5, 1000) == 0.5


# ---- inside MMIN's trainer -----------------------------------------------------------------------
def _train(tmp_path, tiny_bert, **over):
    args = {**make_trainer_args(tmp_path, tiny_bert), **over}  # (make_trainer_args sets early_stop, max_epochs)
    torch.manual_seed(0)
    model = MMIN(args)
    trainer_mod.MMINTrainer(args).do_train(model, {"train": make_loader(3), "valid": make_loader(2, seed=9),
                                                   "test": make_loader(1)})
    return model, json.loads((tmp_path / "mmin-mosi.history.json").read_text())


def test_trainer_schedules_per_step_and_writes_the_state_with_the_checkpoint(tmp_path, tiny_bert):
    over = dict(lr_schedule="cosine", warmup_epochs=1.0, lr_decay_epochs=3.0, lr_min_ratio=0.0, max_epochs=3,
                learning_rate=1e-3, learning_rate_bert=5e-5)
    _, hist = _train(tmp_path, tiny_bert, **over)
    # 3 batches an epoch: W = 3, T = 9; the history holds each group's lr after the epoch's last step
    for rec in hist:
        f = sch.lr_factor(3 * rec["epoch"], 3, 9, "cosine", 0.0)
        assert rec["lr/MMIN (non-BERT)"] == pytest.approx(1e-3 * f)
        assert rec["lr/BERT"] == pytest.approx(5e-5 * f)
    best = max(r["epoch"] for r in hist if r["best"])
    state = trainer_mod.read_train_state(trainer_mod.train_state_path(tmp_path / "mmin-mosi.pth"))
    assert state["epoch"] == state["best_epoch"] == best and state["step"] == 3 * best
    assert state["best_valid"] == pytest.approx([r["valid_Loss"] for r in hist if r["epoch"] == best][0], abs=1e-4)


def test_with_ema_the_average_is_validated_and_saved(tmp_path, tiny_bert, monkeypatch):
    seen = []
    orig = trainer_mod.MMINTrainer.do_test

    def spy(self, model, *a, **kw):
        seen.append(model)
        return orig(self, model, *a, **kw)

    monkeypatch.setattr(trainer_mod.MMINTrainer, "do_test", spy)
    model, hist = _train(tmp_path, tiny_bert, ema_decay=0.5, max_epochs=2, early_stop=5)
    assert len(seen) == 2 and all(m is not model for m in seen) and seen[0] is seen[1]
    saved = torch.load(tmp_path / "mmin-mosi.pth", weights_only=True)
    best = max(r["epoch"] for r in hist if r["best"])
    if best == 2:  # the last epoch was kept: the file holds the average as it is now, not the trained weights
        for k, v in seen[0].state_dict().items():
            assert torch.equal(saved[k], v)
    assert any(not torch.equal(saved[k], v) for k, v in model.state_dict().items() if v.dtype.is_floating_point)
    state = trainer_mod.read_train_state(trainer_mod.train_state_path(tmp_path / "mmin-mosi.pth"))
    assert state["ema_updates"] == 3 * best


def test_paper_recipe_keeps_every_learning_rate_constant(tmp_path, tiny_bert):
    _, hist = _train(tmp_path, tiny_bert, max_epochs=2, learning_rate=1e-3, learning_rate_bert=5e-5,
                     **LR_RECIPES["paper"])
    assert all(r["lr/MMIN (non-BERT)"] == 1e-3 and r["lr/BERT"] == 5e-5 for r in hist)


def test_early_stop_waits_for_the_warm_up_when_asked():
    for mode, start in (("start", 1), ("warmup", 3)):
        cfg = MMINConfig(early_stop_from=mode, warmup_epochs=2.5)
        assert sch.patience_start(cfg, best_epoch=1, warmup_epochs=sch.Schedule(cfg, 4).warmup_epochs) == start
    assert sch.patience_start(MMINConfig(early_stop_from="warmup"), best_epoch=4, warmup_epochs=3) == 4


def test_trainer_does_not_stop_inside_the_warm_up(tmp_path, tiny_bert, monkeypatch):
    scores = iter([0.1, 0.9, 0.9, 0.9, 0.9, 0.9])  # best at epoch 1, never better again

    def fake_test(self, model, dataloader, mode="VAL", **kw):
        return {"Loss": next(scores), "MAE": 0.0, "Corr": 0.0}

    monkeypatch.setattr(trainer_mod.MMINTrainer, "do_test", fake_test)
    for mode, epochs in (("start", 2), ("warmup", 4)):  # patience 1; warm-up 3 epochs
        scores = iter([0.1, 0.9, 0.9, 0.9, 0.9, 0.9])
        _, hist = _train(tmp_path, tiny_bert, early_stop=1, max_epochs=6, warmup_epochs=3.0, early_stop_from=mode)
        assert len(hist) == epochs, mode


def test_schedule_keys_are_validated():
    for bad in ({"lr_schedule": "step"}, {"warmup_epochs": -1.0}, {"lr_min_ratio": 1.5}, {"ema_decay": 1.0},
                {"lr_decay_epochs": 0.0}, {"early_stop_from": "best"}, {"warmup_epochs": math.inf}):
        with pytest.raises(MMINConfigError, match=next(iter(bad))):
            MMINConfig(**bad)


def test_named_recipes_are_valid_and_the_defaults_are_the_papers():
    defaults = MMINConfig()
    assert all(getattr(defaults, k) == v for k, v in LR_RECIPES["paper"].items())
    study = MMINConfig(**LR_RECIPES["study"])
    assert study.ema_decay == 0.95 and study.warmup_epochs == 0.5 and study.lr_schedule == "constant"
