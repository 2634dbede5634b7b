"""Wrong-result proofs: evidence of a wrong answer that any peer can check (PROTOCOL.md §8.8).

A requester whose verdict on an ``exact`` job outvoted a successful result with another output
digest holds three kinds of signed bytes: its own verdict, the dissenter's ``result`` and the
agreeing workers' ``result``s. Together they are a *wrong-result proof*, gossiped on
``TOPIC_PROOFS`` like ledger fraud proofs, so that a caught cheater is refused by every peer
that believes the proof, not only by the one it cheated.

What a receiver can check without running anything: every signature; that all results are of
the verdict's job (id and digest); that the proven worker is among the verdict's dissenters and
returned exit 0 with an output digest other than the accepted one; that at least
``MIN_AGREEING`` results, each by a distinct worker named among the verdict's agreeing ones, are
exit-0 results with the accepted digest, and that they lead the dissenters by the majority
rule's margin. So nobody can be framed with a result it did not sign, and the accused's own
signature says which output it claimed.

What a receiver cannot check without running the job again is which of the two outputs is the
right one. On a deterministic job, the proof is true as soon as *one* of the agreeing workers
(or the requester, who chose them) is honest. So a receiver weighs a proof by its own trust in
those signers (``proof_weight``): the chance that at least one of them is honest, each taken
as the trust above the prior that our reputation book gives it. A swarm of fresh identities
agreeing with each other weighs nothing; proofs signed by peers whose work we have verified
weigh nearly one. A worker whose proofs weigh ``exclude_at`` or more in all (over distinct
requesters) is excluded here: its bids are refused.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from p2pmesh.core import schema
from p2pmesh.core.auction.messages import parse_result, parse_verdict, raw_digest
from p2pmesh.core.crypto import Signer
from p2pmesh.core.envelope import open_envelope, seal
from p2pmesh.core.memo import by_bytes
from p2pmesh.errors import DecodeError, ValidationError

TOPIC_PROOFS = "p2pmesh/proofs/1"
PROOF_TYPE = "wrong-result"
MAX_PROOF_BYTES = 32 * 1024
MIN_AGREEING = 2
MARGIN = 2  # as majority.Rule.margin: the lead an agreeing side needs over the dissent
MAX_AGREEING = 16  # a verdict names at most 16 agreeing workers
DEFAULT_EXCLUDE_AT = 0.5
MAX_PROOFS_KEPT = 20_000  # bounded memory: the proofs we hold about others


@dataclass(frozen=True, slots=True)
class WrongResultProof:
    worker: str  # the proven worker
    requester: str  # signer of the verdict and of the proof
    job_id: str
    job_digest: str
    wrong_digest: str
    accepted_digest: str
    agreeing: tuple[str, ...]  # the workers whose signed results are in the proof
    at: int  # the verdict's date
    raw: bytes

    @property
    def key(self) -> str:
        """One proof per (job, proven worker): the same fact, however often it is gossiped."""
        return f"{self.job_id}/{self.worker}"

    def to_json(self) -> dict[str, Any]:
        return {
            "worker": self.worker,
            "requester": self.requester,
            "job_id": self.job_id,
            "wrong_digest": self.wrong_digest,
            "accepted_digest": self.accepted_digest,
            "agreeing": list(self.agreeing),
            "at": self.at,
            "hash": raw_digest(self.raw),
        }


def build_proof(
    signer: Signer, *, verdict: bytes, wrong: bytes, agreeing: list[bytes]
) -> WrongResultProof:
    """Seal the proof; raises ``ValidationError`` when the parts do not make one."""
    body = {"verdict": verdict, "wrong": wrong, "agreeing": sorted(agreeing)[:MAX_AGREEING]}
    return parse_proof(seal(signer, PROOF_TYPE, body))


@by_bytes
def parse_proof(raw: bytes) -> WrongResultProof:
    o = open_envelope(raw, PROOF_TYPE, max_bytes=MAX_PROOF_BYTES)
    b = o.body
    schema.exact_keys(b, {"verdict", "wrong", "agreeing"})
    verdict_raw, wrong_raw, agreeing_raw = b["verdict"], b["wrong"], b["agreeing"]
    if not isinstance(verdict_raw, bytes) or not isinstance(wrong_raw, bytes):
        raise ValidationError("verdict and wrong must be signed message bytes")
    if not isinstance(agreeing_raw, list) or not MIN_AGREEING <= len(agreeing_raw) <= MAX_AGREEING:
        raise ValidationError(f"agreeing: a list of {MIN_AGREEING}..{MAX_AGREEING} results")
    if any(not isinstance(r, bytes) for r in agreeing_raw) or agreeing_raw != sorted(agreeing_raw):
        raise ValidationError("agreeing: result bytes, in ascending byte order")
    v = parse_verdict(verdict_raw)
    if v.requester != o.signer:
        raise ValidationError("a proof is signed by the requester that signed its verdict")
    if v.outcome != "accepted":
        raise ValidationError("the verdict must have accepted a result")
    wrong = parse_result(wrong_raw)
    if wrong.worker not in v.dissenting:
        raise ValidationError("the proven worker is not among the verdict's dissenters")
    _same_job(wrong, v)
    if wrong.status != "exited" or wrong.exit_code != 0:
        raise ValidationError("only a successful result can be proven wrong")
    if wrong.output_digest == v.accepted_digest:
        raise ValidationError("the proven result has the accepted output")
    agreeing: list[str] = []
    for r_raw in agreeing_raw:
        r = parse_result(r_raw)
        _same_job(r, v)
        if r.worker not in v.agreeing or r.worker in agreeing:
            raise ValidationError("agreeing: results of distinct workers the verdict names")
        if r.status != "exited" or r.exit_code != 0 or r.output_digest != v.accepted_digest:
            raise ValidationError("agreeing: every result must have the accepted output")
        agreeing.append(r.worker)
    if len(agreeing) < len(v.dissenting) + MARGIN:
        raise ValidationError("agreeing: the results must lead the dissent by the margin")
    return WrongResultProof(
        worker=wrong.worker,
        requester=v.requester,
        job_id=v.job_id,
        job_digest=v.job_digest,
        wrong_digest=wrong.output_digest,
        accepted_digest=v.accepted_digest,
        agreeing=tuple(sorted(agreeing)),
        at=v.at,
        raw=raw,
    )


def _same_job(r: Any, v: Any) -> None:
    if r.job_id != v.job_id or r.job_digest != v.job_digest:
        raise ValidationError("a result of another job")


def proof_weight(proof: WrongResultProof, trust: Callable[[str], float], self_id: str) -> float:
    """How much we believe ``proof``: the chance that at least one of its signers who vouch
    for the accepted output (requester and agreeing workers) is honest, from our trust in each
    (0..1). Our own proofs weigh 1: we decided them; so does a proof whose agreeing results
    include ours: we computed the accepted output ourselves."""
    if proof.requester == self_id or self_id in proof.agreeing:
        return 1.0
    doubt = 1.0
    for signer in (proof.requester, *proof.agreeing):
        if signer == proof.worker:
            continue
        doubt *= 1.0 - min(1.0, max(0.0, trust(signer)))
    return 1.0 - doubt


@dataclass(slots=True)
class Accused:
    weights: dict[str, float] = field(default_factory=dict)  # requester -> weight of its proof
    proofs: list[WrongResultProof] = field(default_factory=list)

    @property
    def weight(self) -> float:
        return sum(self.weights.values())


class ProofBook:
    """The wrong-result proofs this node holds, and whom they exclude. Sync and pure."""

    def __init__(self, self_id: str, *, exclude_at: float = DEFAULT_EXCLUDE_AT) -> None:
        self.self_id = self_id
        self.exclude_at = exclude_at
        self.accused: dict[str, Accused] = {}
        self.keys: set[str] = set()
        self._excluded: set[str] = set()

    def holds(self, proof: WrongResultProof) -> bool:
        return proof.key in self.keys

    def add(self, proof: WrongResultProof, weight: float) -> bool:
        """Record ``proof`` at ``weight``; True when it newly excludes its worker."""
        if proof.key in self.keys or proof.worker == self.self_id:
            return False
        if len(self.keys) >= MAX_PROOFS_KEPT and proof.worker not in self.accused:
            return False  # full: keep what excludes already; a new accusation waits
        self.keys.add(proof.key)
        a = self.accused.setdefault(proof.worker, Accused())
        # One voice per requester: many proofs from one author about one worker add nothing.
        a.weights[proof.requester] = max(a.weights.get(proof.requester, 0.0), weight)
        a.proofs.append(proof)
        del a.proofs[:-8]
        if proof.worker not in self._excluded and a.weight >= self.exclude_at:
            self._excluded.add(proof.worker)
            return True
        return False

    def excluded(self, peer: str) -> bool:
        return peer in self._excluded

    def about(self, peer: str) -> dict[str, Any]:
        a = self.accused.get(peer)
        return {
            "excluded": peer in self._excluded,
            "weight": round(a.weight, 4) if a else 0.0,
            "exclude_at": self.exclude_at,
            "proofs": [
                {**p.to_json(), "weight": round(a.weights.get(p.requester, 0.0), 4)}
                for p in (a.proofs if a else [])
            ],
        }

    def excluded_peers(self) -> list[str]:
        return sorted(self._excluded)


def try_parse(raw: bytes) -> WrongResultProof | None:
    try:
        return parse_proof(raw)
    except (DecodeError, ValidationError):
        return None
