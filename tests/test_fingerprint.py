"""The fingerprint hashes what a trial actually reads (issue 22): `--resume` reruns a trial when
the file MMSA opens changes ($MMSA_DATASET_ROOT, feature_A), when the pretrained folder's weights
change, when any file of the package changes (`_sparsemax.c`), and keeps it when nothing changed.
`runner.mmsa_run` is a fake: the fingerprint is computed before MMSA would open anything."""
import os
import shutil

import pytest

from mmin_plugin.experiments import compare
from mmin_plugin.runs import fingerprint as fp
from mmin_plugin.runs import sweep
from mmin_plugin.runs.record import load_record

RESUME = sweep.SweepOptions(resume=True)


@pytest.fixture
def cache(monkeypatch, tmp_path):
    monkeypatch.setenv("MMIN_PLUGIN_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def run(fake_mmsa_run, tmp_path, capsys, cache):
    """run(**kw) -> (models MMSA_run was called for, stdout) of a compare into tmp_path/o."""
    calls, _ = fake_mmsa_run

    def go(**kw):
        n = len(calls)
        compare.run_comparison(**{"models": ["mmin"], "seeds": [1111], "out_dir": tmp_path / "o", **kw})
        return [c["model"] for c in calls[n:]], capsys.readouterr().out

    return go


def _features(root, text):
    f = root / "MOSI" / "Processed" / "unaligned_50.pkl"
    f.parent.mkdir(parents=True, exist_ok=True)
    f.write_bytes(text)
    return f


def test_mmsa_dataset_root_pointing_at_another_file_reruns(run, tmp_path, monkeypatch):
    _features(tmp_path / "root1", b"MOSI features, lab A")
    _features(tmp_path / "root2", b"MOSI features, lab B")  # the same relative path, other data
    monkeypatch.setenv("MMSA_DATASET_ROOT", str(tmp_path / "root1"))
    assert run()[0] == ["mmin"]
    assert run(sweep=RESUME)[0] == []  # nothing changed: kept
    monkeypatch.setenv("MMSA_DATASET_ROOT", str(tmp_path / "root2"))
    ran, out = run(sweep=RESUME)
    assert ran == ["mmin"] and "changed since it ran: data (featurePath)" in out
    rec = load_record(tmp_path / "o", "mmin", "mosi", 1111)
    assert rec.fingerprint["data"]["featurePath"]["path"] == str(tmp_path / "root2" / "MOSI" / "Processed" /
                                                                  "unaligned_50.pkl")


def test_a_changed_feature_a_file_reruns(run, tmp_path):
    data, audio = tmp_path / "f.pkl", tmp_path / "audio.pkl"
    data.write_bytes(b"features")
    audio.write_bytes(b"audio v1")
    kw = dict(feature_path=data, overrides={"feature_A": str(audio)})
    run(**kw)
    assert run(sweep=RESUME, **kw)[0] == []
    audio.write_bytes(b"audio v2")
    ran, out = run(sweep=RESUME, **kw)
    assert ran == ["mmin"] and "data (feature_A)" in out


def test_changed_pretrained_weights_rerun(run, tmp_path):
    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text('{"hidden_size": 8}')
    (bert / "vocab.txt").write_text("[PAD]\n[UNK]\n")
    (bert / "model.safetensors").write_bytes(b"weights v1")
    kw = dict(models=["mmin", "tfn"], pretrained=str(bert))  # TFN uses no BERT: its trial stays
    assert run(**kw)[0] == ["mmin", "tfn"]
    assert run(sweep=RESUME, **kw)[0] == []
    (bert / "model.safetensors").write_bytes(b"weights v2")
    ran, out = run(sweep=RESUME, **kw)
    assert ran == ["mmin"] and "changed since it ran: pretrained (model.safetensors)" in out


def test_a_changed_c_file_of_the_package_reruns(run, tmp_path, monkeypatch):
    copy = tmp_path / "pkg"
    shutil.copytree(fp.PACKAGE_ROOT, copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(fp, "PACKAGE_ROOT", copy)
    fp.code_versions.cache_clear()
    try:
        run()
        assert run(sweep=RESUME)[0] == []
        c = copy / "modeling" / "_sparsemax.c"
        c.write_text(c.read_text() + "\n/* an edit */\n")
        fp.code_versions.cache_clear()
        ran, out = run(sweep=RESUME)
        assert ran == ["mmin"] and "code (package_sha256" in out
    finally:
        fp.code_versions.cache_clear()


def test_the_device_and_versions_are_parts():
    assert {"device", "pretrained", "data", "code"} <= set(fp.PARTS)
    from mmin_plugin.runs.environment import device

    assert set(device(False)) == {"kind", "gpu", "cuda", "sparsemax"} and device(False)["kind"] == "cpu"
    code = fp.code_versions()
    assert {"package_sha256", "mmsa_sha256", "transformers", "torch", "git_commit"} <= set(code)


def test_a_rewrite_that_restores_the_mtime_is_hashed_again(tmp_path, cache):
    f = tmp_path / "x.pkl"
    f.write_bytes(b"abc")
    first = fp.data_hash(f)
    st = f.stat()
    f.write_bytes(b"xyz")  # same size
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))  # as `cp -p` leaves it: only the ctime moved
    assert f.stat().st_mtime_ns == st.st_mtime_ns and f.stat().st_size == st.st_size
    assert fp.data_hash(f)["sha256"] != first["sha256"]
