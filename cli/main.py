"""The ``linflow`` command line: a thin skin over :mod:`sweep` (a notebook can call the same functions)."""

from __future__ import annotations

import json
import math
import os
import signal
import sys
from functools import partial
from pathlib import Path
from typing import Annotated

import typer
from typer.core import TyperGroup

try:  # typer ≥ 0.20 vendors click; older releases use click itself
    from typer._click import exceptions as _cx
except ImportError:  # pragma: no cover
    from click import exceptions as _cx


from sweep import cluster, runner, store
from sweep import spec as specs
from sweep.errors import (
    LinflowError,
    LockError,
    RayGone,
    SpecError,
    StoreDamaged,
    StoreError,
    StoreWriteError,
)
from sweep.models import MODELS
from sweep.problem import build
from sweep.schema import AXES

from .terminal import ProgressBar, printable


class _OneLineErrors(TyperGroup):
    """Usage errors as one line on stderr with exit code 2 (no box, no traceback)."""

    def main(
        self,
        args=None,
        prog_name=None,
        complete_var=None,
        standalone_mode=True,
        **extra,
    ):
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except _cx.NoArgsIsHelpError as exc:
            typer.echo(exc.ctx.get_help() if exc.ctx else str(exc))
            code = 0
        except _cx.UsageError as exc:
            _fail(exc.format_message().replace("\n", " "))
        if standalone_mode:
            sys.exit(code or 0)
        return code


app = typer.Typer(
    cls=_OneLineErrors,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    help="Sweeps of gradient flow on deep linear networks (Eftekhari, ICML 2020) on Ray, into Zarr.",
)


RESUME = "{} holds every finished batch — rerun the same command to finish it"  # after an interruption
WORKERS_ERROR = "must be ≥ 1, got {}"
FLAGS = {
    "out": "--out",
    "address": "--address",
    "workers": "--workers",
}  # run's arguments → its flags


def _message(exc: LinflowError) -> str:
    """A library error in the command line's words: its field as the flag that set it."""
    return f"{FLAGS[exc.field]}: {exc.problem}" if exc.field in FLAGS else str(exc)


def _say(text: str) -> None:
    """One line on stderr from a run (a lock taken over, a growth, damaged cells marked pending)."""
    typer.echo(f"linflow: {printable(text)}", err=True)


def _fail(message: str, code: int = 2, kind: str = "error: "):
    typer.echo(f"linflow: {kind}{printable(message)}", err=True)  # it may quote a store's text
    sys.exit(code)


D = specs.DEFAULTS  # the spec models' defaults, quoted in the help


def _opt(help: str, *names: str):
    return typer.Option(*names, help=help)


def _axis_help(name: str) -> str:
    """An axis flag's help (schema.AXES), with its default as the flag would write it: 1,2,3,4 or 0:8."""
    v = D["axes"].get(name)
    if v is None:
        return f"{AXES[name].example}."
    default = f"{v['start']}:{v['stop']}" if isinstance(v, dict) else ",".join(map(str, v))
    return f"{AXES[name].example} [default: {default}]."


# the flags that set a spec key: flag → (its key in the spec, how its text is read: an axis list, else as typed)
SPEC_FLAGS = {
    **{name: (f"axes.{name}", int if a.dtype == "i8" else float) for name, a in AXES.items()},
    "model": ("model", None),
    "init": ("init.scheme", None),
    "method": ("integrator.method", None),
    "step": ("integrator.step", None),
    "rtol": ("integrator.rtol", None),
    "atol": ("integrator.atol", None),
    "horizon": ("horizon", None),
    "eps": ("eps", None),
    "stop_at_eps": ("stop_at_eps", None),
    "checkpoints": ("checkpoints.count", None),
    "m": ("problem.m", None),
    "dx": ("problem.dx", None),
    "dy": ("problem.dy", None),
    "problem_seed": ("problem.seed", None),
    "data": ("problem.data", None),
    "batch": ("batch", None),
}
SYNTHETIC = ("m", "dx", "dy", "problem_seed")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _overrides(flags: dict) -> dict:
    """The given flags (those of SPEC_FLAGS) → a nested spec mapping; the spec models validate it."""
    if flags.get("data") is not None and any(flags.get(f) is not None for f in SYNTHETIC):
        given = ", ".join(_flag(f) for f in SYNTHETIC if flags.get(f) is not None)
        raise SpecError("--data", f"cannot be combined with {given} (those describe synthetic data)")
    o: dict = {}
    for name, value in flags.items():
        if value is None:
            continue
        key, kind = SPEC_FLAGS[name]
        if kind is not None:
            value = specs.parse_list(value, _flag(name), kind)
        elif name == "data":
            value = str(Path(value).resolve())
        *parents, leaf = key.split(".")
        node = o
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = value
    return o


@app.command()
def run(
    spec: Annotated[
        Path | None,
        typer.Argument(help="YAML spec; without one, the defaults and the flags make the sweep."),
    ] = None,
    out: Annotated[
        Path | None,
        _opt(
            "Zarr store to create or resume [default: runs/<spec name>.zarr].",
            "--out",
            "-o",
        ),
    ] = None,
    depth: Annotated[str | None, _opt(_axis_help("depth"))] = None,
    width: Annotated[str | None, _opt(_axis_help("width"))] = None,
    init_norm: Annotated[str | None, _opt(_axis_help("init_norm"))] = None,
    init_angle: Annotated[str | None, _opt(_axis_help("init_angle"))] = None,
    seed: Annotated[str | None, _opt(_axis_help("seed"))] = None,
    model: Annotated[
        str | None,
        _opt(" | ".join(f"{m.name} ({m.help})" for m in MODELS.values()) + f" [default: {D['model']}]."),
    ] = None,
    init: Annotated[
        str | None,
        _opt(f"Initialization scheme: balanced | gaussian [default: {D['init']['scheme']}]."),
    ] = None,
    method: Annotated[
        str | None,
        _opt(f"euler | rk4 (need --step) | dopri5 (adaptive) [default: {D['integrator']['method']}]."),
    ] = None,
    step: Annotated[float | None, _opt("Fixed step for euler and rk4.")] = None,
    rtol: Annotated[
        float | None,
        _opt(f"Relative tolerance for dopri5 [default: {D['integrator']['rtol']:g}]."),
    ] = None,
    atol: Annotated[
        float | None,
        _opt(f"Absolute tolerance for dopri5 [default: {D['integrator']['atol']:g}]."),
    ] = None,
    horizon: Annotated[float | None, _opt(f"Flow time t_max [default: {D['horizon']:g}].")] = None,
    eps: Annotated[
        float | None,
        _opt(f"Excess-loss threshold for time_to_eps [default: {D['eps']:g}]."),
    ] = None,
    stop_at_eps: Annotated[
        bool | None,
        _opt("Stop each trajectory at eps.", "--stop-at-eps/--no-stop-at-eps"),
    ] = None,
    checkpoints: Annotated[
        int | None,
        _opt(f"Number of checkpoints [default: {D['checkpoints']['count']}]."),
    ] = None,
    m: Annotated[
        int | None,
        _opt(f"Samples of the synthetic problem [default: {D['problem']['m']}]."),
    ] = None,
    dx: Annotated[
        int | None,
        _opt(f"Input dimension of the synthetic problem [default: {D['problem']['dx']}]."),
    ] = None,
    dy: Annotated[
        int | None,
        _opt(f"Output dimension of the synthetic problem [default: {D['problem']['dy']}]."),
    ] = None,
    problem_seed: Annotated[
        int | None,
        _opt(f"Seed of the synthetic data [default: {D['problem']['seed']}]."),
    ] = None,
    data: Annotated[
        Path | None,
        _opt(".npz file with X (dx×m) and Y (dy×m) instead of synthetic data."),
    ] = None,
    batch: Annotated[
        int | None,
        _opt(f"At most this many cells per Ray task [default: {D['batch']}]."),
    ] = None,
    workers: Annotated[
        int | None,
        _opt("CPUs of the local Ray instance (default: all), or tasks in flight ×½ on a cluster."),
    ] = None,
    address: Annotated[
        str | None,
        _opt("Ray cluster: ray://HOST:10001 (Ray Client) or HOST:6379 (its GCS) [default: RAY_ADDRESS, else local]."),
    ] = None,
    quiet: Annotated[bool, _opt("No progress bar.", "--quiet", "-q")] = False,
    as_json: Annotated[bool, _opt("Print the final report as JSON.", "--json")] = False,
    retry_failed: Annotated[bool, _opt("Also recompute the cells that failed.", "--retry-failed")] = False,
):
    """Run a sweep, resume one (rerunning into an existing store finishes its missing cells), or grow one: a spec
    (or flags on the store's own spec) whose axes extend the store's computes only the new cells."""
    try:
        overrides = _overrides({k: v for k, v in locals().items() if k in SPEC_FLAGS})
        if workers is not None and workers < 1:
            raise SpecError("--workers", WORKERS_ERROR.format(workers))
        out = _store(out or Path("runs") / f"{spec.stem if spec else 'sweep'}.zarr")
        if spec is None and store.is_store(out):  # flags only: the store's own spec, changed by them
            s = specs.parse(specs.merge(store.stored_spec(out), overrides))
        else:
            s = specs.load(spec, overrides)
    except LinflowError as exc:
        _fail(_message(exc))

    report = _sweep(s, out, quiet or as_json, address=address, workers=workers, retry_failed=retry_failed)
    if as_json:
        typer.echo(json.dumps(report.__dict__))
    else:
        typer.echo(f"{out}: {report.cells_run} cells computed in {report.seconds:.1f} s")
        _print_counts(report.counts)
    if report.counts["failed"]:
        first = f"; first: {report.errors[0]}" if report.errors else ""
        _fail(
            f"{report.counts['failed']} cells failed (errors: linflow status {out}; rerun with --retry-failed "
            f"to compute only those){first}",
            1,
        )


def _sweep(s: specs.Spec, out: Path, quiet: bool, refused=_message, **kw) -> runner.Report:
    """runner.run with a progress bar, and each way a run can end in one line (exit codes: 2 refused before
    anything ran — ``refused`` says why, in the command's words —, 1 stopped by the store or Ray, 128 + N by
    signal N — the store keeps every batch)."""
    # runner.run checks the data, the store, the lock and the cluster before it writes or starts
    # anything; the progress bar appears with the first stored batch, so such errors print alone
    bar = None if quiet else ProgressBar()
    resume = RESUME.format(out)
    # each way a run ends says so in one line, and leaves no lock (runner.run releases it on the way out)
    alone = cluster.stderr_is_fd2()  # a process of its own (not a test runner calling this function)
    with cluster.stopped_by_signals() as stopped, cluster.ray_output_aside():
        try:
            return runner.run(s, out, progress=bar.update if bar else None, say=_say, **kw)
        except KeyboardInterrupt:  # Ray's calls turn any KeyboardInterrupt into a plain one: `stopped` says which
            signum = stopped[0] if stopped else signal.SIGINT
            kind = "interrupted; " if signum == signal.SIGINT else "terminated (SIGTERM); "
            if alone:  # the store is safe and the lock released: skip the exit handlers of a Ray whose
                # start was cut short (its core can abort there, turning exit 143 into −6)
                typer.echo(f"linflow: {kind}{resume}", err=True)
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(128 + signum)
            _fail(resume, 128 + signum, kind)
        except StoreWriteError as exc:
            _fail(str(exc), 1)
        except RayGone as exc:
            _fail(f"{exc}; {resume}", 1)
        except LinflowError as exc:
            _fail(refused(exc))
        finally:
            if bar:
                bar.stop()


@app.command("spec")
def show_spec(
    spec: Annotated[Path | None, typer.Argument(help="YAML spec [default: none, the defaults].")] = None,
    schema: Annotated[
        bool,
        typer.Option(
            "--schema",
            help="Print the JSON Schema of spec files instead (for editors).",
        ),
    ] = False,
):
    """Print a spec normalized, every default filled in (YAML), or with --schema the JSON Schema of spec files."""
    if schema:
        typer.echo(json.dumps(specs.json_schema(), indent=2, ensure_ascii=False))
        return
    try:
        typer.echo(specs.load(spec).to_yaml(), nl=False)
    except SpecError as exc:
        _fail(_message(exc))


@app.command()
def status(
    path: Annotated[Path, typer.Argument(help="A store made by linflow run.")],
    as_json: Annotated[bool, typer.Option("--json", help="Counts as JSON.")] = False,
    verify: Annotated[
        bool,
        _opt(
            "Decode every chunk, and mark the cells of lost or unreadable chunks pending (a rerun recomputes them).",
            "--verify",
        ),
    ] = False,
):
    """Counts of cells per status in a store, and what is left to run. Lost chunks (a listing) and
    unreadable ones (decoded with --verify) count their done cells as pending."""
    path = _store(path)
    group = _open_store(path, "r+" if verify else "r")
    lock = store.lock_for(path) if verify else None  # --verify may write status: not while a run writes
    try:
        if lock:
            lock.acquire()
            lock.pin()
        damage = store.inspect(group, path, verify=verify, writing=not verify and store.writer(path) is not None)
        if damage.fixed:
            _fail(f"{path} is damaged: {damage.first()}")
        if damage and verify:
            store.mark_pending(group, damage, lock.check)
            typer.echo(
                f"linflow: warning: {damage.summary()}; marked pending — they will be recomputed "
                f"(rerun `linflow run … --out {path}`)",
                err=True,
            )
    except (LockError, StoreDamaged, OSError) as exc:  # (a special file that appeared after the store was opened)
        _fail(str(exc))
    finally:
        if lock:
            lock.release()  # only ever its own lock
    info = store.summary(group, path, damage)  # after --verify, the damaged cells are pending already
    counts = info.counts
    if as_json:
        typer.echo(json.dumps(info.as_dict(verify)))
        return
    typer.echo(printable(f"{path}  (fingerprint {info.fingerprint}, linflow {info.version})"))
    typer.echo(
        printable("grid: " + " × ".join(f"{d} {n}" for d, n in zip(info.dims, info.shape)))
        + f" = {sum(counts.values())} cells"
    )
    _print_counts(counts)
    failed = info.failures
    for f in failed[:20]:
        typer.echo(printable(f"  failed {f['cell']}: {f['error']}"))
    if len(failed) > 20:
        typer.echo(f"  … and {len(failed) - 20} more failed cells")
    if damage.chunks and not verify:
        typer.echo(
            f"damaged: {printable(damage.first())}; counted as pending above — `linflow status --verify {path}` "
            "marks them pending (a rerun does too)"
        )
    if info.pending_batches:
        typer.echo(
            f"left: {counts['pending']} cells in {info.pending_batches} batches — rerun `linflow run … --out {path}` "
            "to finish"
        )
    else:
        typer.echo("complete: no pending cells" + ("" if verify else " (chunks listed; decode them all with --verify)"))


@app.command()
def report(
    path: Annotated[Path, typer.Argument(help="A store made by linflow run.")],
    out: Annotated[
        Path,
        typer.Option("--out", "-o", help="Folder for report.md and its PNG figures."),
    ],
):
    """Write a Markdown report (status, convergence, scaling fits, theory agreement, bounds) with figures."""
    from analysis.report import write_report

    path = _store(path)
    group = _open_store(path)
    _new_folder(out)
    running = store.writer(path) is not None
    ds = _load(group, path)
    if ds.attrs["cells_done"] == 0:
        _fail(
            f"{path}: every cell is still pending — "
            + ("a run is writing it; try again soon" if running else "run it first")
        )
    try:
        written = write_report(ds, out)
    except OSError as exc:
        _fail(f"--out: cannot write the report in {out}: {exc.strerror or exc}")
    typer.echo(f"wrote {written} ({store.done_text(ds)}{'; a run is writing the store' if running else ''})")


@app.command()
def refine(
    path: Annotated[Path, typer.Argument(help="A store made by linflow run.")],
    fit: Annotated[str, _opt("The axis of the scaling fits: depth, init_norm, init_angle or width.", "--fit")],
    ci: Annotated[float, _opt("Target: every 95% interval's half-width within this fraction of its exponent.", "--ci")],
    max_cells: Annotated[int, _opt("Budget: the store never grows beyond this many cells.", "--max-cells")] = 1_000_000,
    workers: Annotated[int | None, _opt("CPUs of the local Ray instance (default: all).")] = None,
    address: Annotated[str | None, _opt("Ray cluster to use (default: RAY_ADDRESS, else local).")] = None,
    quiet: Annotated[bool, _opt("No progress bar.", "--quiet", "-q")] = False,
):
    """Add seeds in rounds (doubling) until the scaling fits of T_ε along --fit are tight: every exponent's
    95% interval (a t interval clustered by seed, per value of the other axes) within ±CI of it. Each round is an
    ordinary growth of the store (interruptible: rerun to go on); exit 1 when the budget runs out first."""
    from analysis import refine as rf

    path = _store(path)
    group = _open_store(path)
    try:
        s = specs.parse(store.stored_spec(group))
    except LinflowError as exc:
        _fail(f"PATH: {path}'s spec cannot be read ({exc})")
    axes = {n: len(v) for n, v in s.axes.items()}
    if fit not in axes or fit == "seed":
        others = ", ".join(a for a in axes if a != "seed")
        _fail(f"--fit: must be an axis of the store other than seed ({others}), got {fit!r}")
    if axes[fit] < 2:
        _fail(f"--fit: the store has one {fit} ({s.values(fit)[0]}); a fit needs two or more — grow it first")
    if not (0 < ci < float("inf")):
        _fail(f"--ci: must be a fraction > 0 (0.05: ±5% of the exponent), got {ci}")
    cells = math.prod(s.shape)
    if max_cells < cells:
        _fail(f"--max-cells: the store holds {cells:,} cells already (budget {max_cells:,})")
    if workers is not None and workers < 1:
        _fail("--workers: " + WORKERS_ERROR.format(workers))
    form = rf.form_for(fit)
    try:
        problem = build(s.problem)
    except LinflowError as exc:
        _fail(_message(exc))
    seen = group.attrs["fingerprint"]  # the sweep the store holds: as refine found it, then as each round left it
    for round_ in range(1000):
        refused = partial(_refine_refused, path, seen)
        _sweep(s, path, quiet, refused, address=address, workers=workers)  # round 0: finishes what the store lacks
        seen = s.fingerprint(problem.digest())
        result = rf.fits(_load(store.open_group(path), path), fit)
        seeds = axes["seed"] = len(s.axes["seed"])
        typer.echo(
            f"round {round_}: {math.prod(s.shape):,} cells, {seeds} seeds — T_ε along {fit} "
            f"({form} fit, 95% interval, {result.attrs['ci_method']}):"
        )
        for line in rf.lines(result, ci):
            typer.echo(f"  {line}")
        left = int((~rf.counted(result)).sum())
        aside = f"; {left} not counted: no run converged there" if left else ""
        if rf.tight(result, ci):
            typer.echo(f"done: every exponent within ±{100 * ci:g}% (widest ±{100 * rf.widest(result):.1f}%{aside})")
            return
        if not rf.counted(result).any():
            _fail(
                "no run converged: there is no T_ε to fit (a longer horizon, or a larger eps?)", 1, "refine stopped: "
            )
        widest = f"widest interval ±{100 * rf.widest(result):.1f}% > {100 * ci:g}%{aside}"
        more = rf.next_size(s.shape, seeds, max_cells)
        if more == seeds:
            _fail(
                f"budget spent: {math.prod(s.shape):,} cells, the next seed needs "
                f"{math.prod(s.shape) // seeds:,} more (--max-cells {max_cells:,}); {widest}",
                1,
                "refine stopped: ",
            )
        raw = s.to_dict()
        raw["axes"]["seed"] = rf.more_seeds(s.axes["seed"], more)
        try:
            s = specs.parse(raw)
            runner.check_memory(s, problem)
        except SpecError as exc:
            _fail(f"the next round ({more} seeds) is beyond linflow's limits ({exc}); {widest}", 1, "refine stopped: ")


def _refine_refused(path: Path, seen: str, exc: LinflowError) -> str:
    """A refine round refused by runner.run, in refine's words (it has PATH, neither a spec nor --out): a store
    that no longer holds the sweep ``seen`` (its fingerprint) was grown or replaced by another run meanwhile."""
    if exc.field != "out":
        return _message(exc)
    try:
        now = store.open_group(path).attrs["fingerprint"]
    except (LinflowError, OSError):
        now = None
    if now != seen:
        return (
            f"PATH: {path} changed while refine ran (another run grew or replaced it); "
            "run refine again to continue from what it holds"
        )
    return f"PATH: {exc.problem}"


@app.command()
def reproduce(
    name: Annotated[str | None, typer.Argument(help="Which study (linflow reproduce --list).")] = None,
    out: Annotated[
        Path | None, _opt("Folder for the stores, figures and reproduce.md [default: runs/NAME].", "--out", "-o")
    ] = None,
    quick: Annotated[
        bool,
        typer.Option("--quick", help="Fewer seeds, depths and angles (for tests)."),
    ] = False,
    workers: Annotated[int | None, typer.Option(help="CPUs of the local Ray instance (default: all).")] = None,
    address: Annotated[
        str | None,
        typer.Option(help="Ray cluster to use (default: RAY_ADDRESS, else local)."),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")] = False,
    show: Annotated[bool, typer.Option("--list", help="List the studies and stop.")] = False,
):
    """Reproduce a paper's numerical example beside the exact theory (resumable: rerun to finish)."""
    import xarray as xr

    from analysis import studies

    if show:
        for study in studies.names():
            typer.echo(f"{study}: {studies.get(study).TITLE}")
        return
    if name not in studies.names():
        _fail(f"name: unknown study {name!r} (available: {', '.join(studies.names())})")
    study = studies.get(name)
    out = out or Path("runs") / name
    if workers is not None and workers < 1:
        _fail("--workers: " + WORKERS_ERROR.format(workers))
    _new_folder(out)

    def progress(sweep, done, total):
        if not quiet:
            typer.echo(f"  {sweep}: {done}/{total} cells", err=True)

    try:
        stores = runner.run_all(
            study.specs_for(quick),
            out,
            address=address,
            workers=workers,
            progress=progress,
            say=_say,
        )
        datasets = {n: xr.open_zarr(path).load() for n, path in stores.items()}
        written = study.write(out, datasets)
    except KeyboardInterrupt:
        _fail(RESUME.format(out), 130, "interrupted; ")
    except LinflowError as exc:
        _fail(_message(exc))
    except OSError as exc:
        _fail(f"--out: cannot write in {out}: {exc.strerror or exc}")
    typer.echo(f"wrote {written}")
    failed = [claim for claim, holds in study.checks(datasets) if not holds]
    if failed:
        _fail(f"{len(failed)} check(s) failed: {failed[0]} (all in {written})", 1)


@app.command()
def export(
    path: Annotated[Path, typer.Argument(help="A store made by linflow run.")],
    fmt: Annotated[str, typer.Option("--format", "-f", help="csv | parquet.")] = "csv",
    out: Annotated[
        Path | None, _opt("Output file [default: the store's name with .csv/.parquet].", "--out", "-o")
    ] = None,
    with_theory: Annotated[
        bool, _opt("Add the theory columns (analysis.theory.annotate) and the observed limit class.", "--theory")
    ] = False,
):
    """Write one row per cell (axes, status, time_to_eps, final losses, …) as CSV or Parquet."""
    from analysis.export import cell_table, write_table

    if fmt not in ("csv", "parquet"):
        _fail(f"--format: must be csv or parquet, got {fmt!r}")
    if fmt == "parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            _fail("--format parquet needs pyarrow (python3 -m pip install pyarrow); or use --format csv")
    path = _store(path)
    group = _open_store(path)
    if store.is_url(path):  # written here, named after the store
        named = Path(path.rsplit("/", 1)[-1])
    else:
        named = path if path.name not in ("", ".", "..") else path.resolve()  # `export .` inside a store
    out = out or named.with_suffix("." + fmt)
    _new_file(out)
    df = cell_table(_load(group, path), with_theory)
    try:
        write_table(df, out, fmt)
    except OSError as exc:
        _fail(f"--out: cannot write {out}: {exc.strerror or exc} (nothing written)")
    typer.echo(f"wrote {out} ({len(df)} rows)")


def _store(path: Path) -> Path | str:
    """A store argument as given: a local path, or a URL (which the Path type folded: s3:/… → s3://…)."""
    return store.url(path) if store.is_url(path) else path


def _open_store(path: Path | str, mode: str = "r"):
    """The store's Zarr group, or one line naming the argument and exit 2 when ``path`` is not a
    (readable) linflow store: a local folder, or a URL (object storage)."""
    if store.is_url(path):
        if not _quiet_exists(path):
            _fail(f"PATH: no such store: {path}")
    elif not path.exists():
        _fail(f"PATH: no such store: {path}")
    elif not path.is_dir():
        _fail(f"PATH: {path} is a file, not a linflow store")
    try:
        return store.open_group(path, mode)
    except StoreDamaged as exc:
        _fail(exc.problem)
    except StoreError as exc:
        _fail(f"PATH: {exc.problem}")
    except OSError as exc:
        _fail(f"PATH: cannot read {path}: {exc.strerror or exc}")


def _quiet_exists(url: str) -> bool:
    """Whether a store is at ``url`` (one line and exit 2 when the URL cannot be served or reached)."""
    try:
        store.check_new(url, "PATH")
        return store.is_store(url)
    except StoreError as exc:
        _fail(str(exc))


def _new_folder(out: Path, flag: str = "--out") -> None:
    """Fail (one line) unless ``out`` is a folder, or can be made one, where we may write."""
    _local(out, flag)
    if out.exists() and not out.is_dir():
        _fail(f"{flag}: {out} is a file, not a folder")
    parent = out.resolve()
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        _fail(f"{flag}: cannot create {out}: {parent} is a file, not a folder")
    _inside_no_store(out, flag)
    if not os.access(parent, os.W_OK):
        _fail(f"{flag}: cannot write in {parent}: not writable")


def _local(path: Path, flag: str) -> None:
    try:
        store.check_local(path, flag)
    except StoreError as exc:
        _fail(str(exc))


def _inside_no_store(out: Path, flag: str) -> None:
    try:
        store.check_new(out, flag, "write")
    except StoreError as exc:
        _fail(str(exc))


def _new_file(out: Path, flag: str = "--out") -> None:
    """Fail (one line) unless ``out`` names a file we may write (a new one, or one to replace)."""
    _local(out, flag)
    if out.is_dir():
        _fail(f"{flag}: {out} is a folder; give a file name")
    if not out.parent.is_dir():
        what = "is a file, not a folder" if out.parent.exists() else "does not exist"
        _fail(f"{flag}: cannot write {out}: the folder {out.parent} {what}")
    _inside_no_store(out, flag)
    if not os.access(out.parent, os.W_OK) or (out.exists() and not os.access(out, os.W_OK)):
        _fail(f"{flag}: cannot write {out}: not writable")


def _load(group, path: Path):
    """The results in memory, or one line naming the damage (never NaN standing for lost results)."""
    try:
        return store.load_results(group, path)
    except StoreDamaged as exc:
        advice = f"; run `linflow status --verify {path}` to mark them for recomputation" if exc.repairable else ""
        _fail(exc.problem + advice)


def _print_counts(counts: dict):
    total = sum(counts.values()) or 1
    for name, n in counts.items():
        typer.echo(f"  {name:<12}{n:>8}  {100 * n / total:5.1f}%")


def main():
    app()


if __name__ == "__main__":
    main()
