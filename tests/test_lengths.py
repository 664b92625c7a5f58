"""The start-up length check (features/lengths.py), `lengths_from: nonzero` and `demo-data --left-pad`."""
import copy
import pickle
import warnings

import numpy as np
import pytest

from mmin_plugin.errors import MMINConfigError
from mmin_plugin.features import lengths as L
from mmin_plugin.features.synthetic import make_demo_features

SEQ = (10, 24, 18)
N = dict(n_train=12, n_valid=6, n_test=6)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("lengths")
    right = make_demo_features(d / "right.pkl", seq_lens=SEQ, seed=3, **N)
    left = make_demo_features(d / "left.pkl", seq_lens=SEQ, seed=3, left_pad=True, **N)
    with open(right, "rb") as f, open(left, "rb") as g:
        return pickle.load(f), pickle.load(g), str(left)


def _check(data, path, lengths_from="file"):
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        report = L.check_lengths(data, path, lengths_from)
    return report, [str(x.message) for x in w if "lengths do not match" in str(x.message)]


def test_right_padded_file_is_clean_and_silent(files):
    right, _, _ = files
    report, msgs = _check(copy.deepcopy(right), "right.pkl")
    assert msgs == []
    assert all(c["suspect"] == 0 for mods in report.values() for c in mods.values())
    assert report["train"]["audio"]["n"] == N["n_train"]


def test_left_padded_demo_file_triggers_one_warning_with_the_right_counts(files):
    right, left, path = files
    report, msgs = _check(copy.deepcopy(left), path)
    assert len(msgs) == 1
    for split in ("train", "valid", "test"):
        for key, La in (("audio", SEQ[1]), ("vision", SEQ[2])):
            true = np.asarray(right[split][key + "_lengths"])
            padded = int(np.count_nonzero(true < La))  # every shorter sequence is left-padded
            assert padded > 0
            # getLengths on a left-padded row: first all-zero frame is frame 0 -> 0 -> forced to 1
            assert left[split][key + "_lengths"] == [La if t == La else 1 for t in true]
            c = report[split][key]
            assert c == {"front_padded": padded, "beyond_length": padded, "zero_inside": padded,
                         "forced_to_one": padded, "suspect": padded, "n": len(true)}
            assert f"{split}/{key} {padded}/{len(true)} (padding at the front {padded}," in msgs[0]
    assert "lengths_from='nonzero'" in msgs[0] and path in msgs[0]


def test_nonzero_lengths_recover_the_right_padded_inputs_exactly(files):
    right, left, path = files
    data = copy.deepcopy(left)
    _, msgs = _check(data, path, "nonzero")
    assert len(msgs) == 1 and "moved to the front" in msgs[0]
    for split in ("train", "valid", "test"):
        for key in ("audio", "vision"):
            np.testing.assert_array_equal(data[split][key], right[split][key])
            assert data[split][key + "_lengths"] == [int(v) for v in right[split][key + "_lengths"]]
    # and on the right-padded file "nonzero" changes nothing
    same = copy.deepcopy(right)
    _check(same, "right.pkl", "nonzero")
    for key in ("audio", "vision"):
        np.testing.assert_array_equal(same["train"][key], right["train"][key])
        assert same["train"][key + "_lengths"] == [int(v) for v in right["train"][key + "_lengths"]]


def test_each_kind_is_counted_on_hand_made_sequences():
    x = np.zeros((6, 5, 2), np.float32)
    x[0, :3] = 1                  # right-padded, length 3: clean
    x[1, :2] = 1                  # length 1 given, real frames up to 2: beyond_length
    x[2, :4] = 1
    x[2, 1] = 0                   # a zero frame inside: zero_inside
    x[3, 2:] = 1                  # left-padded, true count 3 given: front, beyond, zero_inside
    x[5, 1, 1] = 1                # left-padded under getLengths: length 1 over a zero frame
    lengths = [3, 1, 4, 3, 0, 1]  # row 4 all zero with length 0: clean
    c = L.length_report(x, lengths)
    assert c == {"front_padded": 2, "beyond_length": 3, "zero_inside": 3, "forced_to_one": 1, "suspect": 4, "n": 6}
    first, last = L.frame_spans(x)
    assert first.tolist() == [0, 0, 0, 2, 0, 1] and last.tolist() == [3, 2, 4, 5, 0, 2]
    new = L.recompute_lengths(x)
    assert new.tolist() == [3, 2, 4, 3, 0, 1]
    assert (x[3, :3] == 1).all() and (x[3, 3:] == 0).all()           # moved to the front
    assert x[5, 0, 1] == 1 and not x[5, 1:].any()
    assert (x[2, 1] == 0).all() and (x[2, [0, 2, 3]] == 1).all()     # an inside zero frame is kept


def test_chunking_does_not_change_the_result(monkeypatch):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((37, 9, 3)).astype(np.float32)
    lens = rng.integers(0, 10, 37)
    shift = rng.integers(0, 9, 37)
    for i in range(37):
        x[i, lens[i]:] = 0
        x[i] = np.roll(x[i], shift[i] * (lens[i] < 9), axis=0)
    whole, whole_x = L.length_report(x, lens), x.copy()
    whole_new = L.recompute_lengths(whole_x)
    monkeypatch.setattr(L, "CHUNK_ELEMENTS", 50)  # 1-2 samples per chunk
    assert L.length_report(x, lens) == whole
    y = x.copy()
    np.testing.assert_array_equal(L.recompute_lengths(y), whole_new)
    np.testing.assert_array_equal(y, whole_x)


def test_bad_lengths_from_is_a_config_error(files):
    with pytest.raises(MMINConfigError, match=r"lengths_from.*'file', 'nonzero'.*'nonzeros'"):
        L.check_lengths(copy.deepcopy(files[0]), "x.pkl", "nonzeros")


def test_aligned_files_are_skipped(files):
    _, left, path = files
    aligned = copy.deepcopy(left)
    for s in aligned.values():
        del s["audio_lengths"], s["vision_lengths"]
    assert L.check_lengths(aligned, path) == {}


@pytest.mark.e2e
def test_left_padded_file_with_nonzero_lengths_trains_exactly_like_the_right_padded_one(tmp_path, tiny_bert):
    from mmin_plugin.experiments.demo import ensure_demo
    from mmin_plugin.integration.runner import mmsa_run

    kw = dict(dataset="mosi", n_train=16, n_valid=8, n_test=8, seq_lens=(10, 20, 16), bert_dir=tiny_bert)
    right = ensure_demo(tmp_path / "d", **kw)["feature_path"]
    left = ensure_demo(tmp_path / "d", left_pad=True, **kw)["feature_path"]
    assert left != right

    def run(path, lengths_from, name):
        return mmsa_run("mmin", "mosi", config={"featurePath": path, "pretrained": tiny_bert, "d_model": 16,
                                                "nheads": 4, "max_epochs": 1, "lengths_from": lengths_from},
                        seeds=[1111], gpu_ids=[], num_workers=0, model_save_dir=tmp_path / name / "m",
                        res_save_dir=tmp_path / name / "r", log_dir=tmp_path / name / "l", verbose_level=0)[0]

    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        expected = run(right, "file", "right")
    assert not [x for x in w if "lengths do not match" in str(x.message)]
    with pytest.warns(RuntimeWarning, match=r"lengths do not match.*train/audio \d+/16 .*moved to the front"):
        got = run(left, "nonzero", "left")
    assert got == expected  # the model saw the same frames and lengths, so the same numbers


def test_single_sample_cropped_to_its_lengths_predicts_as_in_the_batch(tiny_bert):
    """The MMSA_test note (docs/design/realdata.md): MMSA_test passes no lengths, so MMIN reads the
    whole padded array; cropping audio/vision to the sample's lengths gives the batch prediction."""
    import torch

    from mmin_plugin.modeling.model import MMIN

    from .builders import make_args, make_batch

    torch.manual_seed(0)
    net = MMIN(make_args(tiny_bert)).eval()
    text, audio, video, al, vl, _ = make_batch(seed=1)
    assert (al < audio.shape[1]).any() and (vl < video.shape[1]).any()
    with torch.no_grad():
        batch = net(text, audio, video, al, vl)["M"].view(-1)
        for i in range(len(al)):
            crop = net(text[i:i + 1], audio[i:i + 1, :al[i]], video[i:i + 1, :vl[i]])["M"].view(-1)
            torch.testing.assert_close(crop, batch[i:i + 1], rtol=1e-5, atol=1e-5)
