"""Who may hold the replicas of one job (PROTOCOL.md §8.6): network-prefix diversity.

Replicas that agree only count as independent if their owners are independent. One owner's
machines usually share a network prefix, so a requester takes at most one replica of a job per
prefix. The prefix is the one the requester *observes* on the connection (/24 for IPv4, /48 for
IPv6), never one a peer declares: a record's addresses cost nothing to forge, a TCP handshake's
source address does. Loopback, unknown or unparsable addresses give each peer a prefix of its
own, so a mesh on one machine (the demo, the tests) works as before; so do private, carrier-NAT
and unique-local addresses, so a lab's LAN keeps its replicas.
"""

from __future__ import annotations

import ipaddress

IPV4_PREFIX = 24
IPV6_PREFIX = 48
_LAN = tuple(
    ipaddress.ip_network(n)
    for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7")
)  # RFC 1918, carrier-grade NAT (RFC 6598), IPv6 unique-local
MAX_HOST_LEN = 64  # longest textual IPv6 address is 45 characters; anything longer is junk


def prefix_of(host: str) -> str | None:
    """The network prefix of an observed remote host, or None when it names no shared network
    (loopback, link-local, unparsable): such a peer is a prefix of its own."""
    if not isinstance(host, str) or not host or len(host) > MAX_HOST_LEN:
        return None
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    # Private and shared ranges (RFC 1918, CGNAT, ULA) are a LAN's: a lab's machines share one
    # /24 there, and diversity would leave its jobs with one replica each. Owners on the open
    # mesh reach each other from public addresses, which is where the rule bites.
    if ip.is_loopback or ip.is_unspecified or ip.is_link_local:
        return None
    if any(ip in net for net in _LAN if net.version == ip.version):
        return None
    if isinstance(ip, ipaddress.IPv4Address):
        net = ipaddress.ip_network(f"{ip}/{IPV4_PREFIX}", strict=False)
        return f"ip4:{net}"
    net6 = ipaddress.ip_network(f"{ip}/{IPV6_PREFIX}", strict=False)
    return f"ip6:{net6}"


class Prefixes:
    """The last observed prefix of each peer, as this node saw its connections."""

    def __init__(self, max_peers: int = 100_000) -> None:
        self._of: dict[str, str] = {}
        self._max = max_peers

    def observe(self, peer_id: str, host: str) -> None:
        p = prefix_of(host)
        if p is None:
            self._of.pop(peer_id, None)
            return
        if peer_id not in self._of and len(self._of) >= self._max:
            # Bounded memory: forget the oldest observation (dicts keep insertion order).
            self._of.pop(next(iter(self._of)))
        self._of[peer_id] = p

    def of(self, peer_id: str) -> str:
        """The prefix replicas are spread over; a peer never observed is its own prefix."""
        return self._of.get(peer_id) or f"peer:{peer_id}"

    def observed(self, peer_id: str) -> str | None:
        return self._of.get(peer_id)

    def __len__(self) -> int:
        return len(self._of)
