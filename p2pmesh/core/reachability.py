"""Reachability and relaying: what a node concludes from dial-backs, what it offers, what it
advertises (PROTOCOL.md §6.1). Pure: the daemon asks peers to dial it back (AutoNAT) and feeds
the verdicts here; this module decides.

- **State.** ``unknown`` until a verdict comes; then the majority of the latest verdict of each
  of the last ``MAX_SERVERS`` peers that answered (a tie keeps the state). A peer that could not
  be asked gives no verdict: only a peer that tried to dial us back may call us unreachable.
- **Relay service.** ``auto`` (the default): a node offers a limited circuit relay while it is
  reachable; ``off`` never; ``always`` (the bootstrap profile) whatever the state.
- **Reservations.** A node that is ``private`` reserves a slot on up to ``WANT_RELAYS`` relays
  and advertises ``<relay addr>/p2p/<relay>/p2p-circuit`` for each, before its own addresses.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from p2pmesh.errors import ValidationError

UNKNOWN = "unknown"
PUBLIC = "public"
PRIVATE = "private"

RELAY_MODES = ("auto", "off", "always")
MAX_SERVERS = 8  # verdicts kept: the latest of each of this many peers
WANT_RELAYS = 2  # reservations a private node keeps
CIRCUIT = "/p2p-circuit"


@dataclass(frozen=True, slots=True)
class RelayLimits:
    """What a relay grants (circuit relay v2 limits; PROTOCOL.md §6.1). Small on purpose: a
    relay carries control traffic and small blobs until hole punching gives a direct path."""

    reservations: int = 16  # peers holding a slot at once
    circuits: int = 32  # relayed connections at once
    circuit_duration_s: int = 30 * 60  # one relayed connection's lifetime
    circuit_bytes: int = 128 * 1024 * 1024  # bytes one relayed connection may carry
    reservation_ttl_s: int = 3600

    def __post_init__(self) -> None:
        for name in ("reservations", "circuits", "circuit_duration_s", "circuit_bytes"):
            if getattr(self, name) < 1:
                raise ValidationError(f"relay limit {name} must be at least 1")
        if not 60 <= self.reservation_ttl_s <= 24 * 3600:
            raise ValidationError("relay reservation_ttl_s must be in [60, 86400]")


class Reachability:
    """Dial-back verdicts in, one state out."""

    def __init__(self, max_servers: int = MAX_SERVERS) -> None:
        self._max = max_servers
        self._verdicts: OrderedDict[str, bool] = OrderedDict()
        self.state = UNKNOWN
        self.changed_at: float | None = None

    def record(self, server: str, reachable: bool | None, now: float) -> bool:
        """One peer's answer (None: it gave no verdict). True when the state changed."""
        if reachable is None:
            return False
        self._verdicts.pop(server, None)
        self._verdicts[server] = reachable
        while len(self._verdicts) > self._max:
            self._verdicts.popitem(last=False)
        yes = sum(self._verdicts.values())
        no = len(self._verdicts) - yes
        new = PUBLIC if yes > no else PRIVATE if no > yes else self.state
        if new == self.state:
            return False
        self.state = new
        self.changed_at = now
        return True

    def verdicts(self) -> dict[str, bool]:
        return dict(self._verdicts)

    def to_json(self) -> dict[str, object]:
        yes = sum(self._verdicts.values())
        return {
            "state": self.state,
            "since": self.changed_at,
            "reachable_votes": yes,
            "unreachable_votes": len(self._verdicts) - yes,
        }


def offers_relay(mode: str, state: str) -> bool:
    if mode not in RELAY_MODES:
        raise ValidationError(f"relay: must be one of {', '.join(RELAY_MODES)}")
    return mode == "always" or (mode == "auto" and state == PUBLIC)


def wants_reservation(state: str) -> bool:
    return state == PRIVATE


def is_circuit(addr: str) -> bool:
    return CIRCUIT + "/" in addr + "/"


def circuit_addr(relay_transport_addr: str, relay_id: str) -> str:
    """``/ip4/R/tcp/P/p2p/RELAY/p2p-circuit``: a record's form (the peer appends ``/p2p/SELF``)."""
    base = relay_transport_addr
    cut = base.find("/p2p/")
    if cut >= 0:
        base = base[:cut]
    if not base.startswith("/") or is_circuit(relay_transport_addr):
        raise ValidationError(f"not a relay transport address: {relay_transport_addr!r}")
    return f"{base}/p2p/{relay_id}{CIRCUIT}"


def relay_of(addr: str) -> str | None:
    """The relay's peer ID in a circuit address, None for a direct one."""
    if not is_circuit(addr):
        return None
    head = addr.split(CIRCUIT, 1)[0]
    if "/p2p/" not in head:
        return None
    return head.rsplit("/p2p/", 1)[1].split("/", 1)[0] or None


def advertised_addrs(
    listen: Sequence[str], state: str, circuits: Sequence[str], max_addrs: int = 16
) -> list[str]:
    """What goes into our capability record: circuit addresses first while we are private
    (our own addresses are then reachable only from our own network), direct ones otherwise."""
    own = [a for a in dict.fromkeys(listen) if not is_circuit(a)]
    relayed = list(dict.fromkeys(circuits)) if state == PRIVATE else []
    return (relayed + own)[:max_addrs]


def _local_only(addr: str) -> bool:
    """An address only the peer's own network can reach (private, loopback, link-local)."""
    parts = addr.split("/")
    if len(parts) < 3 or parts[1] not in ("ip4", "ip6"):
        return False
    try:
        ip = ipaddress.ip_address(parts[2])
    except ValueError:
        return False
    return ip.is_private or ip.is_loopback or ip.is_link_local


def dial_order(addrs: Iterable[str]) -> list[str]:
    """The order to try a peer's addresses in. Direct first, then relayed; but a peer that
    lists a relay is behind a NAT, and its private addresses answer only on its own network
    (elsewhere a SYN to them may hang until the dial times out): those go last."""
    given = list(dict.fromkeys(addrs))
    relayed = [a for a in given if is_circuit(a)]
    direct = [a for a in given if not is_circuit(a)]
    if not relayed:
        return direct
    return (
        [a for a in direct if not _local_only(a)] + relayed + [a for a in direct if _local_only(a)]
    )


def relay_candidates(
    connected: Iterable[str], bootstrap: Iterable[str], held: Iterable[str], refused: Iterable[str]
) -> list[str]:
    """Peers to ask for a reservation: bootstrap peers first (they always relay), then other
    connected peers; never one we hold a slot on already or that refused us recently."""
    skip = set(held) | set(refused)
    live = list(dict.fromkeys(connected))
    boot = [p for p in dict.fromkeys(bootstrap) if p in live]
    rest = [p for p in live if p not in boot]
    return [p for p in boot + rest if p not in skip]
