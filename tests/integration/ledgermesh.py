"""Ledger helpers for the ledger integration tests, on top of ``mesh.py`` / ``jobmesh.py``.

What a user (or an auditor) reads of the ledger, through the CLI or the control socket, and the
comparisons the tests make across nodes:

* ``ledger_doc`` (control socket, cheap enough to poll) and ``ledger_cli`` / ``verify_cli``
  (``p2pmesh ledger [--verify] --json`` as a user runs it, with its exit code);
* ``view``: one node's chains (block hashes per author) and accounts, minus what is expected to
  differ between honest nodes: the chains of excluded authors (which of a fork's two blocks a
  node holds depends on which came first) and all-zero accounts;
* ``wait_converged``: poll until every given node has the same view, balances summing to zero;
  on a timeout, say which node differs from which, and how;
* ``payments``: the proposals and agreements for one job, to check "at most once";
* ``SeparateGroup``: a group of daemons with its own bootstrap node, unreachable from another
  group until something joins them (no mDNS, no shipped bootstrap list).
"""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jobmesh import ALLOW_OURS, request
from mesh import Mesh, MeshNode, wait_until

# What an account is compared on. ``credit_limit`` follows from ``earned`` and the local
# ``credit_base`` (the same default everywhere here).
ACCOUNT_FIELDS = ("balance", "earned", "spent", "payments_in", "payments_out", "pending")
SETTLED_FIELDS = ("balance", "earned", "spent", "payments_in", "payments_out")


def ledger_doc(node: MeshNode, peer: str | None = None, verify: bool = False) -> dict[str, Any]:
    """What ``p2pmesh ledger --json`` prints, over the control socket (no process started)."""
    return dict(request(node, "ledger", {"peer_id": peer, "verify": verify}))


def ledger_cli(node: MeshNode, *extra: str) -> tuple[int, dict[str, Any], str]:
    """``p2pmesh ledger EXTRA --json`` through the CLI: exit code, document, stderr."""
    res = node.cli("ledger", *extra, "--json", timeout=60)
    doc: dict[str, Any] = {}
    if res.stdout.strip():
        doc = json.loads(res.stdout)
    return res.returncode, doc, res.stderr


def verify_cli(node: MeshNode) -> tuple[int, dict[str, Any]]:
    """``p2pmesh ledger --verify --json``: exit code and the ``verify`` report."""
    rc, doc, err = ledger_cli(node, "--verify")
    assert doc, f"ledger --verify on {node.name} printed nothing (exit {rc}): {err}"
    return rc, dict(doc["verify"])


def balance_cli(node: MeshNode) -> dict[str, Any]:
    """``p2pmesh balance --json``: the node's own account."""
    return dict(node.cli_json("balance"))


@dataclass(frozen=True)
class View:
    """One node's ledger, reduced to what every honest node must agree on."""

    chains: dict[str, tuple[str, ...]]  # author -> block hashes in seq order
    accounts: dict[str, tuple[int, ...]]  # peer -> ACCOUNT_FIELDS (or SETTLED_FIELDS)
    excluded: tuple[str, ...]

    @property
    def total(self) -> int:
        return sum(a[0] for a in self.accounts.values())


def view(doc: dict[str, Any], *, fields: Sequence[str] = ACCOUNT_FIELDS) -> View:
    excluded = tuple(sorted(doc.get("excluded", [])))
    chains = {
        author: tuple(b["hash"] for b in blocks)
        for author, blocks in doc["chains"].items()
        if author not in excluded
    }
    accounts = {}
    for peer, acct in doc["balances"].items():
        values = tuple(int(acct[f]) for f in fields)
        if any(values):
            accounts[peer] = values
    return View(chains, accounts, excluded)


def differences(a: View, b: View) -> list[str]:
    out = []
    for author in sorted(set(a.chains) | set(b.chains)):
        ca, cb = a.chains.get(author, ()), b.chains.get(author, ())
        if ca != cb:
            out.append(f"chain …{author[-8:]}: {len(ca)} vs {len(cb)} block(s)")
    for peer in sorted(set(a.accounts) | set(b.accounts)):
        if a.accounts.get(peer) != b.accounts.get(peer):
            out.append(f"account …{peer[-8:]}: {a.accounts.get(peer)} vs {b.accounts.get(peer)}")
    if a.excluded != b.excluded:
        out.append(f"excluded: {a.excluded} vs {b.excluded}")
    return out


def wait_converged(
    nodes: Sequence[MeshNode],
    timeout: float,
    *,
    fields: Sequence[str] = ACCOUNT_FIELDS,
    expect_chains: Iterable[str] = (),
    settled: bool = True,
) -> View:
    """Poll ``ledger`` on every node until all hold the same chains and accounts, those
    include ``expect_chains``, balances sum to 0 and (with ``settled``) nothing is pending.
    Return the common view."""
    wanted = set(expect_chains)
    state: dict[str, Any] = {}

    def step() -> View | None:
        views = {n.name: view(ledger_doc(n), fields=fields) for n in nodes}
        state["views"] = views
        first = views[nodes[0].name]
        if not wanted <= set(first.chains):
            return None
        if any(differences(first, v) for v in views.values()):
            return None
        if first.total != 0:
            return None
        if settled and "pending" in fields:
            i = list(fields).index("pending")
            if any(a[i] for a in first.accounts.values()):
                return None
        return first

    def describe() -> str:
        views = state.get("views", {})
        if not views:
            return "no ledger answered"
        ref_name = nodes[0].name
        ref = views[ref_name]
        lines = [f"ledgers did not converge (reference {ref_name}, sum {ref.total}):"]
        missing = wanted - set(ref.chains)
        if missing:
            lines.append(f"  {ref_name} lacks chains {sorted(m[-8:] for m in missing)}")
        for name, v in views.items():
            for d in differences(ref, v):
                lines.append(f"  {name}: {d}")
        lines.append(f"  accounts on {ref_name}: {ref.accounts}")
        return "\n".join(lines) + "\n" + "\n".join(n.log_tail(6) for n in nodes)

    return wait_until(step, timeout, interval=0.5, message=describe)


def payments(doc: dict[str, Any], job_id: str) -> dict[str, list[dict[str, Any]]]:
    """The proposals and agreements for one job in a ledger document, by kind."""
    out: dict[str, list[dict[str, Any]]] = {"proposal": [], "agreement": []}
    for blocks in doc["chains"].values():
        for b in blocks:
            if b["job_id"] == job_id:
                out[b["kind"]].append(b)
    return out


# -- groups that cannot reach each other ---------------------------------------------------------
class SeparateGroup(Mesh):
    """A ``Mesh`` whose nodes allow our images; its node0 is the only bootstrap its nodes know,
    so two groups never meet unless a node bootstraps from both."""

    def __init__(self, base: Path, n: int, *, max_jobs: int = 20) -> None:
        super().__init__(base, n, extra_args=[*ALLOW_OURS, "--max-jobs", str(max_jobs)])


def joiner(home: Path, groups: Sequence[Mesh], *, name: str = "joiner") -> MeshNode:
    """A node that bootstraps from the first node of each group: it joins them."""
    return MeshNode(
        home,
        name=name,
        bootstrap=[g.nodes[0].addr for g in groups],
        extra_args=[*ALLOW_OURS, "--max-jobs", "20"],
    )


def log_events(node: MeshNode, msg: str) -> list[dict[str, Any]]:
    """The daemon's JSON log lines with this ``msg``, since its latest start."""
    text = node.log_text()
    last = text.rsplit("\n=== harness:", 1)[-1]
    out = []
    for line in last.splitlines():
        if line.startswith("{") and f'"msg": "{msg}"' in line:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out


# -- crashing and coming back --------------------------------------------------------------------
def pause(node: MeshNode) -> None:
    """SIGSTOP: the process stays, its sockets stay open, it handles nothing."""
    node.send_signal(signal.SIGSTOP)


def resume(node: MeshNode) -> None:
    node.send_signal(signal.SIGCONT)


def crash(node: MeshNode) -> None:
    """SIGKILL (works on a stopped process too): nothing is flushed or cleaned up."""
    if node.alive:
        node.kill()


def restart_same_port(node: MeshNode, timeout: float = 60.0) -> None:
    """Start a crashed node again on its home and its old port, so peers reach it where they
    knew it."""
    port = node.port
    assert not node.alive, f"{node.name} is still running"
    node.listen = [f"/ip4/127.0.0.1/tcp/{port}"]
    node.start(timeout)
    assert node.port == port, f"{node.name} came back on port {node.port}, not {port}"


def close_node(node: MeshNode) -> None:
    """Cleanup path: a paused node is resumed first so SIGTERM can stop it."""
    if node.alive:
        try:
            resume(node)
        except (ProcessLookupError, subprocess.SubprocessError):
            pass
        node.close()


__all__ = [
    "ACCOUNT_FIELDS",
    "SETTLED_FIELDS",
    "SeparateGroup",
    "View",
    "balance_cli",
    "close_node",
    "crash",
    "differences",
    "joiner",
    "ledger_cli",
    "ledger_doc",
    "log_events",
    "pause",
    "payments",
    "restart_same_port",
    "resume",
    "verify_cli",
    "view",
    "wait_converged",
]
