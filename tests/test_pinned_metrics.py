"""Behaviour is pinned: a short MMIN run on the session's small demo file gives exactly the metrics
it gave before the restructuring (measured on commit 12d0364: torch 2.13 CPU, seed 1111, 2 epochs).

MMSA rounds its metrics to 4 decimals, so this is exact equality of what MMSA reports. A change
that moves any of these numbers changes what users get for the same seed: it must be deliberate,
and the new numbers recorded here with the reason.
"""
import pytest

from mmin_plugin.integration.runner import mmsa_run

PINNED = {"Has0_acc_2": 0.75, "Has0_F1_score": 0.7417, "Non0_acc_2": 0.75, "Non0_F1_score": 0.7448,
          "Mult_acc_5": 0.375, "Mult_acc_7": 0.375, "MAE": 0.6883, "Corr": 0.8211, "Loss": 0.7332}


@pytest.mark.e2e
def test_short_demo_run_gives_the_pinned_metrics(fast_config, run_dirs):
    results = mmsa_run("mmin", "mosi", config=fast_config(max_epochs=2), seeds=[1111], **run_dirs)
    assert {k: results[-1][k] for k in PINNED} == PINNED
