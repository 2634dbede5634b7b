"""CLI views rendered to plain text at a fixed width."""

from __future__ import annotations

import io
from typing import Any

import pytest
from rich.console import Console, RenderableType
from rich.panel import Panel
from rich.table import Table

from p2pmesh.cli import views
from p2pmesh.cli.views import (
    credits_line,
    dashboard,
    events_panel,
    jobs_panel,
    node_panel,
    peers_table,
    profile_table,
)

NOW = 1_700_000_000.0  # 2023-11-14 22:13:20 UTC

H100 = {"name": "NVIDIA H100", "memory_gb": 80.0}


def render(renderable: RenderableType, width: int = 120) -> str:
    console = Console(file=io.StringIO(), width=width, color_system=None, legacy_windows=False)
    console.print(renderable)
    out = console.file.getvalue()  # type: ignore[attr-defined]
    assert isinstance(out, str)
    return out


def peer(peer_id: str, **over: Any) -> dict[str, Any]:
    p: dict[str, Any] = {
        "peer_id": peer_id,
        "addrs": ["/ip4/127.0.0.1/tcp/4001/p2p/" + peer_id],
        "capabilities": {
            "cpus": 8,
            "ram_gb": 15.63,
            "gpus": [H100],
            "executors": ["docker"],
            "price": 3,
        },
        "reputation": 0.9,
        "last_seen": NOW - 2,
        "connected": True,
    }
    p.update(over)
    return p


def node(**over: Any) -> dict[str, Any]:
    n: dict[str, Any] = {
        "peer_id": "12D3KooWNodeNodeNodeNodeNodeNodeNodeNode1234ABCD",
        "addrs": ["/ip4/127.0.0.1/tcp/4001", "/ip4/192.0.2.7/tcp/4001"],
        "capabilities": peer("x")["capabilities"],
        "started_at": NOW - 3725,
        "peers_connected": 2,
        "peers_known": 5,
        "work": True,
        "record_seq": 7,
    }
    n.update(over)
    return n


# --- peers table --------------------------------------------------------------------------


def test_peer_row_shows_short_id_and_capabilities() -> None:
    table = peers_table([peer("12D3KooWabcdefghijklmnopQRSTUVWX")], NOW)
    assert isinstance(table, Table)
    out = render(table)
    assert "…QRSTUVWX" in out
    assert "12D3KooWabcdefgh" not in out
    assert "127.0.0.1:4001" in out
    assert "15.6 GB" in out
    assert "1× H100 (80 GB)" in out
    assert "docker" in out
    assert "3 cr" in out
    assert "0.90" in out
    assert "2s ago" in out


def test_more_addresses_are_counted() -> None:
    p = peer("p1", addrs=["/ip4/10.0.0.1/tcp/9000", "/ip6/::1/tcp/9001", "/dns4/x/tcp/1"])
    out = render(peers_table([p], NOW))
    assert "10.0.0.1:9000 +2" in out


@pytest.mark.parametrize(
    ("addr", "shown"),
    [
        ("/ip6/::1/tcp/4001/p2p/Qm", "[::1]:4001"),
        ("/dns4/node.example/tcp/443", "node.example:443"),
        ("/ip4/127.0.0.1/udp/4001/quic-v1", "127.0.0.1:4001/udp"),
        ("not a multiaddr", "not a multiaddr"),
    ],
)
def test_compact_addr(addr: str, shown: str) -> None:
    assert views.compact_addr(addr) == shown


@pytest.mark.parametrize(
    ("age", "text"),
    [(0, "0s ago"), (2, "2s ago"), (59.9, "59s ago"), (180, "3m ago"), (7200, "2h ago")],
)
def test_last_seen(age: float, text: str) -> None:
    assert views.ago(NOW - age, NOW) == text
    assert text in render(peers_table([peer("p", last_seen=NOW - age)], NOW))


def test_last_seen_edge_cases() -> None:
    assert views.ago(NOW + 30, NOW) == "0s ago"  # peer clock ahead of ours
    assert views.ago(NOW - 3 * 86400, NOW) == "3d ago"
    assert views.ago(None, NOW) == "—"


def test_gpu_summary_groups_and_none() -> None:
    two = [H100, H100, {"name": "NVIDIA GeForce RTX 3090", "memory_gb": 24.0}]
    assert views.gpus_summary(two) == "2× H100 (80 GB), 1× GeForce RTX 3090 (24 GB)"
    assert views.gpus_summary([{"name": "T4", "memory_gb": 7.5}]) == "1× T4 (7.5 GB)"
    assert views.gpus_summary([]) == "—"
    assert views.gpus_summary(None) == "—"
    no_gpu = peer("p", capabilities={**peer("p")["capabilities"], "gpus": []})
    out = render(peers_table([no_gpu], NOW))
    assert "H100" not in out
    assert "—" in out


def test_sorted_by_reputation_then_peer_id() -> None:
    peers = [
        peer("peer-zzzzzzzC", reputation=0.5),
        peer("peer-bbbbbbbB", reputation=0.9),
        peer("peer-aaaaaaaA", reputation=0.9),
        peer("peer-nnnnnnnN", reputation=None),
        peer("peer-xxxxxxxX", reputation=0.1),
    ]
    out = render(peers_table(peers, NOW))
    order = [out.index(s) for s in ("aaaaaaaA", "bbbbbbbB", "zzzzzzzC", "xxxxxxxX", "nnnnnnnN")]
    assert order == sorted(order)


def test_reputation_is_clamped_and_formatted() -> None:
    out = render(peers_table([peer("p", reputation=1.7), peer("q", reputation=-3)], NOW))
    assert "1.00" in out
    assert "0.00" in out


def test_empty_peers_caption() -> None:
    out = render(peers_table([], NOW))
    flat = " ".join(out.split())
    assert "No peers yet" in flat
    assert "bootstrap" in flat
    assert "mDNS" in flat


def test_missing_optional_fields_do_not_crash() -> None:
    peers: list[Any] = [
        {"peer_id": "only-an-id-here"},
        {},
        {"peer_id": "p2", "capabilities": None, "addrs": None, "reputation": "high"},
        {"peer_id": "p3", "capabilities": {"gpus": [None, "x", {"name": None}], "cpus": True}},
        "not a dict",
        None,
    ]
    out = render(peers_table(peers, NOW))
    assert "…-id-here" in out
    assert "1× GPU" in out
    assert "Peers (4," in out


def test_hostile_strings_are_shown_literally() -> None:
    hostile = peer(
        "12D3KooW[red]x[/red]",
        addrs=["[bold]evil[/bold]"],
        capabilities={
            "cpus": 1,
            "ram_gb": 1.0,
            "gpus": [{"name": "[blink]GPU[/blink]", "memory_gb": 8}],
            "executors": ["[link=http://x]docker[/link]"],
            "price": 1,
        },
    )
    out = render(peers_table([hostile], NOW), width=200)
    assert "[bold]evil[/bold]" in out
    assert "[blink]GPU[/blink]" in out
    assert "[link=http://x]" in out
    assert "…]x[/red]" in out


def test_control_characters_are_neutralised() -> None:
    evil = "\x1b[2J\x1b]0;pwned\x07name\u202eevil\nrow"
    out = render(peers_table([peer("p", addrs=[evil])], NOW), width=200)
    assert "\x1b" not in out
    assert "\u202e" not in out
    assert "\x07" not in out
    assert "\ufffd" in out
    out = render(events_panel([{"ts": NOW, "level": "info", "msg": evil}]), width=200)
    assert "\x1b" not in out
    assert "pwned" in out


def test_long_strings_are_cut() -> None:
    out = render(
        peers_table([peer("p", capabilities={"gpus": [{"name": "G" * 5000}]})], NOW), width=400
    )
    assert "G" * 100 not in out


# --- node panel ---------------------------------------------------------------------------


def test_node_panel() -> None:
    panel = node_panel(node(), NOW)
    assert isinstance(panel, Panel)
    out = render(panel)
    assert "12D3KooWNodeNodeNodeNodeNodeNodeNodeNode1234ABCD" in out
    assert "/ip4/127.0.0.1/tcp/4001" in out
    assert "/ip4/192.0.2.7/tcp/4001" in out
    assert "1h 02m" in out
    assert "2 connected, 5 known" in out
    assert "8 CPUs" in out
    assert "15.6 GB RAM" in out
    assert "1× H100 (80 GB)" in out
    assert "3 cr/job" in out
    assert "Record seq" in out and "7" in out


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(5, "5s"), (65, "1m 05s"), (3725, "1h 02m"), (90061, "1d 01h"), (-4, "0s")],
)
def test_uptime(seconds: float, text: str) -> None:
    assert views.duration(seconds) == text


def test_node_panel_minimal_and_hostile() -> None:
    out = render(node_panel({"peer_id": "[red]me[/red]", "work": False}, NOW))
    assert "[red]me[/red]" in out
    assert "off" in out
    out = render(node_panel({}, NOW))
    assert "Uptime" in out


# --- events -------------------------------------------------------------------------------


def test_events_newest_last_in_utc() -> None:
    events = [
        {"ts": NOW, "level": "error", "msg": "third"},
        {"ts": NOW - 20, "level": "info", "msg": "first"},
        {"ts": NOW - 10, "level": "warning", "msg": "second"},
    ]
    out = render(events_panel(events))
    assert out.index("first") < out.index("second") < out.index("third")
    assert "22:13:20" in out
    assert "22:13:00" in out
    assert "warning" in out and "error" in out


def test_events_limit_keeps_newest() -> None:
    events = [{"ts": NOW + i, "level": "info", "msg": f"event-{i:02d}"} for i in range(25)]
    out = render(events_panel(events, limit=10))
    assert "event-14" not in out
    assert "event-15" in out and "event-24" in out


def test_events_empty_and_garbage() -> None:
    assert "no events yet" in render(events_panel([]))
    out = render(
        events_panel([{"msg": "[red]raw[/red]", "level": "bogus"}, "junk", {"ts": "x"}])  # type: ignore[list-item]
    )
    assert "[red]raw[/red]" in out
    assert "--:--:--" in out


# --- dashboard ----------------------------------------------------------------------------


def test_dashboard_has_all_three_parts() -> None:
    snap = {
        "node": node(),
        "peers": [peer("12D3KooWpeerpeerONEONEON")],
        "events": [{"ts": NOW, "level": "info", "msg": "joined the DHT"}],
    }
    out = render(dashboard(snap, NOW))
    assert out.index("p2pmesh node") < out.index("Peers (1, 1 connected)") < out.index("Events")
    assert "…NEONEON" in out or "…ONEONEON" in out
    assert "joined the DHT" in out


def test_dashboard_of_empty_snapshot() -> None:
    out = render(dashboard({}, NOW))
    assert "No peers yet" in out
    assert "no events yet" in out


# --- profile (up --check) -----------------------------------------------------------------


PROFILE = {
    "cpus_logical": 16,
    "cpus_physical": 8,
    "ram_mb": 64000,
    "ram_available_mb": 32000,
    "disk_free_mb": 100000,
    "load_1m": 0.25,
    "gpus": [
        {
            "index": 0,
            "name": "NVIDIA H100 80GB HBM3",
            "memory_mb": 81559,
            "driver": "550.54.15",
            "compute_capability": "9.0",
            "uuid": "GPU-1",
        }
    ],
    "gpu_note": "1 NVIDIA GPU(s), driver 550.54.15",
    "executors": ["docker"],
    "executor_problems": [],
    "os": "Linux",
    "arch": "x86_64",
    "python": "3.11.7",
}


def test_profile_table_ready() -> None:
    out = render(profile_table(PROFILE, []))
    assert "16 logical, 8 physical" in out
    assert "62.5 GB total" in out
    assert "H100 80GB HBM3" in out and "compute 9.0" in out and "80 GB" in out
    assert "docker" in out
    assert "Ready to do work." in out


def test_profile_table_not_ready() -> None:
    problem = "no executor: Docker engine not reachable ([x]); install docker.io and start dockerd"
    prof = {
        **PROFILE,
        "gpus": [],
        "gpu_note": "no NVIDIA GPU: NVML unavailable (Driver Not Loaded)",
        "executors": [],
        "executor_problems": ["Docker engine not reachable: [x]"],
    }
    out = render(profile_table(prof, [problem]))
    assert "Driver Not Loaded" in out
    assert "Not ready to do work" in out
    assert problem in out


def test_profile_table_with_real_profile(tmp_path: Any) -> None:
    from p2pmesh.adapters.hardware import profile, profile_to_dict, readiness

    p = profile(tmp_path, check_docker=False)
    out = render(profile_table(profile_to_dict(p), readiness(p, work_enabled=True)))
    assert "Not ready to do work" in out
    assert render(profile_table({}, []))


def test_theme_holds_every_style() -> None:
    for key in ("info", "warning", "error", "good", "fair", "poor", "peer_id", "border"):
        assert key in views.THEME


# --- jobs, credits and the compact live view (issue 16 item 4) ------------------------------


def _job(i: int, role: str, state: str, **over: Any) -> dict[str, Any]:
    j: dict[str, Any] = {
        "job_id": f"{i:02d}" + "ab" * 15,
        "role": role,
        "name": f"word-count-{i}",
        "image": "p2pmesh/busybox:1",
        "state": state,
        "created_at": NOW - 100 * i if role == "requester" else None,
        "finished_at": None,
        "running_s": 12.0 if role == "worker" and state == "running" else None,
    }
    j.update(over)
    return j


def _busy_snapshot(n: int) -> dict[str, Any]:
    return {
        "node": node(http="http://127.0.0.1:8484/"),
        "peers": [peer(f"12D3KooWpeer{i:03d}xxxxxxxxxxxxxxxx") for i in range(n)],
        "jobs": [_job(i, "worker" if i % 2 else "requester", "running") for i in range(n)]
        + [_job(99, "requester", "done", finished_at=NOW - 30)],
        "balance": {"balance": -3, "earned": 4, "spent": 7, "pending": 1, "credit_limit": 100},
        "events": [
            {"ts": NOW - i, "level": "warning", "msg": f"event-{i} " * 20} for i in range(n)
        ],
    }


@pytest.mark.parametrize("n", [0, 1, 3, 50])
def test_live_view_fits_80x24(n: int) -> None:
    console = Console(
        file=io.StringIO(), width=80, height=24, color_system=None, legacy_windows=False
    )
    console.print(dashboard(_busy_snapshot(n), NOW, width=80, height=24))
    lines = console.file.getvalue().splitlines()  # type: ignore[attr-defined]
    assert len(lines) <= 23, "\n".join(lines)  # one spare line: the live view never scrolls
    assert max(len(line) for line in lines) <= 80
    out = "\n".join(lines)
    assert "Credits -3 cr" in out and "earned 4" in out and "spent 7" in out
    assert "Jobs:" in out and "Peers (" in out and "Events" in out
    if n >= 3:
        # The jobs panel: running work first, with state and elapsed time; cut rows counted.
        assert "runs" in out and "running" in out and "12s" in out
        assert "asked" in out
    if n == 50:
        assert "more)" in out
        assert "warning: event-" in out  # a warning reads as one without colours


def test_jobs_panel_orders_and_times() -> None:
    jobs = [
        _job(1, "requester", "done", created_at=NOW - 100, finished_at=NOW - 40),
        _job(2, "requester", "bidding", created_at=NOW - 20),
        _job(3, "worker", "running", running_s=75.0),
        _job(4, "worker", "reported"),
    ]
    out = render(jobs_panel(jobs, NOW), width=100)
    rows = [line for line in out.splitlines() if "word-count" in line]
    # Work run here, then jobs requested here; in each the active ones first.
    assert [r.split()[2][:2] for r in rows] == ["03", "04", "02", "01"]
    assert "1m 15s" in rows[0] and "20s" in rows[2] and "1m 00s" in rows[3]
    assert "1 running here, 1 requested here" in out
    assert "no jobs yet" in render(jobs_panel([], NOW))


def test_jobs_and_credits_escape_hostile_text() -> None:
    jobs = [_job(1, "worker", "running", name="[red]x\x1b[2Jy", image="\u202eevil")]
    out = render(jobs_panel(jobs, NOW))
    assert "[red]x" in out and "\x1b" not in out and "\u202e" not in out
    assert render(credits_line({"balance": "lots"})).startswith("— cr")
    assert render(credits_line(None)).strip() == "—"


def test_status_shows_jobs_and_credits_when_wide() -> None:
    out = render(dashboard(_busy_snapshot(2), NOW, width=140), width=140)
    assert "Credits  -3 cr" in out and "Jobs:" in out and "Address" in out  # the wide table
    narrow = render(dashboard(_busy_snapshot(2), NOW, width=80), width=80)
    assert "Address" not in narrow and max(len(x) for x in narrow.splitlines()) <= 80


def test_cache_summary_says_use_limit_entries_and_hits() -> None:
    cache = {
        "used_bytes": 3 * (1 << 20),
        "limit_bytes": 10 * (1 << 30),
        "entries": 3,
        "by_kind": {"image": 1, "input": 2},
        "hits": 4,
        "misses": 1,
        "evicted": 0,
    }
    assert views.cache_summary(cache) == (
        "3.0 MiB of 10.0 GiB, 3 entries (1 image, 2 input), 4 hit(s), 1 miss(es)"
    )
    assert views.cache_summary(None) == "" and views.cache_summary({"used_bytes": "x"}) == ""
    text = render(node_panel({**node(), "cache": cache}, NOW))
    assert "Cache" in text and "3.0 MiB of 10.0 GiB" in text
