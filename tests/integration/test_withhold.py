"""Nothing is paid for nothing (issue 12 §3, PROTOCOL.md §8.1): real daemons, real containers.

The withholder is a daemon started with ``P2PMESH_ALLOW_FAULTS=1
P2PMESH_FAULT=withhold-outputs``: it runs each job properly and sends a correct result, but
refuses every request for its outputs. A requester pays only once the accepted outputs are on
its disk, match the result's digest and unpack, and only workers that served them:

* ``alone``: the requester (``--no-work``) and the withholder only, redundancy 1. The one
  result decides, its outputs never arrive, the replica is lost and nobody else can run the
  job: it ends ``timeout`` (never ``done``), and the requester's ``p2pmesh balance --json``
  shows ``spent`` and ``pending`` 0.
* ``beside honest workers``: the withholder undercuts two honest workers (price 0 against 1),
  so it wins one of the two replicas of a redundancy-2 job. Its result agrees with the honest
  one, but when asked for its copy it does not serve it: it is lost, the other honest worker
  replaces it, the job ends ``done`` with the right answer, and the withholder is paid nothing
  while each honest worker is paid its price once.

Run with ``-s`` to see the figures.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from jobmesh import close_mesh, docker_engine
from ledgermesh import balance_cli, ledger_doc
from mesh import Mesh, wait_until
from trustmesh import export, fault_env, start_mesh, submit, wait_final, wc_job

pytestmark = [pytest.mark.integration, pytest.mark.docker]

UNSERVED = "outputs could not be fetched"
SETTLE_S = 30.0


@pytest.fixture(scope="module")
def engine() -> Iterator[Any]:
    yield from docker_engine()


def _close(mesh: Mesh, engine: Any) -> None:
    close_mesh(mesh, engine)


def settled_balance(node: Any) -> dict[str, Any]:
    """``p2pmesh balance --json`` once no payment of this node is waiting for its agreement."""
    box: dict[str, Any] = {}

    def done() -> bool:
        box.update(balance_cli(node))
        return box.get("pending") == 0

    wait_until(done, SETTLE_S, interval=0.5, message=lambda: f"payments still pending: {box}")
    return box


def worker_entry(doc: dict[str, Any], peer: str) -> dict[str, Any]:
    [w] = [w for w in doc["workers"] if w["peer_id"] == peer]
    return w


def test_withholder_alone_is_never_paid_and_the_job_never_ends_done(
    tmp_path: Path, engine: Any
) -> None:
    mesh = start_mesh(
        tmp_path / "mesh",
        2,
        node_env={1: fault_env("withhold-outputs")},
        node_args={0: ["--no-work"]},
    )
    try:
        requester, withholder = mesh.nodes
        case = wc_job(tmp_path / "jobs", 0, redundancy=1, timeout_s=30, deadline_s=60)
        t0 = time.monotonic()
        sub = submit(requester, case)
        wait_final([sub], 120.0, mesh)
        took = time.monotonic() - t0
        doc = sub.doc
        w = worker_entry(doc, withholder.peer_id)
        balance = balance_cli(requester)
        print(
            f"\nalone: {doc['state']} after {took:.0f} s ({doc['error']}); withholder "
            f"{w['state']}: {w['lost_reason']}; requester spent {balance['spent']}, "
            f"pending {balance['pending']}"
        )
        assert doc["state"] == "timeout", doc["history"]
        assert w["result"] is not None and w["result"]["status"] == "exited"  # it did report
        assert w["state"] == "lost" and w["lost_reason"].startswith(UNSERVED), w
        assert (balance["spent"], balance["pending"]) == (0, 0), balance
        earned = ledger_doc(requester)["balances"].get(withholder.peer_id, {}).get("earned", 0)
        assert earned == 0
    finally:
        _close(mesh, engine)


def test_withholder_beside_honest_workers_is_replaced_and_unpaid(
    tmp_path: Path, engine: Any
) -> None:
    requester_i, withholder_i = 0, 1
    mesh = start_mesh(
        tmp_path / "mesh",
        4,
        node_env={withholder_i: fault_env("withhold-outputs")},
        node_args={
            requester_i: ["--no-work"],
            withholder_i: ["--price", "0"],
            2: ["--price", "1"],
            3: ["--price", "1"],
        },
    )
    try:
        requester = mesh.nodes[requester_i]
        withholder = mesh.nodes[withholder_i].peer_id
        honest = [mesh.nodes[2].peer_id, mesh.nodes[3].peer_id]
        case = wc_job(tmp_path / "jobs", 1, redundancy=2)
        t0 = time.monotonic()
        sub = submit(requester, case)
        wait_final([sub], 150.0, mesh)
        took = time.monotonic() - t0
        doc = sub.doc
        assert doc["state"] == "done", (doc["error"], doc["history"], mesh.log_tails(8))
        assert export(sub, tmp_path / "out") == case.truth
        w = worker_entry(doc, withholder)
        # The cheapest bid: it was awarded, reported the right digest, and did not serve it.
        assert w["result"] is not None and w["result"]["output_digest"] == doc["output_digest"]
        assert w["state"] == "lost" and w["lost_reason"].startswith(UNSERVED), w
        for peer in honest:
            assert worker_entry(doc, peer)["state"] == "reported", doc["workers"]

        mine = settled_balance(requester)
        books = ledger_doc(requester)["balances"]
        earned = {p: books.get(p, {}).get("earned", 0) for p in (withholder, *honest)}
        print(
            f"\nbeside honest: done in {took:.0f} s, requester spent {mine['spent']} in "
            f"{mine['payments_out']} payments, earned {earned}"
        )
        assert earned[withholder] == 0
        assert [earned[p] for p in honest] == [1, 1]
        assert (mine["spent"], mine["payments_out"], mine["pending"]) == (2, 2, 0)
    finally:
        _close(mesh, engine)
