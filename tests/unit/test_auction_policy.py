"""Tests for p2pmesh/core/auction/strategies.py and selection.py (PROTOCOL.md §7.2, §7.3).

``decide_bid``: every reason in the chain, and that the first failing check is the one reported.
``choose_winners``: the scoring function's numbers, each ranking factor, distinct peers, budget,
exclusion and the tie-break, then properties over random bid sets.
"""

from __future__ import annotations

import hashlib
import itertools
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from p2pmesh.core.auction import messages as m
from p2pmesh.core.auction import sortition
from p2pmesh.core.auction.selection import choose_winners, score
from p2pmesh.core.auction.strategies import (
    CHAIN,
    BidContext,
    decide_bid,
    eta_s,
    image_reference,
)
from p2pmesh.core.capability import Capabilities, Gpu
from p2pmesh.core.crypto import Ed25519Signer
from p2pmesh.core.jobspec import job_from_wire, job_to_wire, parse_job

REQ = Ed25519Signer(b"\x01" * 32)
SELF = Ed25519Signer(b"\x02" * 32).peer_id
JOB_ID = "0123456789abcdef0123456789abcdef"
T = 1_700_000_000
PROPS = settings(max_examples=200, deadline=None)

CAPS = Capabilities(
    addrs=("/ip4/127.0.0.1/tcp/4001",),
    cpus=8,
    cpus_physical=4,
    ram_mb=16384,
    disk_free_mb=100_000,
    load_milli=0,
    gpus=(Gpu("NVIDIA H100 80GB HBM3", 81559, "550.54.15", "9.0"),),
    executors=("docker",),
    price=3,
    max_jobs=2,
    work=True,
    allow_images=("p2pmesh/*",),
    agent="p2pmesh/test",
)


def _offer(
    *,
    deadline_at: int = T + 600,
    exclude: tuple[str, ...] = (),
    select: int | None = None,
    **job: Any,
) -> m.Offer:
    doc: dict[str, Any] = {
        "schema_version": 1,
        "name": "j",
        "image": "p2pmesh/python:3",
        "command": ["true"],
        "max_price": 10,
        "budget": 20,
        **job,
    }
    wire = job_from_wire(job_to_wire(parse_job(doc)))
    return m.build_offer(
        REQ,
        job_id=JOB_ID,
        job=wire,
        created_at=T,
        deadline_at=deadline_at,
        bid_window_s=2,
        round_=0,
        addrs=(),
        exclude=exclude,
        select=select,
    )


OFFER = _offer()
# The lowest threshold that still leaves SELF out of the draw for JOB_ID.
_NOT_DRAWN = sortition.ticket(JOB_ID, SELF)
assert _NOT_DRAWN > 0


def _ctx(*, active: int = 0, net: bool = False, allowed: bool = True, **caps: Any) -> BidContext:
    return BidContext(
        self_id=SELF,
        caps=replace(CAPS, **caps),
        active_jobs=active,
        allow_network=net,
        now=T + 1,
        requester_allowed=allowed,
    )


# -- decide_bid ----------------------------------------------------------------------------------
def test_fits() -> None:
    d = decide_bid(OFFER, _ctx())
    assert d.bid and d.reason == "fits; bidding 3"


@pytest.mark.parametrize(
    ("offer", "ctx", "reason"),
    [
        (OFFER, _ctx(work=False), "work is disabled on this node"),
        (OFFER, replace(_ctx(), self_id=REQ.peer_id), "own job"),
        (_offer(exclude=(SELF,)), _ctx(), "excluded by the requester"),
        (_offer(deadline_at=T + 1), _ctx(), "offer past its deadline"),  # deadline == now
        (_offer(deadline_at=T + 1), replace(_ctx(), now=T + 5), "offer past its deadline"),
        (OFFER, _ctx(executors=()), "no working executor (Docker)"),
        (OFFER, _ctx(executors=("podman",)), "no working executor (Docker)"),
        (_offer(image="evil/miner:1"), _ctx(), "image not allowed: evil/miner:1"),
        (
            OFFER,
            _ctx(allow_images=()),
            "image not allowed: p2pmesh/python:3 (no --allow-image given)",
        ),
        (_offer(network="bridge"), _ctx(), "job asks for network access, not allowed here"),
        (_offer(resources={"cpus": 8.5}), _ctx(), "needs 8.5 CPUs, have 8"),
        (_offer(resources={"ram_gb": 17}), _ctx(), "needs 17408 MiB RAM, have 16384"),
        (_offer(resources={"disk_gb": 100}), _ctx(), "needs 102400 MiB disk, have 100000 free"),
        (_offer(resources={"gpus": 2}), _ctx(), "needs 2 GPUs, have 1"),
        (_offer(resources={"gpus": 1}), _ctx(gpus=()), "needs 1 GPUs, have 0"),
        (
            _offer(resources={"gpus": 1, "gpu_memory_gb": 80}),
            _ctx(),
            "needs 1 GPUs with 81920 MiB each",
        ),
        (OFFER, _ctx(active=2), "busy (2/2 jobs)"),
        (OFFER, _ctx(active=5, max_jobs=1), "busy (5/1 jobs)"),
        (OFFER, _ctx(price=11), "price 11 above max_price 10"),
        (OFFER, _ctx(allowed=False), "requester excluded or past its credit limit"),
        (
            OFFER,
            replace(_ctx(), local_images=frozenset({"p2pmesh/busybox:1"})),
            "image not present: p2pmesh/python:3"
            " (this node neither pulls images nor fetches them from peers)",
        ),
        (
            OFFER,
            replace(_ctx(), local_images=frozenset(), can_fetch_images=True),
            "image not present: p2pmesh/python:3"
            " (the offer names no image ID to fetch it by, and this node does not pull)",
        ),
    ],
)
def test_each_reason(offer: m.Offer, ctx: BidContext, reason: str) -> None:
    d = decide_bid(offer, ctx)
    assert not d.bid
    assert d.reason == reason


@pytest.mark.parametrize(
    ("image", "patterns", "ok"),
    [
        ("p2pmesh/python:3", ("p2pmesh/*",), True),
        ("p2pmesh/python@sha256:" + "a" * 64, ("p2pmesh/*",), True),
        ("python:3.12", ("python:3.*",), True),
        ("python:3.12", ("python:3.1?",), True),
        ("python:3.12", ("python:3.[0-9]2",), True),
        ("python:3.12", ("python:3.12",), True),
        ("python:3.12", ("p2pmesh/*", "python:*"), True),  # any pattern may match
        ("python:3.12", ("python:3.1",), False),  # exact names must match exactly
        ("p2pmesh/python:3", ("P2PMESH/*",), False),  # case-sensitive on every platform
        ("other/p2pmesh/python:3", ("p2pmesh/*",), False),  # anchored at the start
        ("p2pmesh.evil.example/x:1", ("p2pmesh/*",), False),
    ],
)
def test_image_globs(image: str, patterns: tuple[str, ...], ok: bool) -> None:
    d = decide_bid(_offer(image=image), _ctx(allow_images=patterns))
    assert d.bid is ok, d.reason
    if not ok:
        assert d.reason == f"image not allowed: {image}"


def test_network_allowed_when_configured() -> None:
    assert decide_bid(_offer(network="bridge"), _ctx(net=True)).bid


def test_resources_at_the_limit_fit() -> None:
    full = _offer(
        resources={"cpus": 8, "ram_gb": 16, "disk_gb": 97, "gpus": 1, "gpu_memory_gb": 79}
    )
    assert decide_bid(full, _ctx()).bid
    assert decide_bid(_offer(resources={"cpus": 0.5}), _ctx(cpus=1)).bid


def test_gpu_memory_counts_only_big_enough_gpus() -> None:
    small, big = Gpu("small", 8192, "d", "8.6"), Gpu("big", 81920, "d", "9.0")
    offer = _offer(resources={"gpus": 2, "gpu_memory_gb": 16})
    assert decide_bid(offer, _ctx(gpus=(small, big))).reason == "needs 2 GPUs with 16384 MiB each"
    assert decide_bid(offer, _ctx(gpus=(big, big))).bid


def test_price_equal_to_max_price_bids() -> None:
    assert decide_bid(OFFER, _ctx(price=10)).bid
    assert decide_bid(OFFER, _ctx(price=0)).reason == "fits; bidding 0"


# Each chain check paired with a way to make it fail (offer change, context change).
_FAILURES: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    ("_work_enabled", {}, {"work": False}),
    ("_not_own", {}, {"self_id": REQ.peer_id}),
    ("_not_excluded", {"exclude": (SELF,)}, {}),
    ("_selected", {"select": _NOT_DRAWN}, {}),
    ("_still_open", {"deadline_at": T + 1}, {}),
    ("_executor", {}, {"executors": ()}),
    ("_image_allowed", {"image": "evil/x:1"}, {}),
    ("_image_present", {}, {"local_images": frozenset()}),
    ("_service", {"service": {"port": 8080}}, {"service_refusal": "needs root"}),
    ("_network", {"network": "bridge"}, {}),
    ("_resources", {"resources": {"cpus": 64}}, {}),
    ("_capacity", {}, {"active": 9}),
    ("_price", {}, {"price": 99}),
    ("_requester", {}, {"allowed": False}),
]


def test_failure_table_covers_the_chain() -> None:
    assert [name for name, _, _ in _FAILURES] == [c.__name__ for c in CHAIN]


@PROPS
@given(st.sets(st.integers(0, len(_FAILURES) - 1), min_size=1))
def test_first_failing_check_decides(failing: set[int]) -> None:
    offer_kw: dict[str, Any] = {}
    ctx_kw: dict[str, Any] = {}
    for i in failing:
        offer_kw.update(_FAILURES[i][1])
        ctx_kw.update(_FAILURES[i][2])
    # A service job keeps network "none": the two failures cannot be had in one job file.
    assume(not ("service" in offer_kw and "network" in offer_kw))
    job = {
        k: offer_kw.pop(k) for k in ("image", "network", "resources", "service") if k in offer_kw
    }
    offer = _offer(**offer_kw, **job)
    self_id = ctx_kw.pop("self_id", SELF)
    images = ctx_kw.pop("local_images", None)
    refusal = ctx_kw.pop("service_refusal", "")
    ctx = replace(_ctx(**ctx_kw), self_id=self_id, local_images=images, service_refusal=refusal)
    first = CHAIN[min(failing)]
    d = decide_bid(offer, ctx)
    assert not d.bid
    assert d.reason == first(offer, ctx)


def test_eta_grows_with_queue() -> None:
    assert [eta_s(n) for n in range(3)] == [2, 7, 12]


# -- score and choose_winners --------------------------------------------------------------------
def _bid(bidder: str, price: int = 5, eta: int = 2, job_id: str = JOB_ID) -> m.Bid:
    # Selection only reads fields: a bare value object stands in for a signed bid.
    return m.Bid(job_id, "sha256:" + "00" * 32, 0, bidder, price, eta, 1, T, b"")


def _tb(peer: str) -> bytes:
    return hashlib.sha256(f"{JOB_ID}{peer}".encode()).digest()


def _choose(bids: list[m.Bid], **kw: Any) -> list[str]:
    rep: dict[str, float] = kw.pop("rep", {})
    args: dict[str, Any] = {
        "k": 2,
        "budget_left": 1000,
        "max_price": 10,
        "reputation": lambda p: rep.get(p, 0.1),
        "exclude": set(),
        **kw,
    }
    return [b.bidder for b in choose_winners(bids, **args)]


def test_score_formula() -> None:
    # (0.25 + r) × (max_price + 1 − price)/(max_price + 1) × 60/(60 + eta)
    assert score(_bid("a", price=0, eta=0), 0.75, 10) == pytest.approx(1.0)
    assert score(_bid("a", price=10, eta=0), 0.75, 10) == pytest.approx(1 / 11)
    assert score(_bid("a", price=5, eta=60), 0.1, 10) == pytest.approx(0.35 * 6 / 11 * 0.5)
    assert score(_bid("a", price=0, eta=0), 0.0, 0) == pytest.approx(0.25)


def test_reputation_outweighs_a_cheaper_price() -> None:
    # A proven peer at a fair price beats an unknown one undercutting it.
    bids = [_bid("cheap-newcomer", price=1), _bid("proven", price=6)]
    got = _choose(bids, k=1, rep={"cheap-newcomer": 0.0, "proven": 0.9})
    assert got == ["proven"]


def test_newcomer_can_still_win_against_a_much_dearer_proven_peer() -> None:
    bids = [_bid("newcomer", price=0), _bid("proven", price=10)]
    assert _choose(bids, k=1, rep={"newcomer": 0.1, "proven": 0.9}) == ["newcomer"]


def test_lower_price_wins_at_equal_reputation() -> None:
    assert _choose([_bid("a", price=7), _bid("b", price=4)], k=1) == ["b"]


def test_lower_eta_wins_at_equal_price() -> None:
    assert _choose([_bid("a", eta=30), _bid("b", eta=2)], k=1) == ["b"]


def test_winners_are_ordered_best_first() -> None:
    bids = [_bid("c", price=9), _bid("a", price=1), _bid("b", price=5)]
    assert _choose(bids, k=3) == ["a", "b", "c"]


def test_distinct_peers() -> None:
    bids = [_bid("a", price=1), _bid("a", price=2), _bid("b", price=8)]
    assert _choose(bids, k=2) == ["a", "b"]


def test_budget_skips_bids_that_do_not_fit_but_keeps_looking() -> None:
    bids = [_bid("a", price=4), _bid("b", price=5, eta=0), _bid("c", price=9)]
    # a (4) fits, then b (5) no longer fits in 8, c (9) neither: one winner.
    assert _choose(bids, k=3, budget_left=8) == ["a"]
    # A cheaper but slower bid further down still fits what is left.
    bids.append(_bid("d", price=3, eta=600))
    assert _choose(bids, k=3, budget_left=8) == ["a", "d"]
    assert _choose(bids, k=3, budget_left=2) == []


def test_excluded_and_overpriced_bids_never_win() -> None:
    bids = [_bid("a", price=1), _bid("b", price=2), _bid("c", price=11)]
    assert _choose(bids, k=3, exclude={"a"}) == ["b"]


def test_k_caps_the_winners() -> None:
    bids = [_bid(f"p{i}") for i in range(5)]
    assert len(_choose(bids, k=3)) == 3
    assert _choose(bids, k=0) == []


def test_tie_break_is_the_hash_of_job_and_peer() -> None:
    peers = [f"peer{i}" for i in range(6)]
    bids = [_bid(p) for p in peers]
    expected = sorted(peers, key=_tb)
    for perm in itertools.islice(itertools.permutations(bids), 50):
        assert _choose(list(perm), k=6) == expected


def test_tie_break_depends_on_the_job() -> None:
    # Neither side can make one peer always win ties: the order changes from job to job.
    peers = [f"peer{i}" for i in range(8)]
    orders = set()
    for n in range(6):
        job = f"{n:032x}"
        bids = [_bid(p, job_id=job) for p in peers]
        orders.add(tuple(_choose(bids, k=8)))
    assert len(orders) > 1


_BIDS = st.lists(
    st.builds(
        _bid,
        bidder=st.sampled_from([f"p{i}" for i in range(8)]),
        price=st.integers(0, 12),
        eta=st.integers(0, 600),
    ),
    max_size=20,
)


@PROPS
@given(
    bids=_BIDS,
    k=st.integers(0, 9),
    budget=st.integers(0, 60),
    exclude=st.sets(st.sampled_from([f"p{i}" for i in range(8)]), max_size=4),
    rep=st.dictionaries(st.sampled_from([f"p{i}" for i in range(8)]), st.floats(0, 1)),
)
def test_winner_properties(
    bids: list[m.Bid], k: int, budget: int, exclude: set[str], rep: dict[str, float]
) -> None:
    winners = choose_winners(
        bids,
        k=k,
        budget_left=budget,
        max_price=10,
        reputation=lambda p: rep.get(p, 0.1),
        exclude=exclude,
    )
    names = [w.bidder for w in winners]
    assert len(winners) <= k
    assert sum(w.price for w in winners) <= budget
    assert len(set(names)) == len(names)
    assert not set(names) & exclude
    assert all(w in bids and w.price <= 10 for w in winners)
    # Greedy by score: no eligible, affordable, unseen peer was passed over for a worse bid.
    if len(winners) < k:
        spent = sum(w.price for w in winners)
        for b in bids:
            if b.bidder in exclude or b.bidder in names or b.price > 10:
                continue
            assert b.price > budget - spent


@PROPS
@given(bids=_BIDS, k=st.integers(1, 9), budget=st.integers(0, 60), data=st.data())
def test_winners_do_not_depend_on_arrival_order(
    bids: list[m.Bid], k: int, budget: int, data: st.DataObject
) -> None:
    # One bid per peer (the requester keeps the latest per bidder), in any order.
    unique = list({b.bidder: b for b in bids}.values())
    shuffled = data.draw(st.permutations(unique))
    kw: dict[str, Any] = {"k": k, "budget_left": budget, "max_price": 10}
    kw |= {"reputation": lambda p: 0.1, "exclude": set()}
    assert choose_winners(unique, **kw) == choose_winners(list(shuffled), **kw)


@pytest.mark.parametrize(
    ("image", "held"),
    [
        ("p2pmesh/python:3", "p2pmesh/python:3"),
        ("busybox", "busybox:latest"),
        ("localhost:5000/team/tool", "localhost:5000/team/tool:latest"),
        ("localhost:5000/team/tool:2", "localhost:5000/team/tool:2"),
        ("p2pmesh/python@sha256:" + "a" * 64, "p2pmesh/python@sha256:" + "a" * 64),
    ],
)
def test_a_held_image_is_bid_for_under_the_reference_the_engine_lists(
    image: str, held: str
) -> None:
    assert image_reference(image) == held
    ctx = replace(_ctx(allow_images=("*",)), local_images=frozenset({held}))
    assert decide_bid(_offer(image=image), ctx).bid
    missing = replace(ctx, local_images=frozenset({"other:1"}))
    assert decide_bid(_offer(image=image), missing).reason.startswith("image not present")


def test_unknown_local_images_bid_as_before() -> None:
    assert replace(_ctx(), local_images=None).local_images is None
    assert decide_bid(OFFER, replace(_ctx(), local_images=None)).bid


IMAGE_ID = "sha256:" + "cd" * 32


def _offer_with_image_id(image_id: str) -> Any:
    spec = replace(OFFER.job.spec, image_id=image_id)
    return replace(OFFER, job=replace(OFFER.job, spec=spec))


def test_a_worker_lacking_the_image_bids_when_it_can_get_it() -> None:
    lacking = replace(_ctx(), local_images=frozenset({"p2pmesh/python:3"}))
    named = _offer_with_image_id(IMAGE_ID)
    # The name is here but means other bits: the ID decides.
    assert not decide_bid(named, lacking).bid
    assert decide_bid(named, replace(lacking, can_fetch_images=True)).bid
    assert decide_bid(named, replace(lacking, can_pull=True)).bid
    held = replace(_ctx(), local_images=frozenset({IMAGE_ID}))
    assert decide_bid(named, held).bid
