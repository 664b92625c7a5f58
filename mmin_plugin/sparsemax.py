"""Sparsemax (Martins & Astudillo, 2016): the attention normaliser of MMIN's FIN.

sparsemax(z) = argmin_{p in simplex} ||p - z||^2 = max(z - tau, 0), where the threshold tau
solves sum_i max(z_i - tau, 0) = 1.  Backward (closed form, on the support S = {p > 0}):
    dL/dz = s * (g - mean_{j in S} g_j),   s = 1[p > 0].
Masked positions are given as -inf and receive exactly 0; a row that is all -inf gives zeros.

(Placeholder-free first version: exact sort-based threshold. The fast exact path of issue 6
replaces `_threshold` and keeps this one as the reference fallback.)
"""
import torch
from torch import nn

__all__ = ["sparsemax", "Sparsemax", "sparsemax_sort"]


def _threshold_sort(z: torch.Tensor) -> torch.Tensor:
    """tau along the last dim of z (finite or -inf entries); rows all -inf give +inf."""
    zs, _ = torch.sort(z, dim=-1, descending=True)
    k = torch.arange(1, z.shape[-1] + 1, device=z.device, dtype=z.dtype)
    finite = torch.isfinite(zs)
    cs = torch.where(finite, zs, torch.zeros_like(zs)).cumsum(-1)
    support = finite & (1 + k * zs > cs)
    ksz = support.sum(-1, keepdim=True).clamp(min=1)
    tau = (cs.gather(-1, ksz - 1) - 1) / ksz.to(z.dtype)
    all_masked = ~finite[..., :1]
    return torch.where(all_masked, torch.full_like(tau, float("inf")), tau)


def sparsemax_sort(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Reference forward only (no custom backward), sort-based."""
    z = x.transpose(dim, -1)
    tau = _threshold_sort(z)
    return torch.clamp(z - tau, min=0).nan_to_num(0.0).transpose(dim, -1)


class _SparsemaxFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, dim):
        z = x.transpose(dim, -1)
        p = torch.clamp(z - _threshold_sort(z), min=0).nan_to_num(0.0)
        ctx.save_for_backward(p)
        ctx.dim = dim
        return p.transpose(dim, -1)

    @staticmethod
    def backward(ctx, grad_out):
        (p,) = ctx.saved_tensors
        g = grad_out.transpose(ctx.dim, -1)
        s = (p > 0).to(g.dtype)
        mean = (g * s).sum(-1, keepdim=True) / s.sum(-1, keepdim=True).clamp(min=1)
        return (s * (g - mean)).transpose(ctx.dim, -1), None


def sparsemax(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Sparsemax of x along dim (exact; -inf entries are masked positions)."""
    return _SparsemaxFunction.apply(x, dim)


class Sparsemax(nn.Module):
    def __init__(self, dim: int = -1):
        super().__init__()
        self.dim = dim

    def forward(self, x):
        return sparsemax(x, self.dim)

    def extra_repr(self):
        return f"dim={self.dim}"
