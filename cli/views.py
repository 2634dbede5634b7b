"""Pure views: snapshot dicts in, rich renderables out.

Used by ``p2pmesh peers``, the live TUI of ``p2pmesh up``, ``p2pmesh id`` and
``p2pmesh up --check``. Nothing here does I/O or reads a clock: the caller passes ``now`` (unix
seconds), so a view renders the same text for the same input and tests can pin it.

Every string in a snapshot may come from another peer (addresses, GPU names, executor names) and so
is hostile. It is therefore always wrapped in :class:`rich.text.Text`, never handed to rich as a
markup string, so ``"[red]"`` shows literally; control and format characters (ESC sequences, bidi
overrides, newlines) are replaced so they cannot repaint the terminal or break a table row; long
strings are cut. Fields may be missing or of the wrong type: views show "—" rather than crash.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from rich import box
from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

__all__ = [
    "THEME",
    "credits_line",
    "dashboard",
    "events_panel",
    "jobs_panel",
    "node_panel",
    "peers_table",
    "profile_table",
]

# Every style the views use. Kept to plain colour names so a 16-colour terminal looks right too.
THEME: dict[str, str] = {
    "title": "bold",
    "border": "blue",
    "label": "bold",
    "peer_id": "cyan",
    "addr": "",
    "muted": "dim",
    "connected": "green",
    "disconnected": "dim",
    "good": "green",
    "fair": "yellow",
    "poor": "red",
    "info": "",
    "warning": "yellow",
    "error": "bold red",
    "time": "dim",
    "ready": "bold green",
    "not_ready": "bold red",
}

NONE = "—"

# Reputation bands for colour only; the auction uses the number itself.
GOOD_REPUTATION = 0.8
FAIR_REPUTATION = 0.5

# Caps on text from peers: a record is size-limited on the wire, but one 4 kB "GPU name" would still
# push every other column off the screen.
_MAX_FIELD = 48
_MAX_MESSAGE = 300

SHORT_ID_CHARS = 8

EMPTY_PEERS_CAPTION = (
    "No peers yet. Peers are found through bootstrap peers (--bootstrap, the config file, "
    "the bootstrap/ list) and mDNS on the local network (unless --no-mdns)."
)


# --- sanitising and formatting helpers ------------------------------------------------------


def _safe(value: Any, limit: int = _MAX_FIELD) -> str:
    """Printable one-line text from anything; control/format characters become U+FFFD."""
    text = value if isinstance(value, str) else str(value)
    out = "".join(
        "\ufffd" if unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp") else ch for ch in text
    )
    return out if len(out) <= limit else out[: limit - 1] + "…"


def _text(value: Any, style: str = "", limit: int = _MAX_FIELD) -> Text:
    if value is None or value == "":
        return Text(NONE, style=THEME["muted"])
    return Text(_safe(value, limit), style=style)


def _peer_cell(p: dict[str, Any]) -> Text:
    """A peer's short ID with its connection mark, as both peer tables show it."""
    is_on = p.get("connected") is True
    peer = Text("● " if is_on else "○ ", style=THEME["connected" if is_on else "disconnected"])
    peer.append(short_id(p.get("peer_id")), style=THEME["peer_id"])
    return peer


def _map(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else []


def _num(value: Any) -> float | None:
    # bool is an int subclass; a True "cpus" is garbage, not 1.
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if value != value or value in (float("inf"), float("-inf")):
        return None
    return float(value)


def _int(value: Any) -> int | None:
    n = _num(value)
    return None if n is None else int(n)


def short_id(peer_id: Any) -> str:
    """``…`` and the last 8 characters: the tail of a base58 peer ID is the distinctive part."""
    pid = _safe(peer_id or "", limit=1000)
    return pid if len(pid) <= SHORT_ID_CHARS else "…" + pid[-SHORT_ID_CHARS:]


def compact_addr(addr: Any) -> str:
    """``/ip4/1.2.3.4/tcp/4001/p2p/…`` → ``1.2.3.4:4001``; anything else is shown as given."""
    raw = _safe(addr, limit=1000)
    parts = raw.split("/")
    if len(parts) >= 5 and parts[0] == "" and parts[3] in ("tcp", "udp"):
        proto, host, port = parts[1], parts[2], parts[4]
        if proto == "ip6":
            host = f"[{host}]"
        if proto in ("ip4", "ip6", "dns", "dns4", "dns6") and port.isdigit():
            suffix = "" if parts[3] == "tcp" else "/udp"
            return _safe(f"{host}:{port}{suffix}")
    return _safe(raw)


def _addrs_cell(addrs: Any) -> Text:
    items = [a for a in _list(addrs) if a]
    if not items:
        return Text(NONE, style=THEME["muted"])
    cell = Text(compact_addr(items[0]), style=THEME["addr"])
    if len(items) > 1:
        cell.append(f" +{len(items) - 1}", style=THEME["muted"])
    return cell


def _gb(value: float) -> str:
    # Big numbers read better whole ("80 GB"); small ones keep a decimal ("7.5 GB").
    if value >= 10:
        return f"{round(value):d} GB"
    return f"{value:.1f} GB"


def _ram(value: Any) -> str:
    n = _num(value)
    return NONE if n is None else f"{n:.1f} GB"


def _gpu_name(name: Any) -> str:
    text = _safe(name or "GPU")
    # Every GPU NVML reports is NVIDIA's; the prefix only costs width.
    return text.removeprefix("NVIDIA ").strip() or "GPU"


def gpus_summary(gpus: Any) -> str:
    """``2× H100 (80 GB)``, groups joined by ``, ``; ``—`` when there are none."""
    groups: dict[tuple[str, str], int] = {}
    for gpu in _list(gpus):
        g = _map(gpu)
        if not g:
            continue
        mem = _num(g.get("memory_gb"))
        key = (_gpu_name(g.get("name")), "" if mem is None else f" ({_gb(mem)})")
        groups[key] = groups.get(key, 0) + 1
    if not groups:
        return NONE
    return ", ".join(f"{n}× {name}{mem}" for (name, mem), n in groups.items())


def _executors(value: Any) -> str:
    names = [_safe(x, 16) for x in _list(value) if x]
    return ", ".join(names) if names else NONE


def _price(value: Any) -> str:
    n = _int(value)
    return NONE if n is None else f"{n} cr"


def _reputation_cell(value: Any) -> Text:
    r = _num(value)
    if r is None:
        return Text(NONE, style=THEME["muted"])
    r = min(1.0, max(0.0, r))
    if r >= GOOD_REPUTATION:
        style = THEME["good"]
    elif r >= FAIR_REPUTATION:
        style = THEME["fair"]
    else:
        style = THEME["poor"]
    return Text(f"{r:.2f}", style=style)


def ago(then: Any, now: float) -> str:
    """``2s ago``, ``3m ago``, ``5h ago``, ``2d ago``; ``—`` when unknown."""
    t = _num(then)
    if t is None:
        return NONE
    # A peer's clock may run ahead of ours; "in the future" would only confuse.
    age = max(0, int(now - t))
    if age < 60:
        return f"{age}s ago"
    if age < 3600:
        return f"{age // 60}m ago"
    if age < 86400:
        return f"{age // 3600}h ago"
    return f"{age // 86400}d ago"


def duration(seconds: Any) -> str:
    """``45s``, ``3m 05s``, ``2h 03m``, ``4d 01h``."""
    s = _num(seconds)
    if s is None:
        return NONE
    total = max(0, int(s))
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours:02d}h"
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


def _clock(ts: Any) -> str:
    t = _num(ts)
    if t is None:
        return "--:--:--"
    try:
        return datetime.fromtimestamp(t, tz=UTC).strftime("%H:%M:%S")
    except (OverflowError, OSError, ValueError):
        return "--:--:--"


def capability_summary(caps: Any) -> str:
    """One line: ``8 CPUs · 15.6 GB RAM · 1× H100 (80 GB) · docker · 3 cr/job``."""
    c = _map(caps)
    cpus = _int(c.get("cpus"))
    parts = [
        f"{NONE if cpus is None else cpus} CPUs",
        f"{_ram(c.get('ram_gb'))} RAM",
        f"GPUs {gpus_summary(c.get('gpus'))}",
        f"executors {_executors(c.get('executors'))}",
        f"{_price(c.get('price'))}/job",
    ]
    return " · ".join(parts)


# --- views ----------------------------------------------------------------------------------


def _sort_key(peer: Mapping[str, Any]) -> tuple[float, str]:
    r = _num(peer.get("reputation"))
    # Best first; a peer with no reputation yet sorts after every scored one.
    return (-(r if r is not None else -1.0), str(peer.get("peer_id", "")))


def peers_table(peers: list[dict], now: float) -> Table:
    """The peer list: one row per peer, best reputation first, then by peer ID.

    Args:
        peers: dicts as ``p2pmesh peers --json`` prints them (DESIGN.md §5).
        now: unix seconds, for "last seen".
    """
    rows = sorted((p for p in _list(peers) if isinstance(p, Mapping)), key=_sort_key)
    connected = sum(1 for p in rows if p.get("connected") is True)
    table = Table(
        title=Text(f"Peers ({len(rows)}, {connected} connected)", style=THEME["title"]),
        box=box.SIMPLE_HEAD,
        header_style=THEME["label"],
        expand=False,
    )
    table.add_column("Peer", no_wrap=True)
    table.add_column("Address", no_wrap=True, overflow="ellipsis", max_width=30)
    table.add_column("CPUs", justify="right")
    table.add_column("RAM", justify="right", no_wrap=True)
    table.add_column("GPUs", overflow="fold", max_width=28)
    table.add_column("Executors", overflow="fold", max_width=16)
    table.add_column("Price", justify="right", no_wrap=True)
    table.add_column("Rep.", justify="right")
    table.add_column("Last seen", justify="right", no_wrap=True)
    if not rows:
        table.caption = Text(EMPTY_PEERS_CAPTION, style=THEME["muted"])
        return table
    for p in rows:
        caps = _map(p.get("capabilities"))
        peer = _peer_cell(p)
        cpus = _int(caps.get("cpus"))
        table.add_row(
            peer,
            _addrs_cell(p.get("addrs")),
            Text(NONE if cpus is None else str(cpus)),
            Text(_ram(caps.get("ram_gb"))),
            Text(gpus_summary(caps.get("gpus"))),
            Text(_executors(caps.get("executors"))),
            Text(_price(caps.get("price"))),
            _reputation_cell(p.get("reputation")),
            Text(ago(p.get("last_seen"), now), style=THEME["time"]),
        )
    return table


def _kv_grid(rows: Iterable[tuple[str, RenderableType]]) -> Table:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style=THEME["label"], no_wrap=True)
    grid.add_column(overflow="fold")
    for label, value in rows:
        grid.add_row(Text(label), value)
    return grid


def node_panel(node: dict, now: float) -> Panel:
    """This node: full peer ID, listen addresses, uptime, peers and capability summary."""
    n = _map(node)
    addrs = [_safe(a, 200) for a in _list(n.get("addrs")) if a]
    started = _num(n.get("started_at"))
    uptime = NONE if started is None else duration(now - started)
    connected, known = _int(n.get("peers_connected")), _int(n.get("peers_known"))
    peers = f"{NONE if connected is None else connected} connected, "
    peers += f"{NONE if known is None else known} known"
    work = n.get("work")
    seq = _int(n.get("record_seq"))
    shed = _shed_summary(_map(n.get("net")).get("shed"))
    refused = _int(_map(n.get("net")).get("psk_refused"))
    rows = [
        ("Peer ID", _text(n.get("peer_id"), THEME["peer_id"], 200)),
        ("Addresses", Text("\n".join(addrs)) if addrs else _text(None)),
        ("Uptime", Text(uptime)),
        ("Peers", Text(peers)),
        ("Capabilities", Text(capability_summary(n.get("capabilities")))),
        ("Work", Text("on" if work is True else "off" if work is False else NONE)),
        ("Record seq", Text(NONE if seq is None else str(seq))),
        ("HTTP", _text(n.get("http") or "off", limit=200)),
        ("Private", Text(private_summary(n.get("private"), n.get("swarm_key_fingerprint")))),
        ("Reachable", Text(reachability_summary(n.get("nat")))),
    ]
    if refused:
        rows.append(("Refused", Text(f"{refused} connection(s) without the swarm key")))
    if shed:
        # Network input dropped under flood (the node's own events never are).
        rows.append(("Shed", Text(shed, style=THEME["warning"])))
    declines = declines_summary(n.get("declines"))
    if declines:
        rows.append(("Not bidding", Text(declines)))
    cache = cache_summary(n.get("cache"))
    if cache:
        rows.append(("Cache", Text(cache)))
    grid = _kv_grid(rows)
    return Panel(
        grid,
        title=Text("p2pmesh node", style=THEME["title"]),
        title_align="left",
        border_style=THEME["border"],
    )


def _size(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def cache_summary(cache: Any) -> str:
    """``1.2 GiB of 10.0 GiB, 7 entries (2 image, 5 input), 3 hits, 1 miss``; "" if unknown."""
    c = _map(cache)
    used, limit, entries = (
        _int(c.get("used_bytes")),
        _int(c.get("limit_bytes")),
        _int(c.get("entries")),
    )
    if used is None or limit is None or entries is None:
        return ""
    kinds = _map(c.get("by_kind"))
    split = ", ".join(f"{_int(v)} {_safe(k, 12)}" for k, v in sorted(kinds.items()) if _int(v))
    line = f"{_size(used)} of {_size(limit)}, {entries} entries"
    if split:
        line += f" ({split})"
    hits, misses = _int(c.get("hits")) or 0, _int(c.get("misses")) or 0
    line += f", {hits} hit(s), {misses} miss(es)"
    evicted = _int(c.get("evicted")) or 0
    if evicted:
        line += f", {evicted} evicted"
    return line


def declines_summary(declines: Any) -> str:
    """Offers this worker did not bid on, by reason, most first: ``3 image not allowed, 1
    busy``."""
    counts = [(_safe(k, 60), _int(v) or 0) for k, v in _map(declines).items()]
    counts = [kv for kv in counts if kv[1] > 0]
    counts.sort(key=lambda kv: (-kv[1], kv[0]))
    return ", ".join(f"{v} {k}" for k, v in counts)


def reachability_summary(nat: Any) -> str:
    """``private, via relay 12D3…abcd; relaying off; 1 direct, 2 relayed``: what the node
    learned from dial-backs (AutoNAT), its relay service, and how its peers are connected."""
    m = _map(nat)
    if not m:
        return NONE
    state = _safe(_map(m.get("reachability")).get("state"), 16) or NONE
    parts = [state]
    relays = [_safe(r, 64) for r in _map(m.get("relays"))]
    if relays:
        parts[0] += ", via relay " + ", ".join(short_id(r) for r in relays[:2])
    service = _map(m.get("relay_service"))
    if service.get("on") is True:
        held = _int(service.get("reservations_held")) or 0
        parts.append(f"relaying for others ({held} reservation{'s' if held != 1 else ''})")
    else:
        parts.append("relaying off" + (" (--no-relay)" if m.get("relay_mode") == "off" else ""))
    kinds = [v for v in _map(m.get("connections")).values() if v in ("direct", "relayed")]
    if kinds:
        parts.append(f"{kinds.count('direct')} direct, {kinds.count('relayed')} relayed")
    return "; ".join(parts)


def private_summary(private: Any, fingerprint: Any) -> str:
    """``yes (swarm key fingerprint …)`` / ``no``: the fingerprint, never the key."""
    if private is True:
        fp = _safe(fingerprint, 64) if isinstance(fingerprint, str) else NONE
        return f"yes (swarm key fingerprint {fp})"
    return "no" if private is False else NONE


def _shed_summary(shed: Any) -> str:
    counts = [(str(k), _int(v)) for k, v in _map(shed).items()]
    return ", ".join(f"{_safe(k, 60)} {v}" for k, v in sorted(counts) if v)


def events_panel(events: list[dict], limit: int = 10) -> Panel:
    """The last ``limit`` events, oldest first and newest last, times in UTC."""
    items = [e for e in _list(events) if isinstance(e, Mapping)]
    # Stable sort: events with equal timestamps keep the order the daemon logged them in.
    items.sort(key=lambda e: _num(e.get("ts")) or 0.0)
    items = items[-limit:] if limit > 0 else []
    if not items:
        body: RenderableType = Text("no events yet", style=THEME["muted"])
    else:
        grid = Table.grid(padding=(0, 1))
        grid.add_column(no_wrap=True)
        grid.add_column(no_wrap=True)
        grid.add_column(overflow="fold")
        for e in items:
            level = e.get("level") if e.get("level") in ("info", "warning", "error") else "info"
            grid.add_row(
                Text(_clock(e.get("ts")), style=THEME["time"]),
                Text(f"{level:<7}", style=THEME[level]),
                Text(_safe(e.get("msg", ""), _MAX_MESSAGE), style=THEME[level]),
            )
        body = grid
    return Panel(
        body,
        title=Text("Events (UTC)", style=THEME["title"]),
        title_align="left",
        border_style=THEME["border"],
    )


# --- jobs and credits -------------------------------------------------------------------------

# Requester states after which nothing more happens; a worker's job ends once reported.
REQUESTER_FINAL = frozenset({"done", "failed", "timeout", "cancelled", "no-bids", "inconclusive"})
WORKER_FINAL = frozenset({"reported", "cancelled", "expired"})


def job_active(job: Mapping[str, Any]) -> bool:
    final = REQUESTER_FINAL if job.get("role") == "requester" else WORKER_FINAL
    return job.get("state") not in final


def job_elapsed(job: Mapping[str, Any], now: float) -> float | None:
    """A requested job: since it was offered (until it ended); a job run here: its
    container's time so far (``running_s``), when one runs."""
    if job.get("role") != "requester":
        return _num(job.get("running_s"))
    created = _num(job.get("created_at"))
    if created is None:
        return None
    end = _num(job.get("finished_at")) if not job_active(job) else None
    return max(0.0, (end or now) - created)


def _pick_jobs(jobs: Any, limit: int) -> tuple[list[Mapping[str, Any]], int]:
    """Up to ``limit`` rows, shared between the jobs run here and those requested here (one
    role's unused share goes to the other); in each, the active ones first, then the most
    recent. Also: how many did not fit."""
    items = [j for j in _list(jobs) if isinstance(j, Mapping)]

    def order(role_jobs: list[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
        def when(j: Mapping[str, Any]) -> float:
            return _num(j.get("finished_at")) or _num(j.get("created_at")) or 0.0

        # Newest first; worker documents carry no time, so their list order (newest last).
        indexed = list(enumerate(role_jobs))
        indexed.sort(key=lambda ij: (not job_active(ij[1]), -when(ij[1]), -ij[0]))
        return [j for _, j in indexed]

    run = order([j for j in items if j.get("role") != "requester"])
    asked = order([j for j in items if j.get("role") == "requester"])
    limit = max(0, limit)
    n_run = min(len(run), (limit + 1) // 2)
    n_asked = min(len(asked), limit - n_run)
    n_run = min(len(run), limit - n_asked)
    chosen = run[:n_run] + asked[:n_asked]
    return chosen, len(items) - len(chosen)


def jobs_panel(jobs: Any, now: float, limit: int = 8) -> Panel:
    """Jobs running here and requested here: state and elapsed time, the active ones first."""
    items = [j for j in _list(jobs) if isinstance(j, Mapping)]
    running = sum(1 for j in items if j.get("role") != "requester" and job_active(j))
    asked = sum(1 for j in items if j.get("role") == "requester" and job_active(j))
    chosen, hidden = _pick_jobs(items, limit)
    title = Text(f"Jobs: {running} running here, {asked} requested here", style=THEME["title"])
    if hidden:
        title.append(f" (+{hidden} more)", style=THEME["muted"])
    if not chosen:
        body: RenderableType = Text("no jobs yet", style=THEME["muted"])
    else:
        grid = Table.grid(padding=(0, 1))
        grid.add_column(no_wrap=True)  # role
        grid.add_column(no_wrap=True, style=THEME["peer_id"])  # job id
        grid.add_column(no_wrap=True, overflow="ellipsis", max_width=22)  # name
        grid.add_column(no_wrap=True, overflow="ellipsis", max_width=14)  # state
        grid.add_column(no_wrap=True, justify="right")  # elapsed
        grid.add_column(no_wrap=True, overflow="ellipsis")  # image
        for j in chosen:
            is_req = j.get("role") == "requester"
            state = _safe(j.get("state"), 14)
            style = (
                THEME["good"]
                if state == "done"
                else THEME["poor"]
                if state in ("failed", "timeout", "no-bids", "inconclusive")
                else ""
            )
            took = job_elapsed(j, now)
            grid.add_row(
                Text("asked" if is_req else "runs", style=THEME["label"]),
                Text(_safe(j.get("job_id"), 200)[:8]),
                Text(_safe(j.get("name") or NONE, 22)),
                Text(state, style=style),
                Text(NONE if took is None else duration(took), style=THEME["time"]),
                Text(_safe(j.get("image"), 40), style=THEME["muted"]),
            )
        body = grid
    return Panel(body, title=title, title_align="left", border_style=THEME["border"])


def credits_line(balance: Any) -> Text:
    """``7 cr  (earned 9, spent 2, pending 0; may go to -100)``."""
    b = _map(balance)
    if not b:
        return Text(NONE)

    def n(key: str) -> str:
        v = _int(b.get(key))
        return NONE if v is None else str(v)

    bal = _int(b.get("balance"))
    t = Text(f"{n('balance')} cr", style=THEME["poor"] if bal is not None and bal < 0 else "")
    t.append(
        f"  earned {n('earned')} · spent {n('spent')} · pending {n('pending')}"
        f" · limit -{n('credit_limit')}",
        style=THEME["muted"],
    )
    return t


# --- the compact live view (80×24 and up) -------------------------------------------------------

COMPACT_WIDTH = 110  # below this the wide peers table wraps its cells; the compact one does not


def _compact_node(n: Mapping[str, Any], balance: Any, now: float) -> Panel:
    started = _num(n.get("started_at"))
    connected, known = _int(n.get("peers_connected")), _int(n.get("peers_known"))
    work = n.get("work")
    line = Text(f"up {NONE if started is None else duration(now - started)}")
    line.append(
        f" · peers {NONE if connected is None else connected}/{NONE if known is None else known}"
    )
    line.append(f" · work {'on' if work is True else 'off' if work is False else NONE}")
    shed = _shed_summary(_map(n.get("net")).get("shed"))
    if shed:
        line.append(f" · shed {shed}", style=THEME["warning"])
    rows = [
        ("Peer ID", _text(n.get("peer_id"), THEME["peer_id"], 200)),
        ("Node", line),
        ("Credits", credits_line(balance)),
        ("HTTP", _text(n.get("http") or "off", limit=200)),
    ]
    grid = Table.grid(padding=(0, 1))
    grid.add_column(style=THEME["label"], no_wrap=True)
    grid.add_column(no_wrap=True, overflow="ellipsis")
    for label, value in rows:
        grid.add_row(Text(label), value)
    return Panel(
        grid,
        title=Text("p2pmesh node", style=THEME["title"]),
        title_align="left",
        border_style=THEME["border"],
    )


def _compact_peers(peers: Any, now: float, limit: int) -> Table:
    rows = sorted((p for p in _list(peers) if isinstance(p, Mapping)), key=_sort_key)
    connected = sum(1 for p in rows if p.get("connected") is True)
    shown = rows[: max(0, limit)]
    title = Text(f"Peers ({len(rows)}, {connected} connected)", style=THEME["title"])
    if len(rows) > len(shown):
        title.append(f" (+{len(rows) - len(shown)} more)", style=THEME["muted"])
    table = Table(
        title=title,
        box=box.SIMPLE_HEAD,
        show_edge=False,
        header_style=THEME["label"],
        pad_edge=False,
        expand=False,
    )
    table.add_column("Peer", no_wrap=True)
    table.add_column("CPUs", justify="right", no_wrap=True)
    table.add_column("RAM", justify="right", no_wrap=True)
    table.add_column("GPUs", no_wrap=True, overflow="ellipsis", max_width=22)
    table.add_column("Price", justify="right", no_wrap=True)
    table.add_column("Rep.", justify="right", no_wrap=True)
    table.add_column("Seen", justify="right", no_wrap=True)
    for p in shown:
        caps = _map(p.get("capabilities"))
        peer = _peer_cell(p)
        cpus = _int(caps.get("cpus"))
        table.add_row(
            peer,
            Text(NONE if cpus is None else str(cpus)),
            Text(_ram(caps.get("ram_gb"))),
            Text(gpus_summary(caps.get("gpus"))),
            Text(_price(caps.get("price"))),
            _reputation_cell(p.get("reputation")),
            Text(ago(p.get("last_seen"), now), style=THEME["time"]),
        )
    if not rows:
        table.add_row(Text("none yet: see --bootstrap, mDNS", style=THEME["muted"]))
    return table


def _compact_events(events: Any, limit: int) -> Panel:
    items = [e for e in _list(events) if isinstance(e, Mapping)]
    items.sort(key=lambda e: _num(e.get("ts")) or 0.0)
    items = items[-limit:] if limit > 0 else []
    grid = Table.grid(padding=(0, 1))
    grid.add_column(no_wrap=True, min_width=8)
    grid.add_column(no_wrap=True, overflow="ellipsis")
    for e in items:
        level = e.get("level") if e.get("level") in ("info", "warning", "error") else "info"
        # Without colours a warning must still read as one.
        prefix = "" if level == "info" else f"{level}: "
        msg = Text(prefix + _safe(e.get("msg", ""), _MAX_MESSAGE), style=THEME[level])
        grid.add_row(Text(_clock(e.get("ts")), style=THEME["time"]), msg)
    body: RenderableType = grid if items else Text("no events yet", style=THEME["muted"])
    return Panel(
        body,
        title=Text("Events (UTC)", style=THEME["title"]),
        title_align="left",
        border_style=THEME["border"],
    )


def compact_dashboard(snapshot: Mapping[str, Any], now: float, height: int) -> Group:
    """The live view for a small terminal: everything fits in ``height`` lines (24 and up),
    no cell wraps at 80 columns; rows that do not fit are counted ("+N more")."""
    s = _map(snapshot)
    peers = [p for p in _list(s.get("peers")) if isinstance(p, Mapping)]
    jobs = [j for j in _list(s.get("jobs")) if isinstance(j, Mapping)]
    events = [e for e in _list(s.get("events")) if isinstance(e, Mapping)]
    # Fixed lines: node panel 6, jobs panel borders 2, peers title + header + rule 3, events
    # panel borders 2; one spare line so that the live view never scrolls the terminal.
    free = max(3, height - 6 - 2 - 3 - 2 - 1)
    want = {"jobs": max(1, len(jobs)), "peers": max(1, len(peers)), "events": max(1, len(events))}
    share = {k: 1 for k in want}
    free -= 3
    # Hand out the rest a line at a time: jobs, then peers, then events, each up to its need.
    while free > 0 and any(share[k] < want[k] for k in want):
        for k in ("jobs", "peers", "events"):
            if free > 0 and share[k] < want[k]:
                share[k] += 1
                free -= 1
    if free > 0:
        share["events"] += free
    return Group(
        _compact_node(_map(s.get("node")), s.get("balance"), now),
        jobs_panel(jobs, now, limit=share["jobs"]),
        _compact_peers(peers, now, share["peers"]),
        _compact_events(events, share["events"]),
    )


def dashboard(
    snapshot: dict, now: float, *, width: int | None = None, height: int | None = None
) -> Group:
    """The view of ``p2pmesh up`` and ``p2pmesh status``: node panel with credits, jobs, peers,
    recent events. Given a terminal ``height`` (the live view), or a ``width`` under
    ``COMPACT_WIDTH``, the compact layout that fits the screen."""
    s = _map(snapshot)
    if height is not None or (width is not None and width < COMPACT_WIDTH):
        return compact_dashboard(s, now, height if height is not None else 40)
    node = dict(_map(s.get("node")))
    parts: list[RenderableType] = [node_panel(node, now)]
    if "balance" in s:
        parts.append(Text.assemble(("Credits  ", THEME["label"]), credits_line(s.get("balance"))))
    if "jobs" in s:
        parts.append(jobs_panel(s.get("jobs"), now, limit=12))
    parts += [peers_table(_list(s.get("peers")), now), events_panel(_list(s.get("events")))]
    return Group(*parts)


def _mb(value: Any) -> str:
    n = _num(value)
    return NONE if n is None else f"{n / 1024:.1f} GB"


def profile_table(
    profile_dict: dict, problems: list[str], swarm_key_fingerprint: str | None = None
) -> Group:
    """``p2pmesh up --check``: the hardware profile, whether the node is private, then either
    "ready" or what is missing.

    Args:
        profile_dict: ``adapters.hardware.profile_to_dict()`` output.
        problems: ``adapters.hardware.readiness()`` output; empty means ready.
        swarm_key_fingerprint: the private mesh's key fingerprint; None: an open mesh.
    """
    p = _map(profile_dict)
    logical, physical = _int(p.get("cpus_logical")), _int(p.get("cpus_physical"))
    load = _num(p.get("load_1m"))
    gpu_lines: list[str] = []
    for gpu in _list(p.get("gpus")):
        g = _map(gpu)
        mem = _num(g.get("memory_mb"))
        gpu_lines.append(
            f"{_int(g.get('index'))}: {_safe(g.get('name') or 'GPU')}, "
            f"{NONE if mem is None else _gb(mem / 1024)}, "
            f"compute {_safe(g.get('compute_capability') or NONE)}, "
            f"driver {_safe(g.get('driver') or NONE)}"
        )
    gpu_note = _safe(p.get("gpu_note") or "", _MAX_MESSAGE)
    gpus = Text("\n".join(gpu_lines)) if gpu_lines else Text(f"none ({gpu_note or 'no reason'})")
    executors = _executors(p.get("executors"))
    exec_text = Text(executors)
    for problem in _list(p.get("executor_problems")):
        exec_text.append("\n" + _safe(problem, _MAX_MESSAGE), style=THEME["warning"])
    platform = " ".join(_safe(p.get(k) or "?") for k in ("os", "arch"))
    table = Table(
        title=Text("Hardware profile", style=THEME["title"]),
        box=box.SIMPLE,
        show_header=False,
        title_justify="left",
    )
    table.add_column(style=THEME["label"], no_wrap=True)
    table.add_column(overflow="fold")
    for label, value in [
        (
            "CPUs",
            Text(
                f"{logical if logical is not None else NONE} logical, "
                f"{physical if physical is not None else NONE} physical"
            ),
        ),
        ("RAM", Text(f"{_mb(p.get('ram_mb'))} total, {_mb(p.get('ram_available_mb'))} available")),
        ("Disk free (home)", Text(_mb(p.get("disk_free_mb")))),
        ("Load (1 min)", Text(NONE if load is None else f"{load:.2f}")),
        ("GPUs", gpus),
        ("Executors", exec_text),
        ("Platform", Text(f"{platform}, Python {_safe(p.get('python') or '?')}")),
        (
            "Private",
            Text(
                private_summary(swarm_key_fingerprint is not None, swarm_key_fingerprint)
                if swarm_key_fingerprint is not None
                else "no (an open mesh: anyone who can reach this node may join)"
            ),
        ),
    ]:
        table.add_row(Text(label), value)
    lines = [_safe(x, _MAX_MESSAGE) for x in _list(problems)]
    if lines:
        verdict = Text("Not ready to do work:", style=THEME["not_ready"])
        for line in lines:
            verdict.append(f"\n  • {line}", style=THEME["error"])
    else:
        verdict = Text("Ready to do work.", style=THEME["ready"])
    return Group(table, verdict)
