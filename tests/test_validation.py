"""features/validation.py (feature-file checks, NaN/inf sanitising) and integration/validation.py (config)."""
import copy
import json
import logging
import math
import types
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from mmin_plugin.errors import MMINConfigError, MMINDataError
from mmin_plugin.features.validation import sanitize_features, validate_features, validate_run_features
from mmin_plugin.integration.validation import looks_like_hub_id, validate_config
from mmin_plugin.modeling.config import ABLATIONS, normalize_ablation

from .builders import make_features
from .strategies import examples

PATH = "/data/MOSI/unaligned_50.pkl"
SPLITS = ("train", "valid", "test")
REGISTRY = Path(__file__).resolve().parents[1] / "registry.json"


# --- a small valid file, built with NumPy only (fast) ---------------------------------------------

def _fails(data, *parts, **kw):
    with pytest.raises(MMINDataError) as ei:
        validate_features(data, PATH, **kw)
    msg = str(ei.value)
    assert msg.startswith(PATH), msg
    for p in parts:
        assert p in msg, (p, msg)
    assert "expected" in msg and "found" in msg, msg
    return msg


def test_valid_file_passes_and_summarises():
    data = make_features()
    summary = validate_features(data, PATH, dataset_name="mosi")
    assert summary["train"]["n"] == 4
    assert summary["test"]["seq_lens"] == (6, 8, 7)
    assert summary["valid"]["feature_dims"] == (768, 5, 20)
    validate_features(data, PATH, use_bert=False)
    sims = make_features(sims=True)
    validate_features(sims, PATH, dataset_name="sims")
    # lengths may be int arrays (MMSA-FET), integral floats, (N, 1) labels, object str arrays
    for s in data.values():
        s["audio_lengths"] = np.asarray(s["audio_lengths"], dtype=np.int32)
        s["vision_lengths"] = np.asarray(s["vision_lengths"], dtype=np.float64)
        s["regression_labels"] = s["regression_labels"].reshape(-1, 1)
        s["id"] = s["id"].astype(object)
        s["raw_text"] = list(s["raw_text"])
    validate_features(data, PATH)


def test_zero_lengths_pass_and_are_counted():
    data = make_features()
    data["valid"]["audio_lengths"][1] = 0
    assert validate_features(data, PATH)["valid"]["zero_audio_lengths"] == 1


@pytest.mark.parametrize("mutate, parts", [
    (lambda d: d.pop("valid"), ["'valid'", "splits"]),
    (lambda d: d.__setitem__("test", [1, 2]), ["split 'test'", "a dict"]),
    (lambda d: d["train"].pop("audio"), ["split 'train'", "key 'audio'", "present"]),
    (lambda d: d["train"].pop("text_bert"), ["key 'text_bert'"]),
    (lambda d: d["test"].pop("vision_lengths"), ["split 'test'", "key 'vision_lengths'"]),
    (lambda d: d["test"].pop("id"), ["key 'id'"]),
    (lambda d: d["valid"].pop("regression_labels"), ["key 'regression_labels'"]),
    (lambda d: d["train"].__setitem__("audio", d["train"]["audio"][:3]),
     ["key 'audio'", "4 samples", "(3, 8, 5)"]),
    (lambda d: d["train"].__setitem__("raw_text", d["train"]["raw_text"][:2]),
     ["key 'raw_text'", "4 entries"]),
    (lambda d: d["train"].__setitem__("id", np.arange(4)), ["key 'id'", "str"]),
    (lambda d: d["train"].__setitem__("id", ["a", "b", None, "d"]), ["key 'id'", "sample 2"]),
    (lambda d: d["train"].__setitem__("text_bert", d["train"]["text_bert"][:, :2]),
     ["key 'text_bert'", "(N, 3, L)", "(4, 2, 6)"]),
    (lambda d: d["train"]["text_bert"].__setitem__((1, 1, 0), 0.5),
     ["key 'text_bert'", "attention mask", "0.5", "sample 1"]),
    (lambda d: d["train"]["text_bert"].__setitem__((0, 2, 0), 3),
     ["key 'text_bert'", "segment ids"]),
    (lambda d: d["train"]["text_bert"].__setitem__((0, 0, 0), -1), ["token ids"]),
    (lambda d: d["train"]["text_bert"].__setitem__((0, 0, 0), 2.5), ["integral token ids"]),
    (lambda d: d["train"]["text_bert"].__setitem__((0, 0, 0), np.nan), ["integral token ids"]),
    (lambda d: d["train"].__setitem__("text_bert", d["train"]["text_bert"].astype(str)),
     ["key 'text_bert'", "numeric dtype", "<U"]),
    (lambda d: d["valid"].__setitem__("audio", d["valid"]["audio"][..., 0]),
     ["split 'valid'", "key 'audio'", "3-D", "(3, 8)"]),
    (lambda d: d["test"].__setitem__("vision", d["test"]["vision"][..., :4]),
     ["split 'test'", "key 'vision'", "feature dim 20", "'train'", "4"]),
    (lambda d: d["train"].__setitem__("audio", d["train"]["audio"].astype(object)),
     ["key 'audio'", "numeric dtype", "object"]),
    (lambda d: d["train"].__setitem__("audio", d["train"]["audio"].astype(np.complex64)),
     ["key 'audio'", "numeric dtype"]),
    (lambda d: d["train"].__setitem__("audio", d["train"]["audio"].tolist()),
     ["key 'audio'", "numpy array", "list"]),
    (lambda d: d["train"].__setitem__("vision", np.zeros((4, 0, 20), np.float32)),
     ["key 'vision'", "L, d >= 1"]),
    (lambda d: d["train"].__setitem__("audio", d["train"]["audio"].astype(np.float64) * 1e300),
     ["key 'audio'", "float32"]),
    (lambda d: d["train"]["audio_lengths"].__setitem__(2, 9),
     ["key 'audio_lengths'", "[0, 8]", "9", "sample 2"]),
    (lambda d: d["train"]["vision_lengths"].__setitem__(0, -1), ["key 'vision_lengths'", "-1"]),
    (lambda d: d["train"]["vision_lengths"].__setitem__(0, 2.5),
     ["key 'vision_lengths'", "integer", "2.5"]),
    (lambda d: d["train"]["vision_lengths"].__setitem__(0, "3"), ["key 'vision_lengths'"]),
    (lambda d: d["train"]["vision_lengths"].__setitem__(0, True), ["key 'vision_lengths'"]),
    (lambda d: d["train"].__setitem__("audio_lengths", [3, 3]),
     ["key 'audio_lengths'", "4 lengths", "2"]),
    (lambda d: d["train"].__setitem__("audio_lengths", 5), ["key 'audio_lengths'"]),
    (lambda d: d["train"]["regression_labels"].__setitem__(1, np.nan),
     ["key 'regression_labels'", "finite", "sample 1"]),
    (lambda d: d["train"]["regression_labels"].__setitem__(0, np.inf),
     ["key 'regression_labels'", "finite"]),
    (lambda d: d["train"].__setitem__("regression_labels", np.zeros((4, 2), np.float32)),
     ["key 'regression_labels'", "(4, 1)"]),
    (lambda d: d["train"].__setitem__("regression_labels", ["a", "b", "c", "d"]),
     ["key 'regression_labels'", "numeric"]),
    (lambda d: [d[s].__setitem__(k, d[s][k][:0] if hasattr(d[s][k], "shape") else [])
                for s in ["train"] for k in list(d[s])], ["split 'train'", "at least one"]),
])
def test_each_problem_gives_one_clear_error(mutate, parts):
    data = make_features()
    mutate(data)
    _fails(data, *parts)


def test_top_level_not_a_dict():
    _fails([1, 2, 3], "dict")
    _fails(None, "dict")


def test_use_bert_false_needs_finite_text_and_same_dim():
    data = make_features()
    data["train"].pop("text")
    _fails(data, "key 'text'", "present", use_bert=False)
    data = make_features()
    data["valid"]["text"][0, 0, 0] = np.inf
    _fails(data, "split 'valid'", "key 'text'", "finite", use_bert=False)
    data = make_features()
    data["test"]["text"] = data["test"]["text"][..., :10]
    _fails(data, "split 'test'", "key 'text'", "feature dim 768", use_bert=False)
    # text_bert is not needed then
    data = make_features()
    for s in data.values():
        s.pop("text_bert")
    validate_features(data, PATH, use_bert=False)


def test_dataset_specific_checks():
    data = make_features(sims=True)
    data["valid"].pop("regression_labels_A")
    _fails(data, "split 'valid'", "key 'regression_labels_A'", dataset_name="sims")
    data = make_features(sims=True)
    data["train"]["regression_labels_V"] = list(data["train"]["regression_labels_V"])
    _fails(data, "key 'regression_labels_V'", "numpy array", dataset_name="sims")
    data = make_features(sims=True)
    data["test"]["regression_labels_T"][1] = -1.5
    _fails(data, "split 'test'", "key 'regression_labels_T'", "[-1, 1]", "1.5",
           dataset_name="sims")
    data = make_features()
    data["train"]["regression_labels"][0] = 3.5
    _fails(data, "key 'regression_labels'", "[-3, 3]", "3.5", dataset_name="mosi")


def test_aligned_data():
    data = make_features(L=6, La=6, Lv=6)
    for s in data.values():
        s.pop("audio_lengths")
        s.pop("vision_lengths")
    validate_features(data, PATH, need_data_aligned=True)
    _fails(data, "key 'audio_lengths'", need_data_aligned=False)
    data = make_features(L=6, La=8, Lv=6)
    _fails(data, "key 'audio'", "aligned", need_data_aligned=True)


# --- issue 11: modality files, encoder limits, non-zero labels, bounded messages -------------------

def _modality_file(data, keys):
    return {split: {k: copy.deepcopy(data[split][k]) for k in keys} for split in SPLITS}


def _run_fails(main, extra, path, *parts, **kw):
    with pytest.raises(MMINDataError) as ei:
        validate_run_features(main, PATH, extra, **kw)
    msg = str(ei.value)
    assert msg.startswith(path), msg
    for p in parts:
        assert p in msg, (p, msg)
    return msg


def test_modality_files_are_validated_and_cross_checked():
    main = make_features()
    A = _modality_file(make_features(La=9, seed=1), ("audio", "audio_lengths"))
    V = _modality_file(make_features(seed=2), ("vision", "vision_lengths"))
    T = _modality_file(make_features(L=5, seed=3), ("text_bert",))
    ok = validate_run_features(main, PATH, {"feature_A": (A, "/a.pkl"), "feature_V": (V, "/v.pkl"),
                                            "feature_T": (T, "/t.pkl")})
    assert ok["train"]["seq_lens"] == (5, 9, 7)  # the overrides' own L, as MMSA reads them
    # lengths beyond the override's L, or negative (the model used to clamp -4 to 0)
    for bad, part in ((999, "999"), (-4, "-4")):
        A2 = copy.deepcopy(A)
        A2["valid"]["audio_lengths"][1] = bad
        _run_fails(main, {"feature_A": (A2, "/a.pkl")}, "/a.pkl", "split 'valid'", "audio_lengths",
                   "within [0, 9]", part)
    # a wrong sample count (a raw IndexError in MMSA's loader before)
    V2 = _modality_file(make_features(n=(4, 3, 5), seed=2), ("vision", "vision_lengths"))
    _run_fails(main, {"feature_V": (V2, "/v.pkl")}, "/v.pkl", "split 'test'", "vision", "3 samples")
    # a missing split / key, a file that is not a dict
    A3 = copy.deepcopy(A)
    del A3["test"]["audio_lengths"]
    _run_fails(main, {"feature_A": (A3, "/a.pkl")}, "/a.pkl", "audio_lengths", "feature_A file")
    _run_fails(main, {"feature_T": ([1, 2], "/t.pkl")}, "/t.pkl", "list of length 2")
    # aligned data: the override must have the text's L; lengths are then not read
    _run_fails(main, {"feature_A": (A, "/a.pkl")}, "/a.pkl", "aligned data", need_data_aligned=True)
    # errors in the main file still name the main file
    main2 = make_features()
    main2["train"]["regression_labels"][0] = np.nan
    _run_fails(main2, {"feature_A": (A, "/a.pkl")}, PATH, "regression_labels")


def test_text_is_checked_against_the_encoder():
    data = make_features()
    enc = {"vocab_size": 100, "max_position_embeddings": 6, "type_vocab_size": 2}
    validate_features(data, PATH, encoder=enc)
    bad = copy.deepcopy(data)
    bad["test"]["text_bert"][2, 0, 1] = 100
    _fails(bad, "split 'test'", "vocab_size 100", "100 at sample 2, step 1", encoder=enc)
    _fails(data, "max_position_embeddings", "L = 6", encoder=dict(enc, max_position_embeddings=5))
    seg = copy.deepcopy(data)
    seg["train"]["text_bert"][0, 2, 0] = 1
    _fails(seg, "type_vocab_size 1", encoder=dict(enc, type_vocab_size=1))
    validate_features(bad, PATH, encoder={})  # unknown limits: not checked


def test_encoder_limits_read_from_pretrained_config(tmp_path):
    from mmin_plugin.integration.compat import encoder_limits

    d = tmp_path / "enc"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "bert", "vocab_size": 123, "hidden_size": 16,
                                               "max_position_embeddings": 40, "type_vocab_size": 2,
                                               "num_attention_heads": 2, "num_hidden_layers": 1,
                                               "intermediate_size": 32}))
    assert encoder_limits(str(d)) == {"vocab_size": 123, "max_position_embeddings": 40, "type_vocab_size": 2}
    assert encoder_limits(None) == {}


@pytest.mark.parametrize("dataset", ["mosi", "mosei"])
@pytest.mark.parametrize("split", ["valid", "test"])
def test_valid_and_test_need_a_non_zero_label(dataset, split):
    data = make_features()
    data[split]["regression_labels"][:] = 0
    _fails(data, f"split '{split}'", "non-zero label", "all 3 labels are 0", dataset_name=dataset)
    data["train"]["regression_labels"][:] = 0  # train may be all zero; SIMS has no Non0 metrics
    data[split]["regression_labels"][0] = 0.2
    validate_features(data, PATH, dataset_name=dataset)
    sims = make_features(sims=True)
    sims[split]["regression_labels"][:] = 0
    validate_features(sims, PATH, dataset_name="sims")


def test_error_messages_are_bounded_for_deep_or_huge_values():
    deep = frozenset()
    for _ in range(20000):  # repr() of this raises RecursionError
        deep = frozenset([deep])
    data = make_features()
    data["train"]["id"] = deep
    msg = _fails(data, "split 'train'", "'id'")
    assert len(msg) < 400
    data["train"]["id"] = {"x": list(range(10 ** 6))}
    assert len(_fails(data, "'id'")) < 400


# --- sanitize_features ------------------------------------------------------------------------------

def test_sanitize_counts_and_warns_once(caplog):
    data = make_features()
    a = data["train"]["audio"]
    a[0, 0, 0], a[1, 0, 1], a[1, 1, 1], a[2, 7, 0] = np.nan, np.inf, -np.inf, -np.inf
    data["test"]["vision"][0, 0, :3] = np.nan
    with caplog.at_level(logging.WARNING, logger="MMSA"):
        with pytest.warns(RuntimeWarning) as rec:
            counts = sanitize_features(data, PATH)
    assert len(rec) == 1
    msg = str(rec[0].message)
    assert PATH in msg and "train/audio: 1 NaN, 1 +inf, 2 -inf" in msg
    assert "test/vision: 3 NaN, 0 +inf, 0 -inf" in msg
    assert [r.getMessage() for r in caplog.records if r.name.startswith("MMSA")] == [msg]
    assert counts == {"train": {"audio": {"nan": 1, "posinf": 1, "neginf": 2}},
                      "test": {"vision": {"nan": 3, "posinf": 0, "neginf": 0}}}
    for s in data.values():
        assert np.isfinite(s["audio"]).all() and np.isfinite(s["vision"]).all()
    assert a[0, 0, 0] == 0 and data["train"]["audio"] is a  # in place


def test_sanitize_clean_is_silent(caplog):
    data = make_features()
    before = copy.deepcopy(data)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with caplog.at_level(logging.WARNING, logger="MMSA"):
            assert sanitize_features(data, PATH) == {}
    assert not caplog.records
    for s in SPLITS:
        np.testing.assert_array_equal(before[s]["audio"], data[s]["audio"])


def test_sanitize_readonly_and_noncontiguous_arrays():
    data = make_features()
    v = np.asfortranarray(data["train"]["vision"])
    v[0, 0, 0] = np.nan
    data["train"]["vision"] = v
    ro = data["valid"]["audio"]
    ro[0, 0, 0] = np.inf
    ro.flags.writeable = False
    with pytest.warns(RuntimeWarning):
        counts = sanitize_features(data, PATH)
    assert counts["train"]["vision"]["nan"] == 1 and counts["valid"]["audio"]["posinf"] == 1
    assert np.isfinite(data["train"]["vision"]).all() and np.isfinite(data["valid"]["audio"]).all()


def test_sanitize_ignores_junk():
    assert sanitize_features(None, PATH) == {}
    assert sanitize_features({"train": 3, "valid": {"audio": "x"}}, PATH) == {}


# --- hypothesis: malformed files end in MMINDataError or a clean pass ------------------------------

_KEYS = ["text_bert", "text", "audio", "vision", "audio_lengths", "vision_lengths",
         "regression_labels", "regression_labels_T", "id", "raw_text"]

_dtypes = st.sampled_from([np.float16, np.float32, np.float64, np.int8, np.int64, np.uint8,
                           np.bool_, np.complex64, "<U3", object])


@st.composite
def _arrays(draw):
    dtype = np.dtype(draw(_dtypes))
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5))
    if dtype.kind == "O":
        return np.array(draw(st.lists(st.one_of(st.integers(), st.text(max_size=2), st.none()),
                                      min_size=1, max_size=4)), dtype=object)
    if dtype.kind == "f":
        elements = st.floats(allow_nan=True, allow_infinity=True, width=dtype.itemsize * 8)
    else:
        elements = None
    return draw(hnp.arrays(dtype, shape, elements=elements))


_junk = st.one_of(
    st.none(), st.integers(-10, 10), st.floats(), st.text(max_size=3),
    st.lists(st.one_of(st.integers(-3, 12), st.floats(), st.text(max_size=2), st.booleans(),
                       st.none(), st.just(10 ** 30)), max_size=6),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    _arrays(),
)


def _mutations(draw, data):
    kind = draw(st.sampled_from(["delete", "junk", "nan", "extreme", "transpose", "truncate",
                                 "cast", "lengths", "labels", "split", "top"]))
    split = draw(st.sampled_from(SPLITS))
    key = draw(st.sampled_from(_KEYS))
    s = data[split] if isinstance(data, dict) and isinstance(data.get(split), dict) else None
    if kind == "top":
        return draw(_junk)
    if kind == "split" and isinstance(data, dict):
        data[split] = draw(_junk)
        return data
    if s is None:
        return data
    v = s.get(key)
    if kind == "delete":
        s.pop(key, None)
    elif kind == "junk":
        s[key] = draw(_junk)
    elif kind in ("nan", "extreme") and isinstance(v, np.ndarray) and v.size \
            and v.dtype.kind in "biuf":
        v = v.astype(np.float64)
        val = draw(st.sampled_from([np.nan, np.inf, -np.inf]) if kind == "nan"
                   else st.sampled_from([1e300, -1e39, 3e38, 1e30, -1e-300]))
        idx = tuple(draw(st.integers(0, d - 1)) for d in v.shape)
        v[idx] = val
        s[key] = v
    elif kind == "transpose" and isinstance(v, np.ndarray):
        s[key] = v.T
    elif kind == "truncate" and v is not None and hasattr(v, "__getitem__"):
        s[key] = v[:-1] if draw(st.booleans()) else v[:0]
    elif kind == "cast" and isinstance(v, np.ndarray):
        try:
            with np.errstate(all="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                s[key] = v.astype(draw(_dtypes))
        except (ValueError, TypeError):
            pass
    elif kind in ("lengths", "labels") and not isinstance(s.get("regression_labels"),
                                                           (np.ndarray, list)):
        pass
    elif kind == "lengths":
        k = len(s["regression_labels"])
        s[draw(st.sampled_from(["audio_lengths", "vision_lengths"]))] = draw(st.one_of(
            st.lists(st.integers(-2, 12), min_size=k, max_size=k),
            st.lists(st.floats(), min_size=k, max_size=k),
            hnp.arrays(np.int64, k, elements=st.integers(-3, 12))))
    elif kind == "labels":
        k = len(s["regression_labels"])
        s[draw(st.sampled_from(["regression_labels", "regression_labels_T"]))] = draw(
            hnp.arrays(np.float64, draw(st.sampled_from([(k,), (k, 1), (k, 2), (k + 1,)])),
                       elements=st.floats(allow_nan=True, allow_infinity=True)))
    return data


@st.composite
def malformed(draw):
    sims = draw(st.booleans())
    data = make_features(n=(3, 2, 2), L=4, La=5, Lv=4, dt=8, da=3, dv=2, sims=sims,
                     seed=draw(st.integers(0, 3)))
    for _ in range(draw(st.integers(0, 3))):
        data = _mutations(draw, data)
    opts = dict(use_bert=draw(st.booleans()), need_data_aligned=draw(st.booleans()),
                dataset_name="sims" if sims else draw(st.sampled_from([None, "mosi"])))
    return data, opts


def _accepted_invariants(data, opts):
    """What an accepted file guarantees beyond 'MMSA does not crash'."""
    text_key = "text_bert" if opts["use_bert"] else "text"
    dims = set()
    for split in SPLITS:
        s = data[split]
        for key in (text_key, "audio", "vision"):
            assert isinstance(s[key], np.ndarray) and s[key].dtype.kind in "biuf", (split, key)
            assert s[key].ndim == 3 and min(s[key].shape) >= 1
        if opts["use_bert"]:
            assert s["text_bert"].shape[1] == 3
            assert set(np.unique(s["text_bert"][:, 1:])) <= {0, 1}
        dims.add((s["audio"].shape[2], s["vision"].shape[2]))
        if not opts["need_data_aligned"]:
            for key in ("audio", "vision"):
                lens = np.asarray(s[key + "_lengths"], dtype=np.float64)
                assert lens.shape == (s[key].shape[0],)
                assert np.all((lens >= 0) & (lens <= s[key].shape[1]) & (lens == np.round(lens)))
        assert np.isfinite(np.asarray(s["regression_labels"], dtype=np.float64)).all()
    assert len(dims) == 1


def _mmsa_consumes(data, opts):
    """What MMSA's MMDataset does with an accepted file must work and give finite tensors."""
    import MMSA.data_loader as dl
    import torch
    from easydict import EasyDict as edict
    from torch.utils.data import default_collate

    real_pickle = dl.pickle
    dl.pickle = types.SimpleNamespace(load=lambda f: data)
    try:
        for split in SPLITS:
            args = edict(dataset_name=opts["dataset_name"] or "mosi", featurePath=__file__,
                         custom_feature=None, feature_T="", feature_A="", feature_V="",
                         use_bert=opts["use_bert"], need_data_aligned=opts["need_data_aligned"],
                         feature_dims=[0, 0, 0], seq_lens=[0, 0, 0])
            ds = dl.MMDataset(args, mode=split)
            batch = default_collate([ds[i] for i in range(len(ds))])
            for k in ("text", "audio", "vision"):
                assert torch.isfinite(batch[k]).all(), (split, k)
            for v in batch["labels"].values():
                assert torch.isfinite(v).all()
            assert len(batch["id"]) == len(ds)
            if not opts["need_data_aligned"]:
                assert batch["audio_lengths"].numel() == len(ds)
    finally:
        dl.pickle = real_pickle


@settings(max_examples=examples(150), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(malformed())
def test_malformed_inputs_raise_mmindataerror_or_pass(case):
    data, opts = case
    try:
        validate_features(data, PATH, **opts)
    except MMINDataError as e:
        assert str(e).startswith(PATH)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sanitize_features(data, PATH)  # must not crash on junk either
        return
    _accepted_invariants(data, opts)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sanitize_features(data, PATH)
    _mmsa_consumes(data, opts)


# --- validate_config ------------------------------------------------------------------------------

def _registry_args(dataset):
    reg = json.loads(REGISTRY.read_text())["regression"]["mmin"]
    args = dict(reg["commonParams"])
    args.update(reg["datasetParams"][dataset])
    args["dataset_name"] = dataset
    return args


@pytest.mark.parametrize("dataset", ["mosi", "mosei", "sims"])
def test_registry_defaults_pass(dataset):
    validate_config(_registry_args(dataset))


def test_tune_grid_values_pass():
    tune = json.loads(REGISTRY.read_text())["tune"]["mmin"]
    base = _registry_args("mosi")
    for key in tune["debugParams"]["d_paras"]:
        for v in tune["debugParams"][key]:
            validate_config({**base, key: v})


def test_easydict_and_partial_configs():
    from easydict import EasyDict as edict

    validate_config(edict(_registry_args("sims")))
    validate_config({})
    validate_config({"dataset_name": "MOSI"})
    with pytest.raises(MMINConfigError):
        validate_config(["not", "a", "dict"])


@pytest.mark.parametrize("key, value, found", [
    ("dataset_name", "iemocap", "iemocap"),
    ("dataset_name", None, "None"),
    ("alpha", -0.1, "-0.1"),
    ("beta", -1, "-1"),
    ("gamma", float("nan"), "nan"),
    ("grl_lambda", -2.0, "-2.0"),
    ("alpha", "0.1", "'0.1'"),
    ("d_model", 0, "0"),
    ("d_model", -128, "-128"),
    ("d_model", 128.0, "128.0"),
    ("nheads", True, "True"),
    ("nheads", 0, "0"),
    ("fine_layers", 0, "0"),
    ("fusion_layers", -1, "-1"),
    ("batch_size", 0, "0"),
    ("batch_size", 2.5, "2.5"),
    ("learning_rate", 0.0, "0.0"),
    ("learning_rate", -1e-3, "-0.001"),
    ("learning_rate_bert", float("inf"), "inf"),
    ("weight_decay", -1.0, "-1.0"),
    ("dropout", 1.0, "1.0"),
    ("dropout", -0.1, "-0.1"),
    ("attn_dropout", 1.5, "1.5"),
    ("ablation", ["cin", "bogus"], "bogus"),
    ("ablation", "cin,xyz", "xyz"),
    ("ablation", 3, "3"),
    ("ablation", ["text", "video", "audio"], "text"),
    ("ablation", "audio, TEXT ,video", "audio"),
    ("max_epochs", 0, "0"),
    ("max_epochs", 2.0, "2.0"),
    ("max_epochs", "10", "'10'"),
    ("early_stop", 0, "0"),
    ("early_stop", None, "None"),
    ("grad_clip", float("nan"), "nan"),
    ("transformers", "gpt2", "gpt2"),
])
def test_bad_config_values(key, value, found):
    args = _registry_args("mosi")
    args[key] = value
    with pytest.raises(MMINConfigError) as ei:
        validate_config(args)
    msg = str(ei.value)
    assert f"'{key}'" in msg and "expected" in msg and found in msg, msg


def test_d_model_divisible_by_nheads():
    args = _registry_args("mosi")
    args.update(d_model=100, nheads=8)
    with pytest.raises(MMINConfigError, match=r"'d_model'.*nheads=8.*100"):
        validate_config(args)
    args.update(d_model=96, nheads=8)
    validate_config(args)


@pytest.mark.parametrize("value, expected", [
    (None, []), ("", []), ([], []), ("cin", ["cin"]), ("cin,sep", ["cin", "sep"]),
    (" CIN , text ,", ["cin", "text"]), (["ac", "ap", "ac"], ["ac", "ap"]),
    (("sep",), ["sep"]), (["text", "video"], ["text", "video"]),
])
def test_normalize_ablation(value, expected):
    assert normalize_ablation(value) == expected
    validate_config({"ablation": value})


def test_all_ablation_names_valid():
    assert set(normalize_ablation(list(ABLATIONS))) == set(ABLATIONS)


def test_pretrained_local_dirs_and_hub_ids(tmp_path, monkeypatch):
    model = tmp_path / "bert"
    model.mkdir()
    (model / "config.json").write_text("{}")
    empty = tmp_path / "empty"
    empty.mkdir()
    f = tmp_path / "file.bin"
    f.write_text("x")
    validate_config({"pretrained": str(model)})
    validate_config({"pretrained": model})
    monkeypatch.chdir(tmp_path)
    validate_config({"pretrained": "./bert"})
    for ok in ["bert-base-uncased", "bert-base-chinese", "hfl/chinese-bert-wwm-ext",
               "google-bert/bert-base-uncased", "roberta-base"]:
        validate_config({"pretrained": ok})
        assert looks_like_hub_id(ok)
    for bad, why in [(str(empty), "config.json"), (str(f), "not a file"),
                     ("./missing", "does not exist"), ("../missing", "does not exist"),
                     ("/abs/missing/bert", "does not exist"), ("~/nope-bert", "does not exist"),
                     ("C:\\models\\bert", "does not exist"), ("a/b/c", "does not exist"),
                     ("org/", "does not exist"), ("", "hub id"), (None, "hub id"),
                     (123, "hub id")]:
        with pytest.raises(MMINConfigError) as ei:
            validate_config({"pretrained": bad})
        assert "'pretrained'" in str(ei.value) and why in str(ei.value), (bad, str(ei.value))


_config_values = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 300), st.floats(allow_nan=True),
    st.text(max_size=6), st.lists(st.sampled_from(list(ABLATIONS) + ["x", ""]), max_size=4),
    st.sampled_from(["mosi", "sims", "MOSEI", "cin,fin", "text,video,audio", "bert",
                     "bert-base-uncased", "./x", "/x"]),
)


@settings(max_examples=examples(300), deadline=None)
@given(st.dictionaries(st.sampled_from(
    ["dataset_name", "alpha", "beta", "gamma", "grl_lambda", "d_model", "nheads",
     "fine_layers", "fusion_layers", "batch_size", "learning_rate", "learning_rate_bert",
     "dropout", "attn_dropout", "ablation", "max_epochs", "early_stop", "pretrained",
     "transformers", "grad_clip", "weight_decay"]), _config_values, max_size=8))
def test_random_configs_raise_mmin_config_error_or_pass(cfg):
    try:
        validate_config(cfg)
    except MMINConfigError:
        return
    # accepted => the invariants hold
    if "d_model" in cfg and "nheads" in cfg:
        assert cfg["d_model"] % cfg["nheads"] == 0
    for k in ("alpha", "beta", "gamma", "grl_lambda"):
        if k in cfg:
            assert math.isfinite(cfg[k]) and cfg[k] >= 0 and not isinstance(cfg[k], bool)
    for k in ("dropout", "attn_dropout"):
        if k in cfg:
            assert 0 <= cfg[k] < 1
    if "ablation" in cfg:
        abl = normalize_ablation(cfg["ablation"])
        assert not {"text", "video", "audio"} <= set(abl)
    if cfg.get("max_epochs") is not None:
        assert isinstance(cfg["max_epochs"], int) and cfg["max_epochs"] >= 1
