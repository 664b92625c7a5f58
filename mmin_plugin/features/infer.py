"""A :class:`~mmin_plugin.datasets.Dataset` spec inferred from a feature file (numpy only).

:func:`infer_dataset` checks the file with the feature-file checks (every key MMSA's loader reads,
shapes, dtypes, lengths; :mod:`~mmin_plugin.features.validation`) and reads from it what a spec
holds: padded lengths, feature widths, samples per split, the label range, whether it carries
SIMS's unimodal labels, the language of its raw text. Two things cannot always be read from the
labels, and are then asked for by name:

* the metric family: labels beyond +-1 (and within +-3) are MOSI/MOSEI-style; labels within +-1 with
  SIMS's unimodal labels ``regression_labels_T/A/V`` are SIMS-style; labels within +-1 without them
  could be either (a small MOSI-style set), so ``metric_family`` must be given; labels beyond +-3 fit
  neither of MMSA's metric sets (they clip to +-3 or +-1): rescale them;
* the text width, when the file holds only token ids (``text_bert``) and no encoder states
  (``text``): ``text_dim``, the hidden size of the encoder the ids are for.
"""
from __future__ import annotations

import os
from collections.abc import Mapping

from .. import datasets
from ..constants import SPLITS
from ..errors import MMINConfigError
from .validation import validate_features

__all__ = ["infer_dataset", "OVERRIDES"]

#: the keyword arguments `infer_dataset` (and `register_dataset`) accept, and what each sets
OVERRIDES = {
    "metric_family": "MMSA's metrics: 'mosi' (MOSI/MOSEI-style) or 'sims' (SIMS-style)",
    "label_range": "(lo, hi) of the regression labels, within the family's +-3 or +-1",
    "language": "'en' or 'cn' (MMSA's `language` key)",
    "key_eval": "MMSA's default KeyEval on this dataset (default 'Loss')",
    "hyperparams_from": "whose datasetParams MMSA's models use ('mosi', 'mosei' or 'sims')",
    "text_dim": "the text width, when the file holds token ids only",
}


def _language(data) -> str:
    """'cn' when the raw text of the first clips holds CJK characters, else 'en'."""
    texts = data["train"].get("raw_text", [])
    for t in list(texts)[:200]:
        if isinstance(t, str) and any("\u4e00" <= c <= "\u9fff" for c in t):
            return "cn"
    return "en"


def _family(name, path, lo, hi, unimodal) -> str:
    m = max(abs(lo), abs(hi))
    if m > 3.0 + 1e-4:
        raise MMINConfigError(
            f"register_dataset('{name}'): {path}: labels span [{lo:g}, {hi:g}]; MMSA's metrics know labels within "
            f"[-3, 3] (metric_family 'mosi', MOSI/MOSEI-style) or [-1, 1] ('sims'): rescale the labels into one of "
            f"those ranges and pass metric_family=")
    if m > 1.0 + 1e-4:
        return "mosi"
    if unimodal:
        return "sims"
    raise MMINConfigError(
        f"register_dataset('{name}'): {path}: cannot infer the metric family: labels span [{lo:g}, {hi:g}], which "
        f"fits both MOSI/MOSEI-style metrics (labels in [-3, 3]) and SIMS-style ones ([-1, 1]); pass "
        f"metric_family='mosi' or metric_family='sims' (CLI: --metric-family)")


def infer_dataset(name: str, data, path, **overrides) -> datasets.Dataset:
    """The spec of the dataset ``name`` whose feature file ``data`` (loaded, from ``path``) is.

    Keyword overrides: :data:`OVERRIDES`. The file must hold every key MMSA's loader reads for
    text as encoder states (``text``) or as token ids (``text_bert``), at least one of them, checked
    in every split as a run would check it. Raises :class:`MMINDataError` for a file that fails the
    checks, :class:`MMINConfigError` for what must be given (see the module docstring) or an
    unknown override.
    """
    bad = sorted(set(overrides) - set(OVERRIDES))
    if bad:
        raise MMINConfigError(f"register_dataset('{name}'): unknown option(s) {bad}; expected some of "
                              f"{sorted(OVERRIDES)}")
    path = os.fsdecode(path) if isinstance(path, (str, bytes, os.PathLike)) else str(path)
    layout = datasets.MMSA_STANDARD
    train = data.get("train") if isinstance(data, Mapping) else None
    views = [use_bert for use_bert in (False, True)
             if isinstance(train, Mapping) and layout.text_key(use_bert) in train]
    if not views:
        # let the checks name what is missing (the encoder-state view is what MMIN reads)
        views = [False]
    summaries = {use_bert: validate_features(data, path, use_bert=use_bert) for use_bert in views}
    summary = summaries[views[0]]
    split0 = summary["train"]
    seq_lens = list(split0["seq_lens"])
    if True in summaries:
        seq_lens[0] = summaries[True]["train"]["seq_lens"][0]
    d_text = split0["feature_dims"][0] if False in summaries else None
    if d_text is None:
        if overrides.get("text_dim") is None:
            raise MMINConfigError(
                f"register_dataset('{name}'): {path}: the file holds token ids '{layout.text_ids_key}' but no "
                f"encoder states '{layout.modality_keys[0]}', so its text width is unknown; pass text_dim= (the "
                f"hidden size of the encoder the ids are for)")
        d_text = overrides["text_dim"]
    elif overrides.get("text_dim") not in (None, d_text):
        raise MMINConfigError(f"register_dataset('{name}'): text_dim: the file's '{layout.modality_keys[0]}' is "
                              f"{d_text} wide; found text_dim={overrides['text_dim']!r}")
    lo = min(s["label_min"] for s in summary.values())
    hi = max(s["label_max"] for s in summary.values())
    unimodal = all(k in data[s] for s in SPLITS for k in ("regression_labels_T", "regression_labels_A",
                                                            "regression_labels_V"))
    family = overrides.get("metric_family") or _family(name, path, lo, hi, unimodal)
    if family not in datasets.METRIC_FAMILIES:
        raise MMINConfigError(f"register_dataset('{name}'): metric_family: expected one of "
                              f"{sorted(datasets.METRIC_FAMILIES)}; found {family!r}")
    bound = datasets.METRIC_FAMILIES[family].label_max
    label_range = tuple(float(v) for v in overrides.get("label_range") or (-bound, bound))
    if len(label_range) != 2 or not (label_range[0] - 1e-4 <= lo and hi <= label_range[1] + 1e-4):
        raise MMINConfigError(f"register_dataset('{name}'): {path}: key 'regression_labels': expected labels within "
                              f"label_range {list(label_range)}; found labels in [{lo:g}, {hi:g}]")
    spec = datasets.Dataset(
        name=name, language=overrides.get("language") or _language(data), seq_lens=tuple(seq_lens),
        feature_dims=(d_text, split0["feature_dims"][1], split0["feature_dims"][2]), label_range=label_range,
        metric_family=family, sizes={s: summary[s]["n"] for s in SPLITS},
        feature_path=os.path.abspath(path), key_eval=overrides.get("key_eval") or "Loss",
        unimodal_labels=unimodal, hyperparams_from=overrides.get("hyperparams_from"))
    if spec.hyperparams_from not in {d.name for d in datasets.BUILTIN}:
        raise MMINConfigError(f"register_dataset('{name}'): hyperparams_from: expected one of "
                              f"{[d.name for d in datasets.BUILTIN]}; found {spec.hyperparams_from!r}")
    if spec.language not in ("en", "cn"):
        raise MMINConfigError(f"register_dataset('{name}'): language: expected 'en' or 'cn'; found {spec.language!r}")
    for use_bert in views:  # the checks a run makes with this spec (label range, non-zero labels)
        validate_features(data, path, use_bert=use_bert, dataset_name=spec)
    return spec
