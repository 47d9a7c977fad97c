"""The package's layering: no import cycle among phiforge's modules, counting imports inside functions too."""

import ast
from pathlib import Path

import phiforge

SRC = Path(phiforge.__file__).parent


def module_graph() -> dict[str, set[str]]:
    """Each phiforge module -> the phiforge modules it imports anywhere in its source (module-level or lazy)."""
    modules = {}
    for path in SRC.rglob("*.py"):
        parts = ["phiforge", *path.relative_to(SRC).with_suffix("").parts]
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path

    def owner(name: str) -> str | None:  # `phiforge.a.b.name` -> the module that defines it
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for name, path in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
        graph[name] = {t for t in map(owner, (t for t in targets if t.startswith("phiforge"))) if t and t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while not component or component[-1] != v:
                component.append(stack.pop())
                on_stack.discard(component[-1])
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_the_checker_sees_a_lazy_import_cycle():
    graph = {"phiforge.a": {"phiforge.b"}, "phiforge.b": {"phiforge.a"}, "phiforge.c": {"phiforge.a"}}
    assert cycles(graph) == [["phiforge.a", "phiforge.b"]]
    assert "phiforge.pipeline" in module_graph()["phiforge.cli"]  # cli imports pipeline inside its commands


def test_no_import_cycle_in_phiforge():
    assert cycles(module_graph()) == []


def test_stage_modules_never_import_the_registry_or_the_pipeline():
    graph = module_graph()
    from phiforge.stages import STAGES

    for stage in STAGES:
        module = stage.run.__module__
        assert not graph[module] & {"phiforge.stages", "phiforge.pipeline", "phiforge.cli"}, module
