"""Summaries of MMIN's sparsemax attention maps (see `MMIN.forward(..., return_attention=True)`)."""
from __future__ import annotations

from typing import Dict, Mapping

import torch

__all__ = ["support_sizes"]


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
