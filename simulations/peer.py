"""SimPeer: one real ``core.Node`` plus a modelled machine, driven like the daemon drives it.

Theory of operation. ``deliver(event)`` is the simulator's ``Daemon._owner``: it hands one event
to ``Node.handle`` with the virtual ``now`` and carries out every effect the node returns, as
``Daemon.dispatch`` and ``daemon/jobs.py`` do for real:

* network effects (``SendMessage``, ``Publish``, ``SyncChain``, ``FetchHeads``) go to the
  network model, which answers with ``MessageReceived``/``MessageDelivered``/``SendFailed``/
  ``BlocksReceived`` events later in virtual time;
* ``FetchInputs`` → ``InputsFetched`` after the modelled transfer of the inputs this machine does
  not hold yet (the daemon's blob store skips blobs it has, and so does the model);
* ``RunContainer`` → ``ContainerFinished`` after a run time drawn from the job's intrinsic work ×
  this machine's speed × a little noise; the output's value class comes from the behaviour;
* ``StopContainer`` → ``ContainerFinished(status="killed")`` at once (the daemon's executor
  returns when stopped, and the core ignores the report);
* ``FetchOutputs`` → ``OutputsFetched`` after the transfer from the worker (refused after one
  round trip by a ``withholder``);
  ``CompareOutputs`` → ``OutputsCompared``, grouping workers by value class (numeric jobs:
  honest replicas differ in bytes but agree within tolerance);
* ``StoreBlock``/``Persist`` are counted; ``Persist`` of a finished requester job tells the
  metrics the job is final, exactly the moment the daemon's store would see it;
* ``DhtPut``/``DhtGet``/``Dial``/``ExchangePeers`` are counted and not answered (network.py).

Ticks. The daemon ticks every node once a second; almost all of those ticks do nothing. Here a
node is ticked when ``Node.next_wakeup()`` says a tick would act (asked again after every
event), never more than once a second, as the daemon. An idle node (no open requester job, no
accepted award, no unconfirmed payment) is ticked at most every ``IDLE_TICK_S``: that only
delays its periodic ledger-head announcement, its record refresh and the forgetting of bids
that were never awarded (docs/SIMULATIONS.md, "What is not modelled").

Gossip arrives through ``deliver_gossip``, which runs the topic's validator first
(``Node.validate_gossip``, the same core function GossipSub calls in the daemon) and hands the
node only what it ACCEPTs; IGNOREd and REJECTed copies are counted.

Churn. Leaving stops the machine (containers and transfers die). Coming back is a daemon
restart: a new ``Node`` restored by ``Node.restore``, the call the daemon makes, from what the
node had persisted: ledger blocks, fraud proofs, pending payments and job documents, with
reputation rebuilt from its own stored verdicts and the wrong-result proofs it holds (other
evidence gossiped by others is forgotten, as in the daemon).

Like the daemon, this driver sees only ``Node``'s face (handle, next_wakeup, restore, views).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from p2pmesh.core import topics
from p2pmesh.core.auction import requester as requester_mod
from p2pmesh.core.capability import Capabilities
from p2pmesh.core.crypto import Ed25519Signer
from p2pmesh.core.effects import (
    AnswerServiceConnect,
    CompareOutputs,
    DhtGet,
    DhtPut,
    Dial,
    ExchangePeers,
    FetchHeads,
    FetchInputs,
    FetchOutputs,
    Log,
    Persist,
    Publish,
    RunContainer,
    SendMessage,
    StopContainer,
    StoreBlock,
    SyncChain,
)
from p2pmesh.core.events import (
    ContainerFinished,
    InputsFetched,
    JobSubmitted,
    OutputsCompared,
    OutputsFetched,
    PeerDisconnected,
    Ticked,
)
from p2pmesh.core.node import Node, NodeConfig
from p2pmesh.simulations.behaviours import HONEST, Behaviour, Churn, JobSeen
from p2pmesh.simulations.workloads import BID_WINDOW_S, JobMeta, digest_of

if TYPE_CHECKING:
    from p2pmesh.simulations.sim import Simulation

BUSY_TICK_S = 1.0  # the daemon's TICK_S
IDLE_TICK_S = 60.0
CRASH_RESTART_S = 10.0  # a supervisor (systemd) restarting a daemon that died
CLOSE_SEEN_S = 0.2  # a closed connection reaches the other end's notifications (one RTT or so)
COMPARE_S = 0.05  # CPU time to compare two numeric outputs, small next to any transfer
RUN_NOISE_SIGMA = 0.1  # replica-to-replica variation of one job's run time on equal machines
LOG_BYTES = 2_000
REQ_FINAL = requester_mod.FINAL


def capabilities(idx: int, behaviour: Behaviour) -> Capabilities:
    """A mid-range workstation; every simulated worker has the same capacity."""
    work = behaviour.work
    return Capabilities(
        addrs=(f"/ip4/10.{(idx >> 16) & 255}.{(idx >> 8) & 255}.{idx & 255}/tcp/4001",),
        cpus=8,
        cpus_physical=4,
        ram_mb=16_384,
        disk_free_mb=200_000,
        load_milli=0,
        gpus=(),
        executors=("docker",) if work else (),
        price=behaviour.price,
        max_jobs=2 if work else 0,
        work=work,
        allow_images=("p2pmesh/*",),
        agent="p2pmesh-sim/1",
    )


class SimPeer:
    """One simulated machine. ``idx`` is its index in ``Simulation.peers``."""

    def __init__(
        self,
        sim: Simulation,
        idx: int,
        behaviour: Behaviour,
        *,
        churn: Churn | None = None,
        speed: float = 1.0,
    ) -> None:
        self.sim = sim
        self.idx = idx
        self.behaviour = behaviour
        self.churn = churn
        self.speed = speed
        seed = sim.engine.rng.getrandbits(256).to_bytes(32, "big")
        # Real Ed25519 keys and signatures: measured, they cost under 2 % of a run (the core
        # memoises successful verifications), so nothing is gained by a stand-in.
        self.signer = Ed25519Signer(seed)
        self.peer_id: str = self.signer.peer_id
        self.caps = capabilities(idx, behaviour)
        self.worker = behaviour.work
        self.config = NodeConfig(
            # Records are not delivered in the model (network.py); the longest TTL the core
            # allows keeps the node from re-signing one every 150 s for nobody.
            record_ttl_s=3600,
            fault_fork_ledger=behaviour.fork_ledger,
            **sim.plan.node,
        )
        self.rng = random.Random(sim.engine.rng.getrandbits(64))
        self.node: Node | None = None
        self.online = False
        self.epoch = 0  # bumped when the machine goes down: in-flight work of before is void
        self.tick_gen = 0
        self.next_tick = math.inf
        self.last_tick = -math.inf
        self.running: dict[str, tuple[int, float]] = {}  # job -> (token, started_at)
        self._token = 0
        self.blobs: set[str] = set()
        self.record_seq = 0
        self.payments: dict[str, Any] = {}  # what Persist("payments") holds, for restarts
        self.frauds: dict[str, Any] = {}
        self.proofs: dict[str, bytes] = {}  # what Persist("proofs") holds (wrong-result proofs)
        self.online_since = 0.0
        self.online_s = 0.0  # total time online so far (for utilisation)
        self.busy_s = 0.0  # container-seconds run
        self.restarts = 0
        # Peers whose connection address this node has been told (PeerAddressObserved): the
        # model has no connection objects, so the first message from a peer stands for one.
        self.observed: set[int] = set()
        self.host = sim.host_of(idx)

    # -- life cycle -------------------------------------------------------------------------
    def come_online(self, _: Any = None) -> None:
        if self.online:
            return
        now = self.sim.engine.now
        if self.node is None:
            self.node = Node(self.config, self.signer, self.caps, started_at=now, rng=self.rng)
            self.observed.clear()
            resumed: list[Any] = []
        else:
            resumed = self._restart(now)
            self.restarts += 1
        self.online = True
        self.online_since = now
        self.sim.net.set_online(self.idx, True, self.worker)
        if self.worker:
            self.sim.online_slots += self.caps.max_jobs
        self._execute(resumed)
        # The first tick at a random phase, as daemons started at random moments.
        self._schedule_tick(now + self.rng.random() * BUSY_TICK_S)
        if self.churn is not None:
            self.sim.engine.after(self.churn.session(self.sim.engine.rng), self._leave, self.epoch)

    def _leave(self, epoch: int) -> None:
        if epoch == self.epoch:
            self.go_offline()

    def go_offline(self, _: Any = None, *, back_after: float | None = None) -> None:
        """The machine goes away; it comes back after ``back_after`` seconds, or after a
        churn gap when it churns, or never."""
        if not self.online:
            return
        now = self.sim.engine.now
        self._close_connections()
        self.online = False
        self.online_s += now - self.online_since
        for _job, (_, started) in self.running.items():
            self.busy_s += now - started
        self.sim.running_now -= len(self.running)
        self.running.clear()
        self.epoch += 1
        self.tick_gen += 1
        self.next_tick = math.inf
        self.sim.net.set_online(self.idx, False, self.worker)
        if self.worker:
            self.sim.online_slots -= self.caps.max_jobs
        if back_after is None and self.churn is not None:
            back_after = self.churn.offline(self.sim.engine.rng)
        if back_after is not None:
            self.sim.engine.after(back_after, self._back, self.epoch)

    def _close_connections(self) -> None:
        """A process that stops or dies has its connections closed (by the daemon, or by the
        kernel after a kill): the requesters of the jobs it holds see ``PeerDisconnected``,
        as the daemon's connection notifications report it. Only those matter to the core."""
        if self.node is None:
            return
        told: set[str] = set()
        for doc in self.node.jobs():
            req = doc.get("requester") if doc["role"] == "worker" else None
            i = self.sim.index.get(req) if req else None
            if i is None or req in told:
                continue
            told.add(req)
            self.sim.engine.after(
                CLOSE_SEEN_S, self.sim.peers[i].deliver_event, PeerDisconnected(self.peer_id)
            )

    def _back(self, epoch: int) -> None:
        # A churn session that ends after a crash restart belongs to the old run: ignore it.
        if epoch == self.epoch:
            self.come_online()

    def _restart(self, now: float) -> list[Any]:
        """A daemon restart: a fresh Node restored from what the old one persisted."""
        old = self.node
        assert old is not None
        node = Node(
            self.config,
            self.signer,
            self.caps,
            last_seq=self.record_seq,
            started_at=now,
            rng=self.rng,
        )
        # The daemon's store holds every block it was told to store; the old node's chains
        # are exactly those. Job documents are what Persist("jobs") last wrote.
        resumed = node.restore(
            now=now,
            blocks=[b.raw for a in old.chain_authors() for b in old.chain(a)],
            frauds=list(self.frauds.values()),
            payments=list(self.payments.values()),
            jobs=old.job_docs(),
            proofs=list(self.proofs.values()),
        )
        self.node = node
        self.observed.clear()
        return resumed

    # -- jobs from the workload ----------------------------------------------------------------
    def submit(self, job_id: str, job: Any) -> None:
        """The user runs ``p2pmesh offer``: the job enters the node, which is now busy."""
        if not self.online:
            return
        self._handle(JobSubmitted(job_id, job, BID_WINDOW_S))

    # -- the owner task: one event in, its effects out ------------------------------------------
    def deliver(self, event: Any) -> None:
        if not self.online:
            return
        self._handle(event)

    deliver_event = deliver  # engine callback spelling: ``engine.after(d, peer.deliver_event, ev)``

    def deliver_gossip(self, topic: str, data: bytes, sender: str) -> None:
        """A gossip message arrives: the topic validator first, as GossipSub runs it."""
        if not self.online:
            return
        node = self.node
        assert node is not None
        verdict = node.validate_gossip(topic, data, self.sim.engine.now)
        if verdict is not topics.ACCEPT:
            self.sim.net.count_refused(topic, verdict)
            return
        self._handle(topics.event_of(topic, data, sender))

    def _handle(self, event: Any) -> None:
        node = self.node
        assert node is not None
        sim = self.sim
        sim.handled += 1
        try:
            effects = node.handle(event, sim.engine.now)
        except Exception as exc:
            # The daemon's owner task would die with this exception and take the process down;
            # a supervisor restarts it. Model exactly that, and record the core's failure.
            sim.core_error(self, event, exc)
            self.go_offline(back_after=CRASH_RESTART_S)
            return
        self._execute(effects)
        if self.online:
            self._reschedule()

    def _execute(self, effects: list[Any]) -> None:
        for eff in effects:
            _EXEC[type(eff)](self, eff)

    # -- ticks ----------------------------------------------------------------------------------
    def _reschedule(self) -> None:
        """Tick when the node next has something to do (at most once a second, as the daemon;
        at most every ``IDLE_TICK_S`` when idle)."""
        node = self.node
        assert node is not None
        if not node.is_idle():
            at = max(node.next_wakeup(), self.last_tick + BUSY_TICK_S, self.sim.engine.now)
        else:
            # Idle: a tick at the floor is at worst one that does nothing, so the node is not
            # even asked (most events an idle node gets are offers it bids on).
            at = max(self.last_tick + IDLE_TICK_S, self.sim.engine.now)
        if at != self.next_tick:
            self._schedule_tick(at)

    def _schedule_tick(self, at: float) -> None:
        self.tick_gen += 1
        self.next_tick = at
        self.sim.engine.at(at, self._tick, self.tick_gen)

    def _tick(self, gen: int) -> None:
        if gen != self.tick_gen or not self.online:
            return
        self.sim.ticks += 1
        self.last_tick = self.sim.engine.now
        self.next_tick = math.inf
        self._handle(Ticked())

    # -- effects --------------------------------------------------------------------------------
    def _send(self, eff: SendMessage) -> None:
        if eff.kind == "award":
            self.sim.award_seen(eff.job_id, eff.peer_id)
        self.sim.net.send(self, eff)

    def _publish(self, eff: Publish) -> None:
        self.sim.net.publish(self, eff)

    def _sync(self, eff: SyncChain | FetchHeads) -> None:
        self.sim.net.sync(self, eff)

    def _later(self, delay: float, event: Any) -> None:
        """Feed ``event`` back after ``delay`` unless the machine went down meanwhile."""
        self.sim.engine.after(delay, self._if_same_epoch, (self.epoch, event))

    def _if_same_epoch(self, arg: tuple[int, Any]) -> None:
        epoch, event = arg
        if epoch == self.epoch:
            self.deliver(event)

    def _fetch_inputs(self, eff: FetchInputs) -> None:
        missing = {digest: size for _, digest, size, _ in eff.refs if digest not in self.blobs}
        if not missing:
            self._later(0.0, InputsFetched(eff.job_id, True))
            return
        src = self.sim.index.get(eff.requester)
        epoch = self.epoch
        if src is None:
            self._later(0.0, InputsFetched(eff.job_id, False, "unknown requester"))
            return

        def done(ok: bool, error: str) -> None:
            if epoch != self.epoch:
                return
            if ok:
                self.blobs.update(missing)
            self.deliver(InputsFetched(eff.job_id, ok, error))

        self.sim.net.blob(src, self.idx, sum(missing.values()), done)

    def _run(self, eff: RunContainer) -> None:
        now = self.sim.engine.now
        meta = self.sim.jobs[eff.job_id]
        node = self.node
        assert node is not None
        view = node.job(eff.job_id)
        winners = tuple(view.get("winners") or ()) if view is not None else ()
        seen = JobSeen(winners, tuple(meta.holders), eff.job.spec.redundancy)
        value = self.behaviour.output(self.idx, seen, self.rng)
        run_s = meta.work_s * self.speed * math.exp(self.rng.gauss(0.0, RUN_NOISE_SIGMA))
        status = "exited"
        timeout = eff.job.spec.timeout_s
        if run_s > timeout:
            run_s, status = float(timeout), "timeout"
        self._token += 1
        if eff.job_id not in self.running:
            self.sim.running_now += 1
        self.running[eff.job_id] = (self._token, now)
        self.sim.engine.after(
            run_s, self._finished, (self._token, meta, value, status, run_s, self.epoch)
        )

    def _finished(self, arg: tuple[int, JobMeta, str, str, float, int]) -> None:
        token, meta, value, status, run_s, epoch = arg
        if epoch != self.epoch or self.running.get(meta.job_id, (None,))[0] != token:
            return
        del self.running[meta.job_id]
        self.sim.running_now -= 1
        self.busy_s += run_s
        digest = self.sim.output_digest(meta, value, self.idx)
        self.blobs.add(digest)
        self.deliver(
            ContainerFinished(
                job_id=meta.job_id,
                status=status,
                exit_code=0 if status == "exited" else None,
                output_digest=digest,
                output_size=meta.template.output_bytes,
                log_digest=digest_of(f"log|{meta.job_id}|{self.idx}"),
                log_size=LOG_BYTES,
                log_truncated=False,
                run_ms=int(run_s * 1000),
                cpu_ms=int(run_s * 900),
                max_memory_mb=256,
            )
        )

    def _stop(self, eff: StopContainer) -> None:
        entry = self.running.pop(eff.job_id, None)
        if entry is None:
            return
        self.sim.running_now -= 1
        self.busy_s += self.sim.engine.now - entry[1]
        self._later(
            0.0,
            ContainerFinished(
                job_id=eff.job_id,
                status="killed",
                exit_code=137,
                output_digest=digest_of(""),
                output_size=0,
                log_digest=digest_of(""),
                log_size=0,
                log_truncated=False,
                run_ms=0,
                cpu_ms=0,
                max_memory_mb=0,
            ),
        )

    def _fetch_outputs(self, eff: FetchOutputs) -> None:
        # Always transferred, as the daemon does: each payee must serve its own copy.
        src = self.sim.index.get(eff.worker)
        if src is None:
            self._later(0.0, OutputsFetched(eff.job_id, eff.worker, False, "unknown worker"))
            return
        epoch = self.epoch
        # The daemon's worker refuses the request (withhold-outputs): one round trip, no bytes.
        withheld = self.sim.peers[src].behaviour.withhold_outputs

        def done(ok: bool, error: str) -> None:
            if epoch != self.epoch:
                return
            if ok and withheld:
                ok, error = False, "peer refused blob: not available to you"
            if ok:
                self.blobs.add(eff.output_digest)
            self.deliver(OutputsFetched(eff.job_id, eff.worker, ok, error))

        size = 0 if withheld else eff.output_size + eff.log_size
        self.sim.net.blob(src, self.idx, size, done)

    def _compare(self, eff: CompareOutputs) -> None:
        by_value: dict[str, list[str]] = {}
        for worker, digest in eff.outputs:
            by_value.setdefault(self.sim.value_of(digest), []).append(worker)
        groups = tuple(tuple(sorted(g)) for g in sorted(by_value.values(), key=min))
        workers = tuple(sorted(w for w, _ in eff.outputs))
        self._later(COMPARE_S * len(workers), OutputsCompared(eff.job_id, workers, groups))

    def _answer_service(self, eff: AnswerServiceConnect) -> None:
        # Modelled workers carry no tunnels: nothing in the simulator opens a service stream.
        return

    def _store_block(self, eff: StoreBlock) -> None:
        self.sim.stored_blocks += 1

    def _persist(self, eff: Persist) -> None:
        table = eff.table
        if table == "jobs":
            if eff.key.startswith("requester:") and eff.value["state"] in REQ_FINAL:
                self.sim.job_final(eff.key[len("requester:") :], eff.value["view"])
        elif table == "payments":
            if eff.value is None:
                self.payments.pop(eff.key, None)
            else:
                self.payments[eff.key] = eff.value
        elif table == "frauds":
            self.frauds[eff.key] = eff.value
        elif table == "proofs":
            self.proofs[eff.key] = eff.value
        elif table == "meta" and eff.key == "record_seq":
            self.record_seq = int(eff.value)

    def _log(self, eff: Log) -> None:
        if eff.level in ("warning", "error"):
            self.sim.count_log(eff.msg)
        # The core says when it excludes someone; the model only notes who and when.
        who = EXCLUSION_LOGS.get(eff.msg)
        if who is not None:
            self.sim.exclusion_seen(self.idx, str(eff.fields.get(who, "")))

    def _ignored(self, eff: Any) -> None:
        self.sim.net.count_ignored(type(eff).__name__)


# The core's log lines that say this node now excludes a peer, and the field naming it.
EXCLUSION_LOGS = {
    "worker excluded by wrong-result proofs": "worker",
    "fork detected: author excluded": "author",
}


# One handler per effect type of ``core.effects.Effect`` (tests/unit/test_face.py checks it).
_EXEC: dict[type, Callable[[SimPeer, Any], None]] = {
    SendMessage: SimPeer._send,
    Publish: SimPeer._publish,
    SyncChain: SimPeer._sync,
    FetchHeads: SimPeer._sync,
    FetchInputs: SimPeer._fetch_inputs,
    RunContainer: SimPeer._run,
    StopContainer: SimPeer._stop,
    FetchOutputs: SimPeer._fetch_outputs,
    CompareOutputs: SimPeer._compare,
    AnswerServiceConnect: SimPeer._answer_service,
    StoreBlock: SimPeer._store_block,
    Persist: SimPeer._persist,
    Log: SimPeer._log,
    DhtPut: SimPeer._ignored,
    DhtGet: SimPeer._ignored,
    Dial: SimPeer._ignored,
    ExchangePeers: SimPeer._ignored,
}

__all__ = ["BUSY_TICK_S", "HONEST", "IDLE_TICK_S", "SimPeer", "capabilities"]
