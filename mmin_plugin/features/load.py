"""Loading a feature file: the two readers, the parse cache, the per-file fix-ups, the facade.

:func:`safe_load` reads a pickle with :class:`~mmin_plugin.features.unpickle.SafeUnpickler` or a
file of the pickle-free format (:mod:`~mmin_plugin.features.safeformat`, recognised by its first
bytes).  :data:`SafePickle` is a module-like drop-in for ``pickle``, installed as the ``pickle`` of
``MMSA.data_loader`` and ``MMSA.run`` by the registry.

* **Fix-ups**: a pre-run check records a :class:`FixUp` for a file (:func:`set_fixup`, keyed by the
  file's device, inode, mtime and size); every later load of that file applies it, cache on or off.
* **Cache**: MMSA's ``MMDataLoader`` unpickles the whole file once per split, so the parsed (and
  fixed-up) data of the :data:`CACHE_MAX_ENTRIES` most recent files is kept, keyed by
  ``(file identity, fix-up)``, until :func:`clear_cache`.  It is a pure speed-up: cached arrays are
  read-only and every load gets fresh dicts/lists/tuples around them, so no caller can change what a
  later load returns.  The copy keeps shared references shared (memoised, as ``copy.deepcopy`` is)
  and is charged to the file's byte budget, on top of what the parse was charged.
  Only loads from offset 0 of a regular file use it; after a hit the file
  position is moved to where the pickle ended.  :func:`set_cache_enabled` turns it off.
"""
from __future__ import annotations

import io
import os
import pickle
import stat
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..atomic import atomic_write
from ..errors import MMINDataError
from . import safeformat
from .lengths import check_lengths
from .limits import CONTAINER, SLOT, Budget, Refused
from .unpickle import SafeUnpickler
from .validation import sanitize_features

__all__ = ["FixUp", "SafePickle", "safe_load", "safe_loads", "convert_file", "set_fixup", "clear_fixups",
           "clear_cache", "cache_info", "set_cache_enabled", "CACHE_MAX_ENTRIES"]


@dataclass(frozen=True)
class FixUp:
    """What the loader repairs in one file: ``nonfinite`` -- NaN/+inf/-inf in audio/vision float
    arrays become 0 (:func:`~mmin_plugin.features.validation.sanitize_features`); ``lengths`` --
    for these keys (``'audio'``, ``'vision'``) each sequence's non-zero span is moved to the front
    and its length recomputed (``lengths_from: nonzero``, :mod:`~mmin_plugin.features.lengths`).
    Non-finite values are repaired first, so a NaN frame is not counted as signal."""

    nonfinite: bool = True
    lengths: tuple = ()

    def apply(self, data, path, warn=True, budget=None):
        """`data` repaired, without changing `data` or its arrays (changed arrays are copies); the new
        containers are charged to `budget` (see :func:`_fresh`)."""
        data = _fresh(data, budget, path)
        if self.nonfinite:
            sanitize_features(data, path, warn=warn)
        if self.lengths:
            check_lengths(data, path, "nonzero", keys=self.lengths, warn=warn)
        return data


def _fresh(obj, budget=None, source="<stream>", memo=None):
    """`obj` with new dicts/lists/tuples around the same arrays and scalars.  A container met twice is
    copied once and shared again (memoised by id, as ``copy.deepcopy`` does), so a file of shared
    references costs what its parse cost, not what it expands to; each new container is charged
    ``CONTAINER + SLOT * len`` to `budget` (a :class:`~mmin_plugin.features.limits.Budget`) first."""
    if memo is None:
        memo = {}
        try:
            return _fresh(obj, budget, source, memo)
        except Refused as e:
            raise MMINDataError(f"{source}: refusing to load this feature file: its copy (the parse cache hands "
                                f"out new containers): {e}") from None
    if not isinstance(obj, (dict, list, tuple)):
        return obj
    done = memo.get(id(obj))
    if done is not None:
        return done[1]
    if budget is not None:
        budget.charge(CONTAINER + SLOT * len(obj), f"a copied {type(obj).__name__} of length {len(obj)}")
    if isinstance(obj, dict):
        new = {k: _fresh(v, budget, source, memo) for k, v in obj.items()}
    elif isinstance(obj, list):
        new = [_fresh(v, budget, source, memo) for v in obj]
    else:
        new = tuple(_fresh(v, budget, source, memo) for v in obj)
    memo[id(obj)] = (obj, new)  # the original is kept alive with its id
    return new


def _freeze(obj, seen=None):
    """Make every array in `obj` read-only (each container visited once); returns `obj`."""
    seen = set() if seen is None else seen
    if isinstance(obj, np.ndarray):
        obj.flags.writeable = False
    elif isinstance(obj, (dict, list, tuple)) and id(obj) not in seen:
        seen.add(id(obj))
        for v in obj.values() if isinstance(obj, dict) else obj:
            _freeze(v, seen)
    return obj


def _describe(source) -> str:
    name = source if isinstance(source, (str, bytes, os.PathLike)) else getattr(source, "name", None)
    return os.fsdecode(name) if isinstance(name, (str, bytes, os.PathLike)) else "<stream>"


def _parse(file, source, max_bytes=None):
    """One reader run on `file` (either format): (the object, its :class:`Budget` with what the run
    was charged); MMINDataError on any failure."""
    if safeformat.is_safe_format(file):
        budget = []
        return safeformat.load_safe(file, source=source, max_bytes=max_bytes, budget_out=budget), budget[0]
    u = SafeUnpickler(file, source=source, max_bytes=max_bytes)
    return u.run(), u.budget


# --- fix-ups and cache ------------------------------------------------------------------------
#: How many parsed files the cache keeps (least recently used dropped first): a run's main
#: feature file plus MMSA's optional feature_T / feature_A / feature_V files.
CACHE_MAX_ENTRIES = 4
_lock = threading.RLock()
_cache: OrderedDict = OrderedDict()  # (identity, FixUp or None) -> (frozen object, end offset, Budget)
_fixups: dict = {}  # identity -> FixUp
_state = {"enabled": True, "hits": 0, "misses": 0}


def _identity(st) -> tuple:
    return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)


def set_fixup(path, fixup) -> None:
    """Record (``None``: forget) the :class:`FixUp` every later load of the file `path` applies."""
    try:
        key = _identity(os.stat(path))
    except OSError as e:
        raise MMINDataError(f"{os.fsdecode(path)}: expected a readable feature file; found {e.strerror or e}") from e
    with _lock:
        if fixup is None:
            _fixups.pop(key, None)
        else:
            _fixups[key] = fixup


def clear_fixups() -> None:
    """Forget every recorded fix-up."""
    with _lock:
        _fixups.clear()


def clear_cache() -> None:
    """Drop every cached parsed file (frees the memory) and reset the hit/miss counters."""
    with _lock:
        _cache.clear()
        _state["hits"] = _state["misses"] = 0


def cache_info() -> dict:
    """``{'enabled', 'entries', 'hits', 'misses', 'keys', 'fixups'}`` -- for tests and diagnostics."""
    with _lock:
        return {"enabled": _state["enabled"], "entries": len(_cache), "hits": _state["hits"],
                "misses": _state["misses"], "keys": list(_cache), "fixups": dict(_fixups)}


def set_cache_enabled(enabled: bool) -> None:
    """Turn the cache on or off (off also clears it)."""
    with _lock:
        _state["enabled"] = bool(enabled)
        if not enabled:
            _cache.clear()


def _file_identity(f):
    """Identity of an open regular file read from offset 0, else None."""
    try:
        if f.tell() != 0:
            return None
        st = os.fstat(f.fileno())
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return None
    return _identity(st) if stat.S_ISREG(st.st_mode) else None


def _load_file(f, source, max_bytes=None, warn=False):
    ident = _file_identity(f)
    fixup = _fixups.get(ident) if ident is not None else None
    use_cache = ident is not None and _state["enabled"]
    if use_cache:
        with _lock:
            for key in ((ident, fixup), (ident, None)):
                hit = _cache.get(key)
                if hit is not None:
                    break
            if hit is not None:
                _state["hits"] += 1
                _cache.move_to_end(key)
    else:
        hit, key = None, None
    if hit is not None and key[1] == fixup:
        obj, end, budget = hit
        try:
            f.seek(end)
        except (OSError, ValueError):
            pass
        return _fresh(obj, Budget(budget.limit, budget.used), source)
    if hit is not None:  # parsed before the fix-up was recorded: repair that, do not parse again
        obj, end, budget = hit
        f.seek(end)
    else:
        obj, budget = _parse(f, source, max_bytes)
        end = f.tell() if ident is not None else None
        if use_cache:
            with _lock:
                _state["misses"] += 1
    if fixup is not None:
        obj = fixup.apply(obj, source, warn=warn, budget=Budget(budget.limit, budget.used))
    if use_cache:
        with _lock:
            if fixup is not None:
                _cache.pop((ident, None), None)  # the file is read with its fix-up from now on: one copy
            _cache[(ident, fixup)] = (_freeze(obj), end, budget)
            _cache.move_to_end((ident, fixup))
            while len(_cache) > CACHE_MAX_ENTRIES:
                _cache.popitem(last=False)
        return _fresh(obj, Budget(budget.limit, budget.used), source)
    return obj


# --- public API ------------------------------------------------------------------------------
def safe_load(file_or_path, *, max_bytes=None, warn_fixups=False):
    """Load a feature file (a path or a binary file object), applying its recorded fix-up.

    Raises :class:`MMINDataError` (naming the file) for a missing/unreadable file and anything
    a reader refuses.  ``max_bytes`` overrides the byte budget
    (:func:`~mmin_plugin.features.limits.default_max_bytes`); ``warn_fixups`` makes the fix-up
    (when it is applied, i.e. not served from the cache) warn with its counts.
    """
    if isinstance(file_or_path, (str, bytes, os.PathLike)):
        source = os.fsdecode(file_or_path)
        try:
            f = open(file_or_path, "rb")
        except OSError as e:
            raise MMINDataError(f"{source}: expected a readable feature file; found {type(e).__name__}: "
                                f"{e.strerror or e}") from e
        with f:
            return _load_file(f, source, max_bytes, warn_fixups)
    if not hasattr(file_or_path, "read"):
        raise MMINDataError(f"safe_load: expected a path or a binary file object; found {type(file_or_path).__name__}")
    return _load_file(file_or_path, _describe(file_or_path), max_bytes, warn_fixups)


def safe_loads(data, source="<bytes>", *, max_bytes=None):
    """Load a feature file from bytes (no cache, no fix-up); see :func:`safe_load`."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise MMINDataError(f"{source}: expected pickled bytes; found {type(data).__name__}")
    return _parse(io.BytesIO(data), source, max_bytes)[0]


def convert_file(src, dst, *, max_bytes=None, check=True) -> dict:
    """Read the pickle (or safe file) `src` with the safe loader and write it to `dst` in the safe
    format, atomically.  Returns ``{'arrays': k, 'bytes': size of dst}``.

    Before the written file takes the name `dst` it is read back as :func:`safe_load` reads it
    (same ``max_bytes``, the cache's copy charged too): a file the loader would refuse, or one that
    would not load as exactly what `src` holds, is not written, and the loader's refusal is the
    message (``check=False``, for tests only, skips that)."""
    with open(src, "rb") as f:  # no cache, no fix-up: the file as it is
        obj = _parse(f, os.fspath(src), max_bytes)[0]
    out = {}

    def write(f):
        out["arrays"] = safeformat.dump_safe(obj, f, os.fspath(src))
        if check:
            f.flush()
            with open(f.name, "rb") as back:
                budget = []
                again = safeformat.load_safe(back, source=os.fspath(dst), max_bytes=max_bytes, budget_out=budget)
            _fresh(again, Budget(budget[0].limit, budget[0].used), os.fspath(dst))  # safe_load's copy, charged
            differs = _first_difference(obj, again, "")
            if differs is not None:
                raise MMINDataError(f"{os.fspath(src)}: convert: the converted file would not read back as the "
                                    f"original (at {differs or 'the top'}); nothing was written")

    try:
        atomic_write(dst, write)
    except MMINDataError as e:
        if str(e).startswith(os.fspath(src) + ":"):
            raise
        raise MMINDataError(f"{os.fspath(src)}: convert: nothing was written, because the converted file would be "
                            f"refused: {e}") from None
    out["bytes"] = Path(dst).stat().st_size
    return out


def _first_difference(a, b, where, seen=None):
    """Where `b` differs from `a` (same types, keys in order, array dtypes, shapes and bytes; NaN
    equals NaN), or None.  A pair of containers met again is not compared again."""
    seen = set() if seen is None else seen
    if isinstance(a, (dict, list, tuple)):
        if (id(a), id(b)) in seen:
            return None
        seen.add((id(a), id(b)))
    if type(a) is not type(b):
        return f"{where} ({type(a).__name__} became {type(b).__name__})"
    if isinstance(a, dict):
        if list(a) != list(b):
            return f"{where} (its keys)"
        return next((d for k in a if (d := _first_difference(a[k], b[k], f"{where}/{k}", seen)) is not None), None)
    if isinstance(a, (list, tuple)):
        if len(a) != len(b):
            return f"{where} (its length)"
        return next((d for i, (x, y) in enumerate(zip(a, b))
                     if (d := _first_difference(x, y, f"{where}[{i}]", seen)) is not None), None)
    if isinstance(a, np.ndarray):
        same = a.dtype == b.dtype and a.shape == b.shape and (
            a.tolist() == b.tolist() if a.dtype.kind == "O" else np.ascontiguousarray(a).tobytes() ==
            np.ascontiguousarray(b).tobytes())
        return None if same else f"{where} (the array)"
    if isinstance(a, np.generic):
        return None if a.dtype == b.dtype and a.tobytes() == b.tobytes() else f"{where} (the scalar)"
    return None if a == b or (a != a and b != b) else f"{where} (the value)"


class _Unpickler:
    """``pickle.Unpickler``'s shape over :func:`safe_load` (keyword options are ignored)."""

    def __init__(self, file, **_ignored):
        self._file = file

    def load(self):
        return safe_load(self._file)


class _SafePickleModule:
    """Module-like stand-in for :mod:`pickle`: safe ``load``/``loads``/``Unpickler``, plain dumping."""

    HIGHEST_PROTOCOL = pickle.HIGHEST_PROTOCOL
    DEFAULT_PROTOCOL = pickle.DEFAULT_PROTOCOL
    PickleError = pickle.PickleError
    PicklingError = pickle.PicklingError
    UnpicklingError = pickle.UnpicklingError
    Pickler = pickle.Pickler
    Unpickler = _Unpickler
    dump = staticmethod(pickle.dump)
    dumps = staticmethod(pickle.dumps)
    __name__ = "mmin_plugin.features.load.SafePickle"

    @staticmethod
    def load(file, **_ignored):
        """Like ``pickle.load(file)`` but safe (keyword options such as ``encoding`` are ignored)."""
        return safe_load(file)

    @staticmethod
    def loads(data, **_ignored):
        return safe_loads(data)

    @property
    def cache_enabled(self) -> bool:
        return _state["enabled"]

    @cache_enabled.setter
    def cache_enabled(self, value: bool) -> None:
        set_cache_enabled(value)

    clear_cache = staticmethod(clear_cache)
    cache_info = staticmethod(cache_info)

    def __repr__(self):
        return "<SafePickle: safe drop-in for the pickle module>"


#: Drop-in for the ``pickle`` module (e.g. ``MMSA.data_loader.pickle = SafePickle``).
SafePickle = _SafePickleModule()
