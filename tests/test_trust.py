"""No silent wrong numbers (issue 16): malformed row.json files, attempts kept apart, the lock
on `--out`, and the trial fingerprint that `--resume` checks. `runner.mmsa_run` is a fake."""
import json
from pathlib import Path

import pytest

from mmin_plugin.experiments import compare
from mmin_plugin.results import aggregate
from mmin_plugin.runs import sweep
from mmin_plugin.runs.trial import read_row, trial_dir


@pytest.fixture
def fake(fake_mmsa_run):
    return fake_mmsa_run


def _compare(capsys, **kw):
    rows = compare.run_comparison(**kw)
    return rows, capsys.readouterr().out


@pytest.mark.parametrize("bad", [[], "a string", {"run": "mmin"}, "METRIC", "SEED"])
def test_malformed_row_is_reported_and_rerun_never_a_traceback(fake, tmp_path, capsys, bad):
    calls, _ = fake
    kw = dict(models=["mmin", "misa"], seeds=[1111], out_dir=tmp_path / "o")
    _compare(capsys, **kw)
    path = trial_dir(tmp_path / "o", "misa", "mosi", 1111) / "row.json"
    row = json.loads(path.read_text())
    if bad == "METRIC":
        row["metrics"]["MAE"] = "0.5"
    elif bad == "SEED":
        row["seed"] = {"value": 1111}
    else:
        row = bad
    path.write_text(json.dumps(row))
    assert read_row(path.parent) is None
    assert [r["run"] for r in aggregate.rows_from_trial_dirs(tmp_path / "o")] == ["mmin"]
    n = len(calls)
    rows, out = _compare(capsys, sweep=sweep.SweepOptions(resume=True), **kw)
    assert [c["model"] for c in calls[n:]] == ["misa"] and "counted as not finished, runs again" in out
    assert str(path) in out and [r["status"] for r in rows] == ["ok", "ok"]
    assert read_row(path.parent)["metrics"]["MAE"] == pytest.approx(0.51)


def test_a_row_of_another_trial_is_not_reused(fake, tmp_path, capsys):
    calls, _ = fake
    kw = dict(models=["mmin"], seeds=[1111, 1112], out_dir=tmp_path / "o")
    _compare(capsys, **kw)
    src, dst = (trial_dir(tmp_path / "o", "mmin", "mosi", s) / "row.json" for s in (1111, 1112))
    dst.write_text(src.read_text())  # a hand-copied row
    n = len(calls)
    _, out = _compare(capsys, sweep=sweep.SweepOptions(resume=True), **kw)
    assert [c["seed"] for c in calls[n:]] == [1112] and "not of this trial" in out


def test_a_retry_runs_in_a_clean_folder_and_keeps_the_previous_attempt(fake, tmp_path, capsys):
    """MMSA's TFN trainer starts at best 0 / 1e8 and may never save; its `_run` then asserts the
    checkpoint exists and tests it. A retry must not find the previous attempt's checkpoint."""
    calls, plan = fake
    seen = []

    def tfn_like(kw):
        ckpt = Path(kw["model_save_dir"], "tfn-mosi.pth")
        seen.append(ckpt.exists())
        if len(seen) == 1:
            ckpt.write_bytes(b"attempt 1")
            raise RuntimeError("worker hiccup")

    plan[("tfn", 1111)] = tfn_like
    rows, out = _compare(capsys, models=["tfn"], seeds=[1111], out_dir=tmp_path / "o",
                         sweep=sweep.SweepOptions(retries=1))
    d = trial_dir(tmp_path / "o", "tfn", "mosi", 1111)
    assert seen == [False, False] and rows[0]["status"] == "ok" and rows[0]["attempt"] == 2
    assert (d / "attempt-1" / "models" / "tfn-mosi.pth").read_bytes() == b"attempt 1"
    assert "worker hiccup" in (d / "attempt-1" / "error.txt").read_text()
    assert read_row(d / "attempt-1")["status"] == "failed" and not (d / "error.txt").exists()
    # a rerun on --resume (changed config) keeps the finished attempt too
    _compare(capsys, models=["tfn"], seeds=[1111], out_dir=tmp_path / "o", overrides={"x": 1},
             sweep=sweep.SweepOptions(resume=True))
    assert read_row(d / "attempt-2")["attempt"] == 2 and read_row(d)["attempt"] == 3


def test_deterministic_errors_are_not_retried(fake, tmp_path, capsys):
    from mmin_plugin.errors import MMINDataError, NonFiniteLossError

    calls, plan = fake

    def nan(kw):
        raise NonFiniteLossError("loss is nan at epoch 1")

    def bad_data(kw):
        raise MMINDataError("feature file x: expected ...")

    plan[("mmin", 1111)], plan[("misa", 1111)] = nan, bad_data
    rows, out = _compare(capsys, models=["mmin", "misa"], seeds=[1111], out_dir=tmp_path / "o",
                         sweep=sweep.SweepOptions(retries=2))
    assert [c["model"] for c in calls] == ["mmin", "misa"] and [r["status"] for r in rows] == ["failed", "failed"]
    assert all(r["deterministic"] for r in rows) and "not retried" in out


def _lock(out, pid, host=None):
    """The lock file process `pid` would have written (its real start time: not a reused pid)."""
    import socket

    from mmin_plugin.atomic import _process_start

    out.mkdir(parents=True, exist_ok=True)
    (out / ".mmin-out.lock").write_text(json.dumps({"pid": pid, "host": host or socket.gethostname(), "locked_at": 0,
                                             "process_start": _process_start(pid),
                                             "command": "python -m mmin_plugin compare"}))


def _snapshot(out):
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in sorted(out.rglob("*"))}


@pytest.mark.parametrize("other_host", [False, True])
def test_an_out_in_use_by_a_live_process_is_refused_and_left_unchanged(fake, tmp_path, capsys, other_host):
    import subprocess
    import sys

    from mmin_plugin.errors import MMINConfigError

    calls, _ = fake
    kw = dict(models=["mmin"], seeds=[1111], out_dir=tmp_path / "o")
    _compare(capsys, **kw)
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        _lock(tmp_path / "o", holder.pid, "elsewhere.example" if other_host else None)
        before, n = _snapshot(tmp_path / "o"), len(calls)
        for opts in (sweep.SweepOptions(resume=True), sweep.SweepOptions(overwrite=True)):
            with pytest.raises(MMINConfigError, match=f"in use by process {holder.pid} on "
                               + ("host 'elsewhere.example'" if other_host else "this host")):
                compare.run_comparison(sweep=opts, **kw)
        assert _snapshot(tmp_path / "o") == before and len(calls) == n
    finally:
        holder.kill()
        holder.wait()
    if not other_host:  # its holder is dead now: the lock is stale and taken over
        rows, _ = _compare(capsys, sweep=sweep.SweepOptions(overwrite=True), **kw)
        assert rows[0]["status"] == "ok" and len(calls) == n + 1
        assert not (tmp_path / "o" / ".mmin-out.lock").exists()  # released at the end


@pytest.fixture
def cache(monkeypatch, tmp_path):
    monkeypatch.setenv("MMIN_PLUGIN_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_resume_reruns_a_trial_whose_fingerprint_changed_and_says_why(fake, tmp_path, capsys, cache, monkeypatch):
    from mmin_plugin.experiments import tune

    calls, _ = fake
    data, cfg = tmp_path / "features.pkl", tmp_path / "tuned.json"
    data.write_bytes(b"features v1")
    cfg.write_text(json.dumps(tune.mmsa_config_file("mmin", "mosi", {"d_model": 32})))
    kw = dict(models=["mmin", "misa"], seeds=[1111], out_dir=tmp_path / "o", feature_path=data, config_files=[cfg])
    resume = sweep.SweepOptions(resume=True)
    _compare(capsys, **kw)

    def rerun(**extra):
        n = len(calls)
        _, out = _compare(capsys, **{**kw, **extra})
        return [c["model"] for c in calls[n:]], out

    assert rerun(sweep=resume)[0] == []  # nothing changed: nothing runs
    cfg.write_text(json.dumps(tune.mmsa_config_file("mmin", "mosi", {"d_model": 64})))  # same path, new contents
    ran, out = rerun(sweep=resume)
    assert ran == ["mmin"] and "mmin mosi seed 1111 runs again: changed since it ran: config, config_file" in out
    from mmin_plugin.runs import fingerprint as fp  # (imported here: the test runs on main up to this line)

    row = read_row(trial_dir(tmp_path / "o", "mmin", "mosi", 1111))
    assert set(row["fingerprint"]["parts"]) == set(fp.PARTS) and len(row["fingerprint"]["sha256"]) == 64
    data.write_bytes(b"features v2, regenerated")
    ran, out = rerun(sweep=resume)
    assert ran == ["mmin", "misa"] and "changed since it ran: data" in out
    real = fp.code_versions()
    monkeypatch.setattr(fp, "code_versions", lambda: {**real, "git_commit": "0123abc"})
    ran, out = rerun(sweep=resume)
    assert ran == ["mmin", "misa"] and f"code (git_commit {real['git_commit']} -> 0123abc)" in out
    monkeypatch.setattr(fp, "code_versions", lambda: {**real, "git_commit": "4567def"})
    assert rerun(sweep=sweep.SweepOptions(resume=True, resume_across_code_versions=True))[0] == []
    # a row of an older version (no fingerprint) is rerun, unless the flag says keep it
    path = trial_dir(tmp_path / "o", "misa", "mosi", 1111) / "row.json"
    old = json.loads(path.read_text())
    del old["fingerprint"]
    path.write_text(json.dumps(old))
    assert rerun(sweep=sweep.SweepOptions(resume=True, resume_across_code_versions=True))[0] == []
    monkeypatch.setattr(fp, "code_versions", lambda: {**real, "git_commit": "0123abc"})  # mmin's row's code
    ran, out = rerun(sweep=resume)
    assert ran == ["misa"] and "no fingerprint" in out


def test_data_content_hash_is_computed_once_and_cached(tmp_path, cache):
    from mmin_plugin.runs.fingerprint import data_hash

    f = tmp_path / "x.pkl"
    f.write_bytes(b"abc")
    first = data_hash(f)
    assert first["sha256"] == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    known = json.loads((cache / "file-hashes.json").read_text())
    key = next(iter(known))
    known[key] = "from-the-cache"
    (cache / "file-hashes.json").write_text(json.dumps(known))
    assert data_hash(f)["sha256"] == "from-the-cache"  # read, not recomputed
    f.write_bytes(b"abcd")  # size/mtime changed: hashed again
    assert data_hash(f)["sha256"] not in ("from-the-cache", first["sha256"])


def test_keeping_rows_across_code_versions_needs_resume(tmp_path, capsys):
    from mmin_plugin import cli

    rc = cli.main(["compare", "--models", "mmin", "--out", str(tmp_path / "o"), "--resume-across-code-versions"])
    assert rc == 2 and "expected together with --resume" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
