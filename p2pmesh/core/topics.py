"""The gossip topics: topic → message kind → validator, one table for the daemon and the simulator.

A validator runs before a message is delivered to the node or forwarded to anyone, changes
nothing, and answers one of three (PROTOCOL.md §4.5):

* ``ACCEPT``: deliver and forward;
* ``IGNORE``: well-formed and honestly signed, but of no use now: a stale or replayed record
  (older or equal ``seq``), one that expired or is not yet valid at our clock, an offer past its
  deadline, a fraud proof against an author we already excluded, a wrong-result proof
  dated in the future. Dropped, not forwarded, and not held against whoever forwarded it: an honest
  peer relays such copies all the time;
* ``REJECT``: invalid whatever the time or the sender: undecodable, oversize, off-schema, a bad
  signature. Dropped and not forwarded; the forwarder misbehaved.

The test that decides between IGNORE and REJECT is always the same: parse without the clock
and without our state (REJECT when that fails), then apply the time and state rules (IGNORE
when those fail). Parsing is memoised (``core/memo.py``), so the node's own handling of an
accepted message does not pay for the parse again.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from p2pmesh.core import capability
from p2pmesh.core.auction.messages import TOPIC_OFFERS, TOPIC_VERDICTS, parse_offer, parse_verdict
from p2pmesh.core.auction.proofs import TOPIC_PROOFS, parse_proof
from p2pmesh.core.events import MessageReceived, RecordReceived
from p2pmesh.core.ledger.block import parse_block
from p2pmesh.core.ledger.chain import open_fraud
from p2pmesh.core.ledger.payments import TOPIC_FRAUD, TOPIC_HEADS
from p2pmesh.core.membership import TOPIC_CAPABILITIES
from p2pmesh.errors import DecodeError, ValidationError

if TYPE_CHECKING:
    from p2pmesh.core.node import Node


class Validation(enum.Enum):
    ACCEPT = "accept"
    IGNORE = "ignore"
    REJECT = "reject"


ACCEPT, IGNORE, REJECT = Validation.ACCEPT, Validation.IGNORE, Validation.REJECT
_BAD = (DecodeError, ValidationError)


def check_record(node: Node, data: bytes, now: float) -> Validation:
    try:
        capability.parse_record(data)
    except _BAD:
        return REJECT
    try:
        node.peers.check(data, now)  # clock rules and the per-peer seq rule (§4.1, 3–6)
    except _BAD:
        return IGNORE
    return ACCEPT


def check_offer(node: Node, data: bytes, now: float) -> Validation:
    try:
        offer = parse_offer(data)
    except _BAD:
        return REJECT
    if offer.created_at > now + capability.MAX_CLOCK_SKEW_S or offer.deadline_at <= now:
        return IGNORE
    return ACCEPT


def check_verdict(node: Node, data: bytes, now: float) -> Validation:
    try:
        v = parse_verdict(data)
    except _BAD:
        return REJECT
    return IGNORE if v.at > now + capability.MAX_CLOCK_SKEW_S else ACCEPT


def check_head(node: Node, data: bytes, now: float) -> Validation:
    # A block we already hold is still ACCEPTed: the 30 s re-announcement of each head is how
    # a peer two hops away that missed it catches up, so it must be forwarded.
    try:
        parse_block(data)
    except _BAD:
        return REJECT
    return ACCEPT


def check_fraud(node: Node, data: bytes, now: float) -> Validation:
    try:
        open_fraud(data)
    except _BAD:
        return REJECT
    # A proof about an author we excluded already is still ACCEPTed: GossipSub validates our
    # own publications too, and we exclude before we publish, so refusing it here dropped every
    # proof at its publisher and none ever left. Copies are deduplicated by message ID, and
    # handling one twice changes nothing (the ledger keeps one proof per author).
    return ACCEPT


def check_proof(node: Node, data: bytes, now: float) -> Validation:
    try:
        proof = parse_proof(data)
    except _BAD:
        return REJECT
    # A proof we hold is still ACCEPTed: GossipSub validates our own publications too, and the
    # requester holds its proof before publishing it. Copies are deduplicated by message ID,
    # and handling one twice changes nothing (ProofBook keys by job and worker).
    if proof.at > now + capability.MAX_CLOCK_SKEW_S:
        return IGNORE
    return ACCEPT


@dataclass(frozen=True, slots=True)
class Topic:
    name: str
    kind: str  # MessageReceived.kind, or "record" (a RecordReceived from gossip)
    check: Callable[[Node, bytes, float], Validation]


TOPICS: tuple[Topic, ...] = (
    Topic(TOPIC_CAPABILITIES, "record", check_record),
    Topic(TOPIC_OFFERS, "offer", check_offer),
    Topic(TOPIC_VERDICTS, "verdict", check_verdict),
    Topic(TOPIC_HEADS, "head", check_head),
    Topic(TOPIC_FRAUD, "fraud", check_fraud),
    Topic(TOPIC_PROOFS, "wrong-result", check_proof),
)
BY_NAME: dict[str, Topic] = {t.name: t for t in TOPICS}


def event_of(topic: str, data: bytes, sender: str) -> RecordReceived | MessageReceived:
    """The event an accepted message on ``topic`` from publisher ``sender`` becomes."""
    kind = BY_NAME[topic].kind
    if kind == "record":
        return RecordReceived(data, "gossip", sender)
    return MessageReceived(kind, data, sender)


__all__ = [
    "ACCEPT",
    "BY_NAME",
    "IGNORE",
    "REJECT",
    "TOPICS",
    "Topic",
    "Validation",
    "event_of",
]
