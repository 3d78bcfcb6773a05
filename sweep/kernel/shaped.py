"""The layerwise flow compiled for one shape: :func:`sweep.kernel.flows._layerwise` (loss PLAIN) written out
for tiles of LANES trajectories as straight-line vector code in LLVM's own language, and compiled by LLVM
through llvmlite (which numba is built on) in a fraction of a second.

With the shape and the block width known, every product is unrolled, every offset is a number, the intermediates
S_i, E and V_i stay in registers (up to SPLIT multiply-adds; larger networks are cut into a function per product or
per row of a layer's flow, passing them through the work array), and a tile's flow is one run of vector
instructions: the loads of the state, the multiply-adds, the stores of the flow. :func:`sweep.kernel.flows.evaluate`
calls it through the pointer ``g.shaped`` of the :class:`~sweep.kernel.flows.Geometry`, so numba compiles the
stepper once for every shape. Every sum is taken in the generic code's order — the first product, then the inner
index in groups of four, then the rest one by one — with no contraction to fused multiply-adds: both give the same
bits, and the columns outside whole tiles run the generic code.

With the flow comes the cruise (:func:`cruise_ir`, called by :func:`sweep.kernel.stepper._cruise`): Euler steps of
one tile, many at a time, each a single pass that writes y + h·f(y) as the flow goes, on a copy of the tile
whose rows are contiguous — until a checkpoint, the horizon, an ε-crossing or a blow-up, which the generic
stepper takes. Its numbers are those of one step at a time.

Compiled code is kept on disk with the kernel's (``cache.FOLDER/shaped``), named by a hash of the code and of the
CPU it was compiled for.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading

import llvmlite.binding as llvm
import numba.experimental.function_type  # noqa: F401 — numba's typing of first-class functions (Pointer)
from numba.core import types

from .cache import FOLDER
from .flows import LANES

MAX_WORK = 5000  # multiply-adds per trajectory: larger networks take seconds to compile; they run the generic
# code (bench/RESULTS.md §1)
SPLIT = 600  # above this many, a function per product or row (:func:`_parts`)
VEC = f"<{LANES} x double>"
# flow(y, out, exc, work, target, tail, t0, t1): the addresses of the blocks y and out (P, width), exc (width,),
# work (rows, width) and of the oriented target (r × D_0, row-major), the tail; whole tiles t0 … t1 − 1
SIGNATURE = types.void(
    types.uintp, types.uintp, types.uintp, types.uintp, types.uintp, types.float64, types.int64, types.int64
)
# pointers where numba passes addresses (the same 64-bit registers); no two reach the same memory (distinct
# arrays, or distinct rows of one), hence noalias
ARGS = ", ".join(f"ptr noalias %{a}" for a in ("y", "out", "exc", "work", "target")) + ", double %tl, i64 %t0, i64 %t1"
# cruise(y, f, tiles, work, target, t, exc, exc_new, bound, found, steps, evals, tail, step, eps, tile, q) → the
# steps taken: the block's state and flow, the cruise's own memory (Block.tiles), the work array, the target; the
# rows t, exc, exc_new and bound of Block.f and found, steps and evals of Block.i (sweep.kernel.stepper); the tile,
# at most q steps
CRUISE_SIGNATURE = types.int64(*[types.uintp] * 12, *[types.float64] * 3, types.int64, types.int64)
CRUISE_PTRS = ("ya", "fa", "tiles", "work", "target", "tr", "excr", "excn", "boundr", "foundr", "stepsr", "evalsr")
CRUISE_ARGS = ", ".join(f"ptr noalias %{a}" for a in CRUISE_PTRS) + (
    ", double %tl, double %step, double %eps, i64 %tile, i64 %q"
)


class Pointer(types.WrapperAddressProtocol):
    """Compiled code as numba's first-class function: one type for every shape."""

    def __init__(self, address: int, signature=SIGNATURE):
        self.address, self._signature = address, signature

    def __wrapper_address__(self):
        return self.address

    def signature(self):
        return self._signature


def work(g) -> int:
    """Multiply-adds of one evaluation of the layerwise flow of ``g``, per trajectory."""
    d, n = [int(x) for x in g.dims], int(g.depth)
    return 3 * d[n] * sum(d[i] * d[i + 1] for i in range(n - 1)) + d[n] * d[0]


def specialize(g, width: int, cruise: bool = False):
    """``g`` with the flow compiled for its shape and blocks ``width`` wide when that pays: layerwise, loss
    PLAIN, at most MAX_WORK multiply-adds, ``width`` a multiple of LANES; else ``g`` itself. With ``cruise``
    (Euler's runs), the cruise too; without, a stub (half the code to compile)."""
    if hasattr(g, "rank") or int(g.loss) != 0 or work(g) > MAX_WORK or width % LANES:
        return g
    arrays = (g.dims, g.off, g.rs, g.cs, g.s_off, g.v_off)
    layout = (width, cruise, int(g.e_off), *(tuple(int(x) for x in a) for a in arrays))
    if layout not in _by_layout:  # what ir reads of g: its text is generated once per process (20 ms at N = 8)
        _by_layout[layout] = _pointers(ir(g, width, cruise))
    flow, steps = _by_layout[layout]
    return g._replace(shaped=flow, cruise=steps, shaped_width=width)


def none() -> dict:
    """The Geometry fields of geometries without compiled code (never called: ``shaped_width`` is 0)."""
    flow, cruise = _pointers(f"define void @flow({ARGS}) {{\n  ret void\n}}\n{NO_CRUISE}")
    return {"shaped": flow, "cruise": cruise, "shaped_width": 0}


NO_CRUISE = f"define i64 @cruise({CRUISE_ARGS}) {{\n  ret i64 0\n}}\n"  # never called (stepper._cruise)


def ir(g, width: int, cruise: bool = True) -> str:
    """LLVM IR of the flow of layerwise geometry ``g`` (loss PLAIN) on whole tiles of blocks ``width`` wide
    (``@flow``), and of the cruise (``@cruise``, :func:`cruise_ir`) built on it, or a stub."""
    n, d = int(g.depth), [int(x) for x in g.dims]
    flow, flow_calls = _parts(g, width, "flow", False)
    tile = [
        f"define void @flow({ARGS}) {{",
        "entry:",
        "  %go = icmp slt i64 %t0, %t1",
        "  br i1 %go, label %tile, label %done",
        "tile:",
        "  %t = phi i64 [ %t0, %entry ], [ %next, %tile ]",
        f"  %col = mul i64 %t, {LANES}",
        "  %yt = getelementptr double, ptr %y, i64 %col",
        "  %outt = getelementptr double, ptr %out, i64 %col",
        "  %wt = getelementptr double, ptr %work, i64 %col",
        "  %excp = getelementptr double, ptr %exc, i64 %col",
        *(c.format(y="%yt", out="%outt", w="%wt", h="zeroinitializer") for c in flow_calls),
        "  %next = add i64 %t, 1",
        "  %more = icmp slt i64 %next, %t1",
        "  br i1 %more, label %tile, label %done",
        "done:",
        "  ret void",
        "}",
    ]
    if not cruise:
        return "\n".join(flow + tile) + "\n" + NO_CRUISE
    step, step_calls = _parts(g, LANES, "step", True)  # on the cruise's own memory: a tile's rows one after the other
    size = sum(d[i] * d[i + 1] for i in range(n))
    return "\n".join(flow + step + tile + [cruise_ir(width, size, flow_calls, step_calls)]) + "\n"


def _parts(g, width: int, name: str, step: bool) -> tuple[list[str], list[str]]:
    """The functions of the flow, and the calls that run it on a tile (templates of {y}, {out}, {w}, {h}).

    The flow reads the state at {y} and writes its flow at {out}; or (``step``) writes the Euler step
    y + h·f(y) at {out} in its place, each element as soon as its flow is known, h the lanes' step sizes.
    A network of up to SPLIT multiply-adds is one function whose intermediates stay in registers. A larger
    one is cut into a function per product (and per row of a layer's flow, whose operands then fit in
    registers), the intermediates passed through the work array (its rows as
    :func:`sweep.kernel.flows._layerwise` places them): LLVM's time grows faster than the length of a
    function, and a product's worth of code keeps it to a fraction of a second."""
    n, d = int(g.depth), [int(x) for x in g.dims]
    r = d[n]
    split = work(g) > SPLIT
    parts: list[list[str]] = [[]]

    def emit(text: str) -> str:
        name = f"%v{len(parts[-1])}"
        parts[-1].append(f"  {name} = {text}")
        return name

    def cut():  # a new function from here on (split networks)
        if split and parts[-1]:
            parts.append([])

    def load(arr, row):  # the tile's columns of a row: a constant offset from the tile
        at = emit(f"getelementptr double, ptr %{arr}, i64 {row * width}")
        return emit(f"load {VEC}, ptr {at}, align 8")

    def store(arr, row, value):
        at = emit(f"getelementptr double, ptr %{arr}, i64 {row * width}")
        parts[-1].append(f"  store {VEC} {value}, ptr {at}, align 8")

    def row(i, a, c):  # the state row of oriented layer i's element (a, c)
        return int(g.off[i]) + a * int(g.rs[i]) + c * int(g.cs[i])

    def layer(i):  # loaded where used: registers held from one product to the next would spill
        return lambda a, c: load("yt", row(i, a, c))

    def flow(i, a, c, value):  # the flow of layer i's element (a, c): stored, or its Euler step
        if step:  # y + h·(1·f), as stepper._combine takes it
            value = add(load("yt", row(i, a, c)), mul("%h", value))
        store("outt", row(i, a, c), value)

    def keep(values, rows):
        """An intermediate: its registers, or (split) stored into the work rows ``rows(a, c)`` and read back."""
        if not split:
            return lambda a, c: values[a, c]
        for (a, c), value in values.items():
            store("wt", rows(a, c), value)
        return lambda a, c: load("wt", rows(a, c))

    def mul(x, z):
        return emit(f"fmul {VEC} {x}, {z}")

    def add(x, z):
        return emit(f"fadd {VEC} {x}, {z}")

    def matmul(x, z, rows, inner, cols, across=False):
        """{(i, j): Σ_k x(i, k)·z(k, j)}, in flows._matmul's order. ``across``: all outputs side by side, one
        step of their sums after another (each sum in the same order), so that z is read row after row — a
        stream through the state, not a jump of a row of z for every multiply-add."""
        outs = [(i, j) for i in range(rows) for j in range(cols)]
        out = {}
        for group in [outs] if across else [[o] for o in outs]:
            acc, k = {(i, j): mul(x(i, 0), z(0, j)) for i, j in group}, 1
            while k + 4 <= inner:
                for i, j in group:
                    p = [mul(x(i, k + q), z(k + q, j)) for q in range(4)]
                    acc[i, j] = add(acc[i, j], add(add(p[0], p[1]), add(p[2], p[3])))
                k += 4
            while k < inner:
                for i, j in group:
                    acc[i, j] = add(acc[i, j], mul(x(i, k), z(k, j)))
                k += 1
            out.update(acc)
        return out

    def splat(value):
        first = emit(f"insertelement {VEC} poison, double {value}, i32 0")
        return emit(f"shufflevector {VEC} {first}, {VEC} poison, <{LANES} x i32> zeroinitializer")

    s = {n - 1: layer(n - 1)}  # S_i (r × D_i); S_{N−1} is the last layer
    for i in range(n - 2, -1, -1):
        cut()
        product = matmul(s[i + 1], layer(i), r, d[i + 1], d[i], across=split)
        s[i] = keep(product, lambda a, c, i=i: int(g.s_off[i]) + a * d[i] + c)
    cut()
    e, acc = {}, "zeroinitializer"  # E = Z − W, and Σ E² from 0 as flows._layerwise sums it
    for a in range(r):
        for c in range(d[0]):
            z = emit(f"load double, ptr {emit(f'getelementptr double, ptr %target, i64 {a * d[0] + c}')}, align 8")
            e[a, c] = emit(f"fsub {VEC} {splat(z)}, {s[0](a, c)}")
            acc = add(acc, mul(e[a, c], e[a, c]))
    exc = emit(f"fsub {VEC} {mul(splat('0.5'), acc)}, {splat('%tail')}")
    parts[-1].append(f"  store {VEC} {exc}, ptr %excp, align 8")
    e = keep(e, lambda a, c: int(g.e_off) + a * d[0] + c)
    v = lambda a, c: e(c, a)  # noqa: E731 — V_0 = Eᵀ (D_0 × r)
    for i in range(n - 1):  # the flow of layer i, S_{i+1}ᵀ V_iᵀ, stored at once; then V_{i+1} = L_i V_i
        # split: a function per row, whose operands fit in registers (all rows at once spill); else all at once
        for rows in [[a] for a in range(d[i + 1])] if split else [range(d[i + 1])]:
            cut()
            for (a, c), value in matmul(
                lambda a, k, i=i, rows=rows: s[i + 1](k, rows[a]), lambda k, c, v=v: v(c, k), len(rows), r, d[i]
            ).items():
                flow(i, rows[a], c, value)
        cut()
        v = keep(matmul(layer(i), v, d[i + 1], d[i], r), lambda a, c, i=i: int(g.v_off[i + 1]) + a * r + c)
    cut()
    for a in range(d[n]):
        for c in range(d[n - 1]):
            flow(n - 1, a, c, v(c, a))

    params = (
        "ptr noalias %yt, ptr noalias %outt, ptr noalias %wt, ptr noalias %excp, ptr noalias %target, double %tail, "
        f"{VEC} %h"
    )
    attributes = "noinline" if split else "alwaysinline"
    text = [
        f"define internal void @{name}{k}({params}) {attributes} {{\n" + "\n".join(lines) + "\n  ret void\n}\n"
        for k, lines in enumerate(parts)
    ]
    calls = [
        f"  call void @{name}{k}(ptr {{y}}, ptr {{out}}, ptr {{w}}, ptr %excp, ptr %target, double %tl, {VEC} {{h}})"
        for k in range(len(parts))
    ]
    return text, calls


def _vector(value: str) -> str:
    return "<" + ", ".join([f"double {value}"] * LANES) + ">"


def cruise_ir(width: int, size: int, flow: list[str], step: list[str]) -> str:
    """LLVM IR of ``@cruise``: Euler steps y ← y + h·f(y) of one tile, at most q, as long as no lane meets an
    event — an ε-crossing (its excess loss ≤ eps while ``found`` is 0), an excess loss above its ``bound`` or not
    finite; the step that meets one is not kept. Each step end is n·step, n the lane's step count, as the
    generic stepper computes it. Returns the steps kept; the tile's state and flow, and its lanes' t, exc, steps
    and evals, are those that accepting them one by one would leave.

    The tile runs in ``tiles``, its own memory: three states of ``size`` rows of LANES, one after the other, then
    the work rows — a state of the tile is contiguous there, not spread over the block's rows a block width
    apart. One pass (``step``: the calls of :func:`_parts` templates) reads state j and writes state j + 1 =
    y_j + h·f(y_j) as it goes, with no store of f; the excess loss of y_j it finds decides whether y_j is kept.
    The passes rotate through the three states, so the last one kept is never overwritten; it is copied back
    into the block at the end, and its flow computed (``flow``). The first step uses the flow already in f."""
    vec, ivec = VEC, f"<{LANES} x i64>"

    def rows(tag, body):  # a loop over the state's rows: %off.tag in the block, %at.tag in the tile's memory
        return f"""  br label %rows.{tag}
rows.{tag}:
  %p.{tag} = phi i64 [ 0, %{tag} ], [ %p1.{tag}, %rows.{tag} ]
  %off.{tag} = mul i64 %p.{tag}, {width}
  %at.{tag} = mul i64 %p.{tag}, {LANES}
{body}
  %p1.{tag} = add i64 %p.{tag}, 1
  %more.{tag} = icmp slt i64 %p1.{tag}, {size}
  br i1 %more.{tag}, label %rows.{tag}, label %{tag}.end
{tag}.end:"""

    def splat(name, value, kind=vec, scalar="double"):
        return (
            f"  %{name}.1 = insertelement {kind} poison, {scalar} {value}, i32 0\n"
            f"  %{name} = shufflevector {kind} %{name}.1, {kind} poison, <{LANES} x i32> zeroinitializer"
        )

    first = f"""  %a.first = getelementptr double, ptr %y0, i64 %off.first
  %g.first = getelementptr double, ptr %f0, i64 %off.first
  %c.first = getelementptr double, ptr %s1, i64 %at.first
  %y.first = load {vec}, ptr %a.first, align 8
  %f.first = load {vec}, ptr %g.first, align 8
  %hf.first = fmul {vec} %h.1, %f.first
  %z.first = fadd {vec} %y.first, %hf.first
  store {vec} %z.first, ptr %c.first, align 8"""  # the first step, from the flow in f (state 0 is y, in the block)
    copy = f"""  %a.copy = getelementptr double, ptr %kept, i64 %at.copy
  %b.copy = getelementptr double, ptr %y0, i64 %off.copy
  %y.copy = load {vec}, ptr %a.copy, align 8
  store {vec} %y.copy, ptr %b.copy, align 8"""
    return f"""define i64 @cruise({CRUISE_ARGS}) {{
first:
  %col = mul i64 %tile, {LANES}
  %y0 = getelementptr double, ptr %ya, i64 %col
  %f0 = getelementptr double, ptr %fa, i64 %col
  %s0 = getelementptr double, ptr %tiles, i64 0
  %s1 = getelementptr double, ptr %tiles, i64 {size * LANES}
  %s2 = getelementptr double, ptr %tiles, i64 {2 * size * LANES}
  %ws = getelementptr double, ptr %tiles, i64 {3 * size * LANES}
  %wt = getelementptr double, ptr %work, i64 %col
  %excp = getelementptr double, ptr %excn, i64 %col
  %tp = getelementptr double, ptr %tr, i64 %col
  %ep = getelementptr double, ptr %excr, i64 %col
  %bp = getelementptr double, ptr %boundr, i64 %col
  %fp = getelementptr i64, ptr %foundr, i64 %col
  %sp = getelementptr i64, ptr %stepsr, i64 %col
  %vp = getelementptr i64, ptr %evalsr, i64 %col
  %t.0 = load {vec}, ptr %tp, align 8
  %e.0 = load {vec}, ptr %ep, align 8
  %bound = load {vec}, ptr %bp, align 8
  %found = load {ivec}, ptr %fp, align 8
  %steps = load {ivec}, ptr %sp, align 8
  %evals = load {ivec}, ptr %vp, align 8
  %n.0 = sitofp {ivec} %steps to {vec}
  %is.found = icmp ne {ivec} %found, zeroinitializer
{splat("eps.v", "%eps")}
  %limit = select <{LANES} x i1> %is.found, {vec} {_vector("0xFFF0000000000000")}, {vec} %eps.v
{splat("step.v", "%step")}
  %n.1 = fadd {vec} %n.0, {_vector("1.0")}
  %t.1 = fmul {vec} %n.1, %step.v
  %h.1 = fsub {vec} %t.1, %t.0
{rows("first", first)}
  br label %loop
loop:
  %j = phi i64 [ 0, %first.end ], [ %j.1, %next ]
  %kept = phi ptr [ %s0, %first.end ], [ %new, %next ]
  %new = phi ptr [ %s1, %first.end ], [ %free, %next ]
  %free = phi ptr [ %s2, %first.end ], [ %kept, %next ]
  %t = phi {vec} [ %t.0, %first.end ], [ %tn, %next ]
  %e = phi {vec} [ %e.0, %first.end ], [ %e.n, %next ]
  %tn = phi {vec} [ %t.1, %first.end ], [ %tnn, %next ]
  %nn = phi {vec} [ %n.1, %first.end ], [ %nnn, %next ]
  %go = icmp slt i64 %j, %q
  br i1 %go, label %pass, label %exit
pass:
  %nnn = fadd {vec} %nn, {_vector("1.0")}
  %tnn = fmul {vec} %nnn, %step.v
  %h = fsub {vec} %tnn, %tn
{chr(10).join(c.format(y="%new", out="%free", w="%ws", h="%h") for c in step)}
  %e.n = load {vec}, ptr %excp, align 8
  %above = fcmp ogt {vec} %e.n, %limit
  %below = fcmp ole {vec} %e.n, %bound
  %finite = fcmp olt {vec} %e.n, {_vector("0x7FF0000000000000")}
  %ok.1 = and <{LANES} x i1> %above, %below
  %ok.v = and <{LANES} x i1> %ok.1, %finite
  %ok.b = bitcast <{LANES} x i1> %ok.v to i{LANES}
  %ok = icmp eq i{LANES} %ok.b, -1
  br i1 %ok, label %next, label %exit
next:
  %j.1 = add i64 %j, 1
  br label %loop
exit:
  %moved = icmp ne i64 %j, 0
  br i1 %moved, label %copy, label %done
copy:
{rows("copy", copy)}
{chr(10).join(c.format(y="%y0", out="%f0", w="%wt", h="zeroinitializer") for c in flow)}
  br label %done
done:
  store {vec} %t, ptr %tp, align 8
  store {vec} %e, ptr %ep, align 8
{splat("k.v", "%j", ivec, "i64")}
  %steps.1 = add {ivec} %steps, %k.v
  %evals.1 = add {ivec} %evals, %k.v
  store {ivec} %steps.1, ptr %sp, align 8
  store {ivec} %evals.1, ptr %vp, align 8
  ret i64 %j
}}
"""


_lock = threading.Lock()
_loaded: dict[str, tuple[Pointer, Pointer]] = {}
_by_layout: dict[tuple, tuple[Pointer, Pointer]] = {}  # specialize's: a geometry's layout and width → its code
_engines: list = []  # compiled code lives as long as its engine
_machine: list = []  # the target machine, made once


def _pointers(text: str) -> tuple[Pointer, Pointer]:
    """The compiled ``@flow`` and ``@cruise`` of ``text``."""
    with _lock:
        if not _machine:
            llvm.initialize_native_target()
            llvm.initialize_native_asmprinter()
            cpu, features = llvm.get_host_cpu_name(), llvm.get_host_cpu_features().flatten()
            tm = llvm.Target.from_default_triple().create_target_machine(cpu=cpu, features=features, opt=2, jit=True)
            _machine.extend([tm, f"{cpu}\0{features}\0{llvm.llvm_version_info}"])
        tm, host = _machine
        key = hashlib.sha256(text.encode() + host.encode()).hexdigest()[:24]
        if key not in _loaded:
            engine = _compile(tm, text, FOLDER / "shaped" / f"flow-{key}.o")
            _loaded[key] = (
                Pointer(engine.get_function_address("flow")),
                Pointer(engine.get_function_address("cruise"), CRUISE_SIGNATURE),
            )
        return _loaded[key]


def _compile(tm, text: str, path):
    """Compile ``text`` (or load its object code from ``path``, where a first compilation left it)."""
    module = llvm.parse_assembly(text)
    module.verify()
    cached = path.read_bytes() if path.exists() else None
    if cached is None:
        pb = llvm.create_pass_builder(tm, llvm.create_pipeline_tuning_options(speed_level=2))
        pb.getModulePassManager().run(module, pb)
    engine = llvm.create_mcjit_compiler(module, tm)
    engine.set_object_cache(lambda _module, obj: _save(path, obj), lambda _module: cached)
    engine.finalize_object()
    _engines.append(engine)
    return engine


def _save(path, obj: bytes) -> None:
    """Write compiled code aside, then rename: a reader sees all of it or nothing."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(obj)
        os.replace(tmp, path)
    except OSError:
        pass  # no cache: compiled again next time
