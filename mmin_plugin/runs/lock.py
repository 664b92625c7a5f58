"""One process at a time per output folder: `<out>/.mmin-out.lock`.

Two sweeps in one `--out` would train the same trial into the same folder and append two rows to
MMSA's results CSV. The lock is a small JSON file (pid, host, the process's start time, command),
created atomically (written aside, then hard-linked into place, which fails if it exists).

A lock is taken over only when its holder certainly cannot be running: on this host, its pid is
gone or now belongs to a process started after the lock was taken (pid reuse). A lock held on
another host (a shared network folder) is never taken over: no process there can be checked from
here. The refusal names that host and pid and says to delete the lock file once that process is
known to be gone. The same process may take its own lock again (several sweeps one after another
in one Python session). Design notes: docs/design/experiments.md.
"""
from __future__ import annotations

import atexit
import json
import logging
import os
import socket
import sys
import time
import uuid
from pathlib import Path
from typing import Dict, Optional

from ..atomic import process_start
from ..bounded import UnreadableFile, read_json
from ..errors import MMINConfigError

logger = logging.getLogger("MMSA." + __name__)

__all__ = ["LOCK_FILE", "OutLock", "lock_out"]

LOCK_FILE = ".mmin-out.lock"
#: a lock file is a few hundred bytes; anything much larger is not one of ours
MAX_LOCK_BYTES = 64 << 10
#: pid range accepted in a lock (Linux's pid_max is at most 2**22; 2**31 - 1 is any POSIX pid_t)
MAX_PID = 2**31 - 1
#: epoch seconds accepted in a lock (0 .. year 5138)
MAX_TIME = 1e11


def _me() -> Dict:
    start = process_start(os.getpid())
    return {"pid": os.getpid(), "host": socket.gethostname(),
            "process_start": start if start != float("-inf") else None, "locked_at": time.time(),
            "command": " ".join(sys.argv)[:300]}


class BadLock(UnreadableFile):
    """A lock file that is not one this package wrote (unreadable, or a field of the wrong type)."""


def _check_holder(data, path: Path) -> Dict:
    """`data` if its fields are a lock's: pid an integer in [1, MAX_PID], host a string, the times
    finite numbers in [0, MAX_TIME] (process_start may be null), command a string; else BadLock."""
    if not isinstance(data, dict):
        raise BadLock(f"{path}: expected a JSON object; found {type(data).__name__}")
    checks = {"pid": lambda v: isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= MAX_PID,
              "host": lambda v: isinstance(v, str) and 0 < len(v) <= 255,
              "process_start": lambda v: v is None or _time(v), "locked_at": _time,
              "command": lambda v: isinstance(v, str) and len(v) <= 4096}
    for key, ok in checks.items():
        if key not in data and key in ("process_start", "command"):
            continue
        if key not in data or not ok(data[key]):
            found = repr(data.get(key))[:60] if key in data else "nothing"
            raise BadLock(f"{path}: field '{key}': expected "
                          + {"pid": f"an integer in [1, {MAX_PID}]", "host": "a host name",
                             "process_start": "a time in epoch seconds or null", "locked_at": "a time in epoch seconds",
                             "command": "a string"}[key] + f"; found {found}")
    return data


def _time(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= MAX_TIME  # NaN fails too


def _holder(path: Path, out: Path) -> Optional[Dict]:
    """The lock's holder, None if there is no lock; BadLock if the file is not a lock of ours
    (a FIFO, /dev/zero, a symlink, too large or deep, a field of the wrong type or range)."""
    try:
        data = read_json(path, MAX_LOCK_BYTES, 4, root=out)
    except FileNotFoundError:
        return None
    except BadLock:
        raise
    except UnreadableFile as exc:
        raise BadLock(str(exc)) from None
    return _check_holder(data, path)


def _holder_gone(holder: Dict) -> bool:
    """True only when the holder certainly is not running (this host, dead or reused pid)."""
    if holder["host"] != socket.gethostname():
        return False
    start = process_start(holder["pid"])
    if start is None:
        return True
    recorded = holder.get("process_start")
    # the pid now names a process started after the lock's holder (1 s: clock-tick resolution)
    return recorded is not None and start != float("-inf") and start > recorded + 1.0


class OutLock:
    """The lock on one output folder; `acquire()` raises MMINConfigError (nothing changed) when a
    live process holds it; `release()` removes it if it is ours."""

    def __init__(self, out):
        self.out = Path(out)
        self.path = self.out / LOCK_FILE
        self.held = False

    def acquire(self) -> OutLock:
        me = _me()
        for _ in range(3):
            if self._create(me):
                self.held = True
                atexit.register(self.release)
                return self
            try:
                holder = _holder(self.path, self.out)
            except BadLock as exc:
                raise MMINConfigError(f"output folder {self.out}: its lock file is not one this package wrote "
                                      f"({exc}); nothing was changed. If no process uses this folder, delete "
                                      f"{self.path}") from None
            if holder is None:
                continue  # released meanwhile
            if holder["pid"] == me["pid"] and holder["host"] == me["host"]:
                self.held = True  # ours already (an earlier sweep of this process)
                return self
            if not _holder_gone(holder):
                since = time.strftime(" since %Y-%m-%d %H:%M:%S", time.localtime(holder["locked_at"]))
                where = ("this host" if holder.get("host") == me["host"]
                         else f"host {holder.get('host')!r} (cannot be checked from here)")
                raise MMINConfigError(
                    f"output folder {self.out}: in use by process {holder.get('pid')} on {where}{since} "
                    f"({holder.get('command') or 'command unknown'}); nothing was changed. Wait for it, or use "
                    f"another --out; if that process is gone, delete {self.path}")
            logger.warning("output folder %s: taking over the lock of process %s on %s, which is gone", self.out,
                           holder.get("pid"), holder.get("host"))
            self.path.unlink(missing_ok=True)
        raise MMINConfigError(f"output folder {self.out}: could not take the lock {self.path}; nothing was changed")

    def _create(self, me: Dict) -> bool:
        tmp = self.path.with_name(f"{LOCK_FILE}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
        tmp.write_text(json.dumps(me), encoding="utf-8")
        try:
            os.link(tmp, self.path)  # atomic, fails if the lock exists: no half-written lock is ever seen
            return True
        except FileExistsError:
            return False
        finally:
            tmp.unlink(missing_ok=True)

    def release(self) -> None:
        if not self.held:
            return
        try:
            holder = _holder(self.path, self.out)
        except BadLock:  # not ours (replaced meanwhile): left alone
            holder = None
        if holder is not None and holder["pid"] == os.getpid() and holder["host"] == socket.gethostname():
            self.path.unlink(missing_ok=True)
        self.held = False

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def lock_out(out) -> OutLock:
    """Take the lock of `out` (created if missing); see the module docstring."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise MMINConfigError(f"output folder {out}: expected a folder; found a file")
    out.mkdir(parents=True, exist_ok=True)
    return OutLock(out).acquire()
