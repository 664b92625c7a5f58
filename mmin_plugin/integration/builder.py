"""`python -m mmin_plugin features build`: your own clips -> an MMSA-layout feature file.

Input:

* a CSV of clips with the columns ``id``, ``text``, ``label``, ``split`` (``train`` / ``valid`` /
  ``test``), one row per clip (other columns are ignored);
* optionally, per-clip audio and video arrays ``DIR/<id>.npy`` of shape (T, d) (``numpy.save``; any
  T >= 0, one d per modality); every clip needs one and every ``.npy`` in the folder must be a clip's;
* a BERT-style encoder folder (``config.json``, the weights, the tokenizer's vocabulary), read with
  ``transformers`` offline (``local_files_only``).

Output (MMSA-Standard layout, the one :mod:`mmin_plugin.datasets` describes): per split ``id``,
``raw_text``, ``text`` (N, L, d) the encoder's last hidden states, zero after the tokens;
``text_bert`` (N, 3, L) token ids / attention mask / segment ids; ``audio`` / ``vision`` (N, La, d)
the arrays, zero after their real length; ``audio_lengths`` / ``vision_lengths`` the real lengths;
``regression_labels`` (N,) float32 and ``classification_labels`` (0 / 1 / 2 for negative / zero /
positive). A modality without a folder gets one all-zero frame per clip of
width 1 (no information, and no model divides by a zero length). The padded audio/video length is
at least the text's, because MMSA's MISA packs its audio and video LSTMs with the text lengths.
``.pkl`` writes MMSA's pickle, any other suffix the pickle-free safe format
(:mod:`mmin_plugin.features.safeformat`); the file is checked with the feature-file checks and
written atomically.

Streaming: the clips are encoded one batch at a time into preallocated output arrays, so at most
one batch of encoder states is held beyond them; arrays are read one clip at a time. A bad input is
an :class:`~mmin_plugin.errors.MMINDataError` naming the clip (missing or extra array, wrong
dimension, an id in two splits, a label out of range, ...). Needs torch and transformers, which is
why this lives outside :mod:`mmin_plugin.features`.
"""
from __future__ import annotations

import csv
import math
import os
import pickle
import re
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from .. import datasets
from ..atomic import atomic_write
from ..constants import SPLITS
from ..errors import MMINDataError

__all__ = ["build_features", "read_clips", "CLIP_COLUMNS"]

#: the CSV columns a clip table must have
CLIP_COLUMNS = ("id", "text", "label", "split")
#: clip ids become file names (<id>.npy): letters, digits and _ . $ - only, not starting with '.'
_ID = re.compile(r"[A-Za-z0-9_$-][A-Za-z0-9_.$-]{0,199}")
_MAX_CSV_BYTES = 1 << 30


def read_clips(path, label_range: Tuple[float, float]) -> Dict[str, List[Dict]]:
    """The clips of the CSV at `path`, ``{split: [{'id', 'text', 'label'}, ...]}`` in file order; every
    problem an :class:`MMINDataError` naming the file, the line and the clip."""
    path = Path(path)
    if path.stat().st_size > _MAX_CSV_BYTES:
        raise MMINDataError(f"{path}: expected a clip table of at most {_MAX_CSV_BYTES} bytes; found "
                            f"{path.stat().st_size}")
    lo, hi = label_range
    out: Dict[str, List[Dict]] = {s: [] for s in SPLITS}
    seen: Dict[str, Tuple[str, int]] = {}
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in CLIP_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise MMINDataError(f"{path}: expected the columns {list(CLIP_COLUMNS)}; missing {missing} "
                                f"(found {reader.fieldnames})")
        for row in reader:
            line = reader.line_num
            cid, split = (row["id"] or "").strip(), (row["split"] or "").strip().lower()
            where = f"{path}, line {line}, clip {cid!r}"
            if not _ID.fullmatch(cid):
                raise MMINDataError(f"{where}: expected an id of letters, digits, '_', '.', '$', '-' (a file name "
                                    f"<id>.npy), not starting with '.'; found {cid!r}")
            if split not in out:
                raise MMINDataError(f"{where}: column 'split': expected one of {list(SPLITS)}; found {split!r}")
            if cid in seen:
                first_split, first_line = seen[cid]
                what = (f"in two splits ('{first_split}' on line {first_line}, '{split}' here)" if first_split != split
                        else f"twice (also on line {first_line})")
                raise MMINDataError(f"{where}: expected each clip once; found it {what}")
            seen[cid] = (split, line)
            try:
                label = float(row["label"])
            except (TypeError, ValueError):
                label = float("nan")
            if not (math.isfinite(label) and lo <= label <= hi):
                raise MMINDataError(f"{where}: column 'label': expected a number in [{lo:g}, {hi:g}]; found "
                                    f"{row['label']!r}")
            out[split].append({"id": cid, "text": row["text"] or "", "label": label})
    empty = [s for s in SPLITS if not out[s]]
    if empty:
        raise MMINDataError(f"{path}: expected at least one clip in every split {list(SPLITS)}; none in {empty}")
    return out


class _Arrays:
    """One modality's per-clip arrays: DIR/<id>.npy, checked against the clip list up front."""

    def __init__(self, folder, modality: str, ids: List[str]):
        self.folder, self.modality = Path(folder), modality
        files = {p.name[:-4]: p for p in self.folder.iterdir() if p.name.endswith(".npy") and p.is_file()}
        wanted = set(ids)
        extra = sorted(set(files) - wanted)
        if extra:
            raise MMINDataError(f"{self.folder}: {modality} array {extra[0]}.npy belongs to no clip of the table "
                                f"({len(extra)} such file(s))")
        missing = [i for i in ids if i not in files]
        if missing:
            raise MMINDataError(f"{self.folder}: clip {missing[0]!r}: expected a {modality} array "
                                f"{missing[0]}.npy; found none ({len(missing)} clip(s) without one)")
        self.files = files  # paths from our own listing, never built from the table's text
        self.dim: Optional[int] = None
        self.dim_from: Optional[str] = None

    def header(self, cid: str) -> Tuple[int, int]:
        """(T, d) of a clip's array, checked (numeric, 2-D, one d for every clip)."""
        a = self.open(cid)
        return int(a.shape[0]), int(a.shape[1])

    def open(self, cid: str) -> np.ndarray:
        path = self.files[cid]
        try:
            a = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise MMINDataError(f"{path}: clip {cid!r}: expected a .npy array (numpy.save, no pickle); found an "
                                f"unreadable file ({exc})") from None
        if not isinstance(a, np.ndarray) or a.dtype.kind not in "biuf" or a.ndim != 2 or a.shape[1] < 1:
            found = f"dtype {a.dtype}, shape {tuple(a.shape)}" if isinstance(a, np.ndarray) else type(a).__name__
            raise MMINDataError(f"{path}: clip {cid!r}: expected a numeric {self.modality} array of shape (T, d) with "
                                f"d >= 1; found {found}")
        if self.dim is None:
            self.dim, self.dim_from = int(a.shape[1]), cid
        elif a.shape[1] != self.dim:
            raise MMINDataError(f"{path}: clip {cid!r}: expected {self.modality} dimension {self.dim} (as clip "
                                f"{self.dim_from!r}); found shape {tuple(a.shape)}")
        return a


def _load_encoder(encoder):
    from transformers import AutoModel, AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(encoder), local_files_only=True)
        model = AutoModel.from_pretrained(str(encoder), local_files_only=True).eval()
    except (OSError, ValueError) as exc:
        raise MMINDataError(f"{encoder}: expected a BERT-style encoder folder (config.json, weights, vocabulary) "
                            f"readable offline; found {type(exc).__name__}: {exc}") from None
    return tok, model


def build_features(clips, out, *, encoder, audio_dir=None, video_dir=None, max_text_len: int = 50,
                   max_audio_len: Optional[int] = None, max_video_len: Optional[int] = None,
                   label_range: Tuple[float, float] = (-3.0, 3.0), batch_size: int = 32,
                   progress: bool = True) -> Dict:
    """Write the feature file of the module docstring from the clip table `clips`; return
    ``{'sizes', 'seq_lens', 'feature_dims', 'format', 'truncated'}`` (``truncated``: arrays longer than
    the padded length given, per modality; they keep their first frames)."""
    import torch
    from tqdm import tqdm

    from ..features.safeformat import dump_safe
    from ..features.validation import validate_features

    layout = datasets.MMSA_STANDARD
    table = read_clips(clips, label_range)
    ids = [c["id"] for s in SPLITS for c in table[s]]
    arrays = {key: (_Arrays(folder, what, ids) if folder else None)
              for key, what, folder in zip(layout.modality_keys[1:], ("audio", "video"), (audio_dir, video_dir))}
    # pass 1, headers only: every array checked and the padded lengths known before anything is encoded
    lengths = {key: {cid: arr.header(cid)[0] for cid in ids} if arr else None for key, arr in arrays.items()}
    pad = {}
    truncated = {}
    for key, given in zip(layout.modality_keys[1:], (max_audio_len, max_video_len)):
        longest = max(lengths[key].values()) if lengths[key] else 1
        pad[key] = int(given) if given else max(longest, int(max_text_len), 1)
        truncated[key] = sum(t > pad[key] for t in lengths[key].values()) if lengths[key] else 0
    tok, model = _load_encoder(encoder)
    d_text = int(model.config.hidden_size)
    L = int(max_text_len)
    data = {}
    bar = tqdm(total=len(ids), desc="features build", unit="clip", disable=not progress)
    try:
        for split in SPLITS:
            rows = table[split]
            n = len(rows)
            s = {"id": np.array([c["id"] for c in rows]), "raw_text": np.array([c["text"] for c in rows]),
                 layout.modality_keys[0]: np.zeros((n, L, d_text), np.float32),
                 layout.text_ids_key: np.zeros((n, 3, L), np.float32),
                 "regression_labels": np.array([c["label"] for c in rows], np.float32)}
            # MMSA-Standard's 3 classes (0 negative, 1 neutral, 2 positive); MMSA's classification mode reads them
            s["classification_labels"] = (np.sign(s["regression_labels"]) + 1).astype(np.float32)
            for i in range(0, n, batch_size):
                chunk = rows[i:i + batch_size]
                enc = tok([c["text"] for c in chunk], padding="max_length", truncation=True, max_length=L,
                          return_tensors="pt")
                mask = enc["attention_mask"]
                segments = enc.get("token_type_ids", torch.zeros_like(mask))
                with torch.no_grad():
                    states = model(input_ids=enc["input_ids"], attention_mask=mask,
                                   token_type_ids=segments).last_hidden_state
                s[layout.modality_keys[0]][i:i + len(chunk)] = (states * mask[..., None]).numpy()
                s[layout.text_ids_key][i:i + len(chunk)] = torch.stack(
                    [enc["input_ids"], mask, segments], dim=1).numpy()
                del states
                bar.update(len(chunk))
            for key, arr in arrays.items():
                x = np.zeros((n, pad[key], arr.dim if arr else 1), np.float32)
                lens = []
                for j, c in enumerate(rows):
                    if arr is None:
                        lens.append(1)  # one all-zero frame: no information, never a zero length
                        continue
                    a = arr.open(c["id"])
                    t = min(int(a.shape[0]), pad[key])
                    x[j, :t] = np.asarray(a[:t], dtype=np.float32)
                    lens.append(t)
                s[key] = x
                s[datasets.length_key(key)] = lens
            data[split] = s
    finally:
        bar.close()
    for use_bert in (False, True):  # the file as every model reads it (MMIN/MulT: states; MISA: ids)
        validate_features(data, out, use_bert=use_bert, encoder={
            "vocab_size": int(model.config.vocab_size),
            "max_position_embeddings": int(model.config.max_position_embeddings),
            "type_vocab_size": int(getattr(model.config, "type_vocab_size", 2))})
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fmt = "MMSA pickle" if out.suffix == ".pkl" else "safe format"
    if out.suffix == ".pkl":
        atomic_write(out, lambda f: pickle.dump(data, f, protocol=4))
    else:
        atomic_write(out, lambda f: dump_safe(data, f, source=os.fspath(out)))
    a_key, v_key = layout.modality_keys[1:]
    return {"sizes": {sp: len(table[sp]) for sp in SPLITS}, "seq_lens": (L, pad[a_key], pad[v_key]),
            "feature_dims": (d_text, arrays[a_key].dim if arrays[a_key] else 1,
                             arrays[v_key].dim if arrays[v_key] else 1),
            "format": fmt, "truncated": truncated}
