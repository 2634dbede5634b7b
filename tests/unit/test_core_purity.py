"""The protocol core stays sans-I/O (DESIGN.md §3, STYLE R1): an import contract, checked by AST.

Every module under ``p2pmesh/core/`` is parsed (not imported, so a forbidden import cannot hide
behind a failing import) and every ``import x``, ``from x import y`` and ``from x.y import z`` is
checked, wherever it sits: top level, inside functions, or under ``if TYPE_CHECKING``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import p2pmesh.core

CORE = Path(p2pmesh.core.__file__).parent
# I/O, clocks, randomness and concurrency belong to the daemon and the simulator; the core gets
# them injected (events, ``now``, a Signer, a seeded RNG).
FORBIDDEN = frozenset(
    {
        "trio",
        "libp2p",
        "docker",
        "sqlite3",
        "socket",
        "time",
        "random",
        "asyncio",
        "os",
        "subprocess",
        "threading",
        "pathlib",
        "urllib",
        "http",
        "requests",
    }
)


def _modules() -> list[Path]:
    return sorted(CORE.rglob("*.py"))


def imported_roots(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, top-level package) for every absolute import in ``tree``."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module.split(".")[0]))
        elif isinstance(node, ast.Call) and _is_dynamic_import(node):
            arg = node.args[0] if node.args else None
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                found.append((node.lineno, arg.value.split(".")[0]))
    return found


def _is_dynamic_import(call: ast.Call) -> bool:
    f = call.func
    if isinstance(f, ast.Name):
        return f.id == "__import__"
    return isinstance(f, ast.Attribute) and f.attr == "import_module"


def test_core_has_modules() -> None:
    names = {p.stem for p in _modules()}
    assert {"codec", "crypto", "capability", "node", "peers"} <= names


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(CORE)))
def test_core_module_is_pure(path: Path) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    bad = [(line, root) for line, root in imported_roots(tree) if root in FORBIDDEN]
    assert not bad, f"{path.name} imports {', '.join(f'{r} (line {n})' for n, r in bad)}"


@pytest.mark.parametrize(
    "source",
    [
        "import time",
        "import os.path",
        "import json, socket",
        "from random import Random",
        "from urllib.parse import quote",
        "from http import client",
        "import libp2p.peer.id as pid",
        "def f():\n    import trio",
        "if TYPE_CHECKING:\n    from sqlite3 import Connection",
        "import importlib\nimportlib.import_module('subprocess')",
        "__import__('threading')",
    ],
)
def test_checker_catches_forbidden_forms(source: str) -> None:
    roots = {r for _, r in imported_roots(ast.parse(source))}
    assert roots & FORBIDDEN


@pytest.mark.parametrize(
    "source",
    [
        "import hashlib",
        "from p2pmesh.core import codec",
        "from . import codec",
        "from .time_util import x",  # a relative module named like a forbidden one
        "import timeit",
        "import ostree",
    ],
)
def test_checker_allows_pure_imports(source: str) -> None:
    roots = {r for _, r in imported_roots(ast.parse(source))}
    assert not roots & FORBIDDEN
