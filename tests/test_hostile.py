"""Hostile feature files (issues 11 and 17): each ends in MMINDataError within seconds, with bounded memory.

The files are built opcode by opcode in tests/hostile_files.py from the globals the loader allows.
"""
import io
import json
import os
import pickle
import re
import struct
import subprocess
import sys
import textwrap
import time
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mmin_plugin.errors import MMINDataError
from mmin_plugin.features import limits
from mmin_plugin.features import safeformat as convert
from mmin_plugin.features.limits import default_max_bytes
from mmin_plugin.features.load import SafePickle, clear_cache, convert_file, safe_load, safe_loads
from mmin_plugin.features.unpickle import SafeUnpickler

from . import hostile_files as hf
from .hostile_files import HOSTILE, dup_bomb, feature_dict, mark_bomb
from .strategies import examples

REFUSALS = {
    "forged_object_dtype": "object-array data bytes",
    "forged_structured_dtype": "'V16'",
    "zero_stride_array": "numpy.ndarray(...)",
    "reduce_giant_array": "numpy.ndarray(...)",
    "reconstruct_short_data": "shape (16, 10000000, 5)",
    "memo_reference_bomb": "expands to",
    "deep_frozensets": "open MARKs",
    "deep_lists": "nested more than",
    "hash_collision_dict": "feature files have str keys",
    "hash_collision_set": "the opcode EMPTY_SET",
    "codecs_lookup": "_codecs.encode",
    "build_on_function": "BUILD",
    "mutate_after_insert": "after it was put inside",
    "fanout_bomb": "expands to",
    "mmsa_with_fanout": "expands to",
    "proto_flood": "a PROTO opcode after the first",
    "frame_flood": "a FRAME of 0 bytes",
    "zero_size_giant": "the product of its non-zero dimensions",
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_file_is_refused_quickly(name, tmp_path):
    blob = HOSTILE[name]()
    p = tmp_path / f"{name}.pkl"
    p.write_bytes(blob)
    t0 = time.perf_counter()
    with pytest.raises(MMINDataError) as ei:
        safe_load(p)
    assert time.perf_counter() - t0 < 5
    msg = str(ei.value)
    assert str(p) in msg and REFUSALS[name] in msg, msg
    with open(p, "rb") as f, pytest.raises(MMINDataError, match="refusing"):
        SafePickle.load(f)  # what MMSA's loader calls, for every model


def test_build_on_function_leaves_it_untouched():
    import _codecs

    before = getattr(_codecs.encode, "__defaults__", None)
    with pytest.raises(MMINDataError):
        safe_loads(HOSTILE["build_on_function"]())
    assert getattr(_codecs.encode, "__defaults__", None) == before


def test_object_arrays_only_hold_str():
    # an object array whose list holds a nested array or an int is refused; str items load
    good = pickle.dumps({"id": np.array(["a", "b"], dtype=object)}, protocol=2)
    out = safe_loads(good)["id"]
    assert out.dtype == object and list(out) == ["a", "b"] and all(type(x) is str for x in out)
    for bad in (np.array([np.zeros(2), "a"], dtype=object), np.array([1, "a"], dtype=object)):
        with pytest.raises(MMINDataError, match="expected a list of 2 str"):
            safe_loads(pickle.dumps({"id": bad}, protocol=4))


def test_byte_budget_is_enforced_and_overridable(tmp_path, monkeypatch):
    blob = pickle.dumps({"a": np.zeros(1000, np.float64)}, protocol=4)  # ~8 KB
    assert safe_loads(blob)["a"].shape == (1000,)
    with pytest.raises(MMINDataError, match="past 4000 bytes"):
        safe_loads(blob, max_bytes=4000)
    monkeypatch.setenv("MMIN_SAFELOAD_MAX_BYTES", "4000")
    with pytest.raises(MMINDataError, match="MMIN_SAFELOAD_MAX_BYTES"):
        safe_loads(blob)
    monkeypatch.setenv("MMIN_SAFELOAD_MAX_BYTES", "nope")
    with pytest.raises(MMINDataError, match="expected an integer"):
        safe_loads(blob)


def test_length_past_end_of_file_is_refused_unread():
    # BINBYTES8 claiming 2**60 bytes in a 20-byte file
    blob = b"\x80\x04\x8e" + struct.pack("<Q", 1 << 60) + b"x" * 8 + b"."
    with pytest.raises(MMINDataError, match="past the end of the file"):
        safe_loads(blob)


def test_arrays_are_rebuilt_fresh_and_writeable():
    a = np.arange(12, dtype=">i4").reshape(3, 4)
    for proto in (2, 4, 5):
        out = safe_loads(pickle.dumps({"a": a, "f": np.asfortranarray(a)}, protocol=proto))
        assert out["a"].dtype == a.dtype and np.array_equal(out["a"], a) and out["a"].flags.writeable
        assert out["a"].flags.owndata or out["a"].base.flags.owndata
        assert out["f"].flags.f_contiguous and np.array_equal(out["f"], a)
        assert all(s > 0 for s in out["a"].strides)


@pytest.mark.parametrize("protocol", [3, 4, 5])
def test_large_values_read_lazily_from_files_load_exactly(protocol, tmp_path):
    big = np.arange(300_000, dtype=np.float64).reshape(1000, 300)  # 2.4 MB: read straight into the array
    obj = {"a": big, "f": np.asfortranarray(big), "t": big.T}
    p = tmp_path / "big.pkl"
    with open(p, "wb") as f:
        pickle.dump(obj, f, protocol=protocol)
        pickle.dump({"second": 2}, f, protocol=protocol)
    with open(p, "rb") as f:
        out = SafePickle.load(f)
        assert SafePickle.load(f) == {"second": 2}  # the position after the first pickle is right
    assert np.array_equal(out["a"], big) and out["f"].flags.f_contiguous and np.array_equal(out["f"], big)
    assert np.array_equal(out["t"], big.T)
    # a large bytes value (or any bytearray) outside array data: not in feature files, refused
    raw = bytes(range(256)) * 8192
    for value in (raw, (raw, 1), bytearray(raw)):
        p.write_bytes(pickle.dumps({"raw": value}, protocol=max(protocol, 5 if type(value) is bytearray else 0)))
        with pytest.raises(MMINDataError, match="outside array data"):
            safe_load(p)


def test_stack_and_mark_growth_are_charged():
    """Finding 2: 300k MARKs (a 600 KB file) held ~12 MB of stack and marks; DUP is refused.  Issue 25:
    open MARKs are bounded by the nesting they stand for, so a MARK flood ends at once; the stack is
    still charged (300k ints on it)."""
    with pytest.raises(MMINDataError, match="more than 192 open MARKs"):
        safe_loads(mark_bomb(300_000), max_bytes=4_000_000)
    with pytest.raises(MMINDataError, match="stack slot would take the memory materialised past 4000000"):
        safe_loads(b"\x80\x04" + b"K\x00" * 300_000 + b"N.", max_bytes=4_000_000)
    assert safe_loads(mark_bomb(150)) is None  # a few marks are fine
    with pytest.raises(MMINDataError, match="the opcode DUP"):
        safe_loads(dup_bomb(300_000), max_bytes=4_000_000)


def test_many_small_arrays_load_within_the_default_budget():
    """Finding 6: a legitimate list of 100k small arrays (3.4 MB) exceeded the default budget.  The
    charge is linear in the number of arrays, so 10k of them (fast) must use at most a tenth of the
    default budget of the 100k file (main: 17.4 MB for 10k, twice that share); the memo bomb still fails."""
    obj = [np.full(2, i, np.float32) for i in range(10_000)]
    blob = pickle.dumps(obj, protocol=4)
    u = SafeUnpickler(io.BytesIO(blob))
    out = u.run()
    assert len(out) == 10_000 and out[-1][0] == 9_999 and out[5].dtype == np.float32
    assert 10 * u.budget.used <= default_max_bytes(10 * len(blob))
    with pytest.raises(MMINDataError, match="expands to"):
        safe_loads(HOSTILE["memo_reference_bomb"]())


def test_unicode_arrays_with_invalid_code_points_are_refused():
    """Finding 6: '<U' data above 0x10FFFF loaded before, then repr()/tolist() raised SystemError."""
    good = np.array(["ab", "\U0010ffff"])
    for proto in (3, 4, 5):  # (protocol 2 stores the bytes as a latin-1 str; the same check runs)
        blob = pickle.dumps({"id": good}, protocol=proto)
        assert list(safe_loads(blob)["id"]) == list(good)
        bad = blob.replace(b"\xff\xff\x10\x00", b"\x00\x00\x11\x00")
        assert bad != blob
        with pytest.raises(MMINDataError, match="code point above 0x10FFFF"):
            safe_loads(bad)


def test_project_demo_files_load(small_mosi):
    data = safe_load(small_mosi["feature_path"])
    assert set(data) == {"train", "valid", "test"}
    assert data["train"]["audio"].dtype.kind == "f" and data["train"]["id"].shape[0] > 0


# --- the safe on-disk format -------------------------------------------------------------------

def _sample():
    rng = np.random.default_rng(0)
    return {s: {"text_bert": rng.integers(0, 5, (3, 3, 4)).astype(np.float32),
                "audio": rng.standard_normal((3, 5, 2)).astype(np.float32),
                "audio_lengths": [5, 2, 0], "id": np.array(["v1$_$0", "v2$_$1", "v3"], dtype=object),
                "raw_text": np.array(["a", "b c", "d"]), "regression_labels": np.array([0.5, -1.0, np.nan]),
                "s": np.float32(2.5), "t": (1, "x", None, True, float("inf"))}
            for s in ("train", "valid", "test")}


def _same(a, b):
    assert type(a) is type(b), (type(a), type(b))
    if isinstance(a, dict):
        assert list(a) == list(b)
        for k in a:
            _same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _same(x, y)
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert np.array_equal(a, b, equal_nan=a.dtype.kind == "f")
    else:
        assert a == b or (a != a and b != b)


def test_convert_roundtrip_and_magic(tmp_path):
    src, dst = tmp_path / "in.pkl", tmp_path / "out.npz"
    obj = _sample()
    src.write_bytes(pickle.dumps(obj, protocol=4))
    info = convert_file(src, dst)
    assert info["arrays"] > 0
    with open(dst, "rb") as f:
        assert convert.is_safe_format(f) and f.tell() == 0
        _same(obj, SafePickle.load(f))  # what MMSA's loader calls
    _same(obj, safe_load(dst))
    with np.load(dst, allow_pickle=False) as z:  # plain NumPy reads every array member
        assert len([n for n in z.files if n.startswith("arrays/")]) == info["arrays"]
        z[[n for n in z.files if n.startswith("arrays/")][0]]
    with open(src, "rb") as f:
        assert not convert.is_safe_format(f)


def test_safe_format_hostile_members_are_refused(tmp_path):
    def write(meta, members=()):
        p = tmp_path / f"x{len(list(tmp_path.iterdir()))}.npz"
        with zipfile.ZipFile(p, "w") as zf:
            zf.writestr(convert.MEMBER_NAME, json.dumps(meta))
            for name, data in members:
                zf.writestr(name, data)
        return p

    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.zeros(4, np.float32))
    header_only = buf.getvalue()[:-16]
    root = {"format": convert.FORMAT, "version": 1, "root": {"array": "a.npy"}}
    bad_header = io.BytesIO()
    np.lib.format.write_array_header_1_0(bad_header, {"descr": "<f8", "fortran_order": False,
                                                      "shape": (10 ** 6, 10 ** 6)})
    cases = {
        "holds 0": write(root, [("a.npy", header_only)]),
        "would take 8000000000000 bytes": write(root, [("a.npy", bad_header.getvalue())]),
        "missing": write(root),
        "nested more than": write({"format": convert.FORMAT, "version": 1,
                                   "root": json.loads('{"list": [' * 100 + "]}" * 100)}),
        "version 1 or 2 index": write({"format": "other"}),
    }
    for why, p in cases.items():
        with pytest.raises(MMINDataError, match=why):
            safe_load(p)
    p = tmp_path / "obj.npz"
    with zipfile.ZipFile(p, "w") as zf:
        zf.writestr(convert.MEMBER_NAME, json.dumps(root))
        b = io.BytesIO()
        np.save(b, np.array([None, 1], dtype=object), allow_pickle=True)
        zf.writestr("a.npy", b.getvalue())
    with pytest.raises(MMINDataError, match="dtype object"):
        safe_load(p)


def _zip(path, index, members=()):
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(convert.MEMBER_NAME, json.dumps(index) if not isinstance(index, bytes) else index)
        for name, data in members:
            zf.writestr(name, data)
    return path


def _npy(a):
    b = io.BytesIO()
    np.lib.format.write_array(b, a, allow_pickle=False)
    return b.getvalue()


def test_safe_format_json_index_is_charged_by_what_it_expands_to(tmp_path):
    """Finding 3: an index of 100k tiny nodes expands ~24x when parsed; it was charged 8x."""
    nodes = b'{"int": 1}, ' * 100_000
    index = b'{"format": "mmin-safe-features", "version": 1, "root": {"list": [' + nodes[:-2] + b"]}}"
    p = _zip(tmp_path / "bomb.npz", index)
    budget = 12 * p.stat().st_size  # the old charge (8x) fits; what it expands to does not
    with pytest.raises(MMINDataError, match="the parsed JSON index would take"):
        safe_load(p, max_bytes=budget)
    assert safe_load(p) == [1] * 100_000  # the default budget (4x + 64 MiB) lets it through


def test_safe_format_uses_the_pickle_dtype_allow_list(tmp_path):
    """Finding 6: float128/longdouble members loaded from the safe format; the pickle path refuses them."""
    root = {"format": convert.FORMAT, "version": 1, "root": {"array": "a.npy"}}
    p = _zip(tmp_path / "f128.npz", root, [("a.npy", _npy(np.zeros(3, np.longdouble)))])
    with pytest.raises(MMINDataError, match="array dtype float128"):
        safe_load(p)
    with pytest.raises(MMINDataError):
        safe_loads(pickle.dumps({"a": np.zeros(3, np.longdouble)}, protocol=4))
    with pytest.raises(MMINDataError, match="cannot store it in the safe format"):
        convert.dump_safe({"a": np.zeros(3, np.longdouble)}, io.BytesIO())


def test_safe_format_duplicate_members_are_refused(tmp_path):
    """Finding 6: zip keeps the last of two members of one name, silently; refused now."""
    root = {"format": convert.FORMAT, "version": 1, "root": {"array": "a.npy"}}
    p = tmp_path / "dup.npz"
    with pytest.warns(UserWarning, match="Duplicate name"):
        _zip(p, root, [("a.npy", _npy(np.zeros(3, np.float32))), ("a.npy", _npy(np.ones(3, np.float32)))])
    with pytest.raises(MMINDataError, match="'a.npy' given twice"):
        safe_load(p)


# --- fuzzing ------------------------------------------------------------------------------------

_SEEDS = [pickle.dumps(_sample()["train"], protocol=p) for p in (2, 4, 5)] + \
    [HOSTILE[k]() for k in sorted(HOSTILE) if k not in ("deep_frozensets", "deep_lists") and "hash" not in k]


@settings(max_examples=examples(60), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(_SEEDS), st.lists(st.tuples(st.integers(0, 10 ** 6), st.integers(0, 255)), max_size=6),
       st.integers(0, 10 ** 6))
def test_opcode_level_fuzzing(seed, flips, cut):
    """Flip bytes / truncate valid and hostile pickles: a value or MMINDataError, nothing else."""
    blob = bytearray(seed)
    for pos, val in flips:
        blob[pos % len(blob)] = val
    blob = bytes(blob[: max(1, len(blob) - cut % 8)])
    try:
        safe_loads(blob)
    except MMINDataError:
        pass


_OPS = [b"(", b".", b"0", b"1", b"2", b"N", b"\x88", b"\x89", b"]", b"}", b")", b"\x8f", b"t", b"l", b"d",
        b"a", b"e", b"s", b"u", b"\x90", b"\x91", b"\x85", b"\x86", b"\x87", b"R", b"b", b"\x94", b"h\x00",
        b"h\x01", b"q\x00", b"K\x03", b"K\x00", b"C\x01a", b"\x8c\x01a", b"\x8c\x02f8", b"\x8c\x01<",
        b"cnumpy\ndtype\n", b"cnumpy\nndarray\n", b"cnumpy.core.multiarray\n_reconstruct\n",
        b"cnumpy.core.multiarray\nscalar\n", b"cbuiltins\nset\n", b"c_codecs\nencode\n",
        b"ccollections\nOrderedDict\n", b"\x8c\x06latin1", b"C\x08AAAAAAAA", b"C\x01b"]


@settings(max_examples=examples(150), deadline=None)
@given(st.lists(st.sampled_from(_OPS), max_size=40))
def test_random_opcode_sequences(ops):
    try:
        safe_loads(b"\x80\x04" + b"".join(ops) + b".")
    except MMINDataError:
        pass


# --- isolation: memory limit + timeout in a subprocess -----------------------------------------

_CHILD = textwrap.dedent("""
    import resource, sys, time
    from mmin_plugin.errors import MMINDataError
    from mmin_plugin.features.load import safe_load
    vm = int([l.split()[1] for l in open('/proc/self/status') if l.startswith('VmSize')][0]) * 1024
    resource.setrlimit(resource.RLIMIT_AS, (vm + (512 << 20), resource.RLIM_INFINITY))
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = []
    for path in sys.argv[1:]:
        t = time.perf_counter()
        try:
            safe_load(path)
            out.append('LOADED ' + path)
        except MMINDataError as e:
            out.append('REFUSED %.2fs %s' % (time.perf_counter() - t, 'MemoryError' in str(e)))
    grew = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) // 1024
    print('\\n'.join(out)); print('GREW_MB', grew)
""")


@pytest.mark.e2e
def test_hostile_files_in_a_memory_limited_subprocess(tmp_path):
    paths = []
    for name, build in sorted(HOSTILE.items()):
        p = tmp_path / f"{name}.pkl"
        p.write_bytes(build())
        paths.append(str(p))
    r = subprocess.run([sys.executable, "-c", _CHILD, *paths], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    lines = r.stdout.split("\n")
    refused = [ln for ln in lines if ln.startswith("REFUSED")]
    assert len(refused) == len(paths), r.stdout
    for ln in refused:
        _, secs, mem_error = ln.split()
        assert float(secs[:-1]) < 5 and mem_error == "False", ln
    grew = int(next(ln for ln in lines if ln.startswith("GREW_MB")).split()[1])
    assert grew < 100, f"peak RSS grew by {grew} MB for files of a few KB"


# --- MMSA_run: refused at load, before training ------------------------------------------------

@pytest.mark.e2e
@pytest.mark.parametrize("model", ["mmin", "tfn"])
@pytest.mark.parametrize("name", ["forged_object_dtype", "memo_reference_bomb", "mmsa_with_fanout"])
def test_mmsa_run_refuses_hostile_file_before_training(model, name, tmp_path, tiny_bert):
    from MMSA import MMSA_run

    import mmin_plugin  # noqa: F401

    p = tmp_path / "hostile.pkl"
    p.write_bytes(HOSTILE[name]())
    clear_cache()
    t0 = time.perf_counter()
    with pytest.raises(MMINDataError, match="refusing"):
        MMSA_run(model, "mosi", config={"featurePath": str(p), "pretrained": tiny_bert}, seeds=[1],
                 gpu_ids=[], num_workers=0, verbose_level=0, model_save_dir=str(tmp_path / "m"),
                 res_save_dir=str(tmp_path / "r"), log_dir=str(tmp_path / "l"))
    assert time.perf_counter() - t0 < 60
    assert not any((tmp_path / "m").glob("*.pth")) if (tmp_path / "m").exists() else True


def test_feature_dict_builder_is_well_formed():
    # the wrapper itself loads: only the hostile value inside is refused
    blob = feature_dict(b"K\x07")
    assert safe_loads(blob) == {s: {"id": 7} for s in ("train", "valid", "test")}


# --- atomic writes: stale temporary files, folder fsync ---------------------------------------

def _dead_pid():
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_stale_temporary_files_are_removed_live_ones_kept(tmp_path):
    from mmin_plugin import atomic

    target = tmp_path / "best.pth"
    host = atomic._HOST
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        files = {
            "dead": tmp_path / f".best.pth.{host}-{_dead_pid()}.{'a' * 12}.tmp",
            "old_pattern_dead": tmp_path / f".best.pth.{_dead_pid()}.{'b' * 12}.tmp",
            "live_other_run": tmp_path / f".best.pth.{host}-{live.pid}.{'c' * 12}.tmp",
            "ours": tmp_path / f".best.pth.{host}-{os.getpid()}.{'d' * 12}.tmp",
            "pid_reused": tmp_path / f".best.pth.{host}-{live.pid}.{'e' * 12}.tmp",
            "foreign_recent": tmp_path / f".best.pth.0badc0de-{live.pid}.{'f' * 12}.tmp",
            "foreign_old": tmp_path / f".best.pth.0badc0de-{live.pid}.{'0' * 12}.tmp",
            "other_target": tmp_path / f".other.pth.{host}-{_dead_pid()}.{'1' * 12}.tmp",
            "not_a_temp": tmp_path / ".best.pth.notes",
        }
        for p in files.values():
            p.write_bytes(b"x" * 10)
        long_ago = time.time() - 3 * 24 * 3600
        os.utime(files["pid_reused"], (long_ago, long_ago))  # written before the live process started
        os.utime(files["foreign_old"], (long_ago, long_ago))
        atomic.atomic_write_bytes(target, b"new")
        gone = {k for k, p in files.items() if not p.exists()}
        assert gone == {"dead", "old_pattern_dead", "pid_reused", "foreign_old"}, gone
        assert target.read_bytes() == b"new"
        # our own write left no temporary file behind
        mine = f"-{os.getpid()}."
        assert [p for p in tmp_path.iterdir() if p.name.startswith(".best.pth.") and mine in p.name] == [files["ours"]]
    finally:
        live.kill()
        live.wait()


def test_folder_is_fsynced_after_the_rename(tmp_path, monkeypatch):
    from mmin_plugin import atomic

    events = []
    real_replace, real_fsync_dir = os.replace, atomic.fsync_dir
    monkeypatch.setattr(atomic.os, "replace", lambda a, b: (events.append("replace"), real_replace(a, b))[1])
    monkeypatch.setattr(atomic, "fsync_dir", lambda d: (events.append(("fsync", str(d))), real_fsync_dir(d))[1])
    atomic.atomic_write_text(tmp_path / "sub" / "t.json", "{}")
    assert events == ["replace", ("fsync", str(tmp_path / "sub"))]


@pytest.mark.e2e
@pytest.mark.parametrize("model", ["mmin", "tfn"])
def test_converted_file_trains_through_featurepath(model, small_mosi, tmp_path):
    """The safe format is accepted wherever MMSA reads a pickle: one capped epoch per model."""
    from MMSA import MMSA_run

    import mmin_plugin  # noqa: F401
    from mmin_plugin.integration.runner import epoch_cap

    safe = tmp_path / "features.npz"
    convert_file(small_mosi["feature_path"], safe)
    clear_cache()
    with epoch_cap(1) as stats:
        MMSA_run(model, "mosi", config={"featurePath": str(safe), "pretrained": small_mosi["bert_dir"],
                                              "batch_size": 16, "max_epochs": 1},
                       seeds=[1111], gpu_ids=[], num_workers=0, verbose_level=0,
                       model_save_dir=str(tmp_path / "m"), res_save_dir=str(tmp_path / "r"),
                       log_dir=str(tmp_path / "l"))
    assert stats.epochs == 1
    assert (tmp_path / "r" / "normal" / "mosi.csv").is_file()  # MMSA wrote its test results


def _safe_seed():
    buf = io.BytesIO()
    convert.dump_safe(_sample(), buf)
    return buf.getvalue()


_SAFE_SEED = _safe_seed()


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 10 ** 6), st.integers(0, 255)), min_size=1, max_size=6))
def test_safe_format_byte_flips(flips):
    """Corrupted safe-format files: a value or MMINDataError, nothing else."""
    blob = bytearray(_SAFE_SEED)
    for pos, val in flips:
        blob[pos % len(blob)] = val
    try:
        safe_loads(bytes(blob))
    except MMINDataError:
        pass


# --- issue 25: shared references, floods, zero-size giants, two legitimate files -------------------------
def test_fanout_bombs_are_refused_in_bytes(tmp_path, monkeypatch):
    """Finding 1: 4 levels of 90 memo references (745 B) expand to 65.6M elements, under the old limit
    (an element count compared with the byte budget); the cache's copy then took 4.6 GB.  Now the
    expanded size is counted in bytes.  The small-budget case (40**4 = 2.6M elements, under 4M) is what
    main loads and copies."""
    for blob in (hf.fanout_bomb(), hf.mmsa_with_fanout()):
        t0 = time.perf_counter()
        with pytest.raises(MMINDataError, match=r"expands to \d+ bytes when its shared references are copied"):
            safe_loads(blob)
        assert time.perf_counter() - t0 < 1
    p = tmp_path / "fanout.pkl"
    p.write_bytes(hf.mmsa_with_fanout(width=40))
    monkeypatch.setenv("MMIN_SAFELOAD_MAX_BYTES", "4000000")
    with pytest.raises(MMINDataError, match=rf"{re.escape(str(p))}: .*expands to .* \(at byte \d+\)"):
        safe_load(p)


def test_cache_copy_keeps_sharing_and_is_charged(tmp_path):
    """Finding 1: the cache's copy (load._fresh) materialised every shared reference; it is memoised
    now (shared stays shared) and charged to the file's budget on top of the parse."""
    clear_cache()
    p = tmp_path / "shared.pkl"
    p.write_bytes(hf.mmsa_with_fanout(width=12))
    for _ in range(2):  # the first load parses, the second is a cache hit: both are copies
        top = safe_load(p)["train"]["annotations"]
        assert top[3][0] is top[3][1] and top[2][0] is top[3][0][0]
        assert len(top[3]) == 12 and top[3][0][0][0] == [0] * 12
    # a file of many distinct small lists: the parse fits a budget that the copy then passes
    clear_cache()
    q = tmp_path / "lists.pkl"
    q.write_bytes(pickle.dumps([[i] for i in range(20_000)], protocol=4))
    u = SafeUnpickler(open(q, "rb"))
    u.run()
    with pytest.raises(MMINDataError, match=rf"{re.escape(str(q))}: .*its copy .*a copied list"):
        safe_load(q, max_bytes=u.budget.used + 20_000)
    clear_cache()


def test_floods_cost_bounded_time(monkeypatch):
    """Finding 2: 5M PROTO opcodes took 2.5 s (4 min of CPU per GB).  PROTO only first, FRAME only
    between frames and at least 4 bytes long, open MARKs bounded, and an opcode budget of
    OPS_FLOOR + size / BYTES_PER_OP."""
    for blob, why in ((hf.proto_flood(100_000), "a PROTO opcode after the first"),
                      (hf.frame_flood(100_000), "a FRAME of 0 bytes"),
                      (mark_bomb(100_000), "more than 192 open MARKs")):
        t0 = time.perf_counter()
        with pytest.raises(MMINDataError, match=why):
            safe_loads(blob)
        assert time.perf_counter() - t0 < 0.5
    frames = b"\x80\x04" + b"\x95" + struct.pack("<Q", 20) + b"\x95" + struct.pack("<Q", 4) + b"N."
    with pytest.raises(MMINDataError, match="inside the previous frame"):
        safe_loads(frames)
    blob = pickle.dumps([None] * 5000, protocol=4)  # ~5000 opcodes in a ~5 KB file
    assert len(SafeUnpickler(io.BytesIO(blob), max_ops=6000).run()) == 5000
    with pytest.raises(MMINDataError, match=r"more than 1000 opcodes .* \(at byte \d+\)"):
        SafeUnpickler(io.BytesIO(blob), max_ops=1000).run()
    assert limits.max_opcodes(len(blob)) == limits.OPS_FLOOR + len(blob) // limits.BYTES_PER_OP
    with monkeypatch.context() as m:  # the override for a trusted file of many tiny objects
        m.setenv("MMIN_SAFELOAD_MAX_OPS", "1000")
        with pytest.raises(MMINDataError, match=r"more than 1000 opcodes .*MMIN_SAFELOAD_MAX_OPS"):
            safe_loads(blob)


def test_zip_directory_is_charged_before_zipfile_reads_it(tmp_path):
    """Finding 2: a valid converted file plus unreferenced central-directory records made zipfile
    build a ZipInfo per record, uncharged (1M: +505 MB, 5.7 s).  Now the directory is charged (and
    bounded by the file size) before zipfile reads it, and members the index does not name are refused."""
    src, dst = tmp_path / "s.pkl", tmp_path / "s.npz"
    src.write_bytes(pickle.dumps(_sample(), protocol=4))
    convert_file(src, dst)
    good = dst.read_bytes()
    flood = tmp_path / "flood.npz"
    flood.write_bytes(hf.with_unnamed_zip_entries(good, 40_000))  # 2 MB of 53-byte records
    t0 = time.perf_counter()
    with pytest.raises(MMINDataError, match=rf"{re.escape(str(flood))}: .*a zip central directory at byte \d+ .*"
                                            r"claiming 400\d\d records"):
        safe_load(flood)
    assert time.perf_counter() - t0 < 0.5
    few = tmp_path / "few.npz"
    few.write_bytes(hf.with_unnamed_zip_entries(good, 3))
    with pytest.raises(MMINDataError, match=r"3 members the index does not name, such as 'x000000' at byte 0"):
        safe_load(few)
    from mmin_plugin.features.zipdir import open_zip

    budget = limits.Budget(10_000)  # charged: the directory's bytes and ZIP_ENTRY per record it can hold
    with pytest.raises(limits.Refused, match="the zip central directory"):
        open_zip(io.BytesIO(hf.with_unnamed_zip_entries(good, 100)), budget, min_entry=32)


def test_zero_size_giants_are_refused(tmp_path):
    """Finding 3: an audio array of shape (n, 0, 2**26) holds 0 bytes and loaded; MMSA's normalisation
    then allocated n * 2**26 values.  Refused by both readers (and in a str_array's shape)."""
    with pytest.raises(MMINDataError, match=r"shape \(2, 0, 67108864\): the product of its non-zero dimensions"):
        safe_loads(hf.zero_size_giant())
    root = {"format": convert.FORMAT, "version": 1, "root": {"array": "a.npy"}}
    p = _zip(tmp_path / "z.npz", root, [("a.npy", _npy(np.zeros((2, 0, 2 ** 26), np.float32)))])
    with pytest.raises(MMINDataError, match=rf"{re.escape(str(p))}: .*shape \(2, 0, 67108864\)"):
        safe_load(p)
    strs = _zip(tmp_path / "s.npz", {"format": convert.FORMAT, "version": 1,
                                     "root": {"str_array": [], "shape": [0, 2 ** 40]}})
    with pytest.raises(MMINDataError, match="the product of its non-zero dimensions"):
        safe_load(strs)
    ok = pickle.dumps({"a": np.zeros((3, 0, 1000), np.float32)}, protocol=4)  # small zero-size arrays load
    assert safe_loads(ok)["a"].shape == (3, 0, 1000)


def test_object_arrays_of_numpy_str_load_as_str(tmp_path):
    """Finding 5: `np.array(list(u_array), dtype=object)` holds np.str_; pickle.load and MMSA read such
    files, the loader refused them ("expected a list of 8 str").  They load as str, validate, convert."""
    from mmin_plugin.features.validation import validate_features

    blob = hf.np_str_object_arrays()
    data = safe_loads(blob)
    for split in data.values():
        assert all(type(x) is str for x in split["id"]) and all(type(x) is str for x in split["raw_text"])
    assert list(data["train"]["id"]) == [str(x) for x in pickle.loads(blob)["train"]["id"]]
    validate_features(data, "np_str.pkl")
    src, dst = tmp_path / "np_str.pkl", tmp_path / "np_str.npz"
    src.write_bytes(blob)
    convert_file(src, dst)
    _same(data, safe_load(dst))


def test_converted_lists_of_labels_and_ids_load(tmp_path, monkeypatch):
    """Finding 5: labels and ids as Python lists (300k entries, 7 MB) loaded and converted, but the
    converted file was refused: its JSON index was charged ~450 B per float.  Lists of one plain type
    are stored compactly now (numbers as a .npy member, str inline).  Scaled to 30k entries and a
    12 MB budget (main: the converted file asks ~35 MB)."""
    monkeypatch.setenv("MMIN_SAFELOAD_MAX_BYTES", str(12 << 20))
    src, dst = tmp_path / "lists.pkl", tmp_path / "lists.npz"
    src.write_bytes(hf.lists_of_labels_and_ids(30_000))
    data = safe_load(src)
    convert_file(src, dst)
    out = safe_load(dst)
    _same(data, out)
    assert type(out["train"]["regression_labels"][0]) is float and len(out["test"]["id"]) == 10_000


def _mmsa_like():
    """MMSA-like feature objects: splits of arrays (dtypes, orders, zero-size), lists of floats/ints/str
    of either side of COMPACT_MIN (ints beyond int64 too), object arrays of str or np.str_, scalars."""
    floats = st.floats(allow_nan=True, allow_infinity=True, width=64)
    ints = st.one_of(st.integers(-300, 300), st.integers(-(2 ** 70), 2 ** 70))
    texts = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=6)
    lists = st.one_of(*[st.lists(e, max_size=15) | st.lists(e, min_size=convert.COMPACT_MIN, max_size=40)
                        for e in (floats, ints, texts)],
                      st.lists(st.one_of(floats, ints, texts, st.none(), st.booleans()), max_size=20))

    @st.composite
    def arrays(draw):
        dtype = draw(st.sampled_from(["<f4", "<f8", ">f4", "<i8", "|b1", "<U3", "<c8", "<u2"]))
        shape = tuple(draw(st.lists(st.integers(0, 4), min_size=0, max_size=3)))
        a = (np.arange(int(np.prod(shape)), dtype=np.int64) % 5).astype(dtype).reshape(shape)
        return np.asfortranarray(a) if draw(st.booleans()) else a

    @st.composite
    def strs(draw):
        items = draw(st.lists(texts, min_size=1, max_size=20))
        if draw(st.booleans()):
            return np.array(list(np.array(items)), dtype=object)  # np.str_ items
        return np.array(items, dtype=object)

    value = st.one_of(arrays(), lists, strs(), floats, ints, texts, st.none(),
                      st.builds(np.float32, st.floats(width=32)), st.tuples(ints, texts))
    split = st.dictionaries(st.sampled_from(["audio", "vision", "text_bert", "id", "raw_text", "audio_lengths",
                                             "regression_labels", "extra"]), value, max_size=6)
    return st.dictionaries(st.sampled_from(["train", "valid", "test"]), split, min_size=1)


@settings(max_examples=examples(40), deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                            HealthCheck.function_scoped_fixture])
@given(obj=_mmsa_like(), protocol=st.integers(2, 5),
       max_bytes=st.one_of(st.none(), st.integers(2_000, 40_000)))
def test_convert_then_load_round_trips_or_convert_refuses_as_the_loader(tmp_path, obj, protocol, max_bytes):
    """Finding 5, as a property: whatever the loader reads, `convert` either writes a file that loads
    as exactly the same object, or writes nothing and refuses with the loader's own message (small
    budgets make both sides refuse sometimes)."""
    d = tmp_path / f"c{len(list(tmp_path.iterdir()))}"
    d.mkdir()
    src, dst = d / "in.pkl", d / "out.npz"
    src.write_bytes(pickle.dumps(obj, protocol=protocol))
    try:
        ref = safe_load(src, max_bytes=max_bytes)
    except MMINDataError:
        return  # not a file the loader reads: nothing to convert
    clear_cache()
    try:
        convert_file(src, dst, max_bytes=max_bytes)
    except MMINDataError as e:
        assert not dst.exists()
        convert_file(src, dst, max_bytes=max_bytes, check=False)  # what would have been written
        with pytest.raises(MMINDataError) as loader:
            safe_load(dst, max_bytes=max_bytes)
        assert str(loader.value) in str(e)
        return
    _same(ref, safe_load(dst, max_bytes=max_bytes))
    clear_cache()
