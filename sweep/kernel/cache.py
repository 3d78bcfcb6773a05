"""Where the compiled kernel is cached, and how the processes of a node compile it once.

numba (``cache=True``) files a function's compiled code under a hash of its source file's folder, and
trusts it only while that file is unchanged. Two things follow that this module fixes:

* On a cluster the workers receive ``sweep`` through Ray's ``py_modules``, unpacked in a new folder per
  job or cluster: the same bytes in another place, so a cache miss and ~20 s of compiling per worker.
  numba also checks a function only against its own file, so a cached ``stepper.integrate`` would not
  notice a change to ``flows.py``, whose functions it compiles in. :class:`KernelLocator` files every
  function of the kernel's modules in one folder, ``CACHE_DIR/kernel-<KEY>``, KEY a hash of the contents
  of all of them (and of ``schema.py``, whose statuses the stepper compiles in): any copy of the same
  sources finds it, and any change to them gets a new one.
* Worker processes that start together on a node before the cache is written would all compile, in
  parallel. :func:`compile_once` has the first of them compile (a warm-up call, under an exclusive file
  lock beside the cache) while the others wait for it, then load what it wrote (sweep.task calls it
  before a worker's first batch).
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

try:
    import fcntl
except ImportError:  # not POSIX: no lock, every process compiles what it finds missing
    fcntl = None


def _cache_dir() -> Path:
    """Where compiled code is cached: per user (numba writes each file aside, then renames it, so concurrent
    processes are safe), so each machine compiles once per version of the kernel's sources; a temporary
    folder when the home folder cannot be written. NUMBA_CACHE_DIR, when set, wins."""
    for base in (Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"), Path(tempfile.gettempdir())):
        path = base / "linflow" / f"numba-{os.getuid() if hasattr(os, 'getuid') else 0}"
        try:
            path.mkdir(parents=True, exist_ok=True)
            if os.access(path, os.W_OK):
                return path
        except OSError:
            continue
    return Path(tempfile.mkdtemp(prefix="linflow-numba-"))


CACHE_DIR = Path(os.environ["NUMBA_CACHE_DIR"]) if os.environ.get("NUMBA_CACHE_DIR") else _cache_dir()
os.environ.setdefault("NUMBA_CACHE_DIR", str(CACHE_DIR))  # read when numba is first imported, and by workers

import numba  # noqa: E402 — after NUMBA_CACHE_DIR is set
from numba.core import caching  # noqa: E402

if not numba.config.CACHE_DIR:  # numba was imported before us
    numba.config.CACHE_DIR = str(CACHE_DIR)

HERE = Path(__file__).resolve().parent  # the kernel's modules: the only ones KernelLocator serves
# the kernel's sources and what it imports from the project (the statuses of schema.py, frozen into the stepper)
SOURCES = [*sorted(HERE.glob("*.py")), HERE.parent / "schema.py"]
KEY = hashlib.sha256(b"".join(p.name.encode() + b"\0" + p.read_bytes() for p in SOURCES)).hexdigest()
FOLDER = CACHE_DIR / f"kernel-{KEY[:16]}"


class KernelLocator(caching._SourceFileBackedLocatorMixin, caching._CacheLocator):
    """numba's cache locator for the functions of ``sweep/kernel/*.py``, wherever that folder is: their files
    go to FOLDER, stamped with KEY (the contents of the kernel's sources) instead of their own file's path
    and stamp. Other modules are left to numba's own locators."""

    def __init__(self, py_func, py_file):
        self._py_file = py_file
        self._lineno = py_func.__code__.co_firstlineno  # with the function's name: its files' names

    def get_cache_path(self):
        return str(FOLDER)

    def get_source_stamp(self):
        return KEY

    @classmethod
    def from_function(cls, py_func, py_file):
        if Path(py_file).resolve().parent != HERE:
            return None
        return super().from_function(py_func, py_file)  # None when FOLDER cannot be written: numba's own


_impl = getattr(caching, "CacheImpl", None) or caching._CacheImpl  # named _CacheImpl before numba 0.62
if KernelLocator not in _impl._locator_classes:
    _impl._locator_classes.insert(0, KernelLocator)  # before any @jit of the kernel: flows imports us first


WAIT_SECONDS = 600.0  # a waiter gives up after this and compiles on its own (a holder stopped, not dead)
_done: set[str] = set()
_mutex = threading.Lock()


def compile_once(name: str, warm: Callable[[], object], lock: str | None = None) -> None:
    """Run ``warm`` — calls that compile, or load from the cache, a part of the kernel — once in this process,
    so that of the processes sharing FOLDER (a node) one compiles while the others wait, then load.

    The first takes ``FOLDER/<lock>.lock`` (``lock``: default ``name``) exclusively (flock), runs ``warm`` and
    leaves a mark ``name``; the others wait on a shared lock (so that they load together), and a process that
    finds the mark takes no lock. A holder that dies releases its lock with it, and a waiter that then finds no
    mark tries again itself; one that has waited WAIT_SECONDS runs ``warm`` without the lock. Parts whose code
    shares numba's index files (numba rewrites them unlocked) share a ``lock``: one compiles at a time, each
    leaves its own mark. ``warm``'s errors are raised."""
    with _mutex:
        if name not in _done:
            _compile_once(name, warm, lock or name)
            _done.add(name)


def _compile_once(name: str, warm: Callable[[], object], lock_name: str) -> None:
    mark = FOLDER / f"{name}-{_machine()}.done"  # the machine: what numba's index keys the code by
    if fcntl is None or mark.exists():
        warm()
        return
    deadline = time.monotonic() + WAIT_SECONDS
    try:
        FOLDER.mkdir(parents=True, exist_ok=True)
        lock = open(FOLDER / f"{lock_name}.lock", "a")  # noqa: SIM115 — closed below
    except OSError:
        warm()
        return
    with lock:
        while True:
            if _flock(lock, fcntl.LOCK_EX):
                try:
                    warm()
                    mark.touch()
                finally:
                    fcntl.flock(lock, fcntl.LOCK_UN)
                return
            while not _flock(lock, fcntl.LOCK_SH):  # someone compiles: wait until they are done
                if time.monotonic() > deadline:
                    warm()
                    return
                time.sleep(0.1)
            try:
                if mark.exists():
                    warm()  # loads what the holder compiled
                    return
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
            # the holder died or failed before its mark: try to be the one


def _flock(f, kind: int) -> bool:
    try:
        fcntl.flock(f, kind | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def _machine() -> str:
    """The target CPU (name and features), Python and numba: what the cached code is valid for."""
    from numba.core.registry import cpu_target

    key = (cpu_target.target_context.codegen().magic_tuple(), sys.version, numba.__version__)
    return hashlib.sha256(repr(key).encode()).hexdigest()[:16]
