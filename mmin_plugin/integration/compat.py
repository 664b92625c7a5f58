"""Make MMSA 2.2.1 itself run on a CPU-only machine with current torch (>= 2.7) / transformers 5.

``apply()`` installs the patches below (idempotent, thread-safe, safe to call many times);
``is_applied()`` says whether all of them are in place.  Every patch is narrow: it replaces a
*name inside an MMSA module* or wraps one MMSA function / ``__init__``; nothing in torch or
transformers is modified globally, and with a 768-d BERT on the default paths MMSA's behaviour
(and random-number stream) is unchanged.

1. ``torch.cuda.set_device`` on a CPU device.
   ``MMSA_run`` (and ``SENA_run``) call ``torch.cuda.set_device(args['device'])`` even when
   ``assign_gpu`` chose the CPU, which on current torch raises
   ``ValueError: Expected a cuda device, but got: cpu``.  We give ``MMSA.run`` its own ``torch``
   reference: a thin proxy module that forwards every attribute to the real ``torch`` except
   ``torch.cuda.set_device``, which is a no-op for non-CUDA devices and delegates otherwise.
   A proxy rather than wrapping ``torch.cuda.set_device`` itself, so that no other code in the
   process sees a changed torch (it is only MMSA's "pin the RNN to this GPU" workaround that
   must tolerate the CPU).  ``MMSA_run``'s mutable default ``gpu_ids=[0]`` is harmless here:
   ``assign_gpu`` only appends to an *empty* list and only when CUDA is available, so on a
   CPU machine neither ``[0]`` nor ``[]`` is ever mutated (both give ``device('cpu')``).

2. ``ReduceLROnPlateau(..., verbose=True)``.
   The MulT, MMIM and TFR_NET trainers pass ``verbose=True``; torch removed the argument
   (``TypeError: ReduceLROnPlateau.__init__() got an unexpected keyword argument 'verbose'``).
   The name ``ReduceLROnPlateau`` in those three trainer modules is replaced with a subclass
   that accepts ``verbose`` and, when it is true, logs learning-rate reductions (what the old
   ``verbose`` printed) instead of passing it on.

3. Dataset root.
   MMSA's ``get_config_regression`` / ``get_config_tune`` join ``featurePath`` onto a hard-coded
   ``/home/sharing/disk3/Datasets/MMSA-Standard``; a missing file then surfaces as a bare
   ``FileNotFoundError`` deep inside ``MMDataset``.  ``MMSA.run._run`` (where args already hold
   the user's overrides) is wrapped to run ``PRE_RUN_HOOKS`` first, by default
   ``resolve_feature_path`` (re-roots a ``featurePath`` that lies under MMSA's default root onto
   ``$MMSA_DATASET_ROOT``, read at call time) and ``check_feature_path`` (raises
   ``MMINDataError`` naming every path looked at and how to point MMSA elsewhere).  Other
   code (the MMIN registry) appends its own validation to ``PRE_RUN_HOOKS`` rather than
   wrapping ``_run`` a second time.

4. Text-encoder hidden size.
   With ``use_bert`` MMSA's loader forces ``feature_dims[0] = 768``, MISA hard-codes
   ``nn.Linear(768, hidden_size)`` for its text projection, Self-MM's fusion/text heads are
   sized by the config's ``text_out: 768`` and MMIM sizes its text heads from
   ``feature_dims[0]``; so any BERT-family encoder that is not 768-d crashes
   (``RuntimeError: mat1 and mat2 shapes cannot be multiplied (8x32 and 768x128)``).  The
   hidden size is read from the encoder's own config (``AutoConfig.from_pretrained`` on
   ``args['pretrained']``, local files first, cached; 768 and a warning if it cannot be read),
   ``feature_dims[0]`` is set from it after ``MMDataset.__init__`` and before the MISA /
   SELF_MM / MMIM constructors (which also covers ``MMSA_test``), Self-MM's ``text_out`` is
   set to it, and MISA's ``project_t`` Linear is rebuilt with the encoder's real width (default
   ``nn.Linear`` initialisation, as MISA's own; only when the width is not 768).  Self-MM's
   ``text_out`` is left alone when the encoder config cannot be read.  BERT_MAG and TFR_NET,
   which also read ``feature_dims[0]`` with ``use_bert``, see the real width too (not run here).

5. Anything else, found by running MISA / MulT / Self-MM / MMIM end to end (train, checkpoint,
   reload, test, results CSV; also ``is_tune=True`` and ``MMSA_test``) on CPU with torch 2.13,
   transformers 5, numpy 2 and pandas 3: nothing else breaks, so nothing else is patched.
   ``torch.load`` in ``_run`` defaults to ``weights_only=True`` now, but MMSA only saves plain
   ``state_dict()`` tensors, which load fine; ``pynvml`` (imported at module level by
   ``MMSA.utils.functions``) comes from ``nvidia-ml-py3`` and is only called when CUDA is
   available.  Left alone (not breaking): pandas' ``Pandas4Warning`` when MMSA appends a row
   to an existing results CSV, MISA's ``enable_nested_tensor`` UserWarning.
"""
from __future__ import annotations

import functools
import importlib
import json
import logging
import os
import sys
import threading
import types
from pathlib import Path
from typing import Any, Callable, List

import torch
from torch import nn
from torch.optim import lr_scheduler as _lr_scheduler

from ..errors import MMINDataError

__all__ = [
    "apply", "is_applied", "PRE_RUN_HOOKS", "resolve_feature_path", "check_feature_path",
    "encoder_hidden_size", "encoder_limits", "ReduceLROnPlateau", "ENV_DATASET_ROOT", "MMSA_DEFAULT_DATASET_ROOT",
]

# Child of MMSA's logger, so messages also land in MMSA's per-run log file.
logger = logging.getLogger("MMSA.mmin_compat")

ENV_DATASET_ROOT = "MMSA_DATASET_ROOT"
#: The root hard-coded in MMSA 2.2.1's config_regression.json / config_tune.json.
MMSA_DEFAULT_DATASET_ROOT = "/home/sharing/disk3/Datasets/MMSA-Standard"
#: The width MMSA assumes for every text encoder; kept when the real one cannot be read.
DEFAULT_TEXT_HIDDEN = 768

_MARK = "__mmin_compat__"
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


def _mark(fn: Callable, original: Callable) -> Callable:
    functools.update_wrapper(fn, original)  # also sets fn.__wrapped__ = original
    setattr(fn, _MARK, True)
    return fn


def _is_ours(fn: Any) -> bool:
    """True if *fn*, or anything it wraps (``__wrapped__`` chain), is one of our wrappers."""
    seen = set()
    while fn is not None and id(fn) not in seen:
        if getattr(fn, _MARK, False):
            return True
        seen.add(id(fn))
        fn = getattr(fn, "__wrapped__", None)
    return False


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
        setattr(self, _MARK, True)

    def __getattr__(self, name: str) -> Any:
        return getattr(torch, name)


def _patch_set_device(run_mod: types.ModuleType) -> None:
    if not getattr(run_mod.torch, _MARK, False):
        run_mod.torch = _TorchProxy()


def _set_device_patched(run_mod: types.ModuleType) -> bool:
    return bool(getattr(run_mod.torch, _MARK, False))


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


setattr(ReduceLROnPlateau, _MARK, True)


def _patch_schedulers() -> None:
    shim = ReduceLROnPlateau
    for mod_name in _SCHEDULER_MODULES:
        mod = importlib.import_module(mod_name)
        current = getattr(mod, "ReduceLROnPlateau", None)
        if current is not None and not getattr(current, _MARK, False):
            mod.ReduceLROnPlateau = shim


def _schedulers_patched() -> bool:
    return all(getattr(getattr(sys.modules.get(m), "ReduceLROnPlateau", None), _MARK, False)
               for m in _SCHEDULER_MODULES)


# --------------------------------------------------------------------------------------------
# 3. Dataset root, feature-file check, pre-run hooks
# --------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def _default_roots() -> tuple:
    """MMSA's hard-coded dataset roots (the constant plus whatever its bundled configs say)."""
    roots = [MMSA_DEFAULT_DATASET_ROOT]
    try:
        import MMSA

        cfg_dir = Path(MMSA.__file__).parent / "config"
        for name in ("config_regression.json", "config_tune.json"):
            with open(cfg_dir / name) as f:
                root = json.load(f)["datasetCommonParams"]["dataset_root_dir"]
            roots.append(root)
    except Exception as exc:  # pragma: no cover - MMSA install without its config files
        logger.debug("could not read MMSA's dataset_root_dir: %s", exc)
    out = []
    for root in roots:
        root = os.path.normpath(root)
        if root not in out:
            out.append(root)
    return tuple(out)


def _is_under(path: str, root: str) -> bool:
    path, root = os.path.normpath(path), os.path.normpath(root)
    try:
        return os.path.commonpath([path, root]) == root
    except ValueError:  # different drives / relative vs absolute
        return False


def resolve_feature_path(args):
    """Re-root ``args['featurePath']`` onto ``$MMSA_DATASET_ROOT`` (read now), in place.

    Only a path that lies under MMSA's hard-coded default root (and not already under
    ``$MMSA_DATASET_ROOT``) is rewritten, keeping its relative part, e.g.
    ``/home/sharing/disk3/Datasets/MMSA-Standard/MOSI/Processed/unaligned_50.pkl`` ->
    ``$MMSA_DATASET_ROOT/MOSI/Processed/unaligned_50.pkl``.  An explicit
    ``config={'featurePath': ...}`` elsewhere is left alone.  Returns *args*.
    """
    env_root = os.environ.get(ENV_DATASET_ROOT, "").strip()
    path = args.get("featurePath") if hasattr(args, "get") else None
    if not env_root or not path:
        return args
    env_root = os.path.normpath(os.path.expanduser(env_root))
    path = str(path)
    if _is_under(path, env_root):
        return args
    for root in _default_roots():
        if _is_under(path, root):
            new = os.path.join(env_root, os.path.relpath(os.path.normpath(path), root))
            logger.info("featurePath re-rooted by %s: %s -> %s", ENV_DATASET_ROOT, path, new)
            args["featurePath"] = new
            break
    return args


def _feature_files(args) -> list:
    """(key, path) of every feature file MMSA's loader will open for these args."""
    files = []
    if args.get("custom_feature"):
        files.append(("custom_feature", args["custom_feature"]))
    else:
        files.append(("featurePath", args.get("featurePath")))
    for key in ("feature_T", "feature_A", "feature_V"):
        if args.get(key):
            files.append((key, args[key]))
    return files


def check_feature_path(args) -> None:
    """Raise ``MMINDataError`` if a feature file MMSA is about to open does not exist."""
    missing = []
    for key, path in _feature_files(args):
        if not path:
            missing.append((key, path, "no path given"))
            continue
        p = Path(os.path.expanduser(str(path)))
        if not p.exists():
            missing.append((key, os.path.abspath(str(p)), "does not exist"))
        elif not p.is_file():
            missing.append((key, os.path.abspath(str(p)), "is not a file"))
    if not missing:
        return
    env_root = os.environ.get(ENV_DATASET_ROOT)
    model, dataset = args.get("model_name", "?"), args.get("dataset_name", "?")
    lines = [f"MMSA feature file not found for model {model!r} on dataset {dataset!r}."]
    for key, path, why in missing:
        lines.append(f"  looked for {key} at: {path} ({why})")
    keys = {key for key, _, _ in missing}
    if "featurePath" in keys:
        lines.append(
            f"MMSA joins the config's featurePath onto its hard-coded dataset root "
            f"{MMSA_DEFAULT_DATASET_ROOT!r}; {ENV_DATASET_ROOT} is "
            + (f"set to {env_root!r}" if env_root else "not set") + ".")
        lines.append(
            f"To point it elsewhere: set the environment variable {ENV_DATASET_ROOT} to the "
            f"folder that holds the dataset folders (e.g. MOSI/Processed/...), or pass "
            f"config={{'featurePath': '/abs/path/to/features.pkl'}} to MMSA_run.")
    other = sorted(keys - {"featurePath"})
    if other:
        lines.append(f"Pass {', '.join(k + '=' for k in other)} the path of an existing "
                     f"feature file (or leave it empty to use featurePath).")
    raise MMINDataError("\n".join(lines))


#: Callables ``hook(args)`` run in order by the patched ``MMSA.run._run`` before MMSA's own,
#: with the fully merged args; they mutate args in place (return values are ignored) and
#: raise to abort the run.  Append (or insert) project-specific validation here instead of
#: wrapping ``_run`` again.
PRE_RUN_HOOKS: List[Callable[[Any], Any]] = [resolve_feature_path, check_feature_path]


def _patch_run(run_mod: types.ModuleType) -> None:
    if _is_ours(run_mod._run):
        return
    original = run_mod._run

    def _run(args, *a, **kw):
        for hook in list(PRE_RUN_HOOKS):
            hook(args)
        return original(args, *a, **kw)

    run_mod._run = _mark(_run, original)


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


def _wrap_init(cls, before=None, after=None) -> None:
    """Wrap ``cls.__init__`` once: ``before(args)`` runs first, ``after(self, args)`` last."""
    if _is_ours(cls.__init__):
        return
    original = cls.__init__

    def __init__(self, args, *a, **kw):
        if before is not None:
            before(args)
        original(self, args, *a, **kw)
        if after is not None:
            after(self, args)

    cls.__init__ = _mark(__init__, original)


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

    _wrap_init(data_loader.MMDataset, after=lambda self, args: _sync_text_dim(args))
    _wrap_init(importlib.import_module("MMSA.models.singleTask.MISA").MISA,
               before=_sync_text_dim, after=_misa_fix_projection)
    _wrap_init(importlib.import_module("MMSA.models.multiTask.SELF_MM").SELF_MM, before=_self_mm_text_out)
    # MMIM sizes its text heads with d_tout = feature_dims[0]
    _wrap_init(importlib.import_module("MMSA.models.singleTask.MMIM").MMIM, before=_sync_text_dim)


def _text_dim_patched() -> bool:
    classes = [(m, m.rsplit(".", 1)[-1]) for m in _TEXT_DIM_MODULES]
    classes.append(("MMSA.data_loader", "MMDataset"))
    return all(_is_ours(getattr(importlib.import_module(m), c).__init__) for m, c in classes)


# --------------------------------------------------------------------------------------------
# public entry points
# --------------------------------------------------------------------------------------------
def _run_module() -> types.ModuleType:
    return importlib.import_module("MMSA.run")


def apply() -> None:
    """Install all patches into MMSA (idempotent; safe to call many times, from any thread)."""
    with _LOCK:
        run_mod = _run_module()
        _patch_set_device(run_mod)
        _patch_schedulers()
        _patch_run(run_mod)
        _patch_text_dim()


def is_applied() -> bool:
    """True when every patch of ``apply()`` is in place in the loaded MMSA."""
    if "MMSA.run" not in sys.modules:
        return False
    run_mod = sys.modules["MMSA.run"]
    try:
        return (_set_device_patched(run_mod) and _schedulers_patched()
                and _is_ours(run_mod._run) and _text_dim_patched())
    except ImportError:
        return False
