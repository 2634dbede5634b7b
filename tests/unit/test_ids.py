"""Tests for p2pmesh/core/ids.py: peer IDs equal libp2p's, base58 round trip, bad IDs refused."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.peer.id import ID

from p2pmesh.core import ids
from p2pmesh.core.crypto import Ed25519Signer
from p2pmesh.errors import ValidationError

seeds = st.binary(min_size=32, max_size=32)


def _libp2p_peer_id(seed: bytes) -> str:
    return ID.from_pubkey(create_new_key_pair(seed).public_key).pretty()


@settings(max_examples=30, deadline=None)
@given(seeds)
def test_peer_id_equals_libp2p(seed: bytes) -> None:
    signer = Ed25519Signer(seed)
    # The same seed gives the same key in PyNaCl and in libp2p (the node's two faces).
    assert signer.public_key == create_new_key_pair(seed).public_key.to_bytes()
    assert signer.peer_id == _libp2p_peer_id(seed)
    assert ids.peer_id_from_public_key(signer.public_key) == signer.peer_id


def test_peer_id_layout() -> None:
    pk = bytes(range(32))
    raw = ids.b58decode(ids.peer_id_from_public_key(pk))
    # identity multihash (0x00, len 36) of protobuf PublicKey{Type=Ed25519, Data=pk}
    assert raw == b"\x00\x24" + b"\x08\x01\x12\x20" + pk
    assert ids.peer_id_from_public_key(pk).startswith("12D3KooW")


@given(seeds)
def test_public_key_round_trip(pk: bytes) -> None:
    assert ids.public_key_from_peer_id(ids.peer_id_from_public_key(pk)) == pk


@given(st.binary(max_size=64))
def test_b58_round_trip(data: bytes) -> None:
    text = ids.b58encode(data)
    assert ids.b58decode(text) == data
    assert set(text) <= set(ids._B58)


def test_b58_leading_zeros_and_known_values() -> None:
    assert ids.b58encode(b"") == ""
    assert ids.b58encode(b"\x00") == "1"
    assert ids.b58encode(b"\x00\x00\x01") == "112"
    # "hello world" in Bitcoin's alphabet (a widely published example value).
    assert ids.b58encode(b"hello world") == "StV1DL6CwTryKyV"
    assert ids.b58decode("StV1DL6CwTryKyV") == b"hello world"


@pytest.mark.parametrize("text", ["0", "O", "I", "l", "abc+", "é", " 12D3"])
def test_b58_bad_characters(text: str) -> None:
    with pytest.raises(ValidationError, match="base58"):
        ids.b58decode(text)


@pytest.mark.parametrize("n", [0, 31, 33, 64])
def test_public_key_wrong_length(n: int) -> None:
    with pytest.raises(ValidationError):
        ids.peer_id_from_public_key(b"\x01" * n)


def _good_id() -> str:
    return Ed25519Signer(b"\x05" * 32).peer_id


# The peer ID of seed 0x07 * 32 (pinned in test_seed7_peer_id); the bad IDs below derive from it.
PID7 = "12D3KooWRawPbxPtP1eZaJpumGnyWX2DcUyd3RQnydr3eAto4Az7"


def test_seed7_peer_id() -> None:
    assert Ed25519Signer(b"\x07" * 32).peer_id == PID7 == _libp2p_peer_id(b"\x07" * 32)


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "1",
        "x" * 65,
        "QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N",  # an RSA/sha256 peer ID: not Ed25519
        "12D3KooW0000",  # bad base58 character
        "1" + PID7,  # extra leading zero byte
        PID7[:-2],  # truncated
        PID7 + "z",  # one character too many
    ],
)
def test_bad_peer_ids_refused(bad: str) -> None:
    with pytest.raises(ValidationError):
        ids.public_key_from_peer_id(bad)


@pytest.mark.parametrize("bad", [None, 5, b"12D3KooW", ["12D3KooW"]])
def test_non_text_peer_ids_refused(bad: object) -> None:
    with pytest.raises(ValidationError):
        ids.public_key_from_peer_id(bad)  # type: ignore[arg-type]


@given(st.text(max_size=80))
def test_fuzz_peer_id_parse(text: str) -> None:
    try:
        pk = ids.public_key_from_peer_id(text)
    except ValidationError:
        return
    assert ids.peer_id_from_public_key(pk) == text


def test_good_id_parses() -> None:
    pid = _good_id()
    assert ids.peer_id_from_public_key(ids.public_key_from_peer_id(pid)) == pid


def test_short_peer_id_and_digest() -> None:
    pid = _good_id()
    assert ids.short_peer_id(pid) == "…" + pid[-8:]
    assert ids.sha256_hex(b"abc") == (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )
