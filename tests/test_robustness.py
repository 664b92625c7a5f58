"""Bad numbers during training and runs on bad files: clear errors, nothing lost, finite results."""
import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from mmin_plugin.errors import NonFiniteGradientError, NonFiniteLossError
from mmin_plugin.integration.runner import mmsa_run
from mmin_plugin.integration.trainer import MMINTrainer, atomic_save
from mmin_plugin.modeling.model import MMIN

from .builders import make_loader, make_trainer_args


def _digest(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_nonfinite_loss_stops_with_epoch_and_batch_and_keeps_best(tmp_path, tiny_bert, monkeypatch):
    args = make_trainer_args(tmp_path, tiny_bert)
    torch.manual_seed(0)
    model = MMIN(args)
    data = {"train": make_loader(3), "valid": make_loader(1, seed=10), "test": make_loader(1, seed=20)}
    trainer = MMINTrainer(args)
    real = model.total_loss
    calls = {"n": 0}
    saved = {}

    def total_loss(outputs, labels):
        loss, terms = real(outputs, labels)
        if model.training:
            calls["n"] += 1
            if calls["n"] == 5:  # epoch 2, batch 2
                saved["digest"] = _digest(args["model_save_path"])
                return loss * float("nan"), terms
        return loss, terms

    monkeypatch.setattr(model, "total_loss", total_loss)
    with pytest.raises(NonFiniteLossError, match=r"epoch 2, batch 2/3"):
        trainer.do_train(model, data)
    assert _digest(args["model_save_path"]) == saved["digest"]  # the epoch-1 checkpoint is intact
    state = torch.load(args["model_save_path"], weights_only=True)
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nonfinite_gradient_with_finite_loss_stops_before_the_step_and_keeps_best(tmp_path, tiny_bert, bad):
    args = make_trainer_args(tmp_path, tiny_bert)
    torch.manual_seed(0)
    model = MMIN(args)
    data = {"train": make_loader(3), "valid": make_loader(1, seed=10), "test": make_loader(1, seed=20)}
    trainer = MMINTrainer(args)
    target = model.fusion.head[0].weight  # a non-BERT parameter
    calls = {"n": 0}
    seen = {}

    def poison(grad):
        calls["n"] += 1
        if calls["n"] == 5:  # epoch 2, batch 2: the loss is finite, one gradient is not
            seen["digest"] = _digest(args["model_save_path"])
            seen["weight"] = target.detach().clone()
            grad = grad.clone()
            grad.view(-1)[0] = bad  # one entry (grad * inf would also make NaN from zeros)
        return grad

    target.register_hook(poison)
    expected = r"epoch 2, batch 2/3 .*'MMIN \(non-BERT\)': fusion\.head\.0\.weight"
    with pytest.raises(NonFiniteGradientError, match=expected):
        trainer.do_train(model, data)
    assert torch.equal(target.detach(), seen["weight"])  # no optimizer step with the bad gradient
    assert _digest(args["model_save_path"]) == seen["digest"]  # the epoch-1 checkpoint is intact
    state = torch.load(args["model_save_path"], weights_only=True)
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())
    assert issubclass(NonFiniteGradientError, NonFiniteLossError)


def test_trainer_writes_resolved_config_next_to_checkpoint(tmp_path, tiny_bert):
    import json

    from mmin_plugin.integration.trainer import config_path

    args = make_trainer_args(tmp_path, tiny_bert, max_epochs=1)
    torch.manual_seed(0)
    model = MMIN(args)
    data = {"train": make_loader(1), "valid": make_loader(1, seed=10), "test": make_loader(1)}
    MMINTrainer(args).do_train(model, data)
    written = json.loads(config_path(args["model_save_path"]).read_text())
    assert config_path(args["model_save_path"]).name == "mmin-mosi.config.json"
    assert written["d_model"] == 16 and written["pretrained"] == tiny_bert and written["model_name"] == "mmin"
    assert written["feature_dims"] == [768, 5, 7] and written["lengths_from"] == "file"
    MMIN(written)  # rebuilds the network


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pth"
    atomic_save({"w": torch.ones(3)}, path)
    before = _digest(path)

    def dying_save(obj, f, *a, **k):
        f.write(b"partial")
        raise KeyboardInterrupt("killed while saving")

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        atomic_save({"w": torch.zeros(3)}, path)
    assert _digest(path) == before
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pth"]  # no temporary file left behind


@pytest.mark.e2e
def test_run_on_file_with_nan_inf_and_zero_lengths_is_finite(tmp_path, tiny_bert):
    from mmin_plugin.experiments.demo import ensure_demo

    files = ensure_demo(tmp_path / "d", dataset="mosi", n_train=32, n_valid=16, n_test=16, seq_lens=(12, 24, 20),
                        bert_dir=tiny_bert, corrupt=True)
    with pytest.warns(Warning, match="non-finite"):
        res = mmsa_run("mmin", "mosi", config={"featurePath": files["feature_path"], "pretrained": tiny_bert,
                                               "d_model": 16, "nheads": 4, "max_epochs": 2},
                       seeds=[1111], gpu_ids=[], num_workers=0, model_save_dir=tmp_path / "m",
                       res_save_dir=tmp_path / "r", log_dir=tmp_path / "l", verbose_level=0)
    assert all(np.isfinite(v) for v in res[0].values())
