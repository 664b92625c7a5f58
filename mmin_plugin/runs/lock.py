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

from ..atomic import _process_start
from ..errors import MMINConfigError

logger = logging.getLogger("MMSA." + __name__)

__all__ = ["LOCK_FILE", "OutLock", "lock_out"]

LOCK_FILE = ".mmin-out.lock"


def _me() -> Dict:
    start = _process_start(os.getpid())
    return {"pid": os.getpid(), "host": socket.gethostname(),
            "process_start": start if start != float("-inf") else None, "locked_at": time.time(),
            "command": " ".join(sys.argv)[:300]}


def _holder(path: Path) -> Optional[Dict]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        data = {}
    return data if isinstance(data, dict) else {}


def _holder_gone(holder: Dict) -> bool:
    """True only when the holder certainly is not running (this host, dead or reused pid)."""
    pid, host = holder.get("pid"), holder.get("host")
    if host != socket.gethostname() or not isinstance(pid, int) or isinstance(pid, bool):
        return False
    start = _process_start(pid)
    if start is None:
        return True
    recorded = holder.get("process_start")
    # the pid now names a process started after the lock's holder (1 s: clock-tick resolution)
    return isinstance(recorded, (int, float)) and start != float("-inf") and start > recorded + 1.0


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
            holder = _holder(self.path)
            if holder is None:
                continue  # released meanwhile
            if holder.get("pid") == me["pid"] and holder.get("host") == me["host"]:
                self.held = True  # ours already (an earlier sweep of this process)
                return self
            if not _holder_gone(holder):
                when = holder.get("locked_at")
                since = time.strftime(" since %Y-%m-%d %H:%M:%S", time.localtime(when)) \
                    if isinstance(when, (int, float)) else ""
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
        holder = _holder(self.path)
        if holder is not None and holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
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
