"""All benchmarks in one process and one run: sparsemax kernels + MMIN vs MISA / MulT.

    python benchmarks/run_all.py --out bench-results/            # full run
    python benchmarks/run_all.py --out bench-results/ --quick    # smoke run (1 repetition, fewer shapes)
    python benchmarks/run_all.py --only models|sparsemax [--profile] [--threads N]

Prints paste-able markdown tables (with ratios between contenders of this same run) and writes
OUT/results.json (OUT/results-quick.json for --quick) with every measurement and the machine
(CPU model, cores, load, torch version and threads), plus the same markdown as OUT/results.md.
The random BERT encoders used by the model benchmarks are cached under OUT.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import importlib
import inspect
import json
import os
import platform
import subprocess
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _mem_total_gb():
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 2 ** 20, 1)
    except OSError:
        return None


def _git(*args):
    try:
        return subprocess.run(["git", *args], cwd=HERE.parent, capture_output=True, text=True,
                               timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def _version(mod):
    try:
        return importlib.import_module(mod).__version__
    except Exception:  # noqa: BLE001
        return None


def machine_info() -> dict:
    import torch

    info = {
        "cpu_model": _cpu_model(),
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "mem_total_gb": _mem_total_gb(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "mkldnn": torch.backends.mkldnn.is_available(),
        "transformers": _version("transformers"),
        "numpy": _version("numpy"),
        "env": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "MMIN_SPARSEMAX_BACKEND")
                if k in os.environ},
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": bool(_git("status", "--porcelain")),
        "started": _dt.datetime.now().isoformat(timespec="seconds"),
        "loadavg_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    try:
        from importlib.metadata import version

        info["mmsa"] = version("MMSA")
    except Exception:  # noqa: BLE001
        info["mmsa"] = None
    try:
        import mmin_plugin
        sm = importlib.import_module("mmin_plugin.modeling.sparsemax")  # the package re-exports the function

        info["mmin_plugin"] = mmin_plugin.__version__
        if hasattr(sm, "backend_for"):
            info["sparsemax_backend_cpu"] = sm.backend_for(torch.zeros(2))
    except Exception as e:  # noqa: BLE001
        info["sparsemax_backend_cpu"] = f"unknown ({type(e).__name__}: {e})"
    return info


def _machine_md(info) -> str:
    load = info.get("loadavg_start")
    return (f"Machine: {info['cpu_model']}, {info['usable_cores']} usable / {info['logical_cores']} logical cores, "
            f"{info['mem_total_gb']} GB; torch {info['torch']} ({info['torch_threads']} threads), "
            f"transformers {info['transformers']}, MMSA {info['mmsa']}; MMIN sparsemax backend on CPU: "
            f"{info.get('sparsemax_backend_cpu')}; load average at start "
            f"{', '.join(f'{x:.1f}' for x in load) if load else '?'}; git {str(info.get('git_commit'))[:10]}"
            f"{' (dirty)' if info.get('git_dirty') else ''}.")


# ----------------------------------------------------------------------------------------------
def run_sparsemax(quick, repeats, warmup, log=print) -> dict:
    try:
        mod = importlib.import_module("bench_sparsemax")
    except ImportError as e:
        msg = f"benchmarks/bench_sparsemax.py not importable ({e}): sparsemax benchmark skipped"
        log(f"[sparsemax] {msg}")
        return {"skipped": msg}
    kw = {"repeats": repeats, "warmup": warmup}
    params = inspect.signature(mod.run).parameters
    if quick:  # fewer shapes where the runner lets us choose them
        if "shapes" in params and getattr(mod, "SHAPES", None):
            kw["shapes"] = list(mod.SHAPES)[:1]
        if "scaling" in params:
            kw["scaling"] = []
    log(f"[sparsemax] bench_sparsemax.run({', '.join(f'{k}={v}' for k, v in kw.items())})")
    t0 = time.perf_counter()
    try:
        rows = mod.run(**kw)
    except Exception as e:  # noqa: BLE001
        traceback.print_exc(file=sys.stderr)
        return {"error": f"{type(e).__name__}: {e}", "seconds": time.perf_counter() - t0}
    res = {"rows": rows, "seconds": time.perf_counter() - t0, "args": {k: v for k, v in kw.items()}}
    try:
        res["markdown"] = mod.markdown(rows) if hasattr(mod, "markdown") else _generic_md(rows)
    except Exception as e:  # noqa: BLE001
        res["markdown"] = _generic_md(rows) + f"\n\n(bench_sparsemax.markdown failed: {type(e).__name__}: {e})"
    return res


def _generic_md(rows) -> str:
    keys = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else ("-" if v is None else str(v))  # noqa: E731
    return "\n".join(["| " + " | ".join(keys) + " |", "|---" * len(keys) + "|"]
                     + ["| " + " | ".join(fmt(r.get(k)) for k in keys) + " |" for r in rows])


# ----------------------------------------------------------------------------------------------
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="bench-results", help="results folder (also caches the random BERTs)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 1 repetition, fewer shapes")
    ap.add_argument("--only", choices=("models", "sparsemax"), default=None)
    ap.add_argument("--profile", action="store_true",
                    help="also print torch.profiler's breakdown of one MMIN (tiny BERT) training step")
    ap.add_argument("--profile-model", default="mmin-tiny", choices=("mmin-tiny", "mmin-base"))
    ap.add_argument("--repeats", type=int, default=None, help="timed repetitions (default 5, quick 1)")
    ap.add_argument("--warmup", type=int, default=None, help="warm-up repetitions (default 1)")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--no-memory", action="store_true", help="skip the memory subprocesses")
    ap.add_argument("--no-busy", action="store_true", help="skip the busy-machine (competing process) step")
    ap.add_argument("--contenders", default=None,
                    help="comma list of model contenders (default: mmin-tiny,mmin-base,misa-base,mult)")
    args = ap.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # inherited by the memory subprocesses
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    info = machine_info()
    repeats = args.repeats or (1 if args.quick else 5)
    warmup = 1 if args.warmup is None else args.warmup
    print(_machine_md(info), flush=True)
    result = {"machine": info, "quick": args.quick, "argv": sys.argv[1:]}
    md = [f"## Benchmarks ({'quick smoke run' if args.quick else 'full run'}, CPU float32)", "",
          _machine_md(info), ""]

    if args.only in (None, "sparsemax"):
        # bench_sparsemax's own defaults (10 repetitions, 2 warm-up) unless told otherwise
        sp = run_sparsemax(args.quick, args.repeats or (1 if args.quick else 10),
                           args.warmup if args.warmup is not None else (1 if args.quick else 2))
        result["sparsemax"] = sp
        md += ["### Sparsemax vs softmax vs entmax (benchmarks/bench_sparsemax.py)", ""]
        md.append(sp.get("markdown") or f"skipped: {sp.get('skipped') or sp.get('error')}")
        md.append("")

    if args.only in (None, "models"):
        import bench_models

        models = bench_models.run(out, quick=args.quick, repeats=repeats, warmup=warmup, busy=not args.no_busy,
                                  contenders=args.contenders.split(",") if args.contenders else None,
                                  memory=not args.no_memory, log=lambda m: print(m, flush=True))
        result["models"] = models
        md.append(bench_models.tables(models))
        if args.profile:
            print(f"[profile] one {args.profile_model} training step under torch.profiler", flush=True)
            try:
                prof = bench_models.profile_step(args.profile_model, out)
            except Exception as e:  # noqa: BLE001
                traceback.print_exc(file=sys.stderr)
                prof = f"profile FAILED: {type(e).__name__}: {e}"
            result["profile_markdown"] = prof
            md += ["", "### Where MMIN's training step goes", "", prof]
    elif args.profile:
        print("--profile needs the model benchmarks (not --only sparsemax); skipped")

    info["loadavg_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    result["seconds_total"] = time.perf_counter() - t_start
    md += ["", f"Total wall time {result['seconds_total'] / 60:.1f} min; load average at end "
           f"{', '.join(f'{x:.1f}' for x in info['loadavg_end']) if info['loadavg_end'] else '?'}."]
    text = "\n".join(md)
    name = "results-quick" if args.quick else "results"
    (out / f"{name}.json").write_text(json.dumps(result, indent=1, default=str))
    (out / f"{name}.md").write_text(text + "\n")
    print("\n" + text)
    print(f"\nwrote {out / (name + '.json')} and {out / (name + '.md')}")


if __name__ == "__main__":
    main()
