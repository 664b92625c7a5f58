"""mmin_plugin.datasets (the Dataset spec, the registry) and features/infer.py (a spec from a feature file):
MMSA's three datasets agree with MMSA's own config, the spec is the only place naming a layout's keys,
dimensions and ranges, and inference asks for what it cannot read."""
import json
import re
from pathlib import Path

import numpy as np
import pytest

from mmin_plugin import datasets
from mmin_plugin.errors import MMINConfigError, MMINDataError
from mmin_plugin.features.infer import infer_dataset
from mmin_plugin.features.validation import validate_features

from .builders import make_features

PACKAGE = Path(__file__).resolve().parent.parent / "mmin_plugin"


def _mmsa_config():
    import importlib.util

    spec = importlib.util.find_spec("MMSA")
    return json.loads((Path(spec.origin).parent / "config" / "config_regression.json").read_text())


@pytest.mark.parametrize("spec", datasets.BUILTIN, ids=lambda d: d.name)
def test_builtin_specs_agree_with_mmsas_config(spec):
    block = _mmsa_config()["datasetCommonParams"][spec.name]["unaligned"]
    assert spec.mmsa_block()["unaligned"] == block
    assert spec.sizes["train"] == block["train_samples"] and spec.feature_path == block["featurePath"]


def test_builtin_families_ranges_and_keys():
    assert (datasets.MOSI.metric_family, datasets.MOSEI.metric_family, datasets.SIMS.metric_family) == \
        ("mosi", "mosi", "sims")
    assert datasets.MOSI.label_max == 3.0 and datasets.SIMS.label_max == 1.0
    assert datasets.MOSI.nonzero_splits == ("valid", "test") and datasets.SIMS.nonzero_splits == ()
    assert "Non0_acc_2" in datasets.MOSEI.key_evals and "Mult_acc_3" in datasets.SIMS.key_evals
    assert datasets.SIMS.label_keys[1:] == ("regression_labels_T", "regression_labels_A", "regression_labels_V")
    assert datasets.MOSI.label_keys == ("regression_labels",)
    assert (datasets.MOSI.test_size, datasets.MOSEI.test_size, datasets.SIMS.test_size) == (686, 4659, 457)
    assert datasets.MOSI.override_keys("feature_A", False, False) == ("audio", "audio_lengths")
    assert datasets.MOSI.override_keys("feature_A", False, True) == ("audio",)
    assert datasets.MOSI.override_keys("feature_T", True, False) == ("text_bert",)
    assert datasets.SIMS.loader_name == "sims" and datasets.MOSEI.loader_name == "mosi"


@pytest.mark.parametrize("spec", datasets.BUILTIN, ids=lambda d: d.name)
def test_spec_round_trips_through_json(spec):
    assert datasets.Dataset.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec


def test_spec_refuses_bad_values():
    base = datasets.MOSI.to_dict()
    for change, match in (({"metric_family": "iemocap"}, "metric_family"), ({"label_range": [-4, 4]}, "label_range"),
                          ({"seq_lens": [0, 1, 1]}, "seq_lens"), ({"key_eval": "Mult_acc_3"}, "key_eval"),
                          ({"name": "a/b"}, "dataset name"), ({"colour": 1}, "unknown keys"),
                          ({"sizes": {"train": 3, "valid": 1}}, "sizes")):
        with pytest.raises(MMINConfigError, match=match):
            datasets.Dataset.from_dict({**base, "name": "x", **change})


def test_registry_add_lookup_remove():
    spec = datasets.Dataset.from_dict({**datasets.MOSI.to_dict(), "name": "Mine_1"})
    assert spec.name == "mine_1"
    try:
        datasets.add(spec)
        assert datasets.get("MINE_1") is spec and "mine_1" in datasets.names()
        datasets.add(spec)  # again: no-op
    finally:
        datasets.remove("mine_1")
    assert datasets.lookup("mine_1") is None
    with pytest.raises(MMINConfigError, match="register_dataset"):
        datasets.get("mine_1")
    with pytest.raises(MMINConfigError, match="MMSA's own"):
        datasets.add(datasets.Dataset.from_dict(datasets.MOSI.to_dict()))
    with pytest.raises(MMINConfigError, match="MMSA's own"):
        datasets.remove("sims")


# --- the old constants are gone: the spec is the only place naming a layout ----------------------
OLD = [r"\bKEY_EVALS\b", r"\bLABEL_MAX\b", r"\b_NONZERO_SPLITS\b", r"\b_MODALITY_FILE_KEYS\b",
       r"\bSEQUENCE_KEYS\b", r"\bLAYOUTS\b", r"d_text\s*=\s*768", r"\bDATASETS\s*=",
       r"dataset(_name)?\s*==\s*['\"]sims",
       r"in\s*\(\s*['\"]mosi['\"],\s*['\"]mosei['\"]"]


def test_no_module_outside_the_spec_names_a_layout():
    hits = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel == "datasets.py" or rel.startswith("results/"):  # results/stats: wired to the spec by the lead
            continue
        text = path.read_text(encoding="utf-8")
        hits += [f"{rel}: {pat}" for pat in OLD if re.search(pat, text)]
    assert hits == []


# --- inference ------------------------------------------------------------------------------------
def _file(labels=None, unimodal=False, **kw):
    data = make_features(dt=24, da=3, dv=9, **kw)
    for s in data.values():
        n = len(s["regression_labels"])
        if labels is not None:
            s["regression_labels"] = np.resize(np.asarray(labels, np.float32), n)
        if unimodal:
            for m in "TAV":
                s["regression_labels_" + m] = s["regression_labels"].copy()
    return data


def test_infer_reads_dims_lengths_sizes_and_family():
    data = _file(labels=[-2.5, 0.5, 1.0])
    spec = infer_dataset("mine", data, "/x/mine.pkl")
    s = data["train"]
    assert spec.feature_dims == (s["text"].shape[2], s["audio"].shape[2], s["vision"].shape[2])
    assert spec.seq_lens == (s["text_bert"].shape[2], s["audio"].shape[1], s["vision"].shape[1])
    assert spec.sizes == {k: len(v["id"]) for k, v in data.items()}
    assert spec.metric_family == "mosi" and spec.label_range == (-3.0, 3.0) and spec.language == "en"
    assert spec.feature_path == "/x/mine.pkl" and not spec.unimodal_labels
    sims = infer_dataset("mine", _file(labels=[-0.4, 0.2, 1.0], unimodal=True), "m.pkl")
    assert sims.metric_family == "sims" and sims.unimodal_labels and sims.loader_name == "sims"


def test_infer_asks_for_what_it_cannot_read():
    with pytest.raises(MMINConfigError, match="metric_family='mosi' or metric_family='sims'"):
        infer_dataset("mine", _file(labels=[-0.5, 0.5]), "m.pkl")
    assert infer_dataset("mine", _file(labels=[-0.5, 0.5]), "m.pkl", metric_family="sims").label_max == 1.0
    with pytest.raises(MMINConfigError, match="rescale the labels"):
        infer_dataset("mine", _file(labels=[-5.0, 4.0]), "m.pkl")
    with pytest.raises(MMINConfigError, match="label_range"):
        infer_dataset("mine", _file(labels=[-2.0, 2.5]), "m.pkl", label_range=(-2, 2))
    with pytest.raises(MMINConfigError, match="unknown option"):
        infer_dataset("mine", _file(), "m.pkl", colour="red")
    no_states = _file(labels=[-2.0, 1.0])
    for s in no_states.values():
        del s["text"]
    with pytest.raises(MMINConfigError, match="text_dim"):
        infer_dataset("mine", no_states, "m.pkl")
    assert infer_dataset("mine", no_states, "m.pkl", text_dim=48).feature_dims[0] == 48


def test_infer_runs_the_feature_checks():
    data = _file(labels=[-2.0, 1.0])
    data["test"]["regression_labels"][:] = 0  # MOSI-style metrics need a non-zero test label
    with pytest.raises(MMINDataError, match="non-zero label"):
        infer_dataset("mine", data, "m.pkl")
    data = _file(labels=[-2.0, 1.0])
    del data["valid"]["audio_lengths"]
    with pytest.raises(MMINDataError, match="split 'valid', key 'audio_lengths'"):
        infer_dataset("mine", data, "m.pkl")


def test_validation_reads_the_registered_spec():
    data = _file(labels=[-0.5, 0.5])
    spec = infer_dataset("mine", data, "m.pkl", metric_family="sims", label_range=(-0.5, 0.5))
    validate_features(data, "m.pkl", dataset_name=spec)
    data["train"]["regression_labels"][0] = 0.9
    with pytest.raises(MMINDataError, match=r"labels within \[-0.5, 0.5\]"):
        validate_features(data, "m.pkl", dataset_name=spec)
