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
    "sentiment_loss",
    "modality_confusion",
    "modality_confusion_grad",
    "dann_weight",
    "adversarial_scale",
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


def sentiment_loss(pred, labels):
    """L_senti of eq. 6: the mean squared error over the batch, (1/n) sum_i (pred_i - y_i)^2."""
    d = _f64(pred).reshape(-1) - _f64(labels).reshape(-1)
    return float(np.mean(d * d))


def modality_confusion(logits_list, labels):
    """The confusion objective (Tzeng et al., ICCV 2015) on the common codes: the cross-entropy of
    D's output against the uniform distribution over the M modalities present,

        L_conf = -(1/n) sum_m sum_{i=1}^n (1/M) sum_{k in labels} log D(h_m,i)_k,

    summed over modalities and averaged over the batch like eq. 3. `logits_list[m]`: (n, K)
    logits of D on the codes of one modality; `labels`: the M class indices present. The target
    does not depend on which modality a code came from, so `labels` only selects the classes.
    """
    present = [int(k) for k in labels]
    u = np.zeros(_f64(logits_list[0]).shape[-1])
    u[present] = 1.0 / len(present)  # the uniform target over the present modalities
    loss = 0.0
    for logits in logits_list:
        logp = log_softmax(logits)
        loss += -(logp @ u).sum() / logp.shape[0]
    return float(loss)


def modality_confusion_grad(logits_list, labels):
    """d L_conf / d logits, closed form: for each code, (softmax(z) - u) / n, u the uniform target
    over the present classes (the gradient of a cross-entropy with a soft target)."""
    present = [int(k) for k in labels]
    grads = []
    for logits in logits_list:
        z = _f64(logits)
        u = np.zeros(z.shape[-1])
        u[present] = 1.0 / len(present)
        grads.append((np.exp(log_softmax(z)) - u) / z.shape[0])
    return grads


def dann_weight(progress, gamma=10.0):
    """DANN's adaptation factor (Ganin & Lempitsky, ICML 2015, sec. 5.2.2):
    2 / (1 + exp(-gamma p)) - 1 for the training progress p clipped to [0, 1], written here as
    the identical tanh(gamma p / 2) (0 at p = 0, tanh(5) = 0.99991 at p = 1)."""
    p = min(max(float(progress), 0.0), 1.0)
    return float(np.tanh(gamma * p / 2.0))


def adversarial_scale(epoch, step, n_batches, ramp_epochs):
    """The factor on grl_lambda at training step `step` (1-based) of epoch `epoch` (1-based) with
    `n_batches` steps per epoch: the DANN ramp at progress p = (epochs completed + fraction of this
    epoch before the step) / ramp_epochs, so 0 at the very first step; 1 without a ramp (0 epochs)."""
    if ramp_epochs <= 0:
        return 1.0
    done = (epoch - 1) + (step - 1) / max(n_batches, 1)
    return dann_weight(done / ramp_epochs)
