"""Does torch.compile of MMIN's non-BERT part pay on this machine? (issue 27)

    python benchmarks/bench_compile.py --out bench-results/compile.json [--model mmin-tiny] [--repeats 5]

Builds the same contender twice as benchmarks/bench_models.py does (MMSA's AMIO, MOSI shapes: batch
16, text 50, audio 500, video 375, every length full, the same seed and weights), compiles the
second one's non-BERT modules (`torch.compile` of the two LSTMs, CIN, FIN and the fusion layer,
default inductor backend; BERT stays eager, it is the part both MMIN and MISA share), and times one
training step of each, round-robin after a warm-up, plus the first compiled step (the compile
itself). The fused sparsemax attention is a ctypes call inside a custom autograd function, which
dynamo cannot trace: each cross-attention layer is a graph break, so only the code around it
(residual, out-projection, dropout, the LSTMs, CIN, fusion) is compiled. Prints a table, writes JSON.
A machine without a working C++ compiler gets the compile error in the table instead of a figure.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

COMPILED = ("features.audio_rnn", "features.video_rnn", "cin", "fin", "fusion")


def _compile_non_bert(net, torch):
    for name in COMPILED:
        parent, _, attr = name.rpartition(".")
        owner = net.get_submodule(parent) if parent else net
        setattr(owner, attr, torch.compile(getattr(owner, attr)))


def run(model="mmin-tiny", repeats=5, warmup=1, cache=None):
    import bench_models as bm
    import torch

    cache = Path(cache or "bench-results")
    dirs = bm.bert_dirs(cache)
    eager, compiled = bm.Contender(model, dirs), bm.Contender(model, dirs)
    row = {"model": model, "threads": torch.get_num_threads(), "torch": torch.__version__,
           "compiled_modules": list(COMPILED), "repeats": repeats}
    try:
        _compile_non_bert(compiled.model.Model, torch)
        with torch.no_grad():  # fresh models, the same weights and inputs: the compiled forward agrees
            eager.model.eval(), compiled.model.eval()
            a, b = eager._forward()["M"], compiled._forward()["M"]
            row["max_abs_diff_eval_M"] = float((a - b).abs().max())
            eager.model.train(), compiled.model.train()
        start = time.perf_counter()
        first = compiled.step()
        row["first_compiled_step_s"] = time.perf_counter() - start
        row["first_step_phases_s"] = list(first)
    except Exception as exc:  # noqa: BLE001 - no compiler, unsupported op: report, do not crash
        row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        traceback.print_exc(file=sys.stderr)
        return row
    times = {"eager": [], "compiled": []}
    for r in range(warmup + repeats):
        for name, c in (("eager", eager), ("compiled", compiled)):
            start = time.perf_counter()
            c.step()
            if r >= warmup:
                times[name].append(time.perf_counter() - start)
    row.update({f"{k}_step_s": statistics.median(v) for k, v in times.items()})
    row.update({f"{k}_steps_s": v for k, v in times.items()})
    row["compiled_over_eager"] = row["compiled_step_s"] / row["eager_step_s"]
    return row


def markdown(row) -> str:
    if "error" in row:
        return f"torch.compile of MMIN's non-BERT part ({row['model']}): failed: {row['error']}"
    return "\n".join([
        f"torch.compile of MMIN's non-BERT part ({row['model']}, {row['threads']} threads, torch {row['torch']}; "
        f"medians of {row['repeats']} interleaved training steps):", "",
        "| eager step (s) | compiled step (s) | compiled / eager | first compiled step, compile included (s) "
        "| max abs diff of eval M |", "|---:|---:|---:|---:|---:|",
        f"| {row['eager_step_s']:.3f} | {row['compiled_step_s']:.3f} | {row['compiled_over_eager']:.2f}x "
        f"| {row['first_compiled_step_s']:.1f} | {row['max_abs_diff_eval_M']:.2e} |"])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None, help="write the JSON here")
    ap.add_argument("--model", default="mmin-tiny", choices=("mmin-tiny", "mmin-base"))
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--cache", default=None, help="where the random BERTs are kept (default bench-results/)")
    args = ap.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    row = run(args.model, args.repeats, args.warmup, args.cache)
    print(markdown(row))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(row, indent=1))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
