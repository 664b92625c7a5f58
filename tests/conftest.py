"""Shared fixtures: one torch thread, MMSA's per-run log handlers removed after each test, a tiny
random BERT and small MMSA-layout demo files (made once per session).

Nothing is downloaded: the BERT is randomly initialised and written with save_pretrained.
Tests that run MMSA_run, Ray or a subprocess are marked `e2e` (`pytest -m "not e2e"` is the fast loop).
"""
import contextlib
import logging
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def pytest_configure(config):
    # The test models are tiny: one thread is as fast as two, and it keeps timings stable when
    # other processes share the two cores (two threads then oversubscribe and run 3-7x slower).
    import torch

    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _drop_mmsa_log_handlers():
    """Each MMSA_run adds a file and a console handler to the 'MMSA' logger: close the new ones."""
    log = logging.getLogger("MMSA")
    before = list(log.handlers)
    yield
    for h in list(log.handlers):
        if h not in before:
            log.removeHandler(h)
            with contextlib.suppress(Exception):
                h.close()


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory):
    from mmin_plugin.experiments.demo import make_tiny_bert

    return str(make_tiny_bert(tmp_path_factory.mktemp("bert") / "bert-tiny-en", language="en"))


@pytest.fixture(scope="session")
def small_mosi(tmp_path_factory, tiny_bert):
    """A MOSI-layout file with shortened sequences (fast end-to-end runs)."""
    from mmin_plugin.experiments.demo import ensure_demo

    return ensure_demo(tmp_path_factory.mktemp("demo"), dataset="mosi", n_train=48, n_valid=16, n_test=16,
                       seq_lens=(16, 40, 30), bert_dir=tiny_bert)


@pytest.fixture(scope="session")
def fast_config(small_mosi):
    """MMSA config overrides for a tiny MMIN on `small_mosi` (one epoch unless overridden)."""
    from pathlib import Path

    def make(**over):
        return {"featurePath": str(Path(small_mosi["feature_path"]).resolve()), "pretrained": small_mosi["bert_dir"],
                "d_model": 16, "nheads": 4, "fine_layers": 1, "fusion_ff_dim": 32, "disc_hidden": 8,
                "max_epochs": 1, **over}

    return make


@pytest.fixture
def run_dirs(tmp_path):
    """MMSA_run's output folders and CPU settings, inside the test's tmp_path."""
    return dict(model_save_dir=tmp_path / "models", res_save_dir=tmp_path / "results", log_dir=tmp_path / "logs",
                gpu_ids=[], num_workers=0, verbose_level=0)


@pytest.fixture
def fake_mmsa_run(monkeypatch):
    """`runner.mmsa_run` replaced by a fake that records each call and writes a checkpoint; returns
    (calls, plan): `plan[(model, seed)] = action` runs `action(mmsa_run's keyword arguments)` first
    (raise to fail the trial). The fake's MAE is 0.5 + (seed % 10) / 100."""
    from pathlib import Path

    import mmin_plugin.integration.runner as runner

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
