"""Balances derived from the chains, never stored as truth (PROTOCOL.md §9.4).

A payment counts once both halves exist: an agreement by the payee whose link names a proposal
by the payer with the identical transaction. Each (payer, job, payee) is paid at most once: a
second pair for the same triple is ignored (and reported by the audit). Mutual credit: everyone
starts at 0 and a payment moves ``amount`` from payer to payee, so balances always sum to 0.
A node may go negative only down to its credit limit: ``base`` plus what it has earned.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from p2pmesh.core.ledger.block import Block
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
    books = Books()
    paid: set[tuple[str, str, str]] = set()
    agreed: set[str] = set()
    for chain in ledger.chains.values():
        for blk in chain:
            if blk.kind != "agreement":
                continue
            proposal = ledger.by_hash.get(blk.link_hash)
            if (
                proposal is None
                or proposal.kind != "proposal"
                or proposal.tx != blk.tx
                or proposal.author != blk.link_author
                or proposal.seq != blk.link_seq
            ):
                continue
            if ledger.excluded(blk.tx.payer) or ledger.excluded(blk.tx.payee):
                continue
            agreed.add(proposal.hash)
            key = (blk.tx.payer, blk.tx.job_id, blk.tx.payee)
            if key in paid:
                books.duplicates += 1
                continue
            paid.add(key)
            payer = books.accounts.setdefault(blk.tx.payer, Account())
            payee = books.accounts.setdefault(blk.tx.payee, Account())
            payer.spent += blk.tx.amount
            payer.payments_out += 1
            payee.earned += blk.tx.amount
            payee.payments_in += 1
    for chain in ledger.chains.values():
        for blk in chain:
            if blk.kind == "proposal" and blk.hash not in agreed:
                books.accounts.setdefault(blk.author, Account()).pending_out += blk.tx.amount
    return books


def credit_limit(account: Account, base: int) -> int:
    return base + account.earned


def can_spend(account: Account, amount: int, base: int) -> bool:
    """Would paying ``amount`` more (beyond what is pending) stay within the credit limit?"""
    return account.balance - account.pending_out - amount >= -credit_limit(account, base)


class LiveBooks:
    """``compute`` kept up to date block by block, for credit checks on every offer."""

    def __init__(self) -> None:
        self.books = Books()
        self._paid: set[tuple[str, str, str]] = set()
        self._agreed: set[str] = set()  # proposal hashes that have their agreement
        self._waiting: dict[str, Block] = {}  # proposal hash -> agreement seen before it

    def add(self, ledger: Ledger, blk: Block) -> None:
        if blk.kind == "proposal":
            early = self._waiting.pop(blk.hash, None)
            if early is not None:
                self._pair(ledger, blk, early)
            elif blk.hash not in self._agreed:
                self.books.accounts.setdefault(blk.author, Account()).pending_out += blk.tx.amount
            return
        proposal = ledger.by_hash.get(blk.link_hash)
        if proposal is None:
            self._waiting[blk.link_hash] = blk
            return
        if proposal.hash not in self._agreed:
            acct = self.books.accounts.setdefault(proposal.author, Account())
            acct.pending_out -= proposal.tx.amount
        self._pair(ledger, proposal, blk)

    def _pair(self, ledger: Ledger, proposal: Block, agreement: Block) -> None:
        if (
            proposal.kind != "proposal"
            or proposal.tx != agreement.tx
            or proposal.author != agreement.link_author
            or proposal.seq != agreement.link_seq
            or proposal.hash in self._agreed
        ):
            return
        self._agreed.add(proposal.hash)
        if ledger.excluded(proposal.tx.payer) or ledger.excluded(proposal.tx.payee):
            return
        key = (proposal.tx.payer, proposal.tx.job_id, proposal.tx.payee)
        if key in self._paid:
            self.books.duplicates += 1
            return
        self._paid.add(key)
        payer = self.books.accounts.setdefault(proposal.tx.payer, Account())
        payee = self.books.accounts.setdefault(proposal.tx.payee, Account())
        payer.spent += proposal.tx.amount
        payer.payments_out += 1
        payee.earned += proposal.tx.amount
        payee.payments_in += 1

    def rebuild(self, ledger: Ledger) -> None:
        """After an exclusion: replay every chain (an exclusion voids the author's payments)."""
        self.books = Books()
        self._paid.clear()
        self._agreed.clear()
        self._waiting.clear()
        for chain in ledger.chains.values():
            for blk in chain:
                self.add(ledger, blk)
