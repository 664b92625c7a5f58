"""Registration of MMIN into MMSA 2.2.1: every patch that MMSA needs to know the name 'mmin'.

Why patching: MMSA has no extension point. Its model and trainer maps are dict literals built
inside `AMIO.__init__` and `ATIO.__init__`, and its config readers only look in its own JSON.
So, once and idempotently, this module wraps:

* `AMIO.__init__`     -- builds a registered model as `self.Model` (same state-dict layout as
                         MMSA's own models), and defers to MMSA for every other name;
* `ATIO.getTrain`     -- returns a registered trainer, else MMSA's;
* `get_config_regression` / `get_config_tune` (in `MMSA.config` and the copies `MMSA.run`
  imported) -- when the config file has no entry for a registered model (MMSA's default files
  never do), its entry from `registry.json` is added to a temporary copy and MMSA's own reader
  runs on that, so defaults, `datasetCommonParams`, `featurePath` joining and tune sampling are
  exactly MMSA's. A user's own config file that has an entry for the model is used as is;
* `SUPPORTED_MODELS` -- the name is listed;
* MMSA's feature-file loading -- `pickle` in `MMSA.data_loader` and `MMSA.run` is replaced by
  `safeload.SafePickle` (a restricted unpickler: NumPy arrays and builtin containers only), for
  every model, since a feature file is untrusted input whoever reads it;
* a pre-run hook (see `compat.PRE_RUN_HOOKS`) validating an MMIN run's configuration and feature
  file before any training starts, and replacing non-finite audio/vision values by 0.

`unregister()` removes the name; the wrappers stay installed and pass everything through.
"""
from __future__ import annotations

import copy
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict

from ..errors import MMINConfigError, MMINError

logger = logging.getLogger("MMSA")

__all__ = ["register", "unregister", "registered", "load_registry", "registry_path"]


@dataclass(frozen=True)
class _Entry:
    model: type
    trainer: type
    config: Dict[str, Any]  # {'regression': {...}, 'tune': {...}} in MMSA's schema


_REGISTERED: Dict[str, _Entry] = {}
_PATCHED = False


def registry_path() -> Path:
    """registry.json: shipped inside the package; the repository root copy in a source checkout."""
    package = Path(__file__).resolve().parent.parent
    for p in (package / "registry.json", package.parent / "registry.json"):
        if p.is_file():
            return p
    raise MMINError(f"registry.json not found (looked in {package} and {package.parent})")


def load_registry() -> Dict[str, Any]:
    with open(registry_path()) as f:
        return json.load(f)


def registered() -> Dict[str, _Entry]:
    return dict(_REGISTERED)


# --- the patches ------------------------------------------------------------------------------
def _mmsa_builtin_names():
    from MMSA import run

    return {m.lower() for m in run.SUPPORTED_MODELS} - set(_REGISTERED)


def _wrap_config_reader(orig, section: str):
    def get_config(model_name, dataset_name, config_file="", *rest, **kw):
        entry = _REGISTERED.get(model_name)
        if entry is None:
            return orig(model_name, dataset_name, config_file, *rest, **kw)
        if not config_file:
            import MMSA.config as mc

            name = "config_regression.json" if section == "regression" else "config_tune.json"
            config_file = Path(mc.__file__).parent / "config" / name
        with open(config_file) as f:
            config_all = json.load(f)
        if model_name not in config_all:
            config_all[model_name] = copy.deepcopy(entry.config[section][model_name])
        known = set(config_all.get("datasetCommonParams", {})) - {"dataset_root_dir"}
        if section == "regression":  # MMSA's regression reader requires datasetParams[dataset]
            known &= set(config_all[model_name].get("datasetParams", {}))
        if dataset_name not in known:
            raise MMINConfigError(
                f"{config_file}: model '{model_name}' has no settings for dataset '{dataset_name}'; "
                f"expected one of {sorted(known)}"
            )
        fd, tmp = tempfile.mkstemp(prefix=f"{model_name}-{section}-", suffix=".json")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(config_all, f)
            return orig(model_name, dataset_name, tmp, *rest, **kw)
        finally:
            os.unlink(tmp)

    get_config.__wrapped__ = orig
    get_config.__doc__ = orig.__doc__
    return get_config


def _install_patches() -> None:
    global _PATCHED
    if _PATCHED:
        return
    import MMSA
    import MMSA.config as mconfig
    import MMSA.data_loader as mloader
    import MMSA.run as mrun
    from MMSA.models import AMIO
    from MMSA.trains import ATIO

    from . import compat
    from .safeload import SafePickle, clear_cache

    compat.apply()

    orig_amio_init, orig_get_train = AMIO.__init__, ATIO.getTrain

    def amio_init(self, args):
        entry = _REGISTERED.get(args["model_name"])
        if entry is None:
            return orig_amio_init(self, args)
        import torch.nn as nn

        nn.Module.__init__(self)
        self.need_model_aligned = args.get("need_model_aligned", None)
        if self.need_model_aligned:  # as MMSA's AMIO does
            from MMSA.models.subNets import AlignSubNet

            self.alignNet = AlignSubNet(args, "avg_pool")
            if "seq_lens" in args.keys():
                args["seq_lens"] = self.alignNet.get_seq_len()
        self.Model = entry.model(args)

    def get_train(self, args):
        entry = _REGISTERED.get(args["model_name"])
        return entry.trainer(args) if entry is not None else orig_get_train(self, args)

    AMIO.__init__, ATIO.getTrain = amio_init, get_train

    for section, attr in (("regression", "get_config_regression"), ("tune", "get_config_tune")):
        wrapped = _wrap_config_reader(getattr(mconfig, attr), section)
        setattr(mconfig, attr, wrapped)
        setattr(mrun, attr, wrapped)
        setattr(MMSA, attr, wrapped)

    mloader.pickle = SafePickle
    mrun.pickle = SafePickle
    orig_loader = mrun.MMDataLoader

    def mm_data_loader(args, num_workers):
        try:
            return orig_loader(args, num_workers)
        finally:
            clear_cache()  # MMSA keeps its own float32 copies; drop the parsed file

    mrun.MMDataLoader = mm_data_loader
    compat.PRE_RUN_HOOKS.append(_validate_registered_run)
    _PATCHED = True


def _validate_registered_run(args) -> None:
    """Before any training: config and feature file checks for runs of a registered model."""
    if args.get("model_name") not in _REGISTERED:
        return
    from .safeload import safe_load
    from .validation import sanitize_features, validate_config, validate_features

    validate_config(args)
    main = args.get("custom_feature") or args["featurePath"]
    data = safe_load(main)
    validate_features(data, main, use_bert=bool(args.get("use_bert")),
                      need_data_aligned=bool(args.get("need_data_aligned")), dataset_name=args.get("dataset_name"))
    sanitize_features(data, main)
    for key in ("feature_A", "feature_V"):
        if args.get(key):
            sanitize_features(safe_load(args[key]), args[key])
    from .lengths import check_run_lengths
    check_run_lengths(args, data, main, safe_load)


# --- public API -------------------------------------------------------------------------------
def register(name: str = "mmin", model=None, trainer=None, config=None) -> None:
    """Register a model into MMSA (default: MMIN). Idempotent; a clash is an error."""
    from ..modeling.model import MMIN
    from .trainer import MMINTrainer

    name = name.lower()
    model = model or MMIN
    trainer = trainer or MMINTrainer
    if config is None:
        reg = load_registry()
        config = {s: {name: reg[s]["mmin"]} for s in ("regression", "tune")}
    _install_patches()
    if name in _REGISTERED:
        old = _REGISTERED[name]
        if old.model is model and old.trainer is trainer:
            return
        raise MMINError(f"model name '{name}' is already registered to {old.model.__module__}.{old.model.__name__}")
    if name in _mmsa_builtin_names():
        raise MMINError(f"model name '{name}' is one of MMSA's own models; choose another name")
    _REGISTERED[name] = _Entry(model, trainer, config)
    from MMSA import run

    if name.upper() not in run.SUPPORTED_MODELS:
        run.SUPPORTED_MODELS.append(name.upper())
    logger.debug(f"registered model '{name}' into MMSA")


def unregister(name: str = "mmin") -> None:
    """Remove a registered name (MMSA's own models are untouched). Unknown names are an error."""
    name = name.lower()
    if name not in _REGISTERED:
        raise MMINError(f"model name '{name}' is not registered")
    del _REGISTERED[name]
    from MMSA import run

    if name.upper() in run.SUPPORTED_MODELS:
        run.SUPPORTED_MODELS.remove(name.upper())
