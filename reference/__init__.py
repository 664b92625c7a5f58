"""mmin_reference: a pure-NumPy oracle of MMIN's numerical core.

Small, slow and written for clarity; the property tests hold the torch code in
`mmin_plugin` to it. No torch import anywhere in this package.
"""
from .losses import (
    adversarial_scale,
    dann_weight,
    discriminator_forward,
    grad_reverse,
    grad_reverse_vjp,
    linear,
    log_softmax,
    modality_confusion,
    modality_confusion_grad,
    modality_cross_entropy,
    sentiment_loss,
    separation_loss,
)
from .sparsemax import sparsemax, sparsemax_threshold, sparsemax_vjp

__all__ = [
    "sparsemax",
    "sparsemax_threshold",
    "sparsemax_vjp",
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
