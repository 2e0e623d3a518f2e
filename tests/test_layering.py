"""The house rule, read from the import statements (every import, including those inside functions):
imports flow one way, down the layers below, and no modules import each other in a circle.

A module may import modules of its own layer or of lower ones. The layers, lowest first:
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("prompts", "eraser", "classifiers", "evaluation", "apps", "benchmarks", "recipes")

# (layer, module prefixes). The longest matching prefix decides a module's layer.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("leaves", ("prompts", "classifiers", "eraser._version", "eraser.hashing")),
    ("maths", ("eraser.subspace",)),
    (
        "plumbing",
        (
            "eraser.layers",
            "eraser.data",
            "eraser.projection",
            "eraser.capture",
            "eraser.targets",
            "eraser.lora",
            "eraser.patch",
            "eraser.vectors",
        ),
    ),
    ("registry", ("eraser.registry",)),
    ("families", ("eraser.families",)),
    ("training", ("eraser.training",)),
    ("methods", ("eraser.methods",)),
    ("api", ("eraser.api", "eraser.runner", "eraser.options")),
    ("bundled models and loading", ("eraser.bundled", "eraser.loading")),
    ("package facade", ("eraser",)),  # the package's __init__ only (see EXACT)
    ("evaluation", ("evaluation",)),
    ("apps, benchmarks and recipes", ("apps", "benchmarks", "recipes")),
)
EXACT = {"eraser"}  # prefixes that place only the module itself, not its submodules
__doc__ += "".join(f"\n{i}. {name}: {', '.join(prefixes)}" for i, (name, prefixes) in enumerate(LAYERS))


def layer_of(module: str) -> int:
    """Index in ``LAYERS`` of the longest prefix that ``module`` falls under."""
    best, rank = -1, -1
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or (p not in EXACT and module.startswith(p + "."))) and len(p) > best:
                best, rank = len(p), i
    if rank < 0:
        raise KeyError(module)
    return rank


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def imports_of(name: str, path: Path, known: set[str]) -> list[tuple[str, int]]:
    """The project modules ``name`` imports (``from pkg import module`` counts as the module)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base_name = ".".join(base + ([node.module] if node.module else []))
            else:
                base_name = node.module or ""
            targets = [f"{base_name}.{a.name}" if f"{base_name}.{a.name}" in known else base_name for a in node.names]
        else:
            continue
        for t in targets:
            if t.split(".")[0] in PACKAGES:
                found.append((t, node.lineno))
    return found


def import_graph() -> dict[str, list[tuple[str, int]]]:
    modules = project_modules()
    known = set(modules)
    return {name: imports_of(name, path, known) for name, path in modules.items()}


def test_every_module_has_a_layer():
    unplaced = []
    for m in project_modules():
        try:
            layer_of(m)
        except KeyError:
            unplaced.append(m)
    assert not unplaced, f"add these modules to LAYERS in {__file__}: {unplaced}"


def test_imports_flow_down_the_layers():
    upward = []
    for module, targets in import_graph().items():
        for target, line in targets:
            if layer_of(target) > layer_of(module):
                upward.append(
                    f"{module}:{line} imports {target} ({LAYERS[layer_of(module)][0]} -> {LAYERS[layer_of(target)][0]})"
                )
    assert not upward, "imports from a lower layer into a higher one:\n" + "\n".join(upward)


def test_no_import_circles():
    graph = {m: sorted({t for t, _ in ts if t in project_modules() and t != m}) for m, ts in import_graph().items()}
    # A package's __init__ re-exporting its submodules is not a circle through them.
    graph = {m: [t for t in ts if not m.startswith(t + ".")] for m, ts in graph.items()}
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in graph.get(node, []):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [])
    assert not cycles, "import circles:\n" + "\n".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize(
    "module, target, expected",
    [
        ("eraser.methods.unlink", "eraser.api", True),
        ("eraser.subspace", "eraser.patch", True),
        ("evaluation.fid", "apps.cli", True),
        ("apps.cli", "evaluation.fid", False),
        ("eraser.bundled.models", "classifiers.models", False),
        ("classifiers.models", "eraser.training", True),
    ],
)
def test_the_rule_itself_flags_upward_imports(module, target, expected):
    """The checker is not vacuous: it flags known-bad directions and allows known-good ones."""
    assert (layer_of(target) > layer_of(module)) is expected
