"""The HTTP endpoint's parts that need no daemon: address parsing, the Host check (DNS
rebinding), request parsing, the server's answers to malformed input, page escaping, and the
metrics collector's text output."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from prometheus_client.parser import text_string_to_metric_families

from p2pmesh.daemon import metrics as metrics_mod
from p2pmesh.daemon.http import (
    MAX_HEADER_BYTES,
    BadRequest,
    HttpServer,
    Request,
    Response,
    host_allowed,
    parse_http_addr,
    parse_request,
    url_of,
)
from p2pmesh.daemon.page import status_page
from p2pmesh.daemon.settings import build_settings
from p2pmesh.errors import ConfigError

# -- the address ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "want"),
    [
        ("127.0.0.1:8484", ("127.0.0.1", 8484)),
        ("localhost:0", ("127.0.0.1", 0)),
        ("[::1]:9000", ("::1", 9000)),
        ("0.0.0.0:80", ("0.0.0.0", 80)),
        ("off", None),
        ("OFF", None),
    ],
)
def test_parse_http_addr(value: str, want: Any) -> None:
    assert parse_http_addr(value) == want


@pytest.mark.parametrize(
    "value", ["8484", "example.com:80", "127.0.0.1:99999", "127.0.0.1:x", "::1:80", "[::1]80"]
)
def test_parse_http_addr_refuses(value: str) -> None:
    with pytest.raises(ConfigError):
        parse_http_addr(value)


def test_url_of() -> None:
    assert url_of("127.0.0.1", 8484) == "http://127.0.0.1:8484/"
    assert url_of("::1", 1) == "http://[::1]:1/"
    assert url_of("0.0.0.0", 2) == "http://127.0.0.1:2/"


def test_settings_default_is_loopback_and_public_needs_the_flag(tmp_path: Path) -> None:
    assert build_settings(tmp_path, {}).http == "127.0.0.1:8484"
    assert build_settings(tmp_path, {"http": "off"}).http == "off"
    with pytest.raises(ConfigError, match="loopback"):
        build_settings(tmp_path, {"http": "0.0.0.0:8484"})
    s = build_settings(tmp_path, {"http": "0.0.0.0:8484", "http_public": True})
    assert s.http_public
    (tmp_path / "config.toml").write_text('http = "127.0.0.1:0"\n')
    assert build_settings(tmp_path, {}).http == "127.0.0.1:0"
    assert build_settings(tmp_path, {"http": "off"}).http == "off"  # the flag wins
    (tmp_path / "config.toml").write_text("http = 8484\n")
    with pytest.raises(ConfigError, match="wrong type"):
        build_settings(tmp_path, {})


# -- the Host check ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "ok"),
    [
        ("127.0.0.1:8484", True),
        ("localhost:8484", True),
        ("LOCALHOST:8484", True),
        ("127.0.0.1", False),  # port 80 implied
        ("127.0.0.1:8485", False),
        ("127.0.0.2:8484", False),
        ("evil.example:8484", False),  # a rebound DNS name
        ("127.0.0.1.nip.io:8484", False),
        ("", False),
        (None, False),
        ("[::1]:8484", False),
        ("127.0.0.1:8484:1", False),
        ("127.0.0.1:08484x", False),
    ],
)
def test_host_check_loopback(header: str | None, ok: bool) -> None:
    assert host_allowed(header, "127.0.0.1", 8484) is ok


def test_host_check_v6_and_wildcard() -> None:
    assert host_allowed("[::1]:80", "::1", 80)
    assert host_allowed("[::1]", "::1", 80)
    assert not host_allowed("[::2]:80", "::1", 80)
    # A wildcard bind accepts any IP literal of its family, and never a DNS name.
    assert host_allowed("192.0.2.7:9000", "0.0.0.0", 9000)
    assert host_allowed("localhost:9000", "0.0.0.0", 9000)
    assert not host_allowed("node.example:9000", "0.0.0.0", 9000)
    assert not host_allowed("[2001:db8::1]:9000", "0.0.0.0", 9000)
    assert host_allowed("[2001:db8::1]:9000", "::", 9000)
    # A specific public address: only itself.
    assert host_allowed("192.0.2.7:9000", "192.0.2.7", 9000)
    assert not host_allowed("localhost:9000", "192.0.2.7", 9000)


# -- request parsing --------------------------------------------------------------------------


def test_parse_request() -> None:
    req = parse_request(b"GET /api/peers?x=1 HTTP/1.1\r\nHost: a:1\r\nX-Y:  z \r\nx-y: w")
    assert (req.method, req.path, req.query, req.version) == (
        "GET",
        "/api/peers",
        "x=1",
        "HTTP/1.1",
    )
    assert req.headers == {"host": "a:1", "x-y": "z, w"}


@pytest.mark.parametrize(
    ("head", "status"),
    [
        (b"GET /", 400),
        (b"GET / HTTP/1.1 extra", 400),
        (b"GET http://x/ HTTP/1.1", 400),
        (b"GET / HTTP/2.0", 505),
        (b"GET / FTP/1.0", 400),
        (b"G(T / HTTP/1.1", 400),
        (b"GET /\x7f HTTP/1.1", 400),
        (b"GET / HTTP/1.1\r\nno colon", 400),
        (b"GET / HTTP/1.1\r\n folded: x", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b", 400),
        (b"GET / HTTP/1.1\r\nX: a\x01b", 400),
        (b"POST / HTTP/1.1\r\nContent-Length: 5", 413),
        (b"POST / HTTP/1.1\r\nContent-Length: -1", 400),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked", 400),
        (b"GET / HTTP/1.1" + b"\r\nA: b" * 100, 431),
    ],
)
def test_parse_request_refuses(head: bytes, status: int) -> None:
    with pytest.raises(BadRequest) as info:
        parse_request(head)
    assert info.value.status == status


# -- the server, over an in-memory stream -----------------------------------------------------


async def _exchange(server: HttpServer, raw: bytes, *, close: bool = True) -> bytes:
    """Send ``raw`` to ``server.handle`` over a memory stream pair; the whole reply."""
    client, srv = trio.testing.memory_stream_pair()
    out = bytearray()
    async with trio.open_nursery() as n:
        n.start_soon(server.handle, srv)  # type: ignore[arg-type]
        await client.send_all(raw)
        if close:
            await client.send_eof()
        while chunk := await client.receive_some(65536):
            out += chunk
    return bytes(out)


def _server() -> HttpServer:
    async def hello(req: Request) -> Response:
        return Response(200, b"<b>hi</b>", "text/html; charset=utf-8")

    async def boom(req: Request) -> Response:
        raise RuntimeError("a bug")

    logged: list[tuple[Any, ...]] = []
    s = HttpServer({"/": hello, "/boom": boom}, lambda *a, **k: logged.append(a))
    s.host, s.port = "127.0.0.1", 8484
    return s


def _status(reply: bytes) -> int:
    return int(reply.split(b" ", 2)[1])


async def test_server_answers_and_refuses() -> None:
    s = _server()
    ok = await _exchange(s, b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8484\r\n\r\n")
    assert _status(ok) == 200 and ok.endswith(b"<b>hi</b>")
    assert b"\r\nContent-Length: 9\r\n" in ok and b"Content-Security-Policy:" in ok
    head = await _exchange(s, b"HEAD / HTTP/1.1\r\nHost: localhost:8484\r\n\r\n")
    assert _status(head) == 200 and head.endswith(b"\r\n\r\n")
    assert _status(await _exchange(s, b"GET / HTTP/1.1\r\nHost: evil:8484\r\n\r\n")) == 403
    assert _status(await _exchange(s, b"GET / HTTP/1.0\r\n\r\n")) == 403  # no Host at all
    assert s.stats.refused_host == 2
    assert _status(await _exchange(s, b"GET /nope HTTP/1.1\r\nHost: 127.0.0.1:8484\r\n\r\n")) == 404
    r = await _exchange(s, b"DELETE / HTTP/1.1\r\nHost: 127.0.0.1:8484\r\n\r\n")
    assert _status(r) == 405
    assert _status(await _exchange(s, b"GET /boom HTTP/1.1\r\nHost: 127.0.0.1:8484\r\n\r\n")) == 500
    assert _status(await _exchange(s, b"\x00\xff garbage\r\n\r\n")) == 400
    assert _status(await _exchange(s, b"GET / HTTP/1.1\r\nHost")) == 400  # closed mid-head
    big = b"GET / HTTP/1.1\r\nX: " + b"a" * (MAX_HEADER_BYTES + 10)
    assert _status(await _exchange(s, big, close=False)) == 431


async def test_server_times_out_a_slow_request(autojump_clock: trio.abc.Clock) -> None:
    s = _server()
    reply = await _exchange(s, b"GET / HTTP/1.1\r\n", close=False)
    assert _status(reply) == 408


async def test_bind_takes_the_next_free_port() -> None:
    a, b = _server(), _server()
    la = await a.bind("127.0.0.1", 47190)
    lb = await b.bind("127.0.0.1", 47190)
    try:
        assert a.port == 47190 and b.port == 47191
        assert b.url == "http://127.0.0.1:47191/"
    finally:
        await la.aclose()
        await lb.aclose()
    c = _server()
    lc = await c.bind("127.0.0.1", 0)
    assert c.port > 0
    await lc.aclose()


# -- the page ---------------------------------------------------------------------------------

HOSTILE = '<script>alert("x")</script>&\'"\x1b[31m\u202e'


def _snapshot() -> dict[str, Any]:
    caps = {"cpus": 4, "ram_gb": 8.0, "gpus": [{"name": HOSTILE, "memory_gb": 1}], "price": 1}
    return {
        "node": {
            "peer_id": "12D3KooWSelfSelfSelfSelf",
            "addrs": [f"/ip4/127.0.0.1/tcp/1/p2p/{HOSTILE}"],
            "started_at": 1000.0,
            "peers_connected": 1,
            "peers_known": 1,
            "work": True,
            "capabilities": caps,
        },
        "peers": [
            {
                "peer_id": "12D3KooWPeerPeerPeerABCDEFGH",
                "addrs": [f"/dns4/{HOSTILE}/tcp/1"],
                "capabilities": caps,
                "reputation": 0.5,
                "connected": True,
                "last_seen": 1090.0,
            },
            "not a dict",
        ],
        "events": [{"ts": 1050.0, "level": "warning", "msg": HOSTILE, HOSTILE: HOSTILE}],
    }


def test_page_escapes_everything_and_carries_full_ids() -> None:
    jobs = [
        {
            "job_id": "ab" * 16,
            "role": "requester",
            "name": HOSTILE,
            "image": HOSTILE,
            "state": "running",
            "created_at": 1000.0,
            "bids_received": 2,
            "workers": [{"peer_id": HOSTILE}],
        },
        {
            "job_id": "cd" * 16,
            "role": "worker",
            "name": "w",
            "image": "i",
            "state": "running",
            "requester": "12D3KooWPeerPeerPeerABCDEFGH",
            "detail": HOSTILE,
        },
    ]
    page = status_page(
        _snapshot(),
        jobs,
        {"balance": 7, "earned": 9, "spent": 2},
        1100.0,
        version="0.1.0",
        http_url="http://127.0.0.1:8484/",
    )
    assert "<script" not in page and "\x1b" not in page and "\u202e" not in page
    assert "&lt;script&gt;" in page
    assert 'title="12D3KooWPeerPeerPeerABCDEFGH"' in page  # the full ID in the markup
    assert ">…ABCDEFGH<" in page  # a short one on screen
    assert '<meta http-equiv="refresh"' in page
    assert 'id="peers"' in page and 'id="jobs-requested"' in page and 'id="jobs-run"' in page
    assert "src=" not in page and "<link" not in page  # no external asset
    # Every attribute value is quoted and holds no raw quote from the data.
    assert '"x"' not in page


def test_page_survives_junk() -> None:
    page = status_page(
        {"node": "x", "peers": 5, "events": None}, [1, "a"], {}, 0.0, version="v", http_url="u"
    )
    assert "No peers yet." in page and "No job requested" in page


# -- metrics ----------------------------------------------------------------------------------


def _view() -> dict[str, Any]:
    net = {
        "shed": {"gossip x": 2},
        "gossip_ignored": {"t": 1},
        "gossip_rejected": {"t": 3},
        "gossip_in": {"t": 10},
        "gossip_out": {"t": 4},
        "job_in": {"bid": 2},
        "job_out": {"bid": 5, "award": 1},
        "stream_errors": {"send": 1},
        "publish_failed": 0,
        "dials_ok": 3,
        "dials_failed": 1,
    }
    jobs = [
        {
            "role": "requester",
            "state": "done",
            "bids_received": 3,
            "workers": [{"state": "reported"}, {"state": "lost"}],
        },
        {"role": "worker", "state": "running"},
    ]
    return {
        "version": "0.1.0",
        "uptime_s": 5.0,
        "node": {
            "peer_id": "12D3KooWx",
            "peers_connected": 1,
            "peers_known": 2,
            "stats": {"refused_reasons": {"stale": 1}},
        },
        "net": net,
        "jobs": metrics_mod.job_counts(jobs),
        "containers_running": 1,
        "container_seconds": 12.5,
        "ledger": {
            "blocks": 4,
            "own_blocks": 2,
            "chains": 2,
            "excluded": 0,
            "balance": -3,
            "earned": 1,
            "spent": 4,
            "pending": 0,
        },
        "queue": {"used": 7, "size": 4096, "persist": 0},
        "http": {"requests": {"200": 3}},
    }


def test_metrics_text_parses_with_the_right_values() -> None:
    reg = metrics_mod.make_registry(_view)
    text = metrics_mod.exposition(reg).decode()
    samples = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    assert samples[("p2pmesh_peers_connected", ())] == 1
    assert samples[("p2pmesh_peers_known", ())] == 2
    assert samples[("p2pmesh_jobs", (("role", "requester"), ("state", "done")))] == 1
    assert samples[("p2pmesh_jobs", (("role", "worker"), ("state", "running")))] == 1
    assert samples[("p2pmesh_bids_sent_total", ())] == 5
    assert samples[("p2pmesh_bids_received_total", ())] == 3
    assert samples[("p2pmesh_awards_received_total", ())] == 1
    assert samples[("p2pmesh_validations_total", (("outcome", "done"),))] == 1
    assert samples[("p2pmesh_replicas", (("state", "lost"),))] == 1
    assert samples[("p2pmesh_gossip_refused_total", (("reason", "rejected"), ("topic", "t")))] == 3
    assert samples[("p2pmesh_container_seconds_total", ())] == 12.5
    assert samples[("p2pmesh_balance_credits", ())] == -3
    assert samples[("p2pmesh_event_queue_depth", ())] == 7
    assert samples[("p2pmesh_stream_errors_total", (("operation", "send"),))] == 1


def test_libp2p_metrics_join_our_registry() -> None:
    m = metrics_mod.libp2p_metrics()
    assert m is metrics_mod.libp2p_metrics()  # once per process
    reg = metrics_mod.make_registry(_view, m)
    names = {f.name for f in text_string_to_metric_families(metrics_mod.exposition(reg).decode())}
    assert {"gossipsub_received", "swarm_dial_attempt", "p2pmesh_peers_connected"} <= names
    json.dumps(sorted(names))
