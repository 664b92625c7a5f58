"""Start-up cost of the package: fresh interpreters timing `python -m mmin_plugin --help`, `import
mmin_plugin`, the model, and MMSA with MMIN registered; optionally side by side with another checkout
(`--baseline DIR`, runs interleaved so that both see the same machine load).

    python benchmarks/bench_startup.py [--repeat 5] [--baseline /path/to/other/checkout] [--json out.json]

Prints a markdown table (median and min wall seconds per command and checkout) and writes JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

COMMANDS = {
    "python -m mmin_plugin --help": ["-m", "mmin_plugin", "--help"],
    "import mmin_plugin": ["-c", "import mmin_plugin"],
    "import mmin_plugin.modeling.model": ["-c", "import mmin_plugin.modeling.model"],
    "import mmin_plugin; import MMSA": ["-c", "import mmin_plugin, MMSA; from MMSA import run; "
                                              "assert 'MMIN' in run.SUPPORTED_MODELS"],
}


def once(checkout: Path, argv) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(checkout)}
    t0 = time.perf_counter()
    subprocess.run([sys.executable, *argv], cwd=checkout, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--baseline", type=Path, help="another checkout of the project, timed interleaved")
    p.add_argument("--json", type=Path, default=Path("bench_startup.json"))
    a = p.parse_args(argv)
    checkouts = {"this": ROOT, **({"baseline": a.baseline.resolve()} if a.baseline else {})}
    times = {(c, name): [] for c in checkouts for name in COMMANDS}
    for _ in range(a.repeat):
        for name, cmd in COMMANDS.items():
            for c, path in checkouts.items():
                times[(c, name)].append(once(path, cmd))
    rows = [{"command": name, "checkout": c, "median_s": statistics.median(ts), "min_s": min(ts), "runs": len(ts)}
            for (c, name), ts in times.items()]
    print("| command | checkout | median (s) | min (s) |\n|---|---|---:|---:|")
    for r in sorted(rows, key=lambda r: (list(COMMANDS).index(r["command"]), r["checkout"])):
        print(f"| `{r['command']}` | {r['checkout']} | {r['median_s']:.2f} | {r['min_s']:.2f} |")
    a.json.write_text(json.dumps({"rows": rows, "checkouts": {k: str(v) for k, v in checkouts.items()},
                                  "python": sys.version.split()[0], "cpus": os.cpu_count()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
