"""Service jobs end to end: real daemons as processes, a real busybox ``httpd`` container.

A requester offers a service job (``"service": {"port": 8080}``); the worker runs ``httpd`` in a
``network: none`` container. ``p2pmesh connect ID --listen 127.0.0.1:PORT`` opens a local port
on the requester, and a page is fetched over HTTP through it (TCP → libp2p stream → the
worker → the container's network namespace). Another node, not the requester, is refused by the
worker with a clear error. ``p2pmesh cancel`` ends the session: the container is removed, and
the requester's ledger holds one per-minute payment to the worker, within the budget, which the
worker agreed to. A second session with nobody connecting ends by itself after its
``idle_timeout_s`` and is paid its one minute.

Forwarding enters the container's network namespace, which needs root: where the tests run
without host privileges (``P2PMESH_FRESH_MACHINE=1``) the module skips with that reason.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from jobmesh import (
    ALLOW_OURS,
    close_mesh,
    containers,
    docker_engine,
    history,
    job_state,
    node_of,
    offer,
    request,
    wait_job,
    write_job,
)
from mesh import Mesh, MeshNode, p2pmesh_cmd, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.docker]

DISCOVERY_TIMEOUT_S = 45.0
RUNNING_TIMEOUT_S = 60.0
PAGE = "hello from a service job\n"
PRICE = 2  # credits per minute, asked by every worker of this mesh
BUDGET = 10  # five minutes at that price
HTTPD = [
    "sh",
    "-c",
    f"mkdir -p /tmp/www && printf '{PAGE.strip()}\\n' > /tmp/www/index.html && "
    "exec httpd -f -p 8080 -h /tmp/www",
]


def _privileged() -> str | None:
    if os.environ.get("P2PMESH_FRESH_MACHINE") == "1" or os.geteuid() != 0:
        return "needs host privileges: forwarding enters a container's network namespace (root)"
    return None


@pytest.fixture(scope="module")
def engine() -> Iterator[Any]:
    why = _privileged()
    if why:
        pytest.skip(why)
    yield from docker_engine()


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory, engine: Any) -> Iterator[Mesh]:
    m = Mesh(tmp_path_factory.mktemp("service"), 3, extra_args=(*ALLOW_OURS, "--price", str(PRICE)))
    try:
        m.start()
        m.wait_all_listed(DISCOVERY_TIMEOUT_S)
        yield m
    finally:
        close_mesh(m, engine)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _service_job(folder: Path, name: str, **service: Any) -> Path:
    return write_job(
        folder,
        name=name,
        command=HTTPD,
        timeout_s=300,
        deadline_s=900,
        max_price=PRICE,
        budget=BUDGET,
        redundancy=1,
        service={"port": 8080, **service},
    )


def _start(mesh: Mesh, path: Path) -> tuple[str, str]:
    """Offer the job from node0; wait until it runs; its ID and its worker."""
    requester = mesh.nodes[0]
    got = offer(requester, path, timeout=60)
    assert got.rc == 0 and got.job_id, got.describe()

    def running() -> dict[str, Any] | None:
        doc = job_state(requester, got.job_id)
        return doc if (doc.get("service") or {}).get("worker") else None

    doc = wait_until(
        running,
        RUNNING_TIMEOUT_S,
        interval=0.3,
        message=lambda: history(job_state(requester, got.job_id)) + "\n" + mesh.log_tails(10),
    )
    return got.job_id, doc["service"]["worker"]


def _open_tunnel(requester: MeshNode, job_id: str) -> tuple[subprocess.Popen[str], int]:
    """``p2pmesh connect ID --listen 127.0.0.1:PORT`` on the requester, left running."""
    port = _free_port()
    tunnel = subprocess.Popen(
        [
            *p2pmesh_cmd(),
            "connect",
            "--home",
            str(requester.home),
            job_id,
            "--listen",
            f"127.0.0.1:{port}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    return tunnel, port


def _get(port: int, timeout: float = 30.0) -> str:
    """GET / through the tunnel; retried while httpd is still starting in its container."""
    last: list[str] = []

    def fetch() -> str | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as r:
                return str(r.read().decode())
        except OSError as exc:
            last[:] = [repr(exc)]
            return None

    return str(wait_until(fetch, timeout, interval=0.5, message=lambda: f"last error: {last}"))


def _payments(node: MeshNode, job_id: str) -> dict[str, list[dict[str, Any]]]:
    chains = request(node, "ledger")["chains"]
    out: dict[str, list[dict[str, Any]]] = {"proposal": [], "agreement": []}
    for blocks in chains.values():
        for b in blocks:
            if b.get("job_id") == job_id and b.get("kind") in out:
                out[b["kind"]].append(b)
    return out


def _paid(node: MeshNode, job_id: str, worker: str, timeout: float = 45.0) -> dict[str, Any]:
    """The payment to ``worker`` for the session, once the worker has agreed to it."""

    def agreed() -> dict[str, Any] | None:
        got = _payments(node, job_id)
        props = [b for b in got["proposal"] if b["payee"] == worker]
        ok = props and any(b["payee"] == worker for b in got["agreement"])
        return props[0] if ok else None

    return dict(
        wait_until(agreed, timeout, interval=0.5, message=lambda: str(_payments(node, job_id)))
    )


def test_service_reached_through_connect_and_cancelled(
    mesh: Mesh, engine: Any, tmp_path: Path
) -> None:
    requester = mesh.nodes[0]
    job_id, worker = _start(mesh, _service_job(tmp_path, "httpd-service"))
    tunnel, port = _open_tunnel(requester, job_id)
    try:
        assert tunnel.stdout is not None
        line = tunnel.stdout.readline()
        if f"listening on 127.0.0.1:{port}" not in line:
            tunnel.wait(timeout=10)
            raise AssertionError(f"connect: {line!r} {tunnel.stderr.read()!r}\n{mesh.log_tails(8)}")
        # The page, twice: each request is its own connection and its own stream.
        assert _get(port) == PAGE
        assert _get(port) == PAGE
        # A container of the job runs on the worker, and nowhere else.
        running = containers(engine, job=job_id)
        assert [c.status for c in running] == ["running"], running
        assert running[0].name.endswith(worker[-8:])

        # Any other node is refused by the worker, with the reason.
        other = next(n for n in mesh.nodes[1:] if n.peer_id != worker)
        res = other.cli("connect", job_id, "--peer", worker, "--listen", "127.0.0.1:0")
        assert res.returncode == 1, (res.stdout, res.stderr)
        assert "not the requester of this job" in res.stderr, res.stderr
        assert _get(port) == PAGE  # the refusal changed nothing for the requester

        t0 = time.monotonic()
        res = requester.cli("cancel", job_id, timeout=90)
        assert res.returncode == 0, (res.stdout, res.stderr, history(job_state(requester, job_id)))
        assert "session ended" in res.stdout, res.stdout
        took = time.monotonic() - t0
        wait_until(lambda: not containers(engine, job=job_id), 30, message="container left")
        # The tunnel closes with the session.
        tunnel.wait(timeout=15)
        assert tunnel.returncode == 0
    finally:
        if tunnel.poll() is None:
            tunnel.send_signal(signal.SIGINT)
            tunnel.wait(timeout=10)

    doc = wait_job(requester, job_id, ("done",), timeout=30, mesh=mesh)
    res_doc = doc["workers"][0]["result"]
    minutes = -(-round(res_doc["run_s"] * 1000) // 60_000)
    pay = _paid(requester, job_id, worker)
    assert pay["amount"] == min(BUDGET, PRICE * max(1, minutes)), (pay, res_doc)
    assert 0 < pay["amount"] <= BUDGET
    assert doc["price_total"] == pay["amount"]
    print(f"session: {res_doc['run_s']} s, paid {pay['amount']}, cancel took {took:.1f} s")
    # The worker's own copy of the job ended with the same figure.
    wnode = node_of(mesh, worker)
    wdoc = request(wnode, "job", {"job_id": job_id})
    assert wdoc["state"] == "reported", wdoc


def test_service_ends_after_idle_timeout(mesh: Mesh, engine: Any, tmp_path: Path) -> None:
    requester = mesh.nodes[0]
    t0 = time.monotonic()
    job_id, worker = _start(mesh, _service_job(tmp_path, "idle-service", idle_timeout_s=10))
    doc = wait_job(requester, job_id, ("done", "failed", "cancelled"), timeout=60, mesh=mesh)
    took = time.monotonic() - t0
    assert doc["state"] == "done", history(doc)
    assert not containers(engine, job=job_id)
    assert 10 <= took < 50, took
    pay = _paid(requester, job_id, worker)
    assert pay["amount"] == PRICE  # one started minute
    wdoc = request(node_of(mesh, worker), "job", {"job_id": job_id})
    assert "idle" in wdoc.get("detail", ""), wdoc


def test_service_on_a_worker_with_its_own_engine_gets_the_image_and_is_reached(
    engine: Any, tmp_path: Path
) -> None:
    """Issue 17 item 4: the worker's engine is a second, empty one, so the service's image
    travels from the requester first (no registry here: ``--no-pull``); then the session is
    reached through ``connect`` and cancelled, and its container is gone from that engine."""
    from engines import second_engine
    from trustmesh import start_mesh

    with second_engine("p2pm-svc") as worker_engine:
        mesh = start_mesh(
            tmp_path / "mesh",
            2,
            node_args={0: ["--no-work"], 1: ["--no-pull", "--price", str(PRICE)]},
            node_env={1: worker_engine.env},
        )
        try:
            requester, worker = mesh.nodes
            job_id, runner = _start(mesh, _service_job(tmp_path, "httpd-elsewhere"))
            assert runner == worker.peer_id
            fetched = [
                line
                for line in worker.log_text().splitlines()
                if "image fetched from the mesh" in line
            ]
            assert len(fetched) == 1, worker.log_tail(30)
            tunnel, port = _open_tunnel(requester, job_id)
            try:
                assert tunnel.stdout is not None
                line = tunnel.stdout.readline()
                assert f"listening on 127.0.0.1:{port}" in line, (line, mesh.log_tails(8))
                assert _get(port) == PAGE
                client = worker_engine.client()
                running = containers(client, job=job_id)
                assert [c.status for c in running] == ["running"], running
                assert not containers(engine, job=job_id)  # not on the requester's engine
                res = requester.cli("cancel", job_id, timeout=90)
                assert res.returncode == 0, (res.stdout, res.stderr)
                wait_until(lambda: not containers(client, job=job_id), 30, message="left over")
                tunnel.wait(timeout=15)
            finally:
                if tunnel.poll() is None:
                    tunnel.send_signal(signal.SIGINT)
                    tunnel.wait(timeout=10)
            doc = wait_job(requester, job_id, ("done",), timeout=30, mesh=mesh)
            assert _paid(requester, job_id, worker.peer_id)["amount"] <= BUDGET, doc
        finally:
            mesh.close()
