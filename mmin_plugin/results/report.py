"""Rendering: the markdown table (best mean in bold), the LaTeX table, the comparison figure and
MMIN's training-curve figure, all from `aggregate.summarize`. Figures use matplotlib's Agg canvas
directly (no pyplot, no global backend). Design notes: docs/design/experiments.md.
"""
from __future__ import annotations

import io
import json
import math
from typing import Dict, List, Optional, Sequence

import numpy as np
import pandas as pd

from ..constants import LOWER_IS_BETTER, METRIC_ORDER
from . import paper
from .aggregate import measured_metrics, summarize

__all__ = ["render_markdown", "render_latex", "render_figure", "plot_training_curves", "fmt_time"]

NOT_PERCENT = {"MAE", "Corr", "Loss"}
#: markdown columns: (header, keys); pairs are shown "has-0 / non-0"
TABLE_COLUMNS = (
    ("MAE ↓", ("MAE",)),
    ("Corr", ("Corr",)),
    ("Acc-2 (has-0/non-0)", ("Has0_acc_2", "Non0_acc_2")),
    ("F1 (has-0/non-0)", ("Has0_F1_score", "Non0_F1_score")),
    ("Acc-7", ("Mult_acc_7",)),
)
SHORT_NAMES = {"Has0_acc_2": "Acc-2 has-0", "Non0_acc_2": "Acc-2 non-0", "Has0_F1_score": "F1 has-0",
               "Non0_F1_score": "F1 non-0", "Mult_acc_7": "Acc-7", "Mult_acc_5": "Acc-5", "Mult_acc_3": "Acc-3",
               "Mult_acc_2": "Acc-2", "F1_score": "F1"}


# --- cells -------------------------------------------------------------------------------------
def _display_columns(summary: pd.DataFrame) -> List[tuple]:
    present = set(measured_metrics(summary))
    cols = [(h, keys) for h, keys in TABLE_COLUMNS if any(k in present for k in keys)]
    used = {k for _, keys in cols for k in keys}
    hidden = {"Loss"} | ({"Mult_acc_5"} if "Mult_acc_7" in present else set())
    extra = [k for k in METRIC_ORDER if k in present and k not in used | hidden]
    extra += sorted(present - set(METRIC_ORDER) - used - hidden)
    return cols + [(SHORT_NAMES.get(k, k), (k,)) for k in extra]


def _scale(key: str, v: float) -> float:
    return v if key in NOT_PERCENT else 100.0 * v


def _stat(summary: pd.DataFrame, run: str, key: str):
    """(mean, std, n) of `key` for `run`, or None."""
    col = f"{key}|mean"
    if col not in summary.columns or pd.isna(summary.at[run, col]):
        return None
    return float(summary.at[run, col]), float(summary.at[run, f"{key}|std"]), int(summary.at[run, f"{key}|n"])


def _best(summary: pd.DataFrame, key: str) -> Optional[float]:
    col = f"{key}|mean"
    if col not in summary.columns:
        return None
    means = summary[col].replace([np.inf, -np.inf], np.nan).dropna()
    if means.empty:
        return None
    return float(means.min() if key in LOWER_IS_BETTER else means.max())


def _is_best(mean: float, best: Optional[float]) -> bool:
    return best is not None and math.isfinite(mean) and abs(mean - best) <= 1e-12


#: appended to a mean whose difference from the reference is significant (stats.py: p < alpha, CI excludes 0)
SIG_MARK = "†"


def _significant(stats: Optional[pd.DataFrame], run: str, key: str) -> bool:
    col = f"{key}|significant"
    if stats is None or col not in stats.columns or run not in stats.index:
        return False
    v = stats.at[run, col]
    return isinstance(v, (bool, np.bool_)) and bool(v)


def _fmt_cell(summary, run, key, best, pm=" ± ", bold=("**", "**"), stats=None, mark=SIG_MARK) -> str:
    st = _stat(summary, run, key)
    if st is None:
        return "–"
    mean, std, n = st
    d = 3 if key in NOT_PERCENT else 2
    text = f"{_scale(key, mean):.{d}f}" + (f"{pm}{_scale(key, std):.{d}f}" if n > 1 else "")
    text = f"{bold[0]}{text}{bold[1]}" if _is_best(mean, best) else text
    return text + (mark if _significant(stats, run, key) else "")


def fmt_time(seconds: float) -> str:
    s = int(round(seconds))
    if s < 60:
        return f"{seconds:.1f} s"
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h} h {m:02d} m" if h else f"{m} m {s:02d} s"


def _md_escape(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


# --- markdown ----------------------------------------------------------------------------------
def _paper_block(kind: str, dataset: str) -> List[str]:
    if kind == "compare":
        rows = paper.table1(dataset)
        title = f"## Published reference: paper Table 1, {dataset.upper()} ({paper.PUBLISHED_LABEL})"
        note = paper.TABLE1_NOTE
        if not rows:
            return [title.replace(f", {dataset.upper()}", ""), "",
                    f"The paper reports no {dataset.upper()} results (Table 1 covers MOSI and MOSEI only).", ""]
        head = "| Model (paper) | MAE ↓ | Corr | Acc-2 (has-0/non-0) | F1 (has-0/non-0) | Data setting |"
        body = [f"| {r['model']}{r['source'] or ''} | {paper.fmt(r, 'MAE')} | {paper.fmt(r, 'Corr')} | "
                f"{paper.fmt(r, 'Acc-2')} | {paper.fmt(r, 'F1')} | {r['setting']} |" for r in rows]
    else:
        rows = paper.table2()
        title = f"## Published reference: paper Table 2, ablations on MOSI ({paper.PUBLISHED_LABEL})"
        note = paper.TABLE2_NOTE + ("" if dataset == "mosi" else
                                    f" These are MOSI numbers; the runs above are on {dataset.upper()}.")
        head = "| Ablation (paper) | MAE ↓ | Corr | Acc-2 (has-0/non-0) | F1 (has-0/non-0) | Group |"
        body = [f"| {r['model']} | {paper.fmt(r, 'MAE')} | {paper.fmt(r, 'Corr')} | "
                f"{paper.fmt(r, 'Acc-2')} | {paper.fmt(r, 'F1')} | {r['group'] or ''} |" for r in rows]
    return [title, "", f"_{note}_", "", head, "|---|---|---|---|---|---|", *body, "", f"Source: {paper.PAPER}."]


def _status(summary, run) -> str:
    n_run, n_ok, errors = summary.at[run, "n_run"], summary.at[run, "n_ok"], summary.at[run, "errors"]
    if n_run == 0:
        return "not run yet"
    if errors:
        return ("failed" if n_ok == 0 else "partly failed") + ": " + _md_escape("; ".join(errors))[:400]
    return "ok"


def measured_table(summary: pd.DataFrame, specs: Sequence, kind: str, stats=None) -> List[str]:
    cols = _display_columns(summary)
    header = (["Model" if kind == "compare" else "Variant"] + ([] if kind == "compare" else ["`ablation`"])
              + [h for h, _ in cols] + ["Seeds ok", "Epochs", "Wall time", "Status"])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    bests = {k: _best(summary, k) for _, keys in cols for k in keys}
    for spec in specs:
        run = spec.name
        cells = [spec.label] + ([",".join(spec.ablation or []) or "[]"] if kind != "compare" else [])
        cells += [" / ".join(_fmt_cell(summary, run, k, bests[k], stats=stats) for k in keys) for _, keys in cols]
        epochs = summary.at[run, "epochs"]
        ep = "–" if not epochs else (str(epochs[0]) if min(epochs) == max(epochs) else f"{min(epochs)}–{max(epochs)}")
        n_run = int(summary.at[run, "n_run"])
        cells += [f"{int(summary.at[run, 'n_ok'])}/{n_run}", ep,
                  fmt_time(float(summary.at[run, "wall"])) if n_run else "–", _status(summary, run)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _signed(key: str, v: float) -> str:
    d = 3 if key in NOT_PERCENT else 2
    return f"{_scale(key, v):+.{d}f}"


def _stat_keys(summary: pd.DataFrame, stats: pd.DataFrame) -> List[str]:
    return [k for _, keys in _display_columns(summary) for k in keys if f"{k}|diff" in stats.columns]


def stats_block(summary: pd.DataFrame, specs: Sequence, kind: str, stats: Optional[pd.DataFrame]) -> List[str]:
    """The markdown section 'against the reference': per run and metric the paired difference, its
    95% CI and p (docs/design/experiments.md, 'Statistics'), significant ones in bold with †."""
    from .stats import ALPHA, mdd_line

    if stats is None:
        return ["## Against the reference", "",
                "No statistics yet: they need the reference run and at least one other run with saved test "
                "predictions (`predictions.npz`, written by each finished trial).", ""]
    ref = stats.attrs["reference"]
    label = {s.name: s.label for s in specs}
    keys = _stat_keys(summary, stats)
    lines = [f"## Against the reference: {label.get(ref, ref)}", "",
             f"Difference = run − reference (accuracies/F1 in points), mean over the seeds both finished; "
             f"[95% CI] from a bootstrap over seeds and test samples; p from a paired t-test across seeds. "
             f"**Bold** {SIG_MARK}: significant (p < {ALPHA} and the CI excludes 0); the same {SIG_MARK} marks "
             "those means in the table above. Method: docs/design/experiments.md, 'Statistics'.", "",
             "| " + " | ".join(["Model" if kind == "compare" else "Variant", "Seeds"]
                                + [SHORT_NAMES.get(k, k) + (" ↓" if k in LOWER_IS_BETTER else "") for k in keys])
             + " |", "|" + "---|" * (len(keys) + 2)]
    for spec in specs:
        if spec.name not in stats.index or spec.name == ref:
            continue
        cells = [spec.label, str(int(stats.at[spec.name, "n_seeds"]))]
        for k in keys:
            diff = stats.at[spec.name, f"{k}|diff"] if f"{k}|diff" in stats.columns else np.nan
            if pd.isna(diff):
                cells.append("–")
                continue
            p = stats.at[spec.name, f"{k}|p"]
            text = (f"{_signed(k, diff)} [{_signed(k, stats.at[spec.name, f'{k}|ci_low'])}, "
                    f"{_signed(k, stats.at[spec.name, f'{k}|ci_high'])}]" + ("" if pd.isna(p) else f" p={p:.2g}"))
            cells.append(f"**{text}** {SIG_MARK}" if _significant(stats, spec.name, k) else text)
        lines.append("| " + " | ".join(_md_escape(c) for c in cells) + " |")
    lines += ["", "What this run can show: " + mdd_line(stats, "MAE", _scale), ""]
    return lines


def paper_check_block(specs: Sequence, kind: str, dataset: str, stats: Optional[pd.DataFrame]) -> List[str]:
    """Per run with a published row: is the published number inside the run's own 95% interval
    (bootstrap over seeds and test samples of its mean)?"""
    if stats is None:
        return []
    lines, keys = [], [k for k in ("MAE", "Corr", "Has0_acc_2", "Non0_acc_2", "Has0_F1_score", "Non0_F1_score")
                       if f"{k}|own_low" in stats.columns]
    for spec in specs:
        if spec.name not in stats.index:
            continue
        cells = []
        for k in keys:
            pv = _paper_value_for(spec, kind, dataset, k)
            lo, hi = stats.at[spec.name, f"{k}|own_low"], stats.at[spec.name, f"{k}|own_high"]
            if pv is None or pd.isna(lo):
                cells.append("–")
                continue
            lo, hi = _scale(k, lo), _scale(k, hi)
            inside = lo <= pv <= hi
            d = 3 if k in NOT_PERCENT else 2
            cells.append(f"{pv:g} {'in' if inside else 'NOT in'} [{lo:.{d}f}, {hi:.{d}f}]")
        if any(c != "–" for c in cells):
            lines.append("| " + " | ".join([_md_escape(spec.label)] + cells) + " |")
    if not lines:
        return []
    head = ["", "### Published number vs measured 95% interval", "",
            "Is the paper's number inside this run's 95% interval of its own mean (bootstrap over seeds and test "
            "samples)? 'NOT in' means the measurement disagrees with the published number beyond seed and "
            "test-sample noise (other data, features or settings can explain it).", "",
            "| " + " | ".join(["Model" if kind == "compare" else "Variant"] + [SHORT_NAMES.get(k, k) for k in keys])
            + " |", "|" + "---|" * (len(keys) + 1)]
    return head + lines


def _summary(rows, specs, summary):
    return summary if summary is not None else summarize(rows, [s.name for s in specs])


def render_markdown(rows: List[Dict], specs: Sequence, kind: str, info: Dict, summary=None, stats=None) -> str:
    """The `<kind>-<dataset>.md` text: run facts, the measured table, the statistics against the
    reference (`stats`: `stats.compare_to_reference`, or None), the paper's block (`summary`:
    `aggregate.summarize(rows, runs)` if already computed)."""
    summary = _summary(rows, specs, summary)
    dataset = info["dataset"]
    title = "MMIN vs MMSA baselines" if kind == "compare" else "MMIN ablations (paper Table 2 variants)"
    done = len(rows)
    overrides = json.dumps(info["overrides"], sort_keys=True, default=str) if info["overrides"] else "none"
    lines = [f"# {title} on {dataset.upper()}: measured here", "",
             f"- status: {'complete' if done >= info['n_planned'] else 'IN PROGRESS'} "
             f"({done}/{info['n_planned']} model-seed runs done), updated {info['updated']}",
             f"- feature file: {info['feature_path'] or 'each model’s MMSA-configured featurePath'}",
             f"- seeds: {', '.join(str(s) for s in info['seeds'])}",
             f"- epoch cap: {info['max_epochs'] or 'none (early stopping only)'} (every model; MMSA's trainers "
             "capped by the same rule, see docs/design/experiments.md), patience: each model's MMSA `early_stop`",
             f"- pretrained text encoder: {info['pretrained'] or 'each model’s default'} (BERT-based models only)",
             f"- overrides: {overrides}",
             "", "Mean ± std (numpy.std, ddof=0, as MMSA's results CSV) over the seeds that finished; "
             "accuracies and F1 in %; best mean per column in **bold** (lowest MAE, highest otherwise). "
             "Acc-2/F1 has-0 = negative/non-negative, non-0 = negative/positive (zeros excluded). "
             "Wall time: total over seeds, data loading and MMSA's own 1 s pause per run included.", ""]
    lines += measured_table(summary, specs, kind, stats)
    lines += ["", f"Per-seed numbers (and the statistics per metric): `{kind}-{dataset}.csv`; "
                  f"LaTeX: `{kind}-{dataset}.tex`; figure: `{kind}-{dataset}.png`.", ""]
    lines += stats_block(summary, specs, kind, stats)
    lines += _paper_block(kind, dataset)
    lines += paper_check_block(specs, kind, dataset, stats)
    return "\n".join(lines) + "\n"


# --- LaTeX -------------------------------------------------------------------------------------
def _tex_escape(text: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"), ("#", r"\#"),
                 ("{", r"\{"), ("}", r"\}")):
        text = text.replace(a, b) if a != "\\" else text.replace(a, "\0")
    return text.replace("\0", r"\textbackslash{}")


def render_latex(rows: List[Dict], specs: Sequence, kind: str, dataset: str, summary=None, stats=None) -> str:
    """A booktabs table (mean $\\pm$ std, best in bold, $^\\dagger$ significantly different from the
    reference per `stats`) of the measured runs, via pandas' Styler."""
    summary = _summary(rows, specs, summary)
    cols = _display_columns(summary)
    bests = {k: _best(summary, k) for _, keys in cols for k in keys}
    data = {}
    for head, keys in cols:
        name = _tex_escape(head.replace(" ↓", "")) + (r" $\downarrow$" if "↓" in head else "")
        data[name] = [" / ".join(_fmt_cell(summary, s.name, k, bests[k], pm=r" $\pm$ ", bold=(r"\textbf{", "}"),
                                           stats=stats, mark=r"$^\dagger$")
                                 for k in keys).replace("–", "--") for s in specs]
    frame = pd.DataFrame(data, index=pd.Index([_tex_escape(s.label) for s in specs],
                                              name="Model" if kind == "compare" else "Variant"))
    caption = (f"{'MMIN vs MMSA baselines' if kind == 'compare' else 'MMIN ablations'} on {dataset.upper()} "
               r"(measured; mean $\pm$ std over seeds, accuracies and F1 in \%, best in bold"
               + ("" if stats is None else
                  r"; $^\dagger$: differs from " + _tex_escape(str(stats.attrs.get("reference")))
                  + r" significantly (paired t-test across seeds $p<0.05$ and bootstrap 95\% CI excluding 0)")
               + ").")
    return frame.style.to_latex(hrules=True, caption=caption, label=f"tab:{kind}-{dataset}",
                                column_format="l" + "c" * len(frame.columns), position="t")


# --- figures -----------------------------------------------------------------------------------
def _paper_value_for(spec, kind: str, dataset: str, key: str) -> Optional[float]:
    if kind == "compare":
        row = paper.paper_row_for_model(dataset, spec.model)
    else:
        row = paper.paper_row_for_ablation(spec.ablation) if dataset == "mosi" and spec.ablation is not None else None
    return None if row is None else paper.value(row, key)


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def render_figure(rows: List[Dict], specs: Sequence, kind: str, dataset: str, summary=None) -> bytes:
    """PNG bytes: one panel per metric; per run the mean over seeds with a ± std error bar
    (best mean in orange), the paper's published value (where it has one) as a black bar."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    summary = _summary(rows, specs, summary)
    keys = [k for _, ks in _display_columns(summary) for k in ks]
    n = max(len(keys), 1)
    ncols = min(4 if len(specs) <= 5 else 3, n)
    nrows = math.ceil(n / ncols)
    width = max(3.4, 0.45 * len(specs) + 1.8)
    fig = Figure(figsize=(width * ncols, 3.3 * nrows + 0.6), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    handles = {}
    for i in range(nrows * ncols):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        if i >= len(keys):
            ax.axis("off")
            if not keys and i == 0:
                ax.text(0.5, 0.5, "no finished runs yet", ha="center", va="center", transform=ax.transAxes)
            continue
        key = keys[i]
        best = _best(summary, key)
        for j, spec in enumerate(specs):
            st = _stat(summary, spec.name, key)
            if st is not None:
                mean, std, _ = st
                h = ax.errorbar([j], [_scale(key, mean)], yerr=[_scale(key, std)], fmt="o", ms=7, capsize=4,
                                color="tab:orange" if _is_best(mean, best) else "tab:blue")
                handles.setdefault("best mean" if _is_best(mean, best) else "mean ± std over seeds (measured)", h)
            else:
                ax.text(j, 0.04, "failed" if summary.at[spec.name, "n_run"] else "not run", rotation=90,
                        ha="center", va="bottom", fontsize=8, color="tab:red", transform=ax.get_xaxis_transform())
            pv = _paper_value_for(spec, kind, dataset, key)
            if pv is not None:
                (h,) = ax.plot([j - 0.3, j + 0.3], [pv, pv], color="black", lw=2.5)
                handles.setdefault("paper (published, not measured here)", h)
        name = SHORT_NAMES.get(key, key) + (" (%)" if key not in NOT_PERCENT else "")
        ax.set_title(name + ("  (lower is better)" if key in LOWER_IS_BETTER else ""), fontsize=10)
        ax.set_xlim(-0.6, len(specs) - 0.4)
        ax.set_xticks(np.arange(len(specs)))
        ax.set_xticklabels([s.label for s in specs], rotation=35, ha="right", fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    if handles:
        fig.legend(list(handles.values()), list(handles), loc="outside lower center", ncols=len(handles), fontsize=8)
    n_seeds = len({r["seed"] for r in rows})
    fig.suptitle(f"{'MMIN vs MMSA baselines' if kind == 'compare' else 'MMIN ablations'} on {dataset.upper()} "
                 f"(measured here, {n_seeds} seed(s))", fontsize=11)
    return _png(fig)


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
            from ..integration.trainer import LAC_BAND

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
