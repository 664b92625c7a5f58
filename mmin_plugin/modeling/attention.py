"""MMIN's sparsemax attention: the multi-head product A V with A = sparsemax(Q K^T over the real keys)
(:func:`sparsemax_attention`, fused on CPU), and summaries of the maps that
`MMIN.forward(..., return_attention=True)` returns (:func:`support_sizes`)."""
from __future__ import annotations

import math
import os
from typing import Dict, Mapping, Optional

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from ..errors import MMINConfigError
from . import _sparsemax_native as _native
from .sparsemax import _MAX_PASSES, backend_for, sparsemax

__all__ = ["sparsemax_attention", "projected_sparsemax_attention", "project_qkv", "sparsemax_reference_attention",
           "attention_path", "support_sizes"]

ATTENTION_PATHS = ("auto", "fused", "reference")


def attention_path(q: torch.Tensor) -> str:
    """'fused' or 'reference': how :func:`sparsemax_attention` computes for q right now.

    Environment variable MMIN_ATTENTION: 'reference' always takes the plain composition;
    'auto' (default) and 'fused' take the fused kernel where it exists (CPU, float32/float64,
    sparsemax backend 'native', see docs/design/model.md), the reference elsewhere."""
    name = (os.environ.get("MMIN_ATTENTION") or "auto").strip().lower()
    if name not in ATTENTION_PATHS:
        raise MMINConfigError(f"MMIN_ATTENTION={name!r}: expected one of {', '.join(ATTENTION_PATHS)}")
    if name == "reference" or q.device.type != "cpu" or q.dtype not in (torch.float32, torch.float64):
        return "reference"
    return "fused" if backend_for(q) == "native" else "reference"


def _uint8_mask(mask: Optional[torch.Tensor], B: int, L: int) -> torch.Tensor:
    if mask is None:
        return torch.ones(B, L, dtype=torch.uint8)
    return mask.to(torch.uint8).contiguous()


class _FusedSparsemaxAttention(torch.autograd.Function):
    """out = sparsemax(q k^T over the real keys of each row) v in one C kernel per (sample, head):
    each score row is built, normalised and multiplied by v over its support while it sits in
    cache, so no (B, h, Lq, Lk) map is written, and only q, k, v and two float64 per row
    (max, t; tau = max + t) are kept for the backward, which rebuilds each score row (the same
    floats), its support and p, and forms dS = 1[p > 0] (dP - mean_S dP) with dP = dout v^T on
    the support only: dq = dS k, dk = dS^T q, dv = p^T dout. Inputs in (B, L, heads, dh)."""

    @staticmethod
    def forward(ctx, q, k, v, key_mask, query_mask):
        out, stats, _ = _native.attention_forward(q, k, v, key_mask, query_mask, _MAX_PASSES)
        ctx.save_for_backward(q, k, v, stats, key_mask, query_mask)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, dout):
        q, k, v, stats, key_mask, query_mask = ctx.saved_tensors
        return (*_native.attention_backward(q, k, v, dout.contiguous(), stats, key_mask, query_mask), None, None)


def sparsemax_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                        key_mask: Optional[torch.Tensor] = None,
                        query_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Multi-head sparsemax attention ``A v`` with ``A = sparsemax(q k^T)`` over the real keys.

    ``q`` (B, h, Lq, dh), already scaled by 1/sqrt(dh); ``k``, ``v`` (B, h, Lk, dh); ``key_mask``
    (B, Lk) bool, True on real keys (None: all real); ``query_mask`` (B, Lq) bool, True on real
    queries (None: all real). Each row i: ``A_i = sparsemax(s_i)`` with ``s_ij = q_i . k_j`` on the
    real keys, exactly 0 on padded keys (a row without real key is all 0). Returns (B, h, Lq, dh).

    A padded query row's output is left 0 on the fused path (no threshold computed for it):
    nothing downstream reads it (MMIN keys its sequences by the same mask), so only rows the mask
    calls real are defined. The reference path computes them as ordinary rows.

    Paths (:func:`attention_path`): 'fused' (CPU float32/float64 with the native sparsemax):
    the C kernel normalises the score map in place, never reading a padded key, and the backward
    recomputes the scores from q and k and the saved per-row thresholds; 'reference': scores,
    ``masked_fill(-inf)``, :func:`~mmin_plugin.modeling.sparsemax.sparsemax`, product. Both give
    the same forward (bit for bit on CPU) and the same gradients (to rounding).
    """
    if attention_path(q) == "fused" and q.dtype == k.dtype == v.dtype:
        B = q.shape[0]
        km = _uint8_mask(key_mask, B, k.shape[-2])
        qm = None if query_mask is None or bool(query_mask.all()) else _uint8_mask(query_mask, B, q.shape[-2])
        heads_last = [x.transpose(1, 2).contiguous() for x in (q, k, v)]  # (B, L, h, dh): free for MMIN's views
        return _FusedSparsemaxAttention.apply(*heads_last, km, qm).transpose(1, 2)
    return sparsemax_reference_attention(q, k, v, key_mask)


def _no_autocast(x):
    return torch.autocast(x.device.type, enabled=False)


def _project(x_q, x_kv, heads, scale, eps, params):
    """(q, k, v) in (B, L, heads, dh): q = (LN_q(x_q) W_q^T + b_q) / scale, k, v = LN_kv(x_kv) W^T + b,
    exactly the operations of MMIN's CA module (so the same floats)."""
    lnq_w, lnq_b, lnkv_w, lnkv_b, wq, bq, wk, bk, wv, bv = params
    (B, Lq, d), Lk = x_q.shape, x_kv.shape[1]
    q_in = F.layer_norm(x_q, (d,), lnq_w, lnq_b, eps[0])
    kv_in = F.layer_norm(x_kv, (d,), lnkv_w, lnkv_b, eps[1])
    q = (F.linear(q_in, wq, bq) / scale).view(B, Lq, heads, d // heads)
    k = F.linear(kv_in, wk, bk).view(B, Lk, heads, d // heads)
    v = F.linear(kv_in, wv, bv).view(B, Lk, heads, d // heads)
    return q, k, v


class _ProjectedSparsemaxAttention(torch.autograd.Function):
    """The fused attention of :class:`_FusedSparsemaxAttention` with the layer norms and the q, k, v
    projections inside: the forward keeps only its inputs (x_q, x_kv and the parameters, which
    are alive anyway) and the two float64 per row; the backward recomputes LN and the three
    projections (three (B L, d) x (d, d) products, a small part of the step) and differentiates
    them with autograd. A CA layer then keeps none of LN_q(x_q), LN_kv(x_kv), q, k or v for the
    backward: about 3 (Lq + Lk) B d floats less per layer (issue 27: MMIN's peak memory)."""

    @staticmethod
    def forward(ctx, x_q, x_kv, key_mask, query_mask, heads, scale, eps, *params):
        with torch.no_grad(), _no_autocast(x_q):  # the kernel's dtype, whatever autocast the caller runs
            q, k, v = _project(x_q, x_kv, heads, scale, eps, params)
            out, stats, _ = _native.attention_forward(q, k, v, key_mask, query_mask, _MAX_PASSES)
        ctx.save_for_backward(x_q, x_kv, stats, key_mask, query_mask, *params)
        ctx.heads, ctx.scale, ctx.eps = heads, scale, eps
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, dout):
        x_q, x_kv, stats, key_mask, query_mask, *params = ctx.saved_tensors
        inputs = [x_q, x_kv, *params]
        needs = [ctx.needs_input_grad[0], ctx.needs_input_grad[1], *ctx.needs_input_grad[7:]]
        leaves = [t.detach().requires_grad_(n) for t, n in zip(inputs, needs)]
        with torch.enable_grad(), _no_autocast(x_q):  # the same floats as the forward
            q, k, v = _project(leaves[0], leaves[1], ctx.heads, ctx.scale, ctx.eps, leaves[2:])
        dq, dk, dv = _native.attention_backward(q.detach(), k.detach(), v.detach(), dout.contiguous(), stats,
                                                key_mask, query_mask)
        wanted = [t for t, n in zip(leaves, needs) if n]
        grads = iter(torch.autograd.grad((q, k, v), wanted, (dq, dk, dv), allow_unused=True) if wanted else ())
        out = [next(grads) if n else None for n in needs]
        return (out[0], out[1], None, None, None, None, None, *out[2:])


def _params(norms, projections):
    return (norms[0].weight, norms[0].bias, norms[1].weight, norms[1].bias,
            *(t for lin in projections for t in (lin.weight, lin.bias)))


def project_qkv(x_q: torch.Tensor, x_kv: torch.Tensor, norms, projections, heads: int):
    """MMIN's CA projections: ``q = norms[0](x_q) W_q^T / sqrt(dh)``, ``k, v = norms[1](x_kv) W_{k,v}^T``
    (``norms``: two ``nn.LayerNorm``, ``projections``: three ``nn.Linear``), as (B, heads, L, dh) views.
    Scaling q rather than the (B, h, Lq, Lk) scores: same maths, Lk / dh times fewer multiplies."""
    scale = math.sqrt(x_q.shape[-1] // heads)
    eps = (norms[0].eps, norms[1].eps)
    return tuple(t.transpose(1, 2) for t in _project(x_q, x_kv, heads, scale, eps, _params(norms, projections)))


def projected_sparsemax_attention(x_q: torch.Tensor, x_kv: torch.Tensor, norms, projections, heads: int,
                                  key_mask: Optional[torch.Tensor] = None,
                                  query_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """:func:`sparsemax_attention` of :func:`project_qkv`'s q, k, v: x_q (B, Lq, d), x_kv (B, Lk, d),
    masks as there; returns (B, heads, Lq, d / heads). On the fused path the LN outputs and q, k, v
    are not kept for the backward (recomputed there from x_q and x_kv, the attention's thresholds
    saved): the same values (the same operations) and gradients, less memory."""
    (B, Lq, d), Lk = x_q.shape, x_kv.shape[1]
    params = _params(norms, projections)
    if (attention_path(x_q) == "fused" and all(t is not None and t.dtype == x_q.dtype for t in params)
            and x_kv.dtype == x_q.dtype):
        km = _uint8_mask(key_mask, B, Lk)
        qm = None if query_mask is None or bool(query_mask.all()) else _uint8_mask(query_mask, B, Lq)
        out = _ProjectedSparsemaxAttention.apply(x_q.contiguous(), x_kv.contiguous(), km, qm, heads,
                                                 math.sqrt(d // heads), (norms[0].eps, norms[1].eps), *params)
        return out.transpose(1, 2)
    return sparsemax_attention(*project_qkv(x_q, x_kv, norms, projections, heads), key_mask, query_mask)


def sparsemax_reference_attention(q, k, v, key_mask=None, dropout=None, return_weights=False):
    """The plain composition: ``sparsemax(masked_fill(q k^T, ~key_mask, -inf)) v`` (all queries), with
    an optional dropout module on the weights; returns the output, and the weights when asked."""
    scores = q @ k.transpose(-1, -2)  # (B, h, Lq, Lk)
    if key_mask is not None and not bool(key_mask.all()):
        scores = scores.masked_fill(~key_mask[:, None, None, :], float("-inf"))
    attn = sparsemax(scores, dim=-1)  # padded keys get exactly 0
    out = (dropout(attn) if dropout is not None else attn) @ v
    return (out, attn) if return_weights else out


def support_sizes(attn: Mapping[str, torch.Tensor], query_mask: Mapping[str, torch.Tensor]) -> Dict[str, dict]:
    """Support size of each real query's attention row: the number of keys with non-zero weight.

    ``attn``: name -> (B, heads, Lq, Lk) sparsemax weights; ``query_mask``: name -> (B, Lq) bool,
    True on real query steps (the two dicts ``MMIN.forward(..., return_attention=True)`` returns).
    Every (sample, head, real query) row counts once; a row whose keys are all padding has
    support 0. Returns name -> ``{"mean": float, "median": float, "queries": int}`` (median of the
    counts, the mean of the two middle values for an even number; NaN for both when no real query).
    Pure: no state, no gradient.
    """
    out = {}
    for name, a in attn.items():
        with torch.no_grad():
            counts = (a > 0).sum(-1)  # (B, heads, Lq)
            real = query_mask[name].to(torch.bool)[:, None, :].expand_as(counts)
            sizes = counts[real].to(torch.float64)
        if sizes.numel():
            out[name] = {"mean": float(sizes.mean()), "median": float(torch.quantile(sizes, 0.5)),
                         "queries": int(sizes.numel())}
        else:
            out[name] = {"mean": float("nan"), "median": float("nan"), "queries": 0}
    return out
