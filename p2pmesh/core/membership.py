"""Membership: our own capability record, the peer table, and the dialling that keeps us joined.

Theory of operation (issue: node). Each tick (1) drops peers whose records expired, (2) re-signs
and re-announces our own record when it is half-way to expiry or the profile changed
materially, and (3) when we hold no connection at all, dials the bootstrap peers with
exponential backoff, so a node that started while its bootstrap was down joins once it is back.
A record received from anywhere (gossip, DHT, peer exchange, our store) is checked by
``PeerTable`` and, if new, persisted; an unknown peer's addresses are dialled so the mesh does
not hang on one bootstrap node. A newly connected peer is asked for its peer table (peer
exchange) and looked up in the DHT if that brings no record.

Every deadline is an alarm (``_alarms``), read both by ``tick`` and by ``next_wakeup``.
Nothing here reads a clock or does I/O: ``now`` is unix seconds passed in by the node.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from p2pmesh.core import capability
from p2pmesh.core.auction.strategies import job_fits
from p2pmesh.core.capability import Capabilities, CapabilityRecord
from p2pmesh.core.crypto import Signer
from p2pmesh.core.effects import DhtGet, DhtPut, Dial, Effect, ExchangePeers, Log, Persist, Publish
from p2pmesh.core.peers import PeerTable
from p2pmesh.core.timers import INF, Alarm, earliest
from p2pmesh.errors import DecodeError, ValidationError

TOPIC_CAPABILITIES = "p2pmesh/capabilities/1"


def material(c: Capabilities) -> Capabilities:
    # Load and free disk move all the time; they ride along with timed refreshes only.
    return replace(c, load_milli=0, disk_free_mb=0)


def peer_id_of_addr(addr: str) -> str | None:
    parts = addr.rstrip("/").split("/")
    if len(parts) >= 2 and parts[-2] == "p2p":
        return parts[-1]
    return None


def full_addrs(peer_id: str, addrs: tuple[str, ...]) -> list[str]:
    return [f"{a}/p2p/{peer_id}" for a in addrs]


@dataclass(slots=True)
class Stats:
    records_accepted: int = 0
    records_refused: int = 0
    refused_reasons: dict[str, int] = field(default_factory=dict)
    published: int = 0


class Membership:
    def __init__(
        self, config: Any, signer: Signer, caps: Capabilities, *, last_seq: int, now: float
    ) -> None:
        self.config = config  # node.NodeConfig
        self.signer = signer
        self.peer_id = signer.peer_id
        self.caps = caps
        self.peers = PeerTable(self.peer_id)
        self.own: CapabilityRecord | None = None
        self.stats = Stats()
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
        del now  # the first tick publishes; nothing is due before it

    # -- time ------------------------------------------------------------------------------------
    def _alarms(self) -> Iterator[Alarm]:
        """Every deadline, in the order ``tick`` acts on them (lazily: each sees the last)."""
        if len(self.peers):
            yield Alarm((self.peers.next_expiry(), "expire", None, INF))
        if self._reannounce_at is not None:
            yield Alarm((self._reannounce_at, "reannounce", None, INF))
        if self._dht_lookup_at:
            for pid, at in list(self._dht_lookup_at.items()):
                yield Alarm((at, "dht-lookup", pid, INF))
        if self.peers.connected_count():
            yield Alarm((self._next_exchange, "exchange", None, INF))
        republish = self._last_publish + self.config.min_republish_interval_s
        if self._dirty or self.own is None:
            yield Alarm((republish, "publish", None, INF))
        else:
            yield Alarm(
                (
                    max(republish, (self.own.issued_at + self.own.expires_at) / 2),
                    "publish",
                    None,
                    INF,
                )
            )
        if not self.peers.connected_count() and self.config.bootstrap:
            yield Alarm((self._boot_next, "bootstrap", None, INF))

    def next_wakeup(self) -> float:
        return earliest(self._alarms())

    def tick(self, now: float) -> list[Effect]:
        if len(self._dialled) > 1024:
            cutoff = now - self.config.redial_after_s
            self._dialled = {p: t for p, t in self._dialled.items() if t >= cutoff}
        if self.peers.connected_count():
            self._boot_backoff = self.config.bootstrap_backoff_min_s
        out: list[Effect] = []
        for alarm in self._alarms():
            if alarm.due(now):
                out += self._fire(alarm, now)
        return out

    def _fire(self, alarm: Alarm, now: float) -> list[Effect]:
        what = alarm.what
        if what == "expire":
            out: list[Effect] = []
            for pid in self.peers.expire(now):
                out.append(Log("info", "peer aged out", {"peer": pid}))
                out.append(Persist("peers", pid, None))
            return out
        if what == "reannounce":
            self._reannounce_at = None
            self._dirty = True
            return []
        if what == "dht-lookup":
            pid = alarm.subject
            del self._dht_lookup_at[pid]
            if self.peers.get(pid) is None and self.peers.is_connected(pid):
                return [DhtGet(capability.dht_key(pid))]
            return []
        if what == "exchange":
            connected = self.peers.connected_ids()
            self._next_exchange = now + self.config.anti_entropy_s
            self._exchange_turn += 1
            return [ExchangePeers(connected[self._exchange_turn % len(connected)])]
        if what == "publish":
            return self._publish_own(now)
        assert what == "bootstrap"
        return self._bootstrap(now)

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
        raw = own.raw
        return [
            Persist("meta", "record_seq", seq),
            Publish(TOPIC_CAPABILITIES, raw),
            DhtPut(capability.dht_key(self.peer_id), raw),
        ]

    def _bootstrap(self, now: float) -> list[Effect]:
        self._boot_next = now + self._boot_backoff
        self._boot_backoff = min(self._boot_backoff * 2, self.config.bootstrap_backoff_max_s)
        out: list[Effect] = []
        for addr in self.config.bootstrap:
            pid = peer_id_of_addr(addr)
            if pid and pid != self.peer_id:
                out.append(Dial(pid, (addr,)))
        return out

    # -- events ------------------------------------------------------------------------------------
    def profile_changed(self, caps: Capabilities, now: float) -> list[Effect]:
        if material(caps) != material(self.caps):
            self._dirty = True
        self.caps = caps
        return self.tick(now)

    def record(self, data: bytes, source: str, from_peer: str | None, now: float) -> list[Effect]:
        try:
            rec = self.peers.offer(data, now)
        except (DecodeError, ValidationError) as exc:
            reason = str(exc)
            self.stats.records_refused += 1
            key = reason.split(" (")[0][:60]
            self.stats.refused_reasons[key] = self.stats.refused_reasons.get(key, 0) + 1
            return [
                Log(
                    "debug",
                    "record refused",
                    {"source": source, "from": from_peer, "reason": reason},
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
        if previous is None or material(previous.caps) != material(rec.caps):
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
                out.append(Dial(rec.peer_id, tuple(full_addrs(rec.peer_id, rec.caps.addrs))))
        return out

    def discovered(self, peer_id: str, addrs: tuple[str, ...], now: float) -> list[Effect]:
        if peer_id == self.peer_id or self.peers.is_connected(peer_id) or not addrs:
            return []
        if now - self._dialled.get(peer_id, float("-inf")) < self.config.redial_after_s:
            return []
        self._dialled[peer_id] = now
        return [Dial(peer_id, addrs)]

    def connected(self, peer_id: str, now: float) -> bool:
        """Mark ``peer_id`` connected; True (and the peer-exchange effects are due) if new."""
        first = not self.peers.is_connected(peer_id)
        if first and self.peers.connected_count() == 0:
            self._reannounce_at = now + self.config.reannounce_after_join_s
        self.peers.set_connected(peer_id, True, now)
        if first and self.peers.get(peer_id) is None:
            # Peer exchange with that peer usually brings its record within a second; look it
            # up in the DHT only if it has not (a DHT query costs far more CPU than an exchange).
            self._dht_lookup_at[peer_id] = now + self.config.dht_lookup_after_s
        return first

    def disconnected(self, peer_id: str, now: float) -> None:
        self.peers.set_connected(peer_id, False, now)

    # -- who could run a job ---------------------------------------------------------------
    def count_fitting(self, spec: Any, chosen: Any = None) -> int:
        """How many known peers' records fit ``spec`` (the bid policy's own test, ``job_fits``),
        of those for which ``chosen(peer_id)`` holds when it is given.

        A record does not say whether its peer allows jobs network access, so that test is left
        out here: counting a peer that will not bid only makes the requester wait out the bid
        window, never award too early.
        """
        return sum(
            1
            for e in self.peers.entries()
            if (chosen is None or chosen(e.record.peer_id))
            and job_fits(e.record.caps, spec, network_allowed=None) is None
        )

    def fit_summary(self, spec: Any, tried: Any = ()) -> dict[str, Any]:
        """Why known peers may not bid on ``spec``: the requester's "no bids yet" line.

        ``known`` counts the peers whose records we hold, ``fit`` those that fit and were not
        already tried for the job; ``reasons`` maps each phrase ("lack a GPU") to how many
        peers it holds for, from the first rule each fails (``capability.misfit``), most first.
        """
        return summarize_fit(
            [e.record.caps for e in self.peers.entries()],
            spec,
            tried=[e.record.peer_id in tried for e in self.peers.entries()],
        )

    # -- read-only views ---------------------------------------------------------------------------
    def records(self) -> list[bytes]:
        # Our own first: peer exchange sends a bounded prefix of this list.
        out = [self.own.raw] if self.own is not None else []
        out += [e.record.raw for e in self.peers.entries()]
        return out

    def peer_json(self, peer_id: str, reputation: float) -> dict[str, Any] | None:
        e = self.peers.get(peer_id)
        if e is None:
            return None
        r = e.record
        return {
            "peer_id": r.peer_id,
            "addrs": full_addrs(r.peer_id, r.caps.addrs),
            "capabilities": r.to_json(),
            "reputation": round(reputation, 4),
            "last_seen": e.last_seen,
            "first_seen": e.first_seen,
            "connected": e.connected,
            "record_seq": r.seq,
            "record_expires_at": r.expires_at,
        }

    def peer_ids(self) -> list[str]:
        return sorted(e.record.peer_id for e in self.peers.entries())

    def peer_addrs(self, peer_id: str) -> tuple[str, ...]:
        e = self.peers.get(peer_id)
        return tuple(full_addrs(peer_id, e.record.caps.addrs)) if e is not None else ()

    def stats_json(self) -> dict[str, Any]:
        return {
            "records_accepted": self.stats.records_accepted,
            "records_refused": self.stats.records_refused,
            "refused_reasons": dict(self.stats.refused_reasons),
            "published": self.stats.published,
        }


def summarize_fit(
    caps: list[Capabilities], spec: Any, *, tried: list[bool] | None = None
) -> dict[str, Any]:
    """``fit_summary`` over plain capability lists (``tried[i]``: peer i was already tried)."""
    counts: dict[str, list[Any]] = {}
    fit = 0
    for i, c in enumerate(caps):
        why = capability.misfit(spec, c)
        if why is None and tried is not None and tried[i]:
            key, one, many = "tried", "was already tried", "were already tried"
        elif why is None:
            fit += 1
            continue
        else:
            key, one, many = why.kind, why.one, why.many
        slot = counts.setdefault(key, [0, one, many])
        slot[0] += 1
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1][0], kv[0]))
    return {
        "known": len(caps),
        "fit": fit,
        "reasons": {(one if n == 1 else many): n for _, (n, one, many) in ranked},
    }


def no_bids_text(summary: dict[str, Any]) -> str:
    """``no bids yet: 7 peers known, 0 fit (5 lack a GPU, 2 do not allow image python:3.12)``"""
    known, fit = summary["known"], summary["fit"]
    text = f"no bids yet: {known} peer{'' if known == 1 else 's'} known, {fit} fit"
    reasons = summary.get("reasons") or {}
    if reasons:
        text += " (" + ", ".join(f"{n} {phrase}" for phrase, n in reasons.items()) + ")"
    return text


__all__ = [
    "TOPIC_CAPABILITIES",
    "Membership",
    "Stats",
    "full_addrs",
    "material",
    "no_bids_text",
    "peer_id_of_addr",
    "summarize_fit",
]
