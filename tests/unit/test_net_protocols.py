"""The libp2p adapter speaks only our private protocols (never the public IPFS DHT)."""

from __future__ import annotations

import trio

from p2pmesh.adapters.libp2p.net import JOB_PROTOCOL, PEX_PROTOCOL, JobWire, MeshNet
from p2pmesh.core.events import ContainerFinished, InputsFetched, MessageReceived, Ticked


async def test_dht_is_private_and_our_protocols_are_registered() -> None:
    send, _recv = trio.open_memory_channel[object](16)
    net = MeshNet(bytes(range(32)), send, local_records=list)
    async with net.running(["/ip4/127.0.0.1/tcp/0"], mdns=False):
        JobWire(net, may_fetch=lambda peer, digest: False, blob_path=lambda d: None)
        handlers = {str(p) for p in net.host.get_mux().handlers}
    assert "/p2pmesh/kad/1.0.0" in handlers
    assert not any(h.startswith("/ipfs/kad") for h in handlers)
    assert {PEX_PROTOCOL, JOB_PROTOCOL, "/p2pmesh/blob/1.0.0"} <= handlers
    assert net.dht.strict_validation


def _finished(i: int) -> ContainerFinished:
    return ContainerFinished(f"{i:032x}", "exited", 0, "sha256:x", 0, "sha256:y", 0, False, 1, 1, 1)


async def test_own_events_wait_for_room_and_are_never_dropped() -> None:
    # A queue already full of network input (a flood): every event the daemon makes itself
    # still arrives, in order, once the owner task takes from the queue (back-pressure).
    send, recv = trio.open_memory_channel[object](8)
    net = MeshNet(bytes(range(32)), send, local_records=list)
    taken = [net.inbound(MessageReceived("bid", b"x", "peer"), "job-stream") for _ in range(20)]
    assert taken.count(True) == 6  # 3/4 of the queue: the rest is left to our own events
    assert net.stats.shed == {"job-stream": 14}
    own = [_finished(i) for i in range(30)] + [InputsFetched("f" * 32, True), Ticked()]
    got: list[object] = []
    async with trio.open_nursery() as nursery:

        async def produce() -> None:
            for ev in own:
                await net.emit(ev)

        nursery.start_soon(produce)
        await trio.sleep(0.1)  # the producer is blocked on a full queue by now
        assert send.statistics().tasks_waiting_send == 1
        while len(got) < 6 + len(own):
            got.append(await recv.receive())
            await trio.sleep(0)
    assert [e for e in got if not isinstance(e, MessageReceived)] == own


async def test_network_input_is_shed_by_reason_only_under_flood() -> None:
    send, recv = trio.open_memory_channel[object](4)
    net = MeshNet(bytes(range(32)), send, local_records=list)
    assert net.inbound(MessageReceived("offer", b"a", "p"), "gossip p2pmesh/offers/1")
    assert net.inbound(MessageReceived("bid", b"b", "p"), "job-stream")
    assert net.inbound(MessageReceived("bid", b"c", "p"), "job-stream")
    assert not net.inbound(MessageReceived("bid", b"d", "p"), "job-stream")
    assert not net.inbound(MessageReceived("offer", b"e", "p"), "gossip p2pmesh/offers/1")
    assert net.stats.shed == {"job-stream": 1, "gossip p2pmesh/offers/1": 1}
    await recv.receive()  # room again: network input is taken again
    assert net.inbound(MessageReceived("bid", b"f", "p"), "job-stream")


async def test_a_shed_job_message_is_answered_busy_so_the_sender_retries() -> None:
    from p2pmesh.errors import TransportError

    x_send, x_recv = trio.open_memory_channel[object](4)
    y_send, _y_recv = trio.open_memory_channel[object](64)
    x = MeshNet(bytes([1]) * 32, x_send, local_records=list)
    y = MeshNet(bytes([2]) * 32, y_send, local_records=list)
    async with (
        x.running(["/ip4/127.0.0.1/tcp/0"], mdns=False),
        y.running(["/ip4/127.0.0.1/tcp/0"], mdns=False),
    ):
        JobWire(x, may_fetch=lambda peer, digest: False, blob_path=lambda d: None)
        wire = JobWire(y, may_fetch=lambda peer, digest: False, blob_path=lambda d: None)
        addrs = tuple(f"{a}/p2p/{x.peer_id}" for a in x.listen_addrs())
        await wire.send(x.peer_id, addrs, "bid", b"one")  # room: taken, acknowledged
        while x_send.statistics().current_buffer_used < 3:
            await x.emit(Ticked())  # the node is busy: its queue is 3/4 full
        try:
            await wire.send(x.peer_id, addrs, "bid", b"two")
        except TransportError as exc:
            assert "busy" in str(exc)
        else:
            raise AssertionError("a shed message was acknowledged")
        assert x.stats.shed == {"job-stream": 1}
        got = [x_recv.receive_nowait() for _ in range(3)]
        assert [e.data for e in got if isinstance(e, MessageReceived)] == [b"one"]
