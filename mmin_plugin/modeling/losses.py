"""MMIN's constraint module (paper section 2.2, Fig. 2a): eq. 3, 4, 5 (design notes, e.g. the eq. 5
reduction: docs/design/model.md). Modalities are ordered (text, video, audio) = labels (0, 1, 2),
as the paper's y_L = [1,0,0], y_V = [0,1,0], y_A = [0,0,1].

The table of loss terms (:data:`LOSS_TERMS`: name, weight key, oracle, ablation switch, curve
panel) lives in the torch-free ``modeling/terms.py`` and is re-exported here. The functions take
every setting explicitly: the values come from :class:`~mmin_plugin.modeling.config.MMINConfig`.
"""
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .terms import LOSS_TERMS, LossTerm

__all__ = [
    "separation_loss",
    "grad_reverse",
    "GradientReversal",
    "ModalityDiscriminator",
    "modality_cross_entropy",
    "modality_confusion",
    "dann_weight",
    "adversarial_scale",
    "MODALITY_LABELS",
    "LOSS_TERMS",
    "LossTerm",
]

MODALITY_LABELS = {"text": 0, "video": 1, "audio": 2}


def separation_loss(common: Sequence[torch.Tensor], private: Sequence[torch.Tensor], reduction: str) -> torch.Tensor:
    """Eq. 5: L_sep = sum_m ||H_m^C^T H_m^P||_F^2 + sum_{m1<m2} ||H_m1^P^T H_m2^P||_F^2.

    `common` and `private` are sequences of (n, d) tensors (n = batch) in the same modality order
    (text, video, audio; fewer when a modality is ablated). The pairs (m1, m2) are the
    unordered pairs of distinct modalities (3 for three modalities), as in MISA/DSN.

    `reduction`: 'sum' is eq. 5 as written; every entry of a product H^T H' sums n terms, so the
    loss grows as n^2 with the batch. 'mean' divides by n^2 (batch-size invariant: duplicating
    every row gives the same value). For n a power of two the division is exact, so
    'mean' with alpha * n^2 trains bit for bit like 'sum' with alpha.
    """
    if len(common) != len(private):
        raise ValueError(f"separation_loss: {len(common)} common codes but {len(private)} private codes")
    if reduction not in ("sum", "mean"):
        raise ValueError(f"separation_loss: reduction must be 'sum' or 'mean', not {reduction!r}")
    loss = private[0].new_zeros(())
    for c, p in zip(common, private):
        loss = loss + (c.transpose(0, 1) @ p).pow(2).sum()
    for i in range(len(private)):
        for j in range(i + 1, len(private)):
            loss = loss + (private[i].transpose(0, 1) @ private[j]).pow(2).sum()
    if reduction == "mean":
        n = private[0].shape[0]
        loss = loss / (n * n)
    return loss


class _GradReverse(torch.autograd.Function):
    """Gradient reversal layer (Ganin et al. 2016): identity forward, -lambda * g backward."""

    @staticmethod
    def forward(ctx, x, lambd):
        ctx.lambd = lambd
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad_out):
        return grad_out.neg() * ctx.lambd, None


def grad_reverse(x: torch.Tensor, lambd: float) -> torch.Tensor:
    """Identity forward; the gradient times -lambd backward (MMIN: lambd = grl_lambda x the ramp)."""
    return _GradReverse.apply(x, float(lambd))


class GradientReversal(nn.Module):
    def __init__(self, lambd: float):
        super().__init__()
        self.lambd = float(lambd)

    def forward(self, x):
        return grad_reverse(x, self.lambd)

    def extra_repr(self):
        return f"lambd={self.lambd}"


class ModalityDiscriminator(nn.Module):
    """D in eq. 3/4: a 3-way modality classifier, logits = W2 relu(W1 h + b1) + b2.

    The paper says only "a multi-class classifier"; one hidden ReLU layer is the smallest
    non-linear choice (a linear D could not separate codes that differ non-linearly).
    Dropout (train mode only) sits on the hidden layer.
    """

    def __init__(self, d_in: int, d_hidden: int, n_modalities: int, dropout: float):
        super().__init__()
        self.fc1 = nn.Linear(d_in, d_hidden)
        self.fc2 = nn.Linear(d_hidden, n_modalities)
        self.dropout = nn.Dropout(dropout)

    def forward(self, h: torch.Tensor) -> torch.Tensor:  # (B, d_in) -> (B, n_modalities)
        return self.fc2(self.dropout(torch.relu(self.fc1(h))))


def modality_cross_entropy(logits: Sequence[torch.Tensor], labels: Sequence[int]) -> torch.Tensor:
    """Eq. 3/4: -(1/n) sum_m sum_{i=1}^n y_m . log D(h_m,i).

    `logits[k]` is D's (n, 3) output for the codes of modality `labels[k]`. The sum runs over
    modalities and the 1/n averages over the batch only, exactly as the paper writes (so with
    three modalities this is 3x the cross-entropy averaged over all 3n codes).
    """
    loss = logits[0].new_zeros(())
    for lg, m in zip(logits, labels):
        target = torch.full((lg.shape[0],), int(m), dtype=torch.long, device=lg.device)
        loss = loss + F.cross_entropy(lg, target, reduction="mean")
    return loss


def modality_confusion(logits: Sequence[torch.Tensor], labels: Sequence[int]) -> torch.Tensor:
    """Confusion objective (Tzeng et al., ICCV 2015): cross-entropy against the uniform distribution
    over the modalities present, -(1/n) sum_m sum_i (1/M) sum_{k in labels} log D(h_m,i)_k.

    Same reduction as :func:`modality_cross_entropy` (sum over modalities, mean over the batch).
    Bounded below by M ln M, reached exactly when D gives every present modality the same
    probability, so an encoder descending it is pulled towards chance, never past it (the reversed
    cross-entropy has no such bound: it grows without limit when D becomes confidently wrong)."""
    idx = torch.as_tensor([int(m) for m in labels], device=logits[0].device)
    loss = logits[0].new_zeros(())
    for lg in logits:
        loss = loss - F.log_softmax(lg, dim=-1).index_select(-1, idx).mean(-1).mean()
    return loss


def dann_weight(progress: float, gamma: float = 10.0) -> float:
    """DANN's schedule (Ganin & Lempitsky, ICML 2015): 2 / (1 + exp(-gamma p)) - 1 for training
    progress p in [0, 1] (clamped): 0 at p = 0, rising smoothly to ~1 (0.9999 at p = 1)."""
    import math

    p = min(max(float(progress), 0.0), 1.0)
    return 2.0 / (1.0 + math.exp(-gamma * p)) - 1.0


def adversarial_scale(epoch: int, step: int, n_batches: int, ramp_epochs: float) -> float:
    """The factor on grl_lambda (``CoarseInteraction.adv_scale``) at step ``step`` of epoch ``epoch``
    (both from 1), ``n_batches`` steps per epoch: :func:`dann_weight` at the progress
    p = (epoch - 1 + (step - 1) / n_batches) / ramp_epochs (0 at the first step); 1 when
    ``ramp_epochs`` <= 0 (no ramp)."""
    if ramp_epochs <= 0:
        return 1.0
    return dann_weight((epoch - 1 + (step - 1) / max(n_batches, 1)) / ramp_epochs)
