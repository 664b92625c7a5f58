"""What a dataset is: one frozen :class:`Dataset` spec per dataset, and the registry of them.

Layer-free (no torch, no MMSA): the feature-file checks, the synthetic data, the trainer, the
statistics and the MMSA integration all read a dataset's keys, dimensions, ranges and metrics from
its spec, never from constants of their own. MMSA 2.2.1's three datasets are :data:`MOSI`,
:data:`MOSEI` and :data:`SIMS` (their numbers: MMSA's ``config_regression.json``, the
MMSA-Standard files and the datasets' papers). ``mmin_plugin.register_dataset(name, feature_path)``
infers a spec from a feature file (:func:`mmin_plugin.features.infer.infer_dataset`) and
:func:`add`\\ s it here; MMSA learns the name through the patches of
:mod:`mmin_plugin.integration.datasets`. How-to: docs/own-dataset.md.

The file layout (MMSA-Standard, the same for every dataset MMSA's loader reads):
``{split: {key: array}}`` with the text as encoder states ``text`` (N, L, d) and as token ids
``text_bert`` (N, 3, L: ids, mask, segment ids), the sequences ``audio`` / ``vision`` (N, L, d) with
their lengths ``audio_lengths`` / ``vision_lengths``, ``regression_labels`` (N,) and, for SIMS,
the unimodal ``regression_labels_T/A/V``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Dict, Mapping, Optional, Tuple

from .constants import SPLITS
from .errors import MMINConfigError

__all__ = ["Dataset", "MetricFamily", "METRIC_FAMILIES", "MOSI", "MOSEI", "SIMS", "BUILTIN", "MMSA_STANDARD",
           "length_key", "get", "names", "add", "remove", "is_builtin", "lookup"]


@dataclass(frozen=True)
class MetricFamily:
    """How MMSA scores a dataset: the ``MetricsTop`` function named ``name`` (``'mosi'`` covers
    MOSI and MOSEI, ``'sims'`` SIMS), the label range that function assumes, the values ``KeyEval``
    may take (its metric keys plus ``'Loss'``) and the splits that need a non-zero label (MOSI's
    ``Non0_acc_2`` / ``Non0_F1_score`` divide by the count of non-zero labels)."""

    name: str
    label_max: float
    key_evals: Tuple[str, ...]
    nonzero_splits: Tuple[str, ...] = ()


#: MMSA's two regression metric sets (``MetricsTop('regression')``), by family name
METRIC_FAMILIES: Mapping[str, MetricFamily] = MappingProxyType({
    "mosi": MetricFamily("mosi", 3.0, ("Loss", "MAE", "Corr", "Has0_acc_2", "Non0_acc_2", "Has0_F1_score",
                                       "Non0_F1_score", "Mult_acc_5", "Mult_acc_7"), ("valid", "test")),
    "sims": MetricFamily("sims", 1.0, ("Loss", "MAE", "Corr", "Mult_acc_2", "Mult_acc_3", "Mult_acc_5",
                                       "F1_score")),
})


@dataclass(frozen=True)
class Dataset:
    """One dataset: its name, its file layout, its sizes and ranges, and how MMSA scores it.

    ========================  ===================================================================
    ``name``                  MMSA's dataset name (lower case), ``MMSA_run(model, name)``
    ``language``              ``'en'`` / ``'cn'`` (MMSA's ``language`` key; picks the demo words)
    ``splits``                the file's splits, in order
    ``modality_keys``         the file keys of (text, audio, video), MMSA's order
    ``text_ids_key``          the token-id view of the text (``use_bert`` models read it)
    ``sequence_keys``         the keys whose lengths the file carries (``<key>_lengths``)
    ``override_files``        MMSA's per-modality file arguments and the modality each replaces
    ``seq_lens``              padded lengths (L text, La audio, Lv video)
    ``feature_dims``          feature widths (text encoder states, audio, video)
    ``label_range``           (lo, hi) of ``regression_labels``
    ``metric_family``         ``'mosi'`` (MOSI/MOSEI-style metrics) or ``'sims'`` (SIMS-style)
    ``key_eval``              MMSA's default ``KeyEval`` (the validation metric picking the epoch)
    ``sizes``                 samples per split ({'train': n, 'valid': n, 'test': n})
    ``unimodal_labels``       the file carries ``regression_labels_T/A/V`` (SIMS), read by MMSA
    ``feature_path``          MMSA's ``featurePath`` (relative to its dataset root for MMSA's own,
                              absolute for a registered one)
    ``hyperparams_from``      whose ``datasetParams`` MMSA's models use on it (registered ones)
    ========================  ===================================================================
    """

    name: str
    language: str
    seq_lens: Tuple[int, int, int]
    feature_dims: Tuple[int, int, int]
    label_range: Tuple[float, float]
    metric_family: str
    sizes: Mapping[str, int]
    feature_path: str
    key_eval: str = "Loss"
    unimodal_labels: bool = False
    hyperparams_from: Optional[str] = None
    splits: Tuple[str, ...] = SPLITS
    modality_keys: Tuple[str, str, str] = ("text", "audio", "vision")
    text_ids_key: str = "text_bert"
    sequence_keys: Tuple[str, ...] = ("audio", "vision")
    override_files: Mapping[str, str] = field(default_factory=lambda: MappingProxyType(
        {"feature_T": "text", "feature_A": "audio", "feature_V": "vision"}))

    def __post_init__(self):
        name = str(self.name).lower()
        if not name or not all(c.isalnum() or c in "_-" for c in name):
            raise MMINConfigError(f"dataset name: expected letters, digits, '_' or '-'; found {self.name!r}")
        object.__setattr__(self, "name", name)
        if self.metric_family not in METRIC_FAMILIES:
            raise MMINConfigError(f"dataset '{name}': metric_family: expected one of {sorted(METRIC_FAMILIES)} "
                                  f"(MMSA's MOSI/MOSEI-style or SIMS-style metrics); found {self.metric_family!r}")
        lo, hi = (float(v) for v in self.label_range)
        bound = METRIC_FAMILIES[self.metric_family].label_max
        if not (-bound <= lo <= hi <= bound):
            raise MMINConfigError(
                f"dataset '{name}': label_range: expected lo <= hi within [-{bound:g}, {bound:g}] (MMSA's "
                f"{self.metric_family.upper()}-style metrics clip to that range); found ({lo:g}, {hi:g})")
        object.__setattr__(self, "label_range", (lo, hi))
        for key in ("seq_lens", "feature_dims"):
            v = tuple(int(x) for x in getattr(self, key))
            if len(v) != 3 or min(v) < 1:
                raise MMINConfigError(f"dataset '{name}': {key}: expected 3 positive integers; found {v}")
            object.__setattr__(self, key, v)
        if not isinstance(self.sizes, Mapping) or any(
                not isinstance(self.sizes.get(s), int) or self.sizes[s] < 1 for s in self.splits):
            raise MMINConfigError(f"dataset '{name}': sizes: expected a positive sample count for each of "
                                  f"{list(self.splits)}; found {self.sizes!r}")
        sizes = {s: int(self.sizes[s]) for s in self.splits}
        object.__setattr__(self, "sizes", MappingProxyType(sizes))
        object.__setattr__(self, "override_files", MappingProxyType(dict(self.override_files)))
        if self.key_eval not in self.key_evals:
            raise MMINConfigError(f"dataset '{name}': key_eval: expected one of {list(self.key_evals)}; "
                                  f"found {self.key_eval!r}")
        if self.hyperparams_from is None:
            object.__setattr__(self, "hyperparams_from", "sims" if self.metric_family == "sims" else "mosi")

    # --- derived -------------------------------------------------------------------------------
    @property
    def family(self) -> MetricFamily:
        return METRIC_FAMILIES[self.metric_family]

    @property
    def key_evals(self) -> Tuple[str, ...]:
        """The values ``KeyEval`` may take on this dataset (its metric family's keys plus 'Loss')."""
        return self.family.key_evals

    @property
    def label_max(self) -> float:
        """The bound |label| <= label_max the feature-file checks enforce."""
        return max(abs(self.label_range[0]), abs(self.label_range[1]))

    @property
    def nonzero_splits(self) -> Tuple[str, ...]:
        """Splits that must hold a non-zero label (MOSI-style Non0 metrics)."""
        return self.family.nonzero_splits

    @property
    def test_size(self) -> int:
        return self.sizes["test"]

    @property
    def label_keys(self) -> Tuple[str, ...]:
        """The label keys MMSA's loader reads for this dataset."""
        return ("regression_labels",) + (tuple(f"regression_labels_{m}" for m in "TAV")
                                         if self.unimodal_labels else ())

    @property
    def lengths_keys(self) -> Tuple[str, ...]:
        return tuple(length_key(k) for k in self.sequence_keys)

    def text_key(self, use_bert: bool) -> str:
        """The key a model reads its text from: token ids with ``use_bert``, encoder states without."""
        return self.text_ids_key if use_bert else self.modality_keys[0]

    def override_keys(self, option: str, use_bert: bool, need_data_aligned: bool) -> Tuple[str, ...]:
        """What MMSA's loader reads from the per-modality file given as ``option`` (``feature_T`` ...)."""
        key = self.override_files[option]
        if key == self.modality_keys[0]:
            return (self.text_key(use_bert),)
        return (key,) if need_data_aligned or key not in self.sequence_keys else (key, length_key(key))

    @property
    def loader_name(self) -> str:
        """The MMSA ``DATASET_MAP`` entry that reads this dataset's file: 'sims' reads the unimodal
        labels too, 'mosi' the overall label only (the same reader otherwise)."""
        return "sims" if self.unimodal_labels else "mosi"

    def mmsa_block(self) -> Dict:
        """This dataset's ``datasetCommonParams`` entry, in MMSA's schema (unaligned data only)."""
        return {"unaligned": {"featurePath": self.feature_path, "seq_lens": list(self.seq_lens),
                              "feature_dims": list(self.feature_dims), "train_samples": self.sizes["train"],
                              "num_classes": 3, "language": self.language, "KeyEval": self.key_eval,
                              "missing_rate": [0.2, 0.2, 0.2], "missing_seed": [1111, 1111, 1111]}}

    def to_dict(self) -> Dict:
        """Plain JSON data; ``Dataset.from_dict(spec.to_dict()) == spec``."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return {k: (list(v) if isinstance(v, tuple) else dict(v) if isinstance(v, Mapping) else v)
                for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: Mapping) -> Dataset:
        known = {f.name for f in dataclasses.fields(cls)}
        extra = sorted(set(d) - known)
        if extra:
            raise MMINConfigError(f"dataset spec: unknown keys {extra}; expected some of {sorted(known)}")
        tuples = {"seq_lens", "feature_dims", "label_range", "splits", "modality_keys", "sequence_keys"}
        return cls(**{k: (tuple(v) if k in tuples else v) for k, v in d.items()})


def length_key(sequence_key: str) -> str:
    """The key of a sequence's lengths in the file and in MMSA's batches."""
    return f"{sequence_key}_lengths"


# --- MMSA 2.2.1's own datasets (config_regression.json; MMSA-Standard unaligned files) ----------
MOSI = Dataset("mosi", "en", (50, 500, 375), (768, 5, 20), (-3.0, 3.0), "mosi",
               {"train": 1284, "valid": 229, "test": 686}, "MOSI/Processed/unaligned_50.pkl")
MOSEI = Dataset("mosei", "en", (50, 500, 375), (768, 74, 35), (-3.0, 3.0), "mosi",
                {"train": 16326, "valid": 1871, "test": 4659}, "MOSEI/Processed/unaligned_50.pkl",
                hyperparams_from="mosei")
SIMS = Dataset("sims", "cn", (39, 400, 55), (768, 33, 709), (-1.0, 1.0), "sims",
               {"train": 1368, "valid": 456, "test": 457}, "SIMS/Processed/unaligned_39.pkl",
               unimodal_labels=True)
BUILTIN: Tuple[Dataset, ...] = (MOSI, MOSEI, SIMS)
#: the MMSA-Standard file layout (its keys), shared by every dataset MMSA's loader reads; code that
#: knows no dataset (a file checked without a name, MMSA's batches) reads the keys from it
MMSA_STANDARD = MOSI

_REGISTRY: Dict[str, Dataset] = {d.name: d for d in BUILTIN}


def names() -> Tuple[str, ...]:
    """Every known dataset name: MMSA's own, then the registered ones in registration order."""
    return tuple(_REGISTRY)


def lookup(name) -> Optional[Dataset]:
    """The spec of `name` (any case), or None."""
    return _REGISTRY.get(str(name).lower())


def get(name) -> Dataset:
    """The spec of `name` (any case); an unknown name is an :class:`MMINConfigError` listing the known."""
    spec = lookup(name)
    if spec is None:
        raise MMINConfigError(f"dataset: expected one of {list(_REGISTRY)} (or a name registered with "
                              f"mmin_plugin.register_dataset(name, feature_path)); found {name!r}")
    return spec


def is_builtin(name) -> bool:
    return str(name).lower() in {d.name for d in BUILTIN}


def add(spec: Dataset) -> Dataset:
    """Register `spec` under its name. The same spec again is a no-op; another spec under a
    registered name replaces it (a re-registration from a rebuilt file); MMSA's own names are refused."""
    if is_builtin(spec.name):
        raise MMINConfigError(f"dataset name '{spec.name}' is one of MMSA's own datasets; choose another name")
    _REGISTRY[spec.name] = spec
    return spec


def remove(name) -> None:
    """Forget a registered dataset (MMSA's own stay)."""
    name = str(name).lower()
    if is_builtin(name):
        raise MMINConfigError(f"dataset '{name}' is one of MMSA's own datasets and cannot be removed")
    if name not in _REGISTRY:
        raise MMINConfigError(f"dataset '{name}' is not registered")
    del _REGISTRY[name]
