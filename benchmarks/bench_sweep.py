"""The same 4-trial sweep (MMIN, seeds 1111-1114, tiny demo data, 1 epoch) on the serial backend and
on a local Ray instance (a fresh worker process per trial, and with --reuse-workers); prints a
markdown table and writes JSON.

    python benchmarks/bench_sweep.py --out bench-results/bench_sweep.json [--ray-cpus 2] [--epochs 1]

Per backend: the backend's start (Ray's local instance, reported apart), the sweep's wall time, the
time spent inside the trials (sum of each trial's `wall_time_s`, which covers MMSA_run: data
loading, training, test), and the overhead per trial = (sweep wall time x trials at once - time
inside trials) / trials, i.e. slot time not spent in MMSA_run (worker process start and imports,
scheduling, table rebuilding). Numbers are per machine.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

SEEDS = [1111, 1112, 1113, 1114]
TINY = {"mmin.d_model": 16, "mmin.nheads": 4, "mmin.fine_layers": 1, "mmin.fusion_ff_dim": 32,
        "mmin.disc_hidden": 8}


def sweep(backend: str, data: dict, out: Path, epochs: int, ray_cpus: int, reuse: bool = False) -> dict:
    from mmin_plugin.experiments import compare
    from mmin_plugin.experiments.sweep import SweepOptions

    opts = SweepOptions(backend=backend, cpus_per_trial=1, reuse_workers=reuse)
    start = 0.0
    if backend == "ray":  # started here so that its start-up is reported apart from the trials
        import ray

        t0 = time.perf_counter()
        ray.init(num_cpus=ray_cpus, include_dashboard=False, log_to_driver=False)
        start = time.perf_counter() - t0
    t0 = time.perf_counter()
    rows = compare.run_comparison(models=["mmin"], dataset="mosi", seeds=SEEDS, feature_path=data["feature_path"],
                                  pretrained=data["bert_dir"], max_epochs=epochs, out_dir=out,
                                  overrides=dict(TINY), sweep=opts)
    wall = time.perf_counter() - t0
    if backend == "ray":
        ray.shutdown()
    inside = sum(float(r["wall_time_s"]) for r in rows)
    slots = min(ray_cpus, len(SEEDS)) if backend == "ray" else 1
    return {"backend": backend + (" (--reuse-workers)" if reuse else ""), "trials": len(rows),
            "ok": sum(r["status"] == "ok" for r in rows),
            "slots": slots, "start_s": start, "wall_s": wall, "inside_trials_s": inside,
            "overhead_per_trial_s": (wall * slots - inside) / len(rows),
            "metrics": {r["seed"]: r["metrics"] for r in rows}}


def table(results) -> str:
    lines = ["| backend | trials at once | backend start (s) | sweep wall time (s) | time inside trials (s) | "
             "overhead per trial (s) | speed-up |", "|---|---:|---:|---:|---:|---:|---:|"]
    base = results[0]["wall_s"]
    for r in results:
        lines.append(f"| {r['backend']} | {r['slots']} | {r['start_s']:.1f} | {r['wall_s']:.1f} | "
                     f"{r['inside_trials_s']:.1f} | "
                     f"{r['overhead_per_trial_s']:.1f} | {base / r['wall_s']:.2f}x |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", help="write the JSON results here")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--ray-cpus", type=int, default=2, help="CPUs of the local Ray instance (= trials at once)")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(1)
    from mmin_plugin.experiments.demo import ensure_demo, make_tiny_bert

    with tempfile.TemporaryDirectory(prefix="bench-sweep-") as tmp:
        tmp = Path(tmp)
        bert = make_tiny_bert(tmp / "bert", language="en")
        data = ensure_demo(tmp / "data", dataset="mosi", n_train=48, n_valid=16, n_test=16, seq_lens=(16, 40, 30),
                           bert_dir=str(bert))
        data = {"feature_path": str(Path(data["feature_path"]).resolve()), "bert_dir": str(bert)}
        results = [sweep(b, data, tmp / f"{b}{r}", args.epochs, args.ray_cpus, r)
                   for b, r in (("serial", False), ("ray", False), ("ray", True))]
    same = all(r["metrics"] == results[0]["metrics"] for r in results)
    print()
    print(table(results))
    print(f"\nper-seed metrics identical on every backend: {same}")
    meta = {"machine": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(),
            "torch": torch.__version__, "load_avg": os.getloadavg(), "epochs": args.epochs, "seeds": SEEDS,
            "same_metrics": same, "date": time.strftime("%Y-%m-%dT%H:%M:%S")}
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"meta": meta, "results": results}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
