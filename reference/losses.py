"""MMIN's constraint module (paper section 2.2, Fig. 2a): eq. 3, 4, 5 and the discriminator.

Modalities are ordered (text, video, audio) with labels (0, 1, 2), i.e. the paper's one-hot
y_L = [1,0,0], y_V = [0,1,0], y_A = [0,0,1]. Every computation is done in float64.
"""
from itertools import combinations

import numpy as np

__all__ = [
    "separation_loss",
    "linear",
    "discriminator_forward",
    "log_softmax",
    "modality_cross_entropy",
    "grad_reverse",
    "grad_reverse_vjp",
]


def _f64(x):
    return np.asarray(x, dtype=np.float64)


def separation_loss(common, private, reduction="sum"):
    """Eq. 5: sum_m ||H_m^C^T H_m^P||_F^2 + sum_{m1<m2} ||H_m1^P^T H_m2^P||_F^2.

    `common`, `private`: sequences of (n, d) arrays, one per modality (text, video, audio;
    fewer under ablation); rows are the codes of one batch. The second sum runs over the
    unordered pairs of distinct modalities (3 pairs for 3 modalities).
    `reduction`: 'sum' (eq. 5 as written) or 'mean' (divided by n^2, the batch-size-invariant form).
    """
    if len(common) != len(private):
        raise ValueError(f"separation_loss: {len(common)} common codes but {len(private)} private codes")
    if reduction not in ("sum", "mean"):
        raise ValueError(f"separation_loss: reduction must be 'sum' or 'mean', not {reduction!r}")
    common, private = [_f64(c) for c in common], [_f64(p) for p in private]
    own = sum(np.sum((c.T @ p) ** 2) for c, p in zip(common, private))
    cross = sum(np.sum((p1.T @ p2) ** 2) for p1, p2 in combinations(private, 2))
    total = float(own + cross)
    n = private[0].shape[0]
    return total / (n * n) if reduction == "mean" else total


def linear(x, weight, bias):
    """torch.nn.Linear's convention: y = x W^T + b, W of shape (d_out, d_in)."""
    return _f64(x) @ _f64(weight).T + _f64(bias)


def discriminator_forward(h, w1, b1, w2, b2):
    """D in eq. 3/4 (mmin_plugin.modeling.losses.ModalityDiscriminator, eval mode): logits of
    fc2(relu(fc1(h))); D(h) in the paper is softmax of these logits."""
    return linear(np.maximum(linear(h, w1, b1), 0.0), w2, b2)


def log_softmax(logits):
    """log D(h): log softmax over the last axis, shifted by the row max for stability."""
    x = _f64(logits)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def modality_cross_entropy(logits_list, labels):
    """Eq. 3 (codes h^C) / eq. 4 (codes h^P): -(1/n) sum_m sum_{i=1}^n y_m . log D(h_m,i).

    `logits_list[k]`: (n, K) logits of D on the n codes of modality `labels[k]`. The sum
    runs over modalities; 1/n averages over the batch only (n is each modality's batch).
    """
    loss = 0.0
    for logits, m in zip(logits_list, labels):
        logp = log_softmax(logits)
        y_m = np.eye(logp.shape[-1])[int(m)]  # one-hot y_m
        loss += -(logp @ y_m).sum() / logp.shape[0]
    return float(loss)


def grad_reverse(x, lambd=1.0):
    """Gradient reversal layer (ref. [10], Ganin & Lempitsky): identity in the forward pass."""
    return _f64(x)


def grad_reverse_vjp(g, lambd=1.0):
    """Gradient reversal layer backward: dL/dx = -lambda * dL/dy."""
    return -float(lambd) * _f64(g)
