"""Checks run before every MMSA run (any model), with MMSA's fully merged args.

`MMSA.run._run` is wrapped once (`install()`) to call `PRE_RUN_HOOKS` in order:
`resolve_feature_path` re-roots a `featurePath` under MMSA's hard-coded dataset root onto
`$MMSA_DATASET_ROOT`; `check_feature_path` fails with the paths looked at instead of MMSA's bare
`FileNotFoundError` deep in its loader; registered models append their own checks (MMIN's
validates its config and feature files).
"""
from __future__ import annotations

import functools
import json
import logging
import os
from pathlib import Path
from typing import Any, Callable, List

from ..errors import MMINDataError
from . import patching

__all__ = ["install", "PRE_RUN_HOOKS", "resolve_feature_path", "check_feature_path", "ENV_DATASET_ROOT",
           "MMSA_DEFAULT_DATASET_ROOT"]

logger = logging.getLogger("MMSA." + __name__)

ENV_DATASET_ROOT = "MMSA_DATASET_ROOT"
#: The root hard-coded in MMSA 2.2.1's config_regression.json / config_tune.json.
MMSA_DEFAULT_DATASET_ROOT = "/home/sharing/disk3/Datasets/MMSA-Standard"


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


def install() -> None:
    """Make `MMSA.run._run` (where args hold the merged config and the user's overrides) run
    `PRE_RUN_HOOKS` first. Idempotent."""
    import MMSA.run as mrun

    def make(original):
        def _run(args, *a, **kw):
            for hook in list(PRE_RUN_HOOKS):
                hook(args)
            return original(args, *a, **kw)

        return _run

    patching.wrap(mrun, "_run", make, "checks before any training: feature paths re-rooted by "
                  "$MMSA_DATASET_ROOT and checked, registered models' own checks (PRE_RUN_HOOKS)")
