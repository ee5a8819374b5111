"""No import cycle inside paulkit: every module's imports, read from its source, form a DAG.

Every ``import`` statement counts, also those inside functions (a late import hides a cycle
from Python but not from a reader). ``from paulkit import config`` is an edge to
``paulkit.config``; ``from paulkit import data as D`` to the package ``paulkit.data``.
"""

import ast
import pkgutil
from pathlib import Path

import paulkit


def _modules() -> dict[str, Path]:
    """Every module of paulkit by dotted name: its source file (``__init__.py`` for a package)."""
    root = Path(paulkit.__file__).parent
    found = {"paulkit": root / "__init__.py"}
    for info in pkgutil.walk_packages([str(root)], prefix="paulkit."):
        rel = info.name.split(".")[1:]
        path = root.joinpath(*rel)
        found[info.name] = path / "__init__.py" if info.ispkg else path.with_suffix(".py")
    return found


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The paulkit modules that ``name`` imports (relative imports resolved)."""
    is_package = path.name == "__init__.py"
    package = name if is_package else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(parts + ([base] if base else []))
            # `from a import b`: the submodule a.b when there is one, else the module a
            targets = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                for alias in node.names
            ]
        else:
            continue
        for target in targets:
            # `import paulkit.data.synth` runs paulkit.data.synth; keep the longest known name
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                out.add(target)
    return out


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a path ``[a, b, ..., a]``, or None (depth-first search, three colours).

    The package ``paulkit`` itself is left out: its ``__init__`` imports every submodule so
    that ``import paulkit as pk`` gives the whole kit, and a module never imports it back.
    """
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if nxt == "paulkit":
                continue
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_the_walk_sees_every_module_and_the_known_edges():
    graph = import_graph()
    assert {"paulkit.config", "paulkit.train", "paulkit.data", "paulkit.data.synth"} <= set(graph)
    assert "paulkit.data.synth" in graph["paulkit.data"]  # `from paulkit.data import synth`
    assert "paulkit.config" in graph["paulkit.train"]  # `from paulkit import config as C`
    assert "paulkit.data" in graph["paulkit.train"]  # `from paulkit import data as D`


def test_find_cycle_reports_the_path():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_no_import_cycle_inside_paulkit():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)
