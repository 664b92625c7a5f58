"""A transformer feed-forward block's activation recomputed in the backward instead of kept (MMIN's BERT,
``config.recompute``).

In a feed-forward block ``W_2 act(W_1 x)``, autograd keeps two (B, L, 4 d) tensors: the activation's
input h, for the activation's backward, and its output a = act(h), for the weight gradient of W_2.
For a BERT-base encoder at batch 16 and 50 tokens that is 2 x 112 MB, a fifth of what the training
step keeps. :class:`ActivationLinear` computes ``W_2 act(h)`` as one autograd function that keeps h
alone. Its backward recomputes a = act(h): the same elementwise function of the same floats, so the
same values. It costs one more activation pass per layer (about 3 ms for BERT-base at these shapes
on CPU). :func:`recompute_feed_forward` moves the activation of every layer of a Hugging Face
BERT-like encoder into the next linear layer this way. No parameter moves, and the state_dict keys
stay the same.

Under autocast the block runs as before (``W_2 act(h)``, autograd keeping both tensors), so the
dtypes are autocast's."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ActivationLinear", "recompute_feed_forward"]


class _ActivationLinear(torch.autograd.Function):
    """y = act(h) W^T + b, keeping h and W; the backward rebuilds act(h) (for dW) and differentiates act
    with autograd."""

    @staticmethod
    def forward(ctx, h, weight, bias, act):
        with torch.no_grad():
            y = F.linear(act(h), weight, bias)
        ctx.save_for_backward(h, weight)
        ctx.act, ctx.has_bias = act, bias is not None
        return y

    @staticmethod
    def backward(ctx, grad):
        h, weight = ctx.saved_tensors
        with torch.enable_grad():
            leaf = h.detach().requires_grad_(ctx.needs_input_grad[0])
            a = ctx.act(leaf)
        dh = dw = db = None
        if ctx.needs_input_grad[0]:
            (dh,) = torch.autograd.grad(a, leaf, grad.matmul(weight))
        if ctx.needs_input_grad[1]:
            dw = grad.reshape(-1, grad.shape[-1]).t().mm(a.detach().reshape(-1, a.shape[-1]))
        if ctx.has_bias and ctx.needs_input_grad[2]:
            db = grad.reshape(-1, grad.shape[-1]).sum(0)
        return dh, dw, db, None


class ActivationLinear(nn.Linear):
    """The linear layer ``linear`` (its very parameters) applied to ``act`` of its input:
    ``forward(h) = linear(act(h))``, keeping only h for the backward (see the module docstring). ``act``
    is an elementwise activation module without parameters."""

    def __init__(self, act: nn.Module, linear: nn.Linear):
        nn.Module.__init__(self)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight, self.bias = linear.weight, linear.bias
        self.act = act

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if torch.is_autocast_enabled(h.device.type) or not torch.is_grad_enabled():
            return F.linear(self.act(h), self.weight, self.bias)
        return _ActivationLinear.apply(h, self.weight, self.bias, self.act)


def recompute_feed_forward(encoder: nn.Module) -> nn.Module:
    """In every layer of a Hugging Face BERT-like encoder (a module with ``intermediate`` holding
    ``intermediate_act_fn`` and ``output`` holding the linear ``dense``, as BertLayer / RobertaLayer),
    moves the activation into the output's linear layer as :class:`ActivationLinear`, so that the
    activation's output is not kept for the backward. The same function, parameters and state_dict
    keys. Returns ``encoder``."""
    for layer in encoder.modules():
        inter, out = getattr(layer, "intermediate", None), getattr(layer, "output", None)
        act = getattr(inter, "intermediate_act_fn", None)
        dense = getattr(out, "dense", None)
        if isinstance(act, nn.Module) and not isinstance(act, nn.Identity) and type(dense) is nn.Linear:
            inter.intermediate_act_fn = nn.Identity()
            out.dense = ActivationLinear(act, dense)
    return encoder
