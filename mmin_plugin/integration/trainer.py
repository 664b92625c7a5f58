"""MMIN's trainer, following MMSA 2.2.1's trainer protocol.

`do_train(model, dataloader, return_epoch_results=False)` trains until `early_stop` epochs pass
without a better validation `KeyEval` (or `max_epochs`, an optional cap MMSA lacks), saving the
best weights to `model_save_path`; `do_test(model, dataloader, mode, return_sample_results=False)`
evaluates with MMSA's `MetricsTop`. Differences from MMSA's own trainers, on purpose:

* every term of eq. 6 is logged per epoch and kept in `history` (also written as JSON next to the
  checkpoint, `<model_save_path stem>.history.json`, for the training-curve figure);
* a non-finite loss stops training with `NonFiniteLossError` naming the epoch and batch, before
  any optimizer step or checkpoint write, so the best checkpoint on disk stays the last good one;
* checkpoints are written atomically (temporary file, then rename).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from torch import nn, optim
from tqdm import tqdm

from ..atomic import atomic_write, atomic_write_text
from ..constants import LOWER_IS_BETTER
from ..errors import NonFiniteLossError
from ..modeling.config import MMINConfig

logger = logging.getLogger("MMSA")

__all__ = ["MMINTrainer", "atomic_save"]

LOSS_TERMS = ("L_senti", "L_sep", "L_ac", "L_ap")


def atomic_save(obj, path) -> None:
    """torch.save through a temporary sibling file renamed over `path` (see atomic.py)."""
    atomic_write(path, lambda f: torch.save(obj, f))


def _batch_inputs(batch, device):
    text = batch["text"].to(device)
    audio = batch["audio"].to(device)
    vision = batch["vision"].to(device)
    kwargs = {}
    if "audio_lengths" in batch:
        kwargs["audio_lengths"] = torch.as_tensor(batch["audio_lengths"]).to(device)
    if "vision_lengths" in batch:
        kwargs["vision_lengths"] = torch.as_tensor(batch["vision_lengths"]).to(device)
    labels = batch["labels"]["M"].to(device).view(-1, 1)
    return (text, audio, vision), kwargs, labels


class MMINTrainer:
    def __init__(self, args):
        from MMSA.utils import MetricsTop

        self.args = args
        self.config = MMINConfig.from_args(args)  # MMIN's keys, validated; MMSA's run state stays in args
        self.metrics = MetricsTop("regression").getMetics(self.config.dataset_name.upper())
        self.criterion = nn.MSELoss()
        self.history = []
        self.last_eval_terms = {}

    # ---- helpers -----------------------------------------------------------------------------
    def _mmin(self, model):
        return model.Model if hasattr(model, "Model") else model  # AMIO wraps the network

    def _optimizer(self, model):
        c = self.config
        bert, other = [], []
        for name, p in model.named_parameters():
            if p.requires_grad:
                (bert if ".bert." in f".{name}" else other).append(p)
        groups = [{"params": other, "lr": c.learning_rate, "weight_decay": c.weight_decay}]
        if bert:
            groups.append({"params": bert, "lr": c.learning_rate_bert, "weight_decay": c.weight_decay_bert})
        return optim.Adam(groups)

    def _is_better(self, cur, best):
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
        max_epochs = self.config.max_epochs
        grad_clip = self.config.grad_clip or -1.0
        epoch_results = {"train": [], "valid": [], "test": []}
        epochs, best_epoch, best_valid = 0, 0, None
        self.history = []
        while True:
            epochs += 1
            model.train()
            sums = {k: 0.0 for k in LOSS_TERMS + ("Loss",)}
            y_pred, y_true = [], []
            n_batches = len(dataloader["train"])
            with tqdm(dataloader["train"], desc=f"MMIN train epoch {epochs}", leave=False) as bar:
                for step, batch in enumerate(bar, start=1):
                    inputs, kwargs, labels = _batch_inputs(batch, device)
                    optimizer.zero_grad()
                    outputs = model(*inputs, **kwargs)
                    loss, terms = net.total_loss(outputs, labels)
                    if not torch.isfinite(loss):
                        bad = {k: float(v.detach()) for k, v in terms.items()}
                        raise NonFiniteLossError(
                            f"non-finite loss at epoch {epochs}, batch {step}/{n_batches} "
                            f"(terms: {bad}); training stopped, best checkpoint left as it was at "
                            f"{a['model_save_path']} (best epoch {best_epoch or 'none yet'})"
                        )
                    loss.backward()
                    if grad_clip > 0:
                        nn.utils.clip_grad_value_([p for p in model.parameters() if p.requires_grad], grad_clip)
                    optimizer.step()
                    sums["Loss"] += loss.item()
                    for k in LOSS_TERMS:
                        sums[k] += float(terms[k].detach())
                    y_pred.append(outputs["M"].detach().cpu())
                    y_true.append(labels.cpu())
                    bar.set_postfix(loss=f"{loss.item():.4f}")
            means = {k: v / max(n_batches, 1) for k, v in sums.items()}
            train_results = self.metrics(torch.cat(y_pred), torch.cat(y_true))
            logger.info(
                f"TRAIN-({a['model_name']}) [{epochs - best_epoch}/{epochs}/{a.get('cur_seed', 1)}] >> "
                + " ".join(f"{k}: {v:.4f}" for k, v in means.items())
                + " " + " ".join(f"{k}: {v:.4f}" for k, v in train_results.items())
            )
            val_results = self.do_test(model, dataloader["valid"], mode="VAL")
            cur_valid = val_results[self.config.KeyEval]
            improved = self._is_better(cur_valid, best_valid)
            if improved:
                best_valid, best_epoch = cur_valid, epochs
                atomic_save({k: v.detach().cpu() for k, v in model.state_dict().items()}, a["model_save_path"])
            record = {"epoch": epochs, **{f"train_{k}": v for k, v in means.items()},
                      **{f"valid_{k}": float(v) for k, v in val_results.items()},
                      **{f"valid_{k}": v for k, v in self.last_eval_terms.items() if k != "L_senti"},
                      "KeyEval": self.config.KeyEval, "best": improved}
            self.history.append(record)
            self._write_history()
            if return_epoch_results:
                train_results["Loss"] = means["Loss"]
                epoch_results["train"].append(train_results)
                epoch_results["valid"].append(val_results)
                epoch_results["test"].append(self.do_test(model, dataloader["test"], mode="TEST"))
            if epochs - best_epoch >= self.config.early_stop or (max_epochs and epochs >= max_epochs):
                return epoch_results if return_epoch_results else None

    def _write_history(self):
        try:
            atomic_write_text(self._history_path(), json.dumps(self.history, indent=1))
        except OSError as e:  # the history is a convenience; never lose a training run over it
            logger.warning(f"could not write training history: {e}")

    def do_test(self, model, dataloader, mode="VAL", return_sample_results=False):
        device = self.args["device"]
        net = self._mmin(model)
        model.eval()
        y_pred, y_true = [], []
        ids, sample_results, all_labels, feats = [], [], [], []
        sums = {k: 0.0 for k in LOSS_TERMS}
        with torch.no_grad():
            for batch in tqdm(dataloader, desc=f"MMIN {mode.lower()}", leave=False):
                inputs, kwargs, labels = _batch_inputs(batch, device)
                outputs = model(*inputs, **kwargs)
                _, terms = net.total_loss(outputs, labels)
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
        logger.info(f"{mode}-({self.args['model_name']}) >> "
                    + " ".join(f"{k}: {v:.4f}" for k, v in {**results, **self.last_eval_terms}.items()))
        if return_sample_results:
            import numpy as np

            results["Ids"] = ids
            results["SResults"] = sample_results
            results["Features"] = {"Feature_f": np.concatenate(feats) if feats else np.zeros((0,))}
            results["Labels"] = all_labels
        return results

