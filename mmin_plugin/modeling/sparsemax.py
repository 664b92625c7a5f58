"""Sparsemax (Martins & Astudillo, 2016), the attention normaliser of MMIN's FIN: the maths is in
:func:`sparsemax`'s docstring; the numerics and the backends (C kernel, torch, sort; environment
variable MMIN_SPARSEMAX_BACKEND) are described in docs/design/model.md, section "Sparsemax"."""
import logging
import os

import torch
from torch import nn

from ..errors import MMINConfigError, MMINError
from . import _sparsemax_native as _native

__all__ = ["sparsemax", "Sparsemax", "sparsemax_sort", "backend_for"]

log = logging.getLogger("MMSA." + __name__)  # under MMSA's logger: lands in its run log

BACKENDS = ("auto", "native", "torch", "sort")
# Newton steps before the exact sort takes over a row (native and torch); usually 3-8 suffice.
_MAX_PASSES = 32
_logged = set()


def backend_for(x: torch.Tensor) -> str:
    """Backend ('native', 'torch' or 'sort') that sparsemax uses for x right now."""
    name = (os.environ.get("MMIN_SPARSEMAX_BACKEND") or "auto").strip().lower()
    if name not in BACKENDS:
        raise MMINConfigError(
            f"MMIN_SPARSEMAX_BACKEND={name!r}: expected one of {', '.join(BACKENDS)}")
    if name == "sort":
        return "sort"
    if name == "torch" or x.device.type != "cpu":
        return "torch"
    try:
        _native.kernels()
    except RuntimeError as exc:
        if name == "native":
            raise MMINError(
                f"MMIN_SPARSEMAX_BACKEND=native but the C kernel is unavailable: {exc}") from None
        if "warned" not in _logged:
            _logged.add("warned")
            log.warning("sparsemax: native kernel unavailable, using the exact pure-torch "
                        "path (slower). Reason: %s", exc)
        return "torch"
    if "loaded" not in _logged:
        _logged.add("loaded")
        info = _native.build_info()
        log.debug("sparsemax: native kernel %s (%s)", info.get("path"),
                  "cached" if info.get("cached") else f"compiled in {info.get('seconds', 0):.2f} s")
    return "native"


# ------------------------------------------------------------------ threshold on y = z - max


def _shifted(z: torch.Tensor, dtype: torch.dtype):
    """(y, bad): y = z - max(z) along the last dim in dtype; bad marks NaN/+inf rows.

    Rows that are all -inf keep y = -inf (empty support); bad rows are zeroed here and
    filled with NaN by _finish."""
    z = z.to(dtype)
    m = z.amax(-1, keepdim=True)
    bad = torch.isnan(m) | (m == float("inf"))
    y = z - torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    return torch.where(bad, torch.zeros_like(y), y), bad


def _finish(y, t, bad, dtype):
    """p = max(y - t, 0), NaN on bad rows, cast to dtype."""
    p = (y - t).clamp_min(0)
    return torch.where(bad, torch.full_like(p, float("nan")), p).to(dtype)


def _sort_threshold(y: torch.Tensor) -> torch.Tensor:
    """tau - max(z) by M&A Alg. 1 over the last dim of y (max 0, or all -inf -> -1)."""
    ys = torch.sort(y, dim=-1, descending=True).values
    k = torch.arange(1, y.shape[-1] + 1, device=y.device)
    cs = torch.where(ys > float("-inf"), ys, torch.zeros_like(ys)).cumsum(-1)
    k_sup = torch.where(1 + k * ys > cs, k, 0).amax(-1, keepdim=True).clamp_min(1)
    return (cs.gather(-1, k_sup - 1) - 1) / k_sup


def _newton_threshold(y: torch.Tensor, max_passes: int) -> torch.Tensor:
    """tau - max(z) by Newton / Michelot steps over the last dim of y, exact.

    From t = -1: S = {y > t}, t' = (sum_S y - 1) / |S| increases to tau; t' is exactly tau
    once S = {y > t'}, i.e. min_S y > t' >= max_{not S} y.  Rows not settled after
    max_passes steps get the sort-based threshold."""
    t = torch.full_like(y[..., :1], -1.0)
    done = torch.zeros_like(t, dtype=torch.bool)
    inf = torch.tensor(float("inf"), dtype=y.dtype, device=y.device)
    for _ in range(max_passes):
        s = y > t
        k = s.sum(-1, keepdim=True).clamp_min(1)  # all -inf rows: S empty, t stays -1
        t = (torch.where(s, y, 0).sum(-1, keepdim=True) - 1) / k
        done = (torch.where(s, y, inf).amin(-1, keepdim=True) > t) & (
            torch.where(s, -inf, y).amax(-1, keepdim=True) <= t)
        if bool(done.all()):
            return t
    rows = (~done).reshape(-1).nonzero().squeeze(1)
    t = t.reshape(-1).clone()
    t[rows] = _sort_threshold(y.reshape(-1, y.shape[-1])[rows]).reshape(-1)
    return t.reshape(done.shape)


# ------------------------------------------------------------------ backends (last dim)


def _inner_dtype(x: torch.Tensor, exact_cpu: bool) -> torch.dtype:
    if x.dtype == torch.float64 or (exact_cpu and x.device.type == "cpu"):
        return torch.float64
    return torch.float32


def _as(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """x in dtype, contiguous; x itself when it already is (each torch call costs microseconds,
    which is what a small sparsemax costs in all)."""
    if x.dtype != dtype:
        x = x.to(dtype)
    return x if x.is_contiguous() else x.contiguous()


def _forward_native(z):
    y, _ = _native.forward(_as(z, _inner_dtype(z, False)), _MAX_PASSES)
    return y if y.dtype == z.dtype else y.to(z.dtype)


def _forward_torch(z):
    y, bad = _shifted(z, _inner_dtype(z, True))
    return _finish(y, _newton_threshold(y, _MAX_PASSES), bad, z.dtype)


def _forward_sort(z):
    y, bad = _shifted(z, torch.float64)
    return _finish(y, _sort_threshold(y), bad, z.dtype)


_FORWARD = {"native": _forward_native, "torch": _forward_torch, "sort": _forward_sort}


def _vjp(p: torch.Tensor, g: torch.Tensor, backend: str) -> torch.Tensor:
    """s * (g - mean_S g), s = 1[p > 0], over the last dim; 0 on rows with empty support."""
    if backend == "native":
        dtype = _inner_dtype(p, False)
        dz = _native.backward(_as(p, dtype), _as(g, dtype))
        return dz if dz.dtype == g.dtype else dz.to(g.dtype)
    s = p > 0
    gs = torch.where(s, g.to(_inner_dtype(g, True)), 0)
    mean = gs.sum(-1, keepdim=True) / s.sum(-1, keepdim=True).clamp_min(1)
    return torch.where(s, gs - mean, 0).to(g.dtype)


class _SparsemaxVJP(torch.autograd.Function):
    """v -> J v, J = diag(s) - s s^T / |S|: symmetric and constant in v, so its own VJP."""

    @staticmethod
    def forward(ctx, p, v, backend):
        ctx.save_for_backward(p)
        ctx.backend = backend
        return _vjp(p, v, backend)

    @staticmethod
    def backward(ctx, grad):
        (p,) = ctx.saved_tensors
        return None, _SparsemaxVJP.apply(p, grad, ctx.backend), None


class _SparsemaxFunction(torch.autograd.Function):
    """p = sparsemax(x) along dim; backward s * (g - mean_S g) from the saved output."""

    @staticmethod
    def forward(ctx, x, dim, backend):
        last = dim in (-1, x.dim() - 1)  # no transposes (a few microseconds each) on the usual last dim
        z = x if last else x.transpose(dim, -1)
        p = _FORWARD[backend](z) if z.numel() else torch.zeros_like(z)
        ctx.save_for_backward(p)
        ctx.dim, ctx.backend = None if last else dim, backend
        return p if last else p.transpose(dim, -1)

    @staticmethod
    def backward(ctx, grad):
        (p,) = ctx.saved_tensors
        g = grad if ctx.dim is None else grad.transpose(ctx.dim, -1)
        if not g.numel():
            dz = torch.zeros_like(g)
        elif torch.is_grad_enabled():  # create_graph: the VJP must itself be differentiable
            dz = _SparsemaxVJP.apply(p, g, ctx.backend)
        else:  # the usual first-order backward: no second autograd node (about 20 us a call)
            dz = _vjp(p, g, ctx.backend)
        return dz if ctx.dim is None else dz.transpose(ctx.dim, -1), None, None


def sparsemax(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Sparsemax of ``x`` along ``dim`` (Martins & Astudillo 2016), exact, differentiable.

    For each slice z along ``dim``::

        sparsemax(z) = argmin_{p in simplex} ||p - z||^2 = max(z - tau, 0),
        tau = (sum_{j <= k} z_(j) - 1) / k,   k = max{k : 1 + k z_(k) > sum_{j <= k} z_(j)},

    with z_(1) >= z_(2) >= ... sorted decreasingly (tau from the sorted cumulative sums); the
    output is a probability vector with exact zeros outside the support S = {i : z_i > tau}.

    Backward (closed-form Jacobian-vector product): with s = 1[p > 0],
    ``dL/dz = s * (g - mean_{j in S} g_j)``, g = dL/dp (J = diag(s) - s s^T / |S|, symmetric).

    Args: ``x`` a floating-point tensor of any shape; ``dim`` the axis to normalise.
    Returns a tensor of x's shape and dtype. ``-inf`` entries are masked positions and get
    exactly 0; an all ``-inf`` slice gives zeros (and a zero gradient); NaN / +inf give NaN in
    that slice only. The backend (C kernel, torch, sort) is chosen per call, see
    docs/design/model.md ("Sparsemax").
    Raises ``TypeError`` for integer tensors.
    """
    if not (x.is_floating_point()):
        raise TypeError(f"sparsemax expects a floating-point tensor, got {x.dtype}")
    if x.dim() == 0:
        return sparsemax(x.reshape(1), dim).reshape(())
    return _SparsemaxFunction.apply(x, dim, backend_for(x))


def sparsemax_sort(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Reference sparsemax by sorting (M&A Alg. 1) in float64, cast back to x.dtype.

    Plain torch ops, no custom backward: autograd through it gives the true Jacobian
    (almost everywhere), an independent check of the closed-form backward."""
    z = x.transpose(dim, -1)
    p = _forward_sort(z) if z.numel() else torch.zeros_like(z)
    return p.transpose(dim, -1)


class Sparsemax(nn.Module):
    """``nn.Module`` form of :func:`sparsemax` along ``dim``: p = max(z - tau(z), 0), the Euclidean
    projection of z onto the probability simplex (no parameters; same forward, backward and
    masking conventions as :func:`sparsemax`)."""

    def __init__(self, dim: int = -1):
        super().__init__()
        self.dim = dim

    def forward(self, x):
        return sparsemax(x, self.dim)

    def extra_repr(self):
        return f"dim={self.dim}"
