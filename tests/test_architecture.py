"""The shape of the code base, checked: the import graph of ``discdiff/`` has no circle, no
module imports another's private name, and modules and functions stay short."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LIBRARY = ROOT / "discdiff"
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 80


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(LIBRARY.rglob("*.py"))}


def _resolve(target: str, modules: dict[str, Path]) -> str | None:
    """The discdiff module an import names: itself, or the package holding the name."""
    while target and target not in modules:
        target = target.rpartition(".")[0]
    return target or None


def _imports(name: str, path: Path, modules: dict[str, Path]) -> tuple[set[str], list[str]]:
    """The modules ``name`` imports at module level (what can form a circle at import time),
    and the private names it imports from other modules."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets: set[str] = set()
    private: list[str] = []
    for node in tree.body:
        nodes = [node]
        if isinstance(node, ast.If):  # `if TYPE_CHECKING:` blocks import nothing at run time
            continue
        for n in nodes:
            if isinstance(n, ast.Import):
                for alias in n.names:
                    if alias.name.startswith("discdiff"):
                        resolved = _resolve(alias.name, modules)
                        if resolved:
                            targets.add(resolved)
            elif isinstance(n, ast.ImportFrom):
                base = n.module or ""
                if n.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - n.level + 1])
                    base = f"{base}.{n.module}" if n.module else base
                if not base.startswith("discdiff"):
                    continue
                for alias in n.names:
                    full = f"{base}.{alias.name}"
                    resolved = _resolve(full if full in modules else base, modules)
                    if resolved and resolved != name:
                        targets.add(resolved)
                    if alias.name.startswith("_") and not alias.name.startswith("__"):
                        private.append(f"{name} imports {base}.{alias.name}")
    targets.discard(name)
    return targets, private


def _circle(graph: dict[str, set[str]]) -> tuple[str, ...] | None:
    """An import circle of ``graph`` (module -> the modules it imports), or None. A submodule
    reading a name of its parent package (already set by the time it runs) is not a circle."""
    done: set[str] = set()

    def visit(node: str, path: tuple[str, ...]) -> tuple[str, ...] | None:
        if node in path:
            return path[path.index(node) :] + (node,)
        if node in done:
            return None
        for target in sorted(graph.get(node, ())):
            if not node.startswith(target + "."):
                found = visit(target, (*path, node))
                if found:
                    return found
        done.add(node)
        return None

    for name in sorted(graph):
        found = visit(name, ())
        if found:
            return found
    return None


def _graph() -> tuple[dict[str, set[str]], list[str]]:
    modules = _modules()
    graph, private = {}, []
    for name, path in modules.items():
        graph[name], names = _imports(name, path, modules)
        private += names
    return graph, private


def test_the_circle_finder_finds_circles():
    assert _circle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ("a", "b", "c", "a")
    assert _circle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert _circle({"p": {"p.m"}, "p.m": {"p"}}) is None  # a submodule reading its package


def test_the_import_graph_has_no_circle_and_no_private_import():
    graph, private = _graph()
    assert "discdiff.processes" in graph["discdiff.diffusion"]  # the graph is read at all
    assert "discdiff.samplers.loop" in graph["discdiff.samplers.loops"]
    assert not private, "\n".join(private)
    circle = _circle(graph)
    assert circle is None, "import circle: " + " -> ".join(circle or ())


def _long_functions(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            lines = node.end_lineno - node.lineno + 1  # type: ignore[operator]
            if lines > MAX_FUNCTION_LINES:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({lines} lines)")
    return found


@pytest.mark.parametrize("folder", ["discdiff", "examples"])
def test_modules_and_functions_stay_short(folder):
    files = sorted((ROOT / folder).rglob("*.py"))
    assert files
    long_modules = [
        f"{p.relative_to(ROOT)} ({n} lines)"
        for p in files
        if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES
    ]
    assert not long_modules, "\n".join(long_modules)
    long_functions = [f for p in files for f in _long_functions(p)]
    assert not long_functions, "\n".join(long_functions)


KEYWORD_LAYER = {
    "sample_uniform",
    "sample_masked",
    "uniform_loop",
    "masked_loop",
    "sample_uniform_blocks",
    "sample_masked_blocks",
}
"""The samplers' convenience layer: keywords in, parts built once, the one loop called."""


def test_below_the_keyword_layer_no_sampler_function_takes_more_than_12_parameters():
    wide = []
    for path in sorted((LIBRARY / "samplers").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.FunctionDef) or node.name.startswith("_"):
                continue
            args = node.args
            names = [a.arg for a in (*args.posonlyargs, *args.args, *args.kwonlyargs)]
            count = len([n for n in names if n not in ("self", "cls")])
            if count > 12 and node.name not in KEYWORD_LAYER:
                wide.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({count})")
    assert not wide, "\n".join(wide)
