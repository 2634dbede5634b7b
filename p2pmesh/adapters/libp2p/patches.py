"""Small, documented adjustments to py-libp2p 0.8.1 (see docs/BENCHMARKS.md, "GossipSub").

1. py-libp2p drops gossip silently at two queues sized 32 (a subscription's channel and each
   peer's outbound RPC queue). Bursts of capability announcements at start-up (every node
   re-announcing as peers join) overflowed them. Raising both is enough: memory stays bounded by
   the new sizes, and our own size limits cap each message at 8-64 KiB.
2. ``KadDHT(protocol_prefix=…)`` is stored but ignored: every module registers and dials the
   module constant ``/ipfs/kad/1.0.0``, which would join us to the public IPFS DHT. We rebind
   that constant in every module that imported it, so our DHT speaks ``/p2pmesh/kad/1.0.0``.
"""

from __future__ import annotations

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
    _applied = True
