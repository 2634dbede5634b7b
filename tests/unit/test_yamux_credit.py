"""Yamux credit returned in batches (patches.py item 6), over real hosts on 127.0.0.1.

Two bare py-libp2p hosts (TCP, Noise, Yamux): a bulk transfer in small writes and a ping-pong of
small frames, the shapes of our gossip and job streams. With the patch the bytes all arrive, in
order, without a stall, and the receiver sends one WINDOW_UPDATE per half window consumed
instead of one per read.
"""

from __future__ import annotations

import hashlib

import multiaddr
import trio
from libp2p import new_host
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.custom_types import TProtocol
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.stream_muxer.yamux import yamux

from p2pmesh.adapters.libp2p import patches

PROTO = TProtocol("/p2pmesh-test/yamux-credit/1")
CHUNK = 1024
TOTAL = 3 << 20  # 3 MiB: twelve 256 KiB windows


def _host(seed: int) -> object:
    return new_host(key_pair=create_new_key_pair(bytes([seed]) * 32))


async def test_bulk_and_ping_pong_with_batched_credit(monkeypatch) -> None:
    patches.apply()
    assert yamux.YamuxStream._auto_tune_and_send_window_update is patches._credit_when_half_owed
    updates: list[int] = []
    original = yamux.YamuxStream.send_window_update

    async def counting(self, increment: int, skip_lock: bool = False) -> None:
        updates.append(increment)
        await original(self, increment, skip_lock)

    monkeypatch.setattr(yamux.YamuxStream, "send_window_update", counting)
    server, client = _host(41), _host(42)
    received = hashlib.sha256()
    got = 0
    done = trio.Event()

    async def handler(stream: object) -> None:
        nonlocal got
        while got < TOTAL:
            data = await stream.read(64 * 1024)  # type: ignore[attr-defined]
            if not data:
                break
            received.update(data)
            got += len(data)
        for _ in range(300):  # then answer small frames one by one
            msg = await stream.read(16)  # type: ignore[attr-defined]
            await stream.write(msg)  # type: ignore[attr-defined]
        done.set()

    server.set_stream_handler(PROTO, handler)  # type: ignore[attr-defined]
    listen = [multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]
    async with server.run(listen), client.run(listen):  # type: ignore[attr-defined]
        addr = f"{server.get_addrs()[0]}"  # type: ignore[attr-defined]
        if "/p2p/" not in addr:
            addr += f"/p2p/{server.get_id()}"  # type: ignore[attr-defined]
        info = info_from_p2p_addr(multiaddr.Multiaddr(addr))
        with trio.fail_after(60):
            await client.connect(info)  # type: ignore[attr-defined]
            stream = await client.new_stream(info.peer_id, [PROTO])  # type: ignore[attr-defined]
            sent = hashlib.sha256()
            for i in range(TOTAL // CHUNK):
                block = bytes([i % 251]) * CHUNK
                sent.update(block)
                await stream.write(block)
            for i in range(300):
                msg = f"{i:016d}".encode()
                await stream.write(msg)
                assert await stream.read(16) == msg
            await done.wait()
        await stream.close()
        await client.close()  # type: ignore[attr-defined]
        await server.close()  # type: ignore[attr-defined]
    assert got == TOTAL and received.digest() == sent.digest()
    # One update per half window (128 KiB) of the bulk part, give or take the window growth;
    # release-on-read would have sent one per read: 1 868 here without the patch, 12 with it.
    assert 0 < len(updates) <= 2 * TOTAL // (128 * 1024) + 10, len(updates)
