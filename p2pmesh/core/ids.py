"""Peer IDs and digests: the libp2p peer ID of an Ed25519 key, computed without libp2p.

A libp2p peer ID for an Ed25519 key is the base58btc text of the *identity* multihash of the
protobuf-encoded public key (docs/PROTOCOL.md §1), so any peer can check that a record's signer
key is the peer ID it claims without a network round trip.
"""

from __future__ import annotations

import functools
import hashlib

from p2pmesh.errors import ValidationError

_B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_B58_INDEX = {c: i for i, c in enumerate(_B58)}
# protobuf PublicKey{Type: Ed25519 (1), Data: 32 bytes}
_ED25519_PB_PREFIX = b"\x08\x01\x12\x20"
# multihash identity code (0x00) and length 36
_IDENTITY_MH_PREFIX = b"\x00\x24"
MAX_PEER_ID_CHARS = 64


def b58encode(data: bytes) -> str:
    n = int.from_bytes(data, "big")
    out = []
    while n:
        n, r = divmod(n, 58)
        out.append(_B58[r])
    pad = len(data) - len(data.lstrip(b"\x00"))
    return "1" * pad + "".join(reversed(out))


def b58decode(text: str) -> bytes:
    n = 0
    for ch in text:
        if ch not in _B58_INDEX:
            raise ValidationError(f"invalid base58 character {ch!r}")
        n = n * 58 + _B58_INDEX[ch]
    body = n.to_bytes((n.bit_length() + 7) // 8, "big") if n else b""
    pad = len(text) - len(text.lstrip("1"))
    return b"\x00" * pad + body


@functools.lru_cache(maxsize=1 << 14)  # pure; the keys of the peers we talk to, over and over
def peer_id_from_public_key(public_key: bytes) -> str:
    """The libp2p peer ID (``12D3KooW…``) of a raw 32-byte Ed25519 public key."""
    if len(public_key) != 32:
        raise ValidationError("Ed25519 public key must be 32 bytes")
    return b58encode(_IDENTITY_MH_PREFIX + _ED25519_PB_PREFIX + public_key)


def public_key_from_peer_id(peer_id: str) -> bytes:
    """The Ed25519 key inside an identity-multihash peer ID; ``ValidationError`` otherwise."""
    if not isinstance(peer_id, str) or not 1 <= len(peer_id) <= MAX_PEER_ID_CHARS:
        raise ValidationError("peer ID must be 1..64 characters")
    raw = b58decode(peer_id)
    prefix = _IDENTITY_MH_PREFIX + _ED25519_PB_PREFIX
    if len(raw) != len(prefix) + 32 or not raw.startswith(prefix):
        raise ValidationError("peer ID is not an Ed25519 identity peer ID")
    return raw[len(prefix) :]


def short_peer_id(peer_id: str) -> str:
    """The last 8 characters: the distinguishing part, since every Ed25519 ID starts alike."""
    return "…" + peer_id[-8:]


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
