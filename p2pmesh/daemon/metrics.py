"""``/metrics``: the daemon's state in the Prometheus text format, built at scrape time.

Ours (``p2pmesh_…``) come from one custom collector that reads the same views ``p2pmesh
status`` shows (the node's face, the network and job counters) when Prometheus asks, so there
is no second set of counters to keep in step. Each daemon has its own ``CollectorRegistry``;
the process-global one is never used for ours.

py-libp2p's own metrics (``libp2p.metrics``: swarm, gossipsub, Kademlia, ping) are fed by
events its host sends on a channel when it is built with ``enable_metrics``; we consume that
channel (``run_libp2p_metrics``) and add those collectors to our registry as well. They are
created once per process because their constructors register them in prometheus_client's
global registry and a second daemon in the same process would collide there.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import trio
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_libp2p_metrics: Any = None


def libp2p_metrics() -> Any:
    """The process's ``libp2p.metrics.Metrics`` (None if this py-libp2p has none)."""
    global _libp2p_metrics
    if _libp2p_metrics is None:
        try:
            from libp2p.metrics.metrics import Metrics
        except ImportError:  # pragma: no cover - py-libp2p 0.8.1 has it
            return None
        _libp2p_metrics = Metrics()
    return _libp2p_metrics


def libp2p_collectors(m: Any) -> list[Any]:
    """The prometheus_client collectors inside ``libp2p.metrics.Metrics``, found by type (its
    classes are plain attribute holders)."""
    from prometheus_client.metrics import MetricWrapperBase

    out = []
    for part in (m.swarm, m.gossipsub, m.kad_dht, m.ping):
        out += [v for v in vars(part).values() if isinstance(v, MetricWrapperBase)]
    return out


async def run_libp2p_metrics(recv: trio.MemoryReceiveChannel[Any], m: Any) -> None:
    """Record the host's metric events (what ``Metrics.start_prometheus_server`` does, without
    the extra HTTP server it starts on port 8000). Must run while the host does: the host waits
    on this channel when it is full."""
    from libp2p.host.ping import PingEvent
    from libp2p.kad_dht.kad_dht import KadDhtEvent
    from libp2p.metrics.swarm import SwarmEvent
    from libp2p.pubsub.pubsub import GossipsubEvent

    async for event in recv:
        try:
            match event:
                case PingEvent():
                    m.ping.record(event)
                case GossipsubEvent():
                    m.gossipsub.record(event)
                case KadDhtEvent():
                    m.kad_dht.record(event)
                case SwarmEvent():
                    m.swarm.record(event)
        except Exception:  # a metric is never worth a node
            pass


def _labelled(
    family: GaugeMetricFamily | CounterMetricFamily, rows: Iterable[tuple[tuple[str, ...], float]]
) -> GaugeMetricFamily | CounterMetricFamily:
    for labels, value in rows:
        family.add_metric(list(labels), value)
    return family


def _by(table: Any, *, limit: int = 64) -> list[tuple[tuple[str], float]]:
    """A ``{label: count}`` dict as rows, bounded (label values come from peers' traffic only
    through our own fixed names, but a bound keeps a scrape small regardless)."""
    if not isinstance(table, dict):
        return []
    items = sorted(table.items())[:limit]
    return [((str(k)[:80],), float(v)) for k, v in items if isinstance(v, (int, float))]


# Requester job states that end a job: what cross-validation decided, as far as it got.
FINAL_STATES = ("done", "failed", "inconclusive", "timeout", "no-bids", "cancelled")


class MeshCollector(Collector):
    """Every ``p2pmesh_`` metric, from ``view()``: a dict the daemon builds on its loop."""

    def __init__(self, view: Callable[[], dict[str, Any]]) -> None:
        self._view = view

    def describe(self) -> list[Metric]:
        # No up-front description: the registry then does not call collect() at registration.
        return []

    def collect(self) -> Iterator[Metric]:
        v = self._view()
        node, net, jobs = v["node"], v["net"], v["jobs"]

        def gauge(name: str, doc: str, value: float, unit: str = "") -> GaugeMetricFamily:
            return GaugeMetricFamily(f"p2pmesh_{name}", doc, value=value, unit=unit)

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            return CounterMetricFamily(f"p2pmesh_{name}", doc, value=value)

        info = GaugeMetricFamily(
            "p2pmesh_node_info", "This node (value 1)", labels=["peer_id", "version"]
        )
        info.add_metric([node["peer_id"], v["version"]], 1)
        yield info
        yield gauge("uptime_seconds", "Seconds since this daemon started", v["uptime_s"])
        yield gauge(
            "peers_connected", "Peers with a live libp2p connection", node["peers_connected"]
        )
        yield gauge("peers_known", "Peers whose signed record we hold", node["peers_known"])
        nat = v.get("nat") or {}
        if nat:
            state = nat["reachability"]["state"]
            yield _labelled(
                GaugeMetricFamily(
                    "p2pmesh_reachability",
                    "1 for this node's reachability state (AutoNAT dial-backs), 0 for the others",
                    labels=["state"],
                ),
                [((s,), 1.0 if s == state else 0.0) for s in ("unknown", "public", "private")],
            )
            kinds = list(nat["connections"].values())
            yield _labelled(
                GaugeMetricFamily(
                    "p2pmesh_peer_connections",
                    "Connected peers by path: direct, or only through a relay",
                    labels=["kind"],
                ),
                [((k,), float(kinds.count(k))) for k in ("direct", "relayed")],
            )
            yield gauge(
                "relay_reservations_held",
                "Peers holding a reservation on this node's relay",
                nat["relay_service"]["reservations_held"],
            )
            yield gauge(
                "relay_reservations_made",
                "Relays this node holds a reservation on",
                len(nat["relays"]),
            )
        yield _labelled(
            GaugeMetricFamily(
                "p2pmesh_jobs", "Jobs held here, by role and state", labels=["role", "state"]
            ),
            sorted(((r, s), float(n)) for (r, s), n in jobs["by_state"].items()),
        )
        yield counter(
            "bids_sent", "Bids this node sent and had acknowledged", net["job_out"].get("bid", 0)
        )
        yield counter(
            "bids_received", "Bids received for jobs this node requested", jobs["bids_received"]
        )
        yield counter(
            "awards_sent",
            "Awards this node sent and had acknowledged",
            net["job_out"].get("award", 0),
        )
        yield counter(
            "awards_received", "Jobs this node was awarded (as a worker)", jobs["awarded_here"]
        )
        yield _labelled(
            CounterMetricFamily(
                "p2pmesh_job_messages_received",
                "Job-stream messages taken from peers, by kind",
                labels=["kind"],
            ),
            _by(net["job_in"]),
        )
        yield _labelled(
            CounterMetricFamily(
                "p2pmesh_job_messages_sent",
                "Job-stream messages delivered to peers, by kind",
                labels=["kind"],
            ),
            _by(net["job_out"]),
        )
        yield gauge(
            "containers_running", "Job containers running on this node", v["containers_running"]
        )
        yield counter(
            "container_seconds",
            "Wall-clock seconds of job containers run here (finished and running)",
            v["container_seconds"],
        )
        yield _labelled(
            CounterMetricFamily(
                "p2pmesh_validations",
                "Requested jobs that ended, by outcome (done: a majority agreed and was paid)",
                labels=["outcome"],
            ),
            [((s,), float(jobs["by_state"].get(("requester", s), 0))) for s in FINAL_STATES],
        )
        yield _labelled(
            GaugeMetricFamily(
                "p2pmesh_replicas",
                "Replicas of the jobs requested here, by state (reported, lost, …)",
                labels=["state"],
            ),
            _by(jobs["replicas"]),
        )
        yield _labelled(
            CounterMetricFamily(
                "p2pmesh_gossip_received", "Gossip messages received, by topic", labels=["topic"]
            ),
            _by(net["gossip_in"]),
        )
        yield _labelled(
            CounterMetricFamily(
                "p2pmesh_gossip_published", "Gossip messages published, by topic", labels=["topic"]
            ),
            _by(net["gossip_out"]),
        )
        refused = CounterMetricFamily(
            "p2pmesh_gossip_refused",
            "Gossip messages our validators refused, by topic and reason (ignored or rejected)",
            labels=["topic", "reason"],
        )
        for reason in ("ignored", "rejected"):
            for (topic,), n in _by(net[f"gossip_{reason}"]):
                refused.add_metric([topic, reason], n)
        yield refused
        yield _labelled(
            CounterMetricFamily(
                "p2pmesh_records_refused",
                "Capability records refused, by reason",
                labels=["reason"],
            ),
            _by(node.get("stats", {}).get("refused_reasons", {})),
        )
        yield _labelled(
            CounterMetricFamily(
                "p2pmesh_network_input_shed",
                "Network input dropped under flood before it reached the node, by source",
                labels=["source"],
            ),
            _by(net["shed"]),
        )
        yield counter("publish_failed", "Gossip publishes that failed", net["publish_failed"])
        yield _labelled(
            CounterMetricFamily("p2pmesh_dials", "Dials, by outcome", labels=["outcome"]),
            [(("ok",), net["dials_ok"]), (("failed",), net["dials_failed"])],
        )
        yield _labelled(
            CounterMetricFamily(
                "p2pmesh_stream_errors",
                "Failed job, blob and ledger streams, by operation",
                labels=["operation"],
            ),
            _by(net["stream_errors"]),
        )
        led = v["ledger"]
        yield gauge("ledger_blocks", "Ledger blocks held, of every chain", led["blocks"])
        yield gauge("ledger_own_blocks", "Blocks of this node's own chain", led["own_blocks"])
        yield gauge("ledger_chains", "Chains (authors) held", led["chains"])
        yield gauge("ledger_excluded", "Authors excluded by a fraud proof", led["excluded"])
        yield gauge("balance_credits", "This node's balance", led["balance"])
        yield counter("earned_credits", "Credits this node has earned", led["earned"])
        yield counter("spent_credits", "Credits this node has spent", led["spent"])
        yield gauge("payments_pending", "Payments proposed, not yet agreed", led["pending"])
        q = v["queue"]
        yield gauge("event_queue_depth", "Events waiting for the node's owner task", q["used"])
        yield gauge("event_queue_capacity", "Size of the node's event queue", q["size"])
        yield gauge("persist_queue_depth", "Writes waiting for the database", q["persist"])
        yield _labelled(
            CounterMetricFamily(
                "p2pmesh_http_requests", "HTTP requests answered, by status", labels=["status"]
            ),
            _by(v["http"]["requests"]),
        )


def job_counts(jobs: list[dict[str, Any]]) -> dict[str, Any]:
    """What the collector needs from ``Node.jobs()``."""
    by_state: dict[tuple[str, str], int] = {}
    replicas: dict[str, int] = {}
    bids = awarded = 0
    for j in jobs:
        role, state = str(j.get("role")), str(j.get("state"))
        by_state[(role, state)] = by_state.get((role, state), 0) + 1
        if role == "requester":
            bids += int(j.get("bids_received") or 0)
            for w in j.get("workers") or ():
                s = str(w.get("state"))
                replicas[s] = replicas.get(s, 0) + 1
        else:
            awarded += 1
    return {
        "by_state": by_state,
        "replicas": replicas,
        "bids_received": bids,
        "awarded_here": awarded,
    }


def make_registry(view: Callable[[], dict[str, Any]], libp2p: Any = None) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(MeshCollector(view))
    if libp2p is not None:
        for c in libp2p_collectors(libp2p):
            reg.register(c)
    return reg


def exposition(reg: CollectorRegistry) -> bytes:
    return generate_latest(reg)


__all__ = [
    "CONTENT_TYPE",
    "MeshCollector",
    "exposition",
    "job_counts",
    "libp2p_collectors",
    "libp2p_metrics",
    "make_registry",
    "run_libp2p_metrics",
]
