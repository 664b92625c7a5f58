"""Command-line misuse ends as `error: ...` with exit status 2 and no traceback (issue 11)."""
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

from mmin_plugin import cli


def _fails(argv, capsys, *parts):
    """main(argv) exits/returns 2 with 'error: ...' naming `parts` on stderr, without a traceback."""
    try:
        code = cli.main(argv)
    except SystemExit as e:  # argparse's own exit
        code = e.code
    err = capsys.readouterr().err
    assert code == 2, (argv, code, err)
    assert "error: " in err and "Traceback" not in err, err
    for p in parts:
        assert p in err, (p, err)
    return err


@pytest.fixture
def feature_file(tmp_path):
    p = tmp_path / "f.pkl"
    p.write_bytes(pickle.dumps({"train": {}}))
    return str(p)


def test_unknown_model_and_dataset(capsys):
    _fails(["run", "-m", "no_such_model"], capsys, "no_such_model", "mmin", "misa")
    _fails(["run", "-m", "mmim_"], capsys, "did you mean 'mmim'")
    _fails(["run", "-d", "iemocap"], capsys, "iemocap", "mosi")
    # compare: the bad name is found before any model trains
    _fails(["compare", "--models", "mmin", "foo"], capsys, "'foo'")


@pytest.mark.parametrize("argv, part", [
    (["run", "-s", "-1"], "a seed"),
    (["run", "-s", "x"], "a seed"),
    (["run", "-n", "-1"], "a worker count"),
    (["run", "--max-epochs", "0"], "an epoch cap"),
    (["run", "--max-epochs", "-3"], "an epoch cap"),
    (["run", "-tt", "0"], "a positive integer"),
    (["run", "-g", "-2"], "a GPU id"),
    (["run", "-c", "/no/such/config.json"], "no such file"),
    (["run", "--feature-path", "/no/such/features.pkl"], "no such file"),
    (["run", "-Fa", "/no/such/audio.pkl"], "no such file"),
    (["run", "--set", "novalue"], "key=value"),
    (["demo", "--max-epochs", "0"], "an epoch cap"),
    (["demo-data", "--n-train", "0"], "a positive integer"),
    (["compare", "--seeds", "-5"], "a seed"),
    (["ablate", "-n", "-1"], "a worker count"),
    (["compare", "--max-epochs", "0"], "an epoch cap"),
])
def test_bad_values_are_refused_by_the_parser(argv, part, capsys):
    _fails(argv, capsys, part)


def test_output_paths(tmp_path, capsys, feature_file):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    _fails(["demo", "--out", str(a_file)], capsys, "which is a file")
    _fails(["compare", "--out", str(a_file / "sub")], capsys, "not writable")
    _fails(["run", "--model-save-dir", str(a_file)], capsys, "which is a file")
    _fails(["convert", feature_file, str(tmp_path)], capsys, "which is a folder")
    _fails(["convert", feature_file, feature_file], capsys, "different from the input")
    _fails(["run", "-c", str(tmp_path)], capsys, "a folder")


def test_convert_command(tmp_path, capsys):
    src, dst = tmp_path / "in.pkl", tmp_path / "out.npz"
    src.write_bytes(pickle.dumps({"train": {"audio": np.ones((2, 3, 4), np.float32), "id": ["a", "b"]}}, protocol=2))
    assert cli.main(["convert", str(src), str(dst)]) == 0
    assert "safe format" in capsys.readouterr().out
    from mmin_plugin.features.load import safe_load

    out = safe_load(dst)
    assert np.array_equal(out["train"]["audio"], np.ones((2, 3, 4), np.float32)) and out["train"]["id"] == ["a", "b"]
    # a hostile input is refused with the loader's message
    from .hostile_files import HOSTILE

    bad = tmp_path / "bad.pkl"
    bad.write_bytes(HOSTILE["forged_object_dtype"]())
    _fails(["convert", str(bad), str(tmp_path / "x.npz")], capsys, str(bad), "refusing")
    assert not (tmp_path / "x.npz").exists()


def test_errors_found_after_parsing_are_clean(tmp_path, capsys):
    # an MMINError raised while running (here: the hostile feature file) is printed, status 2
    from .hostile_files import HOSTILE

    bad = tmp_path / "bad.pkl"
    bad.write_bytes(HOSTILE["codecs_lookup"]())
    _fails(["convert", str(bad), str(tmp_path / "o.npz")], capsys, "_codecs.encode")


@pytest.mark.e2e
def test_python_m_prints_no_traceback(tmp_path):
    for argv in (["run", "-m", "no_such_model"], ["run", "-s", "-1"], ["compare", "--models", "mmin", "foo"]):
        r = subprocess.run([sys.executable, "-m", "mmin_plugin", *argv], capture_output=True, text=True,
                           timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert r.returncode == 2 and "error: " in r.stderr and "Traceback" not in r.stderr, r.stderr


@pytest.mark.e2e
def test_run_max_epochs_caps_mmsa_models(small_mosi, tmp_path, monkeypatch):
    """`run -m tfn --max-epochs 1` trains one epoch (MMSA's trainer has no cap of its own)."""
    import contextlib

    from mmin_plugin.integration import runner

    seen = []
    real = runner.epoch_cap

    @contextlib.contextmanager
    def spy(max_epochs):
        with real(max_epochs) as stats:
            seen.append(stats)
            yield stats

    monkeypatch.setattr(runner, "epoch_cap", spy)
    code = cli.main(["run", "-m", "tfn", "-d", "mosi", "--feature-path", small_mosi["feature_path"],
                     "--pretrained", small_mosi["bert_dir"], "--max-epochs", "1", "-s", "1111",
                     "--set", "batch_size=16", "--model-save-dir", str(tmp_path / "m"),
                     "--res-save-dir", str(tmp_path / "r"), "--log-dir", str(tmp_path / "l"), "-v", "0"])
    assert code == 0
    assert len(seen) == 1 and seen[0].epochs == 1 and seen[0].stopped_by == "max_epochs", vars(seen[0])


def test_defaults_and_good_values_parse(tmp_path, feature_file):
    p = cli.build_parser()
    for argv in (["run"], ["demo"], ["demo-data"], ["compare"], ["ablate"]):
        p.parse_args(argv)
    a = p.parse_args(["run", "-m", "TFN", "-d", "MOSI", "-s", "0", "1111", "-n", "2", "--max-epochs", "1",
                      "--feature-path", feature_file, "-Fa", feature_file, "--model-save-dir", str(tmp_path / "new")])
    assert (a.model, a.dataset, a.seeds, a.num_workers, a.max_epochs) == ("tfn", "mosi", [0, 1111], 2, 1)
    assert a.feature_T is None and a.feature_A == feature_file
