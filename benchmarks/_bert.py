"""Local, randomly initialised BERT encoders for the benchmarks (never downloads anything).

* ``ensure_bert_base(dir)``: BERT-base-sized (12 layers, hidden 768, 12 heads, intermediate 3072,
  vocab 30522, 512 positions), random weights, written once with ``save_pretrained`` plus a
  ``vocab.txt`` (MMSA's ``BertTextEncoder`` also loads a tokenizer). Same cost per step as
  ``bert-base-uncased``: only the weights' values differ.
* ``ensure_tiny_bert(dir)``: the project's demo BERT (``mmin_plugin.experiments.demo.make_tiny_bert``).

Both are cached: an existing complete directory with the expected config is reused.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

BERT_BASE = dict(vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                 intermediate_size=3072, max_position_embeddings=512, type_vocab_size=2)
_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def _complete(d: Path, expect: dict | None = None) -> bool:
    if not all((d / f).is_file() for f in ("config.json", "model.safetensors", "vocab.txt")):
        return False
    if expect:
        try:
            cfg = json.loads((d / "config.json").read_text())
        except (OSError, ValueError):
            return False
        return all(cfg.get(k) == v for k, v in expect.items())
    return True


def ensure_bert_base(out_dir, seed: int = 0) -> Path:
    out_dir = Path(out_dir)
    if _complete(out_dir, BERT_BASE):
        return out_dir
    import torch
    from transformers import BertConfig, BertModel

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            BertModel(BertConfig(pad_token_id=0, **BERT_BASE)).save_pretrained(work)
        words = _SPECIALS + [f"w{i}" for i in range(BERT_BASE["vocab_size"] - len(_SPECIALS))]
        (work / "vocab.txt").write_text("\n".join(words) + "\n", encoding="utf-8")
        shutil.rmtree(out_dir, ignore_errors=True)
        os.rename(work, out_dir)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out_dir


def ensure_tiny_bert(out_dir) -> Path:
    out_dir = Path(out_dir)
    if _complete(out_dir):
        return out_dir
    from mmin_plugin.experiments.demo import make_tiny_bert

    return make_tiny_bert(out_dir)


def vocab_size(bert_dir) -> int:
    return int(json.loads((Path(bert_dir) / "config.json").read_text())["vocab_size"])
