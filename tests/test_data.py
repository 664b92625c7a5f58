"""features/synthetic.py and experiments/demo.py: the MMSA-Standard-shaped demo feature files, the tiny BERT."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pickle  # noqa: E402
import stat  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from mmin_plugin import datasets  # noqa: E402
from mmin_plugin.errors import MMINConfigError  # noqa: E402
from mmin_plugin.experiments import demo as bundle  # noqa: E402
from mmin_plugin.features import synthetic as demo  # noqa: E402
from mmin_plugin.features.load import clear_cache, safe_load  # noqa: E402
from mmin_plugin.features.validation import sanitize_features, validate_features  # noqa: E402

SHORT = (12, 20, 15)
SPLITS = ("train", "valid", "test")


@pytest.fixture(scope="module")
def berts(tmp_path_factory):
    root = tmp_path_factory.mktemp("berts")
    return {lang: str(bundle.make_tiny_bert(root / f"bert-{lang}", language=lang))
            for lang in ("en", "cn")}


def _lang(dataset):
    return datasets.get(dataset).language


# --- tiny BERT ------------------------------------------------------------------------------------

@pytest.mark.parametrize("lang", ["en", "cn"])
def test_tiny_bert_loads_offline_like_mmsa(berts, lang):
    import torch
    from MMSA.models.subNets.BertTextEncoder import BertTextEncoder
    from transformers import AutoTokenizer, BertModel, BertTokenizer

    d = berts[lang]
    assert {"config.json", "model.safetensors", "vocab.txt"} <= set(os.listdir(d))
    model = BertModel.from_pretrained(d)
    tok = BertTokenizer.from_pretrained(d)
    assert model.config.hidden_size == 32 and model.config.num_hidden_layers == 2
    assert model.config.num_attention_heads == 2 and model.config.intermediate_size == 64
    assert model.config.max_position_embeddings == 64
    vocab = demo.demo_vocab(lang)
    assert vocab[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert len(vocab) >= 150 and len(set(vocab)) == len(vocab) == len(tok)
    assert tok.pad_token_id == 0 and tok.cls_token_id == 2 and tok.sep_token_id == 3
    pos, neg, _, _ = demo._word_lists(lang)
    text = ("Good " + " ".join(pos[:3] + neg[:3])) if lang == "en" else "".join(pos[:3] + neg[:3])
    toks = tok.tokenize(text)
    assert "[UNK]" not in toks and len(toks) >= 6
    assert type(AutoTokenizer.from_pretrained(d)).__name__.startswith("Bert")

    enc = BertTextEncoder(use_finetune=False, transformers="bert", pretrained=d)
    ids = tok([text], padding="max_length", max_length=16, return_tensors="pt")
    x = torch.stack([ids["input_ids"], ids["attention_mask"], ids["token_type_ids"]], 1).float()
    out = enc(x)
    assert tuple(out.shape) == (1, 16, 32) and torch.isfinite(out).all()


def test_tiny_bert_seeded_and_leaves_global_rng(tmp_path):
    import torch
    from transformers import BertModel

    state = torch.get_rng_state()
    a = bundle.make_tiny_bert(tmp_path / "a", seed=1)
    b = bundle.make_tiny_bert(tmp_path / "b", seed=1)
    c = bundle.make_tiny_bert(tmp_path / "c", seed=2)
    assert torch.equal(state, torch.get_rng_state())
    wa, wb, wc = (BertModel.from_pretrained(str(p)).state_dict() for p in (a, b, c))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not all(torch.equal(wa[k], wc[k]) for k in wa)
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]
    # an existing directory is refreshed in place
    bundle.make_tiny_bert(a, seed=1)
    assert (a / "vocab.txt").is_file()


# --- feature files ---------------------------------------------------------------------------------

def _check_layout(data, dataset, seq_lens, n, tokenizer, corrupt=False):
    L, La, Lv = seq_lens
    _, da, dv = datasets.get(dataset).feature_dims
    lab = datasets.get(dataset).label_max
    assert list(data) == list(SPLITS)
    for split, k in zip(SPLITS, n):
        s = data[split]
        expected = {"id", "raw_text", "text", "text_bert", "audio", "vision", "audio_lengths",
                    "vision_lengths", "regression_labels", "classification_labels",
                    "annotations"}
        if dataset == "sims":
            expected |= {f"{p}_labels_{m}" for p in ("regression", "classification")
                         for m in "TAV"}
        assert set(s) == expected
        assert s["id"].dtype.kind == "U" and s["id"].shape == (k,)
        assert all("$_$" in i for i in s["id"])
        assert s["raw_text"].dtype.kind == "U" and s["raw_text"].shape == (k,)
        assert s["text"].dtype == np.float32 and s["text"].shape == (k, L, 768)
        assert s["text_bert"].dtype == np.float64 and s["text_bert"].shape == (k, 3, L)
        assert s["audio"].dtype == np.float32 and s["audio"].shape == (k, La, da)
        assert s["vision"].dtype == np.float32 and s["vision"].shape == (k, Lv, dv)
        for key, maxlen in (("audio_lengths", La), ("vision_lengths", Lv)):
            lens = s[key]
            assert isinstance(lens, list) and len(lens) == k
            assert all(type(x) is int and (0 if corrupt else 1) <= x <= maxlen for x in lens)
        y = s["regression_labels"]
        assert y.dtype == np.float32 and y.shape == (k,)
        assert np.all(np.abs(y) <= lab)
        cls = s["classification_labels"]
        assert cls.dtype == np.float32 and set(np.unique(cls)) <= {0.0, 1.0, 2.0}
        np.testing.assert_array_equal(cls, np.where(y == 0, 1, np.where(y < 0, 0, 2)))
        assert isinstance(s["annotations"], list)
        assert s["annotations"] == [["Negative", "Neutral", "Positive"][int(c)] for c in cls]
        if dataset == "sims":
            for m in "TAV":
                u = s["regression_labels_" + m]
                assert u.dtype == np.float32 and u.shape == (k,) and np.all(np.abs(u) <= 1)
        # text_bert: ids of raw_text by the tokenizer, 0/1 mask, zero segment ids
        enc = tokenizer(list(s["raw_text"]), padding="max_length", truncation=True, max_length=L)
        np.testing.assert_array_equal(s["text_bert"][:, 0], np.asarray(enc["input_ids"]))
        np.testing.assert_array_equal(s["text_bert"][:, 1], np.asarray(enc["attention_mask"]))
        assert not s["text_bert"][:, 2].any()
        mask = s["text_bert"][:, 1] > 0
        assert not s["text"][~mask].any() and np.all(np.abs(s["text"][mask]).sum(-1) > 0)
        # zero padding after the lengths
        for key in ("audio", "vision"):
            for i, t in enumerate(s[key + "_lengths"]):
                assert not np.nan_to_num(s[key][i, t:], neginf=0.0).any()
        if not corrupt:
            for key in ("text", "audio", "vision"):
                assert np.isfinite(s[key]).all()


@pytest.mark.parametrize("dataset", ["mosi", "mosei", "sims"])
def test_shrunk_layout_and_validation(berts, tmp_path, dataset):
    from transformers import BertTokenizer

    n = (10, 4, 5)
    p = demo.make_demo_features(tmp_path / "f.pkl", dataset=dataset, n_train=n[0],
                                n_valid=n[1], n_test=n[2], seq_lens=SHORT,
                                bert_dir=berts[_lang(dataset)])
    with open(p, "rb") as f:
        data = pickle.load(f)
    tok = BertTokenizer.from_pretrained(berts[_lang(dataset)])
    _check_layout(data, dataset, SHORT, n, tok)
    summary = validate_features(data, p, dataset_name=dataset)
    assert summary["train"]["seq_lens"] == SHORT
    assert 1 in data["train"]["audio_lengths"] and 1 in data["train"]["vision_lengths"]
    # without bert_dir the demo vocabulary gives the same ids
    q = demo.make_demo_features(tmp_path / "g.pkl", dataset=dataset, n_train=n[0],
                                n_valid=n[1], n_test=n[2], seq_lens=SHORT)
    with open(q, "rb") as f:
        other = pickle.load(f)
    np.testing.assert_array_equal(other["test"]["text_bert"], data["test"]["text_bert"])


@pytest.mark.parametrize("dataset", ["mosi", "mosei", "sims"])
def test_real_layout_validates_roundtrips_and_loads_in_mmsa(berts, tmp_path, dataset,
                                                            monkeypatch):
    import MMSA.data_loader as dl
    from easydict import EasyDict as edict
    from transformers import BertTokenizer

    layout = datasets.get(dataset)
    p = demo.make_demo_features(tmp_path / os.path.basename(layout.feature_path), dataset=dataset, n_train=4,
                                n_valid=2, n_test=3, bert_dir=berts[_lang(dataset)])
    with open(p, "rb") as f:
        plain = pickle.load(f)
    _check_layout(plain, dataset, layout.seq_lens, (4, 2, 3),
                  BertTokenizer.from_pretrained(berts[_lang(dataset)]))
    clear_cache()
    safe = safe_load(p)
    for split in SPLITS:
        for k, v in plain[split].items():
            if isinstance(v, np.ndarray):
                assert v.dtype == safe[split][k].dtype
                np.testing.assert_array_equal(v, safe[split][k])
            else:
                assert v == safe[split][k]
    validate_features(safe, p, dataset_name=dataset)
    clear_cache()

    L, La, Lv = layout.seq_lens
    _, da, dv = layout.feature_dims
    args = edict(dataset_name=dataset, featurePath=str(p), custom_feature=None, feature_T=None,
                 feature_A="", feature_V="", use_bert=True, need_data_aligned=False,
                 feature_dims=[768, 0, 0], seq_lens=[0, 0, 0], batch_size=2)
    loaders = dl.MMDataLoader(args, 0)
    assert tuple(args["seq_lens"]) == (L, La, Lv)
    assert list(args["feature_dims"]) == [768, da, dv]
    batch = next(iter(loaders["test"]))
    assert tuple(batch["text"].shape) == (2, 3, L)
    assert tuple(batch["audio"].shape) == (2, La, da)
    assert tuple(batch["vision"].shape) == (2, Lv, dv)
    assert tuple(batch["labels"]["M"].shape) == (2, 1)
    if dataset == "sims":
        assert set(batch["labels"]) == {"M", "T", "A", "V"}
    assert tuple(batch["audio_lengths"].shape) == (2,) and len(batch["id"]) == 2


def test_corrupt_option(berts, tmp_path):
    p = demo.make_demo_features(tmp_path / "bad.pkl", dataset="mosi", n_train=12, n_valid=6,
                                n_test=6, seq_lens=SHORT, corrupt=True, bert_dir=berts["en"])
    with open(p, "rb") as f:
        data = pickle.load(f)
    from transformers import BertTokenizer

    _check_layout(data, "mosi", SHORT, (12, 6, 6), BertTokenizer.from_pretrained(berts["en"]),
                  corrupt=True)
    for split in SPLITS:
        for key in ("audio", "vision"):
            a = data[split][key]
            assert np.isnan(a).any() and np.isposinf(a).any() and np.isneginf(a).any(), \
                (split, key)
            lens = data[split][key + "_lengths"]
            assert 0 in lens
            for i, t in enumerate(lens):
                if t == 0:
                    assert not a[i].any()
        assert np.isfinite(data[split]["text"]).all()
    summary = validate_features(data, p)
    assert summary["train"]["zero_audio_lengths"] >= 1
    with pytest.warns(RuntimeWarning, match="non-finite"):
        counts = sanitize_features(data, p)
    assert set(counts) == set(SPLITS)
    for split in SPLITS:
        assert np.isfinite(data[split]["audio"]).all() and np.isfinite(data[split]["vision"]).all()


def _pool(x, lens):
    out = np.zeros((x.shape[0], x.shape[2]))
    for i, t in enumerate(lens):
        if t > 0:
            out[i] = x[i, :t].mean(0)
    return out


def _ridge_test_corr(xtr, ytr, xte, yte, lam=10.0):
    mu, sd = xtr.mean(0), xtr.std(0) + 1e-6
    a, b = (xtr - mu) / sd, (xte - mu) / sd
    w = np.linalg.solve(a.T @ a + lam * np.eye(a.shape[1]), a.T @ (ytr - ytr.mean()))
    pred = b @ w + ytr.mean()
    return np.corrcoef(pred, yte)[0, 1], np.abs(pred - yte).mean(), np.abs(ytr.mean() - yte).mean()


@pytest.mark.parametrize("dataset", ["mosi", "sims"])
def test_every_modality_carries_a_learnable_signal(tmp_path, dataset):
    p = demo.make_demo_features(tmp_path / "f.pkl", dataset=dataset, n_train=96, n_valid=4,
                                n_test=48, seq_lens=(16, 24, 20), seed=3)
    with open(p, "rb") as f:
        data = pickle.load(f)
    tr, te = data["train"], data["test"]
    ytr, yte = tr["regression_labels"], te["regression_labels"]
    tl = lambda s: s["text_bert"][:, 1].sum(1).astype(int)  # noqa: E731
    feats = {
        "text": lambda s: _pool(s["text"], tl(s)),
        "audio": lambda s: _pool(s["audio"], s["audio_lengths"]),
        "vision": lambda s: _pool(s["vision"], s["vision_lengths"]),
    }
    for name, f in feats.items():
        corr, mae, mae_mean = _ridge_test_corr(f(tr), ytr, f(te), yte)
        assert corr > 0.5, (name, corr)
        assert mae < 0.8 * mae_mean, (name, mae, mae_mean)
    # the words themselves: positive minus negative word counts follow the label
    pos, neg, _, _ = demo._word_lists(_lang(dataset))
    if dataset == "mosi":
        score = [sum(w in pos for w in t.lower().split()) - sum(w in neg for w in t.lower().split())
                 for t in tr["raw_text"]]
        assert np.corrcoef(score, ytr)[0, 1] > 0.7


def test_deterministic_and_seeded(tmp_path):
    kw = dict(dataset="sims", n_train=5, n_valid=2, n_test=2, seq_lens=SHORT)
    a = demo.make_demo_features(tmp_path / "a.pkl", seed=4, **kw)
    b = demo.make_demo_features(tmp_path / "b.pkl", seed=4, **kw)
    c = demo.make_demo_features(tmp_path / "c.pkl", seed=5, **kw)
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()


def test_bad_arguments(tmp_path):
    with pytest.raises(MMINConfigError, match="dataset"):
        demo.make_demo_features(tmp_path / "x.pkl", dataset="iemocap")
    with pytest.raises(MMINConfigError, match="seq_lens"):
        demo.make_demo_features(tmp_path / "x.pkl", seq_lens=(2, 10, 10))
    with pytest.raises(MMINConfigError, match="n_valid"):
        demo.make_demo_features(tmp_path / "x.pkl", n_valid=0, seq_lens=SHORT)
    with pytest.raises(MMINConfigError, match="language"):
        bundle.make_tiny_bert(tmp_path / "b", language="fr")
    with pytest.raises(MMINConfigError):
        bundle.ensure_demo(tmp_path, dataset="meld")
    assert not list(tmp_path.iterdir())


def test_write_is_atomic(tmp_path, monkeypatch):
    target = tmp_path / "f.pkl"
    demo.make_demo_features(target, n_train=3, n_valid=1, n_test=1, seq_lens=SHORT)
    before = target.read_bytes()

    def boom(obj, f, protocol=None):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(demo.pickle, "dump", boom)
    with pytest.raises(OSError, match="disk full"):
        demo.make_demo_features(target, n_train=4, n_valid=1, n_test=1, seq_lens=SHORT)
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.pkl"]


def test_ensure_demo_is_idempotent(berts, tmp_path, monkeypatch):
    kw = dict(n_train=6, n_valid=2, n_test=2, seq_lens=SHORT)
    r = bundle.ensure_demo(tmp_path, "mosi", bert_dir=berts["en"], **kw)
    fp = r["feature_path"]
    assert r["bert_dir"] == berts["en"] and os.path.basename(fp) == "unaligned_12.pkl"
    mtime = os.stat(fp).st_mtime_ns
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(os.stat(fp).st_mode) == 0o666 & ~umask

    calls = []
    real = bundle.make_demo_features
    monkeypatch.setattr(bundle, "make_demo_features", lambda *a, **k: calls.append(1) or real(*a, **k))
    assert bundle.ensure_demo(tmp_path, "mosi", bert_dir=berts["en"], **kw) == r
    assert calls == [] and os.stat(fp).st_mtime_ns == mtime
    # other parameters -> rebuilt
    bundle.ensure_demo(tmp_path, "mosi", bert_dir=berts["en"], **{**kw, "n_train": 7})
    assert calls == [1]
    with open(fp, "rb") as f:
        assert len(pickle.load(f)["train"]["id"]) == 7
    # default: its own tiny BERT, made once; the real layout name
    r2 = bundle.ensure_demo(tmp_path, "sims", n_train=3, n_valid=1, n_test=1)
    assert r2["bert_dir"].endswith("bert-tiny-cn") and os.path.isfile(r2["bert_dir"] + "/vocab.txt")
    assert r2["feature_path"].endswith(os.path.join("SIMS", "unaligned_39.pkl"))
    assert bundle.ensure_demo(tmp_path, "sims", n_train=3, n_valid=1, n_test=1) == r2
    assert calls == [1, 1]
    rc = bundle.ensure_demo(tmp_path, "mosi", bert_dir=berts["en"], corrupt=True, **kw)
    assert rc["feature_path"].endswith("unaligned_12_corrupt.pkl")
    leftovers = [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]
    assert not leftovers


def test_demo_data_cli_left_pad(tmp_path, capsys):
    """`demo-data --left-pad`: its own file name, frames at the end of each row, getLengths lengths."""
    from mmin_plugin.cli import main

    out = tmp_path / "demo"
    args = ["demo-data", "--out", str(out), "--n-train", "6", "--n-valid", "3", "--n-test", "3"]
    assert main(args + ["--left-pad"]) == 0
    fp = out / "MOSI" / "unaligned_50_leftpad.pkl"
    assert str(fp) in capsys.readouterr().out
    data = safe_load(fp)
    La, Lv = datasets.MOSI.seq_lens[1:]
    for split in SPLITS:
        for key, L in (("audio", La), ("vision", Lv)):
            a, lens = data[split][key], data[split][key + "_lengths"]
            assert set(lens) <= {1, L} and 1 in lens
            for i, t in enumerate(lens):
                assert a[i, -1].any()                        # the last frame is real
                assert (t == L) == bool(a[i, 0].any())       # padded rows start with zeros
    clear_cache()
