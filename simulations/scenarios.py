"""Named scenarios: who the peers are, what they do, and what happens to the network.

``build_plan(name, peers=…, jobs=…, seed=…, fraction=…)`` returns a ``sim.Plan``; ``run`` builds
and runs it. ``fraction`` is the share of peers with the scenario's bad behaviour (its
default is in ``DEFAULT_FRACTION``). Every peer not otherwise described is honest, and every
honest peer both works and asks for work.

=============  =================================================================================
honest         everyone honest, equal machines, equal prices
saboteurs      ``fraction`` lazy saboteurs: each job, with p = 0.5, the same cheap wrong answer
colluders      ``fraction`` colluders in one ring, cheating whenever the ring holds the majority
               of a job's winners (behaviours.py); ``ring_placement`` ``spread`` (default,
               the worst case: each member in a network prefix of its own) or
               ``concentrated`` (the ring in ``sybil_prefixes`` prefixes: one owner's machines)
adaptive       ``fraction`` patient cheaters in one ring: honest for their first 20 jobs, then
               cheating whenever alone or only with the ring (run it with ``redundancy="auto"``)
sybil          ``peers`` honest peers, then ``fraction × peers`` fresh identities of one owner in
               ``sybil_prefixes`` network prefixes join a third into the arrivals, bid the
               honest price and collude; 2 % honest newcomers (own prefixes) join with them;
               measured for an hour
churn          ``fraction`` of the peers come and go (Pareto sessions, log-normal gaps)
free-riders    ``fraction`` never work and ask for work 20× as often as an honest peer
partition      the mesh splits in two (``fraction`` on one side) for the middle third of the
               run, then heals
forkers        ``fraction`` honest workers that fork their ledger (extra, not in the brief)
mixed          everything at once: saboteurs, colluders, free riders, forkers and Sybils at
               ``fraction``/4 each, churn on a quarter of the honest peers
=============  =================================================================================
"""

from __future__ import annotations

import dataclasses
from typing import Any

from p2pmesh.simulations import behaviours as bh
from p2pmesh.simulations.network import NetConfig
from p2pmesh.simulations.sim import Plan, Simulation, own_prefix
from p2pmesh.simulations.workloads import TEMPLATES, WorkloadConfig, arrival_rate

SCENARIOS = (
    "honest",
    "saboteurs",
    "colluders",
    "adaptive",
    "sybil",
    "churn",
    "free-riders",
    "partition",
    "forkers",
    "mixed",
)
DEFAULT_FRACTION = {
    "honest": 0.0,
    "saboteurs": 0.2,
    "colluders": 0.2,
    "adaptive": 0.2,
    "sybil": 0.1,
    "churn": 0.5,
    "free-riders": 0.1,
    "partition": 0.5,
    "forkers": 0.05,
    "mixed": 0.2,
}
SYBIL_WINDOW_S = 3600.0  # the swarm's first simulated hour
SYBIL_PREFIXES = 8  # one owner's machines: a few /24s (1000 and more: a botnet)
NEWCOMER_FRACTION = 0.02  # honest newcomers joining with the swarm, per honest peer
SABOTEUR_P = 0.5
ADAPTIVE_WARMUP = 20  # jobs an adaptive cheater runs honestly first
RING_PLACEMENTS = ("spread", "concentrated")


def _spread(n: int, count: int) -> set[int]:
    """``count`` indices spread evenly over ``0..n-1`` (deterministic, no RNG draw)."""
    if count <= 0:
        return set()
    step = n / count
    return {int(i * step) for i in range(count)}


def build_plan(
    name: str,
    *,
    peers: int = 200,
    jobs: int = 500,
    seed: int = 1,
    fraction: float | None = None,
    redundancy: int | str = 2,
    target_error: float | None = None,
    net: NetConfig | None = None,
    rate: float | None = None,
    utilisation: float = 0.3,
    sybil_prefixes: int = SYBIL_PREFIXES,
    sybil_price: int = bh.HONEST_PRICE,
    newcomer_share: float | None = None,
    newcomer_checks: int | None = None,
    ring_placement: str = "spread",
    **overrides: Any,
) -> Plan:
    """The plan of scenario ``name``. ``overrides`` set ``Plan`` fields directly.

    ``rate`` (jobs per second) or, when None, ``utilisation`` (share of worker slots busy)
    sets the arrival rate; the Sybil join time and the partition are placed within the span
    of the arrivals, so they happen at any scale. ``sybil_prefixes``: how many /24s the
    ``sybil`` swarm comes from, ``sybil_price`` what it bids. ``newcomer_share`` /
    ``newcomer_checks``: every node's ``NodeConfig`` values (None: its defaults; checks 0
    turns the newcomer rule off). ``ring_placement``: where the ``colluders`` ring sits
    (``spread``: a prefix of its own per member; ``concentrated``: ``sybil_prefixes``
    prefixes for the whole ring).
    """
    if name not in SCENARIOS:
        raise ValueError(f"unknown scenario {name!r}; one of: {', '.join(SCENARIOS)}")
    if peers < 3:
        raise ValueError("peers must be at least 3")
    f = DEFAULT_FRACTION[name] if fraction is None else fraction
    if not 0.0 <= f <= 1.0:
        raise ValueError("fraction must be in [0, 1]")
    if ring_placement not in RING_PLACEMENTS:
        raise ValueError(f"ring_placement must be one of: {', '.join(RING_PLACEMENTS)}")
    if not 1 <= sybil_prefixes <= 1 << 16:
        raise ValueError("sybil_prefixes must be in [1, 65536]")
    node: dict[str, Any] = dict(overrides.pop("node", None) or {})
    if newcomer_share is not None:
        node["newcomer_share"] = float(newcomer_share)
    if newcomer_checks is not None:
        node["newcomer_checks"] = int(newcomer_checks)
    prefixes: list[int] = []
    workload = WorkloadConfig(redundancy=redundancy, target_error=target_error)
    behaviours: list[bh.Behaviour] = [bh.honest() for _ in range(peers)]
    churn: list[bh.Churn | None] = [None] * peers
    hooks: list[Any] = []
    sybil_window = None
    # How long the arrivals take at the default utilisation: places mid-run events.
    k = redundancy if isinstance(redundancy, int) else 2
    if rate is None:
        rate = arrival_rate(2 * peers, utilisation, k, TEMPLATES)
    span = jobs / rate

    if name == "saboteurs":
        for i in _spread(peers, round(f * peers)):
            behaviours[i] = bh.saboteur(SABOTEUR_P, lazy=True)
    elif name == "colluders":
        ring = bh.Ring("ring")
        members = sorted(_spread(peers, round(f * peers)))
        for i in members:
            behaviours[i] = bh.colluder(ring)
        if ring_placement == "concentrated":
            # Honest peers keep prefixes of their own; the ring shares a few, numbered below
            # any own prefix (as the sybil swarm's are).
            prefixes = [own_prefix(i) for i in range(peers)]
            for n, i in enumerate(members):
                prefixes[i] = n % sybil_prefixes
    elif name == "adaptive":
        ring = bh.Ring("adaptive")
        for i in _spread(peers, round(f * peers)):
            behaviours[i] = bh.adaptive(ring, warmup=ADAPTIVE_WARMUP)
    elif name == "sybil":
        ring = bh.Ring("sybil")
        count = round(f * peers)
        fresh = max(1, round(NEWCOMER_FRACTION * peers))
        join = span / 3
        # The honest price by default: among strangers a swarm need not undercut anyone to win.
        behaviours += [bh.sybil(ring, join_at=join, price=sybil_price) for _ in range(count)]
        behaviours += [bh.newcomer(join_at=join) for _ in range(fresh)]
        churn += [None] * (count + fresh)
        # Honest peers each in a prefix of their own, the
        # swarm spread round-robin over its few prefixes (numbers below any own prefix), the
        # honest newcomers after the list: their own prefixes again.
        prefixes = [own_prefix(i) for i in range(peers)]
        prefixes += [j % sybil_prefixes for j in range(count)]
        sybil_window = (join, join + SYBIL_WINDOW_S)
    elif name == "churn":
        for i in _spread(peers, round(f * peers)):
            churn[i] = bh.Churn()
    elif name == "free-riders":
        for i in _spread(peers, round(f * peers)):
            behaviours[i] = bh.free_rider()
    elif name == "forkers":
        for i in _spread(peers, round(f * peers)):
            behaviours[i] = bh.forker()
    elif name == "partition":
        minority = round(f * peers) if f <= 0.5 else peers - round(f * peers)
        side = _spread(peers, minority)
        groups = [1 if i in side else 0 for i in range(peers)]
        hooks.append((span / 3, lambda sim, g=groups: sim.split(g)))
        hooks.append((2 * span / 3, lambda sim: sim.heal()))
    elif name == "mixed":
        quarter = round(f * peers / 4)
        ring = bh.Ring("ring")
        sybils = bh.Ring("sybil")
        bad = sorted(_spread(peers, 3 * quarter + max(1, quarter // 4)))
        for n, i in enumerate(bad):
            if n % 4 == 0:
                behaviours[i] = bh.saboteur(SABOTEUR_P, lazy=True)
            elif n % 4 == 1:
                behaviours[i] = bh.colluder(ring)
            elif n % 4 == 2:
                behaviours[i] = bh.free_rider()
            else:
                behaviours[i] = bh.forker()
        honest = [i for i in range(peers) if behaviours[i].name == "honest"]
        for i in honest[::4]:
            churn[i] = bh.Churn()
        behaviours += [bh.sybil(sybils, join_at=span / 3) for _ in range(quarter)]
        churn += [None] * quarter
        sybil_window = (span / 3, span / 3 + SYBIL_WINDOW_S)
    _register_rings(behaviours)

    plan = Plan(
        name=name,
        seed=seed,
        jobs=jobs,
        behaviours=behaviours,
        churn=churn,
        net=net or NetConfig(),
        workload=workload,
        hooks=hooks,
        sybil_window=sybil_window,
        fraction=f,
        rate=rate,
        utilisation=utilisation,
        prefixes=prefixes,
        node=node,
    )
    return dataclasses.replace(plan, **overrides) if overrides else plan


def _register_rings(behaviours: list[bh.Behaviour]) -> None:
    """Rings learn their members' peer IDs once the peers exist (see ``run``)."""
    for b in behaviours:
        if isinstance(b, bh.Colluder):
            b.ring.members.clear()


def make_simulation(plan: Plan) -> Simulation:
    sim = Simulation(plan)
    for p in sim.peers:
        if isinstance(p.behaviour, bh.Colluder):
            p.behaviour.ring.members.add(p.peer_id)
    return sim


def run(name: str, progress: Any = None, **kwargs: Any) -> Any:
    """Build, run and report scenario ``name`` (keyword arguments as ``build_plan``)."""
    return make_simulation(build_plan(name, **kwargs)).run(progress)
