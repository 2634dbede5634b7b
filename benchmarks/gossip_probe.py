"""Measure GossipSub delivery between *real* p2pmesh daemons, from the outside.

The daemons have no test hook, so the probe measures what they already gossip: their signed
capability records. Run them with ``--record-ttl 10`` and each re-announces its record every
~5 s (at half its lifetime). A record's sequence number is the publisher's millisecond clock at
the moment it decided to publish (``seq = max(last + 1, now_ms)``, core/node.py), and a
receiver's ``p2pmesh peers`` entry shows the ``record_seq`` it holds and ``last_seen``, the
wall-clock time it accepted that record. All daemons share this machine's clock, so

    latency(receiver, record) = last_seen − seq / 1000

The probe polls every daemon's control socket (the request ``p2pmesh peers --json`` makes) every
``interval`` seconds and each publisher's own ``record_seq`` (``status``) every few polls, and
reports, for the records published inside the window: delivery (receiver × record pairs seen /
expected) and latency percentiles. Limits, stated in the report: a record that arrives after the
publisher's next one (≈ 5 s later) is refused as stale by design, so it counts as lost; one
held for less than one polling interval before being superseded is not observed (only possible
when its latency was already ≥ 4.5 s); ``last_seen`` also moves when a connection opens or
closes, which the probe cannot tell apart (connection churn is reported beside the figures).

Standalone: ``python benchmarks/gossip_probe.py --home H1 --home H2 … --duration 60``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from p2pmesh.cli import client


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in [0, 100]); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[k]


@dataclass
class _Node:
    name: str
    home: Path
    peer_id: str
    status_first: dict[str, Any] | None = None
    status_last: dict[str, Any] | None = None
    failures: int = 0
    last_ok: bool = True


@dataclass
class GossipProbe:
    homes: dict[str, Path]  # name → node home (node.json must exist)
    interval: float = 0.5
    status_every: int = 4
    nodes: list[_Node] = field(default_factory=list)
    # (receiver, origin, seq) → accept time (the receiver's last_seen), first observation
    seen: dict[tuple[str, str, int], float] = field(default_factory=dict)
    # origin → every own seq it was seen holding (from its status)
    own: dict[str, set[int]] = field(default_factory=dict)
    polls: int = 0
    started: float = 0.0
    ended: float = 0.0

    def __post_init__(self) -> None:
        for name, home in self.homes.items():
            doc = json.loads((Path(home) / "node.json").read_text())
            self.nodes.append(_Node(name, Path(home), doc["peer_id"]))
            self.own[doc["peer_id"]] = set()

    def _poll(self, with_status: bool) -> None:
        for node in self.nodes:
            now = time.time()
            try:
                if with_status:
                    snap = client.request(node.home, "status", timeout=10)
                    n = snap["node"]
                    node.status_first = node.status_first or n
                    node.status_last = n
                    if n.get("record_seq"):
                        self.own[node.peer_id].add(int(n["record_seq"]))
                    peers = snap["peers"]
                else:
                    peers = client.request(node.home, "peers", timeout=10)
            except Exception:
                node.failures += 1
                node.last_ok = False
                continue
            node.last_ok = True
            for p in peers:
                key = (node.peer_id, p["peer_id"], int(p["record_seq"]))
                if key not in self.seen:
                    # last_seen is when the record was accepted; never later than now.
                    self.seen[key] = min(float(p["last_seen"]), now)

    def run(self, duration: float) -> None:
        """Poll for ``duration`` seconds."""
        self.started = time.time()
        deadline = time.monotonic() + duration
        while time.monotonic() < deadline:
            t0 = time.monotonic()
            self._poll(with_status=self.polls % self.status_every == 0)
            self.polls += 1
            time.sleep(max(0.0, self.interval - (time.monotonic() - t0)))
        self._poll(with_status=True)
        self.ended = time.time()

    def result(self, t_from: float, t_to: float) -> dict[str, Any]:
        """Delivery and latency for records published in [t_from, t_to] (unix seconds)."""
        ids = [n.peer_id for n in self.nodes]
        # A daemon that stopped answering (it died) is no receiver; its records still count.
        receivers = {n.peer_id for n in self.nodes if n.last_ok}
        published: dict[str, set[int]] = {pid: set(s) for pid, s in self.own.items()}
        for _recv, origin, seq in self.seen:
            if origin in published:
                published[origin].add(seq)
        latencies: list[float] = []
        expected = delivered = 0
        lost: dict[str, int] = {}
        for origin in ids:
            for seq in published[origin]:
                t_pub = seq / 1000
                if not t_from <= t_pub <= t_to:
                    continue
                for recv in ids:
                    if recv == origin or recv not in receivers:
                        continue
                    expected += 1
                    t_recv = self.seen.get((recv, origin, seq))
                    if t_recv is None:
                        lost[recv] = lost.get(recv, 0) + 1
                        continue
                    delivered += 1
                    latencies.append(max(0.0, t_recv - t_pub))

        def shed_total() -> int:
            # Network input shed under flood (net.shed, by reason); own events never are.
            total = 0
            for n in self.nodes:
                if n.status_first and n.status_last:
                    a = n.status_first.get("net", {}).get("shed", {})
                    b = n.status_last.get("net", {}).get("shed", {})
                    total += sum(b.values()) - sum(a.values())
            return total

        def counter(name: str, section: str = "net") -> int:
            total = 0
            for n in self.nodes:
                if n.status_first and n.status_last:
                    a = n.status_first.get(section, {}).get(name, 0)
                    b = n.status_last.get(section, {}).get(name, 0)
                    total += int(b) - int(a)
            return total

        pubs = sum(1 for o in ids for s in published[o] if t_from <= s / 1000 <= t_to)
        span = max(1e-9, t_to - t_from)
        return {
            "nodes": len(ids),
            "window_s": round(span, 1),
            "records_published": pubs,
            "mesh_rate_msg_s": round(pubs / span, 2),
            "expected_deliveries": expected,
            "delivered": delivered,
            "delivery_pct": round(100 * delivered / expected, 3) if expected else None,
            "latency_ms": {
                "p50": _ms(percentile(latencies, 50)),
                "p90": _ms(percentile(latencies, 90)),
                "p99": _ms(percentile(latencies, 99)),
                "max": _ms(max(latencies) if latencies else None),
                "mean": _ms(statistics.fmean(latencies) if latencies else None),
            },
            "lost_by_receiver": dict(sorted(lost.items(), key=lambda kv: -kv[1])[:10]),
            "counters_during_window": {
                "dials_ok": counter("dials_ok"),
                "dials_failed": counter("dials_failed"),
                "gossip_invalid": counter("gossip_invalid"),
                "events_shed": shed_total(),
                "publish_failed": counter("publish_failed"),
                "records_refused": counter("records_refused", "stats"),
            },
            "unresponsive_at_end": sorted(n.name for n in self.nodes if not n.last_ok),
            "polls": self.polls,
            "poll_interval_s": self.interval,
            "poll_failures": sum(n.failures for n in self.nodes),
        }


def _ms(v: float | None) -> float | None:
    return None if v is None else round(v * 1000, 1)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--home", action="append", required=True, help="a running node's home")
    ap.add_argument("--duration", type=float, default=60.0, help="window in seconds")
    ap.add_argument("--grace", type=float, default=6.0, help="extra polling after the window")
    ap.add_argument("--interval", type=float, default=0.5, help="seconds between poll rounds")
    ap.add_argument("--out", help="write the JSON result here too")
    args = ap.parse_args(argv)
    probe = GossipProbe({Path(h).name: Path(h) for h in args.home}, interval=args.interval)
    t_from = time.time()
    probe.run(args.duration + args.grace)
    res = probe.result(t_from, t_from + args.duration)
    text = json.dumps(res, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
