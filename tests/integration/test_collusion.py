"""A colluding ring among real daemons is caught, proven wrong, and refused by every honest peer.

Eight daemons and real containers (issue 13, PROTOCOL.md §8.1, §8.7, §8.8):

* node0, the requester, offers with ``--hidden-replicas 1``: every checked job gets one replica
  more than its ``redundancy`` says, which no worker can see;
* node1..node4 are honest workers at price 3; node5 is an honest peer that does not work;
* node6 and node7 are a ring (``P2PMESH_FAULT=collude:ring``) at price 1, so they win the two
  replicas a job asks for. They share their awards out of band, see that they hold both, and
  return the same wrong answer, as the simulator's ring does.

Before the ring joins, node5 has each honest worker run three jobs for it, so it trusts them
somewhat (its own verdicts). Then node0's job goes to the ring and one honest worker (the hidden
replica); the honest one dissents, unanimity adds replicas from the other honest workers until
they lead by two, and node0 accepts the right answer, pays only the honest workers, and
publishes a wrong-result proof against each ring member. The honest workers believe the proofs
(their own results are in them); node5 weighs them by its trust in the honest signers. Every
honest daemon then refuses the ring's bids.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from jobmesh import docker_client, docker_missing, remove_leftovers
from mesh import Mesh, MeshNode, wait_until
from trustmesh import (
    export,
    fault_env,
    reported_workers,
    reputation_of,
    start_mesh,
    submit,
    wait_final,
    wc_job,
)

REQUESTER, OBSERVER = 0, 5
HONEST = (1, 2, 3, 4)
JOB_TIMEOUT_S = 240.0


@pytest.fixture(scope="module")
def engine() -> Iterator[Any]:
    why = docker_missing()
    if why:
        pytest.skip(why)
    client = docker_client()
    assert client is not None
    yield client
    client.close()


@pytest.fixture(scope="module")
def ringed(tmp_path_factory: pytest.TempPathFactory, engine: Any) -> Iterator[Mesh]:
    base = tmp_path_factory.mktemp("collusion")
    mesh = start_mesh(
        base,
        6,
        node_args={
            REQUESTER: ["--no-work", "--hidden-replicas", "1"],
            OBSERVER: ["--no-work"],
            **{i: ["--price", "3"] for i in HONEST},
        },
    )
    try:
        yield mesh
    finally:
        mesh.close()
        left = remove_leftovers(engine, mesh.nodes)
        if left:
            print(f"removed containers left behind by the daemons: {left}")


def _ring_joins(mesh: Mesh, ring_dir: Path) -> list[MeshNode]:
    env = {**fault_env("collude:ring"), "P2PMESH_RING_DIR": str(ring_dir)}
    ring = []
    for _ in range(2):
        i = len(mesh.nodes)
        mesh.node_env[i] = env
        mesh.node_args[i] = ["--allow-image", "p2pmesh/*", "--price", "1", "--max-jobs", "20"]
        ring.append(mesh.add_node())
    mesh.wait_all_listed(45.0)
    return ring


def _excluded(node: MeshNode, peer: str) -> bool:
    return bool(reputation_of(node, peer)["wrong_result_proofs"]["excluded"])


def test_a_ring_is_caught_by_a_hidden_replica_proven_wrong_and_refused_everywhere(
    ringed: Mesh, tmp_path: Path
) -> None:
    mesh = ringed
    requester, observer = mesh.nodes[REQUESTER], mesh.nodes[OBSERVER]
    honest = [mesh.nodes[i] for i in HONEST]
    honest_ids = {n.peer_id for n in honest}

    # node5 learns to trust the honest workers: three jobs each runs (redundancy 4: all four).
    warm = [submit(observer, wc_job(tmp_path / "warm", i, redundancy=4)) for i in range(3)]
    wait_final(warm, JOB_TIMEOUT_S, mesh)
    assert [s.state for s in warm] == ["done"] * 3, [s.doc.get("error") for s in warm]
    trust = {n.name: reputation_of(observer, n.peer_id)["reputation"] for n in honest}
    assert all(r > 0.25 for r in trust.values()), trust

    ring = _ring_joins(mesh, tmp_path / "ring")
    ring_ids = {n.peer_id for n in ring}

    case = wc_job(tmp_path / "bait", 40, redundancy=2, max_price=5, budget=40)
    t0 = time.monotonic()
    sub = submit(requester, case, bid_window_s=4)  # every bid in, both of the ring's too
    wait_final([sub], JOB_TIMEOUT_S, mesh)
    took = time.monotonic() - t0
    doc = sub.doc
    assert sub.state == "done", doc
    ran = set(reported_workers(doc))
    assert ring_ids <= ran, f"the ring did not hold the job: {doc['workers']}"
    digests = {w["peer_id"]: w["result"]["output_digest"] for w in doc["workers"] if w["result"]}
    assert {digests[r] for r in ring_ids} != {doc["output_digest"]}, "the ring did not cheat"
    assert len({digests[r] for r in ring_ids}) == 1, "the ring's answers differ"

    # No wrong output is exported: the requester holds the true word count.
    outputs = export(sub, tmp_path / "out")
    assert outputs == case.truth

    # The ring is not paid: only honest workers earned from this job.
    bal = requester.cli_json("ledger")["balances"]
    for r in ring_ids:
        assert bal.get(r, {}).get("earned", 0) == 0, bal.get(r)
    assert any(bal.get(h, {}).get("earned", 0) > 0 for h in honest_ids)

    # Proven and excluded at the requester at once, then at every honest daemon by gossip.
    for r in ring_ids:
        doc_r = reputation_of(requester, r)["wrong_result_proofs"]
        assert doc_r["excluded"] and doc_r["proofs"][0]["job_id"] == sub.job_id, doc_r
    for node in [*honest, observer]:
        for r in ring_ids:
            wait_until(
                lambda node=node, r=r: _excluded(node, r),
                30.0,
                message=f"{node.name} never excluded {r[-8:]}",
            )
    weights = {
        r[-8:]: reputation_of(observer, r)["wrong_result_proofs"]["weight"] for r in ring_ids
    }

    # Afterwards nobody awards the ring anything, though it bids a third of the honest price.
    after = [
        submit(node, wc_job(tmp_path / f"after-{node.name}", 50 + i, redundancy=2))
        for i, node in enumerate([observer, honest[0], requester])
    ]
    wait_final(after, JOB_TIMEOUT_S, mesh)
    for s in after:
        assert s.state == "done", s.doc
        workers = {w["peer_id"] for w in s.doc["workers"]}
        assert not workers & ring_ids, (s.node.name, s.doc["workers"])
    print(
        f"\nring caught in {took:.1f} s with {len(ran)} replicas; observer's trust in the "
        f"honest workers {trust}; proof weights at the observer {weights}"
    )
