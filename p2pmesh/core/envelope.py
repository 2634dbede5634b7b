"""Signed envelopes: the one framing for every signed object (docs/PROTOCOL.md §3).

An envelope is the canonical msgpack map ``{"t": type, "v": 1, "pk": 32-byte key, "body": map,
"sig": 64 bytes}``. The signature covers ``signing_input(type, encode({"t", "v", "pk", "body"}))``,
so the type is bound twice: in the domain tag and inside the signed bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from p2pmesh.core import codec
from p2pmesh.core.crypto import PURPOSES, Signer, verify
from p2pmesh.core.ids import peer_id_from_public_key
from p2pmesh.errors import DecodeError, ValidationError

ENVELOPE_VERSION = 1
_FIELDS = frozenset({"t", "v", "pk", "body", "sig"})


@dataclass(frozen=True, slots=True)
class Opened:
    """A verified envelope: who signed it, what type, the body, and the exact signed bytes."""

    type: str
    signer: str
    public_key: bytes
    body: dict[str, Any]
    raw: bytes


def seal(signer: Signer, type_: str, body: dict[str, Any]) -> bytes:
    unsigned = {"t": type_, "v": ENVELOPE_VERSION, "pk": signer.public_key, "body": body}
    signed = codec.encode(unsigned)
    sig = signer.sign(type_, signed)
    # The inverse of ``_unsigned_bytes``: the sig entry goes in before the t and v entries,
    # which spares encoding the whole message a second time.
    cut = len(signed) - len(_TAIL[type_])
    data = b"\x85" + signed[1:cut] + _SIG_ENTRY + sig + signed[cut:]
    if len(data) > codec.MAX_MESSAGE_BYTES:
        raise DecodeError(f"encoded value is {len(data)} bytes, limit {codec.MAX_MESSAGE_BYTES}")
    return data


def open_envelope(
    data: bytes, expected_type: str, *, max_bytes: int = codec.MAX_MESSAGE_BYTES
) -> Opened:
    """Decode and verify; raises ``DecodeError`` or ``ValidationError`` on anything else."""
    value = codec.decode(data, max_bytes=max_bytes)
    if not isinstance(value, dict) or set(value) != _FIELDS:
        raise DecodeError("envelope must be a map with exactly t, v, pk, body, sig")
    type_, version, pk, body, sig = (value[k] for k in ("t", "v", "pk", "body", "sig"))
    if type_ != expected_type or type_ not in PURPOSES:
        raise ValidationError(f"expected a {expected_type!r} envelope, got {type_!r}")
    if type(version) is not int or version != ENVELOPE_VERSION:
        raise ValidationError(f"unsupported envelope version {version!r}")
    if not isinstance(pk, bytes) or len(pk) != 32:
        raise ValidationError("pk must be 32 bytes")
    if not isinstance(sig, bytes) or len(sig) != 64:
        raise ValidationError("sig must be 64 bytes")
    if not isinstance(body, dict):
        raise ValidationError("body must be a map")
    if not verify(pk, type_, _unsigned_bytes(data, type_), sig):
        raise ValidationError("bad signature")
    return Opened(type_, peer_id_from_public_key(pk), pk, body, bytes(data))


# The canonical envelope is the map body, pk, sig, t, v in this order (§2), and ``decode`` has
# just proven ``data`` canonical: the signed map {body, pk, t, v} is ``data`` with the sig entry
# (the text "sig" and 64 bytes of bin 8: 70 bytes) cut out and a 4-entry map header. Cutting
# saves encoding the whole unsigned map again for every message.
_SIG_ENTRY = b"\xa3sig\xc4\x40"
_TAIL = {t: codec.encode("t") + codec.encode(t) + codec.encode("v") + b"\x01" for t in PURPOSES}


def _unsigned_bytes(data: bytes, type_: str) -> bytes:
    cut = len(data) - len(_TAIL[type_]) - 70
    if data[0] != 0x85 or data[cut : cut + 6] != _SIG_ENTRY:
        raise DecodeError("envelope is not in canonical form")
    return b"\x84" + data[1:cut] + data[cut + 70 :]
