"""Scoring bids and choosing winners (PROTOCOL.md §7.3).

    score(bid) = (0.25 + reputation) × (max_price + 1 − price) / (max_price + 1) × 60 / (60 + eta_s)

Reputation (0..1) weighs most: a cheap bid from an unproven peer does not beat a fair bid from a
proven one, yet the 0.25 floor lets new peers win work at all. Price and ETA enter linearly and
hyperbolically. Ties break on sha256(job_id ‖ peer_id), which neither side can steer for a given
job. Winners are the best ``k`` distinct bidders whose prices fit in the remaining budget, and,
when ``prefix`` is given, at most one per network prefix (admission.py, PROTOCOL.md §8.6).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

from p2pmesh.core.auction.messages import Bid


def score(bid: Bid, reputation: float, max_price: int) -> float:
    price_term = (max_price + 1 - bid.price) / (max_price + 1)
    return (0.25 + reputation) * price_term * 60.0 / (60.0 + bid.eta_s)


def _tiebreak(job_id: str, peer_id: str) -> bytes:
    return hashlib.sha256(f"{job_id}{peer_id}".encode()).digest()


def choose_winners(
    bids: list[Bid],
    *,
    k: int,
    budget_left: int,
    max_price: int,
    reputation: Callable[[str], float],
    exclude: set[str],
    prefix: Callable[[str], str] | None = None,
    taken: set[str] | None = None,
) -> list[Bid]:
    """``taken``: prefixes the job's live replicas already hold (a replacement must differ)."""
    ranked = sorted(
        (b for b in bids if b.bidder not in exclude and b.price <= max_price),
        key=lambda b: (-score(b, reputation(b.bidder), max_price), _tiebreak(b.job_id, b.bidder)),
    )
    winners: list[Bid] = []
    seen: set[str] = set()
    prefixes: set[str] = set(taken or ())
    for b in ranked:
        if len(winners) == k:
            break
        if b.bidder in seen or b.price > budget_left:
            continue
        if prefix is not None:
            p = prefix(b.bidder)
            if p in prefixes:
                continue
            prefixes.add(p)
        winners.append(b)
        seen.add(b.bidder)
        budget_left -= b.price
    return winners
