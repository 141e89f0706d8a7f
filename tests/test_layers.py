"""The one-way layer stack: no module imports from a layer above it.

Every module under ``src/viva_glyph`` is parsed with ``ast``; every import in it
counts, wherever it stands (module level, inside a function, under
``TYPE_CHECKING``, relative, or a literal ``importlib.import_module("...")``).
A module may import from its own layer and the layers below.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "viva_glyph"

#: Layer of each top-level module or subpackage (folder) of viva_glyph (its table is in
#: docs/architecture.md). A folder is one unit: every module inside it has its layer.
LAYERS: dict[str, int] = {
    # 0 base: validation, threads
    "checks": 0, "threads": 0, "_version": 0,
    # 1 files: atomic writes, safetensors, vector readers and writers
    "files": 1,
    # 2 the engine: config, codebook, glyph ids, nearest-code search, encoder, model file
    "core": 2,
    # 3 training
    "train": 3,
    # 4 evaluation
    "metrics": 4,
    # 5 add-ons
    "index": 5, "semantic": 5, "dask": 5, "torch": 5, "sklearn": 5,
    # 6 applications
    "demo": 6, "cli": 6,
    # top: the spec facade and the package root; nothing inside imports them
    "rvq": 7, "__init__": 7, "__main__": 7,
}  # fmt: skip
TOP = 7


def _module_name(path: Path) -> tuple[str, bool]:
    """Dotted name of a source file below SRC's parent, and whether it is a package."""
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        return ".".join(parts[:-1]), True
    return ".".join(parts), False


def _unit(dotted: str) -> str:
    """The entry of :data:`LAYERS` a dotted viva_glyph module name belongs to."""
    parts = dotted.split(".")
    return "__init__" if len(parts) == 1 else parts[1]


def _is_module(dotted: str) -> bool:
    """Whether ``viva_glyph.x...`` names a submodule (else an attribute of its parent)."""
    path = SRC.joinpath(*dotted.split(".")[1:])
    return path.is_dir() or path.with_suffix(".py").is_file()


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".")
    if not is_package:
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(source: str, module: str, is_package: bool = False) -> list[tuple[int, str]]:
    """(line, dotted name) of every viva_glyph module or attribute ``source`` imports."""
    out: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(module, is_package, node)
            for a in node.names:  # "from pkg import name": name may be a submodule
                sub = f"{base}.{a.name}"
                out.append((node.lineno, sub if _is_module(sub) else base))
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            out.append((node.lineno, node.args[0].value))
    return [(line, name) for line, name in out if name.split(".")[0] == "viva_glyph"]


def violations(source: str, module: str, is_package: bool = False) -> list[str]:
    """Imports of ``module`` (dotted) from a layer above its own, as messages."""
    own = _unit(module)
    if own not in LAYERS:
        return [f"{module}: not in the layer table of tests/test_layers.py: give it a layer"]
    found: list[str] = []
    for line, name in dict.fromkeys(imports_of(source, module, is_package)):
        unit = _unit(name)
        if unit == own:
            continue
        if unit not in LAYERS:
            found.append(f"{module}:{line} imports {name}, which has no layer")
        elif LAYERS[unit] > LAYERS[own] or LAYERS[unit] == TOP:
            found.append(
                f"{module}:{line} (L{LAYERS[own]}) imports {name} (L{LAYERS[unit]}, above it)"
                if LAYERS[unit] < TOP
                else f"{module}:{line} imports {name}: nothing inside the package imports "
                "rvq or the package root"
            )
    return found


def test_no_module_imports_from_a_higher_layer() -> None:
    found = []
    files = sorted(SRC.rglob("*.py"))
    assert len(files) > 20
    for path in files:
        module, is_package = _module_name(path)
        if module in ("viva_glyph", "viva_glyph.__main__"):
            continue  # the root and the entry point may import anything
        found += violations(path.read_text(encoding="utf-8"), module, is_package)
    assert not found, "imports against the layer stack:\n" + "\n".join(found)


@pytest.mark.parametrize(
    ("module", "source", "expected"),
    [
        (
            "viva_glyph.train.kmeans",
            "from viva_glyph.metrics import evaluate",
            "kmeans:1 (L3) imports",
        ),
        (
            "viva_glyph.train.kmeans",
            "def f():\n    import viva_glyph.cli\n",
            "kmeans:2 (L3) imports",
        ),
        (
            "viva_glyph.core.encoder",
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
            "    from viva_glyph.train import fit\n",
            "encoder:3 (L2) imports viva_glyph.train",
        ),
        (
            "viva_glyph.core.search",
            "from viva_glyph.rvq import RvqEncoder",
            "rvq or the package root",
        ),
        ("viva_glyph.train._fit", "from viva_glyph import fit", "rvq or the package root"),
        ("viva_glyph.core.codebook", "from ..train import kmeans", "codebook:1 (L2) imports"),
        ("viva_glyph.dask._fit", "from ..rvq import RvqEncoder", "rvq or the package root"),
        (
            "viva_glyph.core.glyph",
            "import importlib\nimportlib.import_module('viva_glyph.dask')",
            "glyph:2 (L2) imports viva_glyph.dask",
        ),
        ("viva_glyph.files._vectors", "import viva_glyph.wizard", "has no layer"),
        ("viva_glyph.wizard", "import numpy", "not in the layer table"),
    ],
)
def test_checker_finds_every_kind_of_import(module: str, source: str, expected: str) -> None:
    found = violations(source, module)
    assert len(found) == 1 and expected in found[0], found


def test_checker_allows_same_and_lower_layers() -> None:
    ok = (
        "from viva_glyph.core import _numba, glyph\nimport numpy\n"
        "from viva_glyph.core.codebook import Codebook\nfrom viva_glyph.train.kmeans import lloyd\n"
        "def f():\n    from viva_glyph.core.search import greedy\n"
    )
    assert violations(ok, "viva_glyph.train._fit") == []
    assert (
        violations("from ._compute import compute\nfrom ..core import load", "viva_glyph.dask._fit")
        == []
    )
    assert violations("from . import _ops", "viva_glyph.torch", is_package=True) == []


def test_docs_architecture_table_matches_the_layer_table() -> None:
    """The layer table of docs/architecture.md names every module of :data:`LAYERS` at its
    layer."""
    import re

    page = (SRC.parents[1] / "docs" / "architecture.md").read_text(encoding="utf-8")
    shown: dict[str, int] = {}
    for line in page.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 2 or not re.match(r"^(\d+|top)\b", cells[0]):
            continue
        layer = TOP if cells[0].startswith("top") else int(cells[0].split()[0])
        for name in re.findall(r"`([\w.]+)`", cells[1]):
            shown[name] = layer
    expected = {k: v for k, v in LAYERS.items() if k != "__main__"}
    assert shown == expected


# -- circles, private names, the top of the package ----------------------------------------


def _graph() -> dict[str, set[str]]:
    """Module -> the viva_glyph modules it imports (inside functions too, TYPE_CHECKING aside)."""
    graph: dict[str, set[str]] = {}
    for path in sorted(SRC.rglob("*.py")):
        module, is_package = _module_name(path)
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):  # drop the bodies of `if TYPE_CHECKING:` blocks
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                node.body = [ast.Pass()]
        deps = set()
        for _, name in imports_of(ast.unparse(tree), module, is_package):
            while name and not _is_module(name) and "." in name:
                name = name.rsplit(".", 1)[0]  # an attribute: its module
            if name != module:
                deps.add(name)
            parent = name.rsplit(".", 1)[0]  # importing a.b.c runs a.b's __init__ first
            if parent != "viva_glyph" and _package(parent) != _package(module):
                deps.add(parent)
        graph[module] = deps
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(out)


def test_no_import_circles() -> None:
    """No modules import each other in a loop, counting imports inside functions.

    A package's ``__init__`` imports its modules, so an import of the package from
    a module inside it is a circle too."""
    found = circles(_graph())
    assert not found, "import circles:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_circle_finder_finds_a_function_level_circle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert circles(graph) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": set()}) == []


def _package(module: str) -> str:
    """The folder (or top-level module) a dotted module belongs to."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def private_imports(source: str, module: str, is_package: bool = False) -> list[str]:
    """Imports by ``module`` of a private name (``_x``) or private module of another package."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            base = _resolve(module, is_package, node)
            names = [f"{base}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] != "viva_glyph" or _package(name) == _package(module):
                continue
            if any(p.startswith("_") and p != "__version__" for p in parts[1:]) and parts[1:2] != [
                "_version"
            ]:
                found.append(f"{module}:{node.lineno} imports {name}")
    return found


def test_no_private_name_imported_across_packages() -> None:
    found = []
    for path in sorted(SRC.rglob("*.py")):
        module, is_package = _module_name(path)
        if module in ("viva_glyph", "viva_glyph.__main__"):
            continue
        found += private_imports(path.read_text(encoding="utf-8"), module, is_package)
    assert not found, "private names imported across packages:\n" + "\n".join(found)


def test_private_import_checker() -> None:
    assert private_imports("from viva_glyph.train._fit import fit", "viva_glyph.dask._fit")
    assert private_imports("from viva_glyph.train import _fit_args", "viva_glyph.dask._fit")
    assert private_imports("import viva_glyph.core._numba", "viva_glyph.index._scan")
    own = "viva_glyph.train.kmeans"
    assert not private_imports("from viva_glyph.train._fit import fit", own)
    assert not private_imports("from viva_glyph.train import fit", "viva_glyph.dask._fit")
    assert not private_imports(
        "from viva_glyph._version import __version__", "viva_glyph.cli._main"
    )


def test_few_modules_at_the_top() -> None:
    """The top of the package holds the folders and at most six modules besides the
    package's own (``__init__``, ``__main__``, ``_version``, ``rvq``)."""
    own = {"__init__.py", "__main__.py", "_version.py", "rvq.py"}
    top = sorted(p.name for p in SRC.glob("*.py") if p.name not in own)
    assert len(top) <= 6, top
