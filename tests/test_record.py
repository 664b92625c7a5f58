"""TrialRecord (row.json's schema) and the predictions reader (mmin_plugin.runs.record).

Hostile rows and prediction files: each is refused ("unreadable"), never a traceback, a hang
(every read under `deadline`) or a read outside the output folder.
"""
import io
import json
import os
import zipfile

import numpy as np
import pytest

from mmin_plugin.bounded import UnreadableFile
from mmin_plugin.runs.record import (
    MAX_TEST_SAMPLES,
    PREDICTIONS_FILE,
    ROW_FILE,
    RecordError,
    TrialRecord,
    load_predictions,
    load_record,
    read_predictions,
    read_record,
    trial_dir,
    write_predictions,
    write_record,
)

from .npy_files import npy as _npy
from .npy_files import npz as _npz
from .timeouts import deadline


def _record(**kw):
    base = dict(run="mmin", dataset="mosi", seed=1111, model="mmin", status="ok",
                metrics={"MAE": 0.71, "Corr": 0.6}, valid_per_epoch=[{"MAE": 0.8}], wall_time_s=1.5,
                epochs=3, config={"d_model": 16, "lists": [[1, 2]]}, fingerprint={"sha256": "ab", "parts": {}})
    base.update(kw)
    return TrialRecord(**base)


def _write_row(out, data, run="mmin", dataset="mosi", seed=1111):
    d = trial_dir(out, run, dataset, seed)
    d.mkdir(parents=True, exist_ok=True)
    (d / ROW_FILE).write_text(data if isinstance(data, str) else json.dumps(data))
    return d


def test_round_trip_through_row_json(tmp_path):
    rec = _record()
    write_record(trial_dir(tmp_path, "mmin", "mosi", 1111), rec)
    assert load_record(tmp_path, "mmin", "mosi", 1111) == rec
    assert json.loads((trial_dir(tmp_path, "mmin", "mosi", 1111) / ROW_FILE).read_text())["schema"] == 2


def test_a_non_finite_metric_is_written_as_null_and_read_back_as_none(tmp_path):
    write_record(trial_dir(tmp_path, "mmin", "mosi", 1111), _record(metrics={"MAE": 0.7, "Corr": float("nan")},
                                                                    valid_score=float("inf")))
    back = load_record(tmp_path, "mmin", "mosi", 1111)
    assert back.metrics == {"MAE": 0.7, "Corr": None} and back.valid_score is None


def test_an_absent_row_is_none_not_an_error(tmp_path):
    assert read_record(tmp_path, "mmin", "mosi", 1111) == (None, None)


BAD_FIELDS = [
    ({"seed": "1111"}, "seed"), ({"seed": True}, "seed"), ({"seed": -1}, "seed"), ({"seed": 2**70}, "seed"),
    ({"status": "done"}, "status"), ({"metrics": {"MAE": "0.5"}}, "metrics"), ({"metrics": [1]}, "metrics"),
    ({"metrics": {"MAE": True}}, "metrics"), ({"wall_time_s": -3}, "wall_time_s"),
    ({"wall_time_s": 1e300 * 10}, "wall_time_s"), ({"epochs": 1.5}, "epochs"), ({"attempt": 0}, "attempt"),
    ({"valid_per_epoch": {"a": 1}}, "valid_per_epoch"), ({"gpu_ids": [-1]}, "gpu_ids"),
    ({"error": "x" * 70_000}, "error"), ({"kind": "other"}, "kind"), ({"schema": 99}, "schema"),
    ({"run": "../../outside"}, "run"), ({"dataset": "mosi/../../x"}, "dataset"),
]


@pytest.mark.parametrize("change, field", BAD_FIELDS, ids=[f for _, f in BAD_FIELDS])
def test_a_mistyped_or_out_of_range_field_is_refused_by_name(tmp_path, change, field):
    data = {**_record().to_json(), **change}
    with pytest.raises(RecordError, match=field):
        TrialRecord.from_json(data)


@pytest.mark.parametrize("missing", ["run", "dataset", "seed", "model"])
def test_a_required_field_missing_is_refused(missing):
    data = _record().to_json()
    del data[missing]
    with pytest.raises(RecordError, match=f"'{missing}' missing"):
        TrialRecord.from_json(data)


@pytest.mark.parametrize("text", ["[1, 2]", '"a string"', "null", "[" * 100_000 + "]" * 100_000,
                                  '{"run": "mmin", "metrics": ' + "[" * 40 + "]" * 40 + "}", '{"seed": NaN}'])
def test_a_deep_or_mistyped_row_file_is_unreadable_never_a_traceback(tmp_path, text):
    _write_row(tmp_path, text)
    rec, why = read_record(tmp_path, "mmin", "mosi", 1111)
    assert rec is None and str(tmp_path) in why


def test_a_row_that_disagrees_with_its_folder_is_unreadable(tmp_path):
    _write_row(tmp_path, _record(seed=1112).to_json())
    rec, why = read_record(tmp_path, "mmin", "mosi", 1111)
    assert rec is None and "row of mmin/mosi/seed1112" in why


def test_a_traversing_run_name_never_reaches_outside(tmp_path):
    outside = tmp_path / "outside" / "mosi" / "seed1111"
    outside.mkdir(parents=True)
    os.mkfifo(outside / PREDICTIONS_FILE)  # reading it would hang
    out = tmp_path / "a" / "b"
    _write_row(out, {**_record().to_json(), "run": "../../outside"})
    with deadline():
        rec, why = read_record(out, "mmin", "mosi", 1111)
        assert rec is None and "run" in why
        with pytest.raises(RecordError, match="run"):
            trial_dir(out, "../../outside", "mosi", 1111)


@pytest.mark.parametrize("make", ["fifo", "devzero", "symlink_row", "symlink_folder", "folder"])
def test_row_that_is_not_a_regular_file_of_the_folder_is_refused(tmp_path, make):
    out = tmp_path / "out"
    d = trial_dir(out, "mmin", "mosi", 1111)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    write_record(elsewhere, _record())
    if make == "symlink_folder":
        d.parent.mkdir(parents=True)
        d.symlink_to(elsewhere)
    else:
        d.mkdir(parents=True)
        {"fifo": lambda p: os.mkfifo(p), "devzero": lambda p: p.symlink_to("/dev/zero"),
         "symlink_row": lambda p: p.symlink_to(elsewhere / ROW_FILE), "folder": lambda p: p.mkdir()}[make](d / ROW_FILE)
    with deadline():
        rec, why = read_record(out, "mmin", "mosi", 1111)
    assert rec is None and why and ("symlink" in why or "regular file" in why)


# --- predictions --------------------------------------------------------------------------------
def _pred_dir(out, n=5):
    d = trial_dir(out, "mmin", "mosi", 1111)
    write_predictions(d, {"ids": [f"clip_{i}" for i in range(n)], "labels": np.linspace(-3, 3, n),
                          "preds": np.zeros(n)})
    return d


def test_predictions_round_trip(tmp_path):
    _pred_dir(tmp_path)
    p = load_predictions(tmp_path, "mmin", "mosi", 1111)
    assert len(p) == 5 and p.ids[0] == "clip_0" and p.labels.dtype == np.float64 and p.labels[-1] == 3.0


def test_a_header_claiming_billions_of_values_is_refused_before_reading(tmp_path):
    d = trial_dir(tmp_path, "mmin", "mosi", 1111)
    ok = _npy("(2,)", data=np.zeros(2).tobytes())
    _npz(d / PREDICTIONS_FILE, {"ids": _npy("(2,)", "<U1", b"a\0\0\0b\0\0\0"), "labels": ok,
                                "preds": _npy("(4000000000,)", data=np.zeros(2).tobytes())})
    with pytest.raises(RecordError, match="shape"):
        load_predictions(tmp_path, "mmin", "mosi", 1111)
    assert read_predictions(tmp_path, "mmin", "mosi", 1111) is None


def test_an_over_inflating_member_is_refused_from_the_zip_directory(tmp_path, monkeypatch):
    d = trial_dir(tmp_path, "mmin", "mosi", 1111)
    big = _npy("(6000000,)", data=bytes(48_000_000))  # 48 MB of zeros: ~50 KB deflated
    _npz(d / PREDICTIONS_FILE, {"ids": big, "labels": big, "preds": big}, zipfile.ZIP_DEFLATED)
    assert (d / PREDICTIONS_FILE).stat().st_size < 1 << 20
    opened = []
    monkeypatch.setattr(zipfile.ZipFile, "open", lambda self, *a, **k: opened.append(a) or 1 / 0)
    with pytest.raises(RecordError, match="entry states"):
        load_predictions(tmp_path, "mmin", "mosi", 1111)
    assert not opened  # refused from the directory entry: nothing inflated


def test_more_samples_than_the_test_split_are_refused(tmp_path):
    _pred_dir(tmp_path, n=MAX_TEST_SAMPLES + 1)
    with pytest.raises(RecordError, match="samples"):
        load_predictions(tmp_path, "mmin", "mosi", 1111)
    _pred_dir(tmp_path, n=700)
    with pytest.raises(RecordError, match="686"):
        load_predictions(tmp_path, "mmin", "mosi", 1111, max_samples=686)  # MOSI's test split
    assert len(load_predictions(tmp_path, "mmin", "mosi", 1111, max_samples=700)) == 700


def test_an_oversized_predictions_file_is_refused_before_it_is_read(tmp_path):
    d = trial_dir(tmp_path, "mmin", "mosi", 1111)
    d.mkdir(parents=True)
    with open(d / PREDICTIONS_FILE, "wb") as f:
        f.truncate(200 << 20)  # sparse: 200 MB claimed, nothing on disk
    with pytest.raises(UnreadableFile, match="bytes"):
        load_predictions(tmp_path, "mmin", "mosi", 1111)


def test_pickled_object_arrays_are_refused(tmp_path):
    d = trial_dir(tmp_path, "mmin", "mosi", 1111)
    buf = io.BytesIO()
    np.save(buf, np.array(["a", None], dtype=object), allow_pickle=True)
    ok = _npy("(2,)", data=np.zeros(2).tobytes())
    _npz(d / PREDICTIONS_FILE, {"ids": buf.getvalue(), "labels": ok, "preds": ok})
    with pytest.raises(RecordError, match="dtype"):
        load_predictions(tmp_path, "mmin", "mosi", 1111)


@pytest.mark.parametrize("make", ["fifo", "devzero"])
def test_predictions_that_are_a_fifo_or_dev_zero_are_refused(tmp_path, make):
    d = trial_dir(tmp_path, "mmin", "mosi", 1111)
    d.mkdir(parents=True)
    if make == "fifo":
        os.mkfifo(d / PREDICTIONS_FILE)
    else:
        (d / PREDICTIONS_FILE).symlink_to("/dev/zero")
    with deadline():
        assert read_predictions(tmp_path, "mmin", "mosi", 1111) is None


def test_mismatched_lengths_are_refused(tmp_path):
    d = trial_dir(tmp_path, "mmin", "mosi", 1111)
    _npz(d / PREDICTIONS_FILE, {"ids": _npy("(1,)", "<U1", b"a\0\0\0"), "labels": _npy("(2,)", data=bytes(16)),
                                "preds": _npy("(2,)", data=bytes(16))})
    with pytest.raises(RecordError, match="one length"):
        load_predictions(tmp_path, "mmin", "mosi", 1111)
