"""MMIN's training-curve figure, beside the trainer whose per-epoch history it draws.

`<checkpoint stem>.history.json` (written by `trainer.MMINTrainer`) -> `curves.png`: each loss term
of eq. 6 (train / valid), the validation KeyEval with the epochs a checkpoint was saved, and, when
logged, the mean attention support of every CA module. Figures use matplotlib's Agg canvas directly
(no pyplot, no global backend).
"""
from __future__ import annotations

import io
from typing import Dict, List

import numpy as np

from .trainer import LAC_BAND

__all__ = ["CURVE_PANELS", "plot_training_curves"]

#: (panel title, train history key, valid history key)
CURVE_PANELS = (
    ("L_senti (MSE)", "train_L_senti", "valid_Loss"),
    ("L_sep", "train_L_sep", "valid_L_sep"),
    ("L_ac", "train_L_ac", "valid_L_ac"),
    ("L_ap", "train_L_ap", "valid_L_ap"),
    ("total loss (eq. 6)", "train_Loss", None),
)


def plot_training_curves(history: List[Dict], title: str) -> bytes:
    """PNG bytes of MMIN's per-epoch history: each loss term (train / valid), valid KeyEval and the
    mean attention support (keys with non-zero weight per query) of every CA module, when logged."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    support = sorted({k for h in history for k in h if k.startswith("valid_support/")})
    cols = 4 if support else 3
    fig = Figure(figsize=(4.4 * cols, 6.5), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    epochs = [h.get("epoch", i + 1) for i, h in enumerate(history)]

    def finish(ax, name):
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:  # a term the history does not hold: empty panel
            ax.legend(fontsize=8)

    chance = next((h["L_ac_chance"] for h in history if h.get("L_ac_chance")), None)
    n_mod = next((h["n_modalities"] for h in history if h.get("n_modalities")), None)
    for i, (name, tr, va) in enumerate(CURVE_PANELS):
        ax = fig.add_subplot(2, cols, i + 1)
        for key, lab, style in ((tr, "train", "o-"), (va, "valid", "s--")):
            if key and any(key in h for h in history):
                ax.plot(epochs, [h.get(key, np.nan) for h in history], style, label=lab, ms=4)
        if tr == "train_L_ac" and chance:  # a runaway shows as the curves leaving the band
            ax.axhline(chance, color="k", lw=1, ls=":", label=f"chance {n_mod or 'M'} ln {n_mod or 'M'} = {chance:.2f}")
            ax.axhspan(LAC_BAND[0] * chance, LAC_BAND[1] * chance, color="tab:green", alpha=0.08,
                       label=f"sane band {LAC_BAND[0]:g}-{LAC_BAND[1]:g} x chance")
        finish(ax, name)
    ax = fig.add_subplot(2, cols, len(CURVE_PANELS) + 1)
    key_eval = next((h.get("KeyEval") for h in history if h.get("KeyEval")), "Loss")
    vals = [h.get(f"valid_{key_eval}", np.nan) for h in history]
    ax.plot(epochs, vals, "o-", color="tab:green", ms=4, label=f"valid {key_eval}")
    best = [(e, v) for e, v, h in zip(epochs, vals, history) if h.get("best")]
    if best:
        ax.plot(*zip(*best), "*", color="tab:red", ms=11, label="new best (checkpoint saved)")
    finish(ax, f"validation KeyEval: {key_eval}")
    if support:  # how sparse the sparsemax attention becomes
        ax = fig.add_subplot(2, cols, len(CURVE_PANELS) + 2)
        for key in support:
            ax.plot(epochs, [h.get(key, np.nan) for h in history], ".-", ms=3, lw=1,
                    label=key.removeprefix("valid_support/"))
        finish(ax, "attention support (valid, keys per query)")
        ax.legend(fontsize=6, ncol=2)
    fig.suptitle(title, fontsize=11)
    return _png(fig)


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
