"""A trial's fingerprint: what its numbers depend on, so that `--resume` reuses a finished row only
when rerunning it would repeat the same computation. It hashes what is actually read.

`fingerprint(trial, use_gpu)` = {"sha256": sha256 of the canonical JSON of the part digests,
"parts": {name: sha256 of that part's canonical JSON}, plus the readable `code`, `data`,
`pretrained` and `device` parts (for `--resume`'s message)}. The parts:

* `config`: the resolved MMSA config (MMSA's config for the model and dataset from the config file,
  the trial's overrides merged over it) without device and path keys (`PATH_KEYS`: the files are
  the `data` part), plus whether TEST is skipped (tuning);
* `model`, `seed`;
* `config_file`: the config file's contents (sha256), not its path;
* `data`: every feature file MMSA's loader opens, as it opens them: `featurePath` after
  `$MMSA_DATASET_ROOT` re-roots it (or `custom_feature` instead), and `feature_T` / `feature_A` /
  `feature_V`; each by resolved path, size and content sha256;
* `pretrained`: for a model with `use_bert`, a local `pretrained` folder's files (config,
  tokenizer, weights: every regular file in it, by content sha256); a hub name as the name;
* `code`: this package's version, git commit and a sha256 of every file of the package (`.py`,
  `_sparsemax.c`, `registry.json` ...); MMSA's version and a sha256 of its installed source tree
  (computed once per install); torch's and transformers' versions;
* `device`: kind (cpu / cuda), GPU model, CUDA version and the sparsemax backend
  (`environment.device`).

Content hashes are cached in `cache_file()` keyed by (path, size, mtime, inode, ctime): a rewrite
that restores the mtime (`cp -p`) still changes the ctime, so it is hashed again.
Design notes: docs/design/experiments.md ("Fingerprint").
"""
from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import stat
from pathlib import Path
from typing import Dict, Iterable, List, Optional

from ..atomic import atomic_write_text
from ..bounded import UnreadableFile, read_json
from .environment import device, git_commit, package_version

logger = logging.getLogger("MMSA." + __name__)

__all__ = ["fingerprint", "changed_parts", "data_hash", "PARTS", "PATH_KEYS", "cache_file", "tree_hash",
           "feature_files", "code_versions"]

PARTS = ("config", "model", "seed", "config_file", "data", "pretrained", "code", "device")
#: the config keys naming the feature files MMSA's loader opens
FEATURE_KEYS = ("featurePath", "custom_feature", "feature_T", "feature_A", "feature_V")
#: resolved-config keys left out of the `config` part: where things are, not what is computed
PATH_KEYS = frozenset(FEATURE_KEYS + ("device", "gpu_ids", "model_save_dir", "res_save_dir", "log_dir",
                                      "model_save_path", "cur_seed", "pretrained"))
#: this package's folder, every file of which is in the `code` part
PACKAGE_ROOT = Path(__file__).resolve().parent.parent
#: most files hashed in one folder (a BERT folder has ~6; a larger tree is refused as a `pretrained`)
MAX_TREE_FILES = 10_000
_CHUNK = 1 << 20
#: the cache file may hold this much (about 300 bytes an entry)
_CACHE_MAX_BYTES = 64 << 20


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


class _Cache:
    """The content-hash cache, read once and written once per batch of hashes."""

    def __init__(self):
        self.path = cache_file()
        try:
            known = read_json(self.path, _CACHE_MAX_BYTES, 4, expect=dict)
        except FileNotFoundError:
            known = {}
        except UnreadableFile as exc:  # a broken cache costs time only: start over
            logger.warning("content-hash cache ignored: %s", exc)
            known = {}
        self.known = {k: v for k, v in known.items() if isinstance(v, str)}
        self.dirty = False

    def sha256(self, p: Path, st: os.stat_result) -> str:
        key = f"{p}|{st.st_size}|{st.st_mtime_ns}|{st.st_ino}|{st.st_ctime_ns}"
        digest = self.known.get(key)
        if digest is None:
            h = hashlib.sha256()
            with open(p, "rb") as f:
                for block in iter(lambda: f.read(_CHUNK), b""):
                    h.update(block)
            digest = self.known[key] = h.hexdigest()
            self.dirty = True
        return digest

    def save(self) -> None:
        if not self.dirty:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.path, json.dumps(self.known, indent=0, sort_keys=True))
        except OSError as exc:  # a read-only home: hash again next time, nothing else lost
            logger.warning("content hashes not cached in %s: %s", self.path, exc)
        self.dirty = False


def _file_entry(path, cache: _Cache) -> Dict:
    p = Path(os.path.expanduser(str(path))).resolve()
    try:
        st = p.stat()
    except OSError:
        return {"path": str(p), "missing": True}
    if not stat.S_ISREG(st.st_mode):  # a FIFO or device is never read; MMSA's loader will fail on it
        return {"path": str(p), "not_a_regular_file": True}
    return {"path": str(p), "size": st.st_size, "sha256": cache.sha256(p, st)}


def data_hash(path) -> Dict:
    """{path, size, sha256} of a file (sha256 from the cache when (path, size, mtime, inode, ctime)
    match); {path, missing: True} if there is no such file."""
    cache = _Cache()
    try:
        return _file_entry(path, cache)
    finally:
        cache.save()


def _tree_files(root: Path) -> List[Path]:
    out = []
    for d, dirs, files in os.walk(root):
        dirs[:] = sorted(x for x in dirs if x != "__pycache__" and not x.startswith("."))
        out += [Path(d) / f for f in sorted(files) if not f.endswith((".pyc", ".pyo")) and not f.startswith(".")]
        if len(out) > MAX_TREE_FILES:
            raise UnreadableFile(f"{root}: expected at most {MAX_TREE_FILES} files to hash; found more")
    return out


def tree_hash(root, cache: Optional[_Cache] = None) -> str:
    """sha256 over every regular file under `root` (relative path and content; caches and hidden
    files left out), through the content-hash cache."""
    root = Path(root)
    own = cache is None
    cache = cache or _Cache()
    h = hashlib.sha256()
    try:
        for f in _tree_files(root):
            try:
                st = f.stat()
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                h.update(str(f.relative_to(root)).encode() + b"\0" + cache.sha256(f, st).encode())
    finally:
        if own:
            cache.save()
    return h.hexdigest()


@functools.lru_cache(maxsize=1)
def code_versions() -> Dict:
    """This package (version, git commit, sha256 of every file of it), MMSA (version, sha256 of its
    installed source tree), torch and transformers versions. Once per process."""
    from ..integration.runner import mmsa_package_dir

    cache = _Cache()
    try:
        package = tree_hash(PACKAGE_ROOT, cache)
        mmsa = tree_hash(mmsa_package_dir(), cache)
    finally:
        cache.save()
    return {"mmin_plugin": package_version("mmin-plugin"), "git_commit": git_commit(), "package_sha256": package,
            "mmsa": package_version("mmsa"), "mmsa_sha256": mmsa, "torch": package_version("torch"),
            "transformers": package_version("transformers")}


def _resolved_config(trial) -> Dict:
    from ..integration.hooks import resolve_feature_path
    from ..integration.runner import mmsa_config

    try:
        cfg = mmsa_config(trial.model, trial.dataset, trial.config_file or "")
    except Exception as exc:  # an unknown model: MMSA_run reports it in the trial; the error is the identity
        cfg = {"mmsa_config_error": f"{type(exc).__name__}: {exc}"}
    cfg.update(trial.config or {})
    resolve_feature_path(cfg)  # as MMSA's _run will see it: $MMSA_DATASET_ROOT read now
    return cfg


def feature_files(cfg: Dict) -> Dict[str, str]:
    """{key: path} of the feature files MMSA's loader opens for the merged args `cfg`."""
    files = {"custom_feature": cfg["custom_feature"]} if cfg.get("custom_feature") else \
        ({"featurePath": cfg["featurePath"]} if cfg.get("featurePath") else {})
    files.update({k: cfg[k] for k in ("feature_T", "feature_A", "feature_V") if cfg.get(k)})
    return {k: str(v) for k, v in files.items()}


def _pretrained(cfg: Dict, cache: _Cache) -> Optional[Dict]:
    if not cfg.get("use_bert") or not cfg.get("pretrained"):
        return None
    name = str(cfg["pretrained"])
    folder = Path(os.path.expanduser(name))
    if not folder.is_dir():
        return {"name": name}  # a hub name: what the hub serves under it is not seen from here
    files = {str(f.relative_to(folder)): _file_entry(f, cache).get("sha256")
             for f in _tree_files(folder)}
    return {"path": str(folder.resolve()), "files": files}


def fingerprint(trial, use_gpu: bool = False) -> Dict:
    """The trial's fingerprint (module docstring); `use_gpu`: whether it runs on CUDA."""
    cfg = _resolved_config(trial)
    config = {k: v for k, v in cfg.items() if k not in PATH_KEYS}
    config["skip_test"] = bool(getattr(trial, "skip_test", False))
    cache = _Cache()
    try:
        cf = trial.config_file
        data = {k: _file_entry(p, cache) for k, p in feature_files(cfg).items()}
        parts = {
            "config": config,
            "model": str(trial.model).lower(),
            "seed": int(trial.seed),
            "config_file": _file_entry(cf, cache).get("sha256", str(cf)) if cf else None,
            "data": data,
            "pretrained": _pretrained(cfg, cache),
        }
    finally:
        cache.save()
    parts["code"] = code_versions()
    parts["device"] = device(use_gpu)
    digests = {k: _sha(v) for k, v in parts.items()}
    return {"sha256": _sha(digests), "parts": digests,
            **{k: parts[k] for k in ("code", "data", "pretrained", "device")}}


def _detail(name: str, old, new) -> Iterable[str]:
    """What differs in a readable part: keys whose values differ (a new value None = not known
    from here, not compared)."""
    if not isinstance(old, dict) or not isinstance(new, dict):
        return []
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if a == b or (name == "device" and b is None):
            continue
        if name in ("code", "device"):
            out.append(f"{k} {a} -> {b}")
        elif name == "pretrained" and k == "files" and isinstance(a, dict) and isinstance(b, dict):
            out += [f for f in sorted(set(a) | set(b)) if a.get(f) != b.get(f)]  # which files
        else:
            out.append(k)
    return out


def changed_parts(old, new: Dict) -> Optional[List[str]]:
    """The names of the parts that differ between a row's stored fingerprint `old` and `new`, with
    what changed where readable (e.g. "code (git_commit abc -> def)", "data (feature_A)"); None if
    `old` is not a fingerprint of this version (an older row)."""
    if not isinstance(old, dict) or not isinstance(old.get("parts"), dict) or set(old["parts"]) != set(PARTS):
        return None
    out = []
    for k in PARTS:
        if old["parts"].get(k) == new["parts"][k]:
            continue
        what = list(_detail(k, old.get(k), new.get(k))) if k in ("code", "data", "pretrained", "device") else []
        if k == "device" and not what and isinstance(old.get(k), dict):
            continue  # differs only where this process cannot tell (another machine's GPU model)
        out.append(f"{k} ({'; '.join(what)})" if what else k)
    return out
