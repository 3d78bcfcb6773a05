"""The bad-input corpus: every malformed spec or flag, impossible combination, oversized grid and
foreign store gives exit code 2, one line on stderr naming the field, no traceback — and no store is
created, nor an existing one changed (hashed before and after)."""

import hashlib
import os
import resource
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml
import zarr
from numpy.lib import format as npformat
from typer.testing import CliRunner

from cli.main import app

GOOD = {"axes": {"depth": [1, 2], "width": [3], "init_norm": [1.0], "seed": [0, 1]}, "horizon": 1.0}

# (id, spec text or None for the good spec, extra flags, words that must be in the one-line error)
# a YAML alias bomb: nine levels of nine aliases (9⁹ nodes once expanded)
BILLION_LAUGHS = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{c}: &{c} [{', '.join(['*' + p] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi", strict=True)
)

CORPUS = [
    ("malformed yaml", "axes: {depth: [1, 2\n", [], "spec: malformed YAML"),
    ("not a mapping", "- depth\n- width\n", [], "must hold a mapping"),
    ("unknown top-level key", "horizen: 3\n", [], "horizen: unknown key"),
    (
        "unknown nested key",
        "integrator: {method: dopri5, rtol: 1.0e-8, atol: 1.0e-12, rtoll: 1}\n",
        [],
        "integrator.rtoll: unknown key",
    ),
    ("unknown axis", "axes: {sed: [1]}\n", [], "axes.sed: unknown key"),
    ("depth < 1", "axes: {depth: [0]}\n", [], "axes.depth[0]: must be ≥ 1"),
    ("depth wrong type", "axes: {depth: [two]}\n", [], "axes.depth[0]: expected an integer"),
    ("depth not whole", "axes: {depth: [2.5]}\n", [], "axes.depth[0]: expected an integer"),
    ("width < 1", "axes: {width: [0]}\n", [], "axes.width[0]: must be ≥ 1"),
    ("init_norm zero", "axes: {init_norm: [0.0]}\n", [], "axes.init_norm[0]: must be > 0"),
    ("init_norm negative", "axes: {init_norm: [1.0, -1.0]}\n", [], "axes.init_norm[1]: must be > 0"),
    ("init_norm text", "axes: {init_norm: [big]}\n", [], "axes.init_norm[0]: expected a number"),
    ("init_norm infinite", "axes: {init_norm: [.inf]}\n", [], "axes.init_norm[0]: must be finite"),
    ("empty axis", "axes: {seed: []}\n", [], "axes.seed: is empty"),
    ("empty range", "axes: {seed: {start: 4, stop: 2}}\n", [], "axes.seed: is empty"),
    ("negative seed", "axes: {seed: [-1]}\n", [], "axes.seed[0]: must be ≥ 0"),
    ("duplicate in axis", "axes: {depth: [2, 3, 2]}\n", [], "axes.depth: value 2 appears twice"),
    ("angle beyond pi", "axes: {init_angle: [3.5]}\n", [], "axes.init_angle[0]: must be ≤ 3.14159"),
    (
        "angle for matrix target",
        "problem: {dy: 3}\naxes: {init_angle: [1.0]}\n",
        [],
        "axes.init_angle: is defined for vector targets",
    ),
    (
        "angle with gaussian init",
        "init: {scheme: gaussian}\naxes: {init_angle: [1.0]}\n",
        [],
        "axes.init_angle: needs init.scheme: balanced",
    ),
    (
        "induced with gaussian",
        "model: induced\ninit: {scheme: gaussian}\n",
        [],
        "model: the induced flow holds only for balanced",
    ),
    ("unknown model", "model: end-to-end\n", [], "model: must be one of layerwise, induced"),
    ("negative step", "integrator: {method: euler, step: -1.0e-6}\n", [], "integrator.step: must be > 0"),
    ("euler without step", "integrator: {method: euler}\n", [], "integrator.step: method euler needs a fixed step"),
    ("dopri5 tolerance zero", "integrator: {method: dopri5, rtol: 0}\n", [], "integrator.rtol: must be > 0"),
    (
        "dopri5 with a step",
        "integrator: {method: dopri5, rtol: 1.0e-8, atol: 1.0e-12, step: 0.1}\n",
        [],
        "integrator.step: method dopri5 chooses its own steps",
    ),
    (
        "rk4 with rtol",
        "integrator: {method: rk4, step: 0.01, rtol: 1.0e-6}\n",
        [],
        "integrator.rtol: not used by the fixed-step method rk4",
    ),
    (
        "unknown method",
        "integrator: {method: rk45, rtol: 1.0e-6, atol: 1.0e-9}\n",
        [],
        "integrator.method: must be one of",
    ),
    (
        "step longer than horizon",
        "integrator: {method: euler, step: 5.0}\nhorizon: 1.0\n",
        [],
        "integrator.step: is longer than the horizon",
    ),
    (
        "too many steps",
        "integrator: {method: euler, step: 1.0e-12}\nhorizon: 10.0\n",
        [],
        "integrator.step: gives 1e+13 steps",
    ),
    ("horizon zero", "horizon: 0\n", [], "horizon: must be > 0"),
    ("eps negative", "eps: -1.0e-6\n", [], "eps: must be > 0"),
    ("stop_at_eps not a bool", "stop_at_eps: yes please\n", [], "stop_at_eps: expected true or false"),
    ("one checkpoint", "checkpoints: {count: 1}\n", [], "checkpoints.count: must be ≥ 2"),
    (
        "unknown spacing",
        "checkpoints: {count: 5, spacing: cubic}\n",
        [],
        "checkpoints.spacing: must be one of log, linear",
    ),
    (
        "log_start with linear",
        "checkpoints: {count: 5, spacing: linear, log_start: 0.1}\n",
        [],
        "checkpoints.log_start: only used with spacing: log",
    ),
    ("batch zero", "batch: 0\n", [], "batch: must be ≥ 1"),
    ("m < dx", "problem: {m: 4, dx: 5}\n", [], "problem.m: needs m ≥ dx"),
    ("data file missing", "problem: {data: nowhere.npz}\n", [], "problem.data: no such file"),
    ("data wrong shapes", "problem: {data: shapes.npz}\n", [], "problem.data: X is 3×10 but Y is 1×9"),
    ("data not npz", "problem: {data: garbage.npz}\n", [], "problem.data: cannot read"),
    ("data with synthetic keys", "problem: {data: shapes.npz, m: 5}\n", [], "problem.m: unknown key"),
    (
        "grid too large for memory",
        "axes: {depth: [1], width: [1], init_norm: [1.0], seed: {start: 0, stop: 2000000}}\n",
        [],
        "axes: the grid has 2,000,000 cells",
    ),
    (
        "batch too large for memory",
        "axes: {depth: [8], width: [200], seed: {start: 0, stop: 60000}}\nbatch: 60000\n",
        [],
        "batch: 60000 cells per task need",
    ),
    ("flag: bad depth list", None, ["--depth", "2,x"], "--depth: expected integers"),
    ("flag: bad seed range", None, ["--seed", "a:b"], "--seed: expected integers"),
    ("flag: empty seed range", None, ["--seed", "5:1"], "axes.seed: is empty"),
    ("flag: init_norm negative", None, ["--init-norm", "-1"], "axes.init_norm[0]: must be > 0"),
    ("flag: negative step", None, ["--method", "euler", "--step", "-1e-3"], "integrator.step: must be > 0"),
    ("flag: dopri5 negative atol", None, ["--method", "dopri5", "--atol", "-1e-8"], "integrator.atol: must be > 0"),
    (
        "flag: euler with rtol",
        None,
        ["--method", "euler", "--step", "1e-3", "--rtol", "1e-8"],
        "integrator.rtol: not used",
    ),
    ("flag: not a number", None, ["--horizon", "soon"], "'--horizon'"),
    ("flag: workers zero", None, ["--workers", "0"], "--workers: must be ≥ 1"),
    ("flag: unknown option", None, ["--bogus"], "--bogus"),
    (
        "flag: data with synthetic sizes",
        None,
        ["--data", "shapes.npz", "--m", "50"],
        "--data: cannot be combined with --m",
    ),
    ("flag: unknown model", None, ["--model", "deep"], "model: must be one of"),
    ("flag: cluster not reachable", None, ["--address", "127.0.0.1:9"], "--address: cannot reach the Ray cluster"),
    ("flag: address not host:port", None, ["--address", "ray://nowhere"], "--address: expected HOST:PORT"),
    # hostile and odd specs (issue 9 item 4): bytes, nesting, aliases, sizes, folders
    ("spec not UTF-8", b"horizon: \xff\xfe 1\n", [], "spec: bad.yaml is not UTF-8 text (byte 0xff"),
    ("spec in UTF-16", "horizon: 1.0\n".encode("utf-16"), [], "is not UTF-8 text"),
    ("spec Latin-1 comment", "# réglage\nhorizon: 1.0\n".encode("latin-1"), [], "is not UTF-8 text (byte 0xe9"),
    (
        "spec nested 20,000 deep (flow)",
        "a: " + "[" * 20000 + "]" * 20000 + "\n",
        [],
        "spec: nested deeper than 50 levels",
    ),
    (
        "spec nested 100 deep (block)",
        "".join(" " * i + "a:\n" for i in range(100)) + " " * 100 + "1\n",
        [],
        "spec: nested deeper than 50",
    ),
    ("spec nested in axes", "axes: {seed: " + "[" * 60 + "0" + "]" * 60 + "}\n", [], "spec: nested deeper than 50"),
    (
        "spec alias bomb",
        BILLION_LAUGHS,
        [],
        "spec: expands to more than 100,000 values through its aliases",
    ),
    (
        "spec alias bomb under axes",
        BILLION_LAUGHS + "axes: {seed: *i}\n",
        [],
        "spec: expands to more than 100,000",
    ),
    (
        "spec alias bomb as a key",
        BILLION_LAUGHS + "? *i\n: 1\n",
        [],
        "spec: expands to more than 100,000",
    ),
    (
        "spec alias bomb in a valid key",
        "horizon:\n  - &a [x, x, x, x, x, x, x, x, x]\n"
        + "".join(f"  - &{c} [{', '.join(['*' + p] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi")),
        [],
        "spec: expands to more than",
    ),
    ("spec alias to itself", "horizon: &h [*h]\n", [], "horizon: expected a number"),
    ("spec alias undefined", "horizon: *nowhere\n", [], "spec: malformed YAML"),
    ("spec python tag", "horizon: !!python/object/apply:os.system [ls]\n", [], "spec: malformed YAML"),
    ("spec larger than 1 MiB", "# " + "x" * 2**20 + "\n", [], "spec: bad.yaml is larger than 1024 KiB"),
    ("spec is a folder", None, ["specdir"], "spec: specdir is a folder, not a YAML file"),
    ("spec missing", None, ["nothing.yaml"], "spec: no such file: nothing.yaml"),
    (
        "spec a list of 100,000 as horizon",
        "horizon: [" + "1, " * 100000 + "1]\n",
        [],
        "horizon: expected a number, got [1, 1",
    ),
    ("spec a 100,000-char model name", "model: " + "x" * 100000 + "\n", [], "model: must be one of"),
    ("spec key not a string", "1: 2\n", [], "1: unknown key"),
    ("spec batch a nested list", "batch: [[[1]]]\n", [], "batch: expected an integer"),
    (
        "spec seed beyond int64",
        "axes: {seed: [9223372036854775808]}\n",
        [],
        "axes.seed[0]: must be ≤ 9223372036854775807",
    ),
    ("spec seed 2**70", "axes: {seed: [1180591620717411303424]}\n", [], "axes.seed[0]: must be ≤"),
    ("spec depth 100,000", "axes: {depth: [100000]}\n", [], "axes.depth[0]: must be ≤ 10000"),
    ("spec depth 1e300", "axes: {depth: [1.0e+300]}\n", [], "axes.depth[0]: must be ≤ 10000"),
    ("spec width nan", "axes: {width: [.nan]}\n", [], "axes.width[0]: expected an integer"),
    ("spec width beyond int64", "axes: {width: [9223372036854775808]}\n", [], "axes.width[0]: must be ≤"),
    (
        "spec seed range of 1e10",
        "axes: {seed: {start: 0, stop: 10000000000}}\n",
        [],
        "axes: the grid has 40,000,000,000 cells",
    ),
    (
        "spec seed range of 2e7",
        "axes: {depth: [1], seed: {start: 0, stop: 20000000}}\n",
        [],
        "axes: the grid has 20,000,000 cells",
    ),
    (
        "spec grid product of two ranges",
        "axes: {depth: {start: 1, stop: 1001}, seed: {start: 0, stop: 20000}}\n",
        [],
        "axes: the grid has 20,000,000 cells",
    ),
    (
        "spec range start beyond int64",
        "axes: {seed: {start: 9223372036854775808, stop: 0}}\n",
        [],
        "axes.seed.start: must be ≤",
    ),
    (
        "spec range stop beyond int64",
        "axes: {seed: {start: 0, stop: 9223372036854775808}}\n",
        [],
        "axes.seed.stop: must be ≤",
    ),
    ("spec range step zero", "axes: {seed: {start: 0, stop: 5, step: 0}}\n", [], "axes.seed.step: must be ≥ 1"),
    ("spec range without stop", "axes: {seed: {start: 0}}\n", [], "axes.seed: a range needs start and stop"),
    ("spec range unknown key", "axes: {seed: {start: 0, end: 5}}\n", [], "axes.seed.end: unknown key"),
    ("spec range start text", "axes: {seed: {start: a, stop: 5}}\n", [], "axes.seed.start: expected an integer"),
    ("spec range of negative seeds", "axes: {seed: {start: -3, stop: 5}}\n", [], "axes.seed[0]: must be ≥ 0"),
    (
        "spec range of depths beyond 10,000",
        "axes: {depth: {start: 9999, stop: 10002}}\n",
        [],
        "axes.depth[2]: must be ≤ 10000",
    ),
    ("spec m of 1e12", "problem: {m: 1000000000000}\n", [], "problem.m: the data (m = 1,000,000,000,000"),
    ("spec m and dx of 1e5", "problem: {m: 100000, dx: 100000}\n", [], "problem.m: the data"),
    ("spec dy of 1e8", "problem: {m: 10, dx: 5, dy: 100000000}\n", [], "problem.dy: the data"),
    ("spec problem seed beyond int64", "problem: {seed: 18446744073709551616}\n", [], "problem.seed: must be ≤"),
    (
        "spec max_steps beyond int64",
        "integrator: {method: dopri5, max_steps: 1180591620717411303424}\n",
        [],
        "integrator.max_steps: must be ≤",
    ),
    (
        "spec checkpoints 1e12",
        "checkpoints: {count: 1000000000000}\n",
        [],
        "checkpoints.count: one cell's 1,000,000,000,000 checkpoints need",
    ),
    (
        "spec checkpoints beyond int64",
        "checkpoints: {count: 9223372036854775808}\n",
        [],
        "checkpoints.count: must be ≤",
    ),
    (
        "spec many checkpoints on a grid",
        "checkpoints: {count: 1000000}\naxes: {seed: {start: 0, stop: 200}}\n",
        [],
        "axes: the grid has 800 cells",
    ),
    (
        "spec induced width 60,000",
        "model: induced\naxes: {depth: [3], width: [60000]}\n",
        [],
        "axes.width: one cell needs",
    ),
    ("spec layerwise width 60,000", "axes: {depth: [3], width: [60000]}\n", [], "axes.width: one cell needs"),
    (
        "spec induced deep and wide",
        "model: induced\naxes: {depth: [10000], width: [1000]}\n",
        [],
        "axes.width: one cell needs",
    ),
    ("spec batch too large", "batch: 1000000\n", [], "batch: must be ≤ 65536"),
    # YAML as its 1.2 core schema reads it (issue 17): no key twice, no base 60, no yes/no/on/off
    (
        "yaml key twice",
        "horizon: 1.0\nhorizon: 2.0\n",
        [],
        "spec: malformed YAML in bad.yaml: duplicate key horizon (lines 1 and 2)",
    ),
    (
        "yaml key twice under axes",
        "axes:\n  depth: [1, 2]\n  seed: [0, 1]\n  width: [3]\n  seed: [2, 3]\n",
        [],
        "spec: malformed YAML in bad.yaml: duplicate key axes.seed (lines 3 and 5)",
    ),
    (
        "yaml key twice in a flow mapping",
        "axes: {seed: [0], seed: [1]}\n",
        [],
        "duplicate key axes.seed (twice on line 1)",
    ),
    ("yaml key twice deep", "problem:\n  m: 20\n  m: 30\n", [], "duplicate key problem.m (lines 2 and 3)"),
    (
        "yaml base 60 seed in a list",
        "axes: {seed: [1:20]}\n",
        [],
        "axes.seed[0]: expected an integer, got '1:20'; a range",
    ),
    ("yaml base 60 horizon", "horizon: 1:30\n", [], "horizon: expected a number, got '1:30'"),
    (
        "yaml base 60 explicit int",
        "batch: !!int 1:20\n",
        [],
        "spec: malformed YAML in bad.yaml at line 1, column 8: '1:20'",
    ),
    ("yaml range text not integers", "axes: {seed: 1:x}\n", [], "axes.seed: expected integers like 2,3,4 or a range"),
    ("yaml range text of 1e10", "axes: {seed: 0:10000000000}\n", [], "axes.seed: the range '0:10000000000' has"),
    ("yaml range texts of 2e7 cells", "axes: {depth: 1:1001, seed: 0:20000}\n", [], "axes: the grid has 20,000,000"),
    ("yaml range text for a float axis", "axes: {init_norm: 1:3}\n", [], "axes.init_norm[0]: expected a number"),
    ("yaml seed yes", "axes: {seed: yes}\n", [], "axes.seed[0]: expected an integer, got 'yes'"),
    ("yaml seed list of yes and no", "axes: {seed: [yes, no]}\n", [], "axes.seed[0]: expected an integer, got 'yes'"),
    ("yaml stop_at_eps on", "stop_at_eps: on\n", [], "stop_at_eps: expected true or false, got 'on'"),
    ("yaml stop_at_eps yes", "stop_at_eps: yes\n", [], "stop_at_eps: expected true or false, got 'yes'"),
    ("yaml explicit bool yes", "stop_at_eps: !!bool yes\n", [], "'yes' is not a YAML 1.2 bool"),
    ("yaml integer of 5,000 digits", "axes: {seed: [" + "1" * 5000 + "]}\n", [], "an integer of 5,000 digits"),
    # hostile and odd flags
    ("flag: seed beyond int64", None, ["--seed", "9223372036854775808"], "axes.seed[0]: must be ≤ 9223372036854775807"),
    (
        "flag: seed range of 1e10",
        None,
        ["--seed", "0:10000000000"],
        "--seed: the range '0:10000000000' has 10,000,000,000 values",
    ),
    ("flag: seed range of 2e7", None, ["--seed", "0:20000000"], "--seed: the range '0:20000000' has 20,000,000 values"),
    ("flag: seed range of 2**70", None, ["--seed", "0:1180591620717411303424"], "--seed: the range"),
    (
        "flag: grid of 2e7 from two ranges",
        None,
        ["--seed", "0:5000000", "--depth", "1:5"],
        "axes: the grid has 20,000,000 cells",
    ),
    ("flag: seed range step zero", None, ["--seed", "0:10:0"], "--seed: expected integers"),
    ("flag: seed range negative", None, ["--seed", "-5:3"], "axes.seed[0]: must be ≥ 0"),
    ("flag: depth float", None, ["--depth", "1e3"], "--depth: expected integers"),
    ("flag: depth 100,000", None, ["--depth", "100000"], "axes.depth[0]: must be ≤ 10000"),
    ("flag: m of 1e12", None, ["--m", "1000000000000"], "problem.m: the data"),
    ("flag: dx and m of 1e5", None, ["--dx", "100000", "--m", "100000"], "problem.m: the data"),
    ("flag: dy of 1e8", None, ["--dy", "100000000", "--m", "10"], "problem.dy: the data"),
    ("flag: problem seed beyond int64", None, ["--problem-seed", "99999999999999999999"], "problem.seed: must be ≤"),
    (
        "flag: induced width 60,000",
        None,
        ["--model", "induced", "--depth", "3", "--width", "60000"],
        "axes.width: one cell needs",
    ),
    (
        "flag: width 60,000 batch 1",
        None,
        ["--depth", "3", "--width", "60000", "--batch", "1"],
        "use a smaller width or depth",
    ),
    ("flag: checkpoints 1e12", None, ["--checkpoints", "1000000000000"], "checkpoints.count: one cell's"),
    ("flag: checkpoints on a grid", None, ["--checkpoints", "1000000", "--seed", "0:1000"], "or use fewer checkpoints"),
    (
        "flag: batch advice names a batch that fits",
        None,
        ["--depth", "8", "--width", "200", "--seed", "0:60000", "--batch", "60000"],
        "use --batch 92 or less",
    ),
    ("flag: init_norm nan", None, ["--init-norm", "nan"], "axes.init_norm[0]: must be finite"),
    ("flag: init_norm inf", None, ["--init-norm", "inf"], "axes.init_norm[0]: must be finite"),
    ("flag: horizon inf", None, ["--horizon", "inf"], "horizon: must be finite"),
    ("flag: horizon nan", None, ["--horizon", "nan"], "horizon: must be finite"),
    ("flag: eps nan", None, ["--eps", "nan"], "eps: must be finite"),
    ("flag: batch beyond the limit", None, ["--batch", "100000"], "batch: must be ≤ 65536"),
    # hostile and odd data files
    ("data: a folder", None, ["--data", "specdir"], "problem.data: "),
    ("data: a plain .npy", None, ["--data", "plain.npy"], "problem.data: plain.npy is a single .npy array"),
    ("data: an empty file", None, ["--data", "empty.npz"], "problem.data: cannot read"),
    ("data: an empty zip", None, ["--data", "emptyzip.npz"], "problem.data: emptyzip.npz has no array X (found: none)"),
    ("data: X only", None, ["--data", "xonly.npz"], "problem.data: xonly.npz has no array Y"),
    ("data: X of 0×5", None, ["--data", "empty_x.npz"], "problem.data: X is empty (shape 0×5)"),
    ("data: Y of 0×20", None, ["--data", "empty_y.npz"], "problem.data: Y is empty (shape 0×20)"),
    ("data: X of 2×0", None, ["--data", "no_samples.npz"], "problem.data: X is empty (shape 2×0)"),
    ("data: complex X", None, ["--data", "complex_x.npz"], "problem.data: X is complex (complex128)"),
    ("data: complex Y", None, ["--data", "complex_y.npz"], "problem.data: Y is complex"),
    ("data: boolean X", None, ["--data", "bool_x.npz"], "problem.data: X must be a 2-D real numeric array"),
    ("data: text X", None, ["--data", "text_x.npz"], "problem.data: X must be a 2-D real numeric array"),
    ("data: 3-D X", None, ["--data", "cube_x.npz"], "problem.data: X must be a 2-D"),
    ("data: NaN in Y", None, ["--data", "nan_y.npz"], "problem.data: Y has non-finite entries"),
    ("data: X·1e200", None, ["--data", "huge_x.npz"], "problem.data: X's entries (up to"),
    ("data: Y·1e200", None, ["--data", "huge_y.npz"], "problem.data: Y's entries (up to"),
    ("data: X·1e-200", None, ["--data", "tiny_x.npz"], "problem.data: X X^T is singular"),
    ("data: X nearly rank-deficient", None, ["--data", "illcond_x.npz"], "problem.data: X X^T is"),
    (
        "data: header of 20,000×20,000",
        None,
        ["--data", "header_bomb.npz"],
        "problem.data: X (20,000×20,000) and Y (1×20,000) would take",
    ),
    ("data: header longer than its data", None, ["--data", "truncated.npz"], "problem.data: cannot read"),
    ("data: Y columns differ", None, ["--data", "shapes.npz"], "problem.data: X is 3×10 but Y is 1×9"),
    ("data: dy ≠ 1 for exact", None, ["--data", "dy2.npz", "--model", "exact"], "model: exact"),
    # general inputs and matrix completion (issue 19)
    (
        "input spectrum wrong length",
        "problem: {dx: 3, input_spectrum: [1.0, 2.0]}\n",
        [],
        "problem.input_spectrum: has 2 values; X Xᵀ has dx = 3",
    ),
    (
        "input spectrum not positive",
        "problem: {dx: 3, input_spectrum: [1.0, 0.0, 2.0]}\n",
        [],
        "problem.input_spectrum[1]: must be > 0",
    ),
    (
        "input spectrum with whiten: true",
        "problem: {dx: 2, whiten: true, input_spectrum: [1.0, 2.0]}\n",
        [],
        "problem.whiten: must be false",
    ),
    (
        "input spectrum text",
        "problem: {dx: 2, input_spectrum: [1.0, big]}\n",
        [],
        "problem.input_spectrum[1]: expected",
    ),
    (
        "target spectrum too long",
        "problem: {dx: 3, dy: 2, target_spectrum: [3.0, 2.0, 1.0]}\n",
        [],
        "problem.target_spectrum: has 3 values",
    ),
    ("target spectrum empty", "problem: {target_spectrum: []}\n", [], "problem.target_spectrum: has 0 values"),
    ("target spectrum negative", "problem: {target_spectrum: [-1.0]}\n", [], "problem.target_spectrum[0]: must be > 0"),
    ("whiten not a bool", "problem: {whiten: maybe}\n", [], "problem.whiten: expected true or false"),
    ("unknown problem kind", "problem: {kind: tensor}\n", [], "problem.kind: must be one of completion"),
    ("observed zero", "problem: {kind: completion, observed: 0.0}\n", [], "problem.observed: must be > 0"),
    ("observed above one", "problem: {kind: completion, observed: 1.5}\n", [], "problem.observed: must be ≤ 1"),
    (
        "observed too few",
        "problem: {kind: completion, n: 30, rank: 5, observed: 0.1}\n",
        [],
        "problem.observed: sees 90 of 900 entries; a rank-5 30×30 matrix has r(2n − r) = 275 degrees of freedom",
    ),
    ("completion rank above n", "problem: {kind: completion, n: 4, rank: 5}\n", [], "problem.rank: must be ≤ n = 4"),
    ("completion with m", "problem: {kind: completion, m: 50}\n", [], "problem.m: unknown key"),
    ("record unknown", "record: [w, grad]\n", [], "record[1]: must be one of w"),
    ("record not a list", "record: 3\n", [], "record: expected a list, got 3"),
    (
        "exact with inputs not whitened",
        "model: exact\nproblem: {whiten: false}\n",
        [],
        "model: exact (the closed form of docs/theory.md §4) needs whitened data",
    ),
    (
        "exact with an input spectrum",
        "model: exact\nproblem: {dx: 2, input_spectrum: [1.0, 4.0]}\n",
        [],
        "needs whitened data; got inputs not whitened",
    ),
    ("exact for completion", "model: exact\nproblem: {kind: completion, n: 1, rank: 1}\n", [], "needs whitened data"),
    (
        "aligned start with an angle",
        "init: {scheme: aligned}\naxes: {init_angle: [1.0]}\n",
        [],
        "needs init.scheme: balanced",
    ),
    (
        "gaussian start for induced",
        "model: induced\ninit: {scheme: gaussian}\n",
        [],
        "model: the induced flow holds only",
    ),
    # odd --out for run
    ("out: under a file", None, ["--out", "shapes.npz/new.zarr"], "--out: cannot create shapes.npz/new.zarr"),
    ("out: an existing file", None, ["--out", "shapes.npz"], "--out: shapes.npz exists but is not a linflow store"),
    ("out: the working folder", None, ["--out", "."], "--out: . exists but is not a linflow store"),
]


def write_header_only(path: Path, shapes: dict, data: bytes = b""):
    """An .npz whose members' .npy headers claim ``shapes`` (float64) but hold only ``data``."""
    with zipfile.ZipFile(path, "w") as z:
        for key, shape in shapes.items():
            with z.open(f"{key}.npy", "w") as f:
                npformat.write_array_header_1_0(f, {"descr": "<f8", "fortran_order": False, "shape": shape})
                f.write(data)


def data_files(root: Path) -> None:
    """The odd and hostile data files the corpus names (all small)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 20))
    np.savez(root / "shapes.npz", X=np.ones((3, 10)), Y=np.ones((1, 9)))
    (root / "garbage.npz").write_bytes(b"not a zip file at all")
    (root / "empty.npz").write_bytes(b"")
    zipfile.ZipFile(root / "emptyzip.npz", "w").close()
    np.save(root / "plain.npy", x)
    np.savez(root / "xonly.npz", X=x)
    np.savez(root / "empty_x.npz", X=np.ones((0, 5)), Y=np.ones((1, 5)))
    np.savez(root / "empty_y.npz", X=x, Y=np.ones((0, 20)))
    np.savez(root / "no_samples.npz", X=np.ones((2, 0)), Y=np.ones((1, 0)))
    np.savez(root / "complex_x.npz", X=x + 1j * x, Y=np.ones((1, 20)))
    np.savez(root / "complex_y.npz", X=x, Y=np.ones((1, 20)) * (1 + 1j))
    np.savez(root / "bool_x.npz", X=x > 0, Y=np.ones((1, 20)))
    np.savez(root / "text_x.npz", X=np.full((3, 20), "a"), Y=np.ones((1, 20)))
    np.savez(root / "cube_x.npz", X=np.ones((3, 20, 2)), Y=np.ones((1, 20)))
    np.savez(root / "nan_y.npz", X=x, Y=np.full((1, 20), np.nan))
    np.savez(root / "huge_x.npz", X=x * 1e200, Y=np.ones((1, 20)))
    np.savez(root / "huge_y.npz", X=x, Y=np.ones((1, 20)) * 1e200)
    np.savez(root / "tiny_x.npz", X=x * 1e-200, Y=np.ones((1, 20)))
    np.savez(root / "illcond_x.npz", X=np.vstack([x[0], x[0] * (1 + 1e-15), x[2]]), Y=np.ones((1, 20)))
    np.savez(root / "dy2.npz", X=x, Y=np.ones((2, 20)))
    write_header_only(root / "header_bomb.npz", {"X": (20000, 20000), "Y": (1, 20000)})
    write_header_only(root / "truncated.npz", {"X": (3, 10), "Y": (1, 10)}, b"\0" * 16)
    (root / "specdir").mkdir()


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    data_files(root)
    return root


@pytest.fixture
def workdir(tmp_path, monkeypatch, data_root):
    monkeypatch.chdir(tmp_path)
    for f in data_root.iterdir():
        (tmp_path / f.name).mkdir() if f.is_dir() else (tmp_path / f.name).write_bytes(f.read_bytes())
    return tmp_path


def digest(path: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(path.rglob("*")):
        h.update(str(f.relative_to(path)).encode())
        if f.is_file():
            h.update(f.read_bytes())
    return h.hexdigest()


def check_refused(r, words):
    assert r.exit_code == 2, r.output
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("linflow: error: "), r.stderr
    assert words in r.stderr, r.stderr
    assert "Traceback" not in r.output
    assert len(r.stderr) < 400, r.stderr  # one line a person reads, never a huge value's repr


def invoke(workdir, text, flags, out):
    args = ["run"]
    if text is not None:
        (workdir / "bad.yaml").write_bytes(text if isinstance(text, bytes) else text.encode())
        args.append("bad.yaml")
    return CliRunner().invoke(app, [*args, "--out", str(out), *flags])


def test_corpus_is_large():
    assert len(CORPUS) > 100
    assert len({c[0] for c in CORPUS}) == len(CORPUS)


CASE_MEMORY = 128 * 2**20  # Python and NumPy allocations of one refusal (the blow-up cases below run under RLIMIT_AS)
CASE_SECONDS = 20.0


@pytest.mark.parametrize("name, text, flags, words", CORPUS, ids=[c[0] for c in CORPUS])
def test_bad_input_creates_nothing(workdir, data_root, name, text, flags, words):
    import time
    import tracemalloc

    out = workdir / "new.zarr"
    before = digest(workdir)
    tracemalloc.start()  # NumPy reports its buffers to tracemalloc: every case is bounded in memory too
    started = time.perf_counter()
    try:
        result = invoke(workdir, text, flags, out)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    check_refused(result, words)
    assert peak < CASE_MEMORY, f"{name}: {peak / 2**20:.0f} MiB allocated before refusing"
    assert time.perf_counter() - started < CASE_SECONDS, name
    assert not out.exists() and not Path(str(out) + ".lock").exists()
    if text is not None:
        (workdir / "bad.yaml").unlink()
    assert digest(workdir) == before or text is not None and digest(workdir) == digest(data_root)


@pytest.fixture(scope="module")
def existing_store(tmp_path_factory):
    """A real, finished store (made once) that no bad input may change."""
    import ray

    from sweep import cluster, runner
    from sweep import spec as specs

    root = tmp_path_factory.mktemp("existing")
    cluster.connect(workers=2)
    try:
        runner.run(specs.parse(GOOD), root / "done.zarr")
    finally:
        ray.shutdown()
    return root / "done.zarr"


@pytest.mark.parametrize("name, text, flags, words", CORPUS[::4], ids=[c[0] for c in CORPUS[::4]])
def test_bad_input_leaves_an_existing_store_unchanged(workdir, existing_store, name, text, flags, words):
    before = digest(existing_store)
    if text is None and (not flags or flags[0].startswith("-")):  # a bad flag on top of the store's own spec
        text = yaml.safe_dump(GOOD)
    check_refused(invoke(workdir, text, flags, existing_store), words)
    assert digest(existing_store) == before


def test_store_from_a_different_spec(workdir, existing_store):
    before = digest(existing_store)
    (workdir / "other.yaml").write_text(yaml.safe_dump({**GOOD, "horizon": 2.0}))
    r = CliRunner().invoke(app, ["run", "other.yaml", "--out", str(existing_store)])
    check_refused(r, "--out: ")
    assert "holds a different sweep" in r.stderr and digest(existing_store) == before


def test_store_made_by_another_program(workdir):
    foreign = workdir / "foreign.zarr"
    zarr.open_group(str(foreign), mode="w").create_array("a", shape=(3,), dtype="f8")
    before = digest(foreign)
    (workdir / "good.yaml").write_text(yaml.safe_dump(GOOD))
    for args in (
        ["run", "good.yaml", "--out", str(foreign)],
        ["status", str(foreign)],
        ["report", str(foreign), "--out", "rep"],
        ["export", str(foreign)],
    ):
        r = CliRunner().invoke(app, args)
        check_refused(r, "not a linflow store")
    assert digest(foreign) == before and not (workdir / "rep").exists()


def test_folder_that_is_not_a_store(workdir):
    plain = workdir / "plain"
    plain.mkdir()
    (plain / "notes.txt").write_text("keep me")
    (workdir / "good.yaml").write_text(yaml.safe_dump(GOOD))
    check_refused(CliRunner().invoke(app, ["run", "good.yaml", "--out", str(plain)]), "is not a linflow store")
    assert [p.name for p in plain.iterdir()] == ["notes.txt"]


# --------------------------------------------------------------------------------------------------
# the resource blow-ups: through the real CLI in a subprocess, under an address-space limit and a
# time bound (before the fixes each took gigabytes — 3 to 60 GiB — or tens of seconds)
# --------------------------------------------------------------------------------------------------

MEMORY_CAP = int(2.5 * 2**30)  # RLIMIT_AS of the child: the interpreter, NumPy and Zarr fit in well under it
TIME_CAP = 60.0  # seconds; each case takes about one (the imports)


def zip_bomb(path: Path, n: int = 12000):
    """A real zip bomb: ~1 MB on disk, an X of n×n float64 zeros (n = 12000: 1.15 GB) inside."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as z:
        with z.open("X.npy", "w", force_zip64=True) as f:
            npformat.write_array_header_1_0(f, {"descr": "<f8", "fortran_order": False, "shape": (n, n)})
            chunk = bytes(2**24)
            left = n * n * 8
            while left:
                f.write(chunk[: min(left, len(chunk))])
                left -= min(left, len(chunk))
        with z.open("Y.npy", "w") as f:
            npformat.write_array(f, np.ones((1, n)))


ALIAS_BOMB = next(c[1] for c in CORPUS if c[0] == "spec alias bomb")
# the same nine levels inside one valid key (before the fix: its error message repr()'d 9⁹ values — 54 s, 2.6 GB
# and a MemoryError under a 4 GiB cap; one more level needs ~60 GB)
ALIAS_BOMB_IN_A_KEY = "horizon:\n  - &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"  - &{c} [{', '.join(['*' + p] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi")
)

# (id, spec text or None, flags, words)
BLOWUPS = [
    ("yaml alias bomb", ALIAS_BOMB, [], "spec: expands to more than"),
    ("yaml alias bomb under axes", ALIAS_BOMB + "axes: {seed: *i}\n", [], "spec: expands to more than"),
    ("yaml alias bomb in a valid key", ALIAS_BOMB_IN_A_KEY, [], "spec: expands to more than"),
    ("yaml nested 20,000 deep", "a: " + "[" * 20000 + "]" * 20000 + "\n", [], "spec: nested deeper than"),
    ("npz zip bomb", None, ["--data", "bomb.npz"], "problem.data: X (12,000×12,000) and Y (1×12,000) would take"),
    ("npz X·1e200", None, ["--data", "huge_x.npz"], "problem.data: X's entries"),
    ("seed beyond int64", None, ["--seed", "9223372036854775808"], "axes.seed[0]: must be ≤"),
    ("seed range of 1e10", None, ["--seed", "0:10000000000"], "--seed: the range"),
    ("seed range of 2e7", None, ["--seed", "0:20000000"], "--seed: the range"),
    ("spec seed range of 1e10", "axes: {seed: {start: 0, stop: 10000000000}}\n", [], "axes: the grid has"),
    ("m of 1e12", None, ["--m", "1000000000000"], "problem.m: the data"),
    ("dx and m of 1e5", None, ["--dx", "100000", "--m", "100000"], "problem.m: the data"),
    (
        "induced width 60,000",
        None,
        ["--model", "induced", "--depth", "3", "--width", "60000"],
        "axes.width: one cell needs",
    ),
    ("checkpoints 1e12", None, ["--checkpoints", "1000000000000", "--seed", "0"], "checkpoints.count: one cell's"),
    ("depth 1e18", None, ["--depth", "1000000000000000000"], "axes.depth[0]: must be ≤"),
]


@pytest.fixture(scope="module")
def blowup_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("blowups")
    zip_bomb(root / "bomb.npz")
    np.savez(root / "huge_x.npz", X=np.random.default_rng(0).standard_normal((3, 20)) * 1e200, Y=np.ones((1, 20)))
    return root


def _cap_memory():
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))


@pytest.mark.parametrize("name, text, flags, words", BLOWUPS, ids=[c[0] for c in BLOWUPS])
def test_blowups_are_refused_in_bounded_memory_and_time(blowup_root, name, text, flags, words):
    args = [sys.executable, "-m", "cli.main", "run", "--out", "new.zarr", *flags]
    if text is not None:
        (blowup_root / "bad.yaml").write_text(text)
        args.append("bad.yaml")
    before = sorted(p.name for p in blowup_root.iterdir())
    started = time.monotonic()
    r = subprocess.run(
        args,
        cwd=blowup_root,
        capture_output=True,
        text=True,
        preexec_fn=_cap_memory,
        timeout=TIME_CAP,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])},
    )
    seconds = time.monotonic() - started
    assert r.returncode == 2, r.stderr[-2000:]
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("linflow: error: ") and words in r.stderr, r.stderr[-2000:]
    assert seconds < 20, seconds
    assert sorted(p.name for p in blowup_root.iterdir()) == before


# --------------------------------------------------------------------------------------------------
# the memory bound, both ways
# --------------------------------------------------------------------------------------------------


def test_memory_bound_counts_the_cells_a_task_really_holds():
    from sweep import runner
    from sweep import spec as specs
    from sweep.problem import synthetic

    problem = synthetic(50, 5, 1, 0)
    one = specs.parse(
        {"axes": {"depth": [1], "width": [1], "init_norm": [1.0], "seed": [0]}, "checkpoints": {"count": 2_000_000}}
    )
    runner.check_memory(one, problem)  # one cell: 32 MB, whatever batch says
    wide = specs.parse({"model": "induced", "axes": {"depth": [3], "width": [60000], "seed": [0]}})
    with pytest.raises(specs.SpecError, match="use a smaller width or depth") as info:
        runner.check_memory(wide, problem)  # the balanced start builds a 60000×60000 layer
    assert info.value.field == "axes.width"
    many = specs.parse(
        {"axes": {"depth": [1], "seed": {"start": 0, "stop": 1000}}, "checkpoints": {"count": 1_000_000}, "batch": 1}
    )
    with pytest.raises(specs.SpecError, match="fewer checkpoints") as info:
        runner.check_memory(many, problem)
    assert "batch" not in str(info.value)


# --------------------------------------------------------------------------------------------------
# odd paths for status, report, export, reproduce and run --out
# --------------------------------------------------------------------------------------------------

# (id, arguments: {store} the finished store, {file} a plain file, {dir} a plain folder; words)
COMMANDS = [
    ("status: a file", ["status", "{file}"], "PATH: {file} is a file, not a linflow store"),
    ("status: missing", ["status", "{dir}/none.zarr"], "PATH: no such store: {dir}/none.zarr"),
    ("status: a plain folder", ["status", "{dir}"], "PATH: {dir} exists but is not a linflow store"),
    ("status --verify: a file", ["status", "--verify", "{file}"], "PATH: {file} is a file"),
    ("report: a file", ["report", "{file}", "--out", "{dir}/rep"], "PATH: {file} is a file"),
    (
        "report --out: an existing file",
        ["report", "{store}", "--out", "{file}"],
        "--out: {file} is a file, not a folder",
    ),
    ("report --out: under a file", ["report", "{store}", "--out", "{file}/rep"], "--out: cannot create {file}/rep"),
    ("report --out: /proc/x", ["report", "{store}", "--out", "/proc/x"], "--out: cannot"),
    ("report --out: inside the store", ["report", "{store}", "--out", "{store}/rep"], "inside the store"),
    ("export: a file", ["export", "{file}"], "PATH: {file} is a file"),
    ("export: missing", ["export", "{dir}/none.zarr"], "PATH: no such store"),
    ("export --out: a folder", ["export", "{store}", "--out", "{dir}"], "--out: {dir} is a folder; give a file name"),
    (
        "export --out: a missing folder",
        ["export", "{store}", "--out", "{dir}/no/x.csv"],
        "the folder {dir}/no does not exist",
    ),
    ("export --out: under a file", ["export", "{store}", "--out", "{file}/x.csv"], "is a file, not a folder"),
    ("export --out: inside the store", ["export", "{store}", "--out", "{store}/x.csv"], "inside the store"),
    ("export --format: unknown", ["export", "{store}", "--format", "xlsx"], "--format: must be csv or parquet"),
    (
        "reproduce --out: an existing file",
        ["reproduce", "eftekhari2020", "--out", "{file}"],
        "--out: {file} is a file, not a folder",
    ),
    ("reproduce --out: under a file", ["reproduce", "eftekhari2020", "--out", "{file}/repro"], "--out: cannot create"),
    ("reproduce: unknown study", ["reproduce", "smith2030", "--out", "{dir}/r"], "name: unknown study"),
    (
        "run --out: a new store inside a store",
        ["run", "good.yaml", "--out", "{store}/inner.zarr"],
        "--out: cannot create",
    ),
    ("run --out: a file in a store", ["run", "good.yaml", "--out", "{store}/zarr.json"], "not a linflow store"),
    # a URL is not a folder named after its scheme: it is served (tests/test_object_storage.py) or refused
    ("run --out: an unknown scheme", ["run", "good.yaml", "--out", "foo://b/s.zarr"], "no filesystem serves foo://"),
    (
        "run flags --out: a filesystem without conditional writes",
        ["run", "--depth", "1", "--out", "memory://b/s.zarr"],
        "--out: memory://b/s.zarr: linflow cannot lock a store on memory:// (it needs conditional writes",
    ),
    ("status: an unknown scheme", ["status", "foo://c/s.zarr"], "PATH: foo://c/s.zarr: "),
    ("report: an unknown scheme", ["report", "foo://b/s.zarr", "--out", "{dir}/rep"], "PATH: foo://b/s.zarr: "),
    ("report --out: a URL", ["report", "{store}", "--out", "s3://b/rep"], "--out: s3://b/rep: a URL"),
    (
        "export --out: a file URL",
        ["export", "{store}", "--out", "file:///tmp/x.csv"],
        "--out: file:///tmp/x.csv: a URL",
    ),
    (
        "refine: an unknown scheme",
        ["refine", "foo://b/s.zarr", "--fit", "depth", "--ci", "0.1"],
        "PATH: foo://b/s.zarr",
    ),
    ("reproduce --out: a URL", ["reproduce", "eftekhari2020", "--out", "s3://b/r"], "--out: s3://b/r: a URL"),
]


@pytest.mark.parametrize("name, args, words", COMMANDS, ids=[c[0] for c in COMMANDS])
def test_odd_paths_are_refused(workdir, existing_store, name, args, words):
    (workdir / "good.yaml").write_text(yaml.safe_dump(GOOD))
    (workdir / "plain").mkdir()
    (workdir / "afile").write_text("keep me")
    names = {"store": str(existing_store), "file": str(workdir / "afile"), "dir": str(workdir / "plain")}
    before, listing = digest(existing_store), digest(workdir)
    r = CliRunner().invoke(app, [a.format(**names) for a in args])
    check_refused(r, words.format(**names))
    assert digest(existing_store) == before and digest(workdir) == listing


def test_export_dot_inside_a_store_writes_beside_it(existing_store, monkeypatch):
    monkeypatch.chdir(existing_store)
    before = digest(existing_store)
    r = CliRunner().invoke(app, ["export", "."])
    assert r.exit_code == 0, r.output
    written = existing_store.with_suffix(".csv")
    assert written.is_file() and digest(existing_store) == before
    written.unlink()


def test_export_on_a_full_disk_leaves_the_old_file_whole(workdir, existing_store, monkeypatch):
    import errno

    import pandas as pd

    target = workdir / "table.csv"
    target.write_text("the previous export\n")

    def full_disk(self, f, **kw):
        f.write(b"status,time_to")  # half a row, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pd.DataFrame, "to_csv", full_disk)
    r = CliRunner().invoke(app, ["export", str(existing_store), "--out", str(target)])
    check_refused(r, "--out: cannot write")
    assert "No space left on device" in r.stderr
    assert target.read_text() == "the previous export\n"
    assert sorted(p.name for p in workdir.iterdir() if p.name.startswith(".table")) == []


def test_a_url_is_not_taken_for_a_path_by_the_library(tmp_path, monkeypatch):
    import sweep
    from sweep import runner
    from sweep import spec as specs
    from sweep.errors import StoreError

    monkeypatch.chdir(tmp_path)
    url = "foo://b/s.zarr"
    for call in (lambda: sweep.open_results(url), lambda: runner.prepare(specs.parse(GOOD), url)):
        with pytest.raises(StoreError, match="foo://b/s.zarr: .*no filesystem serves foo://"):
            call()
    assert list(tmp_path.iterdir()) == []  # no folder named foo:
