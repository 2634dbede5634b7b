"""Small, documented adjustments to py-libp2p 0.8.1 (see docs/BENCHMARKS.md, "GossipSub").

py-libp2p drops gossip silently at two queues sized 32 (a subscription's channel and each
peer's outbound RPC queue). Bursts of capability announcements at start-up (every node
re-announcing as peers join) overflowed them. Raising both is enough: memory stays bounded by
the new sizes, and our own size limits cap each message at 8-64 KiB.
"""

from __future__ import annotations

import libp2p.pubsub.pubsub as _pubsub
import libp2p.pubsub.rpc_queue as _rpc_queue

SUBSCRIPTION_QUEUE = 1024
OUTBOUND_RPC_QUEUE = 1024
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
    _applied = True
