"""A pickle reader for MMSA feature files that is safe by construction (docs/design/safety.md).

:class:`SafeUnpickler` is a small pickle virtual machine that never imports or calls a function
named by the file and never hands file-controlled state to ``__setstate__``.  It reads what
Python 3 writes for MMSA-Standard files and NumPy 1.x / 2.x arrays with protocols 2-5 -- the
opcodes of its ``op_*`` methods and the globals of :data:`ALLOWED_GLOBALS`, a set recorded by
pickling every allowed dtype in every memory order (``tests/test_safeload.py`` repeats the record) --
and refuses everything else by name.  Arrays are rebuilt from a dtype of the allow-list of
:mod:`~mmin_plugin.features.limits`, a shape and exactly ``prod(shape) * itemsize`` bytes; dict keys
are str; every object, slot and byte is charged to a :class:`~mmin_plugin.features.limits.Budget`
before it is made; containers carry their expanded size (in bytes: what a copy that does not keep
shared references would take) and depth, and cannot change once nested.  The number of opcodes is
bounded by the file's size (:func:`~mmin_plugin.features.limits.max_opcodes`); PROTO only first,
FRAME only between frames, at most :data:`~mmin_plugin.features.limits.MAX_OPEN_MARKS` open MARKs.
Every failure is one :class:`~mmin_plugin.errors.MMINDataError` naming the file and byte offset.
Array data of at least 1 MiB in a seekable file is read straight into the array made from it.
"""
from __future__ import annotations

import io
import pickle
import re
import struct
from dataclasses import dataclass

import numpy as np

from ..errors import MMINDataError
from . import limits
from .limits import ARRAY_HEADER, CONTAINER, OBJECT, SLOT, Budget, Refused, check_dtype, check_unicode

__all__ = ["ALLOWED_GLOBALS", "SafeUnpickler"]

# (module, name) a file may reference -> the marker it resolves to (nothing is imported).
ALLOWED_GLOBALS = {
    **{(f"numpy.{core}.multiarray", "_reconstruct"): "reconstruct" for core in ("core", "_core")},
    **{(f"numpy.{core}.multiarray", "scalar"): "scalar" for core in ("core", "_core")},
    **{(f"numpy.{core}.numeric", "_frombuffer"): "frombuffer" for core in ("core", "_core")},
    ("numpy", "ndarray"): "ndarray",
    ("numpy", "dtype"): "dtype",
    ("_codecs", "encode"): "encode",
    ("builtins", "bytes"): "bytes",
    ("__builtin__", "bytes"): "bytes",  # protocol 2 writes Python 3's builtins under the Python 2 name
}
# dtype specs as numpy's dtype.__reduce__ writes them ('f8', 'U7', 'S3', 'b1', 'O8', ...)
_SPEC_RE = re.compile(r"^(?:b1|[iu][1248]|f[248]|c(?:8|16)|[US]\d{0,9}|O[48]?)$")
_LATIN1 = {"latin1", "latin-1", "iso-8859-1", "iso8859-1", "l1"}
#: bytes values at least this long are read lazily from seekable files (see _Lazy)
LAZY_MIN = 1 << 20


@dataclass(slots=True)
class _Global:
    """Inert stand-in for an allowed global: only the loader knows what it means."""

    kind: str
    qualname: str


@dataclass(slots=True)
class _Pending:
    """A dtype (``spec`` set) or an array (``spec`` None) made by REDUCE, waiting for its BUILD."""

    spec: object = None
    value: object = None


@dataclass(slots=True)
class _Lazy:
    """Array data only: `n` bytes at `offset` of the file, not read yet, or `data` (a protocol-5
    in-band buffer, BYTEARRAY8, which is array data in every file NumPy writes)."""

    offset: int
    n: int
    data: bytes = None


@dataclass(slots=True)
class _Container:
    """Bookkeeping of a list/dict/tuple the loader made."""

    obj: object
    size: int = CONTAINER  # bytes a copy takes that copies every shared reference (see weight)
    depth: int = 0     # nesting depth below it
    sealed: bool = False  # put inside another object: may not change any more


def _short(obj) -> str:
    """A bounded description of a file-made object (never its full repr)."""
    if isinstance(obj, _Global):
        return f"the global '{obj.qualname}'"
    if isinstance(obj, (str, bytes, bytearray)):
        return f"{type(obj).__name__} of length {len(obj)} ({obj[:20]!r}{'...' if len(obj) > 20 else ''})"
    if isinstance(obj, (list, tuple, dict)):
        return f"{type(obj).__name__} of length {len(obj)}"
    if isinstance(obj, np.ndarray):
        return f"ndarray of {obj.dtype} with shape {obj.shape}"
    if isinstance(obj, int) and not isinstance(obj, bool):
        return f"int {obj}" if obj.bit_length() < 64 else f"int of {obj.bit_length()} bits"
    if isinstance(obj, (float, bool, type(None), np.dtype)):
        return f"{type(obj).__name__} {obj!r}"
    return type(obj).__name__


def _refuse(msg):
    raise Refused(msg)


def _is_int(x):
    return isinstance(x, int) and not isinstance(x, bool)


def _remaining(f):
    """Bytes left in a seekable file object, else None."""
    try:
        here = f.tell()
        end = f.seek(0, io.SEEK_END)
        f.seek(here)
        return end - here
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return None


class SafeUnpickler:
    """``SafeUnpickler(file, source=..., max_bytes=...).run()``: the object, or MMINDataError.

    ``file`` is a binary file object; when it is seekable, over-long lengths are refused unread
    and large array data is read straight into the array.
    """

    def __init__(self, file, *, source="<stream>", max_bytes=None, max_depth=limits.MAX_DEPTH, max_ops=None):
        self.file, self.source, self.max_depth = file, source, max_depth
        self.size = _remaining(file)
        self.base = file.tell() if self.size is not None else 0
        self.budget = Budget(limits.default_max_bytes(self.size) if max_bytes is None else int(max_bytes))
        self.max_ops = limits.max_opcodes(self.size) if max_ops is None else int(max_ops)
        self.pos = self.ops = self.frame_end = 0
        self.stack, self.marks, self.memo = [], [], []
        self.peak = 0  # most stack + mark slots so far (each charged once)
        self.containers = {}  # id(obj) -> _Container
        self.args_only = set()  # ids of tuples holding globals or _Lazy data: only for REDUCE/BUILD

    def run(self):
        try:
            return self._load()
        except MMINDataError:
            raise
        except Refused as e:
            raise MMINDataError(f"{self.source}: refusing to load this feature file: {e} "
                                f"(at byte {self.pos})") from None
        except Exception as e:  # MemoryError, RecursionError, ValueError ... from a malformed file
            raise MMINDataError(
                f"{self.source}: expected a pickled MMSA feature file; found an unreadable or malformed pickle "
                f"at byte {self.pos} ({type(e).__name__}: {str(e)[:200]})") from None

    # --- reading ---------------------------------------------------------------------------------
    def read(self, n):
        if self.size is not None and self.pos + n > self.size:
            _refuse(f"a length of {n} bytes past the end of the file ({self.size} bytes)")
        self.budget.charge(n, f"a {n}-byte value")
        data = self.file.read(n)
        if len(data) != n:
            _refuse(f"a truncated file (wanted {n} bytes, got {len(data)})")
        self.pos += n
        return data

    def read_struct(self, fmt):
        return struct.unpack(fmt, self.read(struct.calcsize(fmt)))[0]

    def read_bytes(self, n):
        """`n` bytes: a _Lazy (skipped now) when large and the file seekable, else bytes."""
        if n < LAZY_MIN or self.size is None:
            return self.read(n)
        if self.pos + n > self.size:
            _refuse(f"a length of {n} bytes past the end of the file ({self.size} bytes)")
        lazy = _Lazy(self.base + self.pos, n)
        self.file.seek(n, io.SEEK_CUR)
        self.pos += n
        return lazy

    def read_into(self, lazy, out):
        here = self.file.tell()
        self.file.seek(lazy.offset)
        got = self.file.readinto(out)
        self.file.seek(here)
        if got != lazy.n:
            _refuse(f"a truncated file (wanted {lazy.n} bytes, got {got})")

    # --- stack and containers --------------------------------------------------------------------
    def grow(self):
        """Charge stack/mark slots beyond the peak so far (what the two lists hold at most: a
        slot, and for a mark the int it stores)."""
        if len(self.stack) + len(self.marks) > self.peak:
            self.peak = len(self.stack) + len(self.marks)
            self.budget.charge(SLOT + OBJECT, "a stack slot")

    def push(self, x):
        self.stack.append(x)
        self.grow()

    def pop(self):
        if not self.stack:
            _refuse("an operation on an empty stack")
        return self.stack.pop()

    def pop_mark(self):
        if not self.marks:
            _refuse("a stack operation without MARK")
        k = self.marks.pop()
        items, self.stack[k:] = self.stack[k:], []
        return items

    def weight(self, x):
        """(bytes a copy of `x` takes when every shared reference is copied, nesting depth below it):
        an array its data and header, a container its header, slots and items, anything else OBJECT."""
        if isinstance(x, np.ndarray):
            return x.nbytes + ARRAY_HEADER, 0
        rec = self.containers.get(id(x))
        if rec is not None and rec.obj is x:
            return rec.size, rec.depth
        if type(x) is tuple and x:  # a tuple of scalars, not registered (see new)
            return limits.TUPLE + (SLOT + OBJECT) * len(x), 1
        return OBJECT, 0

    def add(self, rec, items):
        """Account `items` (resolved) going into the container of `rec`."""
        for x in items:
            if x is rec.obj:
                _refuse(f"a {type(x).__name__} containing itself")
            size, depth = self.weight(x)
            rec.size += SLOT + size
            rec.depth = max(rec.depth, depth + 1)
        if rec.depth > self.max_depth:
            _refuse(f"containers nested more than {self.max_depth} deep")
        if rec.size > self.budget.limit:
            _refuse(f"a {type(rec.obj).__name__} that expands to {rec.size} bytes when its shared references are "
                    f"copied (a copy, JSON or np.asarray does that; the limit is {self.budget.limit}, the byte budget)")
        self.budget.charge(SLOT * len(items), f"{len(items)} more items")

    def new(self, obj, items=()):
        """Register the container `obj` built from `items` (already resolved) and return it.  A
        tuple of scalars (an array's shape, say) is not registered: its weight follows from its
        length, and it is charged only its own size."""
        if type(obj) is tuple and all(self.weight(x) == (OBJECT, 0) and not isinstance(x, (_Lazy, _Global))
                                      for x in items):
            self.budget.charge(limits.TUPLE + SLOT * len(items), "a tuple")
            return obj
        rec = self.containers[id(obj)] = _Container(obj)
        self.budget.charge(CONTAINER, f"a {type(obj).__name__}")
        self.add(rec, items)
        if isinstance(obj, tuple) and any(isinstance(i, (_Lazy, _Global)) or id(i) in self.args_only for i in items):
            self.args_only.add(id(obj))
        return obj

    def target(self, kind):
        """The container on top of the stack that items are added to."""
        t = self.stack[-1] if self.stack else None
        rec = self.containers.get(id(t))
        if type(t) is not kind or rec is None or rec.obj is not t:
            _refuse(f"adding items to {_short(t)} (expected a {kind.__name__} made by the file)")
        if rec.sealed:
            _refuse(f"changing a {kind.__name__} after it was put inside another object "
                    "(shared references filled in later, or a cycle)")
        return rec

    def resolve(self, x, in_tuple=False):
        """The value a stack entry stands for, sealed.  Globals and not-yet-read array data may
        only sit in a tuple (the arguments of a REDUCE or the state of a BUILD)."""
        if isinstance(x, _Pending):
            if x.value is None:
                if x.spec is None:
                    _refuse("an array used before its state (BUILD) was given")
                x.value = self.dtype(x.spec)
            return x.value
        if not in_tuple and (isinstance(x, (_Global, _Lazy)) or id(x) in self.args_only):
            _refuse(f"{_short(x)} used as a value" if isinstance(x, _Global) else "a global, a bytearray or "
                    f"bytes of {LAZY_MIN} bytes or more outside array data and calls (feature files hold such "
                    "values only as NumPy array data)")
        rec = self.containers.get(id(x))
        if rec is not None and rec.obj is x:
            rec.sealed = True
        return x

    def resolved(self, items, in_tuple=False):
        return [self.resolve(x, in_tuple) for x in items]

    # --- the machine -------------------------------------------------------------------------------
    def _load(self):
        while True:
            op = self.file.read(1)
            if not op:
                _refuse("a truncated file (no STOP opcode)")
            self.pos += 1
            self.ops += 1
            if self.ops > self.max_ops:
                _refuse(f"more than {self.max_ops} opcodes (the limit for a file of {self.size} bytes: "
                        f"{limits.OPS_FLOOR} + one per {limits.BYTES_PER_OP} bytes; NumPy/MMSA pickles need far "
                        f"fewer; raise it with ${limits.ENV_MAX_OPS} for a trusted file)")
            if op == b".":
                return self.resolve(self.pop())
            handler = self.dispatch.get(op[0])
            if handler is None:
                _refuse(f"the opcode {_OPNAMES.get(op[0], repr(op))} (feature files written by Python 3 with "
                        "protocols 2-5 do not use it)")
            handler(self)

    dispatch = {}

    # --- opcode handlers: op_<NAME> handles pickle.<NAME> (the dispatch table is built from them) ----
    def op_proto(self):
        if self.pos != 1:
            _refuse("a PROTO opcode after the first (picklers write one, first)")
        if not 2 <= self.read(1)[0] <= 5:
            _refuse("a pickle protocol other than 2-5 (what feature files use)")

    def op_frame(self):
        """A frame's length; its opcodes follow inline.  Picklers write frames of at least 4 bytes,
        each after the previous one ended (CPython's unpickler refuses the second too)."""
        at, n = self.pos - 1, self.read_struct("<Q")
        if at < self.frame_end or n < 4:
            _refuse(f"a FRAME of {n} bytes{' inside the previous frame' if at < self.frame_end else ''} (picklers "
                    "write frames of 4 bytes or more, each after the previous one ended)")
        self.frame_end = self.pos + n

    def op_mark(self):
        if len(self.marks) >= limits.MAX_OPEN_MARKS:
            _refuse(f"more than {limits.MAX_OPEN_MARKS} open MARKs (each stands for an unfinished container; "
                    f"feature files nest at most {limits.MAX_DEPTH} deep)")
        self.marks.append(len(self.stack))
        self.grow()

    def number(self, x):
        self.budget.charge(OBJECT, "a number")
        self.push(x)

    def unicode(self, n):
        self.budget.charge(n + 80, "a string")  # a str takes at most 1 byte per UTF-8 byte, plus its header
        self.push(str(self.read(n), "utf-8", "surrogatepass"))

    def op_bytearray8(self):
        data = self.read_bytes(self.read_struct("<Q"))
        self.push(data if isinstance(data, _Lazy) else _Lazy(None, len(data), data))

    def op_tuple(self):
        self.tuple_n(len(self.stack) - self.marks[-1] if self.marks else -1, mark=True)

    def tuple_n(self, n, mark=False):
        if n < 0 or n > len(self.stack):
            _refuse("a TUPLE without MARK, or with fewer items on the stack than it takes")
        items = self.resolved(self.stack[len(self.stack) - n:], in_tuple=True)
        del self.stack[len(self.stack) - n:]
        if mark:
            self.marks.pop()
        self.push(self.new(tuple(items), items))

    def op_append(self):
        x = self.resolve(self.pop())
        rec = self.target(list)
        self.add(rec, [x])
        rec.obj.append(x)

    def op_appends(self):
        items = self.resolved(self.pop_mark())
        rec = self.target(list)
        self.add(rec, items)
        rec.obj.extend(items)

    def set_items(self, items):
        if len(items) % 2:
            _refuse("SETITEMS with an odd number of items")
        rec = self.target(dict)
        for k in items[::2]:
            if type(k) is not str:
                _refuse(f"a dict key {_short(k)} (feature files have str keys)")
        self.add(rec, items)
        rec.obj.update(zip(items[::2], items[1::2]))

    def op_setitem(self):
        v = self.resolve(self.pop())
        self.set_items([self.resolve(self.pop()), v])

    def op_setitems(self):
        self.set_items(self.resolved(self.pop_mark()))

    def memo_put(self, i):
        """Python's picklers number memo entries 0, 1, 2, ...: the memo is a list."""
        if not self.stack or i > len(self.memo):
            _refuse(f"memo entry {i} stored on an empty stack or before entry {len(self.memo)}")
        if i == len(self.memo):
            self.budget.charge(SLOT, "a memo entry")
            self.memo.append(None)
        self.memo[i] = self.stack[-1]

    def memo_get(self, i):
        if not 0 <= i < len(self.memo):
            _refuse(f"a reference to memo entry {i}, which was never stored")
        self.push(self.memo[i])

    op_none = lambda self: self.push(None)
    op_newtrue = lambda self: self.push(True)
    op_newfalse = lambda self: self.push(False)
    op_binint = lambda self: self.number(self.read_struct("<i"))
    op_binint1 = lambda self: self.push(self.read(1)[0])  # 0-255: CPython's cached ints
    op_binint2 = lambda self: self.number(self.read_struct("<H"))
    op_long1 = lambda self: self.number(int.from_bytes(self.read(self.read(1)[0]), "little", signed=True))
    op_binfloat = lambda self: self.number(self.read_struct(">d"))
    op_short_binunicode = lambda self: self.unicode(self.read(1)[0])
    op_binunicode = lambda self: self.unicode(self.read_struct("<I"))
    op_binunicode8 = lambda self: self.unicode(self.read_struct("<Q"))
    op_short_binbytes = lambda self: self.push(self.read(self.read(1)[0]))
    op_binbytes = lambda self: self.push(self.read_bytes(self.read_struct("<I")))
    op_binbytes8 = lambda self: self.push(self.read_bytes(self.read_struct("<Q")))
    op_empty_tuple = lambda self: self.push(())
    op_tuple1 = lambda self: self.tuple_n(1)
    op_tuple2 = lambda self: self.tuple_n(2)
    op_tuple3 = lambda self: self.tuple_n(3)
    op_empty_list = lambda self: self.push(self.new([]))
    op_empty_dict = lambda self: self.push(self.new({}))
    op_binput = lambda self: self.memo_put(self.read(1)[0])
    op_long_binput = lambda self: self.memo_put(self.read_struct("<I"))
    op_memoize = lambda self: self.memo_put(len(self.memo))
    op_binget = lambda self: self.memo_get(self.read(1)[0])
    op_long_binget = lambda self: self.memo_get(self.read_struct("<I"))

    def find_global(self, module, name):
        kind = ALLOWED_GLOBALS.get((module, name))
        if kind is None:
            raise MMINDataError(
                f"{self.source}: refusing to unpickle '{module[:100]}.{name[:100]}': a feature file may only "
                "hold NumPy arrays/dtypes/scalars and builtin containers; nothing from this file was executed "
                "(is it a crafted or non-MMSA pickle?)")
        self.push(_Global(kind, f"{module}.{name}"))

    def op_global(self):
        module, name = (self.readline().decode("utf-8") for _ in range(2))
        self.find_global(module, name)

    def readline(self):
        line = self.file.readline(256)  # module and class names: a longer line is not an allowed one
        self.pos += len(line)
        self.budget.charge(len(line), "a text line")
        if not line.endswith(b"\n"):
            _refuse("an unterminated or over-long GLOBAL name")
        return line[:-1]

    def op_stack_global(self):
        name, module = self.pop(), self.pop()
        if type(module) is not str or type(name) is not str:
            _refuse("STACK_GLOBAL with non-str names")
        self.find_global(module, name)

    def op_reduce(self):
        args = self.resolve(self.pop(), in_tuple=True)
        fn = self.pop()
        if not isinstance(fn, _Global):
            _refuse(f"calling {_short(fn)} (only allowed globals can be called)")
        if type(args) is not tuple:
            _refuse(f"arguments {_short(args)} for '{fn.qualname}' (expected a tuple)")
        call = getattr(self, "call_" + fn.kind)
        nargs = {"reconstruct": (3,), "scalar": (1, 2), "frombuffer": (4, 5), "ndarray": range(99),
                 "dtype": (1, 2, 3), "encode": (2,), "bytes": (0,)}[fn.kind]
        if len(args) not in nargs:
            _refuse(f"'{fn.qualname}' called with {len(args)} arguments (expected {' or '.join(map(str, nargs))})")
        self.plain(args[fn.kind in ("frombuffer", "reconstruct"):], f"an argument of '{fn.qualname}'")
        self.push(call(*args))

    def plain(self, items, what):
        """Refuse globals and array data in `items` (they may only be the first argument of
        _reconstruct / _frombuffer, or the data of an array's state)."""
        for x in items:
            if isinstance(x, (_Global, _Lazy)) or id(x) in self.args_only:
                _refuse(f"a global, a bytearray or bytes of {LAZY_MIN} bytes or more as {what} (only "
                        "_reconstruct takes numpy.ndarray, and only arrays take such data)")

    def op_build(self):
        state = self.resolve(self.pop(), in_tuple=True)
        inst = self.stack[-1] if self.stack else None
        if not isinstance(inst, _Pending) or inst.value is not None:
            _refuse(f"BUILD (setting state) on {_short(inst)}: only arrays and dtypes the loader "
                    "itself rebuilds take a state")
        if type(state) is tuple:
            self.plain(state if inst.spec is not None else state[:4], "an array's or dtype's state")
        if inst.spec is not None:
            inst.value = self.dtype_from_state(inst.spec, state)
        else:
            inst.value = self.array_from_state(state)

    # --- the globals ---------------------------------------------------------------------------------
    def call_dtype(self, spec, *flags):
        if any(f not in (0, 1) for f in flags):  # align, copy
            _refuse(f"numpy.dtype flags {', '.join(_short(f) for f in flags)}")
        self.dtype(spec if type(spec) is not str or spec[:1] not in "US" else spec[:1] + "1")  # the kind, early
        return _Pending(spec)

    def dtype(self, spec, byteorder="=", elsize=-1):
        """The dtype a (spec, byteorder, elsize) triple describes, made by NumPy from a string."""
        if type(spec) is not str or not _SPEC_RE.match(spec):
            _refuse(f"dtype {_short(spec)}: only bool, int8-64, uint8-64, float16/32/64, complex64/128, "
                    "fixed-size unicode/bytes (and object arrays of str) are accepted")
        if byteorder not in ("<", ">", "|", "="):
            _refuse(f"dtype byte order {_short(byteorder)}: expected one of '<', '>', '|', '='")
        if not _is_int(elsize):
            _refuse(f"dtype item size {_short(elsize)}")
        if spec[0] == "O":
            return np.dtype(object)
        if spec[0] in "US":
            unit = 4 if spec[0] == "U" else 1
            n = int(spec[1:]) if len(spec) > 1 else None
            if elsize >= 0:
                if elsize % unit or (n is not None and n * unit != elsize):
                    _refuse(f"dtype '{spec}' with item size {elsize}: inconsistent")
                n = elsize // unit
            if n is None:
                _refuse(f"dtype '{spec}': a fixed-size string dtype needs a size")
            spec = f"{spec[0]}{n}"
        dt = np.dtype(spec)
        if spec[0] not in "US" and elsize not in (-1, dt.itemsize):
            _refuse(f"dtype '{spec}' with item size {elsize}")
        if dt.itemsize > 1 and byteorder in "<>":
            dt = dt.newbyteorder(byteorder)
        return check_dtype(dt)

    def dtype_from_state(self, spec, state):
        """numpy's dtype state ``(3, byteorder, subdescr, names, fields, elsize, alignment, flags[,
        metadata])``: fields/sub-arrays/metadata refused, flags ignored (NumPy's own are used)."""
        if type(state) is not tuple or len(state) not in (8, 9) or state[0] not in (3, 4):
            _refuse(f"a dtype state {_short(state)} (expected numpy's version-3 tuple of 8 items)")
        if state[2:5] != (None, None, None) or state[8:] not in ((), (None,)):
            _refuse(f"a structured or sub-array dtype '{spec}' (fields, names, sub-arrays and metadata are "
                    "not accepted in feature files)")
        return self.dtype(spec, state[1], state[5])

    def call_reconstruct(self, cls, shape, code):
        if not (isinstance(cls, _Global) and cls.kind == "ndarray") or code not in (b"b", "b"):
            _refuse(f"_reconstruct of {_short(cls)} with {_short(code)} (only numpy.ndarray, b'b')")
        return _Pending()

    def call_ndarray(self, *args):
        _refuse("calling numpy.ndarray(...) (buffer=/strides= forms can alias memory or claim huge shapes; "
                "arrays are only rebuilt from their data)")

    def call_encode(self, s, encoding):
        if type(s) is not str or type(encoding) is not str or encoding.lower() not in _LATIN1:
            _refuse(f"_codecs.encode with {_short(encoding)} (only encoding a str as 'latin1', which is how "
                    "protocol 2 stores bytes, is accepted)")
        self.budget.charge(len(s) + 33, "bytes")
        return s.encode("latin1")

    def call_bytes(self):
        return b""

    def call_scalar(self, dtype, data=None):
        if not isinstance(dtype, np.dtype) or dtype.kind == "O":
            _refuse(f"a NumPy scalar of dtype {_short(dtype)}")
        data = b"\x00" * dtype.itemsize if data is None else data
        if type(data) is not bytes or len(data) != dtype.itemsize:
            _refuse(f"scalar data {_short(data)} for dtype {dtype} (expected {dtype.itemsize} bytes)")
        return check_unicode(np.frombuffer(data, dtype=dtype))[0]

    def call_frombuffer(self, data, dtype, shape, order, axis_order=None):
        """NumPy's ``_frombuffer``: C/F order, or 'K' with the axis permutation of the original."""
        if order not in ("C", "F", "K") or (order == "K") != (axis_order is not None):
            _refuse(f"_frombuffer order {_short(order)} with axis order {_short(axis_order)}")
        out = self.array(data, dtype, shape, order == "F")
        if order == "K":
            if type(axis_order) is not tuple or sorted(axis_order) != list(range(out.ndim)):
                _refuse(f"_frombuffer axis order {_short(axis_order)} (expected a permutation of 0..{out.ndim - 1})")
            out = out.transpose(axis_order)
        return out

    def array_from_state(self, state):
        if type(state) is not tuple or len(state) != 5 or state[0] != 1 or not _is_int(state[0]):
            _refuse(f"an array state {_short(state)} (expected (1, shape, dtype, fortran, data))")
        _, shape, dtype, fortran, data = state
        if fortran not in (0, 1):
            _refuse(f"an array order flag {_short(fortran)}")
        if isinstance(dtype, np.dtype) and dtype.kind == "O":
            return self.array_of_str(data, shape, bool(fortran))
        return self.array(data, dtype, shape, bool(fortran))

    def shape(self, shape, itemsize):
        if type(shape) is not tuple or len(shape) > limits.MAX_NDIM or not all(_is_int(s) and s >= 0 for s in shape):
            _refuse(f"an array shape {_short(shape)} (expected up to {limits.MAX_NDIM} non-negative ints)")
        return limits.check_shape(shape, itemsize, self.budget.limit)

    def array(self, data, dtype, shape, fortran):
        """ndarray(shape, dtype) made here and filled from `data` (exactly prod(shape)*itemsize bytes)."""
        if not isinstance(dtype, np.dtype) or dtype.kind == "O":
            _refuse(f"array dtype {_short(dtype)}")
        n = self.shape(shape, dtype.itemsize)
        if not isinstance(data, (bytes, _Lazy)):
            _refuse(f"array data {_short(data)} (expected bytes)")
        want, have = n * dtype.itemsize, data.n if isinstance(data, _Lazy) else len(data)
        if have != want:
            _refuse(f"array data of {have} bytes for shape {shape} and dtype {dtype} (expected exactly {want})")
        self.budget.charge(want + ARRAY_HEADER, f"an array of shape {shape}")
        out = np.empty(n, dtype=dtype)  # fresh, C-contiguous, writeable
        if isinstance(data, _Lazy) and data.data is not None:
            data = data.data
        if isinstance(data, _Lazy):
            self.read_into(data, memoryview(out.view(np.uint8)))
        elif want:
            out.view(np.uint8)[:] = np.frombuffer(data, dtype=np.uint8)
        return check_unicode(out).reshape(shape, order="F" if fortran else "C")

    def array_of_str(self, items, shape, fortran):
        """An object array of str: numpy writes the items as a list in C order.  Items may be str or
        NumPy str scalars (``np.array(list(u_array), dtype=object)`` holds those); both load as str."""
        n = self.shape(shape, 8)
        if type(items) is not list or len(items) != n or not all(type(x) in (str, np.str_) for x in items):
            _refuse(f"object-array data {_short(items)} for shape {shape} (expected a list of {n} str)")
        self.budget.charge(sum(4 * len(x) + 80 for x in items if type(x) is np.str_), "str copies of str scalars")
        items = [str(x) if type(x) is np.str_ else x for x in items]
        self.budget.charge(8 * n + ARRAY_HEADER, f"an object array of shape {shape}")
        out = np.empty(n, dtype=object)
        out[:] = items
        out = out.reshape(shape)
        return np.asfortranarray(out) if fortran and out.ndim > 1 else out


# One dispatch table, as in CPython's pickle.py: opcode byte -> handler (op_<name> handles pickle.<NAME>).
SafeUnpickler.dispatch = {getattr(pickle, name[3:].upper())[0]: fn for name, fn in vars(SafeUnpickler).items()
                          if name.startswith("op_")}
_OPNAMES = {v[0]: k for k, v in vars(pickle).items() if k.isupper() and isinstance(v, bytes) and len(v) == 1}
