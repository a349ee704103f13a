"""The import structure of curate, read from the source with ``ast`` (nothing is imported).

* no import cycle between modules, counting imports inside functions (a lazy import is still a dependency)
  but not those under ``if TYPE_CHECKING:`` (never run);
* the areas (filters, selectors, synth, distill) import only ``curate.core``, ``curate.io``,
  ``curate.models``, ``curate.metrics`` and themselves, never each other;
* ``curate.metrics`` (pure metric functions shared by every area: synth's reports, distill's samples,
  the run reports) imports only ``curate.core``, ``curate.io``, ``curate.models`` and itself;
* ``curate.models`` imports only ``curate.core``, ``curate.io`` and itself.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "curate"
AREAS = ("filters", "selectors", "synth", "distill")
LOWER = ("core", "io", "models", "metrics")
#: cycles known and left for a follow-up, each with its reason; any other cycle fails the test.
#: (none: the teacher backends' shared types live in curate.models.generation, below both backends)
KNOWN_CYCLES: list[list[str]] = []
#: area imports known and left for a follow-up (none).
KNOWN_LAYER_EXCEPTIONS: list[str] = []


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST, modname: str, is_pkg: bool, known: set[str]) -> set[str]:
    """Modules of curate that ``tree`` imports at run time (a ``from pkg import mod`` names ``pkg.mod``)."""
    out: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.split(".")[0] == "curate")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = modname.split(".") if is_pkg else modname.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] == "curate":
                subs = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in known]
                out.update(subs)
                if len(subs) < len(node.names):
                    out.add(target)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return {m for m in out if m in known and m != modname}


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    files = {_module_name(p, root): p for p in sorted(root.rglob("*.py"))}
    known = set(files)
    return {m: _imports(ast.parse(p.read_text(encoding="utf-8")), m, p.name == "__init__.py", known)
            for m, p in files.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on.add(start)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    found.append(sorted(comp))
    return found


def _top(mod: str) -> str:
    parts = mod.split(".")
    return parts[1] if len(parts) > 1 else ""


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for mod, deps in sorted(graph.items()):
        top = _top(mod)
        if top in AREAS:
            allowed = (*LOWER, top)
        elif top == "metrics":
            allowed = ("core", "io", "models", "metrics")
        elif top == "models":
            allowed = ("core", "io", "models")
        else:
            continue
        bad += [f"{mod} imports {d}" for d in sorted(deps) if _top(d) not in allowed]
    return bad


def test_no_import_cycle():
    found = [c for c in cycles(import_graph()) if c not in KNOWN_CYCLES]
    assert not found, "import cycles: " + "; ".join(" <-> ".join(c) for c in found)


def test_areas_import_only_core_io_models():
    bad = [b for b in layer_violations(import_graph()) if b not in KNOWN_LAYER_EXCEPTIONS]
    assert not bad, "\n".join(bad)


def test_models_is_not_scanned_for_operators():
    from curate.core import registry

    assert "curate.models" not in registry._OPERATOR_PACKAGES
    assert "curate.commands" not in registry._OPERATOR_PACKAGES


# ---------------------------------------------------------------------------- the checker itself


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "curate"
    for rel, text in files.items():
        f = root / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(text)
    return root


def test_checker_finds_a_lazy_cycle_and_ignores_type_checking(tmp_path):
    root = _tree(tmp_path, {
        "__init__.py": "",
        "core/__init__.py": "",
        "core/a.py": "def f():\n    from curate.core import b\n",
        "core/b.py": "from curate.core.a import f\n",
        "core/c.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from curate.core.d import X\n",
        "core/d.py": "from curate.core import c\n",
    })
    assert cycles(import_graph(root)) == [["curate.core.a", "curate.core.b"]]


def test_checker_finds_an_area_importing_another(tmp_path):
    root = _tree(tmp_path, {
        "__init__.py": "",
        "distill/__init__.py": "",
        "distill/run.py": "from ..synth.teacher import T\nfrom curate.models import topk\n",
        "synth/__init__.py": "",
        "synth/teacher.py": "T = 1\n",
        "models/__init__.py": "",
        "models/topk.py": "import curate.filters.x\n",
        "filters/__init__.py": "",
        "filters/x.py": "",
    })
    assert layer_violations(import_graph(root)) == [
        "curate.distill.run imports curate.synth.teacher", "curate.models.topk imports curate.filters.x"]


@pytest.mark.parametrize("mod", ["curate.cli", "curate.commands.fasttext", "curate.commands.lm",
                                 "curate.commands.distill"])
def test_command_modules_import(mod):
    import importlib

    importlib.import_module(mod)
