"""Tests for p2pmesh/core/envelope.py: seal/open, tampering, wrong type, version and fields."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pmesh.core import codec
from p2pmesh.core.crypto import PURPOSES, Ed25519Signer, signing_input, verify
from p2pmesh.core.envelope import ENVELOPE_VERSION, Opened, open_envelope, seal
from p2pmesh.errors import DecodeError, MeshError, ValidationError

SIGNER = Ed25519Signer(b"\x11" * 32)
OTHER = Ed25519Signer(b"\x22" * 32)
BODY: dict[str, Any] = {"n": 7, "name": "x", "blob": b"\x00\x01", "list": [1, "a"], "ok": True}


def _sealed() -> bytes:
    return seal(SIGNER, "bid", BODY)


def _hand_sealed(fields: dict[str, Any], *, sign_as: str = "bid", signer: Any = SIGNER) -> bytes:
    """An envelope with arbitrary fields, correctly signed over everything but ``sig``."""
    unsigned = {k: v for k, v in fields.items() if k != "sig"}
    sig = signer.sign(sign_as, codec.encode(unsigned))
    return codec.encode({**unsigned, "sig": sig})


def _fields(**over: Any) -> dict[str, Any]:
    return {"t": "bid", "v": ENVELOPE_VERSION, "pk": SIGNER.public_key, "body": BODY, **over}


def test_seal_open_round_trip() -> None:
    raw = _sealed()
    opened = open_envelope(raw, "bid")
    assert opened == Opened("bid", SIGNER.peer_id, SIGNER.public_key, BODY, raw)


def test_layout() -> None:
    # A canonical map with exactly five keys in UTF-8 order; the signature covers the other four.
    raw = _sealed()
    value = codec.decode(raw)
    assert list(value) == ["body", "pk", "sig", "t", "v"]
    unsigned = {k: value[k] for k in ("body", "pk", "t", "v")}
    assert verify(SIGNER.public_key, "bid", codec.encode(unsigned), value["sig"])
    assert signing_input("bid", codec.encode(unsigned)).startswith(b"p2pmesh/v1/bid\x00\x84")


def test_hand_sealed_matches_seal() -> None:
    assert _hand_sealed(_fields()) == _sealed()


@given(
    st.sampled_from(sorted(PURPOSES)),
    st.dictionaries(
        st.text(max_size=6),
        st.integers(-(2**63), 2**64 - 1) | st.binary(max_size=40) | st.text(max_size=300),
        max_size=6,
    ),
)
def test_seal_splices_the_canonical_envelope(type_: str, body: dict[str, Any]) -> None:
    # seal inserts the sig entry into the signed bytes instead of encoding the message twice;
    # the result must be exactly the canonical encoding of the five-field map.
    fields = {"t": type_, "v": ENVELOPE_VERSION, "pk": SIGNER.public_key, "body": body}
    assert seal(SIGNER, type_, body) == _hand_sealed(fields, sign_as=type_)


def test_seal_refuses_what_would_not_fit_a_message() -> None:
    # A body whose unsigned map fits the limit but not with the 70-byte sig entry added.
    def body(n: int) -> dict[str, Any]:
        return {"a": b"\x00" * 32000, "b": b"\x00" * 32000, "c": b"\x00" * n}

    def size(n: int) -> int:
        return len(codec.encode(_fields(body=body(n)), max_bytes=1 << 20))

    n = max(n for n in range(2000) if size(n) <= codec.MAX_MESSAGE_BYTES - 10)
    assert len(codec.encode(_fields(body=body(n)))) <= codec.MAX_MESSAGE_BYTES
    with pytest.raises(DecodeError, match="limit"):
        seal(SIGNER, "bid", body(n))
    with pytest.raises(ValueError, match="unknown signature purpose"):
        seal(SIGNER, "nonsense", BODY)


@pytest.mark.parametrize("expected", ["capability", "offer", "award", "nonsense"])
def test_wrong_type_refused(expected: str) -> None:
    with pytest.raises(ValidationError, match="expected"):
        open_envelope(_sealed(), expected)


def test_type_is_bound_by_the_signature() -> None:
    # Relabel a bid as an offer: the domain tag no longer matches the signature.
    value = codec.decode(_sealed())
    value["t"] = "offer"
    with pytest.raises(ValidationError, match="bad signature"):
        open_envelope(codec.encode(value), "offer")


def test_unknown_type_refused_even_if_expected() -> None:
    raw = codec.encode({**_fields(t="gossip"), "sig": b"\x00" * 64})
    with pytest.raises(ValidationError):
        open_envelope(raw, "gossip")


@pytest.mark.parametrize("version", [0, 2, 255, -1, "1", b"\x01", None])
def test_wrong_version_refused(version: Any) -> None:
    raw = _hand_sealed(_fields(v=version))
    with pytest.raises(ValidationError, match="version"):
        open_envelope(raw, "bid")


def test_boolean_version_refused() -> None:
    # Regression: ``True == 1`` in Python, so a signer's ``"v": true`` once passed as version 1.
    with pytest.raises(ValidationError, match="version"):
        open_envelope(_hand_sealed(_fields(v=True)), "bid")


@pytest.mark.parametrize(
    "fields",
    [
        {**_fields(), "sig": b"\x00" * 64, "x": 1},  # an extra field
        {**_fields(), "sig": b"\x00" * 64, "sig2": b""},
        _fields(),  # no sig
        {"t": "bid", "v": 1, "pk": SIGNER.public_key, "sig": b"\x00" * 64},  # no body
    ],
)
def test_missing_or_extra_fields_refused(fields: dict[str, Any]) -> None:
    with pytest.raises(DecodeError, match="exactly"):
        open_envelope(codec.encode(fields), "bid")


def test_extra_signed_field_refused() -> None:
    # Even correctly signed, an unknown top-level field is refused.
    with pytest.raises(DecodeError):
        open_envelope(_hand_sealed({**_fields(), "extra": 1}), "bid")


@pytest.mark.parametrize("top", [[], 5, "env", b"env", None])
def test_not_a_map_refused(top: Any) -> None:
    with pytest.raises(DecodeError):
        open_envelope(codec.encode(top), "bid")


@pytest.mark.parametrize(
    ("over", "match"),
    [
        ({"pk": SIGNER.public_key.hex()}, "pk"),  # text where bytes are required
        ({"pk": SIGNER.public_key[:31]}, "pk"),
        ({"pk": SIGNER.public_key + b"\x00"}, "pk"),
        ({"sig": "00" * 64}, "sig"),
        ({"sig": b"\x00" * 63}, "sig"),
        ({"body": [1, 2]}, "body"),
        ({"body": b"body"}, "body"),
    ],
)
def test_field_types_refused(over: dict[str, Any], match: str) -> None:
    fields = {**_fields(), "sig": b"\x00" * 64, **over}
    with pytest.raises(ValidationError, match=match):
        open_envelope(codec.encode(fields), "bid")


def test_other_signers_key_refused() -> None:
    # Claim OTHER's key but sign with SIGNER.
    raw = _hand_sealed(_fields(pk=OTHER.public_key))
    with pytest.raises(ValidationError, match="bad signature"):
        open_envelope(raw, "bid")


def test_signature_swapped_between_envelopes_refused() -> None:
    a = codec.decode(seal(SIGNER, "bid", {"n": 1}))
    b = codec.decode(seal(SIGNER, "bid", {"n": 2}))
    a["sig"] = b["sig"]
    with pytest.raises(ValidationError, match="bad signature"):
        open_envelope(codec.encode(a), "bid")


def test_size_limit() -> None:
    raw = seal(SIGNER, "bid", {"blob": b"x" * 1000})
    assert open_envelope(raw, "bid", max_bytes=len(raw)).body["blob"] == b"x" * 1000
    with pytest.raises(DecodeError, match="limit"):
        open_envelope(raw, "bid", max_bytes=len(raw) - 1)


def test_every_single_byte_change_refused() -> None:
    # Exhaustive over positions for one envelope, with three different changes per byte.
    raw = _sealed()
    for i in range(len(raw)):
        for x in (0x01, 0x80, 0xFF):
            bad = raw[:i] + bytes([raw[i] ^ x]) + raw[i + 1 :]
            with pytest.raises((DecodeError, ValidationError)):
                open_envelope(bad, "bid")


@given(
    st.dictionaries(
        st.text(max_size=5), st.integers(-(2**63), 2**64 - 1) | st.binary(max_size=8), max_size=4
    ),
    st.data(),
)
def test_tampering_any_byte_refused(body: dict[str, Any], data: st.DataObject) -> None:
    raw = seal(SIGNER, "offer", body)
    assert open_envelope(raw, "offer").body == body
    i = data.draw(st.integers(0, len(raw) - 1), label="position")
    x = data.draw(st.integers(1, 255), label="xor")
    bad = raw[:i] + bytes([raw[i] ^ x]) + raw[i + 1 :]
    with pytest.raises((DecodeError, ValidationError)):
        open_envelope(bad, "offer")


@given(st.binary(max_size=300))
def test_fuzz_random_bytes(data: bytes) -> None:
    try:
        open_envelope(data, "bid")
    except (DecodeError, ValidationError):
        pass


@given(st.data())
def test_fuzz_insert_delete_truncate(data: st.DataObject) -> None:
    raw = bytearray(_sealed())
    i = data.draw(st.integers(0, len(raw) - 1))
    op = data.draw(st.sampled_from(["insert", "delete", "truncate"]))
    if op == "insert":
        raw.insert(i, data.draw(st.integers(0, 255)))
    elif op == "delete":
        del raw[i]
    else:
        del raw[i:]
    with pytest.raises(MeshError) as info:
        open_envelope(bytes(raw), "bid")
    assert isinstance(info.value, DecodeError | ValidationError)
