"""Inputs to the core: what happened. Past-tense names; ``now`` travels beside them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from p2pmesh.core.capability import Capabilities


@dataclass(frozen=True, slots=True)
class Ticked:
    """Periodic wake-up (the daemon sends one a second) so the core can age and refresh."""


@dataclass(frozen=True, slots=True)
class ProfileChanged:
    caps: Capabilities


@dataclass(frozen=True, slots=True)
class LocalImagesChanged:
    """The image references this node's engine holds (``name:tag`` and ``name@digest``).

    None: not known (no engine asked, or one whose images are not listed, like the benchmark
    executor): every allowed image then counts as present, as before the list existed.
    """

    images: frozenset[str] | None


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


@dataclass(frozen=True, slots=True)
class PeerAddressObserved:
    """The remote host of a connection to ``peer_id``, as the transport saw it (not as the peer
    declared it): the input of replica diversity (PROTOCOL.md §8.6)."""

    peer_id: str
    host: str


Event = (
    Ticked
    | ProfileChanged
    | LocalImagesChanged
    | RecordReceived
    | PeerConnected
    | PeerDisconnected
    | DialFailed
    | PeerDiscovered
    | PeerAddressObserved
)


# -- jobs (PROTOCOL.md §7) ---------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class JobSubmitted:
    job_id: str
    job: Any  # jobspec.WireJob
    bid_window_s: int


@dataclass(frozen=True, slots=True)
class MessageReceived:
    """A job-protocol message from ``from_peer`` (authenticated by the libp2p connection)."""

    kind: str  # "offer" | "bid" | "award" | "status" | "result" | "cancel"
    data: bytes
    from_peer: str


@dataclass(frozen=True, slots=True)
class SendFailed:
    job_id: str
    peer_id: str
    kind: str
    reason: str


@dataclass(frozen=True, slots=True)
class MessageDelivered:
    job_id: str
    peer_id: str
    kind: str


@dataclass(frozen=True, slots=True)
class CancelRequested:
    job_id: str


@dataclass(frozen=True, slots=True)
class ImageProgress:
    """How getting a job's image goes: ``detail`` starts "getting image" while it lasts."""

    job_id: str
    detail: str


@dataclass(frozen=True, slots=True)
class InputsFetched:
    job_id: str
    ok: bool
    error: str = ""


@dataclass(frozen=True, slots=True)
class ContainerFinished:
    job_id: str
    status: str
    exit_code: int | None
    output_digest: str
    output_size: int
    log_digest: str
    log_size: int
    log_truncated: bool
    run_ms: int
    cpu_ms: int
    max_memory_mb: int
    error: str = ""


@dataclass(frozen=True, slots=True)
class OutputsFetched:
    job_id: str
    worker: str
    ok: bool
    error: str = ""


@dataclass(frozen=True, slots=True)
class OutputsCompared:
    job_id: str
    workers: tuple[str, ...]
    groups: tuple[tuple[str, ...], ...]


@dataclass(frozen=True, slots=True)
class BlocksReceived:
    """Ledger blocks fetched from ``from_peer`` by a range or heads request."""

    blocks: tuple[bytes, ...]
    from_peer: str


@dataclass(frozen=True, slots=True)
class ServiceConnectRequested:
    """``from_peer`` (authenticated by its libp2p connection) asks to open connection
    ``conn_id`` into the service of ``job_id``; ``probe``: only ask, nothing opens."""

    job_id: str
    from_peer: str
    conn_id: int
    probe: bool = False


@dataclass(frozen=True, slots=True)
class ServiceConnectionClosed:
    job_id: str
    conn_id: int


JobEvent = (
    JobSubmitted
    | MessageReceived
    | SendFailed
    | MessageDelivered
    | CancelRequested
    | InputsFetched
    | ImageProgress
    | ContainerFinished
    | OutputsFetched
    | OutputsCompared
    | BlocksReceived
    | ServiceConnectRequested
    | ServiceConnectionClosed
)
