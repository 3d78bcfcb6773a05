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


class Pointer(types.WrapperAddressProtocol):
    """Compiled code as numba's first-class function: one type for every shape."""

    def __init__(self, address: int):
        self.address = address

    def __wrapper_address__(self):
        return self.address

    def signature(self):
        return SIGNATURE


def work(g) -> int:
    """Multiply-adds of one evaluation of the layerwise flow of ``g``, per trajectory."""
    d, n = [int(x) for x in g.dims], int(g.depth)
    return 3 * d[n] * sum(d[i] * d[i + 1] for i in range(n - 1)) + d[n] * d[0]


def specialize(g, width: int):
    """``g`` with the flow compiled for its shape and blocks ``width`` wide when that pays: layerwise, loss
    PLAIN, at most MAX_WORK multiply-adds, ``width`` a multiple of LANES; else ``g`` itself."""
    if g.kind != 0 or int(g.loss) != 0 or work(g) > MAX_WORK or width % LANES:
        return g
    layout = (width, int(g.e_off), *(tuple(int(x) for x in a) for a in (g.dims, g.off, g.rs, g.cs, g.s_off, g.v_off)))
    if layout not in _by_layout:  # what ir reads of g: its text is generated once per process (20 ms at N = 8)
        _by_layout[layout] = _pointer(ir(g, width))
    return g._replace(shaped=_by_layout[layout], shaped_width=width)


def none() -> Pointer:
    """The pointer of geometries without compiled code (never called: ``shaped_width`` is 0)."""
    return _pointer(f"define void @flow({ARGS}) {{\n  ret void\n}}\n")


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
    return (
        "\n".join(
            text
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


_lock = threading.Lock()
_loaded: dict[str, Pointer] = {}
_by_layout: dict[tuple, Pointer] = {}  # specialize's: a geometry's layout and width → its compiled flow
_engines: list = []  # compiled code lives as long as its engine
_machine: list = []  # the target machine, made once


def _pointer(text: str) -> Pointer:
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
            _loaded[key] = Pointer(_compile(tm, text, FOLDER / "shaped" / f"flow-{key}.o"))
        return _loaded[key]


def _compile(tm, text: str, path) -> int:
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
    return engine.get_function_address("flow")


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
