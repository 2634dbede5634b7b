"""The peer table: every peer we hold a valid, unexpired, signed capability record for.

Theory of operation. A record enters only through ``offer`` (after ``capability.check_record``
with the highest sequence already accepted for that peer), so a replayed or stale record can
never overwrite a newer one. ``expire(now)`` drops peers whose record has expired: a node that
stops refreshing ages out within one TTL. Connection state is tracked beside the record but
never creates an entry on its own, so only peers that proved who they are appear in ``peers``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from p2pmesh.core.capability import CapabilityRecord, check_record
from p2pmesh.errors import DecodeError, ValidationError


@dataclass(slots=True)
class PeerEntry:
    record: CapabilityRecord
    first_seen: float
    last_seen: float
    connected: bool = False


class PeerTable:
    def __init__(self, self_id: str) -> None:
        self._self_id = self_id
        self._entries: dict[str, PeerEntry] = {}
        # Highest sequence ever accepted per peer, kept after expiry so an old record replayed
        # later is still refused.
        self._seen_seq: dict[str, int] = {}
        self._connected: set[str] = set()
        self.replaced: CapabilityRecord | None = None  # what the last ``offer`` replaced

    def check(self, data: bytes, now: float) -> CapabilityRecord:
        """Validate without changing anything (used by gossip validators before forwarding)."""
        try:
            rec = check_record(data, now=now, known_seq=None)
        except (DecodeError, ValidationError):
            raise
        known = self._seen_seq.get(rec.peer_id)
        if known is not None and rec.seq <= known:
            raise ValidationError(f"stale or replayed record (seq {rec.seq} <= {known})")
        return rec

    def offer(self, data: bytes, now: float) -> CapabilityRecord:
        """Accept a record or raise ``DecodeError``/``ValidationError`` with the reason."""
        rec = self.check(data, now)
        self._seen_seq[rec.peer_id] = rec.seq
        if rec.peer_id == self._self_id:
            return rec
        entry = self._entries.get(rec.peer_id)
        self.replaced = entry.record if entry is not None else None
        if entry is None:
            self._entries[rec.peer_id] = PeerEntry(
                rec, now, now, connected=rec.peer_id in self._connected
            )
        else:
            entry.record = rec
            entry.last_seen = now
        return rec

    def known_seq(self, peer_id: str) -> int | None:
        return self._seen_seq.get(peer_id)

    def set_connected(self, peer_id: str, connected: bool, now: float) -> None:
        if connected:
            self._connected.add(peer_id)
        else:
            self._connected.discard(peer_id)
        entry = self._entries.get(peer_id)
        if entry is not None:
            entry.connected = connected
            entry.last_seen = now

    def is_connected(self, peer_id: str) -> bool:
        return peer_id in self._connected

    def connected_count(self) -> int:
        return len(self._connected)

    def connected_ids(self) -> list[str]:
        return sorted(self._connected)

    def expire(self, now: float) -> list[str]:
        gone = [pid for pid, e in self._entries.items() if e.record.expires_at <= now]
        for pid in gone:
            del self._entries[pid]
        return gone

    def next_expiry(self) -> float:
        """When ``expire`` will next drop a record (``inf`` with none held)."""
        return min((e.record.expires_at for e in self._entries.values()), default=math.inf)

    def get(self, peer_id: str) -> PeerEntry | None:
        return self._entries.get(peer_id)

    def entries(self) -> list[PeerEntry]:
        return list(self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)
