"""The node's composition root and the core's only face.

``Node.handle(event, now)`` routes each event to the machine that owns it: ``Membership``
(our record, the peer table, dialling), ``Requester`` and ``Provider`` (the two job machines),
``LedgerMachine`` (payments and replication) and the reputation book. Drivers (the daemon, the
simulator, the CLI through the daemon) see only the methods below the "face" line: restore after
a restart, read-only views that return plain data, and the few questions a stream server asks
(``may_serve_blob``, ``serve_ledger``). A static test (tests/unit/test_face.py) fails when code
outside ``p2pmesh/core`` reaches into the machines themselves.

Nothing here reads a clock or does I/O: ``now`` is unix seconds passed in by the driver.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from p2pmesh.core import capability, reputation, topics
from p2pmesh.core.auction import admission, newcomers
from p2pmesh.core.auction import logs as logs_mod
from p2pmesh.core.auction import proofs as proofs_mod
from p2pmesh.core.auction import provider as provider_mod
from p2pmesh.core.auction import requester as requester_mod
from p2pmesh.core.auction.messages import parse_verdict
from p2pmesh.core.auction.provider import Provider
from p2pmesh.core.auction.requester import Requester
from p2pmesh.core.capability import Capabilities, CapabilityRecord
from p2pmesh.core.crypto import Signer
from p2pmesh.core.effects import Dial, Effect, ExchangePeers, Log, Persist
from p2pmesh.core.events import (
    BlocksReceived,
    CancelRequested,
    ContainerFinished,
    DialFailed,
    Event,
    ImageProgress,
    InputsFetched,
    JobEvent,
    JobSubmitted,
    LocalImagesChanged,
    MessageDelivered,
    MessageReceived,
    OutputsCompared,
    OutputsFetched,
    PeerAddressObserved,
    PeerConnected,
    PeerDisconnected,
    PeerDiscovered,
    ProfileChanged,
    RecordReceived,
    SendFailed,
    ServiceConnectionClosed,
    ServiceConnectRequested,
    Ticked,
)
from p2pmesh.core.ledger.accounts import compute
from p2pmesh.core.ledger.block import Block
from p2pmesh.core.ledger.chain import FraudProof, Ledger, open_fraud
from p2pmesh.core.ledger.payments import MAX_SYNC_BLOCKS, LedgerMachine
from p2pmesh.core.membership import (
    TOPIC_CAPABILITIES,
    Membership,
    full_addrs,
    no_bids_text,
    peer_id_of_addr,
)
from p2pmesh.core.peers import PeerTable
from p2pmesh.errors import DecodeError, ValidationError

# Restoring a stored job document can fail in as many ways as the document can be damaged.
_DOC_ERRORS = (DecodeError, ValidationError, KeyError, TypeError, ValueError, AttributeError)
MAX_NEWCOMER_CHECKS = 1000  # credibility for "auto" needs ~920; more would keep everyone new


@dataclass(frozen=True, slots=True)
class NodeConfig:
    record_ttl_s: int = 300
    # Dial peers we learn about until we hold this many connections: enough that the mesh
    # survives losing its bootstrap node, few enough that gossip fan-out stays cheap.
    target_connections: int = 8
    redial_after_s: float = 30.0
    bootstrap: tuple[str, ...] = ()  # full multiaddrs with /p2p/<id>
    bootstrap_backoff_min_s: float = 1.0
    bootstrap_backoff_max_s: float = 30.0
    min_republish_interval_s: float = 1.0
    # Announce again this long after the first connection: the start-up announcement went out
    # before we had any peer, and the next timed one is half a TTL away (150 s by default).
    reannounce_after_join_s: float = 2.0
    # Ask one connected peer (in turn) for its records this often: gossip at start-up misses
    # some peers, and peer exchange otherwise happens only when a connection opens.
    anti_entropy_s: float = 5.0
    # A dial in flight counts toward target_connections for this long.
    dial_pending_s: float = 10.0
    dht_lookup_after_s: float = 5.0  # no record from peer exchange by then: ask the DHT
    allow_network: bool = False  # may jobs that ask for network access run here?
    # May a worker that lacks a job's image bid, to pull it from its registry or fetch it
    # from the requester by its ID? (The daemon says yes; the simulator models no images.)
    image_pull: bool = False
    image_fetch: bool = False
    spot_check: float = 0.10  # share of "auto" jobs on a credible worker that are re-run
    credit_base: int = 100  # credit anyone may go negative by before earning anything
    fault_fork_ledger: bool = False  # FAULT fork-ledger: sign two blocks at one height
    # A replica's worker whose connection closed and did not come back within this many
    # seconds is lost, as after SILENCE_S of silence (a frozen worker keeps its connection).
    connection_grace_s: int = 5
    # After `up --recover`: sign no block for this long, while our own chain comes back from
    # the peers that hold copies (a block at a height we already used would be a fork).
    recover_window_s: int = 30
    # At most one replica of a job per observed network prefix (/24, /48; §8.6): one owner's
    # machines must not outvote the rest. Loopback peers are each their own prefix.
    prefix_diversity: bool = True
    # Newcomers (fewer than newcomer_checks passed checks here, or a failed one) get at most
    # one slot per award decision, with this probability, by lottery per prefix (§8.9), and
    # fill the slots established bidders leave empty. newcomer_checks = 0: the rule is off.
    newcomer_share: float = newcomers.DEFAULT_SHARE
    newcomer_checks: int = newcomers.DEFAULT_CHECKS
    # Share of checked jobs (2+ replicas) given one replica more than their redundancy says,
    # which no worker can see (§8.7): a ring holding every replica it knows of may not hold all.
    hidden_replicas: float = 0.10
    # Bidder sortition (§7.12): in a large mesh only about k + 2 drawn fitting peers bid.
    sortition: bool = True
    # Wrong-result proofs (§8.8) excluding a worker once their weights (our trust in the
    # signers vouching for the right output, per requester) add up to this.
    proof_exclusion: float = 0.5
    # The private mesh's swarm key fingerprint (core/swarmkey.py), shown by `status`; None:
    # an open mesh. The key itself never reaches the core: the transport enforces it.
    swarm_key_fingerprint: str | None = None
    # Why this node cannot forward a service job's port ("": it can; the daemon probes for the
    # right to enter a container's network namespace). Service offers are declined with it.
    service_refusal: str = ""

    def validate(self) -> None:
        if not 10 <= self.record_ttl_s <= capability.MAX_TTL_S:
            raise ValueError(f"record_ttl_s must be in [10, {capability.MAX_TTL_S}]")
        if not 0.0 <= self.spot_check <= 1.0:
            raise ValueError("spot_check must be in [0, 1]")
        if not 0.0 < self.proof_exclusion <= 100.0:
            raise ValueError("proof_exclusion must be in (0, 100]")
        if not 0.0 <= self.hidden_replicas <= 1.0:
            raise ValueError("hidden_replicas must be in [0, 1]")
        if self.connection_grace_s < 1 or self.recover_window_s < 1:
            raise ValueError("connection_grace_s and recover_window_s must be >= 1")
        if self.target_connections < 1:
            raise ValueError("target_connections must be >= 1")
        if not 0.0 <= self.newcomer_share <= 1.0:
            raise ValueError("newcomer_share must be in [0, 1]")
        if not 0 <= self.newcomer_checks <= MAX_NEWCOMER_CHECKS:
            raise ValueError(f"newcomer_checks must be in [0, {MAX_NEWCOMER_CHECKS}]")


class Node:
    def __init__(
        self,
        config: NodeConfig,
        signer: Signer,
        caps: Capabilities,
        *,
        last_seq: int = 0,
        started_at: float = 0.0,
        rng: Any = None,
    ) -> None:
        config.validate()
        self.config = config
        self.signer = signer
        self.peer_id = signer.peer_id
        self.started_at = started_at
        self._now = started_at
        # The machines. Core code (and unit tests) may use them; drivers may not (the face).
        self.membership = Membership(config, signer, caps, last_seq=last_seq, now=started_at)
        self.peers: PeerTable = self.membership.peers
        self.book = reputation.ReputationBook(self.peer_id)
        self.prefixes = admission.Prefixes()
        self.requester = Requester(
            signer,
            lambda pid: self.reputation_of(pid, self._now),
            book=self.book,
            rng=rng,
            spot_check=config.spot_check,
            eligible=lambda job, chosen=None: self.membership.count_fitting(job.spec, chosen),
            connection_grace_s=config.connection_grace_s,
            prefix=self.prefixes.of if config.prefix_diversity else None,
            hidden_rate=config.hidden_replicas,
            sortition=config.sortition,
        )
        self.provider = Provider(
            signer, allow_network=config.allow_network, service_refusal=config.service_refusal
        )
        self.provider.can_pull = config.image_pull
        self.provider.can_fetch_images = config.image_fetch
        self.ledger = LedgerMachine(
            signer,
            self.book,
            credit_base=config.credit_base,
            fault_fork=config.fault_fork_ledger,
        )
        self.requester.pay = self.ledger.pay
        self.requester.excluded = self.ledger.ledger.excluded
        # The lottery groups newcomers by observed prefix even when replica diversity is off:
        # a swarm's many identities in few prefixes must not buy it more tickets.
        self.requester.newcomer_rule = newcomers.NewcomerRule(
            share=config.newcomer_share, checks=config.newcomer_checks, group=self.prefixes.of
        )
        self.proofs = proofs_mod.ProofBook(self.peer_id, exclude_at=config.proof_exclusion)
        self.requester.excluded = self.excluded
        self.requester.on_proof = self._wrong_result
        self.provider.requester_allowed = self.ledger.may_trade_with

    # Our own capabilities and record live in Membership; these keep the old spelling.
    @property
    def caps(self) -> Capabilities:
        return self.membership.caps

    @caps.setter
    def caps(self, caps: Capabilities) -> None:
        self.membership.caps = caps

    @property
    def own(self) -> CapabilityRecord | None:
        return self.membership.own

    @property
    def stats(self) -> Any:
        return self.membership.stats

    # -- the one entry point -------------------------------------------------------------
    def handle(self, event: Event | JobEvent, now: float) -> list[Effect]:
        self._now = now
        if isinstance(event, Ticked):
            t = int(now)
            return (
                self.membership.tick(now)
                + self.requester.tick(t)
                + self.provider.tick(t)
                + self.ledger.tick(t)
            )
        if isinstance(event, BlocksReceived):
            return self.ledger.on_blocks(list(event.blocks), event.from_peer, int(now))
        if isinstance(event, MessageReceived | JobSubmitted | SendFailed | MessageDelivered):
            return self._job_message(event, int(now))
        if isinstance(event, CancelRequested):
            return self.requester.cancel(event.job_id, int(now))
        if isinstance(event, InputsFetched):
            return self.provider.on_inputs_fetched(event.job_id, event.ok, event.error, int(now))
        if isinstance(event, ImageProgress):
            return self.provider.on_image_progress(event.job_id, event.detail, int(now))
        if isinstance(event, ContainerFinished):
            return self.provider.on_container_finished(event, int(now))
        if isinstance(event, OutputsCompared):
            return self.requester.on_outputs_compared(
                event.job_id, event.workers, [list(g) for g in event.groups], int(now)
            )
        if isinstance(event, OutputsFetched):
            return self.requester.on_outputs_fetched(
                event.job_id, event.worker, event.ok, event.error, int(now)
            )
        if isinstance(event, ServiceConnectRequested):
            return self.provider.on_service_connect(
                event.job_id, event.from_peer, event.conn_id, event.probe, int(now)
            )
        if isinstance(event, ServiceConnectionClosed):
            return self.provider.on_service_closed(event.job_id, event.conn_id, int(now))
        if isinstance(event, RecordReceived):
            return self.membership.record(event.data, event.source, event.from_peer, now)
        if isinstance(event, ProfileChanged):
            return self.membership.profile_changed(event.caps, now)
        if isinstance(event, LocalImagesChanged):
            self.provider.local_images = event.images
            count = None if event.images is None else len(event.images)
            return [Log("debug", "local images", {"count": count})]
        if isinstance(event, PeerConnected):
            return self._connected(event.peer_id, now)
        if isinstance(event, PeerDisconnected):
            self.membership.disconnected(event.peer_id, now)
            out: list[Effect] = [Log("info", "peer disconnected", {"peer": event.peer_id})]
            addrs = self.peer_addrs(event.peer_id)
            if self.requester.on_peer_disconnected(event.peer_id, int(now)) and addrs:
                out.append(Dial(event.peer_id, addrs))
            return out
        if isinstance(event, PeerAddressObserved):
            if event.peer_id != self.peer_id:
                self.prefixes.observe(event.peer_id, event.host)
            return []
        if isinstance(event, PeerDiscovered):
            return self.membership.discovered(event.peer_id, event.addrs, now)
        if isinstance(event, DialFailed):
            return [Log("debug", "dial failed", {"peer": event.peer_id, "reason": event.reason})]
        raise TypeError(f"unknown event {event!r}")

    def _connected(self, peer_id: str, now: float) -> list[Effect]:
        self.requester.on_peer_connected(peer_id, int(now))
        if not self.membership.connected(peer_id, now):
            return []
        return [
            Log("info", "peer connected", {"peer": peer_id}),
            ExchangePeers(peer_id),
            *self.ledger.on_connected(peer_id),
        ]

    def _job_message(
        self, ev: MessageReceived | JobSubmitted | SendFailed | MessageDelivered, now: int
    ) -> list[Effect]:
        if isinstance(ev, JobSubmitted):
            addrs = tuple(full_addrs(self.peer_id, self.caps.addrs))
            return self.requester.submit(
                ev.job_id, ev.job, now=now, bid_window_s=ev.bid_window_s, addrs=addrs
            )
        if isinstance(ev, SendFailed):
            return [
                Log(
                    "debug",
                    "send failed",
                    {"job": ev.job_id, "peer": ev.peer_id, "kind": ev.kind, "reason": ev.reason},
                ),
                *self.requester.on_send_failed(ev.job_id, ev.peer_id, ev.kind, ev.reason, now),
                *self.provider.on_send_failed(ev.job_id, ev.kind),
            ]
        if isinstance(ev, MessageDelivered):
            if ev.kind == "result":
                return self.provider.on_result_delivered(ev.job_id)
            return []
        kind, data, peer = ev.kind, ev.data, ev.from_peer
        if kind == "offer":
            return self.provider.on_offer(data, self.caps, now)
        if kind == "bid":
            return self.requester.on_bid(data, peer, now)
        if kind == "award":
            return self.provider.on_award(data, peer, self.caps, now)
        if kind == "status":
            return self.requester.on_status(data, peer, now)
        if kind == "result":
            return self.requester.on_result(data, peer, now)
        if kind == "cancel":
            return self.provider.on_cancel(data, peer, now)
        if kind == "award-query":
            return self.requester.on_award_query(data, peer, now)
        if kind == "award-answer":
            return self.provider.on_award_answer(data, peer, now)
        if kind == "verdict":
            return self._verdict(data, now)
        if kind == "pay":
            return self.ledger.on_pay(data, peer, now, self.provider.award_price)
        if kind == "paid":
            return self.ledger.on_paid(data, peer, now)
        if kind == "head":
            return self.ledger.on_head(data, peer, now)
        if kind == "fraud":
            return self.ledger.on_fraud(data, now)
        if kind == "wrong-result":
            return self._wrong_result(data, now)
        return [Log("debug", "unknown message kind", {"kind": kind[:32], "from": peer})]

    def _verdict(self, data: bytes, now: int) -> list[Effect]:
        """A verdict signed by another requester: evidence weighted by our trust in its author.

        Only authors we already trust above the prior count at all, so a swarm of fresh
        identities vouching for each other adds nothing.
        """
        try:
            v = parse_verdict(data)
        except (DecodeError, ValidationError) as exc:
            return [Log("debug", "verdict refused", {"reason": str(exc)})]
        if v.requester == self.peer_id:
            return []
        prior = reputation.PRIOR_GOOD / (reputation.PRIOR_GOOD + reputation.PRIOR_BAD)
        weight = max(0.0, (self.book.score(v.requester, now) - prior) / (1 - prior))
        if weight <= 0 or v.outcome == "inconclusive":
            return []
        for w in v.agreeing if len(v.agreeing) >= 2 else ():
            self.book.record(w, "agreed", now, weight=weight, job_id=v.job_id, source=v.requester)
        for w in v.dissenting:
            self.book.record(
                w, "dissented", now, weight=weight, job_id=v.job_id, source=v.requester
            )
        return []

    def _wrong_result(self, data: bytes, now: float) -> list[Effect]:
        """A wrong-result proof (§8.8), gossiped or our own: evidence weighted by our trust in
        the signers who vouch for the accepted output; enough of it excludes the worker."""
        try:
            proof = proofs_mod.parse_proof(data)
        except (DecodeError, ValidationError) as exc:
            return [Log("debug", "wrong-result proof refused", {"reason": str(exc)})]
        if self.proofs.holds(proof) or proof.worker == self.peer_id:
            return []
        weight = proofs_mod.proof_weight(proof, self._trust, self.peer_id)
        t = int(now)
        if weight > 0:
            self.book.record(
                proof.worker,
                "proven-wrong",
                t,
                weight=weight,
                job_id=f"{proof.job_id}/proof",
                source=proof.requester if proof.requester != self.peer_id else "",
            )
        newly = self.proofs.add(proof, weight)
        out: list[Effect] = [Persist("proofs", proof.key, proof.raw)]
        if newly:
            out.append(
                Log(
                    "warning",
                    "worker excluded by wrong-result proofs",
                    {"worker": proof.worker, "job": proof.job_id, "requester": proof.requester},
                )
            )
        return out

    def _trust(self, peer: str) -> float:
        """Our trust in ``peer`` above the prior, 0..1: what a stranger's word is worth."""
        prior = reputation.PRIOR_GOOD / (reputation.PRIOR_GOOD + reputation.PRIOR_BAD)
        return max(0.0, (self.book.score(peer, self._now) - prior) / (1 - prior))

    def next_wakeup(self) -> float:
        """The earliest ``now`` at which a ``Ticked`` would do anything (``-inf``: at once).

        A driver may tick less often than every second without changing what the node does, as
        long as it ticks at this time (re-asked after every ``handle``). The daemon ticks every
        second anyway; the simulator uses this to skip the hundreds of empty ticks a job would
        otherwise cost (docs/SIMULATIONS.md). Each machine reads it from the same alarms its
        ``tick`` fires (``core/timers.py``); earlier is always safe, later never.
        """
        return min(
            self.membership.next_wakeup(),
            self.requester.next_wakeup(),
            self.provider.next_wakeup(),
            self.ledger.next_wakeup(),
        )

    # == the face: everything a driver may call besides handle and next_wakeup ================
    # -- restart ---------------------------------------------------------------------------
    def restore(
        self,
        *,
        now: float,
        records: Iterable[bytes] = (),
        blocks: Iterable[bytes] = (),
        frauds: Iterable[bytes] = (),
        payments: Iterable[dict[str, Any]] = (),
        jobs: Iterable[tuple[str, dict[str, Any]]] = (),
        recovering: bool = False,
        proofs: Iterable[bytes] = (),
    ) -> list[Effect]:
        """Rebuild a fresh node from what an earlier run persisted; returns effects to execute.

        ``records``: stored peer records; ``blocks``, ``frauds``, ``payments``: the ledger's
        tables; ``jobs``: (role, document) as the last ``Persist("jobs")`` wrote them. Requester
        jobs come back from their documents and our own stored verdicts rebuild reputation
        (evidence gossiped by others is forgotten); awarded worker jobs resume. A document that
        cannot be read is logged and skipped, never fatal. Call once, before the first event.
        ``recovering``: the store was set aside as damaged (``up --recover``); for
        ``recover_window_s`` no block is signed while our own chain comes back from peers.
        """
        out: list[Effect] = []
        if recovering:
            out += self.ledger.start_recovery(int(now), self.config.recover_window_s)
        for raw in records:
            out += self.membership.record(raw, "store", None, now)
        self.ledger.restore(list(blocks), list(frauds), list(payments))
        t = int(now)
        for role, doc in jobs:
            try:
                if role == "requester":
                    j = requester_mod.from_doc(doc, self.peer_id, t)
                    self.requester.restore_job(j)
                elif role == "worker":
                    out += self.provider.restore(doc, t)
                else:
                    raise ValueError(f"unknown role {role!r}")
            except _DOC_ERRORS as exc:
                job_id = doc.get("job_id", "?") if isinstance(doc, dict) else "?"
                out.append(
                    Log("error", "could not restore job", {"job": job_id, "error": repr(exc)})
                )
        # After the jobs: our own verdicts have rebuilt the evidence proofs are weighed by.
        for raw in proofs:
            out += [e for e in self._wrong_result(raw, now) if not isinstance(e, Persist)]
        return out

    def job_docs(self) -> list[tuple[str, dict[str, Any]]]:
        """(role, document) of every job, as ``Persist("jobs")`` last wrote it (bids are never
        persisted). What a store holds; the simulator restarts a node from it."""
        out = [("requester", requester_mod.to_doc(j)) for j in self.requester.jobs.values()]
        out += [
            ("worker", provider_mod.to_doc(w))
            for w in self.provider.jobs.values()
            if w.state != "bid"
        ]
        return out

    # -- jobs ----------------------------------------------------------------------------------
    def job(
        self, job_id: str, *, prefix: bool = False, now: float | None = None
    ) -> dict[str, Any] | None:
        """The job document (``role`` "requester" or "worker"), or None. ``prefix``: a unique
        prefix of a requester job's ID is enough (what the CLI accepts). ``now``: the clock
        for elapsed times (default: the last event's)."""
        j = self.requester.jobs.get(job_id)
        if j is None and prefix and job_id:
            matches = [k for k in self.requester.jobs if k.startswith(job_id)]
            if len(matches) == 1 and job_id not in self.provider.jobs:
                j = self.requester.jobs[matches[0]]
        if j is not None:
            return self._requested_view(j, now)
        w = self.provider.jobs.get(job_id)
        if w is not None:
            return {**provider_mod.worker_view(w), "role": "worker"}
        return None

    def _unpaid(self) -> dict[str, int]:
        """Payments proposed and not yet agreed, by job."""
        out: dict[str, int] = {}
        for p in self.ledger.pending.values():
            out[p.job_id] = out.get(p.job_id, 0) + 1
        return out

    def _requested_view(
        self,
        j: Any,
        now: float | None,
        *,
        why: bool = True,
        unpaid: dict[str, int] | None = None,
    ) -> dict[str, Any]:
        """A job of ours with its phase: while no bid has come, why not, from our peer table
        (``why``: one pass over the table, so not for every job of a list); once done,
        ``paying`` until every payment for it is agreed."""
        t = int(self._now if now is None else now)
        doc = {**requester_mod.job_view(j, t), "role": "requester"}
        phase = doc["phase"]
        if phase["name"] == "offered" and why:
            summary = self.membership.fit_summary(j.spec, j.tried)
            doc["waiting"] = {**summary, "text": no_bids_text(summary)}
            # With results in already, say that first (``2 result(s) in; offering replica 3``).
            lead = f"{phase['text']}; " if j.active() else ""
            phase["text"] = lead + doc["waiting"]["text"]
        elif j.state == "done":
            n = (self._unpaid() if unpaid is None else unpaid).get(j.job_id, 0)
            if n:
                phase.update(name="paying", text=f"paying: {n} payment(s) not yet agreed")
        return doc

    def jobs(self, now: float | None = None) -> list[dict[str, Any]]:
        """Every job we requested, and every one we were awarded, oldest first (why a job
        waits for bids is in ``job`` only)."""
        unpaid = self._unpaid()
        out = [
            self._requested_view(j, now, why=False, unpaid=unpaid)
            for j in self.requester.jobs.values()
        ]
        out += [
            {**provider_mod.worker_view(w), "role": "worker"}
            for w in self.provider.jobs.values()
            if w.state != "bid"
        ]
        return sorted(out, key=lambda d: d.get("created_at") or 0)

    def job_outputs(self, job_id: str) -> dict[str, Any] | None:
        """What exporting a requested job needs: its document and the digests of the accepted
        outputs and their log (None for both until they are fetched). None: no such job."""
        j = self.requester.jobs.get(job_id)
        if j is None:
            return None
        doc = requester_mod.job_view(j)
        rep = j.replicas.get(j.fetch_from) if j.fetch_from and j.accepted_digest else None
        res = rep.result if rep is not None else None
        return {
            "job": doc,
            "state": j.state,
            "output_digest": res.output_digest if res is not None else None,
            "log_digest": res.log_digest if res is not None else None,
            # Every replica's log, the accepted one first: any of them explains a failure.
            "log_digests": [
                r.result.log_digest
                for r in sorted(j.replicas.values(), key=lambda r: r.worker != j.fetch_from)
                if r.result is not None
            ],
        }

    def recovering(self, now: float) -> int:
        """Seconds left of the recovery window (0: not recovering); no new job is taken then."""
        return max(0, self.ledger.recovering_until - int(now))

    def is_idle(self) -> bool:
        """Nothing is in flight: no open requester job, no awarded work not yet settled, no
        payment awaiting agreement. A driver may tick an idle node rarely (the simulator does):
        that only delays its record refresh, head announcements and forgetting stale bids."""
        return self.requester.is_idle() and self.provider.is_idle() and not self.ledger.pending

    def may_serve_image(self, peer: str, image_id: str) -> bool:
        """May ``peer`` fetch the blobs of image ``image_id`` from us? Only a worker awarded
        one of our jobs that names it (PROTOCOL.md §7.14)."""
        if not image_id:
            return False
        for j in self.requester.jobs.values():
            if j.job.spec.image_id == image_id and peer in j.replicas:
                return True
        return False

    def may_serve_blob(self, peer: str, digest: str) -> bool:
        """May ``peer`` fetch blob ``digest`` from us? Inputs go only to a job's awarded workers,
        outputs and logs only to the job's requester (PROTOCOL.md §7.6)."""
        for j in self.requester.jobs.values():
            if peer in j.replicas and any(r.digest == digest for r in j.job.input_refs.values()):
                return True
        for w in self.provider.jobs.values():
            res = w.result
            if w.requester == peer and res and digest in (res.output_digest, res.log_digest):
                return True
        return False

    def log_access(self, job_id: str, peer: str | None) -> logs_mod.LogAccess:
        """May ``peer`` (None: our own owner) read the log of a job we work on, and which log
        (PROTOCOL.md §7.5a): only the peer that awarded it to us."""
        return logs_mod.worker_log_access(self.provider.jobs.get(job_id), peer)

    def log_sources(self, job_id: str) -> dict[str, Any] | None:
        """Where a live log of a job we requested comes from: its replicas in play, the one
        whose outputs we fetch first, then by award; each with its log digest once reported.
        None: no such requested job."""
        j = self.requester.jobs.get(job_id)
        if j is None:
            return None
        reps = sorted(j.active(), key=lambda r: (r.worker != j.fetch_from, r.awarded_at))
        return {
            "state": j.state,
            "final": j.state in requester_mod.FINAL,
            "workers": [
                {
                    "peer_id": r.worker,
                    "state": r.state,
                    "log_digest": r.result.log_digest if r.result is not None else None,
                }
                for r in reps
            ],
        }

    # -- peers and reputation ----------------------------------------------------------------------
    def records(self) -> list[bytes]:
        """The signed records we hold, our own first (what peer exchange serves)."""
        return self.membership.records()

    def peer(self, peer_id: str, now: float) -> dict[str, Any] | None:
        return self.membership.peer_json(peer_id, self.reputation_of(peer_id, now))

    def peer_addrs(self, peer_id: str) -> tuple[str, ...]:
        """Full multiaddrs from ``peer_id``'s record (empty when we hold none)."""
        return self.membership.peer_addrs(peer_id)

    def peers_json(self, now: float) -> list[dict[str, Any]]:
        out = []
        for pid in self.membership.peer_ids():
            doc = self.peer(pid, now)
            if doc is not None:
                out.append(doc)
        return out

    def reputation_of(self, peer_id: str, now: float) -> float:
        return self.book.score(peer_id, now)

    def explain_reputation(self, peer_id: str, now: float) -> dict[str, Any]:
        """What we hold on ``peer_id`` (the prior when nothing), as ``reputation PEER`` shows."""
        doc = self.book.explain(peer_id, now)
        doc["wrong_result_proofs"] = self.proofs.about(peer_id)
        doc["prefix"] = {
            "observed": self.prefixes.observed(peer_id),
            "diversity_key": self.prefixes.of(peer_id),
            "rule": "at most one replica of a job per prefix"
            if self.config.prefix_diversity
            else "off",
        }
        doc["newcomer"] = self._newcomer_doc(peer_id, now)
        return doc

    def _newcomer_doc(self, peer_id: str, now: float) -> dict[str, Any]:
        """Established (ranked by score when it bids here) or a newcomer (by lottery, §8.9)."""
        e = self.book.evidence.get(peer_id)
        checks = self.config.newcomer_checks
        return {
            "established": newcomers.is_established(e, now, checks),
            "checks_needed": checks,
            "progress": newcomers.progress(e, now),
            "share": self.config.newcomer_share,
            "rule": "on" if checks > 0 else "off",
        }

    def reputation(self, peer: str | None, now: float) -> Any:
        """``p2pmesh reputation [PEER]``: one peer's explanation (``peer`` may be a unique
        suffix), or every peer we hold evidence or a record for, best first."""
        known = {*self.book.evidence, *self.membership.peer_ids()}
        if peer:
            matches = [p for p in known if p.endswith(peer.lstrip("…")) or p == peer]
            if len(matches) != 1:
                raise ValueError(f"no single peer matches {peer!r}")
            return self.explain_reputation(matches[0], now)
        known |= set(self.proofs.accused)
        return sorted(
            (self.explain_reputation(p, now) for p in known), key=lambda d: -d["reputation"]
        )

    def validate_gossip(self, topic: str, data: bytes, now: float) -> topics.Validation:
        """The topic validator of ``topic`` (``core/topics.py``): ACCEPT, IGNORE or REJECT."""
        t = topics.BY_NAME.get(topic)
        return topics.REJECT if t is None else t.check(self, data, now)

    # -- ledger ------------------------------------------------------------------------------------
    def balance(self, peer: str | None = None) -> dict[str, Any]:
        return self.ledger.balance_json(peer or self.peer_id)

    def balances(self) -> dict[str, dict[str, Any]]:
        return {p: self.ledger.balance_json(p) for p in self.ledger.live.books.accounts}

    def balances_sum(self) -> int:
        return self.ledger.live.books.total()

    def chain(self, author: str) -> tuple[Block, ...]:
        """``author``'s chain as we hold it (blocks are immutable)."""
        return tuple(self.ledger.ledger.chains.get(author, ()))

    def chain_authors(self) -> list[str]:
        return list(self.ledger.ledger.chains)

    def fraud_proofs(self) -> dict[str, FraudProof]:
        """Author → the proof that excluded it (proofs are immutable)."""
        return dict(self.ledger.ledger.frauds)

    def excluded(self, peer: str) -> bool:
        """Refused as a bidder: a ledger fraud proof, or wrong-result proofs weighing enough."""
        return self.ledger.ledger.excluded(peer) or self.proofs.excluded(peer)

    def wrong_result_proofs(self) -> list[bytes]:
        """Every wrong-result proof we hold (what ``Persist("proofs")`` wrote)."""
        return [p.raw for a in self.proofs.accused.values() for p in a.proofs]

    def pending_payments(self) -> int:
        """Payments we proposed whose agreement has not come back yet."""
        return len(self.ledger.pending)

    def ledger_json(self, peer: str | None = None, *, last: int = 200) -> dict[str, Any]:
        """``p2pmesh ledger --json`` without ``verify``: the last ``last`` blocks of each chain
        (of authors ending in ``peer`` when given), every balance, the excluded authors."""
        chains: dict[str, list[dict[str, Any]]] = {}
        for author, chain in self.ledger.ledger.chains.items():
            if peer and not author.endswith(peer):
                continue
            chains[author] = [_block_json(b) for b in chain[-last:]]
        return {
            "self": self.peer_id,
            "chains": chains,
            "balances": self.balances(),
            "excluded": sorted(self.ledger.ledger.frauds),
        }

    def ledger_snapshot(self) -> LedgerSnapshot:
        """A copy of every chain, fraud proof and balance, taken now, that ``verify_ledger``
        can check anywhere (a worker thread) while this node goes on adding blocks."""
        led = self.ledger.ledger
        return LedgerSnapshot(
            chains={a: tuple(c) for a, c in led.chains.items()},
            frauds=tuple(led.frauds.values()),
            balances={p: a.balance for p, a in self.ledger.live.books.accounts.items()},
        )

    def serve_ledger(self, request: Any) -> list[bytes]:
        """Answer a ledger stream request (PROTOCOL.md §9.3): ``{"heads": true}`` or
        ``{"author", "first", "last"}`` with integers 1 <= first <= last; else nothing."""
        if not isinstance(request, dict):
            return []
        if request.get("heads") is True:
            return self.ledger.on_heads_wanted()
        author, first, last = request.get("author"), request.get("first"), request.get("last")
        if (
            isinstance(author, str)
            and isinstance(first, int)
            and isinstance(last, int)
            and not isinstance(first, bool)
            and not isinstance(last, bool)
            and 1 <= first <= last
        ):
            return self.ledger.blocks_for(author, first, min(last, first + MAX_SYNC_BLOCKS - 1))
        return []

    # -- this node -------------------------------------------------------------------------
    def node_json(self, now: float) -> dict[str, Any]:
        own = self.own
        return {
            "peer_id": self.peer_id,
            "public_key": self.signer.public_key.hex(),
            "addrs": full_addrs(self.peer_id, self.caps.addrs),
            "capabilities": own.to_json() if own else {},
            "started_at": self.started_at,
            "peers_connected": self.peers.connected_count(),
            "peers_known": len(self.peers),
            "work": self.caps.work,
            "record_seq": own.seq if own else 0,
            "private": self.config.swarm_key_fingerprint is not None,
            "swarm_key_fingerprint": self.config.swarm_key_fingerprint,
            "stats": self.membership.stats_json(),
            "declines": dict(sorted(self.provider.declines.items(), key=lambda kv: -kv[1])),
        }


def _block_json(b: Block) -> dict[str, Any]:
    return {
        "seq": b.seq,
        "kind": b.kind,
        "hash": b.hash,
        "prev": b.prev,
        "job_id": b.tx.job_id,
        "payer": b.tx.payer,
        "payee": b.tx.payee,
        "amount": b.tx.amount,
        "ts": b.ts,
    }


@dataclass(frozen=True, slots=True)
class LedgerSnapshot:
    """Immutable copies (blocks and proofs are frozen): safe to hand to another thread."""

    chains: dict[str, tuple[Block, ...]]
    frauds: tuple[FraudProof, ...]
    balances: dict[str, int]


def verify_ledger(snap: LedgerSnapshot) -> dict[str, Any]:
    """``p2pmesh ledger --verify``: re-check every block and proof of ``snap`` from its bytes, and
    that the balances an auditor derives sum to zero and equal the node's own. Pure; touches no
    live machine, so it may run on a worker thread."""
    led = Ledger("verifier")
    for proof in snap.frauds:
        led.frauds[proof.author] = proof
    for author, chain in snap.chains.items():
        led.chains[author] = list(chain)
        for b in chain:
            led.by_hash[b.hash] = b
    report = led.verify_all()
    books = compute(led)
    report["balances_sum"] = books.total()
    report["balances_match"] = all(
        books.get(p).balance == snap.balances.get(p, 0) for p in books.accounts
    )
    if report["balances_sum"] != 0 or not report["balances_match"]:
        report["ok"] = False
        report["problems"].append("balances do not sum to zero or do not match")
    return report


__all__ = [
    "TOPIC_CAPABILITIES",
    "LedgerSnapshot",
    "Node",
    "NodeConfig",
    "open_fraud",
    "peer_id_of_addr",
    "verify_ledger",
]
