"""Recompute the ledger test vectors and compare them byte for byte (PROTOCOL.md §9).

tests/vectors/ledger_vectors.json is what another implementation tests its blocks and fraud
proofs against. It is pinned three ways: every envelope is rebuilt here by hand (msgpack with
sorted keys, the domain-separated signing input, nacl verification) rather than only through our
own helpers; scripts/make_ledger_vectors.py reproduces the file exactly; and the spec embeds the
bytes.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import msgpack
import nacl.signing
import pytest

from p2pmesh.core.ledger.accounts import compute
from p2pmesh.core.ledger.block import GENESIS, parse_block
from p2pmesh.core.ledger.chain import Ledger, open_fraud
from p2pmesh.errors import DecodeError, ValidationError

ROOT = Path(__file__).resolve().parents[2]
V = json.loads((ROOT / "tests/vectors/ledger_vectors.json").read_text(encoding="utf-8"))
KEYS = V["keys"]
BLOCKS = ("proposal", "agreement", "twin")
_B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


def _b58(data: bytes) -> str:
    n = int.from_bytes(data, "big")
    out = ""
    while n:
        n, r = divmod(n, 58)
        out = _B58[r] + out
    return "1" * (len(data) - len(data.lstrip(b"\x00"))) + out


def _canon(value: Any) -> Any:
    """Sorted map keys (by UTF-8 bytes), recursively: with msgpack's shortest forms, that is §2."""
    if isinstance(value, dict):
        return {k: _canon(value[k]) for k in sorted(value, key=lambda k: k.encode())}
    if isinstance(value, list):
        return [_canon(v) for v in value]
    return value


def _pack(value: Any) -> bytes:
    data: bytes = msgpack.packb(_canon(value), use_bin_type=True)
    return data


def _raw(name: str) -> bytes:
    return bytes.fromhex(V[name]["envelope"])


def _generator() -> ModuleType:
    path = ROOT / "scripts/make_ledger_vectors.py"
    spec = importlib.util.spec_from_file_location("make_ledger_vectors", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _wire_body(name: str) -> dict[str, Any]:
    """The body as it is on the wire (the fraud body's blocks as bytes, not hex)."""
    body = dict(V[name]["body"])
    if name == "fraud":
        body = {
            "author": body["author"],
            "seq": body["seq"],
            "a": bytes.fromhex(body["a_hex"]),
            "b": bytes.fromhex(body["b_hex"]),
        }
    return body


@pytest.mark.parametrize("role", ["payer", "payee"])
def test_keys(role: str) -> None:
    k = KEYS[role]
    pk = bytes(nacl.signing.SigningKey(bytes.fromhex(k["seed"])).verify_key)
    assert pk.hex() == k["public_key"]
    assert _b58(b"\x00\x24\x08\x01\x12\x20" + pk) == k["peer_id"]


def test_genesis_is_the_zero_hash() -> None:
    # GENESIS is a fixed marker, 64 zero hex digits: not the hash of any bytes.
    assert V["genesis"] == GENESIS == "sha256:" + "0" * 64


@pytest.mark.parametrize("name", [*BLOCKS, "fraud"])
def test_envelope_by_hand(name: str) -> None:
    v = V[name]
    purpose = "fraud" if name == "fraud" else "block"
    signer = KEYS[v["signer"]]
    env = msgpack.unpackb(_raw(name), raw=False)
    assert list(env) == ["body", "pk", "sig", "t", "v"]
    assert env["t"] == v["purpose"] == purpose and env["v"] == 1
    assert env["pk"].hex() == signer["public_key"]
    body = _wire_body(name)
    assert env["body"] == body
    unsigned = {"body": body, "pk": env["pk"], "t": purpose, "v": 1}
    signed = _pack(unsigned)
    assert signed.hex() == v["signed_bytes"]
    message = b"p2pmesh/v1/" + purpose.encode() + b"\x00" + signed
    nacl.signing.VerifyKey(env["pk"]).verify(message, bytes.fromhex(v["signature"]))
    # Ed25519 is deterministic: the seed signs the same bytes to the same signature.
    key = nacl.signing.SigningKey(bytes.fromhex(signer["seed"]))
    assert key.sign(message).signature.hex() == v["signature"]
    assert _pack({**unsigned, "sig": bytes.fromhex(v["signature"])}) == _raw(name)
    assert v["hash"] == "sha256:" + hashlib.sha256(_raw(name)).hexdigest()


def test_proposal_fields() -> None:
    b = V["proposal"]["body"]
    payer, payee = KEYS["payer"]["peer_id"], KEYS["payee"]["peer_id"]
    assert b["seq"] == 1 and b["prev"] == GENESIS and b["kind"] == "proposal"
    assert b["link"] == {"author": payee, "seq": 0, "hash": ""}
    assert b["tx"]["payer"] == payer and b["tx"]["payee"] == payee
    blk = parse_block(_raw("proposal"))
    assert (blk.author, blk.seq, blk.prev, blk.kind, blk.ts) == (
        payer,
        1,
        GENESIS,
        "proposal",
        b["ts"],
    )
    assert blk.hash == V["proposal"]["hash"]
    assert blk.tx.to_body() == b["tx"]


def test_agreement_links_to_the_proposal_with_the_same_tx() -> None:
    b = V["agreement"]["body"]
    prop = V["proposal"]
    assert b["seq"] == 1 and b["prev"] == GENESIS and b["kind"] == "agreement"
    assert b["link"] == {"author": KEYS["payer"]["peer_id"], "seq": 1, "hash": prop["hash"]}
    assert b["tx"] == prop["body"]["tx"]
    blk = parse_block(_raw("agreement"))
    assert blk.author == KEYS["payee"]["peer_id"] and blk.link_hash == prop["hash"]


def test_the_payment_moves_the_amount_whatever_the_order() -> None:
    for order in (("proposal", "agreement"), ("agreement", "proposal")):
        led = Ledger("vectors")
        for name in order:
            assert led.ingest(_raw(name)).status == "added"
        books = compute(led)
        assert books.get(KEYS["payer"]["peer_id"]).balance == V["balances"]["payer"]
        assert books.get(KEYS["payee"]["peer_id"]).balance == V["balances"]["payee"]
        assert books.total() == 0
        assert led.verify_all()["ok"]


def test_the_twin_is_a_fork_and_the_fraud_proof_checks() -> None:
    led = Ledger("vectors")
    led.ingest(_raw("proposal"))
    r = led.ingest(_raw("twin"))
    assert r.status == "fork" and r.fraud is not None
    proof = open_fraud(_raw("fraud"))
    assert proof == r.fraud
    body = V["fraud"]["body"]
    assert (
        (proof.author, proof.seq) == (KEYS["payer"]["peer_id"], 1) == (body["author"], body["seq"])
    )
    assert {proof.a, proof.b} == {_raw("proposal"), _raw("twin")} and proof.a < proof.b
    assert body["a_hex"] == proof.a.hex() and body["b_hex"] == proof.b.hex()


@pytest.mark.parametrize("name", [*BLOCKS, "fraud"])
def test_any_changed_byte_is_refused(name: str) -> None:
    parse = open_fraud if name == "fraud" else parse_block
    raw = _raw(name)
    step = 1 if name != "fraud" else 5
    for i in range(0, len(raw), step):
        with pytest.raises((DecodeError, ValidationError)):
            parse(raw[:i] + bytes([raw[i] ^ 0x01]) + raw[i + 1 :])


def test_generator_reproduces_the_file() -> None:
    gen = _generator()
    text = (ROOT / "tests/vectors/ledger_vectors.json").read_text(encoding="utf-8")
    assert gen.dumps(gen.build_vectors()) == text


def _section_9() -> str:
    doc = (ROOT / "docs/PROTOCOL.md").read_text(encoding="utf-8")
    start = doc.index("\n## 9.")
    end = doc.find("\n## ", start + 1)
    return doc[start:] if end < 0 else doc[start:end]


def test_spec_embeds_the_vectors() -> None:
    # Hex is wrapped in the spec: compare with all whitespace removed.
    flat = re.sub(r"\s", "", _section_9())
    for name in ("proposal", "agreement", "fraud"):
        assert V[name]["envelope"] in flat, f"PROTOCOL.md §9 does not show the current {name}"
    for name in ("proposal", "agreement"):
        assert V[name]["signature"] in flat and V[name]["hash"] in flat


def test_spec_embeds_the_generator_text() -> None:
    gen = _generator()
    assert gen.markdown(gen.build_vectors()) in _section_9()
