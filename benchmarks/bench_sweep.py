"""Sweeps at cluster speed (issue 18): the same sweep on every backend, and a search with and without
pruning. Prints markdown tables and writes JSON.

    python benchmarks/bench_sweep.py --out bench-results/bench_sweep.json            # full (~15 min, 2 cores)
    python benchmarks/bench_sweep.py --quick --out bench-results/bench_sweep.json    # smaller (~4 min)

1. Backends. 4 trials (MMIN, seeds 1111-1114) of two sizes: *tiny* (1 epoch on 48 clips, ~3 s a
   trial) and *realistic* (`--realistic-epochs` epochs on `--realistic-train` clips, ~60 s a trial
   on an idle 2-core machine), each on: serial; Ray with a task (a fresh worker process) per trial
   (`--no-pool`); Ray with the actor pool (the default). Per backend: its start (Ray's local
   instance and the pool's actors, reported apart), the sweep's wall time, the time inside
   MMSA_run (sum of the trials' `wall_time_s`), the overhead per trial = (wall time x trials at
   once - time inside MMSA_run) / trials, the speed-up over serial, and whether the per-seed
   metrics are identical to serial's.
2. Pruning. `tune` with 12 random-search trials (seeded, the same 12 configurations both times),
   `--prune none` and `--prune median`: epochs spent by the search, the chosen trial, and the
   chosen configuration's VALID score when trained in full (from the unpruned search) against the
   unpruned choice's (relative gap).

Numbers are per machine; the load average is recorded (`uptime`).
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
BACKENDS = (("serial", False), ("ray", False), ("ray", True))  # (backend, pool)


def _name(backend: str, pool: bool) -> str:
    return "serial" if backend == "serial" else ("Ray, actor pool" if pool else "Ray, a task per trial")


def sweep(backend: str, pool: bool, data: dict, out: Path, epochs: int, ray_cpus: int) -> dict:
    from mmin_plugin.experiments import compare
    from mmin_plugin.runs.backends import _pool, ray_session
    from mmin_plugin.runs.sweep import SweepOptions

    opts = SweepOptions(backend=backend, cpus_per_trial=1, pool=pool)
    slots = min(ray_cpus, len(SEEDS)) if backend == "ray" else 1
    with ray_session(backend, num_cpus=ray_cpus):
        start = 0.0
        if backend == "ray":  # Ray and the pool are started here so that their start-up is reported apart
            import ray

            t0 = time.perf_counter()
            ray.cluster_resources()
            if pool:
                _pool(ray, slots, 1, 0)
            start = time.perf_counter() - t0
        t0 = time.perf_counter()
        rows = compare.run_comparison(models=["mmin"], dataset="mosi", seeds=SEEDS, feature_path=data["feature_path"],
                                      pretrained=data["bert_dir"], max_epochs=epochs, out_dir=out,
                                      overrides=dict(TINY), sweep=opts)
        wall = time.perf_counter() - t0
    inside = sum(float(r["wall_time_s"]) for r in rows)
    return {"backend": _name(backend, pool), "trials": len(rows), "ok": sum(r["status"] == "ok" for r in rows),
            "slots": slots, "start_s": start, "wall_s": wall, "inside_trials_s": inside,
            "overhead_per_trial_s": (wall * slots - inside) / len(rows),
            "metrics": {r["seed"]: r["metrics"] for r in rows}}


def search(prune: str, data: dict, out: Path, epochs: int, trials: int) -> dict:
    from mmin_plugin.experiments import tune

    t0 = time.perf_counter()
    res = tune.run_tune("mmin", "mosi", trials=trials, search="random", seed=2222, final_seeds=[1111],
                        feature_path=data["feature_path"], pretrained=data["bert_dir"], max_epochs=epochs,
                        out_dir=out, overrides={**TINY, "mmin.early_stop": epochs}, prune=prune)
    rows = res["search"]
    return {"prune": prune, "wall_s": time.perf_counter() - t0, "best_trial": res["best_trial"],
            "epochs": sum(int(r.get("epochs") or 0) for r in rows),
            "pruned": sum(r.get("status") == "pruned" for r in rows),
            "valid": [r.get("valid_score") for r in rows], "key_eval": rows[res["best_trial"]].get("key_eval"),
            "lower_is_better": rows[res["best_trial"]].get("valid_lower_is_better")}


def backend_table(results) -> str:
    lines = ["| trials | backend | at once | start (s) | wall (s) | inside MMSA_run (s) | overhead / trial (s) | "
             "speed-up | metrics = serial |", "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for size, rs in results.items():
        base = rs[0]
        for r in rs:
            lines.append(f"| {size} | {r['backend']} | {r['slots']} | {r['start_s']:.1f} | {r['wall_s']:.1f} | "
                         f"{r['inside_trials_s']:.1f} | {r['overhead_per_trial_s']:.1f} | "
                         f"{base['wall_s'] / r['wall_s']:.2f}x | {r['metrics'] == base['metrics']} |")
    return "\n".join(lines)


def pruning_table(full: dict, pruned: dict) -> str:
    """The chosen configurations' VALID scores when trained in full (the unpruned search trained all)."""
    sign = 1 if full["lower_is_better"] else -1
    a, b = full["valid"][full["best_trial"]], full["valid"][pruned["best_trial"]]
    gap = sign * (b - a) / abs(a) if a else float("nan")
    pruned["chosen_full_valid"], pruned["gap_vs_unpruned"] = b, gap
    saved = 1 - pruned["epochs"] / full["epochs"]
    pruned["epochs_saved"] = saved
    return "\n".join([
        f"| search ({len(full['valid'])} trials) | epochs spent | pruned trials | wall (s) | chosen trial | "
        f"its full-training VALID {full['key_eval']} | gap to unpruned choice |", "|---|---:|---:|---:|---:|---:|---:|",
        f"| --prune none | {full['epochs']} | 0 | {full['wall_s']:.0f} | {full['best_trial']} | {a:.4f} | - |",
        f"| --prune median | {pruned['epochs']} ({saved:.0%} fewer) | {pruned['pruned']} | {pruned['wall_s']:.0f} | "
        f"{pruned['best_trial']} | {b:.4f} | {gap:+.2%} |"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", help="write the JSON results here")
    ap.add_argument("--ray-cpus", type=int, default=2, help="CPUs of the local Ray instance (= trials at once)")
    ap.add_argument("--realistic-epochs", type=int, default=30, help="8 epochs: ~15 s a trial on 2 busy cores")
    ap.add_argument("--realistic-train", type=int, default=480, help="training clips of the realistic trials")
    ap.add_argument("--search-epochs", type=int, default=6, help="epochs of each search trial (pruning part)")
    ap.add_argument("--search-trials", type=int, default=12)
    ap.add_argument("--quick", action="store_true", help="realistic trials shortened (3 epochs, 160 clips)")
    ap.add_argument("--skip", nargs="*", default=[], choices=("tiny", "realistic", "pruning"))
    args = ap.parse_args()
    if args.quick:
        args.realistic_epochs, args.realistic_train = 3, 160

    import torch

    torch.set_num_threads(1)
    from mmin_plugin.experiments.demo import ensure_demo, make_tiny_bert

    load_before = os.getloadavg()
    results, prune = {}, {}
    with tempfile.TemporaryDirectory(prefix="bench-sweep-") as tmp:
        tmp = Path(tmp)
        bert = make_tiny_bert(tmp / "bert", language="en")

        def demo(name, n_train, n_valid):
            d = ensure_demo(tmp / name, dataset="mosi", n_train=n_train, n_valid=n_valid, n_test=16,
                            seq_lens=(16, 40, 30), bert_dir=str(bert))
            return {"feature_path": str(Path(d["feature_path"]).resolve()), "bert_dir": str(bert)}

        sizes = {"tiny": (demo("tiny", 48, 16), 1),
                 "realistic": (demo("real", args.realistic_train, 64), args.realistic_epochs)}
        for size, (data, epochs) in sizes.items():
            if size in args.skip:
                continue
            results[size] = [sweep(b, p, data, tmp / f"{size}-{b}-{p}", epochs, args.ray_cpus) for b, p in BACKENDS]
            print(backend_table({size: results[size]}), flush=True)
        if "pruning" not in args.skip:
            data = demo("search", 96, 64)
            prune = {p: search(p, data, tmp / f"search-{p}", args.search_epochs, args.search_trials)
                     for p in ("none", "median")}
    print()
    if results:
        print(backend_table(results))
    if prune:
        print()
        print(pruning_table(prune["none"], prune["median"]))
    meta = {"machine": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(),
            "torch": torch.__version__, "load_avg_before": load_before, "load_avg_after": os.getloadavg(),
            "args": vars(args), "seeds": SEEDS, "date": time.strftime("%Y-%m-%dT%H:%M:%S")}
    print(f"\nload average before / after: {load_before} / {meta['load_avg_after']}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"meta": meta, "backends": results, "pruning": prune}, indent=1,
                                             default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
