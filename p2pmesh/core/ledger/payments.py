"""Paying for accepted results and replicating every chain (PROTOCOL.md §9.2, §9.5).

Payer (the requester), once a verdict accepts a worker's result::

    append proposal(tx) ─▶ store it ─▶ send {"proposal", "verdict"} to the payee ─▶ resend every
    RESEND_S until the payee's agreement comes back ("paid"); a restart resends what is pending.

Payee (the worker), on a proposal: checks it against the award it holds (same requester, job,
price) and against the verdict (signed by that requester, accepting, naming it among the
agreeing workers, hashing to ``tx.verdict``); appends one agreement linking to the proposal and
answers with it. A proposal it has already agreed to gets the same agreement again, and a second
proposal for the same job is refused: each replica is paid at most once.

Replication: every new block of ours is gossiped on ``TOPIC_HEADS``; a head further along than
our copy of that chain triggers a range request to the peer that forwarded it; on connect we ask
a peer for all the heads it holds, so separated groups converge when they meet. Two valid
blocks at one height become a fraud proof, gossiped on ``TOPIC_FRAUD`` and checked by each peer
on its own; its author is excluded (no bids to or from it, lowest reputation).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from p2pmesh.core import codec
from p2pmesh.core.auction.messages import parse_verdict, raw_digest
from p2pmesh.core.crypto import Signer
from p2pmesh.core.effects import (
    Effect,
    FetchHeads,
    Log,
    Persist,
    Publish,
    SendMessage,
    StoreBlock,
    SyncChain,
)
from p2pmesh.core.ledger.accounts import Account, LiveBooks, can_spend, credit_limit
from p2pmesh.core.ledger.block import Block, Tx, build_block, parse_block
from p2pmesh.core.ledger.chain import FraudProof, Ledger, open_fraud, seal_fraud
from p2pmesh.core.reputation import ReputationBook
from p2pmesh.core.timers import INF, Alarm, earliest
from p2pmesh.errors import DecodeError, ValidationError

TOPIC_HEADS = "p2pmesh/ledger/1"
TOPIC_FRAUD = "p2pmesh/fraud/1"
RESEND_S = 10
ANNOUNCE_S = 30
DEFAULT_CREDIT_BASE = 100
MAX_SYNC_BLOCKS = 256


@dataclass(slots=True)
class _Pending:
    job_id: str
    payee: str
    proposal: bytes
    verdict: bytes
    last_sent: int


class LedgerMachine:
    def __init__(
        self,
        signer: Signer,
        book: ReputationBook,
        *,
        credit_base: int = DEFAULT_CREDIT_BASE,
        fault_fork: bool = False,
    ) -> None:
        self.signer = signer
        self.self_id = signer.peer_id
        self.book = book
        self.credit_base = credit_base
        self.ledger = Ledger(self.self_id)
        self.live = LiveBooks()
        self.pending: dict[str, _Pending] = {}  # proposal hash -> payment awaiting agreement
        self.fault_fork = fault_fork
        self._last_announce = 0
        self._syncing: dict[str, int] = {}  # author -> time of the last range request
        # After `up --recover`: until then we sign nothing (no payment, no agreement, no bid)
        # so that our own chain, fetched back from peers, cannot be forked by a new block.
        self.recovering_until = 0

    # -- restore -----------------------------------------------------------------------------
    def restore(
        self, blocks: list[bytes], frauds: list[bytes], pending: list[dict[str, Any]]
    ) -> None:
        for raw in frauds:
            try:
                self.ledger.add_fraud(open_fraud(raw))
            except (DecodeError, ValidationError):
                continue
        for raw in blocks:
            self._ingest(raw)
        for p in pending:
            prop = self.ledger.by_hash.get(p["proposal_hash"])
            if prop is not None and not self._agreed(prop):
                self.pending[prop.hash] = _Pending(
                    p["job_id"], p["payee"], prop.raw, bytes.fromhex(p["verdict"]), 0
                )

    def start_recovery(self, now: int, window_s: int) -> list[Effect]:
        self.recovering_until = now + window_s
        return [
            Log(
                "warning",
                "recovering: signing nothing while our chain comes back from peers",
                {
                    "seconds": window_s,
                    "not_recovered": "job records, peer records (relearned), reputation "
                    "evidence gossiped by others",
                },
            )
        ]

    def _end_recovery(self, now: int) -> list[Effect]:
        if self.ledger._held.get(self.self_id):
            # A later block of ours is known but not the ones before it: still fetching.
            self.recovering_until = now + RESEND_S
            return [Log("info", "recovering: our chain still has a gap", {})]
        self.recovering_until = 0
        me = self.account(self.self_id)
        return [
            Persist("meta", "recovering", None),
            Log(
                "info",
                "recovery finished",
                {
                    "own_blocks": self.ledger.head_seq(self.self_id),
                    "chains": len(self.ledger.chains),
                    "balance": me.balance,
                },
            ),
        ]

    # -- accounts ----------------------------------------------------------------------------
    def account(self, peer: str) -> Account:
        return self.live.books.get(peer)

    def may_trade_with(self, peer: str, amount: int) -> bool:
        """Bid for ``peer``'s job only if it is not excluded and can pay ``amount`` more."""
        if self.ledger.excluded(peer) or self.recovering_until:
            return False
        return can_spend(self.account(peer), amount, self.credit_base)

    def balance_json(self, peer: str) -> dict[str, Any]:
        a = self.account(peer)
        return {
            "peer_id": peer,
            "balance": a.balance,
            "credit_limit": credit_limit(a, self.credit_base),
            "earned": a.earned,
            "spent": a.spent,
            "pending": a.pending_out,
            "payments_in": a.payments_in,
            "payments_out": a.payments_out,
            "excluded": self.ledger.excluded(peer),
        }

    # -- paying --------------------------------------------------------------------------------
    def pay(
        self,
        *,
        job_id: str,
        payee: str,
        amount: int,
        accepted_digest: str,
        verdict: bytes,
        now: int,
    ) -> list[Effect]:
        for blk in self.ledger.chains.get(self.self_id, []):
            if blk.kind == "proposal" and blk.tx.job_id == job_id and blk.tx.payee == payee:
                return []  # already proposed: at most one payment per replica
        if self.recovering_until:
            return [Log("error", "cannot pay while recovering our chain", {"job": job_id})]
        if self.ledger.excluded(self.self_id):
            return [
                Log(
                    "error",
                    "cannot pay: our own chain is excluded by a fork proof",
                    {"job": job_id},
                )
            ]
        tx = Tx(job_id, self.self_id, payee, amount, accepted_digest, raw_digest(verdict))
        blk = self.ledger.append_own(
            self.signer,
            kind="proposal",
            tx=tx,
            link_author=payee,
            link_seq=0,
            link_hash="",
            ts=now,
        )
        self.live.add(self.ledger, blk)
        self.pending[blk.hash] = _Pending(job_id, payee, blk.raw, verdict, now)
        out: list[Effect] = [
            StoreBlock(blk.author, blk.seq, blk.raw),
            self._persist_pending(blk.hash),
            SendMessage(payee, "pay", self._pay_message(blk.raw, verdict), job_id),
            Publish(TOPIC_HEADS, blk.raw),
            Log("info", "payment proposed", {"job": job_id, "payee": payee, "amount": amount}),
        ]
        if self.fault_fork:
            out += self._fork_on_purpose(blk, now)
        return out

    def _pay_message(self, proposal: bytes, verdict: bytes) -> bytes:
        return codec.encode({"proposal": proposal, "verdict": verdict})

    def _persist_pending(self, proposal_hash: str) -> Persist:
        p = self.pending.get(proposal_hash)
        value = (
            None
            if p is None
            else {
                "proposal_hash": proposal_hash,
                "job_id": p.job_id,
                "payee": p.payee,
                "verdict": p.verdict.hex(),
            }
        )
        return Persist("payments", proposal_hash, value)

    def _fork_on_purpose(self, blk: Block, now: int) -> list[Effect]:
        """FAULT fork-ledger: sign a second, different block at the same height and gossip it."""
        twin = build_block(
            self.signer,
            seq=blk.seq,
            prev=blk.prev,
            kind=blk.kind,
            tx=Tx(
                blk.tx.job_id,
                blk.tx.payer,
                blk.tx.payee,
                blk.tx.amount + 1,
                blk.tx.accepted_digest,
                blk.tx.verdict,
            ),
            link_author=blk.link_author,
            link_seq=blk.link_seq,
            link_hash=blk.link_hash,
            ts=now + 1,
        )
        return [
            Publish(TOPIC_HEADS, twin.raw),
            Log("warning", "FAULT fork-ledger: published a second block", {"seq": blk.seq}),
        ]

    def on_paid(self, data: bytes, from_peer: str, now: int) -> list[Effect]:
        out = self._ingest_effects(data, from_peer, now)
        try:
            agreement = parse_block(data)
        except (DecodeError, ValidationError):
            return out
        p = self.pending.pop(agreement.link_hash, None)
        proposal = self.ledger.by_hash.get(agreement.link_hash)
        if (
            p is not None
            and agreement.author == p.payee
            and agreement.kind == "agreement"
            and proposal is not None
            and proposal.tx == agreement.tx
        ):
            out.append(self._persist_pending(agreement.link_hash))
            out.append(Log("info", "payment agreed", {"job": p.job_id, "payee": p.payee}))
        elif p is not None:
            self.pending[agreement.link_hash] = p
        return out

    # -- being paid ------------------------------------------------------------------------------
    def on_pay(
        self, data: bytes, from_peer: str, now: int, award_price: Callable[[str, str], int | None]
    ) -> list[Effect]:
        """``award_price(job_id, requester)``: the price our award for that job names, if any."""
        try:
            msg = codec.decode(data)
            if not isinstance(msg, dict) or set(msg) != {"proposal", "verdict"}:
                raise ValidationError("pay message must be {proposal, verdict}")
            prop = parse_block(msg["proposal"])
            verdict = parse_verdict(msg["verdict"])
        except (DecodeError, ValidationError, TypeError) as exc:
            return [Log("warning", "payment refused", {"from": from_peer, "reason": str(exc)})]
        if self.recovering_until:
            # Not refused: the payer proposes again every RESEND_S, after our chain is back.
            return [Log("info", "payment deferred: recovering our chain", {"from": from_peer})]
        why = None
        price = award_price(prop.tx.job_id, prop.author)
        if prop.kind != "proposal" or prop.tx.payee != self.self_id:
            why = "not a proposal to us"
        elif prop.author != from_peer:
            why = "proposal relayed by another peer"
        elif price is None or price != prop.tx.amount:
            why = "no award of ours matches this job, requester and price"
        elif (
            verdict.requester != prop.author
            or verdict.job_id != prop.tx.job_id
            or verdict.outcome != "accepted"
            or self.self_id not in verdict.agreeing
            or raw_digest(verdict.raw) != prop.tx.verdict
            or verdict.accepted_digest != prop.tx.accepted_digest
        ):
            why = "the verdict does not accept our result for this payment"
        if why:
            return [Log("warning", "payment refused", {"job": prop.tx.job_id, "reason": why})]
        # Ingest first: the proposal itself may reveal a fork of the payer.
        out = self._ingest_effects(prop.raw, from_peer, now)
        if self.ledger.excluded(prop.author) or self.ledger.excluded(self.self_id):
            who = "payer" if self.ledger.excluded(prop.author) else "our own chain"
            refused = {"job": prop.tx.job_id, "reason": f"{who} excluded by a fraud proof"}
            return [*out, Log("warning", "payment refused", refused)]
        existing = self._our_agreement_for(prop)
        if existing is None:
            for blk in self.ledger.chains.get(self.self_id, []):
                if (
                    blk.kind == "agreement"
                    and blk.tx.job_id == prop.tx.job_id
                    and blk.tx.payer == prop.author
                ):
                    return [
                        *out,
                        Log(
                            "warning",
                            "payment refused",
                            {"job": prop.tx.job_id, "reason": "already paid for job"},
                        ),
                    ]
            existing = self.ledger.append_own(
                self.signer,
                kind="agreement",
                tx=prop.tx,
                link_author=prop.author,
                link_seq=prop.seq,
                link_hash=prop.hash,
                ts=now,
            )
            self.live.add(self.ledger, existing)
            out += [
                StoreBlock(existing.author, existing.seq, existing.raw),
                Publish(TOPIC_HEADS, existing.raw),
                Log("info", "payment received", {"job": prop.tx.job_id, "amount": prop.tx.amount}),
            ]
            if self.fault_fork:
                out += self._fork_on_purpose(existing, now)
        out.append(SendMessage(prop.author, "paid", existing.raw, prop.tx.job_id))
        return out

    def _our_agreement_for(self, prop: Block) -> Block | None:
        for blk in self.ledger.chains.get(self.self_id, []):
            if blk.kind == "agreement" and blk.link_hash == prop.hash:
                return blk
        return None

    def _agreed(self, prop: Block) -> bool:
        chain = self.ledger.chains.get(prop.tx.payee, [])
        return any(b.kind == "agreement" and b.link_hash == prop.hash for b in chain)

    # -- replication -------------------------------------------------------------------------------
    def on_head(self, data: bytes, from_peer: str, now: int) -> list[Effect]:
        return self._ingest_effects(data, from_peer, now)

    def on_blocks(self, raws: list[bytes], from_peer: str, now: int) -> list[Effect]:
        out: list[Effect] = []
        for raw in sorted(raws, key=_seq_of):
            out += self._ingest_effects(raw, from_peer, now)
        return out

    def on_heads_wanted(self) -> list[bytes]:
        return [c[-1].raw for c in self.ledger.chains.values() if c][:MAX_SYNC_BLOCKS]

    def blocks_for(self, author: str, first: int, last: int) -> list[bytes]:
        last = min(last, first + MAX_SYNC_BLOCKS - 1)
        return [b.raw for b in self.ledger.range(author, first, last)]

    def on_fraud(self, data: bytes, now: int) -> list[Effect]:
        try:
            proof = open_fraud(data)
        except (DecodeError, ValidationError) as exc:
            return [Log("debug", "fraud proof refused", {"reason": str(exc)})]
        return self._excluded(proof, now, relay=False)

    def on_connected(self, peer: str) -> list[Effect]:
        return [FetchHeads(peer)]

    def _ingest(self, raw: bytes) -> Any:
        result = self.ledger.ingest(raw)
        for blk in result.added:
            self.live.add(self.ledger, blk)
        return result

    def _ingest_effects(self, raw: bytes, from_peer: str, now: int) -> list[Effect]:
        result = self._ingest(raw)
        out: list[Effect] = []
        for blk in result.added:
            # Our own blocks arrive from others only when we lost them (``up --recover``).
            out.append(StoreBlock(blk.author, blk.seq, blk.raw))
        if result.status == "held" and from_peer:
            author = parse_block(raw).author
            if now - self._syncing.get(author, -RESEND_S) >= 2:
                self._syncing[author] = now
                out.append(
                    SyncChain(
                        from_peer, author, result.want_from, result.want_from + MAX_SYNC_BLOCKS - 1
                    )
                )
        elif result.status == "fork" and result.fraud is not None:
            out += self._excluded(result.fraud, now, relay=True)
        elif result.status == "invalid":
            out.append(
                Log("warning", "block refused", {"from": from_peer, "reason": result.reason})
            )
        return out

    def _excluded(self, proof: FraudProof, now: int, *, relay: bool) -> list[Effect]:
        first = self.ledger.add_fraud(proof) or relay
        if not first:
            return []
        self.book.record(proof.author, "fraud", now, job_id=f"fork{proof.seq}")
        self.live.rebuild(self.ledger)
        return [
            Persist("frauds", proof.author, seal_fraud(self.signer, proof)),
            Publish(TOPIC_FRAUD, seal_fraud(self.signer, proof)),
            Log(
                "warning",
                "fork detected: author excluded",
                {"author": proof.author, "seq": proof.seq},
            ),
        ]

    # -- time -------------------------------------------------------------------------------
    def _alarms(self) -> list[Alarm]:
        out = [Alarm((p.last_sent + RESEND_S, "resend-pay", p, INF)) for p in self.pending.values()]
        out.append(Alarm((self._last_announce + ANNOUNCE_S, "announce-head", None, INF)))
        if self.recovering_until:
            out.append(Alarm((self.recovering_until, "recovered", None, INF)))
        return out

    def next_wakeup(self) -> float:
        """The earliest ``now`` at which ``tick`` would act, read from the same alarms."""
        return earliest(self._alarms())

    def tick(self, now: int) -> list[Effect]:
        out: list[Effect] = []
        for alarm in self._alarms():
            if not alarm.due(now):
                continue
            if alarm.what == "recovered":
                out += self._end_recovery(now)
            elif alarm.what == "resend-pay":
                p = alarm.subject
                p.last_sent = now
                out.append(
                    SendMessage(p.payee, "pay", self._pay_message(p.proposal, p.verdict), p.job_id)
                )
            else:
                self._last_announce = now
                head = self.ledger.head(self.self_id)
                if head is not None:
                    out.append(Publish(TOPIC_HEADS, head.raw))
        return out


def _seq_of(raw: bytes) -> int:
    try:
        return parse_block(raw).seq
    except (DecodeError, ValidationError):
        return 0
