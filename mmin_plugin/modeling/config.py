"""MMIN's configuration: one typed dataclass, :class:`MMINConfig`, holding every key the model and
its trainer read, with its type, default, allowed range and meaning (design notes:
docs/design/model.md)."""
from __future__ import annotations

import dataclasses
import difflib
import math
import numbers
import os
from dataclasses import dataclass, field
from typing import Any, Callable, List, Mapping, Optional, Tuple

import numpy as np

from .. import datasets
from ..constants import FUSION_ABLATIONS, LENGTHS_FROM, MODALITIES
from ..errors import MMINConfigError
from .terms import LOSS_ABLATIONS, LOSS_TERMS

__all__ = ["MMINConfig", "MMSA_KEYS", "ADV_RECIPES", "LR_RECIPES", "LR_SCHEDULES", "ABLATIONS", "normalize_ablation",
           "config_table"]

#: paper Table 2 switches for the config key `ablation`: drop a fusion input, a modality, or a loss
#: term's weight (the loss terms' switches come from their table, modeling/terms.py)
ABLATIONS = FUSION_ABLATIONS + MODALITIES + LOSS_ABLATIONS
#: learning-rate schedules of the trainer (integration/schedule.py has the formulas)
LR_SCHEDULES = ("constant", "linear", "cosine")
#: `precision`: the training/eval autocast dtype ("fp32" = no autocast); modeling/model.py keeps the
#: cross-attention (LN, q, k, v, scores, sparsemax, weighted sum) in float32 under autocast.
PRECISIONS = ("fp32", "bf16", "fp16")

#: keys of MMSA 2.2.1's own args that MMIN does not read (run.py, config.py, data_loader.py and the
#: dataset block `datasetCommonParams`); accepted by :meth:`MMINConfig.from_args` and ignored.
MMSA_KEYS = frozenset({
    "model_name", "featurePath", "seq_lens", "train_samples", "num_classes", "language", "missing_rate",
    "missing_seed", "data_missing", "model_save_path", "device", "train_mode", "custom_feature", "feature_T",
    "feature_A", "feature_V", "cur_seed", "d_paras", "gpu_ids",
})


def _cfail(key, expected, found):
    raise MMINConfigError(f"config key '{key}': expected {expected}; found {found!r}")


# ------------------------------------------------------------------------------------------------
# value checkers: (key, value) -> normalised value, or MMINConfigError naming key/expected/found
# ------------------------------------------------------------------------------------------------
def _is_bool(v) -> bool:
    return isinstance(v, (bool, np.bool_))


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not _is_bool(v)


def _is_real(v) -> bool:
    return isinstance(v, numbers.Real) and not _is_bool(v)


def _int(lo: int = 1, hi: Optional[int] = None) -> Callable:
    def check(key, v):
        if not _is_int(v) or int(v) < lo or (hi is not None and int(v) > hi):
            _cfail(key, f"an integer in [{lo}, {hi}]" if hi is not None else
                   f"an integer >= {lo}" if lo != 1 else "a positive integer", v)
        return int(v)
    return check


# Upper bounds of the size keys: far above any published MMSA model (BERT-large is 1024 wide, 16
# heads, 24 layers; feature widths are 5-768, 4096 for LLM features), low enough that a config
# file (say, an untrusted `<checkpoint>.config.json` read by `explain`) cannot ask for a model of
# tens of GB: at the bounds one d_model x d_model matrix is 64 MiB.
MAX_WIDTH = 4096
MAX_FF_WIDTH = 4 * MAX_WIDTH
MAX_HEADS = 64
MAX_LAYERS = 24
MAX_FEATURE_DIM = 1 << 16


def _real(lo: float = 0.0, hi: Optional[float] = None, lo_open: bool = False, hi_open: bool = True,
          what: str = "a number") -> Callable:
    def check(key, v):
        ok = _is_real(v) and math.isfinite(float(v))
        if ok:
            x = float(v)
            ok = (x > lo if lo_open else x >= lo) and (hi is None or (x < hi if hi_open else x <= hi))
        if not ok:
            rng = f"{'(' if lo_open else '['}{lo:g}, {'inf)' if hi is None else f'{hi:g}' + (')' if hi_open else ']')}"
            _cfail(key, f"{what} in {rng}", v)
        return float(v)
    return check


def _finite_or_none(key, v):
    if v is None:
        return None
    if not _is_real(v) or not math.isfinite(float(v)):
        _cfail(key, "None or a finite number (<= 0 or None disables clipping)", v)
    return float(v)


def _int_or_none(key, v):
    if v is not None and (not _is_int(v) or int(v) < 1):
        _cfail(key, "None (no cap) or a positive integer", v)
    return None if v is None else int(v)


def _bool(key, v):
    if not _is_bool(v):
        _cfail(key, "a boolean (true/false, not a string or a number)", v)
    return bool(v)


def _choice(*options: str, lower: bool = False) -> Callable:
    def check(key, v):
        x = v.lower() if lower and isinstance(v, str) else v
        if not isinstance(x, str) or x not in options:
            _cfail(key, f"one of {list(options)}", v)
        return x
    return check


def _dataset_name(key, v):
    """A dataset known to :mod:`mmin_plugin.datasets` (MMSA's own or registered), lower case."""
    if not isinstance(v, str) or datasets.lookup(v) is None:
        _cfail(key, f"one of {list(datasets.names())} (any case; others via mmin_plugin.register_dataset)", v)
    return v.lower()


def _str(key, v):
    if not isinstance(v, str):
        _cfail(key, "a string", v)
    return v


def _nonempty_path(key, v):
    if not isinstance(v, (str, os.PathLike)) or not os.fspath(v):
        _cfail(key, "a local model directory or a hub id like 'bert-base-uncased'", v)
    return os.fspath(v)


def _feature_dims(key, v):
    if not isinstance(v, (list, tuple)) or len(v) != 3 or not all(_is_int(x) and 1 <= int(x) <= MAX_FEATURE_DIM
                                                                  for x in v):
        _cfail(key, f"3 integers in [1, {MAX_FEATURE_DIM}] (text, audio, video feature widths, MMSA's order)", v)
    return tuple(int(x) for x in v)


def normalize_ablation(value, key="ablation"):
    """``None``/``''``/``[]`` -> ``[]``; ``'cin'``, ``'cin,text'``, ``['cin', 'text']`` -> a list of
    valid lower-case names (order kept, duplicates dropped).  Unknown names:
    :class:`MMINConfigError`."""
    if value is None:
        return []
    if isinstance(value, str):
        items = value.split(",")
    elif isinstance(value, (list, tuple, set, frozenset)):
        items = []
        for v in value:
            if not isinstance(v, str):
                _cfail(key, f"ablation names (strings) from {list(ABLATIONS)}", v)
            items.extend(v.split(","))
    else:
        _cfail(key, f"a list, a string or a comma-separated string of {list(ABLATIONS)}", value)
    out = []
    for it in items:
        name = it.strip().lower()
        if not name:
            continue
        if name not in ABLATIONS:
            _cfail(key, f"ablation names from {list(ABLATIONS)}", it.strip())
        if name not in out:
            out.append(name)
    return out


def _key(default, check: Callable, help: str, range: str, group: str):
    """A config key: default, checker, one-line meaning, allowed range, group (model/loss/training/data)."""
    meta = {"help": help, "range": range, "check": check, "group": group}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


# ------------------------------------------------------------------------------------------------
# the configuration
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MMINConfig:
    """Every key MMIN's model and trainer read, typed, with its default, range and meaning.

    Defaults are MMSA's view in ``registry.json`` (``commonParams`` + MOSI's ``datasetParams`` and
    MOSI's dataset block), so ``MMINConfig()`` is the configuration of an MMSA run of MMIN on MOSI.
    Each field's ``metadata`` holds ``help`` (one line), ``range`` (text) and ``check`` (the
    validator); :func:`config_table` renders them as the table of docs/configuration.md.

    Construction validates (``__post_init__``): every value is type-checked (booleans must be real
    ``bool``, integers real ``int``; a float where an int is expected is an error) and range-checked,
    values are normalised (``ablation`` to a list of lower-case names, ``dataset_name`` to lower
    case, ``feature_dims`` to a tuple), and the combined checks hold:

    * ``d_model % nheads == 0`` (attention heads split d_model evenly);
    * the ``ablation`` leaves at least one modality, and at least one fusion input (not both
      ``cin`` and ``fin``);
    * ``KeyEval`` is one of the ``key_evals`` of ``dataset_name``'s spec (:mod:`mmin_plugin.datasets`).

    Raises :class:`~mmin_plugin.errors.MMINConfigError` naming the key, what was expected and what
    was found. Frozen: derive variants with :func:`dataclasses.replace` (validated again).

    Use :meth:`from_args` to build it from MMSA's args (which also hold MMSA's own keys).
    """

    # --- model: sizes -----------------------------------------------------------------------------
    d_model: int = _key(128, _int(1, MAX_WIDTH), "width of every code and sequence (encoders, CA, fusion)",
                        f"1..{MAX_WIDTH}, multiple of nheads", "model")
    nheads: int = _key(8, _int(1, MAX_HEADS), "attention heads of the CA modules and the fusion transformer",
                       f"1..{MAX_HEADS}, divides d_model", "model")
    fine_layers: int = _key(2, _int(1, MAX_LAYERS), "N: stacked CA layers per ordered modality pair in FIN",
                            f"1..{MAX_LAYERS}", "model")
    fusion_layers: int = _key(1, _int(1, MAX_LAYERS), "transformer encoder layers of the fusion layer",
                              f"1..{MAX_LAYERS}", "model")
    fusion_ff_dim: int = _key(256, _int(1, MAX_FF_WIDTH), "feed-forward width of the fusion transformer",
                              f"1..{MAX_FF_WIDTH}", "model")
    rnn_layers: int = _key(1, _int(1, MAX_LAYERS), "layers of the audio and video LSTMs", f"1..{MAX_LAYERS}",
                           "model")
    disc_hidden: int = _key(64, _int(1, MAX_FF_WIDTH), "hidden width of the modality discriminator D",
                            f"1..{MAX_FF_WIDTH}", "model")
    dropout: float = _key(0.1, _real(0.0, 1.0, what="a dropout probability"),
                          "dropout on residual branches, the discriminator's hidden layer, fusion and head",
                          "[0, 1)", "model")
    attn_dropout: float = _key(0.0, _real(0.0, 1.0, what="a dropout probability"),
                               "dropout on the sparsemax attention weights of the CA modules", "[0, 1)", "model")
    ca_ffn: bool = _key(False, _bool, "design variant: a pre-norm residual feed-forward sub-layer (width "
                        "4 d_model) in every CA module, as MulT; off = the paper's Fig. 2b", "true / false", "model")
    ca_positions: bool = _key(False, _bool, "design variant: both inputs of each FIN pair stack scaled by "
                              "sqrt(d_model) plus sinusoidal positions, as MulT; off = the paper's Fig. 2b",
                              "true / false", "model")
    ablation: List[str] = _key([], lambda key, v: normalize_ablation(v, key),
                               "Table 2 switches: 'cin'/'fin' drop fusion tokens, 'text'/'video'/'audio' "
                               "remove a modality, 'sep'/'ac'/'ap' zero a loss weight",
                               f"list (or comma string) of {', '.join(ABLATIONS)}; >= 1 modality and "
                               "not both cin and fin", "model")
    # --- text encoder ---------------------------------------------------------------------------
    use_bert: bool = _key(True, _bool, "encode text with a BERT-family model (else read the file's text "
                          "features)", "true / false", "model")
    use_finetune: bool = _key(True, _bool, "fine-tune the text encoder (else it is frozen)", "true / false",
                              "model")
    transformers: str = _key("bert", _choice("bert", "roberta"), "text encoder family", "'bert' or 'roberta'",
                             "model")
    pretrained: str = _key("bert-base-uncased", _nonempty_path, "text encoder: a hub id or a local directory "
                           "written by save_pretrained", "non-empty hub id or path", "model")
    # --- loss (eq. 6) ---------------------------------------------------------------------------
    alpha: float = _key(1e-4 * 256, _real(), "weight of L_sep (eq. 5) in eq. 6; 0.0256 = 1e-4 x 16^2: with "
                        "sep_reduction 'mean', MOSI at batch 16 trains exactly as the sum with 1e-4", ">= 0, finite",
                        "loss")
    beta: float = _key(0.1, _real(), "weight of L_ac (eq. 3) in eq. 6", ">= 0, finite", "loss")
    gamma: float = _key(0.1, _real(), "weight of L_ap (eq. 4) in eq. 6", ">= 0, finite", "loss")
    grl_lambda: float = _key(1.0, _real(), "gradient reversal strength on the common codes in L_ac",
                             ">= 0, finite", "loss")
    sep_reduction: str = _key("mean", _choice("sum", "mean"), "eq. 5 divided by batch^2 ('mean', batch-size "
                              "invariant) or as written ('sum', grows as batch^2)", "'sum' or 'mean'", "loss")
    # --- training -------------------------------------------------------------------------------
    learning_rate: float = _key(1e-3, _real(lo_open=True, what="a learning rate"),
                                "Adam learning rate of everything but the text encoder", "> 0, finite", "training")
    learning_rate_bert: float = _key(5e-5, _real(lo_open=True, what="a learning rate"),
                                     "Adam learning rate of the text encoder", "> 0, finite", "training")
    weight_decay: float = _key(0.0, _real(what="a weight decay"), "Adam weight decay of everything but the "
                               "text encoder", ">= 0, finite", "training")
    weight_decay_bert: float = _key(0.0, _real(what="a weight decay"), "Adam weight decay of the text encoder",
                                    ">= 0, finite", "training")
    batch_size: int = _key(16, _int(), "samples per batch (MMSA's data loader)", ">= 1", "training")
    early_stop: int = _key(8, _int(), "stop after this many epochs without a better validation KeyEval",
                           ">= 1", "training")
    max_epochs: Optional[int] = _key(None, _int_or_none, "cap on training epochs (MMSA has none)",
                                     "None or >= 1", "training")
    grad_clip: Optional[float] = _key(1.0, _finite_or_none, "clip every gradient entry to [-grad_clip, "
                                      "grad_clip]", "finite; <= 0 or None disables", "training")
    KeyEval: str = _key("Loss", _str,
                        "validation metric that selects the best epoch",
                        "one of the dataset's key_evals (mmin_plugin.datasets)", "training")
    # --- adversarial recipe (issue 19; docs/design/adversarial.md) ------------------------------------
    # Named settings of these keys: ADV_RECIPES ("paper" = the paper read literally; the defaults are
    # "stable", chosen on the real-text benchmark's VALID split).
    adv_objective: str = _key("confusion", _choice("reversal", "confusion"), "what the common encoder does "
                              "with L_ac: 'reversal' = ascend D's cross-entropy through the gradient-reversal "
                              "layer (eq. 3 as written, unbounded above); 'confusion' = descend the cross-entropy "
                              "against uniform targets over the modalities (minimum at chance, ln M per code)",
                              "'reversal' or 'confusion'", "loss")
    adv_ramp_epochs: float = _key(2.0, _real(), "DANN schedule of the adversarial weight: grl_lambda x "
                                  "(2 / (1 + exp(-10 p)) - 1), p = epochs trained / adv_ramp_epochs capped at 1 "
                                  "(0 = no ramp, the weight is grl_lambda from the first step)", ">= 0, finite",
                                  "loss")
    disc_lr: Optional[float] = _key(None, lambda k, v: None if v is None else _real(
        lo_open=True, what="a learning rate or None")(k, v), "Adam learning rate of the modality discriminator "
        "D (None = learning_rate, one group with the rest)", "None or > 0, finite", "training")
    grad_clip_mode: str = _key("norm", _choice("value", "norm"), "how grad_clip clips: every gradient entry "
                               "to [-grad_clip, grad_clip] ('value', MMSA's models) or the global L2 norm of all "
                               "gradients to grad_clip ('norm', direction kept)", "'value' or 'norm'", "training")
    # --- optimiser schedule and selection (issue 26; integration/schedule.py) ------------------------
    # Named settings: LR_RECIPES ("paper" = constant lr, no averaging, the behaviour before issue 26).
    lr_schedule: str = _key("constant", _choice(*LR_SCHEDULES), "learning-rate schedule after the warm-up, per "
                            "optimizer step, every parameter group alike: 'constant' (the paper's), or 'linear' / "
                            "'cosine' decay to lr_min_ratio x lr over lr_decay_epochs", "'constant', 'linear' or "
                            "'cosine'", "training")
    warmup_epochs: float = _key(0.0, _real(), "linear warm-up of every learning rate from 1/W to 1 over this many "
                                "epochs (W = epochs x batches per epoch steps; fractions allowed; 0 = none)",
                                ">= 0, finite", "training")
    lr_decay_epochs: Optional[float] = _key(None, lambda k, v: None if v is None else _real(
        lo_open=True, what="a number of epochs or None")(k, v), "decay horizon in epochs from the start, warm-up "
        "included; the lr stays at lr_min_ratio x lr after it (None = max_epochs)", "None or > 0, finite",
        "training")
    lr_min_ratio: float = _key(0.0, _real(0.0, 1.0, hi_open=False, what="a ratio"), "final learning rate of the "
                               "decay, as a fraction of each group's learning rate", "[0, 1]", "training")
    ema_decay: Optional[float] = _key(None, lambda k, v: None if v is None else _real(
        0.0, 1.0, what="an EMA decay or None")(k, v), "exponential moving average of the weights (timm ModelEmaV2; "
        "decay min(ema_decay, (1+t)/(10+t)) at update t): the average is validated, selected and saved (None = "
        "off, the trained weights themselves)", "None or [0, 1)", "training")
    early_stop_from: str = _key("start", _choice("start", "warmup"), "when early_stop's patience may run out: "
                                "'start' = counted from the best epoch only (MMSA's rule), 'warmup' = also not "
                                "before the warm-up epochs are over", "'start' or 'warmup'", "training")
    recompute: bool = _key(True, _bool, "activation recomputation while training: the LSTMs (oneDNN's workspace), "
                           "each cross-attention's layer norms and q, k, v projections, and the activation of "
                           "BERT's feed-forward blocks are recomputed in the backward instead of kept (the same "
                           "values; about 300 MB less with a BERT-base encoder at MOSI's lengths and batch 16, a "
                           "few percent more step time; off = keep them)", "true / false", "training")
    dropout_kernel: bool = _key(True, _bool, "every dropout of the model (BERT's included) draws its mask on CPU "
                                "from a counter-based generator (Philox, one seed from torch's generator per "
                                "call) and recomputes it in the backward instead of keeping it (the same keep "
                                "probability and scaling; about 6x faster than torch's draw, about 90 MB less "
                                "for a BERT-base model at MOSI's shapes; off = torch's nn.Dropout and its "
                                "random stream)", "true / false", "training")
    precision: str = _key("fp32", _choice(*PRECISIONS), "mixed precision of training and evaluation: 'fp32' = "
                          "none; 'bf16' / 'fp16' = torch.autocast to that dtype (fp16 with a GradScaler) for "
                          "BERT, the LSTMs, projections and fusion, while every cross-attention (its layer norms, "
                          "q, k, v, scores, sparsemax and weighted sum) stays in float32", "'fp32', 'bf16' or "
                          "'fp16'", "training")
    # --- data (set by MMSA from the dataset) --------------------------------------------------------
    dataset_name: str = _key("mosi", _dataset_name, "MMSA dataset (decides KeyEval's "
                             "choices and the metrics)", "'mosi', 'mosei', 'sims' or a registered name (any case)",
                             "data")
    feature_dims: Tuple[int, int, int] = _key((768, 5, 20), _feature_dims, "feature widths (text, audio, "
                                              "video) in MMSA's order; MMSA sets them from the file",
                                              f"3 integers in 1..{MAX_FEATURE_DIM}", "data")
    need_data_aligned: bool = _key(False, _bool, "MMSA reads the word-aligned file (MMIN reads "
                                   "unaligned data)", "true / false", "data")
    need_model_aligned: bool = _key(False, _bool, "MMSA aligns sequences in AMIO before the model",
                                    "true / false", "data")
    need_normalized: bool = _key(False, _bool, "MMSA averages audio/video over time (MMIN needs "
                                 "sequences)", "true / false", "data")
    lengths_from: str = _key("file", _choice(*LENGTHS_FROM), "audio/video lengths: the file's "
                             "*_lengths, or recomputed from the data (non-zero frames moved to the front)",
                             "'file' or 'nonzero'", "data")

    def __post_init__(self):
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, f.metadata["check"](f.name, getattr(self, f.name)))
        self._check_combined()

    def _check_combined(self):
        if self.lr_schedule != "constant" and self.lr_decay_epochs is None and self.max_epochs is None:
            _cfail("lr_decay_epochs", f"a decay horizon in epochs for lr_schedule '{self.lr_schedule}' (or "
                                      "max_epochs set, which it defaults to)", None)
        if self.d_model % self.nheads:
            raise MMINConfigError(
                f"config key 'd_model': expected a multiple of nheads={self.nheads} (attention heads split "
                f"d_model evenly); found {self.d_model} (d_model % nheads = {self.d_model % self.nheads})")
        if all(m in self.ablation for m in MODALITIES):
            _cfail("ablation", "at most two of the modalities 'text', 'video', 'audio' ablated "
                               "(at least one must remain)", self.ablation)
        if "cin" in self.ablation and "fin" in self.ablation:
            _cfail("ablation", "at most one of 'cin' and 'fin' (the fusion layer needs the CIN or the "
                               "FIN tokens)", self.ablation)
        choices = datasets.get(self.dataset_name).key_evals
        if self.KeyEval not in choices:
            near = [k for k in choices if k.lower() == self.KeyEval.lower()]
            hint = f"; did you mean '{near[0]}'?" if near else ""
            raise MMINConfigError(f"config key 'KeyEval': expected one of {list(choices)} (the metrics of dataset "
                                  f"'{self.dataset_name}', case-sensitive); found {self.KeyEval!r}{hint}")

    # --- construction ---------------------------------------------------------------------------
    @classmethod
    def from_args(cls, args: Any) -> MMINConfig:
        """Build from MMSA's args (dict / EasyDict) or return an :class:`MMINConfig` unchanged.

        MMIN's keys become fields (absent keys take the defaults); MMSA's own keys (:data:`MMSA_KEYS`)
        are accepted and ignored; any other key is an :class:`MMINConfigError` naming it and the
        nearest known key.
        """
        if isinstance(args, cls):
            return args
        if not isinstance(args, Mapping):
            raise MMINConfigError(f"config: expected a dict of parameters; found {type(args).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        values = {}
        for key in args:
            if key in names:
                values[key] = args[key]
            elif key not in MMSA_KEYS:
                near = difflib.get_close_matches(str(key), sorted(names | MMSA_KEYS), n=1, cutoff=0.6)
                hint = f" (did you mean '{near[0]}'?)" if near else ""
                raise MMINConfigError(f"config key '{key}': expected one of MMIN's or MMSA's keys; found an "
                                      f"unknown key{hint}")
        return cls(**values)

    # --- derived views ----------------------------------------------------------------------------
    @property
    def modalities(self) -> Tuple[str, ...]:
        """The modalities left after the ablation, in MMIN's order (text, video, audio)."""
        return tuple(m for m in MODALITIES if m not in self.ablation)

    @property
    def loss_weights(self) -> dict:
        """The weights of eq. 6 by key (alpha, beta, gamma), each zeroed by its term's ablation
        switch ('sep', 'ac', 'ap'): from the loss table, modeling/terms.py."""
        return {t.weight: 0.0 if t.ablation in self.ablation else getattr(self, t.weight)
                for t in LOSS_TERMS if t.weight}

    def to_dict(self) -> dict:
        """The keys and values (as MMSA would hold them: lists, not tuples)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


#: Named settings of the adversarial keys (issue 19; evidence in docs/design/adversarial.md).
#: "paper": eq. 3 read literally (gradient reversal at full strength from the first step, one Adam
#: group, clipping by value; the behaviour before issue 19); "stable": the defaults, chosen on the
#: real-text benchmark's VALID split.
#: Use: ``MMINConfig(**ADV_RECIPES["paper"])`` or ``--set`` / overrides with these keys.
ADV_RECIPES = {
    "paper": {"adv_objective": "reversal", "adv_ramp_epochs": 0.0, "disc_lr": None, "grad_clip_mode": "value"},
    "stable": {"adv_objective": "confusion", "adv_ramp_epochs": 2.0, "disc_lr": None, "grad_clip_mode": "norm"},
}


#: Named settings of the optimiser keys (issue 26; evidence in docs/design/schedule.md).
#: "paper": the paper's (and MMSA's) optimiser, constant learning rates, no averaging, early_stop
#: counted from the best epoch; the defaults (the behaviour before issue 26).
#: "study": what `tune` chose on VALID in the issue-26 study (real MOSEI text, MiniLM fine-tuned; trial
#: 3, re-scored on 3 seeds); NOT the default: that study was too small to be evidence (its VALID MSE
#: against the defaults: -0.057 [-0.162, +0.048], p = 0.21, 5 paired seeds). Its learning rates and dropout
#: equal the defaults'.
#: Use: ``MMINConfig(**LR_RECIPES["paper"])`` or ``--set`` / overrides with these keys.
LR_RECIPES = {
    "paper": {"lr_schedule": "constant", "warmup_epochs": 0.0, "lr_decay_epochs": None, "lr_min_ratio": 0.0,
              "ema_decay": None, "early_stop_from": "start"},
    "study": {"lr_schedule": "constant", "warmup_epochs": 0.5, "lr_decay_epochs": None, "lr_min_ratio": 0.0,
              "ema_decay": 0.95, "early_stop_from": "warmup", "batch_size": 16, "weight_decay": 1e-4},
}


def config_table() -> str:
    """Markdown table of every key: name, type, default, range, meaning (docs/configuration.md)."""
    rows = ["| key | type | default | range | meaning |", "|---|---|---|---|---|"]
    for f in dataclasses.fields(MMINConfig):
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        rows.append(f"| `{f.name}` | {f.type} | `{default!r}` | {f.metadata['range']} | {f.metadata['help']} |")
    return "\n".join(rows)
