"""Service jobs: how fast is the tunnel? (docs/BENCHMARKS.md, "Service jobs: the tunnel").

Two real daemons (a requester and a worker, the integration harness of tests/integration) and a
busybox ``httpd`` service job serving a small page and a ``--mib`` MiB file from its ``/tmp``.
Measured, through ``p2pmesh connect``: the time from ``offer`` to the first page, the latency
of ``--requests`` sequential GETs of the small page (each its own TCP connection, so its own
libp2p stream and its own dial into the container), the download rate of the big file, and the
time from ``cancel`` to the paid end. For reference, the same GETs and download straight into
the container's network namespace (what the worker itself does, no libp2p in between).

Needs root (forwarding enters the container's network namespace) and p2pmesh/busybox:1:

    python benchmarks/bench_service.py --out service.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "integration"))

from jobmesh import close_mesh, docker_client, job_state, offer, write_job  # noqa: E402
from mesh import Mesh, p2pmesh_cmd, wait_until  # noqa: E402

from p2pmesh.adapters.docker import netns  # noqa: E402


def _http_get(connect: Any, path: str) -> bytes:
    """A minimal HTTP/1.0 GET over a fresh socket from ``connect()``; the body."""
    s = connect()
    try:
        s.setblocking(True)
        s.sendall(f"GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n".encode())
        chunks = []
        while data := s.recv(1 << 20):
            chunks.append(data)
    finally:
        s.close()
    raw = b"".join(chunks)
    head, _, body = raw.partition(b"\r\n\r\n")
    if b" 200 " not in head.split(b"\r\n", 1)[0]:
        raise OSError(f"bad answer: {head[:80]!r}")
    return body


def _measure(connect: Any, requests: int, mib: int) -> dict[str, float]:
    lat = []
    for _ in range(requests):
        t = time.perf_counter()
        _http_get(connect, "/index.html")
        lat.append((time.perf_counter() - t) * 1000)
    t = time.perf_counter()
    body = _http_get(connect, "/big")
    took = time.perf_counter() - t
    assert len(body) == mib << 20, len(body)
    lat.sort()
    return {
        "get_ms_median": round(statistics.median(lat), 2),
        "get_ms_p90": round(lat[int(0.9 * (len(lat) - 1))], 2),
        "download_mib_s": round(mib / took, 1),
    }


def run(requests: int, mib: int) -> dict[str, Any]:
    import socket

    base = Path(tempfile.mkdtemp(prefix="p2pmesh-bench-service-"))
    engine = docker_client()
    mesh = Mesh(base, 2, extra_args=("--allow-image", "p2pmesh/*", "--price", "1"))
    out: dict[str, Any] = {"requests": requests, "mib": mib}
    try:
        mesh.start()
        mesh.wait_all_listed(45)
        requester, worker = mesh.nodes
        cmd = (
            "mkdir -p /tmp/www && echo hello > /tmp/www/index.html && "
            f"dd if=/dev/zero of=/tmp/www/big bs=1M count={mib} 2>/dev/null && "
            "exec httpd -f -p 8080 -h /tmp/www"
        )
        job = write_job(
            base / "job",
            name="bench-service",
            command=["sh", "-c", cmd],
            resources={"cpus": 1, "ram_gb": 0.5, "disk_gb": 0.1},
            timeout_s=600,
            deadline_s=1800,
            max_price=1,
            budget=100,
            redundancy=1,
            service={"port": 8080},
        )
        t0 = time.perf_counter()
        got = offer(requester, job, timeout=60)
        assert got.rc == 0, got.describe()
        tunnel = subprocess.Popen(
            [*p2pmesh_cmd(), "connect", "--home", str(requester.home), got.job_id,
             "--listen", "127.0.0.1:0"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert tunnel.stdout is not None
        line = tunnel.stdout.readline()
        if "listening on 127.0.0.1:" not in line:
            tunnel.wait(timeout=30)
            raise RuntimeError(f"connect: {line!r} {tunnel.stderr.read()!r}")  # type: ignore[union-attr]
        port = int(line.split("listening on 127.0.0.1:")[1].split(",")[0])

        def via_tunnel() -> socket.socket:
            return socket.create_connection(("127.0.0.1", port), timeout=30)

        def first() -> bool | None:
            try:
                _http_get(via_tunnel, "/big")
                return True
            except OSError as exc:
                last[:] = [repr(exc)]
                return None

        last: list[str] = []
        wait_until(first, 60, interval=0.2, message=lambda: f"last: {last}")
        out["offer_to_first_page_s"] = round(time.perf_counter() - t0, 2)
        out["tunnel"] = _measure(via_tunnel, requests, mib)
        name = f"p2pmesh-{got.job_id[:16]}-{worker.peer_id[-8:]}"
        pid = netns.container_pid(name)
        out["direct"] = _measure(lambda: netns.connect_in(pid, 8080), requests, mib)
        t = time.perf_counter()
        res = requester.cli("cancel", got.job_id, timeout=90)
        assert res.returncode == 0, res.stderr
        out["cancel_to_paid_s"] = round(time.perf_counter() - t, 2)
        out["paid"] = job_state(requester, got.job_id)["price_total"]
        tunnel.wait(timeout=20)
    finally:
        close_mesh(mesh, engine)
        shutil.rmtree(base, ignore_errors=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=50)
    ap.add_argument("--mib", type=int, default=32, help="size of the big file (≤ 48: /tmp)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    result = run(args.requests, args.mib)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
