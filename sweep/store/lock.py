"""One writer per store: a lock file beside it (``STORE.lock``, named after the store's resolved path,
so every symlink to a store shares its lock) holding the owner's pid, host, PID namespace, boot id, a
random token and a generation (how many takeovers the lock has seen).

The lock appears with its content in one step: the content is written to a file of its own, which is
then hard-linked to the lock's name (``link`` fails when the name exists). A lock is stale — and taken
over with a warning — when its process is gone (a pid is proof of death only on the same host, in the
same PID namespace, in the same boot) or else when its heartbeat (the file's mtime, touched while the
sweep runs) is older than ``STALE_SECONDS``, so a crashed driver never blocks a store forever. A lock
without readable content (left by a writer without hard links, or by hand) is busy for ``GRACE_SECONDS``
after it was written, stale after that.

Taking over is race-free: a process first claims the stale lock — a claim file named after the lock's
content, made the same exclusive way — and only the holder of the claim replaces that lock by its own
(one rename), after checking that the lock still holds the content it judged stale.

A lock is a lease: its holder can be paused for minutes (SIGSTOP, swap, a network disk) and wake up
after another driver took it over. So a holder checks that the lock still holds its token — and that
the store is still the one it opened — before every write and every heartbeat (:meth:`StoreLock.check`),
and stops with :class:`LockLost` when it does not.
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

from ..errors import LockError, LockLost

STALE_SECONDS = 600.0  # a heartbeat older than this: its driver is gone (the driver beats every 1/20 of it)
GRACE_SECONDS = 5.0
CLAIM_STALE_SECONDS = 60.0  # a takeover takes milliseconds: a claim this old on another host is dead
ATTEMPTS = 100


def heartbeat_seconds() -> float:
    """How often a holder touches its lock: 20 beats in the stale age."""
    return STALE_SECONDS / 20


def lock_path(store: str | Path) -> Path:
    p = Path(store).resolve()
    return p.with_name(p.name + ".lock")


def _host() -> str:
    return socket.gethostname()


def _read_text(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def _namespace() -> dict:
    """Where a pid means this process: the PID namespace and the boot (None where the system has no /proc)."""
    try:
        pidns = os.readlink("/proc/self/ns/pid")
    except OSError:
        pidns = None
    return {"pidns": pidns, "boot": _read_text("/proc/sys/kernel/random/boot_id")}


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
    return raw, _owner(raw), age


def _owner(raw: bytes) -> dict:
    """The owner a lock file's content names ({} when empty or torn)."""
    try:
        info = json.loads(raw)
    except ValueError:
        return {}
    ok = isinstance(info, dict) and isinstance(info.get("pid"), int) and info["pid"] > 0 and "host" in info
    return info if ok else {}


def _pid_visible(info: dict) -> bool:
    """Whether the pid of a lock names a process this one can see: same host, PID namespace and boot."""
    return info["host"] == _host() and all(info.get(k, "?") == v for k, v in _namespace().items())


def _stale(info: dict, age: float, stale_seconds: float | None = None) -> bool:
    if not info:  # no readable owner: being written, unless it has been so for long
        return age > GRACE_SECONDS
    if _pid_visible(info):
        return not _alive(info["pid"])  # a complete lock naming a dead process: stale at any age
    return age > (STALE_SECONDS if stale_seconds is None else stale_seconds)  # elsewhere: only the heartbeat


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


def owner() -> dict:
    """What a new lock says of its holder: pid, host, since, a random token, generation 0, PID namespace, boot."""
    return {
        "pid": os.getpid(),
        "host": _host(),
        "since": time.strftime("%Y-%m-%d %H:%M:%S"),
        "token": secrets.token_hex(8),
        "generation": 0,
        **_namespace(),
    }


def takeover_line(store, taken: dict | None, what: str) -> str | None:
    """'took over the lock of STORE from pid P on HOST (gone since …)', or None when nothing was taken over."""
    if taken is None:
        return None
    if "pid" not in taken:
        return f"took over the lock of {store} from an unreadable {what} (written {taken['heartbeat']})"
    gone = "gone since" if _pid_visible(taken) else "no heartbeat since"
    return f"took over the lock of {store} from pid {taken['pid']} on {taken['host']} ({gone} {taken['heartbeat']})"


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
        self.pinned: tuple | None = None  # (device, inode) of the store this lock's holder writes

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
        return False

    def acquire(self):
        me = owner()
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
            gen = info.get("generation")
            me["generation"] = gen + 1 if isinstance(gen, int) else 1
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
        return takeover_line(self.store, self.taken_over, "lock file")

    def pin(self):
        """Remember the store as it is now (after it was made or opened): :meth:`check` fails once it is
        deleted or replaced."""
        st = os.stat(self.store)
        self.pinned = (st.st_dev, st.st_ino)

    def check(self):
        """LockLost unless the lock still holds this holder's token and the pinned store is still there."""
        self._verify(_read(self.path))
        if self.pinned is not None:
            try:
                st = os.stat(self.store)
                same = (st.st_dev, st.st_ino) == self.pinned and os.path.isfile(self.store / "zarr.json")
            except OSError:
                same = False
            if not same:
                raise LockLost(
                    f"{self.store} was deleted or replaced while this run wrote it; nothing more written by this run"
                )

    def _verify(self, seen):
        if seen is None:
            raise LockLost(
                f"lost the lock on {self.store}: its lock file {self.path} was deleted; the results written "
                "are safe; nothing more written by this run"
            )
        info = seen[1]
        if self.info is None or info.get("token") != self.info["token"]:
            who = f"pid {info['pid']} on {info['host']}" if info else "another run"
            raise LockLost(
                f"lost the lock on {self.store} to {who}; its results are safe; nothing more written by this run"
            )

    def beat(self):
        """Refresh the heartbeat of this holder's lock — the very file whose token was checked (LockLost when
        the lock is no longer its own: never touch another's)."""
        try:
            f = open(self.path, "rb")
        except FileNotFoundError:
            self._verify(None)
        with f:
            raw = f.read()
            self._verify((raw, _owner(raw), 0.0))
            os.utime(f.fileno())
        self.check()

    def release(self):
        self.pinned = None
        try:
            seen = _read(self.path)
            if self.info and seen and seen[1].get("token") == self.info["token"]:
                self.path.unlink(missing_ok=True)
        except OSError:
            pass
        self.info = None
