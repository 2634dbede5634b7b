"""The job stream answers every whole frame (PROTOCOL.md §7.5), over a real libp2p stream.

A p2pmesh node A serves ``/p2pmesh/job/1.0.0``; a bare py-libp2p host B writes frames by hand.
"""

from __future__ import annotations

from typing import Any

import multiaddr
import pytest
import trio
from libp2p import new_host
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.peer.peerinfo import info_from_p2p_addr

from p2pmesh.adapters.libp2p.net import JOB_PROTOCOL, JobWire, MeshNet
from p2pmesh.adapters.libp2p.streams import read_frame, write_frame
from p2pmesh.core import codec
from p2pmesh.core.events import MessageReceived
from p2pmesh.errors import TransportError


async def _exchange(payload: bytes, *, header: bytes | None = None) -> tuple[Any, list[Any]]:
    """Send one frame (or a bare header) to a node; its answer and the events it emitted."""
    send, recv = trio.open_memory_channel[Any](64)
    server = MeshNet(bytes([5]) * 32, send, local_records=list)
    async with server.running(["/ip4/127.0.0.1/tcp/0"], mdns=False):
        JobWire(server, may_fetch=lambda peer, digest: False, blob_path=lambda d: None)
        client = new_host(key_pair=create_new_key_pair(bytes([6]) * 32))
        async with client.run([multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]):
            addr = f"{server.listen_addrs()[0]}/p2p/{server.peer_id}"
            info = info_from_p2p_addr(multiaddr.Multiaddr(addr))
            with trio.fail_after(20):
                await client.connect(info)
                stream = await client.new_stream(info.peer_id, [JOB_PROTOCOL])
                if header is None:
                    await write_frame(stream, payload, timeout_s=5)
                else:
                    await stream.write(header)
                try:
                    answer: Any = codec.decode(
                        await read_frame(stream, max_bytes=1024, timeout_s=15)
                    )
                except TransportError as exc:
                    answer = exc
            await client.close()
        events = []
        while True:
            try:
                events.append(recv.receive_nowait())
            except trio.WouldBlock:
                break
    return answer, [e for e in events if isinstance(e, MessageReceived)]


@pytest.mark.parametrize(
    "payload",
    [
        b"\xc1",  # never valid msgpack
        b"\x82\xa4kind\xa3bid\xa4data\xc4\x00",  # keys out of canonical order
        b"\x81\xa1a\xcb\x3f\xf8\x00\x00\x00\x00\x00\x00",  # a float
        b"",  # an empty frame
        codec.encode({"kind": "bid", "data": b"x"})[:-1],  # cut short
    ],
    ids=["invalid", "unsorted", "float", "empty", "truncated"],
)
async def test_an_undecodable_frame_is_answered_not_ok(payload: bytes) -> None:
    answer, events = await _exchange(payload)
    assert answer == {"ok": False}
    assert events == []


async def test_a_well_formed_frame_of_an_unknown_kind_is_answered_not_ok() -> None:
    answer, events = await _exchange(codec.encode({"kind": "gossip", "data": b"x"}))
    assert answer == {"ok": False} and events == []


async def test_a_well_formed_frame_is_received_and_acknowledged() -> None:
    answer, events = await _exchange(codec.encode({"data": b"envelope", "kind": "bid"}))
    assert answer == {"ok": True}
    assert [(e.kind, e.data) for e in events] == [("bid", b"envelope")]


async def test_an_oversized_frame_gets_no_answer() -> None:
    # The length is refused before any payload is read: the stream ends without an answer.
    answer, events = await _exchange(b"", header=(64 * 1024 + 1).to_bytes(4, "big"))
    assert isinstance(answer, TransportError) and events == []
