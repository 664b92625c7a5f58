"""Behaviour is pinned: a short MMIN run on the session's small demo file gives exactly these metrics
(torch 2.13 CPU, seed 1111, 2 epochs).

* ``PINNED_PAPER``: the paper-literal adversarial recipe (``ADV_RECIPES["paper"]``), measured on
  commit 12d0364 before the restructuring; issue 19 kept that path bit for bit, so the numbers are
  unchanged.
* ``PINNED``: the defaults. Issue 19 made the "stable" adversarial recipe the default (confusion
  objective, DANN ramp over 2 epochs, clipping by norm; evidence in docs/design/adversarial.md),
  which moves the numbers; re-pinned then.

MMSA rounds its metrics to 4 decimals, so this is exact equality of what MMSA reports. A change
that moves any of these numbers changes what users get for the same seed: it must be deliberate,
and the new numbers recorded here with the reason.
"""
import pytest

from mmin_plugin.integration.runner import mmsa_run
from mmin_plugin.modeling.config import ADV_RECIPES

PINNED_PAPER = {"Has0_acc_2": 0.75, "Has0_F1_score": 0.7417, "Non0_acc_2": 0.75, "Non0_F1_score": 0.7448,
                "Mult_acc_5": 0.375, "Mult_acc_7": 0.375, "MAE": 0.6883, "Corr": 0.8211, "Loss": 0.7332}
PINNED = {"Has0_acc_2": 0.75, "Has0_F1_score": 0.7417, "Non0_acc_2": 0.75, "Non0_F1_score": 0.7448,
          "Mult_acc_5": 0.4375, "Mult_acc_7": 0.4375, "MAE": 0.6768, "Corr": 0.8575, "Loss": 0.6734}


@pytest.mark.e2e
@pytest.mark.parametrize("recipe,pinned", [("paper", PINNED_PAPER), ("default", PINNED)])
def test_short_demo_run_gives_the_pinned_metrics(fast_config, run_dirs, recipe, pinned):
    over = ADV_RECIPES[recipe] if recipe != "default" else {}
    results = mmsa_run("mmin", "mosi", config=fast_config(max_epochs=2, **over), seeds=[1111], **run_dirs)
    assert {k: results[-1][k] for k in PINNED_PAPER} == pinned
