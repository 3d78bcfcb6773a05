"""Stores on object storage: a URL (``s3://bucket/runs/small.zarr``) in place of a folder.

Zarr and xarray open a URL themselves (through fsspec, with the usual credentials from the environment:
``AWS_ACCESS_KEY_ID`` …, ``AWS_PROFILE``, ``AWS_ENDPOINT_URL`` for a server of your own). This module holds
what linflow does beside them: what a URL names and whether it can be reached (one line when not); the
listing (names and sizes, one LIST) and the bounded reads of the damage checks; the store's creation, its
root metadata last; and the lock — an object ``STORE.lock`` beside the store, created only if absent (a
conditional PUT, ``If-None-Match: *``), renewed and taken over only if unchanged (``If-Match``: its ETag).

The same promises as on a disk, by the same order of writes: chunks and ``status`` last, a growth becomes
visible in one PUT of the root ``zarr.json``, the driver checks its lock before every write. A store appears
when its root ``zarr.json`` does: until then a killed creation leaves a marker object (``.creating``) beside
its other objects, and the next run (holding the lock) clears them and starts again.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

from ..errors import LockError, LockLost, StoreError
from .lock import StoreLock, _owner, _stale, _when, owner, takeover_line
from .lock import writer as local_writer

_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+):/+")  # s3://…, also as pathlib folds it (s3:/…); not C:/
LOCKABLE = ("s3", "s3a")  # schemes whose filesystem writes conditionally (If-None-Match / If-Match)
CREATING = ".creating"


def is_url(out) -> bool:
    return isinstance(out, str | os.PathLike) and _URL.match(os.fspath(out)) is not None


def url(out) -> str:
    """``out`` as the URL it was written as (pathlib folds ``s3://`` to ``s3:/``), without a trailing slash."""
    text = os.fspath(out)
    scheme = _URL.match(text).group(1)
    rest = _URL.sub("", text).rstrip("/")
    return f"{scheme}:///{rest}" if scheme.lower() == "file" else f"{scheme}://{rest}"


def scheme(u: str) -> str:
    return _URL.match(u).group(1).lower()


def filesystem(u: str, field: str = "out"):
    """(filesystem, path inside it) of the URL ``u``, its listings cache dropped; StoreError in one line when no
    installed filesystem serves its scheme."""
    import fsspec

    try:
        fs, path = fsspec.core.url_to_fs(u)
    except ImportError as exc:
        raise StoreError(field, f"{u}: {exc} (then rerun)") from None
    except ValueError as exc:
        raise StoreError(field, f"{u}: {exc}: no filesystem serves {scheme(u)}://") from None
    fs.invalidate_cache()
    return fs, path.rstrip("/")


def reach(u: str, field: str = "out"):
    """:func:`filesystem`, checked to reach the store's bucket: StoreError in one line naming the URL when the
    credentials are missing or refused, or the bucket does not exist."""
    fs, path = filesystem(u, field)
    bucket = path.split("/")[0]
    try:
        fs.exists(f"{path}/zarr.json")  # a request that needs credentials (a bucket's may not)
        found = fs.exists(bucket)
    except Exception as exc:  # noqa: BLE001 — NoCredentialsError, PermissionError, a refused endpoint, …
        raise StoreError(
            field,
            f"{u}: cannot reach {scheme(u)}://{bucket} ({type(exc).__name__}: {_first_line(exc)}); set the usual "
            "credentials (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE; AWS_ENDPOINT_URL for a "
            "server of your own)",
        ) from None
    if not found:
        raise StoreError(field, f"{u}: the bucket {bucket} does not exist; create it first")
    return fs, path


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [""])[0][:200]


def exists(u: str, name: str = "zarr.json") -> bool:
    fs, path = filesystem(u)
    return fs.exists(f"{path}/{name}")


def listing(u: str, prefix: str = "") -> dict[str, int]:
    """{name relative to the store: size in bytes} of every object under ``prefix``: one LIST, nothing read."""
    fs, path = filesystem(u)
    where = f"{path}/{prefix}".rstrip("/")
    found = fs.find(where, detail=True) if fs.exists(where) else {}
    return {name[len(path) + 1 :]: int(info.get("size") or 0) for name, info in found.items()}


def read(u: str, name: str, limit: int) -> bytes:
    """At most ``limit`` bytes of the object ``name`` of the store; FileNotFoundError when it is missing."""
    fs, path = filesystem(u)
    return fs.cat_file(f"{path}/{name}", start=0, end=limit)


def delete(u: str, name: str) -> None:
    fs, path = filesystem(u)
    try:
        fs.rm_file(f"{path}/{name}")
    except FileNotFoundError:
        pass


def create(u: str, make_local) -> None:
    """Create the store ``u`` from the one ``make_local(folder)`` makes on the local disk: a marker first, then
    every object but the root ``zarr.json``, then the root (the store now exists), then the marker removed."""
    fs, path = filesystem(u)
    clear_creation(u)
    tmp = Path(tempfile.mkdtemp(prefix="linflow-create-"))
    try:
        made = tmp / "store.zarr"
        make_local(made)
        fs.pipe_file(f"{path}/{CREATING}", b"")
        files = sorted(p for p in made.rglob("*") if p.is_file())
        for f in files:
            name = f.relative_to(made).as_posix()
            if name != "zarr.json":
                fs.put_file(str(f), f"{path}/{name}")
        fs.put_file(str(made / "zarr.json"), f"{path}/zarr.json")
        fs.rm_file(f"{path}/{CREATING}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def clear_creation(u: str) -> None:
    """Remove what a killed creation left (its marker and objects, no root ``zarr.json``): under the lock."""
    fs, path = filesystem(u)
    if fs.exists(f"{path}/{CREATING}") and not fs.exists(f"{path}/zarr.json"):
        fs.rm(path, recursive=True)


def check_new(u: str, field: str = "out") -> None:
    """StoreError unless a store may be created at ``u``: nothing there but what a killed creation left."""
    fs, path = reach(u, field)
    if fs.exists(f"{path}/zarr.json") or fs.exists(f"{path}/{CREATING}"):
        return  # a store (it must then hold this sweep: the caller checks), or a creation to finish
    if fs.exists(path) and fs.ls(path):
        raise StoreError(field, f"{u} holds objects but no linflow store; choose another place")


# --------------------------------------------------------------------------------------------------
# The lock: an object beside the store, written only if absent or unchanged
# --------------------------------------------------------------------------------------------------


def _etag_of(raw: bytes) -> str:
    return '"' + hashlib.md5(raw).hexdigest() + '"'  # noqa: S324 — S3's ETag of a single-part PUT


class ObjectLock:
    """The lock of a store on object storage; the same interface and stale rules as
    :class:`sweep.store.lock.StoreLock` (its heartbeat: the object's LastModified)."""

    def __init__(self, store: str):
        self.store = store
        self.path = store + ".lock"
        if scheme(store) not in LOCKABLE:
            raise StoreError(
                "out",
                f"{store}: linflow cannot lock a store on {scheme(store)}:// (it needs conditional writes, "
                f"If-None-Match / If-Match, as on {', '.join(s + '://' for s in LOCKABLE)}); use one of those or a "
                "local path",
            )
        self.fs, self.key = filesystem(self.path)
        self.taken_over: dict | None = None
        self.info: dict | None = None
        self.etag: str | None = None
        self.pinned: bool = False

    def _read(self) -> tuple[bytes, dict, float, str] | None:
        """(raw, owner, age in seconds, ETag) of the lock object, one consistent version; None when absent."""
        for _ in range(5):
            try:
                head = self.fs.info(self.key, refresh=True)
                raw = self.fs.cat_file(self.key)
            except FileNotFoundError:
                return None
            etag = head.get("ETag") or head.get("etag")
            if etag == _etag_of(raw) or self.fs.info(self.key, refresh=True).get("ETag") == etag:
                modified = head.get("LastModified")
                age = time.time() - modified.timestamp() if modified is not None else 0.0
                return raw, _owner(raw), max(age, 0.0), etag
        raise LockError(f"could not read the lock {self.path}: it keeps changing; try again")

    def _put(self, info: dict, **condition) -> bool:
        raw = json.dumps(info).encode()
        try:
            self.fs.pipe_file(self.key, raw, **condition)
        except FileExistsError:
            return False
        except OSError as exc:
            if "pre-condition" in str(exc) or "PreconditionFailed" in str(exc):
                return False
            raise
        self.etag = _etag_of(raw)
        return True

    def acquire(self):
        me = owner()
        for _ in range(20):
            if self._put(me, IfNoneMatch="*"):
                self.info = me
                return self
            seen = self._read()
            if seen is None:
                continue
            raw, info, age, etag = seen
            if not _stale(info, age):
                raise LockError(self._busy(info))
            gen = info.get("generation")
            me["generation"] = gen + 1 if isinstance(gen, int) else 1
            if self._put(me, IfMatch=etag):  # only if the stale lock is still the one judged stale
                self.info = me
                self.taken_over = {**info, "heartbeat": _when(age)}
                return self
            time.sleep(0.05)
        raise LockError(f"could not take the lock {self.path}: it keeps changing; try again")

    def _busy(self, info: dict) -> str:
        who = f"linflow run pid {info['pid']} on {info['host']} since {info.get('since')}" if info else "another run"
        return (
            f"{self.store} is being written by {who}; wait for it to finish (or, if that process is gone, "
            f"delete {self.path})"
        )

    def takeover_message(self) -> str | None:
        return takeover_line(self.store, self.taken_over, "lock object")

    def pin(self):
        self.pinned = True

    def check(self):
        """LockLost unless the lock object is still this holder's (its ETag) and the store still exists."""
        try:
            head = self.fs.info(self.key, refresh=True)
        except FileNotFoundError:
            raise LockLost(
                f"lost the lock on {self.store}: its lock {self.path} was deleted; the results written are safe; "
                "nothing more written by this run"
            ) from None
        if self.info is None or head.get("ETag") != self.etag:
            seen = self._read()
            owner = seen[1] if seen else {}
            who = f"pid {owner['pid']} on {owner['host']}" if owner else "another run"
            raise LockLost(
                f"lost the lock on {self.store} to {who}; its results are safe; nothing more written by this run"
            )
        if self.pinned and not exists(self.store):
            raise LockLost(f"{self.store} was deleted while this run wrote it; nothing more written by this run")

    def beat(self):
        """Renew the lock object — only if it is still the version this holder wrote (LockLost otherwise)."""
        if self.info is None or not self._put(self.info, IfMatch=self.etag):
            self.check()
            raise LockLost(f"lost the lock on {self.store}; its results are safe; nothing more written by this run")
        self.check()

    def release(self):
        self.pinned = False
        try:
            if self.info is not None and self.fs.info(self.key, refresh=True).get("ETag") == self.etag:
                self.fs.rm_file(self.key)
        except (OSError, LockError):
            pass
        self.info = None


def lock_for(out):
    """The lock of the store ``out``: an object beside a store at a URL, a file beside a local one."""
    return ObjectLock(out) if is_url(out) else StoreLock(Path(out).resolve())


def writer(out) -> dict | None:
    """The owner of the live lock of the store ``out`` (a run is writing it), else None."""
    if not is_url(out):
        return local_writer(out)
    if scheme(out) not in LOCKABLE:
        return None
    seen = ObjectLock(out)._read()
    if seen is None or _stale(seen[1], seen[2]):
        return None
    return seen[1]
