"""What one load of a feature file may cost, and which arrays it may hold (both readers).

* **Byte budget** (:func:`default_max_bytes`): ``4 * file size + 64 MiB`` unless
  ``$MMIN_SAFELOAD_MAX_BYTES`` or ``max_bytes=`` says otherwise.  Every object a reader makes is
  charged to a :class:`Budget` *before* it is allocated.
  Containers are also charged what copying them would materialise with every shared reference
  copied (:data:`CONTAINER`, :data:`SLOT`, :data:`OBJECT` per element, the data of each array), so
  a consumer that does not keep the sharing (JSON, ``np.asarray``) stays within the budget too.
* **Shapes** (:func:`check_shape`): an array's data is within the budget, and so is the product of
  its non-zero dimensions (a (n, 0, 2**26) array holds no bytes, but a mean over its empty axis
  allocates n * 2**26 values).
* **Time**: at most :func:`max_opcodes` pickle opcodes (``OPS_FLOOR + file size / BYTES_PER_OP``
  unless ``$MMIN_SAFELOAD_MAX_OPS`` says otherwise),
  at most :data:`MAX_OPEN_MARKS` open MARKs; a zip directory at most one entry per
  :data:`ZIP_ENTRY_MIN` bytes, each charged :data:`ZIP_ENTRY` before ``zipfile`` builds it.
* **Depth**: containers nested at most :data:`MAX_DEPTH` deep (an MMSA file has depth 2).
* **Dtypes** (:func:`check_dtype`): bool, int8-64, uint8-64, float16/32/64, complex64/128 and
  fixed-size unicode/bytes, no fields or sub-arrays; float128/longdouble are refused (their
  layout is platform-dependent).  Object arrays are a separate, reader-specific case (str only).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from ..errors import MMINDataError

__all__ = ["ENV_MAX_BYTES", "ENV_MAX_OPS", "MAX_DEPTH", "MAX_NDIM", "SLOT", "OBJECT", "CONTAINER", "TUPLE",
           "ARRAY_HEADER", "OPS_FLOOR", "BYTES_PER_OP", "MAX_OPEN_MARKS", "ZIP_ENTRY", "ZIP_ENTRY_MIN", "Budget",
           "Refused", "CHUNK_ELEMENTS", "default_max_bytes", "max_opcodes", "check_dtype", "check_shape",
           "check_unicode"]

#: Environment variable: the most bytes one load may materialise (overrides the default).
ENV_MAX_BYTES = "MMIN_SAFELOAD_MAX_BYTES"
#: Environment variable: the most pickle opcodes one load may run (overrides :func:`max_opcodes`).
ENV_MAX_OPS = "MMIN_SAFELOAD_MAX_OPS"
#: Deepest container nesting accepted (an MMSA file is a dict of dicts of arrays: depth 2).
MAX_DEPTH = 64
#: Most array dimensions (NumPy's own limit is 64; feature arrays have at most 3).
MAX_NDIM = 32
#: Bytes charged per reference held (a list/tuple/stack/memo slot, CPython 3.11: 8 bytes).
SLOT = 8
#: Bytes charged per small object made (an int or a float: 24-32 bytes).
OBJECT = 32
#: Bytes charged per container made: its header (tuple 40-56, list 56, dict 64) plus the
#: reader's bookkeeping entry for it (about 100 bytes).
CONTAINER = 160
#: Bytes charged per tuple of scalars, besides its slots (its header; not tracked by the reader).
TUPLE = 40
#: Bytes charged per ndarray on top of its data (the object header NumPy allocates).
ARRAY_HEADER = 112
#: Opcodes any pickle may use: a 7 MB MMSA file holding its labels and ids as Python lists of
#: 300k entries in all uses about 0.9M (one per float, two per id); at 3-12 us an opcode (an idle
#: or a busy core) the floor costs 3-12 s at most.
OPS_FLOOR = 1_000_000
#: File bytes per opcode beyond the floor: a NumPy/MMSA pickle's size is its array data (MOSI:
#: ~160 KB per sample, a few opcodes per sample), so a legitimate file stays far below this.
BYTES_PER_OP = 32
#: Open MARKs at once: each stands for an unfinished tuple, list or dict, so a pickle of objects
#: nested at most MAX_DEPTH deep never has more open.
MAX_OPEN_MARKS = 3 * MAX_DEPTH
#: Bytes charged per zip directory entry before ``zipfile`` reads it (a ZipInfo with its name:
#: ~450 bytes measured, plus the dict entry of its name).
ZIP_ENTRY = 600
#: Fewest file bytes per zip entry accepted: a member ``convert`` or ``torch.save`` writes takes
#: more than this (local header, central record, name, data); a central record alone is 46.
ZIP_ENTRY_MIN = 128
_FACTOR, _FLOOR = 4, 64 << 20
_KINDS = "biufcUS"
#: Array elements per chunk of the value scans (bounded temporary memory: ~4 M elements).
CHUNK_ELEMENTS = 1 << 22
#: Largest fixed-size string dtype accepted (characters or bytes).
MAX_STR_ITEMS = 1 << 24


class Refused(Exception):
    """What a reader refuses; the reader turns it into :class:`MMINDataError` naming the file."""


def _env_int(name, unit):
    env = os.environ.get(name, "").strip()
    if not env:
        return None
    try:
        v = int(env)
    except ValueError:
        raise MMINDataError(f"${name}: expected an integer number of {unit}; found {env!r}") from None
    if v < 1:
        raise MMINDataError(f"${name}: expected a positive number of {unit}; found {v}")
    return v


def default_max_bytes(file_size) -> int:
    """The byte budget of one load: ``$MMIN_SAFELOAD_MAX_BYTES`` if set, else
    ``4 * file_size + 64 MiB`` (``64 MiB`` when the size is unknown)."""
    v = _env_int(ENV_MAX_BYTES, "bytes")
    return v if v is not None else _FACTOR * int(file_size or 0) + _FLOOR


@dataclass
class Budget:
    """Bytes one load may still materialise: ``used`` grows by :meth:`charge` up to ``limit``."""

    limit: int
    used: int = 0

    def charge(self, n: int, what: str) -> None:
        self.used += int(n)
        if self.used > self.limit:
            raise Refused(f"{what} would take the memory materialised past {self.limit} bytes "
                          f"(the limit: 4x the file size + 64 MiB; raise it with ${ENV_MAX_BYTES} or "
                          "max_bytes= for a trusted file)")


def max_opcodes(file_size) -> int:
    """The most pickle opcodes one load may run: ``$MMIN_SAFELOAD_MAX_OPS`` if set, else
    :data:`OPS_FLOOR` + ``file_size // BYTES_PER_OP`` (the floor alone for a stream of unknown
    size).  A trusted file of many tiny objects (100k two-element arrays: 2.2M opcodes in 3.8 MB)
    needs the override."""
    v = _env_int(ENV_MAX_OPS, "opcodes")
    return v if v is not None else OPS_FLOOR + int(file_size or 0) // BYTES_PER_OP


def check_shape(shape, itemsize: int, limit: int) -> int:
    """``prod(shape)``, after checking that neither the array's data nor the product of its non-zero
    dimensions times `itemsize` passes `limit` bytes (else :class:`Refused`).  The second rule
    refuses zero-size giants such as (n, 0, 2**26): they hold nothing, but a reduction over the
    empty axis (MMSA's normalisation) allocates the product of the others."""
    n, nonzero = 1, 1
    for s in shape:
        n *= s
        nonzero *= max(s, 1)
    if nonzero * max(itemsize, 1) > limit:
        what = "its data" if n else "the product of its non-zero dimensions"
        raise Refused(f"an array of shape {tuple(shape)}: {what} would take {nonzero * max(itemsize, 1)} bytes "
                      f"(the limit is {limit}, the byte budget)")
    return n


def check_dtype(dt: np.dtype) -> np.dtype:
    """`dt` if arrays of it may be loaded (see the module docstring), else :class:`Refused`."""
    if (dt.kind not in _KINDS or dt.fields is not None or dt.subdtype is not None or dt.itemsize == 0
            or (dt.kind in "fc" and dt.itemsize > 16) or (dt.kind == "f" and dt.itemsize > 8)
            or (dt.kind in "US" and dt.itemsize // (4 if dt.kind == "U" else 1) > MAX_STR_ITEMS)):
        raise Refused(f"array dtype {dt}: only bool, int8-64, uint8-64, float16/32/64, complex64/128 and "
                      "fixed-size unicode/bytes are accepted")
    return dt


def check_unicode(a: np.ndarray) -> np.ndarray:
    """`a` if it is not a '<U' array or all its code points are valid (<= 0x10FFFF), else
    :class:`Refused` (NumPy stores UCS4 unchecked; ``repr``/``tolist`` then raise SystemError)."""
    if a.dtype.kind == "U" and a.size:
        cp = np.ascontiguousarray(a).reshape(-1).view(np.dtype("u4").newbyteorder(a.dtype.byteorder))
        if int(cp.max()) > 0x10FFFF:
            raise Refused(f"a {a.dtype} array holding a code point above 0x10FFFF (not valid unicode)")
    return a
