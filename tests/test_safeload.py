"""features/unpickle.py and features/load.py: restricted unpickling, the SafePickle drop-in, the cache, fix-ups."""
import builtins
import io
import os
import pickle
import pickletools
import subprocess
import warnings
from collections import OrderedDict

import numpy as np
import pytest

from mmin_plugin.errors import MMINDataError
from mmin_plugin.features.load import (
    FixUp,
    SafePickle,
    cache_info,
    clear_cache,
    clear_fixups,
    safe_load,
    safe_loads,
    set_cache_enabled,
    set_fixup,
)
from mmin_plugin.features.unpickle import ALLOWED_GLOBALS, SafeUnpickler


@pytest.fixture(autouse=True)
def _fresh_cache():
    set_cache_enabled(True)
    clear_cache()
    clear_fixups()
    yield
    set_cache_enabled(True)
    clear_cache()
    clear_fixups()


def _sample_obj():
    return {
        "train": {
            "f32": np.arange(24, dtype=np.float32).reshape(2, 3, 4),
            "f64": np.linspace(-1, 1, 7),
            "fortran": np.asfortranarray(np.arange(6.0).reshape(2, 3)),
            "i64": np.array([1, -2, 3], dtype=np.int64),
            "u8": np.array([0, 255], dtype=np.uint8),
            "bool": np.array([True, False]),
            "ustr": np.array(["abc$_$1", "d"]),
            "ostr": np.array(["x", "yz"], dtype=object),
            "empty": np.zeros((0, 5), dtype=np.float32),
            "scalar32": np.float32(1.5),
            "scalar64": np.int64(-7),
            "lengths": [3, 0, 5],
            "annotations": ["Negative", "Positive"],
            "tuple": (1, 2.5, "s", None, True, -(2 ** 70), 70000),
            "bytes": b"\x00\x01",
            "empty_bytes": b"",
            "nested": {"list": [[1, 2], [np.zeros(2)]] * 300},  # > 256 memo entries: LONG_BINPUT/GET
        }
    }


def _assert_same(a, b):
    assert type(a) is type(b), (type(a), type(b))
    if isinstance(a, dict):
        assert list(a) == list(b)
        for k in a:
            _assert_same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _assert_same(x, y)
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert np.array_equal(a, b)
    else:
        assert a == b


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_roundtrip_numpy_and_builtins(protocol, tmp_path):
    obj = _sample_obj()
    blob = pickle.dumps(obj, protocol=protocol)
    _assert_same(obj, safe_loads(blob))
    p = tmp_path / "f.pkl"
    p.write_bytes(blob)
    _assert_same(obj, safe_load(p))
    _assert_same(obj, safe_load(str(p)))
    with open(p, "rb") as f:
        _assert_same(obj, SafePickle.load(f))


def test_numpy_1x_module_names_are_accepted():
    # A NumPy 1.x pickle names numpy.core.multiarray; NumPy 2.x writes numpy._core.multiarray.
    obj = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "s": np.float64(2.0)}
    blob = pickle.dumps(obj, protocol=2)
    assert b"numpy._core.multiarray" in blob
    old = blob.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert b"numpy._core" not in old
    _assert_same(obj, safe_loads(old))
    # protocol 5's frombuffer path, under both spellings
    blob5 = pickle.dumps(obj, protocol=5)
    assert b"\x8c\x13numpy._core.numeric" in blob5  # SHORT_BINUNICODE, length 19
    _assert_same(obj, safe_loads(blob5.replace(b"\x8c\x13numpy._core.numeric", b"\x8c\x12numpy.core.numeric")))


_DTYPES = ["?", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8", "c8", "c16", "U3", "S3",
           ">f4", ">i8", ">U2", ">c16"]


def _layouts(dt):
    a = (np.arange(24) % 7).astype(dt).reshape(2, 3, 4)
    return {"C": a, "F": np.asfortranarray(a), "K": a.transpose(1, 0, 2), "strided": a[:, ::2],
            "0-d": a[0, 0, 0].reshape(()), "empty": a[:0], "scalar": a.reshape(-1)[1]}


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_what_real_files_use_loads_and_nothing_more_is_read(protocol):
    """The record behind the opcode and global lists: every allowed dtype in C, F and 'K' order
    (and strided, 0-d, empty, scalar), object arrays of str and an MMSA-layout dict, pickled by
    this NumPy: each loads exactly, and uses only opcodes the reader has a handler for."""
    objs = [lay for dt in _DTYPES for lay in _layouts(dt).values()]
    objs += [np.array(["ab", "c"], dtype=object), np.array([["ab", "c"]], dtype=object).T, _sample_obj()]
    names = {op.name for o in objs for op, _, _ in pickletools.genops(pickle.dumps(o, protocol=protocol))}
    known = {pickle.__dict__[n][0]: n for n in names}
    assert set(known) - {pickle.STOP[0]} <= set(SafeUnpickler.dispatch), sorted(names)
    for o in objs:
        got = safe_loads(pickle.dumps(o, protocol=protocol))
        if isinstance(o, (np.ndarray, np.generic)):
            assert type(got) is type(o) and got.dtype == o.dtype and got.shape == o.shape, (o.dtype, o.shape)
            assert np.array_equal(got, o)
        else:
            _assert_same(o, got)


def test_protocol5_non_contiguous_arrays_load():
    """Finding 4: NumPy 2.x pickles an array that is neither C- nor F-contiguous with protocol 5 as
    _frombuffer(buf, dtype, shape, 'K', axis_order); it was refused ("5 arguments")."""
    a = np.arange(24, dtype=np.float32).reshape(2, 3, 4).transpose(2, 0, 1)
    blob = pickle.dumps({"audio": a}, protocol=5)
    assert b"\x8c\x01K" in blob
    out = safe_loads(blob)["audio"]
    assert out.shape == a.shape and np.array_equal(out, a) and out.strides == a.strides
    bad = blob.replace(b"\x8c\x01K", b"\x8c\x01C")  # 'C' with an axis order: not what NumPy writes
    with pytest.raises(MMINDataError, match="_frombuffer order"):
        safe_loads(bad)


_B = r"'(builtins|__builtin__)\."


@pytest.mark.parametrize("value, refused", [
    ({1, 2}, _B + "set'|the opcode EMPTY_SET"), (frozenset({"a"}), _B + "frozenset'|the opcode FROZENSET"),
    (1 + 2j, _B + "complex'"), (OrderedDict(a=1), "'collections.OrderedDict'"), (slice(1, 2), _B + "slice'"),
    ({1: "a"}, "dict key int 1 "), ({("a",): 1}, "dict key tuple"),
])
def test_what_feature_files_never_hold_is_refused_by_name(value, refused):
    for proto in (2, 4, 5):
        with pytest.raises(MMINDataError, match=refused):
            safe_loads(pickle.dumps({"train": {"x": value}}, protocol=proto))
    for proto in (0, 1):
        with pytest.raises(MMINDataError, match="the opcode|protocols 2-5"):
            safe_loads(pickle.dumps({"train": {"x": np.zeros(2)}}, protocol=proto))


def test_allowlist_has_nothing_dangerous():
    dangerous_modules = {"os", "posix", "nt", "subprocess", "sys", "shutil", "importlib",
                         "runpy", "pickle", "_pickle", "io", "socket", "ctypes", "torch"}
    for (mod, name), handler in ALLOWED_GLOBALS.items():
        assert mod.split(".")[0] not in dangerous_modules
        assert isinstance(handler, str)  # a name the loader handles itself: nothing is imported
        assert name not in {"eval", "exec", "getattr", "setattr", "__import__", "open",
                            "compile", "globals", "vars", "system", "apply"}


# --- crafted payloads -----------------------------------------------------------------------------

class _Reduce:
    """Pickles as `fn(*args)`: what a crafted feature file would do."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def _payloads(target):
    t = str(target)
    return {
        "os.system": _Reduce(os.system, f"touch {t}"),
        "builtins.open": _Reduce(builtins.open, t, "w"),
        "builtins.exec": _Reduce(builtins.exec, f"open({t!r}, 'w').close()"),
        "builtins.eval": _Reduce(builtins.eval, f"open({t!r}, 'w').close()"),
        "subprocess.call": _Reduce(subprocess.call, ["touch", t]),
        "builtins.__import__": _Reduce(builtins.__import__, "os"),
        "builtins.getattr": _Reduce(getattr, _Reduce(builtins.__import__, "os"), "system"),
    }


def _first_foreign_global(blob):
    """The first (module, name) a pickle references outside the allowlist, found with a plain
    Unpickler that stops (raises) at that point instead of resolving it."""
    class Stop(Exception):
        pass

    class Recorder(pickle.Unpickler):
        def find_class(self, module, name):
            if (module, name) not in ALLOWED_GLOBALS:
                raise Stop(module, name)
            return super().find_class(module, name)

    try:
        Recorder(io.BytesIO(blob)).load()
    except Stop as e:
        return e.args
    return None


@pytest.mark.parametrize("protocol", [2, 4, 5])
@pytest.mark.parametrize("kind", sorted(_payloads("x")))
def test_crafted_payload_is_refused_before_running(kind, protocol, tmp_path):
    target = tmp_path / "pwned"
    payload = _payloads(target)[kind]
    # hide it inside an otherwise well-formed feature file
    data = {"train": {"audio": np.zeros((1, 2, 3), np.float32), "id": payload}}
    blob = pickle.dumps(data, protocol=protocol)
    refused = _first_foreign_global(blob)
    assert refused, "the payload must reference a global"
    p = tmp_path / "evil.pkl"
    p.write_bytes(blob)
    for load in (lambda: safe_load(p), lambda: safe_loads(blob, source=str(p)),
                 lambda: SafePickle.load(open(p, "rb")), lambda: SafePickle.loads(blob)):
        with pytest.raises(MMINDataError) as ei:
            load()
        msg = str(ei.value)
        mod, name = refused
        assert f"'{mod}.{name}'" in msg
        assert not target.exists()
    with pytest.raises(MMINDataError, match=str(p)):
        safe_load(p)
    assert not target.exists()
    assert cache_info()["entries"] == 0


def test_dotted_names_and_hand_written_globals_are_refused(tmp_path):
    target = tmp_path / "pwned"
    # protocol 0 GLOBAL opcodes written by hand (what an attacker would do)
    cases = [
        b"cnumpy\nndarray.tofile\n(S'" + str(target).encode() + b"'\ntR.",
        b"cposix\nsystem\n(S'touch " + str(target).encode() + b"'\ntR.",
        b"c__builtin__\neval\n(S'1'\ntR.",
        b"ccopy_reg\n_reconstructor\n(c__builtin__\nobject\nNtR.",
        b"cnumpy\nload\n(S'x'\ntR.",
    ]
    for blob in cases:
        with pytest.raises(MMINDataError, match="refusing to unpickle"):
            safe_loads(blob)
        assert not target.exists()


def test_refused_global_is_not_even_imported(monkeypatch):
    import importlib

    seen = []
    real = importlib.import_module
    monkeypatch.setattr(importlib, "import_module", lambda n, *a: seen.append(n) or real(n, *a))
    with pytest.raises(MMINDataError):
        safe_loads(b"cthis_module_does_not_exist_zz\nfn\n(tR.")
    assert "this_module_does_not_exist_zz" not in seen


def test_persistent_ids_are_refused():
    class P(pickle.Pickler):
        def persistent_id(self, obj):
            return "storage0" if isinstance(obj, str) and obj == "tensor" else None

    buf = io.BytesIO()
    P(buf, protocol=2).dump({"a": "tensor"})
    with pytest.raises(MMINDataError, match="refusing to load.*BINPERSID"):
        safe_loads(buf.getvalue())


@pytest.mark.parametrize("blob", [b"", b"not a pickle", pickle.dumps({"a": 1})[:-3],
                                  b"\x80\x05\x95garbage"])
def test_malformed_or_truncated_file(tmp_path, blob):
    p = tmp_path / "bad.pkl"
    p.write_bytes(blob)
    with pytest.raises(MMINDataError, match=str(p)):
        safe_load(p)


def test_missing_file_and_wrong_argument(tmp_path):
    with pytest.raises(MMINDataError, match="nope.pkl"):
        safe_load(tmp_path / "nope.pkl")
    with pytest.raises(MMINDataError):
        safe_load(123)
    with pytest.raises(MMINDataError):
        safe_loads("a str")


def test_safepickle_is_a_module_like_drop_in(tmp_path):
    assert SafePickle.HIGHEST_PROTOCOL == pickle.HIGHEST_PROTOCOL
    assert SafePickle.DEFAULT_PROTOCOL == pickle.DEFAULT_PROTOCOL
    obj = {"x": np.ones(3)}
    blob = SafePickle.dumps(obj, protocol=SafePickle.HIGHEST_PROTOCOL)
    _assert_same(obj, SafePickle.loads(blob))
    p = tmp_path / "d.pkl"
    with open(p, "wb") as f:
        SafePickle.dump(obj, f, protocol=4)
    with open(p, "rb") as f:
        _assert_same(obj, SafePickle.load(f))
    _assert_same(obj, SafePickle.Unpickler(io.BytesIO(blob)).load())
    # one exception type and one budget for every entry point, the Unpickler included
    for load in (SafePickle.loads, lambda b: SafePickle.Unpickler(io.BytesIO(b)).load()):
        with pytest.raises(MMINDataError, match="refusing"):
            load(pickle.dumps({"x": {1, 2}}))


# --- cache ------------------------------------------------------------------------------------------

def test_cache_parses_a_file_once_and_cannot_be_changed_through(tmp_path):
    p = tmp_path / "f.pkl"
    p.write_bytes(pickle.dumps(_sample_obj(), protocol=4))
    a = safe_load(p)
    with open(p, "rb") as f:
        b = SafePickle.load(f)
    with open(str(p), "rb") as f:
        c = SafePickle.load(f)
    info = cache_info()
    assert (info["misses"], info["hits"], info["entries"]) == (1, 2, 1)
    # each load gets its own containers around shared, read-only arrays
    assert a is not b and a["train"] is not b["train"] and b["train"]["f32"] is c["train"]["f32"]
    with pytest.raises(ValueError, match="read-only"):
        b["train"]["f32"][0] = 7
    b["train"]["f32"] = None
    b["train"]["lengths"].append(9)
    _assert_same(a, safe_load(p))  # what a caller did to its copy is not seen by the next load
    _assert_same(a, _sample_obj())

    link = tmp_path / "link.pkl"  # a symlink to the same file shares the entry
    link.symlink_to(p)
    safe_load(link)
    assert cache_info()["hits"] == 4 and cache_info()["entries"] == 1

    clear_cache()
    assert cache_info()["entries"] == 0
    _assert_same(a, safe_load(p))


def test_cache_sees_a_rewritten_file(tmp_path):
    p = tmp_path / "f.pkl"
    p.write_bytes(pickle.dumps({"v": np.zeros(2)}, protocol=4))
    first = safe_load(p)
    p.write_bytes(pickle.dumps({"v": np.ones(3), "w": 1}, protocol=4))
    os.utime(p, ns=(1, 1))  # even a same-second rewrite changes size or mtime_ns
    second = safe_load(p)
    assert second["v"].shape == (3,) and first["v"].shape == (2,)


def test_cache_disabled_and_bounded(tmp_path, monkeypatch):
    import mmin_plugin.features.load as sl

    p = tmp_path / "f.pkl"
    p.write_bytes(pickle.dumps({"v": np.zeros(2)}))
    SafePickle.cache_enabled = False
    assert SafePickle.cache_enabled is False
    assert safe_load(p) is not safe_load(p)
    assert cache_info()["entries"] == 0
    SafePickle.cache_enabled = True
    monkeypatch.setattr(sl, "CACHE_MAX_ENTRIES", 2)
    for i in range(4):
        q = tmp_path / f"g{i}.pkl"
        q.write_bytes(pickle.dumps(i))
        assert safe_load(q) == i
    assert cache_info()["entries"] == 2


def test_cache_keeps_stream_semantics_for_concatenated_pickles(tmp_path):
    p = tmp_path / "two.pkl"
    with open(p, "wb") as f:
        pickle.dump({"first": np.arange(3)}, f)
        pickle.dump(["second"], f)
    for _ in range(2):  # second round: the first object comes from the cache
        with open(p, "rb") as f:
            assert list(SafePickle.load(f)) == ["first"]
            assert SafePickle.load(f) == ["second"]
            assert f.read() == b""
    assert cache_info()["hits"] == 1


def test_mmsa_loader_with_safepickle_parses_once_and_refuses_payloads(tmp_path, monkeypatch):
    """MMSA's MMDataLoader opens the file once per split; with SafePickle it is parsed once."""
    import MMSA.data_loader as dl
    from easydict import EasyDict as edict

    rng = np.random.default_rng(0)
    n, L, La, Lv = 4, 6, 8, 7

    def split():
        return {
            "text_bert": np.stack([rng.integers(5, 30, (n, L)), np.ones((n, L)),
                                   np.zeros((n, L))], 1).astype(np.float64),
            "audio": rng.standard_normal((n, La, 5)).astype(np.float32),
            "vision": rng.standard_normal((n, Lv, 20)).astype(np.float32),
            "audio_lengths": [La] * n, "vision_lengths": [Lv] * n,
            "regression_labels": np.linspace(-1, 1, n).astype(np.float32),
            "id": np.array([f"v{i}$_$1" for i in range(n)]), "raw_text": np.array(["a"] * n),
        }

    p = tmp_path / "unaligned_6.pkl"
    p.write_bytes(pickle.dumps({s: split() for s in ("train", "valid", "test")}, protocol=4))
    monkeypatch.setattr(dl, "pickle", SafePickle)
    args = edict(dataset_name="mosi", featurePath=str(p), custom_feature=None, feature_T="",
                 feature_A="", feature_V="", use_bert=True, need_data_aligned=False,
                 feature_dims=[768, 5, 20], seq_lens=[50, 500, 375], batch_size=2)
    loaders = dl.MMDataLoader(args, 0)
    assert (cache_info()["misses"], cache_info()["hits"]) == (1, 2)
    batch = next(iter(loaders["train"]))
    assert tuple(batch["text"].shape) == (2, 3, L)

    target = tmp_path / "pwned"
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps({"train": _Reduce(os.system, f"touch {target}")}))
    args.featurePath = str(evil)
    with pytest.raises(MMINDataError, match="'(posix|os|nt).system'"):
        dl.MMDataLoader(args, 0)
    assert not target.exists()


def _nan_split(rng, n=3, L=5, La=6, Lv=4):
    a = rng.standard_normal((n, La, 5)).astype(np.float32)
    v = rng.standard_normal((n, Lv, 20)).astype(np.float32)
    a[0, 0, 0], v[1, 1, 1] = np.nan, np.inf
    a[2, :2] = 0  # left padding: 2 zero frames before the signal
    return {"text_bert": np.stack([np.full((n, L), 7.0), np.ones((n, L)), np.zeros((n, L))], 1),
            "audio": a, "vision": v, "audio_lengths": [La] * n, "vision_lengths": [Lv] * n,
            "regression_labels": np.array([0.5, -1, 1], np.float32)[:n],
            "id": np.array(["a$_$1"] * n), "raw_text": np.array(["x"] * n)}


@pytest.mark.parametrize("cache", [True, False])
def test_fixups_reach_mmsa_with_the_cache_on_or_off(tmp_path, monkeypatch, cache):
    """The pre-run repair (NaN/inf -> 0, lengths_from: nonzero) is a recorded fix-up that the loader
    applies wherever MMSA reads the file, also with custom feature_A/feature_V files; it worked
    only through the cache before (cache off: NaN reached the model, lengths stayed as given)."""
    import MMSA.data_loader as dl
    import torch
    from easydict import EasyDict as edict

    from mmin_plugin.integration import registry

    rng = np.random.default_rng(1)
    paths = {}
    for name in ("main", "A", "V"):
        paths[name] = tmp_path / f"{name}.pkl"
        paths[name].write_bytes(pickle.dumps({s: _nan_split(rng) for s in ("train", "valid", "test")}))
    set_cache_enabled(cache)
    monkeypatch.setattr(dl, "pickle", SafePickle)
    args = edict(model_name="mmin", dataset_name="mosi", featurePath=str(paths["main"]), custom_feature=None,
                 feature_T="", feature_A=str(paths["A"]), feature_V=str(paths["V"]), use_bert=True,
                 need_data_aligned=False, feature_dims=[768, 5, 20], seq_lens=[5, 6, 4], batch_size=3,
                 pretrained="bert-base-uncased", lengths_from="nonzero")
    monkeypatch.setattr(registry, "_REGISTERED", {"mmin": None})
    monkeypatch.setattr("mmin_plugin.integration.compat.encoder_limits", lambda p: {})
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        registry._validate_registered_run(args)
    assert any("non-finite" in str(w.message) for w in seen) and any("moved to the front" in str(w.message)
                                                                       for w in seen)
    loaders = dl.MMDataLoader(args, 0)
    for split in ("train", "valid", "test"):
        batch = next(iter(loaders[split]))
        assert torch.isfinite(batch["audio"]).all() and torch.isfinite(batch["vision"]).all()
        lengths = batch["audio_lengths"].tolist()
        assert sorted(lengths) == [4, 6, 6]  # the left-padded sample: 4 frames ...
        assert (batch["audio"][lengths.index(4), :4] != 0).any(dim=-1).all()  # ... moved to the front
    assert cache_info()["entries"] == (3 if cache else 0)  # each file once, with its fix-up
    # the file on disk and a load without the fix-up are unchanged
    clear_fixups()
    raw = safe_load(paths["A"])
    assert np.isnan(raw["train"]["audio"][0, 0, 0]) and raw["train"]["audio_lengths"] == [6, 6, 6]


def test_a_fixup_applies_to_the_file_it_was_recorded_for(tmp_path):
    p = tmp_path / "f.pkl"
    rng = np.random.default_rng(2)
    p.write_bytes(pickle.dumps({s: _nan_split(rng) for s in ("train", "valid", "test")}))
    set_fixup(p, FixUp(nonfinite=True))
    assert np.isfinite(safe_load(p)["train"]["audio"]).all()
    p.write_bytes(pickle.dumps({s: _nan_split(rng) for s in ("train", "valid", "test")}, protocol=5))
    assert np.isnan(safe_load(p)["train"]["audio"][0, 0, 0])  # rewritten: another file, no fix-up
