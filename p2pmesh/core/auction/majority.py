"""The majority rule of cross-validation (PROTOCOL.md §8.1): replicas in play in, a decision out.

One pure function, ``decide``. It knows nothing of messages, time, money or effects: the
requester turns its answer into awards, fetches, verdicts and payments.

Grouping. Successful results (``exited``, exit 0) are grouped by the job's validation rule:
``exact`` by output digest; ``numeric`` by the driver's value-by-value comparison of the fetched
outputs, which the caller passes in (``Rule.compared``/``Rule.groups``) and which must cover
exactly the current successful set, else the answer is to wait for it. Failed results are
grouped by ``(status, exit_code)``, so honest workers that all see a job fail agree on that;
an ``out_refused`` failure also by its error text, which names the refused entry and is the
same on every honest replica (PROTOCOL.md §7.1).
Groups are ordered by size, then success before failure, then the smallest worker ID.

Deciding. The first group decides when it has at least two members (one where a single replica
was asked for: ``Rule.lone_ok``) and is a strict majority of the replicas in play. Otherwise,
while some replica in play has not reported, wait; once all have, add a replica, up to
``Rule.max_replicas``; then the job is inconclusive.

Any dissent escalates (``Rule.margin``, PROTOCOL.md §8.1). When successful results fall into
more than one group (two outputs claimed right), the first group must also lead every other
success group by ``margin`` results (2 by default). A failed replica beside agreeing successes
is not a rival answer (a machine ran out of memory, say) and needs no margin. A ring that
holds two of three replicas would win a plain majority against the one honest dissenter (a
hidden replica, requester.py); with the margin, the dissent makes the requester add replicas,
from prefixes the job does not hold yet, until one side leads by two.
Honest replicas agree, so among fresh replicas the honest side grows fastest. And the requester
hears every replica in play before it decides (``Rule.unanimous``): a majority that reports
first must not outrun the hidden replica that would have dissented.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Vote:
    """One replica in play (awarded and not lost). ``status`` is ``""`` until it reports."""

    worker: str
    status: str = ""
    exit_code: int | None = None
    output_digest: str = ""
    error: str = ""  # compared for out_refused only: other failures' texts vary by host

    @property
    def reported(self) -> bool:
        return self.status != ""

    @property
    def succeeded(self) -> bool:
        return self.status == "exited" and self.exit_code == 0


@dataclass(frozen=True, slots=True)
class Rule:
    lone_ok: bool  # one agreeing result suffices: redundancy 1, or "auto" run alone
    max_replicas: int
    numeric: bool = False
    compared: tuple[str, ...] = ()  # numeric: the successful workers last compared (sorted)
    groups: tuple[tuple[str, ...], ...] | None = None  # numeric: their agreeing sets
    margin: int = 2  # when results disagree: the lead the first group needs over the second
    unanimous: bool = True  # decide only once every replica in play has reported


@dataclass(frozen=True, slots=True)
class Decide:
    """A group has a majority. ``digest`` is the output digest of ``agreeing[0]``."""

    agreeing: tuple[str, ...]
    dissenting: tuple[str, ...]  # reported replicas outside the group
    accepted: bool  # a success group; False: the agreed result is a failure
    digest: str


@dataclass(frozen=True, slots=True)
class AddReplica:
    replicas: int  # the new number of replicas in play to aim for


@dataclass(frozen=True, slots=True)
class Inconclusive:
    sizes: tuple[int, ...]  # group sizes, largest first


@dataclass(frozen=True, slots=True)
class Wait:
    reason: str


Decision = Decide | AddReplica | Inconclusive | Wait


def decide(votes: Sequence[Vote], rule: Rule) -> Decision:
    """What the replicas in play ``votes`` decide under ``rule``."""
    by_worker = {v.worker: v for v in votes}
    reported = [v for v in by_worker.values() if v.reported]
    if not reported:
        return Wait("no result yet")
    groups = _groups(reported, rule)
    if groups is None:
        return Wait("outputs not compared yet")
    best = groups[0]
    need = 1 if rule.lone_ok else 2
    ok = {v.worker for v in reported if v.succeeded}
    rivals = [len(g) for g in groups[1:] if g[0] in ok] if best[0] in ok else []
    leads = not rivals or len(best) - max(rivals) >= rule.margin
    heard_all = len(reported) == len(by_worker) or not rule.unanimous
    if len(best) >= need and 2 * len(best) > len(by_worker) and leads and heard_all:
        first = by_worker[best[0]]
        return Decide(
            agreeing=best,
            dissenting=tuple(sorted(v.worker for v in reported if v.worker not in best)),
            accepted=first.succeeded,
            digest=first.output_digest,
        )
    if len(reported) < len(by_worker):
        return Wait("more results may still make a majority")
    if len(by_worker) < rule.max_replicas:
        return AddReplica(len(by_worker) + 1)
    return Inconclusive(tuple(len(g) for g in groups))


def _groups(reported: list[Vote], rule: Rule) -> list[tuple[str, ...]] | None:
    """Agreeing sets, each sorted, in decision order; None while a comparison is pending."""
    ok = sorted(v.worker for v in reported if v.succeeded)
    success: list[list[str]] = []
    if rule.numeric and len(ok) > 1:
        if tuple(ok) != rule.compared or rule.groups is None:
            return None
        # Trust the comparison only about the workers it was asked about, each once.
        placed: set[str] = set()
        for g in rule.groups:
            members = [w for w in sorted(set(g)) if w in ok and w not in placed]
            placed.update(members)
            if members:
                success.append(members)
        success += [[w] for w in ok if w not in placed]
    else:
        by_digest: dict[str, list[str]] = {}
        for v in sorted(reported, key=lambda v: v.worker):
            if v.succeeded:
                by_digest.setdefault(v.output_digest, []).append(v.worker)
        success = list(by_digest.values())
    failed: dict[tuple[str, int | None, str], list[str]] = {}
    for v in sorted(reported, key=lambda v: v.worker):
        if not v.succeeded:
            why = v.error if v.status == "out_refused" else ""
            failed.setdefault((v.status, v.exit_code, why), []).append(v.worker)
    ok_set = set(ok)
    groups = [tuple(g) for g in success + list(failed.values())]
    # Largest first; among equals a success group first, then the smallest worker ID.
    return sorted(groups, key=lambda g: (-len(g), g[0] not in ok_set, g[0]))
