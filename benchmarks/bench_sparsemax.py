"""Benchmark of mmin_plugin.modeling.sparsemax against torch.softmax and entmax.sparsemax (CPU).

    python benchmarks/bench_sparsemax.py --out bench_sparsemax.json [--repeats 10 --warmup 2]

or, from another script, ``run(repeats=..., warmup=...) -> list[dict]``.

Measured in one run on the same machine, float32, ``torch.get_num_threads()`` threads:
forward and forward+backward of every available mmin backend (native, torch, sort),
torch.softmax and entmax.sparsemax (skipped with a note when entmax is not installed), on
the shapes (128,50,500), (128,50,375), (128,3,500), (512,50,50) and over the key length
L = 125..2000 at (128,50,L).  The implementations are timed round-robin (one call each per
repetition) so that load from other processes hits all of them alike; the medians over
the repetitions after warm-up are reported, with the minima.  The one-time compile cost of
the native kernel (cold, into an empty cache directory) is a row of its own.
"""
import argparse
import importlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time

import torch

S = importlib.import_module("mmin_plugin.modeling.sparsemax")
N = importlib.import_module("mmin_plugin.modeling._sparsemax_native")

SHAPES = [(128, 50, 500), (128, 50, 375), (128, 3, 500), (512, 50, 50)]
SCALING = [(128, 50, L) for L in (125, 250, 500, 1000, 2000)]


def _implementations():
    """name -> (callable(x), note); the mmin ones go through the public API and env var."""
    impls, notes = {"softmax": lambda x: torch.softmax(x, -1)}, []

    def mmin(backend):
        def call(x):
            os.environ["MMIN_SPARSEMAX_BACKEND"] = backend
            return S.sparsemax(x, -1)
        return call

    try:
        N.kernels()
        impls["mmin-native"] = mmin("native")
    except RuntimeError as exc:
        notes.append(f"mmin-native skipped: {exc}")
    impls["mmin-torch"] = mmin("torch")
    impls["mmin-sort"] = mmin("sort")
    try:
        from entmax import sparsemax as entmax_sparsemax
        impls["entmax"] = lambda x: entmax_sparsemax(x, -1)
    except ImportError:
        notes.append("entmax not installed (pip install entmax): entmax columns skipped")
    return impls, notes


def _time_shape(shape, impls, repeats, warmup):
    torch.manual_seed(0)
    x = torch.randn(shape)
    xg = x.clone().requires_grad_(True)
    g = torch.randn(shape)

    def fwd(f):
        with torch.no_grad():
            f(x)

    def fwd_bwd(f):
        f(xg).backward(g)
        xg.grad = None

    rows = []
    for op, step in (("forward", fwd), ("fwd+bwd", fwd_bwd)):
        times = {name: [] for name in impls}
        for f in impls.values():
            for _ in range(warmup):
                step(f)
        for _ in range(repeats):
            for name, f in impls.items():
                start = time.perf_counter()
                step(f)
                times[name].append(time.perf_counter() - start)
        for name, ts in times.items():
            rows.append({"shape": list(shape), "op": op, "impl": name, "repeats": repeats,
                         "threads": torch.get_num_threads(),
                         "median_ms": 1e3 * statistics.median(ts), "min_ms": 1e3 * min(ts)})
    return rows


ATTENTION_DH = 16  # MMIN's head width (d_model 128 / 8 heads)


def _time_attention(shape, repeats, warmup):
    """Attention fwd+bwd on (rows, Lq, Lk) = (B * heads, Lq, Lk), head width 16, MMIN's score scale:
    softmax (q k^T -> softmax -> @ v), MMIN's sparsemax attention fused (C kernel) and the
    reference composition (q k^T -> sparsemax -> @ v)."""
    A = importlib.import_module("mmin_plugin.modeling.attention")
    rows, lq, lk = shape
    g = torch.Generator().manual_seed(0)
    # q k^T / sqrt(16) with unit-variance q, k has std 1; / 3 gives MMIN's typical support (~10-20 keys)
    q = (torch.randn(1, lq, rows, ATTENTION_DH, generator=g) / 12).transpose(1, 2).requires_grad_(True)
    k = torch.randn(1, lk, rows, ATTENTION_DH, generator=g).transpose(1, 2).requires_grad_(True)
    v = torch.randn(1, lk, rows, ATTENTION_DH, generator=g).transpose(1, 2).requires_grad_(True)
    dout = torch.randn(1, rows, lq, ATTENTION_DH, generator=g)

    def softmax_attention():
        return torch.softmax(q @ k.transpose(-1, -2), -1) @ v

    def mmin(path):
        def call():
            os.environ["MMIN_ATTENTION"] = path
            return A.sparsemax_attention(q, k, v)
        return call

    impls = {"softmax": softmax_attention, "mmin-fused": mmin("auto"), "mmin-reference": mmin("reference")}
    times = {n: [] for n in impls}
    for r in range(warmup + repeats):
        for name, f in impls.items():
            start = time.perf_counter()
            f().backward(dout)
            elapsed = time.perf_counter() - start
            q.grad = k.grad = v.grad = None
            if r >= warmup:
                times[name].append(elapsed)
    os.environ.pop("MMIN_ATTENTION", None)
    return [{"shape": list(shape), "op": "attention fwd+bwd", "impl": n, "repeats": repeats,
             "threads": torch.get_num_threads(), "median_ms": 1e3 * statistics.median(ts), "min_ms": 1e3 * min(ts)}
            for n, ts in times.items()]


def _compile_cost():
    """Cold build of the native kernel into an empty cache directory."""
    if N._compiler() is None:
        return {"impl": "mmin-native", "op": "compile", "error": "no C compiler"}
    with tempfile.TemporaryDirectory() as tmp:
        try:
            _, info = N.build(tmp)
        except RuntimeError as exc:
            return {"impl": "mmin-native", "op": "compile", "error": str(exc)}
    ms = 1e3 * info["seconds"]
    return {"impl": "mmin-native", "op": "compile", "shape": None, "median_ms": ms,
            "compiler": info["compiler"], "flags": info["flags"]}


def run(repeats: int = 10, warmup: int = 2, shapes=None, scaling=None, threads=None) -> list:
    """All measurements as a list of dicts (shape, op, impl, threads, median_ms, min_ms, ...).

    shapes / scaling: lists of shapes (default SHAPES / SCALING; the scaling sweep times
    softmax, mmin-native and entmax only); threads: torch threads (default: unchanged)."""
    saved = os.environ.get("MMIN_SPARSEMAX_BACKEND")
    saved_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    impls, notes = _implementations()
    sweep = {k: v for k, v in impls.items() if k in ("softmax", "mmin-native", "entmax")}
    rows = [_compile_cost()] + [{"op": "note", "note": n} for n in notes]
    try:
        for shape in shapes or SHAPES:
            rows += _time_shape(shape, impls, repeats, warmup)
        for shape in SCALING if scaling is None else scaling:
            rows += _time_shape(shape, sweep, repeats, warmup)
        if "mmin-native" in impls:
            for shape in shapes or SHAPES:
                rows += _time_attention(shape, repeats, warmup)
    finally:
        torch.set_num_threads(saved_threads)
        if saved is None:
            os.environ.pop("MMIN_SPARSEMAX_BACKEND", None)
        else:
            os.environ["MMIN_SPARSEMAX_BACKEND"] = saved
    return rows


def markdown(rows, stat: str = "median_ms") -> str:
    """Table: one line per (shape, op), times in ms (stat: median_ms or min_ms), ratios
    native/softmax and entmax/native."""
    med = {(tuple(r["shape"]), r["op"], r["impl"]): r[stat] for r in rows
           if r.get("shape") and stat in r}
    cols = ["softmax", "mmin-native", "mmin-torch", "mmin-sort", "entmax"]
    out = ["| shape | op | " + " | ".join(c + " ms" for c in cols)
           + " | native/softmax | entmax/native |",
           "|---|---|" + "---:|" * (len(cols) + 2)]
    seen = []
    for shape, op, _ in [k for k in med if k[1] != "attention fwd+bwd"]:
        if (shape, op) in seen:
            continue
        seen.append((shape, op))
        vals = [med.get((shape, op, c)) for c in cols]
        cell = ["-" if v is None else f"{v:.2f}" for v in vals]
        nat, soft, ent = vals[1], vals[0], vals[4]
        r1 = f"{nat / soft:.2f}x" if nat and soft else "-"
        r2 = f"{ent / nat:.1f}x" if nat and ent else "-"
        out.append(f"| {tuple(shape)} | {op} | " + " | ".join(cell) + f" | {r1} | {r2} |")
    att = {(tuple(r["shape"]), r["impl"]): r[stat] for r in rows if r.get("op") == "attention fwd+bwd"}
    if att:
        out += ["", f"Attention forward+backward, (B x heads, Lq, Lk), head width {ATTENTION_DH} (ms):", "",
                "| shape | softmax attention | MMIN sparsemax, fused | MMIN sparsemax, reference "
                "| fused / softmax | reference / softmax |", "|---|---:|---:|---:|---:|---:|"]
        for shape in dict.fromkeys(sh for sh, _ in att):
            sm, fu, re_ = (att.get((shape, n)) for n in ("softmax", "mmin-fused", "mmin-reference"))
            out.append(f"| {shape} | {sm:.2f} | {fu:.2f} | {re_:.2f} | {fu / sm:.2f}x | {re_ / sm:.2f}x |")
    extra = [r for r in rows if r.get("op") in ("compile", "note")]
    for r in extra:
        if r["op"] == "compile":
            out.append("\nnative kernel compile (cold, once): "
                       + (f"{r['median_ms'] / 1e3:.2f} s" if "median_ms" in r else r["error"]))
        else:
            out.append(f"\nnote: {r['note']}")
    return "\n".join(out)


def _meta():
    return {"torch": torch.__version__, "threads": torch.get_num_threads(),
            "python": sys.version.split()[0], "machine": platform.machine(),
            "processor": platform.processor() or platform.platform(), "cpu_count": os.cpu_count(),
            "loadavg": os.getloadavg() if hasattr(os, "getloadavg") else None}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", help="write the JSON results here")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's default)")
    ap.add_argument("--no-scaling", action="store_true", help="only the four fixed shapes")
    args = ap.parse_args(argv)
    meta = _meta()
    rows = run(args.repeats, args.warmup, scaling=[] if args.no_scaling else None,
               threads=args.threads)
    meta["threads"] = args.threads or meta["threads"]
    meta["loadavg_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    print(f"medians, ms, float32, {meta['threads']} thread(s):\n")
    print(markdown(rows))
    print(f"\nminima, ms:\n\n{markdown(rows, 'min_ms')}")
    print(f"\n{meta}")
    if args.out:
        with open(args.out, "w") as fh:
            json.dump({"meta": meta, "results": rows}, fh, indent=1)


if __name__ == "__main__":
    main()
