"""The shape of the package, so it stays readable: every ``import`` in the package read with ``ast``
(function-level and ``TYPE_CHECKING`` imports included, since a hidden import is still a
dependency). No cycle between the project's modules, no private name imported from another module,
each room imports only the rooms below it (docs/ARCHITECTURE.md, "What may import what"), and no
folder holds more than 15 modules."""

from __future__ import annotations

import ast
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# repository folder -> the package it is installed as (pyproject's package-dir)
ROOMS = {"xaidash": "xaidash", "compute": "xaidash.compute", "store": "xaidash.store",
         "dashboard": "xaidash.dashboard", "assets": "xaidash.assets"}
MAX_MODULES_PER_FOLDER = 15

# importer prefix -> the prefixes it may import (besides itself). The first matching prefix wins,
# so the specific rows come before the general ones.
_BASE = ("xaidash.constants", "xaidash.errors")
_COMPUTE_BASE = (*_BASE, "xaidash.compute.device", "xaidash.compute.hostmem")
ALLOWED: list[tuple[str, tuple[str, ...]]] = [
    ("xaidash.constants", ()),
    ("xaidash.errors", ()),
    ("xaidash.cli", ("xaidash.errors",)),  # sub-commands are imported by name at run time
    ("xaidash.store", _BASE),
    ("xaidash.compute.device", _BASE),
    ("xaidash.compute.hostmem", ()),
    ("xaidash.compute.datasets", (*_BASE, "xaidash.store")),
    ("xaidash.compute.model", (*_COMPUTE_BASE, "xaidash.compute.datasets", "xaidash.store")),
    ("xaidash.compute.methods", (*_COMPUTE_BASE, "xaidash.compute.datasets", "xaidash.compute.model")),
    ("xaidash.compute.analysis", (*_BASE, "xaidash.compute.datasets", "xaidash.store")),
    ("xaidash.compute.pipeline", (*_COMPUTE_BASE, "xaidash.compute.datasets", "xaidash.compute.model",
                                  "xaidash.compute.methods", "xaidash.compute.analysis", "xaidash.store")),
    ("xaidash.compute.cli", (*_BASE, "xaidash.compute")),
    # the explain page is the one page that runs a model, through compute's one-image path
    ("xaidash.dashboard.pages.explain", (*_BASE, "xaidash.store", "xaidash.dashboard",
                                         "xaidash.compute.pipeline.single_image",
                                         "xaidash.compute.datasets.decoding")),
    ("xaidash.dashboard", (*_BASE, "xaidash.store", "xaidash.assets")),
    ("xaidash.demo", ("xaidash",)),
]


@dataclass
class Graph:
    modules: dict[str, Path]
    edges: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    private: list[tuple[str, str, str]] = field(default_factory=list)


def module_names(root: Path, rooms: dict[str, str]) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for folder, package in rooms.items():
        for path in (root / folder).rglob("*.py"):
            parts = list(path.relative_to(root / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join([package, *parts])] = path
    return out


def _imported(name: str, path: Path) -> Iterator[tuple[str, str | None]]:
    """(module, imported name or None) for every import statement anywhere in the file."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, None
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            for alias in node.names:
                yield module, alias.name


def build_graph(root: Path, rooms: dict[str, str]) -> Graph:
    graph = Graph(module_names(root, rooms))
    for name, path in graph.modules.items():
        for module, imported in _imported(name, path):
            if imported is not None and f"{module}.{imported}" in graph.modules:
                target = f"{module}.{imported}"  # ``from pkg import submodule``
            elif module in graph.modules:
                target = module
                private = imported is not None and imported.startswith("_") and not imported.startswith("__")
                if private and target != name:
                    graph.private.append((name, target, str(imported)))
            else:
                continue
            if target != name:
                graph.edges[name].add(target)
    return graph


def cycles(graph: Graph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in sorted(graph.modules):
        if start in index:
            continue
        work = [(start, iter(sorted(graph.edges[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.edges[child]))))
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
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def layer_violations(graph: Graph) -> list[str]:
    bad = []
    for name in sorted(graph.modules):
        rule = next(((p, allowed) for p, allowed in ALLOWED if _within(name, p)), None)
        if rule is None:
            continue
        own, allowed = rule
        own_room = ".".join(own.split(".")[:2])  # a module may always import its own room
        for target in sorted(graph.edges[name]):
            if target == "xaidash" or (_within(target, own_room) and own_room != "xaidash.compute"):
                continue
            if _within(target, own) or any(_within(target, a) for a in allowed):
                continue
            bad.append(f"{name} -> {target}")
    return bad


@pytest.fixture(scope="module")
def graph() -> Graph:
    return build_graph(REPO, ROOMS)


def test_no_import_cycles(graph: Graph) -> None:
    found = cycles(graph)
    assert not found, "cut each cycle where the dependency is wrong (move the shared part down):\n" + (
        "\n".join(" <-> ".join(c) for c in found))


def test_no_private_names_across_modules(graph: Graph) -> None:
    assert not graph.private, "make these public in the module that owns them:\n" + "\n".join(
        f"{importer} takes {name} from {owner}" for importer, owner, name in graph.private)


def test_rooms_import_only_what_they_may(graph: Graph) -> None:
    bad = layer_violations(graph)
    assert not bad, "see docs/ARCHITECTURE.md, 'What may import what':\n" + "\n".join(bad)


def test_no_folder_over_15_modules() -> None:
    crowded = {str(d.relative_to(REPO)): n for room in ROOMS for d in [REPO / room, *(REPO / room).rglob("*")]
               if d.is_dir() and (n := len([p for p in d.glob("*.py") if p.name != "__init__.py"]))
               > MAX_MODULES_PER_FOLDER}
    assert not crowded, f"group these folders' modules into sub-packages: {crowded}"


def test_the_checks_see_what_they_must(tmp_path: Path) -> None:
    """The checker itself: a cycle hidden in a function, a TYPE_CHECKING import, a relative import,
    a private name and a forbidden room are all found."""
    pkg = tmp_path / "store"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from xaidash.store.sub import b\n    return b\n")
    (pkg / "sub" / "b.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..a import f\n"
        "from .c import _hidden\n")
    (pkg / "sub" / "c.py").write_text("import xaidash.compute.x\n_hidden = 1\n")
    (tmp_path / "compute").mkdir()
    (tmp_path / "compute" / "x.py").write_text("")
    g = build_graph(tmp_path, {"store": "xaidash.store", "compute": "xaidash.compute"})
    assert cycles(g) == [["xaidash.store.a", "xaidash.store.sub.b"]]
    assert g.private == [("xaidash.store.sub.b", "xaidash.store.sub.c", "_hidden")]
    assert layer_violations(g) == ["xaidash.store.sub.c -> xaidash.compute.x"]
