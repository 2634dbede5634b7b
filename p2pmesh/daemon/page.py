"""The status page at ``/``: one server-rendered HTML document, no script, no external asset.

Pure: plain data in (the same views ``p2pmesh status``, ``jobs`` and ``balance`` show), a
string out; the caller passes ``now``. Every value may come from a peer (names, addresses,
GPU names, job names, log fields) and is hostile: each goes through ``_e`` (control and
format characters replaced, length cut, then ``html.escape`` with quotes), in text and in
attributes alike. The page refreshes itself with a meta refresh; the response's
Content-Security-Policy forbids scripts and any load from elsewhere.
"""

from __future__ import annotations

import html
import time
from collections.abc import Iterable, Mapping
from typing import Any

from p2pmesh.cli.views import (
    _safe,
    ago,
    capability_summary,
    compact_addr,
    duration,
    reachability_summary,
    short_id,
)

REFRESH_S = 5
MAX_ROWS = 200
EVENTS_SHOWN = 25

_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:16px;color:#111;background:#fff}
h1{font-size:20px;margin:0 0 4px} h2{font-size:16px;margin:18px 0 6px}
table{border-collapse:collapse;width:100%} th,td{border:1px solid #bbb;padding:3px 6px;
text-align:left;vertical-align:top} th{background:#dde6f3} td.n{text-align:right}
code{font:12px ui-monospace,monospace} .muted{color:#666} .on{color:#080;font-weight:bold}
.off{color:#888} .warning{color:#a60} .error{color:#c00;font-weight:bold}
table.kv{width:auto;min-width:50%}
.kv td:first-child{font-weight:bold;width:12em;background:#f3f3f3}
#peers th{background:#c8e6c9}
"""
# The peers table's header has a colour of its own: the screenshot test finds it by that.
PEERS_HEAD_RGB = (0xC8, 0xE6, 0xC9)


def _e(value: Any, limit: int = 120) -> str:
    """Escaped, printable, one-line text of anything (hostile input welcome)."""
    return html.escape(_safe(value, limit=limit), quote=True)


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _map(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _rows(value: Any) -> list[Mapping[str, Any]]:
    return (
        [v for v in value if isinstance(v, Mapping)][:MAX_ROWS] if isinstance(value, list) else []
    )


def _peer(pid: Any) -> str:
    """A short ID on screen, the full one in ``title`` (and in ``data-peer-id`` for scripts
    that scrape the page)."""
    full = _e(pid, limit=200)
    return f'<code title="{full}" data-peer-id="{full}">{_e(short_id(pid))}</code>'


def _table(cls: str, head: Iterable[str], rows: list[str], empty: str) -> str:
    th = "".join(f"<th>{_e(h)}</th>" for h in head)
    body = "".join(rows) if rows else f'<tr><td colspan="99" class="muted">{_e(empty)}</td></tr>'
    return f'<table id="{cls}"><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>'


def _peers(peers: list[Mapping[str, Any]], now: float) -> str:
    def key(p: Mapping[str, Any]) -> tuple[float, str]:
        r = _num(p.get("reputation"))
        return (-(r if r is not None else -1.0), str(p.get("peer_id", "")))

    rows = []
    for p in sorted(peers, key=key):
        rep = _num(p.get("reputation"))
        addrs = [a for a in p.get("addrs") or [] if isinstance(a, str)][:3]
        on = p.get("connected") is True
        rows.append(
            "<tr>"
            f"<td>{_peer(p.get('peer_id'))}</td>"
            f'<td class="{"on" if on else "off"}">{"connected" if on else "known"}</td>'
            f'<td class="n">{"—" if rep is None else f"{rep:.2f}"}</td>'
            f"<td>{_e(capability_summary(p.get('capabilities')), 200)}</td>"
            f"<td>{'<br>'.join(_e(compact_addr(a)) for a in addrs) or '—'}</td>"
            f"<td>{_e(ago(p.get('last_seen'), now))}</td>"
            "</tr>"
        )
    return _table(
        "peers",
        ("peer", "link", "reputation", "capabilities", "addresses", "last seen"),
        rows,
        "No peers yet.",
    )


def _jobs(jobs: list[Mapping[str, Any]], role: str, now: float) -> str:
    rows = []
    for j in reversed([j for j in jobs if j.get("role") == role]):
        created = _num(j.get("created_at"))
        finished = _num(j.get("finished_at"))
        took = (finished or now) - created if created is not None else None
        if role != "requester":
            took = _num(j.get("running_s"))  # a worker's document has no clock: its container's
        if role == "requester":
            other = ", ".join(_peer(w.get("peer_id")) for w in _rows(j.get("workers"))[:5]) or "—"
            extra = f'<td class="n">{_e(j.get("bids_received", "—"))}</td><td>{other}</td>'
        else:
            extra = f"<td>{_peer(j.get('requester'))}</td><td>{_e(j.get('detail') or '—')}</td>"
        rows.append(
            "<tr>"
            f'<td><code title="{_e(j.get("job_id"), 80)}">{_e(str(j.get("job_id", ""))[:12])}'
            "</code></td>"
            f"<td>{_e(j.get('name') or '—', 60)}</td><td>{_e(j.get('image'), 80)}</td>"
            f"<td>{_e(j.get('state'))}</td>"
            f'<td class="n">{_e(duration(took) if took is not None else "—")}</td>{extra}'
            "</tr>"
        )
    if role == "requester":
        head = ("job", "name", "image", "state", "elapsed", "bids", "workers")
        return _table("jobs-requested", head, rows, "No job requested from this node.")
    head = ("job", "name", "image", "state", "elapsed", "requester", "detail")
    return _table("jobs-run", head, rows, "No job run on this node.")


def _credits(b: Mapping[str, Any]) -> str:
    rows = [
        ("balance", b.get("balance")),
        ("credit limit", b.get("credit_limit")),
        ("earned", b.get("earned")),
        ("spent", b.get("spent")),
        ("pending", b.get("pending")),
    ]
    body = "".join(f'<tr><td>{_e(k)}</td><td class="n">{_e(v)}</td></tr>' for k, v in rows)
    return f'<table id="credits" class="kv">{body}</table>'


def _events(events: list[Mapping[str, Any]]) -> str:
    rows = []
    for ev in list(reversed(events))[:EVENTS_SHOWN]:
        level = str(ev.get("level", "info"))
        fields = " ".join(
            f"{_e(k, 24)}={_e(v, 80)}"
            for k, v in list(ev.items())[:12]
            if k not in ("ts", "level", "msg")
        )
        ts = _num(ev.get("ts"))
        clock = time.strftime("%H:%M:%S", time.gmtime(ts)) if ts else "—"
        rows.append(
            f'<tr><td>{clock}</td><td class="{_e(level, 10)}">{_e(level, 10)}</td>'
            f'<td>{_e(ev.get("msg"), 200)}</td><td class="muted">{fields}</td></tr>'
        )
    return _table("events", ("UTC", "level", "event", "details"), rows, "No events yet.")


def status_page(
    snapshot: Mapping[str, Any],
    jobs: list[Mapping[str, Any]],
    balance: Mapping[str, Any],
    now: float,
    *,
    version: str,
    http_url: str,
) -> str:
    node = _map(snapshot.get("node"))
    peers = _rows(snapshot.get("peers"))
    jobs_ = _rows(jobs)
    events = _rows(snapshot.get("events"))
    pid = node.get("peer_id", "")
    started = _num(node.get("started_at"))
    node_rows = [
        ("peer ID", f"<code>{_e(pid, 200)}</code>"),
        ("version", _e(version)),
        ("up", _e(duration(now - started) if started else "—")),
        (
            "peers",
            f"{_e(node.get('peers_connected'))} connected, {_e(node.get('peers_known'))} known",
        ),
        ("works", "yes" if node.get("work") else "no (--no-work)"),
        ("reachable", _e(reachability_summary(node.get("nat")), 200)),
        ("capabilities", _e(capability_summary(node.get("capabilities")), 200)),
        (
            "addresses",
            "<br>".join(f"<code>{_e(a, 200)}</code>" for a in (node.get("addrs") or [])[:8]) or "—",
        ),
        ("balance", f"{_e(balance.get('balance'))} credits"),
        (
            "this page",
            f"<code>{_e(http_url)}</code> · "
            '<a href="/metrics">/metrics</a> · <a href="/api/status">/api/status</a>',
        ),
    ]
    node_table = "".join(f"<tr><td>{k}</td><td>{v}</td></tr>" for k, v in node_rows)
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="refresh" content="{REFRESH_S}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>p2pmesh {_e(short_id(pid))}</title><style>{_CSS}</style></head><body>"
        f"<h1>p2pmesh node {_peer(pid)}</h1>"
        f'<p class="muted">Refreshes every {REFRESH_S} s · {_e(len(peers))} peer(s) · '
        f"{_e(len(jobs_))} job(s)</p>"
        f'<table id="node" class="kv">{node_table}</table>'
        f"<h2>Peers</h2>{_peers(peers, now)}"
        f"<h2>Jobs requested here</h2>{_jobs(jobs_, 'requester', now)}"
        f"<h2>Jobs run here</h2>{_jobs(jobs_, 'worker', now)}"
        f"<h2>Credits</h2>{_credits(balance)}"
        f"<h2>Recent events</h2>{_events(events)}"
        "</body></html>\n"
    )


__all__ = ["PEERS_HEAD_RGB", "REFRESH_S", "status_page"]
