"""`explain`: attention maps of one sample as PNGs, support sizes as a table; support sizes in the history."""
import json
import re

import numpy as np
import pytest
import torch

from mmin_plugin.errors import MMINConfigError, MMINDataError
from mmin_plugin.features.synthetic import make_demo_features
from mmin_plugin.integration.trainer import MMINTrainer, config_path
from mmin_plugin.modeling.model import MMIN

from .builders import make_args

SEQ = (12, 20, 15)
PAIRS = [f"{a}_from_{b}" for a in ("text", "video", "audio") for b in ("text", "video", "audio") if a != b]


@pytest.fixture(scope="module")
def demo_checkpoint(tmp_path_factory, tiny_bert):
    """A tiny MMIN saved as MMSA saves it (AMIO's 'Model.' prefix) with its config beside it."""
    d = tmp_path_factory.mktemp("explain")
    feature_path = make_demo_features(d / "mosi.pkl", n_train=4, n_valid=2, n_test=3, seq_lens=SEQ,
                                      bert_dir=tiny_bert)
    args = make_args(tiny_bert, feature_dims=[768, 5, 20])
    torch.manual_seed(0)
    net = MMIN(args)
    ckpt = d / "mmin-mosi.pth"
    torch.save({"Model." + k: v for k, v in net.state_dict().items()}, ckpt)
    config_path(ckpt).write_text(json.dumps({k: v for k, v in args.items()}))
    return {"checkpoint": ckpt, "feature_path": feature_path, "net": net.eval(), "dir": d}


@pytest.fixture(scope="module")
def explained(demo_checkpoint):
    """One explain run (drawing is the slow part), its printed output kept."""
    import contextlib
    import io

    from mmin_plugin.experiments.explain import explain

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        res = explain(demo_checkpoint["checkpoint"], demo_checkpoint["feature_path"], "test:1",
                      out_dir=demo_checkpoint["dir"] / "out")
    return res, buf.getvalue()


def test_explain_writes_readable_pngs_and_prints_support(demo_checkpoint, explained):
    import matplotlib.image as mpimg

    from mmin_plugin.features.load import safe_load

    res, printed = explained
    data = safe_load(demo_checkpoint["feature_path"])["test"]
    assert res.sample_id == data["id"][1] and res.raw_text == data["raw_text"][1]
    # the words of the sample on the text axis (tiny BERT's tokenizer on the file's ids)
    n_text = int(data["text_bert"][1, 1].sum())
    assert res.tokens[0] == "[CLS]" and res.tokens[-1] == "[SEP]" and len(res.tokens) == n_text
    assert any(t.lower() in data["raw_text"][1].lower() for t in res.tokens[1:-1])
    names = {p.name for p in res.figures}
    assert names == {f"ca_{p}.png" for p in PAIRS} | {"guided.png"}
    for p in res.figures:
        img = mpimg.imread(p)
        assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 400 and img.std() > 0.01
    # the prediction is the network's own on that sample, read as a run reads it (with its lengths)
    f = {k: torch.as_tensor(np.array(data[k][1:2], dtype=np.float32)) for k in ("text_bert", "audio", "vision")}
    with torch.no_grad():
        expected = float(demo_checkpoint["net"](f["text_bert"], f["audio"], f["vision"],
                                                torch.tensor(data["audio_lengths"][1:2]),
                                                torch.tensor(data["vision_lengths"][1:2]))["M"])
    assert res.prediction == pytest.approx(expected, abs=1e-5)
    # support table: one row per CA module, 1 <= support <= real keys
    t = res.support
    layers = make_args("x")["fine_layers"]
    assert set(t["CA module"]) == {f"{p}/{i}" for p in PAIRS for i in range(layers)} | {
        f"guided/{m}" for m in ("text", "video", "audio")}
    assert (t["mean support"] >= 1).all() and (t["mean support"] <= t["keys"]).all()
    assert (t["median support"] >= 1).all()
    row = t[t["CA module"] == "text_from_audio/0"].iloc[0]
    assert row["keys"] == res.lengths["audio"] and row["queries"] == n_text
    assert "mean support" in printed and "text_from_audio/0" in printed and res.raw_text in printed
    assert (demo_checkpoint["dir"] / "out" / "support.csv").is_file()


def test_explain_support_matches_a_direct_count(demo_checkpoint, explained):
    """The table's numbers are the count of non-zero weights per real query and head, recomputed here."""
    from mmin_plugin.experiments.explain import _sample_inputs
    from mmin_plugin.features.load import safe_load

    res, _ = explained
    data = safe_load(demo_checkpoint["feature_path"])
    inputs, kw = _sample_inputs(data, "test", 1, make_args("x"), "f")
    with torch.no_grad():
        out = demo_checkpoint["net"](*inputs, **kw, return_attention=True)
    a = out["attention"]["video_from_text/1"][0]  # (heads, Lq, Lk)
    nv, nt = res.lengths["video"], res.lengths["text"]
    counts = (a[:, :nv, :] > 0).sum(-1).float()  # real video queries; padded text keys have weight 0
    row = res.support[res.support["CA module"] == "video_from_text/1"].iloc[0]
    assert row["mean support"] == pytest.approx(float(counts.mean()), rel=1e-6)
    assert row["keys"] == nt


def test_explain_errors_name_what_is_missing(demo_checkpoint, tmp_path):
    from mmin_plugin.experiments.explain import explain

    lone = tmp_path / "lone.pth"
    lone.write_bytes(demo_checkpoint["checkpoint"].read_bytes())
    with pytest.raises(MMINConfigError, match=r"lone\.config\.json.*--config-file"):
        explain(lone, demo_checkpoint["feature_path"], "test:0", out_dir=tmp_path)
    with pytest.raises(MMINDataError, match=r"no sample 'nope'"):
        explain(demo_checkpoint["checkpoint"], demo_checkpoint["feature_path"], "nope", out_dir=tmp_path)


def test_explain_cli_passes_its_options(monkeypatch, tmp_path):
    from mmin_plugin.cli import main
    from mmin_plugin.experiments import explain as ex

    monkeypatch.chdir(tmp_path)
    for name in ("c.pth", "f.pkl", "c.json"):  # the parser checks that input files exist
        (tmp_path / name).write_bytes(b"")
    seen = {}
    monkeypatch.setattr(ex, "explain", lambda *a, **k: seen.update(args=a, kw=k))
    assert main(["explain", "--checkpoint", "c.pth", "--feature-path", "f.pkl", "--sample", "a$_$1", "--out", "o",
                 "--config-file", "c.json", "--set", "pretrained=/b", "lengths_from=nonzero"]) == 0
    assert seen["args"] == ("c.pth", "f.pkl", "a$_$1")
    assert seen["kw"] == {"out_dir": "o", "config_file": "c.json",
                          "overrides": {"pretrained": "/b", "lengths_from": "nonzero"}}


def test_history_records_mean_support_per_ca_module(tmp_path, tiny_bert):
    from .builders import make_loader, make_trainer_args

    args = make_trainer_args(tmp_path, tiny_bert, max_epochs=2)
    torch.manual_seed(0)
    model = MMIN(args)
    trainer = MMINTrainer(args)
    trainer.do_train(model, {"train": make_loader(1), "valid": make_loader(2, seed=10), "test": make_loader(1)})
    hist = json.loads((tmp_path / "mmin-mosi.history.json").read_text())
    keys = {k for k in hist[0] if k.startswith("valid_support/")}
    assert keys == {f"valid_support/{p}/{i}" for p in PAIRS for i in range(args["fine_layers"])} | {
        f"valid_support/guided/{m}" for m in ("text", "video", "audio")}
    # the pooled mean over both validation batches, recomputed directly for one module
    model.eval()
    total = n = 0.0
    from mmin_plugin.integration.trainer import _batch_inputs

    with torch.no_grad():
        for batch in make_loader(2, seed=10):
            inputs, kw, _ = _batch_inputs(batch, "cpu")
            out = model(*inputs, **kw, return_attention=True)
            a, q = out["attention"]["audio_from_video/0"], out["attention_query_mask"]["audio_from_video/0"]
            c = (a > 0).sum(-1).float().mean(1)  # (B, Lq): mean over heads
            total += float(c[q].sum())
            n += float(q.sum())
    assert hist[-1]["valid_support/audio_from_video/0"] == pytest.approx(total / n, rel=1e-6)
    assert np.isfinite([hist[-1][k] for k in keys]).all()


@pytest.mark.e2e
def test_explain_a_checkpoint_trained_by_mmsa_run(tmp_path, tiny_bert, small_mosi, capsys):
    """The real path: MMSA_run writes the checkpoint (AMIO's state_dict) and the trainer its config
    beside it; explain rebuilds MMIN from that alone; the history has the support sizes."""
    from mmin_plugin.cli import main
    from mmin_plugin.integration.runner import mmsa_run

    mmsa_run("mmin", "mosi", config={"featurePath": small_mosi["feature_path"], "pretrained": tiny_bert,
                                     "d_model": 16, "nheads": 4, "max_epochs": 1},
             seeds=[1111], gpu_ids=[], num_workers=0, model_save_dir=tmp_path / "m", res_save_dir=tmp_path / "r",
             log_dir=tmp_path / "l", verbose_level=0)
    ckpt = tmp_path / "m" / "mmin-mosi.pth"
    assert config_path(ckpt).is_file()
    hist = json.loads((tmp_path / "m" / "mmin-mosi.history.json").read_text())
    assert 0 < hist[0]["valid_support/text_from_audio/0"] <= 40
    out = tmp_path / "explain"
    assert main(["explain", "--checkpoint", str(ckpt), "--feature-path", small_mosi["feature_path"],
                 "--sample", "test:0", "--out", str(out)]) == 0
    assert len(list(out.glob("*.png"))) == 7
    assert "guided/audio" in capsys.readouterr().out


@pytest.mark.parametrize("case, change, message", [
    ("other shapes", {"d_model": 32}, r"in the checkpoint.*for the config"),
    ("hostile size", {"d_model": 65536, "nheads": 1}, r"config key 'd_model': expected an integer in \[1, 4096\]"),
    ("feature widths", {"feature_dims": [768, 6, 20]}, r"key 'audio': expected feature width 6"),
    ("not a checkpoint", None, r"expected a checkpoint written by torch.save"),
])
def test_explain_failures_end_in_error_lines(demo_checkpoint, tmp_path, capsys, case, change, message):
    """Finding 5: a checkpoint whose shapes differ from its config ended in a torch RuntimeError
    traceback; a config asking for d_model=65536 allocated 64 GiB before the checkpoint was read.
    Now the config is bounded and the checkpoint's shapes are compared with it before anything is built."""
    from mmin_plugin.cli import main

    ckpt = demo_checkpoint["checkpoint"]
    cfg = json.loads(config_path(ckpt).read_text())
    if change is None:
        ckpt = tmp_path / "garbage.pth"
        ckpt.write_bytes(b"PK\x03\x04 not a checkpoint")
    cfg.update(change or {})
    other = tmp_path / "c.json"
    other.write_text(json.dumps(cfg))
    rc = main(["explain", "--checkpoint", str(ckpt), "--feature-path", str(demo_checkpoint["feature_path"]),
               "--sample", "test:0", "--config-file", str(other), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and "Traceback" not in err, err
    assert re.search(message, err), err
    assert not (tmp_path / "o").exists()


def test_explain_checks_the_checkpoint_zip_before_torch_load(demo_checkpoint, tmp_path, monkeypatch):
    """Issue 25, finding 4: a checkpoint whose tensor records are deflate-compressed (390 KB) became a
    400 MB tensor inside torch.load before the shape check.  The zip directory is checked first:
    records stored, of torch.save's names, no larger than the tensors the config implies."""
    from mmin_plugin.errors import MMINError
    from mmin_plugin.experiments import explain as ex
    from mmin_plugin.features.zipdir import check_checkpoint_records

    from .hostile_files import deflated_records

    good = demo_checkpoint["checkpoint"].read_bytes()
    cfg = config_path(demo_checkpoint["checkpoint"]).read_text()
    cases = {"compressed": (deflated_records(good), r"a compressed record \(\d+ bytes stored"),
             "inflating": (deflated_records(good, grow=64 << 20), r"a compressed record \(\d+ bytes stored, 67108864")}
    loads = []
    monkeypatch.setattr(torch, "load", lambda *a, **k: loads.append(a) or {})
    for name, (blob, why) in cases.items():
        ckpt = tmp_path / f"{name}.pth"
        ckpt.write_bytes(blob)
        config_path(ckpt).write_text(cfg)
        with pytest.raises(MMINError, match=rf"{re.escape(str(ckpt))}: refusing the checkpoint before torch.load: "
                                            rf"member '[^']+/data/\d+' at byte \d+: {why}"):
            ex.explain(ckpt, demo_checkpoint["feature_path"], "test:0", out_dir=tmp_path / "o", print_table=False)
    assert not loads
    # torch-free: stored records larger than the tensors the config implies, unknown records, too many storages
    numels = [int(np.prod(v.shape)) for v in demo_checkpoint["net"].state_dict().values()]
    check_checkpoint_records(demo_checkpoint["checkpoint"], numels)  # the real one passes
    with pytest.raises(MMINError, match=r"member 'mmin-mosi/data/\d+' at byte \d+: \d+ bytes \(at most 80 "):
        check_checkpoint_records(demo_checkpoint["checkpoint"], [10] * len(numels))
    with pytest.raises(MMINError, match="more tensor storages than the 3 tensors"):
        check_checkpoint_records(demo_checkpoint["checkpoint"], [10 ** 6] * 3)
