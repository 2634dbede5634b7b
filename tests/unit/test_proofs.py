"""Wrong-result proofs (PROTOCOL.md §8.8): built by the requester that outvoted a wrong answer,
checkable by anyone, weighed by trust, excluding the worker once they weigh enough."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pmesh.core import codec, topics
from p2pmesh.core.auction import messages as m
from p2pmesh.core.auction import proofs
from p2pmesh.core.crypto import Ed25519Signer
from p2pmesh.core.effects import Persist, Publish
from p2pmesh.core.envelope import seal
from p2pmesh.core.events import MessageReceived
from p2pmesh.errors import DecodeError, ValidationError
from tests.unit.test_auction_flow import JOB_ID, OUT, Mesh, Script, _digest, make_job

REQ = Ed25519Signer(b"\x11" * 32)
W = [Ed25519Signer(bytes([0x20 + i]) * 32) for i in range(6)]
JOB_DIGEST = "sha256:" + "ab" * 32
RIGHT = "sha256:" + "11" * 32
WRONG = "sha256:" + "22" * 32
T = 1_700_000_000


def result(signer: Ed25519Signer, digest: str = RIGHT, **over: Any) -> m.Result:
    fields: dict[str, Any] = {
        "job_id": JOB_ID,
        "job_digest": JOB_DIGEST,
        "status": "exited",
        "exit_code": 0,
        "output_digest": digest,
        "output_size": 10,
        "log_digest": "sha256:" + hashlib.sha256(b"").hexdigest(),
        "log_size": 0,
        "log_truncated": False,
        "run_ms": 10,
        "cpu_ms": 10,
        "max_memory_mb": 1,
        "finished_at": T,
        **over,
    }
    return m.build_result(signer, **fields)


def verdict(agreeing: list[Ed25519Signer], dissenting: list[Ed25519Signer], **over: Any) -> bytes:
    kw: dict[str, Any] = {
        "job_id": JOB_ID,
        "job_digest": JOB_DIGEST,
        "outcome": "accepted",
        "accepted_digest": RIGHT,
        "agreeing": [s.peer_id for s in agreeing],
        "dissenting": [s.peer_id for s in dissenting],
        "now": T,
        **over,
    }
    return m.build_verdict(REQ, **kw).raw


def good_proof() -> proofs.WrongResultProof:
    v = verdict(W[1:4], W[:1])
    agreeing = [result(s).raw for s in W[1:4]]
    return proofs.build_proof(REQ, verdict=v, wrong=result(W[0], WRONG).raw, agreeing=agreeing)


def test_a_proof_names_the_worker_its_output_and_the_signers_who_vouch_for_the_right_one() -> None:
    p = good_proof()
    assert p.worker == W[0].peer_id and p.requester == REQ.peer_id
    assert p.wrong_digest == WRONG and p.accepted_digest == RIGHT
    assert set(p.agreeing) == {s.peer_id for s in W[1:4]}
    assert proofs.parse_proof(p.raw) == p
    assert len(p.raw) < proofs.MAX_PROOF_BYTES


def _bad(**parts: Any) -> None:
    v = parts.pop("verdict", verdict(W[1:4], W[:1]))
    wrong = parts.pop("wrong", result(W[0], WRONG).raw)
    agreeing = parts.pop("agreeing", [result(s).raw for s in W[1:4]])
    signer = parts.pop("signer", REQ)
    body = {"verdict": v, "wrong": wrong, "agreeing": sorted(agreeing)}
    with pytest.raises((DecodeError, ValidationError)):
        proofs.parse_proof(seal(signer, proofs.PROOF_TYPE, body))


def test_proofs_that_do_not_hold_are_refused() -> None:
    _bad(signer=W[5])  # not the verdict's requester
    _bad(wrong=result(W[0]).raw)  # the "wrong" result has the accepted output
    _bad(wrong=result(W[4], WRONG).raw)  # not a dissenter of the verdict
    _bad(wrong=result(W[0], WRONG, exit_code=1).raw)  # a failure proves nothing about outputs
    _bad(wrong=result(W[0], WRONG, job_id="f" * 32).raw)  # another job
    _bad(agreeing=[result(W[1]).raw])  # one agreeing result: no majority shown
    _bad(agreeing=[result(s).raw for s in W[1:3]])  # 2 against 1 is no lead of two
    _bad(agreeing=[result(W[1]).raw, result(W[1], finished_at=T + 1).raw, result(W[2]).raw])
    _bad(agreeing=[result(s, WRONG).raw for s in W[1:4]])  # agreeing on another output
    _bad(agreeing=[result(W[1]).raw, result(W[2]).raw, result(W[4]).raw])  # W4 not agreeing
    _bad(verdict=verdict(W[1:4], W[:1], outcome="failed"))
    _bad(verdict=verdict(W[1:4], W[:1], job_digest="sha256:" + "cd" * 32))
    p = good_proof()
    o = codec.decode(p.raw)
    o["body"]["agreeing"] = list(reversed(o["body"]["agreeing"]))  # not in canonical order
    with pytest.raises((DecodeError, ValidationError)):
        proofs.parse_proof(seal(REQ, proofs.PROOF_TYPE, o["body"]))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=4096))
def test_random_bytes_never_crash_the_parser(data: bytes) -> None:
    assert proofs.try_parse(data) is None


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0), st.integers(min_value=0, max_value=255))
def test_a_flipped_byte_is_refused_never_a_crash(pos: int, value: int) -> None:
    raw = bytearray(good_proof().raw)
    i = pos % len(raw)
    if raw[i] == value:
        return
    raw[i] = value
    assert proofs.try_parse(bytes(raw)) is None


def test_a_proof_weighs_what_we_trust_its_vouching_signers() -> None:
    p = good_proof()
    assert proofs.proof_weight(p, lambda peer: 0.0, "x") == 0.0
    assert proofs.proof_weight(p, lambda peer: 0.0, REQ.peer_id) == 1.0  # our own
    assert proofs.proof_weight(p, lambda peer: 0.0, W[2].peer_id) == 1.0  # we agreed
    trusted = {W[1].peer_id: 0.5, W[2].peer_id: 0.5}
    w = proofs.proof_weight(p, lambda peer: trusted.get(peer, 0.0), "x")
    assert w == pytest.approx(0.75)  # at least one of two half-trusted signers honest
    # The accused's own trust does not count for or against the proof.
    assert proofs.proof_weight(p, lambda peer: 1.0 if peer == W[0].peer_id else 0.0, "x") == 0.0


def test_the_book_excludes_once_distinct_requesters_proofs_weigh_enough() -> None:
    book = proofs.ProofBook("me", exclude_at=0.5)
    p = good_proof()
    assert not book.add(p, 0.3) and not book.excluded(p.worker)
    assert not book.add(p, 0.9)  # the same proof again adds nothing
    assert not book.excluded(p.worker)
    other = Ed25519Signer(b"\x12" * 32)
    v2 = m.build_verdict(
        other,
        job_id="e" * 32,
        job_digest=JOB_DIGEST,
        outcome="accepted",
        accepted_digest=RIGHT,
        agreeing=[s.peer_id for s in W[1:4]],
        dissenting=[W[0].peer_id],
        now=T,
    ).raw
    p2 = proofs.build_proof(
        other,
        verdict=v2,
        wrong=result(W[0], WRONG, job_id="e" * 32).raw,
        agreeing=[result(s, job_id="e" * 32).raw for s in W[1:4]],
    )
    assert book.add(p2, 0.25) and book.excluded(p.worker)
    about = book.about(p.worker)
    assert about["excluded"] and about["weight"] == pytest.approx(0.55)
    assert {d["requester"] for d in about["proofs"]} == {REQ.peer_id, other.peer_id}


def _caught_mesh() -> Mesh:
    # B cheats; C and D agree on the right output: two against one is no lead of two, so E is
    # added, agrees, and the verdict outvotes B by three to one.
    mesh = Mesh(prices=(3, 1, 2, 3, 4, 9))
    mesh.scripts = {"B": Script(output_digest=_digest(b"wrong"))}
    mesh.submit("A", make_job(redundancy=3, budget=40))
    mesh.run_job()
    return mesh


def test_the_requester_that_outvotes_a_wrong_answer_publishes_a_proof_and_excludes_it() -> None:
    mesh = _caught_mesh()
    j = mesh.job()
    assert j.state == "done" and j.accepted_digest == OUT, j.history
    published = [e for e in mesh.effects(Publish, "A") if e.topic == proofs.TOPIC_PROOFS]
    assert len(published) == 1
    p = proofs.parse_proof(published[0].data)
    assert p.worker == mesh.ids["B"] and p.accepted_digest == OUT
    a = mesh.node("A")
    assert a.excluded(mesh.ids["B"]) and not a.excluded(mesh.ids["C"])
    doc = a.reputation(mesh.ids["B"], float(mesh.now))
    assert doc["wrong_result_proofs"]["excluded"]
    assert doc["wrong_result_proofs"]["proofs"][0]["job_id"] == JOB_ID
    assert any(isinstance(e, Persist) and e.table == "proofs" for _, n, e in mesh.done if n == "A")
    # The next job: B's bid is refused at once.
    mesh.submit("A", make_job(redundancy=2, budget=40), job_id="b" * 32)
    mesh.run_job("b" * 32)
    assert mesh.ids["B"] not in mesh.job("b" * 32).replicas


def test_a_stranger_weighs_the_proof_by_its_trust_in_the_signers() -> None:
    mesh = _caught_mesh()
    [raw] = [e.data for e in mesh.effects(Publish, "A") if e.topic == proofs.TOPIC_PROOFS]
    f = mesh.node("F")
    now = float(mesh.now)
    assert f.validate_gossip(proofs.TOPIC_PROOFS, raw, now) == topics.ACCEPT
    assert f.validate_gossip(proofs.TOPIC_PROOFS, raw[:-1], now) == topics.REJECT
    # F has no evidence about A, C, D or E: the proof weighs nothing there.
    f.handle(MessageReceived("wrong-result", raw, mesh.ids["A"]), now)
    assert not f.excluded(mesh.ids["B"])
    # Held already, still accepted (the publisher holds its own before the router checks it),
    # and a second copy changes nothing.
    assert f.validate_gossip(proofs.TOPIC_PROOFS, raw, now) == topics.ACCEPT
    assert [e for e in f.handle(MessageReceived("wrong-result", raw, mesh.ids["A"]), now)] == []
    # G has verified C's work many times: the same proof excludes B there.
    g = Mesh(prices=(3, 1, 2, 3, 4, 9, 9)).node("G")
    for i in range(30):
        g.book.record(mesh.ids["C"], "agreed", int(now), job_id=f"{i:032x}")
    g.handle(MessageReceived("wrong-result", raw, mesh.ids["A"]), now)
    assert g.excluded(mesh.ids["B"])
    assert g.reputation(mesh.ids["B"], now)["wrong_result_proofs"]["weight"] > 0.5


def test_a_restart_keeps_the_exclusion() -> None:
    mesh = _caught_mesh()
    a = mesh.node("A")
    held = a.wrong_result_proofs()
    assert len(held) == 1
    from p2pmesh.core.node import Node, NodeConfig

    fresh = Node(NodeConfig(), a.signer, a.caps, started_at=float(mesh.now))
    fresh.restore(now=float(mesh.now), jobs=a.job_docs(), proofs=held)
    assert fresh.excluded(mesh.ids["B"])
