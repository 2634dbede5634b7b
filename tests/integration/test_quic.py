"""QUIC (py-libp2p's ``libp2p.transport.quic``): nodes that listen on ``/udp/N/quic-v1`` only
find each other and run a job over it, with no TCP at all."""

from __future__ import annotations

from pathlib import Path

from jobmesh import ALLOW_OURS, job_state, offer, write_job
from mesh import MeshNode, wait_until

QUIC = "/ip4/127.0.0.1/udp/0/quic-v1"


def test_quic_only_nodes_run_a_job(tmp_path: Path) -> None:
    a = MeshNode(tmp_path / "a", name="a", listen=[QUIC], extra_args=["--no-work"])
    b = MeshNode(tmp_path / "b", name="b", listen=[QUIC], extra_args=list(ALLOW_OURS))
    try:
        a.start()
        assert all("/udp/" in x and "/quic-v1/" in x for x in a.addrs), a.addrs
        b.bootstrap = [a.addr]
        b.start()
        wait_until(
            lambda: any(p.get("peer_id") == b.peer_id for p in a.peers()),
            60,
            interval=0.5,
            message=lambda: a.log_tail() + b.log_tail(),
        )
        job = write_job(tmp_path / "job", command=["sh", "-c", "echo quic > /out/x"])
        res = offer(a, job, "--wait", "--out", str(tmp_path / "out"), timeout=120)
        assert res.rc == 0, res.describe() + a.log_tail() + b.log_tail()
        assert (tmp_path / "out" / "outputs" / "x").read_text() == "quic\n"
        doc = job_state(a, res.job_id)
        assert [w["peer_id"] for w in doc["workers"]] == [b.peer_id]
    finally:
        b.close()
        a.close()
