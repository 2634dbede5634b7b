#!/usr/bin/env python3
"""Generate tests/vectors/protocol_vectors.json: byte-exact test vectors for docs/PROTOCOL.md.

Usage (from the repository root, installed or not)::

    python scripts/make_vectors.py             # (re)write the JSON file
    python scripts/make_vectors.py --check     # exit 1 if the file is not what the code makes
    python scripts/make_vectors.py --markdown  # print the "Test vectors" section for PROTOCOL.md

Everything is derived from fixed seeds and a fixed ``now`` (Ed25519 signatures are
deterministic), so running it twice gives the same bytes; tests/unit/test_vectors.py checks that
the committed file matches both this script and an independent recomputation.

In the JSON, a byte string inside a sample *value* is written ``{"$bin": "<hex>"}`` so that bytes
and text stay distinct; every other ``*_hex``/hex field is plain lowercase hex.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import textwrap
from pathlib import Path
from typing import Any

# Run from a bare checkout too, like scripts/gpu_check.py.
_ROOT = Path(__file__).resolve().parent.parent
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

import nacl.signing  # noqa: E402

from p2pmesh.core import codec  # noqa: E402
from p2pmesh.core.capability import (  # noqa: E402
    Capabilities,
    Gpu,
    build_record,
    check_record,
    dht_key,
)
from p2pmesh.core.crypto import Ed25519Signer, signing_input  # noqa: E402
from p2pmesh.errors import MeshError  # noqa: E402

VECTORS_PATH = _ROOT / "tests" / "vectors" / "protocol_vectors.json"

# RFC 8032 §7.1 TEST 1 secret key: its public key is published there, so an implementer can
# cross-check our key derivation against an outside source.
SEED_RFC8032 = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
SEED_ZERO = bytes(32)
SEED_COUNT = bytes(range(32))
NOW = 1_700_000_000  # 2023-11-14T22:13:20Z
RECORD_SEQ = NOW * 1000  # what a node publishing at NOW would pick (millisecond floor)
RECORD_TTL_S = 300

SAMPLE_MAP: dict[str, Any] = {
    "zeta": None,
    "a": True,
    "B": False,
    "aa": [0, 127, 128, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**63 - 1, 2**64 - 1],
    "neg": [-1, -32, -33, -128, -129, -32768, -32769, -(2**31), -(2**31) - 1, -(2**63)],
    "bytes": [b"", b"\x00\xff", bytes(range(40))],
    "text": ["", "a", "x" * 31, "y" * 32, "é€𝄞"],
    "é": {"nested": {"list": [[], {}]}},
    "": "empty key",
}

# Spellings a decoder must refuse, each a one-line reason for the spec's table.
NON_CANONICAL: list[tuple[str, bytes]] = [
    ("map keys out of order", b"\x82\xa1b\x01\xa1a\x02"),
    ("duplicate map key", b"\x82\xa1a\x01\xa1a\x02"),
    ("non-minimal integer (uint8 for 5)", b"\xcc\x05"),
    ("non-minimal integer (int16 for -1)", b"\xd1\xff\xff"),
    ("non-minimal string header (str8 for 1 byte)", b"\xd9\x01a"),
    ("non-minimal array header (array16 for 1 item)", b"\xdc\x00\x01\x01"),
    ("float64", b"\xcb\x3f\xf8\x00\x00\x00\x00\x00\x00"),
    ("extension type", b"\xd4\x01\x00"),
    ("integer map key", b"\x81\x01\x01"),
    ("bytes map key", b"\x81\xc4\x01a\x01"),
    ("invalid UTF-8 in a string", b"\xa2\xff\xfe"),
    ("trailing bytes", b"\x01\x02"),
    ("nesting deeper than 8", b"\x91" * 9 + b"\x00"),
]

SIGNATURE_PAYLOAD = codec.encode({"hello": "world", "n": 1})
ED25519_PAYLOAD = codec.encode({"edge": "cases"})

RECORD_CAPS = Capabilities(
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


def to_typed_json(value: Any) -> Any:
    """A codec value as JSON, with bytes as ``{"$bin": hex}``."""
    if isinstance(value, bytes):
        return {"$bin": value.hex()}
    if isinstance(value, dict):
        return {k: to_typed_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_typed_json(v) for v in value]
    return value


def from_typed_json(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"$bin"}:
            return bytes.fromhex(value["$bin"])
        return {k: from_typed_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [from_typed_json(v) for v in value]
    return value


def _identity(seed: bytes) -> dict[str, Any]:
    signer = Ed25519Signer(seed)
    protobuf = b"\x08\x01\x12\x20" + signer.public_key
    return {
        "seed": seed.hex(),
        "public_key": signer.public_key.hex(),
        "protobuf_public_key": protobuf.hex(),
        "multihash": (b"\x00\x24" + protobuf).hex(),
        "peer_id": signer.peer_id,
    }


def _refusal(name: str, data: bytes, now: int, known_seq: int | None, **extra: Any) -> dict:
    try:
        check_record(data, now=now, known_seq=known_seq)
    except MeshError as exc:
        error, reason = type(exc).__name__, str(exc)
    else:  # pragma: no cover - the generator itself must not emit a vector that passes
        raise AssertionError(f"refusal vector {name!r} was accepted")
    return {
        "name": name,
        **extra,
        "record": data.hex(),
        "now": now,
        "known_seq": known_seq,
        "error": error,
        "reason": reason,
    }


# --- Ed25519 edge cases (§3.1) ------------------------------------------------------------------
# A few lines of edwards25519 arithmetic (RFC 8032 §5.1), enough to build signatures that only
# an implementation's acceptance rule tells apart. Affine coordinates: slow and plain.
_P = 2**255 - 19
_L = 2**252 + 27742317777372353535851937790883648493
_D = -121665 * pow(121666, _P - 2, _P) % _P
_SQRT_M1 = pow(2, (_P - 1) // 4, _P)
_Point = tuple[int, int]
_IDENTITY: _Point = (0, 1)


def _add(a: _Point, b: _Point) -> _Point:
    (x1, y1), (x2, y2) = a, b
    t = _D * x1 * x2 * y1 * y2 % _P
    x3 = (x1 * y2 + y1 * x2) * pow(1 + t, _P - 2, _P) % _P
    y3 = (y1 * y2 + x1 * x2) * pow(1 - t, _P - 2, _P) % _P
    return x3, y3


def _mul(k: int, point: _Point) -> _Point:
    out = _IDENTITY
    while k:
        if k & 1:
            out = _add(out, point)
        point = _add(point, point)
        k >>= 1
    return out


def _x_of(y: int, sign: int) -> int | None:
    u, v = (y * y - 1) % _P, (_D * y * y + 1) % _P
    x = u * pow(v, 3, _P) * pow(u * pow(v, 7, _P), (_P - 5) // 8, _P) % _P
    if v * x * x % _P == (-u) % _P:
        x = x * _SQRT_M1 % _P
    if v * x * x % _P != u:
        return None
    if x == 0 and sign:
        return None
    return x if x & 1 == sign else _P - x


def _encode_point(point: _Point, *, y_plus_p: bool = False) -> bytes:
    x, y = point
    return ((y + _P if y_plus_p else y) | (x & 1) << 255).to_bytes(32, "little")


_BASE: _Point = (_x_of(4 * pow(5, _P - 2, _P) % _P, 0) or 0, 4 * pow(5, _P - 2, _P) % _P)
_ORDER2: _Point = (0, _P - 1)  # the point of order 2


def _secret_scalar(seed: bytes) -> int:
    h = bytearray(hashlib.sha512(seed).digest()[:32])
    h[0] &= 248
    h[31] &= 127
    h[31] |= 64
    return int.from_bytes(h, "little")


def _challenge(r: bytes, a: bytes, message: bytes) -> int:
    return int.from_bytes(hashlib.sha512(r + a + message).digest(), "little") % _L


def _sign_raw(a_scalar: int, a_bytes: bytes, r_scalar: int, message: bytes) -> bytes:
    r = _encode_point(_mul(r_scalar, _BASE))
    s = (r_scalar + _challenge(r, a_bytes, message) * a_scalar) % _L
    return r + s.to_bytes(32, "little")


def _ed25519_cases() -> list[dict[str, Any]]:
    """(name, public key, signature, accepted?) over a fixed payload, purpose ``capability``."""
    payload = ED25519_PAYLOAD
    message = signing_input("capability", payload)
    signer = Ed25519Signer(SEED_RFC8032)
    a = _secret_scalar(SEED_RFC8032)
    pk = signer.public_key
    good = signer.sign("capability", payload)
    s_plus_l = good[:32] + (int.from_bytes(good[32:], "little") + _L).to_bytes(32, "little")
    identity = _encode_point(_IDENTITY)
    identity_non_canonical = _encode_point(_IDENTITY, y_plus_p=True)
    order2 = _encode_point(_ORDER2)
    # R = identity, S = k·a: the equation [S]B = R + [k]A holds, R is of small order.
    k_id = _challenge(identity, pk, message)
    small_r = identity + (k_id * a % _L).to_bytes(32, "little")
    k_id_nc = _challenge(identity_non_canonical, pk, message)
    small_r_nc = identity_non_canonical + (k_id_nc * a % _L).to_bytes(32, "little")
    # A' = A + T (T of order 2): a mixed-order key, canonical and not of small order. With an
    # even challenge the cofactorless equation holds; with an odd one only the cofactored does.
    mixed = _encode_point(_add(_mul(a, _BASE), _ORDER2))
    sigs: dict[int, bytes] = {}
    for r_scalar in range(1, 200):
        sig = _sign_raw(a, mixed, r_scalar, message)
        sigs.setdefault(_challenge(sig[:32], mixed, message) % 2, sig)
        if len(sigs) == 2:
            break
    # A non-canonical key: y + p for the smallest y > 1 on the curve.
    y = next(y for y in range(2, 19) if _x_of(y, 0) is not None)
    non_canonical_a = _encode_point((_x_of(y, 0) or 0, y), y_plus_p=True)
    cases = [
        ("valid signature (key 1)", pk, good, True),
        ("S replaced by S + L (non-canonical S)", pk, s_plus_l, False),
        (
            "public key and R the identity, S = 0 (small-order A and R)",
            identity,
            identity + bytes(32),
            False,
        ),
        ("public key of order 2, R the identity, S = 0", order2, identity + bytes(32), False),
        ("R the identity, S = k·a: the equation holds, R is of small order", pk, small_r, False),
        ("R the identity in a non-canonical encoding (y + p), S = k·a", pk, small_r_nc, False),
        (
            "mixed-order public key A + T2, even challenge: cofactorless equation holds",
            mixed,
            sigs[0],
            True,
        ),
        (
            "mixed-order public key A + T2, odd challenge: only the cofactored equation holds",
            mixed,
            sigs[1],
            False,
        ),
        ("non-canonical public key (y + p)", non_canonical_a, good, False),
    ]
    out = []
    for name, key, sig, accepted in cases:
        plain, cofactored = _equations(key, sig, message)
        out.append(
            {
                "name": name,
                "public_key": key.hex(),
                "signature": sig.hex(),
                "accepted": accepted,
                # Informative: what the group equation says, and so what a ZIP-215 verifier
                # (any encoding, S < L, cofactored equation) would decide.
                "equation_cofactorless": plain,
                "equation_cofactored": cofactored,
                "zip215_accepts": cofactored and int.from_bytes(sig[32:], "little") < _L,
            }
        )
    return out


def _decode_lenient(data: bytes) -> _Point | None:
    """RFC 8032 decoding, but y taken mod p (as ZIP-215 does)."""
    n = int.from_bytes(data, "little")
    y = (n & ((1 << 255) - 1)) % _P
    x = _x_of(y, n >> 255)
    return None if x is None else (x, y)


def _equations(key: bytes, sig: bytes, message: bytes) -> tuple[bool, bool]:
    a, r = _decode_lenient(key), _decode_lenient(sig[:32])
    if a is None or r is None:
        return False, False
    k = _challenge(sig[:32], key, message)
    left = _mul(int.from_bytes(sig[32:], "little"), _BASE)
    right = _add(r, _mul(k, a))
    minus_right = (_P - right[0] if right[0] else 0, right[1])
    diff = _add(left, minus_right)
    return diff == _IDENTITY, _mul(8, diff) == _IDENTITY


# --- Kad records on /p2pmesh/kad/1.0.0 (§4.3) ---------------------------------------------------
# Protobuf by hand (the libp2p Kad schema), so the vector does not lean on the library it pins.


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _pb_bytes(field: int, data: bytes) -> bytes:
    return _varint(field << 3 | 2) + _varint(len(data)) + data


def _pb_enum(field: int, value: int) -> bytes:
    return b"" if value == 0 else _varint(field << 3) + _varint(value)  # proto3: 0 is omitted


def _kad(envelope: bytes, key: str) -> dict[str, Any]:
    signer = Ed25519Signer(SEED_RFC8032)
    key_bytes = key.encode()
    author = b"\x08\x01\x12\x20" + signer.public_key  # protobuf PublicKey, as in §1
    record_sig = (
        nacl.signing.SigningKey(SEED_RFC8032)
        .sign(b"libp2p-record:" + key_bytes + envelope)
        .signature
    )
    record = (
        _pb_bytes(1, key_bytes)
        + _pb_bytes(2, envelope)
        + _pb_bytes(3, author)
        + _pb_bytes(4, record_sig)
    )
    put = _pb_enum(1, 0) + _pb_bytes(2, key_bytes) + _pb_bytes(3, record)
    get = _pb_enum(1, 1) + _pb_bytes(2, key_bytes)
    find = _pb_enum(1, 4) + _pb_bytes(2, key_bytes)
    return {
        "key": key,
        "key_hex": key_bytes.hex(),
        "keyspace_point": hashlib.sha256(key_bytes).hexdigest(),
        "record_author": author.hex(),
        "record_signature": record_sig.hex(),
        "record": record.hex(),
        "put_value_frame": (_varint(len(put)) + put).hex(),
        "get_value_frame": (_varint(len(get)) + get).hex(),
        "find_node_frame": (_varint(len(find)) + find).hex(),
    }


def build_vectors() -> dict[str, Any]:
    signer = Ed25519Signer(SEED_RFC8032)
    rec = build_record(signer, RECORD_CAPS, seq=RECORD_SEQ, now=NOW, ttl_s=RECORD_TTL_S)
    envelope = codec.decode(rec.raw)
    unsigned = {k: envelope[k] for k in ("body", "pk", "t", "v")}
    signed_bytes = codec.encode(unsigned)

    # Tamper with one byte of the body: the last character of "agent" ("0" -> "1").
    agent = RECORD_CAPS.agent.encode()
    agent_at = rec.raw.index(b"\xa5agent" + bytes([0xA0 | len(agent)]) + agent) + 7
    offset = agent_at + len(agent) - 1
    body_tampered = bytearray(rec.raw)
    body_tampered[offset] ^= 0x01
    # And one byte of the signature (its first byte).
    sig_offset = rec.raw.index(b"\xa3sig\xc4\x40") + 6
    sig_tampered = bytearray(rec.raw)
    sig_tampered[sig_offset] ^= 0x01

    return {
        "about": "p2pmesh protocol test vectors (docs/PROTOCOL.md). Generated by "
        "scripts/make_vectors.py; do not edit by hand.",
        "informative": "free to differ (PROTOCOL.md, Test vectors): about, format, "
        "informative, name, error (exception class names), reason, kad.keyspace_point, and "
        "ed25519 equation_cofactorless, equation_cofactored and zip215_accepts",
        "format": 'hex strings are lowercase; in sample values, bytes are {"$bin": hex}',
        "identity": [_identity(s) for s in (SEED_RFC8032, SEED_ZERO, SEED_COUNT)],
        "canonical": {
            "value": to_typed_json(SAMPLE_MAP),
            "encoded": codec.encode(SAMPLE_MAP).hex(),
        },
        "non_canonical": [{"name": n, "bytes": b.hex()} for n, b in NON_CANONICAL],
        "signature": {
            "seed": SEED_RFC8032.hex(),
            "purpose": "capability",
            "payload": SIGNATURE_PAYLOAD.hex(),
            "signing_input": signing_input("capability", SIGNATURE_PAYLOAD).hex(),
            "signature": signer.sign("capability", SIGNATURE_PAYLOAD).hex(),
        },
        "capability_record": {
            "seed": SEED_RFC8032.hex(),
            "now": NOW,
            "seq": RECORD_SEQ,
            "ttl_s": RECORD_TTL_S,
            "body": to_typed_json(envelope["body"]),
            "peer_id": rec.peer_id,
            "public_key": signer.public_key.hex(),
            "signed_bytes": signed_bytes.hex(),
            "signature": envelope["sig"].hex(),
            "envelope": rec.raw.hex(),
            "dht_key": dht_key(rec.peer_id),
        },
        "refused_records": [
            _refusal(
                "one body byte changed (last character of agent)",
                bytes(body_tampered),
                NOW,
                None,
                tampered_offset=offset,
            ),
            _refusal(
                "one signature byte changed",
                bytes(sig_tampered),
                NOW,
                None,
                tampered_offset=sig_offset,
            ),
            _refusal("checked at its expiry time", rec.raw, NOW + RECORD_TTL_S, None),
            _refusal("checked 121 s before it was issued", rec.raw, NOW - 121, None),
            _refusal("replayed (same seq already accepted)", rec.raw, NOW, RECORD_SEQ),
        ],
        "ed25519": {
            "purpose": "capability",
            "payload": ED25519_PAYLOAD.hex(),
            "cases": _ed25519_cases(),
        },
        "kad": _kad(rec.raw, dht_key(rec.peer_id)),
    }


def dumps(vectors: dict[str, Any]) -> str:
    return json.dumps(vectors, indent=2, ensure_ascii=False) + "\n"


def _wrap(hex_text: str) -> str:
    return "\n".join(textwrap.wrap(hex_text, 64))


def markdown(v: dict[str, Any]) -> str:
    """The "Test vectors" section of docs/PROTOCOL.md, hex wrapped at 64 characters."""
    out = ["### V.1 Identity (§1)", ""]
    for i, ident in enumerate(v["identity"], 1):
        out += [
            f"Key {i}:",
            "",
            "```text",
            f"seed        {ident['seed']}",
            f"public key  {ident['public_key']}",
            f"multihash   {ident['multihash']}",
            f"peer ID     {ident['peer_id']}",
            "```",
            "",
        ]
    can = v["canonical"]
    out += [
        "### V.2 Canonical encoding (§2)",
        "",
        'Value (JSON; bytes written as `{"$bin": hex}`):',
        "",
        "```json",
        json.dumps(can["value"], ensure_ascii=False),
        "```",
        "",
        "Canonical bytes:",
        "",
        "```text",
        _wrap(can["encoded"]),
        "```",
        "",
        "Refused spellings (each must fail to decode):",
        "",
        "| bytes (hex) | why |",
        "|---|---|",
    ]
    out += [f"| `{n['bytes']}` | {n['name']} |" for n in v["non_canonical"]]
    sig = v["signature"]
    out += [
        "",
        "### V.3 Signature with domain separation (§3)",
        "",
        "```text",
        f"seed           {sig['seed']}",
        f"purpose        {sig['purpose']}",
        f"payload        {sig['payload']}",
        f"signing input  {sig['signing_input']}",
        "signature",
        _wrap(sig["signature"]),
        "```",
        "",
    ]
    rec = v["capability_record"]
    out += [
        "### V.4 Capability record (§4)",
        "",
        f"Seed `{rec['seed']}` (key 1), `now` = {rec['now']}, `seq` = {rec['seq']}, "
        f"TTL {rec['ttl_s']} s. Peer ID `{rec['peer_id']}`, DHT key `{rec['dht_key']}`.",
        "",
        "Body (JSON):",
        "",
        "```json",
        json.dumps(rec["body"], ensure_ascii=False),
        "```",
        "",
        "Signed bytes (canonical encoding of the envelope without `sig`; the signing input is",
        "`p2pmesh/v1/capability\\x00` followed by these):",
        "",
        "```text",
        _wrap(rec["signed_bytes"]),
        "```",
        "",
        "Signature:",
        "",
        "```text",
        _wrap(rec["signature"]),
        "```",
        "",
        "Envelope (the record as sent, stored and re-gossiped):",
        "",
        "```text",
        _wrap(rec["envelope"]),
        "```",
        "",
        "### V.5 Refused records (§4)",
        "",
        "| record | checked at `now` | highest seq seen | refusal |",
        "|---|---|---|---|",
    ]
    for r in v["refused_records"]:
        what = r["name"]
        if "tampered_offset" in r:
            what += f": the V.4 envelope with byte {r['tampered_offset']} XOR 0x01"
        else:
            what += ": the V.4 envelope"
        seen = "none" if r["known_seq"] is None else str(r["known_seq"])
        out.append(f"| {what} | {r['now']} | {seen} | {r['error']}: `{r['reason']}` |")
    ed = v["ed25519"]
    out += [
        "",
        "### V.6 Ed25519 acceptance (§3.1)",
        "",
        f"Each case is a public key and a signature over the signing input of purpose "
        f"`{ed['purpose']}` and payload `{ed['payload']}` (the canonical map "
        '`{"edge": "cases"}`). *accept* is the verdict §3.1 requires; the equation columns and '
        "the ZIP-215 verdict are informative (ZIP-215: any encoding of A and R, S < L, the "
        "cofactored equation), to show where the two rules part.",
        "",
        "| case | public key | signature | accept | [S]B = R + [k]A | [8]… holds | ZIP-215 |",
        "|---|---|---|---|---|---|---|",
    ]
    yes = {True: "yes", False: "no"}
    for c in ed["cases"]:
        out.append(
            f"| {c['name']} | `{c['public_key']}` | `{c['signature']}` | "
            f"**{yes[c['accepted']]}** | {yes[c['equation_cofactorless']]} | "
            f"{yes[c['equation_cofactored']]} | {yes[c['zip215_accepts']]} |"
        )
    kad = v["kad"]
    out += [
        "",
        "### V.7 Kad record messages (§4.3)",
        "",
        f"The V.4 record stored under `{kad['key']}` (keyspace point sha256(key) = "
        f"`{kad['keyspace_point']}`). The Kad `Record`, signed by key 1 as py-libp2p signs "
        "it (author = the protobuf public key, signature = Ed25519 over `libp2p-record:` ‖ key ‖ "
        "value):",
        "",
        "```text",
        _wrap(kad["record"]),
        "```",
        "",
        "Frames (unsigned varint length ‖ `Message`), without the optional `senderRecord`: "
        "`PUT_VALUE` with that record, `GET_VALUE` and `FIND_NODE` for the key. "
        "`tests/unit/test_kad_any_key.py` captures the `PUT_VALUE` a real node writes and "
        "compares it with these bytes:",
        "",
        "```text",
        _wrap(kad["put_value_frame"]),
        "",
        _wrap(kad["get_value_frame"]),
        "",
        _wrap(kad["find_node_frame"]),
        "```",
    ]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare, do not write")
    parser.add_argument("--markdown", action="store_true", help="print the PROTOCOL.md section")
    args = parser.parse_args(argv)
    vectors = build_vectors()
    if args.markdown:
        sys.stdout.write(markdown(vectors))
        return 0
    text = dumps(vectors)
    if args.check:
        current = VECTORS_PATH.read_text(encoding="utf-8") if VECTORS_PATH.exists() else ""
        if current != text:
            print(f"{VECTORS_PATH} is out of date: run scripts/make_vectors.py", file=sys.stderr)
            return 1
        return 0
    VECTORS_PATH.parent.mkdir(parents=True, exist_ok=True)
    VECTORS_PATH.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
