"""Small, documented adjustments to py-libp2p 0.8.1 (see docs/BENCHMARKS.md, "GossipSub").

1. py-libp2p drops gossip silently at two queues sized 32 (a subscription's channel and each
   peer's outbound RPC queue). Bursts of capability announcements at start-up (every node
   re-announcing as peers join) overflowed them. Raising both is enough: memory stays bounded by
   the new sizes, and our own size limits cap each message at 8-64 KiB.
2. ``KadDHT(protocol_prefix=…)`` is stored but ignored: every module registers and dials the
   module constant ``/ipfs/kad/1.0.0``, which would join us to the public IPFS DHT. We rebind
   that constant in every module that imported it, so our DHT speaks ``/p2pmesh/kad/1.0.0``.
3. ``Pubsub.stream_handler`` lets any error but three stream errors escape, and one escaping
   error stops the whole host: one RPC that does not parse as protobuf (``DecodeError``), or
   one over the size limit, from any peer, killed the daemon. We wrap the handler so such a
   peer only loses its stream, as on a stream error.
4. The Kad handler answers FIND_NODE only for a key that parses as a multihash or is 2..50
   bytes long, and resets the stream otherwise (``FIND_NODE key is not a valid PeerId (65
   bytes), ignoring``). The Kademlia spec allows any key: the answer is the peers closest to
   sha256(key) in the XOR metric, which is what the library computes once it gets that far.
   Standard clients (js-libp2p's ``put()``) look up the record key itself before they store, so
   with the check they could never put a ``/p2pmesh-cap/…`` record with us. The check is the
   handler's only use of ``multihash.decode``; we give the handler a ``multihash`` whose
   ``decode`` accepts any non-empty key (the 4 MiB message cap still bounds it).
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import libp2p.kad_dht.common as _kad_common
import libp2p.kad_dht.kad_dht as _kad
import libp2p.kad_dht.peer_routing as _kad_routing
import libp2p.kad_dht.provider_store as _kad_providers
import libp2p.kad_dht.value_store as _kad_values
import libp2p.pubsub.pubsub as _pubsub
import libp2p.pubsub.rpc_queue as _rpc_queue
from libp2p.custom_types import TProtocol

SUBSCRIPTION_QUEUE = 1024
OUTBOUND_RPC_QUEUE = 1024
DHT_PROTOCOL_ID = TProtocol("/p2pmesh/kad/1.0.0")
_applied = False
_log = logging.getLogger("p2pmesh.net")


def _guard_pubsub_streams() -> None:
    original = _pubsub.Pubsub.stream_handler

    async def stream_handler(self: _pubsub.Pubsub, stream: Any) -> None:
        try:
            await original(self, stream)
        except Exception as exc:  # whatever one peer sends must not stop the node
            peer_id = stream.muxed_conn.peer_id
            _log.debug("pubsub stream from %s dropped: %r", peer_id, exc)
            with contextlib.suppress(Exception):
                await stream.reset()
            self._handle_dead_peer(peer_id)

    _pubsub.Pubsub.stream_handler = stream_handler  # type: ignore[method-assign]


class _AnyKadKey:
    """The ``multihash`` module as the Kad handler sees it, accepting any key (item 4)."""

    def __init__(self, module: Any) -> None:
        self._module = module

    def __getattr__(self, name: str) -> Any:
        return getattr(self._module, name)

    def decode(self, data: bytes) -> Any:
        try:
            return self._module.decode(data)
        except Exception:
            if not data:  # the handler refuses an empty key before it gets here; stay strict
                raise
            return None


def apply() -> None:
    global _applied
    if _applied:
        return
    _pubsub.SUBSCRIPTION_CHANNEL_SIZE = SUBSCRIPTION_QUEUE
    init = _rpc_queue.RpcQueue.__init__
    defaults = init.__defaults__ or ()
    # The queue size is bound as a default argument at definition time, so the module constant
    # alone changes nothing: replace the default itself.
    if defaults:
        init.__defaults__ = (OUTBOUND_RPC_QUEUE, *defaults[1:])
    for module in (_kad_common, _kad, _kad_routing, _kad_providers, _kad_values):
        module.PROTOCOL_ID = DHT_PROTOCOL_ID  # type: ignore[attr-defined]
    _guard_pubsub_streams()
    _kad.multihash = _AnyKadKey(_kad.multihash)  # type: ignore[attr-defined]
    _applied = True
