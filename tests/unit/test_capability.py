"""Tests for p2pmesh/core/capability.py: build/parse, every receiver refusal, selector, fuzz."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from p2pmesh.core import capability
from p2pmesh.core.capability import (
    MAX_ADDRS,
    MAX_CLOCK_SKEW_S,
    MAX_GPUS,
    MAX_IMAGES,
    MAX_RECORD_BYTES,
    MAX_TTL_S,
    Capabilities,
    Gpu,
    build_record,
    caps_body,
    check_record,
    dht_key,
    parse_record,
    select_newest,
)
from p2pmesh.core.crypto import Ed25519Signer
from p2pmesh.core.envelope import seal
from p2pmesh.errors import DecodeError, ValidationError

NOW = 1_700_000_000
SIGNER = Ed25519Signer(b"\x31" * 32)
OTHER = Ed25519Signer(b"\x32" * 32)
CAPS = Capabilities(
    addrs=("/ip4/192.0.2.1/tcp/4001", "/ip6/2001:db8::1/tcp/4001"),
    cpus=16,
    cpus_physical=8,
    ram_mb=65536,
    disk_free_mb=500_000,
    load_milli=1250,
    gpus=(Gpu("NVIDIA H100 80GB HBM3", 81559, "550.54.15", "9.0"),),
    executors=("docker",),
    price=3,
    max_jobs=2,
    work=True,
    allow_images=("p2pmesh/*",),
    agent="p2pmesh/0.1.0",
)


def _body(**over: Any) -> dict[str, Any]:
    body = {
        "peer_id": SIGNER.peer_id,
        "seq": 5,
        "issued_at": NOW,
        "expires_at": NOW + 300,
        **caps_body(CAPS),
    }
    body.update(over)
    return body


def _signed(body: dict[str, Any], signer: Ed25519Signer = SIGNER) -> bytes:
    return seal(signer, "capability", body)


def _refused(data: bytes, match: str, *, now: float = NOW, known_seq: int | None = None) -> None:
    with pytest.raises(ValidationError, match=match):
        check_record(data, now=now, known_seq=known_seq)


# -- build / parse -------------------------------------------------------------------------------


def test_build_parse_round_trip() -> None:
    rec = build_record(SIGNER, CAPS, seq=5, now=NOW, ttl_s=300)
    assert (rec.peer_id, rec.seq, rec.issued_at, rec.expires_at) == (
        SIGNER.peer_id,
        5,
        NOW,
        NOW + 300,
    )
    assert rec.caps == CAPS
    assert parse_record(rec.raw) == rec
    assert check_record(rec.raw, now=NOW, known_seq=None) == rec
    assert check_record(rec.raw, now=NOW + 0.5, known_seq=4) == rec
    # Hand-built body and build_record agree byte for byte.
    assert _signed(_body()) == rec.raw


@settings(max_examples=50, deadline=None)
@given(
    st.builds(
        Capabilities,
        addrs=st.lists(st.text(min_size=1, max_size=30).map(lambda s: "/" + s), max_size=4).map(
            tuple
        ),
        cpus=st.integers(0, 65536),
        cpus_physical=st.integers(0, 65536),
        ram_mb=st.integers(0, 2**40),
        disk_free_mb=st.integers(0, 2**50),
        load_milli=st.integers(0, 2**31),
        gpus=st.lists(
            st.builds(
                Gpu,
                name=st.text(min_size=1, max_size=20),
                memory_mb=st.integers(0, 2**31),
                driver=st.text(max_size=10),
                cc=st.text(max_size=5),
            ),
            max_size=3,
        ).map(tuple),
        executors=st.lists(st.text(min_size=1, max_size=10), max_size=3).map(tuple),
        price=st.integers(0, 2**31),
        max_jobs=st.integers(0, 4096),
        work=st.booleans(),
        allow_images=st.lists(st.text(min_size=1, max_size=20), max_size=3).map(tuple),
        agent=st.text(max_size=20),
    ),
    st.integers(1, 2**63 - 1),
    st.integers(1, MAX_TTL_S),
)
def test_round_trip_property(caps: Capabilities, seq: int, ttl: int) -> None:
    rec = build_record(SIGNER, caps, seq=seq, now=NOW, ttl_s=ttl)
    again = check_record(rec.raw, now=NOW, known_seq=seq - 1)
    assert again.caps == caps and again.seq == seq and again.expires_at == NOW + ttl


@pytest.mark.parametrize("ttl", [0, -1, MAX_TTL_S + 1])
def test_build_refuses_bad_ttl(ttl: int) -> None:
    with pytest.raises(ValueError, match="ttl"):
        build_record(SIGNER, CAPS, seq=1, now=NOW, ttl_s=ttl)


def test_dht_key() -> None:
    assert dht_key(SIGNER.peer_id) == f"/p2pmesh-cap/{SIGNER.peer_id}"
    assert capability.DHT_NAMESPACE == "p2pmesh-cap"


def test_to_json_shape() -> None:
    j = build_record(SIGNER, CAPS, seq=1, now=NOW, ttl_s=300).to_json()
    assert j["cpus"] == 16 and j["ram_gb"] == 64.0 and j["load"] == 1.25
    assert j["gpus"] == [
        {"name": "NVIDIA H100 80GB HBM3", "memory_gb": 79.6, "driver": "550.54.15",
         "compute_capability": "9.0"}
    ]  # fmt: skip
    assert j["executors"] == ["docker"] and j["price"] == 3 and j["work"] is True


# -- refusals: signature and identity ---------------------------------------------------------


def test_bad_signature_refused() -> None:
    raw = bytearray(_signed(_body()))
    sig_at = raw.index(b"\xa3sig\xc4\x40") + 6  # inside the 64 signature bytes
    raw[sig_at + 10] ^= 0x01
    _refused(bytes(raw), "bad signature")


def test_tampered_body_refused() -> None:
    raw = _signed(_body(price=3))
    # price 3 is the positive fixint 0x03 right after the key "price"; make it 4.
    i = raw.index(b"\xa5price\x03") + 6
    bad = raw[:i] + b"\x04" + raw[i + 1 :]
    _refused(bad, "bad signature")


def test_key_not_the_peers_refused() -> None:
    # Signed by SIGNER, claiming OTHER's peer ID: a valid signature, but not OTHER's record.
    _refused(_signed(_body(peer_id=OTHER.peer_id)), "not the signer")


def test_wrong_envelope_type_refused() -> None:
    raw = seal(SIGNER, "bid", _body())
    _refused(raw, "expected")


# -- refusals: time and sequence ----------------------------------------------------------------


def test_old_sequence_refused() -> None:
    raw = _signed(_body(seq=5))
    _refused(raw, "stale or replayed", known_seq=5)
    _refused(raw, "stale or replayed", known_seq=9)
    assert check_record(raw, now=NOW, known_seq=4).seq == 5


def test_expiry_in_the_past_refused() -> None:
    raw = _signed(_body(issued_at=NOW - 400, expires_at=NOW - 100))
    _refused(raw, "expired")
    # Exactly at expires_at is expired; a moment before is not.
    raw = _signed(_body())
    _refused(raw, "expired", now=NOW + 300)
    assert check_record(raw, now=NOW + 299.9, known_seq=None)


def test_expiry_too_far_in_the_future_refused() -> None:
    limit = NOW + MAX_TTL_S + MAX_CLOCK_SKEW_S
    assert check_record(_signed(_body(expires_at=limit)), now=NOW, known_seq=None)
    _refused(_signed(_body(expires_at=limit + 1)), "too far")
    _refused(_signed(_body(expires_at=2**62)), "too far")


def test_issued_in_the_future_refused() -> None:
    ok = _signed(_body(issued_at=NOW + MAX_CLOCK_SKEW_S, expires_at=NOW + MAX_CLOCK_SKEW_S + 300))
    assert check_record(ok, now=NOW, known_seq=None)
    bad = _signed(_body(issued_at=NOW + MAX_CLOCK_SKEW_S + 1, expires_at=NOW + 1000))
    _refused(bad, "future")


def test_expires_not_after_issued_refused() -> None:
    _refused(_signed(_body(issued_at=NOW, expires_at=NOW)), "after issued_at")


# -- refusals: schema, sizes, types --------------------------------------------------------------

_GPU = {"name": "g", "memory_mb": 1, "driver": "", "cc": ""}


@pytest.mark.parametrize(
    ("over", "match"),
    [
        # oversized fields
        ({"agent": "a" * 65}, "agent"),
        ({"addrs": ["/" + "a" * 256]}, "addrs"),
        ({"addrs": ["/ip4/1.2.3.4/tcp/1"] * (MAX_ADDRS + 1)}, "addrs"),
        ({"gpus": [_GPU] * (MAX_GPUS + 1)}, "gpus"),
        ({"gpus": [{**_GPU, "name": "n" * 129}]}, "name"),
        ({"gpus": [{**_GPU, "driver": "d" * 65}]}, "driver"),
        ({"gpus": [{**_GPU, "cc": "9" * 17}]}, "cc"),
        ({"executors": ["docker"] * 9}, "executors"),
        ({"executors": ["x" * 33]}, "executors"),
        ({"allow_images": ["i"] * (MAX_IMAGES + 1)}, "allow_images"),
        ({"allow_images": ["i" * 257]}, "allow_images"),
        ({"cpus": 65537}, "cpus"),
        ({"max_jobs": 4097}, "max_jobs"),
        ({"price": 2**31 + 1}, "price"),
        ({"gpus": [{**_GPU, "memory_mb": 2**31 + 1}]}, "memory_mb"),
        ({"seq": 2**63}, "seq"),
        # out of range
        ({"seq": 0}, "seq"),
        ({"cpus": -1}, "cpus"),
        ({"price": -5}, "price"),
        ({"issued_at": -1}, "issued_at"),
        # wrong types
        ({"cpus": "16"}, "cpus"),
        ({"ram_mb": b"\x01"}, "ram_mb"),
        ({"seq": None}, "seq"),
        ({"addrs": "/ip4/1.2.3.4/tcp/1"}, "addrs"),
        ({"addrs": [b"/ip4/1.2.3.4/tcp/1"]}, "addrs"),
        ({"addrs": [""]}, "addrs"),
        ({"addrs": ["ip4/1.2.3.4/tcp/1"]}, "multiaddr"),
        ({"gpus": {"name": "g"}}, "gpus"),
        ({"gpus": ["g"]}, "gpus"),
        ({"gpus": [{**_GPU, "extra": 1}]}, "unknown"),
        ({"gpus": [{"name": "g"}]}, "missing"),
        ({"gpus": [{**_GPU, "name": ""}]}, "name"),
        ({"agent": 5}, "agent"),
        ({"peer_id": b"12D3KooW"}, "peer_id"),
        ({"peer_id": ""}, "peer_id"),
        ({"work": "yes"}, "work"),
        ({"work": None}, "work"),
        # booleans as ints, ints as booleans
        ({"cpus": True}, "cpus"),
        ({"seq": True}, "seq"),
        ({"price": False}, "price"),
        ({"gpus": [{**_GPU, "memory_mb": True}]}, "memory_mb"),
        ({"work": 1}, "work"),
        ({"work": 0}, "work"),
        # unknown and missing fields
        ({"extra": 1}, "unknown"),
    ],
)
def test_schema_refusals(over: dict[str, Any], match: str) -> None:
    _refused(_signed(_body(**over)), match)


@pytest.mark.parametrize("field", sorted(capability._BODY_FIELDS))
def test_every_field_required(field: str) -> None:
    body = _body()
    del body[field]
    _refused(_signed(body), "missing")


def test_record_size_limit() -> None:
    # Within every field limit, but too big as a whole: refused before any signature check.
    body = _body(allow_images=["i" * 200] * 60)
    raw = _signed(body)
    assert len(raw) > MAX_RECORD_BYTES
    with pytest.raises(DecodeError, match="limit"):
        check_record(raw, now=NOW, known_seq=None)


@pytest.mark.parametrize("field", ["cpus", "addrs", "gpus", "work"])
def test_wrong_type_in_envelope_body_is_validation_error(field: str) -> None:
    with pytest.raises(ValidationError):
        check_record(_signed(_body(**{field: {"nested": [1]}})), now=NOW, known_seq=None)


# -- select_newest -------------------------------------------------------------------------------


def test_select_newest() -> None:
    recs = [build_record(SIGNER, CAPS, seq=s, now=NOW, ttl_s=300).raw for s in (1, 3, 2)]
    assert select_newest(recs) == 1
    assert select_newest([b"junk", *recs]) == 2
    assert select_newest([recs[0], b"\x80", recs[2]]) == 2
    assert select_newest([]) == 0
    assert select_newest([b"junk", b""]) == 0
    assert select_newest([recs[1], recs[1]]) == 1  # identical copies: the last (a re-put is ok)


def test_select_newest_breaks_a_seq_tie_by_bytes_in_any_order() -> None:
    # Same seq, different content: a tie. Both orders py-libp2p uses pick the same value.
    a = build_record(SIGNER, CAPS, seq=7, now=NOW, ttl_s=300).raw
    b = build_record(SIGNER, CAPS, seq=7, now=NOW + 1, ttl_s=300).raw
    assert a != b
    winner = max(a, b)
    assert [a, b][select_newest([a, b])] == winner == [b, a][select_newest([b, a])]
    newer = build_record(SIGNER, CAPS, seq=8, now=NOW, ttl_s=300).raw
    assert select_newest([winner, newer]) == 1 and select_newest([newer, winner]) == 0


def test_select_newest_ignores_forgeries() -> None:
    good = build_record(SIGNER, CAPS, seq=2, now=NOW, ttl_s=300).raw
    forged = bytearray(build_record(SIGNER, CAPS, seq=99, now=NOW, ttl_s=300).raw)
    forged[-70] ^= 1
    assert select_newest([bytes(forged), good]) == 1


# -- fuzz ---------------------------------------------------------------------------------------

_GOOD = build_record(SIGNER, CAPS, seq=5, now=NOW, ttl_s=300).raw


def _check_only_mesh_errors(data: bytes) -> None:
    try:
        check_record(data, now=NOW, known_seq=None)
    except (DecodeError, ValidationError):
        pass


@settings(max_examples=300)
@given(st.binary(max_size=400))
def test_fuzz_random_bytes(data: bytes) -> None:
    _check_only_mesh_errors(data)


@settings(max_examples=300)
@given(st.data())
def test_fuzz_mutated_record(data: st.DataObject) -> None:
    raw = bytearray(_GOOD)
    for _ in range(data.draw(st.integers(1, 3))):
        i = data.draw(st.integers(0, len(raw) - 1))
        op = data.draw(st.sampled_from(["flip", "insert", "delete"]))
        if op == "flip":
            raw[i] ^= data.draw(st.integers(1, 255))
        elif op == "insert":
            raw.insert(i, data.draw(st.integers(0, 255)))
        else:
            del raw[i]
    assume(bytes(raw) != _GOOD)  # two flips of one byte can cancel out
    with pytest.raises((DecodeError, ValidationError)):
        check_record(bytes(raw), now=NOW, known_seq=None)


_json_like = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.text(max_size=10)
    | st.binary(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=10,
)


@settings(max_examples=200)
@given(st.sampled_from(sorted(capability._BODY_FIELDS)), _json_like)
def test_fuzz_signed_hostile_field(field: str, value: Any) -> None:
    # A correctly signed record whose one field holds any value: accepted only if well formed.
    try:
        raw = _signed(_body(**{field: value}))
    except DecodeError:
        return  # too deep to encode at all
    _check_only_mesh_errors(raw)


def test_record_replace_caps_changes_bytes() -> None:
    a = build_record(SIGNER, CAPS, seq=1, now=NOW, ttl_s=300)
    b = build_record(SIGNER, replace(CAPS, price=4), seq=1, now=NOW, ttl_s=300)
    assert a.raw != b.raw and b.caps.price == 4
