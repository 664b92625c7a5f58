"""Register any model into MMSA 2.2.1: a model class, a trainer class and a config in MMSA's schema.

MMSA has no extension point (its model and trainer maps are dict literals inside `AMIO.__init__`
and `ATIO.__init__`; its config readers read only its own JSON), so the first `register()`
installs, through `patching`, wrappers that consult this registry first and defer to MMSA for
every other name: `AMIO.__init__`, `ATIO.getTrain`, `get_config_regression` / `get_config_tune`
(MMSA's own reader runs on a temporary copy of the config file with the registered entry added,
so defaults, `datasetCommonParams`, `featurePath` joining and tune sampling stay MMSA's), the
feature-file `pickle` of MMSA's loader (the project's safe loader, for every model) and the
pre-run checks. MMIN is registered this way when MMSA is imported (`autoregister`). How-to:
docs/register.md; design notes: docs/design/mmsa.md.

Once per run: MMSA's regression config merge is memoised (keyed by model, dataset and the config
file's bytes; a deep copy is handed out each time), so the callers that read a run's merged config
(compare, the trial fingerprint, `MMSA_run` itself) share one merge; a registered model with a
``config_of`` parser (MMIN: :class:`MMINConfig`) has its config parsed once, by the pre-run check,
and the same object handed to the model and the trainer.

The same wrappers make MMSA know the datasets of :mod:`mmin_plugin.datasets` that are not its own
(added by :func:`mmin_plugin.integration.datasets.register_dataset`): the config readers add the
dataset's `datasetCommonParams` block and, for every model in the file, its `datasetParams` (a copy
of the spec's `hyperparams_from` dataset's); the data loader reads the file with the `DATASET_MAP`
entry of the spec's `loader_name`; `MetricsTop.getMetics` answers with the spec's metric family.

"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import os
import tempfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional, Union

from .. import datasets
from ..errors import MMINConfigError, MMINError
from . import patching

logger = logging.getLogger("MMSA." + __name__)

__all__ = ["register", "unregister", "registered", "load_registry", "registry_path"]

SECTIONS = ("regression", "tune")


@dataclass(frozen=True)
class _Entry:
    model: type
    trainer: type
    config: Dict[str, Any]  # {'regression': {...}, 'tune': {...}}: the model's entry in MMSA's schema
    pre_run: Optional[Callable[[Any], None]] = None  # checks before training, given MMSA's merged args
    # the model's own config parsed from MMSA's args, once per run; model(config), trainer(args, config)
    config_of: Optional[Callable[[Any], Any]] = None


_REGISTERED: Dict[str, _Entry] = {}


def registry_path() -> Path:
    """registry.json: shipped inside the package; the repository root copy in a source checkout."""
    package = Path(__file__).resolve().parent.parent
    for p in (package / "registry.json", package.parent / "registry.json"):
        if p.is_file():
            return p
    raise MMINError(f"registry.json not found (looked in {package} and {package.parent})")


def load_registry() -> Dict[str, Any]:
    """MMIN's config in MMSA's schema: `{'regression': {'mmin': ...}, 'tune': {'mmin': ...}}`."""
    with open(registry_path()) as f:
        return json.load(f)


def registered() -> Dict[str, _Entry]:
    """The registered names and their entries."""
    return dict(_REGISTERED)


# --- the patches ------------------------------------------------------------------------------
def _mmsa_builtin_names():
    from MMSA import run

    return {m.lower() for m in run.SUPPORTED_MODELS} - set(_REGISTERED)


#: memo of MMSA's regression config merge: key -> merged args (handed out as deep copies)
_MERGED: OrderedDict[tuple, Any] = OrderedDict()
_MERGED_MAX = 64


def _default_config_file(section: str) -> Path:
    import MMSA.config as mc

    return Path(mc.__file__).parent / "config" / ("config_regression.json" if section == "regression"
                                                  else "config_tune.json")


def _merge_key(model_name, dataset_name, config_file) -> Optional[tuple]:
    """The memo key of a regression merge: names, the file and a hash of its bytes (a file
    rewritten between two calls is merged again); None when the file cannot be read (the merge
    then runs and reports it)."""
    try:
        digest = hashlib.sha256(Path(config_file).read_bytes()).hexdigest()
    except OSError:
        return None
    entry = _REGISTERED.get(model_name)
    spec = _registered_dataset(dataset_name)  # a re-registered dataset is merged again
    return (str(model_name), str(dataset_name), os.path.abspath(str(config_file)), digest,
            None if entry is None else id(entry), None if spec is None else repr(spec))


def _memoised(orig):
    """MMSA's `get_config_regression` merged once per (model, dataset, config file contents):
    a pure function of those, and read by several callers per run. `get_config_tune` samples at
    random on each call, so it is never memoised."""
    def get_config(model_name, dataset_name, config_file="", *rest, **kw):
        key = None if rest or kw else _merge_key(model_name, dataset_name,
                                                 config_file or _default_config_file("regression"))
        if key is None:
            return orig(model_name, dataset_name, config_file, *rest, **kw)
        if key not in _MERGED:
            _MERGED[key] = orig(model_name, dataset_name, config_file)
            while len(_MERGED) > _MERGED_MAX:
                _MERGED.popitem(last=False)
        _MERGED.move_to_end(key)
        return copy.deepcopy(_MERGED[key])  # MMSA and its callers mutate the args they get

    return get_config
def _registered_dataset(name):
    """The spec of a dataset MMSA does not know itself (registered with register_dataset), or None."""
    name = str(name).lower()
    return None if datasets.is_builtin(name) else datasets.lookup(name)


def _add_dataset(config_all: Dict[str, Any], spec) -> None:
    """Make a config file's contents (MMSA's schema) know the dataset `spec`, in place: its
    `datasetCommonParams` block, and for every model whose `datasetParams` hold the spec's
    `hyperparams_from` dataset, a copy of those under the spec's name (entries present are kept)."""
    config_all.setdefault("datasetCommonParams", {}).setdefault(spec.name, spec.mmsa_block())
    for key, entry in config_all.items():
        params = entry.get("datasetParams") if isinstance(entry, dict) and key != "datasetCommonParams" else None
        if isinstance(params, dict) and spec.hyperparams_from in params:
            params.setdefault(spec.name, copy.deepcopy(params[spec.hyperparams_from]))


def _wrap_config_reader(section: str):
    def make(orig):
        def get_config(model_name, dataset_name, config_file="", *rest, **kw):
            entry = _REGISTERED.get(model_name)
            spec = _registered_dataset(dataset_name)
            if entry is None and spec is None:
                return orig(model_name, dataset_name, config_file, *rest, **kw)
            if not config_file:
                config_file = _default_config_file(section)
            with open(config_file) as f:
                config_all = json.load(f)
            if entry is not None and model_name not in config_all:
                if section not in entry.config:
                    raise MMINConfigError(f"model '{model_name}' was registered without a '{section}' config")
                config_all[model_name] = copy.deepcopy(entry.config[section])
            if spec is not None:
                _add_dataset(config_all, spec)
            known = set(config_all.get("datasetCommonParams", {})) - {"dataset_root_dir"}
            if section == "regression":  # MMSA's regression reader requires datasetParams[dataset]
                known &= set(config_all.get(model_name, {}).get("datasetParams", {}))
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

        return _memoised(get_config) if section == "regression" else get_config

    return make


def _amio_init(orig):
    def __init__(self, args):
        entry = _REGISTERED.get(args["model_name"])
        if entry is None:
            return orig(self, args)
        import torch.nn as nn

        nn.Module.__init__(self)
        self.need_model_aligned = args.get("need_model_aligned", None)
        if self.need_model_aligned:  # as MMSA's AMIO does
            from MMSA.models.subNets import AlignSubNet

            self.alignNet = AlignSubNet(args, "avg_pool")
            if "seq_lens" in args.keys():
                args["seq_lens"] = self.alignNet.get_seq_len()
        # same state-dict layout ('Model.' prefix) as MMSA's models
        self.Model = entry.model(entry.config_of(args) if entry.config_of is not None else args)

    return __init__


def _get_train(orig):
    def getTrain(self, args):
        entry = _REGISTERED.get(args["model_name"])
        if entry is None:
            return orig(self, args)
        return entry.trainer(args, entry.config_of(args)) if entry.config_of is not None else entry.trainer(args)

    return getTrain


def _data_loader(orig):
    from ..features.load import clear_cache, clear_fixups

    def MMDataLoader(args, num_workers):
        spec = _registered_dataset(args.get("dataset_name", ""))
        try:
            if spec is None:
                return orig(args, num_workers)
            # MMSA's DATASET_MAP (a dict literal inside MMDataset.__init__) knows only its own names: the
            # file is read by the entry of the same layout, under that name for the loader's call only
            name, args["dataset_name"] = args["dataset_name"], spec.loader_name
            try:
                return orig(args, num_workers)
            finally:
                args["dataset_name"] = name
        finally:
            clear_cache()  # MMSA keeps its own float32 copies; drop the parsed file
            clear_fixups()  # the next run records its own

    return MMDataLoader


def _metrics_getter(orig):
    def getMetics(self, datasetName):
        spec = _registered_dataset(datasetName)
        return orig(self, spec.metric_family if spec is not None else datasetName)

    return getMetics


def _run_registered_checks(args) -> None:
    entry = _REGISTERED.get(args.get("model_name"))
    if entry is not None and entry.pre_run is not None:
        entry.pre_run(args)


def _install_patches() -> None:
    import MMSA
    import MMSA.config as mconfig
    import MMSA.data_loader as mloader
    import MMSA.run as mrun
    from MMSA.models import AMIO
    from MMSA.trains import ATIO
    from MMSA.utils.metricsTop import MetricsTop

    from ..features.load import SafePickle
    from . import compat, hooks

    compat.apply()
    hooks.install()
    patching.wrap(AMIO, "__init__", _amio_init, "builds a registered model; MMSA's own models as before")
    patching.wrap(ATIO, "getTrain", _get_train, "returns a registered model's trainer; MMSA's as before")
    for section in SECTIONS:
        attr = f"get_config_{section}"
        reason = f"adds a registered model's entry to the {section} config file MMSA reads"
        record = patching.wrap(mconfig, attr, _wrap_config_reader(section), reason)
        for owner in (mrun, MMSA):  # the copies `from .config import ...` made
            patching.patch(owner, attr, record.replacement, reason)
    reason = "feature files are untrusted input: the project's safe loader replaces pickle (every model)"
    patching.patch(mloader, "pickle", SafePickle, reason)
    patching.patch(mrun, "pickle", SafePickle, reason)
    patching.wrap(mrun, "MMDataLoader", _data_loader, "drops the safe loader's parse cache once MMSA has its copy; "
                  "reads a registered dataset's file with the DATASET_MAP entry of its layout")
    patching.wrap(MetricsTop, "getMetics", _metrics_getter,
                  "a registered dataset is scored with its metric family's MetricsTop function")
    if _run_registered_checks not in hooks.PRE_RUN_HOOKS:
        hooks.PRE_RUN_HOOKS.append(_run_registered_checks)


#: the run in progress: MMSA's args object and MMIN's config parsed from it (one slot: MMSA runs one
#: at a time per process; the identity check below keeps a stale slot from serving another run)
_RUN: Dict[str, Any] = {}


def _mmin_run_config(args):
    """MMIN's :class:`MMINConfig` of the run `args` belongs to, parsed once.

    The pre-run check parses it (before the data is loaded) and keeps it here; the model and the
    trainer get that object. MMSA's data loader sets `feature_dims` from the file in between: that
    one key is applied with :func:`dataclasses.replace` (validated again, not parsed again). Without a
    pre-run check (MMSA_test, AMIO built by hand) the config is parsed here, once for model and trainer.
    """
    from ..modeling.config import MMINConfig

    config = _RUN["config"] if _RUN.get("args") is args else MMINConfig.from_args(args)
    dims = args.get("feature_dims")
    if dims is not None and tuple(dims) != config.feature_dims:
        config = dataclasses.replace(config, feature_dims=tuple(dims))
    _RUN.update(args=args, config=config)
    return config


def _validate_registered_run(args) -> None:
    """Before any training: config and feature file checks for runs of a registered model.

    The main file and MMSA's optional feature_T / feature_A / feature_V files are loaded with
    the safe loader, validated together as MMSA will merge them (token ids and text length
    against the ``pretrained`` encoder's config).  Then each file gets a recorded fix-up, which
    the loader applies wherever MMSA reads that file (cache on or off): non-finite audio/vision
    values set to 0 and, with ``lengths_from: nonzero``, the lengths MMSA reads from it
    recomputed.  The fix-up warns here, once, with its counts.
    """
    if args.get("model_name") not in _REGISTERED:
        return
    from ..features.lengths import check_lengths
    from ..features.load import FixUp, safe_load, set_fixup
    from ..features.validation import validate_run_features
    from . import compat
    from .validation import validate_config

    _RUN.update(args=args, config=validate_config(args))  # the run's one parse (_mmin_run_config)
    main = args.get("custom_feature") or args["featurePath"]
    extra_keys = [key for key in ("feature_T", "feature_A", "feature_V") if args.get(key)]
    for path in [main] + [args[key] for key in extra_keys]:
        set_fixup(path, None)  # validate the file as it is
    data = safe_load(main)
    extra = {key: (safe_load(args[key]), args[key]) for key in extra_keys}
    use_bert = bool(args.get("use_bert"))
    spec = datasets.get(args.get("dataset_name"))
    validate_run_features(data, main, extra, use_bert=use_bert,
                          need_data_aligned=bool(args.get("need_data_aligned")),
                          dataset_name=spec,
                          encoder=compat.encoder_limits(args.get("pretrained")) if use_bert else None)
    lengths_from = args.get("lengths_from") or "file"
    # the sequences whose lengths MMSA reads from each file (the main one, or the per-modality override)
    override = {seq: option for option, seq in spec.override_files.items() if seq in spec.sequence_keys}
    files = {main: tuple(seq for seq in spec.sequence_keys if not args.get(override[seq]))}
    files.update({args[override[seq]]: (seq,) for seq in spec.sequence_keys if args.get(override[seq])})
    for path, keys in files.items():
        set_fixup(path, FixUp(nonfinite=True, lengths=keys if lengths_from == "nonzero" else ()))
        fixed = safe_load(path, warn_fixups=True)
        if lengths_from == "file":
            check_lengths(fixed, path, "file", keys=keys)  # warns only


# --- public API -------------------------------------------------------------------------------
def _config_sections(name: str, config: Union[Mapping, str, os.PathLike]) -> Dict[str, Any]:
    """Accept a config file path, `{'regression': {name: entry}, 'tune': {...}}` (MMSA's own files'
    layout), `{'regression': entry, 'tune': entry}`, or a bare regression entry
    (`{'commonParams': ..., 'datasetParams': ...}`). Returns `{section: entry}`."""
    if isinstance(config, (str, os.PathLike)):
        with open(config) as f:
            config = json.load(f)
    if not isinstance(config, Mapping):
        raise MMINConfigError(f"register('{name}'): config must be a dict or a JSON file; "
                              f"found {type(config).__name__}")
    if "commonParams" in config:
        config = {"regression": config}
    out = {}
    for section in SECTIONS:
        entry = config.get(section)
        if isinstance(entry, Mapping) and name in entry and "commonParams" not in entry:
            entry = entry[name]
        if entry is not None:
            if not isinstance(entry, Mapping) or "commonParams" not in entry:
                raise MMINConfigError(f"register('{name}'): config['{section}'] must hold 'commonParams' "
                                      f"(and 'datasetParams'), MMSA's schema; found {sorted(entry or {})}")
            out[section] = copy.deepcopy(dict(entry))
    if "regression" not in out:
        raise MMINConfigError(f"register('{name}'): expected a 'regression' config (MMSA's schema)")
    return out


def register(name: str = "mmin", model: Optional[type] = None, trainer: Optional[type] = None,
             config: Union[Mapping, str, os.PathLike, None] = None,
             pre_run: Optional[Callable[[Any], None]] = None) -> None:
    """Make `MMSA_run(name, dataset, ...)` train and test `model` with `trainer`.

    Args:
        name: the MMSA model name (case-insensitive); must not be one of MMSA's own.
        model: an `nn.Module` class built as `model(args)` from MMSA's merged args (an EasyDict)
            and called as `model(text, audio, vision, *args, **kwargs)` (MMSA's AMIO protocol);
            returns a dict with at least `'M'`, the prediction `(B, 1)`.
        trainer: a class built as `trainer(args)` with MMSA's trainer protocol:
            `do_train(model, dataloader, return_epoch_results=False)` and
            `do_test(model, dataloader, mode, return_sample_results=False) -> dict of metrics`.
            Any of MMSA's own trainers fits (e.g. `MMSA.trains.singleTask.EF_LSTM`).
        config: the model's config in MMSA's schema: `{'commonParams': {...}, 'datasetParams':
            {'mosi': {...}, ...}}`, or `{'regression': that, 'tune': {... 'debugParams': {...}}}`,
            or a JSON file holding either. MMSA adds `datasetCommonParams` (paths, lengths, KeyEval).
        pre_run: optional checks `pre_run(args)` run before the data is loaded; raise to abort.

    Without arguments, registers MMIN (registry.json, MMINTrainer, MMIN's config and file checks).
    Idempotent for the same classes; another model under a registered name, or one of MMSA's own
    names, is an `MMINError`.
    """
    name = name.lower()
    if model is None and trainer is None and config is None:
        from ..modeling.model import MMIN
        from .trainer import MMINTrainer

        reg = load_registry()
        model, trainer, pre_run, config_of = MMIN, MMINTrainer, _validate_registered_run, _mmin_run_config
        config = {s: reg[s]["mmin"] for s in SECTIONS}
    else:
        config_of = None
    if name in _REGISTERED:
        old = _REGISTERED[name]
        if old.model is model and old.trainer is trainer:
            return
        raise MMINError(f"model name '{name}' is already registered to {old.model.__module__}.{old.model.__name__}")
    if model is None or trainer is None or config is None:
        raise MMINError(f"register('{name}'): give model, trainer and config (or none of them for MMIN)")
    sections = _config_sections(name, config)
    _install_patches()
    if name in _mmsa_builtin_names():
        raise MMINError(f"model name '{name}' is one of MMSA's own models; choose another name")
    _REGISTERED[name] = _Entry(model, trainer, sections, pre_run, config_of)
    from MMSA import run

    if name.upper() not in run.SUPPORTED_MODELS:
        run.SUPPORTED_MODELS.append(name.upper())
    logger.debug("registered model '%s' into MMSA", name)


def unregister(name: str = "mmin") -> None:
    """Remove a registered name (MMSA's own models are untouched). Unknown names are an error."""
    name = name.lower()
    if name not in _REGISTERED:
        raise MMINError(f"model name '{name}' is not registered")
    del _REGISTERED[name]
    from MMSA import run

    if name.upper() in run.SUPPORTED_MODELS:
        run.SUPPORTED_MODELS.remove(name.upper())
