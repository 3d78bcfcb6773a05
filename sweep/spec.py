"""The sweep specification: YAML or flags → a validated, normalized :class:`Spec`.

Every problem is reported as a :class:`SpecError` naming the field (``axes.depth[2]``,
``integrator.rtol`` …) so the CLI can print one line and exit 2 before anything is created.
"""

from __future__ import annotations

import copy
import hashlib
import math
import reprlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from .errors import SpecError
from .kernel import KERNEL_VERSION, METHODS

# canonical order of the grid axes (dims of the dataset); seed last so batches run over seeds
AXES = ("depth", "width", "init_norm", "init_angle", "seed")
REQUIRED_AXES = ("depth", "width", "init_norm", "seed")

DEFAULTS = {
    "problem": {"m": 50, "dx": 5, "dy": 1, "seed": 0},
    "model": "layerwise",
    "init": {"scheme": "balanced"},
    "axes": {"depth": [1, 2, 3, 4], "width": [5], "init_norm": [1.0], "seed": {"start": 0, "stop": 8}},
    "integrator": {"method": "dopri5", "rtol": 1e-8, "atol": 1e-12},  # rtol, atol: any adaptive method's
    "horizon": 10.0,
    "eps": 1e-6,
    "stop_at_eps": False,
    "checkpoints": {"count": 101, "spacing": "log"},  # log_start: horizon·1e-4
    "batch": 256,
}
TOP_KEYS = tuple(DEFAULTS)
MAX_STEPS = 1_000_000
MAX_BATCH = 65_536
# bounds on what a spec may ask for, checked before anything is built (bounded time and memory)
MAX_CELLS = 10_000_000  # grid cells (the results of even 2 checkpoints a cell would pass 2 GiB near 2e7)
MAX_DEPTH = 10_000
MAX_INT = 2**63 - 1  # every integer must fit int64 (the store's coordinates)
MAX_DATA_BYTES = 2**28  # the problem's X, Y and target as float64: (m·dx + m·dy + dy·dx)·8 bytes
MAX_SPEC_BYTES = 2**20  # a YAML spec file
MAX_YAML_DEPTH = 50  # nesting of a YAML spec
MAX_YAML_NODES = 100_000  # nodes of a YAML spec with its aliases expanded (alias bombs)


@dataclass(frozen=True)
class Spec:
    problem: dict  # {m, dx, dy, seed} or {data: path}
    model: str
    init: dict
    axes: dict  # name -> tuple of values, or a range (integer axes given as one), in AXES order
    integrator: dict
    horizon: float
    eps: float
    stop_at_eps: bool
    checkpoints: dict
    batch: int

    def to_dict(self) -> dict:
        """The spec as plain data (what :func:`parse` reads): an axis given as a range stays a range
        ``{start, stop, step}``, so that a million seeds take three numbers, not a million."""
        d = {k: copy.deepcopy(getattr(self, k)) for k in TOP_KEYS if k != "axes"}
        d["axes"] = {k: _range_dict(v) if isinstance(v, range) else list(v) for k, v in self.axes.items()}
        return {k: d[k] for k in TOP_KEYS}

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def fingerprint(self, data_digest: str = "") -> str:
        """Hash of what determines the numbers: the spec without execution settings (``batch``),
        the kernel version and a digest of the data. Where a data file lies is not part of it (the
        digest says what it holds), so a store resumes after its folder moved."""
        d = self.to_dict()
        d.pop("batch")
        d["problem"].pop("data", None)
        d["axes"] = {k: _canonical(v) for k, v in self.axes.items()}  # the values, however they were given
        text = yaml.safe_dump(d, sort_keys=True) + KERNEL_VERSION + data_digest
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(len(v) for v in self.axes.values())

    def values(self, name: str, where: slice = slice(None)) -> np.ndarray:
        """The values of axis ``name`` (or of a slice of it) as an array: a range's only here."""
        return axis_values(self.axes[name], where)

    def checkpoint_times(self) -> np.ndarray:
        c = self.checkpoints
        if c["spacing"] == "linear":
            return np.linspace(0.0, self.horizon, c["count"])
        first = c.get("log_start", self.horizon * 1e-4)
        return np.concatenate([[0.0], np.geomspace(first, self.horizon, c["count"] - 1)])


# --------------------------------------------------------------------------------------------------
# validation helpers: each names the field it checks
# --------------------------------------------------------------------------------------------------


def _mapping(value, field, allowed):
    if not isinstance(value, dict):
        raise SpecError(field, f"expected a mapping with keys {', '.join(allowed)}, got {_show(value)}")
    for key in value:
        if key not in allowed:
            raise SpecError(f"{field}.{key}" if field else str(key), f"unknown key (allowed: {', '.join(allowed)})")
    return value


_repr = reprlib.Repr()
_repr.maxlevel, _repr.maxstring, _repr.maxother, _repr.maxlong = 2, 40, 40, 40


def _show(value) -> str:
    """A short repr: bounded in time and length whatever ``value`` holds (never the whole of a huge
    or deeply nested value)."""
    text = _repr.repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _int(value, field, lo=None, hi=MAX_INT):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise SpecError(field, f"expected an integer, got {_show(value)}")
    value = int(value)
    if lo is not None and value < lo:
        raise SpecError(field, f"must be ≥ {lo}, got {_show(value)}")
    if hi is not None and value > hi:
        raise SpecError(field, f"must be ≤ {hi}, got {_show(value)}")
    return value


def _float(value, field, positive=False, lo=None, hi=None):
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise SpecError(field, f"expected a number, got {_show(value)}")
    value = float(value)
    if not math.isfinite(value):
        raise SpecError(field, f"must be finite, got {value}")
    if positive and value <= 0:
        raise SpecError(field, f"must be > 0, got {value}")
    if lo is not None and value < lo:
        raise SpecError(field, f"must be ≥ {lo}, got {value}")
    if hi is not None and value > hi:
        raise SpecError(field, f"must be ≤ {hi:.6g}, got {value}")
    return value


def _choice(value, field, choices):
    if value not in choices:
        raise SpecError(field, f"must be one of {', '.join(choices)}, got {_show(value)}")
    return value


def _range(value, field) -> range:
    _mapping(value, field, ("start", "stop", "step"))
    if "start" not in value or "stop" not in value:
        raise SpecError(field, "a range needs start and stop (stop excluded)")
    start = _int(value["start"], f"{field}.start", lo=-MAX_INT)
    stop = _int(value["stop"], f"{field}.stop", lo=-MAX_INT)
    step = _int(value.get("step", 1), f"{field}.step", lo=1)
    return range(start, stop, step)


def _count(r: range) -> int:
    """len(r), also beyond what ``len`` can return (2**63 values and more)."""
    if r.step > 0:
        return max(0, -((r.start - r.stop) // r.step))
    return max(0, -((r.stop - r.start) // -r.step))


def _axis_length(name, value) -> int:
    """How many values the axis will have, without building it (a range's length is arithmetic)."""
    if isinstance(value, dict):
        return _count(_range(value, f"axes.{name}"))
    if isinstance(value, range):
        return _count(value)
    return len(value) if isinstance(value, (list, tuple)) else 1


def _axis(name, value):
    field = f"axes.{name}"
    if isinstance(value, dict):
        value = _range(value, field)
    elif isinstance(value, range) and value.step < 0:  # a decreasing range (a flag 9:0:-1): a list of its values
        value = tuple(value)
    elif not isinstance(value, (list, tuple, range)):
        value = [value]
    if len(value) == 0:
        raise SpecError(field, "is empty: give at least one value")
    check = {
        "depth": lambda v, f: _int(v, f, lo=1, hi=MAX_DEPTH),
        "width": lambda v, f: _int(v, f, lo=1),
        "seed": lambda v, f: _int(v, f, lo=0),
        "init_norm": lambda v, f: _float(v, f, positive=True),
        "init_angle": lambda v, f: _float(v, f, lo=0.0, hi=math.pi),
    }[name]
    if isinstance(value, range):  # whole numbers, unique and increasing (step ≥ 1): check the ends only
        for i in (0, len(value) - 1):
            check(value[i], f"{field}[{i}]")
        if name in FLOAT_AXES:
            return tuple(float(v) for v in value)
        return value  # kept compact: its values are built only where needed (axis_values)
    out = tuple(check(v, f"{field}[{i}]") for i, v in enumerate(value))
    if len(set(out)) != len(out):
        seen = set()
        dup = next(v for v in out if v in seen or seen.add(v))
        raise SpecError(field, f"value {dup} appears twice (grid coordinates must be unique)")
    return out


FLOAT_AXES = ("init_norm", "init_angle")
# an arithmetic progression of more values than this has the form {start, stop, step} in the fingerprint
# (of fewer, the list of its values, as fingerprints were before ranges stayed ranges)
COMPACT_FROM = 10_000


def _range_dict(r: range) -> dict:
    return {"start": r.start, "stop": r.stop, **({"step": r.step} if r.step != 1 else {})}


def axis_values(axis, where: slice = slice(None)) -> np.ndarray:
    """The values of an axis of :attr:`Spec.axes` (a tuple, or a range), or of a slice of it, as an
    array — built from a range's start and step, never through a list of Python ints."""
    if isinstance(axis, range):
        r = axis[where]
        return np.arange(r.start, r.stop, r.step, dtype=np.int64)
    return np.asarray(axis)[where]


def _canonical(axis):
    """An axis as the fingerprint sees it: a function of its values alone, however they were given
    (the list [0, 1, …, 7] and the range 0:8 are the same cells). Long increasing arithmetic
    progressions take the range form {start, stop, step} (stop = last + step), the rest a list."""
    n = len(axis)
    if n <= COMPACT_FROM:
        return list(axis)
    if isinstance(axis, range):
        return {"start": axis.start, "stop": axis[-1] + axis.step, "step": axis.step}
    if all(isinstance(v, int) for v in axis):
        a = np.asarray(axis, dtype=np.int64)  # in int64: checked by _int
        step = int(a[1] - a[0])
        if step >= 1 and np.all(np.diff(a) == step):
            return _canonical(range(int(a[0]), int(a[-1]) + step, step))
    return list(axis)


def _problem(value, base: Path | None):
    if isinstance(value, dict) and "data" in value:
        _mapping(value, "problem", ("data",))
        path = value["data"]
        if not isinstance(path, str) or not path:
            raise SpecError("problem.data", f"expected a path to an .npz file, got {_show(path)}")
        p = Path(path).expanduser()
        if not p.is_absolute() and base is not None:
            p = base / p
        return {"data": str(p.resolve())}
    _mapping(value, "problem", ("m", "dx", "dy", "seed", "data"))
    out = {**DEFAULTS["problem"], **value}
    out = {
        "m": _int(out["m"], "problem.m", lo=1),
        "dx": _int(out["dx"], "problem.dx", lo=1),
        "dy": _int(out["dy"], "problem.dy", lo=1),
        "seed": _int(out["seed"], "problem.seed", lo=0),
    }
    if out["m"] < out["dx"]:
        raise SpecError(
            "problem.m", f"needs m ≥ dx to whiten the data (X Xᵀ = I), got m = {out['m']} < dx = {out['dx']}"
        )
    size = data_bytes(out["m"], out["dx"], out["dy"])
    if size > MAX_DATA_BYTES:
        field = "problem." + max(("m", "dx", "dy"), key=lambda k: out[k])  # the largest is the one to cut
        raise SpecError(
            field,
            f"the data (m = {out['m']:,}, dx = {out['dx']:,}, dy = {out['dy']:,}) would take "
            f"{size / 2**20:,.0f} MiB (limit {MAX_DATA_BYTES / 2**20:.0f} MiB); use fewer samples or dimensions",
        )
    return out


def data_bytes(m: int, dx: int, dy: int) -> int:
    """Bytes of a problem's X (dx×m), Y (dy×m) and target (dy×dx) as float64."""
    return 8 * (m * dx + m * dy + dy * dx)


def _integrator(value):
    _mapping(value, "integrator", ("method", "rtol", "atol", "step", "max_steps"))
    default = DEFAULTS["integrator"]
    method = _choice(value.get("method", default["method"]), "integrator.method", tuple(METHODS))
    out = {"method": method}
    if METHODS[method].adaptive:  # a missing tolerance takes the default's
        for key in ("rtol", "atol"):
            out[key] = _float(value.get(key, default[key]), f"integrator.{key}", positive=True)
        if "step" in value:
            raise SpecError("integrator.step", f"method {method} chooses its own steps; give rtol and atol")
        out["max_steps"] = _int(value.get("max_steps", MAX_STEPS), "integrator.max_steps", lo=1)
    else:
        if "step" not in value:
            raise SpecError("integrator.step", f"method {method} needs a fixed step (e.g. step: 1.0e-4)")
        out["step"] = _float(value["step"], "integrator.step", positive=True)
        for key in ("rtol", "atol", "max_steps"):
            if key in value:
                raise SpecError(f"integrator.{key}", f"not used by the fixed-step method {method}")
    return out


def parse(raw: dict | None, base: Path | None = None) -> Spec:
    """Validate a raw spec mapping (from YAML or built from flags); missing keys take DEFAULTS."""
    raw = {} if raw is None else raw
    _mapping(raw, "", TOP_KEYS)
    d = {**copy.deepcopy(DEFAULTS), **raw}

    problem = _problem(d["problem"], base)
    model = _choice(d["model"], "model", ("layerwise", "induced", "exact"))
    init = _mapping(d["init"], "init", ("scheme",))
    init = {"scheme": _choice(init.get("scheme", DEFAULTS["init"]["scheme"]), "init.scheme", ("balanced", "gaussian"))}
    if model in ("induced", "exact") and init["scheme"] != "balanced":
        raise SpecError(
            "model", f"the {model} flow holds only for balanced starts; use init.scheme: balanced or model: layerwise"
        )

    axes_raw = _mapping(d["axes"], "axes", AXES)
    if "axes" in raw:  # a spec's own axes replace the defaults, but missing required axes default
        axes_raw = {**{k: DEFAULTS["axes"][k] for k in REQUIRED_AXES if k not in axes_raw}, **axes_raw}
    lengths = {name: _axis_length(name, axes_raw[name]) for name in AXES if name in axes_raw}
    cells = math.prod(lengths.values())
    if cells > MAX_CELLS:
        raise SpecError(
            "axes",
            f"the grid has {cells:,} cells ("
            + " × ".join(f"{n} {k:,}" for n, k in lengths.items())
            + f"); at most {MAX_CELLS:,} cells per store: split the sweep into several stores",
        )
    axes = {name: _axis(name, axes_raw[name]) for name in AXES if name in axes_raw}

    integrator = _integrator(d["integrator"])
    horizon = _float(d["horizon"], "horizon", positive=True)
    if "step" in integrator:
        if integrator["step"] > horizon:
            raise SpecError("integrator.step", f"is longer than the horizon ({integrator['step']} > {horizon})")
        if horizon / integrator["step"] > 1e9:
            raise SpecError(
                "integrator.step",
                f"gives {horizon / integrator['step']:.3g} steps (> 1e9); use dopri5 or a larger step",
            )
    eps = _float(d["eps"], "eps", positive=True)
    if not isinstance(d["stop_at_eps"], bool):
        raise SpecError("stop_at_eps", f"expected true or false, got {_show(d['stop_at_eps'])}")
    ck = _mapping(d["checkpoints"], "checkpoints", ("count", "spacing", "log_start"))
    checkpoints = {
        "count": _int(ck.get("count", DEFAULTS["checkpoints"]["count"]), "checkpoints.count", lo=2),
        "spacing": _choice(
            ck.get("spacing", DEFAULTS["checkpoints"]["spacing"]), "checkpoints.spacing", ("log", "linear")
        ),
    }
    if "log_start" in ck:
        if checkpoints["spacing"] != "log":
            raise SpecError("checkpoints.log_start", "only used with spacing: log")
        checkpoints["log_start"] = _float(ck["log_start"], "checkpoints.log_start", positive=True, hi=horizon)
    batch = _int(d["batch"], "batch", lo=1)
    if batch > MAX_BATCH:  # Ray retries tasks killed for memory forever: keep a task's memory bounded
        raise SpecError("batch", f"must be ≤ {MAX_BATCH} cells per task, got {batch}")

    if model == "exact" and "data" not in problem and problem["dy"] != 1:
        raise SpecError(
            "model",
            f"exact (the closed form of docs/theory.md §4) needs a scalar output, dy = 1; got dy = {problem['dy']}",
        )
    if "init_angle" in axes:
        if init["scheme"] != "balanced":
            raise SpecError("axes.init_angle", "needs init.scheme: balanced (a Gaussian start has no set angle)")
        if "data" not in problem and min(problem["dx"], problem["dy"]) != 1:
            raise SpecError(
                "axes.init_angle",
                "is defined for vector targets only (dy = 1 or dx = 1), "
                f"got dy = {problem['dy']}, dx = {problem['dx']}",
            )

    return Spec(problem, model, init, axes, integrator, horizon, eps, d["stop_at_eps"], checkpoints, batch)


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader with bounded nesting (its composer recurses: 20,000 levels raise
    RecursionError) and a bounded size with aliases expanded (a few hundred bytes of nested aliases
    stand for billions of nodes)."""

    def __init__(self, stream):
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            return super().compose_node(parent, index)
        self._depth += 1
        if self._depth > MAX_YAML_DEPTH:
            mark = self.peek_event().start_mark
            raise SpecError(
                "spec", f"nested deeper than {MAX_YAML_DEPTH} levels at line {mark.line + 1}, column {mark.column + 1}"
            )
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def compose_document(self):
        node = super().compose_document()
        sizes: dict[int, int] = {}  # expanded node count of each distinct node (aliases share nodes)

        def size(n):  # nesting is bounded above, so recursion is shallow
            if id(n) not in sizes:
                sizes[id(n)] = 1  # a cycle (an alias to an enclosing node) counts once
                if isinstance(n, yaml.SequenceNode):
                    sizes[id(n)] = 1 + sum(size(c) for c in n.value)
                elif isinstance(n, yaml.MappingNode):
                    sizes[id(n)] = 1 + sum(size(k) + size(v) for k, v in n.value)
            return sizes[id(n)]

        # a spec written out in full is bounded by the file's size; aliases must not expand it further
        if node is not None and size(node) > max(MAX_YAML_NODES, len(sizes)):
            raise SpecError(
                "spec",
                f"expands to more than {MAX_YAML_NODES:,} values through its aliases (*name); "
                "write the values out or use fewer aliases",
            )
        return node


def read_yaml(p: Path):
    """The YAML document in file ``p``, checked to be bounded (size, nesting, aliases) and UTF-8."""
    if p.is_dir():
        raise SpecError("spec", f"{p} is a folder, not a YAML file")
    if not p.is_file():
        raise SpecError("spec", f"no such file: {p}" if not p.exists() else f"{p} is not a regular file")
    try:
        with p.open("rb") as f:
            data = f.read(MAX_SPEC_BYTES + 1)
    except OSError as exc:
        raise SpecError("spec", f"cannot read {p}: {exc.strerror or exc}") from None
    if len(data) > MAX_SPEC_BYTES:
        raise SpecError("spec", f"{p} is larger than {MAX_SPEC_BYTES // 2**10} KiB: not a sweep spec")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError("spec", f"{p} is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start})") from None
    try:
        return yaml.load(text, Loader=_BoundedLoader)  # noqa: S506 — a SafeLoader
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "cannot be parsed"
        raise SpecError("spec", f"malformed YAML in {p}{where}: {problem}") from None
    except RecursionError:  # pragma: no cover — nesting is bounded above
        raise SpecError("spec", f"{p} is nested too deeply") from None


def load(path: str | Path | None, overrides: dict | None = None) -> Spec:
    """Read a YAML spec (or none: the defaults) and apply flag overrides (a nested mapping merged
    key by key, see :func:`merge`)."""
    raw: dict = {}
    base = None
    if path is not None:
        p = Path(path)
        raw = read_yaml(p) or {}
        if not isinstance(raw, dict):
            raise SpecError("spec", f"{p} must hold a mapping of keys (problem, model, axes, …)")
        base = p.parent
    return parse(merge(raw, overrides or {}), base=base)


def merge(raw: dict, overrides: dict) -> dict:
    """Apply flag overrides. ``integrator`` is replaced whole when the method changes."""
    out = copy.deepcopy(raw)
    for key, value in overrides.items():
        if key == "integrator" and "method" in value and value["method"] != out.get("integrator", {}).get("method"):
            out[key] = dict(value)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = {**out[key], **value}
        else:
            out[key] = value
    return out


# --------------------------------------------------------------------------------------------------
# flag parsing (the CLI's lists and ranges), errors name the flag
# --------------------------------------------------------------------------------------------------


def parse_list(text: str, flag: str, kind=float) -> list:
    """'0.1,1,10' → [0.1, 1.0, 10.0]; for integers also 'a:b' (b excluded) and 'a:b:s', a ``range``
    (kept one in the spec: a million seeds are three numbers)."""
    text = text.strip()
    what = "integers like 2,3,4 or a range 0:100" if kind is int else "numbers like 0.1,1,10"
    try:
        if kind is int and ":" in text:
            parts = [int(p) for p in text.split(":")]
            if len(parts) not in (2, 3):
                raise ValueError
            values = range(*parts)
        else:
            return [kind(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise SpecError(flag, f"expected {what}, got {_show(text)}") from None
    if _count(values) > MAX_CELLS:  # before building it
        raise SpecError(
            flag, f"the range {_show(text)} has {_count(values):,} values (a grid has at most {MAX_CELLS:,} cells)"
        )
    return values  # a range stays one (its values are built only where needed)
