"""A cheap stand-in for Ed25519, for large simulations only (STYLE.md R5).

``SimSigner`` has the core's ``Signer`` interface (``public_key``, ``peer_id``, ``sign``), so
every message is still sealed, encoded and opened by the real core code; only the primitive
changes. Its "signature" is a keyed BLAKE2b of the exact signed bytes under the *public* key:
anyone can forge it. That is acceptable here because no simulated behaviour forges signatures
(adversaries cheat on results, identities and the ledger, which the protocol must catch on its
own), and it is never acceptable anywhere else.

The core verifies through the module function ``p2pmesh.core.crypto.verify``, which the
envelope module imports by name, and offers no way to inject a verifier. Until it does (the
core change asked for in docs/SIMULATIONS.md, "Core interface changes"), ``sim_signatures()``
swaps ``p2pmesh.core.envelope.verify`` for ``sim_verify`` for the duration of a ``with`` block
and puts the original back on exit. This is the simulator's ONE patch of the core; nothing
else in ``simulations/`` touches core internals.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator

from p2pmesh.core import envelope
from p2pmesh.core.crypto import PURPOSES, signing_input
from p2pmesh.core.ids import peer_id_from_public_key


class SimSigner:
    """Deterministic identity from ``seed``; same interface as ``Ed25519Signer``."""

    __slots__ = ("_peer_id", "_public")

    def __init__(self, seed: bytes) -> None:
        self._public = hashlib.sha256(b"p2pmesh-sim-key\x00" + seed).digest()
        self._peer_id = peer_id_from_public_key(self._public)

    @property
    def public_key(self) -> bytes:
        return self._public

    @property
    def peer_id(self) -> str:
        return self._peer_id

    def sign(self, purpose: str, payload: bytes) -> bytes:
        return _mac(self._public, signing_input(purpose, payload))


def _mac(public_key: bytes, message: bytes) -> bytes:
    return hashlib.blake2b(message, key=public_key, digest_size=64).digest()


def sim_verify(public_key: bytes, purpose: str, payload: bytes, signature: bytes) -> bool:
    """The check matching ``SimSigner.sign``: same domain separation, same size rules."""
    if len(public_key) != 32 or len(signature) != 64 or purpose not in PURPOSES:
        return False
    return _mac(public_key, signing_input(purpose, payload)) == signature


@contextlib.contextmanager
def sim_signatures() -> Iterator[None]:
    """Make the core accept ``SimSigner`` signatures (and only those) inside the block.

    This monkeypatches ``p2pmesh.core.envelope.verify`` (reported to the lead; to be replaced
    by an injectable verifier in the core). Not re-entrant across threads: the simulator is
    single-threaded and restores the original even when the run raises.
    """
    original = envelope.verify
    envelope.verify = sim_verify  # type: ignore[assignment]
    try:
        yield
    finally:
        envelope.verify = original  # type: ignore[assignment]
