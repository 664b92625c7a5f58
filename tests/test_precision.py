"""Mixed precision (config.precision, issue 27): the key is validated, the trainer trains and evaluates
under torch.autocast (fp16 with a GradScaler), and every cross-attention stays in float32 inside it."""
import json

import pytest
import torch

from mmin_plugin.errors import MMINConfigError
from mmin_plugin.integration import trainer as trainer_mod
from mmin_plugin.modeling import model as model_mod
from mmin_plugin.modeling.config import MMINConfig
from mmin_plugin.modeling.model import MMIN

from .builders import make_args, make_batch, make_loader, make_trainer_args


def test_precision_is_validated_and_fp32_by_default():
    assert MMINConfig().precision == "fp32"
    assert MMINConfig(precision="bf16").precision == "bf16"
    with pytest.raises(MMINConfigError, match="precision"):
        MMINConfig(precision="fp8")


def test_fp32_is_no_autocast_at_all():
    with trainer_mod.autocast_for("fp32", "cpu"):
        assert not torch.is_autocast_enabled("cpu")
    with trainer_mod.autocast_for("bf16", torch.device("cpu")):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16


def test_under_autocast_the_attention_runs_in_float32(tiny_bert, monkeypatch):
    seen = []
    for name in ("projected_sparsemax_attention", "sparsemax_reference_attention"):
        orig = getattr(model_mod, name)

        def spy(x, *a, _orig=orig, **kw):
            seen.append((x.dtype, torch.is_autocast_enabled("cpu")))
            return _orig(x, *a, **kw)

        monkeypatch.setattr(model_mod, name, spy)
    torch.manual_seed(0)
    model = MMIN(make_args(tiny_bert))
    text, audio, video, al, vl, labels = make_batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(text, audio, video, al, vl)
        loss, _ = model.total_loss(out, labels)
    loss.backward()
    assert seen and all(s == (torch.float32, False) for s in seen)
    assert out["M"].dtype == torch.bfloat16  # the head itself ran in bf16: autocast was on around it
    assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_the_trainer_trains_and_evaluates_under_autocast(tmp_path, tiny_bert, monkeypatch, precision):
    steps = []
    orig = torch.amp.GradScaler.step

    def step(self, optimizer, *a, **kw):
        steps.append(self.is_enabled())
        return orig(self, optimizer, *a, **kw)

    monkeypatch.setattr(torch.amp.GradScaler, "step", step)
    args = {**make_trainer_args(tmp_path, tiny_bert), "max_epochs": 2, "precision": precision}
    torch.manual_seed(0)
    model = MMIN(args)
    trainer = trainer_mod.MMINTrainer(args)
    trainer.do_train(model, {"train": make_loader(3), "valid": make_loader(2, seed=9), "test": make_loader(1)})
    hist = json.loads((tmp_path / "mmin-mosi.history.json").read_text())
    assert len(hist) == 2 and all(v == v for r in hist for v in r.values() if isinstance(v, float))
    assert steps == [True] * 6 if precision == "fp16" else not steps  # the scaler steps for fp16 only
    state = trainer_mod.read_train_state(trainer_mod.train_state_path(tmp_path / "mmin-mosi.pth"))
    best = max(r["epoch"] for r in hist if r["best"])
    # the schedule counts optimizer steps: an fp16 step the scaler skipped (overflow) is not one
    assert state["step"] <= 3 * best and (precision == "fp16" or state["step"] == 3 * best)
    results = trainer.do_test(model, make_loader(2, seed=3), mode="TEST")
    assert all(isinstance(v, float) for v in results.values())


def test_adam_is_torchs_fused_kernel_where_it_runs_and_the_same_update():
    torch.manual_seed(0)
    w = torch.randn(50, requires_grad=True)
    ref = w.detach().clone().requires_grad_(True)
    fused = trainer_mod.make_adam([{"params": [w], "lr": 1e-2, "weight_decay": 1e-3}])
    plain = torch.optim.Adam([{"params": [ref], "lr": 1e-2, "weight_decay": 1e-3}])
    assert fused.defaults["fused"] and not plain.defaults["fused"]
    for _ in range(5):  # the same update rule: torch's default Adam to rounding
        g = torch.randn(50)
        w.grad, ref.grad = g.clone(), g.clone()
        fused.step()
        plain.step()
    torch.testing.assert_close(w, ref)
    elsewhere = torch.zeros(3, device="meta", requires_grad=True)  # a device without the fused kernel
    assert not trainer_mod.make_adam([{"params": [elsewhere]}]).defaults["fused"]


def test_the_trainer_steps_with_make_adam(tmp_path, tiny_bert):
    args = make_trainer_args(tmp_path, tiny_bert)
    assert trainer_mod.MMINTrainer(args)._optimizer(MMIN(args)).defaults["fused"]
