"""Shared fixtures: a tiny random BERT and small MMSA-layout demo files, made once per session.

Nothing is downloaded: the BERT is randomly initialised and written with save_pretrained."""
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory):
    from mmin_plugin.experiments.data import make_tiny_bert

    return str(make_tiny_bert(tmp_path_factory.mktemp("bert") / "bert-tiny-en", language="en"))


@pytest.fixture(scope="session")
def small_mosi(tmp_path_factory, tiny_bert):
    """A MOSI-layout file with shortened sequences (fast end-to-end runs)."""
    from mmin_plugin.experiments.data import ensure_demo

    return ensure_demo(tmp_path_factory.mktemp("demo"), dataset="mosi", n_train=48, n_valid=16, n_test=16,
                       seq_lens=(16, 40, 30), bert_dir=tiny_bert)


def pytest_configure(config):
    # The test models are tiny: one thread is as fast as two, and it keeps timings stable when
    # other processes share the two cores (two threads then oversubscribe and run 3-7x slower).
    import torch

    torch.set_num_threads(1)
