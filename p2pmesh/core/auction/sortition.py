"""Bidder sortition (PROTOCOL.md §7.12): only a verifiable few of the fitting peers bid.

Without it every peer that fits an offer bids, so a requester opens one bid stream per fitting
peer per job: 9 on 10 daemons, 9,999 at 10,000 peers. With it an offer may carry ``select``, a
threshold on a 32-bit *ticket* that anyone can compute from the job ID and a peer ID alone:

    ticket(job_id, peer_id) = first 4 bytes, big-endian, of
                              sha256("p2pmesh/select/1" 0x00 job_id 0x00 peer_id)

A peer may bid only when its ticket is below ``select``; the requester refuses other bids and
anyone holding the offer can check the winners of an award. The requester sizes ``select`` so
that about ``k + SPARE`` of the fitting peers it knows are in; a round that draws too few
bidders is published again in the same round with the threshold doubled, so every draw holds
the last one's, the bids already made stay valid, and a job widens until everyone may bid.
A peer cannot choose its ticket for a job (job IDs are the requester's random draw, and the
ticket does not depend on anything the peer signs), so a swarm of identities is selected in
proportion to its size, never for every job.

Pure functions, no state.
"""

from __future__ import annotations

import hashlib
import math

ALL = 1 << 32  # a threshold at or above this selects everyone: the field is left out
DOMAIN = b"p2pmesh/select/1\x00"
SPARE = 2  # bidders wanted beyond the job's replicas: room for hidden replicas, lotteries, losses
# Sortition starts only when it would at least halve the bidders: with fewer fitting peers the
# saving is small and the chance that too few of them are drawn is not.
MIN_CUT = 2


def ticket(job_id: str, peer_id: str) -> int:
    h = hashlib.sha256(DOMAIN + job_id.encode() + b"\x00" + peer_id.encode()).digest()
    return int.from_bytes(h[:4], "big")


def selected(job_id: str, peer_id: str, select: int | None) -> bool:
    """May ``peer_id`` bid on ``job_id`` under ``select`` (None: everyone may)?"""
    return select is None or ticket(job_id, peer_id) < select


def threshold(fitting: int, replicas: int, widened: int) -> int | None:
    """The ``select`` of an offer: about ``replicas + SPARE`` of ``fitting`` known peers, twice
    as many for each time the job's draw was ``widened``; None (everyone) when that is not a
    real cut."""
    want = replicas + SPARE
    if fitting <= MIN_CUT * want:
        return None
    grown = want * (2 ** min(widened, 32))
    if grown * MIN_CUT >= fitting:
        return None
    return min(ALL, math.ceil(ALL * grown / fitting))
