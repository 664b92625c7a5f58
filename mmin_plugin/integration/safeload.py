"""Safe loading of MMSA feature files: a pickle reader that is safe by construction.

MMSA's ``data_loader`` calls ``pickle.load`` on the feature file, which runs whatever code a
crafted file carries.  Allow-listing globals is not enough: with NumPy's own
``_reconstruct``/``dtype``/``ndarray`` an attacker can forge an object dtype whose flags say "no
objects" (raw bytes then become ``PyObject*`` pointers: a segfault or worse), a zero-stride
array claiming 1e13 elements, or a REDUCE-built multi-GB array; memo references expand a 12 KB
file into 1e12 list elements; deep nesting breaks ``repr``.

So this module does not use :class:`pickle.Unpickler` at all.  :class:`SafeUnpickler` is a small
pickle virtual machine (protocols 0-5) that never calls a function named by the file and never
hands file-controlled state to ``__setstate__``:

* **Arrays are rebuilt by the loader from validated parts.**  The globals a NumPy pickle names
  (``numpy[._]core.multiarray._reconstruct`` / ``scalar``, ``numpy[._]core.numeric._frombuffer``,
  ``numpy.dtype``, ``numpy.ndarray``) resolve to inert markers.  ``numpy.dtype(spec, ...)`` + its
  BUILD state yield a *canonical* dtype made from the spec and the byte order only (flags, fields,
  names in the state are refused or ignored, never applied); allowed kinds are bool, int8-64,
  uint8-64, float16/32/64, complex64/128 and fixed-size unicode/bytes.  ``_reconstruct`` + BUILD
  ``(1, shape, dtype, fortran, data)`` and ``_frombuffer(data, dtype, shape, order)`` become
  ``np.empty(prod(shape), dtype)`` filled from ``data``, whose length must equal
  ``prod(shape) * itemsize`` exactly: no strides, no offsets, no ``buffer=`` forms.
  ``numpy.ndarray(...)`` called by REDUCE is refused.  The one object dtype accepted is an
  object array whose data is a list of ``str`` (MMSA's ``id`` / ``raw_text``): the loader makes
  the array and assigns the strings.
* **BUILD only on the loader's own pending arrays and dtypes**, never on anything else (a BUILD
  with slot state on an allowed function would otherwise change its ``__defaults__``).
* The other callables are re-implemented with checked arguments: ``set``, ``frozenset``,
  ``bytes``, ``bytearray``, ``complex``, ``slice``, ``collections.OrderedDict`` and
  ``_codecs.encode(str, 'latin1')`` (how protocol <= 2 pickles store bytes; any other codec is
  refused).  Every other global, persistent ids, extension codes, INST/OBJ/NEWOBJ (except
  ``complex``) and out-of-band buffers are refused before anything is imported.
* **Bounded work.**  Every object created is charged to a byte budget (default
  ``4 * file size + 64 MiB``; ``max_bytes=`` or the environment variable
  :data:`ENV_MAX_BYTES` override it) *before* it is allocated; lengths beyond the end of the
  file are refused unread.  Each container carries its expanded size (elements reachable,
  counting shared references every time they occur: what ``np.asarray``/``repr`` would walk) and
  its nesting depth; a container may not be changed once it is inside another one (so shared
  references cannot be filled in later and no cycle can be made), the expanded size is bounded
  by the same budget and the depth by :data:`MAX_DEPTH`.
* **One exception type.**  Whatever goes wrong (a malformed opcode, a ``MemoryError``,
  ``RecursionError``, ``LookupError`` ...) ends in :class:`~mmin_plugin.errors.MMINDataError`
  naming the file, the byte offset and what was refused.

The safe on-disk format written by :mod:`mmin_plugin.integration.convert` (a zip of ``.npy``
members plus JSON, no pickle) is recognised by its first bytes and read by that module.

:data:`SafePickle` is a module-like drop-in for ``pickle`` (``load``, ``loads``, ``dump``,
``dumps``, ``HIGHEST_PROTOCOL``, ``DEFAULT_PROTOCOL``, the exception types ...), installed as
the ``pickle`` of ``MMSA.data_loader`` and ``MMSA.run`` by the registry.

Cache
-----
``MMSA.data_loader.MMDataLoader`` builds three ``MMDataset`` objects (train/valid/test) and each
opens and unpickles the *whole* feature file.  ``load``/``safe_load`` therefore keep the parsed
object of the most recently used files (at most :data:`CACHE_MAX_ENTRIES`, 4), keyed by
``(realpath, st_mtime_ns, st_size)`` (plus device/inode), so a file is parsed once per run and
a rewritten file is parsed again.  Trade-off: the parsed file stays in memory until
:func:`clear_cache` is called; set ``SafePickle.cache_enabled = False`` /
:func:`set_cache_enabled` to turn it off.  A cache hit returns the *same* object as the first
load (no copy): mutating it in place (e.g.
:func:`mmin_plugin.integration.validation.sanitize_features`) is seen by later loads of the same
file -- which is what lets a pre-run check repair the data that MMSA then reads.  Only loads
that start at offset 0 of a regular file use the cache; after a hit the file position is moved
to where the pickle ended, as ``pickle.load`` would leave it.
"""
from __future__ import annotations

import _compat_pickle
import codecs
import io
import math
import os
import pickle
import re
import stat
import struct
import sys
import threading
from collections import OrderedDict

import numpy as np

from ..errors import MMINDataError

__all__ = [
    "ALLOWED_GLOBALS",
    "ENV_MAX_BYTES",
    "MAX_DEPTH",
    "SafeUnpickler",
    "SafePickle",
    "safe_load",
    "safe_loads",
    "default_max_bytes",
    "clear_cache",
    "cache_info",
    "set_cache_enabled",
]

#: Environment variable: the most bytes one load may materialise (an integer; overrides the
#: default ``4 * file size + 64 MiB``).
ENV_MAX_BYTES = "MMIN_SAFELOAD_MAX_BYTES"
#: Deepest container nesting accepted (an MMSA file is a dict of dicts of arrays: depth 2).
MAX_DEPTH = 64
_FACTOR, _FLOOR = 4, 64 << 20
_MAX_NDIM = 32

# (module, name) a file may reference -> the marker it resolves to.  NumPy 1.x pickles say
# numpy.core.*, NumPy 2.x numpy._core.*; Python 2 names are mapped first, as pickle's
# fix_imports does.  Nothing here is imported or called: each name is handled by the loader.
ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): "reconstruct",
    ("numpy._core.multiarray", "_reconstruct"): "reconstruct",
    ("numpy.core.multiarray", "scalar"): "scalar",
    ("numpy._core.multiarray", "scalar"): "scalar",
    ("numpy.core.numeric", "_frombuffer"): "frombuffer",
    ("numpy._core.numeric", "_frombuffer"): "frombuffer",
    ("numpy", "ndarray"): "ndarray",
    ("numpy", "dtype"): "dtype",
    ("_codecs", "encode"): "encode",
    ("builtins", "bytes"): "bytes",
    ("builtins", "set"): "set",
    ("builtins", "frozenset"): "frozenset",
    ("builtins", "bytearray"): "bytearray",
    ("builtins", "complex"): "complex",
    ("builtins", "slice"): "slice",
    ("collections", "OrderedDict"): "OrderedDict",
}

# dtype specs as numpy's dtype.__reduce__ writes them ('f8', 'U7', 'S3', 'b1', 'O8', ...)
_SPEC_RE = re.compile(r"^(?:b1|[iu][1248]|f[248]|c(?:8|16)|[US]\d{0,9}|O[48]?)$")
_BYTEORDERS = {"<", ">", "|", "="}
_LATIN1 = {"latin1", "latin-1", "iso-8859-1", "iso8859-1", "l1"}


class _Refused(Exception):
    """Internal: what the loader refuses (turned into MMINDataError with file and offset)."""


def _refuse(msg):
    raise _Refused(msg)


class _Global:
    """Inert stand-in for an allowed global: only the loader knows what it means."""

    __slots__ = ("kind", "qualname")

    def __init__(self, kind, qualname):
        self.kind, self.qualname = kind, qualname


class _PendingDtype:
    """numpy.dtype(spec, align, copy) before its BUILD; becomes a canonical np.dtype."""

    __slots__ = ("spec", "value")

    def __init__(self, spec):
        self.spec, self.value = spec, None


class _LazyBytes:
    """A large bytes value of a seekable file, not read yet: array data is read straight into the
    array the loader makes (one copy, no intermediate bytes object); any other use reads it."""

    __slots__ = ("offset", "n", "kind", "value")

    def __init__(self, offset, n, kind=bytes):
        self.offset, self.n, self.kind, self.value = offset, n, kind, None


#: bytes values at least this long are read lazily from seekable files (see _LazyBytes)
_LAZY_MIN = 1 << 20


class _PendingArray:
    """_reconstruct(ndarray, shape, b'b') before its BUILD; becomes an ndarray made here."""

    __slots__ = ("value",)

    def __init__(self):
        self.value = None


def _short(obj) -> str:
    """A bounded description of a file-made object (never its full repr)."""
    if isinstance(obj, _Global):
        return f"the global '{obj.qualname}'"
    if isinstance(obj, (str, bytes, bytearray)):
        head = obj[:20]
        return f"{type(obj).__name__} of length {len(obj)} ({head!r}{'...' if len(obj) > 20 else ''})"
    if isinstance(obj, (list, tuple, dict, set, frozenset)):
        return f"{type(obj).__name__} of length {len(obj)}"
    if isinstance(obj, np.ndarray):
        return f"ndarray of {obj.dtype} with shape {obj.shape}"
    if isinstance(obj, int) and not isinstance(obj, bool):
        return f"int {obj}" if obj.bit_length() < 64 else f"int of {obj.bit_length()} bits"
    if isinstance(obj, (float, bool, type(None), complex, np.generic, np.dtype)):
        return f"{type(obj).__name__} {obj!r}"
    return type(obj).__name__


def _canonical_dtype(spec, byteorder="=", elsize=-1):
    """The dtype a (spec, byteorder, elsize) triple describes, made by NumPy from a string."""
    if not isinstance(spec, str) or not _SPEC_RE.match(spec):
        _refuse(f"dtype {_short(spec)}: only bool, int8-64, uint8-64, float16/32/64, "
                "complex64/128, fixed-size unicode/bytes (and object arrays of str) are accepted")
    if byteorder not in _BYTEORDERS:
        _refuse(f"dtype byte order {_short(byteorder)}: expected one of '<', '>', '|', '='")
    kind = spec[0]
    if kind in "US":
        unit = 4 if kind == "U" else 1
        n = int(spec[1:]) if len(spec) > 1 else None
        if isinstance(elsize, int) and not isinstance(elsize, bool) and elsize >= 0:
            if elsize % unit or (n is not None and n * unit != elsize):
                _refuse(f"dtype '{spec}' with item size {elsize}: inconsistent")
            n = elsize // unit
        elif elsize != -1:
            _refuse(f"dtype '{spec}' with item size {_short(elsize)}")
        if n is None or n > (1 << 24):
            _refuse(f"dtype '{spec}': a fixed-size string dtype needs a size (<= 2**24)")
        spec = f"{kind}{n}"
    elif elsize not in (-1, None) and kind != "O":
        dt = np.dtype(spec)
        if elsize != dt.itemsize:
            _refuse(f"dtype '{spec}' with item size {_short(elsize)}")
    if kind == "O":
        return np.dtype(object)
    dt = np.dtype(spec)
    if dt.itemsize == 0:
        _refuse(f"dtype '{spec}' of item size 0")
    if dt.itemsize > 1 and dt.kind != "O" and byteorder in "<>":
        dt = dt.newbyteorder(byteorder)
    return dt


def default_max_bytes(file_size) -> int:
    """The byte budget of one load: ``$MMIN_SAFELOAD_MAX_BYTES`` if set, else
    ``4 * file_size + 64 MiB`` (``64 MiB`` when the size is unknown)."""
    env = os.environ.get(ENV_MAX_BYTES, "").strip()
    if env:
        try:
            v = int(env)
        except ValueError:
            raise MMINDataError(f"${ENV_MAX_BYTES}: expected an integer number of bytes; found {env!r}") from None
        if v < 1:
            raise MMINDataError(f"${ENV_MAX_BYTES}: expected a positive number of bytes; found {v}")
        return v
    return _FACTOR * int(file_size or 0) + _FLOOR


_OBJ_COST = 64      # bytes charged per Python object / container slot / memo entry (an estimate)
_CONTAINERS = (list, dict, set, tuple, frozenset, OrderedDict)


class SafeUnpickler:
    """A pickle reader for feature files; ``SafeUnpickler(file, source=..., max_bytes=...).load()``.

    See the module docstring for what it accepts.  ``file`` is a binary file object; ``size`` (the
    bytes left in it, when known) lets over-long length fields be refused before reading.
    """

    def __init__(self, file, *, source="<stream>", max_bytes=None, size=None, max_depth=MAX_DEPTH):
        self._file = file
        self._read, self._readline = file.read, file.readline
        self._base = file.tell() if size is not None else 0
        self.source = source
        self.size = size
        self.max_bytes = default_max_bytes(size) if max_bytes is None else int(max_bytes)
        self.max_depth = max_depth
        self.pos = 0
        self.used = 0
        self.stack, self.marks, self.memo = [], [], {}
        self.info = {}  # id(container) -> [obj, expanded size, depth, sealed]
        self.lazy_tuples = {}  # id(tuple) -> [tuple, its materialised copy or None]: tuples holding _LazyBytes

    # --- bookkeeping -------------------------------------------------------------------------
    def _charge(self, n, what):
        self.used += int(n)
        if self.used > self.max_bytes:
            _refuse(f"{what} would take the memory materialised past {self.max_bytes} bytes "
                    f"(the limit: 4x the file size + 64 MiB; raise it with ${ENV_MAX_BYTES} or "
                    "max_bytes= for a trusted file)")

    def read(self, n):
        if n < 0:
            _refuse(f"a negative length {n}")
        if self.size is not None and self.pos + n > self.size:
            _refuse(f"a length of {n} bytes past the end of the file ({self.size} bytes)")
        self._charge(n, f"a {n}-byte value")
        data = self._read(n)
        if len(data) != n:
            _refuse(f"a truncated file (wanted {n} bytes, got {len(data)})")
        self.pos += n
        return data

    def readline(self):
        line = self._readline()
        self.pos += len(line)
        self._charge(len(line), "a text line")
        if not line.endswith(b"\n"):
            _refuse("a truncated file (unterminated text line)")
        return line[:-1]

    def _weight(self, x):
        if isinstance(x, np.ndarray):
            return max(1, x.size), 0
        rec = self.info.get(id(x))
        if rec is not None and rec[0] is x:
            return rec[1], rec[2]
        return 1, 0

    def _new(self, obj, items=()):
        """Register a container built from `items` (already resolved) and return it."""
        w, d = 1, 0
        for x in items:
            cw, cd = self._weight(x)
            w, d = w + cw, max(d, cd + 1)
        self._check_size(w, d)
        self._charge(_OBJ_COST * (2 + len(obj)), f"a {type(obj).__name__} of {len(obj)} items")
        self.info[id(obj)] = [obj, w, d, False]
        return obj

    def _check_size(self, w, d):
        if d > self.max_depth:
            _refuse(f"containers nested more than {self.max_depth} deep")
        if w > self.max_bytes:
            _refuse(f"containers that expand to {w} elements (shared references counted each time "
                    f"they occur; the limit is {self.max_bytes}, the byte budget)")

    def _add_to(self, target, items):
        """Account `items` (resolved) being added to the mutable container `target`."""
        rec = self.info.get(id(target))
        if rec is None or rec[0] is not target:
            _refuse(f"adding items to {_short(target)}, which the loader did not make as a container")
        if rec[3]:
            _refuse(f"changing a {type(target).__name__} after it was put inside another object "
                    "(shared references filled in later, or a cycle)")
        for x in items:
            if x is target:
                _refuse(f"a {type(target).__name__} containing itself")
            cw, cd = self._weight(x)
            rec[1] += cw
            rec[2] = max(rec[2], cd + 1)
        self._check_size(rec[1], rec[2])
        self._charge(_OBJ_COST * len(items), f"{len(items)} more items")

    # --- large bytes read lazily ----------------------------------------------------------------
    def _lazy_bytes(self, n, kind=bytes):
        """`n` bytes of the file as `kind` (bytes or bytearray): a _LazyBytes (skipped now) when
        large and the file seekable."""
        if n < _LAZY_MIN or self.size is None:
            if kind is bytearray:
                self._charge(n, "a bytearray")
                return bytearray(self.read(n))
            return self.read(n)
        if self.pos + n > self.size:
            _refuse(f"a length of {n} bytes past the end of the file ({self.size} bytes)")
        lazy = _LazyBytes(self._base + self.pos, n, kind)
        self._file.seek(n, io.SEEK_CUR)
        self.pos += n
        return lazy

    def _read_at(self, lazy, into=None):
        """Read a _LazyBytes' data: into the writable buffer `into`, else as (cached) bytes."""
        here = self._file.tell()
        try:
            self._file.seek(lazy.offset)
            if into is not None:
                got = self._file.readinto(into)
                if got != lazy.n:
                    _refuse(f"a truncated file (wanted {lazy.n} bytes, got {got})")
                return None
            if lazy.value is None:
                self._charge(lazy.n + 33, "bytes")
                value = self._file.read(lazy.n)
                if len(value) != lazy.n:
                    _refuse("a truncated file")
                lazy.value = value if lazy.kind is bytes else bytearray(value)
            return lazy.value
        finally:
            self._file.seek(here)

    def _materialise(self, x):
        """`x` with every _LazyBytes (also inside tuples) read as bytes."""
        if isinstance(x, _LazyBytes):
            return self._read_at(x)
        rec = self.lazy_tuples.get(id(x))
        if rec is None or rec[0] is not x:
            return x
        if rec[1] is None:
            items = [self._materialise(i) for i in x]
            rec[1] = self._new(tuple(items), items)
        return rec[1]

    def _resolve(self, x, in_tuple=False):
        """The value an object on the stack stands for, sealed (unchangeable from now on).  An
        allowed global may only sit in a tuple (the argument tuple of ``_reconstruct``), and so
        may a not-yet-read large bytes value (array data); elsewhere it is read."""
        if not in_tuple:
            x = self._materialise(x)
        if isinstance(x, (_PendingArray, _PendingDtype)):
            if x.value is None:
                if isinstance(x, _PendingDtype):
                    x.value = _canonical_dtype(x.spec)
                else:
                    _refuse("an array used before its state (BUILD) was given")
            return x.value
        if isinstance(x, _Global) and not in_tuple:
            _refuse(f"{_short(x)} used as a value (globals may only be called)")
        rec = self.info.get(id(x))
        if rec is not None and rec[0] is x:
            rec[3] = True
        return x

    def _pop_mark(self):
        if not self.marks:
            _refuse("a stack operation without MARK")
        k = self.marks.pop()
        items, self.stack[k:] = self.stack[k:], []
        return items

    def _pop(self):
        if not self.stack:
            _refuse("an operation on an empty stack")
        return self.stack.pop()

    # --- the machine -------------------------------------------------------------------------
    def load(self):
        """Run the opcodes up to STOP; return the (resolved) object."""
        dispatch = _DISPATCH
        while True:
            start = self.pos
            op = self._read(1)
            self.pos += 1
            if not op:
                _refuse("a truncated file (no STOP opcode)")
            fn = dispatch.get(op[0])
            if fn is None:
                name = _REFUSED_OPS.get(op[0])
                if name:
                    _refuse(f"the opcode {name} (it would call code or load external data)")
                _refuse(f"an unknown opcode {op!r} at byte {start}")
            if fn is _op_stop:
                value = self._resolve(self._pop())
                return value
            fn(self)

    def _reduce(self, fn, args):
        if not isinstance(fn, _Global):
            _refuse(f"calling {_short(fn)} (only allowed globals can be called)")
        if not isinstance(args, tuple):
            _refuse(f"arguments {_short(args)} for '{fn.qualname}' (expected a tuple)")
        return _CALLS[fn.kind](self, fn, args)


# --- opcode handlers (self is the SafeUnpickler) ------------------------------------------------
def _op_stop(self):  # handled in load()
    pass


def _push(self, x):
    self.stack.append(x)


def _op_mark(self):
    self.marks.append(len(self.stack))


def _op_pop(self):
    if self.marks and self.marks[-1] == len(self.stack):
        self.marks.pop()
    else:
        self._pop()


def _op_pop_mark(self):
    self._pop_mark()


def _op_dup(self):
    x = self._pop()
    self.stack += [x, x]


def _op_proto(self):
    proto = self.read(1)[0]
    if proto > pickle.HIGHEST_PROTOCOL:
        _refuse(f"pickle protocol {proto} (this Python reads up to {pickle.HIGHEST_PROTOCOL})")


def _op_frame(self):
    self.read(8)  # frame length: the frame's opcodes follow inline


def _op_int(self):
    line = self.readline()
    if line == b"00":
        return _push(self, False)
    if line == b"01":
        return _push(self, True)
    _push(self, int(line, 0) if line.startswith((b"0x", b"-0x")) else int(line))


def _op_long(self):
    line = self.readline()
    _push(self, int(line[:-1] if line.endswith(b"L") else line))


def _op_binint(self):
    _push(self, struct.unpack("<i", self.read(4))[0])


def _op_binint1(self):
    _push(self, self.read(1)[0])


def _op_binint2(self):
    _push(self, struct.unpack("<H", self.read(2))[0])


def _op_long1(self):
    n = self.read(1)[0]
    _push(self, int.from_bytes(self.read(n), "little", signed=True))


def _op_long4(self):
    n = struct.unpack("<i", self.read(4))[0]
    if n > 1 << 16:
        _refuse(f"an integer of {n} bytes")
    _push(self, int.from_bytes(self.read(n), "little", signed=True))


def _op_float(self):
    _push(self, float(self.readline()))


def _op_binfloat(self):
    _push(self, struct.unpack(">d", self.read(8))[0])


def _op_none(self):
    _push(self, None)


def _op_newtrue(self):
    _push(self, True)


def _op_newfalse(self):
    _push(self, False)


def _str_from_py2(self, data: bytes):
    # Python 2 str: decoded as latin1, like pickle.load(encoding='latin1') (NumPy 1.x era files)
    self._charge(len(data) + 49, "a string")
    return data.decode("latin1")


def _op_string(self):
    line = self.readline()
    if len(line) >= 2 and line[:1] == line[-1:] and line[:1] in (b'"', b"'"):
        line = line[1:-1]
    else:
        _refuse("a malformed STRING opcode (unquoted)")
    _push(self, _str_from_py2(self, codecs.escape_decode(line)[0]))


def _op_binstring(self):
    n = struct.unpack("<i", self.read(4))[0]
    _push(self, _str_from_py2(self, self.read(n)))


def _op_short_binstring(self):
    _push(self, _str_from_py2(self, self.read(self.read(1)[0])))


def _unicode(self, data: bytes, how="utf-8"):
    s = str(data, how, "surrogatepass")
    self._charge(sys.getsizeof(s), "a string")
    return s


def _op_unicode(self):
    _push(self, _unicode(self, self.readline(), "raw-unicode-escape"))


def _op_binunicode(self):
    _push(self, _unicode(self, self.read(struct.unpack("<I", self.read(4))[0])))


def _op_short_binunicode(self):
    _push(self, _unicode(self, self.read(self.read(1)[0])))


def _op_binunicode8(self):
    _push(self, _unicode(self, self.read(struct.unpack("<Q", self.read(8))[0])))


def _op_binbytes(self):
    _push(self, self._lazy_bytes(struct.unpack("<I", self.read(4))[0]))


def _op_short_binbytes(self):
    _push(self, self.read(self.read(1)[0]))


def _op_binbytes8(self):
    _push(self, self._lazy_bytes(struct.unpack("<Q", self.read(8))[0]))


def _op_bytearray8(self):
    _push(self, self._lazy_bytes(struct.unpack("<Q", self.read(8))[0], bytearray))


def _op_empty_list(self):
    _push(self, self._new([]))


def _op_empty_dict(self):
    _push(self, self._new({}))


def _op_empty_set(self):
    _push(self, self._new(set()))


def _op_empty_tuple(self):
    _push(self, ())


def _resolved(self, items, in_tuple=False):
    return [self._resolve(x, in_tuple) for x in items]


def _make_tuple(self, items):
    t = self._new(tuple(items), items)
    if any(isinstance(i, _LazyBytes) or id(i) in self.lazy_tuples for i in items):
        self.lazy_tuples[id(t)] = [t, None]
    return t


def _op_tuple(self):
    items = _resolved(self, self._pop_mark(), True)
    _push(self, _make_tuple(self, items))


def _op_tupleN(n):
    def op(self):
        if len(self.stack) < n:
            _refuse(f"TUPLE{n} with fewer than {n} items on the stack")
        items = _resolved(self, self.stack[-n:], True)
        del self.stack[-n:]
        _push(self, _make_tuple(self, items))
    return op


def _op_list(self):
    items = _resolved(self, self._pop_mark())
    _push(self, self._new(list(items), items))


def _op_dict(self):
    items = _resolved(self, self._pop_mark())
    if len(items) % 2:
        _refuse("DICT with an odd number of items")
    d = {}
    for i in range(0, len(items), 2):
        d[items[i]] = items[i + 1]
    _push(self, self._new(d, items))


def _op_frozenset(self):
    items = _resolved(self, self._pop_mark())
    _push(self, self._new(frozenset(items), items))


def _target(self, kind):
    if not self.stack:
        _refuse("an operation on an empty stack")
    t = self.stack[-1]
    if type(t) not in kind:
        _refuse(f"adding items to {_short(t)} (expected a {'/'.join(k.__name__ for k in kind)})")
    return t


def _op_append(self):
    x = self._resolve(self._pop())
    t = _target(self, (list,))
    self._add_to(t, [x])
    t.append(x)


def _op_appends(self):
    items = _resolved(self, self._pop_mark())
    t = _target(self, (list,))
    self._add_to(t, items)
    t.extend(items)


def _op_setitem(self):
    v = self._resolve(self._pop())
    k = self._resolve(self._pop())
    t = _target(self, (dict, OrderedDict))
    self._add_to(t, [k, v])
    t[k] = v


def _op_setitems(self):
    items = _resolved(self, self._pop_mark())
    if len(items) % 2:
        _refuse("SETITEMS with an odd number of items")
    t = _target(self, (dict, OrderedDict))
    self._add_to(t, items)
    for i in range(0, len(items), 2):
        t[items[i]] = items[i + 1]


def _op_additems(self):
    items = _resolved(self, self._pop_mark())
    t = _target(self, (set,))
    self._add_to(t, items)
    t.update(items)


def _memo_put(self, i):
    if not self.stack:
        _refuse("PUT on an empty stack")
    if i < 0:
        _refuse(f"a negative memo index {i}")
    if i not in self.memo:
        self._charge(_OBJ_COST, "a memo entry")
    self.memo[i] = self.stack[-1]


def _memo_get(self, i):
    if i not in self.memo:
        _refuse(f"a reference to memo entry {i}, which was never stored")
    _push(self, self.memo[i])


def _op_put(self):
    _memo_put(self, int(self.readline()))


def _op_binput(self):
    _memo_put(self, self.read(1)[0])


def _op_long_binput(self):
    _memo_put(self, struct.unpack("<I", self.read(4))[0])


def _op_memoize(self):
    _memo_put(self, len(self.memo))


def _op_get(self):
    _memo_get(self, int(self.readline()))


def _op_binget(self):
    _memo_get(self, self.read(1)[0])


def _op_long_binget(self):
    _memo_get(self, struct.unpack("<I", self.read(4))[0])


def _find_global(self, module, name):
    raw = f"{module}.{name}"
    if (module, name) in _compat_pickle.NAME_MAPPING:
        module, name = _compat_pickle.NAME_MAPPING[(module, name)]
    elif module in _compat_pickle.IMPORT_MAPPING:
        module = _compat_pickle.IMPORT_MAPPING[module]
    kind = ALLOWED_GLOBALS.get((module, name))
    if kind is None:
        alias = "" if raw == f"{module}.{name}" else f" (= '{module}.{name}')"
        raise MMINDataError(
            f"{self.source}: refusing to unpickle '{raw[:200]}'{alias[:200]}: a feature file may only "
            "hold NumPy arrays/dtypes/scalars and builtin containers; nothing from this file "
            "was executed (is it a crafted or non-MMSA pickle?)")
    return _Global(kind, f"{module}.{name}")


def _op_global(self):
    module = self.readline().decode("utf-8")
    name = self.readline().decode("utf-8")
    _push(self, _find_global(self, module, name))


def _op_stack_global(self):
    name = self._pop()
    module = self._pop()
    if not isinstance(module, str) or not isinstance(name, str):
        _refuse("STACK_GLOBAL with non-str names")
    _push(self, _find_global(self, module, name))


def _op_reduce(self):
    args = self._resolve(self._pop(), in_tuple=True)  # may hold lazy array data (_frombuffer)
    fn = self._pop()
    if not (isinstance(fn, _Global) and fn.kind == "frombuffer"):
        args = self._materialise(args)
    if isinstance(args, tuple) and any(isinstance(a, _Global) for a in args) and not (
            isinstance(fn, _Global) and fn.kind == "reconstruct"):
        _refuse("a global passed as an argument (only _reconstruct takes numpy.ndarray)")
    _push(self, self._reduce(fn, args))


def _op_newobj(self):
    args = self._resolve(self._pop())
    cls = self._pop()
    if not (isinstance(cls, _Global) and cls.kind == "complex"):
        _refuse(f"NEWOBJ on {_short(cls)} (only builtins.complex is accepted)")
    _push(self, self._reduce(cls, args))


def _op_build(self):
    state = self._resolve(self._pop(), in_tuple=True)  # may hold lazy array data
    if not self.stack:
        _refuse("BUILD on an empty stack")
    inst = self.stack[-1]
    if isinstance(inst, _PendingDtype) and inst.value is None:
        inst.value = _dtype_from_state(inst.spec, self._materialise(state))
    elif isinstance(inst, _PendingArray) and inst.value is None:
        inst.value = _array_from_state(self, state)
    else:
        _refuse(f"BUILD (setting state) on {_short(inst)}: only arrays and dtypes the loader "
                "itself rebuilds take a state")


# --- the callables ----------------------------------------------------------------------------
def _is_int(x):
    return isinstance(x, int) and not isinstance(x, bool)


def _nargs(fn, args, *allowed):
    if len(args) not in allowed:
        _refuse(f"'{fn.qualname}' called with {len(args)} arguments (expected {' or '.join(map(str, allowed))})")


def _call_dtype(self, fn, args):
    _nargs(fn, args, 1, 2, 3)
    for flag in args[1:]:
        if flag not in (0, 1):  # align, copy: bools (ints in old files)
            _refuse(f"numpy.dtype flags {_short(flag)}")
    spec = args[0]
    if not isinstance(spec, str):
        _refuse(f"numpy.dtype({_short(spec)}): only a type string is accepted")
    _canonical_dtype(spec if spec[:1] not in "US" else spec[:1] + "1")  # checks the kind early
    return _PendingDtype(spec)


def _dtype_from_state(spec, state):
    """Canonical dtype from numpy's dtype state ``(version, byteorder, subdescr, names, fields,
    elsize, alignment, flags[, metadata])``; subarrays/fields/metadata are refused, the flags
    are ignored (the dtype is made by NumPy from its string, so they are NumPy's own)."""
    if not isinstance(state, tuple) or len(state) not in (8, 9) or state[0] not in (3, 4):
        _refuse(f"a dtype state {_short(state)} (expected numpy's version-3 tuple of 8 items)")
    _, byteorder, sub, names, fields, elsize = state[:6]
    if sub is not None or names is not None or fields is not None or (len(state) == 9 and state[8] is not None):
        _refuse(f"a structured or sub-array dtype '{spec}' (fields/names/sub-arrays/metadata are "
                "not accepted in feature files)")
    if not _is_int(elsize):
        _refuse(f"dtype item size {_short(elsize)}")
    return _canonical_dtype(spec, byteorder, elsize)


def _call_reconstruct(self, fn, args):
    _nargs(fn, args, 3)
    cls, shape, code = args
    if not (isinstance(cls, _Global) and cls.kind == "ndarray"):
        _refuse(f"_reconstruct of {_short(cls)} (only numpy.ndarray)")
    if code not in (b"b", "b"):
        _refuse(f"_reconstruct type code {_short(code)}")
    return _PendingArray()


def _check_shape(self, shape):
    if isinstance(shape, list):
        shape = tuple(shape)
    if _is_int(shape):
        shape = (shape,)
    if not isinstance(shape, tuple) or len(shape) > _MAX_NDIM or not all(_is_int(s) and s >= 0 for s in shape):
        _refuse(f"an array shape {_short(shape)} (expected up to {_MAX_NDIM} non-negative ints)")
    n = math.prod(shape)
    if n > self.max_bytes:
        _refuse(f"an array of shape {shape} ({n} elements; the limit is {self.max_bytes})")
    return shape, n


def _array_from_bytes(self, data, dtype, shape, fortran):
    """ndarray(shape, dtype) made here and filled from `data` (exactly prod(shape)*itemsize bytes)."""
    if not isinstance(dtype, np.dtype) or dtype.kind not in "biufcUS" or dtype.fields is not None:
        _refuse(f"array dtype {_short(dtype)}")
    shape, n = _check_shape(self, shape)
    if isinstance(data, str):
        self._charge(len(data), "array data")
        data = data.encode("latin1")
    if not isinstance(data, (bytes, bytearray, _LazyBytes)):
        _refuse(f"array data {_short(data)} (expected bytes)")
    want = n * dtype.itemsize
    have = data.n if isinstance(data, _LazyBytes) else len(data)
    if have != want:
        _refuse(f"array data of {have} bytes for shape {shape} and dtype {dtype} "
                f"(expected exactly {want})")
    self._charge(want + 112, f"an array of shape {shape}")
    out = np.empty(n, dtype=dtype)  # (n,) fresh, C-contiguous, writeable
    if isinstance(data, _LazyBytes):
        self._read_at(data, into=memoryview(out.view(np.uint8)))
    elif want:
        out.view(np.uint8)[:] = np.frombuffer(data, dtype=np.uint8)
    return out.reshape(shape, order="F" if fortran else "C")


def _array_of_str(self, items, shape, fortran):
    """An object array of str: numpy writes the items as a list in C order."""
    shape, n = _check_shape(self, shape)
    if not isinstance(items, list) or len(items) != n:
        _refuse(f"object-array data {_short(items)} for shape {shape} (expected a list of {n} str)")
    for i, x in enumerate(items):
        if type(x) is not str:
            _refuse(f"an object array holding {_short(x)} at item {i} (object arrays may only hold str)")
    self._charge(8 * n + 112, f"an object array of shape {shape}")
    out = np.empty(n, dtype=object)
    out[:] = items
    out = out.reshape(shape)
    return np.asfortranarray(out) if fortran and out.ndim > 1 else out


def _array_from_state(self, state):
    if not isinstance(state, tuple) or len(state) not in (4, 5):
        _refuse(f"an array state {_short(state)} (expected (1, shape, dtype, fortran, data))")
    if len(state) == 5:
        if state[0] != 1 or not _is_int(state[0]):
            _refuse(f"an array state version {_short(state[0])}")
        state = state[1:]
    shape, dtype, fortran, data = state
    if fortran not in (0, 1):
        _refuse(f"an array order flag {_short(fortran)}")
    if isinstance(dtype, np.dtype) and dtype.kind == "O":
        return _array_of_str(self, data, shape, bool(fortran))
    return _array_from_bytes(self, data, dtype, shape, bool(fortran))


def _call_frombuffer(self, fn, args):
    _nargs(fn, args, 4)
    buf, dtype, shape, order = args
    if order not in ("C", "F"):
        _refuse(f"_frombuffer order {_short(order)}")
    return _array_from_bytes(self, buf, dtype, shape, order == "F")


def _call_scalar(self, fn, args):
    _nargs(fn, args, 1, 2)
    dtype = args[0]
    if not isinstance(dtype, np.dtype) or dtype.kind not in "biufcUS":
        _refuse(f"a NumPy scalar of dtype {_short(dtype)}")
    data = args[1] if len(args) == 2 else b"\x00" * dtype.itemsize
    if isinstance(data, str):
        data = data.encode("latin1")
    if not isinstance(data, (bytes, bytearray)) or len(data) != dtype.itemsize:
        _refuse(f"scalar data {_short(data)} for dtype {dtype} (expected {dtype.itemsize} bytes)")
    return np.frombuffer(bytes(data), dtype=dtype)[0]


def _call_encode(self, fn, args):
    _nargs(fn, args, 2)
    s, enc = args
    if not isinstance(s, str) or not isinstance(enc, str) or enc.lower() not in _LATIN1:
        _refuse(f"_codecs.encode with {_short(enc)} (only encoding a str as 'latin1', which is how "
                "old pickles store bytes, is accepted)")
    self._charge(len(s) + 33, "bytes")
    return s.encode("latin1")


def _seq_arg(self, fn, args):
    _nargs(fn, args, 0, 1)
    if not args:
        return []
    x = args[0]
    if type(x) not in (list, tuple, set, frozenset):
        _refuse(f"'{fn.qualname}' of {_short(x)}")
    return list(x)


def _call_set(self, fn, args):
    items = _seq_arg(self, fn, args)
    return self._new(set(items), items)


def _call_frozenset(self, fn, args):
    items = _seq_arg(self, fn, args)
    return self._new(frozenset(items), items)


def _bytes_arg(self, fn, args):
    _nargs(fn, args, 0, 1)
    if not args:
        return b""
    if not isinstance(args[0], (bytes, bytearray)):
        _refuse(f"'{fn.qualname}' of {_short(args[0])} (expected bytes)")
    self._charge(len(args[0]) + 33, "bytes")
    return args[0]


def _call_bytes(self, fn, args):
    return bytes(_bytes_arg(self, fn, args))


def _call_bytearray(self, fn, args):
    return bytearray(_bytes_arg(self, fn, args))


def _call_complex(self, fn, args):
    _nargs(fn, args, 0, 1, 2)
    if not all(isinstance(x, (int, float)) for x in args):
        _refuse(f"complex of {', '.join(_short(x) for x in args)}")
    return complex(*args)


def _call_slice(self, fn, args):
    _nargs(fn, args, 1, 2, 3)
    if not all(x is None or _is_int(x) for x in args):
        _refuse("slice with non-int bounds")
    return slice(*args)


def _call_ordereddict(self, fn, args):
    _nargs(fn, args, 0)
    return self._new(OrderedDict())


def _call_ndarray(self, fn, args):
    _refuse("calling numpy.ndarray(...) (buffer=/strides= constructor forms can alias memory or claim "
            "huge shapes; arrays are only rebuilt from their data)")


_CALLS = {
    "reconstruct": _call_reconstruct, "scalar": _call_scalar, "frombuffer": _call_frombuffer,
    "ndarray": _call_ndarray, "dtype": _call_dtype, "encode": _call_encode, "bytes": _call_bytes,
    "set": _call_set, "frozenset": _call_frozenset, "bytearray": _call_bytearray,
    "complex": _call_complex, "slice": _call_slice, "OrderedDict": _call_ordereddict,
}

_DISPATCH = {ord(k) if isinstance(k, str) else k[0]: v for k, v in {
    pickle.MARK: _op_mark, pickle.STOP: _op_stop, pickle.POP: _op_pop, pickle.POP_MARK: _op_pop_mark,
    pickle.DUP: _op_dup, pickle.FLOAT: _op_float, pickle.INT: _op_int, pickle.BININT: _op_binint,
    pickle.BININT1: _op_binint1, pickle.LONG: _op_long, pickle.BININT2: _op_binint2,
    pickle.NONE: _op_none, pickle.REDUCE: _op_reduce, pickle.STRING: _op_string,
    pickle.BINSTRING: _op_binstring, pickle.SHORT_BINSTRING: _op_short_binstring,
    pickle.UNICODE: _op_unicode, pickle.BINUNICODE: _op_binunicode, pickle.APPEND: _op_append,
    pickle.BUILD: _op_build, pickle.GLOBAL: _op_global, pickle.DICT: _op_dict,
    pickle.EMPTY_DICT: _op_empty_dict, pickle.APPENDS: _op_appends, pickle.GET: _op_get,
    pickle.BINGET: _op_binget, pickle.LONG_BINGET: _op_long_binget, pickle.LIST: _op_list,
    pickle.EMPTY_LIST: _op_empty_list, pickle.PUT: _op_put, pickle.BINPUT: _op_binput,
    pickle.LONG_BINPUT: _op_long_binput, pickle.SETITEM: _op_setitem, pickle.TUPLE: _op_tuple,
    pickle.EMPTY_TUPLE: _op_empty_tuple, pickle.SETITEMS: _op_setitems, pickle.BINFLOAT: _op_binfloat,
    pickle.PROTO: _op_proto, pickle.NEWOBJ: _op_newobj, pickle.TUPLE1: _op_tupleN(1),
    pickle.TUPLE2: _op_tupleN(2), pickle.TUPLE3: _op_tupleN(3), pickle.NEWTRUE: _op_newtrue,
    pickle.NEWFALSE: _op_newfalse, pickle.LONG1: _op_long1, pickle.LONG4: _op_long4,
    pickle.BINBYTES: _op_binbytes, pickle.SHORT_BINBYTES: _op_short_binbytes,
    pickle.SHORT_BINUNICODE: _op_short_binunicode, pickle.BINUNICODE8: _op_binunicode8,
    pickle.BINBYTES8: _op_binbytes8, pickle.EMPTY_SET: _op_empty_set, pickle.ADDITEMS: _op_additems,
    pickle.FROZENSET: _op_frozenset, pickle.STACK_GLOBAL: _op_stack_global, pickle.MEMOIZE: _op_memoize,
    pickle.FRAME: _op_frame, pickle.BYTEARRAY8: _op_bytearray8,
}.items()}
_REFUSED_OPS = {pickle.PERSID[0]: "PERSID", pickle.BINPERSID[0]: "BINPERSID", pickle.INST[0]: "INST",
                pickle.OBJ[0]: "OBJ", pickle.NEWOBJ_EX[0]: "NEWOBJ_EX", pickle.EXT1[0]: "EXT1",
                pickle.EXT2[0]: "EXT2", pickle.EXT4[0]: "EXT4", pickle.NEXT_BUFFER[0]: "NEXT_BUFFER",
                pickle.READONLY_BUFFER[0]: "READONLY_BUFFER"}


def _describe(source) -> str:
    if isinstance(source, (str, bytes, os.PathLike)):
        return os.fsdecode(source)
    name = getattr(source, "name", None)
    if isinstance(name, (str, bytes)):
        return os.fsdecode(name)
    return "<stream>"


def _remaining(f):
    """Bytes left in a seekable file object, else None."""
    try:
        here = f.tell()
        end = f.seek(0, io.SEEK_END)
        f.seek(here)
        return end - here
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return None


def _unpickle(file, source, max_bytes=None):
    """Run :class:`SafeUnpickler` (or the safe-format reader) on `file`; MMINDataError on any failure."""
    from . import convert

    size = _remaining(file)
    if convert.is_safe_format(file):
        return convert.load_safe(file, source=source, max_bytes=max_bytes)
    u = SafeUnpickler(file, source=source, max_bytes=max_bytes, size=size)
    try:
        return u.load()
    except MMINDataError:
        raise
    except _Refused as e:
        raise MMINDataError(f"{source}: refusing to load this feature file: {e} (at byte {u.pos})") from None
    except Exception as e:  # MemoryError, RecursionError, LookupError, ValueError ... from a bad file
        raise MMINDataError(
            f"{source}: expected a pickled MMSA feature file; found an unreadable or malformed pickle "
            f"at byte {u.pos} ({type(e).__name__}: {str(e)[:200]})") from None


# --- cache -------------------------------------------------------------------------------------
#: How many parsed files the cache keeps (least recently used dropped first): 4 covers a run's
#: main feature file plus MMSA's optional feature_T / feature_A / feature_V files.
CACHE_MAX_ENTRIES = 4
_cache: OrderedDict[tuple, tuple] = OrderedDict()
_cache_lock = threading.RLock()
_cache_state = {"enabled": True, "hits": 0, "misses": 0}


def clear_cache() -> None:
    """Drop every cached parsed file (frees the memory) and reset the hit/miss counters."""
    with _cache_lock:
        _cache.clear()
        _cache_state["hits"] = _cache_state["misses"] = 0


def cache_info() -> dict:
    """``{'enabled', 'entries', 'hits', 'misses', 'keys'}`` -- for tests and diagnostics."""
    with _cache_lock:
        return {"enabled": _cache_state["enabled"], "entries": len(_cache),
                "hits": _cache_state["hits"], "misses": _cache_state["misses"],
                "keys": list(_cache)}


def set_cache_enabled(enabled: bool) -> None:
    """Turn the cache on or off (off also clears it)."""
    with _cache_lock:
        _cache_state["enabled"] = bool(enabled)
        if not enabled:
            _cache.clear()


def _file_key(f):
    """Cache key for an open regular file at offset 0, else None."""
    try:
        fd = f.fileno()
        if f.tell() != 0:
            return None
        st = os.fstat(fd)
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    name = getattr(f, "name", None)
    real = os.path.realpath(name) if isinstance(name, (str, bytes)) else None
    return (real, st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)


def _load_file(f, source, max_bytes=None):
    key = _file_key(f) if _cache_state["enabled"] else None
    if key is not None:
        with _cache_lock:
            hit = _cache.get(key)
            if hit is not None:
                _cache.move_to_end(key)
                _cache_state["hits"] += 1
                obj, end = hit
                try:
                    f.seek(end)
                except (OSError, ValueError):
                    pass
                return obj
    obj = _unpickle(f, source, max_bytes)
    if key is not None:
        try:
            end = f.tell()
        except (OSError, ValueError):
            end = key[-1]
        with _cache_lock:
            _cache_state["misses"] += 1
            if _cache_state["enabled"]:
                _cache[key] = (obj, end)
                _cache.move_to_end(key)
                while len(_cache) > max(0, CACHE_MAX_ENTRIES):
                    _cache.popitem(last=False)
    return obj


# --- public API ----------------------------------------------------------------------------------
def safe_load(file_or_path, *, max_bytes=None):
    """Load a feature file (a path or a binary file object): a pickle through
    :class:`SafeUnpickler`, or the safe format of :mod:`~mmin_plugin.integration.convert`.

    Raises :class:`MMINDataError` (naming the file) for a missing/unreadable file, a malformed
    pickle, any global outside :data:`ALLOWED_GLOBALS` (naming the refused 'module.name') and
    anything else the loader refuses.  ``max_bytes`` overrides the byte budget
    (:func:`default_max_bytes`).  Uses the parse cache (see the module docstring).
    """
    if isinstance(file_or_path, (str, bytes, os.PathLike)):
        source = os.fsdecode(file_or_path)
        try:
            f = open(file_or_path, "rb")
        except OSError as e:
            raise MMINDataError(
                f"{source}: expected a readable feature file; found {type(e).__name__}: "
                f"{e.strerror or e}") from e
        with f:
            return _load_file(f, source, max_bytes)
    if not hasattr(file_or_path, "read"):
        raise MMINDataError(
            f"safe_load: expected a path or a binary file object; found "
            f"{type(file_or_path).__name__}")
    return _load_file(file_or_path, _describe(file_or_path), max_bytes)


def safe_loads(data, source="<bytes>", *, max_bytes=None):
    """Load a feature file from bytes (no cache); see :func:`safe_load`."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise MMINDataError(f"{source}: expected pickled bytes; found {type(data).__name__}")
    return _unpickle(io.BytesIO(data), source, max_bytes)


class _SafePickleModule:
    """Module-like stand-in for :mod:`pickle`: safe ``load``/``loads``, plain dumping."""

    HIGHEST_PROTOCOL = pickle.HIGHEST_PROTOCOL
    DEFAULT_PROTOCOL = pickle.DEFAULT_PROTOCOL
    PickleError = pickle.PickleError
    PicklingError = pickle.PicklingError
    UnpicklingError = pickle.UnpicklingError
    Pickler = pickle.Pickler
    Unpickler = SafeUnpickler
    dump = staticmethod(pickle.dump)
    dumps = staticmethod(pickle.dumps)
    __name__ = "mmin_plugin.integration.safeload.SafePickle"

    @staticmethod
    def load(file, **_ignored):
        """Like ``pickle.load(file)`` but safe (keyword options such as ``encoding`` are
        ignored: Python 2 strings are read as latin1)."""
        return safe_load(file)

    @staticmethod
    def loads(data, **_ignored):
        return safe_loads(data)

    @property
    def cache_enabled(self) -> bool:
        return _cache_state["enabled"]

    @cache_enabled.setter
    def cache_enabled(self, value: bool) -> None:
        set_cache_enabled(value)

    clear_cache = staticmethod(clear_cache)
    cache_info = staticmethod(cache_info)

    def __repr__(self):
        return "<SafePickle: safe drop-in for the pickle module>"


#: Drop-in for the ``pickle`` module (e.g. ``MMSA.data_loader.pickle = SafePickle``).
SafePickle = _SafePickleModule()
