"""Recompute every protocol test vector from its inputs and compare byte for byte.

tests/vectors/protocol_vectors.json is what a third-party implementation tests against
(docs/PROTOCOL.md, "Test vectors"). These tests pin it three ways: each vector is recomputed
from the JSON's inputs (partly by hand, not only through our own helpers), the generator script
reproduces the file exactly, and the spec embeds the current hex.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import nacl.signing
import pytest
import varint
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.peer.id import ID

from p2pmesh import errors
from p2pmesh.core import codec, crypto, ids
from p2pmesh.core.capability import Capabilities, Gpu, build_record, check_record, dht_key
from p2pmesh.core.crypto import Ed25519Signer, signing_input

ROOT = Path(__file__).resolve().parents[2]
VECTORS = json.loads((ROOT / "tests/vectors/protocol_vectors.json").read_text(encoding="utf-8"))


def _typed(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"$bin"}:
            return bytes.fromhex(value["$bin"])
        return {k: _typed(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_typed(v) for v in value]
    return value


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_vectors", ROOT / "scripts/make_vectors.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("v", VECTORS["identity"], ids=lambda v: v["seed"][:8])
def test_identity(v: dict[str, Any]) -> None:
    seed = bytes.fromhex(v["seed"])
    pk = bytes(nacl.signing.SigningKey(seed).verify_key)
    assert pk.hex() == v["public_key"]
    # By hand, per PROTOCOL.md §1: protobuf PublicKey, identity multihash, base58btc.
    protobuf = bytes([0x08, 0x01, 0x12, 0x20]) + pk
    multihash = bytes([0x00, len(protobuf)]) + protobuf
    assert protobuf.hex() == v["protobuf_public_key"]
    assert multihash.hex() == v["multihash"]
    assert ids.b58encode(multihash) == v["peer_id"]
    assert Ed25519Signer(seed).peer_id == v["peer_id"]
    assert ID.from_pubkey(create_new_key_pair(seed).public_key).pretty() == v["peer_id"]


def test_identity_rfc8032_public_key() -> None:
    # RFC 8032 §7.1 TEST 1 publishes this key pair.
    v = VECTORS["identity"][0]
    assert v["seed"].startswith("9d61b19d")
    assert v["public_key"] == "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"


def test_canonical_encoding() -> None:
    value = _typed(VECTORS["canonical"]["value"])
    encoded = bytes.fromhex(VECTORS["canonical"]["encoded"])
    assert codec.encode(value) == encoded
    assert codec.decode(encoded) == value
    # Keys appear in UTF-8 byte order, whatever order the JSON lists them in.
    assert list(codec.decode(encoded)) == sorted(value, key=lambda k: k.encode())


@pytest.mark.parametrize("v", VECTORS["non_canonical"], ids=lambda v: v["name"])
def test_non_canonical_refused(v: dict[str, Any]) -> None:
    with pytest.raises(errors.DecodeError):
        codec.decode(bytes.fromhex(v["bytes"]))


def test_signature() -> None:
    v = VECTORS["signature"]
    seed, payload = bytes.fromhex(v["seed"]), bytes.fromhex(v["payload"])
    expected_input = b"p2pmesh/v1/" + v["purpose"].encode() + b"\x00" + payload
    assert bytes.fromhex(v["signing_input"]) == expected_input
    assert signing_input(v["purpose"], payload) == expected_input
    # Plain Ed25519 (RFC 8032) over the signing input: deterministic, so byte-exact.
    assert nacl.signing.SigningKey(seed).sign(expected_input).signature.hex() == v["signature"]
    assert Ed25519Signer(seed).sign(v["purpose"], payload).hex() == v["signature"]


def _caps(body: dict[str, Any]) -> Capabilities:
    return Capabilities(
        addrs=tuple(body["addrs"]),
        cpus=body["cpus"],
        cpus_physical=body["cpus_physical"],
        ram_mb=body["ram_mb"],
        disk_free_mb=body["disk_free_mb"],
        load_milli=body["load_milli"],
        gpus=tuple(Gpu(**g) for g in body["gpus"]),
        executors=tuple(body["executors"]),
        price=body["price"],
        max_jobs=body["max_jobs"],
        work=body["work"],
        allow_images=tuple(body["allow_images"]),
        agent=body["agent"],
    )


def test_capability_record() -> None:
    v = VECTORS["capability_record"]
    seed = bytes.fromhex(v["seed"])
    body = _typed(v["body"])
    pk = bytes(nacl.signing.SigningKey(seed).verify_key)
    assert pk.hex() == v["public_key"]
    assert body["peer_id"] == v["peer_id"] == ids.peer_id_from_public_key(pk)
    assert (body["seq"], body["issued_at"]) == (v["seq"], v["now"])
    assert body["expires_at"] == v["now"] + v["ttl_s"]
    # By hand: the signed bytes are the canonical envelope without "sig".
    unsigned = {"t": "capability", "v": 1, "pk": pk, "body": body}
    signed = codec.encode(unsigned)
    assert signed.hex() == v["signed_bytes"]
    sig = nacl.signing.SigningKey(seed).sign(b"p2pmesh/v1/capability\x00" + signed).signature
    assert sig.hex() == v["signature"]
    assert codec.encode({**unsigned, "sig": sig}).hex() == v["envelope"]
    # Through the core: the same bytes, and a receiver accepts them at ``now``.
    rec = build_record(
        Ed25519Signer(seed), _caps(body), seq=v["seq"], now=v["now"], ttl_s=v["ttl_s"]
    )
    assert rec.raw.hex() == v["envelope"]
    assert check_record(bytes.fromhex(v["envelope"]), now=v["now"], known_seq=None) == rec
    assert dht_key(v["peer_id"]) == v["dht_key"] == f"/p2pmesh-cap/{v['peer_id']}"


@pytest.mark.parametrize("v", VECTORS["refused_records"], ids=lambda v: v["name"])
def test_refused_record(v: dict[str, Any]) -> None:
    data = bytes.fromhex(v["record"])
    good = bytes.fromhex(VECTORS["capability_record"]["envelope"])
    if "tampered_offset" in v:
        i = v["tampered_offset"]
        assert data == good[:i] + bytes([good[i] ^ 0x01]) + good[i + 1 :]
    else:
        assert data == good
    error = getattr(errors, v["error"])
    with pytest.raises(error) as info:
        check_record(data, now=v["now"], known_seq=v["known_seq"])
    assert str(info.value) == v["reason"]


def test_generator_reproduces_the_file() -> None:
    gen = _generator()
    text = (ROOT / "tests/vectors/protocol_vectors.json").read_text(encoding="utf-8")
    assert gen.dumps(gen.build_vectors()) == text


def _hex_strings(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [h for v in value.values() for h in _hex_strings(v)]
    if isinstance(value, list):
        return [h for v in value for h in _hex_strings(v)]
    if isinstance(value, str) and len(value) >= 8 and re.fullmatch(r"[0-9a-f]+", value):
        return [value]
    return []


def test_protocol_doc_embeds_the_vectors() -> None:
    doc = (ROOT / "docs/PROTOCOL.md").read_text(encoding="utf-8")
    flat = re.sub(r"\s+", "", doc)
    # The generator's markdown is what the spec's "Test vectors" section holds, verbatim.
    assert _generator().markdown(VECTORS) in doc
    # Tampered records are described as "the V.4 envelope with byte N XOR 0x01" (checked in
    # test_refused_record), so they are not embedded whole.
    embedded = {k: v for k, v in VECTORS.items() if k != "refused_records"}
    missing = [h[:16] for h in _hex_strings(embedded) if h not in flat]
    assert not missing, f"docs/PROTOCOL.md lacks vectors starting {missing}"


@pytest.mark.parametrize("case", VECTORS["ed25519"]["cases"], ids=lambda c: c["name"][:40])
def test_ed25519_acceptance_rule(case: dict[str, Any]) -> None:
    ed = VECTORS["ed25519"]
    got = crypto.verify(
        bytes.fromhex(case["public_key"]),
        ed["purpose"],
        bytes.fromhex(ed["payload"]),
        bytes.fromhex(case["signature"]),
    )
    assert got is case["accepted"]


def test_kad_messages_are_what_py_libp2p_sends() -> None:
    from libp2p.kad_dht.pb.kademlia_pb2 import Message
    from libp2p.records.record import make_signed_put_record
    from libp2p.records.utils import verify_record

    kad = VECTORS["kad"]
    key = kad["key"].encode()
    value = bytes.fromhex(VECTORS["capability_record"]["envelope"])
    private = create_new_key_pair(bytes.fromhex(VECTORS["capability_record"]["seed"])).private_key
    record = make_signed_put_record(key, value, private)
    assert record.SerializeToString().hex() == kad["record"]
    assert verify_record(record.signature, record.author, key, value)

    def frame(message: Message) -> str:
        data = message.SerializeToString()
        return (varint.encode(len(data)) + data).hex()

    put = Message(type=Message.MessageType.PUT_VALUE, key=key)
    put.record.CopyFrom(record)
    assert frame(put) == kad["put_value_frame"]
    assert frame(Message(type=Message.MessageType.GET_VALUE, key=key)) == kad["get_value_frame"]
    assert frame(Message(type=Message.MessageType.FIND_NODE, key=key)) == kad["find_node_frame"]
    assert hashlib.sha256(key).hexdigest() == kad["keyspace_point"]
