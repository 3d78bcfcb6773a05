"""One writer per store: a lock file beside it (``STORE.lock``) holding the owner's pid and host.

The lock is stale — and taken over with a warning — when its process is gone (same host) or its
heartbeat (the file's mtime, touched while the sweep runs) is older than ``STALE_SECONDS``
(another host), so a crashed driver never blocks a store forever.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

STALE_SECONDS = 600.0


class LockError(RuntimeError):
    """The store is being written by another live ``linflow run``."""


def lock_path(store: str | Path) -> Path:
    p = Path(store)
    return p.with_name(p.name + ".lock")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie (killed, not yet reaped) counts as gone
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def _stale(info: dict, age: float) -> bool:
    if info.get("host") == socket.gethostname():
        return not _alive(int(info.get("pid", -1)))
    return age > STALE_SECONDS


class StoreLock:
    """``with StoreLock(path):`` — exclusive writer of a store; ``beat()`` refreshes the heartbeat."""

    def __init__(self, store: str | Path):
        self.path = lock_path(store)
        self.taken_over: dict | None = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
        return False

    def acquire(self):
        me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                try:
                    info = json.loads(self.path.read_text() or "{}")
                    age = time.time() - self.path.stat().st_mtime
                except (OSError, ValueError):
                    info, age = {}, STALE_SECONDS + 1  # vanished or torn: try again / treat as stale
                if info and not _stale(info, age):
                    raise LockError(
                        f"{self.path.with_suffix('')} is being written by linflow run pid {info.get('pid')} on "
                        f"{info.get('host')} since {info.get('since')}; wait for it to finish (or, if that process "
                        f"is gone, delete {self.path})") from None
                self.taken_over = info
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self.info = me
            return self
        raise LockError(f"could not take the lock {self.path}")

    def beat(self):
        try:
            os.utime(self.path)
        except OSError:
            pass

    def release(self):
        try:
            if json.loads(self.path.read_text()).get("pid") == os.getpid():
                self.path.unlink()
        except (OSError, ValueError):
            pass

