"""The import layers: every module imports only from its own layer and below, and no
module imports itself back through others (no cycles).

The layer order is written here once (and in the README's architecture section):

    4  app, benchmarks        the commands (facesketch CLI, demo, evaluate), benchmarks
    3  export, webui          turn checkpoints into bundles / serve a bundle
    2  runtime                load a bundle (or checkpoint) and run it: torch-free
    1  training               networks, data, the trainer, checkpoints, detector fitting
    0  facesketch             the torch-free core everything uses

Imports are read with ``ast`` from every module, function-level imports included
(a lazy import is still a dependency); ``if TYPE_CHECKING:`` imports, for annotations
only, are not run-time dependencies and are left out.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LAYERS = {"facesketch": 0, "training": 1, "runtime": 2, "export": 3, "webui": 3,
          "app": 4, "benchmarks": 4}


def _module_name(path: Path) -> str:
    rel = path.relative_to(REPO).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Absolute names of the project modules ``path`` imports (any depth)."""
    tree = ast.parse(path.read_text(), str(path))
    me = _module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    out: set[str] = set()
    # `if TYPE_CHECKING:` imports exist for annotations only, never at run time
    typing_only = {id(n) for blk in ast.walk(tree) if isinstance(blk, ast.If)
                   and getattr(blk.test, "id", getattr(blk.test, "attr", "")) == "TYPE_CHECKING"
                   for stmt in blk.body for n in ast.walk(stmt)}
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.add(mod)
            out.update(f"{mod}.{a.name}" for a in node.names)   # `from pkg import module`
    return {m for m in out if m.split(".")[0] in LAYERS}


def _project_modules() -> dict[str, Path]:
    mods = {}
    for top in LAYERS:
        for p in (REPO / top).rglob("*.py"):
            mods[_module_name(p)] = p
    return mods


def _graph() -> dict[str, set[str]]:
    mods = _project_modules()
    graph = {}
    for name, path in mods.items():
        deps = set()
        for imp in _imports(path):
            while imp and imp not in mods:      # `from pkg import name`: name is no module
                imp = imp.rpartition(".")[0]
            if imp and imp != name:
                deps.add(imp)
        graph[name] = deps
    return graph


def test_every_top_level_package_has_a_layer():
    tops = {p.parent.name for p in REPO.glob("*/__init__.py")}
    assert tops <= set(LAYERS), f"packages without a layer: {sorted(tops - set(LAYERS))}"


def test_no_module_imports_from_a_higher_layer():
    upward = []
    for mod, deps in _graph().items():
        for dep in deps:
            if LAYERS[dep.split(".")[0]] > LAYERS[mod.split(".")[0]]:
                upward.append(f"{mod} -> {dep}")
    assert not upward, "upward imports:\n" + "\n".join(sorted(upward))


def test_export_and_webui_do_not_import_each_other():
    cross = [f"{m} -> {d}" for m, deps in _graph().items() for d in deps
             if {m.split(".")[0], d.split(".")[0]} == {"export", "webui"}]
    assert not cross, cross


def test_no_import_cycles():
    graph = _graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:                 # Tarjan's strongly connected components
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_the_reader_sees_a_real_graph():
    """The parser finds what it should (a guard against a test that checks nothing)."""
    g = _graph()
    assert "facesketch.imageio" in g["runtime.translator"]
    assert len(g) > 40


def test_no_function_over_80_lines_outside_tests():
    """Long functions carry too much; each step gets a named helper."""
    long = []
    for top in LAYERS:
        for p in (REPO / top).rglob("*.py"):
            for node in ast.walk(ast.parse(p.read_text())):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    n = node.end_lineno - node.lineno + 1
                    if n > 80:
                        long.append(f"{p.relative_to(REPO)}:{node.lineno} {node.name} ({n} lines)")
    assert not long, "\n".join(long)
