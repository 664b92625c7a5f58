"""Atomic file writes: write a temporary sibling, then rename it over the target.

A reader, or a run killed while writing, sees the old file or the new one, never a partial one
(os.replace within one folder is atomic on POSIX and Windows). Used for checkpoints, feature
files, result tables and figures.
"""
import os
import uuid
from pathlib import Path

__all__ = ["atomic_write", "atomic_write_text", "atomic_write_bytes", "tmp_sibling"]


def tmp_sibling(path: Path) -> Path:
    """A unique temporary name next to `path` (same filesystem, so os.replace is atomic)."""
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:12]}.tmp")


def atomic_write(path, writer, mode="wb") -> Path:
    """Write via `writer(f)` into a temporary sibling of `path`, then rename it over `path`.

    The temporary file is opened normally (not mkstemp), so it gets the usual umask permissions;
    text mode is UTF-8 with no newline translation.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_sibling(path)
    text = {} if "b" in mode else {"encoding": "utf-8", "newline": ""}
    try:
        with open(tmp, mode.replace("w", "x"), **text) as f:
            writer(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if tmp.exists():
            tmp.unlink()
        raise
    return path


def atomic_write_text(path, text: str) -> Path:
    return atomic_write(path, lambda f: f.write(text), mode="w")


def atomic_write_bytes(path, data: bytes) -> Path:
    return atomic_write(path, lambda f: f.write(data))
