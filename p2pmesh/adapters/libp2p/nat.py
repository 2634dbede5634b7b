"""NAT traversal with py-libp2p's own pieces: AutoNAT (dial-back), circuit relay v2 (a relay
service, reservations, dialling ``/p2p-circuit`` addresses) and DCUtR (hole punching).

Thin: what to conclude and what to advertise is decided in ``p2pmesh.core.reachability``;
this module only asks, serves and dials. Every call that may hang has a deadline, and every
failure is an answer (``None``, ``False`` or a ``TransportError``), never a crash of the node.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import multiaddr
import trio
from libp2p.host.autonat.autonat import AutoNATService
from libp2p.host.autonat.pb.autonat_pb2 import Message as AutoNATMessage
from libp2p.peer.id import ID
from libp2p.relay.circuit_v2.config import RelayConfig, RelayRole
from libp2p.relay.circuit_v2.dcutr import DCUtRProtocol
from libp2p.relay.circuit_v2.protocol import PROTOCOL_ID as HOP_PROTOCOL
from libp2p.relay.circuit_v2.protocol import CircuitV2Protocol
from libp2p.relay.circuit_v2.resources import RelayLimits as LibRelayLimits
from libp2p.relay.circuit_v2.transport import CircuitV2Transport
from libp2p.tools.anyio_service import background_trio_service

from p2pmesh.core.reachability import RelayLimits, is_circuit
from p2pmesh.errors import TransportError

log = logging.getLogger("p2pmesh.net")

DIALBACK_TIMEOUT_S = 20.0  # the server dials us back within this (its own dial has 10 s)
RESERVE_TIMEOUT_S = 15.0
CIRCUIT_DIAL_TIMEOUT_S = 15.0


def lib_limits(limits: RelayLimits) -> LibRelayLimits:
    return LibRelayLimits(
        duration=limits.circuit_duration_s,
        data=limits.circuit_bytes,
        max_circuit_conns=limits.circuits,
        max_reservations=limits.reservations,
        reservation_ttl=limits.reservation_ttl_s,
    )


def is_relayed_conn(conn: Any) -> bool:
    try:
        addrs = conn.get_transport_addresses()
    except Exception:
        return False
    return bool(addrs) and all("/p2p-circuit" in str(a) for a in addrs)


class NatService:
    """AutoNAT (serving and asking), the relay protocol, its transport, and DCUtR on one host."""

    def __init__(self, host: Any, limits: RelayLimits) -> None:
        self.host = host
        self.limits = limits
        # Serving dial-backs is cheap and helps others learn where they stand.
        self.autonat = AutoNATService(host, serve=True, confirmations=1)
        # STOP only: with CLIENT, py-libp2p's dialler first takes a *reservation* on the relay
        # before each CONNECT (the spec asks none of a dialler), so diallers would use up the
        # slots meant for the NATed peers they dial. ``reserve`` below works without it.
        config = RelayConfig(roles=RelayRole.STOP, limits=lib_limits(limits))
        # allow_hop False: the HOP handler is registered only while we relay (set_relaying).
        self.relay = CircuitV2Protocol(host, limits=lib_limits(limits), allow_hop=False)
        self.transport = CircuitV2Transport(host, self.relay, config)
        self.dcutr = DCUtRProtocol(host)
        self.relaying = False
        self._nursery: trio.Nursery | None = None
        self.stats: dict[str, int] = {
            "dialbacks_asked": 0,
            "dialbacks_answered": 0,
            "reservations_made": 0,
            "reservations_failed": 0,
            "circuit_dials_ok": 0,
            "circuit_dials_failed": 0,
        }

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[NatService]:
        async with (
            background_trio_service(self.relay),
            background_trio_service(self.dcutr),
            trio.open_nursery() as nursery,
        ):
            self._nursery = nursery
            try:
                yield self
            finally:
                self._nursery = None
                nursery.cancel_scope.cancel()

    # -- relay service -----------------------------------------------------------------------
    def set_relaying(self, on: bool) -> None:
        if on == self.relaying:
            return
        if on:
            self.host.set_stream_handler(HOP_PROTOCOL, self.relay._handle_hop_stream)
        else:
            with contextlib.suppress(Exception):
                self.host.remove_stream_handler(HOP_PROTOCOL)
        self.relaying = on

    def relay_json(self) -> dict[str, Any]:
        rm = self.relay.resource_manager
        held = getattr(rm, "_reservations", {}) or {}
        return {
            "on": self.relaying,
            "reservations_held": len(held),
            "circuits_active": len(getattr(self.relay, "_active_relays", {}) or {}),
        }

    # -- reachability (AutoNAT client) --------------------------------------------------------
    async def ask_dialback(self, server: str, addrs: list[str]) -> bool | None:
        """Ask ``server`` to dial us back on ``addrs``: True (it reached us), False (it tried and
        failed, or none of our addresses is at the IP it sees us from), None (no verdict)."""
        from p2pmesh.adapters.libp2p import patches

        if not patches.dialback_patched:
            return None  # the unpatched server always answers "reachable" (patches.py item 8)
        pid = ID.from_base58(server)
        conns = self.host.get_network().get_connections(pid)
        if not conns or all(is_relayed_conn(c) for c in conns):
            return None  # a server refuses requests over a relay, and its view would be the relay's
        raw = []
        for a in addrs:
            with contextlib.suppress(Exception):
                raw.append(multiaddr.Multiaddr(a).to_bytes())
        self.stats["dialbacks_asked"] += 1
        try:
            status, _addr = await self.autonat.query_server(pid, raw, timeout=DIALBACK_TIMEOUT_S)
        except Exception as exc:  # no AutoNAT there, a reset, a timeout: no verdict
            log.debug("dial-back request to %s failed: %r", server, exc)
            return None
        self.stats["dialbacks_answered"] += 1
        if status == AutoNATMessage.OK:
            return True
        if status in (AutoNATMessage.E_DIAL_ERROR, AutoNATMessage.E_DIAL_REFUSED):
            return False
        return None

    # -- reservations ---------------------------------------------------------------------------
    async def reserve(self, relay: str) -> bool:
        """Reserve a slot on ``relay`` (the library refreshes it before it expires)."""
        if self._nursery is None:
            return False
        pid = ID.from_base58(relay)
        ok = False
        with trio.move_on_after(RESERVE_TIMEOUT_S):
            try:
                stream = await self.host.new_stream(pid, [HOP_PROTOCOL])
                try:
                    ok = await self.transport.reserve(stream, pid, self._nursery)
                finally:
                    with contextlib.suppress(Exception):
                        await stream.close()
            except Exception as exc:
                log.debug("reservation on %s failed: %r", relay, exc)
        self.stats["reservations_made" if ok else "reservations_failed"] += 1
        return ok

    def reserved(self) -> list[str]:
        return sorted(str(p) for p in self.transport._reservations)

    def forget(self, relay: str) -> None:
        with contextlib.suppress(Exception):
            pid = ID.from_base58(relay)
            self.transport._reservations.pop(pid, None)
            self.transport._reservation_proofs.pop(pid, None)

    # -- dialling a circuit ---------------------------------------------------------------------
    async def dial_circuit(self, addr: str) -> None:
        """Connect through ``addr`` (``…/p2p/RELAY/p2p-circuit/p2p/PEER``); raises
        ``TransportError``. DCUtR then tries to replace it with a direct connection."""
        if not is_circuit(addr):
            raise TransportError(f"not a circuit address: {addr!r}")
        try:
            maddr = multiaddr.Multiaddr(addr)
        except Exception as exc:
            raise TransportError(f"bad address {addr!r}: {exc}") from None
        try:
            with trio.fail_after(CIRCUIT_DIAL_TIMEOUT_S):
                await self.transport.dial(maddr)
        except trio.TooSlowError:
            self.stats["circuit_dials_failed"] += 1
            raise TransportError("relayed dial timed out") from None
        except Exception as exc:
            self.stats["circuit_dials_failed"] += 1
            raise TransportError(f"relayed dial failed: {type(exc).__name__}: {exc}"[:200]) from exc
        self.stats["circuit_dials_ok"] += 1

    def connection_kinds(self) -> dict[str, str]:
        """``direct`` or ``relayed`` for every connected peer (direct if any connection is)."""
        out: dict[str, str] = {}
        network = self.host.get_network()
        for pid, conns in list((getattr(network, "connections", {}) or {}).items()):
            if not isinstance(conns, list):
                conns = [conns]
            if not conns:
                continue
            relayed = all(is_relayed_conn(c) for c in conns)
            out[str(pid)] = "relayed" if relayed else "direct"
        return out
