"""The layerwise flow compiled for one shape: :func:`sweep.kernel.flows._layerwise` (loss PLAIN) written out
for tiles of LANES trajectories as straight-line vector code in LLVM's own language, and compiled by LLVM
through llvmlite (which numba is built on) in a fraction of a second.

With the shape and the block width known, every product is unrolled, every offset is a number, the
intermediates S_i, E and V_i stay in registers (up to SPLIT multiply-adds; larger networks are cut into a
function per product, passing them through the work array), and a tile's flow is one run of vector
instructions: the loads of the state, the multiply-adds, the stores of the flow. :func:`sweep.kernel.flows.rhs` calls it
through the pointer ``g.shaped`` of the :class:`~sweep.kernel.flows.Geometry`, so numba compiles the
stepper once for every shape. Every sum is taken in the generic code's order — the first product, then the
inner index in groups of four, then the rest one by one — with no contraction to fused multiply-adds: both
give the same bits, and the columns outside whole tiles run the generic code.

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
SPLIT = 600  # above this many, a function per product (:func:`ir`)
VEC = f"<{LANES} x double>"
# flow(y, out, exc, work, target, tail, t0, t1): the addresses of the blocks y and out (P, width), exc (width,),
# work (rows, width) and of the oriented target (r × D_0, row-major), the tail; whole tiles t0 … t1 − 1
SIGNATURE = types.void(
    types.uintp, types.uintp, types.uintp, types.uintp, types.uintp, types.float64, types.int64, types.int64
)
# pointers where numba passes addresses (the same 64-bit registers); distinct arrays, hence noalias
ARGS = ", ".join(f"ptr noalias %{a}" for a in ("y", "out", "exc", "work", "target")) + ", double %tl, i64 %t0, i64 %t1"
# cruise(y, f, y_b, f_b, work, target, t, exc, exc_new, bound, found, steps, evals, tail, step, eps, c, tile, q) → the
# steps taken: the block's state and flow, the other pair of buffers, the work array and the target; the rows t, exc,
# exc_new and bound of Block.f and found, steps and evals of Block.i (sweep.kernel.stepper); the tile, at most q steps
CRUISE_SIGNATURE = types.int64(*[types.uintp] * 13, *[types.float64] * 4, types.int64, types.int64)
CRUISE_PTRS = ("ya", "fa", "yb", "fb", "work", "target", "tr", "excr", "excn", "boundr", "foundr", "stepsr", "evalsr")
CRUISE_ARGS = ", ".join(f"ptr noalias %{a}" for a in CRUISE_PTRS) + (
    ", double %tl, double %step, double %eps, double %c, i64 %tile, i64 %q"
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


def specialize(g, width: int):
    """``g`` with the flow (and the cruise) compiled for its shape and blocks ``width`` wide when that pays:
    layerwise, loss PLAIN, at most MAX_WORK multiply-adds, ``width`` a multiple of LANES; else ``g`` itself."""
    if g.kind != 0 or int(g.loss) != 0 or work(g) > MAX_WORK or width % LANES:
        return g
    layout = (width, int(g.e_off), *(tuple(int(x) for x in a) for a in (g.dims, g.off, g.rs, g.cs, g.s_off, g.v_off)))
    if layout not in _by_layout:  # what ir reads of g: its text is generated once per process (20 ms at N = 8)
        _by_layout[layout] = _pointers(ir(g, width))
    flow, cruise = _by_layout[layout]
    return g._replace(shaped=flow, cruise=cruise, shaped_width=width)


def none() -> dict:
    """The Geometry fields of geometries without compiled code (never called: ``shaped_width`` is 0)."""
    flow, cruise = _pointers(
        f"define void @flow({ARGS}) {{\n  ret void\n}}\ndefine i64 @cruise({CRUISE_ARGS}) {{\n  ret i64 0\n}}\n"
    )
    return {"shaped": flow, "cruise": cruise, "shaped_width": 0}


def ir(g, width: int) -> str:
    """LLVM IR of the flow of layerwise geometry ``g`` (loss PLAIN) on whole tiles of blocks ``width`` wide.

    A network of up to SPLIT multiply-adds is one function whose intermediates stay in registers. A larger
    one is cut into a function per product, the intermediates passed through the work array (its rows as
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

    def matmul(x, z, rows, inner, cols):
        """{(i, j): Σ_k x(i, k)·z(k, j)}, in flows._matmul's order."""
        out = {}
        for i in range(rows):
            for j in range(cols):
                acc, k = mul(x(i, 0), z(0, j)), 1
                while k + 4 <= inner:
                    p = [mul(x(i, k + q), z(k + q, j)) for q in range(4)]
                    acc, k = add(acc, add(add(p[0], p[1]), add(p[2], p[3]))), k + 4
                while k < inner:
                    acc, k = add(acc, mul(x(i, k), z(k, j))), k + 1
                out[i, j] = acc
        return out

    def splat(value):
        first = emit(f"insertelement {VEC} poison, double {value}, i32 0")
        return emit(f"shufflevector {VEC} {first}, {VEC} poison, <{LANES} x i32> zeroinitializer")

    s = {n - 1: layer(n - 1)}  # S_i (r × D_i); S_{N−1} is the last layer
    for i in range(n - 2, -1, -1):
        cut()
        s[i] = keep(matmul(s[i + 1], layer(i), r, d[i + 1], d[i]), lambda a, c, i=i: int(g.s_off[i]) + a * d[i] + c)
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
        cut()
        for (a, c), value in matmul(
            lambda a, k, i=i: s[i + 1](k, a), lambda k, c, v=v: v(c, k), d[i + 1], r, d[i]
        ).items():
            store("outt", row(i, a, c), value)
        cut()
        v = keep(matmul(layer(i), v, d[i + 1], d[i], r), lambda a, c, i=i: int(g.v_off[i + 1]) + a * r + c)
    cut()
    for a in range(d[n]):
        for c in range(d[n - 1]):
            store("outt", row(n - 1, a, c), v(c, a))

    params = "ptr noalias %yt, ptr noalias %outt, ptr noalias %wt, ptr noalias %excp, ptr noalias %target, double %tail"
    attributes = "noinline" if split else "alwaysinline"
    text = [
        f"define internal void @part{k}({params}) {attributes} {{\n" + "\n".join(lines) + "\n  ret void\n}\n"
        for k, lines in enumerate(parts)
    ]
    calls = [
        f"  call void @part{k}(ptr %yt, ptr %outt, ptr %wt, ptr %excp, ptr %target, double %tl)"
        for k in range(len(parts))
    ]
    size = sum(d[i] * d[i + 1] for i in range(n))
    return (
        "\n".join(
            text
            + [cruise_ir(width, size, [c.replace("%yt", "%yd").replace("%outt", "%fd") for c in calls])]
            + [
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
                *calls,
                "  %next = add i64 %t, 1",
                "  %more = icmp slt i64 %next, %t1",
                "  br i1 %more, label %tile, label %done",
                "done:",
                "  ret void",
                "}",
            ]
        )
        + "\n"
    )


def _vector(value: str) -> str:
    return "<" + ", ".join([f"double {value}"] * LANES) + ">"


def cruise_ir(width: int, size: int, calls: list[str]) -> str:
    """LLVM IR of ``@cruise``: up to q fixed steps y ← y + h·(c·f(y)) of one tile (Euler: c = 1), each followed by
    the flow ``calls`` (reading %yd, writing %fd, %wt and %excp), while no lane meets an event — an ε-crossing (its
    excess loss ≤ eps while ``found`` is 0), an excess loss above its ``bound`` or not finite. The step that meets
    one is not kept. Each step end is n·step, n the lane's step count, as the generic stepper computes it.

    The state alternates between the block's two pairs of buffers (y, f) and (y_b, f_b) — a step reads one
    and writes the other — and is copied back into (y, f) when it ends in the other. Returns the steps kept;
    t, exc, steps and evals of each lane are updated, as accepting them one by one would."""
    vec, ivec = VEC, f"<{LANES} x i64>"
    row_loop = f"""
  %off.{{tag}} = mul i64 %p.{{tag}}, {width}
  %a.{{tag}} = getelementptr double, ptr {{src}}, i64 %off.{{tag}}
  %b.{{tag}} = getelementptr double, ptr {{dst}}, i64 %off.{{tag}}"""
    return f"""define i64 @cruise({CRUISE_ARGS}) {{
entry:
  %col = mul i64 %tile, {LANES}
  %y0 = getelementptr double, ptr %ya, i64 %col
  %f0 = getelementptr double, ptr %fa, i64 %col
  %y1 = getelementptr double, ptr %yb, i64 %col
  %f1 = getelementptr double, ptr %fb, i64 %col
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
  %eps.1 = insertelement {vec} poison, double %eps, i32 0
  %eps.v = shufflevector {vec} %eps.1, {vec} poison, <{LANES} x i32> zeroinitializer
  %limit = select <{LANES} x i1> %is.found, {vec} {_vector("0xFFF0000000000000")}, {vec} %eps.v
  %step.1 = insertelement {vec} poison, double %step, i32 0
  %step.v = shufflevector {vec} %step.1, {vec} poison, <{LANES} x i32> zeroinitializer
  %c.1 = insertelement {vec} poison, double %c, i32 0
  %c.v = shufflevector {vec} %c.1, {vec} poison, <{LANES} x i32> zeroinitializer
  br label %loop
loop:
  %k = phi i64 [ 0, %entry ], [ %k.1, %next ]
  %ys = phi ptr [ %y0, %entry ], [ %yd, %next ]
  %fs = phi ptr [ %f0, %entry ], [ %fd, %next ]
  %yd = phi ptr [ %y1, %entry ], [ %ys, %next ]
  %fd = phi ptr [ %f1, %entry ], [ %fs, %next ]
  %t = phi {vec} [ %t.0, %entry ], [ %t.1, %next ]
  %n = phi {vec} [ %n.0, %entry ], [ %n.1, %next ]
  %e = phi {vec} [ %e.0, %entry ], [ %e.1, %next ]
  %go = icmp slt i64 %k, %q
  br i1 %go, label %advance, label %exit
advance:
  %n.1 = fadd {vec} %n, {_vector("1.0")}
  %t.1 = fmul {vec} %n.1, %step.v
  %h = fsub {vec} %t.1, %t
  br label %update
update:
  %p.u = phi i64 [ 0, %advance ], [ %p.u1, %update ]{row_loop.format(tag="u", src="%ys", dst="%yd")}
  %fr = getelementptr double, ptr %fs, i64 %off.u
  %yv = load {vec}, ptr %a.u, align 8
  %fv = load {vec}, ptr %fr, align 8
  %cf = fmul {vec} %c.v, %fv
  %hcf = fmul {vec} %h, %cf
  %yn = fadd {vec} %yv, %hcf
  store {vec} %yn, ptr %b.u, align 8
  %p.u1 = add i64 %p.u, 1
  %more.u = icmp slt i64 %p.u1, {size}
  br i1 %more.u, label %update, label %flow
flow:
{chr(10).join(calls)}
  %e.1 = load {vec}, ptr %excp, align 8
  %above = fcmp ogt {vec} %e.1, %limit
  %below = fcmp ole {vec} %e.1, %bound
  %finite = fcmp olt {vec} %e.1, {_vector("0x7FF0000000000000")}
  %ok.1 = and <{LANES} x i1> %above, %below
  %ok.v = and <{LANES} x i1> %ok.1, %finite
  %ok.b = bitcast <{LANES} x i1> %ok.v to i{LANES}
  %ok = icmp eq i{LANES} %ok.b, -1
  br i1 %ok, label %next, label %exit
next:
  %k.1 = add i64 %k, 1
  br label %loop
exit:
  %moved = icmp ne ptr %ys, %y0
  br i1 %moved, label %copy, label %done
copy:
  %p.c = phi i64 [ 0, %exit ], [ %p.c1, %copy ]{row_loop.format(tag="c", src="%ys", dst="%y0")}
  %fa.c = getelementptr double, ptr %fs, i64 %off.c
  %fb.c = getelementptr double, ptr %f0, i64 %off.c
  %yc = load {vec}, ptr %a.c, align 8
  %fc = load {vec}, ptr %fa.c, align 8
  store {vec} %yc, ptr %b.c, align 8
  store {vec} %fc, ptr %fb.c, align 8
  %p.c1 = add i64 %p.c, 1
  %more.c = icmp slt i64 %p.c1, {size}
  br i1 %more.c, label %copy, label %done
done:
  store {vec} %t, ptr %tp, align 8
  store {vec} %e, ptr %ep, align 8
  %k.i = insertelement {ivec} poison, i64 %k, i32 0
  %k.v = shufflevector {ivec} %k.i, {ivec} poison, <{LANES} x i32> zeroinitializer
  %steps.1 = add {ivec} %steps, %k.v
  %evals.1 = add {ivec} %evals, %k.v
  store {ivec} %steps.1, ptr %sp, align 8
  store {ivec} %evals.1, ptr %vp, align 8
  ret i64 %k
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
