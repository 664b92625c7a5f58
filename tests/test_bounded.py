"""Bounded reads (mmin_plugin.bounded): FIFOs, devices, symlinks, sizes, depth, strict JSON.

A regression here would hang (a FIFO) or eat memory (/dev/zero): every read runs under `deadline`.
"""
import json
import os

import pytest

from mmin_plugin.bounded import UnreadableFile, check_inside, parse_json, read_bytes, read_json

from .timeouts import deadline


def test_a_regular_file_is_read(tmp_path):
    (tmp_path / "a.json").write_text('{"x": [1, 2.5, "s"]}')
    assert read_json(tmp_path / "a.json", root=tmp_path) == {"x": [1, 2.5, "s"]}


def test_a_fifo_is_refused_without_blocking(tmp_path):
    os.mkfifo(tmp_path / "row.json")
    with deadline(), pytest.raises(UnreadableFile, match="FIFO"):
        read_json(tmp_path / "row.json", root=tmp_path)
    with deadline(), pytest.raises(UnreadableFile, match="FIFO"):
        read_bytes(tmp_path / "row.json", 100)


def test_dev_zero_is_refused_directly_and_through_a_symlink(tmp_path):
    (tmp_path / "row.json").symlink_to("/dev/zero")
    with deadline(), pytest.raises(UnreadableFile, match="symlink"):
        read_json(tmp_path / "row.json", root=tmp_path)
    with deadline(), pytest.raises(UnreadableFile, match="character device"):
        read_json(tmp_path / "row.json")  # no root: a symlink is followed, the device still refused
    with deadline(), pytest.raises(UnreadableFile, match="character device"):
        read_bytes("/dev/zero", 100)


def test_symlinked_folder_and_paths_outside_the_root_are_refused(tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    (other / "row.json").write_text("{}")
    root = tmp_path / "out"
    (root / "runs").mkdir(parents=True)
    (root / "runs" / "m").symlink_to(other)
    with pytest.raises(UnreadableFile, match="symlink"):
        read_json(root / "runs" / "m" / "row.json", root=root)
    with pytest.raises(UnreadableFile, match="outside"):
        check_inside(root / ".." / "other" / "row.json", root)
    with pytest.raises(UnreadableFile, match="outside"):
        check_inside(tmp_path / "elsewhere", root)
    assert check_inside(root / "runs" / "x" / "not-yet", root) == root / "runs" / "x" / "not-yet"


def test_size_is_checked_before_reading(tmp_path):
    (tmp_path / "big").write_bytes(b" " * 1001)
    with pytest.raises(UnreadableFile, match="at most 1000 bytes; found 1001"):
        read_bytes(tmp_path / "big", 1000)
    assert len(read_bytes(tmp_path / "big", 1001)) == 1001


@pytest.mark.parametrize("text, match", [
    ("[" * 100_000 + "]" * 100_000, "nested at most"),
    ('{"a": ' * 50 + "1" + "}" * 50, "nested at most"),
    ('{"pid": NaN}', "JSON"), ('{"pid": Infinity}', "JSON"), ('{"t": 1e400}', "out of range"),
    ('{"pid": ' + "9" * 5000 + "}", "JSON"), ("{'a': 1}", "valid JSON"), (b"\xff\xfe{}", "UTF-8"),
])
def test_deep_non_finite_and_invalid_json_is_one_clear_error(text, match):
    with pytest.raises(UnreadableFile, match=match):
        parse_json(text, "x.json")


def test_brackets_inside_strings_do_not_count_as_depth():
    text = json.dumps({"s": "[" * 1000 + '\\"' + "{" * 1000})
    assert parse_json(text, "x.json", max_depth=2)["s"].startswith("[[")


@pytest.mark.parametrize("value, expect", [([1, 2], dict), ("string", dict), ({"a": 1}, list)])
def test_a_json_value_of_the_wrong_type_is_refused(tmp_path, value, expect):
    (tmp_path / "c.json").write_text(json.dumps(value))
    with pytest.raises(UnreadableFile, match="expected a JSON"):
        read_json(tmp_path / "c.json", expect=expect)
