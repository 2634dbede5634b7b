"""The newcomer rule (PROTOCOL.md §8.9, core/auction/newcomers.py).

Established bidders (enough passed checks here, none failed) are ranked by score; newcomers get
at most one slot per decision, with probability ``share``, by a lottery that draws a prefix
first and a bidder inside it, and fill whatever the established bidders leave empty.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from p2pmesh.core.auction import messages as m
from p2pmesh.core.auction.newcomers import (
    DEFAULT_CHECKS,
    DEFAULT_SHARE,
    NewcomerRule,
    Newcomers,
    decision_seed,
    draw,
    is_established,
    lottery,
    progress,
)
from p2pmesh.core.auction.selection import choose_winners
from p2pmesh.core.node import NodeConfig
from p2pmesh.core.reputation import HALF_LIFE_S, Evidence, ReputationBook
from p2pmesh.daemon.settings import build_settings
from p2pmesh.errors import ConfigError
from tests.unit.test_auction_flow import Mesh, make_job

T = 1_700_000_000


def _bid(bidder: str, price: int = 3, job_id: str = "ab" * 16, eta: int = 2) -> m.Bid:
    # Selection only reads fields: a bare value object stands in for a signed bid.
    return m.Bid(job_id, "sha256:" + "00" * 32, 0, bidder, price, eta, 1, T, b"")


def _rule(
    established: set[str],
    *,
    share: float = DEFAULT_SHARE,
    group: dict[str, str] | None = None,
    seed: bytes = b"s",
) -> Newcomers:
    g = group or {}
    return Newcomers(
        established=lambda p: p in established,
        group=lambda p: g.get(p, f"peer:{p}"),
        share=share,
        seed=seed,
    )


def _choose(bids: list[m.Bid], newcomers: Newcomers | None, **kw: Any) -> list[str]:
    args: dict[str, Any] = {
        "k": 2,
        "budget_left": 10_000,
        "max_price": 10,
        "reputation": lambda p: 0.1,
        "exclude": set(),
        **kw,
    }
    return [b.bidder for b in choose_winners(bids, newcomers=newcomers, **args)]


# -- who is established ---------------------------------------------------------------------------
def test_established_needs_enough_passed_checks_and_no_failed_one() -> None:
    assert not is_established(None, T, 3)
    assert is_established(Evidence(checks_passed=3.0, updated_at=T), T, 3)
    assert not is_established(Evidence(checks_passed=2.9, updated_at=T), T, 3)
    assert not is_established(Evidence(checks_passed=50.0, checks_failed=0.3, updated_at=T), T, 3)
    # Checks decay like all evidence: a worker not seen for a long time is new again.
    old = Evidence(checks_passed=3.0, updated_at=T)
    assert not is_established(old, T + HALF_LIFE_S, 3)
    # 0 turns the rule off: everyone is established, even a stranger.
    assert is_established(None, T, 0)


def test_rule_reads_the_requesters_book() -> None:
    book = ReputationBook("me")
    for n in range(DEFAULT_CHECKS):
        book.record("proven", "agreed", T, job_id=f"j{n}")
    book.record("two", "agreed", T, job_id="a")
    book.record("two", "agreed", T, job_id="b")
    for n in range(5):
        book.record("caught", "agreed", T, job_id=f"c{n}")
    book.record("caught", "dissented", T, job_id="bad")
    nc = NewcomerRule().for_decision(book, T, "ab" * 16, 0, 0)
    assert nc is not None
    assert nc.established("proven")
    assert not nc.established("two") and not nc.established("caught")
    assert not nc.established("stranger")
    assert NewcomerRule(checks=0).for_decision(book, T, "ab" * 16, 0, 0) is None


def test_reputation_view_says_whether_a_peer_is_established() -> None:
    mesh = Mesh(config=NodeConfig())
    node = mesh.node("A")
    doc = node.explain_reputation(mesh.ids["B"], T)
    assert doc["newcomer"] == {
        "established": False,
        "checks_needed": 3,
        "progress": 0,
        "share": 0.1,
        "rule": "on",
    }
    mesh.submit("A", make_job())
    mesh.run_job()  # two workers pass one check each with A
    rows = node.reputation(None, mesh.now)
    assert sorted(r["newcomer"]["progress"] for r in rows) == [1, 1]
    assert not any(r["newcomer"]["established"] for r in rows)


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError):
        NewcomerRule(share=1.5)
    with pytest.raises(ValueError):
        NewcomerRule(checks=-1)
    assert (NodeConfig().newcomer_share, NodeConfig().newcomer_checks) == (0.1, 3)
    for bad in (NodeConfig(newcomer_share=-0.1), NodeConfig(newcomer_checks=-1)):
        with pytest.raises(ValueError):
            bad.validate()


def test_config_keys_and_flags(tmp_path: Path) -> None:
    s = build_settings(tmp_path, {})
    assert (s.newcomer_share, s.newcomer_checks) == (0.1, 3)
    (tmp_path / "config.toml").write_text("newcomer_share = 0.25\nnewcomer_checks = 5\n")
    s = build_settings(tmp_path, {})
    assert (s.newcomer_share, s.newcomer_checks) == (0.25, 5)
    s = build_settings(tmp_path, {"newcomer_share": 0.0, "newcomer_checks": 0})
    assert (s.newcomer_share, s.newcomer_checks) == (0.0, 0)  # a flag of 0 still wins
    (tmp_path / "config.toml").write_text("newcomer_share = 2.0\n")
    with pytest.raises(ConfigError):
        build_settings(tmp_path, {})
    (tmp_path / "config.toml").write_text('newcomer_checks = "3"\n')
    with pytest.raises(ConfigError):
        build_settings(tmp_path, {})


# -- the cap ---------------------------------------------------------------------------------------
def test_at_most_one_newcomer_per_decision_and_about_share_of_decisions() -> None:
    est = {f"e{i}" for i in range(6)}
    bids = [_bid(p) for p in sorted(est)] + [_bid(f"n{i}", price=0) for i in range(50)]
    decisions = 2000
    with_newcomer = 0
    for d in range(decisions):
        got = _choose(bids, _rule(est, seed=decision_seed(f"{d:032x}", 0, 0)), k=3)
        assert len(got) == 3
        new = [p for p in got if p not in est]
        assert len(new) <= 1
        with_newcomer += bool(new)
    # Binomial(2000, 0.1): sd ≈ 13.4, so ± 70 is > 5 sd.
    assert abs(with_newcomer - DEFAULT_SHARE * decisions) < 70


def test_share_zero_never_admits_a_newcomer_while_established_fill_the_slots() -> None:
    est = {"e1", "e2"}
    bids = [_bid("e1"), _bid("e2"), _bid("n1", price=0)]
    for d in range(200):
        assert set(_choose(bids, _rule(est, share=0.0, seed=bytes([d])))) == est


def test_share_one_always_admits_exactly_one_newcomer() -> None:
    est = {"e1", "e2", "e3"}
    bids = [_bid(p) for p in sorted(est)] + [_bid("n1"), _bid("n2")]
    for d in range(200):
        got = _choose(bids, _rule(est, share=1.0, seed=bytes([d])), k=2)
        assert len(got) == 2 and len([p for p in got if p not in est]) == 1


def test_established_are_still_ranked_by_score() -> None:
    est = {"dear", "cheap", "cheapest"}
    bids = [_bid("dear", price=9), _bid("cheap", price=2), _bid("cheapest", price=1)]
    assert _choose(bids, _rule(est, share=0.0)) == ["cheapest", "cheap"]


# -- the lottery -----------------------------------------------------------------------------------
def test_lottery_is_per_prefix_not_per_identity() -> None:
    # 1,000 identities in 8 prefixes against 8 honest newcomers, each in its own prefix: each
    # side holds 8 of the 16 prefixes, so each wins about half of the draws.
    group = {f"s{i}": f"sybil-{i % 8}" for i in range(1000)}
    bids = [_bid(p) for p in group] + [_bid(f"h{i}") for i in range(8)]
    draws = 300
    honest = 0
    for d in range(draws):
        got = _choose(bids, _rule(set(), group=group, seed=decision_seed(f"{d:032x}", 0, 0)), k=1)
        honest += got[0].startswith("h")
    assert abs(honest - draws / 2) < 5 * (draws * 0.25) ** 0.5


def test_price_does_not_enter_the_lottery() -> None:
    # The same draw with any prices that fit: the same winners. Undercutting buys nothing.
    names = [f"n{i}" for i in range(20)]
    rng = random.Random(5)
    for d in range(100):
        seed = bytes([d])
        a = _choose([_bid(p, price=3) for p in names], _rule(set(), seed=seed))
        b = _choose([_bid(p, price=rng.randint(0, 10)) for p in names], _rule(set(), seed=seed))
        assert a == b


def test_lottery_is_deterministic_and_ignores_bid_order() -> None:
    group = {f"n{i}": f"p{i % 5}" for i in range(30)}
    bids = [_bid(p) for p in group]
    first = _choose(bids, _rule(set(), group=group, seed=b"x"), k=3)
    for _ in range(20):
        random.shuffle(bids)
        assert _choose(bids, _rule(set(), group=group, seed=b"x"), k=3) == first
    seeds = {tuple(_choose(bids, _rule(set(), seed=bytes([d])), k=3)) for d in range(30)}
    assert len(seeds) > 10  # another decision, another draw
    assert draw(b"x", "a") == draw(b"x", "a") != draw(b"x", "b")
    assert decision_seed("j", 0, 0) != decision_seed("j", 1, 0) != decision_seed("j", 0, 1)


def test_the_lottery_draws_among_idle_newcomers_first() -> None:
    # A busy bidder (longer ETA) would often decline by the time the award reaches it.
    bids = [_bid("busy1", eta=7), _bid("idle", eta=2), _bid("busy2", eta=12)]
    for d in range(50):
        assert _choose(bids, _rule(set(), seed=bytes([d])), k=1) == ["idle"]
        assert _choose(bids, _rule(set(), seed=bytes([d])), k=3)[0] == "idle"
        assert len(_choose(bids, _rule(set(), seed=bytes([d])), k=3)) == 3


def test_lottery_of_nothing_is_none() -> None:
    assert lottery([], group=str, seed=b"", draw_no=0) is None


# -- an all-new mesh ---------------------------------------------------------------------
def test_newcomers_fill_what_established_bidders_leave() -> None:
    bids = [_bid("e1"), _bid("n1"), _bid("n2"), _bid("n3")]
    for d in range(100):
        got = _choose(bids, _rule({"e1"}, share=0.0, seed=bytes([d])), k=3)
        assert len(got) == 3 and "e1" in got


def test_empty_slots_go_to_the_newcomers_best_scored_here_first() -> None:
    # Without that, a requester whose bidders are all new would spread its awards so thinly
    # that nobody ever passed enough checks with it to become established.
    ramp = {"two": 0.3, "one": 0.2}
    bids = [_bid("two"), _bid("one")] + [_bid(f"n{i}") for i in range(20)]
    for d in range(50):
        nc = Newcomers(
            established=lambda p: False,
            group=lambda p: p,
            share=0.0,
            seed=bytes([d]),
            standing=lambda p: ramp.get(p, 0.1),
        )
        assert _choose(bids, nc, k=3)[:2] == ["two", "one"]
    # The admitted slot beside established bidders treats every newcomer alike.
    est = {f"e{i}" for i in range(3)}
    more = bids + [_bid(p) for p in sorted(est)]
    won = set()
    for d in range(300):
        nc = Newcomers(
            established=est.__contains__,
            group=lambda p: p,
            share=1.0,
            seed=bytes([d % 256, d // 256]),
            standing=lambda p: ramp.get(p, 0.1),
        )
        won |= {p for p in _choose(more, nc, k=2) if p not in est}
    assert len(won) > 10


def test_progress_reads_the_book_and_a_failure_resets_it() -> None:
    book = ReputationBook("me")
    book.record("w", "agreed", T, job_id="a")
    book.record("w", "agreed", T, job_id="b")
    nc = NewcomerRule().for_decision(book, T, "ab" * 16, 0, 0)
    assert nc is not None and nc.standing("w") == book.score("w", T) > nc.standing("x") == 0.1
    assert progress(book.evidence["w"], T) == 2 and progress(None, T) == 0
    book.record("w", "dissented", T, job_id="c")
    assert progress(book.evidence["w"], T) == 0


def test_an_all_new_mesh_fills_every_slot_with_diverse_prefixes() -> None:
    group = {f"n{i}": f"p{i}" for i in range(5)}
    bids = [_bid(p) for p in group]
    for d in range(100):
        got = _choose(bids, _rule(set(), group=group, seed=bytes([d])), k=3, prefix=group.get)
        assert len(got) == 3 == len({group[p] for p in got})


def test_an_all_new_node_mesh_runs_a_job_on_k_workers() -> None:
    # The reference flow with the default config (rule on) and every peer new, as in the demo.
    mesh = Mesh(prices=(3, 3, 3, 3), config=NodeConfig())
    mesh.submit("A", make_job())
    mesh.run_job()
    assert mesh.job().state == "done"
    assert len(mesh.workers()) == 2


# -- properties -------------------------------------------------------------------------
_names = st.sampled_from([f"w{i}" for i in range(12)])
_bids = st.lists(
    st.builds(
        _bid,
        _names,
        price=st.integers(-3, 14),
        job_id=st.sampled_from(["ab" * 16, "", "x"]),
        eta=st.integers(0, 10_000),
    ),
    max_size=20,
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    bids=_bids,
    k=st.integers(0, 6),
    budget=st.integers(-5, 60),
    max_price=st.integers(0, 12),
    share=st.floats(0.0, 1.0),
    established=st.sets(_names),
    prefixes=st.dictionaries(_names, st.sampled_from(["a", "b", "c", ""])),
    diversity=st.booleans(),
    taken=st.sets(st.sampled_from(["a", "b", "c", "peer:w1"])),
    exclude=st.sets(_names, max_size=3),
    seed=st.binary(max_size=8),
)
def test_choose_winners_never_breaks_a_rule(
    bids: list[m.Bid],
    k: int,
    budget: int,
    max_price: int,
    share: float,
    established: set[str],
    prefixes: dict[str, str],
    diversity: bool,
    taken: set[str],
    exclude: set[str],
    seed: bytes,
) -> None:
    def group(p: str) -> str:
        return prefixes.get(p) or f"peer:{p}"

    nc = Newcomers(established=established.__contains__, group=group, share=share, seed=seed)
    kw: dict[str, Any] = {
        "k": k,
        "budget_left": budget,
        "max_price": max_price,
        "reputation": lambda p: 0.5 if p in established else 0.1,
        "exclude": exclude,
        "prefix": group if diversity else None,
        "taken": taken,
    }
    got = choose_winners(bids, newcomers=nc, **kw)
    names = [b.bidder for b in got]
    assert len(names) == len(set(names)) <= max(k, 0)
    assert all(b in bids and b.bidder not in exclude and b.price <= max_price for b in got)
    assert not got or sum(b.price for b in got) <= budget
    if diversity:
        ps = [group(b.bidder) for b in got]
        assert len(ps) == len(set(ps)) and not set(ps) & taken
    # The cap: beyond the one admitted slot, newcomers only fill what established bidders
    # could not. Without budget or prefix limits that is exact.
    new = [b for b in got if b.bidder not in established]
    est_fit = {b.bidder for b in bids if b.bidder in established} - exclude
    est_fit &= {b.bidder for b in bids if b.price <= max_price}
    if not diversity and budget >= 14 * 6 and all(b.price >= 0 for b in bids):
        assert len(new) <= max(1, k - len(est_fit))
        if share == 0.0:
            candidates = {b.bidder for b in bids if b.price <= max_price} - established - exclude
            assert len(new) == min(max(0, k - len(est_fit)), len(candidates))
    assert got == choose_winners(list(reversed(bids)), newcomers=nc, **kw) or _ties(bids)


def _ties(bids: list[m.Bid]) -> bool:
    """Two bids of one bidder: which one counts may depend on order (the requester keeps one
    bid per bidder, so this never happens there)."""
    names = [b.bidder for b in bids]
    return len(names) != len(set(names))


@settings(max_examples=200, deadline=None)
@given(
    n=st.integers(0, 12),
    k=st.integers(1, 4),
    seed=st.binary(max_size=8),
    share=st.floats(0.0, 1.0),
)
def test_all_new_bidders_fill_every_slot_they_can(
    n: int, k: int, seed: bytes, share: float
) -> None:
    group = {f"n{i}": f"p{i % 7}" for i in range(n)}
    bids = [_bid(p) for p in group]
    nc = _rule(set(), share=share, group=group, seed=seed)
    got = _choose(bids, nc, k=k, prefix=group.get)
    assert len(got) == min(k, len(set(group.values())))
    assert len(_choose(bids, nc, k=k)) == min(k, n)
