"""Outputs of the core: what a driver (daemon or simulator) must do. Imperative names.

Every effect type of every machine is defined here and listed in ``Effect``, so a driver can
dispatch through one table keyed by type and a test can prove that neither driver lacks a
handler (tests/unit/test_face.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Publish:
    topic: str
    data: bytes


@dataclass(frozen=True, slots=True)
class DhtPut:
    key: str
    value: bytes


@dataclass(frozen=True, slots=True)
class DhtGet:
    key: str


@dataclass(frozen=True, slots=True)
class Dial:
    """Connect to a peer; ``addrs`` are full multiaddrs ending in ``/p2p/<peer_id>``."""

    peer_id: str
    addrs: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ExchangePeers:
    """Ask ``peer_id`` for the signed records it holds (PROTOCOL.md §5, peer exchange)."""

    peer_id: str


@dataclass(frozen=True, slots=True)
class Persist:
    """Write ``value`` under (``table``, ``key``); ``value`` None deletes."""

    table: str
    key: str
    value: Any


@dataclass(frozen=True, slots=True)
class Log:
    level: str
    msg: str
    fields: dict[str, Any] = field(default_factory=dict)


# -- jobs (PROTOCOL.md §7) ---------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class SendMessage:
    """Deliver a signed job message to one peer over its stream protocol."""

    peer_id: str
    kind: str  # "bid" | "award" | "status" | "result" | "cancel"
    data: bytes
    job_id: str
    addrs: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class FetchInputs:
    job_id: str
    requester: str
    addrs: tuple[str, ...]
    refs: tuple[tuple[str, str, int, str], ...]  # (name, digest, size, kind)
    # The job's image, got first (pulled or fetched from the requester) when the engine lacks
    # it; the driver reports progress as ``ImageProgress`` events.
    image: str = ""
    image_id: str = ""


@dataclass(frozen=True, slots=True)
class RunContainer:
    job_id: str
    job: Any  # jobspec.WireJob


@dataclass(frozen=True, slots=True)
class StopContainer:
    job_id: str


@dataclass(frozen=True, slots=True)
class FetchOutputs:
    job_id: str
    worker: str
    output_digest: str
    output_size: int
    log_digest: str
    log_size: int


@dataclass(frozen=True, slots=True)
class CompareOutputs:
    """Compare fetched outputs by the job's rule; answer with ``OutputsCompared``."""

    job_id: str
    outputs: tuple[tuple[str, str], ...]  # (worker, output digest)
    rule: Any  # jobspec.ValidationRule


@dataclass(frozen=True, slots=True)
class AnswerServiceConnect:
    """The decision on a ``ServiceConnectRequested``: forward ``conn_id`` into the container of
    ``job_id`` at ``port``, or refuse with ``reason`` (PROTOCOL.md §7.13)."""

    job_id: str
    conn_id: int
    ok: bool
    reason: str = ""
    port: int = 0


# -- ledger (PROTOCOL.md §9) -------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class SyncChain:
    """Ask ``peer`` for blocks ``first..last`` of ``author``'s chain."""

    peer_id: str
    author: str
    first: int
    last: int


@dataclass(frozen=True, slots=True)
class FetchHeads:
    """Ask ``peer`` for the newest block of every chain it holds."""

    peer_id: str


@dataclass(frozen=True, slots=True)
class StoreBlock:
    """Write a block durably *before* anything that depends on it is sent."""

    author: str
    seq: int
    raw: bytes


Effect = (
    Publish
    | DhtPut
    | DhtGet
    | Dial
    | ExchangePeers
    | Persist
    | Log
    | SendMessage
    | FetchInputs
    | RunContainer
    | StopContainer
    | FetchOutputs
    | CompareOutputs
    | AnswerServiceConnect
    | SyncChain
    | FetchHeads
    | StoreBlock
)
EFFECT_TYPES: tuple[type, ...] = Effect.__args__  # type: ignore[attr-defined]
