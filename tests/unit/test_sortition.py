"""Bidder sortition (PROTOCOL.md §7.12): who may bid, how the draw widens, who refuses what."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from p2pmesh.core.auction import messages as m
from p2pmesh.core.auction import sortition
from p2pmesh.core.auction.requester import Requester
from p2pmesh.core.crypto import Ed25519Signer
from p2pmesh.core.effects import Publish
from p2pmesh.errors import ValidationError
from tests.unit.test_auction_flow import JOB_ID, T0, make_job

REQ = Ed25519Signer(b"\x07" * 32)
WORKERS = [Ed25519Signer(bytes([i + 1]) * 32) for i in range(60)]


def test_ticket_is_the_documented_hash() -> None:
    peer = WORKERS[0].peer_id
    h = hashlib.sha256(b"p2pmesh/select/1\x00" + JOB_ID.encode() + b"\x00" + peer.encode())
    assert sortition.ticket(JOB_ID, peer) == int.from_bytes(h.digest()[:4], "big")
    assert 0 <= sortition.ticket(JOB_ID, peer) < sortition.ALL
    assert sortition.ticket(JOB_ID, peer) != sortition.ticket("0" * 32, peer)
    assert sortition.selected(JOB_ID, peer, None)


def test_threshold_draws_about_k_plus_two_and_doubles_each_round() -> None:
    assert sortition.threshold(8, 2, 0) is None  # 8 <= 2 × (2 + 2): not worth a draw
    assert sortition.threshold(0, 2, 0) is None
    s0 = sortition.threshold(1000, 2, 0)
    s1 = sortition.threshold(1000, 2, 1)
    assert s0 is not None and s1 is not None
    assert s0 == -(-sortition.ALL * 4 // 1000) and s1 == -(-sortition.ALL * 8 // 1000)
    # Widening ends in "everyone" once the draw would keep half of the fitting peers.
    rounds = [sortition.threshold(1000, 2, r) for r in range(10)]
    assert rounds[:7] == sorted(rounds[:7]) and rounds[7] is None


def test_the_draw_is_about_the_size_wanted_and_nested_across_rounds() -> None:
    peers = [f"peer{i}" for i in range(1000)]
    counts = []
    for n in range(300):
        job = f"{n:032x}"
        s0, s1 = sortition.threshold(1000, 2, 0), sortition.threshold(1000, 2, 1)
        r0 = {p for p in peers if sortition.selected(job, p, s0)}
        r1 = {p for p in peers if sortition.selected(job, p, s1)}
        assert r0 <= r1
        counts.append(len(r0))
    mean = sum(counts) / len(counts)
    assert 3.5 < mean < 4.5, mean


def _build_offer(select: int | None = None) -> m.Offer:
    return m.build_offer(
        REQ,
        job_id=JOB_ID,
        job=make_job(),
        created_at=T0,
        deadline_at=T0 + 60,
        bid_window_s=1,
        round_=0,
        addrs=(),
        select=select,
    )


def test_offer_select_field_limits() -> None:
    from p2pmesh.core.envelope import seal

    o = _build_offer()

    def offer(select: Any) -> bytes:
        # Sealed by hand: build_offer itself never writes an out-of-range select.
        body = {
            "job_id": o.job_id,
            "job": o.job.wire(),
            "job_digest": o.job_digest,
            "created_at": o.created_at,
            "deadline_at": o.deadline_at,
            "bid_window_s": 1,
            "round": 0,
            "addrs": [],
            "exclude": [],
            "select": select,
        }
        return seal(REQ, "offer", body)

    assert m.parse_offer(offer(1)).select == 1
    assert m.parse_offer(offer(2**32 - 1)).select == 2**32 - 1
    for bad in (0, 2**32, -1, True, "7"):
        with pytest.raises(ValidationError, match="select"):
            m.parse_offer(offer(bad))
    assert o.select is None and b"select" not in o.raw


def _requester(fitting: list[str], *, sortition_on: bool = True) -> Requester:
    def eligible(job: Any, chosen: Any = None) -> int:
        return sum(1 for p in fitting if chosen is None or chosen(p))

    return Requester(REQ, lambda pid: 0.5, eligible=eligible, sortition=sortition_on, rng=None)


def _offer_of(effects: list[Any], job_id: str = JOB_ID) -> m.Offer:
    raws = [e.data for e in effects if isinstance(e, Publish) and e.topic == m.TOPIC_OFFERS]
    offers = [o for o in map(m.parse_offer, raws) if o.job_id == job_id]
    assert len(offers) == 1
    return offers[0]


def _bid(worker: Ed25519Signer, offer: m.Offer, now: int) -> bytes:
    return m.build_bid(worker, offer, price=3, eta_s=2, capacity=1, now=now).raw


def test_requester_draws_refuses_the_undrawn_and_widens_a_short_round() -> None:
    fitting = [w.peer_id for w in WORKERS]
    req = _requester(fitting)
    offer = _offer_of(req.submit(JOB_ID, make_job(), now=T0, bid_window_s=1, addrs=()))
    assert offer.select == sortition.threshold(60, 2, 0)
    drawn = [w for w in WORKERS if sortition.selected(JOB_ID, w.peer_id, offer.select)]
    undrawn = [w for w in WORKERS if w not in drawn]
    assert undrawn
    req.on_bid(_bid(undrawn[0], offer, T0), undrawn[0].peer_id, T0)
    assert req.jobs[JOB_ID].bids == {}  # refused: not drawn
    # Nobody drawn bids: the same round is asked once more (bids may be on their way), then the
    # draw widens in the same round rather than wait on the same few peers again and again.
    again = _offer_of(req.tick(T0 + 2))
    assert again.raw == offer.raw
    wider = _offer_of(req.tick(T0 + 10))
    assert wider.round == 0 and wider.select is not None and wider.select > offer.select
    assert req.jobs[JOB_ID].widened == 1
    # A bid made under the first draw, arriving late, is still good: same round, drawn again.
    req.on_bid(_bid(drawn[0], offer, T0 + 10), drawn[0].peer_id, T0 + 10)
    assert set(req.jobs[JOB_ID].bids) == {drawn[0].peer_id}
    # Every drawn peer has bid: award at once, without waiting out the window.
    drawn1 = [w for w in WORKERS if sortition.selected(JOB_ID, w.peer_id, wider.select)]
    assert set(drawn) < set(drawn1)
    for w in drawn1:
        if w is not drawn[0]:
            req.on_bid(_bid(w, wider, T0 + 10), w.peer_id, T0 + 10)
    assert req.jobs[JOB_ID].state == "awarded"
    assert set(req.jobs[JOB_ID].replicas) <= {w.peer_id for w in drawn1}
    # The count of widenings survives a restart (it sizes every later draw of the job).
    from p2pmesh.core.auction.requester import from_doc, to_doc

    back = from_doc(to_doc(req.jobs[JOB_ID]), REQ.peer_id, T0 + 11)
    assert (back.widened, back.offered_at) == (1, T0 + 10)


def test_small_mesh_or_sortition_off_offers_to_everyone() -> None:
    for req in (
        _requester([w.peer_id for w in WORKERS[:8]]),
        _requester([w.peer_id for w in WORKERS], sortition_on=False),
    ):
        offer = _offer_of(req.submit(JOB_ID, make_job(), now=T0, bid_window_s=1, addrs=()))
        assert offer.select is None


def test_an_undrawn_worker_does_not_bid_and_counts_it_quietly() -> None:
    from p2pmesh.core.auction.provider import Provider
    from p2pmesh.core.effects import Log, SendMessage
    from tests.unit.test_auction_flow import caps_for

    select = sortition.threshold(60, 2, 0)
    drawn = next(w for w in WORKERS if sortition.selected(JOB_ID, w.peer_id, select))
    undrawn = next(w for w in WORKERS if not sortition.selected(JOB_ID, w.peer_id, select))
    offer = _build_offer(select)
    for worker, bids in ((drawn, True), (undrawn, False)):
        p = Provider(worker, allow_network=False)
        out = p.on_offer(offer.raw, caps_for(1), T0)
        assert any(isinstance(e, SendMessage) and e.kind == "bid" for e in out) is bids
        if not bids:
            assert p.declines == {"not selected": 1}
            assert all(e.level == "debug" for e in out if isinstance(e, Log))
            p.on_offer(offer.raw, caps_for(1), T0)  # the same offer again: counted once
            assert p.declines == {"not selected": 1}


def test_protocol_md_vector() -> None:
    # PROTOCOL.md §7.12, "Test vector".
    job, peer = (
        "00112233445566778899aabbccddeeff",
        "12D3KooWQYhTNQdmr3ArTeUHRYzFg94BKyTkoWBDWez9kSCVe2Xo",
    )
    assert len(b"p2pmesh/select/1\x00" + job.encode() + b"\x00" + peer.encode()) == 102
    assert sortition.ticket(job, peer) == 0x64536004 == 1_683_185_668
    assert sortition.threshold(1000, 2, 0) == 17_179_870
    assert sortition.threshold(1000, 2, 1) == 34_359_739  # widened once


def test_slow_bids_make_the_draw_patient() -> None:
    fitting = [w.peer_id for w in WORKERS]
    req = _requester(fitting)
    offer = _offer_of(req.submit(JOB_ID, make_job(), now=T0, bid_window_s=1, addrs=()))
    drawn = [w for w in WORKERS if sortition.selected(JOB_ID, w.peer_id, offer.select)]
    # First bids of earlier offers took 10 s to arrive: the smoothed delay follows them.
    for n in range(30):
        job_id = f"{n + 100:032x}"
        o = _offer_of(req.submit(job_id, make_job(), now=T0, bid_window_s=1, addrs=()), job_id)
        w = next(w for w in WORKERS if sortition.selected(job_id, w.peer_id, o.select))
        req.on_bid(_bid(w, o, T0 + 10), w.peer_id, T0 + 10)
    assert 9.0 < req.bid_delay_s <= 10.0
    # So a drawn offer without bids is asked again, not widened, until 3 delays have passed.
    assert _offer_of(req.tick(T0 + 12)).raw == offer.raw
    assert req.jobs[JOB_ID].widened == 0
    out = req.tick(T0 + 40)
    assert _offer_of(out).select > offer.select and req.jobs[JOB_ID].widened == 1
    assert drawn  # (the draw itself is the other test's subject)


def test_a_drawn_round_for_a_missing_replica_widens_while_the_job_runs() -> None:
    fitting = [w.peer_id for w in WORKERS]
    req = _requester(fitting)
    offer = _offer_of(req.submit(JOB_ID, make_job(), now=T0, bid_window_s=1, addrs=()))
    first = next(w for w in WORKERS if sortition.selected(JOB_ID, w.peer_id, offer.select))
    req.on_bid(_bid(first, offer, T0), first.peer_id, T0)
    # The window closes with one bid of the two wanted: award it, offer round 1 for the other.
    round1 = _offer_of(req.tick(T0 + 1))
    j = req.jobs[JOB_ID]
    assert j.state == "awarded" and len(j.replicas) == 1
    assert round1.round == 1 and round1.select is not None
    # Nobody drawn answers: the job is not left waiting on the same few peers.
    published = [_offer_of(req.tick(t)) for t in (T0 + 3, T0 + 10) if True]
    assert (published[-1].round == 1 and published[-1].select is None) or (
        published[-1].select > round1.select
    )
    assert j.widened >= 1
