"""Calibration of the comparison statistics (results/stats.py) on simulated test sets (issue 23).
Prints a markdown table and writes JSON.

    python benchmarks/bench_calibration.py --out bench-results/bench_calibration.json         # 300 worlds
    python benchmarks/bench_calibration.py --worlds 60 --out bench-results/bench_calibration.json   # quick

Worlds (results/simulate.py): 686 MOSI-like clips; each model's per-clip error = clip difficulty
shared by all models + a persistent per-model part + per-seed noise; the seed-to-seed sd of test MAE
is 0.01 ("low") or 0.03 ("high"). Per scenario (3 and 5 seeds x low and high):

* null tables of 8 variants with no real effect: the family-wise rate of any † (Holm-adjusted p of
  MAE < 0.05), the same without Holm, one comparison's false-positive rate (two-way test, and the
  seed-only interval for contrast), coverage of the two-way interval (truth: population difference
  0) and of the seed-only interval (truth: this test set's difference), and the published-number
  check (one more seed / best of 5 seeds outside the seed-only prediction interval);
* effect worlds (a true population MAE difference of 0.05): power (†), coverage, the median
  smallest detectable difference the table reports and how often it is <= 0.05.

`--through-cli K`: the first K worlds of every scenario also go through `report --from-predictions`
(npz files and a spec written to a temporary folder, `python -m mmin_plugin report`'s code path
in-process, PNG skipped), and the CSV's `MAE|significant` must equal the in-process †.
Every rate comes with its Monte Carlo standard error.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mmin_plugin.results import simulate, stats  # noqa: E402

COLUMNS = (("fwer", "any † (8 null, Holm)"), ("fwer_unadjusted", "any raw p<.05 (8 null)"), ("fpr", "FPR"),
           ("fpr_test_set", "FPR seed-only"), ("coverage", "coverage"), ("coverage_test_set", "coverage seed-only"),
           ("power", "power at 0.05"), ("coverage_effect", "coverage at 0.05"), ("mdd", "median mdd"),
           ("power_predicted", "mdd <= 0.05"), ("paper_flag", "paper flagged"),
           ("paper_flag_best5", "paper flagged (best of 5)"))


def through_cli(data, reference, folder: Path):
    """`report --from-predictions` on one world; returns {run: MAE|significant} from its CSV."""
    import numpy as np
    import pandas as pd

    from mmin_plugin.results import rebuild

    folder.mkdir(parents=True, exist_ok=True)
    spec = {"dataset": "mosi", "reference": reference, "runs": {}}
    for run, seeds in data.items():
        for s, d in seeds.items():
            np.savez(folder / f"{run}-{s}.npz", **d)
            spec["runs"].setdefault(run, {})[str(s)] = f"{run}-{s}.npz"
    (folder / "spec.json").write_text(json.dumps(spec))
    rebuild.from_predictions(folder / "spec.json", folder / "out", figure=False)
    df = pd.read_csv(folder / "out" / "compare-mosi.csv")
    return {r: bool(g["MAE|significant"].iloc[0]) for r, g in df.groupby("run") if r != reference}


def run(worlds: int, seed: int, cli_worlds: int) -> list:
    rows = []
    for n_seeds in (3, 5):
        for name, world in simulate.SCENARIOS.items():
            checked = {"n": 0, "agree": 0}

            def judge(data, ref, _c=checked):
                t = stats.compare_runs(data, ref, "mosi")
                if _c["n"] < cli_worlds:
                    with tempfile.TemporaryDirectory() as tmp:
                        csv = through_cli(data, ref, Path(tmp))
                    _c["n"] += 1
                    _c["agree"] += all(csv[r] == t.marked(r) for r in csv)
                return t

            t0 = time.perf_counter()
            res = simulate.calibration(world, n_seeds, worlds, seed=seed, judge=judge)
            res.update(scenario=name, seconds=round(time.perf_counter() - t0, 1),
                       cli_checked=checked["n"], cli_agree=checked["agree"])
            rows.append(res)
            print(markdown([res], header=not rows[:-1]), flush=True)
    return rows


def markdown(rows, header=True) -> str:
    lines = []
    if header:
        lines += ["| seeds | seed sd | " + " | ".join(h for _, h in COLUMNS) + " |",
                  "|---|---|" + "---|" * len(COLUMNS)]
    for r in rows:
        cells = []
        for k, _ in COLUMNS:
            cells.append(f"{r[k]:.3f}" if k == "mdd" else f"{r[k]:.3f} ± {r[k + '_mcse']:.3f}")
        lines.append(f"| {r['n_seeds']} | {r['scenario']} ({r['seed_sd']}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worlds", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--through-cli", type=int, default=5, metavar="K")
    ap.add_argument("--out", default="bench-results/bench_calibration.json")
    a = ap.parse_args()
    t0 = time.perf_counter()
    rows = run(a.worlds, a.seed, a.through_cli)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count(),
            "load": os.getloadavg(), "seconds": round(time.perf_counter() - t0, 1), "worlds": a.worlds,
            "df_guard_level": stats.DF_GUARD_LEVEL}
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    print("\n" + markdown(rows) + f"\n\nwritten: {out}")


if __name__ == "__main__":
    main()
