"""The package's import structure: no cycles, layers import only downwards, no private names cross modules,
and ``import pyprune`` loads only what the similarity API needs.

The graph is read from the source with :mod:`ast`, counting imports inside functions too (a cycle through a
lazy import still ties the modules together for whoever has to change them).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "pyprune"

# Each layer may import itself and the layers listed after it, never one before it (the front doors first).
LAYERS = (
    ("pyprune.app",),
    ("pyprune.training",),
    ("pyprune.pruning",),
    ("pyprune.compare", "pyprune.activations", "pyprune.measure", "pyprune.distributed"),
    ("pyprune.similarity",),
    ("pyprune.plot", "pyprune.data", "pyprune.models", "pyprune.arguments", "pyprune.system_info"),
    ("pyprune.ops",),
)


def _modules() -> dict[str, Path]:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    return modules


MODULES = _modules()


# Compiled extension modules: imported as modules, never as names of the package.
EXTENSIONS = frozenset({"pyprune._C"})


def _runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node of ``tree`` except those under ``if TYPE_CHECKING:``, which never run."""
    found = []
    stack = [tree]
    while stack:
        node = stack.pop()
        found.append(node)
        for child in ast.iter_child_nodes(node):
            test = child.test if isinstance(child, ast.If) else None
            if test is not None and "TYPE_CHECKING" in ast.unparse(test):
                stack.extend(child.orelse)
            else:
                stack.append(child)
    return found


def _imports(name: str) -> list[tuple[str, list[str], int]]:
    """``(target module, imported names, line)`` of every pyprune import that runs in module ``name``."""
    path = MODULES[name]
    found = []
    for node in _runtime_nodes(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [
                (alias.name, [], node.lineno) for alias in node.names if alias.name.startswith("pyprune")
            ]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                package = package[: len(package) - node.level + 1]
                base = ".".join(package + ([base] if base else []))
            if not base.startswith("pyprune"):
                continue
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                if submodule in MODULES or submodule in EXTENSIONS:
                    found.append((submodule, [], node.lineno))
                else:
                    found.append((base, [alias.name], node.lineno))
    return found


def _edges() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {name: set() for name in MODULES}
    for name in MODULES:
        for target, _, _ in _imports(name):
            if target in MODULES and target != name:
                edges[name].add(target)
    return edges


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def _layer(name: str) -> int | None:
    for depth, prefixes in enumerate(LAYERS):
        if any(name == p or name.startswith(p + ".") for p in prefixes):
            return depth
    return None


def test_the_graph_is_read():
    # Guards the test itself: a parser that found no imports would pass every check below.
    edges = _edges()
    assert sum(map(len, edges.values())) > 100
    assert "pyprune.similarity.cka" in edges["pyprune.similarity.statistics"]


def test_no_import_cycles():
    assert _cycles(_edges()) == []


def test_cycle_detection_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_layers_import_only_downwards():
    upward = []
    for name, targets in _edges().items():
        own = _layer(name)
        for target in targets:
            theirs = _layer(target)
            if own is not None and theirs is not None and theirs < own:
                upward.append(f"{name} -> {target}")
    assert upward == []


def test_kernel_layer_imports_only_itself():
    outside = [
        f"{name} -> {target}"
        for name in MODULES
        if name.startswith("pyprune.ops")
        for target, _, _ in _imports(name)
        if not (target.startswith("pyprune.ops") or target in EXTENSIONS)
    ]
    assert outside == []


def test_no_private_names_cross_modules():
    crossing = [
        f"{name}:{line} imports {target}.{private}"
        for name in MODULES
        for target, names, line in _imports(name)
        for private in names
        if private.startswith("_")
    ]
    assert crossing == []


def test_import_pyprune_loads_only_the_similarity_stack():
    # What `import pyprune` pulls in decides its start-up time; the pruning stack (Torch-Pruning, SciPy) and the
    # training loop load on first use.
    code = (
        "import sys, pyprune; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('torch_pruning', 'scipy', 'matplotlib', 'transformers', 'timm', 'torchvision') "
        "or m.startswith(('pyprune.pruning', 'pyprune.training', 'pyprune.app'))))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=PACKAGE.parent
    )
    assert result.stdout.strip() == "[]"


def test_every_public_name_resolves():
    # The names resolve lazily, so a stale entry in pyprune's table would only fail at a user's first use.
    import pyprune

    missing = [name for name in pyprune.__all__ if getattr(pyprune, name, None) is None]
    assert missing == []
    assert set(pyprune.__all__) <= set(dir(pyprune))


def test_submodules_resolve_as_attributes():
    code = "import pyprune; print(pyprune.distributed.rewrap.__name__, pyprune.models.resnet20.__name__)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=PACKAGE.parent
    )
    assert result.stdout.split() == ["rewrap", "resnet20"]


def test_unknown_attribute_is_an_attribute_error():
    import pyprune

    with pytest.raises(AttributeError, match="no attribute 'not_a_name'"):
        pyprune.not_a_name  # noqa: B018
