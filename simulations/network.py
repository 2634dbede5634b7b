"""The modelled network: latency, bandwidth, loss, partitions, gossip and the discovery oracle.

What it models, and why each simplification is acceptable (docs/SIMULATIONS.md has the table):

* **Latency.** Each peer sits at a point of a unit square (a coarse picture of the planet) and
  has its own last-mile delay (log-normal). One-way delay of a link = both last miles + distance
  × ``span_ms`` + exponential jitter. Deterministic per link except the jitter, and O(1) memory
  per peer (a 10,000² latency matrix would take 800 MB).
* **Bandwidth.** Each peer has one access rate (log-normal); a transfer of ``n`` bytes takes
  one-way delay + n / min(rate(src), rate(dst)). Concurrent transfers do not slow each other.
* **Loss.** Each attempt of a stream message is lost with probability ``loss``; the daemon
  retries ``SEND_RETRIES`` times with a growing pause (daemon/jobs.py), so the sender sees
  ``SendFailed`` only when every attempt is lost.
* **Partitions and churn.** A peer is reachable when it is online and in the sender's partition
  group. An unreachable peer costs the sender ``connect_timeout_s`` per attempt before
  ``SendFailed``.
* **Gossip** (``Publish``). Modelled by *sampling*, never by flooding: at 10,000 peers, flooding
  100,000 offers is 10⁹ deliveries (each one a signature check and a job-spec parse). Offers go
  to ``offer_fanout`` peers drawn from the online workers of the publisher's group: what a
  requester would reach by looking up DHT provider records for the coarse capability ("cpu")
  instead of flooding. Verdicts, ledger heads and fraud proofs go to their own fan-out of
  online peers (``verdict_fanout``, ``head_fanout``, ``fraud_fanout``); fraud proofs spread
  epidemically because every first receiver re-publishes its own sealed copy. Capability
  records are not delivered: discovery is the oracle's job here (the offer sample), and the
  auction never reads the peer table.
  Every delivery goes through the topic's validator at the receiver (``SimPeer.deliver_gossip``,
  the core's ``topics`` table), as GossipSub runs it before delivery; refusals are counted.
* **Ledger sync** (``SyncChain``, ``FetchHeads``): a request/response with the target peer,
  answered from the target's own ledger by the call the daemon's stream handler makes
  (``Node.serve_ledger``, with the request the daemon would send).
* ``DhtPut``/``DhtGet``/``Dial``/``ExchangePeers`` are counted and not answered: without
  capability records the core never needs them to run jobs (see peer.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from p2pmesh.core import topics
from p2pmesh.core.effects import FetchHeads, Publish, SendMessage, SyncChain
from p2pmesh.core.events import (
    BlocksReceived,
    MessageDelivered,
    MessageReceived,
    PeerAddressObserved,
    SendFailed,
)

if TYPE_CHECKING:
    from p2pmesh.simulations.peer import SimPeer
    from p2pmesh.simulations.sim import Simulation

# Mirrors daemon/jobs.py SEND_RETRIES and its pauses (0.5 s, 1 s, ...): not imported, because
# the daemon module pulls in trio and docker, which a simulation has no use for.
SEND_RETRIES = 3
RETRY_PAUSE_S = 0.5
# GossipSub mesh degree (D): a published message needs about log_D(N) hops to reach N peers.
GOSSIP_DEGREE = 6
# Per-message framing on a stream (length prefix, protocol id, yamux header): counted in bytes.
FRAME_OVERHEAD = 64


@dataclass(frozen=True, slots=True)
class NetConfig:
    """Network model parameters. Defaults describe a broadband internet mesh."""

    span_ms: float = 80.0  # propagation across the whole square (about a continent and a sea)
    last_mile_ms: float = 8.0  # median one-way last-mile delay (log-normal, sigma 0.5)
    jitter_ms: float = 2.0  # mean of the exponential per-message jitter
    bandwidth_mbit: float = 50.0  # median access rate (log-normal, sigma 0.7)
    loss: float = 0.001  # per-attempt loss of a stream message
    connect_timeout_s: float = 3.0  # what an attempt to an unreachable peer costs
    offer_fanout: int = 16  # peers an offer reaches (DHT provider lookup), see module doc
    verdict_fanout: int = 8
    head_fanout: int = 2
    fraud_fanout: int = 6

    def validate(self) -> None:
        if not 0.0 <= self.loss < 1.0:
            raise ValueError("loss must be in [0, 1)")
        for name in ("offer_fanout", "verdict_fanout", "head_fanout", "fraud_fanout"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")


class IndexedSet:
    """A set of peer indices with O(1) add/remove and O(k) random samples (swap-remove)."""

    __slots__ = ("_items", "_pos")

    def __init__(self) -> None:
        self._items: list[int] = []
        self._pos: dict[int, int] = {}

    def add(self, i: int) -> None:
        if i not in self._pos:
            self._pos[i] = len(self._items)
            self._items.append(i)

    def discard(self, i: int) -> None:
        p = self._pos.pop(i, None)
        if p is None:
            return
        last = self._items.pop()
        if p < len(self._items):
            self._items[p] = last
            self._pos[last] = p

    def __contains__(self, i: object) -> bool:
        return i in self._pos

    def __len__(self) -> int:
        return len(self._items)

    def sample(self, rng: Any, k: int, exclude: int) -> list[int]:
        """Up to ``k`` distinct members other than ``exclude``, uniformly at random."""
        items = self._items
        n = len(items)
        if n == 0 or k <= 0:
            return []
        want = min(k + (1 if exclude in self._pos else 0), n)
        picked = rng.sample(items, want)
        return [i for i in picked if i != exclude][:k]


class Network:
    """Carries the network-side effects of every peer and feeds outcomes back as core events."""

    def __init__(self, sim: Simulation, config: NetConfig) -> None:
        config.validate()
        self.sim = sim
        self.cfg = config
        self.rng = sim.engine.rng
        self.x: list[float] = []
        self.y: list[float] = []
        self.last_mile: list[float] = []  # seconds
        self.rate: list[float] = []  # bytes per second
        self.group: list[int] = []  # partition group of each peer
        self.online_all: dict[int, IndexedSet] = {}  # group -> online peers
        self.online_workers: dict[int, IndexedSet] = {}  # group -> online work-enabled peers
        self.messages = 0
        self.bytes = 0
        self.blob_bytes = 0
        self.lost = 0
        self.failed_sends = 0
        self.by_kind: dict[str, int] = {}
        self.ignored: dict[str, int] = {}
        self.gossip_refused: dict[str, int] = {}  # "topic ignore|reject" -> deliveries

    # -- topology ---------------------------------------------------------------------------
    def add_peer(self) -> int:
        """Place a new peer; returns its index (peers are numbered in order of creation)."""
        r = self.rng
        self.x.append(r.random())
        self.y.append(r.random())
        self.last_mile.append(self.cfg.last_mile_ms / 1000.0 * math.exp(r.gauss(0.0, 0.5)))
        mbit = self.cfg.bandwidth_mbit * math.exp(r.gauss(0.0, 0.7))
        self.rate.append(mbit * 125_000.0)
        self.group.append(0)
        return len(self.x) - 1

    def set_online(self, i: int, online: bool, worker: bool) -> None:
        g = self.group[i]
        all_, workers = self._sets(g)
        if online:
            all_.add(i)
            if worker:
                workers.add(i)
        else:
            all_.discard(i)
            workers.discard(i)

    def _sets(self, g: int) -> tuple[IndexedSet, IndexedSet]:
        if g not in self.online_all:
            self.online_all[g] = IndexedSet()
            self.online_workers[g] = IndexedSet()
        return self.online_all[g], self.online_workers[g]

    def partition(self, groups: Sequence[int]) -> None:
        """Put peer ``i`` in group ``groups[i]``; peers in different groups cannot talk."""
        peers = self.sim.peers
        self.online_all.clear()
        self.online_workers.clear()
        for i, g in enumerate(groups):
            self.group[i] = g
            p = peers[i]
            if p.online:
                self.set_online(i, True, p.worker)

    def reachable(self, a: int, b: int) -> bool:
        return self.sim.peers[b].online and self.group[a] == self.group[b]

    def delay(self, a: int, b: int) -> float:
        """One-way delay of one message from ``a`` to ``b`` in seconds (with jitter)."""
        dx = self.x[a] - self.x[b]
        dy = self.y[a] - self.y[b]
        base = (
            self.last_mile[a]
            + self.last_mile[b]
            + math.sqrt(dx * dx + dy * dy) * (self.cfg.span_ms / 1000.0)
        )
        return base + self.rng.expovariate(1000.0 / self.cfg.jitter_ms)

    def transfer_time(self, src: int, dst: int, size: int) -> float:
        return self.delay(src, dst) + size / min(self.rate[src], self.rate[dst])

    # -- stream messages ----------------------------------------------------------------------
    def send(self, src: SimPeer, eff: SendMessage) -> None:
        dst_i = self.sim.index.get(eff.peer_id)
        a = src.idx
        size = len(eff.data) + FRAME_OVERHEAD
        if dst_i is None:
            self._fail_later(src, eff, SEND_RETRIES * self.cfg.connect_timeout_s, "unknown peer")
            return
        if not self.reachable(a, dst_i):
            wait = SEND_RETRIES * self.cfg.connect_timeout_s + _pauses(SEND_RETRIES)
            self._fail_later(src, eff, wait, "unreachable")
            return
        # Attempts lost in transit cost a round trip's worth of waiting plus the daemon's pause.
        extra = 0.0
        for attempt in range(SEND_RETRIES):
            self.messages += 1
            self.bytes += size
            if self.cfg.loss == 0.0 or self.rng.random() >= self.cfg.loss:
                break
            self.lost += 1
            extra += 2 * self.delay(a, dst_i) + RETRY_PAUSE_S * (attempt + 1)
        else:
            self._fail_later(src, eff, extra, "lost")
            return
        self.by_kind[eff.kind] = self.by_kind.get(eff.kind, 0) + 1
        d = extra + self.delay(a, dst_i)
        self.sim.engine.after(d, self._arrive, (src, dst_i, eff, d))

    def _arrive(self, arg: tuple[SimPeer, int, SendMessage, float]) -> None:
        src, dst_i, eff, d = arg
        dst = self.sim.peers[dst_i]
        if not self.reachable(src.idx, dst_i):
            # Gone while the message was on its way: the stream breaks, the sender learns.
            self._fail_later(src, eff, self.cfg.connect_timeout_s, "connection lost")
            return
        if src.idx not in dst.observed:
            # The stream's connection is where the daemon observes the remote address.
            dst.observed.add(src.idx)
            dst.deliver(PeerAddressObserved(src.peer_id, src.host))
        dst.deliver(MessageReceived(eff.kind, eff.data, src.peer_id))
        self.sim.engine.after(
            d, src.deliver_event, MessageDelivered(eff.job_id, eff.peer_id, eff.kind)
        )

    def _fail_later(self, src: SimPeer, eff: SendMessage, wait: float, reason: str) -> None:
        self.failed_sends += 1
        self.sim.engine.after(
            wait, src.deliver_event, SendFailed(eff.job_id, eff.peer_id, eff.kind, reason)
        )

    # -- gossip --------------------------------------------------------------------------------
    def publish(self, src: SimPeer, eff: Publish) -> None:
        topic = topics.BY_NAME.get(eff.topic)
        kind = topic.kind if topic is not None else None
        if kind is None or kind == "record":
            # Capability records are not delivered in the model (discovery is the oracle's).
            self.ignored[eff.topic] = self.ignored.get(eff.topic, 0) + 1
            return
        cfg = self.cfg
        g = self.group[src.idx]
        all_, workers = self._sets(g)
        if kind == "offer":
            targets = workers.sample(self.rng, cfg.offer_fanout, src.idx)
        elif kind == "verdict":
            targets = all_.sample(self.rng, cfg.verdict_fanout, src.idx)
        elif kind == "head":
            targets = all_.sample(self.rng, cfg.head_fanout, src.idx)
        else:
            targets = all_.sample(self.rng, cfg.fraud_fanout, src.idx)
        if not targets:
            return
        size = len(eff.data) + FRAME_OVERHEAD
        hops = self._hops(len(all_))
        self.by_kind[kind] = self.by_kind.get(kind, 0) + len(targets)
        for t in targets:
            self.messages += 1
            self.bytes += size
            d = sum(self.delay(src.idx, t) for _ in range(hops))
            self.sim.engine.after(d, self._gossip_arrive, (src, t, eff.topic, eff.data))

    def _hops(self, n: int) -> int:
        return max(1, math.ceil(math.log(max(n, 2)) / math.log(GOSSIP_DEGREE)))

    def _gossip_arrive(self, arg: tuple[SimPeer, int, str, bytes]) -> None:
        src, t, topic, data = arg
        if not self.reachable(src.idx, t):
            return
        self.sim.peers[t].deliver_gossip(topic, data, src.peer_id)

    def count_refused(self, topic: str, verdict: topics.Validation) -> None:
        key = f"{topic} {verdict.value}"
        self.gossip_refused[key] = self.gossip_refused.get(key, 0) + 1

    # -- ledger sync ---------------------------------------------------------------------------
    def sync(self, src: SimPeer, eff: SyncChain | FetchHeads) -> None:
        dst_i = self.sim.index.get(eff.peer_id)
        if dst_i is None or not self.reachable(src.idx, dst_i):
            return  # the daemon logs a failed sync and carries on; so does the core
        self.messages += 1
        self.bytes += FRAME_OVERHEAD
        self.by_kind["sync"] = self.by_kind.get("sync", 0) + 1
        self.sim.engine.after(self.delay(src.idx, dst_i), self._serve_sync, (src, dst_i, eff))

    def _serve_sync(self, arg: tuple[SimPeer, int, SyncChain | FetchHeads]) -> None:
        src, dst_i, eff = arg
        dst = self.sim.peers[dst_i]
        if not self.reachable(src.idx, dst_i) or not dst.online:
            return
        node = dst.node
        assert node is not None
        if isinstance(eff, FetchHeads):
            request: dict[str, Any] = {"heads": True}
        else:  # what the daemon sends (daemon/runner.py, SyncChain)
            request = {"author": eff.author, "first": eff.first, "last": eff.last}
        blocks = node.serve_ledger(request)
        if not blocks:
            return
        size = sum(len(b) for b in blocks) + FRAME_OVERHEAD
        self.messages += 1
        self.bytes += size
        self.sim.engine.after(
            self.transfer_time(dst_i, src.idx, size),
            src.deliver_event,
            BlocksReceived(tuple(blocks), dst.peer_id),
        )

    # -- blobs ---------------------------------------------------------------------------------
    def blob(self, src: int, dst: int, size: int, done: Callable[[bool, str], None]) -> None:
        """Move ``size`` bytes from ``src`` to ``dst``; ``done(ok, error)`` when it ends."""
        if not self.reachable(dst, src):
            self.sim.engine.after(
                self.cfg.connect_timeout_s, _call_done, (done, False, "unreachable")
            )
            return
        self.blob_bytes += size
        t = self.transfer_time(src, dst, size)

        def finish(_: Any) -> None:
            if self.reachable(dst, src) and self.sim.peers[dst].online:
                done(True, "")
            else:
                done(False, "transfer interrupted")

        self.sim.engine.after(t, finish)

    def count_ignored(self, what: str) -> None:
        self.ignored[what] = self.ignored.get(what, 0) + 1


def _call_done(arg: tuple[Callable[[bool, str], None], bool, str]) -> None:
    done, ok, err = arg
    done(ok, err)


def _pauses(n: int) -> float:
    return sum(RETRY_PAUSE_S * (i + 1) for i in range(n - 1))
