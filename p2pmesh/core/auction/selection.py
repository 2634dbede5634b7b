"""Scoring bids and choosing winners (PROTOCOL.md §7.3).

    score(bid) = (0.25 + reputation) × (max_price + 1 − price) / (max_price + 1) × 60 / (60 + eta_s)

Reputation (0..1) weighs most: a cheap bid from an unproven peer does not beat a fair bid from a
proven one, yet the 0.25 floor lets new peers win work at all. Price and ETA enter linearly and
hyperbolically. Ties break on sha256(job_id ‖ peer_id), which neither side can steer for a given
job. Winners are the best ``k`` distinct bidders whose prices fit in the remaining budget, and,
when ``prefix`` is given, at most one per network prefix (admission.py, PROTOCOL.md §8.6).

With ``newcomers`` (newcomers.py, PROTOCOL.md §8.9) only *established* bidders are ranked so;
*newcomers* take at most one slot per decision, with probability ``newcomers.share``, drawn by
lottery per prefix and not by price, and fill whatever the established bidders leave empty.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

from p2pmesh.core.auction.messages import Bid
from p2pmesh.core.auction.newcomers import Newcomers, lottery


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
    newcomers: Newcomers | None = None,
) -> list[Bid]:
    """``taken``: prefixes the job's live replicas already hold (a replacement must differ).
    ``newcomers``: the newcomer rule for this decision; None ranks every bidder by score."""
    ranked = sorted(
        (b for b in bids if b.bidder not in exclude and b.price <= max_price),
        key=lambda b: (-score(b, reputation(b.bidder), max_price), _tiebreak(b.job_id, b.bidder)),
    )
    pick = _Picker(k, budget_left, prefix, taken)
    if newcomers is None:
        pick.greedy(ranked, k)
        return pick.winners
    established = [b for b in ranked if newcomers.established(b.bidder)]
    new = [b for b in ranked if not newcomers.established(b.bidder)]
    # One slot at most goes to a newcomer while established bidders could fill it, and only
    # with probability ``share``: a swarm's size buys it nothing beyond that.
    quota = 1 if new and k > 0 and newcomers.admits_newcomer() else 0
    pick.greedy(established, k - quota)
    if quota and len(pick.winners) < k:
        # The admitted slot: every newcomer alike, so that the truly new get in at all.
        _draw(pick, new, newcomers, 0, ramp=False)
    # Slots the established bidders leave empty: newcomers, the best scored here first.
    draw_no = 1
    while len(pick.winners) < k and _draw(pick, new, newcomers, draw_no, ramp=True):
        draw_no += 1
    # The admitted newcomer slot found no newcomer that fits (budget, prefix): established.
    pick.greedy(established, k)
    return pick.winners


def _draw(pick: _Picker, new: list[Bid], newcomers: Newcomers, draw_no: int, *, ramp: bool) -> bool:
    """One lottery draw among the newcomers that fit; False when none fits."""
    fit = [b for b in new if pick.fits(b)]
    if not fit:
        return False
    if ramp:
        # Evidence first, as the score ranks (§7.3): a requester keeps awarding the workers
        # that did right by it, and they become established.
        top = max(newcomers.standing(b.bidder) for b in fit)
        fit = [b for b in fit if newcomers.standing(b.bidder) >= top]
    # Then idle first: a newcomer that says it is busy would often have filled up by the time
    # the award reaches it and decline. A swarm that always claims to be idle gains no ticket
    # by it: the draw is still one per prefix.
    soonest = min(b.eta_s for b in fit)
    fit = [b for b in fit if b.eta_s <= soonest]
    b = lottery(
        fit,
        group=newcomers.group,
        seed=newcomers.seed,
        draw_no=draw_no,
    )
    assert b is not None
    pick.take(b)
    return True


class _Picker:
    """Winners so far and what they used up: distinct bidders, budget, prefixes."""

    def __init__(
        self, k: int, budget_left: int, prefix: Callable[[str], str] | None, taken: set[str] | None
    ) -> None:
        self.k = k
        self.budget_left = budget_left
        self.prefix = prefix
        self.prefixes: set[str] = set(taken or ())
        self.seen: set[str] = set()
        self.winners: list[Bid] = []

    def fits(self, b: Bid) -> bool:
        if b.bidder in self.seen or b.price > self.budget_left:
            return False
        return self.prefix is None or self.prefix(b.bidder) not in self.prefixes

    def take(self, b: Bid) -> None:
        if self.prefix is not None:
            self.prefixes.add(self.prefix(b.bidder))
        self.winners.append(b)
        self.seen.add(b.bidder)
        self.budget_left -= b.price

    def greedy(self, ranked: list[Bid], upto: int) -> None:
        """Best first, as long as fewer than ``upto`` (and ``k``) winners are chosen."""
        for b in ranked:
            if len(self.winners) >= min(upto, self.k):
                break
            if self.fits(b):
                self.take(b)
