"""A trial's record: `row.json`'s schema as one frozen dataclass, and the trial's predictions file.

`TrialRecord` is what one trial (run, dataset, seed) produced: its status, TEST metrics, validation
record, timings, what MMSA really used and the fingerprint. `runs/` writes it (`write_record`),
`results/` and `--resume` read it (`read_record`); nothing reads a row by string key.

Reading is hostile (the folder may be a colleague's copy): `row.json` is read bounded
(`bounded.read_json`: a regular file inside `--out`, no symlink, at most `MAX_ROW_BYTES`, nested at
most `MAX_ROW_DEPTH`), every field is checked by type and range (`TrialRecord.from_json`: numbers
finite, strings bounded, enumerations closed), and a row whose (run, dataset, seed) is not its
folder's is refused. A refused row is "unreadable": the tables leave it out, `--resume` runs the
trial again. Paths always come from the trial (`trial_dir(out, run, dataset, seed)`), never from
a row's contents.

`predictions.npz` (the TEST pass's `ids`, `labels`, `preds`) is read without `np.load`: each member's
size is checked in the zip directory before anything is inflated (zipfile inflates a member at most
to the size its directory entry states), its `.npy` header (dtype, shape) is checked against
`max_samples` (the test split's size) before its data is read, and no pickle is ever involved.
Design notes: docs/design/experiments.md ("Trials and row.json").
"""
from __future__ import annotations

import dataclasses
import io
import json
import logging
import math
import re
import typing
import zipfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from ..atomic import atomic_write_bytes, atomic_write_text
from ..bounded import UnreadableFile, check_inside, read_bytes, read_json

logger = logging.getLogger("MMSA." + __name__)

__all__ = ["TrialRecord", "RecordError", "ROW_FILE", "PREDICTIONS_FILE", "STATUSES", "FINAL", "KINDS",
           "trial_dir", "check_name", "read_record", "write_record", "load_record", "Predictions",
           "read_predictions", "load_predictions", "load_predictions_file", "write_predictions", "MAX_TEST_SAMPLES",
           "ROW_SCHEMA", "check_trial_folder"]

ROW_FILE = "row.json"
#: the TEST pass's per-sample predictions: arrays `ids` (str), `labels`, `preds` (float64)
PREDICTIONS_FILE = "predictions.npz"
#: row.json's schema version (1: the string-keyed rows before TrialRecord)
ROW_SCHEMA = 2
#: `running` while the trial runs; `ok` / `failed` / `pruned` (tune's pruner) / `interrupted` after
STATUSES = ("running", "ok", "failed", "pruned", "interrupted")
#: statuses that end a trial ('pruned' is final but not a result)
FINAL = ("ok", "pruned")
#: a training trial (tested) or a search trial (scored on VALID, TEST never run)
KINDS = ("train", "search")
#: bounds of a row file (ours are a few KB to a few hundred KB: `valid_per_epoch` grows with epochs)
MAX_ROW_BYTES = 16 << 20
MAX_ROW_DEPTH = 16
#: longest string field accepted (an error message is cut to 500 characters when written)
MAX_STR = 1 << 16
#: most predictions accepted when the caller does not know its test split's size (the largest
#: MMSA test split, MOSEI's, has 4659 clips)
MAX_TEST_SAMPLES = 10_000
#: longest sample id accepted in a predictions file (MMSA ids are ~20 characters)
MAX_ID_CHARS = 256
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")


class RecordError(UnreadableFile):
    """A row or predictions file that cannot stand for its trial."""


def check_name(name, what: str) -> str:
    """`name` if it can be one folder name of a trial path (letters, digits, `._+-`, not starting
    with a dot: no separator, no '..'), else RecordError."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise RecordError(f"{what}: expected a name of letters, digits and ._+- (one folder, not starting "
                          f"with '.'); found {str(name)[:80]!r}")
    return name


def trial_dir(out, run: str, dataset: str, seed: int) -> Path:
    """The trial's folder `<out>/runs/<run>/<dataset>/seed<seed>/`, from the trial's own identity."""
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise RecordError(f"seed: expected an integer >= 0; found {seed!r}")
    return Path(out) / "runs" / check_name(run, "run") / check_name(dataset, "dataset") / f"seed{seed}"


_Metrics = Dict[str, Optional[float]]


@dataclasses.dataclass(frozen=True)
class TrialRecord:
    """`row.json` of one trial. Metrics are MMSA's raw values; a metric that is not a finite number
    (e.g. a Corr of constant predictions) is None. Free-form fields (`config`, `overrides`,
    `environment`, `fingerprint`) are JSON objects."""

    run: str
    dataset: str
    seed: int
    model: str
    status: str = "running"
    label: str = ""
    #: MMIN's `ablation` list, comma-joined ('' otherwise)
    ablation: str = ""
    kind: str = "train"
    #: `ExceptionType: message` of a failed / pruned / interrupted trial
    error: str = ""
    #: a failure the same inputs repeat (bad data/config, NaN loss): not retried
    deterministic: Optional[bool] = None
    attempt: int = 1
    wall_time_s: float = 0.0
    started: str = ""
    t_start: Optional[float] = None
    t_end: Optional[float] = None
    epochs: Optional[int] = None
    max_epochs: Optional[int] = None
    early_stop: Optional[int] = None
    stopped_by: Optional[str] = None
    metrics: _Metrics = dataclasses.field(default_factory=dict)
    key_eval: Optional[str] = None
    valid_lower_is_better: Optional[bool] = None
    valid_score: Optional[float] = None
    valid_metrics: _Metrics = dataclasses.field(default_factory=dict)
    valid_per_epoch: List[_Metrics] = dataclasses.field(default_factory=list)
    #: the trainer's `do_test` calls by mode ('VAL', 'TEST', 'TEST (skipped)')
    do_test_calls: Dict[str, int] = dataclasses.field(default_factory=dict)
    #: the feature file and text encoder MMSA's `_run` really used (after $MMSA_DATASET_ROOT)
    feature_path: str = ""
    pretrained: str = ""
    checkpoint: str = ""
    has_predictions: bool = False
    has_history: bool = False
    config_file: Optional[str] = None
    overrides: Dict[str, Any] = dataclasses.field(default_factory=dict)
    #: the args MMSA's `_run` used
    config: Dict[str, Any] = dataclasses.field(default_factory=dict)
    gpu_ids: List[int] = dataclasses.field(default_factory=list)
    fingerprint: Optional[Dict[str, Any]] = None
    environment: Dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def key(self) -> Tuple[str, str, int]:
        return self.run, self.dataset, self.seed

    @property
    def finished(self) -> bool:
        return self.status in FINAL

    def replace(self, **changes) -> TrialRecord:
        return dataclasses.replace(self, **changes)

    def to_json(self) -> Dict[str, Any]:
        """A plain JSON object (non-finite numbers as null), with the schema version."""
        out = {"schema": ROW_SCHEMA}
        out.update({f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)})
        return out

    @classmethod
    def from_json(cls, data, key: Optional[Tuple[str, str, int]] = None, source: str = "row") -> TrialRecord:
        """The record in `data` (parsed JSON), checked field by field; with `key`, it must be the
        row of that (run, dataset, seed). RecordError names the field, what was expected and found.
        Unknown fields are ignored (a newer version's); a row of schema 1 (before TrialRecord) is
        read by the same rules."""
        if not isinstance(data, dict):
            raise RecordError(f"{source}: expected a JSON object; found {type(data).__name__}")
        schema = data.get("schema", 1)
        if schema not in (1, ROW_SCHEMA):
            raise RecordError(f"{source}: field 'schema': expected 1 or {ROW_SCHEMA}; found {str(schema)[:40]!r}")
        data = dict(data)
        if "has_predictions" not in data and "predictions" in data:  # schema 1: the file's name or ''
            data["has_predictions"] = data["predictions"] == PREDICTIONS_FILE
        values = {}
        for f in dataclasses.fields(cls):
            if f.name not in data:
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                    raise RecordError(f"{source}: field '{f.name}' missing")
                continue
            values[f.name] = _check(data[f.name], _HINTS[f.name], f"{source}: field '{f.name}'")
        _check_ranges(values, source)
        record = cls(**values)
        if key is not None and record.key != (key[0], key[1], int(key[2])):
            raise RecordError(f"{source}: is the row of {record.run}/{record.dataset}/seed{record.seed}, not of "
                              f"this folder's trial {key[0]}/{key[1]}/seed{key[2]}")
        return record


_HINTS = typing.get_type_hints(TrialRecord)
#: closed value sets and numeric ranges checked by from_json
_CHOICES = {"status": STATUSES, "kind": KINDS}
_RANGES = {"seed": (0, 2**32 - 1), "attempt": (1, 10**6), "wall_time_s": (0.0, 1e9), "epochs": (0, 10**7),
           "max_epochs": (1, 10**7), "early_stop": (0, 10**7), "t_start": (0.0, 1e11), "t_end": (0.0, 1e11)}


def _check_ranges(values: Dict, source: str) -> None:
    for name, choices in _CHOICES.items():
        if name in values and values[name] not in choices:
            raise RecordError(f"{source}: field '{name}': expected one of {list(choices)}; found {values[name]!r}")
    for name, (lo, hi) in _RANGES.items():
        v = values.get(name)
        if v is not None and not lo <= v <= hi:
            raise RecordError(f"{source}: field '{name}': expected a value in [{lo}, {hi}]; found {v!r}")
    for name in ("run", "dataset"):
        check_name(values[name], f"{source}: field '{name}'")
    for g in values.get("gpu_ids") or []:
        if not 0 <= g < 4096:
            raise RecordError(f"{source}: field 'gpu_ids': expected GPU ids in [0, 4096); found {g}")
    for mode, n in (values.get("do_test_calls") or {}).items():
        if not 0 <= n <= 10**7:
            raise RecordError(f"{source}: field 'do_test_calls': expected counts in [0, 1e7]; found {mode}: {n}")


def _found(v) -> str:
    return f"{type(v).__name__} {str(v)[:40]!r}"


def _check(v, tp, where: str):
    """`v` if it is a JSON value of type `tp` (str, int, float, bool, Any, Optional/Dict/List of
    them): bool is never a number, a float is finite, an int fits 64 bits, a str is at most
    MAX_STR long; an int is accepted for a float (and returned as a float)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Union:  # Optional[X]
        if v is None:
            return None
        return _check(v, next(a for a in args if a is not type(None)), where)
    if tp is Any:
        return v
    if origin is dict:
        if not isinstance(v, dict):
            raise RecordError(f"{where}: expected a JSON object; found {_found(v)}")
        return {_check(k, str, f"{where} key"): _check(x, args[1], f"{where}[{str(k)[:40]!r}]") for k, x in v.items()}
    if origin is list:
        if not isinstance(v, list):
            raise RecordError(f"{where}: expected a JSON array; found {_found(v)}")
        return [_check(x, args[0], f"{where}[{i}]") for i, x in enumerate(v)]
    if tp is bool:
        if not isinstance(v, bool):
            raise RecordError(f"{where}: expected true or false; found {_found(v)}")
        return v
    if tp is str:
        if not isinstance(v, str) or len(v) > MAX_STR:
            raise RecordError(f"{where}: expected a string of at most {MAX_STR} characters; found {_found(v)}")
        return v
    if tp is int:
        if isinstance(v, bool) or not isinstance(v, int) or not -2**63 <= v < 2**63:
            raise RecordError(f"{where}: expected an integer; found {_found(v)}")
        return v
    if tp is float:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or abs(v) > 1e300:
            raise RecordError(f"{where}: expected a finite number; found {_found(v)}")
        return float(v)
    raise TypeError(f"TrialRecord field type {tp} has no check")  # pragma: no cover - a schema bug


def _plain(v):
    """`v` as plain JSON data: non-finite floats -> None, tuples -> lists, anything else -> str."""
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if v is None or isinstance(v, (str, int, bool)):
        return v
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if hasattr(v, "item") and callable(v.item):  # a numpy scalar
        try:
            return _plain(v.item())
        except (TypeError, ValueError):
            pass
    return str(v)


def write_record(directory, record: TrialRecord) -> None:
    """`record` as `<directory>/row.json` (atomic; strict JSON, no NaN)."""
    atomic_write_text(Path(directory) / ROW_FILE, json.dumps(record.to_json(), indent=1, allow_nan=False))


def load_record(out, run: str, dataset: str, seed: int) -> Optional[TrialRecord]:
    """The record of trial (run, dataset, seed) in output folder `out`: None if it has no row yet;
    RecordError / UnreadableFile if the row (or the way to it) is refused (see the module docstring)."""
    d = trial_dir(out, run, dataset, seed)
    try:
        data = read_json(d / ROW_FILE, MAX_ROW_BYTES, MAX_ROW_DEPTH, root=out)
    except FileNotFoundError:
        return None
    return TrialRecord.from_json(data, key=(run, dataset, seed), source=str(d / ROW_FILE))


def read_record(out, run: str, dataset: str, seed: int) -> Tuple[Optional[TrialRecord], Optional[str]]:
    """(record, None) for a sound row; (None, None) if there is none; (None, why) if it is unreadable."""
    try:
        return load_record(out, run, dataset, seed), None
    except UnreadableFile as exc:
        return None, str(exc)


# --- predictions ------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Predictions:
    """A trial's TEST predictions: `ids` (str), `labels`, `preds` (float64), one entry per sample."""

    ids: Any
    labels: Any
    preds: Any

    def __len__(self) -> int:
        return len(self.ids)

    def as_dict(self) -> Dict[str, Any]:
        return {"ids": self.ids, "labels": self.labels, "preds": self.preds}


def write_predictions(directory, pred) -> None:
    """`pred` (Predictions or {"ids", "labels", "preds"}) as `predictions.npz` in `directory`
    (atomic, no pickle)."""
    import numpy as np

    pred = pred.as_dict() if isinstance(pred, Predictions) else pred
    buf = io.BytesIO()
    np.savez_compressed(buf, ids=np.asarray(pred["ids"], dtype=str), labels=np.asarray(pred["labels"], float),
                        preds=np.asarray(pred["preds"], float))
    atomic_write_bytes(Path(directory) / PREDICTIONS_FILE, buf.getvalue())


#: per member: accepted dtype kinds and the most bytes one element may take
_MEMBERS = {"ids": ("U", 4 * MAX_ID_CHARS), "labels": ("f", 8), "preds": ("f", 8)}
#: room for a member's .npy header
_NPY_HEADER = 4096


def _npy_member(zf: zipfile.ZipFile, name: str, max_samples: int, source: str):
    import numpy as np

    kind, max_item = _MEMBERS[name]
    try:
        info = zf.getinfo(name + ".npy")
    except KeyError:
        raise RecordError(f"{source}: expected a member '{name}.npy'; found {zf.namelist()[:8]}") from None
    if info.file_size > _NPY_HEADER + max_samples * max_item:  # from the directory: nothing inflated yet
        raise RecordError(f"{source}: member {name}.npy: expected at most {max_samples} samples "
                          f"({_NPY_HEADER + max_samples * max_item} bytes); its entry states {info.file_size} bytes")
    with zf.open(info) as fp:
        version = np.lib.format.read_magic(fp)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(fp)
        elif version in ((2, 0), (3, 0)):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(fp)
        else:
            raise RecordError(f"{source}: member {name}.npy: expected .npy format 1.0-3.0; found {version}")
        if dtype.kind != kind or dtype.hasobject or dtype.fields is not None or not 0 < dtype.itemsize <= max_item:
            raise RecordError(f"{source}: member {name}.npy: expected dtype kind {kind!r} of at most {max_item} "
                              f"bytes an element; found {dtype}")
        if len(shape) != 1 or not 0 < shape[0] <= max_samples:
            raise RecordError(f"{source}: member {name}.npy: expected one axis of 1..{max_samples} samples (the "
                              f"test split's size); found shape {shape}")
        want = shape[0] * dtype.itemsize
        data = fp.read(want)
    if len(data) != want:
        raise RecordError(f"{source}: member {name}.npy: expected {want} bytes of data; found {len(data)}")
    a = np.frombuffer(data, dtype=dtype)
    if kind == "U":
        codes = np.frombuffer(data, dtype=np.dtype("u4").newbyteorder(dtype.byteorder))
        if codes.size and int(codes.max()) > 0x10FFFF:
            raise RecordError(f"{source}: member {name}.npy: expected unicode ids; found invalid code points")
        return a.astype(str)
    a = a.astype(np.float64)
    if not np.isfinite(a).all():
        raise RecordError(f"{source}: member {name}.npy: expected finite numbers; found NaN or inf")
    return a


def load_predictions(out, run: str, dataset: str, seed: int, max_samples: int = MAX_TEST_SAMPLES) -> Predictions:
    """The trial's `predictions.npz` (module docstring): at most `max_samples` samples (pass the
    test split's size when it is known). FileNotFoundError if absent; RecordError if refused."""
    return load_predictions_file(trial_dir(out, run, dataset, seed) / PREDICTIONS_FILE, max_samples, root=out)


def load_predictions_file(path, max_samples: int = MAX_TEST_SAMPLES, root=None) -> Predictions:
    """A predictions file at `path` (a trial's, inside `root`; or one the user named, e.g. in
    `report --from-predictions`'s spec), read as `load_predictions` reads a trial's."""
    bound = 2 * (_NPY_HEADER + max_samples * sum(m for _, m in _MEMBERS.values())) + (64 << 10)
    raw = read_bytes(path, bound, root=root)
    source = str(path)
    try:
        with zipfile.ZipFile(io.BytesIO(raw)) as zf:
            names = zf.namelist()
            if len(names) != len(set(names)) or len(names) > len(_MEMBERS) + 4:
                raise RecordError(f"{source}: expected the members ids, labels, preds; found {names[:8]}")
            arrays = {name: _npy_member(zf, name, max_samples, source) for name in _MEMBERS}
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError, OSError, NotImplementedError) as exc:
        msg = " ".join(str(exc).split())[:200]
        raise RecordError(f"{source}: expected an .npz archive; found {type(exc).__name__}: {msg}") from None
    n = {k: len(v) for k, v in arrays.items()}
    if len(set(n.values())) != 1:
        raise RecordError(f"{source}: expected ids, labels and preds of one length; found {n}")
    return Predictions(**arrays)


def read_predictions(out, run: str, dataset: str, seed: int,
                     max_samples: int = MAX_TEST_SAMPLES) -> Optional[Predictions]:
    """`load_predictions`, or None if absent or refused (logged: the trial is left out of the
    statistics)."""
    try:
        return load_predictions(out, run, dataset, seed, max_samples)
    except FileNotFoundError:
        return None
    except UnreadableFile as exc:
        logger.warning("%s; the trial is left out of the statistics", exc)
        return None


def check_trial_folder(out, run: str, dataset: str, seed: int) -> Path:
    """The trial's folder if it is the project's: no symlink on the way from `out`, inside `out`,
    a folder (or absent); else UnreadableFile naming it (nothing is read or changed through it)."""
    d = check_inside(trial_dir(out, run, dataset, seed), out)
    if d.exists() and not d.is_dir():
        raise RecordError(f"{d}: expected a trial folder; found a file")
    return d
