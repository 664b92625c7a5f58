"""The optimiser's schedule for MMIN's trainer (issue 26): a per-step learning-rate factor (warm-up,
then constant, linear or cosine decay), an exponential moving average of the weights for evaluation
and selection (timm's ``ModelEmaV2``), schedule-aware early stopping, and the small training state
written beside the best checkpoint.

The learning rate of every parameter group at optimizer step ``s`` (0-based: the ``s``-th update) is
``base_lr x lr_factor(s)``, with W warm-up steps and a decay horizon of T steps (both from epochs x
batches per epoch, so the same keys mean the same thing at every batch size)::

    warm-up   s < W:   (s + 1) / W                         (linear, reaching 1 at the last warm-up step)
    constant:          1
    linear:            1 - (1 - r) p                        p = min(1, (s - W) / max(1, T - W))
    cosine:            r + (1 - r) (1 + cos(pi p)) / 2      r = lr_min_ratio

and after the horizon the factor stays at r. The paper-literal behaviour (constant lr, no warm-up)
is factor 1 at every step (``LR_RECIPES["paper"]`` in modeling/config.py). References: Goyal et al.
2017 (linear warm-up), Loshchilov & Hutter, SGDR, ICLR 2017 (cosine decay), the schedules of
``transformers.get_{linear,cosine}_schedule_with_warmup``.

Weight EMA (Polyak averaging): after every optimizer step each floating entry ``e`` of the EMA copy's
state dict becomes ``d_t e + (1 - d_t) w`` (integer buffers are copied), with
``d_t = min(decay, (1 + t) / (10 + t))`` after ``t`` earlier updates (the warm-up of TensorFlow's
``ExponentialMovingAverage(num_updates)`` and timm's ``ModelEmaV3``: a run of a few hundred steps is
otherwise dominated by the initial weights). The EMA copy is what is validated, selected and saved.
"""
from __future__ import annotations

import copy
import math
from typing import Dict

import torch
from torch.optim.lr_scheduler import LambdaLR

from ..errors import MMINConfigError
from ..modeling.config import LR_SCHEDULES, MMINConfig

__all__ = ["lr_factor", "Schedule", "make_scheduler", "restore_scheduler", "ModelEma", "ema_decay_at",
           "patience_start", "TRAIN_STATE_FORMAT"]

#: version of the training-state file ``<stem>.train_state.pt`` (see :meth:`Schedule.state`)
TRAIN_STATE_FORMAT = 1


def lr_factor(step: int, warmup_steps: int, total_steps: int, kind: str, min_ratio: float = 0.0) -> float:
    """Multiplier of every group's base learning rate at optimizer step ``step`` (0-based); the
    formulas are in the module docstring."""
    if kind not in LR_SCHEDULES:
        raise MMINConfigError(f"config key 'lr_schedule': expected one of {list(LR_SCHEDULES)}; found {kind!r}")
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if kind == "constant":
        return 1.0
    p = min(1.0, max(0.0, (step - warmup_steps) / max(1, total_steps - warmup_steps)))
    if kind == "linear":
        return 1.0 - (1.0 - min_ratio) * p
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * p))


class Schedule:
    """The config's schedule in optimizer steps for ``steps_per_epoch`` batches per epoch; callable
    as ``LambdaLR``'s ``lr_lambda`` (a class, not a closure: ``LambdaLR.state_dict`` then stores its
    fields, and a restored scheduler can be checked against the run's config)."""

    def __init__(self, config: MMINConfig, steps_per_epoch: int):
        self.kind = config.lr_schedule
        self.min_ratio = float(config.lr_min_ratio)
        self.steps_per_epoch = max(int(steps_per_epoch), 1)
        self.warmup_steps = int(round(config.warmup_epochs * self.steps_per_epoch))
        horizon = config.lr_decay_epochs if config.lr_decay_epochs is not None else config.max_epochs
        self.total_steps = int(round(horizon * self.steps_per_epoch)) if horizon is not None else 0

    def __call__(self, step: int) -> float:
        return lr_factor(step, self.warmup_steps, self.total_steps, self.kind, self.min_ratio)

    @property
    def warmup_epochs(self) -> int:
        """Whole epochs until the warm-up is over (what ``early_stop_from='warmup'`` waits for)."""
        return math.ceil(self.warmup_steps / self.steps_per_epoch)


def make_scheduler(optimizer, config: MMINConfig, steps_per_epoch: int) -> LambdaLR:
    """``LambdaLR`` over every parameter group, stepped once per optimizer step."""
    return LambdaLR(optimizer, Schedule(config, steps_per_epoch))


def restore_scheduler(scheduler: LambdaLR, state: Dict) -> None:
    """Load a scheduler state written by this trainer and set every group's learning rate to the
    restored position (``LambdaLR.load_state_dict`` restores the step count, not the groups' lr).
    A state from another schedule (different kind, steps or horizon) is refused."""
    mine = scheduler.lr_lambdas[0]
    saved = (state.get("lr_lambdas") or [None])[0]
    fields = ("kind", "min_ratio", "steps_per_epoch", "warmup_steps", "total_steps")
    if not isinstance(saved, dict) or any(saved.get(k) != getattr(mine, k) for k in fields):
        raise MMINConfigError("scheduler state: expected the schedule of this run's config "
                              f"({ {k: getattr(mine, k) for k in fields} }); found {saved!r}")
    scheduler.load_state_dict(state)
    for group, lr in zip(scheduler.optimizer.param_groups, scheduler.get_last_lr()):
        group["lr"] = lr


def ema_decay_at(decay: float, updates: int) -> float:
    """The EMA decay of the update after ``updates`` earlier ones: ``min(decay, (1 + t) / (10 + t))``."""
    return min(decay, (1.0 + updates) / (10.0 + updates))


class ModelEma:
    """Exponential moving average of a model's state dict, in the style of timm's ``ModelEmaV2``:
    ``module`` is a deep copy (eval mode, no gradients) updated in place by :meth:`update` after
    every optimizer step; see the module docstring for the decay."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay = float(decay)
        self.updates = 0

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        d = ema_decay_at(self.decay, self.updates)
        self.updates += 1
        for e, w in zip(self.module.state_dict().values(), model.state_dict().values()):
            if e.dtype.is_floating_point:
                e.lerp_(w.detach(), 1.0 - d)  # e + (1 - d)(w - e) = d e + (1 - d) w
            else:
                e.copy_(w)


def patience_start(config: MMINConfig, best_epoch: int, warmup_epochs: int) -> int:
    """The epoch the early-stopping patience counts from: the best epoch, or with
    ``early_stop_from='warmup'`` not before the warm-up is over (the rising learning rate of the
    warm-up makes its validation scores no guide to when to stop)."""
    return max(best_epoch, warmup_epochs) if config.early_stop_from == "warmup" else best_epoch
