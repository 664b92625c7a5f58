"""Start-up checks of feature files: the layout MMSA's loader and MMIN read.

* :func:`validate_features` -- every split has what MMSA's loader and MMIN read, with
  consistent sample counts, numeric dtypes and sane shapes/values.  One failure, one
  :class:`~mmin_plugin.errors.MMINDataError` naming the file, the split, the key, what was
  expected and what was found.  It does not look at NaN/inf in audio/vision:
  :func:`sanitize_features` repairs those (real MOSI audio carries -inf in its padding).
* :func:`validate_run_features` -- the main file plus MMSA's optional ``feature_T`` /
  ``feature_A`` / ``feature_V`` files, merged as MMSA's loader merges them, so each override is
  checked like the main file and against it (sample counts, sequence lengths, lengths in
  [0, L]); errors name the file the offending key comes from.
* :func:`sanitize_features` -- NaN/+inf/-inf in audio/vision -> 0, in place, with one warning
  (a run applies it as a fix-up of :mod:`~mmin_plugin.features.load`).
"""
from __future__ import annotations

import logging
import numbers
import os
import reprlib
import warnings
from collections.abc import Mapping

import numpy as np

from .. import datasets
from ..constants import SPLITS
from ..errors import MMINDataError
from .limits import CHUNK_ELEMENTS

__all__ = ["validate_features", "validate_run_features", "sanitize_features"]

_F32_MAX = float(np.finfo(np.float32).max)
_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother = 3, 40, 40

logger = logging.getLogger("MMSA." + __name__)


# ================================================================================================
# Feature files
# ================================================================================================

def _fmt_shape(a):
    return "(" + ", ".join(str(int(s)) for s in a.shape) + ")"


def _describe(v):
    """A short description of a value for error messages."""
    if isinstance(v, np.ndarray):
        return f"ndarray of {v.dtype} with shape {_fmt_shape(v)}"
    if isinstance(v, (list, tuple)):
        return f"{type(v).__name__} of length {len(v)}"
    mod = type(v).__module__
    name = type(v).__name__
    try:  # bounded: a hostile value may be deeply nested or huge
        r = _REPR.repr(v)
    except Exception as e:  # a broken __repr__
        r = f"<unprintable: {type(e).__name__}>"
    if len(r) > 60:
        r = r[:57] + "..."
    return f"{name if mod == 'builtins' else mod + '.' + name} {r}"


class _Ctx:
    """Builds the one error message format: file, split, key, expected, found."""

    def __init__(self, path, sources=None):
        self.path = self._name(path)
        self.sources = {k: self._name(p) for k, p in (sources or {}).items()}

    @staticmethod
    def _name(path):
        return os.fsdecode(path) if isinstance(path, (str, bytes, os.PathLike)) else str(path)

    def fail(self, split, key, expected, found):
        where = self.sources.get(key, self.path)
        if split is not None:
            where += f": split '{split}'"
        if key is not None:
            where += f", key '{key}'" if split is not None else f": key '{key}'"
        raise MMINDataError(f"{where}: expected {expected}; found {found}")


def _chunks(a):
    flat = a.reshape(-1)
    step = CHUNK_ELEMENTS
    for i in range(0, flat.size, step):
        yield flat[i:i + step]


def _nonfinite_count(a):
    if a.dtype.kind not in "fc":
        return 0
    return int(sum(int(np.count_nonzero(~np.isfinite(c))) for c in _chunks(a)))


def _abs_max_finite(a):
    """Largest |x| over the finite values (0 when none)."""
    if a.dtype.kind not in "fiu" or a.size == 0:
        return 0.0
    m = 0.0
    for c in _chunks(a):
        if a.dtype.kind == "f":
            c = c[np.isfinite(c)]
        if c.size:
            m = max(m, float(np.max(np.abs(c.astype(np.float64)))))
    return m


def _numeric_array(ctx, split, key, v, ndim=None, allow_list=False):
    """Return `v` as a numeric ndarray (bool/int/uint/float) or fail."""
    if not isinstance(v, np.ndarray):
        if not allow_list or not isinstance(v, (list, tuple)):
            ctx.fail(split, key, "a numpy array" + (" (or list)" if allow_list else ""),
                     _describe(v))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                arr = np.asarray(v)
        except (ValueError, TypeError, OverflowError) as e:
            ctx.fail(split, key, "a rectangular numeric sequence", f"{_describe(v)} ({e})")
        v = arr
    if v.dtype.kind not in "biuf":
        ctx.fail(split, key, "a numeric dtype (bool, int or float)", _describe(v))
    if ndim is not None and v.ndim not in (ndim if isinstance(ndim, tuple) else (ndim,)):
        ctx.fail(split, key, f"a {ndim if not isinstance(ndim, tuple) else ' or '.join(map(str, ndim))}"
                             "-D array", _describe(v))
    return v


def _f32_representable(ctx, split, key, a):
    if a.dtype.kind == "f" and a.dtype.itemsize > 4:  # ints and float16/32 always fit
        m = _abs_max_finite(a)
        if m > _F32_MAX:
            ctx.fail(split, key, f"values representable as float32 (|x| <= {_F32_MAX:.3g}; "
                                 "MMSA casts to float32, larger values become inf)",
                     f"max |x| = {m:.3g}")


def _length(ctx, split, key, v):
    if isinstance(v, np.ndarray):
        if v.ndim == 0:
            ctx.fail(split, key, "a 1-D sequence with one entry per sample", _describe(v))
        return int(v.shape[0])
    if isinstance(v, (list, tuple)):
        return len(v)
    ctx.fail(split, key, "a numpy array or list with one entry per sample", _describe(v))


def _check_strings(ctx, split, key, v, n):
    """'id' / 'raw_text': one str per sample (MMSA batches them as lists of str)."""
    k = _length(ctx, split, key, v)
    if isinstance(v, np.ndarray):
        if v.ndim != 1:
            ctx.fail(split, key, "a 1-D array of str", _describe(v))
        if v.dtype.kind == "U":
            items = ()
        elif v.dtype.kind == "O":
            items = v
        else:
            ctx.fail(split, key, "an array of str (dtype '<U' or object)", _describe(v))
    else:
        items = v
    for i, x in enumerate(items):
        if not isinstance(x, str):
            ctx.fail(split, key, "one str per sample", f"{_describe(x)} at sample {i}")
    if k != n:
        ctx.fail(split, key, f"{n} entries (the sample count of 'regression_labels')", f"{k}")


def _check_lengths(ctx, split, key, v, n, max_len):
    if isinstance(v, np.ndarray) or isinstance(v, (list, tuple)):
        if isinstance(v, (list, tuple)) and not all(
                isinstance(x, (numbers.Real, np.generic)) and not isinstance(x, (bool, np.bool_))
                for x in v):
            bad = next(x for x in v if not isinstance(x, (numbers.Real, np.generic))
                       or isinstance(x, (bool, np.bool_)))
            ctx.fail(split, key, "integer lengths", f"an entry {_describe(bad)}")
        arr = _numeric_array(ctx, split, key, v, ndim=1, allow_list=True)
    else:
        ctx.fail(split, key, "a list or 1-D integer array of lengths", _describe(v))
    if arr.dtype.kind == "b":
        ctx.fail(split, key, "integer lengths", _describe(arr))
    if arr.shape[0] != n:
        ctx.fail(split, key, f"{n} lengths (one per sample)", f"{arr.shape[0]}")
    if arr.dtype.kind == "f":
        if _nonfinite_count(arr):
            ctx.fail(split, key, "finite integer lengths", "NaN/inf")
        frac = arr != np.round(arr)
        if frac.any():
            ctx.fail(split, key, "integer lengths",
                     f"{float(arr[np.argmax(frac)])!r} at sample {int(np.argmax(frac))}")
    if arr.size:
        lo, hi = arr.min(), arr.max()
        if lo < 0 or hi > max_len:
            i = int(np.argmax((arr < 0) | (arr > max_len)))
            ctx.fail(split, key, f"lengths within [0, {max_len}] (the padded sequence length)",
                     f"{arr[i].item()!r} at sample {i}")
    return arr.astype(np.int64)


def _check_labels(ctx, split, key, v, n, label_max, need_ndarray):
    if need_ndarray and not isinstance(v, np.ndarray):
        ctx.fail(split, key, "a numpy array (MMSA calls .astype on it)", _describe(v))
    arr = _numeric_array(ctx, split, key, v, ndim=(1, 2), allow_list=True)
    if arr.ndim == 2 and arr.shape[1] != 1:
        ctx.fail(split, key, f"shape ({n},) or ({n}, 1)", _describe(arr))
    if arr.shape[0] != n:
        ctx.fail(split, key, f"{n} labels (the sample count of 'regression_labels')",
                 f"{arr.shape[0]}")
    if arr.dtype.kind == "b":
        ctx.fail(split, key, "numeric (int or float) labels", _describe(arr))
    bad = _nonfinite_count(arr)
    if bad:
        i = int(np.argmax(~np.isfinite(arr.reshape(-1))))
        ctx.fail(split, key, "finite labels", f"{bad} NaN/inf value(s), first at sample {i}")
    _f32_representable(ctx, split, key, arr)
    if label_max is not None and arr.size:
        m = float(np.max(np.abs(arr.astype(np.float64))))
        if m > label_max + 1e-4:
            ctx.fail(split, key, f"labels within [-{label_max:g}, {label_max:g}]",
                     f"max |label| = {m:g}")
    return arr


def _spec(dataset_name):
    """The dataset's spec (its ranges are checked), or None: MMSA-Standard keys, no range checks."""
    if dataset_name is None or isinstance(dataset_name, datasets.Dataset):
        return dataset_name
    return datasets.get(dataset_name)


def validate_features(data, path, use_bert=True, need_data_aligned=False, *,
                      dataset_name=None, encoder=None, sources=None):
    """Check a loaded feature file (the dict MMSA unpickles) before any training.

    Per split ('train', 'valid', 'test'): keys ``'text_bert'`` (``use_bert``) or ``'text'``,
    ``'audio'``, ``'vision'``, ``'regression_labels'``, ``'id'``, ``'raw_text'`` and, when not
    ``need_data_aligned``, ``'audio_lengths'``/``'vision_lengths'`` (the keys of the dataset's spec,
    :mod:`mmin_plugin.datasets`; for a spec with ``unimodal_labels`` (SIMS) also
    ``'regression_labels_T/A/V'``, which MMSA reads); ``dataset_name`` is a name known to
    :mod:`mmin_plugin.datasets` or a :class:`~mmin_plugin.datasets.Dataset`; at least one
    sample and the same sample count N everywhere; numeric dtypes (bool/int/float); ``text_bert``
    (N, 3, L) with integral non-negative ids, a 0/1 mask row and 0/1 segment ids; ``text``
    (N, L, d) finite; ``audio``/``vision`` (N, L, d), L >= 1, d >= 1 and d equal across splits
    (as is the text feature dim); ``id``/``raw_text`` one str per sample; aligned data: one L
    for text, audio and vision; lengths integral (int, or integral floats) within [0, L];
    labels finite, float32-representable and, with ``dataset_name``, within the spec's label range
    (MOSI/MOSEI [-3, 3], SIMS [-1, 1]); for MOSI-style metrics the valid and test splits hold at least
    one non-zero label (MMSA's ``Non0_acc_2`` / ``Non0_F1_score`` divide by their count and fail after
    training otherwise).  ``encoder`` (``{'vocab_size', 'max_position_embeddings', 'type_vocab_size'}``,
    see ``compat.encoder_limits``; missing keys are not checked) bounds, with ``use_bert``, the
    token ids (< vocab_size), the text length L (<= max_position_embeddings) and the segment ids
    (< type_vocab_size): out-of-range values otherwise crash inside the embedding (a device-side
    assert on CUDA).  ``sources`` maps a key to the file it was read from (for error messages).
    NaN/inf in audio/vision are left to
    :func:`sanitize_features`; values beyond float32's range are refused.

    Zero lengths are accepted (they occur in real files); the model must handle them.

    Returns a summary ``{split: {'n', 'seq_lens': (L, La, Lv), 'feature_dims': (dt, da, dv),
    'zero_audio_lengths', 'zero_vision_lengths', 'label_min', 'label_max'}}``; with ``use_bert`` the
    text width ``dt`` is that of the file's encoder states ``text`` when present, else None (the
    encoder's hidden size decides it).  Raises one :class:`MMINDataError` on the
    first problem.
    """
    ctx = _Ctx(path, sources)
    encoder = dict(encoder or {})
    if not isinstance(data, Mapping):
        ctx.fail(None, None, "a dict with the splits 'train', 'valid', 'test' (an MMSA feature file)",
                 _describe(data))
    spec = _spec(dataset_name)
    layout = spec or datasets.MMSA_STANDARD
    label_max = spec.label_max if spec is not None else None
    nonzero_splits = spec.nonzero_splits if spec is not None else ()
    label_keys = spec.label_keys if spec is not None else ("regression_labels",)
    text_key = layout.text_key(use_bert)
    seq_keys = layout.modality_keys[1:]
    required = [text_key, *seq_keys, "regression_labels", "id", "raw_text"]
    if not need_data_aligned:
        required += [datasets.length_key(k) for k in layout.sequence_keys]
    required += list(label_keys[1:])

    dims_seen = {}
    summary = {}
    for split in SPLITS:
        if split not in data:
            ctx.fail(None, None, f"the splits {list(SPLITS)}",
                     f"no '{split}' split (keys: {sorted(map(str, data.keys()))[:10]})")
        s = data[split]
        if not isinstance(s, Mapping):
            ctx.fail(split, None, "a dict of arrays", _describe(s))
        for key in required:
            if key not in s:
                ctx.fail(split, key, "the key to be present",
                         f"it missing (keys: {sorted(map(str, s.keys()))})")

        labels = _check_labels(ctx, split, "regression_labels", s["regression_labels"],
                               _length(ctx, split, "regression_labels", s["regression_labels"]),
                               label_max, need_ndarray=False)
        n = int(labels.shape[0])
        if n < 1:
            ctx.fail(split, "regression_labels", "at least one sample", "0 samples")
        if split in nonzero_splits and not np.any(labels != 0):
            ctx.fail(split, "regression_labels", "at least one non-zero label (MMSA's Non0_acc_2 and "
                                                 "Non0_F1_score are computed over the non-zero labels)",
                     f"all {n} labels are 0")
        for key in label_keys[1:]:
            _check_labels(ctx, split, key, s[key], n, label_max, need_ndarray=True)
        for key in ("id", "raw_text"):
            _check_strings(ctx, split, key, s[key], n)

        # --- text ---------------------------------------------------------------------------
        t = _numeric_array(ctx, split, text_key, s[text_key], ndim=3)
        if t.shape[0] != n:
            ctx.fail(split, text_key, f"{n} samples (the sample count of 'regression_labels')",
                     _describe(t))
        if use_bert:
            if t.shape[1] != 3:
                ctx.fail(split, text_key, "shape (N, 3, L): token ids, attention mask, "
                                          "segment ids", _describe(t))
            L_text = int(t.shape[2])
            if L_text < 1:
                ctx.fail(split, text_key, "a sequence length L >= 1", _describe(t))
            ids, mask, seg = t[:, 0, :], t[:, 1, :], t[:, 2, :]
            if _nonfinite_count(ids) or (ids.dtype.kind == "f" and (ids != np.round(ids)).any()):
                ctx.fail(split, text_key, "integral token ids in row 0",
                         "non-integral or non-finite values")
            lo, hi = float(ids.min()), float(ids.max())
            if lo < 0 or hi >= 2 ** 24:
                ctx.fail(split, text_key, "token ids in row 0 within [0, 2**24) (float32-exact)",
                         f"values in [{lo:g}, {hi:g}]")
            for row, name, arr in ((1, "attention mask", mask), (2, "segment ids", seg)):
                bad = ~((arr == 0) | (arr == 1))
                if bad.any():
                    i = np.argwhere(bad)[0]
                    ctx.fail(split, text_key, f"{name} (row {row}) of 0/1 values",
                             f"{arr[tuple(i)].item()!r} at sample {int(i[0])}, step {int(i[1])}")
            _check_against_encoder(ctx, split, text_key, ids, seg, L_text, encoder)
            states = s.get(layout.modality_keys[0])
            d_text = int(states.shape[2]) if isinstance(states, np.ndarray) and states.ndim == 3 else None
        else:
            L_text, d_text = int(t.shape[1]), int(t.shape[2])
            if L_text < 1 or d_text < 1:
                ctx.fail(split, text_key, "shape (N, L, d) with L, d >= 1", _describe(t))
            bad = _nonfinite_count(t)
            if bad:
                ctx.fail(split, text_key, "finite text features (only audio/vision are "
                                          "sanitized)", f"{bad} NaN/inf value(s)")
            _f32_representable(ctx, split, text_key, t)
            prev = dims_seen.setdefault("text", (split, d_text))
            if prev[1] != d_text:
                ctx.fail(split, text_key, f"feature dim {prev[1]} (as in split '{prev[0]}')",
                         f"{d_text} ({_describe(t)})")

        # --- audio / vision ---------------------------------------------------------------------
        seq, dims, zeros = {}, {}, {}
        for key in seq_keys:
            a = _numeric_array(ctx, split, key, s[key], ndim=3)
            if a.shape[0] != n:
                ctx.fail(split, key, f"{n} samples (the sample count of 'regression_labels')",
                         _describe(a))
            if a.shape[1] < 1 or a.shape[2] < 1:
                ctx.fail(split, key, "shape (N, L, d) with L, d >= 1", _describe(a))
            _f32_representable(ctx, split, key, a)
            seq[key], dims[key] = int(a.shape[1]), int(a.shape[2])
            prev = dims_seen.setdefault(key, (split, dims[key]))
            if prev[1] != dims[key]:
                ctx.fail(split, key, f"feature dim {prev[1]} (as in split '{prev[0]}')",
                         f"{dims[key]} ({_describe(a)})")
            if need_data_aligned:
                if seq[key] != L_text:
                    ctx.fail(split, key, f"aligned data: sequence length {L_text} (as the text)",
                             _describe(a))
                if datasets.length_key(key) in s:
                    _check_lengths(ctx, split, datasets.length_key(key), s[datasets.length_key(key)], n,
                                   seq[key])
                zeros[key] = 0
            elif key in layout.sequence_keys:
                lens = _check_lengths(ctx, split, datasets.length_key(key), s[datasets.length_key(key)], n,
                                      seq[key])
                zeros[key] = int(np.count_nonzero(lens == 0))

        a_key, v_key = seq_keys
        summary[split] = {
            "n": n,
            "seq_lens": (L_text, seq[a_key], seq[v_key]),
            "feature_dims": (d_text, dims[a_key], dims[v_key]),
            "zero_audio_lengths": zeros.get(a_key, 0),
            "zero_vision_lengths": zeros.get(v_key, 0),
            "label_min": float(labels.min()),
            "label_max": float(labels.max()),
        }
    return summary


def _check_against_encoder(ctx, split, key, ids, seg, L_text, encoder):
    """Token ids < vocab_size, L <= max_position_embeddings, segment ids < type_vocab_size."""
    src = " (from the 'pretrained' encoder's config)"
    mp = encoder.get("max_position_embeddings")
    if mp is not None and L_text > mp:
        ctx.fail(split, key, f"a text length L <= {mp}, the encoder's max_position_embeddings{src}",
                 f"L = {L_text}")
    vs = encoder.get("vocab_size")
    if vs is not None and ids.size and float(ids.max()) >= vs:
        i = np.argwhere(ids >= vs)[0]
        ctx.fail(split, key, f"token ids in row 0 below the encoder's vocab_size {vs}{src}",
                 f"{ids[tuple(i)].item():g} at sample {int(i[0])}, step {int(i[1])}")
    tv = encoder.get("type_vocab_size")
    if tv is not None and seg.size and float(seg.max()) >= tv:
        i = np.argwhere(seg >= tv)[0]
        ctx.fail(split, key, f"segment ids (row 2) below the encoder's type_vocab_size {tv}{src}",
                 f"{seg[tuple(i)].item():g} at sample {int(i[0])}, step {int(i[1])}")


def validate_run_features(main, main_path, extra=None, *, use_bert=True, need_data_aligned=False,
                          dataset_name=None, encoder=None):
    """Validate the data MMSA will train on: the main file with MMSA's per-modality overrides.

    ``extra`` maps ``'feature_T'`` / ``'feature_A'`` / ``'feature_V'`` to ``(data, path)``.  Each
    such file must be a dict of the three splits holding what MMSA reads from it (``text_bert``
    or ``text``; ``audio`` [+ ``audio_lengths``]; ``vision`` [+ ``vision_lengths``]); those keys
    then replace the main file's, exactly as MMSA's loader does, and the merged splits go through
    :func:`validate_features` -- so an override is checked like the main file and against it:
    the same sample count per split, feature dims equal across splits, lengths within [0, L] of
    the override's own L (negative lengths are an error, not clamped), aligned data of one L.
    Errors name the file the offending key was read from.  Returns the summary of
    :func:`validate_features`.
    """
    ctx = _Ctx(main_path)
    layout = _spec(dataset_name) or datasets.MMSA_STANDARD
    if not isinstance(main, Mapping):
        ctx.fail(None, None, "a dict with the splits 'train', 'valid', 'test' (an MMSA feature file)",
                 _describe(main))
    merged = {split: (dict(main[split]) if isinstance(main.get(split), Mapping) else main.get(split))
              for split in main}
    sources = {}
    for name, (data, path) in sorted((extra or {}).items()):
        fctx = _Ctx(path)
        # what MMSA's loader reads from that file (MMSA.data_loader.MMDataset.__init_mosi)
        keys = list(layout.override_keys(name, use_bert, need_data_aligned))
        if not isinstance(data, Mapping):
            fctx.fail(None, None, f"a dict with the splits {list(SPLITS)} ({name} file)", _describe(data))
        for split in SPLITS:
            s = data.get(split)
            if not isinstance(s, Mapping):
                fctx.fail(split, None, f"a dict holding {keys} ({name} file)",
                          "no such split" if split not in data else _describe(s))
            for key in keys:
                if key not in s:
                    fctx.fail(split, key, f"the key to be present ({name} file)",
                              f"it missing (keys: {sorted(map(str, s.keys()))[:10]})")
                if isinstance(merged.get(split), dict):
                    merged[split][key] = s[key]
        sources.update({key: path for key in keys})
    return validate_features(merged, main_path, use_bert=use_bert, need_data_aligned=need_data_aligned,
                             dataset_name=dataset_name, encoder=encoder, sources=sources)


def sanitize_features(data, path, warn=True, keys=None):
    """Replace NaN, +inf and -inf in every split's 'audio'/'vision' float arrays (``keys``; default the
    MMSA-Standard sequence keys) by 0, in place.

    Returns ``{split: {modality: {'nan': k, 'posinf': k, 'neginf': k}}}`` for the arrays that had
    any (empty when clean).  When something was replaced and ``warn``, emits ONE warning (``warnings.warn``
    and ``logging.getLogger('MMSA').warning``) with the counts per split and modality; nothing
    when clean.  Anything that is not a float ndarray is skipped (see :func:`validate_features`).
    """
    counts = {}
    if not isinstance(data, Mapping):
        return counts
    for split in SPLITS:
        s = data.get(split)
        if not isinstance(s, Mapping):
            continue
        for key in keys or datasets.MMSA_STANDARD.sequence_keys:
            a = s.get(key)
            if not isinstance(a, np.ndarray) or a.dtype.kind != "f" or a.size == 0:
                continue
            c = {"nan": 0, "posinf": 0, "neginf": 0}
            if not a.flags.writeable:
                a = a.copy()
                s[key] = a  # type: ignore[index]
            flat = a.reshape(-1) if a.flags.c_contiguous else None
            chunks = _chunks(a) if flat is not None else [a]
            for ch in chunks:
                nan = np.isnan(ch)
                pinf = np.isposinf(ch)
                ninf = np.isneginf(ch)
                k = (int(nan.sum()), int(pinf.sum()), int(ninf.sum()))
                if any(k):
                    c["nan"] += k[0]
                    c["posinf"] += k[1]
                    c["neginf"] += k[2]
                    ch[nan | pinf | ninf] = 0
            if any(c.values()):
                counts.setdefault(split, {})[key] = c
    if counts and warn:
        parts = []
        for split, mods in counts.items():
            for key, c in mods.items():
                parts.append(f"{split}/{key}: {c['nan']} NaN, {c['posinf']} +inf, "
                             f"{c['neginf']} -inf")
        total = sum(sum(c.values()) for m in counts.values() for c in m.values())
        msg = (f"{_Ctx(path).path}: replaced {total} non-finite audio/vision value(s) by 0 "
               f"({'; '.join(parts)})")
        warnings.warn(msg, RuntimeWarning, stacklevel=2)
        logger.warning(msg)
    return counts
