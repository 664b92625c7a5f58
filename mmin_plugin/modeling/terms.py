"""The table of MMIN's loss terms: each term of eq. 6 (and each logged-only term) named once.

Everything that handles loss terms by name derives from :data:`LOSS_TERMS`: the total of eq. 6
(:meth:`MMIN.total_loss <mmin_plugin.modeling.model.MMIN.total_loss>`), the weights with their
ablation switches (:attr:`MMINConfig.loss_weights <mmin_plugin.modeling.config.MMINConfig.loss_weights>`,
the valid ``ablation`` names), the per-epoch logging (``integration.trainer.LOSS_TERMS``), the
training-curve panels (``results.report.CURVE_PANELS``, :func:`curve_panels`), the ``ablate``
variants (``experiments.variants``) and the oracle tests (tests/test_reference_losses.py checks
that every term names a function of ``mmin_reference``).

A new loss term is: its function in ``modeling/losses.py``, its value in the model's output dict,
one entry here (plus its weight key in ``MMINConfig`` and ``registry.json`` if it is weighted), and
its NumPy oracle in ``reference/losses.py``.

Plain Python (no torch): the config, the CLI and the report read this table without loading torch.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

__all__ = ["LossTerm", "LOSS_TERMS", "TERM_NAMES", "LOSS_ABLATIONS", "term", "curve_panels"]


@dataclass(frozen=True)
class LossTerm:
    """One loss term.

    * ``name``: its key in MMIN's output dict, in ``total_loss``'s terms and in the trainer's
      history (``train_<name>``, ``valid_<name>``);
    * ``meaning``: one line, with the equation it implements;
    * ``weight``: the :class:`MMINConfig` key that weights it in eq. 6; ``None`` = weight 1 when
      ``in_total``, else logged only;
    * ``in_total``: whether eq. 6 adds it; it enters as the output ``enters_as`` (default: ``name``;
      ``L_ac`` enters as ``L_adv``, the term whose gradients implement ``adv_objective``);
    * ``ablation``: the ``ablation`` switch that zeroes its weight (paper Table 2), or ``None``;
    * ``oracle``: the function of ``mmin_reference`` (reference/losses.py, NumPy) that computes it;
    * ``panel``: the title of its training-curve panel, or ``None`` (no panel of its own);
    * ``valid_key``: the history key of its validation curve (default ``valid_<name>``).
    """

    name: str
    meaning: str
    weight: Optional[str]
    in_total: bool
    ablation: Optional[str]
    oracle: str
    panel: Optional[str]
    enters_as: Optional[str] = None
    valid_key: Optional[str] = None

    @property
    def total_key(self) -> str:
        """The output eq. 6 adds for this term."""
        return self.enters_as or self.name

    @property
    def valid_history_key(self) -> str:
        return self.valid_key or f"valid_{self.name}"


#: eq. 6, L = L_senti + alpha L_sep + beta L_ac + gamma L_ap, and the logged-only confusion term
LOSS_TERMS: Tuple[LossTerm, ...] = (
    # the trainer's validation 'Loss' is the mean L_senti (MMSA's column), hence its valid key
    LossTerm("L_senti", "sentiment regression loss (MSE; eq. 6's first term)", None, True, None,
             "sentiment_loss", "L_senti (MSE)", valid_key="valid_Loss"),
    LossTerm("L_sep", "separation loss (eq. 5), reduced by sep_reduction", "alpha", True, "sep",
             "separation_loss", "L_sep"),
    LossTerm("L_ac", "D's cross-entropy on the common codes (eq. 3); eq. 6 adds L_adv, whose gradients "
             "follow adv_objective", "beta", True, "ac", "modality_cross_entropy", "L_ac", enters_as="L_adv"),
    LossTerm("L_ap", "D's cross-entropy on the private codes (eq. 4)", "gamma", True, "ap",
             "modality_cross_entropy", "L_ap"),
    # inside L_adv with adv_objective 'confusion' (weight beta x the DANN-ramped grl_lambda); logged
    # for both objectives (a D whose common-code outputs are uniform has L_conf = M ln M)
    LossTerm("L_conf", "the encoders' confusion cross-entropy against uniform modality targets "
             "(Tzeng et al. 2015); part of L_adv with adv_objective 'confusion'", None, False, None,
             "modality_confusion", None),
)

#: the names, in table order
TERM_NAMES: Tuple[str, ...] = tuple(t.name for t in LOSS_TERMS)
#: the ``ablation`` switches of the loss terms ('sep', 'ac', 'ap')
LOSS_ABLATIONS: Tuple[str, ...] = tuple(t.ablation for t in LOSS_TERMS if t.ablation)


def term(name: str) -> LossTerm:
    """The table entry named ``name`` (KeyError naming the known terms otherwise)."""
    for t in LOSS_TERMS:
        if t.name == name:
            return t
    raise KeyError(f"no loss term {name!r}; known: {list(TERM_NAMES)}")


def curve_panels() -> Tuple[Tuple[str, str, Optional[str]], ...]:
    """``(title, train history key, valid history key or None)`` per training-curve panel: one per
    term with a ``panel``, then the total of eq. 6 (train only)."""
    return tuple((t.panel, f"train_{t.name}", t.valid_history_key) for t in LOSS_TERMS if t.panel) + (
        ("total loss (eq. 6)", "train_Loss", None),)
