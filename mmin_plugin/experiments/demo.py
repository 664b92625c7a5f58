"""The offline demo: demo data (made if missing) -> `MMSA_run('mmin', ...)` -> MMSA's metrics,
next to the score of predicting the training mean, so one can see the model learnt something.

``make_tiny_bert(out_dir, language='en', seed=0) -> Path``: a tiny randomly initialised
``transformers.BertModel`` (:data:`TINY_BERT`) saved with ``save_pretrained``, plus ``vocab.txt``
and the tokenizer files, so that ``BertModel.from_pretrained(dir)`` and
``BertTokenizer.from_pretrained(dir)`` (what MMSA's ``BertTextEncoder`` calls) work offline.
``ensure_demo(out_dir, dataset='mosi', **kw) -> dict``: that BERT and a feature file of
:func:`~mmin_plugin.features.synthetic.make_demo_features` (if missing or made with other
parameters); returns ``{'feature_path': ..., 'bert_dir': ...}``.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np

from .. import datasets
from ..atomic import atomic_write_text, tmp_sibling
from ..constants import METRIC_ORDER
from ..features.synthetic import demo_vocab, make_demo_features

# Small enough to train in a few minutes on 2 CPU cores with full-length MOSI sequences.
DEMO_CONFIG = {"d_model": 64, "nheads": 8, "fine_layers": 1, "fusion_ff_dim": 128, "batch_size": 16,
               "learning_rate": 2e-3, "learning_rate_bert": 1e-3, "early_stop": 3}

TINY_BERT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                 intermediate_size=64, max_position_embeddings=64, type_vocab_size=2)



def make_tiny_bert(out_dir, language="en", seed=0) -> Path:
    """Write a tiny, randomly initialised BERT (model + tokenizer) to ``out_dir`` and return it.

    ``out_dir`` is built in a temporary sibling directory and renamed into place when it does
    not exist yet; an existing directory gets its files (config.json, model.safetensors,
    vocab.txt, tokenizer.json, tokenizer_config.json) overwritten.  The global torch RNG state
    is left untouched.
    """
    import torch
    from transformers import BertConfig, BertModel, BertTokenizer

    vocab = demo_vocab(language)
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    fresh = not out_dir.exists()
    work = tmp_sibling(out_dir) if fresh else out_dir
    if fresh:
        work.mkdir()  # plain mkdir (not mkdtemp): the usual umask permissions
    try:
        config = BertConfig(vocab_size=len(vocab), pad_token_id=0, **TINY_BERT)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = BertModel(config)
        model.save_pretrained(work)
        atomic_write_text(work / "vocab.txt", "\n".join(vocab) + "\n")
        tok = BertTokenizer.from_pretrained(str(work))
        tok.save_pretrained(str(work))  # tokenizer.json + tokenizer_config.json (not vocab.txt in 5.x)
        if not (work / "vocab.txt").exists():  # pragma: no cover - older transformers rewrite it
            atomic_write_text(work / "vocab.txt", "\n".join(vocab) + "\n")
        if fresh:
            try:
                os.rename(work, out_dir)
            except OSError:
                # Someone else created out_dir meanwhile: keep theirs if complete.
                shutil.rmtree(work, ignore_errors=True)
                if not _bert_complete(out_dir):
                    raise
    except BaseException:
        if fresh and work.exists():
            shutil.rmtree(work, ignore_errors=True)
        raise
    return out_dir


def _bert_complete(d: Path) -> bool:
    d = Path(d)
    return all((d / f).is_file() for f in ("config.json", "model.safetensors", "vocab.txt"))


# ----------------------------------------------------------------------------------------------
# Feature files
# ----------------------------------------------------------------------------------------------



def ensure_demo(out_dir, dataset="mosi", **kw) -> dict:
    """Create (if missing) the demo feature file and tiny BERT under ``out_dir``; idempotent.

    Layout: ``out_dir/bert-tiny-{en,cn}/`` and
    ``out_dir/{MOSI,MOSEI,SIMS}/unaligned_{L}[_corrupt][_leftpad].pkl``
    with a ``.json`` sidecar recording the parameters; the file is rebuilt when they differ.
    Keyword arguments go to :func:`make_demo_features` (``bert_dir`` defaults to the tiny BERT;
    ``bert_seed`` seeds the tiny BERT).  Returns ``{'feature_path': str, 'bert_dir': str}``.
    """
    spec = datasets.get(dataset)
    dataset = spec.name
    out_dir = Path(out_dir)
    language = spec.language
    bert_seed = kw.pop("bert_seed", 0)
    bert_dir = kw.pop("bert_dir", None)
    if bert_dir is None:
        bert_dir = out_dir / f"bert-tiny-{language}"
        if not _bert_complete(bert_dir):
            make_tiny_bert(bert_dir, language=language, seed=bert_seed)
    seq_lens = kw.get("seq_lens")
    L = spec.seq_lens[0] if seq_lens is None else seq_lens[0]
    name = f"unaligned_{L}" + ("_corrupt" if kw.get("corrupt") else "") + ("_leftpad" if kw.get("left_pad") else "") \
        + ".pkl"
    feature_path = out_dir / dataset.upper() / name
    meta_path = feature_path.with_suffix(".json")
    meta = {"dataset": dataset, "bert_dir": str(Path(bert_dir).resolve()),
            **{k: (list(v) if isinstance(v, tuple) else v) for k, v in sorted(kw.items())}}
    meta_text = json.dumps(meta, sort_keys=True, default=str)
    current = meta_path.read_text(encoding="utf-8") if meta_path.is_file() else None
    if not feature_path.is_file() or current != meta_text:
        make_demo_features(feature_path, dataset=dataset, bert_dir=bert_dir, **kw)
        atomic_write_text(meta_path, meta_text)
    return {"feature_path": str(feature_path), "bert_dir": str(bert_dir)}


def mean_baseline(feature_path) -> dict:
    """Test MAE/Acc of always predicting the training-set mean label."""
    from ..features.load import safe_load

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
