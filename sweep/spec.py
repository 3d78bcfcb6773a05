"""The sweep specification: YAML or flags → a validated, normalized, immutable :class:`Spec`.

The spec is a tree of frozen pydantic models (:class:`Spec` at the root); each default is written once,
in its model (``linflow spec`` prints them filled in, ``linflow spec --schema`` the JSON Schema). Every
problem is reported as one :class:`SpecError` naming the field (``axes.depth[2]``, ``integrator.rtol`` …)
so the CLI can print one line and exit 2 before anything is created: :func:`parse` turns pydantic's
ValidationError into it (:func:`_spec_error`), in the words the spec always used.
"""

import copy
import hashlib
import math
import re
import reprlib
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import yaml
from pydantic import (
    AfterValidator,
    AllowInfNan,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    PlainSerializer,
    PlainValidator,
    Strict,
    Tag,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    create_model,
    field_validator,
    model_validator,
)

from .errors import SpecError
from .kernel import DEFAULT_METHOD, KERNEL_VERSION, METHODS
from .models import DEFAULT_MODEL, MODELS
from .schema import AXES as AXIS_TABLE
from .schema import MAX_DEPTH, RECORDABLE

# the grid axes (schema.AXES: canonical order, the dataset's dims; seed last so batches run over seeds)
AXES = tuple(AXIS_TABLE)
REQUIRED_AXES = tuple(name for name, a in AXIS_TABLE.items() if a.default is not None)
FLOAT_AXES = tuple(name for name, a in AXIS_TABLE.items() if a.dtype == "f8")
FIXED_METHODS = tuple(name for name, t in METHODS.items() if not t.adaptive)
ADAPTIVE_METHODS = tuple(name for name, t in METHODS.items() if t.adaptive)

MAX_STEPS = 1_000_000
MAX_BATCH = 65_536
# bounds on what a spec may ask for, checked before anything is built (bounded time and memory)
MAX_CELLS = 10_000_000  # grid cells (the results of even 2 checkpoints a cell would pass 2 GiB near 2e7)
MAX_INT = 2**63 - 1  # every integer must fit int64 (the store's coordinates)
MAX_DATA_BYTES = 2**28  # the problem's X, Y and target as float64: (m·dx + m·dy + dy·dx)·8 bytes
MAX_SPEC_BYTES = 2**20  # a YAML spec file
MAX_YAML_DEPTH = 50  # nesting of a YAML spec
MAX_YAML_NODES = 100_000  # nodes of a YAML spec with its aliases expanded (alias bombs)


_repr = reprlib.Repr()
_repr.maxlevel, _repr.maxstring, _repr.maxother, _repr.maxlong = 2, 40, 40, 40


def _show(value) -> str:
    """A short repr: bounded in time and length whatever ``value`` holds (never the whole of a huge
    or deeply nested value)."""
    text = _repr.repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def data_bytes(m: int, dx: int, dy: int) -> int:
    """Bytes of a problem's X (dx×m), Y (dy×m) and target (dy×dx) as float64."""
    return 8 * (m * dx + m * dy + dy * dx)


def observed_count(n: int, observed: float) -> int:
    """The observed entries of an n×n completion problem: round(observed·n²), at least 1."""
    return max(1, round(observed * n * n))


# --------------------------------------------------------------------------------------------------
# the numbers: strict (no text read as a number, no bool as 0/1), bounded, finite
# --------------------------------------------------------------------------------------------------


def _plain(value):
    """NumPy scalars as the Python numbers they hold."""
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    return value


def _whole(value):
    """A whole float is the integer it equals (``2.0`` → 2), as YAML's ``2.0e3`` is meant; ``2.5`` is not."""
    value = _plain(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _positive_zero(value: float) -> float:
    """−0.0 as 0.0: the same number is the same spec, stored coordinate and fingerprint however it was written."""
    return 0.0 if value == 0 else value


def _int(lo: int | None = None, hi: int | None = MAX_INT):
    return Annotated[int, Strict(), Field(ge=lo, le=hi), BeforeValidator(_whole)]


def _float(gt: float | None = None, ge: float | None = None, le: float | None = None):
    return Annotated[
        float,
        Strict(),
        AllowInfNan(False),
        Field(gt=gt, ge=ge, le=le),
        BeforeValidator(_plain),
        AfterValidator(_positive_zero),
    ]


AnyInt = _int(-MAX_INT)
Count = _int(1)
Seed = _int(0)
Depth = _int(1, MAX_DEPTH)
Positive = _float(gt=0.0)
Angle = _float(ge=0.0, le=math.pi)


class _Record(BaseModel):
    """A frozen model that also reads as the mapping it was written as: ``spec.integrator["method"]``,
    ``dict(spec.checkpoints.items())``, and equal to that dict (fields left unset — None — are absent)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    def keys(self) -> tuple[str, ...]:
        return tuple(k for k in type(self).model_fields if getattr(self, k) is not None)

    def __iter__(self):  # the keys, as a mapping's (pydantic's own iteration is not used by pydantic)
        return iter(self.keys())

    def __getitem__(self, key: str):
        if key in self.keys():
            return getattr(self, key)
        raise KeyError(key)

    def __contains__(self, key) -> bool:
        return key in self.keys()

    def __len__(self) -> int:
        return len(self.keys())

    def get(self, key: str, default=None):
        return getattr(self, key) if key in self.keys() else default

    def items(self):
        return tuple((k, getattr(self, k)) for k in self.keys())

    def values(self):
        return tuple(getattr(self, k) for k in self.keys())

    def __eq__(self, other) -> bool:
        if isinstance(other, dict):
            return dict(self.items()) == other
        return super().__eq__(other)


# --------------------------------------------------------------------------------------------------
# the models
# --------------------------------------------------------------------------------------------------


class Synthetic(_Record):
    """Synthetic data of m samples, dx inputs and dy outputs: whitened (X Xᵀ = I) unless ``whiten: false`` or
    an ``input_spectrum`` is given; Y Gaussian, or Y = A X for a target map A of ``target_spectrum``."""

    m: Count = 50
    dx: Count = 5
    dy: Count = 1
    seed: Seed = 0
    whiten: Annotated[bool, Strict()] | None = Field(None, description="X Xᵀ = I (default true)")
    input_spectrum: tuple[Positive, ...] | None = Field(
        None, description="the eigenvalues of Σ = X Xᵀ, dx of them (inputs not whitened)"
    )
    target_spectrum: tuple[Positive, ...] | None = Field(
        None, description="the singular values of the target map A (1 to min(dx, dy) of them); Y = A X"
    )

    @model_validator(mode="after")
    def _fits(self):
        if self.input_spectrum is not None:
            if self.whiten:
                raise SpecError("problem.whiten", "must be false with an input_spectrum (X Xᵀ is not I)")
            if len(self.input_spectrum) != self.dx:
                raise SpecError(
                    "problem.input_spectrum",
                    f"has {len(self.input_spectrum)} values; X Xᵀ has dx = {self.dx} eigenvalues",
                )
        if self.target_spectrum is not None and not 1 <= len(self.target_spectrum) <= min(self.dx, self.dy):
            raise SpecError(
                "problem.target_spectrum",
                f"has {len(self.target_spectrum)} values; a {self.dy}×{self.dx} target map has 1 to "
                f"min(dx, dy) = {min(self.dx, self.dy)} singular values",
            )
        if self.m < self.dx:
            why = (
                "to whiten the data (X Xᵀ = I)"
                if self.whiten is not False and self.input_spectrum is None
                else ("for X Xᵀ to be invertible")
            )
            raise SpecError("problem.m", f"needs m ≥ dx {why}, got m = {self.m} < dx = {self.dx}")
        size = data_bytes(self.m, self.dx, self.dy)
        if size > MAX_DATA_BYTES:
            field = "problem." + max(("m", "dx", "dy"), key=lambda k: getattr(self, k))  # the largest: cut it
            raise SpecError(
                field,
                f"the data (m = {self.m:,}, dx = {self.dx:,}, dy = {self.dy:,}) would take "
                f"{size / 2**20:,.0f} MiB (limit {MAX_DATA_BYTES / 2**20:.0f} MiB); use fewer samples or dimensions",
            )
        return self


def _data_path(value, info: ValidationInfo) -> str:
    if not isinstance(value, str) or not value:
        raise SpecError("problem.data", f"expected a path to an .npz file, got {_show(value)}")
    p = Path(value).expanduser()
    base = (info.context or {}).get("base")
    if not p.is_absolute() and base is not None:
        p = Path(base) / p
    return str(p.resolve())


class DataFile(_Record):
    """Data from an .npz file with X (dx×m) and Y (dy×m); a relative path is from the spec file's folder.
    X is whitened unless ``whiten: false``."""

    data: Annotated[str, PlainValidator(_data_path, json_schema_input_type=str)]
    whiten: Annotated[bool, Strict()] | None = Field(None, description="whiten X (default true)")


MAX_COMPLETION_N = 4096


class Completion(_Record):
    """Matrix completion: a random rank-``rank`` n×n ground truth M, seen on a random ``observed`` fraction of
    its entries (the set Ω), loss ½‖P_Ω(W − M)‖² (docs/theory.md §12)."""

    kind: Literal["completion"]
    n: _int(1, MAX_COMPLETION_N) = 30
    rank: Count = 3
    observed: _float(gt=0.0, le=1.0) = Field(0.3, description="the fraction of M's entries observed, in (0, 1]")
    seed: Seed = 0

    @model_validator(mode="after")
    def _enough(self):
        n, r = self.n, self.rank
        if r > n:
            raise SpecError("problem.rank", f"must be ≤ n = {n}, got {r}")
        seen, needed = observed_count(n, self.observed), r * (2 * n - r)
        if seen < needed:
            raise SpecError(
                "problem.observed",
                f"sees {seen} of {n * n} entries; a rank-{r} {n}×{n} matrix has r(2n − r) = {needed} degrees of "
                f"freedom: observe at least that many (observed ≥ {needed / (n * n):.3g})",
            )
        return self


def _problem_kind(value) -> str:
    if isinstance(value, Completion) or isinstance(value, dict) and "kind" in value:
        return "completion"
    return "file" if isinstance(value, DataFile) or isinstance(value, dict) and "data" in value else "synthetic"


Problem = Annotated[
    Annotated[Synthetic, Tag("synthetic")]
    | Annotated[DataFile, Tag("file")]
    | Annotated[Completion, Tag("completion")],
    Discriminator(_problem_kind),
]


class Init(_Record):
    """How the layers start: balanced (random W0 of rank r, the paper's), gaussian (independent layers), or
    aligned (balanced, W0 = init_norm·‖Z‖₂·U_r V_rᵀ on the target's top singular vectors: every mode at the
    same size, as in Saxe et al. 2014)."""

    scheme: Literal["balanced", "gaussian", "aligned"] = "balanced"


class Range(_Record):
    """The integers start, start + step, … below stop (stop excluded): a million seeds in three numbers."""

    start: AnyInt
    stop: AnyInt
    step: Count = 1


def _count(r: range) -> int:
    """len(r), also beyond what ``len`` can return (2**63 values and more)."""
    if r.step > 0:
        return max(0, -((r.start - r.stop) // r.step))
    return max(0, -((r.stop - r.start) // -r.step))


def _range(value, field: str) -> range:
    try:
        r = Range.model_validate(value)
    except ValidationError as exc:
        raise _spec_error(exc, field, Range) from None
    return range(r.start, r.stop, r.step)


def _axis_length(value, field: str) -> int:
    """How many values an axis will have, without building it (a range's length is arithmetic)."""
    if isinstance(value, dict):
        return _count(_range(value, field))
    if isinstance(value, range):
        return _count(value)
    return len(value) if isinstance(value, (list, tuple)) else 1


def _axis_plain(value):
    """An axis as plain data: a range as {start, stop, step}, values as a list (an absent one: None)."""
    if value is None:
        return None
    return _range_dict(value) if isinstance(value, range) else list(value)


def _range_text(value, name):
    """An integer axis written 'a:b' or 'a:b:s' (``seed: 1:20`` in YAML) as the range its flag reads (``--seed
    1:20``: :func:`parse_list`); any other value as it is."""
    if isinstance(value, str) and ":" in value and name in AXES and name not in FLOAT_AXES:
        return parse_list(value, f"axes.{name}", int)
    return value


def _axis(element):
    """An axis of ``element`` values: a list (or one value), or a range {start, stop, step} of integers —
    kept a ``range`` (its values are built only where needed, :func:`axis_values`), checked at its ends."""
    values, one = TypeAdapter(tuple[element, ...]), TypeAdapter(element)

    def validate(value, info: ValidationInfo):
        name = info.field_name
        field = f"axes.{name}"
        if isinstance(value, dict):
            value = _range(value, field)
        elif isinstance(value, range) and value.step < 0:  # a decreasing range (a flag 9:0:-1): a list of its values
            value = tuple(value)
        elif not isinstance(value, (list, tuple, range)):
            value = [value]
        if (_count(value) if isinstance(value, range) else len(value)) == 0:
            raise SpecError(field, "is empty: give at least one value")
        if isinstance(value, range):  # whole numbers, unique and increasing (step ≥ 1): check the ends only
            n = _count(value)
            for i in (0, n - 1):
                try:
                    one.validate_python(value[i])
                except ValidationError as exc:
                    raise _spec_error(exc, f"{field}[{i}]") from None
            return tuple(float(v) for v in value) if name in FLOAT_AXES else value
        try:
            out = values.validate_python(tuple(value))
        except ValidationError as exc:
            error, bad = _spec_error(exc, field), exc.errors()[0]["input"]
            if isinstance(bad, str) and ":" in bad and name not in FLOAT_AXES:  # seed: [1:20] (YAML 1.1 read 80)
                error = SpecError(
                    error.field, f"{error.problem}; a range is a whole axis, without brackets: {name}: a:b"
                )
            raise error from None
        if len(set(out)) != len(out):
            seen = set()
            dup = next(v for v in out if v in seen or seen.add(v))
            raise SpecError(field, f"value {dup} appears twice (grid coordinates must be unique)")
        return out

    return Annotated[
        Any,
        PlainValidator(validate, json_schema_input_type=list[element] | Range | element),
        PlainSerializer(_axis_plain),
    ]


def _element(a) -> Any:
    """The type of one value of axis ``a`` (a row of schema.AXES): whole numbers or reals within its bounds."""
    if a.dtype == "i8":
        return _int(int(a.low), MAX_INT if a.high is None else int(a.high))
    low = {"gt": a.low} if a.low_open else {"ge": a.low}
    return _float(**low, le=a.high)


class _Grid(_Record):
    """The grid: the Cartesian product of these axes (an axis without a default only when given)."""

    @model_validator(mode="before")
    @classmethod
    def _bounded(cls, raw):
        """At most MAX_CELLS cells, counted before any axis is built. An integer axis written as its flag takes
        it, 'a:b' or 'a:b:s' (``seed: 0:100``), is that range (:func:`parse_list`)."""
        if not isinstance(raw, dict):
            return raw
        raw = {k: _range_text(v, k) for k, v in raw.items()}
        given = {**{k: cls.model_fields[k].default for k in REQUIRED_AXES}, **raw}
        lengths = {k: _axis_length(given[k], f"axes.{k}") for k in AXES if k in given}
        cells = math.prod(lengths.values())
        if cells > MAX_CELLS:
            raise SpecError(
                "axes",
                f"the grid has {cells:,} cells ("
                + " × ".join(f"{n} {k:,}" for n, k in lengths.items())
                + f"); at most {MAX_CELLS:,} cells per store: split the sweep into several stores",
            )
        return raw


# one field per row of schema.AXES
Axes = create_model(
    "Axes",
    __base__=_Grid,
    __module__=__name__,
    **{
        name: (
            _axis(_element(a)),
            Field(a.default, validate_default=a.default is not None, description=a.long_name),
        )
        for name, a in AXIS_TABLE.items()
    },
)


class FixedStep(_Record):
    """A fixed-step method (euler, rk4) and its step."""

    method: Literal[FIXED_METHODS]
    step: Positive


class Adaptive(_Record):
    """An adaptive method (dopri5): it chooses its steps to keep each within rtol and atol."""

    method: Literal[ADAPTIVE_METHODS] = DEFAULT_METHOD
    rtol: Positive = 1e-8
    atol: Positive = 1e-12
    max_steps: Count = MAX_STEPS


Integrator = Annotated[FixedStep | Adaptive, Field(discriminator="method")]


class Checkpoints(_Record):
    """When the state is recorded: 0, then log-spaced from log_start (default horizon·1e-4), or linear."""

    count: _int(2) = 101
    spacing: Literal["log", "linear"] = "log"
    log_start: Positive | None = None

    @model_validator(mode="after")
    def _log_only(self):
        if self.log_start is not None and self.spacing != "log":
            raise SpecError("checkpoints.log_start", "only used with spacing: log")
        return self


class Spec(BaseModel):
    """A sweep: the problem, the model and its start, the grid of axes, the integrator and what is recorded."""

    model_config = ConfigDict(extra="forbid", frozen=True, title="linflow sweep spec")

    problem: Problem = Synthetic()
    model: Literal[tuple(MODELS)] = DEFAULT_MODEL
    init: Init = Init()
    axes: Axes = Axes()
    integrator: Integrator = Adaptive()
    horizon: Positive = Field(10.0, description="flow time t_max")
    eps: Positive = Field(1e-6, description="excess-loss threshold for time_to_eps")
    stop_at_eps: Annotated[bool, Strict()] = Field(False, description="stop each trajectory at eps")
    checkpoints: Checkpoints = Checkpoints()
    record: tuple[Literal[RECORDABLE], ...] = Field(
        (), description="optional results to store at every checkpoint: w (the end-to-end matrix W(t))"
    )
    batch: _int(1, MAX_BATCH) = Field(256, description="at most this many cells per Ray task")

    @field_validator("integrator", mode="before")
    @classmethod
    def _default_method(cls, value):
        if isinstance(value, dict) and "method" not in value:  # a missing method is the default's
            return {"method": Adaptive.model_fields["method"].default, **value}
        return value

    @model_validator(mode="after")
    def _consistent(self):
        model, scheme, problem, step = self.model, self.init.scheme, self.problem, self.integrator.get("step")
        if MODELS[model].balanced_only and scheme == "gaussian":
            raise SpecError(
                "model",
                f"the {model} flow holds only for balanced starts; use init.scheme: balanced or model: layerwise",
            )
        general = isinstance(problem, Completion) or problem.get("whiten") is False or "input_spectrum" in problem
        if MODELS[model].whitened_only and general:
            what = "a completion problem" if isinstance(problem, Completion) else "inputs not whitened"
            raise SpecError("model", f"{model} (the closed form of docs/theory.md §4) needs whitened data; got {what}")
        if step is not None:
            if step > self.horizon:
                raise SpecError("integrator.step", f"is longer than the horizon ({step} > {self.horizon})")
            if self.horizon / step > 1e9:
                raise SpecError(
                    "integrator.step", f"gives {self.horizon / step:.3g} steps (> 1e9); use dopri5 or a larger step"
                )
        log_start = self.checkpoints.log_start
        if log_start is not None and log_start > self.horizon:
            raise SpecError("checkpoints.log_start", f"must be ≤ {self.horizon:.6g}, got {log_start}")
        dims = (problem.n, problem.n) if isinstance(problem, Completion) else (problem.get("dy"), problem.get("dx"))
        if dims[0] is not None:
            MODELS[model].check_data(dims[0])
        if self.axes.init_angle is not None:
            if scheme != "balanced":
                raise SpecError("axes.init_angle", f"needs init.scheme: balanced (a {scheme} start has no set angle)")
            if dims[0] is not None and min(dims) != 1:
                raise SpecError(
                    "axes.init_angle",
                    f"is defined for vector targets only (dy = 1 or dx = 1), got dy = {dims[0]}, dx = {dims[1]}",
                )
        return self

    def to_dict(self) -> dict:
        """The spec as plain data (what :func:`parse` reads): an axis given as a range stays a range
        ``{start, stop, step}``, so that a million seeds take three numbers, not a million."""
        return {
            "problem": {k: list(v) if isinstance(v, tuple) else v for k, v in self.problem.items()},
            "model": self.model,
            "init": dict(self.init.items()),
            "axes": {k: _axis_plain(v) for k, v in self.axes.items()},
            "integrator": dict(self.integrator.items()),
            "horizon": self.horizon,
            "eps": self.eps,
            "stop_at_eps": self.stop_at_eps,
            "checkpoints": dict(self.checkpoints.items()),
            "record": list(self.record),
            "batch": self.batch,
        }

    def to_yaml(self) -> str:
        return yaml.dump(self.to_dict(), Dumper=_Dumper, sort_keys=False)

    def fingerprint(self, data_digest: str = "") -> str:
        """Hash of what determines the numbers: the spec without execution settings (``batch``),
        the kernel version and a digest of the data. Where a data file lies is not part of it (the
        digest says what it holds), so a store resumes after its folder moved."""
        d = self.to_dict()
        d.pop("batch")
        if not d["record"]:  # as before there was a record: the fingerprints of older specs hold
            d.pop("record")
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
        if c.spacing == "linear":
            return np.linspace(0.0, self.horizon, c.count)
        first = self.horizon * 1e-4 if c.log_start is None else c.log_start
        return np.concatenate([[0.0], np.geomspace(first, self.horizon, c.count - 1)])


# --------------------------------------------------------------------------------------------------
# pydantic's errors in the spec's words: one line, naming the field
# --------------------------------------------------------------------------------------------------

# the records of each top-level field (all members of a tagged union), for the keys an error lists
_RECORDS = {
    "problem": (Synthetic, DataFile, Completion),
    "init": (Init,),
    "axes": (Axes,),
    "integrator": (FixedStep, Adaptive),
    "checkpoints": (Checkpoints,),
}
_TAGS = {"synthetic", "file", "completion", *METHODS}  # the tags pydantic puts in an error's location under a union
_QUOTED = re.compile(r"'([^']*)'")  # the choices in pydantic's "'a', 'b' or 'c'"
_KEY_ERRORS = ("extra_forbidden", "invalid_key")
_OPS = {"greater_than": ">", "greater_than_equal": "≥", "less_than": "<", "less_than_equal": "≤"}


def _path(parts) -> str:
    """('axes', 'depth', 2) → 'axes.depth[2]'."""
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else f".{p}" if out else str(p)
    return out


def _keys(models) -> str:
    return ", ".join(dict.fromkeys(k for m in models for k in m.model_fields))


def _number(value) -> str:
    try:
        return str(float(value))
    except (TypeError, ValueError, OverflowError):
        return _show(value)


def _spec_error(exc: ValidationError, prefix: str = "", model: type[BaseModel] | None = None) -> SpecError:
    """The first error of ``exc`` as a SpecError: its location as a field path (under ``prefix``),
    its problem in the words the spec always used. ``model``: the record validated, if not a Spec."""
    errors = exc.errors(include_url=False)
    e = errors[0]
    # as a mapping is read: its unknown keys first, then its values (the first unknown key above e wins)
    keys = [k for k in errors if k["type"] in _KEY_ERRORS and e["loc"][: len(k["loc"]) - 1] == k["loc"][:-1]]
    e = min(keys, key=lambda k: len(k["loc"]), default=e)
    ctx = e.get("ctx") or {}
    if isinstance(ctx.get("error"), SpecError):  # raised by a validator: it names its own field
        return ctx["error"]
    loc, tag = list(e["loc"]), None
    if model is None and len(loc) >= 2 and loc[0] in ("problem", "integrator") and loc[1] in _TAGS:
        tag = loc.pop(1)
    field = _path([prefix, *loc] if prefix else loc)

    def records(where):
        return (model,) if model else _RECORDS.get(where[0], ()) if where else (Spec,)

    kind, value = e["type"], e.get("input")
    if kind == "invalid_key":  # a key that is not a string (YAML's 1: 2): unknown, named as written
        where = _path([prefix, *loc[:-1]] if prefix else loc[:-1])
        key = f"{where}.{loc[-1]}" if where else str(loc[-1])
        return SpecError(key, f"unknown key (allowed: {_keys(records(loc[:-1]))})")
    if kind == "extra_forbidden":
        key = loc[-1]
        if tag in ADAPTIVE_METHODS and key == "step":
            problem = f"method {tag} chooses its own steps; give rtol and atol"
        elif tag in FIXED_METHODS and key in Adaptive.model_fields:
            problem = f"not used by the fixed-step method {tag}"
        else:
            problem = f"unknown key (allowed: {_keys(records(loc[:-1]))})"
    elif kind in ("model_type", "model_attributes_type", "dict_type", "union_tag_not_found"):
        problem = f"expected a mapping with keys {_keys(records(loc))}, got {_show(value)}"
    elif kind == "missing":
        if model is Range:
            return SpecError(prefix, "a range needs start and stop (stop excluded)")
        if tag in FIXED_METHODS and loc[-1] == "step":
            problem = f"method {tag} needs a fixed step (e.g. step: 1.0e-4)"
        else:
            problem = "is required"
    elif kind == "union_tag_invalid":
        key = ctx["discriminator"].strip("'")
        choices = ", ".join(_QUOTED.findall(ctx["expected_tags"]))
        return SpecError(f"{field}.{key}" if field else key, f"must be one of {choices}, got {_show(value.get(key))}")
    elif kind == "literal_error":
        problem = f"must be one of {', '.join(_QUOTED.findall(ctx['expected']))}, got {_show(value)}"
    elif kind in ("int_type", "int_parsing", "int_from_float"):
        problem = f"expected an integer, got {_show(value)}"
    elif kind in ("float_type", "float_parsing"):
        problem = f"expected a number, got {_show(value)}"
    elif kind in ("tuple_type", "list_type"):
        problem = f"expected a list, got {_show(value)}"
    elif kind in ("bool_type", "bool_parsing"):
        problem = f"expected true or false, got {_show(value)}"
    elif kind == "finite_number":
        problem = f"must be finite, got {_number(value)}"
    elif kind in _OPS:
        bound = next(iter(ctx.values()))
        if isinstance(bound, float):  # a float field: its value as a float, a bound < 1e6 as written
            shown = f"{bound:g}" if kind == "greater_than" else f"{bound:.6g}" if kind == "less_than_equal" else bound
            problem = f"must be {_OPS[kind]} {shown}, got {_number(value)}"
        else:
            problem = f"must be {_OPS[kind]} {bound}, got {_show(value)}"
    else:
        problem = " ".join(str(e["msg"]).split())
    return SpecError(field, problem)


# --------------------------------------------------------------------------------------------------
# axes as data
# --------------------------------------------------------------------------------------------------

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


def extension(old: Spec, new: Spec) -> tuple[dict[str, tuple[int, int]], str | None]:
    """How the sweep ``new`` extends the sweep ``old``: ``({axis: (old size, new size)}, None)`` for the
    axes that grow — each keeps its values in their order, new values after them, and nothing else
    differs (execution settings, ``batch``, never count; nor where a data file lies) —, else
    ``({}, the first difference)`` in a few words: 'horizon 1.0 → 2.0', 'axes.init_angle: added'."""
    before, after = old.to_dict(), new.to_dict()
    kinds = ["a data file" if "data" in d["problem"] else "synthetic data" for d in (before, after)]
    if kinds[0] != kinds[1]:
        return {}, f"problem: {kinds[0]} → {kinds[1]}"
    for d in (before, after):
        d.pop("batch")
        d.pop("axes")
        d["problem"].pop("data", None)  # the data digest says what it holds (Spec.fingerprint)
    for key in before:
        if before[key] != after[key]:
            return {}, _first_change(key, before[key], after[key])
    grows = {}
    for name in list(old.axes) + [n for n in new.axes if n not in old.axes]:
        if name not in old.axes or name not in new.axes:
            how = "added" if name in new.axes else "removed"
            return {}, f"axes.{name}: {how} (a store grows only along its own axes)"
        a, b = axis_values(old.axes[name]), axis_values(new.axes[name])
        if len(b) < len(a):
            return {}, f"axes.{name}: {len(a)} values → {len(b)} (a store never loses values)"
        differ = np.flatnonzero(a != b[: len(a)])
        if len(differ):
            i = int(differ[0])
            return {}, (
                f"axes.{name}: value {a[i].item()} at position {i} → {b[i].item()} (a store grows only by new "
                "values after its own, in their order)"
            )
        if len(b) > len(a):
            grows[name] = (len(a), len(b))
    return grows, None


def _first_change(path: str, a, b) -> str:
    """'integrator.method dopri5 → rk4': the first leaf where two nested mappings differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in list(a) + [k for k in b if k not in a]:
            if a.get(key) != b.get(key):
                return _first_change(f"{path}.{key}", a.get(key), b.get(key))
    text = [str(v) if len(str(v)) <= 60 else str(v)[:57] + "…" for v in (a, b)]
    return f"{path} {text[0]} → {text[1]}"


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
        a = np.asarray(axis, dtype=np.int64)  # in int64: checked on parsing
        step = int(a[1] - a[0])
        if step >= 1 and np.all(np.diff(a) == step):
            return _canonical(range(int(a[0]), int(a[-1]) + step, step))
    return list(axis)


def parse(raw: dict | None, base: Path | None = None) -> Spec:
    """Validate a raw spec mapping (from YAML or built from flags); missing keys take the models' defaults.
    A relative data path is taken from ``base`` (the spec file's folder)."""
    try:
        return Spec.model_validate({} if raw is None else raw, context={"base": base})
    except ValidationError as exc:
        raise _spec_error(exc) from None


TOP_KEYS = tuple(Spec.model_fields)
# the defaults as plain data, read off the models (written nowhere else)
DEFAULTS = Spec().to_dict()


def json_schema() -> dict:
    """The JSON Schema of a spec file (for editors: completion and checks as one types)."""
    return Spec.model_json_schema()


# YAML 1.2's core schema (yaml.org/spec/1.2.2, 10.3.2): the plain scalars that are not strings, and their values.
# Not YAML 1.1's: no base 60 (1:20 was 80), no yes/no/on/off, 010 is ten, 1e3 a number.
CORE_SCHEMA = {
    "null": (r"~|null|Null|NULL|", lambda text: None),
    "bool": (r"true|True|TRUE|false|False|FALSE", lambda text: text.lower() == "true"),
    "int": (r"[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+", lambda text: int(text, 0 if text[1:2] in ("o", "x") else 10)),
    "float": (
        r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?|[-+]?\.(inf|Inf|INF)|\.(nan|NaN|NAN)",
        lambda text: float(text.replace(".", "") if text.lower().lstrip("+-") in (".inf", ".nan") else text),
    ),
}


def _core_constructor(name: str, pattern: re.Pattern, convert):
    """The value of a scalar of type ``name`` of the core schema, also under an explicit tag (``!!int 1:20``)."""

    def construct(loader, node):
        text = loader.construct_scalar(node)
        if not pattern.match(text):
            raise yaml.constructor.ConstructorError(
                None, None, f"{_show(text)} is not a YAML 1.2 {name}", node.start_mark
            )
        try:
            return convert(text)
        except ValueError:  # an integer of more digits than Python converts (4,300)
            raise yaml.constructor.ConstructorError(
                None, None, f"an integer of {len(text):,} digits", node.start_mark
            ) from None

    return construct


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader, reading YAML 1.2's core schema (:data:`CORE_SCHEMA`), refusing a key given twice in
    one mapping (YAML 1.1's loader keeps the last), with bounded nesting (its composer recurses: 20,000
    levels raise RecursionError) and a bounded size with aliases expanded (a few hundred bytes of nested
    aliases stand for billions of nodes)."""

    yaml_implicit_resolvers = {}  # not YAML 1.1's (inherited): the core schema's, added below

    def __init__(self, stream):
        super().__init__(stream)
        self._keys = []  # where the node being composed is: the keys and list positions above it

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            return super().compose_node(parent, index)
        if len(self._keys) >= MAX_YAML_DEPTH:
            mark = self.peek_event().start_mark
            raise SpecError(
                "spec", f"nested deeper than {MAX_YAML_DEPTH} levels at line {mark.line + 1}, column {mark.column + 1}"
            )
        # index: the key of a mapping's value or the position of a list's item (None: a key itself)
        self._keys.append(
            index.value if isinstance(index, yaml.ScalarNode) else index if isinstance(index, int) else None
        )
        try:
            return super().compose_node(parent, index)
        finally:
            self._keys.pop()

    def compose_mapping_node(self, anchor):
        node = super().compose_mapping_node(anchor)
        lines = {}  # (tag, text) of each key → its line
        for key, _ in node.value:
            if not isinstance(key, yaml.ScalarNode):
                continue  # not a key of a spec (refused when constructed: unhashable)
            line = key.start_mark.line + 1
            if (key.tag, key.value) in lines:
                where = _path([k for k in self._keys if k is not None] + [key.value])
                where = where if len(where) <= 60 else where[:57] + "..."
                first = lines[key.tag, key.value]
                on = f"twice on line {line}" if first == line else f"lines {first} and {line}"
                raise yaml.composer.ComposerError(None, None, f"duplicate key {where} ({on})", None)
            lines[key.tag, key.value] = line
        return node

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


class _Dumper(yaml.SafeDumper):
    """yaml.safe_dump's YAML, with the strings also quoted that YAML 1.2 reads as another type ('1e3', '0o17'):
    read back the same by :func:`read_yaml` (1.2) and by yaml.safe_load (1.1: readers of a store's spec)."""


for _name, (_pattern, _convert) in CORE_SCHEMA.items():
    _tag, _regexp = f"tag:yaml.org,2002:{_name}", re.compile(f"(?:{_pattern})\\Z")
    _BoundedLoader.add_implicit_resolver(_tag, _regexp, None)  # in this order: 10 is an int, not a float
    _BoundedLoader.add_constructor(_tag, _core_constructor(_name, _regexp, _convert))
    _Dumper.add_implicit_resolver(_tag, _regexp, None)  # after YAML 1.1's own
_BoundedLoader.add_implicit_resolver("tag:yaml.org,2002:merge", re.compile(r"<<\Z"), ["<"])  # <<: *defaults


def read_yaml(p: Path):
    """The YAML document in file ``p`` as YAML 1.2 reads it (its core schema, each key once in a mapping), checked
    to be bounded (size, nesting, aliases) and UTF-8."""
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
    """Apply flag overrides. ``integrator`` is replaced whole when the method changes, ``problem`` when it
    changes between synthetic data and a data file."""
    out = copy.deepcopy(raw)
    for key, value in overrides.items():
        if key == "integrator" and "method" in value and value["method"] != out.get("integrator", {}).get("method"):
            out[key] = dict(value)
        elif key == "problem" and isinstance(out.get(key), dict) and ("data" in value) != ("data" in out[key]):
            out[key] = dict(value)  # a data file replaces synthetic data, and the other way round
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
