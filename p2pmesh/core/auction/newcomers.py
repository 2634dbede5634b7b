"""Newcomers get a capped share of a requester's awards, by lottery, per prefix (PROTOCOL.md §8.9).

Among strangers price decides, and a swarm of fresh identities of one owner can always bid as
low as anyone: today it wins most awards the moment it joins. So a requester splits bidders in
two. A bidder is *established* here when this requester's own book (``ReputationBook``: its
verdicts, and others' weighted by its trust in their authors) holds at least ``checks`` passed
checks for it and no failed one; every other bidder is a *newcomer*. Established bidders are
ranked as before (score, prefix diversity). Newcomers get, per award decision, at most one slot
and only with probability ``share``, unless there are too few established bidders to fill the
slots, in which case newcomers fill the rest (so a mesh where everyone is new works as before):
those this requester already scores best first (its reputation score: evidence, not price), so
that it keeps awarding the workers on their way to being established and its established pool
grows (a pure lottery spreads its awards so thin that no worker ever passes three checks with
it, and a swarm then wins as often as in a mesh of strangers); among equals (typically: no
evidence at all), by lottery.

Newcomer slots are drawn by lottery, never by price (price only has to fit ``max_price`` and
the budget): first a *prefix* uniformly among the prefixes the newcomer bidders were observed
from (admission.py), then a bidder uniformly inside it. A thousand identities in eight
prefixes so weigh as much as eight honest newcomers. Every draw is a hash of the job, its round
and the number of replicas awarded so far: reproducible (the simulator stays deterministic, a
restart draws the same), and unsteerable by bidders, who learn the job ID only from the offer
and cannot choose it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from p2pmesh.core.reputation import Evidence

# One award decision in ten admits a newcomer when enough established bidders are there: at
# k = 2 that caps newcomers at 5 % of such awards, whatever their number, while an honest
# newcomer that sees m other newcomer prefixes in the offers it bids on still wins about one
# offer in 10·(m + 1) it bids on, minutes in a busy mesh (docs/SIMULATIONS.md, "sybil").
DEFAULT_SHARE = 0.1
# Three passed checks at one requester: BOINC's adaptive replication asks for a short run of
# valid results before trusting a host; one check could be luck, and an identity that waits
# for three checked jobs per requester has paid for its place in work done right.
DEFAULT_CHECKS = 3
# A failed check that has decayed (or came from an author we barely trust) below a hundredth of
# one of our own no longer counts as one.
FAILED_TOLERANCE = 0.01
_SCALE = float(1 << 64)


def is_established(e: Evidence | None, now: float, checks: int) -> bool:
    """At least ``checks`` passed checks (decayed, as credibility counts them) and no failed
    one. ``checks`` 0 turns the rule off: every bidder is established."""
    if checks <= 0:
        return True
    if e is None:
        return False
    e.decay_to(now)
    return e.checks_failed < FAILED_TOLERANCE and e.checks_passed >= checks


def progress(e: Evidence | None, now: float) -> int:
    """Whole passed checks (decayed) on the way to being established; 0 after a failed one,
    which resets the ramp (as BOINC's adaptive replication does)."""
    if e is None:
        return 0
    e.decay_to(now)
    if e.checks_failed >= FAILED_TOLERANCE:
        return 0
    return int(e.checks_passed)


def _key(seed: bytes, *parts: str) -> bytes:
    return hashlib.sha256(seed + b"\x00" + "\x00".join(parts).encode()).digest()


def draw(seed: bytes, *parts: str) -> float:
    """A number in [0, 1) that only ``seed`` and ``parts`` determine."""
    return int.from_bytes(_key(seed, *parts)[:8], "big") / _SCALE


def decision_seed(job_id: str, round_: int, awarded: int) -> bytes:
    """The seed of one award decision: the job, its offer round and how many replicas it
    has had (a replacement within a round is another decision)."""
    text = f"p2pmesh/newcomers/1\x00{job_id}\x00{round_}\x00{awarded}"
    return hashlib.sha256(text.encode()).digest()


@dataclass(frozen=True, slots=True)
class Newcomers:
    """What ``choose_winners`` needs to apply the rule for one decision."""

    established: Callable[[str], bool]  # peer ID -> established at this requester
    group: Callable[[str], str]  # peer ID -> the prefix it was observed from (its lottery urn)
    share: float  # probability that one slot goes to a newcomer when enough are established
    seed: bytes  # decision_seed(...)
    # peer ID -> this requester's reputation score of it (evidence only, no price): among
    # newcomers, who fills the slots established bidders leave empty first
    standing: Callable[[str], float] = lambda p: 0.0

    def admits_newcomer(self) -> bool:
        return draw(self.seed, "share") < self.share


@dataclass(frozen=True, slots=True)
class NewcomerRule:
    """A requester's settings; ``for_decision`` binds them to its book and one decision."""

    share: float = DEFAULT_SHARE
    checks: int = DEFAULT_CHECKS
    group: Callable[[str], str] | None = None  # None: every peer is its own prefix

    def __post_init__(self) -> None:
        if not 0.0 <= self.share <= 1.0:
            raise ValueError("newcomer share must be in [0, 1]")
        if self.checks < 0:
            raise ValueError("newcomer checks must be >= 0")

    def for_decision(
        self, book: Any, now: float, job_id: str, round_: int, awarded: int
    ) -> Newcomers | None:
        if self.checks <= 0:
            return None  # the rule is off: selection exactly as without it
        checks = self.checks
        evidence = book.evidence
        return Newcomers(
            established=lambda p: is_established(evidence.get(p), now, checks),
            group=self.group or (lambda p: f"peer:{p}"),
            share=self.share,
            seed=decision_seed(job_id, round_, awarded),
            standing=lambda p: book.score(p, now),
        )


def lottery(
    candidates: Iterable[Any],
    *,
    group: Callable[[str], str],
    seed: bytes,
    draw_no: int,
) -> Any | None:
    """One draw among ``candidates`` (bids: ``.bidder``): a prefix uniformly among theirs,
    then a bidder uniformly inside it. None when there is no candidate.

    Uniform by "smallest hash wins": each prefix (then each bidder) gets an independent
    pseudo-random key, so the winner does not depend on the order bids arrived in."""
    by_prefix: dict[str, list[Any]] = {}
    for b in candidates:
        by_prefix.setdefault(group(b.bidder), []).append(b)
    if not by_prefix:
        return None
    n = str(draw_no)
    pick = min(by_prefix, key=lambda p: _key(seed, "prefix", n, p))
    return min(by_prefix[pick], key=lambda b: _key(seed, "bidder", n, b.bidder))
