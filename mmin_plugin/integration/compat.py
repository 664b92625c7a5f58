"""Fixes of MMSA 2.2.1 itself, so that it runs on a CPU-only machine with current torch / transformers.

`apply()` installs them (idempotent, thread-safe) through `patching`, which records each one;
`is_applied()` says whether all are in place. Every fix is narrow (a name inside an MMSA module,
or one MMSA `__init__` wrapped); nothing in torch or transformers changes globally, and with a
768-d BERT on the default paths MMSA's behaviour and random-number stream are unchanged. What each
fix does and why: docs/design/mmsa.md ("Compatibility fixes").
"""
from __future__ import annotations

import functools
import importlib
import logging
import os
import sys
import threading
import types
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.optim import lr_scheduler as _lr_scheduler

from . import patching

__all__ = ["apply", "is_applied", "encoder_hidden_size", "encoder_limits", "ReduceLROnPlateau"]

# Child of MMSA's logger, so messages also land in MMSA's per-run log file.
logger = logging.getLogger("MMSA." + __name__)

#: The width MMSA assumes for every text encoder; kept when the real one cannot be read.
DEFAULT_TEXT_HIDDEN = 768

# model modules whose class (same name as the module) is patched for the encoder width;
# imported with importlib because MMSA's package __init__ shadows each module by its class
_TEXT_DIM_MODULES = (
    "MMSA.models.singleTask.MISA",
    "MMSA.models.multiTask.SELF_MM",
    "MMSA.models.singleTask.MMIM",
)
_LOCK = threading.RLock()
_SCHEDULER_MODULES = (
    "MMSA.trains.singleTask.MULT",
    "MMSA.trains.singleTask.MMIM",
    "MMSA.trains.missingTask.TFR_NET",
)


# --------------------------------------------------------------------------------------------
# 1. torch.cuda.set_device on a CPU device (proxy seen only by MMSA.run)
# --------------------------------------------------------------------------------------------
def _is_non_cuda_device(device: Any) -> bool:
    if isinstance(device, torch.device):
        return device.type != "cuda"
    if isinstance(device, str):
        try:
            return torch.device(device).type != "cuda"
        except (RuntimeError, ValueError):
            return False  # let torch report it
    return False  # int index / None: a CUDA request, delegate


def _set_device(device: Any) -> None:
    """``torch.cuda.set_device`` that ignores non-CUDA devices (MMSA passes ``device('cpu')``)."""
    if _is_non_cuda_device(device):
        return None
    return torch.cuda.set_device(device)


class _CudaProxy(types.ModuleType):
    """``torch.cuda`` as MMSA.run sees it: everything forwarded except ``set_device``."""

    def __init__(self) -> None:
        super().__init__("torch.cuda", "torch.cuda for MMSA.run (mmin_plugin.integration.compat)")
        self.set_device = _set_device

    def __getattr__(self, name: str) -> Any:
        return getattr(torch.cuda, name)


class _TorchProxy(types.ModuleType):
    """``torch`` as MMSA.run sees it: everything forwarded except ``cuda`` (see _CudaProxy)."""

    def __init__(self) -> None:
        super().__init__("torch", "torch for MMSA.run (mmin_plugin.integration.compat)")
        self.cuda = _CudaProxy()

    def __getattr__(self, name: str) -> Any:
        return getattr(torch, name)


def _patch_set_device(run_mod: types.ModuleType) -> None:
    patching.patch(run_mod, "torch", _TorchProxy(),
                   "MMSA_run calls torch.cuda.set_device on the CPU device (ValueError on current torch); "
                   "MMSA.run alone sees a torch whose cuda.set_device ignores non-CUDA devices")


# --------------------------------------------------------------------------------------------
# 2. ReduceLROnPlateau without `verbose`
# --------------------------------------------------------------------------------------------
class ReduceLROnPlateau(_lr_scheduler.ReduceLROnPlateau):
    """torch's ReduceLROnPlateau that accepts (and drops) the removed ``verbose`` argument.

    With ``verbose=True`` each reduction is logged (what the old argument printed).
    """

    def __init__(self, optimizer, *args, verbose: bool = False, **kwargs):
        super().__init__(optimizer, *args, **kwargs)
        self._legacy_verbose = bool(verbose)

    def step(self, metrics, epoch=None):
        before = [group["lr"] for group in self.optimizer.param_groups]
        if epoch is None:
            super().step(metrics)
        else:
            super().step(metrics, epoch)
        if self._legacy_verbose:
            for i, (old, group) in enumerate(zip(before, self.optimizer.param_groups)):
                if group["lr"] < old:
                    logger.info("ReduceLROnPlateau: reducing learning rate of group %d to %.4e.",
                                i, group["lr"])


def _patch_schedulers() -> None:
    for mod_name in _SCHEDULER_MODULES:
        patching.patch(importlib.import_module(mod_name), "ReduceLROnPlateau", ReduceLROnPlateau,
                       "the trainer passes verbose=True, which torch removed (TypeError)")


# --------------------------------------------------------------------------------------------
# 4. Text-encoder hidden size
# --------------------------------------------------------------------------------------------
def _config_stamp(pretrained: str):
    cfg = Path(os.path.expanduser(pretrained)) / "config.json"
    try:
        st = cfg.stat()
        return (st.st_mtime_ns, st.st_size)
    except OSError:
        return None


@functools.lru_cache(maxsize=64)
def _encoder_config_cached(pretrained: str, stamp):
    """``(AutoConfig or None, [errors])`` for *pretrained*: local files first, then the normal lookup."""
    from transformers import AutoConfig

    errors = []
    for local_only in (True, False):
        try:
            return AutoConfig.from_pretrained(os.path.expanduser(pretrained), local_files_only=local_only), errors
        except Exception as exc:  # OSError, ValueError, network errors...
            errors.append(f"{type(exc).__name__}: {exc}")
    return None, errors


@functools.lru_cache(maxsize=64)
def _hidden_size_cached(pretrained: str, stamp) -> int | None:
    cfg, errors = _encoder_config_cached(pretrained, stamp)
    if cfg is not None:
        size = getattr(cfg, "hidden_size", None) or getattr(cfg, "d_model", None)
        if isinstance(size, int) and size > 0:
            return size
        errors = errors + [f"{type(cfg).__name__} has no hidden_size"]
    logger.warning("could not read the text encoder's hidden size from %r (%s); keeping "
                   "MMSA's %d", pretrained, "; ".join(errors)[:500], DEFAULT_TEXT_HIDDEN)
    return None


def encoder_limits(pretrained: Any) -> dict:
    """``{'vocab_size', 'max_position_embeddings', 'type_vocab_size'}`` of the text encoder at
    *pretrained* (the same cached ``AutoConfig`` read as :func:`encoder_hidden_size`); keys whose
    value is unknown (unreadable config) are left out."""
    if not pretrained:
        return {}
    pretrained = str(pretrained)
    cfg, _ = _encoder_config_cached(pretrained, _config_stamp(pretrained))
    out = {}
    for key in ("vocab_size", "max_position_embeddings", "type_vocab_size"):
        v = getattr(cfg, key, None)
        if isinstance(v, int) and not isinstance(v, bool) and v > 0:
            out[key] = v
    return out


def encoder_hidden_size(pretrained: Any, default: int = DEFAULT_TEXT_HIDDEN) -> int:
    """Hidden size of the text encoder at *pretrained* (local dir or cached hub name).

    Read with ``transformers.AutoConfig`` (local files first, then the normal lookup), cached
    per path (a local dir is re-read when its config.json changes); *default* if unreadable.
    """
    size = _known_hidden_size(pretrained)
    return default if size is None else size


def _known_hidden_size(pretrained: Any) -> int | None:
    if not pretrained:
        return None
    pretrained = str(pretrained)
    return _hidden_size_cached(pretrained, _config_stamp(pretrained))


def _sync_text_dim(args) -> None:
    """With use_bert, set ``feature_dims[0]`` to the encoder's hidden size (in place)."""
    if not args.get("use_bert"):
        return
    dims = args.get("feature_dims")
    if dims is None or len(dims) == 0:
        return
    size = encoder_hidden_size(args.get("pretrained"))
    if dims[0] != size:
        logger.debug("feature_dims[0]: %s -> %d (encoder %s)", dims[0], size,
                     args.get("pretrained"))
        dims[0] = size


def _wrap_init(cls, reason, before=None, after=None) -> None:
    """Wrap ``cls.__init__`` once: ``before(args)`` runs first, ``after(self, args)`` last."""

    def make(original):
        def __init__(self, args, *a, **kw):
            if before is not None:
                before(args)
            original(self, args, *a, **kw)
            if after is not None:
                after(self, args)

        return __init__

    patching.wrap(cls, "__init__", make, reason)


def _misa_fix_projection(model, config) -> None:
    if not config.get("use_bert"):
        return
    real = model.bertmodel.model.config.hidden_size  # the loaded encoder is the truth
    old = model.project_t.project_t
    if old.in_features != real:
        # same position in the Sequential (state_dict keys unchanged), default init as MISA's
        model.project_t.project_t = nn.Linear(
            real, old.out_features, bias=old.bias is not None,
            device=old.weight.device, dtype=old.weight.dtype)


def _self_mm_text_out(args) -> None:
    # Self-MM always encodes text with BERT and feeds the [CLS] vector straight into
    # heads sized by args.text_out (768 in MMSA's configs): it must equal the encoder width.
    _sync_text_dim(args)
    size = _known_hidden_size(args.get("pretrained"))  # None: unreadable, leave text_out
    if size is not None and args.get("text_out") != size:
        logger.info("Self-MM text_out: %s -> %d (hidden size of %s)", args.get("text_out"),
                    size, args.get("pretrained"))
        args["text_out"] = size


def _patch_text_dim() -> None:
    from MMSA import data_loader

    _wrap_init(data_loader.MMDataset, "with use_bert the loader forces feature_dims[0] = 768; set it to the "
               "encoder's real hidden size", after=lambda self, args: _sync_text_dim(args))
    _wrap_init(importlib.import_module("MMSA.models.singleTask.MISA").MISA,
               "MISA hard-codes nn.Linear(768, ...) for its text projection; rebuilt with the encoder's width",
               before=_sync_text_dim, after=_misa_fix_projection)
    _wrap_init(importlib.import_module("MMSA.models.multiTask.SELF_MM").SELF_MM,
               "Self-MM sizes its text heads by text_out (768); set to the encoder's width", before=_self_mm_text_out)
    _wrap_init(importlib.import_module("MMSA.models.singleTask.MMIM").MMIM,
               "MMIM sizes its text heads by feature_dims[0]; set to the encoder's width", before=_sync_text_dim)


def _text_dim_classes():
    classes = [getattr(importlib.import_module(m), m.rsplit(".", 1)[-1]) for m in _TEXT_DIM_MODULES]
    return classes + [importlib.import_module("MMSA.data_loader").MMDataset]


# --------------------------------------------------------------------------------------------
# public entry points
# --------------------------------------------------------------------------------------------
def apply() -> None:
    """Install every fix into MMSA (idempotent; safe to call many times, from any thread)."""
    with _LOCK:
        _patch_set_device(importlib.import_module("MMSA.run"))
        _patch_schedulers()
        _patch_text_dim()


def is_applied() -> bool:
    """True when every fix of ``apply()`` is in place in the loaded MMSA."""
    if "MMSA.run" not in sys.modules:
        return False
    try:
        return (patching.is_patched(sys.modules["MMSA.run"], "torch")
                and all(patching.is_patched(importlib.import_module(m), "ReduceLROnPlateau")
                        for m in _SCHEDULER_MODULES)
                and all(patching.is_patched(c, "__init__") for c in _text_dim_classes()))
    except ImportError:
        return False
