"""Signing with domain separation (docs/PROTOCOL.md §3).

Every signature is Ed25519 over ``DOMAIN_PREFIX ‖ purpose ‖ 0x00 ‖ canonical bytes``, so a
signature made for one purpose (a capability record) can never verify as another (a bid).
The signer is injected into the core: the daemon uses the node's key, the simulator may use a
cheaper stand-in with the same interface.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Protocol

import nacl.exceptions
import nacl.signing

from p2pmesh.core.ids import peer_id_from_public_key

DOMAIN_PREFIX = b"p2pmesh/v1/"

# One tag per signed purpose. Adding a purpose adds a tag; tags are never reused.
PURPOSES = frozenset(
    {
        "capability",
        "offer",
        "bid",
        "award",
        "result",
        "verdict",
        "block",
        "fraud",
        "cancel",
        "wrong-result",
    }
)


def signing_input(purpose: str, payload: bytes) -> bytes:
    if purpose not in PURPOSES:
        raise ValueError(f"unknown signature purpose {purpose!r}")
    return DOMAIN_PREFIX + purpose.encode() + b"\x00" + payload


class Signer(Protocol):
    @property
    def public_key(self) -> bytes: ...

    @property
    def peer_id(self) -> str: ...

    def sign(self, purpose: str, payload: bytes) -> bytes: ...


class Ed25519Signer:
    """The node's own key. ``seed`` is the 32-byte secret stored in the node home."""

    def __init__(self, seed: bytes) -> None:
        self._key = nacl.signing.SigningKey(seed)
        self._public = bytes(self._key.verify_key)
        self._peer_id = peer_id_from_public_key(self._public)

    @property
    def public_key(self) -> bytes:
        return self._public

    @property
    def peer_id(self) -> str:
        return self._peer_id

    def sign(self, purpose: str, payload: bytes) -> bytes:
        message = signing_input(purpose, payload)
        signature: bytes = self._key.sign(message).signature
        # Every message we build is read back through the same parser as a peer's (one code
        # path); our own fresh signature needs no second check.
        _remember_verified(self._public + signature + hashlib.sha256(message).digest())
        return signature


# One message is verified several times on its way through a node (topic validator, then the
# core; a verdict by every peer of a simulation), and Ed25519 verification dominates the cost of
# handling small messages. Verification is a pure function, so successes are memoised: the key
# binds the public key, the signature and a hash of the exact signed bytes. Bounded, FIFO.
# An OrderedDict: popping the oldest of a plain dict rescans the deleted slots at its front.
_VERIFIED: OrderedDict[bytes, None] = OrderedDict()
VERIFY_CACHE_SIZE = 1 << 16


def verify(public_key: bytes, purpose: str, payload: bytes, signature: bytes) -> bool:
    """True only for a valid Ed25519 signature by ``public_key`` for this purpose and payload."""
    if len(public_key) != 32 or len(signature) != 64:
        return False
    if purpose not in PURPOSES:
        return False
    message = signing_input(purpose, payload)
    key = public_key + signature + hashlib.sha256(message).digest()
    if key in _VERIFIED:
        return True
    try:
        nacl.signing.VerifyKey(public_key).verify(message, signature)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.CryptoError, ValueError):
        return False
    _remember_verified(key)
    return True


def _remember_verified(key: bytes) -> None:
    if len(_VERIFIED) >= VERIFY_CACHE_SIZE:
        _VERIFIED.popitem(last=False)
    _VERIFIED[key] = None
