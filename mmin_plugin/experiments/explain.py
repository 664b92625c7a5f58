"""Attention you can look at: the sparsemax maps of one sample, and how sparse they are.

``python -m mmin_plugin explain --checkpoint CKPT --feature-path FILE --sample ID [--out DIR]``
or :func:`explain` from Python:

1. the run configuration is read from ``<checkpoint stem>.config.json`` (the trainer writes it
   beside every checkpoint; MMSA's checkpoint is a bare ``state_dict``), or from
   ``--config-file`` (a JSON object of MMIN's parameters, e.g. such a file), then ``--set``
   overrides; MMIN is rebuilt from it and the checkpoint loaded (strictly: a mismatch is an
   error naming the keys);
2. the sample is read from the feature file with the project's restricted unpickler (``ID`` as in
   the file's ``id`` key, or ``split:index``), repaired as a run repairs it (NaN/inf -> 0; with
   ``lengths_from: nonzero`` its lengths recomputed and frames moved to the front, see
   :mod:`~mmin_plugin.features.lengths`);
3. one forward pass with ``return_attention=True`` gives every CA module's sparsemax weights;
   for each modality pair one PNG (``ca_<query>_from_<key>.png``, one panel per stacked layer)
   and one for the coarse-guided step (``guided.png``, one panel per modality) show the weights
   averaged over heads, real queries x real keys only, with the WORDS (the tokenizer of
   ``pretrained`` decoding ``text_bert`` ids) on the text axis and the utterance (``raw_text``)
   as title; audio / video axes are frame indices;
4. the support sizes (number of keys with non-zero weight per real query, per head; mean and
   median, per CA module) are printed as a table and written to ``support.csv``.

Figures use matplotlib's Agg backend (no display needed).
"""
from __future__ import annotations

import json
import logging
import math
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List

import numpy as np

from .. import datasets
from ..constants import SPLITS
from ..errors import MMINConfigError, MMINDataError, MMINError
from ..features.zipdir import check_checkpoint_records

logger = logging.getLogger("MMSA." + __name__)

__all__ = ["explain", "load_run_config", "find_sample", "Explanation", "support_table"]

_SHORT = {"text": "L", "video": "V", "audio": "A"}
_LENGTH_KEY = {"audio": "audio_lengths", "video": "vision_lengths"}
_ARRAY_KEY = {"audio": "audio", "video": "vision"}


@dataclass
class Explanation:
    """What :func:`explain` returns: the sample, the prediction, the figures and the support table."""

    sample_id: str
    split: str
    raw_text: str
    label: float
    prediction: float
    tokens: List[str]
    lengths: Dict[str, int]
    support: object  # pandas.DataFrame, one row per CA module
    figures: List[Path] = field(default_factory=list)


# ------------------------------------------------------------------------------------------------
# configuration and checkpoint
# ------------------------------------------------------------------------------------------------
def load_run_config(checkpoint, config_file=None, overrides=None) -> dict:
    """The run's parameters: ``config_file`` if given, else ``<checkpoint stem>.config.json``; then
    ``overrides``.  :class:`MMINConfigError` naming the paths looked at when there is none."""
    from ..integration.trainer import config_path

    path = Path(config_file) if config_file else config_path(checkpoint)
    if not path.is_file():
        raise MMINConfigError(
            f"{path}: expected the run configuration (a JSON object; the trainer writes "
            f"'<checkpoint stem>.config.json' beside each checkpoint); found no such file. Pass --config-file "
            f"with MMIN's parameters (d_model, nheads, pretrained, feature_dims, ablation, ...)")
    try:
        args = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise MMINConfigError(f"{path}: expected a JSON object of MMIN's parameters; found {e}") from e
    if not isinstance(args, dict):
        raise MMINConfigError(f"{path}: expected a JSON object of MMIN's parameters; found {type(args).__name__}")
    args.update(overrides or {})
    for key in ("d_model", "nheads", "feature_dims"):
        if key not in args:
            raise MMINConfigError(f"{path}: config key '{key}': expected it to be present (needed to rebuild MMIN); "
                                  f"found keys {sorted(args)[:12]}...")
    return args


def _checkpoint_state(checkpoint) -> dict:
    """The checkpoint's tensors (torch's weights-only reader), without MMSA's 'Model.' prefix."""
    import torch

    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except Exception as e:  # OSError, RuntimeError, UnpicklingError (weights-only refusal), EOFError ...
        raise MMINError(f"{checkpoint}: expected a checkpoint written by torch.save (a state_dict); found "
                        f"{type(e).__name__}: {str(e)[:300]}") from None
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        raise MMINError(f"{checkpoint}: expected a state_dict (names -> tensors); found {type(state).__name__}")
    # MMSA's AMIO wraps the network as `self.Model`: its checkpoint keys start with 'Model.'
    return {(k[len("Model."):] if k.startswith("Model.") else k): v for k, v in state.items()}


def _expected_shapes(config) -> dict:
    """Parameter and buffer shapes of the configured MMIN, from a model made on the meta device (no
    memory, no weights read): the text encoder is made from its config.json, not its weights."""
    import torch
    from transformers import AutoConfig, AutoModel, BertModel, RobertaModel

    from ..modeling import model as mmin_model

    def encoder_from_config(cfg):
        enc = AutoConfig.from_pretrained(cfg.pretrained)
        if cfg.transformers in ("bert", "roberta"):
            return (BertModel if cfg.transformers == "bert" else RobertaModel)(enc, add_pooling_layer=False)
        return AutoModel.from_config(enc)

    real = mmin_model._load_text_encoder
    mmin_model._load_text_encoder = encoder_from_config
    try:
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            net = mmin_model.MMIN(config)
    finally:
        mmin_model._load_text_encoder = real
    return {k: tuple(v.shape) for k, v in net.state_dict().items()}


def _build_model(args, checkpoint):
    """MMIN of the run's config with the checkpoint's weights.  Before anything is built: the config
    is checked (:class:`~mmin_plugin.modeling.config.MMINConfig`, upper bounds included), the
    checkpoint's zip directory is checked against the tensors the config implies (stored records of
    bounded sizes, :func:`~mmin_plugin.features.zipdir.check_checkpoint_records`), and after
    ``torch.load`` its tensor names and shapes are compared with the ones the config gives."""
    from ..modeling.config import MMINConfig
    from ..modeling.model import MMIN

    config = MMINConfig.from_args(args)
    try:
        want = _expected_shapes(config)
    except MMINError:
        raise
    except Exception as e:  # OSError (no pretrained config.json), ValueError from transformers ...
        raise MMINConfigError(f"config key 'pretrained': expected a text encoder whose config can be read; found "
                              f"{config.pretrained!r} ({type(e).__name__}: {str(e)[:300]})") from None
    # the zip directory first: torch.load inflates compressed records before any shape is seen
    check_checkpoint_records(checkpoint, [math.prod(s) for s in want.values()])
    state = _checkpoint_state(checkpoint)
    missing, unexpected = sorted(set(want) - set(state)), sorted(set(state) - set(want))
    wrong = [f"{k}: {tuple(state[k].shape)} in the checkpoint, {want[k]} for the config"
             for k in sorted(set(want) & set(state)) if tuple(state[k].shape) != want[k]]
    if missing or unexpected or wrong:
        raise MMINError(f"{checkpoint}: expected the weights of the configured MMIN (d_model={config.d_model}, "
                        f"nheads={config.nheads}, feature_dims={list(config.feature_dims)}, ...); found "
                        + "; ".join(part for part in (
                            f"missing {missing[:6]}" if missing else "", f"unexpected {unexpected[:6]}" if unexpected
                            else "", f"other shapes: {wrong[:4]}" if wrong else "") if part)
                        + " (is the config the run's own?)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = MMIN(config)
    net.load_state_dict(state, strict=True)
    return net.eval()


# ------------------------------------------------------------------------------------------------
# the sample
# ------------------------------------------------------------------------------------------------
def _check_features(data, path, args) -> None:
    """The feature file as a run checks it, and its feature widths against the config's."""
    from ..features.validation import validate_features
    from ..modeling.config import MMINConfig

    config = MMINConfig.from_args(args)
    summary = validate_features(data, path, use_bert=config.use_bert, need_data_aligned=config.need_data_aligned,
                                dataset_name=config.dataset_name)
    spec = datasets.get(config.dataset_name)
    keys = (spec.text_key(config.use_bert), *spec.modality_keys[1:])
    for split, s in summary.items():
        for m, (key, have, want) in enumerate(zip(keys, s["feature_dims"], config.feature_dims)):
            if have != want and (m or not config.use_bert):
                raise MMINDataError(f"{path}: split '{split}', key '{key}': expected feature width {want} (the "
                                    f"config's feature_dims {list(config.feature_dims)}); found {have}")


def find_sample(data, sample, path="<feature file>"):
    """``(split, index)`` of ``sample`` (an ``id`` of the file, or ``'split:index'``)."""
    for split in SPLITS:
        ids = [str(i) for i in data.get(split, {}).get("id", [])]
        if sample in ids:
            return split, ids.index(sample)
    m = re.fullmatch(r"(train|valid|test):(\d+)", sample)
    if m and int(m.group(2)) < len(data.get(m.group(1), {}).get("id", [])):
        return m.group(1), int(m.group(2))
    some = [str(i) for i in list(data.get("test", {}).get("id", []))[:3]]
    raise MMINDataError(f"{path}: key 'id': expected a sample id of the file or 'split:index'; found no sample "
                        f"{sample!r} (e.g. {some})")


def _sample_inputs(data, split, i, args, path):
    """The model inputs of one sample, as a run would feed them (batch of one)."""
    import torch

    from ..features.lengths import check_lengths
    from ..features.validation import sanitize_features

    s = data[split]
    spec = datasets.get(args.get("dataset_name") or "mosi")
    text_key = spec.text_key(bool(args.get("use_bert", True)))
    seq_keys = spec.modality_keys[1:]
    one = {key: np.array(s[key][i:i + 1], dtype=np.float32) for key in seq_keys}
    for key in spec.lengths_keys:
        if key in s:
            one[key] = [int(s[key][i])]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # one sample: the counts are for the user of a run, not here
        sanitize_features({"test": one}, path, keys=spec.sequence_keys)
        check_lengths({"test": one}, path, args.get("lengths_from") or "file", keys=spec.sequence_keys)
    text = torch.as_tensor(np.array(s[text_key][i:i + 1], dtype=np.float32))
    kw = {key: torch.tensor(one[key]) for key in spec.lengths_keys if key in one}
    return (text, *(torch.from_numpy(one[key]) for key in seq_keys)), kw


def _tokens(args, text_bert_row, n):
    """The words of the sample: the tokenizer of `pretrained` decoding the ids (ids as text if it fails)."""
    ids = [int(v) for v in np.asarray(text_bert_row[0][:n])]
    try:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(args["pretrained"]))
        return [str(t) for t in tok.convert_ids_to_tokens(ids)]
    except Exception as e:  # noqa: BLE001 - any tokenizer failure: ids are still a usable axis
        logger.warning("explain: could not load the tokenizer of %s (%s); the text axis shows token ids",
                       args.get("pretrained"), e)
        return [str(i) for i in ids]


# ------------------------------------------------------------------------------------------------
# support sizes
# ------------------------------------------------------------------------------------------------
def support_table(attention, query_mask, key_counts=None):
    """pandas DataFrame, one row per CA module: real queries, real keys, mean / median support
    (keys with non-zero weight per real query and head) and mean support / keys."""
    import pandas as pd

    from ..modeling.attention import support_sizes

    stats = support_sizes(attention, query_mask)
    rows = []
    for name in attention:
        st = stats[name]
        keys = (key_counts or {}).get(name)
        rows.append({"CA module": name, "queries": int(query_mask[name].sum()), "heads": int(attention[name].shape[1]),
                     "keys": keys, "mean support": float(st["mean"]), "median support": float(st["median"]),
                     "share of keys": (float(st["mean"]) / keys) if keys else float("nan")})
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------------------
# figures
# ------------------------------------------------------------------------------------------------
def _axis_labels(modality, n, tokens):
    return list(tokens[:n]) if modality == "text" else None


def _heatmap(ax, w, ylabels, xlabels, title, fig):
    """Weights as an image; exact zeros (no head gives the key any weight) are white."""
    import matplotlib

    cmap = matplotlib.colormaps["viridis_r"].with_extremes(bad="white")
    im = ax.imshow(np.ma.masked_equal(w, 0.0), aspect="auto", interpolation="nearest", cmap=cmap, vmin=0.0,
                   vmax=max(float(w.max()), 1e-6))
    ax.set_title(title, fontsize=9)
    if ylabels is not None:
        ax.set_yticks(range(len(ylabels)))
        ax.set_yticklabels(ylabels, fontsize=max(4, min(8, int(500 / max(len(ylabels), 1)))))
    if xlabels is not None:
        ax.set_xticks(range(len(xlabels)))
        ax.set_xticklabels(xlabels, rotation=90, fontsize=max(4, min(8, int(900 / max(len(xlabels), 1)))))
    fig.colorbar(im, ax=ax, fraction=0.025, pad=0.01)
    return im


def _title(header, raw_text, width):
    """The figure title: the header and the utterance, wrapped to the figure width."""
    import textwrap

    chars = max(60, int(width * 13))
    return "\n".join(textwrap.wrap(header, chars) + textwrap.wrap(f'"{raw_text}"', chars)[:3])


def _panel_size(q_modality, n_q, k_modality, n_k):
    """(width, height) in inches of one heatmap panel: room for one label per token on a text
    axis, a fixed size for a frame axis."""
    width = 3.5 + 0.22 * n_k if k_modality == "text" else 4.0 + 0.045 * n_k
    height = 1.4 + 0.17 * n_q if q_modality == "text" else 3.2
    return float(np.clip(width, 8.0, 18.0)), float(np.clip(height, 1.6, 9.0))


def _draw_pairs(attn, names, lengths, tokens, raw_text, header, out_dir):
    import matplotlib.pyplot as plt

    pairs = {}
    for name in names:
        if "_from_" in name and "/" in name:
            pair, layer = name.rsplit("/", 1)
            pairs.setdefault(pair, []).append((int(layer), name))
    paths = []
    for pair, layers in pairs.items():
        a, b = pair.split("_from_")
        layers.sort()
        na, nb = lengths[a], lengths[b]
        pw, ph = _panel_size(a, na, b, nb)
        size = (pw, ph * len(layers) + 1.0)
        fig, axes = plt.subplots(len(layers), 1, figsize=size, squeeze=False, layout="constrained")
        for ax, (layer, name) in zip(axes[:, 0], layers):
            w = attn[name][0].mean(0)[:na, :nb]  # heads averaged: (real queries, real keys)
            support = (attn[name][0][:, :na, :nb] > 0).sum(-1).astype(float).mean()
            _heatmap(ax, w, _axis_labels(a, na, tokens), _axis_labels(b, nb, tokens),
                     f"{a} <- {b}, CA layer {layer + 1} of {len(layers)}: rows = {a} queries, columns = {b} keys\n"
                     f"support {support:.1f} of {nb} keys per query and head (white: zero in every head)", fig)
            ax.set_ylabel(f"{a} " + ("token" if a == "text" else "frame"), fontsize=8)
            ax.set_xlabel(f"{b} " + ("token" if b == "text" else "frame"), fontsize=8)
        fig.suptitle(_title(header, raw_text, size[0]), fontsize=9)
        path = Path(out_dir) / f"ca_{pair}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def _draw_guided(attn, qmask, names, modalities, lengths, padded, tokens, raw_text, header, out_dir):
    import matplotlib.pyplot as plt

    guided = [n for n in names if n.startswith("guided/")]
    if not guided:
        return []
    widths = [_panel_size("code", 1, n.split("/", 1)[1], 2 * lengths[n.split("/", 1)[1]])[0] for n in guided]
    size = (max(widths), 2.4 * len(guided) + 1.0)
    fig, axes = plt.subplots(len(guided), 1, squeeze=False, figsize=size, layout="constrained")
    for ax, name in zip(axes[:, 0], guided):
        m = name.split("/", 1)[1]
        w_all = attn[name][0].mean(0)  # (Lq, Lk)
        Lq, Lk = w_all.shape
        # the guided key sequence of m: its pair outputs [CA(m <- b1); CA(m <- b2)] concatenated in time
        others = [b for b in modalities if b != m]
        seg_len = padded[m]
        n_seg = max(1, Lk // seg_len)
        n = lengths[m]
        cols = np.concatenate([np.arange(n) + k * seg_len for k in range(n_seg)])
        q_real = np.flatnonzero(qmask[name][0]) if name in qmask else np.arange(Lq)
        w = w_all[q_real][:, cols]
        qlabels = ([f"common code h^C_{_SHORT[x]}" for x in modalities] if Lq == len(modalities)
                   else [f"common code h^C_{_SHORT[m]}"] * Lq)
        qlabels = [qlabels[i] for i in q_real]
        xlabels = None
        if m == "text":
            xlabels = [t for _ in range(n_seg) for t in tokens[:n]]
        segments = [f"{m} <- {others[k]}" if k < len(others) else f"{m} (no other modality)" for k in range(n_seg)]
        support = (attn[name][0][:, q_real][:, :, cols] > 0).sum(-1).astype(float).mean()
        _heatmap(ax, w, qlabels, xlabels, f"coarse-guided step for {m}: its common code attends to {m}'s fine "
                                          f"sequence\nsupport {support:.1f} of {len(cols)} keys per head (white: "
                                          f"zero in every head)\n", fig)
        for k in range(1, n_seg):
            ax.axvline(k * n - 0.5, color="black", lw=1.5)
        if xlabels is None and n > 0:  # frame index within each pair output
            from matplotlib.ticker import FuncFormatter

            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos, n=n: f"{int(round(v)) % n}"))
        top = ax.secondary_xaxis("top")
        top.set_xticks([k * n + (n - 1) / 2 for k in range(n_seg)])
        top.set_xticklabels(segments, fontsize=8)
        top.tick_params(length=0)
        ax.set_xlabel(f"{m} " + ("token" if m == "text" else "frame") + " of each pair output", fontsize=8)
    fig.suptitle(_title(header, raw_text, size[0]), fontsize=9)
    path = Path(out_dir) / "guided.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path]


# ------------------------------------------------------------------------------------------------
# the whole
# ------------------------------------------------------------------------------------------------
def explain(checkpoint, feature_path, sample, out_dir=None, config_file=None, overrides=None,
            print_table=True) -> Explanation:
    """Draw the sparsemax attention of one sample and compute its support sizes (see the module
    docstring); returns an :class:`Explanation`.  Figures go to ``out_dir`` (default
    ``explain-<sample>`` in the working directory)."""
    import torch

    from ..features.load import safe_load

    args = load_run_config(checkpoint, config_file, overrides)
    data = safe_load(feature_path)
    name = args.get("dataset_name")
    if isinstance(name, str) and datasets.lookup(name) is None:  # a run on a registered dataset, in another process
        from ..features.infer import infer_dataset

        datasets.add(infer_dataset(name, data, feature_path))
    _check_features(data, feature_path, args)
    split, i = find_sample(data, str(sample), feature_path)
    s = data[split]
    inputs, kw = _sample_inputs(data, split, i, args, feature_path)
    net = _build_model(args, checkpoint)
    with torch.no_grad():
        out = net(*inputs, **kw, return_attention=True)
    if not out["attention"]:
        raise MMINConfigError(f"{checkpoint}: config key 'ablation': expected a model with CA modules to explain; "
                              f"found ablation {list(net.ablation)} (the 'fin' ablation has no attention)")
    attn = {k: v.detach().cpu().float().numpy() for k, v in out["attention"].items()}
    qmask = {k: v.detach().cpu().numpy().astype(bool) for k, v in out["attention_query_mask"].items()}

    text, audio, vision = inputs
    use_bert = bool(args.get("use_bert", True))
    n_text = int(text[0, 1].sum()) if use_bert else int((text[0].abs().sum(-1) > 0).sum())
    lengths = {"text": n_text,
               "audio": int(kw["audio_lengths"][0]) if "audio_lengths" in kw else audio.shape[1],
               "video": int(kw["vision_lengths"][0]) if "vision_lengths" in kw else vision.shape[1]}
    padded = {"text": text.shape[-1], "audio": audio.shape[1], "video": vision.shape[1]}
    tokens = _tokens(args, s["text_bert"][i], n_text) if use_bert and "text_bert" in s else \
        [str(t) for t in range(n_text)]
    raw_text = str(s["raw_text"][i]) if "raw_text" in s else ""
    label = float(np.asarray(s["regression_labels"]).reshape(-1)[i])
    pred = float(out["M"].reshape(-1)[0])

    names = list(attn)
    key_counts = {}
    for name in names:
        if "_from_" in name:
            key_counts[name] = lengths[name.split("/")[0].split("_from_")[1]]
        elif name.startswith("guided/"):
            m = name.split("/", 1)[1]
            key_counts[name] = lengths[m] * max(1, attn[name].shape[-1] // padded[m])
    table = support_table({k: out["attention"][k] for k in names},
                          {k: out["attention_query_mask"][k] for k in names}, key_counts)

    out_dir = Path(out_dir) if out_dir else Path(f"explain-{re.sub(r'[^A-Za-z0-9_.-]+', '_', str(sample))}")
    out_dir.mkdir(parents=True, exist_ok=True)
    header = (f"sample {s['id'][i]} ({split}), label {label:+.2f}, MMIN prediction {pred:+.2f}; "
              f"lengths text {lengths['text']}, audio {lengths['audio']}, video {lengths['video']}; "
              f"sparsemax weights averaged over heads")
    import matplotlib

    matplotlib.use("Agg")
    with matplotlib.rc_context({"text.parse_math": False}):  # ids hold '$_$', words may hold '$'
        figures = _draw_pairs(attn, names, lengths, tokens, raw_text, header, out_dir)
        figures += _draw_guided(attn, qmask, names, net.modalities, lengths, padded, tokens, raw_text, header,
                                out_dir)
    table.to_csv(out_dir / "support.csv", index=False)
    result = Explanation(str(s["id"][i]), split, raw_text, label, pred, tokens, lengths, table, figures)
    if print_table:
        print(f"{header}\n{raw_text}\n")
        print(table.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
        print("\nfigures: " + ", ".join(str(p) for p in figures))
    return result
