"""Atomic file writes: write a temporary sibling, then rename it over the target.

A reader, or a run killed while writing, sees the old file or the new one, never a partial one
(os.replace within one folder is atomic on POSIX and Windows); the folder is fsynced after the
rename so the new name survives a power cut.  Used for checkpoints, feature files, result
tables and figures.

Temporary siblings are named ``.<target name>.<host>-<pid>.<12 hex>.tmp`` (``host``: 8 hex
digits of a hash of the host name).  A run killed while writing leaves one behind (a checkpoint's
is ~240 MB); :func:`remove_stale_temps` deletes those of a target, and :func:`atomic_write` calls
it once per target and process, before its first write.  A temporary file is *stale* only when
its writer cannot still be writing it:

* written on this host by a process that no longer exists, or whose pid now belongs to a process
  started after the file was last modified (pid reuse);
* written on another host (a shared network folder) and not modified for :data:`FOREIGN_STALE_S`.

So two runs sharing a folder never delete each other's live temporary files, and a file is never
removed while its writer is alive.  Files of the old pattern ``.<name>.<pid>.<12 hex>.tmp`` are
treated as written on this host.
"""
import hashlib
import logging
import os
import re
import socket
import threading
import time
import uuid
from pathlib import Path

__all__ = ["atomic_write", "atomic_write_text", "atomic_write_bytes", "tmp_sibling", "remove_stale_temps",
           "fsync_dir", "process_start", "MAX_PID"]

logger = logging.getLogger("MMSA." + __name__)

#: a temporary file written on another host is stale after this long without a change (seconds)
FOREIGN_STALE_S = 24 * 3600.0
#: the largest pid any POSIX system gives (pid_t is 32-bit signed; Linux's pid_max is at most 2**22):
#: a temporary file named with a larger one was not written by this module and is left alone
MAX_PID = 2**31 - 1
_HOST = hashlib.sha1(socket.gethostname().encode("utf-8", "replace")).hexdigest()[:8]
_cleaned: set = set()
_cleaned_lock = threading.Lock()


def tmp_sibling(path: Path) -> Path:
    """A unique temporary name next to `path` (same filesystem, so os.replace is atomic)."""
    return path.with_name(f".{path.name}.{_HOST}-{os.getpid()}.{uuid.uuid4().hex[:12]}.tmp")


def _tmp_pattern(name: str):
    return re.compile(rf"^\.{re.escape(name)}\.(?:([0-9a-f]{{8}})-)?(\d{{1,10}})\.[0-9a-f]{{12}}\.tmp$")


def process_start(pid: int):
    """Start time (epoch seconds) of process `pid`; None if it does not exist (or `pid` is not a
    pid: outside [1, MAX_PID]); -inf if it exists but its start time is unknown (not Linux)."""
    if isinstance(pid, bool) or not isinstance(pid, int) or not 1 <= pid <= MAX_PID:
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except (PermissionError, OSError):
        pass  # exists (owned by someone else)
    try:
        with open(f"/proc/{pid}/stat") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])  # field 22: start time after boot
        with open("/proc/stat") as f:
            btime = next(int(line.split()[1]) for line in f if line.startswith("btime"))
        return btime + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return float("-inf")


def _is_stale(host, pid: int, mtime: float) -> bool:
    if host is not None and host != _HOST:
        return time.time() - mtime > FOREIGN_STALE_S
    if pid == os.getpid():
        return False  # ours: maybe being written by another thread
    start = process_start(pid)
    # dead writer, or the pid was reused by a process started after the file's last write
    # (1 s of slack: /proc start times have clock-tick resolution)
    return start is None or start > mtime + 1.0


def remove_stale_temps(path) -> list:
    """Delete the stale temporary siblings of `path` (see the module docstring); returns them."""
    path = Path(path)
    pattern = _tmp_pattern(path.name)
    removed = []
    try:
        entries = list(os.scandir(path.parent))
    except OSError:
        return removed
    for entry in entries:
        m = pattern.match(entry.name)
        if not m or not 1 <= int(m.group(2)) <= MAX_PID:  # not a name this module gives: left alone
            continue
        try:
            if not entry.is_file(follow_symlinks=False):
                continue
            if _is_stale(m.group(1), int(m.group(2)), entry.stat(follow_symlinks=False).st_mtime):
                os.unlink(entry.path)
                removed.append(Path(entry.path))
        except OSError as exc:  # vanished meanwhile, or not ours to delete
            logger.debug("could not remove %s: %s", entry.path, exc)
    if removed:
        logger.warning("removed %d stale temporary file(s) left by killed writes beside %s: %s",
                       len(removed), path, ", ".join(p.name for p in removed))
    return removed


def fsync_dir(folder) -> None:
    """fsync a folder so a rename in it is durable (no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on folders
    finally:
        os.close(fd)


def atomic_write(path, writer, mode="wb") -> Path:
    """Write via `writer(f)` into a temporary sibling of `path`, then rename it over `path` and
    fsync the folder.  Before the first write to `path` in this process, stale temporary siblings
    are removed (:func:`remove_stale_temps`).

    The temporary file is opened normally (not mkstemp), so it gets the usual umask permissions;
    text mode is UTF-8 with no newline translation.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    key = os.path.abspath(path)
    with _cleaned_lock:
        first = key not in _cleaned
        _cleaned.add(key)
    if first:
        remove_stale_temps(path)
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
    fsync_dir(path.parent)
    return path


def atomic_write_text(path, text: str) -> Path:
    return atomic_write(path, lambda f: f.write(text), mode="w")


def atomic_write_bytes(path, data: bytes) -> Path:
    return atomic_write(path, lambda f: f.write(data))
