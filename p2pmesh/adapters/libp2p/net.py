"""The libp2p side of a node: host, GossipSub, Kademlia DHT, mDNS, and our stream protocols.

Thin on purpose: it turns libp2p happenings into core events (sent on a memory channel) and
core effects into libp2p calls. Every libp2p call that may hang gets a deadline; every failure
becomes a ``TransportError`` or an event, never a crash of the node.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import multiaddr
import trio
from libp2p import new_host
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.kad_dht.kad_dht import DHTMode, KadDHT
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo, info_from_p2p_addr
from libp2p.pubsub.gossipsub import GossipSub
from libp2p.pubsub.pubsub import Pubsub
from libp2p.records.validator import Validator
from libp2p.tools.anyio_service import background_trio_service

from p2pmesh.adapters.libp2p import patches, pnet
from p2pmesh.adapters.libp2p.nat import NatService
from p2pmesh.adapters.libp2p.streams import read_frame, write_frame
from p2pmesh.core import capability, codec
from p2pmesh.core.auction import logs
from p2pmesh.core.events import (
    DialFailed,
    PeerAddressObserved,
    PeerConnected,
    PeerDisconnected,
    RecordReceived,
)
from p2pmesh.core.reachability import RelayLimits, dial_order, is_circuit
from p2pmesh.core.topics import Validation
from p2pmesh.errors import DecodeError, TransportError, ValidationError

log = logging.getLogger("p2pmesh.net")

GOSSIPSUB_ID = "/meshsub/1.1.0"
DHT_PREFIX = "/p2pmesh"  # -> /p2pmesh/kad/1.0.0: a private DHT, never the public IPFS one
PEX_PROTOCOL = "/p2pmesh/pex/1.0.0"
MAX_PEX_RECORDS = 256
MAX_PEX_BYTES = MAX_PEX_RECORDS * capability.MAX_RECORD_BYTES
DHT_TIMEOUT_S = 10.0
DIAL_TIMEOUT_S = 10.0
STREAM_TIMEOUT_S = 10.0


class _CapabilityValidator(Validator):
    """DHT namespace validator: the record must verify and be keyed by its own peer ID."""

    def validate(self, key: str, value: bytes) -> None:
        try:
            rec = capability.check_record(value, now=time.time(), known_seq=None)
        except (DecodeError, ValidationError) as exc:
            raise ValueError(str(exc)) from None
        if key != capability.dht_key(rec.peer_id):
            raise ValueError("record stored under another peer's key")

    def select(self, key: str, values: list[bytes]) -> int:
        return capability.select_newest(values)


def observed_host(conn: Any) -> str:
    """The remote IP of a live connection as the socket saw it ("" when unknown). Never the
    peerstore's addresses: those are what the peer declared (PROTOCOL.md §8.6)."""
    try:
        addr = conn.muxed_conn.get_remote_address()
    except Exception:
        return ""
    if not addr or not isinstance(addr, tuple) or not isinstance(addr[0], str):
        return ""
    return addr[0][:64]


class _Notifee:
    def __init__(self, send: Callable[[Any], Awaitable[None]]) -> None:
        self._send = send

    async def connected(self, network: Any, conn: Any) -> None:
        peer = str(conn.muxed_conn.peer_id)
        host = observed_host(conn)
        if host:
            # Before PeerConnected: the core spreads replicas over the prefixes it has seen.
            await self._send(PeerAddressObserved(peer, host))
        await self._send(PeerConnected(peer))

    async def disconnected(self, network: Any, conn: Any) -> None:
        peer = conn.muxed_conn.peer_id
        # Several connections to one peer may exist; only the last one closing matters.
        if not network.get_connections(peer):
            await self._send(PeerDisconnected(str(peer)))

    async def opened_stream(self, network: Any, stream: Any) -> None:
        return None

    async def closed_stream(self, network: Any, stream: Any) -> None:
        return None

    async def listen(self, network: Any, maddr: Any) -> None:
        return None

    async def listen_close(self, network: Any, maddr: Any) -> None:
        return None


# Input from the network is shed once the owner's queue is this full, so that the events the
# daemon makes itself (a finished container, fetched inputs) always find room without waiting.
NETWORK_SHARE = 0.75


@dataclass(slots=True)
class NetStats:
    # Input from the network shed under flood, by reason (the daemon's own events never are).
    shed: dict[str, int] = field(default_factory=dict)
    gossip_received: int = 0
    gossip_invalid: int = 0  # ignored + rejected
    gossip_ignored: dict[str, int] = field(default_factory=dict)  # by topic
    gossip_rejected: dict[str, int] = field(default_factory=dict)  # by topic
    published: int = 0
    publish_failed: int = 0
    dht_put_ok: int = 0
    dht_put_failed: int = 0
    dht_get_ok: int = 0
    dht_get_failed: int = 0
    dials_ok: int = 0
    dials_failed: int = 0
    # For /metrics: gossip by topic, job-stream messages by kind, stream errors by operation.
    gossip_in: dict[str, int] = field(default_factory=dict)  # by topic, before our validators
    gossip_out: dict[str, int] = field(default_factory=dict)  # published, by topic
    job_in: dict[str, int] = field(default_factory=dict)  # taken from the job stream, by kind
    job_out: dict[str, int] = field(default_factory=dict)  # delivered (acknowledged), by kind
    stream_errors: dict[str, int] = field(default_factory=dict)  # e.g. "serve blob", "send"

    def count(self, table: dict[str, int], key: str) -> None:
        table[key] = table.get(key, 0) + 1

    # Connections the swarm-key layer refused (a peer without this private mesh's key).
    psk_refused: int = 0


# A refused connection is logged at most this often per remote IP, direction and reason (every
# one is counted): a stranger redialling in a loop must not flood the log.
REFUSAL_LOG_EVERY_S = 30.0
REFUSAL_IPS_KEPT = 1024


class MeshNet:
    def __init__(
        self,
        seed: bytes,
        events: trio.MemorySendChannel[Any],
        *,
        local_records: Callable[[], list[bytes]],
        metrics: bool = False,
        psk: bytes | None = None,
        on_refused: Callable[[pnet.Refusal, int], None] | None = None,
        relay_limits: RelayLimits | None = None,
        listen: list[str] | None = None,
    ) -> None:
        """``psk``: the private mesh's swarm key; every connection then goes through the PSK
        layer (pnet.py). ``on_refused(refusal, count)`` is told of refused connections, at
        most once per remote IP, direction and reason per ``REFUSAL_LOG_EVERY_S`` (count:
        refusals since the last call)."""
        patches.apply()
        if psk is not None and not patches.pnet_patched:
            raise TransportError(
                "private meshes need py-libp2p " + patches.PATCHED_VERSION + " (patches.py item 7)"
            )
        self._events = events
        self._local_records = local_records
        self.key_pair = create_new_key_pair(seed)
        # metrics: the host sends swarm/gossipsub/DHT events for libp2p.metrics on a channel
        # (``metrics_events``) that someone must drain while the host runs (daemon/metrics.py).
        self.private = psk is not None
        self._psk = psk
        # The listen addresses pick the transports: TCP, and QUIC (``/udp/N/quic-v1``) when
        # one is listed; without them py-libp2p builds TCP alone.
        transports_for = [multiaddr.Multiaddr(a) for a in listen] if listen else None
        self.host = new_host(
            key_pair=self.key_pair,
            listen_addrs=transports_for,
            enable_metrics=metrics,
            psk=psk.hex() if psk is not None else None,
        )
        self.metrics_events = self.host.get_metrics_recv_channel() if metrics else None
        self.nat = NatService(self.host, relay_limits or RelayLimits())
        self._on_refused = on_refused
        self._refused_at: dict[tuple[str, bool, str], tuple[float, int]] = {}
        self.peer_id = self.host.get_id().pretty()
        self.gossipsub = GossipSub(
            protocols=[GOSSIPSUB_ID],
            degree=6,
            degree_low=4,
            degree_high=12,
            heartbeat_interval=1,
            # Our topic validators already refuse anything unsigned, stale or oversized; the
            # library's per-peer limit of 10 msg/s dropped start-up bursts silently.
            spam_protection_enabled=True,
            max_messages_per_topic_per_second=500.0,
            # Loopback and LAN meshes have one IP; diversity rules would starve the mesh.
            eclipse_protection_enabled=False,
        )
        self.pubsub = Pubsub(self.host, self.gossipsub)
        # strict: keys outside our namespaces are refused, so nobody can store junk with us.
        self.dht = KadDHT(
            self.host, DHTMode.SERVER, protocol_prefix=DHT_PREFIX, strict_validation=True
        )
        self.dht.register_validator(capability.DHT_NAMESPACE, _CapabilityValidator())
        self.stats = NetStats()
        self._handlers: dict[str, Callable[[Any], Awaitable[None]]] = {}
        self._mdns: Any = None
        self._mdns_found: list[PeerInfo] = []

    # -- events into the core --------------------------------------------------------------
    async def emit(self, event: Any) -> None:
        """An event the daemon made itself (a container finished, inputs fetched, a tick): it
        is never dropped. A full queue makes the producer wait (back-pressure) until the owner
        task has taken one; waiting senders get freed room before any network input does."""
        with contextlib.suppress(trio.ClosedResourceError, trio.BrokenResourceError):
            await self._events.send(event)

    def stats_json(self) -> dict[str, Any]:
        """Counters for ``status``: ours, and py-libp2p's sender-record memo (patches.py)."""
        out: dict[str, Any] = dataclasses.asdict(self.stats)
        memo = patches.sender_records
        out["nat"] = dict(self.nat.stats)
        out["sender_records"] = (
            {"verified": memo.verified, "skipped": memo.skipped} if memo is not None else None
        )
        return out

    def inbound(self, event: Any, reason: str) -> bool:
        """Input from the network (gossip, an inbound job message, peer exchange, DHT or
        ledger replies, mDNS): shed under flood, counted per ``reason``. False: shed."""
        stats = self._events.statistics()
        if stats.current_buffer_used >= NETWORK_SHARE * stats.max_buffer_size:
            self.stats.shed[reason] = self.stats.shed.get(reason, 0) + 1
            log.debug("event queue %d%% full, shed %s", 100 * NETWORK_SHARE, reason)
            return False
        try:
            self._events.send_nowait(event)
        except trio.WouldBlock:
            self.stats.shed[reason] = self.stats.shed.get(reason, 0) + 1
            return False
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            return False
        return True

    def listen_addrs(self) -> list[str]:
        """Addresses without the /p2p suffix (what a capability record carries)."""
        out = []
        for a in self.host.get_addrs():
            s = str(a)
            cut = s.find("/p2p/")
            out.append(s[:cut] if cut >= 0 else s)
        return sorted(set(out))

    def set_stream_handler(self, protocol: str, handler: Callable[[Any], Awaitable[None]]) -> None:
        self.host.set_stream_handler(protocol, handler)

    # -- lifecycle ---------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def running(self, listen: list[str], *, mdns: bool) -> AsyncIterator[MeshNet]:
        maddrs = [multiaddr.Multiaddr(a) for a in listen]
        entry = (self._psk, self._refused) if self._psk is not None else None
        if entry is not None:
            pnet.refusal_listeners.append(entry)
        try:
            async with self._running(maddrs, mdns=mdns):
                yield self
        finally:
            if entry is not None:
                pnet.refusal_listeners.remove(entry)

    def _refused(self, refusal: pnet.Refusal) -> None:
        self.stats.psk_refused += 1
        key = (refusal.remote.rsplit(":", 1)[0], refusal.inbound, refusal.reason)
        now = time.monotonic()
        last, since = self._refused_at.get(key, (-math.inf, 0))
        if now - last < REFUSAL_LOG_EVERY_S:
            self._refused_at[key] = (last, since + 1)
            return
        if len(self._refused_at) >= REFUSAL_IPS_KEPT:
            self._refused_at.clear()
        self._refused_at[key] = (now, 0)
        if self._on_refused is not None:
            self._on_refused(refusal, since + 1)

    @contextlib.asynccontextmanager
    async def _running(self, maddrs: list[Any], *, mdns: bool) -> AsyncIterator[MeshNet]:
        async with self.host.run(maddrs):
            self.host.get_network().register_notifee(_Notifee(self.emit))
            self.host.set_stream_handler(PEX_PROTOCOL, self._serve_pex)
            async with (
                background_trio_service(self.pubsub),
                background_trio_service(self.gossipsub),
                background_trio_service(self.dht),
                self.nat.running(),
            ):
                await self.pubsub.wait_until_ready()
                if mdns:
                    self._start_mdns()
                try:
                    yield self
                finally:
                    self._stop_mdns()

    def _start_mdns(self) -> None:
        try:
            from libp2p.discovery.events.peerDiscovery import peerDiscovery
            from libp2p.discovery.mdns.mdns import create_mdns_discovery

            addrs = [str(a) for a in self.host.get_addrs()]
            port = int(addrs[0].split("/tcp/")[1].split("/")[0]) if addrs else 4001
            self._mdns = create_mdns_discovery(
                self.host.get_network(),
                port=port,
                listen_addrs=addrs,
                private_network_fingerprint="p2pmesh-v1",
                host=self.host,
            )
            peerDiscovery.register_peer_discovered_handler(self._on_mdns_peer)
            self._mdns.start()
        except Exception as exc:  # mDNS is best effort: no multicast must not stop the node
            log.warning("mDNS unavailable: %s", exc)
            self._mdns = None

    def _stop_mdns(self) -> None:
        if self._mdns is None:
            return
        try:
            from libp2p.discovery.events.peerDiscovery import peerDiscovery

            peerDiscovery.unregister_peer_discovered_handler(self._on_mdns_peer)
            self._mdns.stop()
        except Exception as exc:
            log.debug("mDNS stop: %s", exc)

    def _on_mdns_peer(self, info: PeerInfo) -> None:
        self._mdns_found.append(info)

    def take_mdns_peers(self) -> list[tuple[str, tuple[str, ...]]]:
        found, self._mdns_found = self._mdns_found, []
        return [
            (str(i.peer_id), tuple(f"{a}/p2p/{i.peer_id}" for a in i.addrs))
            for i in found
            if str(i.peer_id) != self.peer_id
        ]

    # -- gossip ------------------------------------------------------------------------------
    def add_topic_validator(self, topic: str, check: Callable[[bytes], Validation]) -> None:
        """Run the core's three-valued validator for ``topic`` inside GossipSub.

        py-libp2p 0.8.1 takes only a bool (``Pubsub.validate_msg``): False drops the message,
        does not forward it, caches the failure by message ID and counts an invalid message
        against the forwarder in its scorer, whose weights are all 0 here. So IGNORE and REJECT
        both map to False and behave alike on the wire today; we count them apart.
        """

        def validate(forwarder: ID, msg: Any) -> bool:
            verdict = check(bytes(msg.data))
            if verdict is Validation.ACCEPT:
                return True
            self.stats.gossip_invalid += 1
            counts = (
                self.stats.gossip_ignored
                if verdict is Validation.IGNORE
                else self.stats.gossip_rejected
            )
            counts[topic] = counts.get(topic, 0) + 1
            return False

        self.pubsub.set_topic_validator(topic, validate, False)

    async def subscribe_loop(
        self, topic: str, make_event: Callable[[str, bytes, str], Any]
    ) -> None:
        sub = await self.pubsub.subscribe(topic)
        while True:
            msg = await sub.get()
            self.stats.gossip_received += 1
            self.stats.count(self.stats.gossip_in, topic)
            sender = ID(msg.from_id).pretty() if msg.from_id else ""
            if sender == self.peer_id:
                continue
            self.inbound(make_event(topic, bytes(msg.data), sender), f"gossip {topic}")

    async def open_stream(self, pid: Any, protocol: str) -> Any:
        """A new stream to a connected peer for ``protocol``; ``TransportError`` (caused by the
        library's error, so a caller can tell a peer without the protocol apart) otherwise."""
        try:
            with trio.fail_after(STREAM_TIMEOUT_S):
                return await self.host.new_stream(pid, [protocol])
        except trio.TooSlowError:
            raise TransportError("stream open timed out") from None
        except Exception as exc:
            raise TransportError(f"cannot open stream: {type(exc).__name__}: {exc}"[:200]) from exc

    async def publish(self, topic: str, data: bytes) -> None:
        try:
            await self.pubsub.publish(topic, data)
            self.stats.published += 1
            self.stats.count(self.stats.gossip_out, topic)
        except Exception as exc:
            self.stats.publish_failed += 1
            log.debug("publish on %s failed: %s", topic, exc)

    # -- DHT ---------------------------------------------------------------------------------
    async def dht_put(self, key: str, value: bytes) -> bool:
        with trio.move_on_after(DHT_TIMEOUT_S):
            try:
                await self.dht.put_value(key, value)
                self.stats.dht_put_ok += 1
                return True
            except Exception as exc:
                log.debug("DHT put %s failed: %s", key, exc)
        self.stats.dht_put_failed += 1
        return False

    async def dht_get(self, key: str) -> bytes | None:
        with trio.move_on_after(DHT_TIMEOUT_S):
            try:
                value = await self.dht.get_value(key)
                if value is not None:
                    self.stats.dht_get_ok += 1
                    return bytes(value)
            except Exception as exc:
                log.debug("DHT get %s failed: %s", key, exc)
        self.stats.dht_get_failed += 1
        return None

    # -- dialling ------------------------------------------------------------------------------
    async def connect_addr(self, peer_id: str, addr: str) -> None:
        """One dial to ``peer_id`` at ``addr`` (a direct or a ``/p2p-circuit`` address);
        raises ``TransportError``. py-libp2p's swarm skips circuit addresses, so those go
        through the relay transport (nat.py)."""
        if is_circuit(addr):
            if not addr.endswith("/p2p/" + peer_id):
                raise TransportError("address names another peer")
            await self.nat.dial_circuit(addr)
            return
        try:
            info = info_from_p2p_addr(multiaddr.Multiaddr(addr))
        except Exception as exc:
            raise TransportError(f"bad address {addr!r}: {exc}") from None
        if str(info.peer_id) != peer_id:
            raise TransportError("address names another peer")
        with trio.move_on_after(DIAL_TIMEOUT_S):
            try:
                # py-libp2p refuses every dial to a peer whose last dial failed in the past
                # 60 s (the swarm's negative cache); the core's backoff decides retries.
                self.host.get_network().unblock_peer(info.peer_id)
                await self.host.connect(info)
                return
            except Exception as exc:
                raise TransportError(f"{type(exc).__name__}: {exc}"[:200]) from None
        raise TransportError("timed out")

    async def dial(self, peer_id: str, addrs: tuple[str, ...]) -> None:
        last = "no address"
        for addr in dial_order(addrs):
            try:
                await self.connect_addr(peer_id, addr)
            except TransportError as exc:
                last = str(exc)
                continue
            try:
                await self.dht.add_peer(ID.from_base58(peer_id))
            except Exception as exc:
                log.debug("routing table add failed: %s", exc)
            self.stats.dials_ok += 1
            # The notifee reports the connection too; this covers an existing one.
            await self.emit(PeerConnected(peer_id))
            return
        self.stats.dials_failed += 1
        await self.emit(DialFailed(peer_id, last))

    def remote_ip(self, peer_id: str) -> str | None:
        """The IP our first direct connection to ``peer_id`` goes to (None: none)."""
        addr = self._remote(peer_id)
        return addr[0] if addr else None

    def remote_addr(self, peer_id: str) -> str | None:
        addr = self._remote(peer_id)
        if not addr:
            return None
        family = "ip6" if ":" in addr[0] else "ip4"
        return f"/{family}/{addr[0]}/tcp/{addr[1]}"

    def _remote(self, peer_id: str) -> tuple[str, int] | None:
        from p2pmesh.adapters.libp2p.nat import is_relayed_conn

        try:
            conns = self.host.get_network().get_connections(ID.from_base58(peer_id))
        except Exception:
            return None
        for conn in conns or []:
            if is_relayed_conn(conn):
                continue
            try:
                addr = conn.muxed_conn.get_remote_address()
            except Exception:
                continue
            if addr and isinstance(addr[0], str):
                return (addr[0], int(addr[1]))
        return None

    def connected_peers(self) -> list[str]:
        return [p.pretty() for p in self.host.get_connected_peers()]

    # -- peer exchange -------------------------------------------------------------------------
    async def _serve_pex(self, stream: Any) -> None:
        try:
            await read_frame(stream, max_bytes=16, timeout_s=STREAM_TIMEOUT_S)
            records = self._local_records()[:MAX_PEX_RECORDS]
            payload = codec.encode({"records": records}, max_bytes=MAX_PEX_BYTES)
            await write_frame(stream, payload, timeout_s=STREAM_TIMEOUT_S)
        except (TransportError, DecodeError) as exc:
            log.debug("pex serve: %s", exc)
        finally:
            with contextlib.suppress(Exception):
                await stream.close()

    async def exchange_peers(self, peer_id: str) -> None:
        try:
            with trio.fail_after(STREAM_TIMEOUT_S):
                stream = await self.host.new_stream(ID.from_base58(peer_id), [PEX_PROTOCOL])
            try:
                await write_frame(stream, b"", timeout_s=STREAM_TIMEOUT_S)
                data = await read_frame(stream, max_bytes=MAX_PEX_BYTES, timeout_s=STREAM_TIMEOUT_S)
            finally:
                with contextlib.suppress(Exception):
                    await stream.close()
            value = codec.decode(data, max_bytes=MAX_PEX_BYTES)
        except (TransportError, DecodeError, trio.TooSlowError) as exc:
            log.debug("pex with %s failed: %s", peer_id, exc)
            return
        except Exception as exc:
            log.debug("pex with %s failed: %s", peer_id, exc)
            return
        if not isinstance(value, dict) or not isinstance(value.get("records"), list):
            return
        for raw in value["records"][:MAX_PEX_RECORDS]:
            if isinstance(raw, bytes) and not self.inbound(
                RecordReceived(raw, "pex", peer_id), "pex"
            ):
                return  # flooded: the rest would be shed too


# -- job protocol and blob transfer (PROTOCOL.md §7.5, §7.6) ------------------------------------
JOB_PROTOCOL = "/p2pmesh/job/1.0.0"
BLOB_PROTOCOL = "/p2pmesh/blob/1.0.0"
JOB_KINDS = frozenset(
    {"bid", "award", "status", "result", "cancel", "pay", "paid", "award-query", "award-answer"}
)
LEDGER_PROTOCOL = "/p2pmesh/ledger/1.0.0"
LOG_PROTOCOL = "/p2pmesh/log/1.0.0"
MAX_LEDGER_REPLY = 4 * 1024 * 1024
MAX_JOB_FRAME = 64 * 1024
BLOB_CHUNK = 1 << 20
BLOB_TIMEOUT_S = 30.0


OLD_PEER = f"the worker does not serve {LOG_PROTOCOL} (a release without live logs)"


def _protocol_refused(exc: BaseException) -> bool:
    """Did multistream-select fail, i.e. the peer has no handler for the protocol asked?"""
    seen: BaseException | None = exc
    while seen is not None:
        if type(seen).__name__.startswith("Multiselect"):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def remote_peer(stream: Any) -> str:
    return str(stream.muxed_conn.peer_id)


class JobWire:
    """Direct streams for job messages and blobs, attached to a running ``MeshNet``."""

    def __init__(
        self,
        net: MeshNet,
        *,
        may_fetch: Callable[[str, str], bool],
        blob_path: Callable[[str], Any],
        ledger_blocks: Callable[[dict[str, Any]], list[bytes]] | None = None,
        log_chunk: Callable[[str, logs.LogRequest], Awaitable[logs.LogChunk | str]] | None = None,
    ) -> None:
        self.net = net
        self._may_fetch = may_fetch
        self._blob_path = blob_path
        self._ledger_blocks = ledger_blocks
        self._log_chunk = log_chunk
        net.set_stream_handler(JOB_PROTOCOL, self._serve_job)
        net.set_stream_handler(BLOB_PROTOCOL, self._serve_blob)
        net.set_stream_handler(LEDGER_PROTOCOL, self._serve_ledger)
        if log_chunk is not None:
            net.set_stream_handler(LOG_PROTOCOL, self._serve_log)

    @contextlib.asynccontextmanager
    async def _serving(self, stream: Any, what: str) -> AsyncIterator[None]:
        """A stream handler's ending: whatever a peer's broken or hostile stream raises is
        counted (``serve WHAT``) and logged at debug, never let out to stop the node, and the
        stream is closed in every case."""
        try:
            yield
        except (TransportError, DecodeError, OSError) as exc:
            self.net.stats.count(self.net.stats.stream_errors, f"serve {what}")
            log.debug("%s serve: %s", what, exc)
        except Exception as exc:
            self.net.stats.count(self.net.stats.stream_errors, f"serve {what}")
            log.debug("%s serve failed: %r", what, exc)
        finally:
            with contextlib.suppress(Exception):
                await stream.close()

    # -- live logs (PROTOCOL.md §7.5a) ----------------------------------------------------------
    async def _serve_log(self, stream: Any) -> None:
        async with self._serving(stream, "log"):
            peer = remote_peer(stream)
            frame = await read_frame(
                stream, max_bytes=logs.MAX_LOG_REQUEST, timeout_s=STREAM_TIMEOUT_S
            )
            try:
                req = logs.parse_log_request(frame)
            except (DecodeError, ValidationError) as exc:
                log.debug("log stream from %s: bad request: %s", peer, exc)
                reply = logs.build_log_refusal(f"bad request: {exc}")
            else:
                assert self._log_chunk is not None
                got = await self._log_chunk(peer, req)
                if isinstance(got, str):
                    reply = logs.build_log_refusal(got)
                else:
                    reply = logs.build_log_reply(got)
            await write_frame(stream, reply, timeout_s=STREAM_TIMEOUT_S)

    async def log_request(
        self, peer_id: str, addrs: tuple[str, ...], job_id: str, offset: int
    ) -> logs.LogChunk:
        """Ask a worker for job ``job_id``'s log from ``offset``.

        Raises ``logs.LogRefused`` (the worker's words), ``TransportError`` otherwise; a peer of
        a release without live logs is told apart (``OLD_PEER``), since it needs no retry.
        """
        pid = await self._connect(peer_id, addrs)
        try:
            stream = await self.net.open_stream(pid, LOG_PROTOCOL)
        except TransportError as exc:
            if _protocol_refused(exc):
                raise TransportError(OLD_PEER) from exc
            raise
        try:
            await write_frame(
                stream, logs.build_log_request(job_id, offset), timeout_s=STREAM_TIMEOUT_S
            )
            raw = await read_frame(
                stream,
                max_bytes=logs.MAX_LOG_REPLY,
                timeout_s=STREAM_TIMEOUT_S + logs.LOG_WAIT_S,
            )
            return logs.parse_log_reply(raw, asked=offset)
        except (DecodeError, ValidationError) as exc:
            raise TransportError(f"bad log reply: {exc}") from None
        finally:
            with contextlib.suppress(Exception):
                await stream.close()

    async def _serve_ledger(self, stream: Any) -> None:
        async with self._serving(stream, "ledger"):
            req = codec.decode(await read_frame(stream, max_bytes=1024, timeout_s=STREAM_TIMEOUT_S))
            blocks: list[bytes] = []
            if isinstance(req, dict) and self._ledger_blocks is not None:
                blocks = self._ledger_blocks(req)
            await write_frame(
                stream,
                codec.encode({"blocks": blocks}, max_bytes=MAX_LEDGER_REPLY),
                timeout_s=STREAM_TIMEOUT_S,
            )

    async def ledger_request(self, peer_id: str, request: dict[str, Any]) -> list[bytes]:
        """Ask a peer for ledger blocks (a range, or every head); raises ``TransportError``."""
        pid = await self._connect(peer_id, ())
        stream = await self.net.open_stream(pid, LEDGER_PROTOCOL)
        try:
            await write_frame(stream, codec.encode(request), timeout_s=STREAM_TIMEOUT_S)
            reply = codec.decode(
                await read_frame(stream, max_bytes=MAX_LEDGER_REPLY, timeout_s=STREAM_TIMEOUT_S),
                max_bytes=MAX_LEDGER_REPLY,
            )
        except DecodeError as exc:
            raise TransportError(f"bad ledger reply: {exc}") from None
        finally:
            with contextlib.suppress(Exception):
                await stream.close()
        blocks = reply.get("blocks") if isinstance(reply, dict) else None
        if not isinstance(blocks, list):
            raise TransportError("ledger reply without blocks")
        return [b for b in blocks[:256] if isinstance(b, bytes)]

    async def _connect(self, peer_id: str, addrs: tuple[str, ...]) -> Any:
        pid = ID.from_base58(peer_id)
        if pid not in self.net.host.get_connected_peers() and addrs:
            for addr in dial_order(addrs):
                try:
                    await self.net.connect_addr(peer_id, addr)
                    break
                except TransportError as exc:
                    log.debug("connect %s failed: %s", addr, exc)
        return pid

    async def send(self, peer_id: str, addrs: tuple[str, ...], kind: str, data: bytes) -> None:
        """Deliver one message; raises ``TransportError`` unless the peer acknowledged it."""
        pid = await self._connect(peer_id, addrs)
        stream = await self.net.open_stream(pid, JOB_PROTOCOL)
        try:
            await write_frame(
                stream, codec.encode({"kind": kind, "data": data}), timeout_s=STREAM_TIMEOUT_S
            )
            reply = codec.decode(
                await read_frame(stream, max_bytes=1024, timeout_s=STREAM_TIMEOUT_S)
            )
        except DecodeError as exc:
            raise TransportError(f"bad acknowledgement: {exc}") from None
        finally:
            with contextlib.suppress(Exception):
                await stream.close()
        if not isinstance(reply, dict) or reply.get("ok") is not True:
            raise TransportError(f"peer refused the message: {reply!r}"[:200])

    async def _serve_job(self, stream: Any) -> None:
        async with self._serving(stream, "job"):
            peer = remote_peer(stream)
            frame = await read_frame(stream, max_bytes=MAX_JOB_FRAME, timeout_s=STREAM_TIMEOUT_S)
            try:
                msg = codec.decode(frame, max_bytes=MAX_JOB_FRAME)
            except DecodeError as exc:
                # A whole frame that is not canonical msgpack is answered like any other
                # malformed request (PROTOCOL.md §7.5), so the sender learns it was refused.
                log.debug("job stream from %s: undecodable frame: %s", peer, exc)
                msg = None
            if (
                not isinstance(msg, dict)
                or set(msg) != {"kind", "data"}
                or msg["kind"] not in JOB_KINDS
                or not isinstance(msg["data"], bytes)
            ):
                await write_frame(stream, codec.encode({"ok": False}), timeout_s=STREAM_TIMEOUT_S)
                return
            from p2pmesh.core.events import MessageReceived

            # Shed under flood: answer "not taken" so the sender retries (PROTOCOL.md §7.5),
            # rather than "ok" for a message the node never sees.
            taken = self.net.inbound(MessageReceived(msg["kind"], msg["data"], peer), "job-stream")
            if taken:
                self.net.stats.count(self.net.stats.job_in, msg["kind"])
            reply = {"ok": True} if taken else {"ok": False, "error": "busy"}
            await write_frame(stream, codec.encode(reply), timeout_s=STREAM_TIMEOUT_S)

    async def _serve_blob(self, stream: Any) -> None:
        async with self._serving(stream, "blob"):
            peer = remote_peer(stream)
            req = codec.decode(await read_frame(stream, max_bytes=256, timeout_s=STREAM_TIMEOUT_S))
            if not isinstance(req, dict):
                req = {}
            digest = req.get("digest")
            if not isinstance(digest, str) or not self._may_fetch(peer, digest):
                await write_frame(
                    stream,
                    codec.encode({"ok": False, "error": "not available to you"}),
                    timeout_s=STREAM_TIMEOUT_S,
                )
                return
            path = self._blob_path(digest)
            size = path.stat().st_size
            # A resumed transfer asks for the bytes from ``offset`` on (PROTOCOL.md §7.6); an
            # offset we do not echo tells the fetcher that the whole blob follows.
            offset = req.get("offset", 0)
            head: dict[str, Any] = {"ok": True, "size": size}
            if isinstance(offset, int) and not isinstance(offset, bool) and 0 < offset <= size:
                head["offset"] = offset
            else:
                offset = 0
            await write_frame(stream, codec.encode(head), timeout_s=STREAM_TIMEOUT_S)
            with open(path, "rb") as f:
                f.seek(offset)
                while chunk := f.read(BLOB_CHUNK):
                    await write_frame(stream, chunk, timeout_s=BLOB_TIMEOUT_S)

    async def fetch(
        self, peer_id: str, addrs: tuple[str, ...], digest: str, size: int, writer: Any
    ) -> None:
        """Stream a blob into ``writer`` (a ``BlobWriter``); raises ``TransportError``."""
        pid = await self._connect(peer_id, addrs)
        stream = await self.net.open_stream(pid, BLOB_PROTOCOL)
        try:
            await write_frame(stream, codec.encode({"digest": digest}), timeout_s=STREAM_TIMEOUT_S)
            head = codec.decode(
                await read_frame(stream, max_bytes=1024, timeout_s=STREAM_TIMEOUT_S)
            )
            if not isinstance(head, dict) or head.get("ok") is not True:
                raise TransportError(f"peer refused blob: {head!r}"[:200])
            if head.get("size") != size:
                raise TransportError("peer announced a different size")
            got = 0
            while got < size:
                chunk = await read_frame(stream, max_bytes=BLOB_CHUNK, timeout_s=BLOB_TIMEOUT_S)
                if not chunk:
                    raise TransportError("empty chunk")
                writer.write(chunk)
                got += len(chunk)
        except DecodeError as exc:
            raise TransportError(f"bad blob header: {exc}") from None
        except ValidationError as exc:
            raise TransportError(str(exc)) from None
        finally:
            with contextlib.suppress(Exception):
                await stream.close()

    async def fetch_from(
        self,
        peer_id: str,
        addrs: tuple[str, ...],
        digest: str,
        *,
        offset: int,
        max_size: int,
        sink: Callable[[bytes, int], None],
    ) -> int:
        """Stream a blob of a size not known beforehand (an image layer), from ``offset`` on.

        ``sink(chunk, at)`` receives each chunk with its position in the blob: ``at`` restarts
        at 0 when the peer sends the whole blob instead of resuming. Returns the blob's size.
        Raises ``TransportError`` (also for a blob announced larger than ``max_size``).
        """
        pid = await self._connect(peer_id, addrs)
        stream = await self.net.open_stream(pid, BLOB_PROTOCOL)
        try:
            req: dict[str, Any] = {"digest": digest}
            if offset:
                req["offset"] = offset
            await write_frame(stream, codec.encode(req), timeout_s=STREAM_TIMEOUT_S)
            head = codec.decode(
                await read_frame(stream, max_bytes=1024, timeout_s=STREAM_TIMEOUT_S)
            )
            if not isinstance(head, dict) or head.get("ok") is not True:
                raise TransportError(f"peer refused blob: {head!r}"[:200])
            size = head.get("size")
            if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= max_size:
                raise TransportError(f"peer announced a blob of {size!r} bytes, limit {max_size}")
            at = offset if head.get("offset") == offset and offset else 0
            while at < size:
                chunk = await read_frame(stream, max_bytes=BLOB_CHUNK, timeout_s=BLOB_TIMEOUT_S)
                if not chunk or at + len(chunk) > size:
                    raise TransportError("blob chunk empty or past the announced size")
                sink(chunk, at)
                at += len(chunk)
            return size
        except DecodeError as exc:
            raise TransportError(f"bad blob header: {exc}") from None
        except ValidationError as exc:
            raise TransportError(str(exc)) from None
        finally:
            with contextlib.suppress(Exception):
                await stream.close()
