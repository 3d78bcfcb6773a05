"""What a store holds besides its files (issue 17), in real stores made by the CLI: a symbolic link is
refused by every command before anything is read, written or deleted — nothing outside the store is ever
touched; a store reached through a link is that store; the ``*.partial`` files a killed write leaves
anywhere in the store are removed by the next run; and a store's name may hold glob characters."""

import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import xarray as xr
from faults import reap, start
from typer.testing import CliRunner

import sweep
from cli.main import app
from sweep import store
from sweep.errors import StoreDamaged
from sweep.store.lock import lock_path

# 1 depth × 1 norm × 3 seeds, a chunk a seed: 3 chunks a variable; tiny cells
SPEC = [
    "--depth",
    "1",
    "--width",
    "2",
    "--init-norm",
    "0.5",
    "--seed",
    "0:3",
    "--m",
    "10",
    "--dx",
    "3",
    "--dy",
    "1",
    "--method",
    "rk4",
    "--step",
    "0.01",
    "--horizon",
    "1",
    "--checkpoints",
    "5",
    "--batch",
    "2",
    "--workers",
    "1",
    "--quiet",
]
STATUS_CHUNK = "status/c/0/0/0/0"
LOSS_CHUNK = "loss/c/0/0/0/0/0"


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def one_line(r, *words):
    assert r.exit_code == 2, r.output
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.output, r.stderr
    for w in words:
        assert w in r.stderr, (w, r.stderr)


@pytest.fixture(scope="module")
def reference(ray_local, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "ref.zarr"
    r = cli("run", *SPEC, "--out", out)
    assert r.exit_code == 0, r.output
    return out, xr.open_zarr(out).load()


@pytest.fixture
def copy(reference, tmp_path):
    out = tmp_path / "c.zarr"
    shutil.copytree(reference[0], out)
    return out


def same_bits(out: Path, ds: xr.Dataset):
    assert xr.open_zarr(out).load().identical(ds)


# ── links ────────────────────────────────────────────────────────────────────────────────────────────────


def elsewhere(tmp_path: Path) -> Path:
    """A folder outside the store holding a file a glob for ``*.partial`` matches (a download in progress)."""
    outside = tmp_path / "somewhere"
    outside.mkdir()
    (outside / "movie.mkv.partial").write_text("not linflow's")
    return outside


LINKS = {  # where the link is in the store → what it points to (in the folder outside)
    "notes at the root": ("notes", "."),
    "a chunk folder": ("loss/c/0/0/0/1", "."),
    "a status chunk": (STATUS_CHUNK, "movie.mkv.partial"),
}


@pytest.mark.parametrize("case", list(LINKS))
def test_a_link_in_a_store_is_refused_by_every_command_and_nothing_outside_is_touched(copy, tmp_path, case):
    outside = elsewhere(tmp_path)
    name, target = LINKS[case]
    link = copy / name
    if link.is_dir():
        shutil.rmtree(link)
    link.unlink(missing_ok=True)
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to((outside / target).resolve())
    words = ("is damaged", f"{name} is a symbolic link (to {(outside / target).resolve()})", "never follows links")
    for args in (
        ("run", *SPEC, "--out", copy),  # a resume with nothing to compute: settle ran and deleted through the link
        ("run", "--out", copy, "--quiet"),  # flags only: the store's own spec
        ("status", copy),
        ("status", copy, "--verify"),
        ("export", copy, "--out", tmp_path / "c.csv"),
        ("report", copy, "--out", tmp_path / "rep"),
    ):
        one_line(cli(*args), *words)
        assert (outside / "movie.mkv.partial").read_text() == "not linflow's", args
        assert sorted(p.name for p in outside.iterdir()) == ["movie.mkv.partial"], args
        assert not lock_path(copy).exists(), args
    assert not (tmp_path / "c.csv").exists() and not (tmp_path / "rep").exists()
    with pytest.raises(StoreDamaged, match="is a symbolic link"):
        sweep.open_results(copy)
    with pytest.raises(StoreDamaged, match="is a symbolic link"):
        store.settle(copy)
    assert (outside / "movie.mkv.partial").exists()

    # replaced by what it points to, the store works again
    link.unlink()
    if (outside / target).is_dir():
        shutil.copytree(outside / target, link)
    else:
        shutil.copyfile(outside / target, link)
    r = cli("run", *SPEC, "--out", copy)
    assert r.exit_code == 0, r.output
    assert (outside / "movie.mkv.partial").exists()


def test_settle_deletes_nothing_through_a_link(copy, tmp_path):
    """The issue's case, at the function a resume calls under the lock: a glob through `notes` deleted
    ~/somewhere/movie.mkv.partial."""
    outside = elsewhere(tmp_path)
    (copy / "notes").symlink_to(outside)
    with pytest.raises(StoreDamaged, match="notes is a symbolic link"):
        store.settle(copy)
    assert (outside / "movie.mkv.partial").exists()


def test_a_store_reached_through_a_link_is_that_store(reference, copy, tmp_path):
    linked = tmp_path / "linked.zarr"
    linked.symlink_to(copy)
    (copy / "loss" / "c" / "0" / "0" / "0" / "0.3fa9c1.partial").write_bytes(b"torn")
    r = cli("run", *SPEC, "--out", linked)
    assert r.exit_code == 0 and "0 cells computed" in r.stdout and r.stderr == "", r.output
    assert not list(copy.rglob("*.partial"))
    r = cli("status", linked, "--verify")
    assert r.exit_code == 0 and "complete: no pending cells" in r.stdout and r.stderr == "", r.output
    assert sweep.open_results(linked).attrs["cells_done"] == 3
    same_bits(copy, reference[1])


# ── FIFOs and devices: never read, never waited for ─────────────────────────────────────────────────────


def fifo(path: Path):
    path.unlink()
    os.mkfifo(path)


def dev_zero(path: Path):
    path.unlink()
    path.symlink_to("/dev/zero")


SPECIAL = {
    "a FIFO as a status chunk": (fifo, STATUS_CHUNK, "is a FIFO, not a file"),
    "a FIFO as a loss chunk": (fifo, LOSS_CHUNK, "is a FIFO, not a file"),
    "a link to /dev/zero as a status chunk": (dev_zero, STATUS_CHUNK, "is a symbolic link (to /dev/zero)"),
    "a link to /dev/zero as a loss chunk": (dev_zero, LOSS_CHUNK, "is a symbolic link (to /dev/zero)"),
}


def bounded():
    """In a child process: at most 4 GiB of address space (a read of /dev/zero fails, not the machine)."""
    resource.setrlimit(resource.RLIMIT_AS, (2**32, 2**32))


def linflow(*args, timeout=60) -> tuple[int, str]:
    """``linflow ARGS`` in a real process (a session of its own, its memory bounded), killed after ``timeout``
    seconds: (exit code, stderr)."""
    proc = start(args, preexec_fn=bounded)
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        reap(proc)
        pytest.fail(f"linflow {' '.join(map(str, args))} still running after {timeout} s")
    reap(proc)
    return proc.returncode, err


@pytest.mark.parametrize("case", list(SPECIAL))
def test_a_special_file_as_a_chunk_is_named_promptly_by_status_verify_and_report(copy, tmp_path, case):
    make, name, what = SPECIAL[case]
    make(copy / name)
    for args in (("status", copy), ("status", "--verify", copy), ("report", copy, "--out", tmp_path / "rep")):
        code, err = linflow(*args)
        assert code == 2 and err.count("\n") == 1, (args, err)
        assert f"is damaged: {name} {what}" in err and "Traceback" not in err, (args, err)
        assert not lock_path(copy).exists(), args


READ = """
import sys, zarr
from sweep import store
from sweep.errors import StoreDamaged
path = sys.argv[1]
group = zarr.open_group(path, mode="r")  # not through store.open_group: the reads themselves are bounded
for read in (lambda: store.read_status(group) and "read", lambda: store.inspect(group, path, verify=True).first()):
    try:
        print(read())
    except StoreDamaged as exc:
        print(exc.problem)
"""


@pytest.mark.parametrize("case", list(SPECIAL))
def test_chunk_reads_take_regular_files_only(copy, case):
    """The reads of chunk files themselves (the status grid, --verify's decoding), for a group not opened by
    store.open_group (whose walk refuses such a store first): a status chunk is opened with O_NOFOLLOW and
    O_NONBLOCK and read only if a regular file — no wait on a FIFO, no endless read of /dev/zero; a chunk
    of results that is not a regular file is no chunk (missing: its cells are recomputed)."""
    make, name, what = SPECIAL[case]
    make(copy / name)
    r = subprocess.run(
        [sys.executable, "-c", READ, str(copy)], capture_output=True, text=True, timeout=60, preexec_fn=bounded
    )
    assert r.returncode == 0, r.stderr
    lines = [line.split(";")[0] for line in r.stdout.splitlines()]  # (the advice after the ;)
    damaged = f"{copy} is damaged: {name} {what}"
    missing = f"chunk {name} is missing (1 done cells)"
    assert lines == ([damaged, damaged] if name == STATUS_CHUNK else ["read", missing]), r.stdout


VERIFY = """
import sys
from sweep import store
path = sys.argv[1]
print(store.inspect(store.open_group(path), path, verify=True).first())
"""


def test_a_chunk_larger_than_any_chunk_is_read_only_to_its_bound(copy):
    """A chunk file far larger than a chunk can be (zstd's bound), here 8 GiB, is read no further than that
    bound — in a process of 4 GiB: unreadable, not a MemoryError."""
    with open(copy / LOSS_CHUNK, "ab") as f:
        f.truncate(2**33)  # sparse
    r = subprocess.run(
        [sys.executable, "-c", VERIFY, str(copy)], capture_output=True, text=True, timeout=60, preexec_fn=bounded
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"chunk {LOSS_CHUNK} is unreadable (1 done cells)\n"


# ── leftovers of a killed write ─────────────────────────────────────────────────────────────────────────


def test_a_rerun_removes_partial_files_anywhere_in_the_store(reference, copy):
    left = [
        "loss/c/0/0/0/0/0.3fa9c1.partial",  # a chunk write cut short (Zarr writes aside, then renames)
        "status/c/0/0/0/0.77aa01.partial",
        "w_final/c/0/0/0.0b1e2f.partial",
        "zarr.5c4d3e.partial",  # and the metadata's, as before
        "seed/zarr.9f8e7d.partial",
    ]
    for name in left:
        (copy / name).write_bytes(b"torn")
    r = cli("run", *SPEC, "--out", copy)
    assert r.exit_code == 0 and "0 cells computed" in r.stdout and r.stderr == "", r.output
    assert not list(copy.rglob("*.partial"))
    same_bits(copy, reference[1])


# ── glob characters in a store's name ──────────────────────────────────────────────────────────────────


def test_creating_a_store_named_star_leaves_another_stores_template_alone(tmp_path):
    other = tmp_path / ".other.zarr.creating-123"  # another store's template, being laid out
    other.mkdir()
    (other / "zarr.json").write_text("{}")
    r = cli("run", *SPEC, "--out", tmp_path / "*.zarr")
    assert r.exit_code == 0, r.output
    assert store.is_store(tmp_path / "*.zarr")
    assert (other / "zarr.json").read_text() == "{}"


def test_a_store_named_with_brackets_cleans_its_own_leftovers(tmp_path):
    stale = tmp_path / ".a[1].zarr.creating-999999"  # left by a killed run
    stale.mkdir()
    (stale / "zarr.json").write_text("{}")
    kept = [tmp_path / ".a1.zarr.creating-999999", tmp_path / ".a[1].zarr.creating-12x"]  # not its leftovers
    for k in kept:
        k.mkdir()
    r = cli("run", *SPEC, "--out", tmp_path / "a[1].zarr")
    assert r.exit_code == 0, r.output
    assert store.is_store(tmp_path / "a[1].zarr")
    assert not stale.exists() and all(k.exists() for k in kept)
