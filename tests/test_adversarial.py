"""The adversarial recipe keys (issue 19, docs/design/adversarial.md): each switch does what it
claims, the gradients go where the docstrings say, and the L_ac band warning fires when it should."""
import logging
import math

import pytest
import torch

from mmin_plugin.errors import MMINConfigError
from mmin_plugin.integration import trainer as trainer_mod
from mmin_plugin.integration.trainer import LacBandMonitor, clip_gradients, lac_chance
from mmin_plugin.modeling.config import ADV_RECIPES, MMINConfig
from mmin_plugin.modeling.losses import dann_weight, modality_confusion, modality_cross_entropy
from mmin_plugin.modeling.model import MMIN, CoarseInteraction

MODS = ("text", "video", "audio")


def _cin(objective, seed=0, modalities=MODS):
    torch.manual_seed(seed)
    ablation = [m for m in MODS if m not in modalities]
    return CoarseInteraction(MMINConfig(d_model=8, disc_hidden=16, grl_lambda=1.0, dropout=0.0, sep_reduction="mean",
                                        adv_objective=objective, ablation=ablation))


def _codes(seed=1, n=6, modalities=MODS):
    g = torch.Generator().manual_seed(seed)
    return {m: torch.randn(n, 8, generator=g) for m in modalities}


def _grads(cin, h, scale):
    """Gradients of L_adv w.r.t. the shared common encoder's weight and D's first layer."""
    cin.adv_scale = scale
    cin.zero_grad()
    _, _, losses = cin(h)
    losses["L_adv"].backward()
    return cin.common[0].weight.grad.clone(), cin.discriminator.fc1.weight.grad.clone(), losses


# --- config ----------------------------------------------------------------------------------------
def test_recipes_are_valid_configs_and_paper_is_the_literal_reading():
    for name, keys in ADV_RECIPES.items():
        cfg = MMINConfig(**keys)
        assert {k: getattr(cfg, k) for k in keys} == keys, name
    assert ADV_RECIPES["paper"] == {"adv_objective": "reversal", "adv_ramp_epochs": 0.0, "disc_lr": None,
                                    "grad_clip_mode": "value"}


@pytest.mark.parametrize("key,value", [("adv_objective", "maximise"), ("adv_ramp_epochs", -1.0),
                                       ("adv_ramp_epochs", float("inf")), ("disc_lr", 0.0), ("disc_lr", "1e-3"),
                                       ("grad_clip_mode", "L2")])
def test_bad_adversarial_values_name_the_key(key, value):
    with pytest.raises(MMINConfigError, match=f"config key '{key}'"):
        MMINConfig(**{key: value})


# --- the DANN schedule ---------------------------------------------------------------------------------
def test_dann_weight_ramps_from_zero_to_one():
    ws = [dann_weight(p / 10) for p in range(11)]
    assert ws[0] == 0.0 and ws[-1] == pytest.approx(1.0, abs=1e-4)
    assert all(a < b for a, b in zip(ws, ws[1:]))
    assert dann_weight(-1) == 0.0 and dann_weight(5) == dann_weight(1)


@pytest.mark.parametrize("objective", ["reversal", "confusion"])
def test_schedule_at_zero_gives_the_encoders_no_adversarial_gradient(objective):
    cin, h = _cin(objective), _codes()
    g_enc, g_disc, _ = _grads(cin, h, 0.0)
    assert torch.count_nonzero(g_enc) == 0  # nothing reaches the common encoder
    assert torch.count_nonzero(g_disc) > 0  # D still learns to classify the common codes
    g_enc1, g_disc1, _ = _grads(cin, h, 1.0)
    assert torch.count_nonzero(g_enc1) > 0
    torch.testing.assert_close(g_disc1, g_disc)  # the schedule scales the encoders' side only


def test_reversal_gradient_is_minus_lambda_times_the_ascent_direction():
    cin, h = _cin("reversal"), _codes()
    common = {m: cin.common(h[m]).detach().requires_grad_() for m in MODS}
    cin.adv_scale = 0.5
    out = cin._adversarial([common[m] for m in MODS], [0, 1, 2])
    g_rev = torch.autograd.grad(out["L_adv"], [common[m] for m in MODS])
    plain = modality_cross_entropy([cin.discriminator(common[m]) for m in MODS], [0, 1, 2])
    g_plain = torch.autograd.grad(plain, [common[m] for m in MODS])
    for a, b in zip(g_rev, g_plain):
        torch.testing.assert_close(a, -0.5 * b)


def test_confusion_pulls_d_towards_uniform_and_leaves_d_to_its_own_loss():
    cin, h = _cin("confusion"), _codes()
    common = [cin.common(h[m]).detach().requires_grad_() for m in MODS]
    out = cin._adversarial(common, [0, 1, 2])
    g = torch.autograd.grad(out["L_adv"], common, retain_graph=True)
    # a small step of the codes against the gradient lowers the confusion loss (moves D towards uniform)
    stepped = [c - 0.05 * gi for c, gi in zip(common, g)]
    before = modality_confusion([cin.discriminator(c) for c in common], [0, 1, 2])
    after = modality_confusion([cin.discriminator(c) for c in stepped], [0, 1, 2])
    assert after < before
    # D's gradient is exactly that of its own cross-entropy on the (detached) codes
    cin.zero_grad()
    out["L_adv"].backward()
    g_d = cin.discriminator.fc1.weight.grad.clone()
    cin.zero_grad()
    modality_cross_entropy([cin.discriminator(c.detach()) for c in common], [0, 1, 2]).backward()
    torch.testing.assert_close(g_d, cin.discriminator.fc1.weight.grad)


def test_confusion_is_bounded_below_by_chance_reached_at_uniform():
    labels = [0, 1, 2]
    uniform = [torch.zeros(4, 3) for _ in labels]
    assert float(modality_confusion(uniform, labels)) == pytest.approx(3 * math.log(3))
    confident = [torch.eye(3)[m].expand(4, 3) * 20 for m in labels]
    assert float(modality_confusion(confident, labels)) > 3 * math.log(3)
    # two modalities: uniform over the two present, chance 2 ln 2
    two = [torch.tensor([[0.0, 0.0, -50.0]]) for _ in (0, 1)]
    assert float(modality_confusion(two, [0, 1])) == pytest.approx(2 * math.log(2), abs=1e-5)


def test_paper_recipe_logs_the_same_l_ac_as_before():
    """'reversal' at scale 1 is eq. 3 through the reversal layer: L_adv is L_ac itself."""
    cin, h = _cin("reversal"), _codes()
    _, _, losses = cin(h)
    assert losses["L_adv"] is losses["L_ac"]


def test_ac_ablation_removes_the_confusion_term_too():
    cfg = MMINConfig(use_bert=False, feature_dims=(8, 5, 6), d_model=8, nheads=2, fusion_ff_dim=8, disc_hidden=8,
                     adv_objective="confusion", ablation=["ac"], alpha=0.0, gamma=0.0)
    torch.manual_seed(0)
    model = MMIN(cfg)
    text, audio, video = torch.randn(3, 4, 8), torch.randn(3, 5, 5), torch.randn(3, 5, 6)
    text[:, :, 0] += 1  # no all-zero (padding) rows
    out = model(text, audio, video)
    total, _ = model.total_loss(out, torch.zeros(3, 1))
    total.backward()
    assert model.cin.discriminator.fc1.weight.grad is None or torch.count_nonzero(
        model.cin.discriminator.fc1.weight.grad) == 0


# --- trainer: clipping, optimiser groups -----------------------------------------------------------------
def test_clip_by_norm_keeps_the_direction_clip_by_value_does_not():
    p, q = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(1))
    for mode in ("norm", "value"):
        p.grad, q.grad = torch.tensor([3.0, 0.5]), torch.tensor([4.0])
        clip_gradients([p, q], 1.0, mode)
        g = torch.cat([p.grad, q.grad])
        if mode == "norm":
            assert float(g.norm()) == pytest.approx(1.0, rel=1e-5)
            torch.testing.assert_close(g, torch.tensor([3.0, 0.5, 4.0]) / math.hypot(3.0, 0.5, 4.0))
        else:
            torch.testing.assert_close(g, torch.tensor([1.0, 0.5, 1.0]))


def test_disc_lr_puts_the_discriminator_in_its_own_group(tmp_path, tiny_bert):
    from .builders import make_trainer_args

    for disc_lr, n_groups in ((None, 2), (3e-4, 3)):
        args = make_trainer_args(tmp_path, tiny_bert, disc_lr=disc_lr)
        model = MMIN(args)
        opt = trainer_mod.MMINTrainer(args)._optimizer(model)
        assert len(opt.param_groups) == n_groups
        n_params = sum(len(g["params"]) for g in opt.param_groups)
        assert n_params == sum(1 for p in model.parameters() if p.requires_grad)
        if disc_lr:
            disc = next(g for g in opt.param_groups if g["name"] == "discriminator")
            assert disc["lr"] == disc_lr
            assert {id(p) for p in disc["params"]} == {id(p) for p in model.cin.discriminator.parameters()}


# --- the L_ac band -----------------------------------------------------------------------------------------
def test_lac_chance_is_m_ln_m():
    assert lac_chance(3) == pytest.approx(3 * math.log(3))
    assert lac_chance(2) == pytest.approx(2 * math.log(2))
    assert lac_chance(1) == 0.0


def test_band_monitor_warns_after_patience_epochs_outside_once_per_excursion():
    mon = LacBandMonitor(3, band=(0.5, 2.0), patience=3)
    chance = 3 * math.log(3)
    seq = [chance, 2.5 * chance, 3 * chance, 0.9 * chance, 2.1 * chance, 5 * chance, 8 * chance, 9 * chance,
           0.2 * chance]
    msgs = [mon.update("train", e, v) for e, v in enumerate(seq, 1)]
    assert [i + 1 for i, m in enumerate(msgs) if m] == [7]  # back in band at epoch 4 resets the count
    assert "confidently wrong" in msgs[6] and "train" in msgs[6]
    # below the band: D tells the common codes apart
    low = LacBandMonitor(3, band=(0.5, 2.0), patience=2)
    assert low.update("valid", 1, 0.1) is None
    assert "tells the common codes apart" in low.update("valid", 2, 0.1)
    assert LacBandMonitor(1).update("train", 1, 100.0) is None


def test_trainer_logs_the_band_warning_and_records_chance(tmp_path, tiny_bert, caplog, monkeypatch):
    import json

    from .builders import make_loader, make_trainer_args

    monkeypatch.setattr(trainer_mod, "LAC_BAND", (100.0, 200.0))  # every real L_ac is below it
    monkeypatch.setattr(trainer_mod, "LAC_PATIENCE", 2)
    args = make_trainer_args(tmp_path, tiny_bert, max_epochs=2, adv_ramp_epochs=4.0)
    torch.manual_seed(0)
    model = MMIN(args)
    with caplog.at_level(logging.WARNING, logger="MMSA"):
        trainer_mod.MMINTrainer(args).do_train(model, {"train": make_loader(2), "valid": make_loader(1, seed=9),
                                                       "test": make_loader(1)})
    warnings = [r.getMessage() for r in caplog.records if "sane band" in r.getMessage()]
    assert len(warnings) == 2 and {"(train)" in w for w in warnings} == {True, False}  # train and valid
    hist = json.loads((tmp_path / "mmin-mosi.history.json").read_text())
    assert hist[0]["L_ac_chance"] == pytest.approx(3 * math.log(3))
    # DANN ramp over 4 epochs: the last step of epoch 1 is at progress (0 + 1/2) / 4, of epoch 2 at 1.5 / 4
    assert hist[0]["adv_scale"] == pytest.approx(dann_weight(0.5 / 4))
    assert hist[1]["adv_scale"] == pytest.approx(dann_weight(1.5 / 4))


def test_no_band_warning_without_the_adversarial_term(tmp_path, tiny_bert, caplog, monkeypatch):
    from .builders import make_loader, make_trainer_args

    monkeypatch.setattr(trainer_mod, "LAC_BAND", (100.0, 200.0))
    monkeypatch.setattr(trainer_mod, "LAC_PATIENCE", 1)
    args = make_trainer_args(tmp_path, tiny_bert, max_epochs=1, ablation=["ac"])
    with caplog.at_level(logging.WARNING, logger="MMSA"):
        trainer_mod.MMINTrainer(args).do_train(MMIN(args), {"train": make_loader(1), "valid": make_loader(1),
                                                            "test": make_loader(1)})
    assert not [r for r in caplog.records if "sane band" in r.getMessage()]
