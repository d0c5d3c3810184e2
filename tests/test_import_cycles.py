"""No import cycles among the project's modules; adv2core never imports the pipeline at module level.

Only module-level imports count (an import inside a function runs when it is called, after every module
has finished loading, so it cannot form a load-time cycle); ``if TYPE_CHECKING:`` blocks are ignored too.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("adv2core", "adv2cli", "tasks", "flows")


def _modules() -> dict[str, Path]:
    out: dict[str, Path] = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _top_level_imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """Imports executed when the module loads: the body, and try/if/with blocks in it (not functions)."""
    found: list[ast.Import | ast.ImportFrom] = []
    todo: list[ast.stmt] = list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        elif isinstance(node, ast.If):
            if not _is_type_checking(node):
                todo += node.body + node.orelse
        elif isinstance(node, ast.Try):
            todo += node.body + node.orelse + node.finalbody + [s for h in node.handlers for s in h.body]
        elif isinstance(node, ast.With):
            todo += node.body
    return found


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The project module ``name`` loads (its longest existing prefix), or None for third-party ones."""
    parts = name.split(".")
    while parts:
        cand = ".".join(parts)
        if cand in modules:
            return cand
        parts.pop()
    return None


def _graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for mod, path in modules.items():
        is_pkg = path.name == "__init__.py"
        for node in _top_level_imports(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                base = node.module or ""
                if node.level:
                    pkg = mod.split(".") if is_pkg else mod.split(".")[:-1]
                    pkg = pkg[: len(pkg) - (node.level - 1)]
                    base = ".".join(pkg + ([base] if base else []))
                # ``from pkg import sub`` loads pkg.sub when sub is a module
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            for t in targets:
                dep = _resolve(t, modules)
                if dep is not None and dep != mod:
                    graph[mod].add(dep)
                    # importing a.b.c runs a/__init__ and a/b/__init__ first
                    parts = dep.split(".")
                    for i in range(1, len(parts)):
                        parent = ".".join(parts[:i])
                        if parent in modules and parent != mod and not mod.startswith(parent + "."):
                            graph[mod].add(parent)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
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


def _path_in(comp: list[str], graph: dict[str, set[str]]) -> str:
    """One concrete cycle through the component's first module (breadth-first), for the failure message."""
    start, members = comp[0], set(comp)
    paths = {start: [start]}
    todo = [start]
    while todo:
        v = todo.pop(0)
        for w in sorted(graph[v] & members):
            if w == start:
                return " -> ".join([*paths[v], start])
            if w not in paths:
                paths[w] = [*paths[v], w]
                todo.append(w)
    return " <-> ".join(comp)


def test_no_import_cycles_among_project_modules():
    modules = _modules()
    assert "adv2core.interpreters.rts" in modules and "flows.benchmark" in modules
    graph = _graph(modules)
    cycles = _cycles(graph)
    assert not cycles, "module-level import cycles:\n" + "\n".join(_path_in(c, graph) for c in cycles)


def test_adv2core_never_imports_the_pipeline_at_module_level():
    bad = []
    for mod, path in _modules().items():
        if not mod.startswith("adv2core"):
            continue
        for node in _top_level_imports(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            for name in names:
                if name.split(".")[0] in ("prefect", "tasks", "flows") and not (isinstance(node, ast.ImportFrom) and node.level):
                    bad.append(f"{mod}: import {name}")
    assert not bad, "adv2core imports the pipeline at module level:\n" + "\n".join(bad)


def test_the_cycle_finder_finds_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]
    assert _path_in(["a", "b", "c"], graph) == "a -> b -> c -> a"


def test_the_inline_engine_and_the_cli_start_without_prefect():
    """`adv2 run --engine inline` (and every CLI test that starts one) must not pay prefect's ~2 s import:
    the flow/task modules build their Prefect objects only when the Prefect engine asks for them."""
    import subprocess
    import sys

    code = ("import sys, adv2cli.main, flows.benchmark, tasks.attack, tasks.benign, tasks.defences, "
            "tasks.prepare, tasks.transfer, tasks.report; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'prefect')[:5])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]", f"imported at module level: {out.stdout.strip()}"
