"""Restricted loading of MMSA feature pickles.

MMSA's ``data_loader`` calls ``pickle.load`` on the feature file, which runs whatever code a
crafted file carries.  :func:`safe_load` uses a ``pickle.Unpickler`` whose ``find_class`` admits
only the callables that NumPy arrays, dtypes and scalars and builtin containers need; any other
global ('os.system', 'builtins.exec', 'subprocess.Popen', 'torch._utils...', ...) is refused
with :class:`~mmin_plugin.errors.MMINDataError` naming the file and the refused
``'module.name'`` -- before the global is even imported, so none of its code runs.

:data:`SafePickle` is a module-like drop-in for ``pickle`` (``load``, ``loads``, ``dump``,
``dumps``, ``HIGHEST_PROTOCOL``, ``DEFAULT_PROTOCOL``, the exception types ...), meant to replace
the ``pickle`` name in ``MMSA.data_loader`` (and ``MMSA.run``).

Cache
-----
``MMSA.data_loader.MMDataLoader`` builds three ``MMDataset`` objects (train/valid/test) and each
opens and unpickles the *whole* feature file.  ``load``/``safe_load`` therefore keep the parsed
object of the most recently used files (at most :data:`CACHE_MAX_ENTRIES`, 4), keyed by
``(realpath, st_mtime_ns, st_size)`` (plus device/inode), so a file is parsed once per run and
a rewritten file is parsed again.  Trade-off: the parsed file stays in memory until
:func:`clear_cache` is called (MMSA keeps its own float32 copies of every split, so without
clearing, peak memory is the file plus MMSA's copies); call :func:`clear_cache` once the loaders
are built, or set ``SafePickle.cache_enabled = False`` / :func:`set_cache_enabled` to turn it off.
A cache hit returns the *same* object as the first load (no copy): mutating it in place (e.g.
:func:`mmin_plugin.integration.validation.sanitize_features`) is seen by later loads of the same file --
which is what lets a pre-run check repair the data that MMSA then reads.
Only loads that start at offset 0 of a regular file use the cache; after a hit the file
position is moved to where the pickle ended, as ``pickle.load`` would leave it.
"""
from __future__ import annotations

import _compat_pickle
import io
import os
import pickle
import threading
from collections import OrderedDict

from ..errors import MMINDataError

__all__ = [
    "ALLOWED_GLOBALS",
    "RestrictedUnpickler",
    "SafePickle",
    "safe_load",
    "safe_loads",
    "clear_cache",
    "cache_info",
    "set_cache_enabled",
]

# (module, name) pairs a feature file may reference, mapped to (module to import, attribute).
# NumPy 1.x pickles say numpy.core.*, NumPy 2.x pickles numpy._core.*; both resolve to what the
# installed NumPy provides.  '_codecs.encode' is how protocol <= 2 pickles (Python 2 era files)
# store the raw bytes of an array; it only re-encodes a str with a codec.
_NP_CORE = "numpy._core" if hasattr(__import__("numpy"), "_core") else "numpy.core"

ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): (_NP_CORE + ".multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"): (_NP_CORE + ".multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"): (_NP_CORE + ".multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"): (_NP_CORE + ".multiarray", "scalar"),
    # protocol 5 (pickle.HIGHEST_PROTOCOL) stores contiguous arrays as frombuffer(buf, dtype)
    ("numpy.core.numeric", "_frombuffer"): (_NP_CORE + ".numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"): (_NP_CORE + ".numeric", "_frombuffer"),
    ("numpy", "ndarray"): ("numpy", "ndarray"),
    ("numpy", "dtype"): ("numpy", "dtype"),
    ("_codecs", "encode"): ("_codecs", "encode"),
    ("builtins", "bytes"): ("builtins", "bytes"),
    ("builtins", "set"): ("builtins", "set"),
    ("builtins", "frozenset"): ("builtins", "frozenset"),
    ("builtins", "bytearray"): ("builtins", "bytearray"),
    ("builtins", "complex"): ("builtins", "complex"),
    ("builtins", "slice"): ("builtins", "slice"),
    ("collections", "OrderedDict"): ("collections", "OrderedDict"),
}
# Protocol 0-2 pickles use Python 2 names ('__builtin__.set', 'copy_reg...'); like pickle's own
# find_class (fix_imports) they are mapped to Python 3 names first, then checked.

#: How many parsed files the cache keeps (least recently used dropped first): 4 covers a run's
#: main feature file plus MMSA's optional feature_T / feature_A / feature_V files.
CACHE_MAX_ENTRIES = 4


def _describe(source) -> str:
    if isinstance(source, (str, bytes, os.PathLike)):
        return os.fsdecode(source)
    name = getattr(source, "name", None)
    if isinstance(name, (str, bytes)):
        return os.fsdecode(name)
    return "<stream>"


class RestrictedUnpickler(pickle.Unpickler):
    """An Unpickler that resolves only :data:`ALLOWED_GLOBALS`; everything else is refused."""

    def __init__(self, file, *, source="<stream>", **kw):
        kw.setdefault("encoding", "latin1")  # Python 2 era numpy pickles
        super().__init__(file, **kw)
        self._source = source

    def find_class(self, module, name):
        raw = f"{module}.{name}"
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
        target = ALLOWED_GLOBALS.get((module, name))
        if target is None:
            alias = "" if raw == f"{module}.{name}" else f" (= '{module}.{name}')"
            raise MMINDataError(
                f"{self._source}: refusing to unpickle '{raw}'{alias}: a feature file may only "
                "hold NumPy arrays/dtypes/scalars and builtin containers; nothing from this file "
                "was executed (is it a crafted or non-MMSA pickle?)")
        mod_name, attr = target
        import importlib

        return getattr(importlib.import_module(mod_name), attr)

    def persistent_load(self, pid):
        raise MMINDataError(
            f"{self._source}: refusing to unpickle a persistent id ({type(pid).__name__}): "
            "feature files hold plain NumPy arrays and containers (torch.save files are not "
            "supported)")


def _unpickle(file, source):
    try:
        return RestrictedUnpickler(file, source=source).load()
    except MMINDataError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
            IndexError, KeyError, ImportError, UnicodeDecodeError, OverflowError,
            MemoryError) as e:
        raise MMINDataError(
            f"{source}: expected a pickled MMSA feature file; found an unreadable or malformed "
            f"pickle ({type(e).__name__}: {e})") from e


# --- cache -------------------------------------------------------------------------------------
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
    import stat

    if not stat.S_ISREG(st.st_mode):
        return None
    name = getattr(f, "name", None)
    real = os.path.realpath(name) if isinstance(name, (str, bytes)) else None
    return (real, st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)


def _load_file(f, source):
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
    obj = _unpickle(f, source)
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
def safe_load(file_or_path):
    """Unpickle a feature file (a path or a binary file object) with the restricted unpickler.

    Raises :class:`MMINDataError` (naming the file) for a missing/unreadable file, a malformed
    pickle, or any global outside :data:`ALLOWED_GLOBALS` (naming the refused 'module.name').
    Uses the parse cache (see the module docstring).
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
            return _load_file(f, source)
    if not hasattr(file_or_path, "read"):
        raise MMINDataError(
            f"safe_load: expected a path or a binary file object; found "
            f"{type(file_or_path).__name__}")
    return _load_file(file_or_path, _describe(file_or_path))


def safe_loads(data, source="<bytes>"):
    """Unpickle bytes with the restricted unpickler (no cache)."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise MMINDataError(f"{source}: expected pickled bytes; found {type(data).__name__}")
    return _unpickle(io.BytesIO(data), source)


class _SafePickleModule:
    """Module-like stand-in for :mod:`pickle`: restricted ``load``/``loads``, plain dumping."""

    HIGHEST_PROTOCOL = pickle.HIGHEST_PROTOCOL
    DEFAULT_PROTOCOL = pickle.DEFAULT_PROTOCOL
    PickleError = pickle.PickleError
    PicklingError = pickle.PicklingError
    UnpicklingError = pickle.UnpicklingError
    Pickler = pickle.Pickler
    Unpickler = RestrictedUnpickler
    dump = staticmethod(pickle.dump)
    dumps = staticmethod(pickle.dumps)
    __name__ = "mmin_plugin.integration.safeload.SafePickle"

    @staticmethod
    def load(file, **_ignored):
        """Like ``pickle.load(file)`` but restricted (keyword options such as ``encoding`` are
        ignored: latin1 is used for Python 2 era arrays)."""
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
        return "<SafePickle: restricted drop-in for the pickle module>"


#: Drop-in for the ``pickle`` module (e.g. ``MMSA.data_loader.pickle = SafePickle``).
SafePickle = _SafePickleModule()
