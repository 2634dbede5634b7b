"""Ledger blocks (PROTOCOL.md §9.1): one signed, hash-linked entry in one author's chain.

A block is a ``block`` envelope whose body is::

    {"seq": int ≥ 1, "prev": "sha256:…" (GENESIS for seq 1), "kind": "proposal" | "agreement",
     "tx": {"job_id", "payer", "payee", "amount", "accepted_digest", "verdict"},
     "link": {"author": peer ID, "seq": int ≥ 0, "hash": "sha256:…" | ""}, "ts": int}

The author is the envelope's signer. The block's hash is sha256 of its exact envelope bytes, so
any changed byte changes the hash and breaks the next block's ``prev`` (and the signature).
A payment is a *proposal* by the payer (``link`` names the payee, seq 0) and an *agreement* by
the payee whose ``link`` names the proposal (author, seq, hash) and whose ``tx`` is identical.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

from p2pmesh.core import schema
from p2pmesh.core.crypto import Signer
from p2pmesh.core.envelope import open_envelope, seal
from p2pmesh.core.memo import interned
from p2pmesh.errors import ValidationError

GENESIS = "sha256:" + "0" * 64
MAX_BLOCK_BYTES = 2048
KINDS = ("proposal", "agreement")
_HASH = re.compile(r"sha256:[0-9a-f]{64}")
_JOB = re.compile(r"[0-9a-f]{32}")
_U63 = 2**63 - 1
MAX_AMOUNT = 2**31


@dataclass(frozen=True, slots=True)
class Tx:
    job_id: str
    payer: str
    payee: str
    amount: int
    accepted_digest: str
    verdict: str  # sha256 of the verdict envelope that accepted the payee's result

    def to_body(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "payer": self.payer,
            "payee": self.payee,
            "amount": self.amount,
            "accepted_digest": self.accepted_digest,
            "verdict": self.verdict,
        }


@dataclass(frozen=True, slots=True, weakref_slot=True)
class Block:
    author: str
    seq: int
    prev: str
    kind: str
    tx: Tx
    link_author: str
    link_seq: int
    link_hash: str
    ts: int
    raw: bytes
    hash: str


def block_hash(raw: bytes) -> str:
    return "sha256:" + hashlib.sha256(raw).hexdigest()


def build_block(
    signer: Signer,
    *,
    seq: int,
    prev: str,
    kind: str,
    tx: Tx,
    link_author: str,
    link_seq: int,
    link_hash: str,
    ts: int,
) -> Block:
    body = {
        "seq": seq,
        "prev": prev,
        "kind": kind,
        "tx": tx.to_body(),
        "link": {"author": link_author, "seq": link_seq, "hash": link_hash},
        "ts": ts,
    }
    return parse_block(seal(signer, "block", body))


def _hash_field(d: dict[str, Any], key: str, *, empty_ok: bool = False) -> str:
    v = d.get(key)
    if empty_ok and v == "":
        return ""
    if not isinstance(v, str) or not _HASH.fullmatch(v):
        raise ValidationError(f"{key}: must be sha256:<64 hex>")
    return v


@interned
def parse_block(raw: bytes) -> Block:
    """Signature, schema and the rules one block can be checked against on its own."""
    o = open_envelope(raw, "block", max_bytes=MAX_BLOCK_BYTES)
    b = o.body
    schema.exact_keys(b, {"seq", "prev", "kind", "tx", "link", "ts"})
    kind = schema.text(b, "kind", 16)
    if kind not in KINDS:
        raise ValidationError(f"kind: must be one of {', '.join(KINDS)}")
    seq = schema.int_in(b, "seq", 1, _U63)
    prev = _hash_field(b, "prev")
    if seq == 1 and prev != GENESIS:
        raise ValidationError("prev: the first block must link to GENESIS")
    t = schema.mapping(b, "tx")
    schema.exact_keys(t, {"job_id", "payer", "payee", "amount", "accepted_digest", "verdict"})
    job_id = schema.text(t, "job_id", 32, min_len=32)
    if not _JOB.fullmatch(job_id):
        raise ValidationError("tx.job_id: must be 32 lowercase hex")
    tx = Tx(
        job_id=job_id,
        payer=schema.text(t, "payer", 64, min_len=1),
        payee=schema.text(t, "payee", 64, min_len=1),
        amount=schema.int_in(t, "amount", 0, MAX_AMOUNT),
        accepted_digest=_hash_field(t, "accepted_digest"),
        verdict=_hash_field(t, "verdict"),
    )
    if tx.payer == tx.payee:
        raise ValidationError("tx: payer and payee must differ")
    link = schema.mapping(b, "link")
    schema.exact_keys(link, {"author", "seq", "hash"})
    link_author = schema.text(link, "author", 64, min_len=1)
    link_seq = schema.int_in(link, "seq", 0, _U63)
    link_hash = _hash_field(link, "hash", empty_ok=True)
    author = o.signer
    if kind == "proposal":
        if author != tx.payer or link_author != tx.payee or link_seq != 0 or link_hash:
            raise ValidationError("proposal: signed by the payer, linking to the payee, seq 0")
    else:
        if author != tx.payee or link_author != tx.payer or link_seq < 1 or not link_hash:
            raise ValidationError("agreement: signed by the payee, linking to a payer's block")
    return Block(
        author=author,
        seq=seq,
        prev=prev,
        kind=kind,
        tx=tx,
        link_author=link_author,
        link_seq=link_seq,
        link_hash=link_hash,
        ts=schema.int_in(b, "ts", 0, _U63),
        raw=raw,
        hash=block_hash(raw),
    )
