"""How simulated peers behave: the model's side of a worker, never the protocol's.

A behaviour decides only what a real machine owner could decide: the price and policy the node
is configured with, whether it works at all, how often it asks for work, and which output a
container "produces". Everything the protocol does with that (bids, awards, verdicts,
reputation, payments, exclusion) is the real core's reaction.

Outputs are *value classes*: ``"honest"`` for the right answer, ``"wrong:<tag>"`` for a wrong
one. Two replicas agree exactly when they report the same class (peer.py turns classes into
digests). Kinds of bad behaviour:

* ``Saboteur(p)``: each job, with probability ``p`` independently, a wrong answer. ``lazy``
  saboteurs all return the same cheap wrong answer for a job (skipping the work gives the same
  output everywhere, e.g. zeros), so they can outvote; otherwise every wrong answer is unique.
* ``Colluder``: members of one ring return the same wrong answer. Strategy ``"together"`` (the
  default, the strongest simple attack on majority voting): cheat only when the ring holds a
  strict majority of the job's replicas as far as the ring can know them: the winners its
  members' awards name (the reference requester names only the recipient, PROTOCOL.md §7.1),
  its own members among the job's holders (one owner shares their awards out of band) and the
  job's public ``redundancy``; behave honestly otherwise. Against fixed ``k`` it never
  dissents and never loses reputation. Against ``"auto"`` a member alone cannot tell a solo run
  from a spot check, cheats, and is caught by the spot checks. ``"always"``: cheat with
  probability ``p``. ``"adaptive"`` (a patient cheater): honest for its first ``warmup`` jobs,
  then it cheats whenever every replica it can know of is the ring's (alone, or only with
  ring members) and at least as many as the job's ``redundancy`` (1 for ``"auto"``).
* ``Sybil``: one owner's swarm of fresh identities, joining late, colluding as one ring; it
  bids the lowest price (``mixed``) or the honest peers' (``sybil``, where price does not help).
* ``newcomer``: an honest peer that joins late (with a Sybil swarm, to see what the swarm costs
  honest newcomers); it works and does not ask for work.
* ``FreeRider``: never works (``work=False``), asks for work ``requester_weight`` times as often
  as an honest peer and so tries to spend beyond its credit limit.
* ``Forker``: honest worker whose node signs two ledger blocks at one height
  (``NodeConfig(fault_fork_ledger=True)``).
* ``withholder``: computes the right answer and reports it, but never serves its outputs (the
  daemon's ``P2PMESH_FAULT=withhold-outputs``): the requester loses it and never pays it.

Churn (``Churn``) is orthogonal: any peer may come and go with heavy-tailed sessions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

HONEST = "honest"
HONEST_PRICE = 3


@dataclass(frozen=True, slots=True)
class JobSeen:
    """What a worker's owner can know about a job when its container runs.

    ``winners``: the winner list of this worker's award (PROTOCOL.md §7.1: the reference
    requester names only the recipient). ``holders``: every worker awarded the job so far, of
    which an owner can know only its own identities (a ring shares them out of band).
    ``redundancy``: the job's public ``redundancy`` field, an int or ``"auto"``.
    """

    winners: tuple[str, ...]
    holders: tuple[str, ...]
    redundancy: int | str


@dataclass(slots=True)
class Behaviour:
    """An honest peer. Subclasses override ``output`` and the policy fields."""

    name: str = "honest"
    bad: bool = False  # counted on the bad side of the reputation AUC
    work: bool = True
    price: int = HONEST_PRICE
    fork_ledger: bool = False
    withhold_outputs: bool = False  # reports results, refuses every request for the outputs
    requester_weight: float = 1.0  # relative rate at which this peer submits jobs
    join_at: float = 0.0  # seconds after the start when the peer first comes online

    def output(self, peer_idx: int, job: JobSeen, rng: Any) -> str:
        """The value class this worker's container produces for ``job``."""
        return HONEST


@dataclass(slots=True)
class Saboteur(Behaviour):
    p: float = 1.0
    lazy: bool = False

    def output(self, peer_idx: int, job: JobSeen, rng: Any) -> str:
        if rng.random() >= self.p:
            return HONEST
        return "wrong:lazy" if self.lazy else f"wrong:{peer_idx}"


@dataclass(slots=True)
class Ring:
    """A set of identities under one owner, who coordinates them out of band."""

    tag: str
    members: set[str] = field(default_factory=set)


@dataclass(slots=True)
class Colluder(Behaviour):
    ring: Ring = field(default_factory=lambda: Ring("ring"))
    p: float = 1.0
    strategy: str = "together"  # or "always", "adaptive"
    warmup: int = 0  # "adaptive": jobs run honestly before it ever cheats
    jobs_run: int = 0

    def output(self, peer_idx: int, job: JobSeen, rng: Any) -> str:
        self.jobs_run += 1
        if self.strategy == "adaptive":
            if self.jobs_run <= self.warmup:
                return HONEST
            members = self.ring.members
            known = set(job.winners) | {h for h in job.holders if h in members}
            k = job.redundancy if isinstance(job.redundancy, int) else 1
            if not known <= members or len(known) < k:
                return HONEST
        elif self.strategy == "together":
            # What the ring can know: the winners named in its members' awards, its members
            # among the job's holders (shared out of band), and the job's public redundancy
            # ("auto": at least one replica, maybe this one alone).
            members = self.ring.members
            known = set(job.winners) | {h for h in job.holders if h in members}
            ours = sum(1 for w in known if w in members)
            k = job.redundancy if isinstance(job.redundancy, int) else 1
            if 2 * ours <= max(len(known), k):
                return HONEST
        if rng.random() >= self.p:
            return HONEST
        return f"wrong:{self.ring.tag}"


@dataclass(slots=True)
class Churn:
    """Alternating online/offline periods. Sessions are Pareto (heavy-tailed: most are short,
    a few last for days), offline gaps log-normal; both as measured in deployed P2P systems
    (Stutzbach & Rejaie, IMC 2006)."""

    session_min_s: float = 300.0  # Pareto scale x_m
    session_alpha: float = 1.5  # Pareto shape; mean = alpha x_m / (alpha - 1)
    offline_median_s: float = 600.0
    offline_sigma: float = 1.0

    def session(self, rng: Any) -> float:
        return self.session_min_s * rng.paretovariate(self.session_alpha)

    def offline(self, rng: Any) -> float:
        return self.offline_median_s * math.exp(rng.gauss(0.0, self.offline_sigma))

    def online_share(self) -> float:
        """Long-run fraction of time online (used to start peers in a stationary state)."""
        mean_on = self.session_alpha * self.session_min_s / (self.session_alpha - 1)
        mean_off = self.offline_median_s * math.exp(self.offline_sigma**2 / 2)
        return mean_on / (mean_on + mean_off)


def honest() -> Behaviour:
    return Behaviour()


def saboteur(p: float = 1.0, *, lazy: bool = False) -> Behaviour:
    return Saboteur(name="saboteur", bad=True, p=p, lazy=lazy)


def colluder(ring: Ring, *, p: float = 1.0, strategy: str = "together") -> Behaviour:
    return Colluder(name="colluder", bad=True, ring=ring, p=p, strategy=strategy)


def adaptive(ring: Ring, *, warmup: int = 20) -> Behaviour:
    return Colluder(name="adaptive", bad=True, ring=ring, strategy="adaptive", warmup=warmup)


def sybil(ring: Ring, *, join_at: float, price: int = 1) -> Behaviour:
    # Sybils exist to win work, not to ask for it.
    return Colluder(
        name="sybil", bad=True, ring=ring, price=price, join_at=join_at, requester_weight=0.0
    )


def newcomer(*, join_at: float) -> Behaviour:
    # Joins to work: its own demand before it joins would only be arrivals lost offline.
    return Behaviour(name="newcomer", join_at=join_at, requester_weight=0.0)


def free_rider(weight: float = 20.0) -> Behaviour:
    return Behaviour(name="free-rider", bad=True, work=False, requester_weight=weight)


def forker() -> Behaviour:
    return Behaviour(name="forker", bad=True, fork_ledger=True)


def withholder() -> Behaviour:
    return Behaviour(name="withholder", bad=True, withhold_outputs=True)
