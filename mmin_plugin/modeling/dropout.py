"""Dropout whose mask is drawn by a counter-based generator in the C kernel (CPU), so that no mask is kept.

Dropout is the same map as ``nn.Dropout``: in training, element i of x is kept with probability 1 - p
and scaled by 1 / (1 - p), else zeroed; the kept values are torch's bit for bit. What differs is
where the mask comes from. torch draws it with ``bernoulli_`` (about 14 ns an element on one core
here) and keeps it, as float32, for the backward. :func:`dropout` takes one 64-bit seed from torch's
default generator (so ``torch.manual_seed`` still fixes every mask) and derives element i's bit from
Philox4x32-10 of (seed, i) (``_sparsemax.c``, "dropout"). The backward derives the same bits again.
At MOSI's shapes that is 6x faster than torch's draw, and a BERT-base MMIN step keeps about 90 MB
less (BERT's hidden dropouts and MMIN's own; issue 27).

:class:`Dropout` is ``nn.Dropout`` with this kernel wherever it applies: training, CPU,
float32/float64, 0 < p < 1, the kernel compiled. Elsewhere it is ``nn.Dropout`` itself.
:func:`use_kernel_dropout` swaps it in for every plain ``nn.Dropout`` of a model, BERT's included.
MMIN does that when ``config.dropout_kernel`` is on (the default)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import _sparsemax_native as _native

__all__ = ["Dropout", "dropout", "use_kernel_dropout"]

_WORDS = 2 ** 32  # a Philox word is uniform on [0, 2^32): kept iff word < keep


def _keep_threshold(p: float) -> int:
    """The largest integer threshold whose keep probability, keep / 2^32, is at most 1 - p (within 2^-32 of it)."""
    return min(int((1.0 - p) * _WORDS), _WORDS - 1)


class _KernelDropout(torch.autograd.Function):
    """y = x * scale * m, m_i = 1[Philox(seed, i) < keep]: linear in x, and its own adjoint, so the backward
    is the same function of the gradient (and differentiable again, like torch's dropout)."""

    @staticmethod
    def forward(ctx, x, seed, keep, scale):
        ctx.mask = (seed, keep, scale)
        return _native.dropout(x.contiguous(), seed, keep, scale)

    @staticmethod
    def backward(ctx, grad):
        return _KernelDropout.apply(grad, *ctx.mask), None, None, None


def _kernel_applies(x: torch.Tensor) -> bool:
    if x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64):
        return False
    try:
        _native.kernels()
    except RuntimeError:  # no compiler: torch's dropout (the sparsemax backend logs why once)
        return False
    return True


def dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """``F.dropout(x, p, training)`` with the mask from the C kernel where it applies (see the module
    docstring); torch's own dropout elsewhere. Each call draws one seed from torch's default generator."""
    if not training or p == 0 or p == 1 or not _kernel_applies(x):
        return F.dropout(x, p, training)
    if not 0 < p < 1:
        raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
    seed = int(torch.randint(0, 2 ** 63 - 1, (), dtype=torch.int64))
    scale = float(torch.tensor(1.0, dtype=x.dtype) / (1 - p))  # torch's 1 / (1 - p), rounded to x's dtype
    return _KernelDropout.apply(x, seed, _keep_threshold(p), scale)


class Dropout(nn.Dropout):
    """``nn.Dropout`` (same ``p``, same state, same repr) drawing its mask in the C kernel where it
    applies: see :func:`dropout`. ``inplace=True`` keeps torch's in-place dropout."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.inplace:
            return super().forward(x)
        return dropout(x, self.p, self.training)


def use_kernel_dropout(module: nn.Module) -> nn.Module:
    """Replaces every plain ``nn.Dropout`` submodule of ``module`` by :class:`Dropout` with the same ``p``
    and ``inplace``; returns ``module``. Subclasses of ``nn.Dropout`` are kept: they may do more than drop."""
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Dropout:
                setattr(parent, name, Dropout(child.p, child.inplace))
    return module
