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

from collections.abc import Callable
from dataclasses import dataclass
from fnmatch import fnmatchcase
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


# -- does a node with these capabilities fit a job? --------------------------------------------
# Written once, for the worker's bid policy (on its own capabilities, where it knows whether it
# allows networked jobs) and for the requester (on peers' records, which do not say, so
# ``network_allowed`` is None and that test is not held against the peer).
@dataclass(frozen=True, slots=True)
class Misfit:
    """Why a node does not fit a job: the first failing rule.

    ``kind`` is a stable key (counted in ``p2pmesh status`` and the requester's no-bid
    summary); ``reason`` is the worker's own words (PROTOCOL.md §7.2); ``one`` and ``many``
    finish "1 peer …" and "N peers …" in the requester's summary.
    """

    kind: str
    reason: str
    one: str
    many: str

    def phrase(self, n: int) -> str:
        return f"{n} {self.one if n == 1 else self.many}"


FitRule = Callable[[Capabilities, Any, "bool | None"], "Misfit | None"]


def fit_work(caps: Capabilities, spec: Any, net: bool | None) -> Misfit | None:
    if caps.work:
        return None
    return Misfit("work", "work is disabled on this node", "does not take work", "do not take work")


def fit_executor(caps: Capabilities, spec: Any, net: bool | None) -> Misfit | None:
    if "docker" in caps.executors:
        return None
    return Misfit("executor", "no working executor (Docker)", "has no Docker", "have no Docker")


def fit_image(caps: Capabilities, spec: Any, net: bool | None) -> Misfit | None:
    image = spec.image
    if any(fnmatchcase(image, pattern) for pattern in caps.allow_images):
        return None
    reason = f"image not allowed: {image}"
    if not caps.allow_images:
        reason += " (no --allow-image given)"
    return Misfit("image", reason, f"does not allow image {image}", f"do not allow image {image}")


def fit_network(caps: Capabilities, spec: Any, net: bool | None) -> Misfit | None:
    if spec.network != "none" and net is False:
        return Misfit(
            "network",
            "job asks for network access, not allowed here",
            "does not allow network access",
            "do not allow network access",
        )
    return None


def fit_resources(caps: Capabilities, spec: Any, net: bool | None) -> Misfit | None:
    r = spec.resources
    if r.millicpus > caps.cpus * 1000:
        return Misfit(
            "cpus",
            f"needs {r.millicpus / 1000:g} CPUs, have {caps.cpus}",
            f"has fewer than {r.millicpus / 1000:g} CPUs",
            f"have fewer than {r.millicpus / 1000:g} CPUs",
        )
    if r.ram_mib > caps.ram_mb:
        return Misfit(
            "ram",
            f"needs {r.ram_mib} MiB RAM, have {caps.ram_mb}",
            f"has less than {r.ram_mib} MiB RAM",
            f"have less than {r.ram_mib} MiB RAM",
        )
    if r.disk_mib > caps.disk_free_mb:
        return Misfit(
            "disk",
            f"needs {r.disk_mib} MiB disk, have {caps.disk_free_mb} free",
            f"has less than {r.disk_mib} MiB disk free",
            f"have less than {r.disk_mib} MiB disk free",
        )
    if r.gpus > len(caps.gpus):
        lack = "a GPU" if r.gpus == 1 else f"{r.gpus} GPUs"
        return Misfit(
            "gpu", f"needs {r.gpus} GPUs, have {len(caps.gpus)}", f"lacks {lack}", f"lack {lack}"
        )
    if r.gpus and sum(1 for g in caps.gpus if g.memory_mb >= r.gpu_memory_mib) < r.gpus:
        return Misfit(
            "gpu_memory",
            f"needs {r.gpus} GPUs with {r.gpu_memory_mib} MiB each",
            f"has too little GPU memory ({r.gpu_memory_mib} MiB needed)",
            f"have too little GPU memory ({r.gpu_memory_mib} MiB needed)",
        )
    return None


def fit_price(caps: Capabilities, spec: Any, net: bool | None) -> Misfit | None:
    if caps.price > spec.max_price:
        return Misfit(
            "price",
            f"price {caps.price} above max_price {spec.max_price}",
            f"asks more than max_price {spec.max_price}",
            f"ask more than max_price {spec.max_price}",
        )
    return None


FIT_RULES: tuple[FitRule, ...] = (
    fit_work,
    fit_executor,
    fit_image,
    fit_network,
    fit_resources,
    fit_price,
)


def misfit(spec: Any, caps: Capabilities, *, network_allowed: bool | None = None) -> Misfit | None:
    """Does a node with ``caps`` fit job ``spec``? None if so, else the first rule it fails.

    ``network_allowed`` is the node's own setting when it is known (the worker), None when it
    is not (a peer's record does not say).
    """
    for rule in FIT_RULES:
        why = rule(caps, spec, network_allowed)
        if why is not None:
            return why
    return None
