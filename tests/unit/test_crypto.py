"""Tests for p2pmesh/core/crypto.py: the domain-separated signing input and Ed25519 signatures."""

from __future__ import annotations

import nacl.signing
import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pmesh.core.crypto import (
    DOMAIN_PREFIX,
    PURPOSES,
    Ed25519Signer,
    Signer,
    signing_input,
    verify,
)

SEED = bytes(range(32))
purposes = st.sampled_from(sorted(PURPOSES))


def test_signer_satisfies_protocol() -> None:
    signer: Signer = Ed25519Signer(SEED)
    assert len(signer.public_key) == 32
    assert signer.peer_id.startswith("12D3KooW")


def test_purposes_pinned() -> None:
    # Tags are never reused or renamed (crypto module docstring): adding one updates this list
    # and docs/PROTOCOL.md §3 together.
    assert sorted(PURPOSES) == [
        "award",
        "bid",
        "block",
        "cancel",
        "capability",
        "fraud",
        "offer",
        "result",
        "verdict",
        "wrong-result",
    ]


def test_signing_input_layout() -> None:
    assert DOMAIN_PREFIX == b"p2pmesh/v1/"
    assert signing_input("capability", b"\x01\x02") == b"p2pmesh/v1/capability\x00\x01\x02"


def test_unknown_purpose_refused() -> None:
    with pytest.raises(ValueError, match="purpose"):
        signing_input("capabilities", b"")
    with pytest.raises(ValueError):
        Ed25519Signer(SEED).sign("nope", b"")
    pk = Ed25519Signer(SEED).public_key
    assert not verify(pk, "nope", b"", b"\x00" * 64)


@given(st.binary(max_size=200), purposes)
def test_sign_verify(payload: bytes, purpose: str) -> None:
    signer = Ed25519Signer(SEED)
    sig = signer.sign(purpose, payload)
    assert len(sig) == 64
    assert verify(signer.public_key, purpose, payload, sig)
    # It is a plain Ed25519 signature over the signing input, checkable with any library.
    nacl.signing.VerifyKey(signer.public_key).verify(signing_input(purpose, payload), sig)


@given(st.binary(max_size=64), purposes, purposes)
def test_domain_separation(payload: bytes, signed_as: str, checked_as: str) -> None:
    signer = Ed25519Signer(SEED)
    sig = signer.sign(signed_as, payload)
    assert verify(signer.public_key, checked_as, payload, sig) == (signed_as == checked_as)


def test_no_prefix_ambiguity_between_purposes() -> None:
    # The 0x00 after the purpose keeps "bid" ‖ payload from reading as "bidX" ‖ rest.
    for a in PURPOSES:
        for b in PURPOSES:
            if a != b:
                assert not signing_input(b, b"").startswith(signing_input(a, b""))


def test_bare_signature_is_not_a_purpose_signature() -> None:
    signer = Ed25519Signer(SEED)
    raw = nacl.signing.SigningKey(SEED).sign(b"payload").signature
    assert not verify(signer.public_key, "bid", b"payload", raw)


@given(st.binary(min_size=1, max_size=64), st.data())
def test_tampered_payload_or_signature_fails(payload: bytes, data: st.DataObject) -> None:
    signer = Ed25519Signer(SEED)
    sig = signer.sign("bid", payload)
    i = data.draw(st.integers(0, len(payload) - 1))
    bad_payload = payload[:i] + bytes([payload[i] ^ 1]) + payload[i + 1 :]
    assert not verify(signer.public_key, "bid", bad_payload, sig)
    j = data.draw(st.integers(0, 63))
    bad_sig = sig[:j] + bytes([sig[j] ^ 0x80]) + sig[j + 1 :]
    assert not verify(signer.public_key, "bid", payload, bad_sig)


def test_other_key_fails() -> None:
    sig = Ed25519Signer(SEED).sign("bid", b"x")
    assert not verify(Ed25519Signer(b"\x09" * 32).public_key, "bid", b"x", sig)


@pytest.mark.parametrize(
    ("pk_len", "sig_len"), [(0, 64), (31, 64), (33, 64), (32, 0), (32, 63), (32, 65)]
)
def test_malformed_key_or_signature_is_false_not_an_exception(pk_len: int, sig_len: int) -> None:
    assert verify(b"\x01" * pk_len, "bid", b"x", b"\x02" * sig_len) is False


@given(st.binary(min_size=32, max_size=32), st.binary(min_size=64, max_size=64))
def test_fuzz_verify_never_raises(pk: bytes, sig: bytes) -> None:
    # Arbitrary 32 bytes may not be a curve point; that is a False, never an exception.
    assert verify(pk, "capability", b"payload", sig) in (True, False)


def test_signatures_are_deterministic() -> None:
    a = Ed25519Signer(SEED).sign("capability", b"x")
    assert a == Ed25519Signer(SEED).sign("capability", b"x")
