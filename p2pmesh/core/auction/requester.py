"""Requester side of a job: offer, bid window, award, watch the workers, collect the result.

Theory of operation (PROTOCOL.md §7). States::

    bidding ─(window ends, ≥1 bid)─▶ awarded ─(first worker runs)─▶ running ─▶ fetching ─▶ done
       │  ▲                             │                               │            └─▶ failed
       │  └─(no bid: re-offer, round+1)─┘◀──(worker lost, no spare bid)─┘
       ├─(deadline, never a bid) ─▶ no-bids
       any non-final ─(deadline) ─▶ timeout      any non-final ─(cancel) ─▶ cancelled

A *replica* is one awarded worker. It is lost when it declines, when the award cannot be
delivered, when it stays silent for ``SILENCE_S`` (workers send a status at least every
``HEARTBEAT_S``), or when it has not reported by ``timeout_s + GRACE_S`` after its award. A lost
replica is replaced by the best unused bid of the current round, else by a new round of offers
that excludes every peer already tried. The job needs ``k`` reported replicas; when all agree (same
output digest, exit 0) the outputs are fetched by hash from one of them and the job is done.
Disagreement is resolved by the cross-validation machine (trust issue); until then it fails.

All times are integer unix seconds passed in by the driver.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from p2pmesh.core import codec
from p2pmesh.core.auction import messages as m
from p2pmesh.core.auction.selection import choose_winners
from p2pmesh.core.crypto import Signer
from p2pmesh.core.effects import Effect, FetchOutputs, Log, Persist, Publish, SendMessage
from p2pmesh.core.jobspec import WireJob, job_from_wire, job_to_wire
from p2pmesh.errors import DecodeError, ValidationError

SILENCE_S = 45
HEARTBEAT_S = 10
ACCEPT_WITHIN_S = 30
GRACE_S = 120
FINAL = frozenset({"done", "failed", "timeout", "cancelled", "no-bids"})
DEFAULT_AUTO_REDUNDANCY = 2


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
    accepted_digest: str = ""
    fetch_from: str = ""
    error: str = ""
    finished_at: int = 0
    history: list[tuple[int, str]] = field(default_factory=list)

    @property
    def spec(self) -> Any:
        return self.job.spec

    def active(self) -> list[Replica]:
        return [r for r in self.replicas.values() if r.state != "lost"]

    def spent(self) -> int:
        return sum(r.price for r in self.active())

    def note(self, now: int, text: str) -> None:
        self.history.append((now, text))
        del self.history[:-50]


class Requester:
    def __init__(self, signer: Signer, reputation: Any) -> None:
        self.signer = signer
        self.self_id = signer.peer_id
        self.reputation = reputation  # callable(peer_id) -> float
        self.jobs: dict[str, RequesterJob] = {}

    # -- commands -----------------------------------------------------------------------------
    def submit(
        self, job_id: str, job: WireJob, *, now: int, bid_window_s: int, addrs: tuple[str, ...]
    ) -> list[Effect]:
        if job_id in self.jobs:
            return [Log("warning", "job already submitted", {"job": job_id})]
        spec = job.spec
        k = spec.redundancy if isinstance(spec.redundancy, int) else DEFAULT_AUTO_REDUNDANCY
        deadline_s = spec.deadline_s or spec.timeout_s * 3 + 600
        j = RequesterJob(
            job_id=job_id,
            job=job,
            k=k,
            created_at=now,
            deadline_at=now + deadline_s,
            bid_window_s=bid_window_s,
            addrs=addrs,
        )
        self.jobs[job_id] = j
        j.note(now, f"submitted: {k} replica(s), deadline in {deadline_s} s")
        return self._offer(j, now)

    def cancel(self, job_id: str, now: int) -> list[Effect]:
        j = self.jobs.get(job_id)
        if j is None or j.state in FINAL:
            return []
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
        elif bid.price > j.spec.max_price:
            why = "price above max_price"
        elif bid.bidder in j.tried or bid.bidder == self.self_id:
            why = "bidder already tried for this job"
        if why:
            return [
                Log("debug", "bid refused", {"job": bid.job_id, "from": from_peer, "reason": why})
            ]
        assert j is not None
        first = bid.bidder not in j.bids
        j.bids[bid.bidder] = bid
        if first:
            j.bids_seen += 1
        out: list[Effect] = [self._persist(j, now)]
        # Late bids (after the window) can fill a replica that is still missing at once.
        if j.state != "bidding" and self._missing(j) > 0:
            out += self._award(j, now)
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
        if st.state == "declined":
            return self._lose(j, rep, now, f"declined: {st.detail}")
        rep.state = st.state
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
        out += self._maybe_decide(j, now)
        out.append(self._persist(j, now))
        return out

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
        if j is None or j.state != "fetching" or worker != j.fetch_from:
            return []
        if ok:
            rep = j.replicas[worker]
            assert rep.result is not None
            if j.error:  # a failed job whose outputs/logs were fetched for the user
                return self._finish(j, _failure_state(rep.result), now, j.error)
            return self._finish(j, "done", now, "")
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
        return self._finish(j, "failed", now, f"outputs could not be fetched: {error}")

    # -- time ---------------------------------------------------------------------------------
    def tick(self, now: int) -> list[Effect]:
        out: list[Effect] = []
        for j in list(self.jobs.values()):
            if j.state in FINAL:
                continue
            if now >= j.deadline_at:
                out += self._cancel_replicas(j, now, "deadline passed")
                final = "no-bids" if not j.replicas and j.bids_seen == 0 else "timeout"
                reason = (
                    "no peer bid before the deadline (is the image allowed anywhere? "
                    "see `p2pmesh peers` and workers' --allow-image)"
                    if final == "no-bids"
                    else "deadline passed before enough results arrived"
                )
                out += self._finish(j, final, now, reason)
                continue
            for rep in j.active():
                if rep.state == "reported":
                    continue
                heard = max(rep.last_heard, rep.awarded_at)
                if rep.state == "awarded" and now - rep.awarded_at > ACCEPT_WITHIN_S:
                    out += self._lose(j, rep, now, "did not accept the award in time")
                elif now - heard > SILENCE_S:
                    out += self._lose(j, rep, now, f"silent for {now - heard} s")
                elif now - rep.awarded_at > j.spec.timeout_s + GRACE_S:
                    out += self._lose(j, rep, now, "no result within the job timeout")
            if j.state in FINAL:
                continue
            if j.state == "bidding" and now >= j.window_ends:
                if j.bids:
                    out += self._award(j, now)
                else:
                    out += self._offer(j, now)  # nobody yet: ask again, next round
        return out

    # -- internals ----------------------------------------------------------------------------
    def _missing(self, j: RequesterJob) -> int:
        return j.k - len(j.active())

    def _offer(self, j: RequesterJob, now: int) -> list[Effect]:
        if j.offer_raw:
            j.round += 1
        j.bids = {}
        j.state = "bidding" if not j.active() else j.state
        offer = m.build_offer(
            self.signer,
            job_id=j.job_id,
            job=j.job,
            created_at=now,
            deadline_at=j.deadline_at,
            bid_window_s=j.bid_window_s,
            round_=j.round,
            addrs=j.addrs,
            exclude=tuple(sorted(j.tried))[:64],
        )
        j.offer_raw = offer.raw
        j.window_ends = now + j.bid_window_s
        j.note(now, f"offer round {j.round} published")
        return [
            Publish(m.TOPIC_OFFERS, offer.raw),
            Log("info", "offer published", {"job": j.job_id, "round": j.round}),
            self._persist(j, now),
        ]

    def _award(self, j: RequesterJob, now: int) -> list[Effect]:
        need = self._missing(j)
        if need <= 0:
            return []
        considered = list(j.bids.values())
        winners = choose_winners(
            considered,
            k=need,
            budget_left=j.spec.budget - j.spent(),
            max_price=j.spec.max_price,
            reputation=self.reputation,
            exclude=set(j.tried),
        )
        out: list[Effect] = []
        if not winners:
            if not j.active():
                j.state = "bidding"
            return out + self._offer(j, now) if now < j.deadline_at else out
        all_winners = [(r.worker, r.price) for r in j.active()] + [
            (b.bidder, b.price) for b in winners
        ]
        raw_considered = [b.raw for b in considered]
        for b in winners:
            award = m.build_award(
                self.signer,
                job_id=j.job_id,
                job_digest=j.job.digest,
                round_=j.round,
                worker=b.bidder,
                price=b.price,
                winners=all_winners,
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

    def _lose(self, j: RequesterJob, rep: Replica, now: int, reason: str) -> list[Effect]:
        rep.state = "lost"
        rep.lost_reason = reason
        j.note(now, f"lost {rep.worker}: {reason}")
        cancel = m.build_cancel(self.signer, job_id=j.job_id, reason=reason, now=now)
        out: list[Effect] = [
            Log(
                "warning", "worker lost", {"job": j.job_id, "worker": rep.worker, "reason": reason}
            ),
            SendMessage(rep.worker, "cancel", cancel.raw, j.job_id),
        ]
        if not any(r.state in ("running", "reported") for r in j.active()):
            j.state = "awarded" if j.active() else "bidding"
        spare = [b for b in j.bids.values() if b.bidder not in j.tried]
        if spare:
            out += self._award(j, now)
        else:
            out += self._offer(j, now)
        out.append(self._persist(j, now))
        return out

    def _maybe_decide(self, j: RequesterJob, now: int) -> list[Effect]:
        reported = [r for r in j.active() if r.state == "reported" and r.result is not None]
        if len(reported) < j.k:
            return []
        results = [r.result for r in reported if r.result is not None]
        ok = [r for r in results if r.status == "exited" and r.exit_code == 0]
        if len(ok) == len(results) and len({r.output_digest for r in ok}) == 1:
            j.accepted_digest = ok[0].output_digest
            return self._fetch(j, ok[0].worker, now)
        if ok and len(ok) < len(results):
            bad = next(r for r in results if r not in ok)
            j.error = f"replica on {bad.worker} ended {bad.status} (exit {bad.exit_code})"
        elif not ok:
            first = results[0]
            j.error = f"job ended {first.status} (exit {first.exit_code})"
        else:
            j.error = "replicas returned different outputs"
        # Fetch the first failing replica's outputs and logs, so the user can see why.
        culprit = next((r for r in results if r not in ok), results[0])
        j.accepted_digest = culprit.output_digest
        return self._fetch(j, culprit.worker, now)

    def _fetch(self, j: RequesterJob, worker: str, now: int) -> list[Effect]:
        rep = j.replicas[worker]
        assert rep.result is not None
        j.state = "fetching"
        j.fetch_from = worker
        r = rep.result
        return [
            FetchOutputs(
                j.job_id, worker, r.output_digest, r.output_size, r.log_digest, r.log_size
            ),
            self._persist(j, now),
        ]

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


def _failure_state(r: m.Result) -> str:
    return "timeout" if r.status == "timeout" else "failed"


def job_view(j: RequesterJob) -> dict[str, Any]:
    """The job document shown by ``p2pmesh job ID --json`` and written to result.json."""
    return {
        "job_id": j.job_id,
        "name": j.spec.name,
        "image": j.spec.image,
        "state": j.state,
        "error": j.error,
        "redundancy": j.k,
        "round": j.round,
        "created_at": j.created_at,
        "deadline_at": j.deadline_at,
        "finished_at": j.finished_at or None,
        "bids_received": j.bids_seen,
        "output_digest": j.accepted_digest or None,
        "price_total": sum(r.price for r in j.active() if r.state == "reported"),
        "workers": [
            {
                "peer_id": r.worker,
                "price": r.price,
                "state": r.state,
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
        "job_wire_hex": _hex_wire(job_to_wire(j.job.spec, j.job.input_refs)),
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
            }
            for r in j.replicas.values()
        ],
        "tried": sorted(j.tried),
        "tried_fetch": sorted(j.tried_fetch),
        "accepted_digest": j.accepted_digest,
        "fetch_from": j.fetch_from,
        "error": j.error,
        "finished_at": j.finished_at,
        "history": j.history,
    }


def _hex_wire(wire: dict[str, Any]) -> str:
    return codec.encode(wire).hex()


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
        accepted_digest=doc["accepted_digest"],
        fetch_from=doc["fetch_from"],
        error=doc["error"],
        finished_at=doc["finished_at"],
        history=[tuple(h) for h in doc["history"]],  # type: ignore[misc]
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
        )
    return j
