"""One simulation run: peers, network, workload and the bookkeeping the metrics read.

``Simulation(plan).run()`` builds every peer (a real ``core.Node`` each), brings them online,
submits ``plan.jobs`` jobs at Poisson arrival times (or, with ``plan.script``, the given jobs at
the given times), and runs the engine until every job is final (or the last deadline has
passed), then hands itself to ``metrics.report``.

Everything random comes from ``engine.rng`` (one seeded ``random.Random``) or per-peer
generators seeded from it, in a fixed order, so the same plan and seed replay the same run.
"""

from __future__ import annotations

import bisect
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from p2pmesh.core.events import PeerConnected
from p2pmesh.simulations.behaviours import HONEST, Behaviour, Churn
from p2pmesh.simulations.engine import Engine
from p2pmesh.simulations.network import NetConfig, Network
from p2pmesh.simulations.peer import SimPeer
from p2pmesh.simulations.workloads import (
    JobMeta,
    ScriptedJob,
    Template,
    WorkloadConfig,
    arrival_rate,
    build_jobs,
    digest_of,
    intrinsic_work,
    pick,
)

# A realistic epoch: signed messages carry unix timestamps that the core checks against now.
T0 = 1_700_000_000.0
WARMUP_S = 5.0  # let every node publish its record and settle before the first job


def own_prefix(idx: int) -> int:
    """The prefix number of peer ``idx`` when it shares its prefix with nobody: above any
    number a plan uses for shared prefixes."""
    return (1 << 20) + idx


@dataclass(slots=True)
class Plan:
    """Everything that defines a run. ``scenarios.py`` builds these.

    ``behaviours[i]`` and ``churn[i]`` describe peer ``i``. ``hooks`` are (time after start,
    function of the simulation) for scheduled events such as partitions. ``script``, when not
    empty, replaces the Poisson arrivals: exactly these jobs, at these times (``jobs`` must be
    its length; replay.py builds such plans).
    """

    name: str
    seed: int
    jobs: int
    behaviours: list[Behaviour]
    churn: list[Churn | None]
    net: NetConfig = field(default_factory=NetConfig)
    workload: WorkloadConfig = field(default_factory=WorkloadConfig)
    utilisation: float = 0.3  # target share of worker slots kept busy by the arrivals
    rate: float | None = None  # jobs per second; derived from ``utilisation`` when None
    one_job_per_requester: bool = False
    # How unequal demand is: each peer's request rate is its behaviour's weight times a
    # Pareto(alpha) draw; 1.16 is the "80/20" shape (a fifth of the users ask for ~80 % of the
    # jobs), as in shared research clusters. None: every peer asks equally often.
    requester_skew: float | None = None
    hooks: list[tuple[float, Callable[[Simulation], None]]] = field(default_factory=list)
    sybil_window: tuple[float, float] | None = None  # (from, to) seconds after the start
    fraction: float = 0.0
    script: tuple[ScriptedJob, ...] = ()
    # Network prefix (a /24) of each peer, as others observe its connections; peers beyond the
    # list, or all when empty, get a prefix of their own (admission.py, PROTOCOL.md §8.6).
    prefixes: list[int] = field(default_factory=list)
    # NodeConfig settings every simulated node gets (``--node-set``), e.g. a protocol knob off.
    node: dict[str, Any] = field(default_factory=dict)


class Simulation:
    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.engine = Engine(plan.seed, start=T0)
        self.net = Network(self, plan.net)
        self.peers: list[SimPeer] = []
        self.index: dict[str, int] = {}
        self.jobs: dict[str, JobMeta] = {}
        self.value_class: dict[str, str] = {}
        self.templates = build_jobs(plan.workload)
        self.handled = 0
        self.ticks = 0
        self.stored_blocks = 0
        self.submitted = 0
        self.finals = 0
        self.not_submitted = 0  # arrivals whose requester was offline (the user waits)
        self.awards: list[tuple[float, int]] = []  # (time, worker index) of every award
        self.logs: dict[str, int] = {}
        # Excluded peer ID → {observer index: virtual second it excluded that peer}.
        self.exclusions: dict[str, dict[int, float]] = {}
        self.last_arrival = T0
        self.wall_s = 0.0
        self.running_now = 0  # containers running right now, mesh-wide
        self.online_slots = 0  # job slots of the working peers online right now
        self.util_samples: list[float] = []  # running / slots, seen by each arrival (PASTA)
        self.core_errors: dict[str, int] = {}
        self.cpu_s = 0.0  # CPU seconds of the run: the machine may be shared, wall_s inflates
        for i, b in enumerate(plan.behaviours):
            idx = self.net.add_peer()
            assert idx == i
            churn = plan.churn[i] if i < len(plan.churn) else None
            peer = SimPeer(self, i, b, churn=churn)
            self.peers.append(peer)
            self.index[peer.peer_id] = i
        skew = plan.requester_skew
        weights = [
            b.requester_weight * (self.engine.rng.paretovariate(skew) if skew else 1.0)
            for b in plan.behaviours
        ]
        self._req_cum = list(itertools.accumulate(weights))
        self._req_order: list[int] = []
        if plan.one_job_per_requester:
            self._req_order = [i for i, w in enumerate(weights) if w > 0]
            self.engine.rng.shuffle(self._req_order)
        slots = sum(p.caps.max_jobs for p in self.peers if p.worker)
        k = 2.0 if not isinstance(plan.workload.redundancy, int) else plan.workload.redundancy
        self.rate = plan.rate or arrival_rate(slots, plan.utilisation, k, plan.workload.templates)

    def host_of(self, idx: int) -> str:
        """The IPv4 address peer ``idx`` connects from: public-looking /24 prefixes from
        20.0.0.0 up (private ranges would make every peer its own prefix, admission.py)."""
        pre = self.plan.prefixes
        p = pre[idx] if idx < len(pre) else own_prefix(idx)  # above any plan's
        return f"{20 + (p >> 16)}.{(p >> 8) & 255}.{p & 255}.{1 + idx % 254}"

    # -- running ------------------------------------------------------------------------------
    def run(self, progress: Callable[[float, int, int], None] | None = None) -> Any:
        """Run to the end and return ``metrics.Report``. ``progress(frac, done, total)``."""
        from p2pmesh.simulations.metrics import report

        started = time.perf_counter()
        cpu_started = time.process_time()
        self._start()
        horizon = self._horizon()

        def tick_progress(now: float) -> None:
            if progress is not None:
                progress(min(1.0, (now - T0) / (horizon - T0)), self.finals, self.plan.jobs)

        self.engine.run_until(horizon, progress=tick_progress)
        if progress is not None:
            progress(1.0, self.finals, self.plan.jobs)
        self.wall_s = time.perf_counter() - started
        self.cpu_s = time.process_time() - cpu_started
        return report(self)

    def _start(self) -> None:
        eng = self.engine
        for p in self.peers:
            b = p.behaviour
            if b.join_at > 0:
                eng.at(T0 + b.join_at, p.come_online)
            elif p.churn is not None and eng.rng.random() > p.churn.online_share():
                eng.after(p.churn.offline(eng.rng), p.come_online)
            else:
                eng.at(T0 + eng.rng.random(), p.come_online)
        for at, hook in self.plan.hooks:
            eng.at(T0 + at, lambda _, h=hook: h(self))
        if self.plan.script:
            for job in self.plan.script:
                eng.at(T0 + WARMUP_S + job.at, self._scripted, job)
        else:
            eng.at(T0 + WARMUP_S, self._arrive)

    def _horizon(self) -> float:
        """Latest time worth simulating: every arrival plus the longest job deadline."""
        if self.plan.script:
            last = max(j.at for j in self.plan.script)
            longest = max(j.job.spec.deadline_s or 0 for j in self.plan.script)
            return T0 + WARMUP_S + last + longest + 600.0
        expected = self.plan.jobs / self.rate
        longest = max(j.spec.deadline_s for _, j in self.templates)
        return T0 + WARMUP_S + expected * 1.5 + longest + 600.0

    # -- workload -----------------------------------------------------------------------------
    def _arrive(self, _: Any = None) -> None:
        if self.submitted + self.not_submitted >= self.plan.jobs:
            self._maybe_stop()
            return
        rng = self.engine.rng
        if self.online_slots:
            self.util_samples.append(self.running_now / self.online_slots)
        req = self._pick_requester(rng)
        if req is None or not self.peers[req].online:
            self.not_submitted += 1
        else:
            t_i = pick(rng, [t.weight for t, _ in self.templates])
            template, wire = self.templates[t_i]
            self._submit(req, template, wire)
        self.engine.after(rng.expovariate(self.rate), self._arrive)

    def _scripted(self, job: ScriptedJob) -> None:
        if self.peers[job.requester].online:
            self._submit(job.requester, job.template, job.job)
        else:
            self.not_submitted += 1
            self._maybe_stop()

    def _submit(self, req: int, template: Template, wire: Any) -> None:
        """Peer ``req`` (online) submits a job of ``template``; the model draws its id and
        intrinsic work."""
        rng = self.engine.rng
        job_id = f"{rng.getrandbits(128):032x}"
        meta = JobMeta(
            job_id=job_id,
            template=template,
            requester=req,
            submitted_at=self.engine.now,
            work_s=intrinsic_work(template, rng),
            honest=digest_of(f"{HONEST}|{job_id}"),
        )
        self.jobs[job_id] = meta
        self.submitted += 1
        self.last_arrival = self.engine.now
        self.peers[req].submit(job_id, wire)

    def _pick_requester(self, rng: Any) -> int | None:
        if self.plan.one_job_per_requester:
            return self._req_order.pop() if self._req_order else None
        total = self._req_cum[-1]
        if total <= 0:
            return None
        return bisect.bisect_right(self._req_cum, rng.random() * total)

    # -- model facts ----------------------------------------------------------------------------
    def output_digest(self, meta: JobMeta, value: str, worker: int) -> str:
        """The digest a container's output has: equal for equal values (exact jobs), distinct
        per worker but of one value class for numeric jobs (floating-point noise)."""
        if meta.template.numeric:
            d = digest_of(f"{value}|{meta.job_id}|{worker}")
        elif value == HONEST:
            d = meta.honest
        else:
            d = digest_of(f"{value}|{meta.job_id}")
        self.value_class[d] = value
        return d

    def value_of(self, digest: str) -> str:
        return self.value_class.get(digest, "unknown")

    # -- observations ---------------------------------------------------------------------------
    def job_final(self, job_id: str, view: dict[str, Any]) -> None:
        """A requester persisted ``job_id`` in a final state; ``view`` is its job document."""
        meta = self.jobs.get(job_id)
        if meta is None or meta.final_state:
            return
        meta.final_state = view["state"]
        meta.finished_at = self.engine.now
        meta.replicas = len(view["workers"])
        if view["state"] == "done" and view["output_digest"]:
            meta.accepted_class = (
                "honest" if self.value_of(view["output_digest"]) == HONEST else "wrong"
            )
        self.finals += 1
        self._maybe_stop()

    def _maybe_stop(self) -> None:
        # Every job has arrived and ended: what is left is idle ticking, not worth simulating.
        if self.submitted + self.not_submitted >= self.plan.jobs and self.finals >= self.submitted:
            self.engine.stop()

    def award_seen(self, job_id: str, worker_peer_id: str) -> None:
        i = self.index.get(worker_peer_id)
        if i is not None:
            self.awards.append((self.engine.now - T0, i))
        meta = self.jobs.get(job_id)
        if meta is not None:
            meta.holders.append(worker_peer_id)

    def core_error(self, peer: SimPeer, event: Any, exc: Exception) -> None:
        key = f"{type(exc).__name__} on {type(event).__name__}: {str(exc)[:80]}"
        self.core_errors[key] = self.core_errors.get(key, 0) + 1

    def count_log(self, msg: str) -> None:
        self.logs[msg] = self.logs.get(msg, 0) + 1

    def exclusion_seen(self, observer: int, peer_id: str) -> None:
        seen = self.exclusions.setdefault(peer_id, {})
        seen.setdefault(observer, self.engine.now - T0)

    # -- scheduled scenario events --------------------------------------------------------------
    def split(self, groups: list[int]) -> None:
        self.net.partition(groups)

    def heal(self, links_per_peer: int = 2) -> None:
        """End a partition: one group again, and each peer connects to a few peers it could
        not reach, as libp2p reconnects would (the core then asks them for ledger heads)."""
        before = list(self.net.group)
        self.net.partition([0] * len(self.peers))
        rng = self.engine.rng
        online = [p for p in self.peers if p.online]
        for p in online:
            others = [
                q for q in rng.sample(online, min(len(online), 8)) if before[q.idx] != before[p.idx]
            ]
            for q in others[:links_per_peer]:
                p.deliver(PeerConnected(q.peer_id))
                q.deliver(PeerConnected(p.peer_id))
