"""An image nobody can get is refused before it costs anyone anything (issues 15 and 17).

Before issue 15 a worker that allowed an image but lacked it bid, won, failed "not present"
and was replaced, so such a job was tried on worker after worker. Since issue 17 an offer names
its image by ID and a worker that lacks it gets it from its registry or from the requester
(tests/integration/test_image_transfer.py), so the refusal moved to where the image is missing
for everyone: ``p2pmesh offer`` refuses a job whose image the requester's engine lacks (exit 2,
nothing offered), unless it is pinned by digest. A worker that can get neither way still
declines (test_image_transfer.py); a job whose image it holds is bid for as before.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from jobmesh import BUSYBOX, docker_missing, job_doc, offer, request, write_job
from mesh import wait_until
from trustmesh import start_mesh

pytestmark = [pytest.mark.integration, pytest.mark.docker]

ABSENT = "p2pmesh/absent-on-purpose:1"


def test_an_image_the_requester_lacks_is_refused_at_offer(tmp_path: Path) -> None:
    why = docker_missing()
    if why:
        pytest.skip(why)
    mesh = start_mesh(tmp_path / "mesh", 2, node_args={0: ["--no-work"]})
    try:
        requester, worker = mesh.nodes
        absent = write_job(tmp_path / "absent", doc=job_doc(name="absent", image=ABSENT))
        res = offer(requester, absent)
        assert res.rc == 2, res.describe()
        assert f"image: {ABSENT} is not in this machine's Docker engine" in res.stderr
        assert "pinned by digest" in res.stderr
        assert request(requester, "jobs") == []  # nothing was offered

        # The daemon refuses it too (a client that skips the CLI's check).
        with pytest.raises(Exception, match="not in this node's Docker engine"):
            request(requester, "submit", {"job_file": str(absent), "bid_window_s": 1})

        held = write_job(tmp_path / "held", doc=job_doc(name="held", image=BUSYBOX))
        sub2 = request(requester, "submit", {"job_file": str(held), "bid_window_s": 1})

        def done() -> bool:
            return request(requester, "job", {"job_id": sub2["job_id"]})["state"] == "done"

        wait_until(done, 60.0, interval=0.5, message=lambda: mesh.log_tails(8))
        doc = request(requester, "job", {"job_id": sub2["job_id"]})
        assert doc["workers"][0]["peer_id"] == worker.peer_id
    finally:
        mesh.close()
