"""The package's import graph, deferred imports included: no module imports itself through
others (a cycle a deferred import hides today breaks the day it is hoisted), and each folder
imports only the folders below it:

    base (headcode.errors, files, lazy, printable, safe_json, progress)
      < kernels < compiler < runtime < synth < benchmarks < the rest of headcode/

Read from the source (``ast``), not by importing: every ``import`` statement anywhere in a module
counts, inside functions too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
BASE = {"headcode.errors", "headcode.files", "headcode.lazy", "headcode.printable", "headcode.safe_json",
        "headcode.progress"}
LAYERS = ("base", "kernels", "compiler", "runtime", "synth", "benchmarks", "headcode")


def _modules() -> dict[str, Path]:
    """Module name -> file, from pyproject's package-dir (``headcode.compiler`` = ``compiler/``)."""
    dirs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    mods: dict[str, Path] = {}
    for pkg, d in dirs.items():
        for f in (ROOT / d).rglob("*.py"):
            parts = list(f.relative_to(ROOT / d).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            name = ".".join([pkg, *parts])
            if pkg == "headcode" and parts and f"headcode.{parts[0]}" in dirs:
                continue  # a folder of its own (headcode.compiler = compiler/)
            mods[name] = f
    return mods


MODULES = _modules()


def _resolve(name: str) -> str | None:
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(name: str, path: Path) -> set[str]:
    out: set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {_resolve(a.name) for a in node.names if a.name.startswith("headcode")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package
                for _ in range(node.level - 1):
                    up = up.rpartition(".")[0]
                base = f"{up}.{base}" if base else up
            if base.startswith("headcode"):
                for a in node.names:  # `from pkg import module` imports the module
                    full = f"{base}.{a.name}"
                    out.add(full if full in MODULES else _resolve(base))
    out.discard(None)
    out.discard(name)
    return out


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _layer(module: str) -> str:
    if module in BASE:
        return "base"
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else "headcode"


def _cycles() -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []
    for root in GRAPH:
        if root in index:
            continue
        work = [(root, iter(sorted(GRAPH[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(GRAPH[w]))))
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


def test_the_graph_is_read():
    assert len(MODULES) > 100
    assert "headcode.compiler.sandbox.worker" in GRAPH["headcode.compiler.sandbox"]  # `from pkg import module`
    assert "headcode.compiler.tokens" in GRAPH["headcode.compiler.language"]  # inside a function
    assert "headcode.compiler.tokens" in GRAPH["headcode.runtime.model.capture"]


def test_no_module_imports_itself_through_others():
    assert _cycles() == []


def test_a_cycle_would_be_found(monkeypatch):
    monkeypatch.setitem(GRAPH, "headcode.kernels.program_head.spec",
                        GRAPH["headcode.kernels.program_head.spec"] | {"headcode.compiler.head"})
    assert any("headcode.compiler.head" in c for c in _cycles())


@pytest.mark.parametrize("layer", LAYERS)
def test_each_folder_imports_only_folders_below_it(layer):
    rank = {name: i for i, name in enumerate(LAYERS)}
    wrong = sorted(f"{m} imports {d}" for m, deps in GRAPH.items() if _layer(m) == layer
                   for d in deps if rank[_layer(d)] > rank[layer])
    assert wrong == []
