"""Worker side of a job: decide to bid, accept an award, fetch inputs, run, report.

Theory of operation (PROTOCOL.md §7). States::

    bid ─(award)─▶ fetching ─(inputs ok)─▶ running ─(container ended)─▶ reported
     │               │  └─(inputs failed)──────────▶ reported (status "error")
     └─(no award by deadline) ─▶ expired            any ─(cancel from requester) ─▶ cancelled

An award is accepted only from the peer that signed the offer, for the round and price we bid,
with us among the winners, and while we have a free slot; otherwise we decline with a reason.
While fetching or running we send a status at least every ``HEARTBEAT_S`` so the requester can
tell a slow job from a dead worker. A result that cannot be delivered is re-sent every tick
until the job's deadline; results are idempotent at the requester.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from p2pmesh.core import service as svc
from p2pmesh.core.auction import messages as m
from p2pmesh.core.auction.requester import HEARTBEAT_S
from p2pmesh.core.auction.strategies import BidContext, decide_bid, eta_s
from p2pmesh.core.capability import MAX_CLOCK_SKEW_S, Capabilities
from p2pmesh.core.crypto import Signer
from p2pmesh.core.effects import (
    AnswerServiceConnect,
    Effect,
    FetchInputs,
    Log,
    Persist,
    RunContainer,
    SendMessage,
    StopContainer,
)
from p2pmesh.core.timers import INF, Alarm, earliest
from p2pmesh.errors import DecodeError, ValidationError

ACTIVE = frozenset({"fetching", "running"})
FINAL = frozenset({"reported", "cancelled", "expired"})
MAX_TRACKED_OFFERS = 10_000
RESEND_RESULT_S = 5
IMAGE_STATUS_S = 2  # image progress reaches the requester at most this often
# A restarted worker waits this long for the requester to say whether its award still stands;
# no answer (an older requester) means resume, as before the question existed.
AWARD_QUERY_WAIT_S = 10


@dataclass(slots=True)
class WorkerJob:
    job_id: str
    offer: m.Offer
    bid: m.Bid
    state: str = "bid"
    award: m.Award | None = None
    result: m.Result | None = None
    last_status: int = 0
    result_sent: bool = False
    last_result_try: int = 0
    detail: str = ""
    asked_at: int = 0  # restarted: asked the requester whether the award stands (0: not asking)
    session: svc.Session | None = None  # a service job's session while its container runs
    image_detail: str = ""  # while the image is being got: its progress (status detail)

    @property
    def requester(self) -> str:
        return self.offer.requester


def _fetch_inputs(j: WorkerJob, refs: tuple[tuple[str, str, int, str], ...]) -> FetchInputs:
    spec = j.offer.job.spec
    return FetchInputs(
        j.job_id, j.requester, j.offer.addrs, refs, image=spec.image, image_id=spec.image_id
    )


class Provider:
    def __init__(
        self, signer: Signer, *, allow_network: bool = False, service_refusal: str = ""
    ) -> None:
        self.signer = signer
        self.service_refusal = service_refusal  # "" : this node can forward service ports
        self.self_id = signer.peer_id
        self.allow_network = allow_network
        self.jobs: dict[str, WorkerJob] = {}
        # Jobs that ``tick`` may still act on. Finished ones stay in ``jobs`` (views, payment
        # checks) but leave this set, so a tick costs what is open, not all the work ever done.
        self._open: dict[str, None] = {}  # insertion-ordered: ticks act in a fixed order
        self._working: set[str] = set()  # awarded jobs not yet settled (``is_idle``)
        self.last_decision: dict[str, str] = {}  # job_id -> why we did or did not bid
        # Offers we did not bid on (and awards we declined), by reason: ``p2pmesh status``.
        # Our own offers are not counted: every node sees them, and they say nothing.
        self.declines: dict[str, int] = {}
        # Plugged in by the node: may we work for this requester at this price (ledger)?
        self.requester_allowed: Any = lambda requester, amount: True
        self.local_images: frozenset[str] | None = None  # what the engine holds (bid check)
        self.can_pull = False  # set by the node from its config (bid check)
        self.can_fetch_images = False

    def active_count(self) -> int:
        return sum(1 for j in self.jobs.values() if j.state in ACTIVE)

    # -- offers -------------------------------------------------------------------------------
    def on_offer(self, data: bytes, caps: Capabilities, now: int) -> list[Effect]:
        try:
            offer = m.parse_offer(data)
        except (DecodeError, ValidationError) as exc:
            return [Log("debug", "offer refused", {"reason": str(exc)})]
        if offer.created_at > now + MAX_CLOCK_SKEW_S:
            return [Log("debug", "offer from the future refused", {"job": offer.job_id})]
        prior = self.jobs.get(offer.job_id)
        if prior is not None and prior.offer.round >= offer.round:
            return []
        busy_before = (
            prior is not None and prior.state == "expired" and prior.detail == "no free slot"
        )
        if prior is not None and prior.state != "bid" and not busy_before:
            return []
        ctx = BidContext(
            self_id=self.self_id,
            caps=caps,
            active_jobs=self.active_count(),
            allow_network=self.allow_network,
            now=now,
            requester_allowed=self.requester_allowed(offer.requester, offer.job.spec.max_price),
            local_images=self.local_images,
            service_refusal=self.service_refusal,
            can_pull=self.can_pull,
            can_fetch_images=self.can_fetch_images,
        )
        decision = decide_bid(offer, ctx)
        again = self.last_decision.get(offer.job_id) == decision.reason
        self._remember(offer.job_id, decision.reason)
        if not decision.bid:
            # Not drawn is the common answer in a large mesh (most peers, most offers): counted,
            # logged at debug only.
            if again or decision.kind in ("own job", "not selected"):
                if decision.kind == "not selected" and not again:
                    self._count_decline(decision.kind)
                # The same offer published again, or our own: said once already, or never.
                return [
                    Log("debug", "not bidding", {"job": offer.job_id, "reason": decision.reason})
                ]
            self._count_decline(decision.kind or decision.reason[:60])
            return [Log("info", "not bidding", {"job": offer.job_id, "reason": decision.reason})]
        bid = m.build_bid(
            self.signer,
            offer,
            price=caps.price,
            eta_s=eta_s(ctx.active_jobs),
            capacity=max(0, caps.max_jobs - ctx.active_jobs),
            now=now,
        )
        self.jobs[offer.job_id] = WorkerJob(offer.job_id, offer, bid)
        self._open[offer.job_id] = None
        return [
            SendMessage(offer.requester, "bid", bid.raw, offer.job_id, offer.addrs),
            Log("info", "bid sent", {"job": offer.job_id, "price": bid.price}),
        ]

    def _count_decline(self, kind: str) -> None:
        if kind not in self.declines and len(self.declines) >= 64:
            kind = "other"  # labels are a fixed set; this bounds a surprise all the same
        self.declines[kind] = self.declines.get(kind, 0) + 1

    def _remember(self, job_id: str, reason: str) -> None:
        self.last_decision[job_id] = reason
        if len(self.last_decision) > MAX_TRACKED_OFFERS:
            for key in list(self.last_decision)[: MAX_TRACKED_OFFERS // 10]:
                del self.last_decision[key]

    # -- award --------------------------------------------------------------------------------
    def on_award(self, data: bytes, from_peer: str, caps: Capabilities, now: int) -> list[Effect]:
        try:
            award = m.parse_award(data)
        except (DecodeError, ValidationError) as exc:
            return [Log("warning", "award refused", {"from": from_peer, "reason": str(exc)})]
        j = self.jobs.get(award.job_id)
        why = None
        if j is None:
            why = "no bid of ours for this job"
        elif award.requester != j.requester or from_peer != j.requester:
            why = "award not from the job's requester"
        elif award.worker != self.self_id:
            why = "award names another worker"
        elif award.round != j.bid.round or award.price != j.bid.price:
            why = "award does not match our bid"
        elif award.job_digest != j.offer.job_digest:
            why = "award for another job version"
        if why is not None:
            return [Log("warning", "award refused", {"job": award.job_id, "reason": why})]
        assert j is not None
        if j.state != "bid":
            return []  # a repeated award: we already answered
        j.award = award
        if self.active_count() >= caps.max_jobs or not caps.work:
            j.state = "expired"
            j.detail = "no free slot"
            self._count_decline("award declined: no free slot")
            return [
                Log("info", "award declined", {"job": j.job_id, "reason": "no free slot"}),
                *self._status(j, "declined", now, "no free slot"),
                self._persist(j, now),
            ]
        j.state = "fetching"
        self._working.add(j.job_id)
        refs = tuple(
            (name, ref.digest, ref.size, ref.kind) for name, ref in j.offer.job.input_refs.items()
        )
        return [
            *self._status(j, "accepted", now, ""),
            _fetch_inputs(j, refs),
            Log("info", "award accepted", {"job": j.job_id, "price": award.price}),
            self._persist(j, now),
        ]

    def on_image_progress(self, job_id: str, detail: str, now: int) -> list[Effect]:
        """The driver is getting the job's image: tell the requester (at most every
        ``IMAGE_STATUS_S``, and at once when the image is done), so its view says so."""
        j = self.jobs.get(job_id)
        if j is None or j.state != "fetching":
            return []
        j.image_detail = detail[:200]
        if now - j.last_status < IMAGE_STATUS_S and detail.startswith("getting image"):
            return []
        return self._status(j, "fetching", now, j.image_detail)

    def on_inputs_fetched(self, job_id: str, ok: bool, error: str, now: int) -> list[Effect]:
        j = self.jobs.get(job_id)
        if j is None or j.state != "fetching":
            return []
        j.image_detail = ""
        if not ok:
            j.detail = f"inputs: {error}"
            return [
                Log("warning", "input fetch failed", {"job": job_id, "error": error}),
                *self._report_error(j, now, f"inputs could not be fetched: {error}"),
            ]
        j.state = "running"
        spec = j.offer.job.spec
        if spec.service is not None:
            j.session = svc.open_session(
                job_id, j.requester, spec.service, price=j.bid.price, budget=spec.budget, now=now
            )
        return [
            RunContainer(job_id, j.offer.job),
            *self._status(j, "running", now, ""),
            self._persist(j, now),
        ]

    def on_container_finished(self, ev: Any, now: int) -> list[Effect]:
        j = self.jobs.get(ev.job_id)
        if j is None or j.state != "running":
            return []
        if j.session is not None:
            j.detail = j.session.ending or j.detail
            j.session = None  # open tunnels end with the container; none is admitted again
        res = m.build_result(
            self.signer,
            job_id=j.job_id,
            job_digest=j.offer.job_digest,
            status=ev.status,
            exit_code=ev.exit_code,
            output_digest=ev.output_digest,
            output_size=ev.output_size,
            log_digest=ev.log_digest,
            log_size=ev.log_size,
            log_truncated=ev.log_truncated,
            run_ms=ev.run_ms,
            cpu_ms=ev.cpu_ms,
            max_memory_mb=ev.max_memory_mb,
            finished_at=now,
            error=ev.error if ev.status != "exited" else "",
        )
        return self._report(j, res, now)

    def _report_error(self, j: WorkerJob, now: int, error: str) -> list[Effect]:
        empty = "sha256:" + "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        res = m.build_result(
            self.signer,
            job_id=j.job_id,
            job_digest=j.offer.job_digest,
            status="error",
            exit_code=None,
            output_digest=empty,
            output_size=0,
            log_digest=empty,
            log_size=0,
            log_truncated=False,
            run_ms=0,
            cpu_ms=0,
            max_memory_mb=0,
            finished_at=now,
        )
        j.detail = error
        return self._report(j, res, now)

    def _report(self, j: WorkerJob, res: m.Result, now: int) -> list[Effect]:
        j.state = "reported"
        j.result = res
        j.last_result_try = now
        return [
            SendMessage(j.requester, "result", res.raw, j.job_id, j.offer.addrs),
            Log(
                "info",
                "result sent",
                {"job": j.job_id, "status": res.status, "exit_code": res.exit_code},
            ),
            self._persist(j, now),
        ]

    def on_result_delivered(self, job_id: str) -> list[Effect]:
        j = self.jobs.get(job_id)
        if j is not None:
            j.result_sent = True
        return []

    # -- cancel -------------------------------------------------------------------------------
    def on_cancel(self, data: bytes, from_peer: str, now: int) -> list[Effect]:
        try:
            c = m.parse_cancel(data)
        except (DecodeError, ValidationError) as exc:
            return [Log("warning", "cancel refused", {"from": from_peer, "reason": str(exc)})]
        j = self.jobs.get(c.job_id)
        if j is None or c.requester != j.requester or from_peer != j.requester:
            return [
                Log(
                    "warning",
                    "cancel refused",
                    {"job": c.job_id, "reason": "not from the requester"},
                )
            ]
        if j.state in FINAL:
            return []
        if j.session is not None and j.state == "running":
            # A session ends by cancel: stop it and report, so that its minutes are paid.
            return self._end_session(j, "cancelled by the requester", now)
        was_running = j.state == "running"
        j.state = "cancelled"
        j.detail = c.reason
        out: list[Effect] = [
            Log("info", "job cancelled by requester", {"job": j.job_id, "reason": c.reason})
        ]
        if was_running:
            out.append(StopContainer(j.job_id))
        out.append(self._persist(j, now))
        return out

    # -- time ---------------------------------------------------------------------------------
    def _open_jobs(self) -> list[WorkerJob]:
        """Jobs a tick may act on, dropping from ``_open`` those that are settled for good."""
        out = []
        for job_id in list(self._open):
            j = self.jobs.get(job_id)
            if (
                j is None
                or j.state in ("expired", "cancelled")
                or (j.state == "reported" and (j.result_sent or j.result is None))
            ):
                del self._open[job_id]
            else:
                out.append(j)
        return out

    def _alarm(self, j: WorkerJob) -> Alarm | None:
        """The one deadline of an open job (whole seconds, as ``tick`` compares them)."""
        if j.state == "bid":
            return Alarm((j.offer.deadline_at + 1, "forget", j, INF))  # never awarded
        if j.asked_at:
            return Alarm((j.asked_at + AWARD_QUERY_WAIT_S, "no-answer", j, INF))
        if j.session is not None and j.session.wakeup() < j.last_status + HEARTBEAT_S:
            return Alarm((int(j.session.wakeup()), "session", j, INF))
        if j.state in ACTIVE:
            return Alarm((j.last_status + HEARTBEAT_S, "heartbeat", j, INF))
        if j.state == "reported" and not j.result_sent and j.result is not None:
            # Resent until the job's deadline; results are idempotent at the requester.
            resend = j.last_result_try + RESEND_RESULT_S
            return Alarm((resend, "resend-result", j, j.offer.deadline_at))
        return None

    def _alarms(self) -> list[Alarm]:
        return [a for j in self._open_jobs() if (a := self._alarm(j)) is not None]

    def tick(self, now: int) -> list[Effect]:
        out: list[Effect] = []
        for alarm in self._alarms():
            if not alarm.due(now):
                continue
            j = alarm.subject
            if alarm.what == "forget":
                del self.jobs[j.job_id]
            elif alarm.what == "no-answer":
                out += self._resume(j, "no answer from the requester")
            elif alarm.what == "heartbeat":
                out += self._status(j, j.state, now, j.image_detail)
            elif alarm.what == "session":
                why = j.session.due(now) if j.session is not None else None
                if why is not None:
                    out += self._end_session(j, why, now)
            else:
                j.last_result_try = now
                out.append(
                    SendMessage(j.requester, "result", j.result.raw, j.job_id, j.offer.addrs)
                )
        return out

    def next_wakeup(self) -> float:
        """The earliest ``now`` at which ``tick`` would act, read from the same alarms."""
        return earliest(self._alarm(j) for j in self._open_jobs())

    def is_idle(self) -> bool:
        """No awarded job still needs us (bids waiting for an award do not count)."""
        for job_id in list(self._working):
            j = self.jobs.get(job_id)
            if (
                j is None
                or j.state in ("cancelled", "expired")
                or (j.state == "reported" and j.result_sent)
            ):
                self._working.discard(job_id)
        return not self._working

    def _status(self, j: WorkerJob, state: str, now: int, detail: str) -> list[Effect]:
        j.last_status = now
        st = m.build_status(self.signer, job_id=j.job_id, state=state, detail=detail, now=now)
        return [SendMessage(j.requester, "status", st.raw, j.job_id, j.offer.addrs)]

    def _persist(self, j: WorkerJob, now: int) -> Persist:
        return Persist("jobs", f"worker:{j.job_id}", to_doc(j))

    # -- restart ------------------------------------------------------------------------------
    def restore(self, doc: dict[str, Any], now: int) -> list[Effect]:
        """Resume a persisted job: work that was in flight is redone, never silently dropped."""
        j = from_doc(doc)
        self.jobs[j.job_id] = j
        self._open[j.job_id] = None
        if j.state != "bid":
            self._working.add(j.job_id)
        if j.state in ("fetching", "running") and now < j.offer.deadline_at:
            # Ask first: the requester may have replaced us while we were down, and a run
            # it will refuse is a whole run wasted.
            j.state = "fetching"
            j.asked_at = now
            j.last_status = now
            return [
                Log("info", "asking whether our award still stands", {"job": j.job_id}),
                SendMessage(
                    j.requester,
                    m.AWARD_QUERY,
                    m.build_award_query(j.job_id),
                    j.job_id,
                    j.offer.addrs,
                ),
            ]
        if j.state in ("fetching", "running"):
            return self._report_error(j, now, "worker restarted after the deadline")
        return []

    def _resume(self, j: WorkerJob, why: str) -> list[Effect]:
        j.asked_at = 0
        refs = tuple((n, r.digest, r.size, r.kind) for n, r in j.offer.job.input_refs.items())
        return [
            Log("info", "resuming job after restart", {"job": j.job_id, "because": why}),
            _fetch_inputs(j, refs),
        ]

    def on_award_answer(self, data: bytes, from_peer: str, now: int) -> list[Effect]:
        try:
            job_id, stands = m.parse_award_answer(data)
        except (DecodeError, ValidationError) as exc:
            return [Log("warning", "award answer refused", {"from": from_peer, "reason": str(exc)})]
        j = self.jobs.get(job_id)
        if j is None or from_peer != j.requester or not j.asked_at or j.state in FINAL:
            return []
        if stands:
            return self._resume(j, "the requester says the award stands")
        j.asked_at = 0
        j.state = "cancelled"
        j.detail = "award no longer stands"
        return [
            Log("info", "award no longer stands: dropping the job", {"job": j.job_id}),
            self._persist(j, now),
        ]

    def on_send_failed(self, job_id: str, kind: str) -> list[Effect]:
        """An award query the requester did not take (an older one answers ``ok: false``)."""
        j = self.jobs.get(job_id)
        if kind != m.AWARD_QUERY or j is None or not j.asked_at or j.state in FINAL:
            return []
        return self._resume(j, "the requester did not take the question")

    def award_price(self, job_id: str, requester: str) -> int | None:
        """What the requester owes us for this job: the award's price, or for a service the
        minutes of our own signed result at that price per minute, within the budget."""
        j = self.jobs.get(job_id)
        if j is None or j.award is None or j.requester != requester or j.state != "reported":
            return None
        if j.offer.job.spec.service is not None:
            if j.result is None:
                return None
            return svc.charge(j.award.price, j.result.run_ms, j.offer.job.spec.budget)
        return j.award.price

    # -- service sessions (core/service.py) -------------------------------------------------------
    def _end_session(self, j: WorkerJob, why: str, now: int) -> list[Effect]:
        assert j.session is not None
        j.session.ending = why
        j.detail = why
        return [
            Log("info", "service session ending", {"job": j.job_id, "reason": why}),
            StopContainer(j.job_id),
        ]

    def on_service_connect(
        self, job_id: str, peer: str, conn_id: int, probe: bool, now: int
    ) -> list[Effect]:
        j = self.jobs.get(job_id)
        if j is None or j.offer.job.spec.service is None:
            why = "no service job of that ID runs here"
            return [AnswerServiceConnect(job_id, conn_id, False, why)]
        if j.session is None:
            if peer != j.requester:
                why = "not the requester of this job: only it may connect"
            elif j.state == "fetching":
                why = "the service is not running yet (fetching its inputs)"
            else:
                why = f"the service is not running ({j.state})"
            return [AnswerServiceConnect(job_id, conn_id, False, why)]
        ok, why = j.session.admit(peer, conn_id, now, probe=probe)
        if not ok:
            level = "warning" if peer != j.requester else "info"
            return [
                AnswerServiceConnect(job_id, conn_id, False, why),
                Log(level, "service connection refused", {"job": job_id, "peer": peer, "why": why}),
            ]
        return [AnswerServiceConnect(job_id, conn_id, True, "", j.session.port)]

    def on_service_closed(self, job_id: str, conn_id: int, now: int) -> list[Effect]:
        j = self.jobs.get(job_id)
        if j is not None and j.session is not None:
            j.session.closed(conn_id, now)
        return []


def worker_view(j: WorkerJob) -> dict[str, Any]:
    return {
        "job_id": j.job_id,
        "name": j.offer.job.spec.name,
        "image": j.offer.job.spec.image,
        "requester": j.requester,
        "state": j.state,
        "price": j.bid.price,
        "winners": [p for p, _ in j.award.winners] if j.award else [],
        "detail": j.detail,
        "result": j.result.to_json() if j.result else None,
        **({} if j.session is None else {"session": svc.session_view(j.session)}),
    }


def to_doc(j: WorkerJob) -> dict[str, Any]:
    return {
        "view": worker_view(j),
        "offer": j.offer.raw.hex(),
        "bid": j.bid.raw.hex(),
        "state": j.state,
        "award": j.award.raw.hex() if j.award else None,
        "result": j.result.raw.hex() if j.result else None,
        "result_sent": j.result_sent,
        "detail": j.detail,
    }


def from_doc(doc: dict[str, Any]) -> WorkerJob:
    offer = m.parse_offer(bytes.fromhex(doc["offer"]))
    j = WorkerJob(
        job_id=offer.job_id,
        offer=offer,
        bid=m.parse_bid(bytes.fromhex(doc["bid"]), requester=offer.requester),
        state=doc["state"],
        award=m.parse_award(bytes.fromhex(doc["award"])) if doc["award"] else None,
        result=m.parse_result(bytes.fromhex(doc["result"])) if doc["result"] else None,
        result_sent=doc["result_sent"],
        detail=doc["detail"],
    )
    return j
