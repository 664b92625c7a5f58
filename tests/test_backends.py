"""The backend protocol (runs/backend.py, runs/backends.py): one abstract method, a name -> class
map, and a new backend is one class plus one line in that map. The toy backend below is the one
docs/design/experiments.md shows."""
import concurrent.futures

import pytest

from mmin_plugin.experiments import compare
from mmin_plugin.runs import backends, sweep
from mmin_plugin.runs.backend import Backend, SerialBackend
from mmin_plugin.runs.record import TrialRecord


class ThreadBackend(Backend):
    """Toy backend: trials on a thread pool (a Future has done() and result(): a handle as is)."""

    name = "threads"

    def __init__(self, options):
        super().__init__(options)
        self.slots = options.max_concurrent or 2
        self.pool = concurrent.futures.ThreadPoolExecutor(self.slots)

    def start(self, trial):
        return self.pool.submit(self.trial_fn, trial)

    def close(self):
        super().close()
        self.pool.shutdown()


def test_one_abstract_method():
    assert Backend.__abstractmethods__ == frozenset({"start"})
    with pytest.raises(TypeError):
        type("NoStart", (Backend,), {})(sweep.SweepOptions())


def test_every_backend_is_in_the_map_under_its_name():
    assert set(backends.BACKENDS) == {"serial", "ray", "slurm"}
    for name, cls in backends.BACKENDS.items():
        assert issubclass(cls, Backend) and cls.name == name


def test_a_new_backend_is_one_class_and_one_line(fake_mmsa_run, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(backends.BACKENDS, "threads", ThreadBackend)  # the one line
    rows = compare.run_comparison(models=["mmin", "misa"], seeds=[1111, 1112], out_dir=tmp_path / "o",
                                  sweep=sweep.SweepOptions(backend="threads"))
    capsys.readouterr()
    assert [(r.run, r.seed, r.status) for r in rows] == [("mmin", 1111, "ok"), ("mmin", 1112, "ok"),
                                                         ("misa", 1111, "ok"), ("misa", 1112, "ok")]
    from mmin_plugin import cli

    assert "threads" in cli.build_parser()._subparsers._group_actions[0].choices["compare"].format_help()


def test_a_worker_that_dies_gives_a_failed_record_the_sweep_can_retry(tmp_path):
    from mmin_plugin.runs.trial import Trial

    def dies(trial):
        raise RuntimeError("worker lost")

    b = ThreadBackend(sweep.SweepOptions(trial_fn=dies))
    t = Trial(out=str(tmp_path), run="m", model="m", dataset="mosi", seed=1)
    b.submit(t)
    got, rec = b.wait()
    b.close()
    assert got is t and isinstance(rec, TrialRecord) and rec.status == "failed" and "worker lost" in rec.error


def test_unknown_backend_is_a_clear_error():
    from mmin_plugin.errors import MMINConfigError

    with pytest.raises(MMINConfigError, match="expected one of"):
        backends.make_backend(sweep.SweepOptions(backend="nope"))
    assert isinstance(backends.make_backend(sweep.SweepOptions()), SerialBackend)
