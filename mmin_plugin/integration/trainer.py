"""MMIN's trainer, following MMSA 2.2.1's trainer protocol.

`do_train(model, dataloader, return_epoch_results=False)` trains until `early_stop` epochs pass
without a better validation `KeyEval` (or `max_epochs`, an optional cap MMSA lacks), saving the
best weights to `model_save_path`; `do_test(model, dataloader, mode, return_sample_results=False)`
evaluates with MMSA's `MetricsTop`. Differences from MMSA's own trainers, on purpose:

* every term of eq. 6 is logged per epoch and kept in `history` (also written as JSON next to the
  checkpoint, `<model_save_path stem>.history.json`, for the training-curve figure);
* a non-finite loss stops training with `NonFiniteLossError` naming the epoch and batch, before
  any optimizer step or checkpoint write, so the best checkpoint on disk stays the last good one;
  so does a non-finite GRADIENT with a finite loss (`NonFiniteGradientError`, a subclass, also
  naming the parameter group and the first parameters whose gradient is NaN/inf), checked after
  `backward()` and before clipping (`clip_grad_value_` would turn +-inf into +-clip and hide it)
  and before the optimizer step;
* checkpoints are written atomically (temporary file, then rename), and the resolved MMIN
  configuration (`MMINConfig.to_dict()` plus the run's `model_name`, `featurePath`, `cur_seed`,
  `model_save_path`) is written next to the checkpoint as `<stem>.config.json` (what `explain`
  needs to rebuild the network: MMSA's checkpoint is a bare state_dict);
* the validation pass records, per epoch, the mean sparsemax support size of every CA module (the
  mean number of keys with non-zero weight per real query, over heads and validation samples) in
  the history as `valid_support/<name>` (names as `MMIN.forward(..., return_attention=True)`
  gives them), so the training-curve figure can show how sparse the attention becomes;
* the optimiser's schedule (issue 26, integration/schedule.py): every learning rate follows
  `lr_schedule` / `warmup_epochs` per optimizer step, with `ema_decay` an exponential moving average
  of the weights is what is validated, selected and saved, and with every best checkpoint the
  scheduler's state is written beside it (`<stem>.train_state.pt`, see `read_train_state`);
* `precision` 'bf16' / 'fp16' trains and evaluates under torch.autocast (`autocast_for`), fp16 with
  a GradScaler (a step whose scaled gradients overflowed is skipped, not an error); the model keeps
  its cross-attention in float32 there;
* Adam is torch's fused implementation wherever it runs (`make_adam`): the same update, 5x faster on
  a BERT-base-sized model on CPU.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
from pathlib import Path

import torch
from torch import nn, optim
from tqdm import tqdm

from .. import datasets
from ..atomic import atomic_write, atomic_write_text, remove_stale_temps
from ..constants import LOWER_IS_BETTER
from ..errors import NonFiniteGradientError, NonFiniteLossError
from ..modeling.config import MMINConfig
from ..modeling.losses import adversarial_scale
from ..modeling.terms import TERM_NAMES
from .schedule import TRAIN_STATE_FORMAT, ModelEma, make_scheduler, patience_start

logger = logging.getLogger("MMSA." + __name__)

__all__ = ["MMINTrainer", "atomic_save", "make_adam", "config_path", "nonfinite_gradients", "clip_gradients",
           "LacBandMonitor", "lac_chance", "LAC_BAND", "LAC_PATIENCE", "train_state_path", "read_train_state"]

#: the loss terms logged per epoch (train and valid) and kept in the history: the loss table's
LOSS_TERMS = TERM_NAMES

#: L_ac's sane band, as multiples of its chance level M ln M (M modalities; D's cross-entropy when it
#: knows nothing, i.e. ln M per code): below 0.5x, D tells the common codes apart (they are not
#: shared); above 2x, D is confidently wrong on them (the reversed gradient ran away). A warning is
#: logged when the epoch mean of L_ac (train or valid) stays outside for LAC_PATIENCE epochs in a row.
LAC_BAND = (0.5, 2.0)
LAC_PATIENCE = 3


def lac_chance(n_modalities: int) -> float:
    """L_ac's chance level: M ln M (eq. 3 sums the per-code cross-entropy, ln M at chance, over M modalities)."""
    return n_modalities * math.log(n_modalities) if n_modalities > 1 else 0.0


class LacBandMonitor:
    """Counts consecutive epochs with L_ac outside ``LAC_BAND`` x chance, per split; ``update``
    returns the warning text (once per split and excursion) when the count reaches ``patience``."""

    def __init__(self, n_modalities: int, band=LAC_BAND, patience: int = LAC_PATIENCE):
        self.chance = lac_chance(n_modalities)
        self.lo, self.hi = band[0] * self.chance, band[1] * self.chance
        self.patience = patience
        self.run = {}

    def update(self, split: str, epoch: int, value: float):
        if self.chance <= 0:  # one modality: nothing to confuse
            return None
        outside = not (self.lo <= value <= self.hi)
        self.run[split] = self.run.get(split, 0) + 1 if outside else 0
        if self.run[split] != self.patience:
            return None
        return (f"L_ac ({split}) has been outside its sane band [{self.lo:.2f}, {self.hi:.2f}] "
                f"({LAC_BAND[0]:g}-{LAC_BAND[1]:g} x chance {self.chance:.2f} = M ln M) for {self.patience} epochs "
                f"(epoch {epoch}: {value:.2f}); " + ("the modality discriminator is confidently wrong on the common "
                                                      "codes (adversarial runaway): try adv_objective 'confusion' "
                                                      "(docs/design/adversarial.md)" if value > self.hi else
                                                      "the discriminator tells the common codes apart (they are "
                                                      "not shared)"))


def atomic_save(obj, path) -> None:
    """torch.save through a temporary sibling file renamed over `path` (see atomic.py)."""
    atomic_write(path, lambda f: torch.save(obj, f))


def config_path(model_save_path) -> Path:
    """Where the trainer writes the resolved run configuration: ``<stem>.config.json`` beside the checkpoint."""
    p = Path(model_save_path)
    return p.with_name(p.stem + ".config.json")


def train_state_path(model_save_path) -> Path:
    """Where the trainer writes the training state of the best checkpoint: ``<stem>.train_state.pt``."""
    p = Path(model_save_path)
    return p.with_name(p.stem + ".train_state.pt")


def read_train_state(path) -> dict:
    """A training state written by :class:`MMINTrainer` (tensors-free: ``torch.load(weights_only=True)``,
    no arbitrary unpickling): ``{'format', 'epoch', 'step', 'best_epoch', 'best_valid', 'scheduler',
    'ema_updates'}``; ``scheduler`` is for ``schedule.restore_scheduler``. A file of another shape:
    :class:`ValueError` naming the file."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    keys = {"format", "epoch", "step", "best_epoch", "best_valid", "scheduler", "ema_updates"}
    if not isinstance(state, dict) or set(state) != keys or state["format"] != TRAIN_STATE_FORMAT:
        found = sorted(state) if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"{path}: expected a training state (format {TRAIN_STATE_FORMAT}, keys {sorted(keys)}); "
                         f"found {found}")
    return state


def _jsonable(v):
    """The run args as JSON: tensors/devices/paths as their text, containers recursively."""
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if hasattr(v, "item") and getattr(v, "ndim", 1) == 0:  # numpy / torch scalars
        return v.item()
    return str(v)


def nonfinite_gradients(optimizer, names, limit=5):
    """``[(group label, [parameter names])]`` of the parameter groups holding a NaN/inf gradient,
    at most ``limit`` names per group (empty when every gradient is finite). One device sync."""
    params = [(gi, p) for gi, g in enumerate(optimizer.param_groups) for p in g["params"] if p.grad is not None]
    if not params:
        return []
    finite = torch.stack([torch.isfinite(p.grad).all() for _, p in params])  # (P,)
    if bool(finite.all()):
        return []
    bad = {}
    for (gi, p), ok in zip(params, finite.tolist()):
        if not ok:
            bad.setdefault(gi, []).append(names.get(p, "?"))
    return [(optimizer.param_groups[gi].get("name", f"group {gi}"), ns[:limit] + (["..."] if len(ns) > limit else []))
            for gi, ns in sorted(bad.items())]


def make_adam(groups) -> optim.Adam:
    """Adam over ``groups``: torch's fused kernel when every parameter is a floating-point tensor on
    the CPU or a CUDA device (one pass per tensor, no temporaries; on 2 CPU cores a BERT-base-sized
    step took 63 ms against 311 ms for the default per-tensor loop, issue 27), else torch's default
    implementation. The same update rule; the two differ in the last bits of the weights."""
    params = [p for g in groups for p in g["params"]]
    fused = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    return optim.Adam(groups, fused=fused or None)  # torch checks devices only at the first step


def clip_gradients(parameters, grad_clip: float, mode: str) -> None:
    """Clip in place: ``'value'`` clamps every gradient entry to [-grad_clip, grad_clip] (MMSA's
    models; changes the direction), ``'norm'`` rescales all gradients together so their global L2
    norm is at most grad_clip (direction kept). ``grad_clip <= 0``: nothing."""
    if grad_clip <= 0:
        return
    params = [p for p in parameters if p.requires_grad]
    if mode == "norm":
        nn.utils.clip_grad_norm_(params, grad_clip)
    else:
        nn.utils.clip_grad_value_(params, grad_clip)


class SupportMeter:
    """Pooled mean sparsemax support per CA module over one evaluation pass.

    Each batch's mean (``modeling.attention.support_sizes``: keys with non-zero weight per
    (sample, head, real query) row) is weighted by its number of rows, so the result is the mean
    over every row of the pass, whatever the batch sizes."""

    def __init__(self):
        self.total, self.count = {}, {}

    def add(self, attention, query_mask) -> None:
        from ..modeling.attention import support_sizes

        for name, st in support_sizes(attention, query_mask).items():
            if st["queries"]:
                self.total[name] = self.total.get(name, 0.0) + st["mean"] * st["queries"]
                self.count[name] = self.count.get(name, 0) + st["queries"]

    def means(self) -> dict:
        return {name: self.total[name] / self.count[name] for name in self.total if self.count[name] > 0}


def autocast_for(precision: str, device):
    """The autocast context of ``config.precision`` on ``device``: 'fp32' none, 'bf16' / 'fp16' torch.autocast
    to that dtype (the model keeps its cross-attention in float32 inside it, see model.CrossAttention)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def _batch_inputs(batch, device, layout=datasets.MMSA_STANDARD):
    """One of MMSA's batches (the same keys for every dataset its loader reads) as MMIN's inputs: the
    modalities in MMSA's order (text, audio, video), the sequence lengths as keyword arguments named
    as in the batch (`audio_lengths`, `vision_lengths`; absent for aligned data), the labels 'M'."""
    inputs = tuple(batch[key].to(device) for key in layout.modality_keys)
    kwargs = {key: torch.as_tensor(batch[key]).to(device) for key in layout.lengths_keys if key in batch}
    labels = batch["labels"]["M"].to(device).view(-1, 1)
    return inputs, kwargs, labels


class MMINTrainer:
    """MMIN's trainer with MMSA 2.2.1's trainer protocol (what `ATIO.getTrain` returns).

    `do_train(model, dataloader, return_epoch_results=False)` minimises eq. 6,
    L = L_senti + alpha L_sep + beta L_ac + gamma L_ap (weights from `MMINConfig`, ablations applied),
    with Adam (the text encoder in its own parameter group), one epoch at a time, until `early_stop`
    epochs pass without a better validation `KeyEval` or `max_epochs` is reached; the best weights
    are written atomically to `args['model_save_path']`, the per-epoch history (every loss term,
    validation metrics, attention support sizes) and the resolved config next to it. A non-finite
    loss or gradient raises `NonFiniteLossError` before any optimizer step or checkpoint write.
    `do_test(model, dataloader, mode)` returns MMSA's `MetricsTop` metrics plus `Loss` (the MSE), the
    keys MMSA's results CSV expects. `args` is MMSA's merged config (an EasyDict); `config` is the
    run's :class:`MMINConfig` when the caller has parsed it already (the registry hands on the one
    the pre-run check parsed; otherwise it is parsed from `args` here).
    """

    def __init__(self, args, config: MMINConfig = None):
        from MMSA.utils import MetricsTop

        self.args = args
        # MMIN's keys, validated; MMSA's run state stays in args
        self.config = config if config is not None else MMINConfig.from_args(args)
        self.metrics = MetricsTop("regression").getMetics(self.config.dataset_name.upper())
        self.criterion = nn.MSELoss()
        self.history = []
        self.last_eval_terms = {}
        self.last_support = {}

    # ---- helpers -----------------------------------------------------------------------------
    def _mmin(self, model):
        return model.Model if hasattr(model, "Model") else model  # AMIO wraps the network

    def _optimizer(self, model):
        c = self.config
        bert, other = [], []
        for name, p in model.named_parameters():
            if p.requires_grad:
                (bert if ".bert." in f".{name}" else other).append(p)
        disc = []
        if c.disc_lr is not None:  # the modality discriminator in its own group (its own learning rate)
            disc = [p for p in other if id(p) in {id(q) for q in self._mmin(model).cin.discriminator.parameters()}]
            other = [p for p in other if id(p) not in {id(q) for q in disc}]
        groups = [{"params": other, "lr": c.learning_rate, "weight_decay": c.weight_decay, "name": "MMIN (non-BERT)"}]
        if disc:
            groups.append({"params": disc, "lr": c.disc_lr, "weight_decay": c.weight_decay,
                           "name": "discriminator"})
        if bert:
            groups.append({"params": bert, "lr": c.learning_rate_bert, "weight_decay": c.weight_decay_bert,
                           "name": "BERT"})
        return make_adam(groups)

    def _is_better(self, cur, best):
        if not math.isfinite(cur):  # a NaN/inf epoch is never kept (else it would lock in: NaN compares False)
            return False
        if best is None:
            return True
        if self.config.KeyEval in LOWER_IS_BETTER:
            return cur <= best - 1e-6
        return cur >= best + 1e-6

    def _history_path(self):
        p = Path(self.args["model_save_path"])
        return p.with_name(p.stem + ".history.json")

    # ---- protocol ----------------------------------------------------------------------------
    def do_train(self, model, dataloader, return_epoch_results=False):
        a = self.args
        device = a["device"]
        net = self._mmin(model)
        optimizer = self._optimizer(model)
        n_batches = len(dataloader["train"])
        scheduler = make_scheduler(optimizer, self.config, n_batches)  # factor 1 throughout for the paper's
        ema = ModelEma(model, self.config.ema_decay) if self.config.ema_decay is not None else None
        # fp16 only: loss scaling against underflow (disabled, every call is the plain optimizer's)
        scaler = torch.amp.GradScaler(torch.device(device).type, enabled=self.config.precision == "fp16")
        eval_model = ema.module if ema is not None else model  # what is validated, selected and saved
        param_names = {p: n for n, p in model.named_parameters()}
        remove_stale_temps(a["model_save_path"])  # left by a run killed while saving
        self._write_config()
        max_epochs = self.config.max_epochs
        grad_clip = self.config.grad_clip or -1.0
        epoch_results = {"train": [], "valid": [], "test": []}
        epochs, best_epoch, best_valid = 0, 0, None
        ramp = self.config.adv_ramp_epochs
        monitor = (LacBandMonitor(len(net.modalities), LAC_BAND, LAC_PATIENCE) if self.config.loss_weights["beta"] > 0
                   else None)  # with beta 0 nothing trains D on the common codes: no band to hold
        self.history = []
        while True:
            epochs += 1
            model.train()
            sums = {k: 0.0 for k in LOSS_TERMS + ("Loss",)}
            y_pred, y_true = [], []
            with tqdm(dataloader["train"], desc=f"MMIN train epoch {epochs}", leave=False) as bar:
                for step, batch in enumerate(bar, start=1):
                    # DANN schedule over the first adv_ramp_epochs epochs (0 at the first step)
                    net.cin.adv_scale = adversarial_scale(epochs, step, n_batches, ramp)
                    inputs, kwargs, labels = _batch_inputs(batch, device)
                    optimizer.zero_grad()
                    with autocast_for(self.config.precision, device):
                        outputs = model(*inputs, **kwargs)
                        loss, terms = net.total_loss(outputs, labels)
                    if not torch.isfinite(loss):
                        bad = {k: float(v.detach()) for k, v in terms.items()}
                        raise NonFiniteLossError(
                            f"non-finite loss at epoch {epochs}, batch {step}/{n_batches} "
                            f"(terms: {bad}); training stopped, best checkpoint left as it was at "
                            f"{a['model_save_path']} (best epoch {best_epoch or 'none yet'})"
                        )
                    scaler.scale(loss).backward()
                    scaler.unscale_(optimizer)  # without fp16: the plain backward, and this is a no-op
                    bad_grads = nonfinite_gradients(optimizer, param_names)
                    if bad_grads and not scaler.is_enabled():  # fp16: the scaler skips the step and backs off
                        where = "; ".join(f"group '{g}': {', '.join(ns)}" for g, ns in bad_grads)
                        raise NonFiniteGradientError(
                            f"non-finite gradient at epoch {epochs}, batch {step}/{n_batches} with a finite loss "
                            f"({loss.item():.4g}) in {where}; training stopped before the optimizer step, "
                            f"best checkpoint left as it was at {a['model_save_path']} "
                            f"(best epoch {best_epoch or 'none yet'})"
                        )
                    clip_gradients(model.parameters(), grad_clip, self.config.grad_clip_mode)
                    if scaler.is_enabled():  # fp16: a step whose scaled gradients overflowed is skipped
                        scale = scaler.get_scale()
                        scaler.step(optimizer)
                        scaler.update()
                        stepped = scaler.get_scale() >= scale  # the scale backs off exactly when it skipped
                    else:
                        optimizer.step()
                        stepped = True
                    if stepped:  # the schedule and the average count optimizer steps
                        scheduler.step()
                        if ema is not None:
                            ema.update(model)
                    sums["Loss"] += loss.item()
                    for k in LOSS_TERMS:
                        sums[k] += float(terms[k].detach())
                    y_pred.append(outputs["M"].detach().float().cpu())
                    y_true.append(labels.cpu())
                    bar.set_postfix(loss=f"{loss.item():.4f}")
            means = {k: v / max(n_batches, 1) for k, v in sums.items()}
            train_results = self.metrics(torch.cat(y_pred), torch.cat(y_true))
            logger.info("TRAIN-(%s) [%d/%d/%s] >> %s", a["model_name"], epochs - best_epoch, epochs,
                        a.get("cur_seed", 1),
                        " ".join(f"{k}: {v:.4f}" for k, v in {**means, **train_results}.items()))
            val_results = self.do_test(eval_model, dataloader["valid"], mode="VAL", support=True)
            cur_valid = val_results[self.config.KeyEval]
            improved = self._is_better(cur_valid, best_valid)
            if improved:
                best_valid, best_epoch = cur_valid, epochs
                atomic_save({k: v.detach().cpu() for k, v in eval_model.state_dict().items()}, a["model_save_path"])
                atomic_save({"format": TRAIN_STATE_FORMAT, "epoch": epochs, "step": scheduler.last_epoch,
                             "best_epoch": best_epoch, "best_valid": float(best_valid),
                             "scheduler": scheduler.state_dict(), "ema_updates": ema.updates if ema else 0},
                            train_state_path(a["model_save_path"]))
            record = {"epoch": epochs, **{f"train_{k}": v for k, v in means.items()},
                      **{f"valid_{k}": float(v) for k, v in val_results.items()},
                      **{f"valid_{k}": v for k, v in self.last_eval_terms.items() if k != "L_senti"},
                      **{f"valid_support/{k}": v for k, v in self.last_support.items()},
                      "KeyEval": self.config.KeyEval, "best": improved,
                      "n_modalities": len(net.modalities), "L_ac_chance": lac_chance(len(net.modalities)),
                      "adv_scale": net.cin.adv_scale,
                      **{f"lr/{g.get('name', i)}": g["lr"] for i, g in enumerate(optimizer.param_groups)}}
            if monitor is not None:
                for split in ("train", "valid"):
                    msg = monitor.update(split, epochs, record.get(f"{split}_L_ac", float("nan")))
                    if msg:
                        logger.warning("%s", msg)
            self.history.append(record)
            self._write_history()
            if return_epoch_results:
                train_results["Loss"] = means["Loss"]
                epoch_results["train"].append(train_results)
                epoch_results["valid"].append(val_results)
                epoch_results["test"].append(self.do_test(eval_model, dataloader["test"], mode="TEST"))
            start = patience_start(self.config, best_epoch, scheduler.lr_lambdas[0].warmup_epochs)
            if epochs - start >= self.config.early_stop or (max_epochs and epochs >= max_epochs):
                return epoch_results if return_epoch_results else None

    def _write_config(self):
        try:
            context = {k: self.args[k] for k in ("model_name", "featurePath", "cur_seed", "model_save_path")
                       if k in self.args}  # MMSA's keys MMINConfig accepts: where the run came from
            atomic_write_text(config_path(self.args["model_save_path"]),
                              json.dumps(_jsonable({**self.config.to_dict(), **context}), indent=1, sort_keys=True))
        except OSError as e:  # explain then needs --config-file; never lose a training run over it
            logger.warning("could not write the run configuration: %s", e)

    def _write_history(self):
        try:
            atomic_write_text(self._history_path(), json.dumps(self.history, indent=1))
        except OSError as e:  # the history is a convenience; never lose a training run over it
            logger.warning("could not write training history: %s", e)

    def do_test(self, model, dataloader, mode="VAL", return_sample_results=False, support=False):
        """MMSA's evaluation protocol; ``support=True`` (the trainer's validation pass) also runs the
        model with ``return_attention=True`` and keeps the mean support size per CA module in
        ``self.last_support`` (the attention maps of one batch at a time are held, then dropped)."""
        device = self.args["device"]
        meter = SupportMeter() if support else None
        net = self._mmin(model)
        model.eval()
        y_pred, y_true = [], []
        ids, sample_results, all_labels, feats = [], [], [], []
        sums = {k: 0.0 for k in LOSS_TERMS}
        with torch.no_grad():
            for batch in tqdm(dataloader, desc=f"MMIN {mode.lower()}", leave=False):
                inputs, kwargs, labels = _batch_inputs(batch, device)
                with autocast_for(self.config.precision, device):
                    if meter is not None:
                        outputs = model(*inputs, **kwargs, return_attention=True)
                        attention = outputs.pop("attention", None)
                        query_mask = outputs.pop("attention_query_mask", None)
                        if attention:  # a network without attention maps has no support sizes to log
                            meter.add(attention, query_mask)
                    else:
                        outputs = model(*inputs, **kwargs)
                    _, terms = net.total_loss(outputs, labels)
                outputs["M"] = outputs["M"].float()  # MMSA's metrics and the saved predictions in float32
                for k in LOSS_TERMS:
                    sums[k] += float(terms[k].detach())
                y_pred.append(outputs["M"].cpu())
                y_true.append(labels.cpu())
                if return_sample_results:
                    ids.extend(batch["id"])
                    all_labels.extend(labels.cpu().view(-1).tolist())
                    sample_results.extend(outputs["M"].cpu().view(-1).tolist())
                    feats.append(outputs["Feature_f"].cpu().numpy())
        n = max(len(dataloader), 1)
        pred, true = torch.cat(y_pred), torch.cat(y_true)
        if not torch.isfinite(pred).all():
            raise NonFiniteLossError(f"{mode}: the model produced non-finite predictions")
        results = self.metrics(pred, true)
        results["Loss"] = round(sums["L_senti"] / n, 4)
        # The regulariser terms are logged but not returned: MMSA's results CSV takes its columns
        # from the returned keys, and rows of MMIN must line up with those of MMSA's models.
        self.last_eval_terms = {k: v / n for k, v in sums.items()}
        if meter is not None:
            self.last_support = meter.means()
        logger.info("%s-(%s) >> %s", mode, self.args["model_name"],
                    " ".join(f"{k}: {v:.4f}" for k, v in {**results, **self.last_eval_terms}.items()))
        if return_sample_results:
            import numpy as np

            results["Ids"] = ids
            results["SResults"] = sample_results
            results["Features"] = {"Feature_f": np.concatenate(feats) if feats else np.zeros((0,))}
            results["Labels"] = all_labels
        return results

