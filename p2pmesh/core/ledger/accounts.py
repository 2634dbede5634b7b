"""Balances derived from the chains, never stored as truth (PROTOCOL.md §9.4).

A payment counts once both halves exist: an agreement by the payee whose link names a proposal
by the payer with the identical transaction. Each (payer, job, payee) is paid at most once: a
second pair for the same triple is ignored (and reported by the audit). Mutual credit: everyone
starts at 0 and a payment moves ``amount`` from payer to payee, so balances always sum to 0.
A node may go negative only down to its credit limit: ``base`` plus what it has earned.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from p2pmesh.core.ledger.block import Block, Tx
from p2pmesh.core.ledger.chain import Ledger


@dataclass(slots=True)
class Account:
    earned: int = 0
    spent: int = 0
    pending_out: int = 0  # proposals of ours without an agreement yet
    payments_in: int = 0
    payments_out: int = 0

    @property
    def balance(self) -> int:
        return self.earned - self.spent


@dataclass(slots=True)
class Books:
    accounts: dict[str, Account] = field(default_factory=dict)
    duplicates: int = 0

    def get(self, peer: str) -> Account:
        return self.accounts.get(peer) or Account()

    def total(self) -> int:
        return sum(a.balance for a in self.accounts.values())


def compute(ledger: Ledger) -> Books:
    """Balances from scratch. Where one (payer, job, payee) was paid twice, the pair whose
    proposal comes first in the payer's chain counts: chain order is the same on every peer."""
    books = Books()
    agreed: set[str] = set()
    chosen: dict[tuple[str, str, str], Block] = {}
    for chain in ledger.chains.values():
        for blk in chain:
            if blk.kind != "agreement":
                continue
            proposal = ledger.by_hash.get(blk.link_hash)
            if proposal is None or not _matches(proposal, blk):
                continue
            if proposal.hash in agreed:
                books.duplicates += 1  # a second agreement for one proposal
                continue
            agreed.add(proposal.hash)
            if ledger.excluded(blk.tx.payer) or ledger.excluded(blk.tx.payee):
                continue
            key = (blk.tx.payer, blk.tx.job_id, blk.tx.payee)
            held = chosen.get(key)
            if held is not None:
                books.duplicates += 1
                if held.seq <= proposal.seq:
                    continue
            chosen[key] = proposal
    for proposal in chosen.values():
        _apply(books, proposal.tx, +1)
    for chain in ledger.chains.values():
        for blk in chain:
            if blk.kind == "proposal" and blk.hash not in agreed:
                books.accounts.setdefault(blk.author, Account()).pending_out += blk.tx.amount
    return books


def _matches(proposal: Block, agreement: Block) -> bool:
    return (
        proposal.kind == "proposal"
        and proposal.tx == agreement.tx
        and proposal.author == agreement.link_author
        and proposal.seq == agreement.link_seq
    )


def _apply(books: Books, tx: Tx, sign: int) -> None:
    payer = books.accounts.setdefault(tx.payer, Account())
    payee = books.accounts.setdefault(tx.payee, Account())
    payer.spent += sign * tx.amount
    payer.payments_out += sign
    payee.earned += sign * tx.amount
    payee.payments_in += sign


def credit_limit(account: Account, base: int) -> int:
    return base + account.earned


def can_spend(account: Account, amount: int, base: int) -> bool:
    """Would paying ``amount`` more (beyond what is pending) stay within the credit limit?"""
    return account.balance - account.pending_out - amount >= -credit_limit(account, base)


class LiveBooks:
    """``compute`` kept up to date block by block, for credit checks on every offer."""

    def __init__(self) -> None:
        self.books = Books()
        self._paid: dict[tuple[str, str, str], Block] = {}  # key -> the proposal that counts
        self._agreed: set[str] = set()  # proposal hashes that have a matching agreement
        self._waiting: dict[str, list[Block]] = {}  # proposal hash -> agreements seen first

    def add(self, ledger: Ledger, blk: Block) -> None:
        if blk.kind == "proposal":
            self.books.accounts.setdefault(blk.author, Account()).pending_out += blk.tx.amount
            for early in self._waiting.pop(blk.hash, []):
                self._pair(ledger, blk, early)
            return
        proposal = ledger.by_hash.get(blk.link_hash)
        if proposal is None:
            self._waiting.setdefault(blk.link_hash, []).append(blk)
            return
        self._pair(ledger, proposal, blk)

    def _pair(self, ledger: Ledger, proposal: Block, agreement: Block) -> None:
        # The same rules as ``compute``, kept incrementally: a mismatched agreement changes
        # nothing; of two pairs for one (payer, job, payee), the earlier proposal counts.
        if not _matches(proposal, agreement):
            return
        if proposal.hash in self._agreed:
            self.books.duplicates += 1
            return
        self._agreed.add(proposal.hash)
        self.books.accounts.setdefault(proposal.author, Account()).pending_out -= proposal.tx.amount
        if ledger.excluded(proposal.tx.payer) or ledger.excluded(proposal.tx.payee):
            return
        key = (proposal.tx.payer, proposal.tx.job_id, proposal.tx.payee)
        held = self._paid.get(key)
        if held is not None:
            self.books.duplicates += 1
            if held.seq <= proposal.seq:
                return
            _apply(self.books, held.tx, -1)
        self._paid[key] = proposal
        _apply(self.books, proposal.tx, +1)

    def rebuild(self, ledger: Ledger) -> None:
        """After an exclusion: replay every chain (an exclusion voids the author's payments)."""
        self.books = Books()
        self._paid.clear()
        self._agreed.clear()
        self._waiting.clear()
        for chain in ledger.chains.values():
            for blk in chain:
                self.add(ledger, blk)
