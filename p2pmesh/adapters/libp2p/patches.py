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
5. Every pubsub RPC (each publish, each forward, each control message) carries the sender's
   signed peer record, and the receiver verifies its signature and rewrites the peer's
   certified addresses on every one of them, before it even looks at whether the message is a
   duplicate; a control RPC is verified twice (``Pubsub`` and ``GossipSub.handle_rpc``). With
   mesh degree 6 a node paid ~0.15 ms per copy, about one millisecond per gossiped message. A
   peer sends the same envelope bytes until its addresses change, so we remember, per peer, the
   bytes last accepted and accept the same bytes again without verifying them, re-consuming
   them fully every ``SENDER_RECORD_REFRESH_S`` so the address TTL is still refreshed. Upstream
   would need the same check inside ``maybe_consume_signed_record`` (compare with the envelope
   already stored in ``peer_record_map``), which is why the patch wraps only that function.
6. Yamux in 0.8.1 returns receive credit after nearly *every* read: with
   ``PY_YAMUX_RELEASE_ON_READ`` (on by default) for the bytes read, and otherwise through a
   "partial slack" branch whenever less than half a window is owed. Each small gossip or job
   frame read costs one WINDOW_UPDATE frame written back through Noise and the socket; a
   profile of a worker under 15 offers/s put 18 % of its CPU there, and a 3 MiB transfer in
   1 KiB writes sent 1 868 updates. go-yamux (``sendWindowUpdate``) returns credit only once
   at least half the window is owed, in one update. We replace
   ``YamuxStream._auto_tune_and_send_window_update`` with exactly that rule, keeping the
   library's window growth (``_grow_to_delta``, ``_apply_autotune_epoch``). Flow control
   cannot stall: while less than half is owed, the sender still holds more than half a window
   of credit. Upstream would need the two early-release branches removed (or off by default).
7. The swarm wraps every raw connection in ``libp2p.security.pnet`` when it holds a swarm key
   (``new_host(psk=…)``), but that module speaks Salsa20 with an 8-byte nonce, which no other
   libp2p speaks (the pnet spec, go-libp2p and js-libp2p: XSalsa20, 24-byte nonce), fails on a
   short first read, and returns a connection without ``is_initiator`` /
   ``get_connection_type`` / ``get_transport_addresses``, which the swarm reads. We rebind the
   swarm's ``new_protected_conn`` to ``pnet.protect`` (adapters/libp2p/pnet.py). The swarm
   also wraps only on its own dial path and in ``upgrade_inbound_raw_conn``: a connection
   handed to ``upgrade_outbound_raw_conn`` from elsewhere (circuit relay v2's outbound side)
   went out unwrapped while the other end, inbound, wrapped it, so it could never work. We
   wrap there too (``protect`` is idempotent, so the dial path's connection is not wrapped
   twice), as go-libp2p's upgrader does for every transport. A private node refuses to start
   where this patch is off (``pnet_patched``), rather than speak something else on the wire.
8. AutoNAT's server (``AutoNATService._try_dial``) "dials back" with ``host.connect``, which
   returns at once when a connection to the peer exists, and the requester is always
   connected (it sent the request over that connection): every node was told it is publicly
   reachable, also behind a NAT. The AutoNAT spec asks for a dial on a new connection; we make
   it with ``Swarm.dial_addr`` (which always opens one, as DCUtR does), under a deadline, and
   close that connection again. As go-libp2p's server does, it dials at most
   ``DIALBACK_MAX_ADDRS`` of the addresses offered and at most ``DIALBACK_CONCURRENCY``
   requests at once (a request is an order to dial: it must stay cheap to serve). Upstream
   would need the same change in ``_try_dial``.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from importlib import metadata
from typing import Any

import libp2p.host.autonat.autonat as _autonat
import libp2p.kad_dht.common as _kad_common
import libp2p.kad_dht.kad_dht as _kad
import libp2p.kad_dht.peer_routing as _kad_routing
import libp2p.kad_dht.provider_store as _kad_providers
import libp2p.kad_dht.value_store as _kad_values
import libp2p.network.swarm as _swarm
import libp2p.pubsub.floodsub as _floodsub
import libp2p.pubsub.gossipsub as _gossipsub
import libp2p.pubsub.pubsub as _pubsub
import libp2p.pubsub.rpc_queue as _rpc_queue
import libp2p.stream_muxer.yamux.yamux as _yamux
import trio
from libp2p.custom_types import TProtocol
from multiaddr import Multiaddr

from p2pmesh.adapters.libp2p import pnet

SUBSCRIPTION_QUEUE = 1024
OUTBOUND_RPC_QUEUE = 1024
DHT_PROTOCOL_ID = TProtocol("/p2pmesh/kad/1.0.0")
PATCHED_VERSION = "0.8.1"  # the py-libp2p these patches were written and tested against
SENDER_RECORD_REFRESH_S = 60.0
DIALBACK_DIAL_S = 10.0  # item 8: one dial-back attempt
DIALBACK_MAX_ADDRS = 4
DIALBACK_CONCURRENCY = 4
_dialback_slots: trio.Semaphore | None = None
SENDER_RECORD_PEERS = 4096  # peers remembered (LRU); one entry is ~1 KiB
_applied = False
pnet_patched = False  # item 7: only then may a node run with a swarm key
dialback_patched = False  # item 8: only then does AutoNAT say anything true
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


class SenderRecordMemo:
    """``maybe_consume_signed_record`` that skips re-verifying bytes it accepted (item 5).

    Only an acceptance is remembered, and only for the exact bytes from the same connection
    peer: a different record, a refused one, or one older than ``refresh_s`` goes through the
    library's full check. Memory is bounded by ``max_peers``.
    """

    def __init__(
        self,
        consume: Callable[[Any, Any, Any], bool],
        *,
        refresh_s: float = SENDER_RECORD_REFRESH_S,
        max_peers: int = SENDER_RECORD_PEERS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._consume = consume
        self._refresh_s = refresh_s
        self._max_peers = max_peers
        self._clock = clock
        self._accepted: OrderedDict[Any, tuple[bytes, float]] = OrderedDict()
        self.verified = 0
        self.skipped = 0

    def __call__(self, msg: Any, host: Any, peer_id: Any) -> bool:
        if not msg.HasField("senderRecord"):
            return True  # the library accepts an RPC without a record as it is
        record = msg.senderRecord
        now = self._clock()
        key = (id(host), peer_id)  # tests run several hosts in one process
        seen = self._accepted.get(key)
        if seen is not None and seen[0] == record and now - seen[1] < self._refresh_s:
            self._accepted.move_to_end(key)
            self.skipped += 1
            return True
        self.verified += 1
        ok = self._consume(msg, host, peer_id)
        if ok:
            self._accepted[key] = (bytes(record), now)
            self._accepted.move_to_end(key)
            while len(self._accepted) > self._max_peers:
                self._accepted.popitem(last=False)
        else:
            self._accepted.pop(key, None)
        return ok


sender_records: SenderRecordMemo | None = None


def _memo_sender_records() -> None:
    global sender_records
    memo = SenderRecordMemo(_pubsub.maybe_consume_signed_record)
    # Each module bound the function by name at import; rebind it in each.
    for module in (_pubsub, _gossipsub, _floodsub):
        module.maybe_consume_signed_record = memo  # type: ignore[attr-defined]
    sender_records = memo


async def _credit_when_half_owed(self: Any, *, bytes_read: int = 0) -> None:
    """go-yamux's rule: one WINDOW_UPDATE once half the window is owed, none before."""
    total = 0
    async with self.window_lock:
        buffered = len(self.conn.stream_buffers.get(self.stream_id, b""))
        owed = self.target_recv_window - (self.recv_window + buffered)
        if owed > 0 and owed >= self._grow_threshold():
            total = self._grow_to_delta(buffered) + self._apply_autotune_epoch(buffered)
            self._pending_recv_release = 0
    if total > 0:
        await self.send_window_update(total, skip_lock=True)


def _batch_yamux_credit() -> None:
    _yamux.YamuxStream._auto_tune_and_send_window_update = _credit_when_half_owed  # type: ignore[method-assign]


def _protect_with_xsalsa20() -> None:
    global pnet_patched
    _swarm.new_protected_conn = pnet.protect  # type: ignore[attr-defined]
    original = _swarm.Swarm.upgrade_outbound_raw_conn

    async def upgrade_outbound_raw_conn(
        self: _swarm.Swarm, raw_conn: Any, peer_id: Any, pre_scope: Any = None
    ) -> Any:
        if self.psk is not None:
            raw_conn = pnet.protect(raw_conn, self.psk)
        return await original(self, raw_conn, peer_id, pre_scope)

    _swarm.Swarm.upgrade_outbound_raw_conn = upgrade_outbound_raw_conn  # type: ignore[method-assign]
    pnet_patched = True


async def _dial_back_fresh(self: Any, peer_id: Any, addrs: list[bytes]) -> bytes | None:
    """AutoNAT's dial-back on a connection of its own (item 8)."""
    global _dialback_slots
    if _dialback_slots is None:
        _dialback_slots = trio.Semaphore(DIALBACK_CONCURRENCY)
    network = self.host.get_network()
    async with _dialback_slots:
        for raw in addrs[:DIALBACK_MAX_ADDRS]:
            try:
                with trio.fail_after(DIALBACK_DIAL_S):
                    conn = await network.dial_addr(Multiaddr(raw), peer_id)
            except Exception:  # refused, unreachable, timed out, another peer: next one
                continue
            with contextlib.suppress(Exception):
                await conn.close()
            return bytes(raw)
    return None


def _fresh_autonat_dialback() -> None:
    global dialback_patched
    _autonat.AutoNATService._try_dial = _dial_back_fresh  # type: ignore[method-assign]
    dialback_patched = True


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
    installed = metadata.version("libp2p")
    if installed == PATCHED_VERSION:
        _memo_sender_records()
        _batch_yamux_credit()
        _protect_with_xsalsa20()
        _fresh_autonat_dialback()
    else:
        # Items 1-4 fail safe (a constant or a wrapper the new code ignores); items 5-8
        # replace functions whose contracts may have changed, so they stay off elsewhere.
        _log.warning(
            "py-libp2p %s is not %s: patches.py items 5-8 are off (no private meshes, "
            "reachability unknown)",
            installed,
            PATCHED_VERSION,
        )
    _applied = True
