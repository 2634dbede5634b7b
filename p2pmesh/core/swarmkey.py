"""Swarm keys: the libp2p private-network pre-shared key (PSK v1) file, pure.

The file is the one go-libp2p, js-libp2p and IPFS (``swarm.key``) read: two header lines, then
the 32-byte key in the encoding the second line names::

    /key/swarm/psk/1.0.0/
    /base16/
    <64 hex digits>

``/base16/``, ``/base32/``, ``/base64/`` (RFC 4648 alphabets, ``=`` padding) and ``/bin/``
(the 32 raw bytes) are accepted; lines may end in ``\\n`` or ``\\r\\n``. Anything else is
refused with a one-line reason that never quotes key material (PROTOCOL.md §10).

Also here, because both need only the Salsa20 core and must agree byte for byte everywhere:
the HSalsa20 step that turns (PSK, 24-byte nonce) into the XSalsa20 stream key, and the key's
fingerprint, the one go-libp2p's ``pnet`` computes (safe to show and compare; it is not the key).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import struct

from p2pmesh.errors import DecodeError

HEADER = b"/key/swarm/psk/1.0.0/"
ENCODINGS = (b"/base16/", b"/base32/", b"/base64/", b"/bin/")
KEY_BYTES = 32
# A base64 key with CRLF line ends is under 80 bytes; anything far larger is not a key file.
MAX_FILE_BYTES = 1024


class SwarmKeyError(DecodeError):
    code = "swarm_key"


def parse_swarm_key(data: bytes) -> bytes:
    """The 32-byte key in a PSK v1 file's bytes; ``SwarmKeyError`` (one line) otherwise."""
    if not isinstance(data, bytes | bytearray):
        raise SwarmKeyError("not bytes")
    data = bytes(data)
    if not data:
        raise SwarmKeyError("the file is empty")
    if len(data) > MAX_FILE_BYTES:
        raise SwarmKeyError(f"the file is over {MAX_FILE_BYTES} bytes: not a swarm key")
    header, rest = _line(data)
    if header != HEADER:
        raise SwarmKeyError(f"not a swarm key: the first line must be {HEADER.decode()}")
    if rest is None:
        raise SwarmKeyError("no encoding line after the header")
    encoding, body = _line(rest)
    if encoding not in ENCODINGS:
        names = ", ".join(e.decode() for e in ENCODINGS)
        raise SwarmKeyError(f"unknown encoding {_show(encoding)}: must be one of {names}")
    # A raw key may be any 32 bytes, whitespace included; a text one is never only blanks.
    if not body or (encoding != b"/bin/" and not body.strip(b" \t\r\n")):
        raise SwarmKeyError("no key after the encoding line")
    key = _bin_body(body) if encoding == b"/bin/" else _text_body(encoding, body)
    if len(key) != KEY_BYTES:
        raise SwarmKeyError(f"the key is {len(key)} bytes; a swarm key has {KEY_BYTES}")
    return key


def format_swarm_key(key: bytes) -> bytes:
    """The base16 file for ``key`` (what ``p2pmesh swarm-key new`` writes)."""
    if len(key) != KEY_BYTES:
        raise ValueError(f"a swarm key has {KEY_BYTES} bytes")
    return HEADER + b"\n/base16/\n" + key.hex().encode() + b"\n"


def fingerprint(key: bytes) -> str:
    """go-libp2p's PSK fingerprint: SHAKE-128 (16 bytes) of the first Salsa20 block keyed by
    the PSK with nonce ``finprint``. One-way, so it can be printed and compared."""
    if len(key) != KEY_BYTES:
        raise ValueError(f"a swarm key has {KEY_BYTES} bytes")
    return hashlib.shake_128(salsa20_block(key, b"finprint", 0)).hexdigest(16)


def _line(data: bytes) -> tuple[bytes, bytes | None]:
    """The first line without its ``\\n`` / ``\\r\\n``, and the rest (None: no newline)."""
    cut = data.find(b"\n")
    if cut < 0:
        return data.rstrip(b"\r"), None
    return data[:cut].rstrip(b"\r"), data[cut + 1 :]


def _show(token: bytes) -> str:
    """An encoding name for an error message: short and printable, or not shown at all."""
    if len(token) <= 24 and all(0x21 <= c < 0x7F for c in token):
        return repr(token.decode())
    return "(not shown)"


def _bin_body(body: bytes) -> bytes:
    # The raw key may itself contain any byte; only one trailing line end is tolerated.
    if len(body) == KEY_BYTES + 1 and body.endswith(b"\n"):
        return body[:KEY_BYTES]
    if len(body) == KEY_BYTES + 2 and body.endswith(b"\r\n"):
        return body[:KEY_BYTES]
    return body


def _text_body(encoding: bytes, body: bytes) -> bytes:
    try:
        text = body.decode("ascii")
    except UnicodeDecodeError:
        raise SwarmKeyError(f"the key is not {encoding.decode().strip('/')} text") from None
    # go-libp2p's base32/base64 readers skip line breaks inside the key; base16 does not.
    text = text.strip(" \t\r\n")
    if encoding == b"/base16/":
        if len(text) != 2 * KEY_BYTES:
            raise SwarmKeyError(
                f"the key is {len(text)} hex digits; a swarm key has {2 * KEY_BYTES}"
            )
        try:
            return bytes.fromhex(text)
        except ValueError:
            raise SwarmKeyError("the key is not hexadecimal (0-9, a-f)") from None
    text = text.replace("\r", "").replace("\n", "")
    try:
        if encoding == b"/base64/":
            return base64.b64decode(text, validate=True)
        return base64.b32decode(text + "=" * (-len(text) % 8))
    except (binascii.Error, ValueError):
        raise SwarmKeyError(f"the key is not valid {encoding.decode().strip('/')}") from None


# -- the Salsa20 core (D. J. Bernstein), enough for one block and for HSalsa20 ----------------

_SIGMA = struct.unpack("<4I", b"expand 32-byte k")
_M = 0xFFFFFFFF


def _rotl(v: int, n: int) -> int:
    return ((v << n) | (v >> (32 - n))) & _M


def _rounds(x: list[int]) -> list[int]:
    x = list(x)

    def qr(a: int, b: int, c: int, d: int) -> None:
        x[b] ^= _rotl((x[a] + x[d]) & _M, 7)
        x[c] ^= _rotl((x[b] + x[a]) & _M, 9)
        x[d] ^= _rotl((x[c] + x[b]) & _M, 13)
        x[a] ^= _rotl((x[d] + x[c]) & _M, 18)

    for _ in range(10):  # 20 rounds: 10 column rounds, each followed by a row round
        qr(0, 4, 8, 12)
        qr(5, 9, 13, 1)
        qr(10, 14, 2, 6)
        qr(15, 3, 7, 11)
        qr(0, 1, 2, 3)
        qr(5, 6, 7, 4)
        qr(10, 11, 8, 9)
        qr(15, 12, 13, 14)
    return x


def _state(key: bytes, middle: tuple[int, ...]) -> list[int]:
    k = struct.unpack("<8I", key)
    s0, s1, s2, s3 = _SIGMA
    return [s0, *k[:4], s1, *middle, s2, *k[4:], s3]


def salsa20_block(key: bytes, nonce: bytes, counter: int) -> bytes:
    """One 64-byte Salsa20/20 keystream block (8-byte nonce, 64-bit block counter)."""
    if len(key) != 32 or len(nonce) != 8:
        raise ValueError("Salsa20 takes a 32-byte key and an 8-byte nonce")
    middle = (*struct.unpack("<2I", nonce), counter & _M, (counter >> 32) & _M)
    start = _state(key, middle)
    out = _rounds(start)
    return struct.pack("<16I", *((a + b) & _M for a, b in zip(out, start, strict=True)))


def hsalsa20(key: bytes, nonce16: bytes) -> bytes:
    """HSalsa20: the 32-byte subkey XSalsa20 runs Salsa20 with (for nonce bytes 0..15)."""
    if len(key) != 32 or len(nonce16) != 16:
        raise ValueError("HSalsa20 takes a 32-byte key and a 16-byte nonce")
    x = _rounds(_state(key, struct.unpack("<4I", nonce16)))
    return struct.pack("<8I", x[0], x[5], x[10], x[15], x[6], x[7], x[8], x[9])
