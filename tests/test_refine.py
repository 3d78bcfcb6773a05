"""`linflow refine`: seeds added in rounds (each an ordinary growth of the store) until every scaling exponent's
95% interval is within the target, or the budget is spent — on real stores through the real CLI."""

import hashlib
import math
import re
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from typer.testing import CliRunner

from analysis import refine as rf
from cli.main import app
from sweep import runner, store
from sweep import spec as specs

BASE = [
    *("--depth", "1,2,3", "--width", "5", "--init-norm", "0.5", "--seed", "0:3", "--m", "20", "--dx", "4"),
    *("--method", "rk4", "--step", "0.01", "--horizon", "30", "--checkpoints", "4", "--batch", "8"),
]


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def digest(path: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(path.rglob("*")):
        if f.is_file():
            h.update(str(f.relative_to(path)).encode() + f.read_bytes())
    return h.hexdigest()


@pytest.fixture
def small(ray_local, tmp_path):
    out = tmp_path / "s.zarr"
    r = cli("run", *BASE, "--out", out, "--quiet")
    assert r.exit_code == 0, r.output
    return out


def assert_bitwise_a_fresh_run(out: Path):
    """The grown store holds what a fresh run of its whole spec computes, bit for bit."""
    got = xr.open_zarr(out).load()
    ref = runner.run_local(specs.parse(store.stored_spec(out)))
    for name in [*ref.data_vars, *ref.coords]:
        a, b = got[name].values, ref[name].values
        assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes(), name


def test_refine_grows_seeds_until_the_fit_is_tight(small):
    # round 0 (3 seeds) is not within 1% here; a doubling or two of seeds is
    r = cli("refine", small, "--fit", "depth", "--ci", "0.01", "--quiet")
    assert r.exit_code == 0, r.output
    rounds = re.findall(r"^round (\d+): ([\d,]+) cells, (\d+) seeds", r.stdout, re.M)
    assert [int(n) for n, _, _ in rounds] == list(range(len(rounds))) and len(rounds) >= 2, r.stdout
    seeds = [int(s) for _, _, s in rounds]
    assert seeds[0] == 3 and all(b == 2 * a for a, b in zip(seeds, seeds[1:]))  # doubling
    assert r.stdout.rstrip().splitlines()[-1].startswith("done: every exponent within ±1%")
    widths = [float(w) for w in re.findall(r"±([\d.]+)% \(", r.stdout)]
    assert widths[-1] <= 1.0 and any(w > 1.0 for w in widths[:-1])
    grown = [line for line in r.stderr.splitlines() if "growing" in line]
    assert len(grown) == len(rounds) - 1 and "seed 3 → 6: 9 new cells" in grown[0]
    assert store.open_group(small)["status"].shape[-1] == seeds[-1]
    # the interval printed is the fit's own: the relative half-width of analysis.complexity.fit_scaling
    fit = rf.fits(store.load_results(store.open_group(small), small), "depth")
    assert rf.tight(fit, 0.01) and f"±{100 * rf.widest(fit):.1f}%" in r.stdout.splitlines()[-1]
    lo, hi, b = (float(fit[k].squeeze()) for k in ("exponent_low", "exponent_high", "exponent"))
    assert math.isclose(rf.widest(fit), (hi - lo) / 2 / abs(b))
    assert_bitwise_a_fresh_run(small)
    again = cli("refine", small, "--fit", "depth", "--ci", "0.01", "--quiet")  # already tight: nothing grows
    assert again.exit_code == 0 and "growing" not in again.stderr and again.stdout.count("round ") == 1


def test_refine_stops_when_the_budget_is_spent(small):
    r = cli("refine", small, "--fit", "depth", "--ci", "1e-6", "--max-cells", "20", "--quiet")
    assert r.exit_code == 1, r.output
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("linflow: refine stopped: budget spent: 18 cells") and "--max-cells 20" in last, last
    assert store.open_group(small)["status"].shape[-1] == 6  # 3 → 6 seeds (18 cells); 9 seeds would be 27
    assert_bitwise_a_fresh_run(small)


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("--fit", "seed", "--ci", "0.1"), "--fit: must be an axis of the store other than seed"),
        (("--fit", "nosuch", "--ci", "0.1"), "--fit: must be an axis of the store other than seed"),
        (("--fit", "width", "--ci", "0.1"), "--fit: the store has one width (5)"),
        (("--fit", "depth", "--ci", "0"), "--ci: must be a fraction > 0"),
        (("--fit", "depth", "--ci", "-0.5"), "--ci: must be a fraction > 0"),
        (("--fit", "depth", "--ci", "nan"), "--ci: must be a fraction > 0"),
        (("--fit", "depth", "--ci", "inf"), "--ci: must be a fraction > 0"),
        (("--fit", "depth", "--ci", "0.1", "--max-cells", "8"), "--max-cells: the store holds 9 cells already"),
        (("--fit", "depth", "--ci", "0.1", "--workers", "0"), "--workers: must be ≥ 1"),
        (("--fit", "depth"), "Missing option '--ci'"),
    ],
)
def test_bad_refine_input_is_one_line_and_changes_nothing(small, args, words):
    before = digest(small)
    r = cli("refine", small, *args)
    assert r.exit_code == 2 and r.stderr.count("\n") == 1 and words in r.stderr, r.output
    assert digest(small) == before


def test_refine_of_what_is_not_a_store(tmp_path):
    r = cli("refine", tmp_path / "none.zarr", "--fit", "depth", "--ci", "0.1")
    assert r.exit_code == 2 and r.stderr.count("\n") == 1 and "no such store" in r.stderr
    assert not (tmp_path / "none.zarr").exists()


def test_seed_axes_grow_as_they_were_written():
    assert rf.more_seeds(range(0, 8), 16) == {"start": 0, "stop": 16, "step": 1}
    assert rf.more_seeds(range(5, 20, 5), 6) == {"start": 5, "stop": 35, "step": 5}
    assert rf.more_seeds((3, 1, 7), 5) == [3, 1, 7, 8, 9]
    assert rf.more_seeds((0, 1, 2), 6) == {"start": 0, "stop": 6, "step": 1}  # a list that is a range: 3 numbers
    assert rf.more_seeds((4, 6), 4) == [4, 6, 7, 8]  # the next integers after the largest: not a range
    s = specs.parse({"axes": {"seed": [3, 1, 7]}})
    grown = specs.parse({"axes": {"seed": rf.more_seeds(s.axes["seed"], 5)}})
    assert specs.extension(s, grown) == ({"seed": (3, 5)}, None)  # always a growth of the store
    assert rf.next_size((2, 1, 3, 4), 4, 1000) == 8  # doubling
    assert rf.next_size((2, 1, 3, 4), 4, 30) == 5  # cut to the budget (6 cells a seed)
    assert rf.next_size((2, 1, 3, 4), 4, 29) == 4  # not one more seed fits


def test_tight_needs_every_slice_with_a_converged_run_fitted_within_the_target():
    def fit(b, lo, hi, n=None):
        b, lo, hi = (np.asarray(v, float) for v in (b, lo, hi))
        n = np.where(np.isfinite(b), 10, 0) if n is None else np.asarray(n)
        ds = xr.Dataset(
            {"exponent": ("k", b), "exponent_low": ("k", lo), "exponent_high": ("k", hi), "n_points": ("k", n)}
        )
        ds["half_width"] = (ds.exponent_high - ds.exponent_low) / 2 / abs(ds.exponent)
        ds["note"] = ("k", np.array([""] * len(b), dtype=object))
        return ds.assign_coords(k=np.arange(len(b)))

    assert rf.tight(fit([1.0, -2.0], [0.96, -2.08], [1.04, -1.92]), 0.05)
    assert not rf.tight(fit([1.0, -2.0], [0.9, -2.1], [1.1, -1.9]), 0.05)  # ±10% > 5%
    assert not rf.tight(fit([1.0, 2.0], [0.99, np.nan], [1.01, np.nan]), 0.05)  # a fit with no interval
    assert rf.tight(fit([1.0, np.nan], [0.99, np.nan], [1.01, np.nan]), 0.05)  # no run converged there: not counted
    assert not rf.tight(fit([1.0, np.nan], [0.99, np.nan], [1.01, np.nan], [10, 2]), 0.05)  # 2 converged: may fit
    assert not rf.tight(fit([np.nan], [np.nan], [np.nan]), 0.05)  # nothing counted: not done
    assert rf.widest(fit([1.0, 2.0], [0.99, np.nan], [1.01, np.nan])) == np.inf
    assert list(rf.counted(fit([1.0, np.nan], [0.99, np.nan], [1.01, np.nan], [10, 0]))) == [True, False]


def test_refine_stops_at_once_when_no_run_converges(ray_local, tmp_path):
    out = tmp_path / "never.zarr"
    r = cli("run", *BASE, "--horizon", "0.05", "--out", out, "--quiet")  # far too short to reach eps
    assert r.exit_code == 0, r.output
    before = digest(out)
    r = cli("refine", out, "--fit", "depth", "--ci", "0.1", "--quiet")
    assert r.exit_code == 1 and "refine stopped: no run converged" in r.stderr and "growing" not in r.stderr, r.output
    assert r.stdout.count("round ") == 1 and digest(out) == before


def test_refine_that_loses_a_race_with_a_run_says_to_run_refine_again(small, monkeypatch):
    """Another run grows the store (a fourth depth) between refine's rounds: refine's next round (more seeds of
    three depths) no longer extends the store. It says so in one line, in its own words, and changes nothing."""
    fits, grown = rf.fits, []

    def another_run_between_rounds(ds, along):
        if not grown:
            raw = store.stored_spec(small)
            raw["axes"]["depth"] = [1, 2, 3, 4]
            runner.run(specs.parse(raw), small)
            grown.append(digest(small))
        return fits(ds, along)

    monkeypatch.setattr(rf, "fits", another_run_between_rounds)
    r = cli("refine", small, "--fit", "depth", "--ci", "0.01", "--quiet")
    assert r.exit_code == 2 and r.stdout.count("round ") == 1, r.output
    last = r.stderr.strip().splitlines()[-1]
    assert last == (
        f"linflow: error: PATH: {small} changed while refine ran (another run grew or replaced it); "
        "run refine again to continue from what it holds"
    ), last
    assert "--out" not in r.stderr and "spec that made it" not in r.stderr
    assert digest(small) == grown[0] and store.open_group(small)["status"].shape == (4, 1, 1, 3)
