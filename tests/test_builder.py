"""integration/builder.py (`features build`): a CSV of clips + per-clip arrays + a BERT-style encoder -> an
MMSA-layout feature file; every bad input an error naming the clip; one batch of encoder states at a time."""
import os
import pickle

import numpy as np
import pytest

from mmin_plugin.errors import MMINDataError
from mmin_plugin.features.load import safe_load
from mmin_plugin.features.validation import validate_features
from mmin_plugin.integration.builder import build_features

from .builders import make_clips

SPLITS = ("train", "valid", "test")


@pytest.fixture
def clips(tmp_path):
    return make_clips(tmp_path / "clips", n=12, splits=(6, 3, 3))


def _build(clips, tiny_bert, out, **kw):
    kw = {"audio_dir": clips / "audio", "video_dir": clips / "video", "max_text_len": 10, "batch_size": 4,
          "progress": False, **kw}
    return build_features(clips / "clips.csv", out, encoder=tiny_bert, **kw)


def test_build_writes_the_mmsa_layout_with_real_lengths(clips, tiny_bert, tmp_path):
    from transformers import BertModel, BertTokenizer

    info = _build(clips, tiny_bert, tmp_path / "f.pkl")
    with open(tmp_path / "f.pkl", "rb") as f:
        data = pickle.load(f)  # our own file, written by this test
    assert info["sizes"] == {"train": 6, "valid": 3, "test": 3} and info["format"] == "MMSA pickle"
    la = max(np.load(p).shape[0] for p in (clips / "audio").iterdir())
    assert info["seq_lens"] == (10, max(la, 10), 10) and info["feature_dims"] == (32, 7, 11)
    tok, enc = BertTokenizer.from_pretrained(tiny_bert), BertModel.from_pretrained(tiny_bert).eval()
    for split in SPLITS:
        s = data[split]
        for j, cid in enumerate(s["id"]):
            for key, folder in (("audio", "audio"), ("vision", "video")):
                a = np.load(clips / folder / f"{cid}.npy")
                assert s[f"{key}_lengths"][j] == len(a)
                assert np.array_equal(s[key][j, :len(a)], a) and not s[key][j, len(a):].any()
        # the text: the encoder's states of the tokenizer's ids, zero after the tokens
        enc_in = tok(list(s["raw_text"]), padding="max_length", max_length=10, truncation=True, return_tensors="pt")
        assert np.array_equal(s["text_bert"][:, 0], enc_in["input_ids"].numpy())
        assert np.array_equal(s["text_bert"][:, 1], enc_in["attention_mask"].numpy())
        import torch

        with torch.no_grad():
            h = enc(**enc_in).last_hidden_state * enc_in["attention_mask"][..., None]
        np.testing.assert_allclose(s["text"], h.numpy(), atol=1e-5)
    for use_bert in (False, True):
        validate_features(data, "f.pkl", use_bert=use_bert, dataset_name=None)


def test_build_safe_format_and_one_batch_at_a_time(clips, tiny_bert, tmp_path, monkeypatch):
    from transformers import BertModel

    seen = []
    forward = BertModel.forward

    def spy(self, input_ids=None, **kw):
        seen.append(int(input_ids.shape[0]))
        return forward(self, input_ids=input_ids, **kw)

    monkeypatch.setattr(BertModel, "forward", spy)
    info = _build(clips, tiny_bert, tmp_path / "f.mmin", video_dir=None)
    assert info["format"] == "safe format" and seen == [4, 2, 3, 3]  # batches of 4 per split: 6, 3, 3 clips
    data = safe_load(tmp_path / "f.mmin")
    v = data["train"]["vision"]
    assert v.shape[2] == 1 and not v.any() and data["train"]["vision_lengths"] == [1] * 6  # no video: a zero frame


def _rewrite_csv(clips, edit):
    lines = (clips / "clips.csv").read_text().splitlines()
    (clips / "clips.csv").write_text("\n".join(edit(lines)) + "\n")


@pytest.mark.parametrize("case, match", [
    ("missing", r"clip 'clip003': expected a audio array clip003.npy"),
    ("extra", r"audio array stray.npy belongs to no clip"),
    ("dim", r"clip 'clip005': expected video dimension 11 \(as clip 'clip000'\); found shape \(4, 3\)"),
    ("two_splits", r"clip 'clip001': expected each clip once; found it in two splits "
                   r"\('train' on line 3, 'test' here\)"),
    ("label", r"clip 'clip002': column 'label': expected a number in \[-3, 3\]; found '7.5'"),
    ("id", r"expected an id of letters"),
    ("split", r"column 'split': expected one of"),
])
def test_bad_inputs_name_the_clip(clips, tiny_bert, tmp_path, case, match):
    if case == "missing":
        os.remove(clips / "audio" / "clip003.npy")
    elif case == "extra":
        np.save(clips / "audio" / "stray.npy", np.zeros((3, 7), np.float32))
    elif case == "dim":
        np.save(clips / "video" / "clip005.npy", np.zeros((4, 3), np.float32))
    elif case == "two_splits":
        _rewrite_csv(clips, lambda ls: ls + [ls[2].rsplit(",", 1)[0] + ",test"])
    elif case == "label":
        _rewrite_csv(clips, lambda ls: ls[:3] + [",".join(ls[3].split(",")[:2] + ["7.5"] + ls[3].split(",")[3:])]
                     + ls[4:])
    elif case == "id":
        _rewrite_csv(clips, lambda ls: ls + ["../etc/passwd,hello,1.0,train"])
    elif case == "split":
        _rewrite_csv(clips, lambda ls: ls + ["clipx,hello,1.0,dev"])
    with pytest.raises(MMINDataError, match=match):
        _build(clips, tiny_bert, tmp_path / "f.pkl")
    assert not (tmp_path / "f.pkl").exists()


def test_cli_features_build_writes_the_file_or_one_error_line(clips, tiny_bert, tmp_path, capsys):
    from mmin_plugin import cli

    argv = ["features", "build", "--clips", str(clips / "clips.csv"), "--audio", str(clips / "audio"),
            "--encoder", tiny_bert, "--max-text-len", "8"]
    assert cli.main(argv + ["--out", str(tmp_path / "f.mmin")]) == 0
    out = capsys.readouterr().out
    assert "train 6, valid 3, test 3 clips" in out and "safe format" in out
    assert safe_load(tmp_path / "f.mmin")["test"]["text"].shape[1:] == (8, 32)
    os.remove(clips / "audio" / "clip004.npy")
    assert cli.main(argv + ["--out", str(tmp_path / "g.pkl")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "clip 'clip004'" in err and err.count("\n") == 1
