"""Signed capability records: what a node has, what it charges, how to reach it (PROTOCOL.md §4).

A record is a ``capability`` envelope whose body is::

    {"peer_id", "seq", "issued_at", "expires_at", "addrs", "cpus", "cpus_physical", "ram_mb",
     "disk_free_mb", "load_milli", "gpus": [{"name", "memory_mb", "driver", "cc"}],
     "executors", "price", "max_jobs", "work", "allow_images", "agent"}

Rules a receiver enforces (``check_record``): valid signature; the envelope key *is* the claimed
peer ID; schema and sizes; ``issued_at`` not in the future beyond ``MAX_CLOCK_SKEW_S``;
``expires_at`` in the future and at most ``MAX_TTL_S`` ahead; a sequence number higher than any
already accepted from that peer (otherwise it is a replay or stale). Times are integer unix
seconds: records cross machines, so they carry wall-clock time, passed in as ``now``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from p2pmesh.core import schema
from p2pmesh.core.crypto import Signer
from p2pmesh.core.envelope import Opened, open_envelope, seal
from p2pmesh.errors import DecodeError, ValidationError

# A record is ~600 bytes with one GPU; 8 KiB allows 16 GPUs and 16 long addresses.
MAX_RECORD_BYTES = 8 * 1024
# Long enough that a node can miss a refresh or two; short enough that a dead node leaves the
# table within minutes. Receivers refuse anything claiming to live longer.
MAX_TTL_S = 3600
MAX_CLOCK_SKEW_S = 120
MAX_ADDRS = 16
MAX_ADDR_CHARS = 256
MAX_GPUS = 16
MAX_IMAGES = 64
DHT_NAMESPACE = "p2pmesh-cap"

_BODY_FIELDS = {
    "peer_id",
    "seq",
    "issued_at",
    "expires_at",
    "addrs",
    "cpus",
    "cpus_physical",
    "ram_mb",
    "disk_free_mb",
    "load_milli",
    "gpus",
    "executors",
    "price",
    "max_jobs",
    "work",
    "allow_images",
    "agent",
}
_GPU_FIELDS = {"name", "memory_mb", "driver", "cc"}
_U63 = 2**63 - 1


@dataclass(frozen=True, slots=True)
class Gpu:
    name: str
    memory_mb: int
    driver: str
    cc: str


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a node offers; everything in a record except identity, sequence and times."""

    addrs: tuple[str, ...]
    cpus: int
    cpus_physical: int
    ram_mb: int
    disk_free_mb: int
    load_milli: int
    gpus: tuple[Gpu, ...]
    executors: tuple[str, ...]
    price: int
    max_jobs: int
    work: bool
    allow_images: tuple[str, ...]
    agent: str


@dataclass(frozen=True, slots=True)
class CapabilityRecord:
    peer_id: str
    seq: int
    issued_at: int
    expires_at: int
    caps: Capabilities
    raw: bytes  # the exact signed bytes, re-gossiped and stored as received

    def to_json(self) -> dict[str, Any]:
        """The shape ``p2pmesh peers --json`` promises (DESIGN.md §5)."""
        c = self.caps
        return {
            "cpus": c.cpus,
            "cpus_physical": c.cpus_physical,
            "ram_gb": round(c.ram_mb / 1024, 2),
            "disk_free_gb": round(c.disk_free_mb / 1024, 1),
            "load": c.load_milli / 1000,
            "gpus": [
                {
                    "name": g.name,
                    "memory_gb": round(g.memory_mb / 1024, 1),
                    "driver": g.driver,
                    "compute_capability": g.cc,
                }
                for g in c.gpus
            ],
            "executors": list(c.executors),
            "price": c.price,
            "max_jobs": c.max_jobs,
            "work": c.work,
            "allow_images": list(c.allow_images),
            "agent": c.agent,
        }


def dht_key(peer_id: str) -> str:
    return f"/{DHT_NAMESPACE}/{peer_id}"


def caps_body(caps: Capabilities) -> dict[str, Any]:
    return {
        "addrs": list(caps.addrs),
        "cpus": caps.cpus,
        "cpus_physical": caps.cpus_physical,
        "ram_mb": caps.ram_mb,
        "disk_free_mb": caps.disk_free_mb,
        "load_milli": caps.load_milli,
        "gpus": [
            {"name": g.name, "memory_mb": g.memory_mb, "driver": g.driver, "cc": g.cc}
            for g in caps.gpus
        ],
        "executors": list(caps.executors),
        "price": caps.price,
        "max_jobs": caps.max_jobs,
        "work": caps.work,
        "allow_images": list(caps.allow_images),
        "agent": caps.agent,
    }


def build_record(
    signer: Signer, caps: Capabilities, *, seq: int, now: int, ttl_s: int
) -> CapabilityRecord:
    """Sign a fresh record. ``seq`` must exceed every earlier one from this key."""
    if not 0 < ttl_s <= MAX_TTL_S:
        raise ValueError(f"ttl_s must be in (0, {MAX_TTL_S}]")
    body = {
        "peer_id": signer.peer_id,
        "seq": seq,
        "issued_at": now,
        "expires_at": now + ttl_s,
        **caps_body(caps),
    }
    raw = seal(signer, "capability", body)
    return parse_record(raw)


def parse_record(data: bytes) -> CapabilityRecord:
    """Decode, verify signature and schema. Time and replay rules are in ``check_record``."""
    opened = open_envelope(data, "capability", max_bytes=MAX_RECORD_BYTES)
    return _from_opened(opened)


def _from_opened(opened: Opened) -> CapabilityRecord:
    b = opened.body
    schema.exact_keys(b, _BODY_FIELDS)
    peer_id = schema.text(b, "peer_id", 64, min_len=1)
    if peer_id != opened.signer:
        raise ValidationError("peer_id is not the signer's key")
    addrs = schema.text_list(b, "addrs", MAX_ADDRS, MAX_ADDR_CHARS)
    for a in addrs:
        if not a.startswith("/"):
            raise ValidationError("addrs: each must be a multiaddr starting with '/'")
    raw_gpus = b.get("gpus")
    if not isinstance(raw_gpus, list) or len(raw_gpus) > MAX_GPUS:
        raise ValidationError(f"gpus: must be a list of at most {MAX_GPUS}")
    gpus = []
    for g in raw_gpus:
        if not isinstance(g, dict):
            raise ValidationError("gpus: items must be maps")
        schema.exact_keys(g, _GPU_FIELDS)
        gpus.append(
            Gpu(
                name=schema.text(g, "name", 128, min_len=1),
                memory_mb=schema.int_in(g, "memory_mb", 0, 2**31),
                driver=schema.text(g, "driver", 64),
                cc=schema.text(g, "cc", 16),
            )
        )
    caps = Capabilities(
        addrs=addrs,
        cpus=schema.int_in(b, "cpus", 0, 65536),
        cpus_physical=schema.int_in(b, "cpus_physical", 0, 65536),
        ram_mb=schema.int_in(b, "ram_mb", 0, 2**40),
        disk_free_mb=schema.int_in(b, "disk_free_mb", 0, 2**50),
        load_milli=schema.int_in(b, "load_milli", 0, 2**31),
        gpus=tuple(gpus),
        executors=schema.text_list(b, "executors", 8, 32),
        price=schema.int_in(b, "price", 0, 2**31),
        max_jobs=schema.int_in(b, "max_jobs", 0, 4096),
        work=schema.boolean(b, "work"),
        allow_images=schema.text_list(b, "allow_images", MAX_IMAGES, 256),
        agent=schema.text(b, "agent", 64),
    )
    seq = schema.int_in(b, "seq", 1, _U63)
    issued = schema.int_in(b, "issued_at", 0, _U63)
    expires = schema.int_in(b, "expires_at", 0, _U63)
    if expires <= issued:
        raise ValidationError("expires_at must be after issued_at")
    return CapabilityRecord(peer_id, seq, issued, expires, caps, opened.raw)


def check_record(data: bytes, *, now: float, known_seq: int | None) -> CapabilityRecord:
    """Everything a receiver checks before accepting or forwarding a record.

    Raises ``DecodeError`` or ``ValidationError`` with the reason; never anything else.
    """
    rec = parse_record(data)
    if rec.issued_at > now + MAX_CLOCK_SKEW_S:
        raise ValidationError("issued_at is in the future")
    if rec.expires_at <= now:
        raise ValidationError("record has expired")
    if rec.expires_at > now + MAX_TTL_S + MAX_CLOCK_SKEW_S:
        raise ValidationError("expires_at is too far in the future")
    if known_seq is not None and rec.seq <= known_seq:
        raise ValidationError(f"stale or replayed record (seq {rec.seq} <= {known_seq})")
    return rec


def select_newest(values: list[bytes]) -> int:
    """DHT selector (PROTOCOL.md §4.3): the index of the best value, 0 if none parses.

    The best value is the greatest by ``(seq, envelope bytes)`` among those that parse, so the
    choice does not depend on the order py-libp2p lists them in (``[existing, new]`` for a
    remote put, ``[new, existing]`` for a local one): equal ``seq`` with different bytes is a
    tie, and the bytewise-greater envelope wins it. Of byte-identical copies the *last* is
    chosen, so a remote peer re-putting the value we hold is acknowledged, not refused.
    """
    best, best_rank = 0, None
    for i, v in enumerate(values):
        try:
            seq = parse_record(v).seq
        except (DecodeError, ValidationError):
            continue
        rank = (seq, v)
        if best_rank is None or rank >= best_rank:
            best, best_rank = i, rank
    return best
