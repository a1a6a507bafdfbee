"""The house rules of ARCHITECTURE.md, read from the source with ``ast`` (nothing is imported).

Every project module (each .py under src/, infer/, bench/, the repo-root *.py and scripts/*.py)
is parsed, and every import in it, also inside functions and under ``if TYPE_CHECKING``, becomes
an edge of a module graph. The layer order lives in one place: ``src.PACKAGE_ORDER``.
"""
from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import pytest

from src import PACKAGE_ORDER

REPO_ROOT = Path(__file__).resolve().parent.parent
PACKAGE_DIRS = ("src", "infer", "bench")
ENTRY_POINTS = ("train.py", "eval.py", "export.py", "benchmark.py", "hubconf.py")
ENTRY_POINT_MAX_LINES = 200
ENTRY_LAYER = "entry points"  # the PACKAGE_ORDER name of the repo-root *.py and scripts/*.py


def module_name(path: Path) -> str:
    """``src/models/effnet.py`` -> ``src.models.effnet``; ``src/models/__init__.py`` -> ``src.models``."""
    parts = list(path.relative_to(REPO_ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@cache
def project_modules() -> dict[str, Path]:
    """Every project module by dotted name."""
    files = [p for d in PACKAGE_DIRS for p in (REPO_ROOT / d).rglob("*.py")]
    files += sorted(REPO_ROOT.glob("*.py")) + sorted((REPO_ROOT / "scripts").glob("*.py"))
    return {module_name(p): p for p in sorted(files) if "__pycache__" not in p.parts}


def is_package(name: str) -> bool:
    return project_modules()[name].name == "__init__.py"


def resolve(name: str) -> str | None:
    """The project module ``name`` means: itself, else its longest existing prefix; None if not ours."""
    parts = name.split(".")
    while parts:
        if ".".join(parts) in project_modules():
            return ".".join(parts)
        parts.pop()
    return None


def imports_of(module: str) -> set[str]:
    """The project modules that ``module`` imports anywhere in its file (relative imports resolved)."""
    path = project_modules()[module]
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module if is_package(module) else module.rpartition(".")[0]
    found: set[str | None] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(resolve(alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")[: len(package.split(".")) - (node.level - 1)] if package else []
                base = ".".join([*base_parts, *([node.module] if node.module else [])])
            else:
                base = node.module or ""
            for alias in node.names:
                # `from src.models import qat` is the module src.models.qat when that file exists.
                submodule = f"{base}.{alias.name}" if base else alias.name
                found.add(submodule if submodule in project_modules() else resolve(base) if base else None)
    return {m for m in found if m is not None and m != module}


@cache
def import_graph() -> dict[str, frozenset[str]]:
    return {module: frozenset(imports_of(module)) for module in project_modules()}


def package_of(module: str) -> tuple[int, str] | None:
    """(layer index, package name in PACKAGE_ORDER) of a module; None for ``src`` itself."""
    path = project_modules()[module].relative_to(REPO_ROOT)
    if (len(path.parts) == 1 and module not in PACKAGE_DIRS) or path.parts[0] == "scripts":
        name = ENTRY_LAYER
    else:
        name = max((p for layer in PACKAGE_ORDER for p in layer if module == p or module.startswith(p + ".")),
                   key=len, default=None)
    return next(((i, name) for i, layer in enumerate(PACKAGE_ORDER) if name in layer), None)


def strongly_connected(graph: dict[str, frozenset[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components (iterative, so deep graphs cannot overflow the stack)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                components.append(sorted(component))
    return components


def fail(title: str, offenders: list[str]) -> None:
    """Fail with a short message: the title, then one offender per line (no assertion rewriting noise)."""
    pytest.fail(title + ":\n" + "\n".join(f"  {line}" for line in offenders), pytrace=False)


# --- the reader itself --------------------------------------------------------------------------


def test_the_reader_finds_the_modules_and_their_imports() -> None:
    modules = project_modules()
    assert {"src.common.errors", "src.models", "src.config", "infer.infer_onnx", "bench", "train"} <= set(modules)
    assert any(m.startswith("src.common.") for m in import_graph()["infer.infer_onnx"])
    assert import_graph()["train"], "train.py imports nothing from the project?"
    assert package_of("src.training.trainer")[1] == "src.training"
    assert package_of("src.config")[1] == "src.config"
    assert package_of("infer.session")[1] == "infer"
    assert package_of("train")[1] == package_of("scripts.make_digits")[1] == package_of("hubconf")[1] == ENTRY_LAYER
    assert "src.models" in import_graph()["hubconf"]  # torch.hub's entry points are read like the others


def test_strongly_connected_finds_circles() -> None:
    graph = {"a": frozenset({"b"}), "b": frozenset({"c"}), "c": frozenset({"a"}), "d": frozenset({"a"}),
             "e": frozenset({"e"})}
    assert sorted(c for c in strongly_connected(graph) if len(c) > 1) == [["a", "b", "c"]]


def test_every_module_has_a_layer() -> None:
    unplaced = sorted(m for m in project_modules() if m != "src" and package_of(m) is None)
    if unplaced:
        fail("modules in no PACKAGE_ORDER layer (add their package to src/__init__.py)", unplaced)


# --- (a)-(e) ------------------------------------------------------------------------------------


def test_no_import_circles() -> None:
    circles = [c for c in strongly_connected(dict(import_graph())) if len(c) > 1]
    lines = []
    for circle in circles:
        members = set(circle)
        edges = sorted(f"    {m} -> {t}" for m in circle for t in import_graph()[m] if t in members)
        lines.append(f"{len(circle)} modules: " + ", ".join(circle) + "\n" + "\n".join(edges))
    if circles:
        fail(f"{len(circles)} import circle(s)", lines)


def test_imports_follow_the_package_order() -> None:
    wrong = []
    for importer, targets in sorted(import_graph().items()):
        here = package_of(importer)
        if here is None:
            continue
        for imported in sorted(targets):
            there = package_of(imported)
            if there is None or there[1] == here[1] or there[0] < here[0]:
                continue
            wrong.append(f"{importer} -> {imported} (layer {here[0]} {here[1]} -> layer {there[0]} {there[1]})")
    if wrong:
        fail(f"{len(wrong)} import(s) against src.PACKAGE_ORDER (own package or lower layers only)", wrong)


def test_infer_imports_only_common_from_src() -> None:
    wrong = sorted(f"{importer} -> {imported}" for importer, targets in import_graph().items()
                   if importer == "infer" or importer.startswith("infer.")
                   for imported in targets
                   if (imported == "src" or imported.startswith("src.")) and not (
                       imported == "src.common" or imported.startswith("src.common.")))
    if wrong:
        fail(f"{len(wrong)} import(s) from infer/ into src/ beyond src.common", wrong)


@pytest.mark.parametrize("script", ENTRY_POINTS)
def test_entry_point_is_short(script: str) -> None:
    lines = len((REPO_ROOT / script).read_text(encoding="utf-8").splitlines())
    if lines >= ENTRY_POINT_MAX_LINES:
        pytest.fail(f"{script} has {lines} lines; entry points parse and wire (< {ENTRY_POINT_MAX_LINES})",
                    pytrace=False)


def package_folders() -> list[Path]:
    folders = {p.parent for d in PACKAGE_DIRS for p in (REPO_ROOT / d).rglob("*.py") if "__pycache__" not in p.parts}
    return sorted(folders | {REPO_ROOT / d for d in PACKAGE_DIRS})


@pytest.mark.parametrize("folder", package_folders(), ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_package_says_what_it_holds_and_may_import(folder: Path) -> None:
    init = folder / "__init__.py"
    name = init.relative_to(REPO_ROOT)
    if not init.is_file():
        pytest.fail(f"{name} is missing", pytrace=False)
    doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8"))) or ""
    if not doc.strip():
        pytest.fail(f"{name} has no module docstring (what lives here, what it may import)", pytrace=False)
    if "import" not in doc.lower():
        pytest.fail(f"{name}: its docstring does not say what the package may import", pytrace=False)
