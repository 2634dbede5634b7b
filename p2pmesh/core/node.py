"""The node's composition root: routes events to sub-machines and returns their effects.

Theory of operation (issue: node). Each ``Ticked`` the node (1) drops peers whose records expired,
(2) re-signs and re-announces its own record when it is half-way to expiry or the profile changed
materially, and (3) when it has no connection at all, dials the bootstrap peers with exponential
backoff, so a node that started while its bootstrap was down joins once it is back. A record
received from anywhere (gossip, DHT, peer exchange) is checked by ``PeerTable`` and, if new,
persisted; an unknown peer's addresses are dialled so the mesh does not hang on one bootstrap node.
A newly connected peer is asked for its peer table (peer exchange) and looked up in the DHT.

Nothing here reads a clock or does I/O: ``now`` is unix seconds passed in by the driver.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from fnmatch import fnmatchcase
from typing import Any

from p2pmesh.core import capability, reputation
from p2pmesh.core.auction.messages import parse_offer, parse_verdict
from p2pmesh.core.auction.provider import Provider
from p2pmesh.core.auction.requester import Requester
from p2pmesh.core.capability import Capabilities, CapabilityRecord
from p2pmesh.core.crypto import Signer
from p2pmesh.core.effects import DhtGet, DhtPut, Dial, Effect, ExchangePeers, Log, Persist, Publish
from p2pmesh.core.events import (
    BlocksReceived,
    CancelRequested,
    ContainerFinished,
    DialFailed,
    Event,
    InputsFetched,
    JobEvent,
    JobSubmitted,
    MessageDelivered,
    MessageReceived,
    OutputsCompared,
    OutputsFetched,
    PeerConnected,
    PeerDisconnected,
    PeerDiscovered,
    ProfileChanged,
    RecordReceived,
    SendFailed,
    Ticked,
)
from p2pmesh.core.ledger.block import parse_block
from p2pmesh.core.ledger.chain import open_fraud
from p2pmesh.core.ledger.payments import LedgerMachine
from p2pmesh.core.peers import PeerTable
from p2pmesh.errors import DecodeError, ValidationError

TOPIC_CAPABILITIES = "p2pmesh/capabilities/1"


@dataclass(frozen=True, slots=True)
class NodeConfig:
    record_ttl_s: int = 300
    # Dial peers we learn about until we hold this many connections: enough that the mesh
    # survives losing its bootstrap node, few enough that gossip fan-out stays cheap.
    target_connections: int = 8
    redial_after_s: float = 30.0
    bootstrap: tuple[str, ...] = ()  # full multiaddrs with /p2p/<id>
    bootstrap_backoff_min_s: float = 1.0
    bootstrap_backoff_max_s: float = 30.0
    min_republish_interval_s: float = 1.0
    # Announce again this long after the first connection: the start-up announcement went out
    # before we had any peer, and the next timed one is half a TTL away (150 s by default).
    reannounce_after_join_s: float = 2.0
    # Ask one connected peer (in turn) for its records this often: gossip at start-up misses
    # some peers, and peer exchange otherwise happens only when a connection opens.
    anti_entropy_s: float = 5.0
    # A dial in flight counts toward target_connections for this long.
    dial_pending_s: float = 10.0
    dht_lookup_after_s: float = 5.0  # no record from peer exchange by then: ask the DHT
    allow_network: bool = False  # may jobs that ask for network access run here?
    spot_check: float = 0.10  # share of "auto" jobs on a credible worker that are re-run
    credit_base: int = 100  # credit anyone may go negative by before earning anything
    fault_fork_ledger: bool = False  # FAULT fork-ledger: sign two blocks at one height

    def validate(self) -> None:
        if not 10 <= self.record_ttl_s <= capability.MAX_TTL_S:
            raise ValueError(f"record_ttl_s must be in [10, {capability.MAX_TTL_S}]")
        if not 0.0 <= self.spot_check <= 1.0:
            raise ValueError("spot_check must be in [0, 1]")
        if self.target_connections < 1:
            raise ValueError("target_connections must be >= 1")


def _material(c: Capabilities) -> Capabilities:
    # Load and free disk move all the time; they ride along with timed refreshes only.
    return replace(c, load_milli=0, disk_free_mb=0)


def peer_id_of_addr(addr: str) -> str | None:
    parts = addr.rstrip("/").split("/")
    if len(parts) >= 2 and parts[-2] == "p2p":
        return parts[-1]
    return None


@dataclass(slots=True)
class _Stats:
    records_accepted: int = 0
    records_refused: int = 0
    refused_reasons: dict[str, int] = field(default_factory=dict)
    published: int = 0


class Node:
    def __init__(
        self,
        config: NodeConfig,
        signer: Signer,
        caps: Capabilities,
        *,
        last_seq: int = 0,
        started_at: float = 0.0,
        rng: Any = None,
    ) -> None:
        config.validate()
        self.config = config
        self.signer = signer
        self.peer_id = signer.peer_id
        self.caps = caps
        self.peers = PeerTable(self.peer_id)
        self.book = reputation.ReputationBook(self.peer_id)
        self.own: CapabilityRecord | None = None
        self.started_at = started_at
        self._last_seq = last_seq
        self._dirty = True
        self._last_publish = float("-inf")
        self._dialled: dict[str, float] = {}
        self._boot_next = 0.0
        self._boot_backoff = config.bootstrap_backoff_min_s
        self._reannounce_at: float | None = None
        self._next_exchange = 0.0
        self._exchange_turn = 0
        self._dht_lookup_at: dict[str, float] = {}
        self.stats = _Stats()
        self.requester = Requester(
            signer,
            lambda pid: self.reputation_of(pid, self._now),
            book=self.book,
            rng=rng,
            spot_check=config.spot_check,
            eligible=self._eligible_bidders,
        )
        self.provider = Provider(signer, allow_network=config.allow_network)
        self.ledger = LedgerMachine(
            signer,
            self.book,
            credit_base=config.credit_base,
            fault_fork=config.fault_fork_ledger,
        )
        self.requester.pay = self.ledger.pay
        self.requester.excluded = self.ledger.ledger.excluded
        self.provider.requester_allowed = self.ledger.may_trade_with
        self._now = started_at

    def _eligible_bidders(self, job: Any) -> int:
        """How many known peers' capability records fit ``job`` (what decide_bid checks)."""
        spec, r, n = job.spec, job.spec.resources, 0
        for e in self.peers.entries():
            c = e.record.caps
            n += bool(
                c.work
                and "docker" in c.executors
                and c.price <= spec.max_price
                and any(fnmatchcase(spec.image, p) for p in c.allow_images)
                and r.millicpus <= c.cpus * 1000
                and r.ram_mib <= c.ram_mb
                and r.gpus <= len(c.gpus)
            )
        return n

    # -- the one entry point -------------------------------------------------------------
    def handle(self, event: Event | JobEvent, now: float) -> list[Effect]:
        self._now = now
        if isinstance(event, Ticked):
            t = int(now)
            return (
                self._tick(now)
                + self.requester.tick(t)
                + self.provider.tick(t)
                + self.ledger.tick(t)
            )
        if isinstance(event, BlocksReceived):
            return self.ledger.on_blocks(list(event.blocks), event.from_peer, int(now))
        if isinstance(event, MessageReceived | JobSubmitted | SendFailed | MessageDelivered):
            return self._job_message(event, int(now))
        if isinstance(event, CancelRequested):
            return self.requester.cancel(event.job_id, int(now))
        if isinstance(event, InputsFetched):
            return self.provider.on_inputs_fetched(event.job_id, event.ok, event.error, int(now))
        if isinstance(event, ContainerFinished):
            return self.provider.on_container_finished(event, int(now))
        if isinstance(event, OutputsCompared):
            return self.requester.on_outputs_compared(
                event.job_id, event.workers, [list(g) for g in event.groups], int(now)
            )
        if isinstance(event, OutputsFetched):
            return self.requester.on_outputs_fetched(
                event.job_id, event.worker, event.ok, event.error, int(now)
            )
        if isinstance(event, RecordReceived):
            return self._record(event, now)
        if isinstance(event, ProfileChanged):
            if _material(event.caps) != _material(self.caps):
                self._dirty = True
            self.caps = event.caps
            return self._tick(now)
        if isinstance(event, PeerConnected):
            return self._connected(event.peer_id, now)
        if isinstance(event, PeerDisconnected):
            self.peers.set_connected(event.peer_id, False, now)
            return [Log("info", "peer disconnected", {"peer": event.peer_id})]
        if isinstance(event, PeerDiscovered):
            return self._discovered(event, now)
        if isinstance(event, DialFailed):
            return [Log("debug", "dial failed", {"peer": event.peer_id, "reason": event.reason})]
        raise TypeError(f"unknown event {event!r}")

    def _job_message(
        self, ev: MessageReceived | JobSubmitted | SendFailed | MessageDelivered, now: int
    ) -> list[Effect]:
        if isinstance(ev, JobSubmitted):
            addrs = tuple(f"{a}/p2p/{self.peer_id}" for a in self.caps.addrs)
            return self.requester.submit(
                ev.job_id, ev.job, now=now, bid_window_s=ev.bid_window_s, addrs=addrs
            )
        if isinstance(ev, SendFailed):
            return [
                Log(
                    "debug",
                    "send failed",
                    {"job": ev.job_id, "peer": ev.peer_id, "kind": ev.kind, "reason": ev.reason},
                ),
                *self.requester.on_send_failed(ev.job_id, ev.peer_id, ev.kind, ev.reason, now),
            ]
        if isinstance(ev, MessageDelivered):
            if ev.kind == "result":
                return self.provider.on_result_delivered(ev.job_id)
            return []
        kind, data, peer = ev.kind, ev.data, ev.from_peer
        if kind == "offer":
            return self.provider.on_offer(data, self.caps, now)
        if kind == "bid":
            return self.requester.on_bid(data, peer, now)
        if kind == "award":
            return self.provider.on_award(data, peer, self.caps, now)
        if kind == "status":
            return self.requester.on_status(data, peer, now)
        if kind == "result":
            return self.requester.on_result(data, peer, now)
        if kind == "cancel":
            return self.provider.on_cancel(data, peer, now)
        if kind == "verdict":
            return self._verdict(data, now)
        if kind == "pay":
            return self.ledger.on_pay(data, peer, now, self.provider.award_price)
        if kind == "paid":
            return self.ledger.on_paid(data, peer, now)
        if kind == "head":
            return self.ledger.on_head(data, peer, now)
        if kind == "fraud":
            return self.ledger.on_fraud(data, now)
        return [Log("debug", "unknown message kind", {"kind": kind[:32], "from": peer})]

    def _verdict(self, data: bytes, now: int) -> list[Effect]:
        """A verdict signed by another requester: evidence weighted by our trust in its author.

        Only authors we already trust above the prior count at all, so a swarm of fresh
        identities vouching for each other adds nothing.
        """
        try:
            v = parse_verdict(data)
        except (DecodeError, ValidationError) as exc:
            return [Log("debug", "verdict refused", {"reason": str(exc)})]
        if v.requester == self.peer_id:
            return []
        prior = reputation.PRIOR_GOOD / (reputation.PRIOR_GOOD + reputation.PRIOR_BAD)
        weight = max(0.0, (self.book.score(v.requester, now) - prior) / (1 - prior))
        if weight <= 0 or v.outcome == "inconclusive":
            return []
        for w in v.agreeing if len(v.agreeing) >= 2 else ():
            self.book.record(w, "agreed", now, weight=weight, job_id=v.job_id, source=v.requester)
        for w in v.dissenting:
            self.book.record(
                w, "dissented", now, weight=weight, job_id=v.job_id, source=v.requester
            )
        return []

    def check_verdict(self, data: bytes, now: float) -> bool:
        try:
            v = parse_verdict(data)
        except (DecodeError, ValidationError):
            return False
        return v.at <= now + capability.MAX_CLOCK_SKEW_S

    def check_block(self, data: bytes, now: float) -> bool:
        """Ledger-heads validator: a well-formed, signed block (chain rules apply on ingest)."""
        try:
            parse_block(data)
        except (DecodeError, ValidationError):
            return False
        return True

    def check_fraud(self, data: bytes, now: float) -> bool:
        try:
            open_fraud(data)
        except (DecodeError, ValidationError):
            return False
        return True

    def check_offer(self, data: bytes, now: float) -> bool:
        """Offers-topic validator: signed, well-formed, within its deadline."""
        try:
            offer = parse_offer(data)
        except (DecodeError, ValidationError):
            return False
        return offer.created_at <= now + capability.MAX_CLOCK_SKEW_S and offer.deadline_at > now

    def check_gossip_record(self, data: bytes, now: float) -> bool:
        """Topic validator: True only for a record we would accept (nothing is changed)."""
        try:
            self.peers.check(data, now)
        except (DecodeError, ValidationError):
            return False
        return True

    def next_wakeup(self) -> float:
        """The earliest ``now`` at which a ``Ticked`` would do anything (``-inf``: at once).

        A driver may tick less often than every second without changing what the node does, as
        long as it ticks at this time (re-asked after every ``handle``). The daemon ticks every
        second anyway; the simulator uses this to skip the hundreds of empty ticks a job would
        otherwise cost (docs/SIMULATIONS.md). Each term mirrors one condition of ``_tick`` and
        the machines' ``tick``; earlier is always safe, later never.
        """
        at = min(
            self.requester.next_wakeup(),
            self.provider.next_wakeup(),
            self.ledger.next_wakeup(),
        )
        if len(self.peers):
            at = min(at, self.peers.next_expiry())
        if self._reannounce_at is not None:
            at = min(at, self._reannounce_at)
        if self._dht_lookup_at:
            at = min(at, min(self._dht_lookup_at.values()))
        if self.peers.connected_count():
            at = min(at, self._next_exchange)
        elif self.config.bootstrap:
            at = min(at, self._boot_next)
        republish = self._last_publish + self.config.min_republish_interval_s
        if self._dirty or self.own is None:
            at = min(at, republish)
        else:
            at = min(at, max(republish, (self.own.issued_at + self.own.expires_at) / 2))
        return at

    # -- handlers --------------------------------------------------------------------------
    def _tick(self, now: float) -> list[Effect]:
        out: list[Effect] = []
        if len(self._dialled) > 1024:
            cutoff = now - self.config.redial_after_s
            self._dialled = {p: t for p, t in self._dialled.items() if t >= cutoff}
        for pid in self.peers.expire(now):
            out.append(Log("info", "peer aged out", {"peer": pid}))
            out.append(Persist("peers", pid, None))
        if self._reannounce_at is not None and now >= self._reannounce_at:
            self._reannounce_at = None
            self._dirty = True
        for pid, at in list(self._dht_lookup_at.items()):
            if now >= at:
                del self._dht_lookup_at[pid]
                if self.peers.get(pid) is None and self.peers.is_connected(pid):
                    out.append(DhtGet(capability.dht_key(pid)))
        connected = self.peers.connected_ids()
        if connected and now >= self._next_exchange:
            self._next_exchange = now + self.config.anti_entropy_s
            self._exchange_turn += 1
            out.append(ExchangePeers(connected[self._exchange_turn % len(connected)]))
        half_life = self.own is None or now >= (self.own.issued_at + self.own.expires_at) / 2
        if (self._dirty or half_life) and now - self._last_publish >= (
            self.config.min_republish_interval_s
        ):
            out.extend(self._publish_own(now))
        out.extend(self._bootstrap(now))
        return out

    def _publish_own(self, now: float) -> list[Effect]:
        # Millisecond clock as a floor keeps sequence numbers rising across restarts even if the
        # stored counter was lost; +1 keeps them rising within one millisecond.
        seq = max(self._last_seq + 1, int(now * 1000))
        try:
            own = capability.build_record(
                self.signer, self.caps, seq=seq, now=int(now), ttl_s=self.config.record_ttl_s
            )
        except (DecodeError, ValidationError) as exc:
            # Our own profile breaks the record limits (say, 20 GPUs): keep running without a
            # fresh record rather than crash, and say why once per attempt.
            self._dirty = False
            self._last_publish = now
            return [
                Log("error", "own capability record refused by the limits", {"reason": str(exc)})
            ]
        self._last_seq = seq
        self.own = own
        self._dirty = False
        self._last_publish = now
        self.stats.published += 1
        raw = self.own.raw
        return [
            Persist("meta", "record_seq", seq),
            Publish(TOPIC_CAPABILITIES, raw),
            DhtPut(capability.dht_key(self.peer_id), raw),
        ]

    def _bootstrap(self, now: float) -> list[Effect]:
        if self.peers.connected_count() > 0:
            self._boot_backoff = self.config.bootstrap_backoff_min_s
            return []
        if not self.config.bootstrap or now < self._boot_next:
            return []
        self._boot_next = now + self._boot_backoff
        self._boot_backoff = min(self._boot_backoff * 2, self.config.bootstrap_backoff_max_s)
        out: list[Effect] = []
        for addr in self.config.bootstrap:
            pid = peer_id_of_addr(addr)
            if pid and pid != self.peer_id:
                out.append(Dial(pid, (addr,)))
        return out

    def _record(self, ev: RecordReceived, now: float) -> list[Effect]:
        try:
            rec = self.peers.offer(ev.data, now)
        except (DecodeError, ValidationError) as exc:
            reason = str(exc)
            self.stats.records_refused += 1
            key = reason.split(" (")[0][:60]
            self.stats.refused_reasons[key] = self.stats.refused_reasons.get(key, 0) + 1
            return [
                Log(
                    "debug",
                    "record refused",
                    {"source": ev.source, "from": ev.from_peer, "reason": reason},
                )
            ]
        if rec.peer_id == self.peer_id:
            if rec.seq > self._last_seq:
                # An older run of ours published higher (the clock went back and the stored
                # counter was lost): climb above it, or peers would refuse us as stale.
                self._last_seq = rec.seq
                self._dirty = True
            return []
        self.stats.records_accepted += 1
        out: list[Effect] = []
        # A refresh with the same capabilities needs no disk write: the stored copy only
        # seeds the table after a restart, and an expired one is refused there anyway.
        previous = self.peers.replaced
        if previous is None or _material(previous.caps) != _material(rec.caps):
            out.append(Persist("peers", rec.peer_id, rec.raw))
        if not self.peers.is_connected(rec.peer_id) and rec.caps.addrs:
            last = self._dialled.get(rec.peer_id, float("-inf"))
            pending = sum(
                1
                for pid, t in self._dialled.items()
                if now - t < self.config.dial_pending_s and not self.peers.is_connected(pid)
            )
            if (
                self.peers.connected_count() + pending < self.config.target_connections
                and now - last >= self.config.redial_after_s
            ):
                self._dialled[rec.peer_id] = now
                full = tuple(f"{a}/p2p/{rec.peer_id}" for a in rec.caps.addrs)
                out.append(Dial(rec.peer_id, full))
        return out

    def _discovered(self, ev: PeerDiscovered, now: float) -> list[Effect]:
        if ev.peer_id == self.peer_id or self.peers.is_connected(ev.peer_id) or not ev.addrs:
            return []
        if now - self._dialled.get(ev.peer_id, float("-inf")) < self.config.redial_after_s:
            return []
        self._dialled[ev.peer_id] = now
        return [Dial(ev.peer_id, ev.addrs)]

    def _connected(self, peer_id: str, now: float) -> list[Effect]:
        first = not self.peers.is_connected(peer_id)
        if first and self.peers.connected_count() == 0:
            self._reannounce_at = now + self.config.reannounce_after_join_s
        self.peers.set_connected(peer_id, True, now)
        if not first:
            return []
        out: list[Effect] = [
            Log("info", "peer connected", {"peer": peer_id}),
            ExchangePeers(peer_id),
            *self.ledger.on_connected(peer_id),
        ]
        if self.peers.get(peer_id) is None:
            # Peer exchange with that peer usually brings its record within a second; look it
            # up in the DHT only if it has not (a DHT query costs far more CPU than an exchange).
            self._dht_lookup_at[peer_id] = now + self.config.dht_lookup_after_s
        return out

    # -- read-only views -------------------------------------------------------------------
    def records(self) -> list[bytes]:
        # Our own first: peer exchange sends a bounded prefix of this list.
        out = [self.own.raw] if self.own is not None else []
        out += [e.record.raw for e in self.peers.entries()]
        return out

    def reputation_of(self, peer_id: str, now: float) -> float:
        return self.book.score(peer_id, now)

    def peers_json(self, now: float) -> list[dict[str, Any]]:
        out = []
        for e in sorted(self.peers.entries(), key=lambda e: e.record.peer_id):
            r = e.record
            out.append(
                {
                    "peer_id": r.peer_id,
                    "addrs": [f"{a}/p2p/{r.peer_id}" for a in r.caps.addrs],
                    "capabilities": r.to_json(),
                    "reputation": round(self.reputation_of(r.peer_id, now), 4),
                    "last_seen": e.last_seen,
                    "first_seen": e.first_seen,
                    "connected": e.connected,
                    "record_seq": r.seq,
                    "record_expires_at": r.expires_at,
                }
            )
        return out

    def node_json(self, now: float) -> dict[str, Any]:
        own = self.own
        return {
            "peer_id": self.peer_id,
            "public_key": self.signer.public_key.hex(),
            "addrs": [f"{a}/p2p/{self.peer_id}" for a in self.caps.addrs],
            "capabilities": own.to_json() if own else {},
            "started_at": self.started_at,
            "peers_connected": self.peers.connected_count(),
            "peers_known": len(self.peers),
            "work": self.caps.work,
            "record_seq": own.seq if own else 0,
            "stats": {
                "records_accepted": self.stats.records_accepted,
                "records_refused": self.stats.records_refused,
                "refused_reasons": dict(self.stats.refused_reasons),
                "published": self.stats.published,
            },
        }
