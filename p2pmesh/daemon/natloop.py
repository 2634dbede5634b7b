"""The daemon's NAT loop: ask peers to dial us back, switch the relay service, keep relay
reservations, and re-announce our addresses when they change (PROTOCOL.md §6.1).

Every decision is the core's (``p2pmesh.core.reachability``); this task only schedules the
asking and hands the answers over. Reachability is this machine's network position, not mesh
protocol state, so it lives beside ``Node`` rather than in it (the simulator models no NAT).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import trio

from p2pmesh.core import reachability as rc

FIRST_CHECK_S = 2.0  # after start: the bootstrap peers are dialled by then
BUSY_EVERY_S = 5.0  # while unknown, or private without every reservation wanted
CALM_EVERY_S = 60.0  # otherwise: reservations are re-checked, …
RECHECK_EVERY_S = 300.0  # … and reachability re-asked this often
ASK_PER_ROUND = 3
REFUSED_FOR_S = 120.0  # a relay that refused a reservation is not asked again for this long


class NatLoop:
    def __init__(
        self,
        net: Any,
        *,
        mode: str,
        bootstrap_ids: list[str],
        peer_addrs: Callable[[str], tuple[str, ...]],
        on_addrs: Callable[[list[str]], Any],
        log: Callable[..., None],
    ) -> None:
        self.net = net
        self.mode = mode
        self.bootstrap_ids = bootstrap_ids
        self.peer_addrs = peer_addrs
        self.on_addrs = on_addrs
        self.log = log
        self.reach = rc.Reachability()
        self.circuits: dict[str, str] = {}  # relay peer ID -> our circuit address through it
        self._refused: dict[str, float] = {}
        self._asked_at = -1e9
        self._rotation = 0

    def advertised(self) -> list[str]:
        return rc.advertised_addrs(
            self.net.listen_addrs(), self.reach.state, list(self.circuits.values())
        )

    def to_json(self) -> dict[str, Any]:
        nat = self.net.nat
        return {
            "reachability": self.reach.to_json(),
            "relay_mode": self.mode,
            "relay_service": nat.relay_json(),
            "relays": dict(self.circuits),
            "connections": nat.connection_kinds(),
            "stats": dict(nat.stats),
        }

    async def run(self) -> None:
        self.net.nat.set_relaying(rc.offers_relay(self.mode, self.reach.state))
        await trio.sleep(FIRST_CHECK_S)
        last: list[str] | None = None
        while True:
            now = time.monotonic()
            if self.reach.state == rc.UNKNOWN or now - self._asked_at >= RECHECK_EVERY_S:
                await self._ask()
            self.net.nat.set_relaying(rc.offers_relay(self.mode, self.reach.state))
            await self._keep_reservations()
            addrs = self.advertised()
            if addrs != last:
                last = addrs
                await self.on_addrs(addrs)
            busy = self.reach.state == rc.UNKNOWN or (
                rc.wants_reservation(self.reach.state) and len(self.circuits) < rc.WANT_RELAYS
            )
            await trio.sleep(BUSY_EVERY_S if busy else CALM_EVERY_S)

    async def _ask(self) -> None:
        kinds = self.net.nat.connection_kinds()
        direct = [p for p, k in kinds.items() if k == "direct"]
        if not direct:
            return
        boot = [p for p in self.bootstrap_ids if p in direct]
        rest = [p for p in direct if p not in boot]
        if rest:
            # Rotate so that, over rounds, every peer gets a say, not only the first few.
            self._rotation = (self._rotation + 1) % len(rest)
            rest = rest[self._rotation :] + rest[: self._rotation]
        ours = [a for a in self.net.listen_addrs() if not rc.is_circuit(a)]
        answered = False
        for server in (boot + rest)[:ASK_PER_ROUND]:
            verdict = await self.net.nat.ask_dialback(server, ours)
            answered = answered or verdict is not None
            before = self.reach.state
            if self.reach.record(server, verdict, time.time()):
                self.log(
                    "info",
                    "reachability changed",
                    state=self.reach.state,
                    was=before,
                    server=server,
                )
        if answered:
            self._asked_at = time.monotonic()

    async def _keep_reservations(self) -> None:
        if not rc.wants_reservation(self.reach.state):
            if self.circuits:
                self.circuits.clear()
            return
        held = set(self.net.nat.reserved())
        connected = set(self.net.connected_peers())
        for relay in list(self.circuits):
            if relay not in held or relay not in connected:
                self.log("info", "relay reservation lost", relay=relay)
                del self.circuits[relay]
                self.net.nat.forget(relay)
        now = time.monotonic()
        self._refused = {p: t for p, t in self._refused.items() if now - t < REFUSED_FOR_S}
        kinds = self.net.nat.connection_kinds()
        direct = [p for p, k in kinds.items() if k == "direct"]
        for relay in rc.relay_candidates(direct, self.bootstrap_ids, self.circuits, self._refused):
            if len(self.circuits) >= rc.WANT_RELAYS:
                break
            base = self._relay_transport_addr(relay)
            if base is None:
                continue
            if await self.net.nat.reserve(relay):
                self.circuits[relay] = rc.circuit_addr(base, relay)
                self.log("info", "relay reservation made", relay=relay, addr=self.circuits[relay])
            else:
                self._refused[relay] = now

    def _relay_transport_addr(self, relay: str) -> str | None:
        """Where others reach the relay: an address from its record at the IP we reach it on,
        else the first direct one in its record, else what our connection to it shows."""
        direct = [a for a in self.peer_addrs(relay) if not rc.is_circuit(a)]
        seen = self.net.remote_ip(relay)
        for a in direct:
            if seen and f"/{seen}/" in a:
                return a
        if direct:
            return direct[0]
        return self.net.remote_addr(relay)
