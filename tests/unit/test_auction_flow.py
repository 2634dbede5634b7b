"""Whole-job flows through real ``Node``s and an in-test router, in virtual time (PROTOCOL.md §7).

``Mesh`` stands in for the daemon and the network: it performs each node's effects (an offer
published on the offers topic reaches every other node, a ``SendMessage`` reaches its peer and
is acknowledged back, inputs and outputs always transfer, containers end as each worker's
``Script`` says) and feeds the outcomes back as events. Time is a plain integer: every node gets
a ``Ticked`` once a virtual second. Nodes can be *muted* (alive on the wire, never acting: a
no-show) or *down* (unreachable: sends to them fail).
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import re
from collections import deque
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from p2pmesh.core.auction import messages as m
from p2pmesh.core.auction import provider as provider_mod
from p2pmesh.core.auction import requester as requester_mod
from p2pmesh.core.auction.requester import ACCEPT_WITHIN_S, GRACE_S, HEARTBEAT_S, SILENCE_S
from p2pmesh.core.capability import Capabilities
from p2pmesh.core.crypto import Ed25519Signer
from p2pmesh.core.effects import (
    CompareOutputs,
    Effect,
    FetchInputs,
    FetchOutputs,
    Log,
    Persist,
    Publish,
    RunContainer,
    SendMessage,
    StopContainer,
)
from p2pmesh.core.events import (
    CancelRequested,
    ContainerFinished,
    ImageProgress,
    InputsFetched,
    JobSubmitted,
    MessageDelivered,
    MessageReceived,
    OutputsCompared,
    OutputsFetched,
    PeerConnected,
    PeerDisconnected,
    ProfileChanged,
    SendFailed,
    ServiceConnectionClosed,
    ServiceConnectRequested,
    Ticked,
)
from p2pmesh.core.jobspec import InputRef, WireJob, job_from_wire, job_to_wire, parse_job
from p2pmesh.core.node import Node, NodeConfig

ROOT = Path(__file__).resolve().parents[2]
T0 = 1_700_000_000
JOB_ID = "00000000000000000000000000000001"
NAMES = "ABCDEFGH"
MAX_STEPS_PER_SECOND = 5_000  # far above any honest second; more means a message storm


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


OUT = _digest(b"the answer is 42")
LOG = _digest(b"log")


@dataclass(frozen=True)
class Script:
    """How one worker's container ends: after ``run_s`` seconds, or never if ``hang``."""

    run_s: int = 5
    status: str = "exited"
    exit_code: int | None = 0
    output_digest: str = OUT
    hang: bool = False
    inputs_hang: bool = False
    # Numeric validation: outputs with the same key compare equal (default: the digest).
    numeric_key: str = ""

    def finished(self, job_id: str) -> ContainerFinished:
        return ContainerFinished(
            job_id=job_id,
            status=self.status,
            exit_code=self.exit_code,
            output_digest=self.output_digest,
            output_size=16,
            log_digest=LOG,
            log_size=3,
            log_truncated=False,
            run_ms=self.run_s * 1000,
            cpu_ms=self.run_s * 900,
            max_memory_mb=12,
        )


def make_job(**over: Any) -> WireJob:
    doc: dict[str, Any] = {
        "schema_version": 1,
        "name": "mc",
        "image": "p2pmesh/python:3",
        "command": ["python3", "/in/run.py"],
        "inputs": {"run.py": "run.py"},
        "max_price": 10,
        "budget": 30,
        "redundancy": 2,
        "timeout_s": 60,
        "deadline_s": 300,
        **over,
    }
    spec = parse_job(doc)
    refs = {n: InputRef(_digest(n.encode()), 100, "file") for n in spec.inputs}
    return job_from_wire(job_to_wire(spec, refs))


def caps_for(i: int, **over: Any) -> Capabilities:
    base = Capabilities(
        addrs=(f"/ip4/127.0.0.1/tcp/{4001 + i}",),
        cpus=8,
        cpus_physical=4,
        ram_mb=16384,
        disk_free_mb=100_000,
        load_milli=0,
        gpus=(),
        executors=("docker",),
        price=3,
        max_jobs=2,
        work=True,
        allow_images=("p2pmesh/*",),
        agent="p2pmesh/test",
    )
    return replace(base, **over)


@dataclass
class Mesh:
    """Nodes A, B, C, … and the router between them. ``prices`` sets each node's price.

    ``config``: every node's. By default the newcomer lottery is off (PROTOCOL.md §8.9): these
    tests steer which worker wins by its price, as among established bidders; every node here
    is new, so with the rule on the winners would be drawn by lottery (test_newcomers.py)."""

    prices: tuple[int, ...] = (3, 3, 3)
    config: NodeConfig = field(default_factory=lambda: NodeConfig(newcomer_checks=0))
    now: int = T0
    nodes: dict[str, Node] = field(default_factory=dict)
    ids: dict[str, str] = field(default_factory=dict)  # name -> peer id
    names: dict[str, str] = field(default_factory=dict)  # peer id -> name
    scripts: dict[str, Script] = field(default_factory=dict)
    muted: set[str] = field(default_factory=set)
    down: set[str] = field(default_factory=set)
    fail_outputs: set[str] = field(default_factory=set)  # workers whose outputs cannot be fetched
    queue: deque[tuple[str, Any]] = field(default_factory=deque)
    timers: list[tuple[int, str, ContainerFinished]] = field(default_factory=list)
    done: list[tuple[int, str, Effect]] = field(default_factory=list)  # every effect, in order
    db: dict[str, dict[tuple[str, str], Any]] = field(default_factory=dict)  # what Persist wrote
    ticks_due: int = 0  # ticks at or after the node's next_wakeup (the ones a simulator runs)

    def __post_init__(self) -> None:
        for i, price in enumerate(self.prices):
            name = NAMES[i]
            signer = Ed25519Signer(bytes([i + 1]) * 32)
            self.ids[name] = signer.peer_id
            self.names[signer.peer_id] = name
            self.nodes[name] = Node(
                self.config, signer, caps_for(i, price=price), started_at=float(T0)
            )
            self.db[name] = {}

    # -- driving ----------------------------------------------------------------------------
    def node(self, name: str) -> Node:
        return self.nodes[name]

    def deliver(self, name: str, event: Any) -> list[Effect]:
        """Hand one event to a node now and perform what it asks; returns its effects."""
        if name in self.muted or name in self.down:
            return []
        before = _job_states(self.nodes[name])
        effects = self.nodes[name].handle(event, float(self.now))
        _record(before, _job_states(self.nodes[name]), _event_name(event))
        for eff in effects:
            self.done.append((self.now, name, eff))
            self._perform(name, eff)
        return effects

    def settle(self) -> None:
        steps = 0
        while self.queue:
            steps += 1
            assert steps < MAX_STEPS_PER_SECOND, "message storm: the protocol does not settle"
            name, event = self.queue.popleft()
            self.deliver(name, event)

    def submit(self, name: str, job: WireJob, *, window: int = 2, job_id: str = JOB_ID) -> str:
        self.deliver(name, JobSubmitted(job_id, job, window))
        self.settle()
        return job_id

    def tick(self) -> None:
        self.now += 1
        due = [t for t in self.timers if t[0] <= self.now]
        self.timers = [t for t in self.timers if t[0] > self.now]
        for _, name, ev in due:
            self.queue.append((name, ev))
        self.settle()
        for name in self.nodes:
            # Node.next_wakeup's promise, checked on every tick of every flow in this file: a
            # tick before that time does nothing (the simulator skips exactly those ticks).
            wake = self.nodes[name].next_wakeup()
            effects = self.deliver(name, Ticked())
            if self.now < wake:
                assert not effects, (name, self.now, wake, effects)
            else:
                self.ticks_due += 1
        self.settle()

    def run(self, seconds: int, *, until: Any = None) -> None:
        for _ in range(seconds):
            if until is not None and until():
                return
            self.tick()

    def run_job(self, job_id: str = JOB_ID, requester: str = "A", limit: int = 400) -> None:
        self.run(limit, until=lambda: self.job(job_id, requester).state in requester_mod.FINAL)

    # -- the network and the machine, as seen by the core ----------------------------------
    def _perform(self, src: str, eff: Effect) -> None:
        if isinstance(eff, Publish):
            if eff.topic == m.TOPIC_OFFERS:
                for name in self.nodes:
                    if name != src and name not in self.down:
                        self.queue.append((name, MessageReceived("offer", eff.data, self.ids[src])))
        elif isinstance(eff, SendMessage):
            dst = self.names.get(eff.peer_id)
            if dst is None or dst in self.down:
                self.queue.append(
                    (src, SendFailed(eff.job_id, eff.peer_id, eff.kind, "unreachable"))
                )
                return
            self.queue.append((dst, MessageReceived(eff.kind, eff.data, self.ids[src])))
            self.queue.append((src, MessageDelivered(eff.job_id, eff.peer_id, eff.kind)))
        elif isinstance(eff, FetchInputs):
            if not self.script(src).inputs_hang:
                self.queue.append((src, InputsFetched(eff.job_id, True)))
        elif isinstance(eff, RunContainer):
            s = self.script(src)
            if not s.hang:
                self.timers.append((self.now + s.run_s, src, s.finished(eff.job_id)))
        elif isinstance(eff, StopContainer):
            # A stopped container still reports, as the daemon's runner does: the core ignores it.
            self.timers = [
                t for t in self.timers if not (t[1] == src and t[2].job_id == eff.job_id)
            ]
            killed = replace(self.script(src), status="killed", exit_code=137)
            self.queue.append((src, killed.finished(eff.job_id)))
        elif isinstance(eff, FetchOutputs):
            ok = self.names[eff.worker] not in self.fail_outputs
            self.queue.append(
                (src, OutputsFetched(eff.job_id, eff.worker, ok, "" if ok else "refused"))
            )
        elif isinstance(eff, CompareOutputs):
            groups: dict[str, list[str]] = {}
            for worker, digest in eff.outputs:
                key = self.script(self.names[worker]).numeric_key or digest
                groups.setdefault(key, []).append(worker)
            workers = tuple(w for w, _ in eff.outputs)
            found = tuple(tuple(sorted(g)) for g in sorted(groups.values()))
            self.queue.append((src, OutputsCompared(eff.job_id, workers, found)))
        elif isinstance(eff, Persist):
            # Through JSON, as the SQLite store keeps documents; signed bytes stay BLOBs.
            value = eff.value
            if not isinstance(value, bytes):
                value = json.loads(json.dumps(value))
            self.db[src][(eff.table, eff.key)] = value

    def script(self, name: str) -> Script:
        return self.scripts.get(name, Script())

    # -- views ------------------------------------------------------------------------------
    def job(self, job_id: str = JOB_ID, name: str = "A") -> requester_mod.RequesterJob:
        return self.nodes[name].requester.jobs[job_id]

    def work(self, name: str, job_id: str = JOB_ID) -> provider_mod.WorkerJob:
        return self.nodes[name].provider.jobs[job_id]

    def sent(self, kind: str, src: str | None = None, dst: str | None = None) -> list[Any]:
        return [
            (t, n, e)
            for t, n, e in self.done
            if isinstance(e, SendMessage)
            and e.kind == kind
            and (src is None or n == src)
            and (dst is None or e.peer_id == self.ids[dst])
        ]

    def effects(self, kind: type, name: str | None = None) -> list[Any]:
        return [e for _, n, e in self.done if isinstance(e, kind) and (name is None or n == name)]

    def workers(self, job_id: str = JOB_ID, name: str = "A") -> dict[str, str]:
        """Replica states by worker name."""
        return {self.names[w]: r.state for w, r in self.job(job_id, name).replicas.items()}

    # -- restarts ---------------------------------------------------------------------------
    def restart(self, name: str) -> None:
        """A new ``Node`` for ``name`` restored from what it persisted, as the daemon does."""
        old = self.nodes[name]
        self.timers = [t for t in self.timers if t[1] != name]  # its containers died with it
        self.queue = deque(q for q in self.queue if q[0] != name)
        node = Node(self.config, old.signer, old.caps, started_at=float(self.now))
        self.nodes[name] = node
        before = _job_states(old)
        # Every job document it persisted, restored the way the daemon restores them.
        jobs = [
            (key.partition(":")[0], doc)
            for (table, key), doc in sorted(self.db[name].items())
            if table == "jobs"
        ]
        resumed = node.restore(now=float(self.now), jobs=jobs)
        after = _job_states(node)
        _record({k: v for k, v in before.items() if k in after}, after, "restart")
        for eff in resumed:
            self.done.append((self.now, name, eff))
            self._perform(name, eff)
        self.settle()


# -- transitions seen, checked against the tables in docs/PROTOCOL.md §7.7 and §7.8 --------------
_SEEN: set[tuple[str, str, str, str]] | None = None  # (role, from, event, to) while recording
_EVENT_NAMES = {
    JobSubmitted: "submit",
    Ticked: "tick",
    SendFailed: "send failed",
    MessageDelivered: "delivered",
    OutputsFetched: "outputs fetched",
    OutputsCompared: "outputs compared",
    CancelRequested: "cancel",
    InputsFetched: "inputs fetched",
    ImageProgress: "image progress",
    ContainerFinished: "container finished",
    ProfileChanged: "profile changed",
    PeerDisconnected: "connection closed",
    PeerConnected: "connection back",
    ServiceConnectRequested: "service connect",
    ServiceConnectionClosed: "service connection closed",
}


def _event_name(event: Any) -> str:
    return event.kind if isinstance(event, MessageReceived) else _EVENT_NAMES[type(event)]


def _job_states(node: Node) -> dict[tuple[str, str], str]:
    states = {("requester", jid): j.state for jid, j in node.requester.jobs.items()}
    states |= {("worker", jid): w.state for jid, w in node.provider.jobs.items()}
    return states


def _record(before: dict[tuple[str, str], str], after: dict[tuple[str, str], str], ev: str) -> None:
    if _SEEN is None:
        return
    for key in before.keys() | after.keys():
        absent = "(new)" if key[0] == "requester" else "(none)"
        old, new = before.get(key, absent), after.get(key, "(none)")
        if old != new:
            _SEEN.add((key[0], old, ev, new))


def snapshot(mesh: Mesh) -> str:
    """Every job document on every node: equal snapshots mean nothing changed."""
    docs: dict[str, Any] = {}
    for name, node in mesh.nodes.items():
        for jid, j in node.requester.jobs.items():
            docs[f"{name}:requester:{jid}"] = requester_mod.to_doc(j)
        for jid, w in node.provider.jobs.items():
            docs[f"{name}:worker:{jid}"] = provider_mod.to_doc(w)
    return json.dumps(docs, sort_keys=True)


def only_logs(effects: list[Effect]) -> bool:
    return all(isinstance(e, Log) for e in effects)


# -- the happy path ------------------------------------------------------------------------------
def test_redundancy_two_on_three_nodes_done_with_both_workers_agreeing() -> None:
    mesh = Mesh(prices=(3, 2, 4))
    job = make_job()
    mesh.submit("A", job)
    assert len(mesh.effects(Publish, "A")) >= 1
    bids = mesh.sent("bid")
    assert {n for _, n, _ in bids} == {"B", "C"}  # the requester never bids on its own job
    assert mesh.job().state == "bidding" and mesh.job().bids_seen == 2

    mesh.run_job()
    j = mesh.job()
    assert j.state == "done", j.history
    assert j.error == ""
    assert mesh.workers() == {"B": "reported", "C": "reported"}
    assert {r.result.output_digest for r in j.replicas.values() if r.result} == {OUT}
    assert j.accepted_digest == OUT and mesh.names[j.fetch_from] in ("B", "C")
    view = requester_mod.job_view(j)
    assert view["price_total"] == 2 + 4 and view["output_digest"] == OUT
    assert view["bids_received"] == 2 and len(view["workers"]) == 2

    # Each award names only its recipient (a worker must not learn whether anyone checks it)
    # and commits to the two bids the requester considered.
    awards = [m.parse_award(e.data) for _, _, e in mesh.sent("award", src="A")]
    assert sorted(mesh.names[a.worker] for a in awards) == ["B", "C"]
    raw_bids = [e.data for _, _, e in bids]
    for a in awards:
        assert a.winners == ((a.worker, a.price),)
        assert a.bids_digest == m.bids_digest(raw_bids) and a.bids_considered == 2
        assert a.created_at == T0 + 2 and a.deadline_at == T0 + 300

    for w in ("B", "C"):
        wj = mesh.work(w)
        assert wj.state == "reported" and wj.result_sent
        assert wj.result is not None and wj.result.output_digest == OUT
        statuses = [m.parse_status(e.data).state for _, _, e in mesh.sent("status", src=w)]
        assert statuses[:2] == ["accepted", "running"]
        assert len(mesh.effects(RunContainer, w)) == 1
    # Each agreeing worker is asked for its own copy of the outputs before it is paid.
    assert sorted(mesh.names[f.worker] for f in mesh.effects(FetchOutputs, "A")) == ["B", "C"]
    assert not mesh.sent("cancel")
    # Both agreeing workers are paid (ledger, PROTOCOL.md §9) and countersign.
    assert sorted(mesh.names[e.peer_id] for _, _, e in mesh.sent("pay", src="A")) == ["B", "C"]
    assert {n for _, n, _ in mesh.sent("paid", dst="A")} == {"B", "C"}
    # The finished job stays put: later ticks send nothing more.
    before = len(mesh.done)
    mesh.run(60)
    assert not [e for t, _, e in mesh.done[before:] if isinstance(e, SendMessage)]


def test_heartbeats_keep_a_long_job_alive() -> None:
    # A run longer than the silence window is not mistaken for a dead worker.
    mesh = Mesh()
    mesh.scripts = {"B": Script(run_s=100), "C": Script(run_s=100)}
    mesh.submit("A", make_job(timeout_s=120))
    mesh.run_job()
    assert mesh.job().state == "done"
    assert all(r.state == "reported" for r in mesh.job().replicas.values())
    beats = [t for t, _, e in mesh.sent("status", src="B")]
    gaps = [b - a for a, b in itertools.pairwise(beats)]
    assert max(gaps) <= HEARTBEAT_S < SILENCE_S


def test_redundancy_one_runs_on_one_worker() -> None:
    mesh = Mesh(prices=(3, 5, 1))
    mesh.submit("A", make_job(redundancy=1, budget=10))
    mesh.run_job()
    assert mesh.job().state == "done"
    assert mesh.workers() == {"C": "reported"}  # the cheaper bid at equal reputation


def test_redundancy_one_with_budget_for_one_completes() -> None:
    mesh = Mesh(prices=(3, 10, 10))
    mesh.submit("A", make_job(redundancy=1, max_price=10, budget=10))
    mesh.run_job()
    assert mesh.job().state == "done"


# -- nobody bids ---------------------------------------------------------------------------------
def test_image_nobody_allows_ends_no_bids_with_a_clear_message() -> None:
    mesh = Mesh()
    mesh.submit("A", make_job(image="other/thing:1", deadline_s=120))
    for w in ("B", "C"):
        assert mesh.node(w).provider.last_decision[JOB_ID] == "image not allowed: other/thing:1"
    mesh.run(119)
    assert mesh.job().state == "bidding"
    # Asked again in the same round (bids on their way stay valid), with a growing wait.
    assert mesh.job().round == 0
    assert any("published again" in e for _, e in mesh.job().history)
    mesh.run(2)
    j = mesh.job()
    assert j.state == "no-bids"
    assert j.finished_at == T0 + 120
    assert "no peer bid before the deadline" in j.error and "--allow-image" in j.error
    assert not mesh.sent("bid") and not mesh.sent("award") and not j.replicas


def test_unanswered_job_with_a_long_deadline_does_not_crash_the_requester() -> None:
    mesh = Mesh(prices=(3,))
    mesh.submit("A", make_job(deadline_s=1010), window=1)
    mesh.run(1011)
    assert mesh.job().state == "no-bids"


# -- lost workers --------------------------------------------------------------------------------
def test_no_show_after_award_is_lost_and_replaced() -> None:
    mesh = Mesh(prices=(3, 1, 2, 3))  # B and C win; D's bid is the spare
    mesh.submit("A", make_job())
    mesh.muted.add("B")  # it bid, then vanished without a word (acks still flow)
    mesh.run(2)
    assert mesh.workers() == {"B": "awarded", "C": "running"}
    awarded_at = mesh.job().replicas[mesh.ids["B"]].awarded_at
    mesh.run(ACCEPT_WITHIN_S, until=lambda: mesh.workers()["B"] == "lost")
    assert mesh.workers()["B"] == "awarded"  # still within the accept window
    mesh.run(1)
    rep = mesh.job().replicas[mesh.ids["B"]]
    assert rep.state == "lost" and rep.lost_reason == "did not accept the award in time"
    assert mesh.now == awarded_at + ACCEPT_WITHIN_S + 1
    assert mesh.sent("cancel", src="A", dst="B")
    assert mesh.sent("award", src="A", dst="D")  # the spare bid, at once
    mesh.run_job()
    j = mesh.job()
    assert j.state == "done", j.history
    assert mesh.workers() == {"B": "lost", "C": "reported", "D": "reported"}
    assert requester_mod.job_view(j)["price_total"] == 2 + 3
    # A replacement award names only its recipient, like every award.
    last = m.parse_award(mesh.sent("award", dst="D")[-1][2].data)
    assert last.winners == ((mesh.ids["D"], 3),)


def test_worker_silent_after_accepting_is_lost_after_the_silence_window() -> None:
    mesh = Mesh(prices=(3, 1, 2, 3))
    mesh.scripts = {"B": Script(hang=True), "C": Script(run_s=3)}
    mesh.submit("A", make_job())
    mesh.run(20)
    assert mesh.workers()["B"] == "running"
    mesh.muted.add("B")  # its machine died mid-run
    last_heard = mesh.job().replicas[mesh.ids["B"]].last_heard
    mesh.run(200, until=lambda: mesh.workers()["B"] == "lost")
    rep = mesh.job().replicas[mesh.ids["B"]]
    assert rep.lost_reason == f"silent for {SILENCE_S + 1} s"
    assert mesh.now == last_heard + SILENCE_S + 1
    mesh.run_job()
    assert mesh.job().state == "done"
    assert mesh.workers() == {"B": "lost", "C": "reported", "D": "reported"}


def test_worker_whose_connection_closed_is_lost_after_the_grace_not_the_silence() -> None:
    mesh = Mesh(prices=(3, 1, 2, 3))
    mesh.scripts = {"B": Script(hang=True), "C": Script(run_s=3)}
    mesh.submit("A", make_job())
    mesh.run(20)
    assert mesh.workers()["B"] == "running"
    mesh.muted.add("B")  # killed: the kernel closed its connections at once
    closed_at = mesh.now
    mesh.deliver("A", PeerDisconnected(mesh.ids["B"]))
    grace = NodeConfig().connection_grace_s
    mesh.run(200, until=lambda: mesh.workers()["B"] == "lost")
    rep = mesh.job().replicas[mesh.ids["B"]]
    assert mesh.now == closed_at + grace < closed_at + SILENCE_S
    assert rep.lost_reason == f"connection closed {grace} s ago"
    mesh.run_job()
    assert mesh.job().state == "done"
    assert mesh.workers() == {"B": "lost", "C": "reported", "D": "reported"}


def test_a_connection_back_within_the_grace_keeps_the_replica() -> None:
    mesh = Mesh(prices=(3, 1, 2, 3))
    mesh.scripts = {"B": Script(run_s=30), "C": Script(run_s=3)}
    mesh.submit("A", make_job())
    mesh.run(5)
    mesh.deliver("A", PeerDisconnected(mesh.ids["B"]))
    mesh.run(NodeConfig().connection_grace_s - 1)
    mesh.deliver("A", PeerConnected(mesh.ids["B"]))
    mesh.run_job()
    assert mesh.job().state == "done"
    assert mesh.workers()["B"] == "reported"


def test_a_closed_connection_to_a_worker_that_reported_changes_nothing() -> None:
    mesh = Mesh(prices=(3, 1, 2, 3))
    mesh.scripts = {"B": Script(run_s=3), "C": Script(run_s=40)}
    mesh.submit("A", make_job())
    mesh.run(10)
    assert mesh.workers()["B"] == "reported"
    mesh.deliver("A", PeerDisconnected(mesh.ids["B"]))
    mesh.run_job()
    assert mesh.job().state == "done"
    assert mesh.workers()["B"] == "reported"


def test_unreachable_winner_is_replaced_at_once() -> None:
    mesh = Mesh(prices=(3, 1, 2, 3))
    mesh.submit("A", make_job())
    mesh.down.add("B")
    mesh.run(2)
    rep = mesh.job().replicas[mesh.ids["B"]]
    assert rep.state == "lost" and rep.lost_reason == "award not delivered: unreachable"
    assert mesh.sent("award", dst="D")[0][0] == T0 + 2
    mesh.run_job()
    assert mesh.job().state == "done"


def test_hung_worker_is_lost_after_timeout_and_grace() -> None:
    mesh = Mesh(prices=(3, 1, 2, 3))
    mesh.scripts = {"B": Script(hang=True)}
    mesh.submit("A", make_job(timeout_s=30))
    mesh.run(2)
    awarded_at = mesh.job().replicas[mesh.ids["B"]].awarded_at
    mesh.run(400, until=lambda: mesh.workers()["B"] == "lost")
    assert mesh.job().replicas[mesh.ids["B"]].lost_reason == "no result within the job timeout"
    assert mesh.now == awarded_at + 30 + GRACE_S + 1
    mesh.run_job()
    assert mesh.job().state == "done"
    # The lost worker was told to stop.
    assert mesh.work("B").state == "cancelled" and mesh.effects(StopContainer, "B")


def test_worker_declines_and_the_next_bid_runs_it() -> None:
    mesh = Mesh(prices=(3, 1, 2, 3))
    mesh.submit("A", make_job())
    # B bid, then its owner switched work off before the award came.
    mesh.deliver("B", ProfileChanged(replace(mesh.node("B").caps, work=False)))
    mesh.run(2)
    rep = mesh.job().replicas[mesh.ids["B"]]
    assert rep.state == "lost" and rep.lost_reason == "declined: no free slot"
    assert mesh.work("B").state == "expired"
    statuses = [m.parse_status(e.data) for _, _, e in mesh.sent("status", src="B")]
    assert [(s.state, s.detail) for s in statuses] == [("declined", "no free slot")]
    assert not mesh.effects(FetchInputs, "B")
    assert mesh.sent("award", dst="D")[0][0] == T0 + 2  # the spare bid, at once
    mesh.run_job()
    assert mesh.job().state == "done"
    assert mesh.workers() == {"B": "lost", "C": "reported", "D": "reported"}


def test_busy_worker_declines_a_second_award() -> None:
    mesh = Mesh(prices=(3, 1, 2, 3))
    mesh.nodes["B"].caps = replace(mesh.node("B").caps, max_jobs=1)
    mesh.scripts = {"B": Script(run_s=50)}
    job = make_job()
    mesh.submit("A", job, job_id="01" * 16)
    mesh.submit("A", job, job_id="02" * 16)  # B bids on both while idle
    mesh.run(2)
    assert mesh.work("B", "01" * 16).state == "running"
    assert mesh.work("B", "02" * 16).state == "expired"
    mesh.run_job("02" * 16)
    assert mesh.job("02" * 16).state == "done"
    assert mesh.workers("02" * 16) == {"B": "lost", "C": "reported", "D": "reported"}
    assert mesh.job("02" * 16).replicas[mesh.ids["B"]].lost_reason == "declined: no free slot"


# -- budget --------------------------------------------------------------------------------------
def test_budget_limits_the_number_of_winners() -> None:
    # "auto" plans two replicas, but the budget of 15 pays one worker at 10: one award only,
    # and the job runs on that one rather than wait for a second award that can never fit.
    mesh = Mesh(prices=(3, 10, 10, 10))
    mesh.submit("A", make_job(redundancy="auto", max_price=10, budget=15))
    assert mesh.job().k == 2 and mesh.job().bids_seen == 3
    mesh.run(2)
    assert len(mesh.sent("award")) == 1
    j = mesh.job()
    assert j.k == 1 and j.spent() == 10 <= j.spec.budget
    assert any("budget pays one worker only" in text for _, text in j.history)
    mesh.run_job()
    assert mesh.job().state == "done"
    assert len(mesh.sent("award")) == 1


def test_budget_shared_by_cheaper_bids_pays_two() -> None:
    mesh = Mesh(prices=(3, 5, 10, 10))
    mesh.submit("A", make_job(redundancy="auto", max_price=10, budget=15))
    mesh.run_job()
    j = mesh.job()
    assert j.state == "done" and j.spent() == 15
    assert sorted(mesh.workers().values()) == ["reported", "reported"]
    assert "B" in mesh.workers()


def test_unaffordable_late_bid_does_not_start_an_offer_storm() -> None:
    mesh = Mesh(prices=(3, 6, 9, 10))  # B and C fill the budget of 15; D arrives late
    mesh.down.add("D")
    mesh.submit("A", make_job(redundancy="auto", max_price=10, budget=15))
    mesh.down.discard("D")
    mesh.muted.add("C")  # C never starts: lost, and there is no spare bid
    mesh.run(60)  # Mesh.settle fails the test on a storm
    j = mesh.job()
    assert j.round < 5
    assert mesh.workers()["C"] == "lost"
    assert "D" not in mesh.workers()  # its 10 never fits the 9 left
    assert j.spent() <= j.spec.budget


# -- cancel --------------------------------------------------------------------------------------
def test_cancel_stops_running_containers() -> None:
    mesh = Mesh()
    mesh.scripts = {"B": Script(hang=True), "C": Script(hang=True)}
    mesh.submit("A", make_job())
    mesh.run(5)
    assert mesh.workers() == {"B": "running", "C": "running"}
    mesh.deliver("A", CancelRequested(JOB_ID))
    mesh.settle()
    j = mesh.job()
    assert j.state == "cancelled" and j.error == "cancelled by requester"
    for w in ("B", "C"):
        assert mesh.work(w).state == "cancelled"
        assert mesh.work(w).detail == "cancelled by requester"
        assert mesh.effects(StopContainer, w) == [StopContainer(JOB_ID)]
    # Nothing more flows: no heartbeats, no results (the killed containers' reports are ignored).
    before = len(mesh.done)
    mesh.run(60)
    assert not [e for _, _, e in mesh.done[before:] if isinstance(e, SendMessage)]
    # Cancelling again is a no-op.
    assert mesh.deliver("A", CancelRequested(JOB_ID)) == []


def test_cancel_while_fetching_inputs_needs_no_stop() -> None:
    mesh = Mesh()
    mesh.scripts = {"B": Script(inputs_hang=True), "C": Script(hang=True)}
    mesh.submit("A", make_job())
    mesh.run(3)
    assert mesh.workers() == {"B": "accepted", "C": "running"}
    assert mesh.work("B").state == "fetching"
    mesh.deliver("A", CancelRequested(JOB_ID))
    mesh.settle()
    assert mesh.work("B").state == "cancelled" and not mesh.effects(StopContainer, "B")
    assert mesh.effects(StopContainer, "C")
    mesh.queue.append(("B", InputsFetched(JOB_ID, True)))  # the fetch ends after all
    mesh.settle()
    assert not mesh.effects(RunContainer, "B")


def test_cancel_during_bidding() -> None:
    mesh = Mesh()
    mesh.submit("A", make_job())
    mesh.deliver("A", CancelRequested(JOB_ID))
    mesh.run(5)
    assert mesh.job().state == "cancelled" and not mesh.sent("award")


# -- failures ------------------------------------------------------------------------------------
def _verdicts(mesh: Mesh) -> list[m.Verdict]:
    return [
        m.parse_verdict(e.data) for e in mesh.effects(Publish, "A") if e.topic == m.TOPIC_VERDICTS
    ]


def test_job_exiting_non_zero_fails_with_the_reason() -> None:
    mesh = Mesh()
    mesh.scripts = {w: Script(exit_code=3) for w in "BC"}
    mesh.submit("A", make_job())
    mesh.run_job()
    j = mesh.job()
    assert j.state == "failed"
    assert j.error == "job ended exited (exit 3) on 2 agreeing replica(s)"
    # Its outputs and log are fetched anyway, so the user can see why.
    assert len(mesh.effects(FetchOutputs, "A")) == 1
    [v] = _verdicts(mesh)
    assert v.outcome == "failed" and {mesh.names[w] for w in v.agreeing} == {"B", "C"}


def test_timed_out_job_ends_timeout() -> None:
    mesh = Mesh()
    mesh.scripts = {w: Script(status="timeout", exit_code=None, run_s=60) for w in "BC"}
    mesh.submit("A", make_job())
    mesh.run_job()
    assert mesh.job().state == "timeout"
    assert mesh.job().error == "job ended timeout (exit None) on 2 agreeing replica(s)"


def test_one_replica_failing_adds_a_replica_and_the_majority_wins() -> None:
    mesh = Mesh(prices=(3, 1, 2, 3))
    mesh.scripts = {"C": Script(exit_code=1, output_digest=_digest(b"partial"))}
    mesh.submit("A", make_job())
    mesh.run_job()
    j = mesh.job()
    assert j.state == "done", j.history
    assert mesh.workers() == {"B": "reported", "C": "reported", "D": "reported"}
    assert j.accepted_digest == OUT
    [v] = _verdicts(mesh)
    assert v.outcome == "accepted" and v.accepted_digest == OUT
    assert {mesh.names[w] for w in v.agreeing} == {"B", "D"}
    assert [mesh.names[w] for w in v.dissenting] == ["C"]


def test_results_that_disagree_are_never_accepted() -> None:
    # Two replicas, two answers, nobody to break the tie: the job must not be done.
    mesh = Mesh()
    mesh.scripts = {
        "B": Script(output_digest=_digest(b"1")),
        "C": Script(output_digest=_digest(b"2")),
    }
    mesh.submit("A", make_job(deadline_s=120))
    mesh.run(121)
    j = mesh.job()
    assert j.state in ("timeout", "failed", "inconclusive")
    assert j.state != "done"
    assert all(v.outcome == "inconclusive" for v in _verdicts(mesh))
    assert any("results disagree" in text for _, text in j.history)


def test_a_small_mesh_out_of_workers_decides_by_a_plain_majority() -> None:
    # Three workers, one cheats: 1 against 1, then 2 against 1 is no lead of two, and the
    # fourth replica's offer round finds nobody. The plain majority then decides (§8.1). Two
    # against one proves nothing to others (a proof needs a lead of two, §8.8), but the
    # requester itself has caught the cheater: no more work from it here.
    mesh = Mesh(prices=(3, 1, 2, 3))
    mesh.scripts = {"B": Script(output_digest=_digest(b"odd"))}
    mesh.submit("A", make_job())
    mesh.run_job()
    j = mesh.job()
    assert j.state == "done" and j.accepted_digest == OUT, j.history
    assert j.starved and any("plain majority" in text for _, text in j.history)
    assert mesh.workers() == {"B": "reported", "C": "reported", "D": "reported"}
    [v] = _verdicts(mesh)
    assert [mesh.names[w] for w in v.dissenting] == ["B"]
    a = mesh.node("A")
    assert not a.excluded(mesh.ids["B"]) and a.book.credibility(mesh.ids["B"], mesh.now) == 0.0
    assert not [e for e in mesh.effects(Publish, "A") if e.topic == "p2pmesh/proofs/1"]


def test_a_small_mesh_out_of_workers_ends_inconclusive_when_nothing_agrees() -> None:
    # Three workers, three answers: the fourth replica's round finds nobody, and no plain
    # majority exists either, so the job ends inconclusive instead of waiting for its deadline.
    mesh = Mesh(prices=(3, 1, 2, 3))
    mesh.scripts = {w: Script(output_digest=_digest(w.encode())) for w in "BCD"}
    mesh.submit("A", make_job(deadline_s=280))
    mesh.run_job()
    j = mesh.job()
    assert j.state == "inconclusive", j.history
    assert j.error == "no majority after 3 replicas (groups: 1, 1, 1)"
    assert mesh.now < 1_700_000_000 + 60


def test_results_that_never_agree_end_inconclusive() -> None:
    mesh = Mesh(prices=(3, 1, 2, 3, 4, 5))
    mesh.scripts = {w: Script(output_digest=_digest(w.encode())) for w in "BCDEF"}
    mesh.submit("A", make_job())
    mesh.run_job()
    j = mesh.job()
    assert j.state == "inconclusive"
    assert j.error == "no majority after 5 replicas (groups: 1, 1, 1, 1, 1)"
    [v] = _verdicts(mesh)
    assert v.outcome == "inconclusive" and not v.agreeing and not v.dissenting


def test_numeric_validation_compares_fetched_outputs() -> None:
    # Different bytes, equal numbers within the tolerance: the replicas agree.
    mesh = Mesh()
    mesh.scripts = {
        "B": Script(output_digest=_digest(b"1.0000001"), numeric_key="pi"),
        "C": Script(output_digest=_digest(b"1.0000002"), numeric_key="pi"),
    }
    mesh.submit("A", make_job(validation={"mode": "numeric", "rel_tol": 1e-6}))
    mesh.run_job()
    j = mesh.job()
    assert j.state == "done", j.history
    compared = mesh.effects(CompareOutputs, "A")
    assert len(compared) == 1
    assert {mesh.names[w] for w, _ in compared[0].outputs} == {"B", "C"}
    assert {mesh.names[f.worker] for f in mesh.effects(FetchOutputs, "A")} == {"B", "C"}
    [v] = _verdicts(mesh)
    assert v.outcome == "accepted" and {mesh.names[w] for w in v.agreeing} == {"B", "C"}


def test_numeric_disagreement_adds_replicas_until_one_side_leads_by_two() -> None:
    mesh = Mesh(prices=(3, 1, 2, 3, 4))
    mesh.scripts = {
        "B": Script(output_digest=_digest(b"b"), numeric_key="pi"),
        "C": Script(output_digest=_digest(b"c"), numeric_key="e"),
        "D": Script(output_digest=_digest(b"d"), numeric_key="pi"),
        "E": Script(output_digest=_digest(b"e"), numeric_key="pi"),
    }
    mesh.submit("A", make_job(validation={"mode": "numeric", "rel_tol": 1e-6}))
    mesh.run_job()
    j = mesh.job()
    assert j.state == "done", j.history
    [v] = _verdicts(mesh)
    # Two against one is no lead of two (majority.Rule.margin): E is added and decides.
    assert {mesh.names[w] for w in v.agreeing} == {"B", "D", "E"}
    assert [mesh.names[w] for w in v.dissenting] == ["C"]


def test_outputs_a_worker_does_not_serve_lose_it_and_a_new_replica_replaces_it() -> None:
    # B and C agree and are asked for their outputs; B does not serve them: B is lost (and
    # never paid), C alone is no majority of two, so D replaces B; C and D agree and serve.
    mesh = Mesh(prices=(3, 1, 2, 4))
    mesh.fail_outputs = {"B"}
    mesh.submit("A", make_job())
    mesh.run_job()
    j = mesh.job()
    assert j.state == "done", j.history
    # Both agreeing workers are asked at once; C serves, and so does D later.
    assert [mesh.names[f.worker] for f in mesh.effects(FetchOutputs, "A")] == ["B", "C", "D"]
    assert mesh.workers() == {"B": "lost", "C": "reported", "D": "reported"}
    assert j.replicas[mesh.ids["B"]].lost_reason == "outputs could not be fetched: refused"
    assert sorted(mesh.names[e.peer_id] for _, _, e in mesh.sent("pay", src="A")) == ["C", "D"]
    [v] = _verdicts(mesh)
    assert v.outcome == "accepted" and sorted(mesh.names[w] for w in v.agreeing) == ["C", "D"]


def test_outputs_nobody_serves_never_end_done_and_pay_nothing() -> None:
    # Both are asked, neither serves: both are lost, and nobody is left to replace them.
    mesh = Mesh()
    mesh.fail_outputs = {"B", "C"}
    mesh.submit("A", make_job())
    mesh.run_job()
    j = mesh.job()
    assert j.state == "timeout", j.history
    assert mesh.workers() == {"B": "lost", "C": "lost"}
    assert not mesh.sent("pay") and not _verdicts(mesh)
    assert mesh.node("A").ledger.balance_json(mesh.ids["A"])["spent"] == 0


def test_deadline_before_enough_results_is_timeout() -> None:
    mesh = Mesh()
    mesh.scripts = {"B": Script(hang=True)}
    mesh.submit("A", make_job(timeout_s=60, deadline_s=100))
    mesh.run(101)
    j = mesh.job()
    assert j.state == "timeout"
    assert j.error == "deadline passed before enough results arrived"
    assert mesh.sent("cancel", dst="B") and mesh.work("B").state == "cancelled"
    assert not mesh.sent("cancel", dst="C")  # it had reported: nothing to stop


# -- persistence ---------------------------------------------------------------------------------
def test_docs_round_trip_mid_job() -> None:
    mesh = Mesh(prices=(3, 1, 2, 3))
    mesh.scripts = {"B": Script(run_s=30), "C": Script(run_s=2)}
    mesh.submit("A", make_job())
    mesh.run(10)  # B running, C reported, D's bid spare
    j = mesh.job()
    assert mesh.workers() == {"B": "running", "C": "reported"}
    doc = json.loads(json.dumps(requester_mod.to_doc(j)))
    # ``now`` 0: no fresh silence allowance, so the round trip is exact.
    again = requester_mod.from_doc(doc, mesh.ids["A"], 0)
    assert requester_mod.to_doc(again) == requester_mod.to_doc(j)
    assert again.bids.keys() == j.bids.keys() and again.tried == j.tried
    for w in ("B", "C", "D"):
        wdoc = json.loads(json.dumps(provider_mod.to_doc(mesh.work(w))))
        back = provider_mod.from_doc(wdoc)
        assert provider_mod.to_doc(back) == provider_mod.to_doc(mesh.work(w))
        assert back.offer == mesh.work(w).offer and back.bid == mesh.work(w).bid


def test_cross_validation_state_survives_a_restart() -> None:
    mesh = Mesh()
    mesh.scripts = {"B": Script(hang=True), "C": Script(hang=True)}
    mesh.submit("A", make_job(redundancy="auto"))
    mesh.run(5)
    j = mesh.job()
    again = requester_mod.from_doc(
        json.loads(json.dumps(requester_mod.to_doc(j))), mesh.ids["A"], 0
    )
    assert (again.auto, again.max_replicas, again.spot_check) == (
        j.auto,
        j.max_replicas,
        j.spot_check,
    )


def test_from_doc_gives_every_replica_a_fresh_silence_allowance() -> None:
    mesh = Mesh()
    mesh.scripts = {"B": Script(hang=True), "C": Script(hang=True)}
    mesh.submit("A", make_job())
    mesh.run(5)
    doc = requester_mod.to_doc(mesh.job())
    later = mesh.now + 40
    j = requester_mod.from_doc(doc, mesh.ids["A"], later)
    assert all(r.last_heard == later for r in j.replicas.values())


def test_everyone_restarts_mid_run_and_the_job_still_completes() -> None:
    mesh = Mesh()
    mesh.scripts = {"B": Script(run_s=20), "C": Script(run_s=20)}
    mesh.submit("A", make_job())
    mesh.run(6)
    assert mesh.workers() == {"B": "running", "C": "running"}
    for name in ("A", "B", "C"):
        mesh.restart(name)
    # The workers redo the run they lost: fetch inputs again, start again.
    for w in ("B", "C"):
        assert len(mesh.effects(FetchInputs, w)) == 2
        assert len(mesh.effects(RunContainer, w)) == 2
    mesh.run_job()
    j = mesh.job()
    assert j.state == "done", j.history
    assert mesh.workers() == {"B": "reported", "C": "reported"}


def test_requester_restart_during_bidding_keeps_the_bids() -> None:
    mesh = Mesh()
    mesh.submit("A", make_job(), window=5)
    mesh.run(2)
    mesh.restart("A")
    assert mesh.job().state == "bidding" and len(mesh.job().bids) == 2
    mesh.run_job()
    assert mesh.job().state == "done"
    assert mesh.job().round == 0  # no re-offer needed: the bids survived


def test_worker_restart_after_reporting_resends_an_undelivered_result() -> None:
    mesh = Mesh()
    mesh.submit("A", make_job())
    mesh.run(3)
    mesh.down.add("A")  # the result cannot be delivered
    mesh.run(12)
    assert mesh.work("B").state == "reported" and not mesh.work("B").result_sent
    mesh.down.discard("A")
    # B's last doc says reported, not delivered: after a restart it keeps re-sending it.
    mesh.restart("B")
    assert mesh.work("B").state == "reported" and mesh.work("B").result is not None
    mesh.run(provider_mod.RESEND_RESULT_S + 1)
    assert mesh.work("B").result_sent
    mesh.run_job()
    assert mesh.job().state == "done"


def _runs(mesh: Mesh, name: str) -> int:
    return len([e for e in mesh.effects(RunContainer, name) if e.job_id == JOB_ID])


def test_restarted_worker_replaced_meanwhile_drops_the_job_without_running_it() -> None:
    mesh = Mesh(prices=(3, 1, 2, 3))
    mesh.scripts = {"B": Script(run_s=60), "C": Script(run_s=60)}
    mesh.submit("A", make_job())
    mesh.run(5)
    assert mesh.workers()["B"] == "running"
    mesh.down.add("B")
    mesh.run(SILENCE_S + 2, until=lambda: mesh.workers()["B"] == "lost")
    assert mesh.workers()["B"] == "lost"
    runs = _runs(mesh, "B")
    mesh.down.discard("B")
    mesh.restart("B")
    assert mesh.sent("award-query", src="B")
    assert mesh.work("B").state == "cancelled"
    assert mesh.work("B").detail == "award no longer stands"
    mesh.run_job()
    assert mesh.job().state == "done"
    assert _runs(mesh, "B") == runs  # no second container


def test_restarted_worker_whose_award_stands_resumes_at_once() -> None:
    mesh = Mesh()
    mesh.scripts = {"B": Script(run_s=30), "C": Script(run_s=3)}
    mesh.submit("A", make_job())
    mesh.run(5)
    runs = _runs(mesh, "B")
    mesh.restart("B")
    assert mesh.sent("award-answer", src="A")
    assert _runs(mesh, "B") == runs + 1  # resumed in the same second
    mesh.run_job()
    assert mesh.job().state == "done" and mesh.workers()["B"] == "reported"


def test_restarted_worker_without_an_answer_resumes_as_before() -> None:
    mesh = Mesh()
    mesh.scripts = {"B": Script(run_s=30), "C": Script(run_s=3)}
    mesh.submit("A", make_job())
    mesh.run(5)
    mesh.muted.add("A")  # an older requester: it does not answer the question
    runs = _runs(mesh, "B")
    mesh.restart("B")
    mesh.run(provider_mod.AWARD_QUERY_WAIT_S - 1)
    assert _runs(mesh, "B") == runs
    mesh.run(1)
    assert _runs(mesh, "B") == runs + 1
    mesh.muted.discard("A")
    mesh.run_job()
    assert mesh.job().state == "done"


def test_worker_restart_after_the_deadline_reports_an_error() -> None:
    mesh = Mesh()
    mesh.scripts = {"B": Script(hang=True)}
    mesh.submit("A", make_job())
    mesh.run(5)
    doc = mesh.db["B"][("jobs", f"worker:{JOB_ID}")]
    node = Node(NodeConfig(), mesh.node("B").signer, mesh.node("B").caps)
    effects = node.provider.restore(doc, T0 + 400)
    sends = [e for e in effects if isinstance(e, SendMessage)]
    assert [e.kind for e in sends] == ["result"]
    res = m.parse_result(sends[0].data)
    assert res.status == "error" and res.exit_code is None


# -- forged messages -----------------------------------------------------------------------------
STRANGER = Ed25519Signer(b"\x66" * 32)


def _award_like(mesh: Mesh, signer: Ed25519Signer, worker: str) -> bytes:
    bid = m.parse_bid(mesh.sent("bid", src=worker)[0][2].data, requester=mesh.ids["A"])
    return m.build_award(
        signer,
        job_id=JOB_ID,
        job_digest=bid.job_digest,
        round_=0,
        worker=bid.bidder,
        price=bid.price,
        winners=[(bid.bidder, bid.price)],
        considered=[bid.raw],
        now=mesh.now,
        deadline_at=mesh.now + 100,
    ).raw


def test_forged_award_is_refused_and_changes_nothing() -> None:
    mesh = Mesh()
    mesh.submit("A", make_job())
    before = snapshot(mesh)
    # An award signed by a stranger, and the requester's own award relayed by another peer.
    forged = _award_like(mesh, STRANGER, "B")
    genuine = _award_like(mesh, mesh.node("A").signer, "B")
    for data, sender in (
        (forged, STRANGER.peer_id),
        (forged, mesh.ids["A"]),
        (genuine, mesh.ids["C"]),
    ):
        effects = mesh.deliver("B", MessageReceived("award", data, sender))
        assert only_logs(effects) and effects
        assert effects[0].msg == "award refused"
    assert snapshot(mesh) == before
    assert mesh.work("B").state == "bid"
    # An award naming C delivered to B is refused too.
    effects = mesh.deliver(
        "B", MessageReceived("award", _award_like(mesh, mesh.node("A").signer, "C"), mesh.ids["A"])
    )
    assert only_logs(effects) and effects[0].fields["reason"] == "award names another worker"
    assert snapshot(mesh) == before
    mesh.run_job()
    assert mesh.job().state == "done"


def _result_from(signer: Ed25519Signer, job: WireJob, digest: str = OUT) -> bytes:
    return m.build_result(
        signer,
        job_id=JOB_ID,
        job_digest=job.digest,
        status="exited",
        exit_code=0,
        output_digest=digest,
        output_size=1,
        log_digest=LOG,
        log_size=1,
        log_truncated=False,
        run_ms=1,
        cpu_ms=1,
        max_memory_mb=1,
        finished_at=T0,
    ).raw


def test_forged_results_and_statuses_are_refused_and_change_nothing() -> None:
    mesh = Mesh(prices=(3, 1, 2, 3))  # D bids but is not awarded
    mesh.scripts = {"B": Script(run_s=10), "C": Script(run_s=10)}
    job = make_job()
    mesh.submit("A", job)
    mesh.run(4)
    assert mesh.workers() == {"B": "running", "C": "running"}
    before = snapshot(mesh)
    evil = _digest(b"evil")
    attempts = [
        (_result_from(mesh.node("D").signer, job, evil), mesh.ids["D"]),  # bid, never awarded
        (_result_from(STRANGER, job, evil), STRANGER.peer_id),  # never even bid
        (_result_from(mesh.node("B").signer, job, evil), mesh.ids["D"]),  # B's key, D's connection
        (
            m.build_status(STRANGER, job_id=JOB_ID, state="declined", detail="x", now=mesh.now).raw,
            STRANGER.peer_id,
        ),
        (
            m.build_status(
                mesh.node("B").signer, job_id=JOB_ID, state="declined", detail="x", now=mesh.now
            ).raw,
            mesh.ids["D"],
        ),
    ]
    for data, sender in attempts:
        kind = "result" if _is_result(data) else "status"
        effects = mesh.deliver("A", MessageReceived(kind, data, sender))
        assert only_logs(effects)
    # A bid relayed by someone else is refused too.
    b_bid = mesh.sent("bid", src="B")[0][2].data
    assert only_logs(mesh.deliver("A", MessageReceived("bid", b_bid, mesh.ids["C"])))
    assert snapshot(mesh) == before
    mesh.run_job()
    assert mesh.job().state == "done"
    assert mesh.job().accepted_digest == OUT


def _is_result(data: bytes) -> bool:
    try:
        m.parse_result(data)
    except Exception:
        return False
    return True


def test_cancel_from_a_stranger_is_refused_and_changes_nothing() -> None:
    mesh = Mesh()
    mesh.scripts = {"B": Script(run_s=10), "C": Script(run_s=10)}
    mesh.submit("A", make_job())
    mesh.run(4)
    before = snapshot(mesh)
    forged = m.build_cancel(STRANGER, job_id=JOB_ID, reason="stop", now=mesh.now).raw
    genuine = m.build_cancel(mesh.node("A").signer, job_id=JOB_ID, reason="stop", now=mesh.now).raw
    for data, sender in (
        (forged, STRANGER.peer_id),
        (forged, mesh.ids["A"]),
        (genuine, mesh.ids["C"]),
    ):
        effects = mesh.deliver("B", MessageReceived("cancel", data, sender))
        assert only_logs(effects) and effects[0].msg == "cancel refused"
    assert snapshot(mesh) == before
    assert not mesh.effects(StopContainer)
    mesh.run_job()
    assert mesh.job().state == "done"


def test_garbage_and_unknown_kinds_are_logged_not_raised() -> None:
    mesh = Mesh()
    mesh.submit("A", make_job())
    before = snapshot(mesh)
    # Every kind Node routes (job, verdict and ledger kinds) and one it does not know.
    kinds = ("offer", "bid", "award", "status", "result", "cancel", "verdict")
    for kind in (*kinds, "pay", "paid", "head", "fraud", "gossip"):
        for data in (
            b"",
            b"\xc1",
            b"\x80" * 10,
            m.build_cancel(STRANGER, job_id=JOB_ID, reason="", now=T0).raw,
        ):
            for name in ("A", "B"):
                assert only_logs(mesh.deliver(name, MessageReceived(kind, data, STRANGER.peer_id)))
    assert snapshot(mesh) == before


# -- flaky peers (property) ----------------------------------------------------------------------
_BEHAVIOUR = st.sampled_from(
    ["honest", "slow", "mute", "down", "hang", "fail", "decline", "odd", "restart"]
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    behaviours=st.lists(_BEHAVIOUR, min_size=1, max_size=4),
    redundancy=st.sampled_from([2, 3, "auto"]),
    when=st.integers(0, 20),
    requester_restarts=st.booleans(),
)
def test_flaky_peers_always_end_in_a_final_state(
    behaviours: list[str], redundancy: int | str, when: int, requester_restarts: bool
) -> None:
    global _SEEN
    _SEEN = set()
    try:
        _flaky_run(behaviours, redundancy, when, requester_restarts)
    finally:
        seen, _SEEN = _SEEN, None
    # Whatever the peers did, every state change is one the spec's tables allow.
    assert not _undocumented(seen)


def _flaky_run(
    behaviours: list[str], redundancy: int | str, when: int, requester_restarts: bool
) -> None:
    mesh = Mesh(prices=(3, *[1 + i for i in range(len(behaviours))]))
    workers = NAMES[1 : 1 + len(behaviours)]
    plan = dict(zip(workers, behaviours, strict=True))
    scripts = {
        "slow": Script(run_s=50),
        "hang": Script(hang=True),
        "fail": Script(exit_code=2),
        "odd": Script(output_digest=_digest(b"odd")),
    }
    mesh.scripts = {w: scripts[b] for w, b in plan.items() if b in scripts}
    job = make_job(redundancy=redundancy, budget=30, timeout_s=40, deadline_s=200)
    mesh.submit("A", job)
    for w, b in plan.items():
        if b == "decline":
            mesh.nodes[w].caps = replace(mesh.node(w).caps, work=False)
    mesh.run(when)
    for w, b in plan.items():
        if b == "mute":
            mesh.muted.add(w)
        elif b == "down":
            mesh.down.add(w)
        elif b == "restart":
            mesh.restart(w)
    if requester_restarts:
        mesh.restart("A")
    final_at = None
    for _ in range(220):
        mesh.tick()
        j = mesh.job()
        assert len(j.active()) <= j.max_replicas
        assert j.spent() <= j.spec.budget
        for w in workers:
            assert mesh.node(w).provider.active_count() <= mesh.node(w).caps.max_jobs
        if final_at is None and j.state in requester_mod.FINAL:
            final_at = mesh.now
    j = mesh.job()
    assert j.state in requester_mod.FINAL, j.history
    assert final_at is not None and final_at <= T0 + 200
    # Once final, the requester awards nothing and nobody starts a container.
    late = [(n, e) for t, n, e in mesh.done if t > final_at]
    assert not [e for n, e in late if n == "A" and isinstance(e, SendMessage) and e.kind == "award"]
    assert not [e for _, e in late if isinstance(e, RunContainer)]
    # Workers only ever talk to the requester.
    for _, n, e in mesh.done:
        if isinstance(e, SendMessage) and n != "A":
            assert e.peer_id == mesh.ids["A"]
    if j.state == "done":
        # A strict majority of the replicas in play agreed on the accepted output.
        agreeing = [
            r
            for r in j.active()
            if r.result and r.result.output_digest == j.accepted_digest and r.result.exit_code == 0
        ]
        need = 1 if j.auto and j.k == 1 else 2
        assert len(agreeing) >= need and len(agreeing) * 2 > len(j.active())
        assert requester_mod.job_view(j)["price_total"] <= j.spec.budget


# -- the lifecycle tables in the spec ------------------------------------------------------------
@functools.cache
def _spec_table(heading: str) -> list[tuple[str, set[str], str]]:
    doc = (ROOT / "docs/PROTOCOL.md").read_text(encoding="utf-8")
    start = doc.index(heading)
    end = doc.index("\n### ", start + 1)
    rows = []
    for line in doc[start:end].splitlines():
        if not line.startswith("| ") or line.startswith(("| from", "|---")):
            continue
        frm, events, _condition, to = (c.strip() for c in line.strip().strip("|").split("|")[:4])
        rows.append((frm, {e.strip() for e in events.split(",")}, to))
    return rows


def _documented(seen: tuple[str, str, str, str], rows: list[tuple[str, set[str], str]]) -> bool:
    role, old, event, new = seen
    final = requester_mod.FINAL if role == "requester" else provider_mod.FINAL
    for frm, events, to in rows:
        if event not in events:
            continue
        froms = set(re.findall(r"`([a-z-]+)`", frm)) | {x for x in ("(new)", "(none)") if x in frm}
        if "any non-final" in frm and old not in final and not old.startswith("("):
            froms.add(old)
        tos = set(re.findall(r"`([a-z-]+)`", to)) | ({"(none)"} if "(none)" in to else set())
        if to == "unchanged":
            tos.add(old)
        if old in froms and new in tos:
            return True
    return False


def _undocumented(seen: set[tuple[str, str, str, str]]) -> list[tuple[str, str, str, str]]:
    """The transitions in ``seen`` that no row of PROTOCOL.md §7.7 (requester) / §7.8 allows."""
    tables = {
        "requester": _spec_table("### 7.7 Requester lifecycle"),
        "worker": _spec_table("### 7.8 Worker lifecycle"),
    }
    return sorted(t for t in seen if not _documented(t, tables[t[0]]))


def test_every_transition_seen_is_in_the_spec_tables() -> None:
    """Run every scenario here again, recording state changes; each must be a documented row."""
    global _SEEN
    scenarios = [
        f
        for name, f in sorted(globals().items())
        if name.startswith("test_")
        and name != "test_every_transition_seen_is_in_the_spec_tables"
        and not hasattr(f, "hypothesis")  # the property runs its own examples, slowly
    ]
    _SEEN = set()
    try:
        for scenario in scenarios:
            scenario()
    finally:
        seen, _SEEN = _SEEN, None
    assert not _undocumented(seen)
    # The scenarios do walk the main paths.
    for expected in [
        ("requester", "(new)", "submit", "bidding"),
        ("requester", "bidding", "tick", "awarded"),
        ("requester", "awarded", "status", "running"),
        ("requester", "running", "result", "fetching"),
        ("requester", "fetching", "outputs fetched", "done"),
        ("requester", "bidding", "tick", "no-bids"),
        ("requester", "running", "cancel", "cancelled"),
        ("worker", "(none)", "offer", "bid"),
        ("worker", "bid", "award", "fetching"),
        ("worker", "fetching", "inputs fetched", "running"),
        ("worker", "running", "container finished", "reported"),
        ("worker", "running", "restart", "fetching"),
    ]:
        assert expected in seen, expected


def test_next_wakeup_leaves_most_ticks_of_a_job_idle() -> None:
    # Mesh.tick asserts that every tick before a node's next_wakeup does nothing; this shows
    # that the assertion bites on a real flow and that the skipped ticks are most of them.
    mesh = Mesh()
    mesh.scripts["B"] = mesh.scripts["C"] = Script(run_s=40)
    mesh.submit("A", make_job())
    mesh.run_job()
    assert mesh.job().state == "done"
    ticks = (mesh.now - T0) * len(mesh.nodes)
    print(f"ticks {ticks}, due {mesh.ticks_due}")
    assert 0 < mesh.ticks_due < ticks / 4
