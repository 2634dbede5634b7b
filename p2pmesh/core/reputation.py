"""Reputation from evidence: a Beta-distribution mean with a pessimistic prior.

A peer with no evidence scores ``PRIOR_GOOD / (PRIOR_GOOD + PRIOR_BAD)`` = 0.1: new identities
start low, so minting many of them buys nothing (the trust issue extends the evidence kinds).
Evidence decays with a half-life so that old behaviour matters less than recent behaviour.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

PRIOR_GOOD = 1.0
PRIOR_BAD = 9.0
HALF_LIFE_S = 7 * 24 * 3600.0


@dataclass(slots=True)
class Evidence:
    good: float = 0.0
    bad: float = 0.0
    updated_at: float = 0.0

    def decayed(self, now: float) -> Evidence:
        if now <= self.updated_at:
            return Evidence(self.good, self.bad, self.updated_at)
        f = math.pow(0.5, (now - self.updated_at) / HALF_LIFE_S)
        return Evidence(self.good * f, self.bad * f, now)


def score(e: Evidence | None, now: float) -> float:
    if e is None:
        return PRIOR_GOOD / (PRIOR_GOOD + PRIOR_BAD)
    d = e.decayed(now)
    return (d.good + PRIOR_GOOD) / (d.good + d.bad + PRIOR_GOOD + PRIOR_BAD)
