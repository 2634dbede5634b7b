"""All replicated chains: append-only ingest with link, sequence and fork checks (PROTOCOL §9.3).

Theory of operation. Each author's chain is a list indexed by ``seq − 1``. A block from anywhere
goes through ``ingest``: parsed and signature-checked (``parse_block``); then
- same (author, seq) already held with the same hash → duplicate, nothing changes;
- same (author, seq) with a *different* hash → a fork: both blocks are valid signatures by one
  author at one height, which is a self-contained ``FraudProof``; the author is excluded;
- the next height, linking by ``prev`` to the current head → appended (and any held-back
  blocks that now connect are appended after it);
- a height beyond the next → held back (bounded) and reported as a gap to fill by sync;
- anything else is refused with the reason. Nothing is ever rewritten or removed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from p2pmesh.core import codec, schema
from p2pmesh.core.crypto import Signer
from p2pmesh.core.envelope import open_envelope, seal
from p2pmesh.core.ledger.block import GENESIS, Block, Tx, build_block, parse_block
from p2pmesh.errors import DecodeError, ValidationError

MAX_HELD_BACK = 256  # per author: blocks that arrived before the ones they link to


@dataclass(frozen=True, slots=True)
class FraudProof:
    author: str
    seq: int
    a: bytes
    b: bytes


@dataclass(slots=True)
class IngestResult:
    status: str  # added | duplicate | held | fork | invalid | excluded
    reason: str = ""
    added: list[Block] = field(default_factory=list)
    fraud: FraudProof | None = None
    want_from: int = 0  # on "held": the first missing seq of that author


def check_fraud(a_raw: bytes, b_raw: bytes) -> FraudProof:
    """Two different valid blocks at one (author, seq): raises ``ValidationError`` otherwise."""
    a, b = parse_block(a_raw), parse_block(b_raw)
    if a.author != b.author or a.seq != b.seq:
        raise ValidationError("fraud proof: blocks are not at one author and height")
    if a.hash == b.hash:
        raise ValidationError("fraud proof: the two blocks are the same")
    first, second = sorted((a_raw, b_raw))
    return FraudProof(a.author, a.seq, first, second)


def seal_fraud(signer: Signer, proof: FraudProof) -> bytes:
    body = {"author": proof.author, "seq": proof.seq, "a": proof.a, "b": proof.b}
    return seal(signer, "fraud", body)


def open_fraud(raw: bytes) -> FraudProof:
    o = open_envelope(raw, "fraud", max_bytes=8 * 1024)
    schema.exact_keys(o.body, {"author", "seq", "a", "b"})
    a, b = o.body.get("a"), o.body.get("b")
    if not isinstance(a, bytes) or not isinstance(b, bytes):
        raise ValidationError("fraud proof: a and b must be block bytes")
    proof = check_fraud(a, b)
    if proof.author != o.body.get("author") or proof.seq != o.body.get("seq"):
        raise ValidationError("fraud proof: author/seq do not match the blocks")
    return proof


class Ledger:
    def __init__(self, self_id: str) -> None:
        self.self_id = self_id
        self.chains: dict[str, list[Block]] = {}
        self.by_hash: dict[str, Block] = {}
        self.frauds: dict[str, FraudProof] = {}
        self._held: dict[str, dict[int, Block]] = {}
        self.refused = 0
        self.refused_reasons: dict[str, int] = {}

    # -- reading ---------------------------------------------------------------------------
    def head_seq(self, author: str) -> int:
        return len(self.chains.get(author, ()))

    def head(self, author: str) -> Block | None:
        chain = self.chains.get(author)
        return chain[-1] if chain else None

    def block(self, author: str, seq: int) -> Block | None:
        chain = self.chains.get(author)
        if chain and 1 <= seq <= len(chain):
            return chain[seq - 1]
        return None

    def range(self, author: str, first: int, last: int) -> list[Block]:
        chain = self.chains.get(author, [])
        return chain[max(first, 1) - 1 : max(0, min(last, len(chain)))]

    def excluded(self, author: str) -> bool:
        return author in self.frauds

    def block_count(self) -> int:
        return sum(len(c) for c in self.chains.values())

    # -- writing -----------------------------------------------------------------------------
    def append_own(
        self,
        signer: Signer,
        *,
        kind: str,
        tx: Tx,
        link_author: str,
        link_seq: int,
        link_hash: str,
        ts: int,
    ) -> Block:
        head = self.head(signer.peer_id)
        block = build_block(
            signer,
            seq=(head.seq + 1) if head else 1,
            prev=head.hash if head else GENESIS,
            kind=kind,
            tx=tx,
            link_author=link_author,
            link_seq=link_seq,
            link_hash=link_hash,
            ts=ts,
        )
        result = self.ingest(block.raw)
        if result.status != "added":
            raise RuntimeError(f"own block not appended: {result.status} {result.reason}")
        return block

    def ingest(self, raw: bytes) -> IngestResult:
        try:
            blk = parse_block(raw)
        except (DecodeError, ValidationError) as exc:
            return self._refuse(f"invalid block: {exc}")
        if blk.author in self.frauds:
            return IngestResult("excluded", "author excluded by a fraud proof")
        held = self.block(blk.author, blk.seq)
        if held is not None:
            if held.hash == blk.hash:
                return IngestResult("duplicate")
            return self._fork(held, blk)
        head = self.head_seq(blk.author)
        if blk.seq > head + 1:
            pending = self._held.setdefault(blk.author, {})
            other = pending.get(blk.seq)
            if other is not None and other.hash != blk.hash:
                return self._fork(other, blk)
            if len(pending) < MAX_HELD_BACK:
                pending[blk.seq] = blk
            return IngestResult("held", want_from=head + 1)
        expected_prev = self.chains[blk.author][-1].hash if head else GENESIS
        if blk.prev != expected_prev:
            return self._refuse(f"prev of {blk.author[-8:]}#{blk.seq} does not link to its chain")
        added = [self._append(blk)]
        pending = self._held.get(blk.author, {})
        while (nxt := pending.pop(self.head_seq(blk.author) + 1, None)) is not None:
            if nxt.prev != self.chains[blk.author][-1].hash:
                self._refuse("held-back block does not link")
                break
            added.append(self._append(nxt))
        return IngestResult("added", added=added)

    def add_fraud(self, proof: FraudProof) -> bool:
        if proof.author in self.frauds:
            return False
        self.frauds[proof.author] = proof
        return True

    def _append(self, blk: Block) -> Block:
        self.chains.setdefault(blk.author, []).append(blk)
        self.by_hash[blk.hash] = blk
        return blk

    def _fork(self, a: Block, b: Block) -> IngestResult:
        proof = check_fraud(a.raw, b.raw)
        first = self.add_fraud(proof)
        return IngestResult(
            "fork", f"two blocks at {a.author[-8:]}#{a.seq}", fraud=proof if first else None
        )

    def _refuse(self, reason: str) -> IngestResult:
        self.refused += 1
        key = reason.split(":")[0][:48]
        self.refused_reasons[key] = self.refused_reasons.get(key, 0) + 1
        return IngestResult("invalid", reason)

    # -- audit -------------------------------------------------------------------------------
    def verify_all(self) -> dict[str, object]:
        """Re-check every replicated block from its bytes: signatures, links, sequence, pairing."""
        problems: list[str] = []
        blocks = 0
        for author, chain in self.chains.items():
            prev = GENESIS
            for i, blk in enumerate(chain, start=1):
                blocks += 1
                try:
                    again = parse_block(blk.raw)
                except (DecodeError, ValidationError) as exc:
                    problems.append(f"{author[-8:]}#{i}: {exc}")
                    continue
                if again.seq != i or again.prev != prev or again.author != author:
                    problems.append(f"{author[-8:]}#{i}: sequence or link broken")
                prev = again.hash
                if again.kind == "agreement":
                    proposal = self.by_hash.get(again.link_hash)
                    if proposal is not None and (
                        proposal.tx != again.tx
                        or proposal.author != again.link_author
                        or proposal.seq != again.link_seq
                    ):
                        problems.append(f"{author[-8:]}#{i}: agreement does not match proposal")
        for proof in self.frauds.values():
            try:
                check_fraud(proof.a, proof.b)
            except (DecodeError, ValidationError) as exc:
                problems.append(f"fraud proof {proof.author[-8:]}: {exc}")
        return {
            "chains": len(self.chains),
            "blocks": blocks,
            "fraud_proofs": len(self.frauds),
            "problems": problems,
            "ok": not problems,
        }


def encode_blocks(blocks: list[Block]) -> bytes:
    return codec.encode({"blocks": [b.raw for b in blocks]}, max_bytes=4 * 1024 * 1024)
