"""Bidder sortition with real daemons (PROTOCOL.md §7.12).

Ten daemons on loopback: one requester that does not work, nine workers. A job with
redundancy 1 wants about 1 + 2 bidders, and nine fitting peers are more than twice that, so
each offer carries a ``select`` threshold: only the drawn workers bid, the others count a
"not selected" decline, and every job still runs (real containers) and is paid.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from jobmesh import docker_missing, request
from trustmesh import export, start_mesh, submit, wait_final, wc_job

from p2pmesh.core.auction import sortition

pytestmark = [pytest.mark.integration]

WORKERS = 9
JOBS = 6


@pytest.fixture(autouse=True)
def _docker() -> None:
    why = docker_missing()
    if why:
        pytest.fail(why)


def test_sortition_only_drawn_workers_bid_and_every_job_runs(tmp_path: Path) -> None:
    mesh = start_mesh(tmp_path / "mesh", 1 + WORKERS, node_args={0: ["--no-work"]})
    try:
        requester, *workers = mesh.nodes
        cases = [wc_job(tmp_path / "jobs", i, redundancy=1) for i in range(JOBS)]
        subs = [submit(requester, c) for c in cases]
        wait_final(subs, 150.0, mesh)
        bids = []
        for sub in subs:
            doc = sub.doc
            assert doc["state"] == "done", (doc["error"], doc["history"])
            out = export(sub, tmp_path / "out" / sub.job_id)
            assert out == sub.case.truth, (out, sub.case.truth)
            # The round 0 draw is the documented one: about 3 of the 9 fitting peers.
            first = sortition.threshold(WORKERS, 1, 0)
            assert first is not None
            assert "of fitting peers drawn to bid" in doc["history"][1]["event"], doc["history"]
            # Each round's draw holds the last one's, so the final round's decides for all.
            for w in doc["workers"]:
                assert sortition.selected(sub.job_id, w["peer_id"], doc["select"]), doc
            bids.append(doc["bids_received"])
        declines = sum(
            request(w, "status")["node"]["declines"].get("not selected", 0) for w in workers
        )
        # Without the draw every worker bids on every job: 9 bids a job.
        print(f"\nsortition: bids per job {bids} (9 without the draw), 'not selected' {declines}")
        assert sum(bids) / len(bids) < 7, bids
        assert declines >= JOBS, declines
    finally:
        mesh.close()
