"""Bounded reads of files this process did not write (rows, locks, configs, predictions).

Everything read from disk is hostile. A read here:

* opens only a **regular file**: a FIFO would block the reader forever, a character device such as
  `/dev/zero` never ends, a folder is not data. The file is opened with ``O_NONBLOCK`` (opening a
  FIFO does not wait for a writer) and checked with ``fstat`` on the open descriptor, so what is
  checked is what is read;
* with ``root``: refuses a path that leaves ``root`` or passes through a **symlink** anywhere below
  ``root`` (the folder is the project's; a link in it points at someone else's files), the last
  component opened with ``O_NOFOLLOW``;
* checks the **size** against ``max_bytes`` before reading, and reads at most ``max_bytes + 1``
  bytes (a file that grows meanwhile is still refused);
* for JSON, checks the **nesting depth** on the text before parsing (the parser recurses: 100k
  nested brackets are a ``RecursionError``), and refuses NaN/Infinity and numbers that overflow.

Every refusal is an :class:`UnreadableFile` (an :class:`~mmin_plugin.errors.MMINDataError`) whose
message names the file, what was expected and what was found.
"""
from __future__ import annotations

import json
import math
import os
import re
import stat
from pathlib import Path
from typing import Optional

from .errors import MMINDataError

__all__ = ["UnreadableFile", "check_inside", "read_bytes", "read_json", "parse_json", "JSON_MAX_BYTES",
           "JSON_MAX_DEPTH"]

#: default size bound of a JSON file (a row, a lock, a config): far above any we write
JSON_MAX_BYTES = 16 << 20
#: default nesting bound of a JSON file (a row nests 4 deep, an MMSA config 3)
JSON_MAX_DEPTH = 32


class UnreadableFile(MMINDataError):
    """A file that is not what it claims (not regular, a symlink, outside its folder, too large,
    too deep, not valid JSON)."""


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK,
                       "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a folder"),
                       (stat.S_ISLNK, "a symlink")):
        if test(mode):
            return name
    return "not a regular file"


def check_inside(path, root) -> Path:
    """`path` (as it would be opened: absolute or relative to the working folder), made absolute, if it
    lies inside `root` and no component of it below `root` is a symlink (components that do not
    exist yet are fine); else :class:`UnreadableFile`."""
    root = Path(os.path.abspath(root))
    p = Path(os.path.abspath(path))
    try:
        rel = p.relative_to(root)
    except ValueError:
        raise UnreadableFile(f"{p}: expected a path inside {root}; found one outside it") from None
    if ".." in rel.parts:
        raise UnreadableFile(f"{p}: expected a path inside {root}; found '..' in it")
    q = root
    for part in rel.parts:
        q = q / part
        try:
            mode = os.lstat(q).st_mode
        except FileNotFoundError:
            break
        except OSError as exc:
            raise UnreadableFile(f"{q}: cannot be checked ({exc.strerror or exc})") from None
        if stat.S_ISLNK(mode):
            raise UnreadableFile(f"{q}: expected a file or folder of {root}; found a symlink "
                                 f"(to {os.readlink(q)!r}); refused, nothing read or changed through it")
    real_root = Path(os.path.realpath(root))
    real = Path(os.path.realpath(p))
    if real != real_root and real_root not in real.parents:
        raise UnreadableFile(f"{p}: expected a path inside {root}; it resolves to {real}")
    return p


def read_bytes(path, max_bytes: int, root=None) -> bytes:
    """The bytes of the regular file `path` (at most `max_bytes`); see the module docstring.
    FileNotFoundError if there is no such file; :class:`UnreadableFile` for anything refused."""
    path = check_inside(path, root) if root is not None else Path(path)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | (getattr(os, "O_NOFOLLOW", 0) if root is not None else 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise
    except OSError as exc:
        if root is not None and os.path.islink(path):
            raise UnreadableFile(f"{path}: expected a regular file; found a symlink; refused") from None
        raise UnreadableFile(f"{path}: cannot be opened ({exc.strerror or exc})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnreadableFile(f"{path}: expected a regular file; found {_kind(st.st_mode)}; refused")
        if st.st_size > max_bytes:
            raise UnreadableFile(f"{path}: expected at most {max_bytes} bytes; found {st.st_size}")
        os.set_blocking(fd, True)
        chunks, got = [], 0
        while got <= max_bytes:
            block = os.read(fd, min(1 << 20, max_bytes + 1 - got))
            if not block:
                break
            chunks.append(block)
            got += len(block)
        if got > max_bytes:
            raise UnreadableFile(f"{path}: expected at most {max_bytes} bytes; found more (it grew while read)")
        return b"".join(chunks)
    except OSError as exc:
        raise UnreadableFile(f"{path}: cannot be read ({exc.strerror or exc})") from None
    finally:
        os.close(fd)


_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.S)
_BRACKETS = re.compile(r"[\[\]{}]")


def _depth(text: str) -> int:
    """The deepest bracket nesting of JSON `text` (brackets inside strings do not count)."""
    depth = deepest = 0
    for m in _BRACKETS.finditer(_STRING.sub("", text)):
        depth += 1 if m.group() in "[{" else -1
        deepest = max(deepest, depth)
    return deepest


def _finite(text: str) -> float:
    v = float(text)
    if not math.isfinite(v):
        raise ValueError(f"number {text[:40]} is out of range")
    return v


def _no_constant(name: str):
    raise ValueError(f"{name} is not a number JSON allows")


def parse_json(text, source: str, max_depth: int = JSON_MAX_DEPTH):
    """`text` (str or bytes) parsed as strict JSON (no NaN/Infinity, finite numbers, at most
    `max_depth` nested), else :class:`UnreadableFile` naming `source`."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise UnreadableFile(f"{source}: expected UTF-8 JSON; found undecodable bytes ({exc.reason} at byte "
                                 f"{exc.start})") from None
    depth = _depth(text)
    if depth > max_depth:
        raise UnreadableFile(f"{source}: expected JSON nested at most {max_depth} deep; found {depth}")
    try:
        return json.loads(text, parse_float=_finite, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:
        msg = " ".join(str(exc).split())[:200]
        raise UnreadableFile(f"{source}: expected valid JSON; found {type(exc).__name__}: {msg}") from None


def read_json(path, max_bytes: int = JSON_MAX_BYTES, max_depth: int = JSON_MAX_DEPTH, root=None,
              expect: Optional[type] = None):
    """The JSON value in `path`, read with :func:`read_bytes` and :func:`parse_json`; with
    `expect` (dict or list), a value of another type is refused too."""
    value = parse_json(read_bytes(path, max_bytes, root), str(path), max_depth)
    if expect is not None and not isinstance(value, expect):
        name = {dict: "a JSON object", list: "a JSON array"}.get(expect, expect.__name__)
        raise UnreadableFile(f"{path}: expected {name}; found {_json_type(value)}")
    return value


def _json_type(value) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", int: "a number",
            float: "a number", type(None): "null"}.get(type(value), type(value).__name__)
