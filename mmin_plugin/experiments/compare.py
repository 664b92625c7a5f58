"""Head-to-head comparison (paper Table 1) and ablations (paper Table 2) through `MMSA_run`.

`run_comparison(models, dataset, seeds, ...)` trains and tests every model (MMIN and any MMSA 2.2.1
model name: misa, mult, self_mm, mmim, ...) with MMSA's own `MMSA_run`, one seed per call, on the
same feature file and the same seeds. `run_ablation(dataset, seeds, ...)` does the same for full
MMIN and every Table 2 variant (config key `ablation`). Both write, under `out_dir`:

* `<kind>-<dataset>.csv`  tidy, one row per (run, seed), rewritten atomically after every seed
  (an interrupted run keeps every finished seed). Columns, in order: `run` (the row label: the
  MMSA model name for `compare`, the variant name for `ablate`), `model` (MMSA model name),
  `ablation` (MMIN's `ablation` list, comma-joined; empty otherwise), `dataset`, `seed`,
  `status` (`ok` / `failed`), `error` (`ExceptionType: message` when failed), `wall_time_s`,
  `epochs` (training epochs run), `stopped_by` (`early_stop` / `max_epochs`), `max_epochs`,
  `early_stop` (the model's patience), `feature_path` and `pretrained` (the feature file and, for
  BERT-based models, the text encoder MMSA's `_run` really used; empty `pretrained` = no BERT),
  `checkpoint`, then every metric MMSA returned, raw as MMSA returns it (accuracies and F1
  as fractions; MOSI/MOSEI: MAE, Corr, Has0_acc_2, Non0_acc_2, Has0_F1_score, Non0_F1_score,
  Mult_acc_5, Mult_acc_7, Loss; SIMS: MAE, Corr, Mult_acc_2, Mult_acc_3, Mult_acc_5, F1_score,
  Loss).
* `<kind>-<dataset>.md`   one row per run: MAE, Corr, Acc-2 (has-0/non-0), F1 (has-0/non-0),
  Acc-7 (for SIMS: whatever MMSA returns), each mean ± std over the finished seeds (std as
  `numpy.std`, ddof=0, as MMSA's own results CSV), accuracies and F1 in %, the best mean per
  column in bold (lowest MAE, highest otherwise), seeds ok/run, wall time, status with the error
  of a failed run; then the paper's Table 1 rows (compare) or Table 2 rows (ablate) for the
  same dataset as a separate block labelled as published numbers, not measured here. Rewritten
  after every seed; also printed to the terminal at the end.
* `<kind>-<dataset>.png`  one panel per metric: per run the mean over seeds with a ± std error
  bar (best in orange), the paper's published value (where it has one) as a black bar; rendered
  with matplotlib's Agg canvas directly (no pyplot, no global backend switch). Re-rendered after
  a seed when `FIGURE_EVERY_S` (60 s) passed since the last rendering, and always at the end
  (also on KeyboardInterrupt).
* `curves-<run>-<dataset>-seed<seed>.png` for every MMIN run: per-epoch training curves of each
  loss term of eq. 6 (train, and validation where logged) and of the validation KeyEval metric,
  from the history JSON MMIN's trainer writes; the JSON is kept as
  `runs/<run>/history-<dataset>-seed<seed>.json` (MMSA_run overwrites it for every call).
* `runs/<run>/{models,results,logs}`: MMSA's `model_save_dir`, `res_save_dir` and `log_dir` for
  that run, so each model / MMIN variant has its own checkpoint (`<model>-<dataset>.pth`, holding
  the best-validation weights of the LAST seed run) and its own MMSA results CSV; a failed seed's
  traceback is saved as `runs/<run>/error-seed<seed>.txt`.

Fairness: the epoch cap
-----------------------
MMIN's trainer honours `max_epochs`; MMSA's own trainers have no cap, only `early_stop` (epochs
without validation improvement), so setting `early_stop = max_epochs` would not be a cap. Every
MMSA 2.2.1 trainer (all 17) runs the same loop: train one epoch, `self.do_test(model,
dataloader['valid'], mode="VAL")`, save the checkpoint if the validation KeyEval improved, then
`if epochs - best_epoch >= self.args.early_stop: return`. So, while a run is in progress,
`ATIO.getTrain` is wrapped (and restored afterwards) to instrument the trainer it returns: its
`do_test` counts the validation passes made inside `do_train` (= epochs), and once the count
reaches `max_epochs` it sets the trainer's `args.early_stop = 0` (the original value is restored
when `do_train` returns). That epoch's checkpoint decision is made first, then the trainer's own
early-stop test ends training. Result: every model trains for at most `max_epochs` full passes
over the training data, stops earlier on its own patience (each model keeps MMSA's configured
`early_stop`), and is tested with the best-validation checkpoint among the epochs it ran --
exactly MMIN's semantics. Nothing else of MMSA's training changes (MISA's and MulT's
`update_epochs` gradient accumulation, schedulers, learning rates stay MMSA's). The same
instrumentation is applied to MMIN (redundant with its own cap) so the `epochs` / `stopped_by`
columns are measured the same way for all. `max_epochs=None`: no cap for anyone.

Inputs
------
* `feature_path` (made absolute) is given to every model as `featurePath`, so all read the same
  file; `None` leaves each model's MMSA-configured path (re-rooted by `$MMSA_DATASET_ROOT`, see
  `compat`), which for models with `need_data_aligned` is the aligned file.
* `pretrained` is given to every model whose merged config has `use_bert` true (MISA, Self-MM,
  MMIM, BERT_MAG, MMIN; not MulT/TFN/..., which read the file's precomputed `text` features);
  `None` leaves each model's default. The compatibility layer makes non-768 encoders work.
* `overrides` (`--set key=value`) go into every model's config (keys a model does not know are
  harmless in MMSA's EasyDict args). A key written `<model>.<key>` (e.g. `mmin.d_model=16`)
  applies to that MMSA model only (for `ablate`, `mmin.` keys apply to every variant).
  Precedence: featurePath/pretrained/max_epochs < common overrides < model-scoped overrides <
  the ablation variant's `ablation`.

MMSA behaviours that bear on fairness (left as they are; reported, not patched)
------------------------------------------------------------------------------
* Gradient accumulation: MISA (`update_epochs` 2), MulT (8), Self-MM (4) step the optimizer every
  `update_epochs` batches and silently drop the gradients of the last `n_batches % update_epochs`
  batches of each epoch (the trailing `if not left_epochs: optimizer.step()` can never fire). On
  real MOSI (81 batches of 16) that is one batch an epoch; on a tiny demo file with fewer batches
  than `update_epochs` MulT and Self-MM make NO optimizer step at all, so their demo numbers are
  those of an untrained network.
* MISA packs its audio and video LSTMs with the TEXT lengths (BERT mask sums), so on unaligned
  data it reads only the first <= 50 audio/video frames; Self-MM and MMIM use the real audio/video
  lengths when `need_data_aligned` is false; MulT uses no lengths (attends over padding).
* Model selection: every trainer keeps the checkpoint of the best validation `KeyEval`, which
  MMSA's configs set to 'Loss' for MOSI/MOSEI/SIMS, and 'Loss' is each trainer's own criterion:
  MSE for MISA and MMIN, L1 for MulT and MMIM, a weighted L1 for Self-MM. So the CSV's `Loss`
  column is not comparable across models, and MulT/MMIM/Self-MM select directly on an MAE-like
  criterion. The test split is used once, at the end. `MMSA_run(is_tune=True)` would select
  hyper-parameters on TEST (`_run` evaluates `dataloader['test']`); not used here.
* `MMSA.run._run` sleeps 1 s after every run (in the wall times, equally for all models).

Each model/seed is one `MMSA_run(..., seeds=[seed])` call; an exception is recorded as a failed
row and the other runs go on. MMSA's logger gets a new file and console handler from every
`MMSA_run` call; they are removed after each call here (otherwise every message is repeated once
per earlier call). MMSA's console output is at `verbose_level` (0: errors only; the full log is in
`runs/<run>/logs/`); a line per run/seed reports progress.
"""
from __future__ import annotations

import contextlib
import csv
import datetime as _dt
import io
import json
import math
import os
import shutil
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence

import numpy as np

from ..atomic import atomic_write_bytes, atomic_write_text
from ..errors import MMINConfigError, MMINDataError
from . import paper

__all__ = ["run_comparison", "run_ablation", "ABLATION_VARIANTS", "CSV_BASE_COLUMNS", "split_overrides",
           "epoch_cap", "render_markdown", "render_figure", "plot_training_curves", "read_rows"]

#: ablation variants of paper Table 2: (run name, MMIN `ablation` list, label)
ABLATION_VARIANTS = (
    ("full", [], "MMIN (full)"),
    ("wo-cin", ["cin"], "w/o CIN"),
    ("wo-fin", ["fin"], "w/o FIN"),
    ("wo-text", ["text"], "w/o text"),
    ("wo-video", ["video"], "w/o video"),
    ("wo-audio", ["audio"], "w/o audio"),
    ("wo-sep", ["sep"], "w/o L_sep"),
    ("wo-ac", ["ac"], "w/o L_ac"),
    ("wo-ap", ["ap"], "w/o L_ap"),
)

CSV_BASE_COLUMNS = ["run", "model", "ablation", "dataset", "seed", "status", "error", "wall_time_s", "epochs",
                    "stopped_by", "max_epochs", "early_stop", "feature_path", "pretrained", "checkpoint"]

#: the comparison figure is re-rendered after a seed only if this many seconds passed since the
#: last rendering (and always at the end, also when interrupted)
FIGURE_EVERY_S = 60.0
# display order of MMSA's metric keys; anything else MMSA returns goes after, sorted
METRIC_ORDER = ("MAE", "Corr", "Has0_acc_2", "Non0_acc_2", "Has0_F1_score", "Non0_F1_score", "Mult_acc_2",
                "Mult_acc_3", "Mult_acc_5", "Mult_acc_7", "F1_score", "Acc_2", "Loss")
LOWER_IS_BETTER = {"MAE", "Loss"}
NOT_PERCENT = {"MAE", "Corr", "Loss"}
# markdown columns: (header, keys); pairs are shown "has-0 / non-0"
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


# ---------------------------------------------------------------------------------------------
# configuration helpers
# ---------------------------------------------------------------------------------------------
def split_overrides(overrides: Optional[Dict]) -> tuple:
    """Split `overrides` into (common, {model: {key: value}}); `model.key` keys are scoped."""
    common, scoped = {}, {}
    for k, v in (overrides or {}).items():
        k = str(k)
        if "." in k:
            model, key = k.split(".", 1)
            if not model or not key:
                raise MMINConfigError(f"override {k!r}: expected 'key' or 'model.key'")
            scoped.setdefault(model.lower(), {})[key] = v
        else:
            common[k] = v
    return common, scoped


def _uses_bert(model: str, dataset: str, config: Dict) -> bool:
    """Whether `model`'s MMSA config (with `config` merged over it) encodes text with a BERT."""
    from MMSA.config import get_config_regression  # patched by mmin_plugin for registered names

    merged = dict(get_config_regression(model, dataset))
    merged.update(config)
    return bool(merged.get("use_bert"))


@dataclass
class RunSpec:
    name: str                      # row label / folder name
    model: str                     # MMSA model name
    label: str                     # what the tables show
    config: Dict = field(default_factory=dict)   # run-specific config (wins over everything)
    ablation: Optional[List[str]] = None


# ---------------------------------------------------------------------------------------------
# the epoch cap for MMSA's trainers (see module docstring)
# ---------------------------------------------------------------------------------------------
def _instrument_trainer(trainer, max_epochs: Optional[int], stats: Dict) -> None:
    orig_train, orig_test = trainer.do_train, trainer.do_test
    state = {"training": False}

    def do_test(model, dataloader, mode="VAL", *a, **kw):
        result = orig_test(model, dataloader, mode, *a, **kw)
        if state["training"] and str(mode).upper().startswith("VAL"):
            stats["epochs"] += 1
            if max_epochs and stats["epochs"] >= max_epochs:
                stats["stopped_by"] = "max_epochs"
                # checked by the trainer right after this epoch's checkpoint decision
                trainer.args["early_stop"] = 0
        return result

    def do_train(model, dataloader, *a, **kw):
        state["training"] = True
        had = "early_stop" in trainer.args
        saved = trainer.args.get("early_stop")
        stats["epochs"], stats["stopped_by"] = 0, "early_stop"
        try:
            return orig_train(model, dataloader, *a, **kw)
        finally:
            state["training"] = False
            if had:
                trainer.args["early_stop"] = saved

    trainer.do_train, trainer.do_test = do_train, do_test


@contextlib.contextmanager
def epoch_cap(max_epochs: Optional[int]):
    """Within the block, trainers MMSA builds stop after `max_epochs` epochs; yields run stats
    (`epochs`: training epochs run, `stopped_by`: 'early_stop' or 'max_epochs')."""
    from MMSA.trains import ATIO

    stats = {"epochs": 0, "stopped_by": None}
    orig = ATIO.getTrain

    def getTrain(self, args):
        trainer = orig(self, args)
        _instrument_trainer(trainer, max_epochs, stats)
        return trainer

    ATIO.getTrain = getTrain
    try:
        yield stats
    finally:
        ATIO.getTrain = orig


@contextlib.contextmanager
def _record_args(row: Dict):
    """Record into `row` what MMSA's `_run` really got (after $MMSA_DATASET_ROOT re-rooting):
    the feature file, the text encoder of a BERT-based model, the patience."""
    from ..integration import hooks as compat

    def hook(args):
        row["feature_path"] = str(args.get("custom_feature") or args.get("featurePath") or "")
        row["pretrained"] = str(args.get("pretrained") or "") if args.get("use_bert") else ""
        row["early_stop"] = args.get("early_stop")

    compat.PRE_RUN_HOOKS.append(hook)
    try:
        yield
    finally:
        compat.PRE_RUN_HOOKS.remove(hook)


# ---------------------------------------------------------------------------------------------
# atomic file writes
# ---------------------------------------------------------------------------------------------
# ---------------------------------------------------------------------------------------------
# rows -> CSV / aggregate / markdown / figure
# ---------------------------------------------------------------------------------------------
def _metric_keys(rows: Iterable[Dict]) -> List[str]:
    keys = set()
    for r in rows:
        keys.update(r.get("metrics", {}))
    return [k for k in METRIC_ORDER if k in keys] + sorted(keys - set(METRIC_ORDER))


def _csv_text(rows: List[Dict]) -> str:
    metrics = _metric_keys(rows)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_BASE_COLUMNS + metrics)
    for r in rows:
        w.writerow([_csv_cell(r.get(c)) for c in CSV_BASE_COLUMNS]
                   + [_csv_cell(r.get("metrics", {}).get(k)) for k in metrics])
    return buf.getvalue()


def _csv_cell(v):
    if v is None:
        return ""
    if isinstance(v, float):
        return repr(v) if math.isfinite(v) else str(v)
    return v


def read_rows(csv_path) -> List[Dict]:
    """Read a `<kind>-<dataset>.csv` back as a list of dicts (metrics as floats, '' -> None)."""
    out = []
    with open(csv_path, newline="", encoding="utf-8") as f:
        for rec in csv.DictReader(f):
            row = {k: rec[k] for k in CSV_BASE_COLUMNS if k in rec}
            row["metrics"] = {k: float(v) for k, v in rec.items() if k not in CSV_BASE_COLUMNS and v != ""}
            out.append(row)
    return out


def _aggregate(rows: List[Dict], specs: Sequence[RunSpec]) -> List[Dict]:
    out = []
    for spec in specs:
        mine = [r for r in rows if r["run"] == spec.name]
        ok = [r for r in mine if r["status"] == "ok"]
        keys = _metric_keys(ok)
        stats = {}
        for k in keys:
            vals = np.array([r["metrics"][k] for r in ok if k in r["metrics"]], dtype=np.float64)
            if len(vals):
                stats[k] = (float(np.mean(vals)), float(np.std(vals)), len(vals))
        errors = [f"seed {r['seed']}: {r['error']}" for r in mine if r["status"] != "ok"]
        out.append({"spec": spec, "n_run": len(mine), "n_ok": len(ok), "stats": stats, "errors": errors,
                    "wall": float(sum(float(r["wall_time_s"] or 0) for r in mine)),
                    "epochs": [r.get("epochs") for r in ok]})
    return out


def _display_columns(aggs: List[Dict]) -> List[tuple]:
    present = set()
    for a in aggs:
        present.update(a["stats"])
    cols = [(h, keys) for h, keys in TABLE_COLUMNS if any(k in present for k in keys)]
    used = {k for _, keys in cols for k in keys}
    hidden = {"Loss"} | ({"Mult_acc_5"} if "Mult_acc_7" in present else set())
    extra = [k for k in METRIC_ORDER if k in present and k not in used | hidden]
    extra += sorted(present - set(METRIC_ORDER) - used - hidden)
    return cols + [(SHORT_NAMES.get(k, k), (k,)) for k in extra]


def _scale(key: str, v: float) -> float:
    return v if key in NOT_PERCENT else 100.0 * v


def _decimals(key: str) -> int:
    return 3 if key in NOT_PERCENT else 2


def _best(aggs: List[Dict], key: str) -> Optional[float]:
    means = [a["stats"][key][0] for a in aggs if key in a["stats"] and math.isfinite(a["stats"][key][0])]
    if not means:
        return None
    return min(means) if key in LOWER_IS_BETTER else max(means)


def _fmt_cell(agg: Dict, key: str, best: Optional[float]) -> str:
    if key not in agg["stats"]:
        return "–"
    mean, std, n = agg["stats"][key]
    d = _decimals(key)
    text = f"{_scale(key, mean):.{d}f}" + (f" ± {_scale(key, std):.{d}f}" if n > 1 else "")
    if best is not None and math.isfinite(mean) and abs(mean - best) <= 1e-12:
        text = f"**{text}**"
    return text


def _fmt_time(seconds: float) -> str:
    s = int(round(seconds))
    if s < 60:
        return f"{seconds:.1f} s"
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h} h {m:02d} m" if h else f"{m} m {s:02d} s"


def _md_escape(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _paper_block(kind: str, dataset: str) -> List[str]:
    lines = []
    if kind == "compare":
        rows = paper.table1(dataset)
        title = f"## Published reference: paper Table 1, {dataset.upper()} ({paper.PUBLISHED_LABEL})"
        note = paper.TABLE1_NOTE
        if not rows:
            return [title.replace(f", {dataset.upper()}", ""), "",
                    f"The paper reports no {dataset.upper()} results (Table 1 covers MOSI and MOSEI only).", ""]
    else:
        rows = paper.table2()
        title = f"## Published reference: paper Table 2, ablations on MOSI ({paper.PUBLISHED_LABEL})"
        note = paper.TABLE2_NOTE + ("" if dataset == "mosi" else
                                    f" These are MOSI numbers; the runs above are on {dataset.upper()}.")
    lines += [title, "", f"_{note}_", ""]
    if kind == "compare":
        lines += ["| Model (paper) | MAE ↓ | Corr | Acc-2 (has-0/non-0) | F1 (has-0/non-0) | Data setting |",
                  "|---|---|---|---|---|---|"]
        for r in rows:
            lines.append(f"| {r['model']}{r['source'] or ''} | {paper.fmt(r, 'MAE')} | {paper.fmt(r, 'Corr')} | "
                         f"{paper.fmt(r, 'Acc-2')} | {paper.fmt(r, 'F1')} | {r['setting']} |")
    else:
        lines += ["| Ablation (paper) | MAE ↓ | Corr | Acc-2 (has-0/non-0) | F1 (has-0/non-0) | Group |",
                  "|---|---|---|---|---|---|"]
        for r in rows:
            lines.append(f"| {r['model']} | {paper.fmt(r, 'MAE')} | {paper.fmt(r, 'Corr')} | "
                         f"{paper.fmt(r, 'Acc-2')} | {paper.fmt(r, 'F1')} | {r['group'] or ''} |")
    lines += ["", f"Source: {paper.PAPER}."]
    return lines


def measured_table(aggs: List[Dict], kind: str) -> List[str]:
    cols = _display_columns(aggs)
    first = "Model" if kind == "compare" else "Variant"
    extra_hdr = [] if kind == "compare" else ["`ablation`"]
    header = [first] + extra_hdr + [h for h, _ in cols] + ["Seeds ok", "Epochs", "Wall time", "Status"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    bests = {k: _best(aggs, k) for _, keys in cols for k in keys}
    for a in aggs:
        spec = a["spec"]
        cells = [spec.label] + ([",".join(spec.ablation) or "[]"] if kind != "compare" else [])
        for _, keys in cols:
            cells.append(" / ".join(_fmt_cell(a, k, bests[k]) for k in keys))
        epochs = [int(e) for e in a["epochs"] if e not in (None, "")]
        ep = "–" if not epochs else (str(epochs[0]) if min(epochs) == max(epochs) else f"{min(epochs)}–{max(epochs)}")
        if a["n_run"] == 0:
            status = "not run yet"
        elif a["errors"]:
            status = ("failed" if a["n_ok"] == 0 else "partly failed") + ": " + _md_escape("; ".join(a["errors"]))[:400]
        else:
            status = "ok"
        cells += [f"{a['n_ok']}/{a['n_run']}", ep, _fmt_time(a["wall"]) if a["n_run"] else "–", status]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def render_markdown(rows: List[Dict], specs: Sequence[RunSpec], kind: str, info: Dict) -> str:
    aggs = _aggregate(rows, specs)
    dataset = info["dataset"]
    title = ("MMIN vs MMSA baselines" if kind == "compare" else "MMIN ablations (paper Table 2 variants)")
    done = len(rows)
    lines = [f"# {title} on {dataset.upper()}: measured here", ""]
    lines += [f"- status: {'complete' if done >= info['n_planned'] else 'IN PROGRESS'} "
              f"({done}/{info['n_planned']} model-seed runs done), updated {info['updated']}",
              f"- feature file: {info['feature_path'] or 'each model’s MMSA-configured featurePath'}",
              f"- seeds: {', '.join(str(s) for s in info['seeds'])}",
              f"- epoch cap: {info['max_epochs'] or 'none (early stopping only)'} (every model; MMSA's trainers "
              "capped by the same rule, see `mmin_plugin.experiments.compare`), patience: each model's MMSA `early_stop`",
              f"- pretrained text encoder: {info['pretrained'] or 'each model’s default'} (BERT-based models only)",
              f"- overrides: {json.dumps(info['overrides'], sort_keys=True, default=str) if info['overrides'] else 'none'}",
              "", "Mean ± std (numpy.std, ddof=0, as MMSA's results CSV) over the seeds that finished; "
              "accuracies and F1 in %; best mean per column in **bold** (lowest MAE, highest otherwise). "
              "Acc-2/F1 has-0 = negative/non-negative, non-0 = negative/positive (zeros excluded). "
              "Wall time: total over seeds, data loading and MMSA's own 1 s pause per run included.", ""]
    lines += measured_table(aggs, kind)
    lines += ["", f"Per-seed numbers: `{kind}-{dataset}.csv`; figure: `{kind}-{dataset}.png`.", ""]
    lines += _paper_block(kind, dataset)
    return "\n".join(lines) + "\n"


def _paper_value_for(spec: RunSpec, kind: str, dataset: str, key: str) -> Optional[float]:
    if kind == "compare":
        row = paper.paper_row_for_model(dataset, spec.model)
    else:
        row = paper.paper_row_for_ablation(spec.ablation) if dataset == "mosi" else None
    return None if row is None else paper.value(row, key)


def render_figure(rows: List[Dict], specs: Sequence[RunSpec], kind: str, dataset: str) -> bytes:
    """PNG bytes: one panel per metric; per run the mean over seeds with a ± std error bar
    (best mean in orange), the paper's published value (where it has one) as a black bar."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    aggs = _aggregate(rows, specs)
    keys = [k for _, ks in _display_columns(aggs) for k in ks]
    n = max(len(keys), 1)
    ncols = min(4 if len(specs) <= 5 else 3, n)
    nrows = math.ceil(n / ncols)
    width = max(3.4, 0.45 * len(specs) + 1.8)
    fig = Figure(figsize=(width * ncols, 3.3 * nrows + 0.6), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    labels = [a["spec"].label for a in aggs]
    x = np.arange(len(aggs))
    handles = {}
    for i in range(nrows * ncols):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        if i >= len(keys):
            ax.axis("off")
            if not keys and i == 0:
                ax.text(0.5, 0.5, "no finished runs yet", ha="center", va="center", transform=ax.transAxes)
            continue
        key = keys[i]
        best = _best(aggs, key)
        for j, a in enumerate(aggs):
            if key in a["stats"]:
                mean, std, nseeds = a["stats"][key]
                is_best = best is not None and math.isfinite(mean) and abs(mean - best) <= 1e-12
                h = ax.errorbar([j], [_scale(key, mean)], yerr=[_scale(key, std)], fmt="o", ms=7, capsize=4,
                                color="tab:orange" if is_best else "tab:blue")
                handles.setdefault("best mean" if is_best else "mean ± std over seeds (measured)", h)
            else:
                ax.text(j, 0.04, "failed" if a["n_run"] else "not run", rotation=90, ha="center", va="bottom",
                        fontsize=8, color="tab:red", transform=ax.get_xaxis_transform())
            pv = _paper_value_for(a["spec"], kind, dataset, key)
            if pv is not None:
                (h,) = ax.plot([j - 0.3, j + 0.3], [pv, pv], color="black", lw=2.5)
                handles.setdefault("paper (published, not measured here)", h)
        name = SHORT_NAMES.get(key, key) + (" (%)" if key not in NOT_PERCENT else "")
        ax.set_title(name + ("  (lower is better)" if key in LOWER_IS_BETTER else ""), fontsize=10)
        ax.set_xlim(-0.6, len(aggs) - 0.4)
        ax.set_xticks(x)
        ax.set_xticklabels(labels, rotation=35, ha="right", fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    if handles:
        fig.legend(list(handles.values()), list(handles), loc="outside lower center", ncols=len(handles), fontsize=8)
    fig.suptitle(f"{'MMIN vs MMSA baselines' if kind == 'compare' else 'MMIN ablations'} on {dataset.upper()} "
                 f"(measured here, {len(set(r['seed'] for r in rows)) or 0} seed(s))", fontsize=11)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


CURVE_PANELS = (
    ("L_senti (MSE)", "train_L_senti", "valid_Loss"),
    ("L_sep", "train_L_sep", "valid_L_sep"),
    ("L_ac", "train_L_ac", "valid_L_ac"),
    ("L_ap", "train_L_ap", "valid_L_ap"),
    ("total loss (eq. 6)", "train_Loss", None),
)


def plot_training_curves(history: List[Dict], title: str) -> bytes:
    """PNG bytes of MMIN's per-epoch history: each loss term (train / valid) and valid KeyEval."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(13, 6.5), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    epochs = [h.get("epoch", i + 1) for i, h in enumerate(history)]
    for i, (name, tr, va) in enumerate(CURVE_PANELS):
        ax = fig.add_subplot(2, 3, i + 1)
        for key, lab, style in ((tr, "train", "o-"), (va, "valid", "s--")):
            if key and any(key in h for h in history):
                ax.plot(epochs, [h.get(key, np.nan) for h in history], style, label=lab, ms=4)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    ax = fig.add_subplot(2, 3, 6)
    key_eval = next((h.get("KeyEval") for h in history if h.get("KeyEval")), "Loss")
    vals = [h.get(f"valid_{key_eval}", np.nan) for h in history]
    ax.plot(epochs, vals, "o-", color="tab:green", ms=4, label=f"valid {key_eval}")
    best = [(e, v) for e, v, h in zip(epochs, vals, history) if h.get("best")]
    if best:
        ax.plot(*zip(*best), "*", color="tab:red", ms=11, label="new best (checkpoint saved)")
    ax.set_title(f"validation KeyEval: {key_eval}", fontsize=10)
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=11)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------
# the driver
# ---------------------------------------------------------------------------------------------
def _error_text(exc: BaseException) -> str:
    msg = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {msg}"[:500] if msg else type(exc).__name__


class _Session:
    def __init__(self, kind, specs, dataset, seeds, feature_path, pretrained, max_epochs, out_dir, overrides,
                 gpu_ids, num_workers, verbose_level):
        import mmin_plugin  # noqa: F401  (MMIN registered, compatibility layer applied)

        dataset = str(dataset).lower()
        if dataset not in ("mosi", "mosei", "sims"):
            raise MMINConfigError(f"dataset: expected one of ['mosi', 'mosei', 'sims']; found {dataset!r}")
        seeds = [int(s) for s in (seeds or [])]
        if not seeds:
            raise MMINConfigError("seeds: expected at least one seed")
        if len(set(seeds)) != len(seeds):
            raise MMINConfigError(f"seeds: expected distinct seeds; found {seeds}")
        if max_epochs is not None and (int(max_epochs) != max_epochs or max_epochs < 1):
            raise MMINConfigError(f"max_epochs: expected None or a positive integer; found {max_epochs!r}")
        if feature_path is not None:
            fp = Path(os.path.expanduser(str(feature_path))).resolve()
            if not fp.is_file():
                raise MMINDataError(f"feature file not found: {fp}")
            feature_path = str(fp)
        self.kind, self.specs, self.dataset, self.seeds = kind, list(specs), dataset, seeds
        self.feature_path, self.pretrained = feature_path, (str(pretrained) if pretrained else None)
        self.max_epochs = int(max_epochs) if max_epochs else None
        self.overrides = dict(overrides or {})
        self.common, self.scoped = split_overrides(self.overrides)
        models = {s.model for s in self.specs}
        for m in sorted(set(self.scoped) - models):
            print(f"[{kind}] warning: overrides for '{m}' ignored: no such model in this run "
                  f"({sorted(models)})", flush=True)
        self.gpu_ids, self.num_workers, self.verbose_level = list(gpu_ids or []), int(num_workers or 0), verbose_level
        self.out = Path(out_dir).resolve()
        self.out.mkdir(parents=True, exist_ok=True)
        stem = f"{kind}-{dataset}"
        self.csv_path, self.md_path, self.png_path = (self.out / f"{stem}.{e}" for e in ("csv", "md", "png"))
        if self.csv_path.exists():  # a previous run's numbers are kept, not silently overwritten
            shutil.copyfile(self.csv_path, self.out / f"{stem}.prev.csv")
        self.rows: List[Dict] = []
        self._figure_rows = -1  # number of rows the PNG on disk shows
        self._figure_time = time.monotonic()

    # -- one model, one seed ------------------------------------------------------------------
    def _config_for(self, spec: RunSpec) -> Dict:
        cfg = {}
        if self.feature_path:
            cfg["featurePath"] = self.feature_path
        if self.max_epochs:
            cfg["max_epochs"] = self.max_epochs
        cfg.update(self.common)
        cfg.update(self.scoped.get(spec.model, {}))
        if "ablation" in spec.config and "ablation" in {**self.common, **self.scoped.get(spec.model, {})}:
            print(f"[{self.kind}] warning: override 'ablation' replaced by variant {spec.name}'s", flush=True)
        cfg.update(spec.config)
        if self.pretrained and "pretrained" not in {**self.common, **self.scoped.get(spec.model, {})}:
            if _uses_bert(spec.model, self.dataset, cfg):
                cfg["pretrained"] = self.pretrained
        return cfg

    def run_one(self, spec: RunSpec, seed: int) -> Dict:
        from .runner import mmsa_run, own_mmsa_handlers

        run_dir = self.out / "runs" / spec.name
        dirs = {"model_save_dir": run_dir / "models", "res_save_dir": run_dir / "results", "log_dir": run_dir / "logs"}
        ckpt = dirs["model_save_dir"] / f"{spec.model.lower()}-{self.dataset}.pth"
        history = ckpt.with_name(ckpt.stem + ".history.json")
        row = {"run": spec.name, "model": spec.model, "ablation": ",".join(spec.ablation or []),
               "dataset": self.dataset, "seed": seed, "status": "failed", "error": "", "wall_time_s": 0.0,
               "epochs": None, "stopped_by": None, "max_epochs": self.max_epochs, "early_stop": None,
               "feature_path": self.feature_path or "", "pretrained": "", "checkpoint": "", "metrics": {}}
        t0 = time.perf_counter()
        for d in dirs.values():
            d.mkdir(parents=True, exist_ok=True)
        try:
            cfg = self._config_for(spec)
            row["pretrained"] = cfg.get("pretrained", "")
            row["max_epochs"] = cfg.get("max_epochs")
            history.unlink(missing_ok=True)  # never attribute a previous seed's curves to this one
            with own_mmsa_handlers(), _record_args(row), epoch_cap(cfg.get("max_epochs")) as stats:
                results = mmsa_run(spec.model, self.dataset, config=cfg, seeds=[seed], gpu_ids=list(self.gpu_ids),
                                   num_workers=self.num_workers, verbose_level=self.verbose_level,
                                   **{k: str(v) for k, v in dirs.items()})
            if not results:
                raise RuntimeError("MMSA_run returned no test results")
            row.update(status="ok", metrics={k: float(v) for k, v in results[-1].items()},
                       epochs=stats["epochs"], stopped_by=stats["stopped_by"],
                       checkpoint=str(ckpt) if ckpt.is_file() else "")
        except Exception as exc:  # one model's failure must not lose the others' results
            row["error"] = _error_text(exc)
            with contextlib.suppress(OSError):
                (run_dir / f"error-seed{seed}.txt").write_text(traceback.format_exc(), encoding="utf-8")
        row["wall_time_s"] = round(time.perf_counter() - t0, 3)
        if history.is_file():
            self._curves(spec, seed, history)
        return row

    def _curves(self, spec: RunSpec, seed: int, history_path: Path) -> None:
        try:
            kept = self.out / "runs" / spec.name / f"history-{self.dataset}-seed{seed}.json"
            shutil.copyfile(history_path, kept)
            hist = json.loads(kept.read_text())
            if hist:
                png = plot_training_curves(hist, f"{spec.label} on {self.dataset.upper()}, seed {seed}: "
                                                 "training curves (MMIN trainer history)")
                atomic_write_bytes(self.out / f"curves-{spec.name}-{self.dataset}-seed{seed}.png", png)
        except Exception as exc:  # the figure is a convenience; never lose a result over it
            print(f"[{self.kind}] warning: training-curve figure for {spec.name} seed {seed} failed: "
                  f"{_error_text(exc)}", flush=True)

    # -- outputs ------------------------------------------------------------------------------
    def info(self) -> Dict:
        return {"dataset": self.dataset, "seeds": self.seeds, "feature_path": self.feature_path,
                "max_epochs": self.max_epochs, "pretrained": self.pretrained, "overrides": self.overrides,
                "n_planned": len(self.specs) * len(self.seeds),
                "updated": _dt.datetime.now().isoformat(timespec="seconds")}

    def write(self, figure=True) -> str:
        atomic_write_text(self.csv_path, _csv_text(self.rows))
        md = render_markdown(self.rows, self.specs, self.kind, self.info())
        atomic_write_text(self.md_path, md)
        if figure and self._figure_rows != len(self.rows):
            self._figure_rows, self._figure_time = len(self.rows), time.monotonic()
            try:
                atomic_write_bytes(self.png_path, render_figure(self.rows, self.specs, self.kind, self.dataset))
            except Exception as exc:
                print(f"[{self.kind}] warning: figure failed: {_error_text(exc)}", flush=True)
        return md

    def run(self) -> List[Dict]:
        total = len(self.specs) * len(self.seeds)
        self.write(figure=False)
        i = 0
        try:
            for spec in self.specs:
                for seed in self.seeds:
                    i += 1
                    print(f"[{self.kind} {self.dataset}] {i}/{total} {spec.label} seed {seed}: running", flush=True)
                    row = self.run_one(spec, seed)
                    self.rows.append(row)
                    if row["status"] == "ok":
                        m = row["metrics"]
                        brief = " ".join(f"{k} {m[k]:.4f}" for k in ("MAE", "Corr") if k in m)
                        print(f"[{self.kind} {self.dataset}] {i}/{total} {spec.label} seed {seed}: ok in "
                              f"{row['wall_time_s']:.1f} s, {row['epochs']} epoch(s) (stopped by "
                              f"{row['stopped_by']}), {brief}", flush=True)
                    else:
                        print(f"[{self.kind} {self.dataset}] {i}/{total} {spec.label} seed {seed}: FAILED after "
                              f"{row['wall_time_s']:.1f} s: {row['error']}", flush=True)
                    # CSV and table after every seed; the figure at most every FIGURE_EVERY_S seconds
                    self.write(figure=time.monotonic() - self._figure_time >= FIGURE_EVERY_S)
        finally:  # also on KeyboardInterrupt: the files show every finished seed
            md = self.write()
        print()
        print(md)
        print(f"written: {self.md_path}\n         {self.csv_path}\n         {self.png_path}", flush=True)
        return self.rows


def run_comparison(models=("mmin", "misa", "mult"), dataset="mosi", seeds=(1111, 1112, 1113, 1114, 1115),
                   feature_path=None, pretrained=None, max_epochs=None, out_dir="mmin-results", overrides=None,
                   gpu_ids=(), num_workers=0, verbose_level=0) -> List[Dict]:
    """Run every model of `models` through MMSA_run on the same data and seeds; write
    `compare-<dataset>.{md,csv,png}` under `out_dir` (see the module docstring). Returns the rows."""
    names = []
    for m in models or []:
        m = str(m).lower()
        if m not in names:
            names.append(m)
    if not names:
        raise MMINConfigError("models: expected at least one model name")
    specs = [RunSpec(name=m, model=m, label=m) for m in names]
    return _Session("compare", specs, dataset, seeds, feature_path, pretrained, max_epochs, out_dir, overrides,
                    gpu_ids, num_workers, verbose_level).run()


def run_ablation(dataset="mosi", seeds=(1111, 1112, 1113, 1114, 1115), feature_path=None, pretrained=None,
                 max_epochs=None, out_dir="mmin-results", overrides=None, gpu_ids=(), num_workers=0,
                 verbose_level=0, variants=None) -> List[Dict]:
    """Full MMIN and every Table 2 variant (`variants`: a subset of the names in
    `ABLATION_VARIANTS`, default all); writes `ablation-<dataset>.{md,csv,png}` under `out_dir`."""
    known = {name: (abl, label) for name, abl, label in ABLATION_VARIANTS}
    chosen = list(variants) if variants else [n for n, _, _ in ABLATION_VARIANTS]
    bad = [v for v in chosen if v not in known]
    if bad:
        raise MMINConfigError(f"variants: unknown {bad}; expected a subset of {list(known)}")
    specs = [RunSpec(name=f"mmin-{v}" if v != "full" else "mmin-full", model="mmin", label=known[v][1],
                     config={"ablation": list(known[v][0])}, ablation=list(known[v][0])) for v in chosen]
    return _Session("ablation", specs, dataset, seeds, feature_path, pretrained, max_epochs, out_dir, overrides,
                    gpu_ids, num_workers, verbose_level).run()
