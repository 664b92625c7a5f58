"""A trial's fingerprint: what its numbers depend on, so that `--resume` reuses a finished row only
when rerunning it would repeat the same computation.

`fingerprint(trial)` = {"sha256": sha256 of the canonical JSON (sorted keys, no spaces) of `parts`,
"parts": {name: sha256 of that part's canonical JSON}, "code": the code versions (readable)}, with
the parts:

* `config`: the resolved MMSA config (MMSA's config for the model and dataset from the config file,
  the trial's overrides merged over it), without device and path keys (`PATH_KEYS`; the data is
  its own part), plus whether TEST is skipped (tuning);
* `model`, `seed`;
* `config_file`: the config file's contents (sha256), not its path;
* `data`: the feature file's resolved path, size, mtime and content sha256 (computed once per
  (path, size, mtime) and kept in a cache file, `data_hash`);
* `code`: this package's version, its git commit, a sha256 of its Python sources (edits not yet
  committed count), MMSA's and torch's versions.

Design notes: docs/design/experiments.md.
"""
from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Dict, List, Optional

from ..atomic import atomic_write_text

logger = logging.getLogger("MMSA." + __name__)

__all__ = ["fingerprint", "changed_parts", "data_hash", "PARTS", "PATH_KEYS", "cache_file"]

PARTS = ("config", "model", "seed", "config_file", "data", "code")
#: resolved-config keys left out of the `config` part: where things are, not what is computed
PATH_KEYS = frozenset({"device", "gpu_ids", "featurePath", "custom_feature", "feature_T", "feature_A", "feature_V",
                       "model_save_dir", "res_save_dir", "log_dir", "model_save_path", "cur_seed"})
_CHUNK = 1 << 20


def _canonical(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def _sha(obj) -> str:
    return hashlib.sha256(_canonical(obj).encode("utf-8")).hexdigest()


def cache_file() -> Path:
    """Where content hashes are cached: $MMIN_PLUGIN_CACHE, else $XDG_CACHE_HOME/mmin-plugin, else
    ~/.cache/mmin-plugin; file `file-hashes.json`."""
    root = os.environ.get("MMIN_PLUGIN_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache",
                                                       "mmin-plugin")
    return Path(root) / "file-hashes.json"


def data_hash(path) -> Dict:
    """{path, size, mtime_ns, sha256} of a file (sha256 from the cache when (path, size, mtime) match);
    {path, missing: True} if there is no such file."""
    p = Path(os.path.expanduser(str(path))).resolve()
    try:
        st = p.stat()
    except OSError:
        return {"path": str(p), "missing": True}
    key = f"{p}|{st.st_size}|{st.st_mtime_ns}"
    cache = cache_file()
    try:
        known = json.loads(cache.read_text(encoding="utf-8"))
        known = known if isinstance(known, dict) else {}
    except (OSError, ValueError):
        known = {}
    digest = known.get(key)
    if not isinstance(digest, str):
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(_CHUNK), b""):
                h.update(block)
        digest = known[key] = h.hexdigest()
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(cache, json.dumps(known, indent=0, sort_keys=True))
        except OSError as exc:  # a read-only home: hash again next time, nothing else lost
            logger.warning("content hash of %s not cached in %s: %s", p, cache, exc)
    return {"path": str(p), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest}


@functools.lru_cache(maxsize=1)
def code_versions() -> Dict:
    """This package (version, git commit, sha256 of its .py sources), MMSA and torch versions."""
    from .trial import _git_commit, _version

    root = Path(__file__).resolve().parent.parent
    h = hashlib.sha256()
    for f in sorted(root.rglob("*.py")):
        h.update(str(f.relative_to(root)).encode())
        h.update(f.read_bytes())
    return {"mmin_plugin": _version("mmin-plugin"), "git_commit": _git_commit(), "sources_sha256": h.hexdigest(),
            "mmsa": _version("mmsa"), "torch": _version("torch")}


def _resolved_config(trial) -> Dict:
    from ..integration.runner import mmsa_config

    try:
        cfg = mmsa_config(trial.model, trial.dataset, trial.config_file or "")
    except Exception as exc:  # an unknown model: MMSA_run reports it in the trial; the error is the identity
        cfg = {"mmsa_config_error": f"{type(exc).__name__}: {exc}"}
    cfg.update(trial.config or {})
    return cfg


def fingerprint(trial) -> Dict:
    """The trial's fingerprint (module docstring)."""
    cfg = _resolved_config(trial)
    feature = cfg.get("featurePath")
    config = {k: v for k, v in cfg.items() if k not in PATH_KEYS}
    config["skip_test"] = bool(getattr(trial, "skip_test", False))
    cf = trial.config_file
    parts = {
        "config": config,
        "model": str(trial.model).lower(),
        "seed": int(trial.seed),
        "config_file": data_hash(cf)["sha256"] if cf and Path(cf).is_file() else (str(cf) if cf else None),
        "data": data_hash(feature) if feature else None,
        "code": code_versions(),
    }
    digests = {k: _sha(v) for k, v in parts.items()}
    return {"sha256": _sha(digests), "parts": digests, "code": parts["code"],
            "data": parts["data"]}


def changed_parts(old, new: Dict) -> Optional[List[str]]:
    """The names of the parts that differ between a row's stored fingerprint `old` and `new`, with
    what changed in the code (e.g. "code (git_commit abc -> def)"); None if `old` is not a
    fingerprint (a row of an older version)."""
    if not isinstance(old, dict) or not isinstance(old.get("parts"), dict):
        return None
    out = []
    for k in PARTS:
        if old["parts"].get(k) == new["parts"][k]:
            continue
        if k == "code" and isinstance(old.get("code"), dict):
            what = [f"{n} {old['code'].get(n)} -> {v}" for n, v in new["code"].items() if old["code"].get(n) != v]
            out.append(f"code ({'; '.join(what)})" if what else "code")
        else:
            out.append(k)
    return out
