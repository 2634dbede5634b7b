"""The ledger core (PROTOCOL.md §9): blocks, chains, pairing, forks, balances and payments.

Pure and fast: real Ed25519 keys (fixed seeds), no I/O. What is pinned here:

* chains: append-only ingest — duplicates change nothing, blocks that arrive early are held back
  and connected when their predecessors come, a block that does not link is refused;
* pairing: a payment counts once both halves exist and match, whatever order they arrive in;
* tampering: any change to a block (each body field, the signature, the key, any one byte) is
  refused with a reason, and ``verify_all`` finds a tampered stored block;
* forks: two valid blocks at one height are a fraud proof anyone can check; the author is
  excluded and its payments no longer count;
* balances: mutual credit sums to zero after any delivery order, and ``LiveBooks`` (the
  incremental books) always equals ``compute`` (the books from scratch);
* payments between two ``LedgerMachine``s: at most once per (job, payee) whatever the retries,
  refused when the payee, price, verdict, sender or payer is wrong, resent after a restart.

The tests of mismatched, repeated and double agreements, of the books after an exclusion, and
of an excluded node asked to sign pin bugs found here and fixed in 58b76ec.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from p2pmesh.core import codec
from p2pmesh.core.auction.messages import build_verdict, raw_digest
from p2pmesh.core.crypto import Ed25519Signer
from p2pmesh.core.effects import Log, Persist, Publish, SendMessage
from p2pmesh.core.envelope import seal
from p2pmesh.core.ledger.accounts import (
    Account,
    Books,
    LiveBooks,
    can_spend,
    compute,
    credit_limit,
)
from p2pmesh.core.ledger.block import (
    GENESIS,
    MAX_AMOUNT,
    MAX_BLOCK_BYTES,
    Block,
    Tx,
    block_hash,
    build_block,
    parse_block,
)
from p2pmesh.core.ledger.chain import (
    MAX_HELD_BACK,
    FraudProof,
    Ledger,
    check_fraud,
    encode_blocks,
    open_fraud,
    seal_fraud,
)
from p2pmesh.core.ledger.payments import (
    MAX_SYNC_BLOCKS,
    RESEND_S,
    TOPIC_FRAUD,
    TOPIC_HEADS,
    FetchHeads,
    LedgerMachine,
    StoreBlock,
    SyncChain,
)
from p2pmesh.core.reputation import ReputationBook
from p2pmesh.errors import DecodeError, ValidationError

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

SIGNERS = [Ed25519Signer(bytes([i]) * 32) for i in range(1, 7)]
A, B, C, D, E, F = SIGNERS
DIGEST = "sha256:" + "ab" * 32
VERDICT = "sha256:" + "cd" * 32
OTHER_HASH = "sha256:" + "ef" * 32


def job(i: int) -> str:
    return f"{i:032x}"


def tx(payer: Any, payee: Any, j: int = 0, amount: int = 5) -> Tx:
    return Tx(job(j), payer.peer_id, payee.peer_id, amount, DIGEST, VERDICT)


def propose(led: Ledger, payer: Any, payee: Any, j: int = 0, amount: int = 5, ts: int = 1) -> Block:
    return led.append_own(
        payer,
        kind="proposal",
        tx=tx(payer, payee, j, amount),
        link_author=payee.peer_id,
        link_seq=0,
        link_hash="",
        ts=ts,
    )


def agree(led: Ledger, payee: Any, prop: Block, *, amount: int | None = None, ts: int = 2) -> Block:
    t = prop.tx if amount is None else dataclasses.replace(prop.tx, amount=amount)
    return led.append_own(
        payee,
        kind="agreement",
        tx=t,
        link_author=prop.author,
        link_seq=prop.seq,
        link_hash=prop.hash,
        ts=ts,
    )


def envelope(raw: bytes) -> dict[str, Any]:
    value = codec.decode(raw)
    assert isinstance(value, dict)
    return value


def body_of(raw: bytes) -> dict[str, Any]:
    return dict(envelope(raw)["body"])


def resealed(signer: Any, body: dict[str, Any]) -> bytes:
    """A block envelope with ``body`` signed by ``signer``: valid signature, rules unchecked."""
    return seal(signer, "block", body)


def with_body(raw: bytes, body: dict[str, Any]) -> bytes:
    """The same envelope (key and signature kept) around a changed body."""
    env = envelope(raw)
    env["body"] = body
    return codec.encode(env)


def nonzero(books: Books) -> dict[str, tuple[int, int, int, int, int]]:
    return {
        p: (a.earned, a.spent, a.pending_out, a.payments_in, a.payments_out)
        for p, a in books.accounts.items()
        if (a.earned, a.spent, a.pending_out, a.payments_in, a.payments_out) != (0, 0, 0, 0, 0)
    }


def feed(blocks: list[bytes]) -> tuple[Ledger, LiveBooks]:
    """Deliver ``blocks`` in this order to a fresh ledger, keeping ``LiveBooks`` as a node does."""
    led, live = Ledger("observer"), LiveBooks()
    for raw in blocks:
        for blk in led.ingest(raw).added:
            live.add(led, blk)
    return led, live


# -- blocks ------------------------------------------------------------------------------------
def test_first_block_links_to_genesis_and_the_next_to_its_predecessor() -> None:
    led = Ledger(A.peer_id)
    p1 = propose(led, A, B, 1)
    p2 = propose(led, A, C, 2)
    assert (p1.seq, p1.prev, p1.author) == (1, GENESIS, A.peer_id)
    assert (p2.seq, p2.prev) == (2, p1.hash)
    assert p1.hash == block_hash(p1.raw) == raw_digest(p1.raw)
    assert parse_block(p2.raw) == p2
    assert led.head(A.peer_id) == p2 and led.head_seq(A.peer_id) == 2
    assert led.block(A.peer_id, 1) == p1 and led.block(A.peer_id, 3) is None
    assert led.range(A.peer_id, 1, 10) == [p1, p2] and led.range(A.peer_id, 2, 2) == [p2]
    assert led.range(B.peer_id, 1, 5) == [] and led.head(B.peer_id) is None
    assert led.block_count() == 2


def test_own_block_that_does_not_append_raises() -> None:
    led = Ledger(A.peer_id)
    led.ingest(propose(Ledger("x"), A, B).raw)
    # ``append_own`` builds seq 2 from our head: fine. A ledger that holds a fork of ours refuses.
    led.add_fraud(FraudProof(A.peer_id, 1, b"a", b"b"))
    with pytest.raises(RuntimeError, match="excluded"):
        propose(led, A, B, 2)


# -- chains: ingest ----------------------------------------------------------------------------
def test_duplicate_changes_nothing() -> None:
    src = Ledger("src")
    p = propose(src, A, B)
    led = Ledger("x")
    assert led.ingest(p.raw).status == "added"
    again = led.ingest(p.raw)
    assert again.status == "duplicate" and again.added == []
    assert led.block_count() == 1 and led.refused == 0


def test_held_back_blocks_connect_when_their_predecessors_arrive() -> None:
    src = Ledger("src")
    blocks = [propose(src, A, B, j) for j in range(4)]
    led = Ledger("x")
    r4 = led.ingest(blocks[3].raw)
    assert (r4.status, r4.want_from) == ("held", 1)
    r3 = led.ingest(blocks[2].raw)
    assert (r3.status, r3.want_from) == ("held", 1)
    assert led.ingest(blocks[2].raw).status == "held"  # held twice: still one copy
    assert led.head_seq(A.peer_id) == 0
    r1 = led.ingest(blocks[0].raw)
    assert r1.status == "added" and [b.seq for b in r1.added] == [1]
    r2 = led.ingest(blocks[1].raw)
    assert r2.status == "added" and [b.seq for b in r2.added] == [2, 3, 4]
    assert led.chains[A.peer_id] == blocks


def test_held_back_is_bounded_per_author() -> None:
    src = Ledger("src")
    blocks = [propose(src, A, B, j) for j in range(MAX_HELD_BACK + 3)]
    led = Ledger("x")
    for blk in reversed(blocks[1:]):
        assert led.ingest(blk.raw).status == "held"
    assert len(led._held[A.peer_id]) == MAX_HELD_BACK
    # Seqs 2 and 3 came last and found no room: seq 1 connects alone; sync brings the rest.
    assert led.ingest(blocks[0].raw).added == [blocks[0]]
    assert led.ingest(blocks[1].raw).added == [blocks[1]]
    assert len(led.ingest(blocks[2].raw).added) == 1 + MAX_HELD_BACK
    assert led.chains[A.peer_id] == blocks


def test_block_whose_prev_does_not_link_is_refused() -> None:
    src = Ledger("src")
    propose(src, A, B, 0)
    led = Ledger("x")
    led.ingest(src.chains[A.peer_id][0].raw)
    bad = build_block(
        A,
        seq=2,
        prev=OTHER_HASH,
        kind="proposal",
        tx=tx(A, B, 1),
        link_author=B.peer_id,
        link_seq=0,
        link_hash="",
        ts=3,
    )
    r = led.ingest(bad.raw)
    assert r.status == "invalid" and "does not link" in r.reason
    assert led.head_seq(A.peer_id) == 1 and led.refused == 1
    assert led.refused_reasons == {"prev of " + A.peer_id[-8:] + "#2 does not link to its chain": 1}


def test_held_back_block_that_does_not_link_is_refused_when_reached() -> None:
    src = Ledger("src")
    p1 = propose(src, A, B, 0)
    stray = build_block(
        A,
        seq=2,
        prev=OTHER_HASH,
        kind="proposal",
        tx=tx(A, B, 1),
        link_author=B.peer_id,
        link_seq=0,
        link_hash="",
        ts=3,
    )
    led = Ledger("x")
    assert led.ingest(stray.raw).status == "held"
    r = led.ingest(p1.raw)
    assert r.status == "added" and r.added == [p1]
    assert led.head_seq(A.peer_id) == 1 and led.refused == 1


def test_garbage_is_refused_with_a_reason() -> None:
    led = Ledger("x")
    for data in (b"", b"\x00", b"\xc1", codec.encode({"t": "block"}), b"\xff" * 100):
        r = led.ingest(data)
        assert r.status == "invalid" and r.reason.startswith("invalid block:")
    assert led.refused == 5


def test_blocks_of_an_excluded_author_are_not_taken() -> None:
    src = Ledger("src")
    p = propose(src, A, B)
    led = Ledger("x")
    led.add_fraud(FraudProof(A.peer_id, 1, b"", b""))
    r = led.ingest(p.raw)
    assert r.status == "excluded" and led.block_count() == 0


# -- tampering ---------------------------------------------------------------------------------
def _a_pair() -> tuple[Block, Block]:
    src = Ledger("src")
    propose(src, A, C, 7)  # so the pair is not at seq 1: prev is a real hash
    p = propose(src, A, B, 1, amount=9, ts=100)
    g = agree(src, B, p, ts=101)
    return p, g


def _changed(value: Any, path: str) -> Any:
    """A different value of the same type."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if path.endswith(("payer", "payee", "author")):
        return F.peer_id if value != F.peer_id else E.peer_id
    if path == "kind":
        return "agreement" if value == "proposal" else "proposal"
    if isinstance(value, str) and value.startswith("sha256:"):
        return value[:-1] + ("0" if value[-1] != "0" else "1")
    if path == "tx.job_id":
        return job(12345)
    if isinstance(value, str):
        return value + "x"
    raise AssertionError(path)


def _paths(body: dict[str, Any], prefix: str = "") -> list[str]:
    out: list[str] = []
    for k, v in body.items():
        if isinstance(v, dict):
            out += _paths(v, prefix + k + ".")
        else:
            out.append(prefix + k)
    return out


def _set(body: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    new = codec.decode(codec.encode(body))
    node = new
    *parents, last = path.split(".")
    for p in parents:
        node = node[p]
    node[last] = value
    return dict(new)


def _get(body: dict[str, Any], path: str) -> Any:
    node: Any = body
    for p in path.split("."):
        node = node[p]
    return node


BODY_PATHS = [
    "seq",
    "prev",
    "kind",
    "ts",
    "tx.job_id",
    "tx.payer",
    "tx.payee",
    "tx.amount",
    "tx.accepted_digest",
    "tx.verdict",
    "link.author",
    "link.seq",
    "link.hash",
]


def test_the_tamper_list_covers_every_body_field() -> None:
    p, g = _a_pair()
    assert sorted(_paths(body_of(p.raw))) == sorted(BODY_PATHS)
    assert sorted(_paths(body_of(g.raw))) == sorted(BODY_PATHS)


@pytest.mark.parametrize("path", BODY_PATHS)
@pytest.mark.parametrize("which", ["proposal", "agreement"])
def test_changing_any_body_field_breaks_the_signature(path: str, which: str) -> None:
    p, g = _a_pair()
    blk = p if which == "proposal" else g
    body = body_of(blk.raw)
    if which == "proposal" and path == "link.hash":
        value: Any = OTHER_HASH  # empty in a proposal
    else:
        value = _changed(_get(body, path), path)
    forged = with_body(blk.raw, _set(body, path, value))
    led = Ledger("x")
    r = led.ingest(forged)
    assert r.status == "invalid" and r.reason, path
    with pytest.raises((DecodeError, ValidationError)):
        parse_block(forged)


@pytest.mark.parametrize("field", ["sig", "pk", "t", "v"])
def test_changing_the_signature_key_type_or_version_is_refused(field: str) -> None:
    p, _ = _a_pair()
    env = envelope(p.raw)
    if field == "sig":
        env["sig"] = bytes([env["sig"][0] ^ 1]) + env["sig"][1:]
        reason = "bad signature"
    elif field == "pk":
        env["pk"] = F.public_key  # another real key: the signature is not its
        reason = "bad signature"
    elif field == "t":
        env["t"] = "fraud"
        reason = "expected a 'block' envelope"
    else:
        env["v"] = 2
        reason = "unsupported envelope version"
    r = Ledger("x").ingest(codec.encode(env))
    assert r.status == "invalid" and reason in r.reason


def test_a_block_signed_by_someone_else_is_refused() -> None:
    # The author *is* the signer: the payee cannot write the payer's proposal.
    p, _ = _a_pair()
    forged = resealed(B, body_of(p.raw))
    r = Ledger("x").ingest(forged)
    assert r.status == "invalid" and "proposal: signed by the payer" in r.reason


def test_every_single_byte_change_is_refused() -> None:
    p, g = _a_pair()
    for blk in (p, g):
        for i in range(len(blk.raw)):
            for flip in (0x01, 0x80):
                data = bytearray(blk.raw)
                data[i] ^= flip
                r = Ledger("x").ingest(bytes(data))
                assert r.status == "invalid" and r.reason, (i, flip)


@FUZZ
@given(st.data())
def test_any_byte_changed_anywhere_is_refused(data: st.DataObject) -> None:
    p, g = _a_pair()
    blk = data.draw(st.sampled_from([p, g]))
    raw = bytearray(blk.raw)
    positions = data.draw(
        st.lists(st.integers(0, len(raw) - 1), min_size=1, max_size=4, unique=True)
    )
    for i in positions:
        raw[i] ^= data.draw(st.integers(1, 255))
    r = Ledger("x").ingest(bytes(raw))
    assert r.status == "invalid" and r.reason


@FUZZ
@given(st.binary(max_size=64), st.integers(0, 600))
def test_truncated_or_extended_blocks_are_refused(junk: bytes, cut: int) -> None:
    p, _ = _a_pair()
    for data in (p.raw[:cut], p.raw + junk if junk else p.raw[:-1]):
        if data == p.raw:
            continue
        r = Ledger("x").ingest(data)
        assert r.status == "invalid" and r.reason


def _rules_body() -> tuple[dict[str, Any], dict[str, Any]]:
    p, g = _a_pair()
    return body_of(p.raw), body_of(g.raw)


RULES: list[tuple[str, str, Callable[[dict[str, Any]], dict[str, Any]], str]] = [
    ("proposal", "A", lambda b: {**b, "extra": 1}, "unknown field(s): extra"),
    ("proposal", "A", lambda b: {k: v for k, v in b.items() if k != "ts"}, "missing field(s): ts"),
    ("proposal", "A", lambda b: {**b, "kind": "gift"}, "kind: must be one of"),
    ("proposal", "A", lambda b: {**b, "kind": 1}, "kind: must be text"),
    ("proposal", "A", lambda b: {**b, "seq": 0}, "seq: must be an integer"),
    ("proposal", "A", lambda b: {**b, "seq": True}, "seq: must be an integer"),
    ("proposal", "A", lambda b: {**b, "seq": -1}, "seq: must be an integer"),
    ("proposal", "A", lambda b: {**b, "seq": 1}, "prev: the first block must link to GENESIS"),
    ("proposal", "A", lambda b: {**b, "prev": "sha256:ABC"}, "prev: must be sha256"),
    ("proposal", "A", lambda b: {**b, "prev": ""}, "prev: must be sha256"),
    ("proposal", "A", lambda b: {**b, "ts": -5}, "ts: must be an integer"),
    ("proposal", "A", lambda b: {**b, "tx": "x"}, "tx: must be a map"),
    ("proposal", "A", lambda b: _set(b, "tx.job_id", "AB" * 16), "tx.job_id: must be 32"),
    ("proposal", "A", lambda b: _set(b, "tx.job_id", "ab"), "job_id: must be text of 32"),
    ("proposal", "A", lambda b: _set(b, "tx.amount", -1), "amount: must be an integer"),
    ("proposal", "A", lambda b: _set(b, "tx.amount", MAX_AMOUNT + 1), "amount: must be an"),
    ("proposal", "A", lambda b: _set(b, "tx.payee", A.peer_id), "payer and payee must differ"),
    ("proposal", "A", lambda b: _set(b, "tx.payer", "x" * 65), "payer: must be text of 1..64"),
    ("proposal", "A", lambda b: _set(b, "tx.payee", ""), "payee: must be text of 1..64"),
    ("proposal", "A", lambda b: _set(b, "tx.verdict", "sha1:00"), "verdict: must be sha256"),
    ("proposal", "A", lambda b: _set(b, "tx.accepted_digest", ""), "accepted_digest: must be"),
    ("proposal", "A", lambda b: _set(b, "link.seq", 1), "proposal: signed by the payer"),
    ("proposal", "A", lambda b: _set(b, "link.hash", OTHER_HASH), "proposal: signed by the payer"),
    ("proposal", "A", lambda b: _set(b, "link.author", C.peer_id), "proposal: signed by the payer"),
    ("proposal", "A", lambda b: _set(b, "link", {}), "missing field(s): author, hash, seq"),
    ("proposal", "B", lambda b: b, "proposal: signed by the payer"),
    ("agreement", "B", lambda b: _set(b, "link.seq", 0), "agreement: signed by the payee"),
    ("agreement", "B", lambda b: _set(b, "link.hash", ""), "agreement: signed by the payee"),
    ("agreement", "B", lambda b: _set(b, "link.author", C.peer_id), "agreement: signed by"),
    ("agreement", "A", lambda b: b, "agreement: signed by the payee"),
    ("agreement", "B", lambda b: _set(b, "link.hash", "sha256:xyz"), "hash: must be sha256"),
]


@pytest.mark.parametrize(("kind", "who", "change", "reason"), RULES)
def test_well_signed_blocks_that_break_a_rule_are_refused_naming_it(
    kind: str, who: str, change: Callable[[dict[str, Any]], dict[str, Any]], reason: str
) -> None:
    prop, agr = _rules_body()
    signer = {"A": A, "B": B}[who]
    raw = resealed(signer, change(prop if kind == "proposal" else agr))
    r = Ledger("x").ingest(raw)
    assert r.status == "invalid"
    assert reason in r.reason, r.reason


def test_a_block_over_the_size_limit_is_refused() -> None:
    prop, _ = _rules_body()
    raw = resealed(A, {**prop, "pad": "x" * MAX_BLOCK_BYTES})
    r = Ledger("x").ingest(raw)
    assert r.status == "invalid" and "limit" in r.reason


def test_verify_all_finds_a_tampered_stored_block() -> None:
    src = Ledger("src")
    p, g = _a_pair()
    for blk in [*_chain_of(p), g]:
        src.ingest(blk.raw)
    assert src.verify_all()["ok"] is True
    assert src.verify_all()["blocks"] == 3 and src.verify_all()["chains"] == 2
    chain = src.chains[A.peer_id]
    good = chain[1]
    env = envelope(good.raw)
    env["sig"] = bytes([env["sig"][0] ^ 0x10]) + env["sig"][1:]
    chain[1] = dataclasses.replace(good, raw=codec.encode(env))
    report = src.verify_all()
    assert report["ok"] is False
    assert report["problems"] == [f"{A.peer_id[-8:]}#2: bad signature"], report
    # Any byte of the stored bytes, not only the signature.
    for i in range(len(good.raw)):
        data = bytearray(good.raw)
        data[i] ^= 0x04
        chain[1] = dataclasses.replace(good, raw=bytes(data))
        assert not src.verify_all()["ok"], i


def _chain_of(blk: Block) -> list[Block]:
    """``_a_pair``'s proposal with its predecessor (rebuilt: same seeds, same bytes)."""
    src = Ledger("src")
    first = propose(src, A, C, 7)
    again = propose(src, A, B, 1, amount=9, ts=100)
    assert again == blk
    return [first, again]


def test_verify_all_finds_a_swapped_block_and_a_mismatched_agreement() -> None:
    src = Ledger("src")
    p1 = propose(src, A, B, 1)
    p2 = propose(src, A, B, 2)
    agree(src, B, p1)
    ok = src.verify_all()
    assert ok["ok"] and ok["problems"] == []
    src.chains[A.peer_id].reverse()
    problems = src.verify_all()["problems"]
    assert any("sequence or link broken" in x for x in problems)
    src.chains[A.peer_id].reverse()
    # An agreement whose transaction differs from the proposal it links to.
    led = Ledger("y")
    for blk in (p1, p2):
        led.ingest(blk.raw)
    led.ingest(agree(Ledger("z"), B, p1, amount=p1.tx.amount + 1).raw)
    problems = led.verify_all()["problems"]
    assert any("agreement does not match proposal" in x for x in problems)


def test_verify_all_rechecks_fraud_proofs() -> None:
    led = Ledger("x")
    led.add_fraud(FraudProof(A.peer_id, 1, b"not", b"blocks"))
    report = led.verify_all()
    assert not report["ok"] and report["fraud_proofs"] == 1
    assert report["problems"][0].startswith("fraud proof")


# -- pairing -----------------------------------------------------------------------------------
def test_a_payment_counts_once_both_halves_exist() -> None:
    src = Ledger("src")
    p = propose(src, A, B, 1, amount=7)
    g = agree(src, B, p)
    led, live = feed([p.raw])
    books = compute(led)
    assert books.get(A.peer_id).pending_out == 7 and books.get(A.peer_id).balance == 0
    led, live = feed([p.raw, g.raw])
    books = compute(led)
    assert books.get(A.peer_id).balance == -7 and books.get(B.peer_id).balance == 7
    assert books.get(A.peer_id).pending_out == 0 and books.total() == 0
    assert nonzero(live.books) == nonzero(books)


def test_agreement_before_proposal_is_paired_when_the_proposal_comes() -> None:
    src = Ledger("src")
    p = propose(src, A, B, 1, amount=7)
    g = agree(src, B, p)
    led, live = feed([g.raw])
    assert compute(led).get(B.peer_id).balance == 0  # the proposal is not known yet
    assert nonzero(live.books) == {}
    led, live = feed([g.raw, p.raw])
    assert compute(led).get(B.peer_id).balance == 7
    assert nonzero(live.books) == nonzero(compute(led))


def test_mismatched_agreements_never_count() -> None:
    src = Ledger("src")
    p = propose(src, A, B, 1, amount=7)
    bad_amount = agree(Ledger("z"), B, p, amount=8)
    # Links to the right hash but names another height of the payer's chain.
    bad_seq = build_block(
        B,
        seq=1,
        prev=GENESIS,
        kind="agreement",
        tx=p.tx,
        link_author=A.peer_id,
        link_seq=2,
        link_hash=p.hash,
        ts=5,
    )
    # Links to a block that is not a proposal (an agreement of the payer's).
    src2 = Ledger("src2")
    q = propose(src2, B, A, 2, amount=3)
    a_agrees = agree(src2, A, q)
    wrong_kind = build_block(
        B,
        seq=1,
        prev=GENESIS,
        kind="agreement",
        tx=Tx(job(2), A.peer_id, B.peer_id, 3, DIGEST, VERDICT),
        link_author=A.peer_id,
        link_seq=1,
        link_hash=a_agrees.hash,
        ts=5,
    )
    for led in (feed([p.raw, bad_amount.raw])[0], feed([p.raw, bad_seq.raw])[0]):
        books = compute(led)
        assert books.get(B.peer_id).balance == 0 and books.get(A.peer_id).pending_out == 7
    led = feed([a_agrees.raw, wrong_kind.raw])[0]
    assert compute(led).get(B.peer_id).earned == 0


def test_a_second_payment_for_the_same_job_and_payee_is_ignored() -> None:
    src = Ledger("src")
    p1 = propose(src, A, B, 1, amount=7)
    g1 = agree(src, B, p1)
    p2 = propose(src, A, B, 1, amount=7, ts=9)
    g2 = agree(src, B, p2, ts=10)
    led, live = feed([b.raw for b in (p1, g1, p2, g2)])
    books = compute(led)
    assert books.get(B.peer_id).earned == 7 and books.duplicates == 1
    assert live.books.duplicates == 1 and nonzero(live.books) == nonzero(books)
    # Another job, or another payee, is another payment.
    p3 = propose(src, A, B, 2, amount=1)
    g3 = agree(src, B, p3)
    led, _ = feed([b.raw for b in (p1, g1, p2, g2, p3, g3)])
    assert compute(led).get(B.peer_id).earned == 8


# -- forks and fraud proofs ----------------------------------------------------------------------
def _fork() -> tuple[Block, Block]:
    a = build_block(
        A,
        seq=1,
        prev=GENESIS,
        kind="proposal",
        tx=tx(A, B, 1, 5),
        link_author=B.peer_id,
        link_seq=0,
        link_hash="",
        ts=1,
    )
    b = build_block(
        A,
        seq=1,
        prev=GENESIS,
        kind="proposal",
        tx=tx(A, B, 1, 6),
        link_author=B.peer_id,
        link_seq=0,
        link_hash="",
        ts=2,
    )
    return a, b


def test_two_blocks_at_one_height_are_a_fraud_proof_and_exclude_the_author() -> None:
    a, b = _fork()
    led = Ledger("x")
    assert led.ingest(a.raw).status == "added"
    r = led.ingest(b.raw)
    assert r.status == "fork" and r.fraud is not None
    assert (r.fraud.author, r.fraud.seq) == (A.peer_id, 1)
    assert {r.fraud.a, r.fraud.b} == {a.raw, b.raw} and r.fraud.a < r.fraud.b
    assert led.excluded(A.peer_id) and not led.excluded(B.peer_id)
    # Once excluded: nothing more of that author is taken, and a second fork is no news.
    assert led.ingest(a.raw).status == "excluded"
    led2 = Ledger("y")
    led2.ingest(a.raw)
    led2.add_fraud(check_fraud(a.raw, b.raw))
    assert led2.ingest(b.raw).status == "excluded"


def test_a_fork_among_held_back_blocks_is_detected() -> None:
    src = Ledger("src")
    propose(src, A, B, 0)
    p2 = propose(src, A, B, 1)
    twin = build_block(
        A,
        seq=2,
        prev=p2.prev,
        kind="proposal",
        tx=tx(A, B, 1, 99),
        link_author=B.peer_id,
        link_seq=0,
        link_hash="",
        ts=50,
    )
    led = Ledger("x")
    assert led.ingest(p2.raw).status == "held"
    r = led.ingest(twin.raw)
    assert r.status == "fork" and led.excluded(A.peer_id)


def test_check_fraud_accepts_only_two_different_valid_blocks_at_one_height() -> None:
    a, b = _fork()
    proof = check_fraud(b.raw, a.raw)
    assert proof == check_fraud(a.raw, b.raw)  # order does not matter
    with pytest.raises(ValidationError, match="the same"):
        check_fraud(a.raw, a.raw)
    other_author = build_block(
        C,
        seq=1,
        prev=GENESIS,
        kind="proposal",
        tx=tx(C, B, 1, 5),
        link_author=B.peer_id,
        link_seq=0,
        link_hash="",
        ts=1,
    )
    with pytest.raises(ValidationError, match="not at one author and height"):
        check_fraud(a.raw, other_author.raw)
    src = Ledger("src")
    propose(src, A, D, 3)
    seq2 = propose(src, A, D, 4)
    with pytest.raises(ValidationError, match="not at one author and height"):
        check_fraud(a.raw, seq2.raw)
    env = envelope(b.raw)
    env["sig"] = bytes(64)
    with pytest.raises(ValidationError, match="bad signature"):
        check_fraud(a.raw, codec.encode(env))
    with pytest.raises(DecodeError):
        check_fraud(a.raw, b.raw + b"\x00")


def test_fraud_envelope_round_trip_and_refusals() -> None:
    a, b = _fork()
    proof = check_fraud(a.raw, b.raw)
    raw = seal_fraud(C, proof)  # anyone may seal a proof: it is checked on its own
    assert open_fraud(raw) == proof
    body = {"author": proof.author, "seq": proof.seq, "a": proof.a, "b": proof.b}
    cases = [
        ({**body, "seq": 2}, "author/seq do not match"),
        ({**body, "author": B.peer_id}, "author/seq do not match"),
        ({**body, "a": "text"}, "a and b must be block bytes"),
        ({**body, "b": proof.a}, "the same"),
        ({**body, "x": 1}, "unknown field(s): x"),
        ({k: v for k, v in body.items() if k != "b"}, "missing field(s): b"),
    ]
    for bad, reason in cases:
        with pytest.raises((ValidationError, DecodeError), match=re.escape(reason)):
            open_fraud(seal(C, "fraud", bad))
    with pytest.raises(ValidationError, match="expected a 'fraud' envelope"):
        open_fraud(seal(C, "block", body))
    env = envelope(raw)
    env["sig"] = bytes(64)
    with pytest.raises(ValidationError, match="bad signature"):
        open_fraud(codec.encode(env))


def test_exclusion_voids_the_authors_payments() -> None:
    src = Ledger("src")
    p = propose(src, A, B, 1, amount=7)
    g = agree(src, B, p)
    q = propose(src, C, B, 2, amount=3)
    h = agree(src, B, q)
    led, live = feed([b.raw for b in (p, g, q, h)])
    assert compute(led).get(B.peer_id).earned == 10
    a2 = build_block(
        A,
        seq=1,
        prev=GENESIS,
        kind="proposal",
        tx=tx(A, B, 1, 8),
        link_author=B.peer_id,
        link_seq=0,
        link_hash="",
        ts=1,
    )
    assert led.ingest(a2.raw).status == "fork"
    books = compute(led)
    assert books.get(B.peer_id).earned == 3 and books.get(A.peer_id).spent == 0
    assert books.total() == 0
    live.rebuild(led)
    assert live.books.get(B.peer_id).earned == 3 and live.books.total() == 0


def test_rebuild_after_an_exclusion_equals_compute() -> None:
    src = Ledger("src")
    p = propose(src, A, B, 1, amount=7)
    g = agree(src, B, p)
    led, live = feed([g.raw, p.raw])  # B's chain is first in the ledger's order
    live.rebuild(led)
    assert live.books.get(A.peer_id).pending_out == 0
    assert nonzero(live.books) == nonzero(compute(led))


def test_a_mismatched_agreement_leaves_the_proposal_pending_in_live_books() -> None:
    src = Ledger("src")
    p = propose(src, A, B, 1, amount=7)
    bad = agree(Ledger("z"), B, p, amount=1)
    led, live = feed([p.raw, bad.raw])
    assert compute(led).get(A.peer_id).pending_out == 7
    assert live.books.get(A.peer_id).pending_out == 7


def test_a_valid_agreement_waiting_for_its_proposal_is_not_displaced() -> None:
    src = Ledger("src")
    p = propose(src, A, B, 1, amount=7)
    good = agree(src, B, p)
    bad = agree(src, B, p, amount=1, ts=3)  # B's seq 2: also links to p
    led, live = feed([good.raw, bad.raw, p.raw])
    assert compute(led).get(B.peer_id).earned == 7
    assert live.books.get(B.peer_id).earned == 7


def test_duplicate_payments_count_the_same_everywhere() -> None:
    src = Ledger("src")
    p1 = propose(src, A, B, 1, amount=7)
    p2 = propose(src, A, B, 1, amount=2)
    g2 = agree(src, B, p2)
    g1 = agree(src, B, p1)
    orders = [[p1, p2, g2, g1], [p1, p2, g1, g2], [g1, g2, p1, p2]]
    seen = set()
    for order in orders:
        led, live = feed([b.raw for b in order])
        seen.add(live.books.get(B.peer_id).earned)
        seen.add(compute(led).get(B.peer_id).earned)
    assert len(seen) == 1, seen


def test_pending_amounts_agree_when_a_party_is_excluded() -> None:
    src = Ledger("src")
    p = propose(src, C, A, 1, amount=7)  # C pays A; A is then excluded
    g = agree(src, A, p)
    led, live = feed([p.raw, g.raw])
    twin = build_block(
        A,
        seq=1,
        prev=GENESIS,
        kind="proposal",
        tx=tx(A, D, 9, 1),
        link_author=D.peer_id,
        link_seq=0,
        link_hash="",
        ts=1,
    )
    assert led.ingest(twin.raw).status == "fork"
    live.rebuild(led)
    assert nonzero(live.books) == nonzero(compute(led))


# -- balances: sum to zero, incremental == from scratch --------------------------------------------
PARTIES = SIGNERS[:4]


@st.composite
def payment_runs(draw: st.DrawFn) -> tuple[list[Block], list[int]]:
    """A random set of chains (payments, some unanswered, some paid twice) and a delivery order
    (a permutation with repeats): what a node receives from gossip and sync, shuffled."""
    ops = draw(
        st.lists(
            st.tuples(
                st.integers(0, 3),  # payer
                st.integers(1, 3),  # payee = payer + this (mod 4)
                st.integers(0, 3),  # job: few, so the same (payer, job, payee) recurs
                st.booleans(),  # answered by an agreement?
            ),
            max_size=14,
        )
    )
    src = Ledger("src")
    blocks: list[Block] = []
    for ts, (i, off, j, answered) in enumerate(ops):
        payer, payee = PARTIES[i], PARTIES[(i + off) % 4]
        amount = 1 + (i * 7 + off * 3 + j * 5) % 20  # one amount per (payer, job, payee)
        p = propose(src, payer, payee, j, amount, ts=ts)
        blocks.append(p)
        if answered:
            blocks.append(agree(src, payee, p, ts=ts))
    n = len(blocks)
    order = draw(st.permutations(list(range(n))))
    repeats = draw(st.lists(st.integers(0, max(0, n - 1)), max_size=6)) if n else []
    for r in repeats:
        order.insert(draw(st.integers(0, len(order))), r)
    return blocks, order


@FUZZ
@given(payment_runs())
def test_balances_sum_to_zero_and_live_books_equal_compute(
    run: tuple[list[Block], list[int]],
) -> None:
    blocks, order = run
    led, live = Ledger("observer"), LiveBooks()
    for idx in order:
        for blk in led.ingest(blocks[idx].raw).added:
            live.add(led, blk)
        books = compute(led)
        assert books.total() == 0 and live.books.total() == 0
        assert nonzero(live.books) == nonzero(books)
        assert live.books.duplicates == books.duplicates
    # Everything arrived: the observer holds the same chains as the source.
    assert led.block_count() == len(blocks)
    assert sorted(b.hash for b in blocks) == sorted(led.by_hash)
    # The reference: every answered payment counted once per (payer, job, payee).
    expected: dict[str, int] = {}
    paid: set[tuple[str, str, str]] = set()
    by_hash = {b.hash: b for b in blocks}
    for blk in blocks:
        if blk.kind == "agreement":
            key = (blk.tx.payer, blk.tx.job_id, blk.tx.payee)
            if key not in paid:
                paid.add(key)
                expected[blk.tx.payee] = expected.get(blk.tx.payee, 0) + blk.tx.amount
                expected[blk.tx.payer] = expected.get(blk.tx.payer, 0) - blk.tx.amount
            assert by_hash[blk.link_hash].tx == blk.tx
    books = compute(led)
    assert {p: a.balance for p, a in books.accounts.items() if a.balance} == {
        p: v for p, v in expected.items() if v
    }
    assert led.verify_all()["ok"]


@st.composite
def hostile_runs(draw: st.DrawFn) -> tuple[list[Block], list[int]]:
    """Like ``payment_runs``, plus what only misbehaving peers sign: a replica paid twice at
    different amounts, agreements that do not match their proposal, a proposal agreed twice,
    and a fork (which excludes its author) at the end of the delivery."""
    ops = draw(
        st.lists(
            st.tuples(
                st.integers(0, 3),
                st.integers(1, 3),
                st.integers(0, 2),
                st.integers(0, 20),
                st.sampled_from(["none", "agree", "mismatch", "twice"]),
            ),
            max_size=12,
        )
    )
    src = Ledger("src")
    blocks: list[Block] = []
    for ts, (i, off, j, amount, answer) in enumerate(ops):
        payer, payee = PARTIES[i], PARTIES[(i + off) % 4]
        p = propose(src, payer, payee, j, amount, ts=ts)
        blocks.append(p)
        if answer in ("agree", "twice"):
            blocks.append(agree(src, payee, p, ts=ts))
        if answer == "mismatch":
            blocks.append(agree(src, payee, p, amount=amount + 1, ts=ts))
        if answer == "twice":
            blocks.append(agree(src, payee, p, ts=ts + 1000))
    order = draw(st.permutations(list(range(len(blocks)))))
    if blocks and draw(st.booleans()):
        victim = draw(st.sampled_from(blocks))
        twin = build_block(
            PARTIES[[s.peer_id for s in PARTIES].index(victim.author)],
            seq=victim.seq,
            prev=victim.prev,
            kind="proposal",
            tx=Tx(job(99), victim.author, F.peer_id, 1, DIGEST, VERDICT),
            link_author=F.peer_id,
            link_seq=0,
            link_hash="",
            ts=10**6,
        )
        blocks.append(twin)
        order.append(len(blocks) - 1)
    return blocks, order


def _check_books(led: Ledger, live: LiveBooks) -> None:
    books = compute(led)
    assert books.total() == 0 and live.books.total() == 0
    assert nonzero(live.books) == nonzero(books)
    assert all(a.pending_out >= 0 for a in live.books.accounts.values())


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(hostile_runs(), st.randoms(use_true_random=False))
def test_books_agree_whatever_peers_sign_and_whatever_the_order(
    run: tuple[list[Block], list[int]], rnd: Any
) -> None:
    blocks, order = run
    led, live = Ledger("observer"), LiveBooks()
    for idx in order:
        r = led.ingest(blocks[idx].raw)
        for blk in r.added:
            live.add(led, blk)
        if r.status == "fork":
            live.rebuild(led)
        _check_books(led, live)
    other = list(order)
    rnd.shuffle(other)
    led2, live2 = Ledger("observer"), LiveBooks()
    for idx in other:
        r = led2.ingest(blocks[idx].raw)
        for blk in r.added:
            live2.add(led2, blk)
        if r.status == "fork":
            live2.rebuild(led2)
    _check_books(led2, live2)
    if not led.frauds and not led2.frauds:
        assert nonzero(compute(led)) == nonzero(compute(led2))


@FUZZ
@given(payment_runs(), st.randoms(use_true_random=False))
def test_two_nodes_with_the_same_blocks_agree_whatever_the_order(
    run: tuple[list[Block], list[int]], rnd: Any
) -> None:
    blocks, order = run
    other = list(order)
    rnd.shuffle(other)
    led1, live1 = feed([blocks[i].raw for i in order])
    led2, live2 = feed([blocks[i].raw for i in other])
    assert nonzero(compute(led1)) == nonzero(compute(led2))
    assert nonzero(live1.books) == nonzero(live2.books)
    for author, chain in led1.chains.items():
        assert [b.hash for b in chain] == [b.hash for b in led2.chains[author]]


# -- credit limit ------------------------------------------------------------------------------
def test_credit_limit_grows_with_earnings_and_bounds_spending() -> None:
    fresh = Account()
    assert credit_limit(fresh, 100) == 100
    assert can_spend(fresh, 100, 100) and not can_spend(fresh, 101, 100)
    worker = Account(earned=30, spent=0)
    assert credit_limit(worker, 100) == 130
    assert can_spend(worker, 160, 100)  # 30 − 160 = −130, the limit exactly
    assert not can_spend(worker, 161, 100)
    busy = Account(earned=0, spent=90, pending_out=10)
    assert can_spend(busy, 0, 100) and not can_spend(busy, 1, 100)
    assert can_spend(Account(), 0, 0) and not can_spend(Account(), 1, 0)


# -- payments between two machines ---------------------------------------------------------------
R, W, W2, X = A, B, C, D
JOB = job(0xBEEF)
PRICE = 7
OUT = "sha256:" + "12" * 32


class Pair:
    """A requester machine and a worker machine, and the award the worker holds."""

    def __init__(self, *, price: int = PRICE, credit_base: int = 100) -> None:
        self.r = LedgerMachine(R, ReputationBook(R.peer_id), credit_base=credit_base)
        self.w = LedgerMachine(W, ReputationBook(W.peer_id), credit_base=credit_base)
        self.awards: dict[tuple[str, str], int] = {(JOB, R.peer_id): price}
        self.verdict = build_verdict(
            R,
            job_id=JOB,
            job_digest=DIGEST,
            outcome="accepted",
            accepted_digest=OUT,
            agreeing=[W.peer_id, W2.peer_id],
            dissenting=[],
            now=100,
        ).raw

    def award_price(self, job_id: str, requester: str) -> int | None:
        return self.awards.get((job_id, requester))

    def pay(self, now: int = 100, **kw: Any) -> list[Any]:
        args = {
            "job_id": JOB,
            "payee": W.peer_id,
            "amount": PRICE,
            "accepted_digest": OUT,
            "verdict": self.verdict,
            "now": now,
            **kw,
        }
        return self.r.pay(**args)

    def deliver_pay(self, effects: list[Any], now: int = 101, frm: str = R.peer_id) -> list[Any]:
        out: list[Any] = []
        for eff in sends(effects, "pay"):
            out += self.w.on_pay(eff.data, frm, now, self.award_price)
        return out

    def deliver_paid(self, effects: list[Any], now: int = 102) -> list[Any]:
        out: list[Any] = []
        for eff in sends(effects, "paid"):
            out += self.r.on_paid(eff.data, W.peer_id, now)
        return out


def sends(effects: list[Any], kind: str) -> list[SendMessage]:
    return [e for e in effects if isinstance(e, SendMessage) and e.kind == kind]


def refusals(effects: list[Any]) -> list[str]:
    return [
        str(e.fields.get("reason"))
        for e in effects
        if isinstance(e, Log) and e.msg == "payment refused"
    ]


def pay_message(proposal: bytes, verdict: bytes) -> bytes:
    return codec.encode({"proposal": proposal, "verdict": verdict})


def test_pay_then_agree_then_paid() -> None:
    pr = Pair()
    eff = pr.pay()
    kinds = [type(e).__name__ for e in eff]
    assert kinds[:4] == ["StoreBlock", "Persist", "SendMessage", "Publish"]
    store = eff[0]
    assert isinstance(store, StoreBlock) and (store.author, store.seq) == (R.peer_id, 1)
    persist = eff[1]
    assert isinstance(persist, Persist) and persist.table == "payments"
    assert persist.value["payee"] == W.peer_id and persist.value["verdict"] == pr.verdict.hex()
    assert isinstance(eff[3], Publish) and eff[3].topic == TOPIC_HEADS
    prop = parse_block(store.raw)
    assert prop.tx == Tx(JOB, R.peer_id, W.peer_id, PRICE, OUT, raw_digest(pr.verdict))
    assert pr.r.account(R.peer_id).pending_out == PRICE and pr.r.pending

    got = pr.deliver_pay(eff)
    stored = [e for e in got if isinstance(e, StoreBlock)]
    # The worker stores the payer's proposal and its own agreement, durably, before answering.
    assert [(s.author, s.seq) for s in stored] == [(R.peer_id, 1), (W.peer_id, 1)]
    assert got.index(stored[-1]) < got.index(sends(got, "paid")[0])
    agreement = parse_block(sends(got, "paid")[0].data)
    assert (agreement.kind, agreement.link_hash, agreement.tx) == ("agreement", prop.hash, prop.tx)
    assert pr.w.account(W.peer_id).balance == PRICE

    done = pr.deliver_paid(got)
    assert not pr.r.pending
    assert any(isinstance(e, Persist) and e.value is None for e in done)
    for m in (pr.r, pr.w):
        assert m.balance_json(R.peer_id)["balance"] == -PRICE
        assert m.balance_json(W.peer_id)["balance"] == PRICE
        assert m.balance_json(R.peer_id)["pending"] == 0
        assert m.live.books.total() == 0
    assert pr.r.balance_json(W.peer_id)["credit_limit"] == 100 + PRICE
    # Nothing more is resent once paid.
    assert sends(pr.r.tick(100 + 10 * RESEND_S), "pay") == []


def test_payment_happens_at_most_once_whatever_the_retries() -> None:
    pr = Pair()
    eff = pr.pay()
    assert pr.pay(now=150) == []  # a second decision about the same replica proposes nothing
    resent = pr.r.tick(100 + RESEND_S)
    assert len(sends(resent, "pay")) == 1
    assert sends(pr.r.tick(100 + RESEND_S + 1), "pay") == []  # not before RESEND_S again
    got1 = pr.deliver_pay(eff)
    got2 = pr.deliver_pay(resent, now=120)  # the same proposal again: the same agreement
    assert sends(got1, "paid")[0].data == sends(got2, "paid")[0].data
    assert not any(isinstance(e, StoreBlock) for e in got2)
    pr.deliver_paid(got1)
    pr.deliver_paid(got2)  # the agreement twice: nothing changes
    assert pr.w.ledger.head_seq(W.peer_id) == 1 and pr.r.ledger.head_seq(R.peer_id) == 1
    # A different proposal for the same job (made by hand, past ``pay``): refused.
    second = pr.r.ledger.append_own(
        R,
        kind="proposal",
        tx=Tx(JOB, R.peer_id, W.peer_id, PRICE, OUT, raw_digest(pr.verdict)),
        link_author=W.peer_id,
        link_seq=0,
        link_hash="",
        ts=130,
    )
    got3 = pr.w.on_pay(pay_message(second.raw, pr.verdict), R.peer_id, 131, pr.award_price)
    assert refusals(got3) == ["already paid for job"] and sends(got3, "paid") == []
    assert pr.w.ledger.head_seq(W.peer_id) == 1
    assert pr.w.account(W.peer_id).earned == PRICE


def test_each_agreeing_worker_is_paid_once() -> None:
    pr = Pair()
    e1 = pr.pay()
    e2 = pr.pay(payee=W2.peer_id)
    assert len(sends(e1, "pay")) == len(sends(e2, "pay")) == 1
    assert pr.r.ledger.head_seq(R.peer_id) == 2
    assert pr.r.account(R.peer_id).pending_out == 2 * PRICE


def _refused(pr: Pair, data: bytes, frm: str = R.peer_id) -> list[str]:
    got = pr.w.on_pay(data, frm, 101, pr.award_price)
    assert sends(got, "paid") == [] and not any(isinstance(e, StoreBlock) for e in got)
    assert pr.w.ledger.head_seq(W.peer_id) == 0
    return refusals(got)


def _proposal(pr: Pair, **changes: Any) -> bytes:
    fields = {
        "job_id": JOB,
        "payer": R.peer_id,
        "payee": W.peer_id,
        "amount": PRICE,
        "accepted_digest": OUT,
        "verdict": raw_digest(pr.verdict),
        **changes,
    }
    t = Tx(**fields)
    return build_block(
        R,
        seq=1,
        prev=GENESIS,
        kind="proposal",
        tx=t,
        link_author=t.payee,
        link_seq=0,
        link_hash="",
        ts=100,
    ).raw


def _verdict(**changes: Any) -> bytes:
    args: dict[str, Any] = {
        "job_id": JOB,
        "job_digest": DIGEST,
        "outcome": "accepted",
        "accepted_digest": OUT,
        "agreeing": [W.peer_id],
        "dissenting": [],
        "now": 100,
    }
    signer = changes.pop("signer", R)
    args.update(changes)
    return build_verdict(signer, **args).raw


def test_payment_refused_when_it_is_not_for_us() -> None:
    pr = Pair()
    why = _refused(pr, pay_message(_proposal(pr, payee=X.peer_id), pr.verdict))
    assert why == ["not a proposal to us"]


def test_payment_refused_at_the_wrong_price_or_without_an_award() -> None:
    pr = Pair()
    for amount in (PRICE + 1, PRICE - 1, 0):
        why = _refused(pr, pay_message(_proposal(pr, amount=amount), pr.verdict))
        assert why == ["no award of ours matches this job, requester and price"]
    pr.awards.clear()
    why = _refused(pr, pay_message(_proposal(pr), pr.verdict))
    assert why == ["no award of ours matches this job, requester and price"]


def test_payment_refused_when_relayed_by_another_peer() -> None:
    pr = Pair()
    why = _refused(pr, pay_message(_proposal(pr), pr.verdict), frm=X.peer_id)
    assert why == ["proposal relayed by another peer"]


@pytest.mark.parametrize(
    "verdict_changes",
    [
        {"outcome": "failed"},
        {"agreeing": [W2.peer_id], "dissenting": [W.peer_id]},
        {"agreeing": [W2.peer_id]},
        {"job_id": job(1)},
        {"accepted_digest": OTHER_HASH},
        {"signer": X},
    ],
)
def test_payment_refused_when_the_verdict_does_not_accept_us(
    verdict_changes: dict[str, Any],
) -> None:
    pr = Pair()
    verdict = _verdict(**verdict_changes)
    # The proposal names this very verdict: only the changed field is wrong.
    prop = _proposal(pr, verdict=raw_digest(verdict))
    why = _refused(pr, pay_message(prop, verdict))
    assert why == ["the verdict does not accept our result for this payment"]
    # The unchanged verdict, named the same way, is accepted.
    ok = _verdict()
    got = pr.w.on_pay(
        pay_message(_proposal(pr, verdict=raw_digest(ok)), ok), R.peer_id, 101, pr.award_price
    )
    assert sends(got, "paid")


def test_payment_refused_when_the_proposal_names_another_verdict() -> None:
    pr = Pair()
    why = _refused(pr, pay_message(_proposal(pr), _verdict(now=101)))
    assert why == ["the verdict does not accept our result for this payment"]
    why = _refused(pr, pay_message(_proposal(pr, verdict=OTHER_HASH), pr.verdict))
    assert why == ["the verdict does not accept our result for this payment"]
    why = _refused(pr, pay_message(_proposal(pr, accepted_digest=OTHER_HASH), pr.verdict))
    assert why == ["the verdict does not accept our result for this payment"]


def test_payment_refused_from_an_excluded_payer() -> None:
    pr = Pair()
    a, b = _fork()
    pr.w.on_fraud(seal_fraud(X, check_fraud(a.raw, b.raw)), 90)
    assert pr.w.ledger.excluded(R.peer_id)
    why = _refused(pr, pay_message(_proposal(pr), pr.verdict))
    assert why == ["payer excluded by a fraud proof"]


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x93\x01\x02\x03",
        codec.encode({"proposal": b"x"}),
        codec.encode({"proposal": b"x", "verdict": b"y", "z": 1}),
        codec.encode({"proposal": "text", "verdict": "text"}),
        codec.encode([1, 2]),
    ],
)
def test_malformed_pay_messages_are_refused(data: bytes) -> None:
    pr = Pair()
    got = pr.w.on_pay(data, R.peer_id, 101, pr.award_price)
    assert refusals(got) and sends(got, "paid") == []


def test_a_pay_message_with_the_verdict_in_place_of_the_proposal_is_refused() -> None:
    pr = Pair()
    got = pr.w.on_pay(pay_message(pr.verdict, pr.verdict), R.peer_id, 101, pr.award_price)
    assert refusals(got) and pr.w.ledger.block_count() == 0


def test_no_agreement_when_the_proposal_itself_reveals_a_fork() -> None:
    pr = Pair()
    prop = _proposal(pr)
    twin = _proposal(pr, amount=PRICE + 1)
    pr.w.on_head(twin, X.peer_id, 100)  # gossip brought the twin first
    got = pr.w.on_pay(pay_message(prop, pr.verdict), R.peer_id, 101, pr.award_price)
    assert pr.w.ledger.excluded(R.peer_id)
    assert sends(got, "paid") == [] and pr.w.ledger.head_seq(W.peer_id) == 0


@pytest.mark.parametrize("side", ["payer", "payee"])
def test_an_excluded_node_refuses_to_sign_instead_of_raising(side: str) -> None:
    pr = Pair()
    own = R if side == "payer" else W
    machine = pr.r if side == "payer" else pr.w
    twin_a, twin_b = (
        build_block(
            own,
            seq=1,
            prev=GENESIS,
            kind="proposal",
            tx=tx(own, X, 1, amount),
            link_author=X.peer_id,
            link_seq=0,
            link_hash="",
            ts=1,
        )
        for amount in (1, 2)
    )
    machine.on_fraud(seal_fraud(X, check_fraud(twin_a.raw, twin_b.raw)), 90)
    assert machine.ledger.excluded(own.peer_id)
    if side == "payer":
        eff = pr.pay()
    else:
        eff = pr.w.on_pay(pay_message(_proposal(pr), pr.verdict), R.peer_id, 101, pr.award_price)
    assert sends(eff, "pay") == [] and sends(eff, "paid") == []


def test_an_agreement_from_another_peer_does_not_settle_a_payment() -> None:
    pr = Pair()
    eff = pr.pay()
    prop = parse_block(eff[0].raw)
    fake = build_block(
        X,
        seq=1,
        prev=GENESIS,
        kind="agreement",
        tx=dataclasses.replace(prop.tx, payee=X.peer_id),
        link_author=R.peer_id,
        link_seq=1,
        link_hash=prop.hash,
        ts=101,
    )
    pr.r.on_paid(fake.raw, X.peer_id, 102)
    assert prop.hash in pr.r.pending
    assert pr.r.account(W.peer_id).earned == 0
    pr.r.on_paid(b"junk", W.peer_id, 102)
    assert prop.hash in pr.r.pending


def test_a_mismatched_agreement_does_not_settle_a_payment() -> None:
    pr = Pair()
    eff = pr.pay()
    prop = parse_block(eff[0].raw)
    bad = agree(Ledger("z"), W, prop, amount=PRICE - 1)
    pr.r.on_paid(bad.raw, W.peer_id, 102)
    assert prop.hash in pr.r.pending
    assert sends(pr.r.tick(100 + RESEND_S), "pay")


def test_restore_resends_what_is_pending() -> None:
    pr = Pair()
    eff = pr.pay()
    store = [e for e in eff if isinstance(e, StoreBlock)]
    rows = [e.value for e in eff if isinstance(e, Persist) and e.table == "payments"]
    # The requester crashed before any answer: a new machine from what was written.
    r2 = LedgerMachine(R, ReputationBook(R.peer_id))
    r2.restore([s.raw for s in store], [], rows)
    assert list(r2.pending) == list(pr.r.pending)
    assert r2.account(R.peer_id).pending_out == PRICE
    resent = sends(r2.tick(1000), "pay")
    assert len(resent) == 1 and resent[0].data == sends(eff, "pay")[0].data
    # ... and never a second proposal for the replica.
    again = r2.pay(
        job_id=JOB, payee=W.peer_id, amount=PRICE, accepted_digest=OUT, verdict=pr.verdict, now=1000
    )
    assert again == []
    # The worker answers the resent message; the restored requester settles.
    got = pr.deliver_pay(resent)
    r2.on_paid(sends(got, "paid")[0].data, W.peer_id, 1001)
    assert not r2.pending and r2.account(W.peer_id).earned == PRICE


def test_restore_does_not_resend_what_was_agreed() -> None:
    pr = Pair()
    eff = pr.pay()
    got = pr.deliver_pay(eff)
    rows = [e.value for e in eff if isinstance(e, Persist) and e.table == "payments"]
    blocks = [e.raw for e in [*eff, *got] if isinstance(e, StoreBlock)]
    # The agreement was written (by sync) but the pending row not yet deleted: no resend.
    r2 = LedgerMachine(R, ReputationBook(R.peer_id))
    r2.restore(blocks, [], rows)
    assert r2.pending == {}
    assert sends(r2.tick(1000), "pay") == []


def test_a_restarted_worker_gives_the_same_agreement_again() -> None:
    pr = Pair()
    eff = pr.pay()
    got = pr.deliver_pay(eff)
    blocks = [e.raw for e in got if isinstance(e, StoreBlock)]
    w2 = LedgerMachine(W, ReputationBook(W.peer_id))
    w2.restore(blocks, [], [])
    again = w2.on_pay(sends(eff, "pay")[0].data, R.peer_id, 500, pr.award_price)
    assert sends(again, "paid")[0].data == sends(got, "paid")[0].data
    assert w2.ledger.head_seq(W.peer_id) == 1


def test_restore_skips_bad_rows_and_keeps_fraud_proofs() -> None:
    a, b = _fork()
    proof = seal_fraud(X, check_fraud(a.raw, b.raw))
    m = LedgerMachine(W, ReputationBook(W.peer_id))
    m.restore([b"junk", a.raw], [b"junk", proof], [{"proposal_hash": OTHER_HASH}])
    assert m.ledger.excluded(A.peer_id) and m.pending == {}
    assert m.ledger.block_count() == 0  # blocks of an excluded author are not taken back


def test_may_trade_with_follows_the_credit_limit_and_exclusion() -> None:
    pr = Pair(credit_base=10)
    assert pr.w.may_trade_with(R.peer_id, 10) and not pr.w.may_trade_with(R.peer_id, 11)
    pr.deliver_paid(pr.deliver_pay(pr.pay()))  # R spent 7
    assert pr.w.may_trade_with(R.peer_id, 3) and not pr.w.may_trade_with(R.peer_id, 4)
    assert pr.w.may_trade_with(W.peer_id, 24)  # W earned 7: balance 7, limit 17
    assert not pr.w.may_trade_with(W.peer_id, 25)
    a, b = _fork()
    pr.w.on_fraud(seal_fraud(X, check_fraud(a.raw, b.raw)), 200)
    assert not pr.w.may_trade_with(R.peer_id, 0)
    assert pr.w.balance_json(R.peer_id)["excluded"] is True
    assert pr.w.balance_json(R.peer_id)["balance"] == 0  # its payments no longer count


# -- replication and fraud through the machine ---------------------------------------------------
def test_fork_seen_by_the_machine_is_published_persisted_and_costs_reputation() -> None:
    m = LedgerMachine(W, ReputationBook(W.peer_id))
    a, b = _fork()
    assert [type(e).__name__ for e in m.on_head(a.raw, X.peer_id, 100)] == ["StoreBlock"]
    eff = m.on_head(b.raw, X.peer_id, 101)
    pubs = [e for e in eff if isinstance(e, Publish)]
    assert [p.topic for p in pubs] == [TOPIC_FRAUD]
    assert open_fraud(pubs[0].data) == check_fraud(a.raw, b.raw)
    assert any(isinstance(e, Persist) and e.table == "frauds" for e in eff)
    assert m.book.score(A.peer_id, 101) < 0.01
    # The same proof from the mesh later is no news.
    assert m.on_fraud(pubs[0].data, 102) == []
    assert m.on_head(b.raw, X.peer_id, 103) == []


def test_fraud_proof_from_the_mesh_excludes_and_is_relayed_once() -> None:
    m = LedgerMachine(W, ReputationBook(W.peer_id))
    a, b = _fork()
    raw = seal_fraud(X, check_fraud(a.raw, b.raw))
    eff = m.on_fraud(raw, 100)
    assert m.ledger.excluded(A.peer_id)
    assert [e.topic for e in eff if isinstance(e, Publish)] == [TOPIC_FRAUD]
    assert m.on_fraud(raw, 101) == []
    bad = bytearray(raw)
    bad[-1] ^= 1
    assert [type(e).__name__ for e in m.on_fraud(bytes(bad), 102)] == ["Log"]


def test_fault_fork_makes_a_second_block_at_the_same_height() -> None:
    pr = Pair()
    pr.r.fault_fork = True
    eff = pr.pay()
    heads = [e.data for e in eff if isinstance(e, Publish) and e.topic == TOPIC_HEADS]
    assert len(heads) == 2
    proof = check_fraud(heads[0], heads[1])
    assert proof.author == R.peer_id and proof.seq == 1
    observer = LedgerMachine(X, ReputationBook(X.peer_id))
    for h in heads:
        observer.on_head(h, R.peer_id, 100)
    assert observer.ledger.excluded(R.peer_id)


def test_a_head_ahead_of_our_copy_asks_the_forwarder_for_the_gap() -> None:
    src = Ledger("src")
    blocks = [propose(src, A, B, j) for j in range(5)]
    m = LedgerMachine(X, ReputationBook(X.peer_id))
    eff = m.on_head(blocks[-1].raw, C.peer_id, 100)
    assert eff == [SyncChain(C.peer_id, A.peer_id, 1, MAX_SYNC_BLOCKS)]
    assert m.on_head(blocks[-2].raw, C.peer_id, 101) == []  # throttled: one request per 2 s
    assert m.on_head(blocks[-2].raw, C.peer_id, 102) == [
        SyncChain(C.peer_id, A.peer_id, 1, MAX_SYNC_BLOCKS)
    ]
    served = [b.raw for b in src.range(A.peer_id, 1, MAX_SYNC_BLOCKS)]
    eff = m.on_blocks(list(reversed(served)), C.peer_id, 103)
    assert [e.seq for e in eff if isinstance(e, StoreBlock)] == [1, 2, 3, 4, 5]
    assert m.ledger.chains[A.peer_id] == blocks
    assert m.on_connected(C.peer_id) == [FetchHeads(C.peer_id)]


def test_serving_heads_and_ranges_is_bounded() -> None:
    src = LedgerMachine(A, ReputationBook(A.peer_id))
    for j in range(MAX_SYNC_BLOCKS + 10):
        src.ledger.append_own(
            A,
            kind="proposal",
            tx=tx(A, B, j),
            link_author=B.peer_id,
            link_seq=0,
            link_hash="",
            ts=j,
        )
    assert src.on_heads_wanted() == [src.ledger.head(A.peer_id).raw]  # type: ignore[union-attr]
    got = src.blocks_for(A.peer_id, 1, 10_000)
    assert len(got) == MAX_SYNC_BLOCKS and parse_block(got[0]).seq == 1
    assert len(src.blocks_for(A.peer_id, MAX_SYNC_BLOCKS + 5, 10_000)) == 6
    assert src.blocks_for(B.peer_id, 1, 5) == []
    reply = encode_blocks(src.ledger.range(A.peer_id, 1, MAX_SYNC_BLOCKS))
    assert len(codec.decode(reply, max_bytes=len(reply))["blocks"]) == MAX_SYNC_BLOCKS


def test_refused_blocks_are_logged_with_the_reason() -> None:
    m = LedgerMachine(X, ReputationBook(X.peer_id))
    eff = m.on_head(b"\x01\x02", C.peer_id, 100)
    assert len(eff) == 1 and isinstance(eff[0], Log) and eff[0].msg == "block refused"
    assert eff[0].fields["reason"].startswith("invalid block:")


def test_tick_announces_our_head_every_announce_period() -> None:
    pr = Pair()
    assert not [e for e in pr.r.tick(1000) if isinstance(e, Publish)]  # nothing of ours yet
    pr.pay(now=1000)
    pubs = [e for e in pr.r.tick(2000) if isinstance(e, Publish)]
    assert len(pubs) == 1 and parse_block(pubs[0].data).author == R.peer_id
    assert not [e for e in pr.r.tick(2001) if isinstance(e, Publish)]
