"""Requester side of a job: offer, bid window, award, watch the workers, collect the result.

Theory of operation (PROTOCOL.md §7). States::

    bidding ─(window ends, ≥1 bid)─▶ awarded ─(first worker runs)─▶ running ─▶ fetching ─▶ done
       │  ▲                             │                               │            └─▶ failed
       │  └─(no bid: re-offer, round+1)─┘◀──(worker lost, no spare bid)─┘
       ├─(deadline, never a bid) ─▶ no-bids
       any non-final ─(deadline) ─▶ timeout      any non-final ─(cancel) ─▶ cancelled

Cross-validation (PROTOCOL.md §8). The majority rule itself is ``majority.decide``, a pure
function of the replicas in play: decide, add a replica, inconclusive, or wait. Numeric
validation needs the successful replicas' outputs fetched and compared first (the driver
compares them and reports the groups back); this module does that and turns each decision into
effects. Every decision is a signed ``verdict`` that is gossiped, and it is evidence for
reputation: agreeing workers gain, dissenting ones lose, no-shows lose a little.

Nothing is paid for nothing. A successful result's outputs are fetched from its worker as soon
as it arrives; the driver answers ``OutputsFetched`` ok only once they are on our disk, match
the result's digests and pass the archive checks. When a success group has its majority, the
replicas that have not reported are cancelled, and once *every* worker of the group has served
its copy the ``accepted`` verdict is signed (dated when the group formed, so a restart mid-fetch
signs the same bytes), the evidence recorded and each agreeing worker paid once. A worker that
does not serve is lost (a no-show; a dissenter as well if its result disagrees) and unpaid; the
rule is applied again, and either the rest of the group still decides or the replica is
replaced. A failure group pays nobody: its verdict is signed at once, and its outputs and log
are fetched for the user only, retried every ``FETCH_RETRY_S`` until the deadline.

A *replica* is one awarded worker. It is lost when it declines, when the award cannot be
delivered, when it stays silent for ``SILENCE_S`` (workers send a status at least every
``HEARTBEAT_S``), when its connection closed and did not come back within the connection
grace (a killed worker's kernel closes it at once; a frozen one keeps it and is found by
silence), when it has not reported by ``timeout_s + GRACE_S`` after its award, or when
it does not serve the outputs of an accepted group. A lost replica is replaced by the best
unused bid of the current round, else by a new round of offers that excludes every peer already
tried.

All times are integer unix seconds passed in by the driver.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from p2pmesh.core import codec
from p2pmesh.core import service as svc
from p2pmesh.core.auction import majority, proofs, sortition
from p2pmesh.core.auction import messages as m
from p2pmesh.core.auction.selection import choose_winners
from p2pmesh.core.crypto import Signer
from p2pmesh.core.effects import (
    CompareOutputs,
    Effect,
    FetchOutputs,
    Log,
    Persist,
    Publish,
    SendMessage,
)
from p2pmesh.core.jobspec import WireJob, job_from_wire
from p2pmesh.core.reputation import ReputationBook
from p2pmesh.core.timers import INF, Alarm, earliest
from p2pmesh.errors import DecodeError, ValidationError

SILENCE_S = 45
HEARTBEAT_S = 15
ACCEPT_WITHIN_S = 30
GRACE_S = 120
FETCH_RETRY_S = 15
# A service the user ended: its worker stops the container and reports; without a result this
# long after the cancel the job ends ``cancelled``, unpaid.
SERVICE_END_WAIT_S = 60
UNSERVED = "outputs could not be fetched"  # lost_reason of a replica that did not serve
FINAL = frozenset({"done", "failed", "timeout", "cancelled", "no-bids", "inconclusive"})
DEFAULT_SPOT_CHECK = 0.10
DEFAULT_HIDDEN_RATE = 0.10


# Bidder sortition (§7.12): a drawn offer widens once it has waited this many smoothed bid
# delays (and at least three bid windows) without enough bids; each first bid of an offer moves
# the smoothed delay by this weight.
WIDEN_AFTER_DELAYS = 3
BID_DELAY_WEIGHT = 0.2


def max_replicas_for(k: int) -> int:
    """Replicas a job may grow to when its results disagree. With a hidden replica k is one
    more, which leaves room for an honest side to outvote a ring of two by the margin (4 to 2)."""
    return 2 * k + 1


@dataclass(slots=True)
class Replica:
    worker: str
    price: int
    round: int
    awarded_at: int
    state: str = "awarded"  # awarded | accepted | fetching | running | reported | lost
    last_heard: int = 0
    result: m.Result | None = None
    lost_reason: str = ""
    addrs: tuple[str, ...] = ()
    gone_at: int = 0  # our last connection to the worker closed then (0: connected or unknown)
    running_at: int = 0  # its first ``running`` status arrived then (0: not yet)
    reported_at: int = 0  # its result arrived then, by our clock (a service's bill)
    detail: str = ""  # its last status's detail (e.g. "getting image: 3 of 9 MB"); not stored


@dataclass(slots=True)
class RequesterJob:
    job_id: str
    job: WireJob
    k: int
    created_at: int
    deadline_at: int
    bid_window_s: int
    addrs: tuple[str, ...]
    state: str = "bidding"
    round: int = 0
    window_ends: int = 0
    offer_raw: bytes = b""
    bids: dict[str, m.Bid] = field(default_factory=dict)  # current round, by bidder
    bids_seen: int = 0
    replicas: dict[str, Replica] = field(default_factory=dict)
    tried: set[str] = field(default_factory=set)
    tried_fetch: set[str] = field(default_factory=set)
    auto: bool = False
    max_replicas: int = 0
    spot_check: bool = False
    hidden: bool = False  # one replica more than the job's public redundancy (§8.7)
    starved: bool = False  # no replica could be added: a plain majority decides (§8.1)
    fetched: set[str] = field(default_factory=set)  # outputs held locally (numeric mode)
    fetching: set[str] = field(default_factory=set)
    groups: list[list[str]] | None = None  # numeric comparison of the current reported set
    compared: tuple[str, ...] = ()
    verdict_raw: bytes = b""
    retry_fetch_at: int = 0
    resumed: bool = False  # restored after a restart: transfers in flight must be re-issued
    accepted_digest: str = ""
    decided_at: int = 0  # when the accepted group formed: the date its verdict carries
    fetch_from: str = ""
    error: str = ""
    finished_at: int = 0
    history: list[tuple[int, str]] = field(default_factory=list)
    offered_exclude: tuple[str, ...] = ()  # the exclude list of the offer last published
    asked_again: int = 0  # times the current round's offer was published again
    widened: int = 0  # times the bidder draw was doubled (§7.12); kept across rounds
    offered_at: int = 0  # when the current offer was signed (not on re-publication)
    ending_at: int = 0  # a service the user ended then: waiting for its worker's result

    @property
    def spec(self) -> Any:
        return self.job.spec

    @property
    def select(self) -> int | None:
        """The current round's bidder sortition threshold (§7.12), from the offer itself."""
        return m.parse_offer(self.offer_raw).select if self.offer_raw else None

    def active(self) -> list[Replica]:
        return [r for r in self.replicas.values() if r.state != "lost"]

    def spent(self) -> int:
        return sum(r.price for r in self.active())

    def note(self, now: int, text: str) -> None:
        self.history.append((now, text))
        del self.history[:-50]


class Requester:
    def __init__(
        self,
        signer: Signer,
        reputation: Any,
        *,
        book: ReputationBook | None = None,
        rng: Any = None,
        spot_check: float = DEFAULT_SPOT_CHECK,
        eligible: Any = None,
        connection_grace_s: int = 5,
        prefix: Any = None,
        hidden_rate: float = DEFAULT_HIDDEN_RATE,
        sortition: bool = False,
    ) -> None:
        self.hidden_rate = hidden_rate
        self.sortition = sortition  # draw the bidders when we know many fitting peers (§7.12)
        # How long bids take to reach us after an offer, smoothed: a busy mesh answers late,
        # and a draw must not widen (more bidders, more load) merely because bids are slow.
        self.bid_delay_s = 1.0
        self.connection_grace_s = connection_grace_s
        # callable(peer_id) -> observed network prefix; None: no diversity rule (§8.6)
        self.prefix = prefix
        # callable(WireJob, chosen=None) -> how many known peers could bid (of those ``chosen``)
        self.eligible = eligible
        self.signer = signer
        self.self_id = signer.peer_id
        self.reputation = reputation  # callable(peer_id) -> float
        self.book = book if book is not None else ReputationBook(signer.peer_id)
        self.rng = rng  # anything with .random() -> [0, 1); None: never spot-check
        self.spot_check = spot_check
        # Plugged in by the node: the ledger's payment hook and its exclusion list.
        self.pay: Any = None  # callable(job_id=, payee=, amount=, accepted_digest=, verdict=, now=)
        self.excluded: Any = lambda peer: False
        self.newcomer_rule: Any = None  # newcomers.NewcomerRule; None: rank everyone by score
        self.on_proof: Any = None  # callable(raw, now) -> effects: our own proofs, as received
        self.jobs: dict[str, RequesterJob] = {}
        self._open: set[str] = set()  # jobs that may not be final yet (``is_idle``)

    # -- commands -----------------------------------------------------------------------------
    def submit(
        self, job_id: str, job: WireJob, *, now: int, bid_window_s: int, addrs: tuple[str, ...]
    ) -> list[Effect]:
        if job_id in self.jobs:
            return [Log("warning", "job already submitted", {"job": job_id})]
        spec = job.spec
        auto = not isinstance(spec.redundancy, int)
        # "auto": how many replicas is decided at the first award, from the best bidder's
        # credibility; until then plan for two.
        k = 2 if auto else int(spec.redundancy)
        deadline_s = spec.deadline_s or spec.timeout_s * 3 + 600
        j = RequesterJob(
            job_id=job_id,
            job=job,
            k=k,
            created_at=now,
            deadline_at=now + deadline_s,
            bid_window_s=bid_window_s,
            addrs=addrs,
            auto=auto,
            max_replicas=max_replicas_for(k),
        )
        self.jobs[job_id] = j
        self._open.add(job_id)
        j.note(now, f"submitted: {k} replica(s), deadline in {deadline_s} s")
        return self._offer(j, now)

    def cancel(self, job_id: str, now: int) -> list[Effect]:
        j = self.jobs.get(job_id)
        if j is None or j.state in FINAL:
            return []
        if j.spec.service is not None and any(r.state == "running" for r in j.active()):
            if j.ending_at:
                return []
            # A session that ran is paid for its minutes: stop it, then settle on its result.
            j.ending_at = now
            j.note(now, "session ended by the user: waiting for the worker's result")
            out = self._cancel_replicas(j, now, "cancelled by requester")
            return [*out, self._persist(j, now)]
        out = self._cancel_replicas(j, now, "cancelled by requester")
        return out + self._finish(j, "cancelled", now, "cancelled by requester")

    # -- messages -----------------------------------------------------------------------------
    def on_bid(self, data: bytes, from_peer: str, now: int) -> list[Effect]:
        try:
            bid = m.parse_bid(data, requester=self.self_id)
        except (DecodeError, ValidationError) as exc:
            return [Log("debug", "bid refused", {"from": from_peer, "reason": str(exc)})]
        j = self.jobs.get(bid.job_id)
        why = None
        if j is None or j.state in FINAL:
            why = "unknown or finished job"
        elif bid.bidder != from_peer:
            why = "bid relayed by another peer"
        elif bid.round != j.round or bid.job_digest != j.job.digest:
            why = "bid for another round or job version"
        elif not sortition.selected(j.job_id, bid.bidder, j.select):
            why = "bidder not selected for this round (sortition)"
        elif bid.price > j.spec.max_price:
            why = "price above max_price"
        elif self.excluded(bid.bidder):
            why = "bidder excluded by a fraud or wrong-result proof"
        elif self.book.credibility(bid.bidder, now) == 0.0:
            # Caught returning a wrong result: no work until that evidence has decayed.
            why = "bidder was caught dissenting"
        elif bid.bidder in j.tried or bid.bidder == self.self_id:
            why = "bidder already tried for this job"
        if why:
            return [
                Log("debug", "bid refused", {"job": bid.job_id, "from": from_peer, "reason": why})
            ]
        assert j is not None
        first = bid.bidder not in j.bids
        if not j.bids and j.offered_at:
            self.bid_delay_s += BID_DELAY_WEIGHT * (max(0, now - j.offered_at) - self.bid_delay_s)
        j.bids[bid.bidder] = bid
        if first:
            j.bids_seen += 1
        out: list[Effect] = [self._persist(j, now)]
        # Every known peer that could bid has bid: waiting longer cannot change the outcome.
        if j.state == "bidding" and self.eligible is not None:
            select = j.select
            could_bid = self.eligible(
                j.job,
                lambda pid: pid not in j.tried and sortition.selected(j.job_id, pid, select),
            )
            if could_bid > 0 and len(j.bids) >= could_bid:
                return out + self._award(j, now)
        # Late bids (after the window) can fill a replica that is still missing at once; one
        # that cannot be afforded waits for the next round rather than start one.
        if j.state != "bidding" and self._missing(j) > 0:
            out += self._award(j, now, reoffer=False)
        return out

    def on_status(self, data: bytes, from_peer: str, now: int) -> list[Effect]:
        try:
            st = m.parse_status(data)
        except (DecodeError, ValidationError) as exc:
            return [Log("debug", "status refused", {"from": from_peer, "reason": str(exc)})]
        j = self.jobs.get(st.job_id)
        rep = j.replicas.get(st.worker) if j else None
        if j is None or rep is None or st.worker != from_peer or j.state in FINAL:
            return []
        if rep.state in ("lost", "reported"):
            return []
        rep.last_heard = now
        rep.gone_at = 0  # it speaks, so it is reachable (perhaps over a new connection)
        if st.state == "declined":
            return self._lose(j, rep, now, f"declined: {st.detail}")
        rep.detail = st.detail
        if st.state == rep.state:
            # A heartbeat: only last_heard changed, and a restart gives every replica a fresh
            # silence allowance anyway (from_doc), so there is nothing worth a write.
            return []
        rep.state = st.state
        if st.state == "running" and not rep.running_at:
            rep.running_at = now
        out: list[Effect] = []
        if st.state == "running" and j.state == "awarded":
            j.state = "running"
            j.note(now, f"running on {st.worker}")
            out.append(Log("info", "job running", {"job": j.job_id, "worker": st.worker}))
        out.append(self._persist(j, now))
        return out

    def on_result(self, data: bytes, from_peer: str, now: int) -> list[Effect]:
        try:
            res = m.parse_result(data)
        except (DecodeError, ValidationError) as exc:
            return [Log("warning", "result refused", {"from": from_peer, "reason": str(exc)})]
        j = self.jobs.get(res.job_id)
        rep = j.replicas.get(res.worker) if j else None
        if j is None or rep is None or res.worker != from_peer:
            return [Log("warning", "result from a peer that holds no award", {"from": from_peer})]
        if res.job_digest != j.job.digest:
            return [Log("warning", "result for another job version", {"from": from_peer})]
        if j.state in FINAL or rep.state in ("reported", "lost"):
            return []
        rep.state = "reported"
        rep.result = res
        rep.last_heard = now
        rep.reported_at = now
        j.note(now, f"result from {res.worker}: {res.status} exit={res.exit_code}")
        out: list[Effect] = [
            Log(
                "info",
                "result received",
                {
                    "job": j.job_id,
                    "worker": res.worker,
                    "status": res.status,
                    "exit_code": res.exit_code,
                },
            )
        ]
        # Fetch a successful result's outputs at once: no payee is paid before it has served
        # them, and one that does not is found (and replaced) while the others still run.
        out += self._prefetch(j)
        out += self._maybe_decide(j, now)
        out.append(self._persist(j, now))
        return out

    def on_award_query(self, data: bytes, from_peer: str, now: int) -> list[Effect]:
        """A restarted worker asks whether its award for a job of ours still stands: yes only
        while the job is open and its replica is in play and has not reported."""
        try:
            job_id = m.parse_award_query(data)
        except (DecodeError, ValidationError) as exc:
            return [Log("debug", "award query refused", {"from": from_peer, "reason": str(exc)})]
        j = self.jobs.get(job_id)
        rep = j.replicas.get(from_peer) if j is not None else None
        stands = (
            j is not None
            and rep is not None
            and j.state not in FINAL
            and rep.state not in ("lost", "reported")
        )
        if stands:
            assert rep is not None
            rep.last_heard = now
            rep.gone_at = 0
        answer = m.build_award_answer(job_id, stands)
        return [SendMessage(from_peer, m.AWARD_ANSWER, answer, job_id)]

    def on_peer_disconnected(self, peer: str, now: int) -> bool:
        """Our last connection to ``peer`` closed: every replica it holds in an open job is
        lost unless the connection is back within ``connection_grace_s``. True when it holds
        one (the node then dials it, in case only our side dropped the connection)."""
        held = False
        for j in self.jobs.values():
            rep = j.replicas.get(peer)
            if j.state in FINAL or rep is None or rep.state in ("lost", "reported"):
                continue
            held = True
            if not rep.gone_at:
                rep.gone_at = now
                j.note(now, f"connection to {peer} closed")
        return held

    def on_peer_connected(self, peer: str, now: int) -> list[Effect]:
        for j in self.jobs.values():
            rep = j.replicas.get(peer)
            if rep is not None and rep.gone_at:
                rep.gone_at = 0
                j.note(now, f"connection to {peer} is back")
        return []

    def on_send_failed(
        self, job_id: str, peer: str, kind: str, reason: str, now: int
    ) -> list[Effect]:
        j = self.jobs.get(job_id)
        if j is None or j.state in FINAL or kind != "award":
            return []
        rep = j.replicas.get(peer)
        if rep is None or rep.state != "awarded":
            return []
        return self._lose(j, rep, now, f"award not delivered: {reason}")

    def on_outputs_fetched(
        self, job_id: str, worker: str, ok: bool, error: str, now: int
    ) -> list[Effect]:
        j = self.jobs.get(job_id)
        if j is None or j.state in FINAL:
            return []
        rep = j.replicas.get(worker)
        if worker in j.fetching and rep is not None:
            # One replica's own outputs: for a numeric comparison, or before it is paid.
            j.fetching.discard(worker)
            if ok:
                j.fetched.add(worker)
                if j.state == "validating":
                    return [*self._maybe_decide(j, now), self._persist(j, now)]
                if j.state == "fetching" and not j.error:
                    return self._verify_again(j, now)
                return [self._persist(j, now)]
            if rep.state == "lost":
                return []
            if j.state == "validating":
                # Outputs we cannot fetch cannot be checked: that replica is lost.
                return self._lose(j, rep, now, f"{UNSERVED}: {error}")
            return self._unserved(j, rep, now, error)
        if j.state != "fetching" or worker != j.fetch_from or not j.error:
            return []
        assert rep is not None
        if ok:  # a failed job whose outputs/logs were fetched for the user
            assert rep.result is not None
            return self._finish(j, _failure_state(rep.result), now, j.error)
        # Try another replica that reported the same digest before giving up.
        j.tried_fetch.add(worker)
        candidates = [
            r.worker
            for r in j.active()
            if r.result
            and r.result.output_digest == j.accepted_digest
            and r.worker not in j.tried_fetch
        ]
        if candidates:
            return self._fetch(j, candidates[0], now)
        if now + FETCH_RETRY_S < j.deadline_at:
            # Decided: the workers may just be restarting. Try again later.
            j.tried_fetch.clear()
            j.retry_fetch_at = now + FETCH_RETRY_S
            j.note(now, f"outputs not fetched ({error}); retrying in {FETCH_RETRY_S} s")
            return [self._persist(j, now)]
        return self._finish(j, "failed", now, f"outputs could not be fetched: {error}")

    # -- time ---------------------------------------------------------------------------------
    def _alarms(self, j: RequesterJob) -> Iterator[Alarm]:
        """Every deadline of one open job, in the order ``tick`` acts on them.

        A generator on purpose: ``tick`` fires each alarm before the next one is computed, so
        each sees the state the one before it left (a lost replica's other alarms are void).
        Times are whole seconds; ``now - t > limit`` is ``now >= t + limit + 1``.
        """
        if j.resumed:
            yield Alarm((-math.inf, "resume", None, INF))
        if j.state == "fetching" and j.retry_fetch_at:
            yield Alarm((j.retry_fetch_at, "retry-fetch", None, INF))
        yield Alarm((j.deadline_at, "deadline", None, INF))
        if j.ending_at:
            yield Alarm((j.ending_at + SERVICE_END_WAIT_S, "session-unreported", None, INF))
        for rep in j.active():
            if rep.state == "reported":
                continue
            heard = max(rep.last_heard, rep.awarded_at)
            # In order of precedence: the first one due decides why the replica is lost.
            if rep.state == "awarded":
                yield Alarm((rep.awarded_at + ACCEPT_WITHIN_S + 1, "not-accepted", rep, INF))
            if rep.gone_at:
                yield Alarm((rep.gone_at + self.connection_grace_s, "disconnected", rep, INF))
            yield Alarm((heard + SILENCE_S + 1, "silent", rep, INF))
            yield Alarm((rep.awarded_at + j.spec.timeout_s + GRACE_S + 1, "no-result", rep, INF))
        if j.state == "bidding":
            yield Alarm((j.window_ends, "window", None, INF))
        elif j.select is not None and j.window_ends > 0 and self._missing(j) > 0:
            # A drawn round for a replica to add or replace: ask again, then widen (§7.12),
            # before concluding that nobody is left to take it.
            yield Alarm((j.window_ends, "window", None, INF))
        elif self._escalating(j):
            yield Alarm((j.window_ends + 1, "starved", None, INF))

    def tick(self, now: int) -> list[Effect]:
        out: list[Effect] = []
        for j in list(self.jobs.values()):
            if j.state in FINAL:
                continue
            for alarm in self._alarms(j):
                if j.state in FINAL:
                    break
                rep = alarm.subject
                if rep is not None and rep.state == "lost":
                    continue  # an earlier alarm of this replica already fired
                if alarm.due(now):
                    out += self._fire(j, alarm, now)
        return out

    def _fire(self, j: RequesterJob, alarm: Alarm, now: int) -> list[Effect]:
        what, rep = alarm.what, alarm.subject
        if what == "resume":
            j.resumed = False
            return self._resume(j, now)
        if what == "retry-fetch":
            j.retry_fetch_at = 0
            return self._fetch(j, j.fetch_from, now)
        if what == "deadline":
            out = self._cancel_replicas(j, now, "deadline passed")
            final = "no-bids" if not j.replicas and j.bids_seen == 0 else "timeout"
            reason = (
                "no peer bid before the deadline (is the image allowed anywhere? "
                "see `p2pmesh peers` and workers' --allow-image)"
                if final == "no-bids"
                else "deadline passed before enough results arrived"
            )
            return out + self._finish(j, final, now, reason)
        if what == "session-unreported":
            out = self._cancel_replicas(j, now, "cancelled by requester")
            why = f"cancelled by requester; no result from the worker within {SERVICE_END_WAIT_S} s"
            return out + self._finish(j, "cancelled", now, why)
        if what == "not-accepted":
            return self._lose(j, rep, now, "did not accept the award in time")
        if what == "disconnected":
            return self._lose(j, rep, now, f"connection closed {now - rep.gone_at} s ago")
        if what == "silent":
            heard = max(rep.last_heard, rep.awarded_at)
            return self._lose(j, rep, now, f"silent for {now - heard} s")
        if what == "no-result":
            return self._lose(j, rep, now, "no result within the job timeout")
        if what == "starved":
            # An added replica's offer round closed and nobody could take it: a small mesh has
            # run out of workers. Decide by a plain majority rather than wait for the deadline.
            j.starved = True
            j.note(now, "no replica to add: a plain majority decides")
            return [*self._maybe_decide(j, now), self._persist(j, now)]
        assert what == "window"
        if j.bids:
            return self._award(j, now)
        return self._offer(j, now)  # nobody yet: ask again, next round

    def next_wakeup(self) -> float:
        """The earliest ``now`` at which ``tick`` would act, read from the same alarms."""
        at = math.inf
        for j in self.jobs.values():
            if j.state not in FINAL:
                at = min(at, earliest(self._alarms(j)))
        return at

    # -- internals ----------------------------------------------------------------------------
    def on_outputs_compared(
        self, job_id: str, workers: tuple[str, ...], groups: list[list[str]], now: int
    ) -> list[Effect]:
        j = self.jobs.get(job_id)
        if j is None or j.state != "validating" or tuple(sorted(workers)) != j.compared:
            return []
        j.groups = [list(g) for g in groups]
        return [*self._maybe_decide(j, now), self._persist(j, now)]

    def restore_job(self, j: RequesterJob) -> None:
        """After a restart: take back a job rebuilt by ``from_doc``; our own verdict, if it
        has one, rebuilds the reputation evidence it gave."""
        self.jobs[j.job_id] = j
        if j.state not in FINAL:
            self._open.add(j.job_id)
        if j.verdict_raw:
            self.replay_verdict(j.verdict_raw)

    def is_idle(self) -> bool:
        """No job of ours is still open (finished ones leave ``_open`` here, lazily)."""
        for job_id in [k for k in self._open if self.jobs[k].state in FINAL]:
            self._open.discard(job_id)
        return not self._open

    def replay_verdict(self, raw: bytes) -> None:
        """After a restart: rebuild reputation evidence from one of our own stored verdicts."""
        try:
            v = m.parse_verdict(raw)
        except (DecodeError, ValidationError):
            return
        if v.requester != self.self_id or v.outcome == "inconclusive":
            return
        if len(v.agreeing) >= 2:
            for w in v.agreeing:
                self.book.record(w, "agreed", v.at, job_id=v.job_id)
        for w in v.dissenting:
            self.book.record(w, "dissented", v.at, job_id=v.job_id)

    def _resume(self, j: RequesterJob, now: int) -> list[Effect]:
        """Re-issue what a restart interrupted: output fetches and comparisons."""
        if j.state == "fetching" and j.error and j.fetch_from in j.replicas:
            return self._fetch(j, j.fetch_from, now)
        j.fetching.clear()  # not persisted anyway: every transfer died with the process
        out = self._prefetch(j)
        if j.state == "fetching":
            return out + self._verify_again(j, now)
        if j.state == "validating":
            j.compared = ()
            j.groups = None
            return out + self._maybe_decide(j, now)
        return out

    def _prefetch(self, j: RequesterJob) -> list[Effect]:
        """Ask every successful replica in play for its outputs, unless asked or served."""
        out: list[Effect] = []
        for r in j.active():
            asked = r.worker in j.fetched or r.worker in j.fetching
            if r.state == "reported" and _succeeded(r.result) and not asked:
                j.fetching.add(r.worker)
                out.append(self._fetch_effect(j, r.worker))
        return out

    def _missing(self, j: RequesterJob) -> int:
        return j.k - len(j.active())

    def _offer(self, j: RequesterJob, now: int) -> list[Effect]:
        exclude = tuple(sorted(j.tried))[:64]
        same = bool(j.offer_raw) and exclude == j.offered_exclude
        patience = max(3 * j.bid_window_s, WIDEN_AFTER_DELAYS * self.bid_delay_s)
        if same and j.select is not None and now - j.offered_at >= patience:
            # A drawn round that waited out its patience without enough bids: draw twice as
            # many, in the same round, so the bids already made (or on their way) stay valid.
            j.widened += 1
            return self._publish_offer(j, now, exclude, f"offer round {j.round} widened")
        if same:
            # Nobody new to exclude: ask again in the same round, so that bids still on their
            # way stay valid (on a busy mesh a new round makes every one of them stale), and
            # wait longer each time (1, 2, 4, 8 windows) so a busy mesh is not flooded.
            j.asked_again += 1
            j.window_ends = now + j.bid_window_s * min(8, 2**j.asked_again)
            j.note(now, f"offer round {j.round} published again")
            return [Publish(m.TOPIC_OFFERS, j.offer_raw), self._persist(j, now)]
        if j.offer_raw:
            if j.round >= m.MAX_ROUND:
                # Receivers refuse later rounds: keep collecting bids on the last one instead.
                j.window_ends = now + j.bid_window_s
                return []
            j.round += 1
        j.bids = {}
        j.state = "bidding" if not j.active() else j.state
        return self._publish_offer(j, now, exclude, f"offer round {j.round} published")

    def _publish_offer(
        self, j: RequesterJob, now: int, exclude: tuple[str, ...], event: str
    ) -> list[Effect]:
        select = None
        if self.sortition and self.eligible is not None:
            fitting = self.eligible(j.job, lambda pid: pid not in j.tried)
            select = sortition.threshold(fitting, j.k, j.widened)
        offer = m.build_offer(
            self.signer,
            job_id=j.job_id,
            job=j.job,
            created_at=now,
            deadline_at=j.deadline_at,
            bid_window_s=j.bid_window_s,
            round_=j.round,
            addrs=j.addrs,
            exclude=exclude,
            select=select,
        )
        j.offer_raw = offer.raw
        j.offered_exclude = exclude
        j.offered_at = now
        j.asked_again = 0
        j.window_ends = now + j.bid_window_s
        drawn = f", {select / sortition.ALL:.0%} of fitting peers drawn to bid" if select else ""
        j.note(now, f"{event}{drawn}")
        return [
            Publish(m.TOPIC_OFFERS, offer.raw),
            Log("info", "offer published", {"job": j.job_id, "round": j.round}),
            self._persist(j, now),
        ]

    def _award(self, j: RequesterJob, now: int, *, reoffer: bool = True) -> list[Effect]:
        need = self._missing(j)
        if need <= 0:
            return []
        considered = list(j.bids.values())
        if not j.replicas:
            if j.auto:
                need = self._auto_k(j, considered, now)
            need += self._hide_one(j, now)
        winners = choose_winners(
            considered,
            k=need,
            budget_left=j.spec.budget - j.spent(),
            max_price=j.spec.max_price,
            reputation=self.reputation,
            exclude=set(j.tried),
            prefix=self.prefix,
            taken=self._taken_prefixes(j),
            newcomers=self._newcomers(j, now),
        )
        out: list[Effect] = []
        if not winners:
            if not reoffer:
                return out
            if not j.active():
                j.state = "bidding"
            return out + self._offer(j, now) if now < j.deadline_at else out
        raw_considered = [b.raw for b in considered]
        for b in winners:
            award = m.build_award(
                self.signer,
                job_id=j.job_id,
                job_digest=j.job.digest,
                round_=j.round,
                worker=b.bidder,
                price=b.price,
                # Only the recipient: a worker must not learn whether it runs alone, next to
                # a spot check, or as one of k, or a cheater could cheat exactly when nobody
                # checks it (PROTOCOL.md §7.1).
                winners=[(b.bidder, b.price)],
                considered=raw_considered,
                now=now,
                deadline_at=j.deadline_at,
            )
            j.replicas[b.bidder] = Replica(b.bidder, b.price, j.round, now, last_heard=now)
            j.tried.add(b.bidder)
            out.append(SendMessage(b.bidder, "award", award.raw, j.job_id))
            j.note(now, f"awarded to {b.bidder} at {b.price}")
        if j.state == "bidding":
            j.state = "awarded"
        out.append(
            Log(
                "info",
                "job awarded",
                {"job": j.job_id, "workers": [b.bidder for b in winners], "bids": len(considered)},
            )
        )
        out.append(self._persist(j, now))
        return out

    def _escalating(self, j: RequesterJob) -> bool:
        """Every replica in play reported, one more is wanted, and an offer round for it was
        published (its window is ``window_ends``): the case a plain majority may settle."""
        active = j.active()
        return (
            not j.starved
            and bool(active)
            and j.window_ends > 0
            and len(active) < j.k
            and all(r.state == "reported" for r in active)
        )

    def _newcomers(self, j: RequesterJob, now: int) -> Any:
        """The newcomer rule bound to this award decision (§8.9), or None when it is off."""
        if self.newcomer_rule is None:
            return None
        return self.newcomer_rule.for_decision(self.book, now, j.job_id, j.round, len(j.replicas))

    def _hide_one(self, j: RequesterJob, now: int) -> int:
        """Maybe one replica more than the job says, decided once, at the first award.

        Awards name only their recipient (§7.1), so no worker can tell the hidden replica from
        the others, nor whether there is one: a ring that holds every replica it can see cannot
        know it holds them all. With unanimity (majority.py) its wrong answer is then outvoted
        by replicas added from other prefixes, and proven (§8.7). A job checked by nobody
        (redundancy 1, or a credible worker run alone) gets none: its owner chose one run.
        """
        if j.k < 2 or self.rng is None or self.hidden_rate <= 0:
            return 0
        if self.rng.random() >= self.hidden_rate:
            return 0
        j.k += 1
        j.hidden = True
        j.max_replicas = max_replicas_for(j.k)
        j.note(now, f"one hidden replica: {j.k} in all")
        return 1

    def _taken_prefixes(self, j: RequesterJob) -> set[str]:
        if self.prefix is None:
            return set()
        return {self.prefix(r.worker) for r in j.active()}

    def _auto_k(self, j: RequesterJob, bids: list[m.Bid], now: int) -> int:
        """How many replicas an ``auto`` job gets, decided once, from the best bidder."""
        best = choose_winners(
            bids,
            k=1,
            budget_left=j.spec.budget,
            max_price=j.spec.max_price,
            reputation=self.reputation,
            exclude=set(j.tried),
            newcomers=self._newcomers(j, now),
        )
        target = j.spec.validation.target_error
        if best and self.book.credibility(best[0].bidder, now) >= 1.0 - target:
            j.spot_check = self.rng is not None and self.rng.random() < self.spot_check
            j.k = 2 if j.spot_check else 1
            why = "spot check" if j.spot_check else "credible worker runs alone"
        else:
            j.k = 2
            why = "no bidder credible enough to run alone"
        if best and j.k > 1 and best[0].price * j.k > j.spec.budget:
            # The budget pays one worker only: run alone rather than wait for a second award
            # that can never fit. The verdict still records a single, unchecked result.
            j.k = 1
            j.spot_check = False
            why = "budget pays one worker only"
        j.max_replicas = max_replicas_for(j.k)
        j.note(now, f"auto redundancy: {j.k} replica(s) ({why})")
        return j.k

    def _lose(self, j: RequesterJob, rep: Replica, now: int, reason: str) -> list[Effect]:
        out = self._mark_lost(j, rep, now, reason)
        if not any(r.state in ("running", "reported") for r in j.active()):
            j.state = "awarded" if j.active() else "bidding"
        out += self._replace(j, now)
        out.append(self._persist(j, now))
        return out

    def _mark_lost(self, j: RequesterJob, rep: Replica, now: int, reason: str) -> list[Effect]:
        if reason.startswith(UNSERVED):
            # Its own key: the book counts one item per (job, peer), and a dissent about the
            # same job may follow in the verdict; it must not be swallowed by this one.
            self.book.record(rep.worker, "no-show", now, job_id=f"{j.job_id}/outputs")
        elif not reason.startswith(("declined", "award not delivered")):
            self.book.record(rep.worker, "no-show", now, job_id=j.job_id)
        rep.state = "lost"
        rep.lost_reason = reason
        if reason.startswith("declined: no free slot"):
            # Busy, not faulty: it may bid again in a later round.
            j.tried.discard(rep.worker)
            j.bids.pop(rep.worker, None)
        j.note(now, f"lost {rep.worker}: {reason}")
        cancel = m.build_cancel(self.signer, job_id=j.job_id, reason=reason, now=now)
        return [
            Log(
                "warning", "worker lost", {"job": j.job_id, "worker": rep.worker, "reason": reason}
            ),
            SendMessage(rep.worker, "cancel", cancel.raw, j.job_id),
        ]

    def _replace(self, j: RequesterJob, now: int) -> list[Effect]:
        """A replica in play is missing: the best unused bid, else the next offer round."""
        spare = [b for b in j.bids.values() if b.bidder not in j.tried]
        return self._award(j, now) if spare else self._offer(j, now)

    def _decision(self, j: RequesterJob) -> majority.Decision:
        if j.spec.service is not None:
            return _service_decision(j)
        votes = [
            majority.Vote(r.worker)
            if r.state != "reported" or r.result is None
            else majority.Vote(
                r.worker,
                r.result.status,
                r.result.exit_code,
                r.result.output_digest,
                r.result.error,
            )
            for r in j.active()
        ]
        # One agreeing result suffices only when one replica was asked for: an explicit
        # redundancy of 1 (the user opted out of checking), or "auto" on a credible worker.
        rule = majority.Rule(
            lone_ok=(j.auto and j.k == 1) or j.spec.redundancy == 1,
            # Starved (nobody left to add, §8.1): what is in play is all there will be.
            max_replicas=min(j.max_replicas, len(j.active())) if j.starved else j.max_replicas,
            numeric=j.spec.validation.mode == "numeric",
            compared=j.compared,
            groups=None if j.groups is None else tuple(tuple(g) for g in j.groups),
            margin=1 if j.starved else 2,
        )
        return majority.decide(votes, rule)

    def _maybe_decide(self, j: RequesterJob, now: int) -> list[Effect]:
        active = j.active()
        reported = [r for r in active if r.state == "reported" and r.result is not None]
        if not reported:
            return []
        if j.spec.validation.mode == "numeric":
            ok = sorted(r.worker for r in reported if _succeeded(r.result))
            missing = [w for w in ok if w not in j.fetched]
            if len(ok) > 1 and missing:
                j.state = "validating"
                out: list[Effect] = []
                for w in missing:
                    if w not in j.fetching:
                        j.fetching.add(w)
                        res = j.replicas[w].result
                        assert res is not None
                        out.append(
                            FetchOutputs(
                                j.job_id,
                                w,
                                res.output_digest,
                                res.output_size,
                                res.log_digest,
                                res.log_size,
                            )
                        )
                return out
            if len(ok) > 1 and tuple(ok) != j.compared:
                j.state = "validating"
                j.compared = tuple(ok)
                j.groups = None
                outputs = tuple((w, j.replicas[w].result.output_digest) for w in ok)  # type: ignore[union-attr]
                return [CompareOutputs(j.job_id, outputs, j.spec.validation)]
        d = self._decision(j)
        if isinstance(d, majority.Decide):
            return self._decide(j, d, now)
        if isinstance(d, majority.AddReplica):
            j.k = d.replicas
            j.state = "awarded" if not any(r.state == "running" for r in active) else "running"
            j.note(now, f"results disagree: adding replica {j.k} of at most {j.max_replicas}")
            return [
                Log("info", "replicas disagree; adding one", {"job": j.job_id, "replicas": j.k}),
                *self._replace(j, now),
            ]
        if isinstance(d, majority.Inconclusive):
            verdict = m.build_verdict(
                self.signer,
                job_id=j.job_id,
                job_digest=j.job.digest,
                outcome="inconclusive",
                accepted_digest="",
                agreeing=[],
                dissenting=[],
                now=now,
            )
            j.verdict_raw = verdict.raw
            return [
                Publish(m.TOPIC_VERDICTS, verdict.raw),
                *self._finish(
                    j,
                    "inconclusive",
                    now,
                    f"no majority after {len(active)} replicas (groups: "
                    f"{', '.join(str(n) for n in d.sizes)})",
                ),
            ]
        return []  # wait: more results, or a comparison, may still make a majority

    def _decide(self, j: RequesterJob, d: majority.Decide, now: int) -> list[Effect]:
        """A group has a majority: stop the rest, then fetch the group's outputs.

        A failed outcome pays nobody, so its verdict is signed at once and the outputs and log
        are fetched for the user only. An accepted one is signed, credited and paid in
        ``_accept``, once its outputs are on our disk and verified (PROTOCOL.md §8.1).
        """
        first = j.replicas[d.agreeing[0]].result
        assert first is not None
        agreeing = list(d.agreeing)
        outcome = "accepted" if d.accepted else "failed"
        out: list[Effect] = []
        # Replicas still running are no longer needed: stop them (and they are not paid).
        cancel = m.build_cancel(self.signer, job_id=j.job_id, reason="decided", now=now)
        for r in j.active():
            if r.state != "reported":
                r.state = "lost"
                r.lost_reason = "not needed: a majority was reached"
                out.append(SendMessage(r.worker, "cancel", cancel.raw, j.job_id))
        if outcome == "failed":
            j.error = (
                f"job ended {first.status} (exit {first.exit_code}) on {len(agreeing)} "
                "agreeing replica(s)" + (f": {first.error}" if first.error else "")
            )
        j.accepted_digest = first.output_digest
        if d.accepted:
            j.decided_at = now
            j.note(now, f"majority of {len(agreeing)}: fetching its outputs before the verdict")
            return out + self._verify(j, d, now)
        out += self._verdict(j, d, now)
        return out + self._fetch(j, agreeing[0], now)

    def _verify(self, j: RequesterJob, d: majority.Decide, now: int) -> list[Effect]:
        """Fetch the outputs from every agreeing worker that has not served them yet.

        Every payee must have served: equal digests make one copy as good as another, but a
        worker is paid for a delivered result, and asking each is what catches one that never
        delivers. Usually all were asked when their results arrived (``_prefetch``).
        """
        j.state = "fetching"
        j.fetch_from = d.agreeing[0]  # whose copy ``export`` shows
        missing = [w for w in d.agreeing if w not in j.fetched]
        if not missing:
            return self._accept(j, d, now)
        out: list[Effect] = []
        for w in missing:
            if w not in j.fetching:
                j.fetching.add(w)
                out.append(self._fetch_effect(j, w))
        out.append(self._persist(j, now))
        return out

    def _verify_again(self, j: RequesterJob, now: int) -> list[Effect]:
        """Outputs arrived (or a restart interrupted their fetch): accept once all are here."""
        d = self._decision(j)
        if isinstance(d, majority.Decide) and d.accepted:
            return self._verify(j, d, now)
        # Cannot happen while the replicas in play are frozen (the rest were cancelled);
        # should it, the rule decides afresh rather than pay for a group that is gone.
        j.state = "running"
        return [*self._maybe_decide(j, now), self._persist(j, now)]

    def _accept(self, j: RequesterJob, d: majority.Decide, now: int) -> list[Effect]:
        """Every agreeing worker served verified outputs: verdict, evidence, payments."""
        out = self._verdict(j, d, now)
        if self.pay is not None:
            for w in d.agreeing:
                out += self.pay(
                    job_id=j.job_id,
                    payee=w,
                    amount=_amount(j, j.replicas[w]),
                    accepted_digest=d.digest,
                    verdict=j.verdict_raw,
                    now=now,
                )
        return out + self._finish(j, "done", now, "")

    def _unserved(self, j: RequesterJob, rep: Replica, now: int, error: str) -> list[Effect]:
        """A successful result's outputs did not come from ``rep``: it is lost, and unpaid.

        If the rest of the group still has a majority it goes on (its other fetches are under
        way); otherwise the replica is replaced, as any other lost one.
        """
        out = self._mark_lost(j, rep, now, f"{UNSERVED}: {error}")
        active = j.active()
        if any(r.state == "running" for r in active):
            j.state = "running"
        else:
            j.state = "awarded" if active else "bidding"
        d = self._decision(j)
        if isinstance(d, majority.Decide):
            out += self._decide(j, d, now)
        else:
            out += self._replace(j, now)
        out.append(self._persist(j, now))
        return out

    def _verdict(self, j: RequesterJob, d: majority.Decide, now: int) -> list[Effect]:
        """Sign and publish the verdict of ``d`` and record its evidence.

        Dated when the majority was reached: a restart that fetches again signs the very same
        bytes, so a payment proposed before the restart still names this verdict.
        """
        outcome = "accepted" if d.accepted else "failed"
        at = j.decided_at if d.accepted and j.decided_at else now
        # Not serving its outputs does not hide a wrong answer: a replica lost for it whose
        # result disagrees is a dissenter too (else a cheater could trade a dissent for the
        # lighter no-show by refusing every fetch).
        unserved = sorted(
            r.worker
            for r in j.replicas.values()
            if r.state == "lost"
            and r.lost_reason.startswith(UNSERVED)
            and j.spec.validation.mode == "exact"
            and r.result is not None
            and (not d.accepted or r.result.output_digest != d.digest)
        )
        dissenting = [*d.dissenting, *(w for w in unserved if w not in d.dissenting)]
        d = majority.Decide(d.agreeing, tuple(sorted(dissenting[:16])), d.accepted, d.digest)
        verdict = m.build_verdict(
            self.signer,
            job_id=j.job_id,
            job_digest=j.job.digest,
            outcome=outcome,
            accepted_digest=d.digest,
            agreeing=list(d.agreeing),
            dissenting=list(d.dissenting),
            now=at,
        )
        j.verdict_raw = verdict.raw
        if len(d.agreeing) >= 2:  # a lone result (auto, or redundancy 1) was not checked
            for w in d.agreeing:
                self.book.record(w, "agreed", at, job_id=j.job_id)
        for w in d.dissenting:
            self.book.record(w, "dissented", at, job_id=j.job_id)
        j.note(now, f"verdict {outcome}: {len(d.agreeing)} agree, {len(d.dissenting)} dissent")
        return [
            Publish(m.TOPIC_VERDICTS, verdict.raw),
            *self._proofs(j, d, now),
            Log(
                "info" if not d.dissenting else "warning",
                "verdict",
                {
                    "job": j.job_id,
                    "outcome": outcome,
                    "agreeing": list(d.agreeing),
                    "dissenting": list(d.dissenting),
                },
            ),
        ]

    def _proofs(self, j: RequesterJob, d: majority.Decide, now: int) -> list[Effect]:
        """A wrong-result proof (§8.8) for each successful dissenter of an accepted exact job.

        Only ``exact`` jobs: on a ``numeric`` one honest outputs differ in bytes, so another
        digest proves nothing. Each proof carries as few agreeing results as the margin needs,
        which keeps it small however many replicas the job grew to.
        """
        if not d.accepted or j.spec.validation.mode != "exact" or not d.dissenting:
            return []
        agreeing = [
            r.result.raw
            for w in d.agreeing
            if (r := j.replicas.get(w)) is not None and r.result is not None
        ][: len(d.dissenting) + proofs.MARGIN]
        if len(agreeing) < len(d.dissenting) + proofs.MARGIN:
            return []  # decided by a plain majority (no worker left to add): nothing to prove
        out: list[Effect] = []
        for w in d.dissenting[:4]:
            rep = j.replicas.get(w)
            res = rep.result if rep is not None else None
            if res is None or not _succeeded(res) or res.output_digest == d.digest:
                continue
            try:
                proof = proofs.build_proof(
                    self.signer, verdict=j.verdict_raw, wrong=res.raw, agreeing=agreeing
                )
            except (DecodeError, ValidationError) as exc:
                out.append(
                    Log("warning", "no wrong-result proof", {"job": j.job_id, "why": str(exc)})
                )
                continue
            j.note(now, f"wrong-result proof against {w}")
            out.append(Publish(proofs.TOPIC_PROOFS, proof.raw))
            if self.on_proof is not None:
                out += self.on_proof(proof.raw, now)
        return out

    def _fetch(self, j: RequesterJob, worker: str, now: int) -> list[Effect]:
        j.state = "fetching"
        j.fetch_from = worker
        return [self._fetch_effect(j, worker), self._persist(j, now)]

    def _fetch_effect(self, j: RequesterJob, worker: str) -> FetchOutputs:
        r = j.replicas[worker].result
        assert r is not None
        return FetchOutputs(
            j.job_id, worker, r.output_digest, r.output_size, r.log_digest, r.log_size
        )

    def _cancel_replicas(self, j: RequesterJob, now: int, reason: str) -> list[Effect]:
        out: list[Effect] = []
        cancel = m.build_cancel(self.signer, job_id=j.job_id, reason=reason, now=now)
        for rep in j.active():
            if rep.state != "reported":
                out.append(SendMessage(rep.worker, "cancel", cancel.raw, j.job_id))
        return out

    def _finish(self, j: RequesterJob, state: str, now: int, error: str) -> list[Effect]:
        j.state = state
        j.error = error
        j.finished_at = now
        j.note(now, f"{state}{': ' + error if error else ''}")
        level = "info" if state == "done" else "warning"
        return [
            Log(level, f"job {state}", {"job": j.job_id, "error": error}),
            self._persist(j, now),
        ]

    def _persist(self, j: RequesterJob, now: int) -> Persist:
        return Persist("jobs", f"requester:{j.job_id}", to_doc(j))

    # -- views ----------------------------------------------------------------------------------
    def job_json(self, job_id: str) -> dict[str, Any] | None:
        j = self.jobs.get(job_id)
        return None if j is None else job_view(j)


def _amount(j: RequesterJob, r: Replica) -> int:
    """What a replica is owed: its price, or for a service the minutes it ran at its price per
    minute, the claim capped by our own clock and the whole by the budget (core/service.py)."""
    if j.spec.service is None or r.result is None:
        return r.price
    ms = svc.billable_ms(r.result.run_ms, r.awarded_at, r.reported_at or r.result.finished_at)
    return svc.charge(r.price, ms, j.spec.budget)


def _service_decision(j: RequesterJob) -> majority.Decision:
    """A session is not compared with anything: its one result decides. One that ran is
    accepted (and paid by the minute) however it ended; one that never started pays nobody."""
    reported = [r for r in j.active() if r.state == "reported" and r.result is not None]
    if not reported:
        return majority.Wait("no result yet")
    r = reported[0]
    assert r.result is not None
    ran = svc.session_delivered(r.result.status, r.result.run_ms)
    return majority.Decide((r.worker,), (), ran, r.result.output_digest)


def _service_view(j: RequesterJob) -> dict[str, Any]:
    s = j.spec.service
    assert s is not None
    running = [r.worker for r in j.active() if r.state == "running"]
    return {
        "port": s.port,
        "idle_timeout_s": s.idle_timeout_s,
        "worker": running[0] if running else None,
        "ending": bool(j.ending_at),
    }


def _succeeded(r: m.Result | None) -> bool:
    return r is not None and r.status == "exited" and r.exit_code == 0


def _failure_state(r: m.Result) -> str:
    return "timeout" if r.status == "timeout" else "failed"


# -- phases: what a job is waiting for ----------------------------------------------------------
# Derived from the states the protocol already carries (§7.7): a replica's statuses say
# accepted (it fetches its inputs at once), fetching, running; its result, and our fetch of its
# outputs, say the rest. Nothing new goes on the wire.
PHASES = (
    "offered",
    "bidding",
    "awarded",
    "getting image",
    "fetching inputs",
    "running",
    "sending outputs",
    "validating",
    "paying",
)
_REPLICA_RANK = {"awarded": 0, "accepted": 1, "fetching": 1, "running": 2}


def replica_phase(j: RequesterJob, r: Replica) -> str:
    """One worker's phase: awarded, fetching inputs, running, sending outputs, reported, lost."""
    if r.state == "lost":
        return "lost"
    if r.state == "reported":
        return "sending outputs" if r.worker in j.fetching else "reported"
    if r.state in ("accepted", "fetching"):
        return "getting image" if r.detail.startswith("getting image") else "fetching inputs"
    return r.state  # awarded, running


def job_phase(j: RequesterJob, now: int | None = None) -> dict[str, Any]:
    """The phase of a job and a line that says it, e.g. ``running 12 s of 60 s timeout``.

    ``name`` is one of ``PHASES`` or a final state. ``offered`` means no bid has come this
    round; the node adds the reasons from its peer table (``membership.fit_summary``).
    Without ``now`` (a stored document) no elapsed time is given.
    """
    out: dict[str, Any] = {"name": j.state, "text": j.state, "since": None}
    if j.state in FINAL:
        out["since"] = j.finished_at or None
        if j.error:
            out["text"] = f"{j.state}: {j.error}"
        return out
    active = j.active()
    waiting = [r for r in active if r.state in _REPLICA_RANK]
    if j.state == "bidding" and not active:
        if j.bids:
            left = "" if now is None else f", awarding in {max(0, j.window_ends - now)} s"
            out.update(name="bidding", text=f"bidding: {len(j.bids)} bid(s){left}")
        else:
            out.update(name="offered", text=f"offered (round {j.round}), no bids yet")
        return out
    if j.state == "fetching" or (j.state == "validating" and j.fetching):
        served = len([w for w in j.fetched if w in j.replicas])
        want = served + len(j.fetching)
        text = "sending outputs"
        if j.error:
            text += " (for the user: the job failed)"
        elif want:
            text += f" ({served} of {want} served)"
        out.update(name="sending outputs", text=text)
        return out
    if j.state == "validating":
        out.update(name="validating", text=f"validating {len(j.compared)} results")
        return out
    if not waiting:
        reported = sum(1 for r in active if r.state == "reported")
        if len(active) < j.k:
            # The results so far did not decide: one more replica is being looked for.
            name = "bidding" if j.bids else "offered"
            text = f"{reported} result(s) in; offering replica {len(active) + 1} of {j.k}"
            out.update(name=name, text=text)
            return out
        # Every replica in play reported; the decision is a tick away.
        out.update(name="validating", text=f"validating {reported} result(s)")
        return out
    top = max(_REPLICA_RANK[r.state] for r in waiting)
    lead = [r for r in waiting if _REPLICA_RANK[r.state] == top]
    reported = sum(1 for r in active if r.state == "reported")
    tail = f"; {reported} of {len(active)} reported" if reported else ""
    if top == 2:
        since = min(r.running_at or r.awarded_at for r in lead)
        timeout = j.spec.timeout_s
        out.update(name="running", since=since, timeout_s=timeout)
        if now is not None:
            out["elapsed_s"] = max(0, now - since)
            out["text"] = f"running {out['elapsed_s']} s of {timeout} s timeout{tail}"
        else:
            out["text"] = f"running ({timeout} s timeout){tail}"
        return out
    if top == 1:
        getting = [r for r in lead if r.detail.startswith("getting image")]
        if getting and len(getting) == len(lead):
            # The image is its own phase: it does not count against the job's timeout_s.
            out.update(name="getting image", text=f"{getting[0].detail}{tail}")
            return out
        out.update(name="fetching inputs", text=f"fetching inputs{tail}")
        return out
    since = min(r.awarded_at for r in lead)
    out.update(name="awarded", since=since, text=f"awarded, waiting for the worker{tail}")
    return out


def job_view(j: RequesterJob, now: int | None = None) -> dict[str, Any]:
    """The job document shown by ``p2pmesh job ID --json`` and written to result.json."""
    return {
        "job_id": j.job_id,
        "name": j.spec.name,
        "image": j.spec.image,
        "state": j.state,
        "phase": job_phase(j, now),
        "error": j.error,
        "redundancy": j.k,
        "round": j.round,
        # The round's bidder sortition threshold (§7.12); null: every fitting peer may bid.
        "select": j.select,
        "created_at": j.created_at,
        "deadline_at": j.deadline_at,
        "finished_at": j.finished_at or None,
        "bids_received": j.bids_seen,
        "output_digest": j.accepted_digest or None,
        "price_total": sum(_amount(j, r) for r in j.active() if r.state == "reported"),
        **({} if j.spec.service is None else {"service": _service_view(j)}),
        "workers": [
            {
                "peer_id": r.worker,
                "price": r.price,
                "state": r.state,
                "phase": replica_phase(j, r),
                "lost_reason": r.lost_reason or None,
                "result": r.result.to_json() if r.result else None,
            }
            for r in j.replicas.values()
        ],
        "history": [{"at": at, "event": e} for at, e in j.history],
    }


# -- persistence -------------------------------------------------------------------------------
def to_doc(j: RequesterJob) -> dict[str, Any]:
    return {
        "view": job_view(j),
        "job_id": j.job_id,
        "job_wire_hex": j.job.encoded.hex(),
        "k": j.k,
        "created_at": j.created_at,
        "deadline_at": j.deadline_at,
        "bid_window_s": j.bid_window_s,
        "addrs": list(j.addrs),
        "state": j.state,
        "round": j.round,
        "window_ends": j.window_ends,
        "offer_raw": j.offer_raw.hex(),
        "bids": [b.raw.hex() for b in j.bids.values()],
        "bids_seen": j.bids_seen,
        "replicas": [
            {
                "worker": r.worker,
                "price": r.price,
                "round": r.round,
                "awarded_at": r.awarded_at,
                "state": r.state,
                "last_heard": r.last_heard,
                "result": r.result.raw.hex() if r.result else None,
                "lost_reason": r.lost_reason,
                "running_at": r.running_at,
                "reported_at": r.reported_at,
            }
            for r in j.replicas.values()
        ],
        "tried": sorted(j.tried),
        "tried_fetch": sorted(j.tried_fetch),
        "accepted_digest": j.accepted_digest,
        "fetch_from": j.fetch_from,
        "decided_at": j.decided_at,
        "error": j.error,
        "finished_at": j.finished_at,
        "history": j.history,
        "verdict": j.verdict_raw.hex(),
        "auto": j.auto,
        "max_replicas": j.max_replicas,
        "spot_check": j.spot_check,
        "hidden": j.hidden,
        "starved": j.starved,
        "widened": j.widened,
        "offered_at": j.offered_at,
        "fetched": sorted(j.fetched),
        "compared": list(j.compared),
        "groups": j.groups,
        "ending_at": j.ending_at,
    }


def from_doc(doc: dict[str, Any], requester_id: str, now: int) -> RequesterJob:
    """Rebuild a job after a restart; every replica gets a fresh silence allowance."""
    job = job_from_wire(codec.decode(bytes.fromhex(doc["job_wire_hex"])))
    j = RequesterJob(
        job_id=doc["job_id"],
        job=job,
        k=doc["k"],
        created_at=doc["created_at"],
        deadline_at=doc["deadline_at"],
        bid_window_s=doc["bid_window_s"],
        addrs=tuple(doc["addrs"]),
        state=doc["state"],
        round=doc["round"],
        window_ends=doc["window_ends"],
        offer_raw=bytes.fromhex(doc["offer_raw"]),
        bids_seen=doc["bids_seen"],
        tried=set(doc["tried"]),
        tried_fetch=set(doc.get("tried_fetch", [])),
        verdict_raw=bytes.fromhex(doc.get("verdict", "")),
        auto=doc.get("auto", False),
        max_replicas=doc.get("max_replicas", 2 * doc["k"] + 1),
        hidden=doc.get("hidden", False),
        starved=doc.get("starved", False),
        widened=doc.get("widened", 0),
        offered_at=doc.get("offered_at", 0),
        spot_check=doc.get("spot_check", False),
        fetched=set(doc.get("fetched", [])),
        compared=tuple(doc.get("compared", [])),
        groups=doc.get("groups"),
        resumed=True,
        accepted_digest=doc["accepted_digest"],
        decided_at=doc.get("decided_at", 0),
        fetch_from=doc["fetch_from"],
        error=doc["error"],
        finished_at=doc["finished_at"],
        history=[tuple(h) for h in doc["history"]],  # type: ignore[misc]
        ending_at=doc.get("ending_at", 0),
    )
    for raw in doc["bids"]:
        b = m.parse_bid(bytes.fromhex(raw), requester=requester_id)
        j.bids[b.bidder] = b
    for r in doc["replicas"]:
        j.replicas[r["worker"]] = Replica(
            worker=r["worker"],
            price=r["price"],
            round=r["round"],
            awarded_at=r["awarded_at"],
            state=r["state"],
            last_heard=max(r["last_heard"], now),
            result=m.parse_result(bytes.fromhex(r["result"])) if r["result"] else None,
            lost_reason=r["lost_reason"],
            running_at=r.get("running_at", 0),
            reported_at=r.get("reported_at", 0),
        )
    return j
