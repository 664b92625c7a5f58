"""Summary of the issue-26 schedule study (VALID only): reads the output folders of two `tune` runs
on the real-text file, the search (``--study``) and the pre-issue-26 defaults scored by the same tool
on the same seeds (``--baseline``: a one-point space, re-scored), and writes a markdown report.

Every number here is a VALID number: search trials never evaluate TEST (their ``row.json`` counts
the ``do_test`` calls; this script refuses a row with a TEST call). Per trial: its searched keys,
the best VALID KeyEval (MSE, MMSA's MOSEI ``Loss``), the VALID MAE of that epoch, and the largest
epoch-to-epoch VALID MAE swing (from the trainer's ``history.json``). For the re-scored
configurations and the old defaults: per-seed scores, mean ± sd, and the seed-paired difference
with a t interval and p-value (scipy; 3-5 seeds, so weak evidence, said so in the output).

Usage::

    python benchmarks/tune_study_report.py --study /tmp/study --baseline /tmp/baseline \\
        --out docs/design/real-text/tune-issue26.md
"""
from __future__ import annotations

import argparse
import csv
import json
import math
from pathlib import Path

import numpy as np

SEARCHED = ("learning_rate", "learning_rate_bert", "lr_schedule", "warmup_epochs", "ema_decay", "batch_size",
            "weight_decay", "dropout")


def _rows(folder: Path, run_prefix: str):
    out = []
    for p in sorted(folder.glob(f"runs/{run_prefix}*/*/seed*/row.json")):
        r = json.loads(p.read_text())
        calls = r.get("do_test_calls") or {}
        if calls.get("TEST", 0):
            raise SystemExit(f"error: {p}: the test split was evaluated ({calls}); not a VALID-only study")
        hist = sorted(Path(r["directory"], "models").glob("*.history.json"))
        r["history"] = json.loads(hist[0].read_text()) if hist else []
        out.append(r)
    return out


def _swing(history):
    maes = [e["valid_MAE"] for e in history]
    return max((abs(b - a) for a, b in zip(maes, maes[1:])), default=float("nan"))


def _best_mae(r):
    h = [e for e in r["history"] if e.get("best")]
    return h[-1]["valid_MAE"] if h else float("nan")


def _fmt(v, d=4):
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{d}f}"


def _config(r):
    o = r.get("overrides") or {}
    return {k: o.get(k) for k in SEARCHED}


def _paired(a: dict, b: dict):
    """Seed-paired difference a - b: mean, 95% t interval, two-sided p (scipy.stats.ttest_rel)."""
    from scipy import stats

    seeds = sorted(set(a) & set(b))
    d = np.array([a[s] - b[s] for s in seeds])
    if len(d) < 2:
        return None
    t = stats.ttest_rel([a[s] for s in seeds], [b[s] for s in seeds])
    half = stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d))
    return {"seeds": seeds, "mean": float(d.mean()), "lo": float(d.mean() - half), "hi": float(d.mean() + half),
            "p": float(t.pvalue)}


def _figure(path, groups):
    """One panel per configuration: per-epoch VALID MAE, one line per seed, the selected epoch marked."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.4 * len(groups), 3.4), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    first = None
    for i, (name, by_seed) in enumerate(groups.items()):
        ax = fig.add_subplot(1, len(groups), i + 1, sharey=first)
        first = first or ax
        for j, s in enumerate(sorted(by_seed)):
            h = by_seed[s]["history"]
            ax.plot([e["epoch"] for e in h], [e["valid_MAE"] for e in h], "o-", color=f"C{j}", ms=3, label=f"seed {s}")
            best = [e for e in h if e.get("best")]
            if best:
                ax.plot([best[-1]["epoch"]], [best[-1]["valid_MAE"]], "*", color=f"C{j}", ms=10)
        swing = max(_swing(by_seed[s]["history"]) for s in by_seed)
        ax.set_title(f"{name}: largest swing {swing:.3f}", fontsize=9)
        ax.set_xlabel("epoch")
        ax.set_ylabel("VALID MAE (star: selected epoch)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    fig.suptitle("issue-26 study, VALID only: real MOSEI text (MiniLM fine-tuned) + noise a/v, 400 train clips",
                 fontsize=9)
    fig.savefig(path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--study", required=True)
    p.add_argument("--baseline", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--more", nargs=2, metavar=("CHOSEN_DIR", "OLD_DIR"),
                   help="tune folders of the chosen trial's and the old defaults' extra seeds (one-point spaces)")
    p.add_argument("--figure", help="PNG: per-epoch VALID MAE of every seed, old defaults against the chosen trial")
    a = p.parse_args(argv)
    study, base = Path(a.study), Path(a.baseline)
    search = _rows(study, "mmin-trial-")
    rescore = _rows(study, "mmin-rescore-")
    old = _rows(base, "mmin-")
    extra_chosen, extra_old = ((_rows(Path(a.more[0]), "mmin-"), _rows(Path(a.more[1]), "mmin-")) if a.more
                               else ([], []))
    chosen_csv = list(csv.DictReader((study / "tune-mmin-mosei.csv").open()))
    chosen = [int(r["trial"]) for r in chosen_csv if r["chosen"] == "True"]
    lines = ["# Issue 26: the schedule study on VALID of the real text (encoder fine-tuned)", "",
             "Generated by `benchmarks/tune_study_report.py` from the `tune` output folders; VALID only (every "
             "row's `do_test_calls` has no TEST call, checked). Score: best VALID MSE (MMSA's MOSEI KeyEval "
             "`Loss`, lower is better) over the epochs of a trial; MAE: VALID MAE of that epoch; swing: the largest "
             "epoch-to-epoch change of VALID MAE in the trial.", "",
             "## Search trials (seed 2222)", "",
             "| trial | status | epochs | " + " | ".join(SEARCHED) + " | VALID MSE | VALID MAE | swing |",
             "|" + "---|" * (len(SEARCHED) + 6)]
    order = sorted(search, key=lambda r: (r.get("valid_score") is None, r.get("valid_score") or 0))
    for r in order:
        n = int(r["run"].rsplit("-", 1)[1])
        c = _config(r)
        lines.append(f"| {n}{' (chosen)' if n in chosen else ''} | {r['status']} | {r.get('epochs')} | "
                     + " | ".join(str(c[k]) for k in SEARCHED)
                     + f" | {_fmt(r.get('valid_score'))} | {_fmt(_best_mae(r))} | {_fmt(_swing(r['history']), 3)} |")
    groups = {}
    for r in search:
        n = int(r["run"].rsplit("-", 1)[1])
        groups.setdefault(f"trial {n}", {})[r["seed"]] = r
    for r in rescore:
        n = int(r["run"].rsplit("-", 1)[1])
        groups.setdefault(f"trial {n}", {})[r["seed"]] = r
    groups["old defaults"] = {r["seed"]: r for r in old + extra_old}
    for n in chosen:
        groups[f"trial {n}"].update({r["seed"]: r for r in extra_chosen})
    multi = {k: v for k, v in groups.items() if len(v) > 1}
    lines += ["", "## Re-scored (2222 = the search seed, 2223, 2224" + (", and for the chosen trial and the old "
              "defaults 2225, 2226, run after the choice" if a.more else "") + ") and the old defaults", "",
              "| configuration | per-seed VALID MSE | mean ± sd | per-seed VALID MAE | mean ± sd | largest swing |",
              "|---|---|---|---|---|---|"]
    scores = {}
    for name, by_seed in multi.items():
        seeds = sorted(by_seed)
        mse = {s: by_seed[s].get("valid_score") for s in seeds}
        mae = {s: _best_mae(by_seed[s]) for s in seeds}
        scores[name] = {"mse": mse, "mae": mae}
        vm, va = np.array(list(mse.values()), float), np.array(list(mae.values()), float)
        lines.append(f"| {name} | {', '.join(_fmt(v) for v in mse.values())} | {vm.mean():.4f} ± {vm.std(ddof=1):.4f} "
                     f"| {', '.join(_fmt(v) for v in mae.values())} | {va.mean():.4f} ± {va.std(ddof=1):.4f} | "
                     f"{max(_swing(by_seed[s]['history']) for s in seeds):.3f} |")
    if "old defaults" in scores:
        lines += ["", "Seed-paired differences against the old defaults (configuration − old; negative = better; "
                  "95% t interval, paired t-test over the seeds both have; with so few seeds weak evidence; an "
                  "interval that contains 0 is not significant):", ""]
        for name, sc in scores.items():
            if name == "old defaults":
                continue
            for metric in ("mse", "mae"):
                d = _paired(sc[metric], scores["old defaults"][metric])
                if d:
                    lines.append(f"* {name}, VALID {metric.upper()}: {d['mean']:+.4f} "
                                 f"[{d['lo']:+.4f}, {d['hi']:+.4f}], p = {d['p']:.2f} "
                                 f"({'significant' if d['p'] < 0.05 else 'not significant'}) "
                                 f"over seeds {d['seeds']}")
    lines += ["", "## Per-epoch VALID MAE (every multi-seed configuration)", ""]
    for name, by_seed in multi.items():
        for s in sorted(by_seed):
            h = by_seed[s]["history"]
            lines.append(f"* {name}, seed {s}: " + " → ".join(f"{e['valid_MAE']:.3f}" for e in h)
                         + (" (lr of the non-BERT group after each epoch: "
                            + ", ".join(f"{e.get('lr/MMIN (non-BERT)', float('nan')):.2g}" for e in h) + ")"))
    if a.figure:
        lines += ["", f"Figure: `{Path(a.figure).name}`."]
        _figure(a.figure, {k: multi[k] for k in (f"trial {chosen[0]}", "old defaults") if k in multi})
    Path(a.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
