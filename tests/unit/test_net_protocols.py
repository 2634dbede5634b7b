"""The libp2p adapter speaks only our private protocols (never the public IPFS DHT)."""

from __future__ import annotations

import trio

from p2pmesh.adapters.libp2p.net import JOB_PROTOCOL, PEX_PROTOCOL, JobWire, MeshNet


async def test_dht_is_private_and_our_protocols_are_registered() -> None:
    send, _recv = trio.open_memory_channel[object](16)
    net = MeshNet(bytes(range(32)), send, check_record=lambda d: True, local_records=list)
    async with net.running(["/ip4/127.0.0.1/tcp/0"], mdns=False):
        JobWire(net, may_fetch=lambda peer, digest: False, blob_path=lambda d: None)
        handlers = {str(p) for p in net.host.get_mux().handlers}
    assert "/p2pmesh/kad/1.0.0" in handlers
    assert not any(h.startswith("/ipfs/kad") for h in handlers)
    assert {PEX_PROTOCOL, JOB_PROTOCOL, "/p2pmesh/blob/1.0.0"} <= handlers
    assert net.dht.strict_validation
