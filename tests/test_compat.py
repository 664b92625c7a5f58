"""mmin_plugin.integration.compat: MMSA 2.2.1's own models train and test on CPU with current torch.

The end-to-end tests run MMSA's unchanged MISA / MulT / Self-MM / MMIM through ``MMSA_run`` on a
small MOSI-layout file (short sequences, few samples) and a tiny random 32-d BERT, both made
locally by ``mmin_plugin.experiments.demo``.
"""
import logging
import shutil

import MMSA
import MMSA.run as mrun
import pandas as pd
import pytest
import torch

from mmin_plugin.errors import MMINDataError
from mmin_plugin.integration import compat, hooks, patching

DEFAULT_MOSI = "/home/sharing/disk3/Datasets/MMSA-Standard/MOSI/Processed/unaligned_50.pkl"


@pytest.fixture(scope="module", autouse=True)
def _applied():
    compat.apply()


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from mmin_plugin.experiments.demo import make_tiny_bert
    from mmin_plugin.features.synthetic import make_demo_features

    root = tmp_path_factory.mktemp("compat")
    bert = make_tiny_bert(root / "bert-tiny-en", language="en")
    feat = make_demo_features(root / "mosi_small.pkl", dataset="mosi", n_train=16, n_valid=8,
                              n_test=8, seq_lens=(8, 16, 12), bert_dir=bert)
    return {"bert": str(bert), "features": str(feat)}


def _run(model, tmp_path, config, **kw):
    kw.setdefault("seeds", [1111])
    MMSA.MMSA_run(model, "mosi", config=config, gpu_ids=[], num_workers=0, verbose_level=0,
                  model_save_dir=tmp_path / "models", res_save_dir=tmp_path / "results",
                  log_dir=tmp_path / "logs", **kw)
    return pd.read_csv(tmp_path / "results" / "normal" / "mosi.csv")


# --- apply() ----------------------------------------------------------------------------------
def test_apply_is_idempotent():
    compat.apply()
    run_before, proxy_before = mrun._run, mrun.torch
    compat.apply()
    compat.apply()
    assert compat.is_applied()
    assert mrun._run is run_before and mrun.torch is proxy_before
    hooks.install()
    # exactly one pre-run wrapper in the _run chain: the one the patch record holds
    n, fn = 0, mrun._run
    while fn is not None:
        n += any(p.replacement is fn for p in patching.patches())
        fn = getattr(fn, "__wrapped__", None)
    assert n == 1


# --- 1. set_device ----------------------------------------------------------------------------
def test_set_device_cpu_is_noop_for_mmsa_only(monkeypatch):
    mrun.torch.cuda.set_device(torch.device("cpu"))  # what MMSA_run does on a CPU machine
    mrun.torch.cuda.set_device("cpu")
    if not torch.cuda.is_available():  # torch itself is untouched
        with pytest.raises(ValueError, match="Expected a cuda device"):
            torch.cuda.set_device(torch.device("cpu"))
    calls = []
    monkeypatch.setattr(torch.cuda, "set_device", calls.append)
    mrun.torch.cuda.set_device(torch.device("cuda:0"))
    mrun.torch.cuda.set_device(1)
    assert calls == [torch.device("cuda:0"), 1]  # CUDA devices are delegated
    # everything else MMSA.run uses is the real torch
    assert mrun.torch.load is torch.load and mrun.torch.device is torch.device
    assert mrun.torch.cuda.empty_cache is torch.cuda.empty_cache


def test_default_gpu_ids_not_mutated_on_cpu():
    from MMSA.utils import assign_gpu

    if torch.cuda.is_available():
        pytest.skip("CPU-only behaviour")
    ids, empty = [0], []
    assert assign_gpu(ids) == torch.device("cpu") and ids == [0]
    assert assign_gpu(empty) == torch.device("cpu") and empty == []


# --- 2. ReduceLROnPlateau ---------------------------------------------------------------------
@pytest.mark.parametrize("mod_name", ["MMSA.trains.singleTask.MULT", "MMSA.trains.singleTask.MMIM",
                                      "MMSA.trains.missingTask.TFR_NET"])
def test_scheduler_accepts_verbose(mod_name, caplog):
    import importlib

    cls = importlib.import_module(mod_name).ReduceLROnPlateau
    assert issubclass(cls, torch.optim.lr_scheduler.ReduceLROnPlateau)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = cls(opt, mode="min", factor=0.5, verbose=True, patience=0)
    with caplog.at_level(logging.INFO, logger="MMSA"):
        sched.step(1.0)
        sched.step(1.0)  # no improvement, patience 0 -> halve
    assert opt.param_groups[0]["lr"] == pytest.approx(0.5)
    assert "reducing learning rate of group 0" in caplog.text
    quiet = cls(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0), verbose=False)
    quiet.step(1.0)


# --- 3. dataset root --------------------------------------------------------------------------
def test_resolve_feature_path(monkeypatch, tmp_path):
    args = MMSA.get_config_regression("misa", "mosi")
    assert args["featurePath"] == DEFAULT_MOSI
    monkeypatch.delenv(hooks.ENV_DATASET_ROOT, raising=False)
    assert hooks.resolve_feature_path(dict(args))["featurePath"] == DEFAULT_MOSI

    monkeypatch.setenv(hooks.ENV_DATASET_ROOT, str(tmp_path / "data"))  # read at call time
    out = hooks.resolve_feature_path(args)
    assert out is args
    expected = str(tmp_path / "data" / "MOSI" / "Processed" / "unaligned_50.pkl")
    assert args["featurePath"] == expected
    assert hooks.resolve_feature_path(args)["featurePath"] == expected  # idempotent
    other = {"featurePath": "/somewhere/else/x.pkl"}
    assert hooks.resolve_feature_path(other)["featurePath"] == "/somewhere/else/x.pkl"


@pytest.mark.e2e
def test_dataset_root_env_reroots_mmsa_run(monkeypatch, tmp_path, demo):
    root = tmp_path / "datasets"
    (root / "MOSI" / "Processed").mkdir(parents=True)
    shutil.copy(demo["features"], root / "MOSI" / "Processed" / "unaligned_50.pkl")
    monkeypatch.setenv(hooks.ENV_DATASET_ROOT, str(root))
    seen = []

    class Stop(Exception):
        pass

    def spy(args):
        seen.append(args["featurePath"])
        raise Stop

    monkeypatch.setattr(hooks, "PRE_RUN_HOOKS", hooks.PRE_RUN_HOOKS + [spy])
    with pytest.raises(Stop):
        _run("misa", tmp_path, {"pretrained": demo["bert"]})
    assert seen == [str(root / "MOSI" / "Processed" / "unaligned_50.pkl")]


@pytest.mark.e2e
def test_missing_feature_file_error(monkeypatch, tmp_path, demo):
    monkeypatch.delenv(hooks.ENV_DATASET_ROOT, raising=False)
    with pytest.raises(MMINDataError) as err:
        _run("misa", tmp_path, {"pretrained": demo["bert"]})
    msg = str(err.value)
    assert DEFAULT_MOSI in msg and hooks.ENV_DATASET_ROOT in msg and "featurePath" in msg

    monkeypatch.setenv(hooks.ENV_DATASET_ROOT, str(tmp_path / "empty"))
    with pytest.raises(MMINDataError) as err:
        _run("mult", tmp_path, {})
    assert str(tmp_path / "empty" / "MOSI" / "Processed" / "unaligned_50.pkl") in str(err.value)

    with pytest.raises(MMINDataError) as err:
        _run("mult", tmp_path, {}, custom_feature=str(tmp_path / "nope.pkl"))
    assert "custom_feature" in str(err.value) and str(tmp_path / "nope.pkl") in str(err.value)

    with pytest.raises(MMINDataError) as err:
        _run("mult", tmp_path, {"featurePath": demo["features"]}, feature_A=str(tmp_path / "a.pkl"))
    assert "feature_A" in str(err.value) and str(tmp_path / "a.pkl") in str(err.value)
    assert not (tmp_path / "results" / "normal" / "mosi.csv").exists()


# --- 4. encoder hidden size -------------------------------------------------------------------
def test_encoder_hidden_size(demo, tmp_path, caplog):
    assert compat.encoder_hidden_size(demo["bert"]) == 32
    with caplog.at_level(logging.WARNING, logger="MMSA"):
        assert compat.encoder_hidden_size(str(tmp_path / "no-such-encoder")) == 768
    assert "no-such-encoder" in caplog.text


# --- end to end: MMSA's own models, unchanged, on CPU -----------------------------------------
# Learning rates of 0: the validation loss cannot improve after epoch 1, so early_stop=1 ends
# every run after exactly 2 epochs (with real rates the epoch count depends on the data and
# reached 18); the training loop, backward, optimiser and scheduler steps, checkpoint save,
# reload and test all still run.
_FROZEN = {
    "misa": {"learning_rate": 0.0},
    "mult": {"learning_rate": 0.0, "update_epochs": 1},  # MMSA steps every 8 batches; we have 2
    "self_mm": {"learning_rate_bert": 0.0, "learning_rate_audio": 0.0,
                "learning_rate_video": 0.0, "learning_rate_other": 0.0},
    "mmim": {"lr_main": 0.0, "lr_bert": 0.0, "lr_mmilb": 0.0},
}


@pytest.mark.e2e
@pytest.mark.parametrize("model", ["misa", "mult", "self_mm", "mmim"])
def test_mmsa_model_trains_and_tests_on_cpu(model, tmp_path, demo):
    config = {"featurePath": demo["features"], "pretrained": demo["bert"], "early_stop": 1,
              "batch_size": 8, **_FROZEN[model]}
    df = _run(model, tmp_path, config)
    assert list(df["Model"]) == [model]
    assert {"Has0_acc_2", "MAE", "Corr", "Loss"} <= set(df.columns)
    assert (tmp_path / "models" / f"{model}-mosi.pth").is_file()
    if model in ("misa", "self_mm", "mmim"):  # a 32-d BERT, not MMSA's assumed 768
        state = torch.load(tmp_path / "models" / f"{model}-mosi.pth")
        emb = [v for k, v in state.items() if k.endswith("word_embeddings.weight")]
        assert emb and emb[0].shape[1] == 32
    if model == "misa":
        assert state["Model.project_t.project_t.weight"].shape[1] == 32
