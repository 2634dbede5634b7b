"""Node is the core's only face (docs/ARCHITECTURE.md, "The face"): static and table checks.

* Outside ``p2pmesh/core`` no code reaches into Node's machines: no attribute chain through
  ``.requester``, ``.provider``, ``.book`` or ``.membership``, and no ``node.ledger``,
  ``node.lm`` or ``node.peers``. Checked on the AST of every driver module (daemon, adapters,
  simulator, CLI, bootstrap), so it cannot be dodged by an import that fails.
* No core object goes to a worker thread: nothing passed to ``trio.to_thread.run_sync``
  (the callable, its arguments, the body of a lambda, or the body of the method it names)
  mentions the node.
* Both drivers dispatch every effect type of ``core.effects.Effect`` through a table keyed by
  type, and both take gossip topics from the core's table.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from p2pmesh.core import topics
from p2pmesh.core.effects import EFFECT_TYPES

ROOT = Path(__file__).resolve().parents[2]  # the repository
CORE = ROOT / "p2pmesh" / "core"
DRIVERS = ("p2pmesh", "simulations", "cli", "bootstrap")
THROUGH = frozenset({"requester", "provider", "book", "membership"})  # never a link of a chain
ON_NODE = frozenset({"ledger", "lm", "peers", *THROUGH})  # never right after ``node``


def _driver_modules() -> list[Path]:
    return sorted(p for d in DRIVERS for p in (ROOT / d).rglob("*.py") if CORE not in p.parents)


def _is_node(expr: ast.expr) -> bool:
    """``node``, ``self.node``, ``p.node``, ``old`` is not: only the name ``node``."""
    return (isinstance(expr, ast.Name) and expr.id == "node") or (
        isinstance(expr, ast.Attribute) and expr.attr == "node"
    )


def reach_ins(tree: ast.AST) -> list[tuple[int, str]]:
    found: list[tuple[int, str]] = []
    for n in ast.walk(tree):
        if not isinstance(n, ast.Attribute):
            continue
        inner = n.value
        if isinstance(inner, ast.Attribute) and inner.attr in THROUGH:
            found.append((n.lineno, f".{inner.attr}.{n.attr}"))
        elif n.attr in ON_NODE and _is_node(inner):
            found.append((n.lineno, f"node.{n.attr}"))
    return found


def _mentions_node(tree: ast.AST) -> bool:
    """Does ``tree`` use the node or one of its machines (``lm.ledger.verify_all``)? The node's
    ``peer_id`` (a string) does not count."""
    parents = {c: p for p in ast.walk(tree) for c in ast.iter_child_nodes(p)}
    for n in ast.walk(tree):
        if isinstance(n, ast.Attribute) and n.attr in ON_NODE:
            return True
        if (isinstance(n, ast.Name) and n.id == "node") or (
            isinstance(n, ast.Attribute) and n.attr == "node"
        ):
            up = parents.get(n)
            if not (isinstance(up, ast.Attribute) and up.attr == "peer_id"):
                return True
    return False


def _is_to_thread(call: ast.Call) -> bool:
    f = call.func
    return (
        isinstance(f, ast.Attribute)
        and f.attr == "run_sync"
        and isinstance(f.value, ast.Attribute)
        and f.value.attr == "to_thread"
    )


def thread_handoffs(trees: dict[Path, ast.AST]) -> list[tuple[Path, int, str]]:
    """Calls that hand the node (or a function that uses it) to a worker thread.

    The callable is looked up one level deep: a bare name among the functions of its own
    module, ``x.method`` among the methods of every driver class.
    """
    methods: dict[str, list[ast.AST]] = {}
    for tree in trees.values():
        for cls in (n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)):
            for f in cls.body:
                if isinstance(f, ast.FunctionDef | ast.AsyncFunctionDef):
                    methods.setdefault(f.name, []).append(f)
    bad = []
    for path, tree in trees.items():
        local: dict[str, list[ast.AST]] = {}
        for n in ast.walk(tree):
            if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef):
                local.setdefault(n.name, []).append(n)
        for call in (n for n in ast.walk(tree) if isinstance(n, ast.Call)):
            if not _is_to_thread(call) or not call.args:
                continue
            fn, args = call.args[0], [*call.args[1:], *(k.value for k in call.keywords)]
            if isinstance(fn, ast.Attribute):
                named = methods.get(fn.attr, [])
            elif isinstance(fn, ast.Name):
                named = local.get(fn.id, [])
            else:
                named = []
            if any(_mentions_node(b) for b in [fn, *args, *named]):
                bad.append((path, call.lineno, ast.unparse(fn)))
    return bad


def _trees() -> dict[Path, ast.AST]:
    return {p: ast.parse(p.read_text(encoding="utf-8"), filename=str(p)) for p in _driver_modules()}


def test_driver_modules_are_found() -> None:
    names = {str(p.relative_to(ROOT)) for p in _driver_modules()}
    assert {
        "p2pmesh/daemon/runner.py",
        "p2pmesh/daemon/jobs.py",
        "p2pmesh/adapters/libp2p/net.py",
        "simulations/peer.py",
        "simulations/metrics.py",
        "cli/main.py",
    } <= names


@pytest.mark.parametrize("path", _driver_modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_drivers_do_not_reach_into_nodes_parts(path: Path) -> None:
    bad = reach_ins(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
    assert not bad, f"{path.name} reaches past Node's face: " + ", ".join(
        f"{what} (line {line})" for line, what in bad
    )


def test_no_core_object_goes_to_a_worker_thread() -> None:
    bad = thread_handoffs(_trees())
    assert not bad, [f"{p.name}:{line} {fn}" for p, line, fn in bad]


@pytest.mark.parametrize(
    "source",
    [
        "self.node.requester.jobs",
        "node.provider.restore(doc, now)",
        "x = p.node.ledger",
        "lm = self.node.ledger; lm.ledger.chains",
        "node.peers.get(w)",
        "old.requester.jobs.values()",
        "self.node.book.explain(p, now)",
        "n.membership.caps",
        "node.lm",
    ],
)
def test_reach_in_checker_catches(source: str) -> None:
    assert reach_ins(ast.parse(source))


@pytest.mark.parametrize(
    "source",
    [
        "eff.requester",  # a field named requester, not a chain through it
        "meta.requester + 1",
        "self.sim.peers[3]",
        "node.job(job_id)",
        "node.ledger_json()",
        "self.node.peers_json(now)",
        "j.job.requester",
    ],
)
def test_reach_in_checker_allows(source: str) -> None:
    assert not reach_ins(ast.parse(source))


def test_thread_checker_catches_node_and_methods_that_use_it() -> None:
    src = (
        "class R:\n"
        "    def export(self, a):\n"
        "        return self.node.job(a)\n"
        "async def f(self):\n"
        "    await trio.to_thread.run_sync(self.jobs.export, 1)\n"
        "    await trio.to_thread.run_sync(lambda: self.node.jobs())\n"
        "    await trio.to_thread.run_sync(verify, self.node)\n"
        "    await trio.to_thread.run_sync(verify, snap)\n"
        "    await trio.to_thread.run_sync(lm.ledger.verify_all)\n"
        "    await trio.to_thread.run_sync(clean, self.node.peer_id)\n"
    )
    bad = thread_handoffs({Path("x.py"): ast.parse(src)})
    assert [line for _, line, _ in bad] == [5, 6, 7, 9]


# -- effect tables --------------------------------------------------------------------------------
def test_every_effect_type_is_in_the_union() -> None:
    import p2pmesh.core.effects as effects_mod

    defined = {
        obj
        for name, obj in vars(effects_mod).items()
        if isinstance(obj, type) and obj.__module__ == effects_mod.__name__
    }
    assert defined == set(EFFECT_TYPES)


def test_the_simulator_handles_every_effect_type() -> None:
    from p2pmesh.simulations.peer import _EXEC

    missing = [t.__name__ for t in EFFECT_TYPES if t not in _EXEC]
    assert not missing, f"simulations/peer.py has no handler for {missing}"


def test_the_daemon_handles_every_effect_type() -> None:
    from p2pmesh.daemon.runner import _EFFECTS

    missing = [t.__name__ for t in EFFECT_TYPES if t not in _EFFECTS]
    assert not missing, f"daemon/runner.py has no handler for {missing}"


# -- one topic table ------------------------------------------------------------------------------
def test_topics_come_from_the_core_table_in_both_drivers() -> None:
    assert len({t.name for t in topics.TOPICS}) == len(topics.TOPICS)
    for path in ("p2pmesh/daemon/runner.py", "simulations/network.py", "simulations/peer.py"):
        text = (ROOT / path).read_text(encoding="utf-8")
        assert "topics" in text or "TOPICS" in text, path
        for t in topics.TOPICS:
            assert f'"{t.name}"' not in text, f"{path} spells topic {t.name} itself"
