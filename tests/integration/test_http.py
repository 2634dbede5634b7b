"""The HTTP endpoint of real daemons: ``/metrics``, ``/api/…`` and the status page in Chromium.

Two ``p2pmesh up`` processes on loopback: node0 requests (``--no-work``), node1 works with the
benchmark executor (nothing runs in a container, the job goes the whole way otherwise), so the
metrics have jobs, bids, awards and a verdict to count. Checked: ``node.json`` and ``p2pmesh
status`` name the URL bound; ``/metrics`` parses with ``prometheus_client.parser`` and its
``p2pmesh_`` values match what the control socket says (peers connected = 1, one job done, a
bid sent by the worker); py-libp2p's own metrics are there; ``/api/…`` are the control views;
a foreign ``Host`` gets 403 and garbage a 400 while the daemon goes on; the status page,
rendered by headless Chromium, holds the other peer's full ID in its markup and its peers table
shows on a 1200x800 screenshot.
"""

from __future__ import annotations

import json
import shutil
import socket
import struct
import subprocess
import urllib.request
import zlib
from pathlib import Path
from typing import Any

import pytest
from jobmesh import ALLOW_OURS
from mesh import MeshNode, run_cli, wait_until
from trustmesh import submit, wait_final, wc_job

from p2pmesh.daemon.page import PEERS_HEAD_RGB

pytestmark = pytest.mark.integration

# This file's ports (libp2p and HTTP), inside the range given to it.
P2P_PORTS = (47110, 47111)
HTTP_PORTS = (47160, 47161)
INSTANT = {"P2PMESH_ALLOW_FAULTS": "1", "P2PMESH_BENCH_EXECUTOR": "instant"}
WIDTH, HEIGHT = 1200, 800


def fetch(url: str, host: str | None = None) -> tuple[int, str, bytes]:
    req = urllib.request.Request(url, headers={"Host": host} if host else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.headers.get("Content-Type", ""), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Content-Type", ""), exc.read()


def raw_request(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return out


def metrics(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``/metrics`` parsed by prometheus_client's own parser: sample → value."""
    from prometheus_client.parser import text_string_to_metric_families

    status, ctype, body = fetch(url + "metrics")
    assert status == 200 and ctype.startswith("text/plain"), (status, ctype)
    out = {}
    for fam in text_string_to_metric_families(body.decode()):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def api(url: str, view: str) -> Any:
    status, ctype, body = fetch(url + "api/" + view)
    assert status == 200 and ctype == "application/json", (view, status, body[:200])
    return json.loads(body)


# -- a PNG reader, just enough for Chromium's screenshots (8-bit RGB or RGBA, not interlaced) --
def read_png(path: Path) -> tuple[int, int, list[bytes]]:
    """(width, height, rows of RGB bytes)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, ihdr = 8, b"", None
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + n]
        if kind == b"IHDR":
            ihdr = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + n
    assert ihdr is not None
    width, height, depth, ctype, _, _, interlace = ihdr
    assert depth == 8 and ctype in (2, 6) and interlace == 0, ihdr
    bpp = 3 if ctype == 2 else 4
    raw = zlib.decompress(idat)
    stride = width * bpp
    rows: list[bytes] = []
    prev = bytearray(stride)
    for y in range(height):
        f = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b = prev[i]
            c = prev[i - bpp] if i >= bpp else 0
            if f == 1:
                line[i] = (line[i] + a) & 0xFF
            elif f == 2:
                line[i] = (line[i] + b) & 0xFF
            elif f == 3:
                line[i] = (line[i] + (a + b) // 2) & 0xFF
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else b if pb <= pc else c
                line[i] = (line[i] + pred) & 0xFF
        prev = line
        rgb = bytes(line) if bpp == 3 else bytes(v for i, v in enumerate(line) if i % 4 != 3)
        rows.append(rgb)
    return width, height, rows


def _near(px: tuple[int, ...], rgb: tuple[int, int, int], tol: int = 4) -> bool:
    return all(abs(a - b) <= tol for a, b in zip(px, rgb, strict=True))


def chromium(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip("chromium is not installed (scripts/setup.sh installs it)")
    # As root Chromium needs --no-sandbox; --no-zygote and --disable-gpu keep it to the few
    # processes a container without a GPU or a D-Bus can start; its own profile in tmp.
    return subprocess.run(
        [
            exe,
            "--headless",
            "--no-sandbox",
            "--no-zygote",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
            f"--user-data-dir={tmp / 'chromium-profile'}",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )


@pytest.fixture
def pair(tmp_path: Path) -> Any:
    requester = MeshNode(
        tmp_path / "node0",
        name="node0",
        listen=[f"/ip4/127.0.0.1/tcp/{P2P_PORTS[0]}"],
        extra_args=["--no-work", "--http", f"127.0.0.1:{HTTP_PORTS[0]}"],
    )
    requester.start()
    worker = MeshNode(
        tmp_path / "node1",
        name="node1",
        listen=[f"/ip4/127.0.0.1/tcp/{P2P_PORTS[1]}"],
        bootstrap=[requester.addr],
        extra_args=[*ALLOW_OURS, "--http", f"127.0.0.1:{HTTP_PORTS[1]}"],
        env=INSTANT,
    )
    try:
        worker.start()
        yield requester, worker
    finally:
        worker.close()
        requester.close()


def test_http_metrics_api_and_status_page_in_chromium(pair: Any, tmp_path: Path) -> None:
    requester, worker = pair
    url0, url1 = (f"http://127.0.0.1:{p}/" for p in HTTP_PORTS)
    # node.json and `p2pmesh status` name the URL bound.
    assert requester.info["http"] == url0 and worker.info["http"] == url1
    assert requester.cli_json("status")["node"]["http"] == url0
    shown = requester.cli("status")
    assert shown.returncode == 0 and url0 in shown.stdout, shown.stdout

    # Both see each other: the metric says so, and agrees with the control socket.
    box: dict[str, Any] = {}

    def linked() -> bool:
        box["m"] = metrics(url0)
        return (
            box["m"][("p2pmesh_peers_connected", ())] == 1 == box["m"][("p2pmesh_peers_known", ())]
        )

    wait_until(linked, 45.0, interval=0.5, message=lambda: requester.log_tail())
    assert len(requester.query("peers")) == 1

    # One job the whole way: offer, bid, award, (instant) result, fetch, verdict, payment.
    case = wc_job(tmp_path / "jobs", 0, redundancy=1)
    sub = submit(requester, case)
    wait_final([sub], 90.0)
    assert sub.doc["state"] == "done", sub.doc

    def settled() -> bool:
        box["m0"], box["m1"] = metrics(url0), metrics(url1)
        return (
            box["m0"].get(("p2pmesh_payments_pending", ())) == 0
            and box["m1"].get(("p2pmesh_jobs", (("role", "worker"), ("state", "reported")))) == 1
        )

    wait_until(settled, 30.0, interval=0.5, message=lambda: json.dumps(box, default=str)[:3000])
    m0, m1 = box["m0"], box["m1"]
    assert m0[("p2pmesh_jobs", (("role", "requester"), ("state", "done")))] == 1
    assert m0[("p2pmesh_validations_total", (("outcome", "done"),))] == 1
    assert m0[("p2pmesh_bids_received_total", ())] >= 1
    assert m0[("p2pmesh_awards_sent_total", ())] >= 1
    assert m1[("p2pmesh_bids_sent_total", ())] >= 1
    assert m1[("p2pmesh_awards_received_total", ())] == 1
    assert m0[("p2pmesh_replicas", (("state", "reported"),))] == 1
    bal0, bal1 = requester.query("balance"), worker.query("balance")
    assert m0[("p2pmesh_balance_credits", ())] == bal0["balance"] < 0
    assert m1[("p2pmesh_balance_credits", ())] == bal1["balance"] > 0
    assert m1[("p2pmesh_ledger_blocks", ())] >= 1
    assert m0[("p2pmesh_event_queue_capacity", ())] == 4096
    assert m0[("p2pmesh_gossip_published_total", (("topic", "p2pmesh/capabilities/1"),))] >= 1
    # py-libp2p's own metrics, in the same registry.
    assert sum(v for (name, _), v in m0.items() if name == "gossipsub_received_total") > 0
    assert any(name.startswith("kad_inbound") for name, _ in m0)

    # /api: the control socket's read views, as JSON.
    assert {p["peer_id"] for p in api(url0, "peers")} == {worker.peer_id}
    assert api(url0, "status")["node"]["peer_id"] == requester.peer_id
    assert [j["job_id"] for j in api(url0, "jobs")] == [sub.job_id]
    assert api(url0, f"job/{sub.job_id}")["state"] == "done"
    assert api(url1, "balance") == bal1
    assert worker.peer_id in api(url0, "ledger")["balances"]
    assert fetch(url0 + "api/job/nope")[0] == 404
    assert fetch(url0 + "api/submit")[0] == 404  # nothing that changes the node

    # DNS rebinding: a foreign Host is refused; garbage is a 400; the daemon goes on.
    status, _, body = fetch(url0 + "api/status", host=f"evil.example:{HTTP_PORTS[0]}")
    assert status == 403 and b"Host" in body
    assert fetch(url0 + "metrics", host=f"localhost:{HTTP_PORTS[0]}")[0] == 200
    assert raw_request(HTTP_PORTS[0], b"\x16\x03\x01\x00garbage\r\n\r\n").startswith(
        b"HTTP/1.1 400 "
    )
    assert raw_request(HTTP_PORTS[0], b"POST / HTTP/1.1\r\nContent-Length: 9\r\n\r\n").startswith(
        b"HTTP/1.1 413 "
    )
    assert requester.alive and fetch(url0)[0] == 200

    # The page in a real browser: the DOM has the peer's full ID, the screenshot its table.
    dom = chromium(tmp_path, "--dump-dom", url0)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert f'title="{worker.peer_id}"' in dom.stdout
    assert 'id="peers"' in dom.stdout and sub.job_id[:12] in dom.stdout
    shot = tmp_path / "status.png"
    res = chromium(tmp_path, f"--screenshot={shot}", f"--window-size={WIDTH},{HEIGHT}", url0)
    assert res.returncode == 0 and shot.exists(), res.stderr[-2000:]
    width, height, rows = read_png(shot)
    assert (width, height) == (WIDTH, HEIGHT)
    px = [[tuple(r[x * 3 : x * 3 + 3]) for x in range(width)] for r in rows]
    head_rows = [y for y in range(height) if sum(_near(p, PEERS_HEAD_RGB) for p in px[y]) > 400]
    assert head_rows, "no peers table header on the screenshot"
    # Below the header, the peer's row: text (dark pixels) across the table's width.
    first_row = range(head_rows[-1] + 2, min(height, head_rows[-1] + 30))
    dark = sum(1 for y in first_row for p in px[y] if max(p) < 120)
    assert dark > 200, f"the peers table's first row looks empty ({dark} dark pixels)"
    background = px[height - 1][width - 1]
    not_bg = sum(1 for y in range(0, height, 4) for p in px[y][::4] if p != background)
    assert not_bg > 2000, f"the page looks blank ({not_bg} sampled pixels not background)"
    # The HTTP server and the libp2p metrics task stop with the daemon: a clean exit, code 0.
    worker.stop()
    requester.stop()


def test_http_port_taken_and_off(tmp_path: Path) -> None:
    """A taken port moves to the next free one (node.json says which); --http off: none."""
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", HTTP_PORTS[0] + 10))
    blocker.listen(1)
    try:
        node = MeshNode(
            tmp_path / "a",
            name="a",
            listen=[f"/ip4/127.0.0.1/tcp/{P2P_PORTS[0] + 10}"],
            extra_args=["--no-work", "--http", f"127.0.0.1:{HTTP_PORTS[0] + 10}"],
        )
        node.start()
        try:
            assert node.info["http"] == f"http://127.0.0.1:{HTTP_PORTS[0] + 11}/"
            assert fetch(node.info["http"] + "metrics")[0] == 200
        finally:
            node.close()
    finally:
        blocker.close()
    off = MeshNode(
        tmp_path / "b",
        name="b",
        listen=[f"/ip4/127.0.0.1/tcp/{P2P_PORTS[0] + 11}"],
        extra_args=["--no-work", "--http", "off"],
    )
    off.start()
    try:
        assert off.info["http"] is None and off.cli_json("status")["node"]["http"] is None
    finally:
        off.close()
    res = run_cli(["up", "--home", str(tmp_path / "c"), "--http", "0.0.0.0:1", "--no-tui"])
    assert res.returncode == 2 and "--http-public" in res.stderr, res.stderr
    # An address this machine does not have: one line and exit 2, no traceback.
    res = run_cli(
        [
            "up",
            "--home",
            str(tmp_path / "d"),
            "--no-tui",
            "--no-mdns",
            "--no-work",
            "--no-shipped-bootstrap",
            "--listen",
            f"/ip4/127.0.0.1/tcp/{P2P_PORTS[0] + 12}",
            "--http",
            "192.0.2.1:8080",
            "--http-public",
        ]
    )
    assert res.returncode == 2 and "cannot listen on 192.0.2.1:8080" in res.stderr, res.stderr
    assert "Traceback" not in res.stderr, res.stderr
