"""Node's face (docs/ARCHITECTURE.md): restore, views, stream-server questions, idleness, topic
validators and the ledger snapshot that ``ledger --verify`` checks on a worker thread."""

from __future__ import annotations

import threading

from p2pmesh.core import codec
from p2pmesh.core.auction import messages as m
from p2pmesh.core.effects import Dial, Log, Publish
from p2pmesh.core.events import Ticked
from p2pmesh.core.ledger.block import Tx, build_block
from p2pmesh.core.ledger.chain import check_fraud, seal_fraud
from p2pmesh.core.ledger.payments import TOPIC_FRAUD, TOPIC_HEADS
from p2pmesh.core.node import Node, NodeConfig, verify_ledger
from p2pmesh.core.topics import ACCEPT, IGNORE, REJECT, TOPICS, event_of
from tests.unit.test_auction_flow import JOB_ID, LOG, OUT, T0, Mesh, make_job

OTHER = "00000000000000000000000000000002"


def _done_mesh() -> Mesh:
    mesh = Mesh()
    mesh.submit("A", make_job())
    mesh.run_job()
    assert mesh.job().state == "done"
    return mesh


def test_job_views_are_plain_documents_with_a_role() -> None:
    mesh = _done_mesh()
    a, b = mesh.node("A"), mesh.node("B")
    doc = a.job(JOB_ID)
    assert doc is not None and doc["role"] == "requester" and doc["state"] == "done"
    assert a.job(JOB_ID[:6]) is None and a.job(JOB_ID[:6], prefix=True) == doc
    assert a.job("nope") is None
    assert [d["role"] for d in a.jobs()] == ["requester"]
    work = b.job(JOB_ID)
    assert work is not None and work["role"] == "worker" and work["winners"] == [mesh.ids["B"]]
    out = a.job_outputs(JOB_ID)
    assert out is not None and out["output_digest"] == OUT and out["log_digest"] == LOG
    assert out["log_digests"][0] == LOG and out["job"]["output_digest"] == OUT
    assert b.job_outputs(JOB_ID) is None  # a worker's job is not ours to export
    doc["state"] = "tampered"  # a view is a copy: changing it changes nothing
    assert a.job(JOB_ID)["state"] == "done"  # type: ignore[index]


def test_may_serve_blob_inputs_to_workers_outputs_to_the_requester() -> None:
    mesh = _done_mesh()
    a, b = mesh.node("A"), mesh.node("B")
    inp = make_job().input_refs["run.py"].digest
    assert a.may_serve_blob(mesh.ids["B"], inp)
    assert not a.may_serve_blob(mesh.ids["A"], inp)  # not an awarded worker
    assert b.may_serve_blob(mesh.ids["A"], OUT) and b.may_serve_blob(mesh.ids["A"], LOG)
    assert not b.may_serve_blob(mesh.ids["C"], OUT)  # only the requester gets outputs
    assert not b.may_serve_blob(mesh.ids["A"], inp)


def test_is_idle_follows_open_work_and_pending_payments() -> None:
    mesh = Mesh()
    assert all(n.is_idle() for n in mesh.nodes.values())
    mesh.submit("A", make_job())
    assert not mesh.node("A").is_idle()
    assert mesh.node("B").is_idle()  # a bid waiting for an award is not work
    mesh.run_job()
    mesh.run(5)
    assert all(n.is_idle() for n in mesh.nodes.values())


def test_serve_ledger_answers_only_well_formed_requests() -> None:
    mesh = _done_mesh()
    a = mesh.node("A")
    heads = a.serve_ledger({"heads": True})
    assert heads and all(isinstance(h, bytes) for h in heads)
    own = a.chain(a.peer_id)
    assert len(own) == 2  # one proposal per agreeing worker
    assert a.serve_ledger({"author": a.peer_id, "first": 1, "last": 9}) == [b.raw for b in own]
    for bad in (
        {"author": a.peer_id, "first": 0, "last": 1},
        {"author": a.peer_id, "first": 2, "last": 1},
        {"author": a.peer_id, "first": True, "last": 1},
        {"author": 7, "first": 1, "last": 1},
        {"heads": 1},
        ["heads"],
        None,
    ):
        assert a.serve_ledger(bad) == [], bad


def test_restore_rebuilds_jobs_ledger_and_peers_and_skips_damaged_documents() -> None:
    mesh = _done_mesh()
    old = mesh.node("A")
    fresh = Node(NodeConfig(), old.signer, old.caps, started_at=float(mesh.now))
    records = mesh.node("B").records()[:1]
    jobs = [*old.job_docs(), ("requester", {"job_id": OTHER, "k": 2}), ("nobody", {})]
    out = fresh.restore(
        now=float(mesh.now),
        records=records,
        blocks=[b.raw for a in old.chain_authors() for b in old.chain(a)],
        jobs=jobs,
    )
    assert fresh.job(JOB_ID) == old.job(JOB_ID)
    assert fresh.balances() == old.balances()
    assert fresh.peer(mesh.ids["B"], mesh.now) is not None
    assert any(isinstance(e, Dial) for e in out)  # a restored peer is dialled again
    errors = [e for e in out if isinstance(e, Log) and e.msg == "could not restore job"]
    assert [e.fields["job"] for e in errors] == [OTHER, "?"]
    # Our own stored verdict rebuilt the reputation evidence it gave.
    b = mesh.ids["B"]
    assert fresh.reputation(b, mesh.now)["reputation"] == old.reputation(b, mesh.now)["reputation"]
    assert fresh.is_idle()


def test_ledger_snapshot_is_verified_while_the_node_adds_blocks() -> None:
    mesh = _done_mesh()
    a = mesh.node("A")
    snap = a.ledger_snapshot()
    blocks_then = sum(len(c) for c in snap.chains.values())
    result: dict[str, object] = {}
    worker = threading.Thread(target=lambda: result.update(verify_ledger(snap)))
    worker.start()
    # Meanwhile the owner goes on: a new job, new proposals, new chains.
    mesh.submit("A", make_job(), job_id=OTHER)
    mesh.run_job(OTHER)
    worker.join()
    assert result["ok"] is True, result
    assert result["blocks"] == blocks_then < sum(len(a.chain(x)) for x in a.chain_authors())
    assert result["balances_sum"] == 0 and result["balances_match"] is True
    assert verify_ledger(a.ledger_snapshot())["ok"] is True
    # A snapshot whose balances disagree with its chains is reported.
    off = type(snap)(snap.chains, snap.frauds, {**snap.balances, a.peer_id: 1})
    bad = verify_ledger(off)
    assert bad["ok"] is False and bad["problems"]


# -- topic validators: REJECT what is invalid whatever the time, IGNORE what is stale ------------
def _published(mesh: Mesh, topic: str) -> list[bytes]:
    return [e.data for _, _, e in mesh.done if isinstance(e, Publish) and e.topic == topic]


def test_offer_and_verdict_validators() -> None:
    mesh = _done_mesh()
    b = mesh.node("B")
    offer = _published(mesh, m.TOPIC_OFFERS)[0]
    check = b.validate_gossip
    assert check(m.TOPIC_OFFERS, offer, T0) is ACCEPT
    assert check(m.TOPIC_OFFERS, offer, T0 + 300) is IGNORE  # past its deadline
    assert check(m.TOPIC_OFFERS, offer, T0 - 600) is IGNORE  # from the future at our clock
    assert check(m.TOPIC_OFFERS, offer[:-1] + bytes([offer[-1] ^ 1]), T0) is REJECT
    assert check(m.TOPIC_OFFERS, b"\x80", T0) is REJECT
    verdict = _published(mesh, m.TOPIC_VERDICTS)[0]
    assert check(m.TOPIC_VERDICTS, verdict, mesh.now) is ACCEPT
    assert check(m.TOPIC_VERDICTS, verdict, T0 - 600) is IGNORE
    assert check(m.TOPIC_VERDICTS, offer, mesh.now) is REJECT  # an offer is no verdict
    assert len(b.jobs()) == 1  # validators change nothing


def test_head_and_fraud_validators() -> None:
    mesh = _done_mesh()
    a, c = mesh.node("A"), mesh.node("C")
    head = a.chain(a.peer_id)[-1]
    assert c.validate_gossip(TOPIC_HEADS, head.raw, mesh.now) is ACCEPT
    # Held already, still forwarded: the periodic head re-announcement is the catch-up path.
    assert c.validate_gossip(TOPIC_HEADS, head.raw, mesh.now + 10**6) is ACCEPT
    assert c.validate_gossip(TOPIC_HEADS, head.raw[:-2], mesh.now) is REJECT
    signer, t = a.signer, head.tx
    twin = build_block(
        signer,
        seq=head.seq,
        prev=head.prev,
        kind=head.kind,
        tx=Tx(t.job_id, t.payer, t.payee, t.amount + 1, t.accepted_digest, t.verdict),
        link_author=head.link_author,
        link_seq=head.link_seq,
        link_hash=head.link_hash,
        ts=head.ts + 1,
    )
    proof = seal_fraud(c.signer, check_fraud(head.raw, twin.raw))
    assert c.validate_gossip(TOPIC_FRAUD, proof, mesh.now) is ACCEPT
    eff = c.handle(event_of(TOPIC_FRAUD, proof, mesh.ids["B"]), mesh.now)
    assert c.excluded(a.peer_id)
    # C publishes its own sealed copy, and it must pass C's own validator: GossipSub validates
    # a node's own publications, and C excluded A before publishing (an IGNORE here once
    # dropped every fraud proof at its publisher).
    own = [e.data for e in eff if isinstance(e, Publish) and e.topic == TOPIC_FRAUD]
    assert len(own) == 1
    assert c.validate_gossip(TOPIC_FRAUD, own[0], mesh.now) is ACCEPT
    assert c.validate_gossip(TOPIC_FRAUD, proof, mesh.now) is ACCEPT  # forwarded, changes nothing
    again = c.handle(event_of(TOPIC_FRAUD, proof, mesh.ids["B"]), mesh.now)
    assert not [e for e in again if isinstance(e, Publish)]  # published once only
    assert c.validate_gossip(TOPIC_FRAUD, codec.encode({"x": 1}), mesh.now) is REJECT
    c.handle(Ticked(), mesh.now)


def test_every_topic_has_a_kind_and_makes_the_right_event() -> None:
    kinds = {t.name: t.kind for t in TOPICS}
    assert kinds["p2pmesh/capabilities/1"] == "record"
    assert event_of("p2pmesh/capabilities/1", b"r", "p").source == "gossip"  # type: ignore[union-attr]
    assert event_of(m.TOPIC_OFFERS, b"o", "p").kind == "offer"  # type: ignore[union-attr]


def test_eligible_bidders_use_the_bid_policys_own_fit_test() -> None:
    from dataclasses import replace

    from p2pmesh.core.auction.strategies import job_fits
    from p2pmesh.core.capability import Gpu, build_record
    from p2pmesh.core.crypto import Ed25519Signer
    from p2pmesh.core.events import RecordReceived
    from tests.unit.test_auction_flow import caps_for

    a = Node(NodeConfig(), Ed25519Signer(bytes([9]) * 32), caps_for(0), started_at=float(T0))
    job = make_job(resources={"disk_gb": 50, "gpus": 1, "gpu_memory_gb": 16})
    big = Gpu("big", 40_960, "d", "9.0")
    peers = {
        "fits": replace(caps_for(1), gpus=(big,)),
        "small disk": replace(caps_for(2), gpus=(big,), disk_free_mb=10_000),
        "small gpu": replace(caps_for(3), gpus=(Gpu("small", 8192, "d", "8.6"),)),
        "no gpu": caps_for(4),
    }
    for i, caps in enumerate(peers.values()):
        signer = Ed25519Signer(bytes([20 + i]) * 32)
        rec = build_record(signer, caps, seq=1, now=T0, ttl_s=300)
        a.handle(RecordReceived(rec.raw, "gossip"), float(T0))
    reasons = {k: job_fits(c, job.spec, network_allowed=None) for k, c in peers.items()}
    assert reasons["fits"] is None and all(reasons[k] for k in peers if k != "fits")
    assert a.requester.eligible(job) == 1
