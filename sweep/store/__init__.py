"""The Zarr store: the only code that writes results.

The template (every variable, all cells pending) is laid out first with xarray; each finished batch
is then written as whole chunks straight into the Zarr arrays, ``status`` last, so a cell counts as
done only once all of its numbers are on disk. Every chunk of a computed batch is written, even one of
fill values only, so that a chunk lost later (a partial copy) or torn is found and its cells recomputed
(:func:`inspect`, :func:`mark_pending`) instead of reading as NaN results.

One concept a module:

* :mod:`.make` — the template, its atomic creation, growth in one atomic commit, settling leftovers;
* :mod:`.group` — what a store is, opening it checked, its spec, failures and counts, where a new one may go;
* :mod:`.chunks` — the only code that opens chunk files (the seam for object storage);
* :mod:`.damage` — lost and torn chunks: found, summed up, made pending;
* :mod:`.results` — reading the results, also while a run writes them;
* :mod:`.lock` — one driver per store: the lease and its fence.

The names below are the store's public face: ``from sweep import store; store.open_group(path)``.
"""

from .chunks import layout, pending_regions, read_status, todo, write_batch
from .damage import Damage, Summary, inspect, mark_pending, recheck, summary
from .group import (
    STATUS_NAMES,
    check_local,
    check_new,
    check_tree,
    counts,
    failures,
    is_store,
    open_group,
    record_failures,
    stored_spec,
)
from .make import EVERY_CHUNK, create, grow, settle, template
from .remote import is_url, lock_for, url, writer
from .results import done_text, load_results, open_results

__all__ = [
    "EVERY_CHUNK",
    "STATUS_NAMES",
    "Damage",
    "Summary",
    "check_local",
    "check_new",
    "check_tree",
    "counts",
    "create",
    "done_text",
    "failures",
    "grow",
    "inspect",
    "is_store",
    "is_url",
    "lock_for",
    "layout",
    "load_results",
    "mark_pending",
    "open_group",
    "open_results",
    "pending_regions",
    "read_status",
    "recheck",
    "record_failures",
    "settle",
    "stored_spec",
    "summary",
    "template",
    "todo",
    "url",
    "write_batch",
    "writer",
]
