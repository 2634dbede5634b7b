"""Reputation and credibility from evidence each peer can check itself (PROTOCOL.md §8).

Score. A Beta-distribution mean with a pessimistic prior::

    score(p) = (good + PRIOR_GOOD) / (good + bad + PRIOR_GOOD + PRIOR_BAD)

A peer with no evidence scores 0.1: new identities start low, so minting many of them buys
nothing. Evidence decays with a half-life, so recent behaviour weighs more than old.

Evidence kinds and weights (``WEIGHTS``): a verdict of our own that names the peer among the
agreeing workers (good) or the dissenting ones (bad, weighted more: a wrong answer costs the mesh
more than a right one earns); a no-show or silence after an award (bad, lighter: it may be a
crash); a verified fraud proof (ledger issue, overwhelming); a wrong-result proof (§8.8),
weighted by how far we believe it. Verdicts signed by *other* peers
count too, weighted by our own score of their author and never when the author speaks of
itself; unsigned claims never count.

Credibility (Sarmenta's sabotage tolerance, PROTOCOL.md §8.2). Assume at most a fraction ``f``
of workers are saboteurs, each returning a wrong result with some unknown rate ``s``. A worker
that passed ``k`` independent checks and failed none is a saboteur with posterior probability
≈ ``f (1−s)^k / (1−f)``; the chance that its next result is wrong is at most the maximum over
``s`` of ``s · f (1−s)^k / (1−f)``, which is ≈ ``f / ((1−f) · e · (k+1))``. So::

    credibility(p) = 1 − f / ((1 − f) · e · (k + 1))     (0 after any failed check)

and a job with ``redundancy: "auto"`` runs on one worker alone only when its credibility is at
least ``1 − target_error``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

PRIOR_GOOD = 1.0
PRIOR_BAD = 9.0
HALF_LIFE_S = 7 * 24 * 3600.0
ASSUMED_SABOTEUR_FRACTION = 0.2
MAX_ITEMS_KEPT = 50

WEIGHTS = {
    "agreed": 1.0,  # our verdict: the peer's result was in the accepted majority
    "dissented": 4.0,  # our verdict: the peer's result was outvoted
    "no-show": 1.0,  # awarded, then silent, late or gone
    "fraud": 1000.0,  # a verified fraud proof (ledger)
    "proven-wrong": 20.0,  # a wrong-result proof (§8.8), times our belief in it
}
BAD_KINDS = frozenset({"dissented", "no-show", "fraud", "proven-wrong"})
CHECK_KINDS = frozenset({"agreed", "dissented"})


@dataclass(slots=True)
class Evidence:
    good: float = 0.0
    bad: float = 0.0
    updated_at: float = 0.0
    checks_passed: float = 0.0  # decayed count of agreeing verdicts
    checks_failed: float = 0.0
    items: list[dict[str, Any]] = field(default_factory=list)

    def decay_to(self, now: float) -> None:
        if now <= self.updated_at:
            return
        f = math.pow(0.5, (now - self.updated_at) / HALF_LIFE_S)
        self.good *= f
        self.bad *= f
        self.checks_passed *= f
        self.checks_failed *= f
        self.updated_at = now


def score(e: Evidence | None, now: float) -> float:
    if e is None:
        return PRIOR_GOOD / (PRIOR_GOOD + PRIOR_BAD)
    e.decay_to(now)
    return (e.good + PRIOR_GOOD) / (e.good + e.bad + PRIOR_GOOD + PRIOR_BAD)


def credibility(e: Evidence | None, now: float, f: float = ASSUMED_SABOTEUR_FRACTION) -> float:
    if e is None:
        return 1.0 - f
    e.decay_to(now)
    # A quarter of one failed check (say, a dissent reported by a peer we trust moderately)
    # is enough: credibility is about the worst case, not the average.
    if e.checks_failed >= 0.25:
        return 0.0
    return 1.0 - f / ((1.0 - f) * math.e * (e.checks_passed + 1.0))


class ReputationBook:
    """Evidence per peer. Sync and pure: the node feeds it, the auction and views read it."""

    def __init__(self, self_id: str) -> None:
        self.self_id = self_id
        self.evidence: dict[str, Evidence] = {}
        # (job_id, worker) pairs already counted, so a verdict seen twice (ours and gossiped,
        # or two authors about one job) adds evidence only once per source.
        self._counted: set[tuple[str, str, str]] = set()

    def record(
        self,
        peer: str,
        kind: str,
        now: float,
        *,
        weight: float = 1.0,
        job_id: str = "",
        source: str = "",
    ) -> bool:
        if peer == self.self_id or kind not in WEIGHTS or weight <= 0:
            return False
        key = (job_id, peer, source or self.self_id)
        if job_id and key in self._counted:
            return False
        if job_id:
            self._counted.add(key)
            if len(self._counted) > 200_000:
                self._counted.clear()  # bounded memory; duplicates after this are harmless-ish
        e = self.evidence.setdefault(peer, Evidence(updated_at=now))
        e.decay_to(now)
        w = WEIGHTS[kind] * weight
        if kind in BAD_KINDS:
            e.bad += w
        else:
            e.good += w
        if kind == "agreed":
            e.checks_passed += weight
        elif kind in ("dissented", "proven-wrong"):
            e.checks_failed += weight
        e.items.append(
            {
                "at": now,
                "kind": kind,
                "weight": round(weight, 3),
                "job": job_id,
                "source": source or "own",
            }
        )
        del e.items[:-MAX_ITEMS_KEPT]
        return True

    def score(self, peer: str, now: float) -> float:
        return score(self.evidence.get(peer), now)

    def credibility(self, peer: str, now: float, f: float = ASSUMED_SABOTEUR_FRACTION) -> float:
        return credibility(self.evidence.get(peer), now, f)

    def explain(self, peer: str, now: float) -> dict[str, Any]:
        e = self.evidence.get(peer)
        s = score(e, now)
        return {
            "peer_id": peer,
            "reputation": round(s, 4),
            "credibility": round(credibility(e, now), 6),
            "good": round(e.good, 3) if e else 0.0,
            "bad": round(e.bad, 3) if e else 0.0,
            "checks_passed": round(e.checks_passed, 3) if e else 0.0,
            "checks_failed": round(e.checks_failed, 3) if e else 0.0,
            "prior": {"good": PRIOR_GOOD, "bad": PRIOR_BAD},
            "half_life_s": HALF_LIFE_S,
            "evidence": list(e.items) if e else [],
        }
