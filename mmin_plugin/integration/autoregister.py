"""Register MMIN into MMSA when MMSA is imported, not when `mmin_plugin` is.

`import mmin_plugin` must stay light (neither torch nor MMSA: the model is usable from plain
PyTorch and the CLI starts fast), yet MMSA users expect `import mmin_plugin; from MMSA import
MMSA_run; MMSA_run('mmin', ...)` to work. So the package root calls :func:`install`:

* if MMSA is already imported, MMIN is registered at once (MMSA has loaded torch already);
* otherwise a finder on ``sys.meta_path`` waits for the first ``import MMSA`` (by anyone), lets
  the normal finders find and load it, and registers MMIN right after MMSA's ``__init__`` has run,
  before the importing statement gets the module. The finder then removes itself (a lookup that
  never executes MMSA, such as ``importlib.util.find_spec("MMSA")``, leaves it in place).

This module imports nothing heavy; registration itself is :func:`~.registry.register`.
"""
from __future__ import annotations

import importlib.abc
import sys
import threading

__all__ = ["install", "uninstall", "TARGET"]

#: the top-level module whose import triggers registration
TARGET = "MMSA"

_lock = threading.RLock()


def _register() -> None:
    from .registry import register

    register()


class _RegisterOnImport(importlib.abc.MetaPathFinder):
    """One-shot finder: finds ``MMSA`` with the finders after it and makes its loader register
    MMIN once the module has executed."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != TARGET:
            return None
        # not removed yet: a find_spec whose module is never executed (importlib.util.find_spec("MMSA"),
        # an availability check) must leave the hook in place for the real import
        for finder in sys.meta_path:
            if finder is self:
                continue
            find = getattr(finder, "find_spec", None)
            spec = find(fullname, path, target) if find is not None else None
            if spec is not None:
                break
        else:
            return None  # not installed: the import fails as it would without us
        loader = spec.loader
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        exec_module = loader.exec_module

        def exec_then_register(module):
            exec_module(module)
            uninstall()  # one shot
            _register()

        loader.exec_module = exec_then_register  # this loader instance serves this one import
        return spec


_finder = _RegisterOnImport()


def install() -> None:
    """Register now if MMSA is imported, else when it is. Idempotent."""
    with _lock:
        if TARGET in sys.modules:
            _register()
        elif _finder not in sys.meta_path:
            sys.meta_path.insert(0, _finder)


def uninstall() -> None:
    """Remove the import hook (registration already done stays)."""
    with _lock:
        while _finder in sys.meta_path:
            sys.meta_path.remove(_finder)
