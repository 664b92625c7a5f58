"""The offline demo: demo data (made if missing) -> `MMSA_run('mmin', ...)` -> MMSA's metrics,
next to the score of predicting the training mean, so one can see the model learnt something."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..constants import METRIC_ORDER

# Small enough to train in a few minutes on 2 CPU cores with full-length MOSI sequences.
DEMO_CONFIG = {"d_model": 64, "nheads": 8, "fine_layers": 1, "fusion_ff_dim": 128, "batch_size": 16,
               "learning_rate": 2e-3, "learning_rate_bert": 1e-3, "early_stop": 3}



def mean_baseline(feature_path) -> dict:
    """Test MAE/Acc of always predicting the training-set mean label."""
    from ..integration.safeload import safe_load

    data = safe_load(feature_path)
    y_train = np.asarray(data["train"]["regression_labels"], dtype=np.float64)
    y_test = np.asarray(data["test"]["regression_labels"], dtype=np.float64)
    mean = float(y_train.mean())
    return {"train_mean": mean, "MAE": float(np.abs(y_test - mean).mean())}


def format_table(rows, title) -> str:
    """Markdown table of [(name, metrics dict), ...] in MMSA's metric names."""
    keys = [k for k in METRIC_ORDER if k != "Loss" and any(k in r for _, r in rows)]
    out = [f"| {title} | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for name, r in rows:
        out.append(f"| {name} | " + " | ".join(f"{float(r[k]):.4f}" if k in r else "-" for k in keys) + " |")
    return "\n".join(out)


def run_demo(out_dir="mmin-demo", dataset="mosi", max_epochs=6, seed=1111, corrupt=False, overrides=None):
    from ..integration.runner import mmsa_run
    from .data import ensure_demo

    out = Path(out_dir).resolve()
    paths = ensure_demo(out / ("data-corrupt" if corrupt else "data"), dataset=dataset, corrupt=corrupt)
    config = dict(DEMO_CONFIG, featurePath=str(Path(paths["feature_path"]).resolve()),
                  pretrained=str(Path(paths["bert_dir"]).resolve()), max_epochs=max_epochs)
    config.update(overrides or {})
    results = mmsa_run("mmin", dataset, config=config, seeds=[seed], gpu_ids=[], num_workers=0,
                       model_save_dir=out / "saved_models", res_save_dir=out / "results", log_dir=out / "logs")
    base = mean_baseline(paths["feature_path"])
    print()
    print(f"MMIN on the {dataset.upper()} demo data (seed {seed}, at most {max_epochs} epochs), MMSA's test metrics:")
    print(format_table([("MMIN", results[-1])], "model"))
    print(f"\npredicting the training mean ({base['train_mean']:.3f}) gives test MAE {base['MAE']:.4f}; "
          f"MMIN's test MAE is {results[-1]['MAE']:.4f}")
    print(f"results CSV: {out / 'results' / 'normal' / (dataset + '.csv')}")
    return results[-1], base
