"""The errors linflow raises on purpose, in the library's words.

``field`` names what is wrong — a spec path (``axes.depth.2``, ``problem.data``) or an argument of
:func:`sweep.runner.run` (``out``, ``address``) — and ``problem`` says how; ``str(error)`` is
``"field: problem"``. Only the command line turns fields into flags (``--out``) and errors into exit codes.
"""

from __future__ import annotations


class LinflowError(Exception):
    def __init__(self, field: str | None, problem: str):
        super().__init__(f"{field}: {problem}" if field else problem)
        self.field = field
        self.problem = problem


class SpecError(LinflowError, ValueError):
    """A bad spec or argument."""


class StoreError(LinflowError):
    """The store at ``out`` cannot be made or is not a linflow store."""


class StoreDamaged(StoreError):
    """A store whose metadata or chunks are lost or unreadable (a partial copy, a torn file)."""

    def __init__(self, path, what: str, repairable: bool = False):
        super().__init__("out", f"{path} is damaged: {what}")
        self.repairable = repairable  # status --verify marks its cells pending, a rerun recomputes them


class StoreWriteError(LinflowError, RuntimeError):
    """Writing the store failed mid-run (disk full, permissions): finished batches are safe."""

    def __init__(self, problem: str):
        super().__init__(None, problem)


class LockLost(StoreWriteError):
    """The run's lock was taken over (it was paused past the stale age) or its store deleted or replaced:
    what it wrote before is safe; it writes nothing more."""


class LockError(LinflowError, RuntimeError):
    """The store is being written by another live run."""

    def __init__(self, problem: str):
        super().__init__(None, problem)


class ClusterError(LinflowError):
    """The Ray cluster at ``address`` cannot be used (unreachable, not Ray, the wrong port)."""


class RayGone(LinflowError, RuntimeError):
    """Ray did not start, or stopped mid-run: every batch written before is intact."""

    def __init__(self, problem: str):
        super().__init__(None, problem)
