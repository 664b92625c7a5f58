"""Rendering: the markdown table (best mean in bold, † on the primary metric), the statistics against
the reference, the published-number check, the LaTeX table and the comparison figure, from
`aggregate.summarize` over the seeds a `stats.ComparisonTable` uses (MMIN's training-curve figure
is integration/curves.py, beside its trainer). Figures use matplotlib's Agg canvas directly (no
pyplot, no global backend). Design notes: docs/design/experiments.md, "Statistics".
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
from .aggregate import STD_DDOF, measured_metrics, summarize

__all__ = ["render_markdown", "render_latex", "render_figure", "fmt_time"]

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


#: appended to the primary metric's mean of a run that differs from the reference (stats.py: the
#: Holm-adjusted p of the primary metric < alpha)
SIG_MARK = "†"


def _significant(table, run: str, key: str) -> bool:
    """† on this cell: `key` is the table's primary metric and the run differs on it."""
    return table is not None and key == table.primary and table.marked(run)


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
    heads = [h for h, _ in cols]
    if heads:  # the ± says what it is, in the table itself
        heads[0] += f" (mean ± sd, ddof={STD_DDOF})"
    header = (["Model" if kind == "compare" else "Variant"] + ([] if kind == "compare" else ["`ablation`"])
              + heads + ["Seeds ok", "Epochs", "Wall time", "Status"])
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


def _stat_keys(summary: pd.DataFrame, table) -> List[str]:
    keys = [k for _, keys in _display_columns(summary) for k in keys if k in table.metrics]
    return [table.primary] + [k for k in keys if k != table.primary] if table.primary in table.metrics else keys


def _diff_cell(c, key: str) -> str:
    if c is None:
        return "–"
    if not math.isfinite(c.diff):
        return "n/a (" + c.note + ")" if c.note else "–"
    text = _signed(key, c.diff)
    if math.isfinite(c.ci.low):
        text += f" [{_signed(key, c.ci.low)}, {_signed(key, c.ci.high)}]"
    if math.isfinite(c.pvalue):
        text += f" p={c.pvalue:.2g}" + (f" (adj {c.pvalue_adjusted:.2g})" if math.isfinite(c.pvalue_adjusted) else "")
    if c.note:
        text += f" ({c.note})"
    return text


def _seeds_line(table, label) -> str:
    seeds = ", ".join(str(s) for s in table.seeds) or "none"
    line = (f"Seeds used: {seeds} ({len(table.seeds)}: the seeds every run finished; every mean, difference and "
            f"{SIG_MARK} above and below uses exactly these) on {table.n_clips} test clips.")
    if table.left_out:
        line += " Left out: " + "; ".join(f"{label.get(r, r)} seed(s) {', '.join(str(x) for x in v)}"
                                          for r, v in table.left_out.items()) + " (another run lacks them)."
    return line


def stats_block(summary: pd.DataFrame, specs: Sequence, kind: str, stats, detect: Optional[float] = None) -> List[str]:
    """The markdown section 'against the reference': per run and metric the paired difference, its
    95% interval (two-way: new clips and seeds), p and Holm-adjusted p, P(better) for the primary
    metric, and what the comparison can detect (docs/design/experiments.md, 'Statistics')."""
    from .stats import ALPHA

    if stats is None:
        return ["## Against the reference", "",
                "No statistics yet: they need the reference run and at least one other run with saved test "
                "predictions (`predictions.npz`, written by each finished trial).", ""]
    table = stats
    ref = table.reference
    label = {s.name: s.label for s in specs}
    keys = _stat_keys(summary, table)
    prim = table.primary
    lines = [f"## Against the reference: {label.get(ref, ref)}", "", _seeds_line(table, label), "",
             f"Difference = run − reference (accuracies/F1 in points), mean over the seeds used; [95% CI] for new "
             f"clips and seeds (two-way random effects, clips × seeds, Satterthwaite df); p from the same t; adj = "
             f"Holm-adjusted over the {table.n_compared} run(s) compared with {label.get(ref, ref)}. "
             f"**Bold** {SIG_MARK}: adjusted p < {ALPHA} on the primary metric, {SHORT_NAMES.get(prim, prim)} "
             f"(the same {SIG_MARK} marks those means above); the other metrics are descriptive. P(better): the "
             f"fraction of seeds on which the run beats the reference [Wilson 95% CI]. Method: "
             "docs/design/experiments.md, 'Statistics'.", "",
             "| " + " | ".join(["Model" if kind == "compare" else "Variant", "Seeds"]
                                + [SHORT_NAMES.get(k, k) + (" ↓" if k in LOWER_IS_BETTER else "")
                                   + (" (primary)" if k == prim else "") for k in keys]
                                + [f"P(better) on {SHORT_NAMES.get(prim, prim)}"]) + " |",
             "|" + "---|" * (len(keys) + 3)]
    notes = []
    for spec in specs:
        if spec.name not in table.means or spec.name == ref:
            continue
        cells = [spec.label, str(len(table.seeds))]
        for k in keys:
            c = table.get(spec.name, k)
            text = _diff_cell(c, k)
            cells.append(f"**{text}** {SIG_MARK}" if _significant(table, spec.name, k) else text)
        c = table.get(spec.name, prim)
        cells.append("–" if c is None or not math.isfinite(c.prob_improvement) else
                     f"{c.prob_improvement:.2f} [{c.pi_ci.low:.2f}, {c.pi_ci.high:.2f}]")
        lines.append("| " + " | ".join(_md_escape(x) for x in cells) + " |")
        if c is not None and math.isfinite(c.ci_test_set.low):
            notes.append(f"{spec.label}: on this test set only (seed-level t, clips fixed) the "
                         f"{SHORT_NAMES.get(prim, prim)} interval is [{_signed(prim, c.ci_test_set.low)}, "
                         f"{_signed(prim, c.ci_test_set.high)}].")
    lines += ["", "What this comparison can show: " + detectable_line(table, _scale, detect), ""]
    if notes:
        lines += ["<details><summary>Intervals on this test set only (narrower; they ignore that other clips "
                  "would give another difference)</summary>", ""] + [f"- {n}" for n in notes] + ["", "</details>", ""]
    return lines


def detectable_line(table, scale=lambda k, v: v, detect: Optional[float] = None) -> str:
    """One sentence: the smallest primary-metric difference the † rule (two-way variance, Holm over
    the runs compared, alpha, power POWER) would detect at these seeds (largest over runs), and how
    many seeds a difference of `detect` (default: half of it) would need."""
    from .stats import ALPHA, POWER, seeds_to_detect, smallest_detectable

    key, S = table.primary, len(table.seeds)
    comps = [table.get(r, key) for r in table.runs if table.get(r, key) is not None]
    if not comps:
        return f"No run to compare with the reference {table.reference} yet."
    if S < 2:
        return (f"With {S} seed(s) used there is no test across seeds: nothing can be called different; run more "
                "seeds (the same seeds for every run).")
    comps = [c for c in comps if c.variance is not None and math.isfinite(c.mdd)]
    if not comps:
        return f"The smallest detectable {key} difference is undefined (no variance measured: see the notes)."
    worst = max(comps, key=lambda c: c.mdd)
    k = table.n_compared
    target = abs(detect) if detect else worst.mdd / 2
    need = seeds_to_detect(worst.variance, target, k)
    floor = smallest_detectable(worst.variance, 1000, k)
    name = SHORT_NAMES.get(key, key)
    text = (f"with {S} seeds and {table.n_clips} clips, the smallest {name} difference {SIG_MARK} would detect with "
            f"{POWER:.0%} power (two-way variance, Holm over {k} run(s), alpha {ALPHA}) is about "
            f"{scale(key, worst.mdd):.3g} (largest over the runs); ")
    if need is None:
        text += (f"{scale(key, target):.3g} is below what any number of seeds can detect on {table.n_clips} clips "
                 f"(the clip variance alone allows about {scale(key, floor):.3g}).")
    else:
        text += f"detecting {scale(key, target):.3g} would take about {need} seeds at the measured variance."
    return text


def paper_check_block(specs: Sequence, kind: str, dataset: str, stats) -> List[str]:
    """Per run with a published row: is the published number inside the seed-only 95% prediction
    interval of one more seed of this run on the same test clips? With a note on best-of-N."""
    from .stats import best_of_n_shift, prediction_interval

    if stats is None or len(stats.seeds) < 2:
        return []
    table = stats
    keys = [k for k in ("MAE", "Corr", "Has0_acc_2", "Non0_acc_2", "Has0_F1_score", "Non0_F1_score")
            if k in table.metrics]
    lines, shifts = [], []
    for spec in specs:
        m = table.means.get(spec.name)
        if m is None:
            continue
        cells = []
        for k in keys:
            pv = _paper_value_for(spec, kind, dataset, k)
            pi = prediction_interval(m.values.get(k, ()))
            if pv is None or not math.isfinite(pi.low):
                cells.append("–")
                continue
            lo, hi = _scale(k, pi.low), _scale(k, pi.high)
            d = 3 if k in NOT_PERCENT else 2
            cells.append(f"{pv:g} {'in' if lo <= pv <= hi else 'NOT in'} [{lo:.{d}f}, {hi:.{d}f}]")
            if k == "MAE":
                shifts.append(best_of_n_shift(5) * m.sd("MAE"))
        if any(c != "–" for c in cells):
            lines.append("| " + " | ".join([_md_escape(spec.label)] + cells) + " |")
    if not lines:
        return []
    best5 = (f" Here that is about {max(shifts):.3g} MAE (1.16 × the largest seed sd)." if shifts else "")
    head = ["", "### Published number vs one more seed", "",
            f"Is the paper's number inside the 95% prediction interval of one more seed of this run on the same "
            f"{table.n_clips} test clips (mean ± t·sd·√(1 + 1/S) over the {len(table.seeds)} seeds used; the paper "
            "tested the same clips, so only seed-to-seed variation applies)? 'NOT in' means the published number "
            "is unlikely from this set-up with another seed (other data, features or settings can explain it). "
            "A paper that reported the best of N seeds sits on average E[max of N normals] seed sd better than a "
            "typical seed (N = 5: 1.16 sd), so a published number just past the better edge is consistent with "
            "best-of-N reporting." + best5, "",
            "| " + " | ".join(["Model" if kind == "compare" else "Variant"] + [SHORT_NAMES.get(k, k) for k in keys])
            + " |", "|" + "---|" * (len(keys) + 1)]
    return head + lines


def _summary(rows, specs, summary, table=None):
    """`aggregate.summarize` over the seeds `table` uses (all finished seeds without a table)."""
    if summary is not None:
        return summary
    return summarize(rows, [s.name for s in specs], None if table is None else table.seeds)


def render_markdown(rows: List, specs: Sequence, kind: str, info: Dict, summary=None, stats=None,
                    detect: Optional[float] = None) -> str:
    """The `<kind>-<dataset>.md` text: run facts, the measured table, the statistics against the
    reference (`stats`: a `stats.ComparisonTable`, or None), the paper's block (`summary`:
    `aggregate.summarize(rows, runs, table seeds)` if already computed). `info`: dataset and
    optionally seeds, n_planned, updated, feature_path, max_epochs, pretrained, overrides, source."""
    summary = _summary(rows, specs, summary, stats)
    dataset = info["dataset"]
    title = "MMIN vs MMSA baselines" if kind == "compare" else "MMIN ablations (paper Table 2 variants)"
    if info.get("title"):
        title = info["title"]
    done = len(rows)
    overrides = json.dumps(info.get("overrides"), sort_keys=True, default=str) if info.get("overrides") else "none"
    planned = info.get("n_planned", done)
    lines = [f"# {title} on {dataset.upper()}: measured here", ""]
    if info.get("source"):
        lines.append(f"- source: {info['source']}")
    lines.append(f"- status: {'complete' if done >= planned else 'IN PROGRESS'} ({done}/{planned} model-seed runs "
                 f"done), updated {info.get('updated', '–')}")
    if "feature_path" in info:
        lines.append(f"- feature file: {info['feature_path'] or 'each model’s MMSA-configured featurePath'}")
    lines.append(f"- seeds: {', '.join(str(s) for s in info.get('seeds', ()))}"
                 + ("" if stats is None else f"; used in every table: {', '.join(str(x) for x in stats.seeds)}"))
    if "max_epochs" in info:
        lines += [f"- epoch cap: {info['max_epochs'] or 'none (early stopping only)'} (every model; MMSA's trainers "
                  "capped by the same rule, see docs/design/experiments.md), patience: each model's MMSA "
                  "`early_stop`",
                  f"- pretrained text encoder: {info.get('pretrained') or 'each model’s default'} (BERT-based "
                  "models only)", f"- overrides: {overrides}"]
    lines += ["", f"Mean ± sd over the seeds used (the seeds every run finished; sd = sample sd, ddof={STD_DDOF}; "
              "MMSA's results CSV uses ddof=0, 18% smaller at 3 seeds); accuracies and F1 in %; best mean per column "
              "in **bold** (lowest MAE, highest otherwise)"
              + ("" if stats is None else f"; {SIG_MARK}: differs from the reference on "
                 f"{SHORT_NAMES.get(stats.primary, stats.primary)}, the primary metric (Holm-adjusted p < "
                 f"{stats.alpha:g})")
              + ". Acc-2/F1 has-0 = negative/non-negative, non-0 = negative/positive (zeros excluded). "
              "Wall time: total over seeds, data loading and MMSA's own 1 s pause per run included.", ""]
    lines += measured_table(summary, specs, kind, stats)
    lines += ["", f"Per-seed numbers (and the statistics per metric): `{kind}-{dataset}.csv`; "
                  f"LaTeX: `{kind}-{dataset}.tex`; figure: `{kind}-{dataset}.png`.", ""]
    lines += stats_block(summary, specs, kind, stats, detect)
    lines += _paper_block(kind, dataset)
    lines += paper_check_block(specs, kind, dataset, stats)
    return "\n".join(lines) + "\n"


# --- LaTeX -------------------------------------------------------------------------------------
def _tex_escape(text: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"), ("#", r"\#"),
                 ("{", r"\{"), ("}", r"\}")):
        text = text.replace(a, b) if a != "\\" else text.replace(a, "\0")
    return text.replace("\0", r"\textbackslash{}")


def render_latex(rows: List, specs: Sequence, kind: str, dataset: str, summary=None, stats=None) -> str:
    """A booktabs table (mean $\\pm$ sd over the seeds used, best in bold, $^\\dagger$ on the primary
    metric of a run that differs from the reference per `stats`) of the measured runs, via pandas' Styler."""
    summary = _summary(rows, specs, summary, stats)
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
               + r"(measured; mean $\pm$ sample sd (ddof=" + str(STD_DDOF) + r") over seeds "
               + ("" if stats is None else ", ".join(str(x) for x in stats.seeds) + " ")
               + r", accuracies and F1 in \%, best in bold"
               + ("" if stats is None else
                  r"; $^\dagger$: " + _tex_escape(SHORT_NAMES.get(stats.primary, stats.primary))
                  + r" differs from " + _tex_escape(str(stats.reference))
                  + r" (two-way random-effects t-test over clips and seeds, Holm-adjusted $p<" + f"{stats.alpha:g}"
                  + r"$)")
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


def render_figure(rows: List, specs: Sequence, kind: str, dataset: str, summary=None, stats=None) -> bytes:
    """PNG bytes: one panel per metric; per run the mean over the seeds used with a ± sd error bar
    (best mean in orange), the paper's published value (where it has one) as a black bar."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    summary = _summary(rows, specs, summary, stats)
    keys = [k for _, ks in _display_columns(summary) for k in ks]
    n = max(len(keys), 1)
    ncols = min(4 if len(specs) <= 5 else 3, n)
    nrows = math.ceil(n / ncols)
    width = max(3.4, 0.45 * len(specs) + 1.8)
    # fixed margins, not constrained layout: its extra draws cost ~1 s, most of `report`'s time
    height = 3.6 * nrows + 1.0
    fig = Figure(figsize=(width * ncols, height), dpi=100)
    fig.subplots_adjust(left=0.5 / (width * ncols), right=1 - 0.15 / (width * ncols), top=1 - 0.55 / height,
                        bottom=1.5 / height, wspace=0.35, hspace=1.4 / 3.6)
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
                label = ("best mean" if _is_best(mean, best)
                         else f"mean ± sd (ddof={STD_DDOF}) over the seeds used (measured)")
                handles.setdefault(label, h)
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
        fig.legend(list(handles.values()), list(handles), loc="lower center", ncols=len(handles), fontsize=8)
    n_seeds = (len(stats.seeds) if stats is not None
               else len({r.seed if hasattr(r, "seed") else r["seed"] for r in rows}))  # TrialRecords or CSV rows
    fig.suptitle(f"{'MMIN vs MMSA baselines' if kind == 'compare' else 'MMIN ablations'} on {dataset.upper()} "
                 f"(measured here, {n_seeds} seed(s))", fontsize=11)
    return _png(fig)
