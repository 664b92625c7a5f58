"""A feature-file format without pickle: ``python -m mmin_plugin convert IN.pkl OUT``.

Layout (one file; a zip archive, every member *stored*, i.e. uncompressed):

* the first member is ``mmin-safe-features.json``: ``{"format": "mmin-safe-features",
  "version": 2, "root": NODE}`` (version 1 files, without the two compact list forms, are read
  too), where NODE mirrors the pickled object:
  ``{"dict": [[key, NODE], ...]}`` (str keys, order kept), ``{"list": [NODE, ...]}``,
  ``{"tuple": [...]}``; a list or tuple of at least :data:`COMPACT_MIN` Python floats (or of ints
  that fit int64) as ``{"numbers": "arrays/00003.npy", "as": "list"}`` (a 1-D float64/int64
  member; a JSON node per float costs about 250 bytes parsed, 30x its 8 bytes), of str as
  ``{"strs": [s, ...], "as": "tuple"}``; ``{"array": "arrays/00007.npy"}`` (a numeric/bool/complex or fixed-size
  unicode/bytes array), ``{"str_array": [str, ...], "shape": [...]}`` (an object array of str,
  such as MMSA's ``id`` / ``raw_text``, flattened in C order), ``{"str": s}``, ``{"int": i}``,
  ``{"float": float.hex(x)}`` (so NaN/inf survive strict JSON), ``{"bool": b}``,
  ``{"none": null}``, ``{"scalar": dtype.str, "hex": raw bytes}`` (a NumPy scalar);
* ``arrays/NNNNN.npy``: standard ``.npy`` files (``numpy.save`` format, no pickle).

The file opens with the zip signature ``PK\\x03\\x04`` followed, at byte 30, by the name of
that first member: :func:`is_safe_format` checks exactly these bytes, so the ``SafePickle``
installed as MMSA's ``pickle`` reads such a file wherever MMSA expects a pickle (``featurePath``,
``feature_T``/``_A``/``_V``, ``custom_feature``) for every model.

Reading (:func:`load_safe`) uses the limits of :mod:`~mmin_plugin.features.limits`, as the pickle
reader does: each ``.npy`` header is parsed by NumPy's safe header reader, its dtype must be in the
same allow-list, the member must hold exactly ``prod(shape) * itemsize`` data bytes, the total is
bounded by the byte budget (the zip directory charged before ``zipfile`` reads it, see
:mod:`~mmin_plugin.features.zipdir`; the JSON index charged by what it can expand to, before it is
parsed) and the nesting by the same depth; member names must be unique and named by the index;
every failure is an :class:`MMINDataError`.  ``np.load`` with ``allow_pickle=False`` reads each
member too (the tests check it).  :func:`~mmin_plugin.features.load.convert_file` reads back what
it wrote before the file takes its name, so it never leaves a file this reader refuses.
"""
from __future__ import annotations

import io
import json
import math
import struct
import zipfile

import numpy as np

from ..errors import MMINDataError
from . import limits
from .limits import ARRAY_HEADER, CONTAINER, MAX_DEPTH, OBJECT, SLOT, Budget, Refused, check_dtype, check_unicode
from .zipdir import open_zip

__all__ = ["MEMBER_NAME", "FORMAT", "COMPACT_MIN", "is_safe_format", "load_safe", "dump_safe"]

MEMBER_NAME = "mmin-safe-features.json"
_CHUNK = 8 << 20  # bytes per read of array data
FORMAT = "mmin-safe-features"
_SIGNATURE = b"PK\x03\x04"
#: Lists/tuples at least this long of only floats, only int64-sized ints or only str are written in
#: the compact forms (``numbers`` / ``strs``); shorter ones node by node.
COMPACT_MIN = 16
_VERSIONS = (1, 2)
_INT64 = (-(1 << 63), (1 << 63) - 1)
_HEAD = 30 + len(MEMBER_NAME)


def is_safe_format(f) -> bool:
    """Whether the (seekable, binary) file object `f` starts with this format's first bytes; the
    position is left unchanged.  Non-seekable streams are never this format."""
    try:
        here = f.tell()
        head = f.read(_HEAD)
        f.seek(here)
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return False
    if not isinstance(head, bytes) or len(head) < _HEAD or head[:4] != _SIGNATURE:
        return False
    name_len = struct.unpack("<H", head[26:28])[0]
    return name_len == len(MEMBER_NAME) and head[30:_HEAD] == MEMBER_NAME.encode()


# --- writing -----------------------------------------------------------------------------------
class _Tree:
    """Turns a loaded feature object into the JSON tree, collecting the arrays to store."""

    def __init__(self):
        self.arrays = []  # (member name, ndarray)

    def node(self, x, where):
        if isinstance(x, dict):
            bad = [k for k in x if not isinstance(k, str)]
            if bad:
                raise MMINDataError(f"{where}: expected str keys; found {type(bad[0]).__name__} {bad[0]!r:.60}")
            return {"dict": [[k, self.node(v, f"{where}/{k}")] for k, v in x.items()]}
        if isinstance(x, (list, tuple)):
            tag = "tuple" if isinstance(x, tuple) else "list"
            compact = self.compact(x, tag)
            return compact or {tag: [self.node(v, f"{where}[{i}]") for i, v in enumerate(x)]}
        if isinstance(x, np.ndarray):
            return self.array(x, where)
        if isinstance(x, np.generic):
            try:
                check_dtype(x.dtype)
            except Refused as e:
                raise MMINDataError(f"{where}: cannot store it in the safe format: {e}") from None
            return {"scalar": x.dtype.str, "hex": x.tobytes().hex()}
        if x is None or isinstance(x, bool):
            return {"none": None} if x is None else {"bool": x}
        if isinstance(x, int):
            return {"int": x}
        if isinstance(x, float):
            return {"float": x.hex()}
        if isinstance(x, str):
            return {"str": x}
        raise MMINDataError(f"{where}: cannot store a {type(x).__name__} in the safe format "
                            "(dicts, lists, tuples, arrays, str and numbers only)")

    def compact(self, x, tag):
        """The ``numbers`` / ``strs`` node of a long list of one plain type (None otherwise)."""
        if len(x) < COMPACT_MIN:
            return None
        kind = type(x[0])
        if kind not in (float, int, str) or any(type(v) is not kind for v in x):
            return None
        if kind is str:
            return {"strs": list(x), "as": tag}
        if kind is int and not _INT64[0] <= min(x) <= max(x) <= _INT64[1]:
            return None
        name = f"arrays/{len(self.arrays):05d}.npy"
        self.arrays.append((name, np.array(x, dtype="<f8" if kind is float else "<i8")))
        return {"numbers": name, "as": tag}

    def array(self, a, where):
        if a.dtype.kind == "O":
            flat = a.reshape(-1).tolist()
            bad = next((v for v in flat if not isinstance(v, str)), None)
            if bad is not None:
                raise MMINDataError(f"{where}: an object array may only hold str; found {type(bad).__name__}")
            return {"str_array": flat, "shape": list(a.shape)}
        try:
            check_dtype(a.dtype)
        except Refused as e:
            raise MMINDataError(f"{where}: cannot store it in the safe format: {e}") from None
        name = f"arrays/{len(self.arrays):05d}.npy"
        self.arrays.append((name, a))
        return {"array": name}


def dump_safe(obj, f, source="<object>") -> int:
    """Write `obj` (an MMSA feature dict, or any tree of dicts/lists/tuples/arrays/str/numbers)
    to the binary file object `f` in the safe format; returns the number of arrays stored."""
    tree = _Tree()
    root = tree.node(obj, source)
    meta = json.dumps({"format": FORMAT, "version": _VERSIONS[-1], "root": root}, allow_nan=False).encode()
    with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        zf.writestr(MEMBER_NAME, meta)  # first: its name is the format's magic
        for name, a in tree.arrays:
            with zf.open(name, "w", force_zip64=True) as m:
                np.lib.format.write_array(m, a, allow_pickle=False)
    return len(tree.arrays)


# --- reading -----------------------------------------------------------------------------------
def index_cost(raw: bytes) -> int:
    """Bytes the JSON index `raw` takes while and once parsed, an upper bound (CPython 3.11,
    measured: 239 bytes per ``{"int": N}`` node, 85 per str of a ``strs`` list): the decoded text
    and the characters of its strings (1 byte per byte each for ASCII; up to 4 each once a
    ``\\u`` escape or a non-ASCII byte can make a str UCS-4), a dict (<= 200 bytes: the nodes
    have one or two keys) per '{', a list (64 bytes) per '[', a number or a slot (<= 40 bytes)
    per ',' and ':', a str header (<= 56 bytes per pair of quotes)."""
    wide = b"\\u" in raw or not raw.isascii()
    return ((2 + 6 * wide) * len(raw) + 200 * raw.count(b"{") + 64 * raw.count(b"[")
            + 40 * (raw.count(b",") + raw.count(b":") + 1) + 28 * raw.count(b'"'))


class _Reader:
    def __init__(self, zf, source, budget):
        self.zf, self.source, self.budget = zf, source, budget
        self.named = set()  # members the index refers to

    def fail(self, msg):
        raise Refused(msg)

    def charge(self, n, what):
        self.budget.charge(n, what)

    def member(self, name):
        try:
            info = self.zf.getinfo(name)
        except KeyError:
            self.fail(f"the member {name!r:.80} is missing")
        if info.compress_type != zipfile.ZIP_STORED:
            self.fail(f"the member {name!r:.80} is compressed (only stored members are accepted)")
        return info

    def meta(self):
        info = self.member(MEMBER_NAME)
        self.charge(info.file_size, "the JSON index")
        with self.zf.open(info) as m:
            raw = m.read(info.file_size + 1)
        if len(raw) != info.file_size:
            self.fail("the JSON index has the wrong size")
        self.charge(index_cost(raw), "the parsed JSON index")
        meta = json.loads(raw.decode("utf-8"))
        if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("version") not in _VERSIONS:
            self.fail(f"expected a {FORMAT!r} version 1 or 2 index")
        return meta.get("root")

    def array(self, name):
        if not isinstance(name, str):
            self.fail("an array reference that is not a member name")
        info = self.member(name)
        self.named.add(name)
        with self.zf.open(info) as m:
            version = np.lib.format.read_magic(m)
            if version not in ((1, 0), (2, 0), (3, 0)):
                self.fail(f"{name}: .npy version {version}")
            read_header = {(1, 0): np.lib.format.read_array_header_1_0}.get(
                version, np.lib.format.read_array_header_2_0)
            shape, fortran, dtype = read_header(m)
            check_dtype(dtype)
            n = limits.check_shape(shape, dtype.itemsize, self.budget.limit)
            want = n * dtype.itemsize
            if want != info.file_size - m.tell():
                self.fail(f"{name}: shape {shape} of {dtype} needs {want} data bytes; the member "
                          f"holds {info.file_size - m.tell()}")
            self.charge(want + ARRAY_HEADER, f"{name}: an array of shape {shape}")
            out = np.empty(n, dtype=dtype)
            buf, got = memoryview(out.view(np.uint8)), 0
            while got < want:  # in chunks: zipfile reads a whole request into a temporary bytes first
                k = m.readinto(buf[got:got + _CHUNK])
                if not k:
                    self.fail(f"{name}: truncated array data")
                got += k
        return check_unicode(out).reshape(shape, order="F" if fortran else "C")

    def node(self, x, depth):
        if depth > MAX_DEPTH:
            self.fail(f"containers nested more than {MAX_DEPTH} deep")
        if not isinstance(x, dict) or len(x) not in (1, 2):
            self.fail(f"a malformed node ({type(x).__name__})")
        (tag, v), *rest = x.items()
        self.charge(SLOT + (CONTAINER if tag in ("dict", "list", "tuple", "numbers", "strs") else OBJECT),
                    f"a {tag!r:.20} value")
        if tag in ("numbers", "strs") and rest and rest[0][0] == "as" and rest[0][1] in ("list", "tuple"):
            return self.compact(tag, v, rest[0][1])
        if tag == "dict" and isinstance(v, list):
            out = {}
            for kv in v:
                if not (isinstance(kv, list) and len(kv) == 2 and isinstance(kv[0], str)):
                    self.fail("a malformed dict entry")
                out[kv[0]] = self.node(kv[1], depth + 1)
            return out
        if tag in ("list", "tuple") and isinstance(v, list):
            items = [self.node(e, depth + 1) for e in v]
            return items if tag == "list" else tuple(items)
        if tag == "array":
            return self.array(v)
        if tag == "str_array" and isinstance(v, list) and rest and rest[0][0] == "shape":
            shape = rest[0][1]
            if not (isinstance(shape, list) and len(shape) <= 32 and all(type(s) is int and s >= 0 for s in shape)
                    and math.prod(shape) == len(v) and all(type(s) is str for s in v)):
                self.fail("a malformed str_array (shape and values disagree, or non-str values)")
            limits.check_shape(shape, 8, self.budget.limit)
            self.charge(8 * len(v), "an object array of str")
            a = np.empty(len(v), dtype=object)
            a[:] = v
            return a.reshape(shape)
        if tag == "scalar" and rest and rest[0][0] == "hex":
            if not (isinstance(v, str) and len(v) < 16 and isinstance(rest[0][1], str)):
                self.fail(f"a scalar of dtype {v!r:.40}")
            dt = check_dtype(np.dtype(v))
            raw = bytes.fromhex(rest[0][1])
            if len(raw) != dt.itemsize:
                self.fail("a scalar of the wrong size")
            return check_unicode(np.frombuffer(raw, dtype=dt))[0]
        if rest:
            self.fail(f"a malformed node {tag!r:.40}")
        if tag == "str" and isinstance(v, str):
            return v
        if tag == "int" and type(v) is int:
            return v
        if tag == "float" and isinstance(v, str):
            return float.fromhex(v)
        if tag == "bool" and isinstance(v, bool):
            return v
        if tag == "none" and v is None:
            return None
        self.fail(f"a malformed node {tag!r:.40}")

    def compact(self, tag, v, as_):
        """A ``numbers`` node (a 1-D float64/int64 member, its items as Python numbers) or a ``strs``
        node (the parsed strs themselves), as a list or tuple."""
        if tag == "strs":
            if not (isinstance(v, list) and all(type(s) is str for s in v)):
                self.fail("a malformed strs node (expected a list of str)")
            self.charge(SLOT * len(v), "a list of str")
            items = v
        else:
            a = self.array(v)
            if a.ndim != 1 or a.dtype not in (np.dtype("<f8"), np.dtype("<i8")):
                self.fail(f"{v!r:.80}: a numbers member of {a.dtype} with shape {a.shape} (expected 1-D float64 "
                          "or int64)")
            self.charge((SLOT + OBJECT) * a.size, f"{v!r:.80}: {a.size} numbers as Python objects")
            items = a.tolist()
        return items if as_ == "list" else tuple(items)


def load_safe(f, *, source="<stream>", max_bytes=None, budget_out=None):
    """Read the safe format from the seekable binary file object `f` (see the module docstring);
    the position is left at the end of the file.  Every failure is an :class:`MMINDataError`.
    ``budget_out``, a list, receives the load's :class:`~mmin_plugin.features.limits.Budget`."""
    try:
        start = f.tell()
        size = f.seek(0, io.SEEK_END) - start
        f.seek(start)
        budget = Budget(limits.default_max_bytes(size) if max_bytes is None else int(max_bytes))
        if budget_out is not None:
            budget_out.append(budget)
        with open_zip(f, budget) as zf:
            r = _Reader(zf, source, budget)
            names = [i.filename for i in zf.infolist()]
            seen = set()
            for name in names:  # zipfile would silently keep the last of two equal names
                if name in seen:
                    r.fail(f"the member name {name!r:.80} given twice")
                seen.add(name)
            value = r.node(r.meta(), 0)
            extra = seen - r.named - {MEMBER_NAME}
            if extra:
                info = zf.getinfo(min(extra))
                r.fail(f"{len(extra)} members the index does not name, such as {info.filename!r:.80} at byte "
                       f"{info.header_offset} (convert writes only the members it names)")
        f.seek(0, io.SEEK_END)
        return value
    except MMINDataError:
        raise
    except Refused as e:
        raise MMINDataError(f"{source}: refusing to load this safe-format feature file: {e}") from None
    except Exception as e:  # zipfile.BadZipFile, ValueError, MemoryError, RecursionError, ...
        raise MMINDataError(f"{source}: expected a safe-format feature file; found an unreadable one "
                            f"({type(e).__name__}: {str(e)[:200]})") from None
