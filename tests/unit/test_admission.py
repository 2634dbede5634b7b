"""Replica diversity by observed network prefix (admission.py, PROTOCOL.md §8.6)."""

from __future__ import annotations

import random

from p2pmesh.core.auction.admission import Prefixes, prefix_of
from p2pmesh.core.auction.messages import Bid
from p2pmesh.core.auction.selection import choose_winners


def test_prefix_of_ipv4_ipv6_and_loopback() -> None:
    assert prefix_of("203.0.113.7") == "ip4:203.0.113.0/24"
    assert prefix_of("203.0.113.250") == prefix_of("203.0.113.1")
    assert prefix_of("203.0.114.1") != prefix_of("203.0.113.1")
    assert prefix_of("2001:db8:1:2::5") == "ip6:2001:db8:1::/48"
    assert prefix_of("2001:db8:1:ffff::1") == prefix_of("2001:db8:1::9")
    assert prefix_of("::ffff:198.51.100.3") == "ip4:198.51.100.0/24"
    # A LAN's addresses are each their own prefix: a lab keeps its replicas.
    for lan in ("10.1.2.3", "172.16.5.4", "192.168.1.20", "100.64.0.9", "fd12:3456::1"):
        assert prefix_of(lan) is None, lan
    for own in (
        "127.0.0.1",
        "127.4.5.6",
        "::1",
        "fe80::1%eth0",
        "0.0.0.0",
        "",
        "nonsense",
        "1" * 100,
    ):
        assert prefix_of(own) is None


def test_unobserved_and_loopback_peers_are_their_own_prefix() -> None:
    p = Prefixes()
    p.observe("a", "127.0.0.1")
    p.observe("b", "127.0.0.1")
    assert p.of("a") != p.of("b")
    assert p.of("never-seen") == "peer:never-seen"
    p.observe("c", "198.51.100.3")
    p.observe("d", "198.51.100.4")
    assert p.of("c") == p.of("d")
    p.observe("c", "::1")  # reconnected over loopback: the last observation counts
    assert p.of("c") != p.of("d")


def test_prefixes_memory_is_bounded() -> None:
    p = Prefixes(max_peers=3)
    for i in range(10):
        p.observe(f"p{i}", f"198.51.{i}.1")
    assert len(p) == 3 and p.observed("p9") == "ip4:198.51.9.0/24" and p.observed("p0") is None


def _bid(job: str, peer: str, price: int = 1) -> Bid:
    return Bid(
        job_id=job,
        job_digest="d",
        round=0,
        bidder=peer,
        price=price,
        eta_s=10,
        capacity=1,
        created_at=0,
        raw=b"",
    )


def test_winners_come_from_distinct_prefixes_property() -> None:
    rng = random.Random(7)
    for trial in range(300):
        n = rng.randint(1, 30)
        prefix = {f"w{i}": f"net{rng.randint(0, 5)}" for i in range(n)}
        bids = [_bid(f"j{trial}", w, rng.randint(0, 5)) for w in prefix]
        k = rng.randint(1, 6)
        taken = {f"net{rng.randint(0, 5)}"} if rng.random() < 0.3 else set()
        won = choose_winners(
            bids,
            k=k,
            budget_left=100,
            max_price=5,
            reputation=lambda _: 0.5,
            exclude=set(),
            prefix=prefix.__getitem__,
            taken=taken,
        )
        nets = [prefix[b.bidder] for b in won]
        assert len(nets) == len(set(nets)) and not set(nets) & taken
        free = set(prefix.values()) - taken
        assert len(won) == min(k, len(free))  # diversity never starves a job that could fit


def test_without_prefix_rule_selection_is_unchanged() -> None:
    bids = [_bid("j", f"w{i}") for i in range(5)]
    same = {b.bidder: "net" for b in bids}
    plain = choose_winners(
        bids, k=3, budget_left=100, max_price=5, reputation=lambda _: 0.5, exclude=set()
    )
    diverse = choose_winners(
        bids,
        k=3,
        budget_left=100,
        max_price=5,
        reputation=lambda _: 0.5,
        exclude=set(),
        prefix=same.__getitem__,
    )
    assert len(plain) == 3 and [b.bidder for b in diverse] == [plain[0].bidder]
