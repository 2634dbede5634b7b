"""Job protocol messages (PROTOCOL.md §7): offer, bid, award, status, result, cancel.

Each is a signed envelope (``core.envelope``) with its own purpose tag. Parsers check signature,
schema and sizes and return frozen values; time rules that need ``now`` are in the machines.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

from p2pmesh.core import codec, schema
from p2pmesh.core.crypto import Signer
from p2pmesh.core.envelope import open_envelope, seal
from p2pmesh.core.jobspec import WireJob, job_from_wire
from p2pmesh.core.memo import by_bytes
from p2pmesh.errors import JobSpecError, ValidationError

TOPIC_OFFERS = "p2pmesh/offers/1"
# The job's wire form may take up to jobspec.MAX_WIRE_BYTES (48 KiB); the rest covers the
# envelope, 16 addresses and 64 excluded peer IDs.
MAX_OFFER_BYTES = 64 * 1024
MAX_SMALL_BYTES = 4 * 1024
MAX_ROUND = 1000  # re-offers of one job; a requester stops re-offering here (requester._offer)
_U63 = 2**63 - 1
_JOB_ID = re.compile(r"^[0-9a-f]{32}$")
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
RESULT_STATUSES = ("exited", "timeout", "oom", "killed", "out_too_large", "out_refused", "error")
# A result's error text: why the job failed, in words every honest worker signs identically
# (e.g. which /out entry was refused). Required for out_refused, absent when the job exited.
MAX_RESULT_ERROR = 200
_RESULT_KEYS = frozenset(
    {
        "job_id",
        "job_digest",
        "status",
        "exit_code",
        "output_digest",
        "output_size",
        "log_digest",
        "log_size",
        "log_truncated",
        "run_ms",
        "cpu_ms",
        "max_memory_mb",
        "finished_at",
    }
)
STATUS_STATES = ("accepted", "declined", "fetching", "running")


def _job_id(d: dict[str, Any]) -> str:
    v = d.get("job_id")
    if not isinstance(v, str) or not _JOB_ID.fullmatch(v):
        raise ValidationError("job_id: must be 32 lowercase hex characters")
    return v


def _digest(d: dict[str, Any], key: str) -> str:
    v = d.get(key)
    if not isinstance(v, str) or not _DIGEST.fullmatch(v):
        raise ValidationError(f"{key}: must be sha256:<64 hex>")
    return v


def raw_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# -- offer -------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Offer:
    job_id: str
    requester: str
    job: WireJob
    job_digest: str
    created_at: int
    deadline_at: int
    bid_window_s: int
    round: int
    addrs: tuple[str, ...]
    exclude: tuple[str, ...]  # peers that must not bid (already awarded, lost or declined)
    raw: bytes
    select: int | None = None  # bidder sortition threshold (sortition.py); None: anyone bids


def build_offer(
    signer: Signer,
    *,
    job_id: str,
    job: WireJob,
    created_at: int,
    deadline_at: int,
    bid_window_s: int,
    round_: int,
    addrs: tuple[str, ...],
    exclude: tuple[str, ...] = (),
    select: int | None = None,
) -> Offer:
    body: dict[str, Any] = {
        "job_id": job_id,
        "job": job.wire(),
        "job_digest": job.digest,
        "created_at": created_at,
        "deadline_at": deadline_at,
        "bid_window_s": bid_window_s,
        "round": round_,
        "addrs": list(addrs),
        "exclude": sorted(exclude),
    }
    if select is not None:
        body["select"] = select
    return parse_offer(seal(signer, "offer", body))


@by_bytes
def parse_offer(raw: bytes) -> Offer:
    o = open_envelope(raw, "offer", max_bytes=MAX_OFFER_BYTES)
    b = o.body
    schema.exact_keys(
        b,
        {
            "job_id",
            "job",
            "job_digest",
            "created_at",
            "deadline_at",
            "bid_window_s",
            "round",
            "addrs",
            "exclude",
        },
        {"select"},
    )
    try:
        job = job_from_wire(b.get("job"))
    except JobSpecError as exc:
        raise ValidationError(f"job: {exc}") from None
    digest = _digest(b, "job_digest")
    if digest != job.digest:
        raise ValidationError("job_digest does not match the job")
    created = schema.int_in(b, "created_at", 0, _U63)
    deadline = schema.int_in(b, "deadline_at", 0, _U63)
    if deadline <= created:
        raise ValidationError("deadline_at must be after created_at")
    return Offer(
        job_id=_job_id(b),
        requester=o.signer,
        job=job,
        job_digest=digest,
        created_at=created,
        deadline_at=deadline,
        bid_window_s=schema.int_in(b, "bid_window_s", 1, 600),
        round=schema.int_in(b, "round", 0, MAX_ROUND),
        addrs=schema.text_list(b, "addrs", 16, 256),
        exclude=schema.text_list(b, "exclude", 64, 64),
        raw=raw,
        # 1 .. 2^32 - 1: 0 would let nobody bid, and 2^32 or more is written by leaving it out.
        select=schema.int_in(b, "select", 1, 2**32 - 1) if "select" in b else None,
    )


# -- bid ---------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Bid:
    job_id: str
    job_digest: str
    round: int
    bidder: str
    price: int
    eta_s: int
    capacity: int
    created_at: int
    raw: bytes


def build_bid(
    signer: Signer, offer: Offer, *, price: int, eta_s: int, capacity: int, now: int
) -> Bid:
    body = {
        "job_id": offer.job_id,
        "job_digest": offer.job_digest,
        "round": offer.round,
        "requester": offer.requester,
        "price": price,
        "eta_s": eta_s,
        "capacity": capacity,
        "created_at": now,
    }
    return parse_bid(seal(signer, "bid", body), requester=offer.requester)


@by_bytes
def parse_bid(raw: bytes, *, requester: str) -> Bid:
    """``requester`` is who we are: a bid addressed to someone else is refused (no forwarding)."""
    o = open_envelope(raw, "bid", max_bytes=MAX_SMALL_BYTES)
    b = o.body
    schema.exact_keys(
        b,
        {"job_id", "job_digest", "round", "requester", "price", "eta_s", "capacity", "created_at"},
    )
    if b.get("requester") != requester:
        raise ValidationError("bid is addressed to another requester")
    return Bid(
        job_id=_job_id(b),
        job_digest=_digest(b, "job_digest"),
        round=schema.int_in(b, "round", 0, 1000),
        bidder=o.signer,
        price=schema.int_in(b, "price", 0, 2**31),
        eta_s=schema.int_in(b, "eta_s", 0, 7 * 86400),
        capacity=schema.int_in(b, "capacity", 0, 4096),
        created_at=schema.int_in(b, "created_at", 0, _U63),
        raw=raw,
    )


def bids_digest(raw_bids: list[bytes]) -> str:
    """Digest of every bid the requester considered: canonical list of the raw bids, sorted."""
    return raw_digest(codec.encode(sorted(raw_bids), max_bytes=64 * MAX_SMALL_BYTES * 16))


# -- award -------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Award:
    job_id: str
    job_digest: str
    round: int
    requester: str
    worker: str
    price: int
    winners: tuple[tuple[str, int], ...]
    bids_digest: str
    bids_considered: int
    created_at: int
    deadline_at: int
    raw: bytes


def build_award(
    signer: Signer,
    *,
    job_id: str,
    job_digest: str,
    round_: int,
    worker: str,
    price: int,
    winners: list[tuple[str, int]],
    considered: list[bytes],
    now: int,
    deadline_at: int,
) -> Award:
    body = {
        "job_id": job_id,
        "job_digest": job_digest,
        "round": round_,
        "worker": worker,
        "price": price,
        "winners": [[p, pr] for p, pr in winners],
        "bids_digest": bids_digest(considered),
        "bids_considered": len(considered),
        "created_at": now,
        "deadline_at": deadline_at,
    }
    return parse_award(seal(signer, "award", body))


@by_bytes
def parse_award(raw: bytes) -> Award:
    o = open_envelope(raw, "award", max_bytes=MAX_SMALL_BYTES)
    b = o.body
    schema.exact_keys(
        b,
        {
            "job_id",
            "job_digest",
            "round",
            "worker",
            "price",
            "winners",
            "bids_digest",
            "bids_considered",
            "created_at",
            "deadline_at",
        },
    )
    winners_raw = b.get("winners")
    if not isinstance(winners_raw, list) or not 1 <= len(winners_raw) <= 16:
        raise ValidationError("winners: must be a list of 1..16 [peer_id, price]")
    winners = []
    for w in winners_raw:
        if (
            not isinstance(w, list)
            or len(w) != 2
            or not isinstance(w[0], str)
            or not 0 < len(w[0]) <= 64
            or isinstance(w[1], bool)
            or not isinstance(w[1], int)
            or not 0 <= w[1] <= 2**31
        ):
            raise ValidationError("winners: items must be [peer_id, price]")
        winners.append((w[0], w[1]))
    worker = schema.text(b, "worker", 64, min_len=1)
    price = schema.int_in(b, "price", 0, 2**31)
    if (worker, price) not in winners:
        raise ValidationError("worker is not among the winners at that price")
    return Award(
        job_id=_job_id(b),
        job_digest=_digest(b, "job_digest"),
        round=schema.int_in(b, "round", 0, 1000),
        requester=o.signer,
        worker=worker,
        price=price,
        winners=tuple(winners),
        bids_digest=_digest(b, "bids_digest"),
        bids_considered=schema.int_in(b, "bids_considered", 1, 4096),
        created_at=schema.int_in(b, "created_at", 0, _U63),
        deadline_at=schema.int_in(b, "deadline_at", 0, _U63),
        raw=raw,
    )


# -- status (worker -> requester) --------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Status:
    job_id: str
    worker: str
    state: str
    detail: str
    at: int
    raw: bytes


def build_status(signer: Signer, *, job_id: str, state: str, detail: str, now: int) -> Status:
    body = {"job_id": job_id, "state": state, "detail": detail[:200], "at": now}
    return parse_status(seal(signer, "result", {"status": body}))


@by_bytes
def parse_status(raw: bytes) -> Status:
    # Statuses share the "result" purpose: both are worker reports about one job. The body
    # shape ({"status": …} vs {"result": …}) tells them apart and is itself signed.
    o = open_envelope(raw, "result", max_bytes=MAX_SMALL_BYTES)
    schema.exact_keys(o.body, {"status"})
    b = schema.mapping(o.body, "status")
    schema.exact_keys(b, {"job_id", "state", "detail", "at"})
    state = schema.text(b, "state", 16)
    if state not in STATUS_STATES:
        raise ValidationError(f"state: must be one of {', '.join(STATUS_STATES)}")
    return Status(
        job_id=_job_id(b),
        worker=o.signer,
        state=state,
        detail=schema.text(b, "detail", 200),
        at=schema.int_in(b, "at", 0, _U63),
        raw=raw,
    )


# -- result ------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Result:
    job_id: str
    job_digest: str
    worker: str
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
    finished_at: int
    raw: bytes
    error: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "worker": self.worker,
            "status": self.status,
            "exit_code": self.exit_code,
            "error": self.error,
            "output_digest": self.output_digest,
            "output_size": self.output_size,
            "log_digest": self.log_digest,
            "log_size": self.log_size,
            "log_truncated": self.log_truncated,
            "run_s": self.run_ms / 1000,
            "cpu_s": self.cpu_ms / 1000,
            "max_memory_mb": self.max_memory_mb,
            "finished_at": self.finished_at,
        }


def build_result(signer: Signer, **fields: Any) -> Result:
    exit_code = fields.pop("exit_code")
    # An empty error is left out, so a result without one has the bytes it had before the
    # field existed.
    error = fields.pop("error", "")[:MAX_RESULT_ERROR]
    body = {**fields, "exit_code": -1 if exit_code is None else exit_code}
    if error:
        body["error"] = error
    return parse_result(seal(signer, "result", {"result": body}))


@by_bytes
def parse_result(raw: bytes) -> Result:
    o = open_envelope(raw, "result", max_bytes=MAX_SMALL_BYTES)
    schema.exact_keys(o.body, {"result"})
    b = schema.mapping(o.body, "result")
    schema.exact_keys(b, set(_RESULT_KEYS), {"error"})
    status = schema.text(b, "status", 16)
    if status not in RESULT_STATUSES:
        raise ValidationError(f"status: must be one of {', '.join(RESULT_STATUSES)}")
    error = ""
    if "error" in b:
        error = schema.text(b, "error", MAX_RESULT_ERROR)
        if not error:
            raise ValidationError("error: must be omitted when empty")
        if status == "exited":
            raise ValidationError("error: not allowed when the job exited")
    elif status == "out_refused":
        raise ValidationError("error: required when status is out_refused")
    exit_code = schema.int_in(b, "exit_code", -1, 255)
    return Result(
        job_id=_job_id(b),
        job_digest=_digest(b, "job_digest"),
        worker=o.signer,
        status=status,
        exit_code=None if exit_code == -1 else exit_code,
        output_digest=_digest(b, "output_digest"),
        output_size=schema.int_in(b, "output_size", 0, 2**40),
        log_digest=_digest(b, "log_digest"),
        log_size=schema.int_in(b, "log_size", 0, 2**40),
        log_truncated=schema.boolean(b, "log_truncated"),
        run_ms=schema.int_in(b, "run_ms", 0, _U63),
        cpu_ms=schema.int_in(b, "cpu_ms", 0, _U63),
        max_memory_mb=schema.int_in(b, "max_memory_mb", 0, 2**40),
        finished_at=schema.int_in(b, "finished_at", 0, _U63),
        raw=raw,
        error=error,
    )


# -- cancel (requester -> worker) --------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Cancel:
    job_id: str
    requester: str
    reason: str
    raw: bytes


def build_cancel(signer: Signer, *, job_id: str, reason: str, now: int) -> Cancel:
    return parse_cancel(
        seal(signer, "cancel", {"job_id": job_id, "reason": reason[:200], "at": now})
    )


@by_bytes
def parse_cancel(raw: bytes) -> Cancel:
    o = open_envelope(raw, "cancel", max_bytes=MAX_SMALL_BYTES)
    schema.exact_keys(o.body, {"job_id", "reason", "at"})
    schema.int_in(o.body, "at", 0, _U63)
    return Cancel(_job_id(o.body), o.signer, schema.text(o.body, "reason", 200), raw)


# -- award query (restarted worker <-> requester, PROTOCOL.md §7.5) ---------------------------
# Not signed: both travel only on the job stream, whose remote peer ID is authenticated, and
# each is about the sender's own award (the asker's, or the requester's job).
AWARD_QUERY = "award-query"
AWARD_ANSWER = "award-answer"


def build_award_query(job_id: str) -> bytes:
    return codec.encode({"job_id": job_id})


def parse_award_query(raw: bytes) -> str:
    d = codec.decode(raw, max_bytes=MAX_SMALL_BYTES)
    if not isinstance(d, dict):
        raise ValidationError("award query must be a map")
    schema.exact_keys(d, {"job_id"})
    return _job_id(d)


def build_award_answer(job_id: str, stands: bool) -> bytes:
    return codec.encode({"job_id": job_id, "stands": stands})


def parse_award_answer(raw: bytes) -> tuple[str, bool]:
    d = codec.decode(raw, max_bytes=MAX_SMALL_BYTES)
    if not isinstance(d, dict):
        raise ValidationError("award answer must be a map")
    schema.exact_keys(d, {"job_id", "stands"})
    if not isinstance(d["stands"], bool):
        raise ValidationError("stands: must be a boolean")
    return _job_id(d), d["stands"]


# -- verdict (requester -> everyone, gossiped) -------------------------------------------------
TOPIC_VERDICTS = "p2pmesh/verdicts/1"
VERDICT_OUTCOMES = ("accepted", "failed", "inconclusive")


@dataclass(frozen=True, slots=True)
class Verdict:
    job_id: str
    job_digest: str
    requester: str
    outcome: str
    accepted_digest: str
    agreeing: tuple[str, ...]
    dissenting: tuple[str, ...]
    at: int
    raw: bytes


def build_verdict(
    signer: Signer,
    *,
    job_id: str,
    job_digest: str,
    outcome: str,
    accepted_digest: str,
    agreeing: list[str],
    dissenting: list[str],
    now: int,
) -> Verdict:
    body = {
        "job_id": job_id,
        "job_digest": job_digest,
        "outcome": outcome,
        "accepted_digest": accepted_digest,
        "agreeing": sorted(agreeing),
        "dissenting": sorted(dissenting),
        "at": now,
    }
    return parse_verdict(seal(signer, "verdict", body))


@by_bytes
def parse_verdict(raw: bytes) -> Verdict:
    o = open_envelope(raw, "verdict", max_bytes=MAX_SMALL_BYTES)
    b = o.body
    schema.exact_keys(
        b, {"job_id", "job_digest", "outcome", "accepted_digest", "agreeing", "dissenting", "at"}
    )
    outcome = schema.text(b, "outcome", 16)
    if outcome not in VERDICT_OUTCOMES:
        raise ValidationError(f"outcome: must be one of {', '.join(VERDICT_OUTCOMES)}")
    agreeing = schema.text_list(b, "agreeing", 16, 64)
    dissenting = schema.text_list(b, "dissenting", 16, 64)
    if set(agreeing) & set(dissenting):
        raise ValidationError("a worker cannot both agree and dissent")
    if o.signer in agreeing or o.signer in dissenting:
        raise ValidationError("the requester cannot judge itself")
    accepted = b.get("accepted_digest")
    if outcome == "inconclusive":
        if accepted != "":
            raise ValidationError("accepted_digest: must be empty when inconclusive")
    else:
        accepted = _digest(b, "accepted_digest")
        if len(agreeing) < 1:
            raise ValidationError("agreeing: at least one worker")
    return Verdict(
        job_id=_job_id(b),
        job_digest=_digest(b, "job_digest"),
        requester=o.signer,
        outcome=outcome,
        accepted_digest=str(accepted),
        agreeing=agreeing,
        dissenting=dissenting,
        at=schema.int_in(b, "at", 0, _U63),
        raw=raw,
    )
