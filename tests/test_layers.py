"""The layering is a contract: who may import whom among sweep/, analysis/ and cli/ (docs/architecture.md).

Every module's imports are read from its source with ``ast`` — at module level and inside functions alike;
nothing is imported or compiled, so the whole file runs in a fraction of a second. A violation names the
file and line. The violations known today are listed in KNOWN with their reasons (docs/architecture.md,
"Known exceptions (to remove)"): they pass, any other fails, and an entry that no longer occurs fails too,
so the list only shrinks.
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("sweep", "analysis", "cli")

# Known violations, as (importer, imported) edges: a project module, or the top-level name of a library.
# Each is to be removed; when it is, delete its line here and in docs/architecture.md.
KNOWN: dict = {}  # none left

# Layers, bottom to top: a module may import its own layer (no cycles) and the layers below, never above.
RANK = {"base": 0, "kernel": 1, "cells": 2, "batch": 3, "worker": 4, "driver": 5, "analysis": 6, "cli": 7}
KERNEL = tuple(
    f"sweep.kernel{m}" for m in ("", ".cache", ".tableau", ".flows", ".shaped", ".stepper", ".integrate", ".exact")
)
BASE = ("sweep.schema", "sweep.version", "sweep.errors")  # result table and statuses, version, errors: leaves
LAYER = {
    **{m: "base" for m in BASE},
    **{m: "kernel" for m in KERNEL},
    "sweep.models": "cells",  # one record per model: below the spec, which offers their names
    "sweep.spec": "cells",
    "sweep.problem": "cells",
    "sweep.init": "cells",
    "sweep.batch": "batch",
    "sweep.task": "worker",
    **{
        f"sweep.store{m}": "worker"
        for m in ("", ".make", ".group", ".chunks", ".damage", ".results", ".lock", ".remote")
    },
    "sweep.cluster": "driver",  # the Ray lifecycle: below the runner, which dispatches through it
    "sweep.runner": "driver",
    "sweep": "driver",  # the package __init__: the public face (open_results, __version__)
}
PREFIX_LAYER = {"analysis": "analysis", "cli": "cli"}  # every module of these packages

KERNEL_LIBRARIES = {"numpy", "numba", "llvmlite"}  # besides the standard library (llvmlite: numba's LLVM)
STORE_LIBRARIES = {"zarr", "xarray", "numcodecs"}
UI_LIBRARIES = {"typer", "click", "rich"}
STDLIB = set(sys.stdlib_module_names)


@dataclass(frozen=True)
class Import:
    importer: str  # project module
    target: str  # project module, or a library's top-level name
    path: str
    line: int
    in_function: bool

    @property
    def internal(self) -> bool:
        return self.target.split(".")[0] in PACKAGES

    def __str__(self) -> str:
        where = " (inside a function)" if self.in_function else ""
        return f"{self.path}:{self.line}: {self.importer} imports {self.target}{where}"


def _modules() -> dict[str, Path]:
    found = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


MODULES = _modules()


def _project_module(dotted: str) -> str | None:
    """The longest prefix of ``dotted`` that is a module of the project."""
    parts = dotted.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in MODULES:
            return ".".join(parts[:n])
    return None


def _targets(module: str, is_package: bool, node: ast.Import | ast.ImportFrom) -> list[str]:
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        if node.level:
            base = module.split(".") if is_package else module.split(".")[:-1]
            base = base[: len(base) - (node.level - 1)] + ([node.module] if node.module else [])
            origin = ".".join(base)
        else:
            origin = node.module
        # ``from pkg import name``: the submodule pkg.name if there is one, else pkg itself
        names = [f"{origin}.{a.name}" if f"{origin}.{a.name}" in MODULES else origin for a in node.names]
    out = []
    for name in names:
        if name.split(".")[0] in PACKAGES:
            out.append(_project_module(name) or name)
        else:
            out.append(name.split(".")[0])
    return out


def _imports() -> list[Import]:
    found = []
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        functions = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))]
        nested = {id(inner) for f in functions for inner in ast.walk(f) if inner is not f}
        nested |= {id(f) for f in functions}
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for target in dict.fromkeys(_targets(module, path.name == "__init__.py", node)):
                    if target != module:
                        found.append(
                            Import(module, target, str(path.relative_to(ROOT)), node.lineno, id(node) in nested)
                        )
    return found


IMPORTS = _imports()
CHECKED = [i for i in IMPORTS if (i.importer, i.target) not in KNOWN]  # what every rule below reads


def layer(module: str) -> str | None:
    return LAYER.get(module) or PREFIX_LAYER.get(module.split(".")[0])


def _fail_on(violations: list[Import], rule: str) -> None:
    assert not violations, (
        f"{rule}:\n  "
        + "\n  ".join(map(str, violations))
        + ("\n(the layering is in docs/architecture.md; tests/test_layers.py checks it)")
    )


def _within(module: str, group) -> bool:
    return any(module == g or module.startswith(g + ".") for g in group)


def test_the_import_graph_is_read():
    """Guards the parser itself: the edges every rule relies on are seen, both kinds."""
    edges = {(i.importer, i.target, i.in_function) for i in IMPORTS}
    assert ("sweep.kernel.integrate", "sweep.kernel.stepper", False) in edges  # from . import flows, stepper
    assert ("sweep.task", "sweep.batch", False) in edges  # from . import batch as batches
    assert ("sweep.task", "ray", True) in edges  # import ray, inside run_task
    assert ("cli.main", "analysis.report", True) in edges  # from analysis.report import …, inside report
    assert ("analysis.theory", "sweep.kernel.exact", False) in edges  # from sweep.kernel.exact import …
    assert len(MODULES) >= 20


def test_every_module_has_a_place_in_the_layers():
    unplaced = sorted(m for m in MODULES if layer(m) is None)
    assert not unplaced, (
        f"modules with no layer: {unplaced}; give each one in LAYER (tests/test_layers.py) "
        "and a line in docs/architecture.md"
    )


def test_kernel_imports_only_numpy_numba_and_itself():
    """Workers import the kernel and it must be testable alone: no Ray, Zarr, xarray, Typer, rich, YAML, no
    spec, store, task, lock, runner, analysis or CLI — only the standard library, numpy, numba, itself and
    the base layer below it (which obeys the same rule)."""
    pure = KERNEL + BASE
    bad = [
        i
        for i in CHECKED
        if i.importer in pure
        and ((i.internal and i.target not in pure) or (not i.internal and i.target not in STDLIB | KERNEL_LIBRARIES))
    ]
    _fail_on(bad, "the kernel layer imports outside itself, the base layer, numpy, numba and the standard library")


def test_batches_and_tasks_never_touch_stores_or_the_interface():
    forbidden_libraries = STORE_LIBRARIES | UI_LIBRARIES | {"matplotlib"}
    forbidden_modules = ("sweep.store", "sweep.runner", "analysis", "cli")
    bad = [
        i
        for i in CHECKED
        if i.importer in ("sweep.batch", "sweep.task")
        and (i.target in forbidden_libraries or _within(i.target, forbidden_modules))
    ]
    _fail_on(bad, "sweep.batch / sweep.task import a store library, the store, lock, runner, analysis or the CLI")


def test_what_a_worker_loads_stays_in_sweep_and_off_the_store():
    """Transitively: everything sweep.task reaches. On a cluster the workers receive only the ``sweep``
    package (runtime_env py_modules), and each imports this before its first batch."""
    graph = _graph()
    seen, todo = set(), ["sweep.task"]
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo.extend(graph.get(m, ()))
    bad = [
        i
        for i in CHECKED
        if i.importer in seen
        and (
            (i.internal and (not _within(i.target, ("sweep",)) or _within(i.target, ("sweep.store", "sweep.runner"))))
            or i.target in STORE_LIBRARIES | UI_LIBRARIES | {"matplotlib", "psutil"}
        )
    ]
    _fail_on(bad, f"a module a worker loads ({', '.join(sorted(seen))}) imports beyond it")


def test_analysis_reads_results_and_never_runs_sweeps():
    forbidden = ("sweep.runner", "sweep.task", "sweep.store.lock", "cli")
    bad = [
        i
        for i in CHECKED
        if _within(i.importer, ("analysis",))
        and (_within(i.target, forbidden) or i.target in {"ray", "psutil"} | UI_LIBRARIES)
    ]
    _fail_on(bad, "analysis imports the runner, a task, the lock, Ray, the CLI or its libraries")


def test_nothing_below_the_cli_imports_it_and_sweep_never_imports_analysis():
    bad = [
        i
        for i in CHECKED
        if (_within(i.importer, ("sweep", "analysis")) and _within(i.target, ("cli",)))
        or (_within(i.importer, ("sweep",)) and _within(i.target, ("analysis",)))
    ]
    _fail_on(bad, "an import up to the CLI, or from sweep up to analysis")


def test_imports_point_down_the_layers():
    bad = [
        i
        for i in CHECKED
        if i.internal and layer(i.importer) and layer(i.target) and RANK[layer(i.target)] > RANK[layer(i.importer)]
    ]
    _fail_on(bad, "an import up the layers (base < kernel < cells < batch < task/store/lock < runner < analysis < cli)")


def test_package_inits_import_only_leaves_at_module_level():
    """Importing sweep.kernel runs sweep/__init__.py first: on a worker, anything it imported eagerly (the
    store, xarray, Zarr) would load with every task. At module level a package init imports only the
    standard library, the base layer and its own modules (a sub-package's public face: sweep.kernel's
    names are its modules'); everything else waits inside functions."""
    bad = [
        i
        for i in CHECKED
        if MODULES[i.importer].name == "__init__.py"
        and not i.in_function
        and i.target not in STDLIB
        and i.target not in BASE
        and not (i.importer != "sweep" and i.target.startswith(i.importer + "."))
    ]
    _fail_on(bad, "a package __init__ imports beyond the standard library, the base layer and its own modules")


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for i in CHECKED:
        if i.internal and i.target in MODULES:
            graph[i.importer].add(i.target)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each listed sorted."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles_among_the_projects_modules():
    """Imports inside functions count: a cycle hidden in a function is still two modules that cannot be
    understood, tested or moved apart."""
    graph = _graph()
    cycles = _cycles(graph)
    described = [f"{{{', '.join(comp)}}}, e.g. " + " → ".join(_loop(graph, comp)) for comp in cycles]
    assert not cycles, "import cycles:\n  " + "\n  ".join(described)


def _loop(graph: dict[str, set[str]], comp: list[str]) -> list[str]:
    """A shortest cycle through the first module of a strongly connected component, as a path."""
    start, paths = comp[0], {comp[0]: [comp[0]]}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v]):
                if w == start:
                    return paths[v] + [start]
                if w in comp and w not in paths:
                    paths[w] = paths[v] + [w]
                    nxt.append(w)
        frontier = nxt
    return comp


def test_the_cycle_check_can_see_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []
    assert _loop({"a": {"b"}, "b": {"c", "a"}, "c": {"a"}}, ["a", "b", "c"]) == ["a", "b", "a"]


def test_each_known_exception_still_occurs():
    """A fixed exception leaves the list (here and in docs/architecture.md), so the list never hides a new one."""
    present = {(i.importer, i.target) for i in IMPORTS}
    gone = sorted(set(KNOWN) - present)
    assert not gone, (
        f"fixed, well done: remove {gone} from KNOWN in tests/test_layers.py and from "
        "'Known exceptions (to remove)' in docs/architecture.md"
    )
