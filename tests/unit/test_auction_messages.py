"""Tests for p2pmesh/core/auction/messages.py: the six signed job messages (PROTOCOL.md §7).

Round trips, then every refusal a receiver relies on (tampering, wrong purpose, wrong addressee,
inconsistent award, digest mismatch, bad ids, size caps), then the decoder invariant fuzzed on
random bytes, mutated bytes and validly signed but hostile bodies: every parser returns a value
or raises ``DecodeError``/``ValidationError``, nothing else.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from p2pmesh.core import codec
from p2pmesh.core.auction import messages as m
from p2pmesh.core.crypto import Ed25519Signer
from p2pmesh.core.envelope import seal
from p2pmesh.core.jobspec import InputRef, WireJob, job_from_wire, job_to_wire, parse_job
from p2pmesh.errors import DecodeError, ValidationError

REQ = Ed25519Signer(b"\x01" * 32)
WORKER = Ed25519Signer(b"\x02" * 32)
OTHER = Ed25519Signer(b"\x03" * 32)
JOB_ID = "0123456789abcdef0123456789abcdef"
T = 1_700_000_000
HEX64 = "ab" * 32
DIGEST = "sha256:" + HEX64
EMPTY = "sha256:" + hashlib.sha256(b"").hexdigest()
REFUSED = (DecodeError, ValidationError)
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _job(**over: Any) -> WireJob:
    doc: dict[str, Any] = {
        "schema_version": 1,
        "name": "mc",
        "image": "p2pmesh/python:3",
        "command": ["python3", "/in/run.py"],
        "inputs": {"run.py": "run.py"},
        "max_price": 10,
        "budget": 30,
        "redundancy": 2,
        "timeout_s": 60,
        **over,
    }
    spec = parse_job(doc)
    refs = {name: InputRef(DIGEST, 351, "file") for name in spec.inputs}
    # Through the wire and back, as a worker sees it: input values become digests.
    return job_from_wire(job_to_wire(spec, refs))


JOB = _job()
ADDRS = (f"/ip4/127.0.0.1/tcp/4001/p2p/{REQ.peer_id}",)


def _offer(signer: Ed25519Signer = REQ, **over: Any) -> m.Offer:
    kw: dict[str, Any] = {
        "job_id": JOB_ID,
        "job": JOB,
        "created_at": T,
        "deadline_at": T + 780,
        "bid_window_s": 2,
        "round_": 0,
        "addrs": ADDRS,
        "exclude": (),
        **over,
    }
    return m.build_offer(signer, **kw)


OFFER = _offer()


def _bid(signer: Ed25519Signer = WORKER, offer: m.Offer = OFFER, **over: Any) -> m.Bid:
    kw: dict[str, Any] = {"price": 3, "eta_s": 2, "capacity": 1, "now": T + 1, **over}
    return m.build_bid(signer, offer, **kw)


BID = _bid()


def _award(signer: Ed25519Signer = REQ, **over: Any) -> m.Award:
    kw: dict[str, Any] = {
        "job_id": JOB_ID,
        "job_digest": JOB.digest,
        "round_": 0,
        "worker": WORKER.peer_id,
        "price": 3,
        "winners": [(WORKER.peer_id, 3), (OTHER.peer_id, 4)],
        "considered": [BID.raw],
        "now": T + 2,
        "deadline_at": T + 780,
        **over,
    }
    return m.build_award(signer, **kw)


def _status(signer: Ed25519Signer = WORKER, **over: Any) -> m.Status:
    kw: dict[str, Any] = {"job_id": JOB_ID, "state": "running", "detail": "", "now": T + 3}
    return m.build_status(signer, **{**kw, **over})


def _result_fields(**over: Any) -> dict[str, Any]:
    return {
        "job_id": JOB_ID,
        "job_digest": JOB.digest,
        "status": "exited",
        "exit_code": 0,
        "output_digest": DIGEST,
        "output_size": 1234,
        "log_digest": EMPTY,
        "log_size": 0,
        "log_truncated": False,
        "run_ms": 1500,
        "cpu_ms": 1200,
        "max_memory_mb": 42,
        "finished_at": T + 9,
        **over,
    }


def _result(signer: Ed25519Signer = WORKER, **over: Any) -> m.Result:
    return m.build_result(signer, **_result_fields(**over))


def _cancel(signer: Ed25519Signer = REQ, **over: Any) -> m.Cancel:
    kw: dict[str, Any] = {"job_id": JOB_ID, "reason": "cancelled by requester", "now": T + 5}
    return m.build_cancel(signer, **{**kw, **over})


def _body(raw: bytes) -> dict[str, Any]:
    body: dict[str, Any] = codec.decode(raw)["body"]
    return body


def _reseal(raw: bytes, purpose: str, signer: Ed25519Signer = REQ, **changes: Any) -> bytes:
    """The same body with ``changes`` applied (a value of ``...`` deletes), validly re-signed."""
    body = _body(raw)
    for key, value in changes.items():
        if value is ...:
            del body[key]
        else:
            body[key] = value
    return seal(signer, purpose, body)


# Each parser with the keyword arguments it needs, and one valid message for it.
PARSERS: dict[str, tuple[Callable[[bytes], Any], bytes]] = {
    "offer": (m.parse_offer, OFFER.raw),
    "bid": (lambda raw: m.parse_bid(raw, requester=REQ.peer_id), BID.raw),
    "award": (m.parse_award, _award().raw),
    "status": (m.parse_status, _status().raw),
    "result": (m.parse_result, _result().raw),
    "cancel": (m.parse_cancel, _cancel().raw),
}


# -- round trips ---------------------------------------------------------------------------------
def test_offer_round_trip() -> None:
    got = m.parse_offer(OFFER.raw)
    assert got == OFFER
    assert got.requester == REQ.peer_id
    assert got.job_digest == JOB.digest == got.job.digest
    assert got.job.spec == JOB.spec and dict(got.job.input_refs) == dict(JOB.input_refs)
    assert (got.created_at, got.deadline_at, got.bid_window_s, got.round) == (T, T + 780, 2, 0)
    assert got.addrs == ADDRS and got.exclude == ()


def test_offer_exclude_is_sorted_and_signed() -> None:
    # Sorted on build so two requesters excluding the same peers sign the same bytes.
    o = _offer(exclude=(OTHER.peer_id, WORKER.peer_id), round_=3)
    assert o.exclude == tuple(sorted((OTHER.peer_id, WORKER.peer_id)))
    assert o.round == 3
    assert m.parse_offer(o.raw) == o


def test_bid_round_trip() -> None:
    got = m.parse_bid(BID.raw, requester=REQ.peer_id)
    assert got == BID
    assert (got.bidder, got.job_id, got.job_digest, got.round) == (
        WORKER.peer_id,
        JOB_ID,
        JOB.digest,
        0,
    )
    assert (got.price, got.eta_s, got.capacity, got.created_at) == (3, 2, 1, T + 1)
    assert _body(BID.raw)["requester"] == REQ.peer_id  # addressed: cannot be re-aimed


def test_award_round_trip() -> None:
    award = _award()
    got = m.parse_award(award.raw)
    assert got == award
    assert got.requester == REQ.peer_id and got.worker == WORKER.peer_id and got.price == 3
    assert got.winners == ((WORKER.peer_id, 3), (OTHER.peer_id, 4))
    assert got.bids_considered == 1
    assert got.bids_digest == m.bids_digest([BID.raw])
    assert (got.created_at, got.deadline_at) == (T + 2, T + 780)


def test_bids_digest_is_order_independent_and_checkable() -> None:
    b2 = _bid(OTHER, price=4)
    d = m.bids_digest([BID.raw, b2.raw])
    assert d == m.bids_digest([b2.raw, BID.raw])
    # An auditor holding the raw bids recomputes it from the spec in PROTOCOL.md §7.
    expected = "sha256:" + hashlib.sha256(codec.encode(sorted([BID.raw, b2.raw]))).hexdigest()
    assert d == expected
    assert d != m.bids_digest([BID.raw])


@pytest.mark.parametrize("state", m.STATUS_STATES)
def test_status_round_trip(state: str) -> None:
    s = _status(state=state, detail="why")
    assert m.parse_status(s.raw) == s
    assert (s.job_id, s.worker, s.state, s.detail, s.at) == (
        JOB_ID,
        WORKER.peer_id,
        state,
        "why",
        T + 3,
    )


def test_status_detail_is_cut_to_200_characters() -> None:
    s = _status(detail="x" * 500)
    assert s.detail == "x" * 200


@pytest.mark.parametrize("status", m.RESULT_STATUSES)
def test_result_round_trip(status: str) -> None:
    error = "/out/l: symbolic link not allowed" if status == "out_refused" else ""
    r = _result(status=status, exit_code=None if status != "exited" else 3, error=error)
    got = m.parse_result(r.raw)
    assert got == r
    assert got.worker == WORKER.peer_id and got.status == status
    assert got.exit_code == (3 if status == "exited" else None)


def test_result_exit_code_none_is_minus_one_on_the_wire() -> None:
    r = _result(status="timeout", exit_code=None)
    assert _body(r.raw)["result"]["exit_code"] == -1
    assert r.exit_code is None
    assert _result(exit_code=0).exit_code == 0


def test_result_error_is_signed_and_left_out_when_empty() -> None:
    refused = _result(status="out_refused", error="/out/p: FIFO not allowed")
    assert _body(refused.raw)["result"]["error"] == "/out/p: FIFO not allowed"
    assert m.parse_result(refused.raw).error == "/out/p: FIFO not allowed"
    plain = _result()
    assert "error" not in _body(plain.raw)["result"]  # the bytes of a result before the field
    assert plain.error == "" and plain.to_json()["error"] == ""
    assert _result(status="out_refused", error="x" * 500).error == "x" * m.MAX_RESULT_ERROR


def _resealed_result(**changes: Any) -> bytes:
    body = _result_fields(**changes)
    return seal(WORKER, "result", {"result": {k: v for k, v in body.items() if v is not ...}})


@pytest.mark.parametrize(
    "changes",
    [
        {"status": "out_refused"},  # no reason given
        {"status": "out_refused", "error": ""},  # empty must be left out, one encoding only
        {"status": "exited", "error": "why"},  # nothing failed
        {"status": "out_refused", "error": "x" * 201},
        {"status": "out_refused", "error": 7},
    ],
)
def test_result_error_rules(changes: dict[str, Any]) -> None:
    with pytest.raises(ValidationError, match="error"):
        m.parse_result(_resealed_result(exit_code=0, **changes))


def test_result_to_json() -> None:
    j = _result().to_json()
    assert j["worker"] == WORKER.peer_id and j["run_s"] == 1.5 and j["cpu_s"] == 1.2
    assert j["output_digest"] == DIGEST and j["exit_code"] == 0


def test_cancel_round_trip() -> None:
    c = _cancel(reason="r" * 300)
    assert m.parse_cancel(c.raw) == c
    assert (c.job_id, c.requester, c.reason) == (JOB_ID, REQ.peer_id, "r" * 200)


# -- refusals: bytes and purposes ----------------------------------------------------------------
@pytest.mark.parametrize("kind", sorted(PARSERS))
def test_every_single_byte_change_is_refused(kind: str) -> None:
    parse, raw = PARSERS[kind]
    for i in range(len(raw)):
        for mask in (0x01, 0x80):
            bad = raw[:i] + bytes([raw[i] ^ mask]) + raw[i + 1 :]
            with pytest.raises(REFUSED):
                parse(bad)


@pytest.mark.parametrize("kind", sorted(PARSERS))
def test_truncation_and_trailing_bytes_refused(kind: str) -> None:
    parse, raw = PARSERS[kind]
    for cut in (0, 1, len(raw) // 2, len(raw) - 1):
        with pytest.raises(REFUSED):
            parse(raw[:cut])
    with pytest.raises(REFUSED):
        parse(raw + b"\x00")


@pytest.mark.parametrize("kind", sorted(PARSERS))
@pytest.mark.parametrize("other", sorted(PARSERS))
def test_message_of_another_kind_refused(kind: str, other: str) -> None:
    if kind == other:
        return
    parse, _ = PARSERS[kind]
    with pytest.raises(REFUSED):
        parse(PARSERS[other][1])


@pytest.mark.parametrize(
    ("kind", "purpose"),
    [
        ("offer", "bid"),
        ("bid", "offer"),
        ("award", "result"),
        ("status", "bid"),
        ("result", "award"),
        ("cancel", "award"),
    ],
)
def test_body_signed_for_another_purpose_refused(kind: str, purpose: str) -> None:
    # A valid body sealed under the wrong tag: the type check catches it before the body is read.
    parse, raw = PARSERS[kind]
    with pytest.raises(ValidationError, match="expected"):
        parse(seal(REQ, purpose, _body(raw)))


def test_signature_from_another_purpose_tag_does_not_verify() -> None:
    # Take an offer envelope, keep t="offer" but sign it under the "bid" domain tag.
    value = codec.decode(OFFER.raw)
    unsigned = {k: value[k] for k in ("t", "v", "pk", "body")}
    forged = codec.encode({**unsigned, "sig": REQ.sign("bid", codec.encode(unsigned))})
    with pytest.raises(ValidationError, match="bad signature"):
        m.parse_offer(forged)


def test_signer_key_swapped_refused() -> None:
    value = codec.decode(BID.raw)
    value["pk"] = OTHER.public_key  # claim the bid came from another peer
    with pytest.raises(ValidationError, match="bad signature"):
        m.parse_bid(codec.encode(value), requester=REQ.peer_id)


def test_status_and_result_share_a_purpose_but_not_a_shape() -> None:
    with pytest.raises(ValidationError):
        m.parse_status(_result().raw)
    with pytest.raises(ValidationError):
        m.parse_result(_status().raw)
    both = seal(WORKER, "result", {"status": _body(_status().raw)["status"], "result": {}})
    for parse in (m.parse_status, m.parse_result):
        with pytest.raises(ValidationError, match="unknown field"):
            parse(both)


# -- refusals: content ---------------------------------------------------------------------------
def test_bid_addressed_to_another_requester_refused() -> None:
    with pytest.raises(ValidationError, match="another requester"):
        m.parse_bid(BID.raw, requester=OTHER.peer_id)


def test_award_worker_not_among_winners_refused() -> None:
    with pytest.raises(ValidationError, match="not among the winners"):
        _award(worker=WORKER.peer_id, winners=[(OTHER.peer_id, 3)])


def test_award_worker_among_winners_at_another_price_refused() -> None:
    with pytest.raises(ValidationError, match="not among the winners"):
        _award(price=3, winners=[(WORKER.peer_id, 5)])


@pytest.mark.parametrize(
    "winners",
    [
        [],
        [[WORKER.peer_id, 3]] * 17,
        [[WORKER.peer_id]],
        [[WORKER.peer_id, 3, 0]],
        [[WORKER.peer_id, -1]],
        [[WORKER.peer_id, True]],
        [[WORKER.peer_id, 2**31 + 1]],
        [["", 3]],
        [["x" * 65, 3]],
        [[7, 3]],
        "nope",
        {"a": 1},
    ],
)
def test_award_bad_winners_refused(winners: Any) -> None:
    raw = _reseal(_award().raw, "award", winners=winners)
    with pytest.raises(ValidationError, match="winners"):
        m.parse_award(raw)


def test_offer_job_digest_mismatch_refused() -> None:
    raw = _reseal(OFFER.raw, "offer", job_digest=DIGEST)
    with pytest.raises(ValidationError, match="job_digest does not match"):
        m.parse_offer(raw)


def test_offer_with_a_changed_job_refused_even_if_resigned() -> None:
    # The requester signs the job and its digest; changing the job alone breaks the digest.
    body = _body(OFFER.raw)
    body["job"]["command"] = ["sh", "-c", "evil"]
    with pytest.raises(ValidationError, match="job_digest"):
        m.parse_offer(seal(REQ, "offer", body))


def test_offer_with_an_invalid_job_names_the_field() -> None:
    body = _body(OFFER.raw)
    body["job"]["timeout_s"] = 0
    with pytest.raises(ValidationError, match=r"^job: .*timeout_s"):
        m.parse_offer(seal(REQ, "offer", body))


@pytest.mark.parametrize(
    "job_id",
    [
        "0123456789ABCDEF0123456789ABCDEF",  # uppercase
        "0123456789abcdef",  # short
        "0123456789abcdef0123456789abcdef0",  # long
        "0123456789abcdef0123456789abcdeg",  # not hex
        "",
        1234,
        None,
        b"0123456789abcdef0123456789abcdef",
    ],
)
@pytest.mark.parametrize("kind", sorted(PARSERS))
def test_bad_job_id_refused(kind: str, job_id: Any) -> None:
    parse, raw = PARSERS[kind]
    signer = REQ if kind in ("offer", "award", "cancel") else WORKER
    purpose = "result" if kind == "status" else kind
    if kind in ("status", "result"):
        body = _body(raw)
        body[kind]["job_id"] = job_id
        bad = seal(signer, purpose, body)
    else:
        bad = _reseal(raw, purpose, signer, job_id=job_id)
    with pytest.raises(ValidationError, match="job_id"):
        parse(bad)


@pytest.mark.parametrize("kind", ["offer", "bid", "cancel"])
def test_job_id_with_trailing_newline_refused(kind: str) -> None:
    parse, raw = PARSERS[kind]
    signer = WORKER if kind == "bid" else REQ
    with pytest.raises(ValidationError, match="job_id"):
        parse(_reseal(raw, kind, signer, job_id=JOB_ID + "\n"))


def test_digest_with_trailing_newline_refused() -> None:
    body = _body(_result().raw)
    body["result"]["output_digest"] = DIGEST + "\n"
    with pytest.raises(ValidationError, match="output_digest"):
        m.parse_result(seal(WORKER, "result", body))


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("job_digest", "sha256:" + "AB" * 32),
        ("job_digest", "md5:" + HEX64),
        ("price", -1),
        ("price", 2**31 + 1),
        ("price", True),
        ("price", "3"),
        ("eta_s", 7 * 86400 + 1),
        ("capacity", 4097),
        ("round", 1001),
        ("created_at", -1),
        ("requester", ...),
        ("extra", 1),
    ],
)
def test_bid_bad_fields_refused(key: str, value: Any) -> None:
    with pytest.raises(ValidationError):
        m.parse_bid(_reseal(BID.raw, "bid", WORKER, **{key: value}), requester=REQ.peer_id)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("deadline_at", T),  # not after created_at
        ("deadline_at", T - 1),
        ("bid_window_s", 0),
        ("bid_window_s", 601),
        ("round", -1),
        ("round", 1001),
        ("addrs", ["/ip4/1.2.3.4/tcp/1"] * 17),
        ("addrs", ["x" * 257]),
        ("addrs", [""]),
        ("exclude", [WORKER.peer_id] * 65),
        ("exclude", [3]),
        ("created_at", 2**63),
        ("job", "not a job"),
        ("job", ...),
        ("extra", 1),
    ],
)
def test_offer_bad_fields_refused(key: str, value: Any) -> None:
    with pytest.raises(ValidationError):
        m.parse_offer(_reseal(OFFER.raw, "offer", **{key: value}))


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("bids_digest", "sha256:zz"),
        ("bids_considered", 0),
        ("bids_considered", 4097),
        ("worker", ""),
        ("price", -1),
        ("deadline_at", "soon"),
        ("round", 1001),
        ("extra", 1),
        ("winners", ...),
    ],
)
def test_award_bad_fields_refused(key: str, value: Any) -> None:
    with pytest.raises(ValidationError):
        m.parse_award(_reseal(_award().raw, "award", **{key: value}))


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("status", "crashed"),
        ("exit_code", 256),
        ("exit_code", -2),
        ("exit_code", None),
        ("output_digest", "sha256:"),
        ("log_truncated", 0),
        ("output_size", 2**40 + 1),
        ("run_ms", -1),
        ("finished_at", "now"),
        ("extra", 1),
        ("cpu_ms", ...),
    ],
)
def test_result_bad_fields_refused(key: str, value: Any) -> None:
    body = _body(_result().raw)
    if value is ...:
        del body["result"][key]
    else:
        body["result"][key] = value
    with pytest.raises(ValidationError):
        m.parse_result(seal(WORKER, "result", body))


@pytest.mark.parametrize(
    ("key", "value"),
    [("state", "done"), ("state", "x" * 17), ("detail", "d" * 201), ("at", -1), ("extra", 1)],
)
def test_status_bad_fields_refused(key: str, value: Any) -> None:
    body = _body(_status().raw)
    body["status"][key] = value
    with pytest.raises(ValidationError):
        m.parse_status(seal(WORKER, "result", body))


@pytest.mark.parametrize(
    ("key", "value"), [("reason", "r" * 201), ("reason", 5), ("at", ...), ("extra", 1)]
)
def test_cancel_bad_fields_refused(key: str, value: Any) -> None:
    with pytest.raises(ValidationError):
        m.parse_cancel(_reseal(_cancel().raw, "cancel", **{key: value}))


@pytest.mark.parametrize("at", [-1, "yesterday", {"nested": [1]}, None])
def test_cancel_bad_time_refused(at: Any) -> None:
    with pytest.raises(ValidationError, match="at"):
        m.parse_cancel(_reseal(_cancel().raw, "cancel", at=at))


def test_builders_refuse_what_parsers_refuse() -> None:
    # Builders parse what they seal, so a bug in local code cannot put a bad message on the wire.
    with pytest.raises(ValidationError):
        _offer(round_=1001)
    with pytest.raises(ValidationError):
        _bid(price=-1)
    with pytest.raises(ValidationError):
        _status(state="done")
    with pytest.raises(ValidationError):
        _result(status="crashed")


# -- refusals: size ------------------------------------------------------------------------------
def test_oversized_offer_refused_before_decoding() -> None:
    # Too big for our own encoder too, so build the bytes by hand: the size check comes first.
    value = codec.decode(OFFER.raw)
    value["body"]["pad"] = ["x" * 16_000] * 5
    raw = msgpack.packb(value, use_bin_type=True)
    assert len(raw) > m.MAX_OFFER_BYTES
    with pytest.raises(DecodeError, match="limit"):
        m.parse_offer(raw)


@pytest.mark.parametrize("kind", ["bid", "award", "status", "result", "cancel"])
def test_oversized_small_messages_refused(kind: str) -> None:
    parse, _ = PARSERS[kind]
    purpose = "result" if kind == "status" else kind
    raw = seal(WORKER, purpose, {"pad": "x" * m.MAX_SMALL_BYTES})
    assert len(raw) > m.MAX_SMALL_BYTES
    with pytest.raises(DecodeError, match="limit"):
        parse(raw)


def _big_job(inputs: int) -> WireJob:
    """A job near the wire limit: full command and env, every label, ``inputs`` long names."""
    return _job(
        command=["x" * 4000] * 4,
        env={f"V{i}": "v" * 4000 for i in range(4)},
        labels={f"k{i}": "l" * 250 for i in range(32)},
        inputs={f"{i:02d}" + "n" * 60: f"f{i}" for i in range(inputs)},
    )


FULL_ADDRS = tuple(f"/ip4/10.0.0.{i}/tcp/4001/p2p/{REQ.peer_id}" for i in range(16))
FULL_EXCLUDE = tuple(Ed25519Signer(bytes([i]) * 32).peer_id for i in range(10, 74))


def test_large_offer_fits() -> None:
    o = _offer(job=_big_job(0), addrs=FULL_ADDRS, exclude=FULL_EXCLUDE)
    assert m.parse_offer(o.raw) == o


def test_every_job_parse_job_accepts_fits_an_offer() -> None:
    # The job's wire form may use all of jobspec.MAX_WIRE_BYTES; the offer still fits.
    big = _big_job(52)
    assert len(codec.encode(job_to_wire(big.spec, big.input_refs))) <= 48 * 1024
    o = _offer(job=big, addrs=FULL_ADDRS, exclude=FULL_EXCLUDE)
    assert m.parse_offer(o.raw) == o


# -- fuzz: the decoder invariant -----------------------------------------------------------------
def _only_refusals(parse: Callable[[bytes], Any], data: bytes) -> None:
    try:
        parse(data)
    except REFUSED:
        pass


@FUZZ
@given(kind=st.sampled_from(sorted(PARSERS)), data=st.binary(max_size=600))
def test_fuzz_random_bytes(kind: str, data: bytes) -> None:
    _only_refusals(PARSERS[kind][0], data)


@st.composite
def _mutations(draw: st.DrawFn) -> tuple[str, bytes]:
    kind = draw(st.sampled_from(sorted(PARSERS)))
    raw = bytearray(PARSERS[kind][1])
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "set"]))
        i = draw(st.integers(0, max(0, len(raw) - 1)))
        if op == "flip" and raw:
            raw[i] ^= draw(st.integers(1, 255))
        elif op == "insert":
            raw[i:i] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete" and raw:
            del raw[i : i + draw(st.integers(1, 8))]
        elif raw:
            raw[i] = draw(st.sampled_from([0x00, 0xC0, 0xC1, 0xC2, 0xC3, 0xD9, 0xDF, 0xFF]))
    return kind, bytes(raw)


@FUZZ
@given(_mutations())
def test_fuzz_mutated_messages_are_refused(case: tuple[str, bytes]) -> None:
    kind, data = case
    parse, raw = PARSERS[kind]
    if data == raw:
        return
    # Any change to a signed message must be refused, not merely survived.
    with pytest.raises(REFUSED):
        parse(data)


_LEAF = (
    st.none()
    | st.booleans()
    | st.integers(-(2**64), 2**64)
    | st.text(max_size=80)
    | st.binary(max_size=40)
)
_VALUE = st.recursive(
    _LEAF,
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5)
    ),
    max_leaves=12,
)


def _signed_kind(kind: str) -> tuple[str, Ed25519Signer]:
    return ("result" if kind == "status" else kind), (WORKER if kind == "bid" else REQ)


@FUZZ
@given(kind=st.sampled_from(sorted(PARSERS)), data=st.data())
def test_fuzz_validly_signed_hostile_bodies(kind: str, data: st.DataObject) -> None:
    # Past the signature check the parsers see attacker-chosen structure: replace, add or drop
    # one field, up to three maps deep, and re-sign honestly.
    parse, raw = PARSERS[kind]
    body = _body(raw)
    target: dict[str, Any] = body
    for _ in range(data.draw(st.integers(0, 3))):
        maps = sorted(k for k, v in target.items() if isinstance(v, dict) and v)
        if not maps:
            break
        target = target[data.draw(st.sampled_from(maps))]
    key = data.draw(st.sampled_from(sorted(target)) | st.text(max_size=10))
    if data.draw(st.booleans()) and key in target:
        del target[key]
    else:
        target[key] = data.draw(_VALUE)
    purpose, signer = _signed_kind(kind)
    try:
        sealed = seal(signer, purpose, body)
    except DecodeError:
        return  # no canonical encoding within the limits: nothing could be sent
    _only_refusals(parse, sealed)


@FUZZ
@given(kind=st.sampled_from(sorted(PARSERS)), body=st.dictionaries(st.text(max_size=12), _VALUE))
def test_fuzz_validly_signed_random_bodies(kind: str, body: dict[str, Any]) -> None:
    purpose, signer = _signed_kind(kind)
    try:
        data = seal(signer, purpose, body)
    except DecodeError:
        return
    with pytest.raises(REFUSED):
        PARSERS[kind][0](data)
