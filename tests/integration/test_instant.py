"""The benchmark-only executor (``P2PMESH_BENCH_EXECUTOR=instant``) in a real mesh.

``bench_jobs.py --payload instant`` measures the mesh's own work by starting workers that
report one fixed output without running anything. This checks, with real daemons, that such a
job goes the whole way a real one goes — offer, bids, award, result, output fetch, verdict,
payment — and that the daemon says loudly that it is not running jobs.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from ledgermesh import balance_cli
from mesh import wait_until
from trustmesh import export, start_mesh, submit, wait_final, wc_job

from p2pmesh.adapters.instant import OUTPUT, OUTPUT_NAME

pytestmark = [pytest.mark.integration]

INSTANT = {"P2PMESH_ALLOW_FAULTS": "1", "P2PMESH_BENCH_EXECUTOR": "instant"}


def test_instant_workers_complete_and_are_paid(tmp_path: Path) -> None:
    mesh = start_mesh(
        tmp_path / "mesh",
        3,
        node_env={1: INSTANT, 2: INSTANT},
        node_args={0: ["--no-work"]},
    )
    try:
        requester, *workers = mesh.nodes
        for w in workers:
            assert "BENCHMARK EXECUTOR ACTIVE: instant" in w.log_text()
        case = wc_job(tmp_path / "jobs", 0, redundancy=2)
        sub = submit(requester, case)
        wait_final([sub], 90.0, mesh)
        doc = sub.doc
        assert doc["state"] == "done", (doc["error"], doc["history"], mesh.log_tails(8))
        # The fixed output, not the word count: nothing ran.
        assert export(sub, tmp_path / "out") == {OUTPUT_NAME: OUTPUT}
        box: dict = {}

        def settled() -> bool:
            box.update(balance_cli(requester))
            return box.get("pending") == 0 and box.get("payments_out") == 2

        wait_until(settled, 30.0, interval=0.5, message=lambda: f"payments: {box}")
    finally:
        mesh.close()
