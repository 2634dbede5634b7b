"""The NAT adapter (adapters/libp2p/nat.py) against real py-libp2p hosts on loopback: AutoNAT's
dial-back on a fresh connection (patches.py item 8), the relay service switched on and off, its
reservation limit, and a connection through a relay, open and under a swarm key (item 7)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator

import multiaddr
import pytest
import trio
from libp2p import new_host
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.peer.peerinfo import info_from_p2p_addr

from p2pmesh.adapters.libp2p import patches
from p2pmesh.adapters.libp2p.nat import NatService
from p2pmesh.core.reachability import RelayLimits, circuit_addr

ANY = multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")


@contextlib.asynccontextmanager
async def hosts(n: int, psk: bytes | None = None, **limits: int) -> AsyncIterator[list[NatService]]:
    patches.apply()
    made = [
        new_host(key_pair=create_new_key_pair(os.urandom(32)), psk=psk.hex() if psk else None)
        for _ in range(n)
    ]
    services = [NatService(h, RelayLimits(**limits)) for h in made]
    async with contextlib.AsyncExitStack() as stack:
        for h, s in zip(made, services, strict=True):
            await stack.enter_async_context(h.run([ANY]))
            await stack.enter_async_context(s.running())
        yield services


def addr_of(s: NatService) -> str:
    return str(s.host.get_addrs()[0])


async def connect(a: NatService, b: NatService) -> None:
    with trio.fail_after(10):
        await a.host.connect(info_from_p2p_addr(multiaddr.Multiaddr(addr_of(b))))


def own(s: NatService) -> str:
    return addr_of(s).split("/p2p/")[0]


async def test_dialback_is_made_on_a_fresh_connection() -> None:
    assert patches.PATCHED_VERSION == "0.8.1"
    async with hosts(2) as (server, client):
        await connect(client, server)
        sid = str(server.host.get_id())
        # Our real address: the server reaches it on a new connection.
        assert await client.ask_dialback(sid, [own(client)]) is True
        # An address at our IP where nothing listens: unpatched, the existing connection
        # made this "reachable" too.
        port = int(own(client).rsplit("/", 1)[1])
        dead = f"/ip4/127.0.0.1/tcp/{port + 1 if port < 65535 else port - 1}"
        assert await client.ask_dialback(sid, [dead]) is False
        # An address at another IP than the one the server sees: refused, i.e. not reachable.
        assert await client.ask_dialback(sid, ["/ip4/10.9.9.9/tcp/4001"]) is False
        # Only the first DIALBACK_MAX_ADDRS addresses are dialled.
        many = [f"/ip4/127.0.0.1/tcp/{p}" for p in range(port + 1, port + 5)] + [own(client)]
        assert await client.ask_dialback(sid, many) is False
        assert await client.ask_dialback(sid, many[3:]) is True
        assert client.stats["dialbacks_asked"] == 5
        # The dial-back connection is closed again; the one we made stays.
        assert len(client.host.get_network().get_connections(server.host.get_id())) == 1


async def test_no_verdict_without_a_direct_connection() -> None:
    async with hosts(2) as (a, b):
        assert await a.ask_dialback(str(b.host.get_id()), [own(a)]) is None


async def test_relay_service_off_refuses_reservations_and_on_holds_its_limit() -> None:
    async with hosts(3, reservations=1) as (relay, c1, c2):
        rid = str(relay.host.get_id())
        for c in (c1, c2):
            await connect(c, relay)
        assert not await c1.reserve(rid)  # not relaying: the HOP protocol is not served
        relay.set_relaying(True)
        assert relay.relaying
        assert await c1.reserve(rid)
        assert c1.reserved() == [rid]
        assert not await c2.reserve(rid)  # one reservation at a time (the limit)
        assert relay.relay_json()["reservations_held"] == 1
        relay.set_relaying(False)
        assert not await c2.reserve(rid)


@pytest.mark.parametrize("private", [False, True], ids=["open", "swarm-key"])
async def test_a_circuit_connection_through_the_relay(private: bool) -> None:
    psk = os.urandom(32) if private else None
    async with hosts(3, psk=psk) as (relay, dest, src):
        relay.set_relaying(True)
        rid = str(relay.host.get_id())
        await connect(dest, relay)
        await connect(src, relay)
        assert await dest.reserve(rid)
        did = str(dest.host.get_id())
        circuit = f"{circuit_addr(addr_of(relay), rid)}/p2p/{did}"
        await src.dial_circuit(circuit)
        assert src.connection_kinds()[did] == "relayed"
        # The dialler took no reservation of its own: the relay's slots are for listeners.
        assert src.reserved() == [] and relay.relay_json()["reservations_held"] == 1
        assert src.stats["circuit_dials_ok"] == 1
        # Streams work over it: the dialled peer answers identify through the relay.
        with trio.fail_after(10):
            stream = await src.host.new_stream(dest.host.get_id(), ["/ipfs/id/1.0.0"])
            assert await stream.read(1)
            await stream.close()
