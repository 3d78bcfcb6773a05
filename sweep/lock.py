"""One writer per store: a lock file beside it (``STORE.lock``, named after the store's resolved path,
so every symlink to a store shares its lock) holding the owner's pid, host and a random token.

The lock appears with its content in one step: the content is written to a file of its own, which is
then hard-linked to the lock's name (``link`` fails when the name exists). A lock is stale — and taken
over with a warning — when its process is gone (same host) or its heartbeat (the file's mtime, touched
while the sweep runs) is older than ``STALE_SECONDS`` (another host), so a crashed driver never blocks a
store forever. A lock without readable content (left by a writer without hard links, or by hand) is
busy for ``GRACE_SECONDS`` after it was written, stale after that.

Taking over is race-free: a process first claims the stale lock — a claim file named after the lock's
content, made the same exclusive way — and only the holder of the claim replaces that lock by its own
(one rename), after checking that the lock still holds the content it judged stale.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import secrets
import socket
import time
from pathlib import Path

from .errors import LockError

STALE_SECONDS = 600.0
GRACE_SECONDS = 5.0
CLAIM_STALE_SECONDS = 60.0  # a takeover takes milliseconds: a claim this old on another host is dead
ATTEMPTS = 100


def lock_path(store: str | Path) -> Path:
    p = Path(store).resolve()
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


def _read(path: Path) -> tuple[bytes, dict, float] | None:
    """(raw content, owner — {} when empty or torn —, age in seconds) of a lock file; None when gone."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
            age = time.time() - os.fstat(f.fileno()).st_mtime
    except FileNotFoundError:
        return None
    try:
        info = json.loads(raw)
    except ValueError:
        info = {}
    ok = isinstance(info, dict) and isinstance(info.get("pid"), int) and info["pid"] > 0 and "host" in info
    return raw, info if ok else {}, age


def _stale(info: dict, age: float, stale_seconds: float = STALE_SECONDS) -> bool:
    if not info:  # no readable owner: being written, unless it has been so for long
        return age > GRACE_SECONDS
    if info["host"] == socket.gethostname():
        return not _alive(info["pid"])  # a complete lock naming a dead process: stale at any age
    return age > stale_seconds


def writer(store: str | Path) -> dict | None:
    """The owner of a store's lock ({pid, host, since, …}; {} while its content is being written) when it
    is alive — a run is writing the store —, else None."""
    seen = _read(lock_path(store))
    if seen is None or _stale(seen[1], seen[2]):
        return None
    return seen[1]


def _place(path: Path, info: dict) -> bool:
    """Create ``path`` holding ``info`` in one step; False when it exists."""
    tmp = path.with_name(f".{path.name}.{info['token']}")
    with open(tmp, "x") as f:
        json.dump(info, f)
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
            raise
        # no hard links here: exclusive create, then write (readers see it empty for a moment: busy)
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            json.dump(info, f)
        return True
    finally:
        tmp.unlink(missing_ok=True)


def _replace(path: Path, info: dict) -> None:
    """Put a file holding ``info`` in place of ``path`` in one step."""
    tmp = path.with_name(f".{path.name}.{info['token']}")
    try:
        with open(tmp, "x") as f:
            json.dump(info, f)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _when(age: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(time.time() - age))


class StoreLock:
    """``with StoreLock(path):`` — exclusive writer of a store; ``beat()`` refreshes the heartbeat.

    After ``acquire``, ``taken_over`` is None, or the owner of the stale lock it replaced (``{}`` when
    that lock was unreadable) with ``heartbeat``, the time of its last sign of life."""

    def __init__(self, store: str | Path):
        self.path = lock_path(store)
        self.store = self.path.with_name(self.path.name[: -len(".lock")])
        self.taken_over: dict | None = None
        self.info: dict | None = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
        return False

    def acquire(self):
        me = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": time.strftime("%Y-%m-%d %H:%M:%S"),
            "token": secrets.token_hex(8),
        }
        for _ in range(ATTEMPTS):
            if _place(self.path, me):
                self.info = me
                return self
            seen = _read(self.path)
            if seen is None:
                continue  # released meanwhile
            raw, info, age = seen
            if not _stale(info, age):
                raise LockError(self._busy(info, age))
            if self._take_over(raw, info, age, me):
                self.info = me
                return self
            time.sleep(0.01)  # someone else is taking it over right now, or it changed: look again
        raise LockError(f"could not take the lock {self.path}: it keeps changing; try again")

    def _busy(self, info: dict, age: float) -> str:
        if not info:
            return (
                f"{self.store} is being written by another linflow run (its lock {self.path} was made "
                f"{age:.1f} s ago and is not readable yet); wait for it to finish"
            )
        return (
            f"{self.store} is being written by linflow run pid {info['pid']} on {info['host']} since "
            f"{info.get('since')}; wait for it to finish (or, if that process is gone, delete {self.path})"
        )

    def _take_over(self, raw: bytes, info: dict, age: float, me: dict) -> bool:
        """Replace the stale lock ``raw`` by ours if this process wins the claim on it."""
        key = hashlib.sha256(raw).hexdigest()[:16]
        claims = []
        for k in range(ATTEMPTS):  # claim k is tried only when claims 0…k−1 are held by dead processes
            claim = self.path.with_name(f"{self.path.name}.takeover-{key}-{k}")
            claims.append(claim)
            if _place(claim, me):
                break
            seen = _read(claim)
            if seen is None or not _stale(seen[1], seen[2], CLAIM_STALE_SECONDS):
                claims.pop()
                return False  # a live claim (or one just finished): that process takes it over
        else:
            return False
        try:
            # only the holder of this claim replaces this lock, and the content it judged stale never
            # comes back (its token is unique): if it is still there, it is still stale
            now = _read(self.path)
            if now is None or now[0] != raw:
                return False
            _replace(self.path, me)  # in one step: no moment without a lock for another to slip in
        finally:
            for claim in claims:
                claim.unlink(missing_ok=True)
        self.taken_over = {**info, "heartbeat": _when(age)}
        return True

    def takeover_message(self) -> str | None:
        """One line saying whose lock ``acquire`` took over, or None."""
        t = self.taken_over
        if t is None:
            return None
        if "pid" not in t:
            return f"took over the lock of {self.store} from an unreadable lock file (written {t['heartbeat']})"
        gone = "gone since" if t["host"] == socket.gethostname() else "no heartbeat since"
        return f"took over the lock of {self.store} from pid {t['pid']} on {t['host']} ({gone} {t['heartbeat']})"

    def beat(self):
        try:
            os.utime(self.path)
        except OSError:
            pass

    def release(self):
        try:
            seen = _read(self.path)
            if self.info and seen and seen[1].get("token") == self.info["token"]:
                self.path.unlink(missing_ok=True)
        except OSError:
            pass
        self.info = None
