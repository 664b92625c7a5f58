"""mmin_plugin.integration.safeload: restricted unpickling of feature files, the SafePickle drop-in, the cache."""
import builtins
import io
import os
import pickle
import subprocess
from collections import OrderedDict

import numpy as np
import pytest

from mmin_plugin.errors import MMINDataError
from mmin_plugin.integration.safeload import (
    ALLOWED_GLOBALS,
    SafePickle,
    SafeUnpickler,
    cache_info,
    clear_cache,
    safe_load,
    safe_loads,
    set_cache_enabled,
)


@pytest.fixture(autouse=True)
def _fresh_cache():
    set_cache_enabled(True)
    clear_cache()
    yield
    set_cache_enabled(True)
    clear_cache()


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
            "tuple": (1, 2.5, "s", None, True),
            "set": {1, 2},
            "frozenset": frozenset({"a"}),
            "bytes": b"\x00\x01",
            "bytearray": bytearray(b"ab"),
            "complex": 1 + 2j,
            "od": OrderedDict(a=1),
        }
    }


def _assert_same(a, b):
    assert type(a) is type(b), (type(a), type(b))
    if isinstance(a, dict):
        assert list(a) == list(b)
        for k in a:
            _assert_same(a[k], b[k])
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert np.array_equal(a, b)
    else:
        assert a == b


@pytest.mark.parametrize("protocol", [0, 2, 3, 4, 5])
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


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
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
    assert SafePickle.Unpickler is SafeUnpickler
    _assert_same(obj, SafePickle.Unpickler(io.BytesIO(blob)).load())


# --- cache ------------------------------------------------------------------------------------------

def test_cache_parses_a_file_once(tmp_path):
    p = tmp_path / "f.pkl"
    p.write_bytes(pickle.dumps(_sample_obj(), protocol=4))
    a = safe_load(p)
    with open(p, "rb") as f:
        b = SafePickle.load(f)
    with open(str(p), "rb") as f:
        c = SafePickle.load(f)
    assert a is b is c
    info = cache_info()
    assert (info["misses"], info["hits"], info["entries"]) == (1, 2, 1)
    assert info["keys"][0][0] == os.path.realpath(p)

    # a symlink to the same file shares the entry
    link = tmp_path / "link.pkl"
    link.symlink_to(p)
    assert safe_load(link) is a

    clear_cache()
    assert cache_info()["entries"] == 0
    d = safe_load(p)
    assert d is not a
    _assert_same(a, d)


def test_cache_sees_a_rewritten_file(tmp_path):
    p = tmp_path / "f.pkl"
    p.write_bytes(pickle.dumps({"v": np.zeros(2)}, protocol=4))
    first = safe_load(p)
    p.write_bytes(pickle.dumps({"v": np.ones(3), "w": 1}, protocol=4))
    os.utime(p, ns=(1, 1))  # even a same-second rewrite changes size or mtime_ns
    second = safe_load(p)
    assert second is not first and second["v"].shape == (3,)


def test_cache_disabled_and_bounded(tmp_path, monkeypatch):
    import mmin_plugin.integration.safeload as sl

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


def test_prerun_repair_is_seen_by_mmsa_through_the_cache(tmp_path, monkeypatch):
    """safe_load + in-place sanitize before MMSA's loader: MMSA reads the repaired arrays (the
    cache returns the same object), also with custom feature_A/feature_V files (4 entries)."""
    import warnings

    import MMSA.data_loader as dl
    import torch
    from easydict import EasyDict as edict

    from mmin_plugin.integration.validation import sanitize_features

    rng = np.random.default_rng(1)
    n, L, La, Lv = 3, 5, 6, 4

    def split():
        a = rng.standard_normal((n, La, 5)).astype(np.float32)
        v = rng.standard_normal((n, Lv, 20)).astype(np.float32)
        a[0, 0, 0], v[1, 1, 1] = np.nan, np.inf
        return {"text_bert": np.stack([np.full((n, L), 7.0), np.ones((n, L)), np.zeros((n, L))], 1),
                "audio": a, "vision": v, "audio_lengths": [La] * n, "vision_lengths": [Lv] * n,
                "regression_labels": np.zeros(n, np.float32),
                "id": np.array(["a$_$1"] * n), "raw_text": np.array(["x"] * n)}

    paths = {}
    for name in ("main", "A", "V"):
        paths[name] = tmp_path / f"{name}.pkl"
        paths[name].write_bytes(pickle.dumps({s: split() for s in ("train", "valid", "test")}))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for p in paths.values():
            assert sanitize_features(safe_load(p), str(p))
    monkeypatch.setattr(dl, "pickle", SafePickle)
    args = edict(dataset_name="mosi", featurePath=str(paths["main"]), custom_feature=None,
                 feature_T="", feature_A=str(paths["A"]), feature_V=str(paths["V"]),
                 use_bert=True, need_data_aligned=False, feature_dims=[768, 5, 20],
                 seq_lens=[L, La, Lv], batch_size=n)
    loaders = dl.MMDataLoader(args, 0)
    assert cache_info()["misses"] == 3  # only the three pre-run parses
    for split in ("train", "valid", "test"):
        batch = next(iter(loaders[split]))
        assert torch.isfinite(batch["audio"]).all() and torch.isfinite(batch["vision"]).all()
