"""Build-on-first-use loader for the C kernels in ``_sparsemax.c`` (via ctypes): sparsemax, the fused
sparsemax attention, and dropout.

The kernel is plain C99 with OpenMP (or pthreads) and no torch headers, so it compiles in
about a second with the system compiler (``$CC``, else ``cc``, ``gcc`` or ``clang``).  The shared
library is cached in ``$MMIN_CACHE_DIR`` (default ``$XDG_CACHE_HOME/mmin_plugin``, i.e.
``~/.cache/mmin_plugin``) under a name keyed by a hash of the source, the compiler, its
flags and the platform.  It is compiled to a temporary file in that directory and moved
into place with an atomic ``os.replace``, so parallel processes never see a partial file.

``kernels()`` returns the loaded library (building it at most once per process) or raises
``RuntimeError`` with the compiler's message; the caller decides whether to fall back.
"""
import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

__all__ = ["kernels", "build_info", "forward", "backward", "attention_forward", "attention_backward",
           "dropout", "philox4x32_10", "cache_dir", "build"]

SOURCE = Path(__file__).with_name("_sparsemax.c")
# Tried in order.  1: OpenMP, linked to libgomp.so.1, which resolves to the copy torch has
# already loaded (same soname), so the kernel shares torch's thread pool; AVX2 clones on
# x86-64 Linux.  2: no OpenMP runtime (pthreads), no clones (no ifunc).  3: plain C99.
_FAST = ["-O3", "-std=c99", "-fPIC", "-shared", "-pthread", "-fno-trapping-math",
         "-ffp-contract=off"]
FLAG_SETS = (_FAST + ["-fopenmp"], _FAST + ["-fopenmp-simd", "-DMMIN_NO_CLONES"],
             ["-O2", "-std=c99", "-fPIC", "-shared", "-pthread", "-DMMIN_NO_CLONES"])

_lock = threading.Lock()
_state = {}  # "lib" or "error", plus "info" (path, flags, build seconds)


def cache_dir() -> Path:
    """Directory of the compiled kernels: $MMIN_CACHE_DIR, else $XDG_CACHE_HOME/mmin_plugin."""
    if os.environ.get("MMIN_CACHE_DIR"):
        return Path(os.environ["MMIN_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
    return Path(base).expanduser() / "mmin_plugin"


def _compiler():
    cc = os.environ.get("CC")
    if cc:
        return shutil.which(cc) or cc
    for name in ("cc", "gcc", "clang"):
        if shutil.which(name):
            return shutil.which(name)
    return None


def _load(path: Path):
    lib = ctypes.CDLL(str(path))
    ptr, i64, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    for suffix in ("f32", "f64"):
        fwd = getattr(lib, "mmin_sparsemax_fwd_" + suffix)
        fwd.argtypes, fwd.restype = [ptr, ptr, i64, i64, i32, i32], i64
        bwd = getattr(lib, "mmin_sparsemax_bwd_" + suffix)
        bwd.argtypes, bwd.restype = [ptr, ptr, ptr, i64, i64, i32], i64
    lib.mmin_attn_fwd.argtypes = [i32, ptr, ptr, ptr, ptr, ptr, ptr, ptr, i64, i64, i64, i64, i64, i32, i32]
    lib.mmin_attn_bwd.argtypes = [i32, ptr, ptr, ptr, ptr, ptr, ptr, ptr, ptr, ptr, ptr, i64, i64, i64, i64, i64,
                                  i32]
    lib.mmin_attn_fwd.restype = lib.mmin_attn_bwd.restype = i64
    lib.mmin_dropout.argtypes = [i32, ptr, ptr, i64, ctypes.c_uint64, ctypes.c_uint32, ctypes.c_double, i32]
    lib.mmin_dropout.restype = i64
    lib.mmin_philox4x32_10.argtypes = [ptr, ptr, ptr]
    lib.mmin_philox4x32_10.restype = None
    return lib


def build(directory=None):
    """Compile (or find in the cache) and load the kernels: returns (lib, info dict).

    info: path, flags, cached (bool) and seconds (compile time, 0.0 on a cache hit).
    Raises RuntimeError if no compiler is found or every flag set fails.
    """
    cc = _compiler()
    if cc is None:
        raise RuntimeError("no C compiler found (looked for $CC, cc, gcc, clang)")
    directory = Path(directory) if directory is not None else cache_dir()
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=directory, prefix=".probe-")
        probe.close()
    except OSError:  # cache not writable: build into a private temporary directory
        directory = Path(tempfile.mkdtemp(prefix="mmin_plugin-"))
    source = SOURCE.read_bytes()
    errors = []
    for flags in FLAG_SETS:
        key = hashlib.sha256(
            b"\0".join([source, cc.encode(), " ".join(flags).encode(),
                        platform.machine().encode(), sys.platform.encode()])
        ).hexdigest()[:16]
        path = directory / f"_sparsemax_{key}.so"
        info = {"path": str(path), "compiler": cc, "flags": flags, "cached": True, "seconds": 0.0}
        if path.exists():
            try:
                return _load(path), info
            except OSError:  # damaged file: rebuild it below
                pass
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        start = time.perf_counter()
        try:
            proc = subprocess.run([cc, *flags, str(SOURCE.resolve()), "-o", tmp, "-lm"],
                                  capture_output=True, text=True, timeout=600)
            if proc.returncode != 0:
                raise RuntimeError(proc.stderr.strip()[-2000:])
            os.replace(tmp, path)
            info.update(cached=False, seconds=time.perf_counter() - start)
            return _load(path), info
        except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
            errors.append(f"{cc} {' '.join(flags)}: {exc}")
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    raise RuntimeError("could not compile the sparsemax kernel:\n" + "\n".join(errors))


def kernels():
    """The loaded library, built on first use; raises RuntimeError (every time) if it failed."""
    if "lib" not in _state and "error" not in _state:
        with _lock:
            if "lib" not in _state and "error" not in _state:
                try:
                    _state["lib"], _state["info"] = build()
                except (RuntimeError, OSError) as exc:
                    _state["error"] = str(exc)
    if "error" in _state:
        raise RuntimeError(_state["error"])
    return _state["lib"]


def build_info():
    """Build details of the loaded kernel (empty before the first use)."""
    return dict(_state.get("info", {}))


def _fn(kind, dtype):
    return getattr(kernels(), f"mmin_sparsemax_{kind}_{'f64' if dtype == torch.float64 else 'f32'}")


def forward(z: torch.Tensor, max_passes: int):
    """p = sparsemax over the last dim of a contiguous float32/float64 CPU tensor z.

    Returns (p, number of rows finished by the exact sort fallback)."""
    n = z.shape[-1]
    p = torch.empty_like(z, memory_format=torch.contiguous_format)
    if z.numel() == 0:
        return p, 0
    fell_back = _fn("fwd", z.dtype)(z.data_ptr(), p.data_ptr(), z.numel() // n, n,
                                    int(max_passes), torch.get_num_threads())
    if fell_back < 0:
        raise MemoryError("sparsemax: could not allocate the kernel's scratch buffer")
    return p, fell_back


def backward(p: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """dz = s * (g - mean_S g), s = 1[p > 0], over the last dim (contiguous, same dtype)."""
    dz = torch.empty_like(p, memory_format=torch.contiguous_format)
    if p.numel():
        n = p.shape[-1]
        _fn("bwd", p.dtype)(p.data_ptr(), g.data_ptr(), dz.data_ptr(), p.numel() // n, n,
                            torch.get_num_threads())
    return dz



def dropout(x: torch.Tensor, seed: int, keep: int, scale: float) -> torch.Tensor:
    """x * scale where element i (of contiguous x) is kept, 0 elsewhere: kept iff the i-th Philox4x32-10
    word under key ``seed`` (0 <= seed < 2^64) is below ``keep`` (0 <= keep < 2^32), i.e. with
    probability keep / 2^32. x: contiguous CPU float32/float64. The same call maps the output's
    gradient to the input's."""
    _check_inputs((x,), (), "dropout")
    out = torch.empty_like(x)
    if x.numel():
        kernels().mmin_dropout(int(x.dtype == torch.float64), x.data_ptr(), out.data_ptr(), x.numel(), seed, keep,
                               scale, torch.get_num_threads())
    return out


def philox4x32_10(counter, key):
    """One Philox4x32-10 block (4 words) of a 4-word counter and 2-word key, as the kernel computes it."""
    ctr, k, out = (ctypes.c_uint32 * 4)(*counter), (ctypes.c_uint32 * 2)(*key), (ctypes.c_uint32 * 4)()
    kernels().mmin_philox4x32_10(ctr, k, out)
    return tuple(out)


def _check(code, what):
    if code == -1:
        raise MemoryError(f"sparsemax attention {what}: could not allocate the kernel's scratch buffer")
    if code == -2:
        raise ValueError(f"sparsemax attention {what}: head width above the kernel's limit (1024)")
    return code


def _check_inputs(tensors, masks, kernel="sparsemax attention"):
    """The kernel reads raw memory: refuse anything but contiguous CPU float32/float64 of one dtype
    and contiguous uint8 masks, before a pointer is passed."""
    dtype = tensors[0].dtype
    for t in tensors:
        if t.dtype != dtype or dtype not in (torch.float32, torch.float64) or t.device.type != "cpu" \
                or not t.is_contiguous():
            raise TypeError(f"{kernel} kernel: expected contiguous CPU float32/float64 tensors of one "
                            f"dtype, got {t.dtype} on {t.device} (contiguous: {t.is_contiguous()})")
    for m in masks:
        if m is not None and (m.dtype != torch.uint8 or not m.is_contiguous()):
            raise TypeError(f"{kernel} kernel: masks must be contiguous uint8, got {m.dtype}")


def attention_forward(q, k, v, key_mask, query_mask, max_passes: int):
    """Fused sparsemax attention: out_i = sum_j sparsemax(q_i . k_j over the real keys)_j v_j.

    q (B, Lq, H, dh), k and v (B, Lk, H, dh): contiguous, one dtype (float32 / float64), CPU;
    key_mask (B, Lk) and query_mask (B, Lq) or None: contiguous uint8, 1 = real.
    Returns (out (B, Lq, H, dh), stats (B, H, Lq, 2) float64 = (max, t) per row, tau = max + t,
    rows finished by the exact sort)."""
    _check_inputs((q, k, v), (key_mask, query_mask))
    B, Lq, H, dh = q.shape
    out = torch.empty_like(q)
    st = torch.empty(B, H, Lq, 2, dtype=torch.float64)
    qm = query_mask.data_ptr() if query_mask is not None else None
    fell_back = _check(kernels().mmin_attn_fwd(
        int(q.dtype == torch.float64), q.data_ptr(), k.data_ptr(), v.data_ptr(), out.data_ptr(), st.data_ptr(),
        key_mask.data_ptr(), qm, B, H, Lq, k.shape[1], dh, int(max_passes), torch.get_num_threads()), "forward")
    return out, st, fell_back


def attention_backward(q, k, v, dout, stats, key_mask, query_mask):
    """Gradients (dq, dk, dv) of :func:`attention_forward` for dout (B, Lq, H, dh) contiguous."""
    _check_inputs((q, k, v, dout), (key_mask, query_mask))
    B, Lq, H, dh = q.shape
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    qm = query_mask.data_ptr() if query_mask is not None else None
    _check(kernels().mmin_attn_bwd(
        int(q.dtype == torch.float64), q.data_ptr(), k.data_ptr(), v.data_ptr(), dout.data_ptr(), dq.data_ptr(),
        dk.data_ptr(), dv.data_ptr(), stats.data_ptr(), key_mask.data_ptr(), qm, B, H, Lq, k.shape[1], dh,
        torch.get_num_threads()), "backward")
    return dq, dk, dv
