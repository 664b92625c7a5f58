"""Start-up check of the audio / vision lengths of a feature file, and `lengths_from: "nonzero"`.

MMIN reads frames ``[0, length)`` of every audio / vision sequence (packed LSTMs, masked
attention keys) and nothing else, so it trusts ``audio_lengths`` / ``vision_lengths`` completely.
MMSA-Standard files carry lengths computed by MMSA's ``getLengths`` (index of the first all-zero
frame, 0 forced to 1), which assumes right padding.  A left-padded file (the MulT authors'
arrays were), or one whose lengths were computed another way, makes MMIN read padding as signal
and drop real frames, silently.  This module measures that, per split and modality:

* a *frame* is non-zero when any of its features is non-zero (after
  :func:`~mmin_plugin.features.validation.sanitize_features` has turned NaN/inf into 0);
* ``first`` = index of the first non-zero frame, ``last`` = one past the last non-zero frame
  (``first = last = 0`` for an all-zero sequence); ``length`` = the file's length;
* ``front_padded``: ``first > 0`` -- the sequence starts with zero frames (padding at the front);
* ``beyond_length``: ``last > length`` -- non-zero frames after the given length, i.e. the length
  is shorter than the last non-zero frame (MMIN drops real frames);
* ``zero_inside``: an all-zero frame at an index ``< length`` (MMIN reads it as signal; covers
  front padding under a right-padding length and zero frames inside a sequence);
* ``forced_to_one``: ``length == 1`` over an all-zero first frame (what ``getLengths`` gives an
  empty or left-padded sequence: its first all-zero frame is frame 0, and 0 is forced to 1);
* ``suspect``: any of the above.

:func:`check_lengths` counts these and emits ONE warning (``warnings.warn`` and the ``MMSA``
logger) stating the counts and what MMIN will read.  With ``lengths_from="nonzero"`` it also
rewrites the data in place (a run records it as a fix-up that the loader applies wherever MMSA
reads the file, see :mod:`~mmin_plugin.features.load`): every sequence's
non-zero span ``[first, last)`` is moved to the front (frames ``[0, last - first)``, zeros after)
and its length set to ``last - first``.  So the model still reads frames ``[0, length)``, and

* a right-padded sequence keeps its frames; its length becomes the index one past its last
  non-zero frame (trailing all-zero frames inside the old length are dropped, as ``getLengths``
  would have done);
* a left-padded sequence gets its frames at the front, in order, and its real length;
* zero frames *inside* the span are kept (only leading and trailing zeros are padding);
* an all-zero sequence gets length 0 (MMIN gives it a zero LSTM state and no attention).

Everything is vectorised over chunks of samples (at most :data:`CHUNK_ELEMENTS` array elements
at a time), so a MOSEI-sized audio array (22k x 500 x 74 floats) is scanned with bounded
temporary memory.
"""
from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping
from typing import Dict, Tuple

import numpy as np

from .. import datasets
from ..constants import LENGTHS_FROM, SPLITS
from ..errors import MMINConfigError
from .limits import CHUNK_ELEMENTS

logger = logging.getLogger("MMSA." + __name__)

__all__ = ["frame_spans", "length_report", "recompute_lengths", "check_lengths"]

COUNT_KEYS = ("front_padded", "beyond_length", "zero_inside", "forced_to_one", "suspect")


def _sample_chunks(x: np.ndarray):
    """Slices of whole samples with at most CHUNK_ELEMENTS elements each (at least one sample)."""
    per_sample = max(1, int(np.prod(x.shape[1:])))
    step = max(1, CHUNK_ELEMENTS // per_sample)
    for i in range(0, x.shape[0], step):
        yield slice(i, min(i + step, x.shape[0]))


def _nonzero_frames(x: np.ndarray) -> np.ndarray:
    """(n, L, d) -> (n, L) bool: frame has a non-zero feature. NaN counts as non-zero."""
    return (x != 0).any(axis=2)


def _spans_of(nz: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(n, L) bool -> first non-zero frame, one past the last one; (0, 0) where none."""
    L = nz.shape[1]
    has = nz.any(axis=1)
    first = np.where(has, nz.argmax(axis=1), 0)
    last = np.where(has, L - nz[:, ::-1].argmax(axis=1), 0)
    return first.astype(np.int64), last.astype(np.int64)


def frame_spans(x: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """``(first, last)`` per sample of a (N, L, d) array: the non-zero span ``[first, last)``."""
    firsts, lasts = [], []
    for sl in _sample_chunks(x):
        f, la = _spans_of(_nonzero_frames(x[sl]))
        firsts.append(f)
        lasts.append(la)
    if not firsts:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(firsts), np.concatenate(lasts)


def length_report(x: np.ndarray, lengths) -> Dict[str, int]:
    """Counts of :data:`COUNT_KEYS` (see the module docstring) for one (N, L, d) array and its
    N file lengths, plus ``n`` (the sample count)."""
    lengths = np.asarray(lengths, dtype=np.int64).reshape(-1)
    counts = dict.fromkeys(COUNT_KEYS, 0)
    for sl in _sample_chunks(x):
        nz = _nonzero_frames(x[sl])  # (n, L)
        first, last = _spans_of(nz)
        ln = lengths[sl]
        steps = np.arange(nz.shape[1])[None, :]
        front = first > 0
        beyond = last > ln
        zero_inside = ((~nz) & (steps < ln[:, None])).any(axis=1)
        forced = (ln == 1) & ~nz[:, 0]
        for key, flag in (("front_padded", front), ("beyond_length", beyond), ("zero_inside", zero_inside),
                          ("forced_to_one", forced), ("suspect", front | beyond | zero_inside | forced)):
            counts[key] += int(np.count_nonzero(flag))
    counts["n"] = int(x.shape[0])
    return counts


def recompute_lengths(x: np.ndarray) -> np.ndarray:
    """``lengths_from="nonzero"`` for one (N, L, d) array, IN PLACE: each sequence's non-zero span
    ``[first, last)`` is moved to frames ``[0, last - first)`` (zeros after); returns the new
    lengths ``last - first`` (int64, 0 for an all-zero sequence).  ``x`` must be writeable."""
    out = np.zeros(x.shape[0], dtype=np.int64)
    for sl in _sample_chunks(x):
        first, last = _spans_of(_nonzero_frames(x[sl]))
        out[sl] = last - first
        move = np.flatnonzero(first > 0)
        if move.size == 0:
            continue
        rows = x[sl][move]  # (k, L, d) copy
        L = rows.shape[1]
        src = first[move][:, None] + np.arange(L)[None, :]  # (k, L) source frame of each target frame
        keep = src < last[move][:, None]
        shifted = np.take_along_axis(rows, np.minimum(src, L - 1)[..., None], axis=1)
        shifted[~keep] = 0
        x[sl.start + move] = shifted
    return out


def _as_lengths(v) -> np.ndarray:
    return np.asarray(list(v) if not isinstance(v, np.ndarray) else v).astype(np.int64).reshape(-1)


def check_lengths(data, path, lengths_from: str = "file", keys=None, warn=True):
    """Check (and with ``lengths_from="nonzero"`` recompute) the lengths of ``keys`` in every split.

    ``data`` is a loaded feature file (validated and sanitized); ``keys`` default to the sequence keys
    of the MMSA-Standard layout (:data:`mmin_plugin.datasets.MMSA_STANDARD`: the modalities whose
    lengths MMSA passes to the model; text has its own mask); splits or keys without
    ``<key>_lengths`` (aligned data) are skipped.  Returns ``{split: {key: counts}}`` (see
    :func:`length_report`; the counts describe the file as given).  When any sequence is suspect,
    emits ONE warning (unless not ``warn``) stating the counts per split and modality and what MMIN will read.  With
    ``"nonzero"`` the arrays are rewritten in place and ``<key>_lengths`` replaced by lists of
    ints (the type MMSA's files use), see :func:`recompute_lengths`.
    """
    if lengths_from not in LENGTHS_FROM:
        raise MMINConfigError(f"config key 'lengths_from': expected one of {list(LENGTHS_FROM)}; "
                              f"found {lengths_from!r}")
    report, changed = {}, 0
    if not isinstance(data, Mapping):
        return report
    keys = datasets.MMSA_STANDARD.sequence_keys if keys is None else keys
    for split in SPLITS:
        s = data.get(split)
        if not isinstance(s, Mapping):
            continue
        for key in keys:
            x, lens = s.get(key), s.get(datasets.length_key(key))
            if not isinstance(x, np.ndarray) or x.ndim != 3 or lens is None:
                continue
            file_lengths = _as_lengths(lens)
            report.setdefault(split, {})[key] = length_report(x, file_lengths)
            if lengths_from == "nonzero":
                if not x.flags.writeable:
                    x = x.copy()
                    s[key] = x  # type: ignore[index]
                new = recompute_lengths(x)
                changed += int(np.count_nonzero(new != file_lengths))
                s[datasets.length_key(key)] = [int(v) for v in new]  # type: ignore[index]
    if warn:
        _warn(report, path, lengths_from, changed)
    return report


def _warn(report, path, lengths_from, changed) -> None:
    parts = []
    for split, mods in report.items():
        for key, c in mods.items():
            if c["suspect"]:
                parts.append(f"{split}/{key} {c['suspect']}/{c['n']} (padding at the front {c['front_padded']}, "
                             f"non-zero frames after the length {c['beyond_length']}, zero frames before the length "
                             f"{c['zero_inside']}, lengths forced to 1 {c['forced_to_one']})")
    if not parts:
        return
    where = str(path)
    if lengths_from == "file":
        then = ("MMIN reads frames [0, length) as the file gives them, so it reads padding as signal and drops "
                "the frames after each length; if the file is left-padded or its lengths are wrong, set "
                "lengths_from='nonzero' (lengths recomputed from the non-zero frames, frames moved to the front)")
    else:
        moved = sum(c["front_padded"] for mods in report.values() for c in mods.values())
        then = (f"lengths_from='nonzero': MMIN reads each sequence's non-zero span moved to the front "
                f"(frames [first non-zero, last non-zero] -> [0, length)); {moved} sequence(s) moved to the front, "
                f"{changed} length(s) changed")
    msg = f"{where}: sequences whose lengths do not match their non-zero frames: {'; '.join(parts)}. {then}"
    warnings.warn(msg, RuntimeWarning, stacklevel=3)
    logger.warning("%s", msg)
