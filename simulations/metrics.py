"""The numbers a run is judged by, computed from the finished simulation.

Definitions (docs/SIMULATIONS.md, "Metrics"):

* ``accepted_wrong_rate``: jobs that ended ``done`` with an output of a wrong value class,
  over all jobs that ended ``done``.
* ``accepted_wrong_rate_last_quarter``: the same over the jobs submitted in the last quarter of
  the arrivals (by submission order), so a defence that learns shows how well it holds once it
  has learnt.
* ``caught_excluded_p95_s``: for each bad peer that some node excluded (a wrong-result proof or
  a ledger fraud proof: "caught"), the virtual seconds from the first exclusion anywhere until
  95 % of the honest peers exclude it (one that never gets there counts as the run's virtual
  length plus one second); the median over the caught peers. None when nobody was caught.
* ``inconclusive_rate``: jobs that ended ``inconclusive``, over all jobs that ended at all.
* ``mean_redundancy``: replicas awarded per finished job (lost and replaced ones included).
* ``latency_p50_s`` / ``p95`` / ``p99``: virtual seconds from submission to the final state,
  over all finished jobs.
* ``utilisation``: share of the online workers' job slots running a container, averaged over
  the arrival instants (Poisson arrivals see time averages), so the idle tail after the last
  job does not dilute it.
* ``messages_per_job`` / ``bytes_per_job``: protocol messages and their bytes carried by the
  network (every stream message attempt, every gossip delivery, every sync request and answer),
  per submitted job. Blob transfers (inputs, outputs) are not protocol bytes; see ``details``.
* ``gini_honest_earnings``: Gini coefficient of what honest working peers earned, from the
  balances an auditor derives from every chain (``core.ledger.accounts.compute``).
* ``reputation_auc``: probability that a sampled honest peer scores a random honest worker
  above a random bad worker (ties count half), averaged over sampled honest observers; None
  when the run has no bad workers.
* ``sybil_share``: share of awards in the Sybil window (the first simulated hour after the
  swarm joins) that went to Sybil identities; None without Sybils.
* ``honest_newcomer_first_award_p50_s``: median, over the honest newcomers that join with a
  Sybil swarm, of the virtual seconds from joining to the first award; one never awarded counts
  as the whole run's virtual length plus one second (longer than any wait it could have had),
  never as null. None when the run has no honest newcomers.
* ``ledger_zero_sum``: the auditor's balances sum to zero, and so do those of every sampled
  peer's own books.
* ``wall_s``, ``events_per_s``: real seconds of the run, engine callbacks per real second.
"""

from __future__ import annotations

import math
import resource
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from p2pmesh.core.ledger.accounts import compute
from p2pmesh.core.ledger.chain import Ledger

if TYPE_CHECKING:
    from p2pmesh.simulations.sim import Simulation

AUC_OBSERVERS = 50
AUC_TARGETS = 300
BOOKS_SAMPLE = 50

METRIC_KEYS = (
    "accepted_wrong_rate",
    "accepted_wrong_rate_last_quarter",
    "caught_excluded_p95_s",
    "inconclusive_rate",
    "mean_redundancy",
    "latency_p50_s",
    "latency_p95_s",
    "latency_p99_s",
    "utilisation",
    "messages_per_job",
    "bytes_per_job",
    "gini_honest_earnings",
    "reputation_auc",
    "sybil_share",
    "honest_newcomer_first_award_p50_s",
    "ledger_zero_sum",
    "wall_s",
    "events_per_s",
)


@dataclass(slots=True)
class Report:
    scenario: str
    peers: int
    jobs: int
    seed: int
    accepted_wrong_rate: float
    accepted_wrong_rate_last_quarter: float
    caught_excluded_p95_s: float | None
    inconclusive_rate: float
    mean_redundancy: float
    latency_p50_s: float
    latency_p95_s: float
    latency_p99_s: float
    utilisation: float
    messages_per_job: float
    bytes_per_job: float
    gini_honest_earnings: float
    reputation_auc: float | None
    sybil_share: float | None
    honest_newcomer_first_award_p50_s: float | None
    ledger_zero_sum: bool
    wall_s: float
    events_per_s: float
    details: dict[str, Any] = field(default_factory=dict)
    series: dict[str, list[float]] = field(default_factory=dict)  # raw values, for plots

    def to_json(self) -> dict[str, Any]:
        """The ``--json`` document: scenario, peers, jobs, seed and the metric keys only."""
        d = asdict(self)
        d.pop("details")
        d.pop("series")
        return d

    def comparable(self) -> dict[str, Any]:
        """Everything that must replay identically for one seed (no wall-clock figures)."""
        d = asdict(self)
        for k in ("wall_s", "events_per_s"):
            d.pop(k)
        d["details"] = {k: v for k, v in d["details"].items() if k not in _WALL_DETAILS}
        return d


_WALL_DETAILS = frozenset({"peak_rss_mb", "cpu_s"})


def percentile(sorted_values: list[float], q: float) -> float:
    """Linear-interpolated percentile of already sorted values (0 for an empty list)."""
    if not sorted_values:
        return 0.0
    pos = (len(sorted_values) - 1) * q
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def gini(values: list[float]) -> float:
    """Gini coefficient: 0 when everyone has the same, towards 1 when one has everything."""
    xs = sorted(values)
    n = len(xs)
    total = sum(xs)
    if n == 0 or total <= 0:
        return 0.0
    weighted = sum((i + 1) * x for i, x in enumerate(xs))
    return (2 * weighted) / (n * total) - (n + 1) / n


def auc(good: list[float], bad: list[float]) -> float | None:
    """P(score(good) > score(bad)) + ½ P(equal), by ranks (Mann-Whitney U)."""
    if not good or not bad:
        return None
    tagged = sorted([(s, 0) for s in good] + [(s, 1) for s in bad])
    rank_sum_good = 0.0
    i = 0
    while i < len(tagged):
        j = i
        while j < len(tagged) and tagged[j][0] == tagged[i][0]:
            j += 1
        mid_rank = (i + 1 + j) / 2  # ranks i+1..j share their mean
        rank_sum_good += mid_rank * sum(1 for t in tagged[i:j] if t[1] == 0)
        i = j
    n_g, n_b = len(good), len(bad)
    return (rank_sum_good - n_g * (n_g + 1) / 2) / (n_g * n_b)


def _round(x: float | None, digits: int = 6) -> Any:
    return None if x is None else round(x, digits)


def report(sim: Simulation) -> Report:
    now = sim.engine.now
    metas = list(sim.jobs.values())
    final = [m for m in metas if m.final_state]
    done = [m for m in final if m.final_state == "done"]
    wrong = sum(1 for m in done if m.accepted_class == "wrong")
    states: dict[str, int] = {}
    for m in metas:
        key = m.final_state or "unfinished"
        states[key] = states.get(key, 0) + 1
    lat = sorted(m.finished_at - m.submitted_at for m in final)
    lat_done = sorted(m.finished_at - m.submitted_at for m in done)

    online_slots = 0.0
    busy = 0.0
    for p in sim.peers:
        online = p.online_s + (now - p.online_since if p.online else 0.0)
        running = sum(now - started for _, started in p.running.values())
        if p.worker:
            online_slots += online * p.caps.max_jobs
            busy += p.busy_s + running

    n_jobs = max(1, sim.submitted)
    by_submission = sorted(metas, key=lambda m: m.submitted_at)
    last_done = [
        m for m in by_submission[(3 * len(by_submission)) // 4 :] if m.final_state == "done"
    ]
    wrong_last = sum(1 for m in last_done if m.accepted_class == "wrong")
    caught = _caught_excluded(sim, now - sim.engine.start)
    audit = _audit(sim)
    rep_auc = _reputation_auc(sim, now)
    sybil = _sybil_share(sim)
    first_award = _newcomer_first_awards(sim, now - sim.engine.start)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0

    details: dict[str, Any] = {
        "states": dict(sorted(states.items())),
        "submitted": sim.submitted,
        "not_submitted_requester_offline": sim.not_submitted,
        "done": len(done),
        "accepted_wrong": wrong,
        "latency_done_p50_s": _round(percentile(lat_done, 0.5), 3),
        "latency_done_p95_s": _round(percentile(lat_done, 0.95), 3),
        "virtual_s": round(now - sim.engine.start, 3),
        "arrival_rate_per_s": _round(sim.rate, 6),
        "events": sim.engine.events,
        "handled": sim.handled,
        "ticks": sim.ticks,
        "messages_by_kind": dict(sorted(sim.net.by_kind.items())),
        "messages_lost": sim.net.lost,
        "sends_failed": sim.net.failed_sends,
        "blob_bytes_per_job": round(sim.net.blob_bytes / n_jobs, 1),
        "ignored_effects": dict(sorted(sim.net.ignored.items())),
        "gossip_refused": dict(sorted(sim.net.gossip_refused.items())),
        "stored_blocks": sim.stored_blocks,
        "restarts": sum(p.restarts for p in sim.peers),
        "container_s_per_slot_s": _round(busy / online_slots if online_slots else 0.0),
        "core_errors": dict(sorted(sim.core_errors.items())),
        "warnings": dict(sorted(sim.logs.items(), key=lambda kv: -kv[1])[:12]),
        **audit["details"],
        **first_award["details"],
        **caught["details"],
        "peak_rss_mb": round(peak_mb, 1),
        "cpu_s": round(sim.cpu_s, 3),
    }
    return Report(
        scenario=sim.plan.name,
        peers=len(sim.peers),
        jobs=sim.plan.jobs,
        seed=sim.plan.seed,
        accepted_wrong_rate=_round(wrong / len(done) if done else 0.0),
        accepted_wrong_rate_last_quarter=_round(wrong_last / len(last_done) if last_done else 0.0),
        caught_excluded_p95_s=_round(caught["p50"], 3),
        inconclusive_rate=_round(states.get("inconclusive", 0) / len(final) if final else 0.0),
        mean_redundancy=_round(sum(m.replicas for m in final) / len(final) if final else 0.0),
        latency_p50_s=_round(percentile(lat, 0.5), 3),
        latency_p95_s=_round(percentile(lat, 0.95), 3),
        latency_p99_s=_round(percentile(lat, 0.99), 3),
        utilisation=_round(
            sum(sim.util_samples) / len(sim.util_samples) if sim.util_samples else 0.0
        ),
        messages_per_job=_round(sim.net.messages / n_jobs, 3),
        bytes_per_job=_round(sim.net.bytes / n_jobs, 1),
        gini_honest_earnings=_round(audit["gini"]),
        reputation_auc=_round(rep_auc),
        sybil_share=_round(sybil),
        honest_newcomer_first_award_p50_s=_round(first_award["p50"], 3),
        ledger_zero_sum=audit["zero_sum"],
        wall_s=round(sim.wall_s, 3),
        events_per_s=round(sim.engine.events / sim.wall_s, 1) if sim.wall_s > 0 else 0.0,
        details=details,
        series={"latency_s": lat, "honest_earnings": sorted(audit["earned"])},
    )


def _caught_excluded(sim: Simulation, run_s: float) -> dict[str, Any]:
    """How fast the mesh follows a first exclusion of a bad peer (module doc)."""
    honest = {p.idx for p in sim.peers if not p.behaviour.bad}
    need = math.ceil(0.95 * len(honest))
    spans: list[float] = []
    reached = 0
    for p in sim.peers:
        seen = sim.exclusions.get(p.peer_id)
        if not p.behaviour.bad or not seen:
            continue
        first = min(seen.values())
        times = sorted(t for i, t in seen.items() if i in honest)
        if need and len(times) >= need:
            reached += 1
            spans.append(times[need - 1] - first)
        else:
            spans.append(run_s + 1.0 - first)
    spans.sort()
    details: dict[str, Any] = {"caught_bad_peers": len(spans)}
    if spans:
        details["caught_reached_95pct"] = reached
        details["caught_excluded_p95_s_max"] = round(spans[-1], 3)
    return {"p50": percentile(spans, 0.5) if spans else None, "details": details}


def _audit(sim: Simulation) -> dict[str, Any]:
    """An auditor's view: every author's own chain, plus every fraud proof any peer holds."""
    auditor = Ledger("auditor")
    for p in sim.peers:
        if p.node is None:
            continue
        for proof in p.node.fraud_proofs().values():
            auditor.add_fraud(proof)
    refused = 0
    for p in sim.peers:
        if p.node is None:
            continue
        for blk in p.node.chain(p.peer_id):
            if auditor.ingest(blk.raw).status not in ("added", "duplicate", "excluded"):
                refused += 1
    books = compute(auditor)
    sample = [p for p in sim.peers if p.node is not None][:BOOKS_SAMPLE]
    local_ok = all(p.node.balances_sum() == 0 for p in sample if p.node)
    honest_workers = [p for p in sim.peers if p.worker and not p.behaviour.bad]
    earned = [float(books.get(p.peer_id).earned) for p in honest_workers]
    bad_earned = sum(books.get(p.peer_id).earned for p in sim.peers if p.behaviour.bad)
    all_earned = sum(a.earned for a in books.accounts.values())
    free = [p for p in sim.peers if p.behaviour.name == "free-rider"]
    base = sim.peers[0].config.credit_base if sim.peers else 0
    overspend = [
        max(0, -books.get(p.peer_id).balance - (base + books.get(p.peer_id).earned)) for p in free
    ]
    excluded = {a for p in sim.peers if p.node for a in p.node.fraud_proofs()}
    forkers = [p for p in sim.peers if p.behaviour.fork_ledger]
    knows = [sum(1 for q in sim.peers if q.node and q.node.excluded(f.peer_id)) for f in forkers]
    details: dict[str, Any] = {
        "ledger_blocks": auditor.block_count(),
        "ledger_refused": refused,
        "ledger_duplicates": books.duplicates,
        "credits_paid": all_earned,
        "bad_share_of_earnings": round(bad_earned / all_earned, 6) if all_earned else 0.0,
        "excluded_authors": len(excluded),
    }
    if free:
        details["free_riders_spent"] = sum(books.get(p.peer_id).spent for p in free)
        details["free_riders_max_overspend"] = max(overspend)
        details["free_riders_credit_base"] = base
    if forkers:
        details["forkers_known_by_mean_peers"] = round(sum(knows) / len(forkers), 1)
    return {
        "zero_sum": books.total() == 0 and local_ok and refused == 0,
        "gini": gini(earned),
        "earned": earned,
        "details": details,
    }


def _reputation_auc(sim: Simulation, now: float) -> float | None:
    rng = _Rng(sim.plan.seed)
    honest = [p for p in sim.peers if p.worker and not p.behaviour.bad and p.node is not None]
    bad = [p for p in sim.peers if p.worker and p.behaviour.bad]
    if not honest or not bad:
        return None
    observers = rng.sample(honest, min(AUC_OBSERVERS, len(honest)))
    good_t = rng.sample(honest, min(AUC_TARGETS, len(honest)))
    bad_t = rng.sample(bad, min(AUC_TARGETS, len(bad)))
    values = []
    for o in observers:
        node = o.node
        assert node is not None
        g = [node.reputation_of(p.peer_id, now) for p in good_t if p is not o]
        b = [node.reputation_of(p.peer_id, now) for p in bad_t]
        a = auc(g, b)
        if a is not None:
            values.append(a)
    return sum(values) / len(values) if values else None


def _sybil_share(sim: Simulation) -> float | None:
    window = sim.plan.sybil_window
    if window is None:
        return None
    lo, hi = window
    inside = [i for t, i in sim.awards if lo <= t < hi]
    if not inside:
        return 0.0
    return sum(1 for i in inside if sim.peers[i].behaviour.name == "sybil") / len(inside)


def _newcomer_first_awards(sim: Simulation, run_s: float) -> dict[str, Any]:
    """Join-to-first-award waits of the honest newcomers (behaviour ``newcomer``)."""
    fresh = [p.idx for p in sim.peers if p.behaviour.name == "newcomer"]
    if not fresh:
        return {"p50": None, "details": {}}
    first: dict[int, float] = {}
    wanted = set(fresh)
    for t, i in sim.awards:  # in time order
        if i in wanted and i not in first:
            first[i] = t
    never = run_s + 1.0  # longer than any newcomer can have waited: "never", as a number
    waits = sorted(
        first[i] - sim.peers[i].behaviour.join_at if i in first else never for i in fresh
    )
    sybils = [i for t, i in sim.awards if sim.peers[i].behaviour.name == "sybil"]
    return {
        "p50": percentile(waits, 0.5),
        "details": {
            "honest_newcomers": len(fresh),
            "honest_newcomers_awarded": len(first),
            "honest_newcomer_first_award_p95_s": _round(percentile(waits, 0.95), 3),
            "sybil_awards_whole_run": len(sybils),
        },
    }


class _Rng:
    """A private generator for metric sampling, so computing metrics never shifts the run's."""

    def __init__(self, seed: int) -> None:
        import random

        self._r = random.Random(seed ^ 0x5EED)

    def sample(self, xs: list[Any], k: int) -> list[Any]:
        return self._r.sample(xs, k)
