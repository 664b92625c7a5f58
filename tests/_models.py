"""Small MMIN configurations and batches for unit tests."""
import json
from pathlib import Path

import torch

REGISTRY = Path(__file__).resolve().parent.parent / "registry.json"


def make_args(bert_dir, dataset="mosi", **over):
    reg = json.loads(REGISTRY.read_text())["regression"]["mmin"]
    args = dict(reg["commonParams"])
    args.update(reg["datasetParams"][dataset])
    args.update(pretrained=bert_dir, feature_dims=[768, 5, 7], d_model=16, nheads=4, fine_layers=2,
                fusion_ff_dim=32, disc_hidden=8, dropout=0.1, alpha=1e-3, beta=0.1, gamma=0.1)
    args.update(over)
    return args


def make_batch(seed=0, batch=4, L=10, La=13, Lv=11, da=5, dv=7, vocab=100):
    g = torch.Generator().manual_seed(seed)
    lengths_t = torch.randint(3, L + 1, (batch,), generator=g)
    mask = (torch.arange(L)[None] < lengths_t[:, None]).float()
    ids = torch.randint(5, vocab, (batch, L), generator=g).float() * mask
    text = torch.stack([ids, mask, torch.zeros(batch, L)], 1)
    al = torch.randint(1, La + 1, (batch,), generator=g)
    vl = torch.randint(1, Lv + 1, (batch,), generator=g)
    al[0], vl[0] = La, Lv
    audio = torch.randn(batch, La, da, generator=g)
    video = torch.randn(batch, Lv, dv, generator=g)
    for b in range(batch):
        audio[b, al[b]:] = 0
        video[b, vl[b]:] = 0
    y = torch.rand(batch, 1, generator=g) * 6 - 3
    return text, audio, video, al, vl, y
