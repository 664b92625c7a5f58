"""The one builder of synthetic MMSA inputs for the tests (file-level demo data comes from
`mmin_plugin.features.synthetic`, through the fixtures in conftest.py).

* `make_features`: a small MMSA-Standard feature dict (NumPy only, fast), as `pickle.load` gives it;
* `make_args` / `make_trainer_args`: MMSA-style args for a tiny MMIN (registry.json defaults);
* `make_batch` / `make_loader`: model inputs as MMSA's data loader hands them to the trainer.
"""
import json
from pathlib import Path

import numpy as np
import torch

SPLITS = ("train", "valid", "test")
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


def make_loader(n_batches, seed=0):
    batches = []
    for i in range(n_batches):
        text, audio, video, al, vl, y = make_batch(seed=seed + i)
        batches.append({"text": text, "audio": audio, "vision": video, "audio_lengths": al, "vision_lengths": vl,
                        "labels": {"M": y}, "id": [f"s{i}_{j}" for j in range(len(y))]})
    return batches


def make_trainer_args(tmp_path, tiny_bert, **over):
    args = make_args(tiny_bert, **over)
    args.update(dataset_name="mosi", model_name="mmin", device=torch.device("cpu"), KeyEval="Loss",
                early_stop=5, max_epochs=3, model_save_path=tmp_path / "mmin-mosi.pth", cur_seed=1)
    return args


def make_features(n=(4, 3, 3), L=6, La=8, Lv=7, dt=768, da=5, dv=20, sims=False, seed=0,
              with_text=True):
    rng = np.random.default_rng(seed)
    data = {}
    for split, k in zip(SPLITS, n):
        tl = rng.integers(2, L + 1, k)
        ids = np.zeros((k, L))
        mask = np.zeros((k, L))
        for i, t in enumerate(tl):
            ids[i, :t] = rng.integers(5, 100, t)
            mask[i, :t] = 1
        al, vl = rng.integers(1, La + 1, k), rng.integers(1, Lv + 1, k)
        audio = rng.standard_normal((k, La, da)).astype(np.float32)
        vision = rng.standard_normal((k, Lv, dv)).astype(np.float32)
        for i in range(k):
            audio[i, al[i]:] = 0
            vision[i, vl[i]:] = 0
        lab_max = 1.0 if sims else 3.0
        s = {
            "id": np.array([f"vid{i}$_${i}" for i in range(k)]),
            "raw_text": np.array(["good movie"] * k),
            "text_bert": np.stack([ids, mask, np.zeros((k, L))], axis=1),
            "audio": audio,
            "vision": vision,
            "audio_lengths": [int(x) for x in al],
            "vision_lengths": [int(x) for x in vl],
            "regression_labels": rng.uniform(-lab_max, lab_max, k).astype(np.float32),
            "annotations": ["Neutral"] * k,
        }
        if with_text:
            s["text"] = (rng.standard_normal((k, L, dt)) * mask[..., None]).astype(np.float32)
        if sims:
            for m in "TAV":
                s["regression_labels_" + m] = rng.uniform(-1, 1, k).astype(np.float32)
        data[split] = s
    return data


def make_clips(root, n=24, da=7, dv=11, seed=0, splits=(14, 5, 5)):
    """Your own dataset as `features build` reads it: `root/clips.csv` (id, text, label, split) and
    per-clip arrays `root/audio/<id>.npy` (T, da), `root/video/<id>.npy` (T, dv), lengths varying,
    label-dependent (words of the demo vocabulary; audio up, video down with the label)."""
    import csv

    root = Path(root)
    (root / "audio").mkdir(parents=True, exist_ok=True)
    (root / "video").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    pos, neg = "good great love happy".split(), "bad awful hate sad".split()
    split_of = [s for s, k in zip(SPLITS, splits) for _ in range(k)]
    rows = []
    for i in range(n):
        y = float(np.round(rng.uniform(-2.5, 2.5), 1))
        words = rng.choice(pos if y > 0 else neg, 1 + int(abs(y)))
        cid = f"clip{i:03d}"
        rows.append({"id": cid, "text": "the movie was " + " ".join(words), "label": y,
                     "split": split_of[i % len(split_of)]})
        np.save(root / "audio" / f"{cid}.npy", (rng.normal(size=(int(rng.integers(3, 12)), da)) + y).astype(np.float32))
        np.save(root / "video" / f"{cid}.npy", (rng.normal(size=(int(rng.integers(2, 9)), dv)) - y).astype(np.float32))
    with open(root / "clips.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["id", "text", "label", "split"])
        w.writeheader()
        w.writerows(rows)
    return root
