"""The private-network (PSK v1) connection protector, as the libp2p pnet spec and go-libp2p do it.

Every raw TCP connection is wrapped before multistream-select and Noise: each side sends a
random 24-byte nonce as its first bytes, then everything it writes is XORed with the XSalsa20
keystream of (PSK, its own nonce); it decrypts what it reads with the stream of (PSK, the
peer's nonce). No MAC: a peer with another key (or none) simply produces garbage, which the
first protocol line (multistream-select's header, which both sides always send first) shows at
once, so we refuse such a connection on its first bytes and say why (PROTOCOL.md §10).

py-libp2p 0.8.1 ships ``libp2p.security.pnet``, but it cannot be used as is: it speaks Salsa20
with an *8-byte* nonce (not interoperable with go-libp2p, js-libp2p or IPFS), reads the nonce
with one ``read(8)`` (a short TCP read fails the connection), and its ``PskConn`` lacks the
attributes the swarm reads after the upgrade (``is_initiator``, ``get_transport_addresses``,
``get_connection_type``). ``patches.py`` item 7 makes the swarm call ``protect`` here instead.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import trio
from Crypto.Cipher import Salsa20
from libp2p.abc import IMuxedConn, IRawConnection
from libp2p.network.connection.exceptions import RawConnError

from p2pmesh.core.swarmkey import KEY_BYTES, hsalsa20

NONCE_BYTES = 24
# What multistream-select 1.0.0 puts first on every libp2p connection: its length varint and
# header line. Decrypted with the right key, the peer's first bytes are exactly these.
MULTISTREAM_HEADER = b"\x13/multistream/1.0.0\n"

# After a refusal, read what the peer already sent for at most this long before closing: a
# socket closed with unread bytes sends a TCP reset, and a reset makes the peer's kernel drop
# what *it* has not read yet, so the peer would never see our bytes and never learn (or log)
# that it was refused.
DRAIN_S = 0.5

NO_KEY = "the peer has no swarm key (it speaks plain libp2p)"
WRONG_KEY = "the peer does not hold this mesh's swarm key"


@dataclass(frozen=True, slots=True)
class Refusal:
    inbound: bool
    remote: str  # "ip:port", or "" when unknown
    reason: str


# (key, listener): told about every connection refused under that key (MeshNet logs and counts
# them). Module-level because the swarm calls ``protect`` with only the connection and the key;
# keyed so that two hosts in one process (tests) hear only of their own connections.
refusal_listeners: list[tuple[bytes, Callable[[Refusal], None]]] = []


def xsalsa20(psk: bytes, nonce: bytes) -> Any:
    """A running XSalsa20 stream: HSalsa20 subkey from nonce[0:16], Salsa20 on nonce[16:24]."""
    return Salsa20.new(key=hsalsa20(psk, nonce[:16]), nonce=nonce[16:])


class PskConn(IRawConnection):
    """A raw connection under the PSK layer; the rest of libp2p sees plain bytes."""

    def __init__(self, conn: IRawConnection, psk: bytes) -> None:
        if len(psk) != KEY_BYTES:
            raise ValueError(f"a swarm key has {KEY_BYTES} bytes")
        self._conn = conn
        self._psk = psk
        self.is_initiator = bool(getattr(conn, "is_initiator", False))
        self._writer: Any = None
        self._reader: Any = None
        self._nonce_in = b""
        self._checked = 0  # how many plaintext bytes have been compared with the header
        self._refused = False
        try:  # now: once the socket is closed the address may be gone
            addr = conn.get_remote_address()
            self._remote = f"{addr[0]}:{addr[1]}" if addr else ""
        except Exception:
            self._remote = ""
        self._write_lock = trio.Lock()

    # -- writing ---------------------------------------------------------------------------
    async def write(self, data: bytes) -> None:
        # One lock for encrypt-then-write: the keystream position must follow the byte order.
        async with self._write_lock:
            if self._writer is None:
                nonce = os.urandom(NONCE_BYTES)
                self._writer = xsalsa20(self._psk, nonce)
                await self._conn.write(nonce + self._writer.encrypt(bytes(data)))
                return
            await self._conn.write(self._writer.encrypt(bytes(data)))

    # -- reading ---------------------------------------------------------------------------
    async def read(self, n: int | None = None) -> bytes:
        if self._reader is None:
            await self._read_nonce()
        data = await self._conn.read(n)
        if not data:
            return b""
        plain: bytes = self._reader.decrypt(bytes(data))
        if self._checked < len(MULTISTREAM_HEADER):
            want = MULTISTREAM_HEADER[self._checked : self._checked + len(plain)]
            if plain[: len(want)] != want:
                self._refuse(WRONG_KEY)
            self._checked += len(want)
        return plain

    async def _read_nonce(self) -> None:
        while len(self._nonce_in) < NONCE_BYTES:
            chunk = await self._conn.read(NONCE_BYTES - len(self._nonce_in))
            if not chunk:
                raise RawConnError("connection closed before the peer's PSK nonce")
            self._nonce_in += bytes(chunk)
            # A peer without a key starts with multistream's header in clear; a random nonce
            # that begins so is a 2^-160 event. Say so now rather than after it stalls.
            head = self._nonce_in[: len(MULTISTREAM_HEADER)]
            if head == MULTISTREAM_HEADER[: len(head)] and len(head) == len(MULTISTREAM_HEADER):
                self._refuse(NO_KEY)
        self._reader = xsalsa20(self._psk, self._nonce_in)

    def _refuse(self, reason: str) -> None:
        self._refused = True
        refusal = Refusal(inbound=not self.is_initiator, remote=self._remote, reason=reason)
        for psk, listener in list(refusal_listeners):
            if psk != self._psk:
                continue
            try:
                listener(refusal)
            except Exception:  # a logging bug must not change what the connection does
                pass
        raise RawConnError(f"private mesh: connection refused: {reason}")

    # -- the rest of IRawConnection, from the connection underneath --------------------------
    async def close(self) -> None:
        if self._refused:
            self._refused = False
            with trio.move_on_after(DRAIN_S), contextlib.suppress(Exception):
                while await self._conn.read(4096):
                    pass
        await self._conn.close()

    def get_remote_address(self) -> tuple[str, int] | None:
        return self._conn.get_remote_address()

    def get_transport_addresses(self) -> list[Any]:
        return self._conn.get_transport_addresses()

    def get_connection_type(self) -> Any:
        return self._conn.get_connection_type()

    def __getattr__(self, name: str) -> Any:
        # Anything else a transport added (e.g. get_local_address): the connection underneath.
        return getattr(self._conn, name)


def protect(conn: Any, psk_hex: str) -> Any:
    """What the swarm calls (as ``new_protected_conn``) on every raw connection it makes or
    accepts while it holds a key. Idempotent: the hole-punch path of 0.8.1
    (``dial_addr_as_responder``) wraps once itself and again in ``upgrade_inbound_raw_conn``."""
    if isinstance(conn, PskConn):
        return conn
    if isinstance(conn, IMuxedConn):
        # QUIC brings its own encryption and multiplexing; there is no raw byte stream to wrap
        # (go-libp2p likewise refuses QUIC in a private network).
        raise RawConnError("private mesh: QUIC connections cannot carry the PSK layer")
    return PskConn(conn, bytes.fromhex(psk_hex))
