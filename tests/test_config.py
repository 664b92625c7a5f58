"""MMINConfig: the one typed configuration (defaults = registry.json, MMSA's args accepted, every value
type- and range-checked, the combined rules, unknown keys with the nearest name)."""
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from mmin_plugin import datasets
from mmin_plugin.errors import MMINConfigError
from mmin_plugin.integration.validation import validate_config
from mmin_plugin.modeling.config import MMSA_KEYS, MMINConfig, config_table

REGISTRY = json.loads((Path(__file__).resolve().parent.parent / "registry.json").read_text())
REG, TUNE = REGISTRY["regression"]["mmin"], REGISTRY["tune"]["mmin"]
FIELDS = {f.name: f for f in dataclasses.fields(MMINConfig)}


def _registry_args(dataset):
    return {**REG["commonParams"], **REG["datasetParams"][dataset], "dataset_name": dataset}


def _default(name):
    f = FIELDS[name]
    return f.default_factory() if f.default is dataclasses.MISSING else f.default


# --- registry.json is MMSA's view of the same defaults -------------------------------------------

@pytest.mark.parametrize("section", ["regression", "tune"])
def test_registry_common_params_are_the_config_defaults(section):
    common = REGISTRY[section]["mmin"]["commonParams"]
    assert set(common) <= set(FIELDS), set(common) - set(FIELDS)
    assert {k: v for k, v in common.items()} == {k: MMINConfig().to_dict()[k] for k in common}


#: the keys MMSA sets from the dataset (its datasetCommonParams and its data loader), not registry.json
SET_BY_MMSA = {"dataset_name", "feature_dims", "KeyEval"}


@pytest.mark.parametrize("section", ["regression", "tune"])
def test_registry_names_every_config_key_exactly_once(section):
    """registry.json is MMINConfig in MMSA's schema: every key MMSA does not set itself is in it,
    in exactly one place (commonParams, datasetParams, or the tune grid `d_paras`)."""
    entry = REGISTRY[section]["mmin"]
    places = [set(entry["commonParams"]), set(entry["datasetParams"]["mosi"]),
              set(entry.get("debugParams", {}).get("d_paras", []))]
    assert set().union(*places) == set(FIELDS) - SET_BY_MMSA, set(FIELDS) ^ set().union(*places)
    assert sum(len(p) for p in places) == len(set().union(*places)), "a key in two places"
    for dataset in (d.name for d in datasets.BUILTIN):
        assert set(entry["datasetParams"][dataset]) == places[1], dataset


def test_tune_grid_holds_every_default_and_the_rest_are_defaults():
    """The tune section searches around the defaults: each grid holds the default value, and every
    key it does not search has the default (so a tuned run differs from the default only where searched)."""
    debug = TUNE["debugParams"]
    for key in debug["d_paras"]:
        assert _default(key) in debug[key], (key, debug[key])
    assert {k: _default(k) for k in TUNE["datasetParams"]["mosi"]} == TUNE["datasetParams"]["mosi"]
    for dataset in (d.name for d in datasets.BUILTIN):  # tune's per-dataset keys are the regression section's values
        assert {k: REG["datasetParams"][dataset][k] for k in TUNE["datasetParams"][dataset]} == \
            TUNE["datasetParams"][dataset]


def test_mmsa_merged_mosi_config_is_the_default_config():
    """MMINConfig() is what MMSA hands MMIN for MOSI (registry.json merged with MMSA's own dataset
    block): the defaults cannot drift from the registry or from MMSA's KeyEval / feature widths."""
    from mmin_plugin.integration.runner import mmsa_config

    assert MMINConfig.from_args(mmsa_config("mmin", "mosi")) == MMINConfig()


def test_registry_mosi_params_are_the_config_defaults():
    mosi = REG["datasetParams"]["mosi"]
    assert {k: _default(k) for k in mosi} == mosi


@pytest.mark.parametrize("dataset", [d.name for d in datasets.BUILTIN])
def test_registry_dataset_params_are_accepted(dataset):
    cfg = MMINConfig.from_args(_registry_args(dataset))
    assert cfg.dataset_name == dataset
    tune = {**TUNE["commonParams"], **TUNE["datasetParams"][dataset], "dataset_name": dataset}
    MMINConfig.from_args(tune)


@pytest.mark.parametrize("key", TUNE["debugParams"]["d_paras"])
def test_every_tune_grid_value_is_accepted(key):
    base = _registry_args("mosi")
    for value in TUNE["debugParams"][key]:
        assert getattr(MMINConfig.from_args({**base, key: value}), key) == value


@pytest.mark.parametrize("dataset", [d.name for d in datasets.BUILTIN])
@pytest.mark.parametrize("section", ["regression", "tune"])
def test_mmsa_args_are_accepted(dataset, section):
    """What MMSA's run.py hands the model and the trainer: its config reader's output plus the keys
    `_run` adds (every MMSA key must be known, or the run would stop with 'unknown key')."""
    import torch
    from MMSA import get_config_regression, get_config_tune

    import mmin_plugin  # noqa: F401  (registers 'mmin')

    args = (get_config_regression if section == "regression" else get_config_tune)("mmin", dataset)
    args.update(model_save_path=Path("x.pth"), device=torch.device("cpu"), train_mode="regression",
                custom_feature=None, feature_T=None, feature_A=None, feature_V=None, cur_seed=1)
    cfg = MMINConfig.from_args(args)
    assert cfg.dataset_name == dataset and cfg.feature_dims == tuple(args["feature_dims"])
    assert set(args) <= set(FIELDS) | MMSA_KEYS


def test_defaults_describe_mosi_and_round_trip():
    cfg = MMINConfig()
    assert cfg.dataset_name == "mosi" and cfg.KeyEval in datasets.MOSI.key_evals
    assert MMINConfig.from_args(cfg.to_dict()) == cfg
    assert MMINConfig.from_args(cfg) is cfg
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.d_model = 64


def test_every_key_documented_in_the_table():
    table = config_table().splitlines()
    assert len(table) == 2 + len(FIELDS)
    for name, row in zip(FIELDS, table[2:]):
        assert row.startswith(f"| `{name}` |") and row.count("|") == 6, row
        assert FIELDS[name].metadata["help"] and FIELDS[name].metadata["range"]


# --- values -----------------------------------------------------------------------------------------

BOOLS = ["use_bert", "use_finetune", "ca_ffn", "ca_positions", "need_data_aligned", "need_model_aligned",
         "need_normalized"]


@pytest.mark.parametrize("value", ["false", "true", 0, 1, None], ids=repr)
@pytest.mark.parametrize("key", BOOLS)
def test_booleans_must_be_real_booleans(key, value):
    with pytest.raises(MMINConfigError) as ei:
        MMINConfig.from_args({key: value})
    msg = str(ei.value)
    assert f"'{key}'" in msg and "boolean" in msg and repr(value) in msg, msg


@pytest.mark.parametrize("key", BOOLS)
def test_numpy_booleans_are_booleans(key):
    cfg = MMINConfig.from_args({key: np.bool_(not _default(key))})
    assert getattr(cfg, key) is (not _default(key))


@pytest.mark.parametrize("key, value, found", [
    ("d_model", 128.0, "128.0"),
    ("nheads", True, "True"),
    ("fusion_ff_dim", "256", "'256'"),
    ("disc_hidden", 0, "0"),
    ("rnn_layers", -1, "-1"),
    ("alpha", float("inf"), "inf"),
    ("grl_lambda", -0.5, "-0.5"),
    ("learning_rate", 0, "0"),
    ("weight_decay_bert", -1e-4, "-0.0001"),
    ("dropout", 1.0, "1.0"),
    ("attn_dropout", "0.1", "'0.1'"),
    ("sep_reduction", "avg", "avg"),
    ("lengths_from", "zeros", "zeros"),
    ("transformers", "gpt2", "gpt2"),
    ("pretrained", "", "''"),
    ("dataset_name", "iemocap", "iemocap"),
    ("dataset_name", None, "None"),
    ("feature_dims", [768, 5], "[768, 5]"),
    ("feature_dims", [768, 5, 0], "[768, 5, 0]"),
    ("max_epochs", 2.0, "2.0"),
    ("grad_clip", float("nan"), "nan"),
    ("KeyEval", None, "None"),
    ("ablation", ["text", "bogus"], "bogus"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_bad_values_name_key_expected_found(key, value, found):
    with pytest.raises(MMINConfigError) as ei:
        MMINConfig.from_args({key: value})
    msg = str(ei.value)
    assert f"config key '{key}'" in msg and "expected" in msg and found in msg, msg


def test_values_are_normalised():
    cfg = MMINConfig.from_args({"dataset_name": "SIMS", "KeyEval": "Mult_acc_3", "ablation": " Text, sep ,",
                                "feature_dims": [768, np.int64(33), 709], "alpha": 1, "max_epochs": np.int32(3)})
    assert cfg.dataset_name == "sims" and cfg.ablation == ["text", "sep"]
    assert cfg.feature_dims == (768, 33, 709) and type(cfg.feature_dims[1]) is int
    assert cfg.alpha == 1.0 and type(cfg.alpha) is float and cfg.max_epochs == 3 and type(cfg.max_epochs) is int
    assert cfg.modalities == ("video", "audio") and cfg.loss_weights["alpha"] == 0.0


def test_replace_validates_again():
    with pytest.raises(MMINConfigError, match="nheads=8"):
        dataclasses.replace(MMINConfig(), d_model=100)
    assert dataclasses.replace(MMINConfig(), d_model=96).d_model == 96


# --- combined rules -----------------------------------------------------------------------------------

@pytest.mark.parametrize("over, match", [
    ({"d_model": 100, "nheads": 8}, r"'d_model'.*multiple of nheads=8.*found 100"),
    ({"d_model": 64}, None),
    ({"ablation": ["text", "video", "audio"]}, r"'ablation'.*at least one must remain"),
    ({"ablation": "cin,fin"}, r"'ablation'.*at most one of 'cin' and 'fin'"),
    ({"ablation": ["cin", "text", "video"]}, None),
    ({"KeyEval": "mae"}, r"'KeyEval'.*found 'mae'; did you mean 'MAE'"),
    ({"KeyEval": "Mult_acc_2"}, r"'KeyEval'.*dataset 'mosi'.*found 'Mult_acc_2'"),
    ({"KeyEval": "Mult_acc_2", "dataset_name": "sims"}, None),
    ({"KeyEval": "Has0_acc_2", "dataset_name": "sims"}, r"'KeyEval'.*dataset 'sims'"),
], ids=["d_model-not-multiple", "d_model-64", "all-modalities", "cin-and-fin", "cin-and-two-modalities",
        "keyeval-case", "keyeval-sims-metric-on-mosi", "keyeval-sims-ok", "keyeval-mosi-metric-on-sims"])
def test_combined_rules(over, match):
    if match is None:
        MMINConfig.from_args(over)
    else:
        with pytest.raises(MMINConfigError, match=match):
            MMINConfig.from_args(over)


# --- unknown keys -----------------------------------------------------------------------------------

@pytest.mark.parametrize("key, near", [
    ("learnig_rate", "learning_rate"), ("dmodel", "d_model"), ("keyeval", "KeyEval"),
    ("seq_len", "seq_lens"), ("update_epochs", "max_epochs"), ("zzz", None),
], ids=lambda v: str(v))
def test_unknown_keys_name_the_nearest_known_key(key, near):
    with pytest.raises(MMINConfigError) as ei:
        MMINConfig.from_args({**_registry_args("mosi"), key: 1})
    msg = str(ei.value)
    assert f"config key '{key}'" in msg and "unknown key" in msg, msg
    assert (f"did you mean '{near}'" in msg) if near else ("did you mean" not in msg), msg


def test_not_a_mapping():
    with pytest.raises(MMINConfigError, match="expected a dict"):
        MMINConfig.from_args(["d_model", 64])


# --- validate_config: MMINConfig + the file-system check of `pretrained` --------------------------

def test_validate_config_is_the_config_plus_the_pretrained_check(tmp_path):
    cfg = validate_config(_registry_args("sims"))
    assert cfg == MMINConfig.from_args(_registry_args("sims"))
    with pytest.raises(MMINConfigError, match="'pretrained'.*does not exist"):
        validate_config({"pretrained": str(tmp_path / "missing")})
    validate_config({"pretrained": str(tmp_path / "missing"), "use_bert": False})  # not loaded then
    with pytest.raises(MMINConfigError, match="'ablation'"):
        validate_config({"ablation": ["cin", "fin"]})
