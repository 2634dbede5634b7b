"""Kad on /p2pmesh/kad/1.0.0 over real hosts: any key, and the bytes a put sends.

A standard Kad client can look up a record key that is not a peer ID (patches.py item 4).

Real libp2p hosts on 127.0.0.1: a p2pmesh node A that knows a peer C, and a bare py-libp2p
host B that speaks the Kad wire protocol by hand, as js-libp2p's ``put()`` does before it
stores: ``FIND_NODE`` with the record key itself. Without the patch, A resets the stream.

And the other way round: a bare host that records what a p2pmesh node's DHT actually writes for
a ``PUT_VALUE``, compared with vector V.7 (docs/PROTOCOL.md §4.3).
"""

from __future__ import annotations

import json
from pathlib import Path

import multiaddr
import trio
import varint
from libp2p import new_host
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.kad_dht.pb.kademlia_pb2 import Message
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.utils.varint import read_varint_prefixed_bytes_limited

from p2pmesh.adapters.libp2p.net import MeshNet
from p2pmesh.adapters.libp2p.patches import DHT_PROTOCOL_ID
from p2pmesh.core.capability import DHT_NAMESPACE


def _net(seed: int) -> MeshNet:
    send, _recv = trio.open_memory_channel[object](256)
    return MeshNet(bytes([seed]) * 32, send, local_records=list)


def _full_addr(net: MeshNet) -> str:
    return f"{net.listen_addrs()[0]}/p2p/{net.peer_id}"


async def _find_node(host: object, server: MeshNet, key: bytes) -> Message:
    info = info_from_p2p_addr(multiaddr.Multiaddr(_full_addr(server)))
    await host.connect(info)  # type: ignore[attr-defined]
    stream = await host.new_stream(info.peer_id, [DHT_PROTOCOL_ID])  # type: ignore[attr-defined]
    request = Message(type=Message.MessageType.FIND_NODE, key=key).SerializeToString()
    await stream.write(varint.encode(len(request)) + request)
    reply = Message()
    reply.ParseFromString(await read_varint_prefixed_bytes_limited(stream, 1 << 20))
    await stream.close()
    return reply


async def test_find_node_with_a_record_key_returns_closer_peers() -> None:
    a, c = _net(1), _net(3)
    async with (
        a.running(["/ip4/127.0.0.1/tcp/0"], mdns=False),
        c.running(["/ip4/127.0.0.1/tcp/0"], mdns=False),
    ):
        await a.dial(c.peer_id, (_full_addr(c),))
        assert a.dht.routing_table.size() >= 1
        client = new_host(key_pair=create_new_key_pair(bytes([2]) * 32))
        async with client.run([multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]):
            key = f"/{DHT_NAMESPACE}/{c.peer_id}".encode()
            assert len(key) == 65  # the length py-libp2p 0.8.1 refused
            with trio.fail_after(20):
                reply = await _find_node(client, a, key)
            # A ranks by sha256(key) in the XOR metric; C is the only peer it knows
            # besides the asking client, which is never listed back to itself.
            assert reply.type == Message.MessageType.FIND_NODE
            closer = [ID(p.id).pretty() for p in reply.closerPeers]
            assert c.peer_id in closer
            assert client.get_id().pretty() not in closer
            await client.close()


async def test_a_put_sends_the_record_of_vector_v7() -> None:
    """What py-libp2p 0.8.1 actually writes for a PUT_VALUE is the V.7 record, in one frame."""
    vectors = json.loads(
        (Path(__file__).resolve().parents[1] / "vectors/protocol_vectors.json").read_text()
    )
    kad, rec = vectors["kad"], vectors["capability_record"]
    seen: list[bytes] = []

    async def handler(stream: object) -> None:
        data = await read_varint_prefixed_bytes_limited(stream, 1 << 20)
        seen.append(data)
        request = Message()
        request.ParseFromString(data)
        echo = Message(type=Message.MessageType.PUT_VALUE, key=request.key)
        echo.record.CopyFrom(request.record)
        reply = echo.SerializeToString()
        await stream.write(varint.encode(len(reply)) + reply)  # type: ignore[attr-defined]

    send, _recv = trio.open_memory_channel[object](256)
    putter = MeshNet(bytes.fromhex(rec["seed"]), send, local_records=list)
    server = new_host(key_pair=create_new_key_pair(bytes([9]) * 32))
    server.set_stream_handler(DHT_PROTOCOL_ID, handler)
    async with (
        putter.running(["/ip4/127.0.0.1/tcp/0"], mdns=False),
        server.run([multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]),
    ):
        addr = f"{server.get_addrs()[0]}"
        info = info_from_p2p_addr(multiaddr.Multiaddr(addr))
        with trio.fail_after(20):
            await putter.host.connect(info)
            ok = await putter.dht.value_store._store_at_peer(
                info.peer_id, kad["key"].encode(), bytes.fromhex(rec["envelope"])
            )
        await server.close()
    assert ok and len(seen) == 1
    sent = Message()
    sent.ParseFromString(seen[0])
    assert sent.type == Message.MessageType.PUT_VALUE
    assert sent.key == kad["key"].encode()
    assert sent.record.SerializeToString().hex() == kad["record"]
    assert sent.senderRecord  # py-libp2p adds its signed peer record (optional, §4.3)
    sent.ClearField("senderRecord")
    framed = varint.encode(sent.ByteSize()) + sent.SerializeToString()
    assert framed.hex() == kad["put_value_frame"]
