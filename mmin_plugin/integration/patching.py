"""The one way this project changes MMSA: every lasting patch goes through `patch` / `wrap`.

MMSA 2.2.1 has no extension points (its model and trainer maps are dict literals inside
`__init__` methods), so registration and the compatibility fixes must replace names inside MMSA's
modules and classes. Each replacement is recorded here with what it replaced and why, so that
`describe()` prints the full list (also `python -m mmin_plugin patches`) and `undo()` restores
MMSA exactly. Temporary changes (for the length of one run) are not recorded: `temporarily` is a thin
`unittest.mock.patch.object`; `shared` and `per_thread` are for runs on several threads of one
process (a trial backend's thread pool), where nested `mock.patch.object` blocks of different
threads close out of order and leave a patch behind.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import threading
import unittest.mock
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

logger = logging.getLogger("MMSA." + __name__)

__all__ = ["Patch", "patch", "wrap", "is_patched", "patches", "describe", "undo", "temporarily", "shared",
           "per_thread"]


@dataclass(frozen=True)
class Patch:
    """One lasting replacement: `owner.name` was `original`, is now `replacement`, because `reason`."""

    owner: Any
    name: str
    original: Any
    replacement: Any
    reason: str

    @property
    def target(self) -> str:
        owner = getattr(self.owner, "__qualname__", None) or getattr(self.owner, "__name__", repr(self.owner))
        module = getattr(self.owner, "__module__", None)
        prefix = f"{module}." if module and isinstance(self.owner, type) else ""
        return f"{prefix}{owner}.{self.name}"


_LOCK = threading.RLock()
_PATCHES: Dict[Tuple[int, str], Patch] = {}  # insertion order = order applied


def _key(owner: Any, name: str) -> Tuple[int, str]:
    return id(owner), name


def _current(owner: Any, name: str) -> Any:
    """The raw attribute: a function in a class's own __dict__ (not a bound method), else getattr."""
    if isinstance(owner, type) and name in owner.__dict__:
        return owner.__dict__[name]
    return getattr(owner, name)


def patch(owner: Any, name: str, replacement: Any, reason: str) -> Patch:
    """Set `owner.name = replacement` once and record it.

    Idempotent per `(owner, name)`: a second call returns the first record and changes nothing, so
    `import mmin_plugin` may run any number of times. `owner` is a module or a class.
    """
    with _LOCK:
        existing = _PATCHES.get(_key(owner, name))
        if existing is not None:
            return existing
        original = _current(owner, name)
        setattr(owner, name, replacement)
        record = Patch(owner, name, original, replacement, reason)
        _PATCHES[_key(owner, name)] = record
        logger.debug("patched %s: %s", record.target, reason)
        return record


def wrap(owner: Any, name: str, make_wrapper: Callable[[Callable], Callable], reason: str) -> Patch:
    """`patch(owner, name, make_wrapper(original), reason)`, the wrapper made to look like the original
    (`functools.update_wrapper`, so `__wrapped__` is the original)."""
    with _LOCK:
        existing = _PATCHES.get(_key(owner, name))
        if existing is not None:
            return existing
        original = _current(owner, name)
        return patch(owner, name, functools.update_wrapper(make_wrapper(original), original), reason)


def is_patched(owner: Any, name: str) -> bool:
    """True when `owner.name` is in place as this module patched it."""
    record = _PATCHES.get(_key(owner, name))
    if record is None:
        return False
    current = owner.__dict__.get(name) if isinstance(owner, type) else getattr(owner, name, None)
    return current is record.replacement


def patches() -> List[Patch]:
    """Every lasting patch in force, in the order applied."""
    with _LOCK:
        return list(_PATCHES.values())


def describe() -> str:
    """The patches as a markdown table (target, reason)."""
    rows = ["| # | MMSA name replaced | why |", "|---:|---|---|"]
    rows += [f"| {i} | `{p.target}` | {p.reason} |" for i, p in enumerate(patches(), start=1)]
    return "\n".join(rows)


def undo(owner: Optional[Any] = None, name: Optional[str] = None) -> int:
    """Restore originals, newest first: all patches, those of `owner`, or the one `owner.name`.
    Returns how many were undone."""
    with _LOCK:
        chosen = [k for k, p in _PATCHES.items()
                  if (owner is None or p.owner is owner) and (name is None or p.name == name)]
        for k in reversed(chosen):
            p = _PATCHES.pop(k)
            setattr(p.owner, p.name, p.original)
        return len(chosen)


def temporarily(owner: Any, name: str, replacement: Any):
    """Context manager: `owner.name = replacement` inside the block only (`mock.patch.object`)."""
    return unittest.mock.patch.object(owner, name, replacement)


_SHARED: Dict[Tuple[int, str], list] = {}  # (id(owner), name) -> [original, open blocks]
_THREAD = threading.local()  # .wrappers: (id(owner), name) -> this thread's wrap functions, outermost first


@contextlib.contextmanager
def _installed(owner: Any, name: str, make: Callable[[Any], Any]):
    """`owner.name = make(original)` while at least one block for `owner.name` is open, in any thread:
    the first block installs it (under the lock, from the true original), the last one to close, in
    whatever order, puts the original back."""
    key = (id(owner), name)
    with _LOCK:
        entry = _SHARED.get(key)
        if entry is None:
            original = getattr(owner, name)
            entry = _SHARED[key] = [original, 0]
            setattr(owner, name, make(original))
        entry[1] += 1
    try:
        yield
    finally:
        with _LOCK:
            entry[1] -= 1
            if entry[1] == 0:
                setattr(owner, name, entry[0])
                del _SHARED[key]


def shared(owner: Any, name: str, replacement: Any):
    """Context manager: `owner.name = replacement` while at least one such block is open, in any thread
    (the first block's replacement; the original is back when the last block closes, in any order)."""
    return _installed(owner, name, lambda original: replacement)


@contextlib.contextmanager
def per_thread(owner: Any, name: str, wrap: Callable[[Callable], Callable]):
    """Context manager: inside the block, calls of the function `owner.name` made by this thread go
    through `wrap(inner)`, inner being what the call reaches without this block (the original, or the
    wrappers of this thread's outer blocks). Calls from other threads are not affected; the original
    is back once every block, in any thread, has closed."""
    key = (id(owner), name)

    def dispatcher(original):
        def dispatch(*args, **kwargs):
            fn = original
            for w in getattr(_THREAD, "wrappers", {}).get(key, ()):
                fn = w(fn)
            return fn(*args, **kwargs)
        return dispatch

    with _installed(owner, name, dispatcher):
        stack = _THREAD.__dict__.setdefault("wrappers", {}).setdefault(key, [])
        stack.append(wrap)
        try:
            yield
        finally:
            stack.pop()
