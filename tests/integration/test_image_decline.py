"""A worker bids only for images its engine holds (issue 15): real daemons, a real engine.

Before, a worker that allowed an image but lacked it bid, won, failed "not present" and was
replaced, so such a job was tried on worker after worker. Now it declines with the reason in
its log, the requester gets no bid from it, and a job whose image it holds is bid for as before.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from jobmesh import BUSYBOX, docker_missing, job_doc, request, write_job
from mesh import wait_until
from trustmesh import start_mesh

pytestmark = [pytest.mark.integration, pytest.mark.docker]

ABSENT = "p2pmesh/absent-on-purpose:1"


def _declines(log_text: str) -> list[dict]:
    out = []
    for line in log_text.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("msg") == "not bidding":
            out.append(entry)
    return out


def test_worker_without_the_image_declines_and_says_why(tmp_path: Path) -> None:
    why = docker_missing()
    if why:
        pytest.skip(why)
    mesh = start_mesh(tmp_path / "mesh", 2, node_args={0: ["--no-work"]})
    try:
        requester, worker = mesh.nodes
        absent = write_job(tmp_path / "absent", doc=job_doc(name="absent", image=ABSENT))
        sub = request(requester, "submit", {"job_file": str(absent), "bid_window_s": 1})
        wait_until(
            lambda: any(d.get("job") == sub["job_id"] for d in _declines(worker.log_text())),
            30.0,
            interval=0.5,
            message=lambda: worker.log_tail(10),
        )
        [entry] = [d for d in _declines(worker.log_text()) if d.get("job") == sub["job_id"]]
        assert entry["reason"] == f"image not present: {ABSENT} (this node does not pull images)"
        doc = request(requester, "job", {"job_id": sub["job_id"]})
        assert doc["bids_received"] == 0 and doc["workers"] == [], doc
        request(requester, "cancel", {"job_id": sub["job_id"]})

        held = write_job(tmp_path / "held", doc=job_doc(name="held", image=BUSYBOX))
        sub2 = request(requester, "submit", {"job_file": str(held), "bid_window_s": 1})

        def done() -> bool:
            return request(requester, "job", {"job_id": sub2["job_id"]})["state"] == "done"

        wait_until(done, 60.0, interval=0.5, message=lambda: mesh.log_tails(8))
    finally:
        mesh.close()
