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
  later load returns.  Only loads from offset 0 of a regular file use it; after a hit the file
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

    def apply(self, data, path, warn=True):
        """`data` repaired, without changing `data` or its arrays (changed arrays are copies)."""
        data = _fresh(data)
        if self.nonfinite:
            sanitize_features(data, path, warn=warn)
        if self.lengths:
            check_lengths(data, path, "nonzero", keys=self.lengths, warn=warn)
        return data


def _fresh(obj):
    """`obj` with new dicts/lists/tuples around the same arrays and scalars."""
    if isinstance(obj, dict):
        return {k: _fresh(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_fresh(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_fresh(v) for v in obj)
    return obj


def _freeze(obj):
    """Make every array in `obj` read-only; returns `obj`."""
    if isinstance(obj, np.ndarray):
        obj.flags.writeable = False
    elif isinstance(obj, (dict, list, tuple)):
        for v in obj.values() if isinstance(obj, dict) else obj:
            _freeze(v)
    return obj


def _describe(source) -> str:
    name = source if isinstance(source, (str, bytes, os.PathLike)) else getattr(source, "name", None)
    return os.fsdecode(name) if isinstance(name, (str, bytes, os.PathLike)) else "<stream>"


def _parse(file, source, max_bytes=None):
    """One reader run on `file` (either format); MMINDataError on any failure."""
    if safeformat.is_safe_format(file):
        return safeformat.load_safe(file, source=source, max_bytes=max_bytes)
    return SafeUnpickler(file, source=source, max_bytes=max_bytes).run()


# --- fix-ups and cache ------------------------------------------------------------------------
#: How many parsed files the cache keeps (least recently used dropped first): a run's main
#: feature file plus MMSA's optional feature_T / feature_A / feature_V files.
CACHE_MAX_ENTRIES = 4
_lock = threading.RLock()
_cache: OrderedDict = OrderedDict()  # (identity, FixUp or None) -> (frozen object, end offset)
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
        obj, end = hit
        try:
            f.seek(end)
        except (OSError, ValueError):
            pass
        return _fresh(obj)
    if hit is not None:  # parsed before the fix-up was recorded: repair that, do not parse again
        obj, end = hit
        f.seek(end)
    else:
        obj = _parse(f, source, max_bytes)
        end = f.tell() if ident is not None else None
        if use_cache:
            with _lock:
                _state["misses"] += 1
    if fixup is not None:
        obj = fixup.apply(obj, source, warn=warn)
    if use_cache:
        with _lock:
            if fixup is not None:
                _cache.pop((ident, None), None)  # the file is read with its fix-up from now on: one copy
            _cache[(ident, fixup)] = (_freeze(obj), end)
            _cache.move_to_end((ident, fixup))
            while len(_cache) > CACHE_MAX_ENTRIES:
                _cache.popitem(last=False)
        return _fresh(obj)
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
    return _parse(io.BytesIO(data), source, max_bytes)


def convert_file(src, dst, *, max_bytes=None) -> dict:
    """Read the pickle (or safe file) `src` with the safe loader and write it to `dst` in the safe
    format, atomically.  Returns ``{'arrays': k, 'bytes': size of dst}``."""
    with open(src, "rb") as f:  # no cache, no fix-up: the file as it is
        obj = _parse(f, os.fspath(src), max_bytes)
    out = {}
    atomic_write(dst, lambda f: out.setdefault("arrays", safeformat.dump_safe(obj, f, os.fspath(src))))
    out["bytes"] = Path(dst).stat().st_size
    return out


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
