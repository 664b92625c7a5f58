"""A results folder (`--out`) from someone else cannot run code, move files, read outside itself,
hang or crash the run (issue 22). `runner.mmsa_run` is a fake; reads that a regression would
block on (FIFOs) run under `deadline`, and /dev/zero is never read for long (refused before).

Each attack: one `error: ...` line and exit 2 (nothing changed), or, for one trial, "unreadable,
rerunning" and a clean rerun.
"""
import json
import os
import pickle
import socket
from pathlib import Path

import numpy as np
import pytest

from mmin_plugin import cli
from mmin_plugin.errors import MMINError
from mmin_plugin.experiments import compare
from mmin_plugin.runs import sweep
from mmin_plugin.runs.record import trial_dir

from .timeouts import deadline


@pytest.fixture
def fake(fake_mmsa_run):
    return fake_mmsa_run


def _compare(capsys, **kw):
    rows = compare.run_comparison(**{"models": ["mmin"], "seeds": [1111], **kw})
    return rows, capsys.readouterr()


def _snapshot(folder: Path):
    """Every entry under `folder` (not following links): name -> bytes, link target or 'dir'."""
    out = {}
    for d, dirs, files in os.walk(folder):
        for name in dirs + files:
            p = Path(d) / name
            out[str(p.relative_to(folder))] = (os.readlink(p) if p.is_symlink() else "dir" if p.is_dir()
                                               else p.read_bytes() if p.is_file() else "special")
    return out


def _cli(argv, capsys):
    """cli.main(argv) -> (exit status, stderr); no exception may escape."""
    code = cli.main(argv)
    return code, capsys.readouterr().err


def _one_error_line(code, err):
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and lines and lines[-1].startswith("error: ") and "Traceback" not in err, err
    return lines[-1]


class _Planted:
    """What a planted pickle does when loaded: leave a marker file (instead of running a shell)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


# --- 1. code execution through the scheduler's folder -----------------------------------------
class _FakeSubmitit:
    """submitit as far as the backend uses it, with its rule that makes the attack work: a job is
    done as soon as `<folder>/<job id>_0_result.pkl` exists, and its result is that file unpickled.
    Job ids are predictable (here always 4242)."""

    class helpers:  # noqa: N801  (submitit.helpers)
        DelayedSubmission = None

    class AutoExecutor:
        def __init__(self, folder, cluster=None):
            self.folder = Path(folder)

        def update_parameters(self, **kw):
            pass

        def submit(self, fn, *args):
            return _FakeSubmitit.Job(self.folder, fn, args)

    class Job:
        job_id = "4242"

        def __init__(self, folder, fn, args):
            self.folder, self.fn, self.args = folder, fn, args

        @property
        def path(self):
            return self.folder / f"{self.job_id}_0_result.pkl"

        def done(self):
            if not self.path.exists():  # the job runs (here: now, in this process) and writes its result
                self.folder.mkdir(parents=True, exist_ok=True)
                self.path.write_bytes(pickle.dumps(("success", self.fn(*self.args))))
            return True

        def result(self):
            with open(self.path, "rb") as f:
                return pickle.load(f)[1]

        def cancel(self, check=False):
            pass


def test_a_planted_scheduler_result_is_never_unpickled(fake, tmp_path, capsys, monkeypatch):
    from mmin_plugin.runs import slurm

    monkeypatch.setattr(slurm, "_submitit", lambda: _FakeSubmitit)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # the job sets it in this process: restored after
    out = tmp_path / "o"
    _compare(capsys, out_dir=out)
    marker = tmp_path / "code-ran"
    for folder in ("submitit", "submitit-0", "submitit-x"):
        d = trial_dir(out, "mmin", "mosi", 1111) / folder
        d.mkdir()
        (d / "4242_0_result.pkl").write_bytes(pickle.dumps(("success", _Planted(marker))))
    opts = sweep.SweepOptions(backend="slurm", overwrite=False, resume=True)
    calls, _ = fake
    n = len(calls)
    _compare(capsys, out_dir=out, overrides={"changed": 1}, sweep=opts)  # a changed config: the trial reruns
    assert not marker.exists() and len(calls) == n + 1
    d = trial_dir(out, "mmin", "mosi", 1111)
    fresh = [p.name for p in d.iterdir() if p.name.startswith("submitit-") and p.name not in ("submitit-0",
                                                                                             "submitit-x")]
    assert len(fresh) == 1 and len(fresh[0]) == len("submitit-") + 16  # made for this submission
    assert {p.name for p in (d / "attempt-1").iterdir()} >= {"submitit", "submitit-0", "submitit-x"}


# --- 2. a trial folder that is a symlink: nothing moved, nothing written -------------------------
def test_a_symlinked_trial_folder_is_refused_and_its_target_unchanged(fake, tmp_path, capsys):
    out = tmp_path / "o"
    _compare(capsys, out_dir=out)
    victim = tmp_path / "home"
    (victim / "docs").mkdir(parents=True)
    (victim / "docs" / "thesis.tex").write_text("years of work")
    (victim / ".bashrc").write_text("export X=1")
    before = _snapshot(victim)
    d = trial_dir(out, "mmin", "mosi", 1112)
    d.parent.mkdir(parents=True, exist_ok=True)
    d.symlink_to(victim)
    calls, _ = fake
    n = len(calls)
    code, err = _cli(["compare", "--models", "mmin", "--seeds", "1111", "1112", "--out", str(out), "--resume"],
                     capsys)
    line = _one_error_line(code, err)
    assert str(d) in line and "symlink" in line
    assert _snapshot(victim) == before and len(calls) == n
    run_dir = trial_dir(out, "mmin", "mosi", 1111).parent.parent  # runs/mmin as a link: refused the same way
    os.rename(run_dir, tmp_path / "moved")
    run_dir.symlink_to(tmp_path / "moved")
    with pytest.raises(MMINError, match="symlink"):
        compare.run_comparison(models=["mmin"], seeds=[1111], out_dir=out, sweep=sweep.SweepOptions(resume=True))


# --- 3. a row that names a path outside --out ----------------------------------------------------
def test_a_traversing_row_reads_nothing_outside_and_reruns(fake, tmp_path, capsys):
    out = tmp_path / "a" / "o"
    _compare(capsys, out_dir=out)
    path = trial_dir(out, "mmin", "mosi", 1111) / "row.json"
    row = json.loads(path.read_text())
    row.update(run="../../outside", predictions="predictions.npz", has_predictions=True)
    path.write_text(json.dumps(row))
    outside = out.parent / "outside" / "mosi" / "seed1111"
    outside.mkdir(parents=True)
    os.mkfifo(outside / "predictions.npz")  # a read of it would block forever
    calls, _ = fake
    n = len(calls)
    with deadline(60):
        rows, cap = _compare(capsys, out_dir=out, sweep=sweep.SweepOptions(resume=True))
    assert "unreadable, rerunning" in cap.out and "run" in cap.out and len(calls) == n + 1
    assert rows[0].run == "mmin" and rows[0].status == "ok"


# --- 4. files that are not what they claim ---------------------------------------------------------
@pytest.mark.parametrize("kind", ["fifo", "devzero", "deep", "pid 2**70", "time 1e300", "pid NaN", "pid bool",
                                  "list", "symlink"])
def test_a_bad_lock_is_one_error_line_and_nothing_changes(fake, tmp_path, capsys, kind):
    out = tmp_path / "o"
    _compare(capsys, out_dir=out)
    lock = out / ".mmin-out.lock"
    good = {"pid": os.getpid() + 1, "host": socket.gethostname(), "locked_at": 0.0, "process_start": None,
            "command": "x"}
    if kind == "fifo":
        os.mkfifo(lock)
    elif kind == "devzero":
        lock.symlink_to("/dev/zero")
    elif kind == "symlink":
        (tmp_path / "elsewhere.json").write_text(json.dumps(good))
        lock.symlink_to(tmp_path / "elsewhere.json")
    else:
        text = {"deep": "[" * 100_000 + "]" * 100_000, "list": "[1, 2]",
                "pid 2**70": json.dumps({**good, "pid": 2**70}), "time 1e300": json.dumps({**good, "locked_at": 1e300}),
                "pid NaN": json.dumps({**good, "pid": float("nan")}),
                "pid bool": json.dumps({**good, "pid": True})}[kind]
        lock.write_text(text)
    before = _snapshot(out)
    with deadline(30):
        code, err = _cli(["compare", "--models", "mmin", "--seeds", "1111", "--out", str(out), "--resume"], capsys)
    line = _one_error_line(code, err)
    assert ".mmin-out.lock" in line and "nothing was changed" in line
    assert _snapshot(out) == before


@pytest.mark.parametrize("kind", ["fifo", "devzero", "deep"])
def test_a_row_that_is_a_fifo_dev_zero_or_deep_is_unreadable_and_rerun(fake, tmp_path, capsys, kind):
    out = tmp_path / "o"
    _compare(capsys, out_dir=out)
    path = trial_dir(out, "mmin", "mosi", 1111) / "row.json"
    path.unlink()
    {"fifo": lambda: os.mkfifo(path), "devzero": lambda: path.symlink_to("/dev/zero"),
     "deep": lambda: path.write_text('{"run": ' + "[" * 100_000 + "]" * 100_000 + "}")}[kind]()
    calls, _ = fake
    n = len(calls)
    with deadline(60):
        rows, cap = _compare(capsys, out_dir=out, sweep=sweep.SweepOptions(resume=True))
    assert "unreadable, rerunning" in cap.out and len(calls) == n + 1 and rows[0].status == "ok"


@pytest.mark.parametrize("kind", ["fifo", "devzero", "header 4e9", "inflating", "100k samples"])
def test_hostile_predictions_are_left_out_of_the_statistics(fake, tmp_path, capsys, caplog, kind):
    """The trials' rows say predictions were saved; the files are hostile. The tables are written
    without statistics for them; never a hang, a traceback or gigabytes."""
    from mmin_plugin.runs.record import write_predictions

    out = tmp_path / "o"
    _compare(capsys, out_dir=out, models=["mmin", "misa"])
    for run in ("mmin", "misa"):
        d = trial_dir(out, run, "mosi", 1111)
        row = json.loads((d / "row.json").read_text())
        row.update(predictions="predictions.npz", has_predictions=True)
        (d / "row.json").write_text(json.dumps(row))
        write_predictions(d, {"ids": ["a", "b"], "labels": [0.0, 1.0], "preds": [0.5, 0.5]})
    target = trial_dir(out, "misa", "mosi", 1111) / "predictions.npz"
    target.unlink()
    if kind == "fifo":
        os.mkfifo(target)
    elif kind == "devzero":
        target.symlink_to("/dev/zero")
    elif kind == "100k samples":
        n = 100_000
        write_predictions(target.parent, {"ids": [f"c{i}" for i in range(n)], "labels": np.zeros(n),
                                          "preds": np.zeros(n)})
    else:
        import zipfile

        from .npy_files import npy as _npy

        ok = _npy("(2,)", data=np.zeros(2).tobytes())
        if kind == "header 4e9":
            members = {"ids": _npy("(2,)", "<U1", b"a\0\0\0b\0\0\0"), "labels": ok,
                       "preds": _npy("(4000000000,)", data=np.zeros(2).tobytes())}
        else:  # 40 KB of file that would inflate to 40 MB (the attack: 1.9 MB -> 2 GB)
            big = _npy("(5000000,)", data=bytes(40_000_000))
            members = {"ids": _npy("(2,)", "<U1", b"a\0\0\0b\0\0\0"), "labels": big, "preds": big}
        with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for name, raw in members.items():
                zf.writestr(name + ".npy", raw)
    with deadline(60):
        code, err = _cli(["compare", "--models", "mmin", "misa", "--seeds", "1111", "--out", str(out), "--resume"],
                         capsys)
    assert code == 0 and "Traceback" not in err, err
    assert str(target) in caplog.text  # the refusal is logged, naming the file
    assert "No statistics yet" in (out / "compare-mosi.md").read_text()  # one run with predictions: none


# --- 5. tracebacks instead of errors -------------------------------------------------------------------
@pytest.mark.parametrize("text", ["[1, 2]", '"a string"', "[" * 100_000 + "]" * 100_000, '{"a": NaN}', "{"])
def test_a_config_file_that_is_not_an_object_is_one_error_line(tmp_path, capsys, text):
    cfg = tmp_path / "c.json"
    cfg.write_text(text)
    code, err = _cli(["compare", "--models", "mmin", "--out", str(tmp_path / "o"), "--config-file", str(cfg)], capsys)
    assert str(cfg) in _one_error_line(code, err)
    assert not (tmp_path / "o").exists()


def test_a_stale_temp_file_with_a_huge_pid_is_left_alone(fake, tmp_path, capsys):
    from mmin_plugin.atomic import _HOST

    out = tmp_path / "o"
    out.mkdir()
    odd = out / f".compare-mosi.csv.{_HOST}-99999999999999999999.0123456789ab.tmp"
    odd.write_text("not ours")
    _compare(capsys, out_dir=out, sweep=sweep.SweepOptions(overwrite=True))
    assert odd.read_text() == "not ours" and (out / "compare-mosi.csv").is_file()
    from mmin_plugin.atomic import atomic_write_text  # what convert, checkpoints and tables write with

    other = tmp_path / f".f.npz.{_HOST}-{2**31}.0123456789ab.tmp"  # one past the largest pid
    other.write_text("x")
    atomic_write_text(tmp_path / "f.npz", "y")
    assert other.exists() and (tmp_path / "f.npz").read_text() == "y"



@pytest.mark.parametrize("kind", ["fifo", "symlink"])
def test_a_tune_journal_that_is_not_a_regular_file_is_one_error_line(fake, tmp_path, capsys, kind):
    out = tmp_path / "o"
    out.mkdir()
    journal = out / "tune-mmin-mosi.optuna.log"
    if kind == "fifo":
        os.mkfifo(journal)
    else:
        (tmp_path / "other.log").write_text("")
        journal.symlink_to(tmp_path / "other.log")
    with deadline(60):
        code, err = _cli(["tune", "-m", "mmin", "--trials", "1", "--out", str(out), "--resume"], capsys)
    assert str(journal) in _one_error_line(code, err)
    assert kind == "fifo" or (tmp_path / "other.log").read_text() == ""  # nothing written through the link
