"""The safe loader's refusal record and its speed on legitimate files (docs/design/safety.md).

    python benchmarks/bench_safeload.py --out bench-results/ [--mib 100] [--fuzz-seconds 180]

1. Attacks: every file of tests/hostile_files.py plus the large ones of issue 17 (30 MiB of MARKs,
   a hash-collision dict of 40k keys, a 100 MiB JSON-index bomb) and of issue 25 (fan-out memo
   bombs alone and inside a valid MMSA file, 5M PROTO / 1.1M FRAME opcodes, a 10 MB list of None
   at the opcode budget, a .npz with 1M unreferenced central-directory records, a zero-size giant,
   a checkpoint whose deflated record inflates to 400 MB), each loaded in a fresh subprocess:
   outcome, seconds, peak RSS growth -- and, beside each, a legitimate MMSA-shaped file of the
   same size and format (a pickle, a converted file or a torch checkpoint) loaded the same way.
2. Fuzz: for --fuzz-seconds, byte flips and truncations of valid and hostile pickles, random opcode
   sequences and byte flips of a converted file; every outcome counted (a loaded value,
   MMINDataError, or anything else = a failure).
3. Legitimate MOSI-shaped files of --mib MiB (protocols 2, 4, 5 and the converted format): load
   time and peak RSS growth of safe_load against pickle.load, each in a fresh subprocess, the ratios
   from the same run.  The load average is recorded (the machine may be shared).
"""
from __future__ import annotations

import argparse
import ast
import io
import json
import os
import pickle
import random
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mmin_plugin.errors import MMINDataError  # noqa: E402
from mmin_plugin.features.load import convert_file, safe_loads  # noqa: E402
from tests.hostile_files import (  # noqa: E402
    HOSTILE,
    deflated_records,
    dup_bomb,
    fanout_bomb,
    frame_flood,
    hash_collision_dict,
    mark_bomb,
    mmsa_with_fanout,
    proto_flood,
    with_unnamed_zip_entries,
    zero_size_giant,
)

_CHILD = """
import sys, time, pickle

def hwm():  # peak RSS of this process in MiB (VmHWM: reset at exec, unlike ru_maxrss)
    return int([l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')][0]) / 1024

path, how = sys.argv[1], sys.argv[2]
if how == 'ckpt':  # what explain does: the zip directory against the implied tensors, then torch.load
    import torch
    from mmin_plugin.features.zipdir import check_checkpoint_records
    from mmin_plugin.errors import MMINError as Err
    def load(p):
        check_checkpoint_records(p, [int(n) for n in sys.argv[3].split(',')])
        return torch.load(p, map_location='cpu', weights_only=True)
elif how == 'safe':
    from mmin_plugin.features.load import safe_load as load
    from mmin_plugin.errors import MMINDataError as Err
else:
    def load(p):
        with open(p, 'rb') as f:
            return pickle.load(f)
    Err = Exception
rss0 = hwm()
t = time.perf_counter()
try:
    load(path)
    out = 'loaded'
except Err as e:
    out = 'refused: ' + str(e).split(': ', 1)[-1][:160]
except BaseException as e:
    out = 'FAILED ' + type(e).__name__ + ': ' + str(e)[:160]
dt = time.perf_counter() - t
print(repr((out, dt, hwm() - rss0)))
"""


def child(path, how="safe", timeout=600, *extra):
    r = subprocess.run([sys.executable, "-c", _CHILD, str(path), how, *extra], capture_output=True, text=True,
                       timeout=timeout, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if r.returncode:
        return (f"FAILED exit {r.returncode}: {r.stderr[-300:]}", None, None)
    return ast.literal_eval(r.stdout.strip().splitlines()[-1])


def json_index_bomb(mib):
    nodes = b'{"int": 1}, ' * (mib * (1 << 20) // 12)
    index = b'{"format": "mmin-safe-features", "version": 1, "root": {"list": [' + nodes[:-2] + b"]}}"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("mmin-safe-features.json", index)
    return buf.getvalue()


def legit_pickle(nbytes):
    """A legitimate MMSA-shaped pickle (protocol 4) of about `nbytes` bytes: float32 audio, str ids."""
    n = max(1, (nbytes - 400) // 180)  # one split object, written once, under the three names
    rng = np.random.default_rng(0)
    split = {"audio": rng.standard_normal((n, 40, 1)).astype(np.float32), "audio_lengths": [40] * n,
             "id": np.array([f"v{i}" for i in range(n)], dtype=object)}
    return pickle.dumps({s: split for s in ("train", "valid", "test")}, protocol=4)


def legit_converted(tmp, nbytes):
    src, dst = Path(tmp) / "legit-src.pkl", Path(tmp) / "legit.npz"
    src.write_bytes(legit_pickle(nbytes))
    convert_file(src, dst)
    src.unlink()
    return dst.read_bytes()


def checkpoints(tmp):
    """(attack, legitimate, numels): a checkpoint of one 100,000-float tensor whose record is
    replaced by 400 MB of deflated zeros (~390 KB), and the real one (~400 KB)."""
    import torch

    p = Path(tmp) / "ckpt.pt"
    torch.save({"w": torch.randn(1000, 100)}, p)
    good = p.read_bytes()
    p.unlink()
    return deflated_records(good, grow=400 * 10 ** 6), good, "100000"


def attacks(tmp):
    files = {name: build() for name, build in sorted(HOSTILE.items())}
    files["mark_bomb_30MiB"] = mark_bomb(10 << 20)  # 3 bytes per MARK + BININT1
    files["dup_bomb_20MiB"] = dup_bomb(20 << 20)
    files["hash_collision_dict_40k"] = hash_collision_dict(40_000)
    files["json_index_bomb_100MiB"] = json_index_bomb(100)
    # issue 25
    files["fanout_bomb_90x4"] = fanout_bomb(90, 4)
    files["mmsa_with_fanout_1MB"] = mmsa_with_fanout(n=470)
    files["proto_flood_5M"] = proto_flood(5_000_000)
    files["frame_flood_1.1M"] = frame_flood(1_100_000)
    files["none_list_10MB"] = pickle.dumps([None] * (10 << 20), protocol=4)  # 1 opcode a byte: the opcode budget
    files["zero_size_giant"] = zero_size_giant()
    files["npz_1M_unnamed_records"] = with_unnamed_zip_entries(legit_converted(tmp, 100_000), 1_000_000)
    ckpt_attack, ckpt_good, numels = checkpoints(tmp)
    files["checkpoint_deflated_400MB"] = ckpt_attack
    rows = []
    for name, blob in files.items():
        p, q = Path(tmp) / f"{name}.bin", Path(tmp) / f"{name}-legit.bin"
        p.write_bytes(blob)
        how, extra = ("ckpt", (numels,)) if name.startswith("checkpoint") else ("safe", ())
        legit_blob = (ckpt_good if how == "ckpt" else legit_converted(tmp, len(blob)) if name.startswith("npz")
                      else legit_pickle(len(blob)))
        q.write_bytes(legit_blob)
        out, secs, grew = child(p, how, 600, *extra)
        lout, lsecs, lgrew = child(q, how, 600, *extra)
        rows.append({"file": name, "bytes": len(blob), "outcome": out, "seconds": secs, "rss_growth_mb": grew,
                     "legit_bytes": len(legit_blob), "legit_outcome": lout, "legit_seconds": lsecs,
                     "legit_rss_growth_mb": lgrew})
        print(f"{name:28s} {len(blob):>11,d} B  {secs if secs is None else round(secs, 3)} s  "
              f"+{grew if grew is None else round(grew)} MB  | legit {len(legit_blob):>11,d} B "
              f"{lsecs if lsecs is None else round(lsecs, 3)} s +{lgrew if lgrew is None else round(lgrew)} MB "
              f"{lout[:8]} | {out[:110]}", flush=True)
        p.unlink()
        q.unlink()
    return rows


def _sample(n=3):
    rng = np.random.default_rng(0)
    return {s: {"text_bert": rng.integers(0, 5, (n, 3, 4)).astype(np.float32),
                "audio": rng.standard_normal((n, 5, 2)).astype(np.float32), "audio_lengths": [5, 2, 0],
                "id": np.array(["v1$_$0", "v2$_$1", "v3"], dtype=object), "raw_text": np.array(["a", "b c", "d"]),
                "regression_labels": np.array([0.5, -1.0, np.nan])} for s in ("train", "valid", "test")}


_OPS = [b"(", b".", b"0", b"2", b"N", b"\x88", b"]", b"}", b")", b"\x8f", b"t", b"a", b"e", b"s", b"u", b"\x85",
        b"\x86", b"\x87", b"R", b"b", b"\x94", b"h\x00", b"q\x00", b"K\x03", b"C\x01a", b"\x8c\x01a", b"\x8c\x02f8",
        b"cnumpy\ndtype\n", b"cnumpy\nndarray\n", b"cnumpy.core.multiarray\n_reconstruct\n",
        b"cnumpy.core.multiarray\nscalar\n", b"c_codecs\nencode\n", b"\x8c\x06latin1", b"C\x08AAAAAAAA"]


def fuzz(seconds, seed=0):
    rnd = random.Random(seed)
    seeds = [pickle.dumps(_sample(), protocol=p) for p in (2, 3, 4, 5)]
    seeds += [HOSTILE[k]() for k in sorted(HOSTILE) if k not in ("deep_frozensets", "deep_lists")
              and "hash" not in k]
    with tempfile.TemporaryDirectory() as d:
        src, dst = Path(d) / "s.pkl", Path(d) / "s.npz"
        src.write_bytes(seeds[2])
        convert_file(src, dst)
        safe_seed = dst.read_bytes()
    counts = {"flips/truncations of pickles": [0, 0, 0], "random opcode sequences": [0, 0, 0],
              "flips of converted files": [0, 0, 0]}
    failures = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        kind = rnd.choice(list(counts))
        if kind == "random opcode sequences":
            blob = b"\x80\x04" + b"".join(rnd.choice(_OPS) for _ in range(rnd.randint(0, 40))) + b"."
        else:
            blob = bytearray(rnd.choice(seeds) if kind.endswith("pickles") else safe_seed)
            for _ in range(rnd.randint(1, 6)):
                blob[rnd.randrange(len(blob))] = rnd.randrange(256)
            if kind.endswith("pickles") and rnd.random() < 0.3:
                blob = blob[: max(1, len(blob) - rnd.randint(1, 8))]
            blob = bytes(blob)
        try:
            safe_loads(blob)
            counts[kind][0] += 1
        except MMINDataError:
            counts[kind][1] += 1
        except Exception as e:  # the loader's promise is broken
            counts[kind][2] += 1
            failures.append(f"{type(e).__name__}: {e}"[:200])
    for kind, (ok, refused, bad) in counts.items():
        print(f"fuzz {kind}: {ok + refused + bad} files: {ok} loaded, {refused} MMINDataError, {bad} other")
    return {k: {"loaded": v[0], "refused": v[1], "other": v[2]} for k, v in counts.items()}, failures[:20]


def legit(tmp, mib):
    """A MOSI-shaped file of about `mib` MiB (float32 audio/vision, float64 text_bert, lists of ints)."""
    n = max(4, int(mib * (1 << 20) / (500 * 5 * 4 + 375 * 20 * 4 + 3 * 50 * 8)))
    rng = np.random.default_rng(0)
    split = {"text_bert": rng.integers(0, 30000, (n, 3, 50)).astype(np.float64),
             "audio": rng.standard_normal((n, 500, 5)).astype(np.float32),
             "vision": np.asfortranarray(rng.standard_normal((n, 375, 20)).astype(np.float32)),
             "audio_lengths": [int(x) for x in rng.integers(1, 500, n)],
             "vision_lengths": [int(x) for x in rng.integers(1, 375, n)],
             "regression_labels": rng.uniform(-3, 3, n).astype(np.float32),
             "id": np.array([f"vid{i}$_${i % 7}" for i in range(n)]), "raw_text": np.array(["some words"] * n)}
    data = {"train": split}
    rows = []
    for proto in (2, 4, 5, "safe format"):
        p = Path(tmp) / f"legit-{proto}.pkl"
        if proto == "safe format":
            src = Path(tmp) / "legit-4.pkl"
            p = Path(tmp) / "legit.npz"
            convert_file(src, p)
        else:
            with open(p, "wb") as f:
                pickle.dump(data, f, protocol=proto)
        safe = child(p, "safe")
        base = child(p, "pickle") if proto != "safe format" else (None, None, None)
        row = {"format": f"protocol {proto}" if proto != "safe format" else proto,
               "mib": round(p.stat().st_size / (1 << 20), 1), "safe_s": safe[1], "safe_rss_mb": safe[2],
               "pickle_s": base[1], "pickle_rss_mb": base[2], "outcome": safe[0]}
        rows.append(row)
        print(row, flush=True)
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="bench-results")
    ap.add_argument("--mib", type=int, default=100)
    ap.add_argument("--fuzz-seconds", type=float, default=180)
    ap.add_argument("--only", choices=["attacks", "fuzz", "legit"], action="append")
    a = ap.parse_args()
    only = a.only or ["attacks", "fuzz", "legit"]
    res = {"load_average_start": os.getloadavg(), "python": sys.version.split()[0], "numpy": np.__version__}
    with tempfile.TemporaryDirectory() as tmp:
        if "legit" in only:
            res["legit"] = legit(tmp, a.mib)
        if "attacks" in only:
            res["attacks"] = attacks(tmp)
    if "fuzz" in only:
        res["fuzz"], res["fuzz_failures"] = fuzz(a.fuzz_seconds)
    res["load_average_end"] = os.getloadavg()
    Path(a.out).mkdir(parents=True, exist_ok=True)
    (Path(a.out) / "safeload.json").write_text(json.dumps(res, indent=1))
    print("load average", res["load_average_start"], "->", res["load_average_end"])


if __name__ == "__main__":
    main()
