"""Inputs to the core: what happened. Past-tense names; ``now`` travels beside them."""

from __future__ import annotations

from dataclasses import dataclass

from p2pmesh.core.capability import Capabilities


@dataclass(frozen=True, slots=True)
class Ticked:
    """Periodic wake-up (the daemon sends one a second) so the core can age and refresh."""


@dataclass(frozen=True, slots=True)
class ProfileChanged:
    caps: Capabilities


@dataclass(frozen=True, slots=True)
class RecordReceived:
    data: bytes
    source: str  # "gossip" | "dht" | "pex" | "store"
    from_peer: str | None = None


@dataclass(frozen=True, slots=True)
class PeerConnected:
    peer_id: str


@dataclass(frozen=True, slots=True)
class PeerDisconnected:
    peer_id: str


@dataclass(frozen=True, slots=True)
class DialFailed:
    peer_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class PeerDiscovered:
    """A local-network (mDNS) announcement: a hint to dial, not proof of anything."""

    peer_id: str
    addrs: tuple[str, ...]


Event = (
    Ticked
    | ProfileChanged
    | RecordReceived
    | PeerConnected
    | PeerDisconnected
    | DialFailed
    | PeerDiscovered
)
