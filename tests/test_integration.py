"""MMIN through MMSA's own entry points: MMSA_run (default and own config files, overrides,
tuning), the results CSV, MMSA_test, registration, determinism."""
import copy
import json
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import mmin_plugin
from mmin_plugin.errors import MMINConfigError, MMINError
from mmin_plugin.integration.runner import mmsa_run

FAST = {"d_model": 16, "nheads": 4, "fine_layers": 1, "fusion_ff_dim": 32, "disc_hidden": 8, "max_epochs": 1}


def _dirs(tmp_path):
    return dict(model_save_dir=tmp_path / "models", res_save_dir=tmp_path / "results", log_dir=tmp_path / "logs",
                gpu_ids=[], num_workers=0, verbose_level=0)


def _config(files, **over):
    return {"featurePath": str(Path(files["feature_path"]).resolve()), "pretrained": files["bert_dir"], **FAST, **over}


@pytest.mark.e2e
def test_mmsa_run_default_config_writes_csv_row(small_mosi, tmp_path):
    from MMSA import MMSA_run

    MMSA_run("mmin", "mosi", config=_config(small_mosi), seeds=[1111], **_dirs(tmp_path))
    df = pd.read_csv(tmp_path / "results" / "normal" / "mosi.csv")
    assert list(df["Model"]) == ["mmin"]
    mean, std = eval(df.loc[0, "MAE"], {"np": np})  # MMSA stores "(mean*100, std*100)"
    assert np.isfinite(mean) and std == 0
    assert (tmp_path / "models" / "mmin-mosi.pth").is_file()
    history = json.loads((tmp_path / "models" / "mmin-mosi.history.json").read_text())
    assert len(history) == 1
    assert {"train_L_senti", "train_L_sep", "train_L_ac", "train_L_ap", "valid_Loss"} <= set(history[0])


@pytest.mark.e2e
def test_mmsa_csv_row_lines_up_with_mmsa_models(small_mosi, tmp_path):
    """MMIN's results dict has exactly MMSA's regression keys, so rows share one CSV."""
    res = mmsa_run("mmin", "mosi", config=_config(small_mosi), seeds=[1111], **_dirs(tmp_path))
    assert set(res[0]) == {"Has0_acc_2", "Has0_F1_score", "Non0_acc_2", "Non0_F1_score", "Mult_acc_5",
                           "Mult_acc_7", "MAE", "Corr", "Loss"}


@pytest.mark.e2e
def test_mosei_layout(tmp_path, tiny_bert):
    from mmin_plugin.experiments.demo import ensure_demo

    files = ensure_demo(tmp_path / "d", dataset="mosei", n_train=24, n_valid=8, n_test=8, seq_lens=(12, 20, 16),
                        bert_dir=tiny_bert)
    res = mmsa_run("mmin", "mosei", config=_config(files), seeds=[1111], **_dirs(tmp_path))
    assert np.isfinite(res[0]["MAE"])


@pytest.mark.e2e
def test_users_own_config_file_is_used(small_mosi, tmp_path):
    import MMSA

    default = Path(MMSA.__file__).parent / "config" / "config_regression.json"
    cfg = json.loads(default.read_text())
    cfg["mmin"] = copy.deepcopy(mmin_plugin.integration.registry.load_registry()["regression"]["mmin"])
    cfg["mmin"]["commonParams"].update(FAST, d_model=8, nheads=2)
    cfg["mmin"]["datasetParams"]["mosi"]["pretrained"] = small_mosi["bert_dir"]
    own = tmp_path / "my_config.json"
    own.write_text(json.dumps(cfg))
    cfg_args = MMSA.get_config_regression("mmin", "mosi", str(own))
    assert cfg_args["d_model"] == 8 and cfg_args["pretrained"] == small_mosi["bert_dir"]
    from MMSA import MMSA_run

    MMSA_run("mmin", "mosi", config_file=str(own), config={"featurePath": small_mosi["feature_path"]},
             seeds=[1111], **_dirs(tmp_path))
    log = (tmp_path / "logs" / "mmin-mosi.log").read_text()
    assert "'d_model': 8" in log


def test_default_config_has_paper_schema():
    from MMSA import get_config_regression, get_config_tune

    for ds, bert in (("mosi", "bert-base-uncased"), ("mosei", "bert-base-uncased"), ("sims", "bert-base-chinese")):
        args = get_config_regression("mmin", ds)
        assert args["pretrained"] == bert and args["model_name"] == "mmin"
        assert args["featurePath"].endswith(".pkl") and args["KeyEval"] == "Loss"
        tune = get_config_tune("mmin", ds)
        assert all(not isinstance(tune[k], list) for k in tune["d_paras"])  # one sampled value each
    with pytest.raises(MMINConfigError, match="dataset"):
        get_config_regression("mmin", "iemocap")


@pytest.mark.e2e
def test_tuning_mode_runs(small_mosi, tmp_path):
    from MMSA import MMSA_run

    MMSA_run("mmin", "mosi", config=_config(small_mosi, d_model=16, nheads=4), is_tune=True, tune_times=1,
             seeds=[1111], **_dirs(tmp_path))
    df = pd.read_csv(tmp_path / "results" / "tune" / "mosi-mmin.csv")
    assert len(df) == 1 and np.isfinite(df.loc[0, "MAE"])


@pytest.mark.e2e
def test_mmsa_test_single_sample(small_mosi, tmp_path):
    from MMSA import MMSA_test, get_config_regression

    mmsa_run("mmin", "mosi", config=_config(small_mosi), seeds=[1111], **_dirs(tmp_path))
    with open(small_mosi["feature_path"], "rb") as f:
        data = pickle.load(f)
    sample = {k: data["test"][k][0] for k in ("text", "text_bert", "audio", "vision")}
    one = tmp_path / "one.pkl"
    one.write_bytes(pickle.dumps(sample))
    config = dict(get_config_regression("mmin", "mosi"))
    config.update(_config(small_mosi))
    pred = MMSA_test(config, str(tmp_path / "models" / "mmin-mosi.pth"), str(one), gpu_id=-1)
    assert np.isfinite(pred)


@pytest.mark.e2e
def test_same_seed_same_metrics(small_mosi, tmp_path):
    a = mmsa_run("mmin", "mosi", config=_config(small_mosi, max_epochs=2), seeds=[1111], **_dirs(tmp_path / "a"))
    b = mmsa_run("mmin", "mosi", config=_config(small_mosi, max_epochs=2), seeds=[1111], **_dirs(tmp_path / "b"))
    assert a == b


def test_register_is_idempotent_and_clashes_are_errors():
    from MMSA import run

    mmin_plugin.register()  # already registered on import: no-op
    assert run.SUPPORTED_MODELS.count("MMIN") == 1
    with pytest.raises(MMINError, match="already registered"):
        mmin_plugin.register("mmin", model=object)
    with pytest.raises(MMINError, match="MMSA's own"):
        mmin_plugin.register("misa")
    mmin_plugin.unregister()
    try:
        assert "MMIN" not in run.SUPPORTED_MODELS
        with pytest.raises(MMINError, match="not registered"):
            mmin_plugin.unregister()
    finally:
        mmin_plugin.register()
    assert "MMIN" in run.SUPPORTED_MODELS
