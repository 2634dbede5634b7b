"""``run_node``: the Trio daemon. One task owns ``core.Node``; everything else feeds it events.

Tasks in the node's nursery: the libp2p services (inside ``MeshNet.running``), the gossip
subscription reader, a one-second ticker, a periodic hardware re-profile, the effect dispatcher
(the only caller of ``Node.handle``), the SQLite writer, and the control socket server. A
SIGINT/SIGTERM cancels the nursery; libp2p is shut down in order inside its context manager.
"""

from __future__ import annotations

import collections
import json
import logging
import math
import os
import random
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from p2pmesh import __version__
from p2pmesh.adapters import hardware
from p2pmesh.adapters.docker import netns
from p2pmesh.adapters.libp2p.net import MeshNet
from p2pmesh.adapters.libp2p.pnet import Refusal
from p2pmesh.adapters.sqlite.store import Store, TrioStore, move_aside
from p2pmesh.bootstrap.peers import shipped_bootstrap
from p2pmesh.core.capability import Capabilities, Gpu
from p2pmesh.core.crypto import Ed25519Signer
from p2pmesh.core.effects import (
    AnswerServiceConnect,
    CompareOutputs,
    DhtGet,
    DhtPut,
    Dial,
    Effect,
    ExchangePeers,
    FetchHeads,
    FetchInputs,
    FetchOutputs,
    Log,
    Persist,
    Publish,
    RunContainer,
    SendMessage,
    StopContainer,
    StoreBlock,
    SyncChain,
)
from p2pmesh.core.events import (
    CancelRequested,
    LocalImagesChanged,
    PeerDiscovered,
    ProfileChanged,
    RecordReceived,
    Ticked,
)
from p2pmesh.core.node import Node, NodeConfig, verify_ledger
from p2pmesh.core.swarmkey import fingerprint
from p2pmesh.core.topics import TOPICS, event_of
from p2pmesh.daemon import metrics as metrics_mod
from p2pmesh.daemon.control import open_control_listener, serve_control
from p2pmesh.daemon.home import DB_FILE, NODE_JSON, SOCKET_FILE, ensure_home, load_or_create_key
from p2pmesh.daemon.http import HttpServer, Request, Response, json_response, parse_http_addr, text
from p2pmesh.daemon.jobs import DEFAULT_BID_WINDOW_S, JobRunner
from p2pmesh.daemon.natloop import NatLoop
from p2pmesh.daemon.page import status_page
from p2pmesh.daemon.service import ServiceRunner
from p2pmesh.daemon.settings import Settings
from p2pmesh.errors import ExecutorError, MeshError, StoreError

PERSIST_TABLES = frozenset({"peers", "meta", "frauds", "payments", "jobs", "proofs"})

TICK_S = 1.0
# A worker bids only for images it holds: an image built or loaded after start is seen within
# this long. Listing images is one engine request.
IMAGES_REFRESH_S = 5.0
REPROFILE_S = 30.0
MAX_EVENTS_KEPT = 200
_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}


@dataclass
class EventLog:
    """Recent events for the TUI and ``p2pmesh`` status; JSON lines on stderr when no TUI."""

    json_lines: bool
    level: int = 20
    recent: collections.deque[dict[str, Any]] = field(
        default_factory=lambda: collections.deque(maxlen=MAX_EVENTS_KEPT)
    )

    def __call__(self, level: str, msg: str, **fields: Any) -> None:
        if _LEVELS.get(level, 20) < self.level:
            return
        entry = {"ts": time.time(), "level": level, "msg": msg, **fields}
        self.recent.append(entry)
        if self.json_lines:
            sys.stderr.write(json.dumps(entry, default=str) + "\n")
            sys.stderr.flush()


def caps_from_profile(p: hardware.HardwareProfile, addrs: list[str], s: Settings) -> Capabilities:
    return Capabilities(
        addrs=tuple(addrs[:16]),
        cpus=p.cpus_logical,
        cpus_physical=p.cpus_physical,
        ram_mb=p.ram_mb,
        disk_free_mb=p.disk_free_mb,
        load_milli=int(p.load_1m * 1000),
        gpus=tuple(
            Gpu(g.name[:128], g.memory_mb, g.driver[:64], g.compute_capability[:16])
            for g in p.gpus[:16]
        ),
        executors=tuple(p.executors) if s.work else (),
        price=s.price,
        max_jobs=s.max_jobs if s.work else 0,
        work=s.work,
        allow_images=tuple(s.allow_images[:64]),
        agent=f"p2pmesh/{__version__}",
    )


class Daemon:
    def __init__(self, settings: Settings, log: EventLog) -> None:
        self.settings = settings
        self.log = log
        self.home = ensure_home(settings.home)
        self.signer = Ed25519Signer(load_or_create_key(self.home))
        self.store, self.stored = self._open_store()
        self.tstore = TrioStore(self.store)
        bootstrap = list(settings.bootstrap)
        if settings.use_shipped_bootstrap:
            bootstrap += [b for b in shipped_bootstrap() if b not in bootstrap]
        self.started_at = time.time()
        self.profile = hardware.profile(self.home, check_docker=settings.work)
        self.node = Node(
            NodeConfig(
                record_ttl_s=settings.record_ttl_s,
                bootstrap=tuple(bootstrap),
                spot_check=settings.spot_check,
                credit_base=settings.credit_base,
                prefix_diversity=settings.prefix_diversity,
                sortition=settings.sortition,
                newcomer_share=settings.newcomer_share,
                newcomer_checks=settings.newcomer_checks,
                hidden_replicas=settings.hidden_replicas,
                proof_exclusion=settings.proof_exclusion,
                fault_fork_ledger=settings.fault == "fork-ledger",
                connection_grace_s=settings.connection_grace_s,
                recover_window_s=settings.recover_window_s,
                image_pull=settings.pull,
                image_fetch=True,
                swarm_key_fingerprint=(
                    fingerprint(settings.swarm_psk) if settings.swarm_psk is not None else None
                ),
                service_refusal=netns.forwarding_refusal() if settings.work else "",
            ),
            self.signer,
            caps_from_profile(self.profile, [], settings),
            last_seq=int(self.stored["record_seq"]),
            started_at=self.started_at,
            rng=random.SystemRandom(),
        )
        self.events_send, self.events_recv = trio.open_memory_channel[Any](4096)
        # Unbounded: a write the core asked for is never dropped, and the owner task (which
        # cannot wait) never blocks on it. Writes are few per event and the event queue above
        # is bounded, so under overload this grows only as fast as events are handled.
        self.persist_send, self.persist_recv = trio.open_memory_channel[Persist](math.inf)
        self.persist_stats = {"batches": 0, "writes": 0, "coalesced": 0}
        self.http_addr = parse_http_addr(settings.http)
        self.net = MeshNet(
            load_or_create_key(self.home),
            self.events_send,
            local_records=self.node.records,
            metrics=self.http_addr is not None,
            psk=settings.swarm_psk,
            on_refused=self._psk_refused,
            relay_limits=settings.relay_limits,
            listen=list(settings.listen),
        )
        self.natloop = NatLoop(
            self.net,
            mode=settings.relay,
            bootstrap_ids=[b.rsplit("/p2p/", 1)[1] for b in bootstrap if "/p2p/" in b],
            peer_addrs=self.node.peer_addrs,
            on_addrs=self._addrs_changed,
            log=self.log,
        )
        self.http = HttpServer(self.http_routes(), self.log)
        self.libp2p_metrics = metrics_mod.libp2p_metrics() if self.http_addr else None
        self.registry = metrics_mod.make_registry(self.metrics_view, self.libp2p_metrics)
        self._dialling: set[str] = set()
        self._net_limiter = trio.CapacityLimiter(64)
        self.nursery: trio.Nursery | None = None
        self.jobs: JobRunner | None = None
        self.services: ServiceRunner | None = None

    async def _addrs_changed(self, addrs: list[str]) -> None:
        """Reachability or a relay reservation changed what we advertise: a new record."""
        await self.net.emit(ProfileChanged(caps_from_profile(self.profile, addrs, self.settings)))

    def _psk_refused(self, refusal: Refusal, count: int) -> None:
        self.log(
            "warning",
            "refused a connection: not a member of this private mesh",
            direction="inbound" if refusal.inbound else "outbound",
            remote=refusal.remote or "unknown",
            reason=refusal.reason,
            refused=count,  # from this address since the last such line
        )

    def _open_store(self) -> tuple[Store, dict[str, Any]]:
        """Open the database and read all it holds, before any task starts: damage is one
        StoreError line (no task group to wrap it). With ``--recover`` a damaged file is set
        aside and a fresh one marked as recovering (the same key: the same identity)."""
        path = self.home / DB_FILE
        store: Store | None = None
        try:
            store = Store(path)
            return store, store.startup_state()
        except StoreError as exc:
            if store is not None:
                store.close()
            if not self.settings.recover or "damaged" not in str(exc):
                raise
            aside = move_aside(path, time.time())
            self.log("warning", "damaged database set aside", kept=aside.name, error=str(exc))
        store = Store(path)
        store.set_meta("recovering", {"since": time.time(), "aside": aside.name})
        return store, store.startup_state()

    # -- effects -------------------------------------------------------------------------------
    def _faulty(self, eff: Effect) -> bool:
        """Deliberate misbehaviour (P2PMESH_FAULT): True when the effect is swallowed."""
        fault = self.settings.fault
        if fault == "no-show" and (
            isinstance(eff, FetchInputs)
            or (isinstance(eff, SendMessage) and eff.kind in ("status", "result"))
        ):
            self.log("warning", "FAULT no-show: swallowing", effect=type(eff).__name__)
            return True
        if fault == "slow" and isinstance(eff, SendMessage) and eff.kind == "result":
            assert self.nursery is not None and self.jobs is not None
            delay = self.settings.fault_slow_s
            self.log("warning", "FAULT slow: delaying result", seconds=delay)

            async def later() -> None:
                await trio.sleep(delay)
                assert self.jobs is not None
                await self.jobs.send_message(eff)

            self.nursery.start_soon(later)
            return True
        if fault == "crash-mid-job" and isinstance(eff, RunContainer):
            assert self.nursery is not None

            async def crash() -> None:
                await trio.sleep(1.0)
                self.log("error", "FAULT crash-mid-job: exiting now")
                os._exit(70)

            self.nursery.start_soon(crash)
        return False

    def dispatch(self, effects: list[Effect]) -> None:
        assert self.nursery is not None
        for eff in effects:
            if self.settings.fault and self._faulty(eff):
                continue
            handler = _EFFECTS.get(type(eff))
            if handler is None:
                self.log("error", "unknown effect", effect=repr(eff))
            else:
                handler(self, eff)

    # One handler per effect type of ``core.effects.Effect`` (tests/unit/test_face.py checks it).
    def _log_effect(self, eff: Log) -> None:
        self.log(eff.level, eff.msg, **eff.fields)

    def _persist(self, eff: Persist) -> None:
        if eff.table == "payments":
            # Durable with the proposal it describes: a restart must resend it.
            self.tstore.call_now(self.store.put_payment, eff.key, eff.value)
            return
        self.persist_send.send_nowait(eff)

    def _publish(self, eff: Publish) -> None:
        self._spawn(self._limited, self.net.publish, eff.topic, eff.data)

    def _dht_put(self, eff: DhtPut) -> None:
        self._spawn(self._limited, self.net.dht_put, eff.key, eff.value)

    def _dht_get_effect(self, eff: DhtGet) -> None:
        self._spawn(self._limited, self._dht_get, eff.key)

    def _dial_effect(self, eff: Dial) -> None:
        if eff.peer_id not in self._dialling:
            self._dialling.add(eff.peer_id)
            self._spawn(self._dial, eff.peer_id, eff.addrs)

    def _exchange(self, eff: ExchangePeers) -> None:
        self._spawn(self._limited, self.net.exchange_peers, eff.peer_id)

    def _send(self, eff: SendMessage) -> None:
        self._spawn(self._limited, self._jobs().send_message, eff)

    def _fetch_inputs(self, eff: FetchInputs) -> None:
        self._spawn(self._jobs().fetch_inputs, eff)

    def _run_container(self, eff: RunContainer) -> None:
        self._spawn(self._jobs().run_container, eff)

    def _stop_container(self, eff: StopContainer) -> None:
        self._jobs().stop_container(eff)

    def _fetch_outputs(self, eff: FetchOutputs) -> None:
        # The worker's addresses are looked up now, on the owner task, from its record.
        self._spawn(self._jobs().fetch_outputs, eff, self.node.peer_addrs(eff.worker))

    def _answer_service(self, eff: AnswerServiceConnect) -> None:
        assert self.services is not None
        self.services.answer(eff)

    def _compare(self, eff: CompareOutputs) -> None:
        self._spawn(self._jobs().compare_outputs, eff)

    def _store_block(self, eff: StoreBlock) -> None:
        # Durable before anything that depends on it is sent: a block of ours that a peer
        # holds but we lost would make our next block a fork.
        self.tstore.call_now(self.store.put_block, eff.author, eff.seq, eff.raw)

    def _sync_chain(self, eff: SyncChain) -> None:
        req = {"author": eff.author, "first": eff.first, "last": eff.last}
        self._spawn(self._limited, self._jobs().sync_chain, eff.peer_id, req)

    def _fetch_heads(self, eff: FetchHeads) -> None:
        self._spawn(self._limited, self._jobs().sync_chain, eff.peer_id, {"heads": True})

    def _spawn(self, fn: Callable[..., Any], *args: Any) -> None:
        assert self.nursery is not None
        self.nursery.start_soon(fn, *args)

    def _jobs(self) -> JobRunner:
        assert self.jobs is not None
        return self.jobs

    async def _limited(self, fn: Callable[..., Any], *args: Any) -> None:
        async with self._net_limiter:
            await fn(*args)

    async def _dht_get(self, key: str) -> None:
        value = await self.net.dht_get(key)
        if value is not None:
            self.net.inbound(RecordReceived(value, "dht"), "dht")

    async def _dial(self, peer_id: str, addrs: tuple[str, ...]) -> None:
        try:
            await self.net.dial(peer_id, addrs)
        finally:
            self._dialling.discard(peer_id)

    # -- tasks -----------------------------------------------------------------------------------
    async def _owner(self) -> None:
        async for event in self.events_recv:
            self.dispatch(self.node.handle(event, time.time()))

    async def _persister(self) -> None:
        """Write what the core asked to persist, in batches: everything queued while the last
        batch was being written goes in one transaction, and of several writes of one key (a
        requester job is persisted on every bid) only the last is made."""
        async for eff in self.persist_recv:
            batch = {(eff.table, eff.key): eff}
            while True:
                try:
                    more = self.persist_recv.receive_nowait()
                except trio.WouldBlock:
                    break
                key = (more.table, more.key)
                if key in batch:
                    self.persist_stats["coalesced"] += 1
                    del batch[key]  # the later write supersedes it, at its own place in order
                batch[key] = more
            writes = [e for e in batch.values() if e.table in PERSIST_TABLES]
            for e in batch.values():
                if e.table not in PERSIST_TABLES:
                    self.log("error", "unknown persist table", table=e.table)
            await self.tstore.call(self._write_batch, writes, time.time())
            self.persist_stats["batches"] += 1
            self.persist_stats["writes"] += len(writes)

    def _write_batch(self, writes: list[Persist], now: float) -> None:
        """On the store's worker thread: one transaction for the batch."""
        with self.store.transaction():
            for eff in writes:
                if eff.table == "peers":
                    self.store.put_peer(eff.key, eff.value, now)
                elif eff.table == "meta":
                    self.store.set_meta(eff.key, eff.value)
                elif eff.table == "frauds":
                    self.store.put_fraud(eff.key, eff.value)
                elif eff.table == "payments":
                    self.store.put_payment(eff.key, eff.value)
                elif eff.table == "proofs":
                    self.store.put_proof(eff.key, eff.value)
                else:  # jobs
                    role, _, job_id = eff.key.partition(":")
                    doc = eff.value
                    self.store.put_job(job_id, role, doc["state"], doc, now)

    async def _ticker(self) -> None:
        while True:
            await trio.sleep(TICK_S)
            for pid, addrs in self.net.take_mdns_peers():
                self.net.inbound(PeerDiscovered(pid, addrs), "mdns")
            await self.net.emit(Ticked())

    async def _image_lister(self) -> None:
        """Tell the core which images the engine holds, so that it bids only for those."""
        last: frozenset[str] | None = None
        first = True
        while True:
            try:
                images = await trio.to_thread.run_sync(self._jobs().executor.local_images)
            except ExecutorError as exc:
                self.log("warning", "cannot list local images", error=str(exc))
                images = last
            if first or images != last:
                await self.net.emit(LocalImagesChanged(images))
                last, first = images, False
            await trio.sleep(IMAGES_REFRESH_S)

    async def _reprofiler(self) -> None:
        while True:
            await trio.sleep(REPROFILE_S)
            self.profile = await trio.to_thread.run_sync(
                lambda: hardware.profile(self.home, check_docker=self.settings.work)
            )
            caps = caps_from_profile(self.profile, self.natloop.advertised(), self.settings)
            await self.net.emit(ProfileChanged(caps))

    async def _restore(self) -> list[Effect]:
        """Read what the last run stored and hand it to ``Node.restore`` (written once, in the
        core, and used by the simulator's restarts too)."""
        st = self.stored
        records, blocks, frauds, payments, rows = (
            st["records"],
            st["blocks"],
            st["frauds"],
            st["payments"],
            st["jobs"],
        )
        if self.settings.work and "docker" in self.profile.executors:
            try:
                removed = await trio.to_thread.run_sync(
                    self._jobs().executor.remove_stale, f"p2pmesh.node={self.node.peer_id[-8:]}"
                )
                if removed:
                    self.log("info", "removed containers left by a crash", count=removed)
            except Exception as exc:
                self.log("warning", "could not clean stale containers", error=str(exc))
        effects = self.node.restore(
            now=time.time(),
            records=records,
            blocks=blocks,
            frauds=frauds,
            payments=payments,
            jobs=[(row["role"], row["doc"]) for row in rows],
            recovering=bool(st["recovering"]),
            proofs=st["proofs"],
        )
        self.stored = {}
        if blocks:
            self.log("info", "ledger restored", blocks=len(blocks), pending=len(payments))
        return effects

    # -- control ---------------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        now = time.time()
        node = self.node.node_json(now)
        node["net"] = self.net.stats_json()
        node["nat"] = self.natloop.to_json()
        node["persist"] = dict(self.persist_stats)
        node["pid"] = os.getpid()
        node["http"] = self.http.url if self.http.port else None
        node["cache"] = self.jobs.cache.view() if self.jobs else None
        return {
            "node": node,
            "peers": self.node.peers_json(now),
            "jobs": self.job_rows(),
            "balance": self.node.balance(),
            "events": list(self.log.recent),
        }

    SNAPSHOT_JOBS = 25  # of each role, the most recent: the live view shows a handful

    def job_rows(self) -> list[dict[str, Any]]:
        """Jobs for the live view and ``status``: the fields a row shows, with a running
        container's elapsed time (the worker's job document has no clock of its own)."""
        since = self.jobs.running_since() if self.jobs else {}
        mono = time.monotonic()
        docs = self.node.jobs()
        out = []
        for role in ("requester", "worker"):
            for d in [d for d in docs if d.get("role") == role][-self.SNAPSHOT_JOBS :]:
                began = since.get(d["job_id"])
                out.append(
                    {
                        "job_id": d["job_id"],
                        "role": role,
                        "name": d.get("name"),
                        "image": d.get("image"),
                        "state": d.get("state"),
                        "created_at": d.get("created_at"),
                        "finished_at": d.get("finished_at"),
                        "running_s": None if began is None else mono - began,
                    }
                )
        return out

    def handlers(self) -> dict[str, Any]:
        async def id_(args: dict[str, Any]) -> Any:
            n = self.node.node_json(time.time())
            return {"peer_id": n["peer_id"], "public_key": n["public_key"], "addrs": n["addrs"]}

        async def peers(args: dict[str, Any]) -> Any:
            return self.node.peers_json(time.time())

        async def status(args: dict[str, Any]) -> Any:
            return self.snapshot()

        async def submit(args: dict[str, Any]) -> Any:
            assert self.jobs is not None
            path = args.get("job_file")
            if not isinstance(path, str):
                raise ValueError("job_file must be a path")
            left = self.node.recovering(time.time())
            if left:
                raise ValueError(
                    f"this node is recovering its ledger from the mesh; offer again in {left} s"
                )
            window = int(args.get("bid_window_s") or DEFAULT_BID_WINDOW_S)
            image_id = args.get("image_id") or ""
            if not isinstance(image_id, str):
                raise ValueError("image_id must be text")
            return await self.jobs.submit(path, max(1, min(window, 600)), image_id)

        async def jobs(args: dict[str, Any]) -> Any:
            return self.node.jobs(time.time())

        async def job(args: dict[str, Any]) -> Any:
            job_id = str(args.get("job_id", ""))
            doc = self.node.job(job_id, prefix=True, now=time.time())
            if doc is None:
                raise ValueError(f"no job {job_id!r} on this node")
            return doc

        def requested(job_id: str) -> dict[str, Any]:
            doc = self.node.job(job_id)
            if doc is None or doc["role"] != "requester":
                raise ValueError(f"no job {job_id!r} requested from this node")
            return doc

        async def cancel(args: dict[str, Any]) -> Any:
            job_id = str(args.get("job_id", ""))
            requested(job_id)
            await self.net.emit(CancelRequested(job_id))
            return {"job_id": job_id, "cancelling": True}

        async def connect(args: dict[str, Any]) -> Any:
            assert self.services is not None
            return await self.services.connect(args)

        async def disconnect(args: dict[str, Any]) -> Any:
            assert self.services is not None
            return await self.services.disconnect(args)

        async def export(args: dict[str, Any]) -> Any:
            job_id = str(args.get("job_id", ""))
            outputs = self.node.job_outputs(job_id)  # plain data, read here on the event loop
            if outputs is None:
                raise ValueError(f"no job {job_id!r} requested from this node")
            return await trio.to_thread.run_sync(
                self._jobs().export, job_id, outputs, str(args.get("dest", ""))
            )

        async def logs(args: dict[str, Any]) -> Any:
            job_id = str(args.get("job_id", ""))
            doc = self.node.job(job_id, prefix=True)
            if doc is not None and doc["role"] == "worker":
                # A job we run: its log so far (all of it once the run ended).
                text, offset, ended = b"", 0, False
                while not ended:
                    got = await self._jobs().log_chunk(job_id, offset, None, wait_s=0)
                    if isinstance(got, str) or not got.data:
                        break
                    text, offset, ended = text + got.data, got.next_offset, got.ended
                return {
                    "job_id": job_id,
                    "state": doc["state"],
                    "log": text.decode(errors="replace") if text or ended else None,
                }
            doc = requested(doc["job_id"] if doc is not None else job_id)
            outputs = self.node.job_outputs(doc["job_id"])
            assert outputs is not None
            log = self._jobs().logs(outputs["log_digests"])
            return {"job_id": doc["job_id"], "state": doc["state"], "log": log}

        async def log_tail(args: dict[str, Any]) -> Any:
            job_id = str(args.get("job_id", ""))
            doc = self.node.job(job_id, prefix=True)
            if doc is None:
                raise ValueError(f"no job {job_id!r} on this node")
            offset = args.get("offset", 0)
            if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
                raise ValueError("offset must be an integer >= 0")
            worker = args.get("worker")
            return await self._jobs().follow_log(
                doc["job_id"], offset, str(worker) if worker else None
            )

        async def reputation(args: dict[str, Any]) -> Any:
            peer = args.get("peer_id")
            return self.node.reputation(str(peer) if peer else None, time.time())

        async def balance(args: dict[str, Any]) -> Any:
            peer = args.get("peer_id")
            return self.node.balance(str(peer) if peer else None)

        async def ledger(args: dict[str, Any]) -> Any:
            peer = args.get("peer_id")
            out: dict[str, Any] = {}
            if args.get("verify"):
                # The copy is taken here, between two events of the owner task; the worker
                # thread checks that copy while the node goes on adding blocks.
                snap = self.node.ledger_snapshot()
                out["verify"] = await trio.to_thread.run_sync(verify_ledger, snap)
            return {**self.node.ledger_json(str(peer) if peer else None), **out}

        return {
            "balance": balance,
            "ledger": ledger,
            "reputation": reputation,
            "id": id_,
            "peers": peers,
            "status": status,
            "submit": submit,
            "jobs": jobs,
            "job": job,
            "cancel": cancel,
            "connect": connect,
            "disconnect": disconnect,
            "export": export,
            "logs": logs,
            "log-tail": log_tail,
        }

    # -- http ------------------------------------------------------------------------------------
    def metrics_view(self) -> dict[str, Any]:
        """What ``/metrics`` shows, read from the node's views and our counters, on the loop
        (a scrape is handled by a task of the daemon's own nursery, between two events)."""
        now = time.time()
        node = self.node.node_json(now)
        me = self.node.peer_id
        bal = self.node.balance()
        authors = self.node.chain_authors()
        running, seconds = self.jobs.containers(time.monotonic()) if self.jobs else (0, 0.0)
        q = self.events_send.statistics()
        return {
            "version": __version__,
            "uptime_s": now - self.started_at,
            "node": node,
            "net": self.net.stats_json(),
            "nat": self.natloop.to_json(),
            "jobs": metrics_mod.job_counts(self.node.jobs()),
            "containers_running": running,
            "container_seconds": seconds,
            "ledger": {
                "blocks": sum(len(self.node.chain(a)) for a in authors),
                "own_blocks": len(self.node.chain(me)),
                "chains": len(authors),
                "excluded": len(self.node.fraud_proofs()),
                "balance": bal["balance"],
                "earned": bal["earned"],
                "spent": bal["spent"],
                "pending": self.node.pending_payments(),
            },
            "queue": {
                "used": q.current_buffer_used,
                "size": q.max_buffer_size,
                "persist": self.persist_recv.statistics().current_buffer_used,
            },
            "http": {"requests": dict(self.http.stats.requests)},
        }

    # The control socket's read-only commands, served as JSON under /api/ by the same handlers.
    API_VIEWS = ("status", "peers", "jobs", "balance", "ledger", "reputation", "id")

    def http_routes(self) -> dict[str, Any]:
        control = self.handlers()

        async def page(req: Request) -> Response:
            now = time.time()
            since, mono = (self.jobs.running_since() if self.jobs else {}), time.monotonic()
            jobs = [
                {**d, "running_s": mono - since[d["job_id"]]} if d["job_id"] in since else d
                for d in self.node.jobs()
            ]
            html_ = status_page(
                self.snapshot(),
                jobs,
                self.node.balance(),
                now,
                version=__version__,
                http_url=self.http.url,
            )
            return Response(200, html_.encode(), "text/html; charset=utf-8")

        async def metrics(req: Request) -> Response:
            return Response(200, metrics_mod.exposition(self.registry), metrics_mod.CONTENT_TYPE)

        async def api(req: Request) -> Response:
            parts = req.path.rstrip("/").split("/")[2:]  # "/api/job/ID" -> ["job", "ID"]
            if not parts:
                return json_response({"views": [f"/api/{v}" for v in self.API_VIEWS]})
            if parts[0] == "job" and len(parts) == 2:
                args: dict[str, Any] = {"job_id": parts[1]}
            elif len(parts) == 1 and parts[0] in self.API_VIEWS:
                args = {}
            else:
                return text(404, "not found; see /api/")
            try:
                return json_response(await control[parts[0]](args))
            except ValueError as exc:
                return json_response({"error": str(exc)}, 404)

        return {"/": page, "/metrics": metrics, "/api": api, "/api/": api}

    def _announce_private(self) -> None:
        assert self.settings.swarm_psk is not None
        self.log(
            "info",
            "private mesh: only peers holding this swarm key can connect",
            swarm_key_fingerprint=fingerprint(self.settings.swarm_psk),
        )

    def write_node_json(self) -> None:
        doc = {
            "peer_id": self.node.peer_id,
            "http": self.http.url if self.http.port else None,
            "addrs": [f"{a}/p2p/{self.node.peer_id}" for a in self.net.listen_addrs()],
            "pid": os.getpid(),
            "started_at": self.started_at,
        }
        tmp = self.home / (NODE_JSON + ".tmp")
        tmp.write_text(json.dumps(doc, indent=2) + "\n")
        tmp.replace(self.home / NODE_JSON)

    # -- main ------------------------------------------------------------------------------------
    async def run(self, *, on_ready: Callable[[Daemon], None] | None = None) -> None:
        listener = await open_control_listener(self.home / SOCKET_FILE)
        http_listener = None
        try:
            if self.http_addr is not None:
                http_listener = await self.http.bind(*self.http_addr)
            async with self.net.running(list(self.settings.listen), mdns=self.settings.mdns):
                self.jobs = JobRunner(
                    self.home,
                    self.net,
                    self.node,
                    self.log,
                    self.node.peer_id[-8:],
                    fault=self.settings.fault,
                    fault_after=self.settings.fault_after,
                    bench_executor=self.settings.bench_executor,
                    store=self.store,
                    tstore=self.tstore,
                    pull=self.settings.pull,
                    cache_bytes=int(self.settings.cache_gb * (1 << 30)),
                )
                self.services = ServiceRunner(
                    self.net, self.jobs.wire, self.node, self.log, self.node.peer_id[-8:]
                )
                if self.settings.fault:
                    for _ in range(3):
                        self.log(
                            "warning",
                            f"FAULT INJECTION ACTIVE: {self.settings.fault} "
                            "(P2PMESH_ALLOW_FAULTS=1); this node misbehaves on purpose",
                        )
                if self.settings.bench_executor:
                    self.log(
                        "warning",
                        f"BENCHMARK EXECUTOR ACTIVE: {self.settings.bench_executor} "
                        "(P2PMESH_ALLOW_FAULTS=1); jobs here report a fixed output, nothing runs",
                    )
                for topic in TOPICS:
                    self.net.add_topic_validator(
                        topic.name,
                        lambda data, name=topic.name: self.node.validate_gossip(
                            name, data, time.time()
                        ),
                    )
                resumed = await self._restore()
                caps = caps_from_profile(self.profile, self.natloop.advertised(), self.settings)
                await self.net.emit(ProfileChanged(caps))
                self.write_node_json()
                if http_listener is not None:
                    self.log("info", "http listening", url=self.http.url)
                    if self.settings.http_public:
                        self.log(
                            "warning",
                            f"HTTP endpoint on {self.settings.http} (--http-public): anyone who "
                            "can reach it can read this node's status, peers, jobs and ledger",
                        )
                if self.settings.swarm_key is not None:
                    self._announce_private()
                self.log(
                    "info",
                    "node listening",
                    peer_id=self.node.peer_id,
                    addrs=[f"{a}/p2p/{self.node.peer_id}" for a in self.net.listen_addrs()],
                )
                async with trio.open_nursery() as nursery:
                    self.nursery = nursery
                    self.services.nursery = nursery
                    nursery.start_soon(self._owner)
                    nursery.start_soon(self._persister)
                    nursery.start_soon(self._ticker)
                    nursery.start_soon(self._reprofiler)
                    nursery.start_soon(self.natloop.run)
                    assert self.jobs is not None
                    nursery.start_soon(self.jobs.images.exporter)  # our images, on demand
                    if self.settings.work and (
                        "docker" in self.profile.executors or self.settings.bench_executor
                    ):
                        nursery.start_soon(self._image_lister)
                    for topic in TOPICS:
                        nursery.start_soon(self.net.subscribe_loop, topic.name, event_of)
                    nursery.start_soon(serve_control, listener, self.handlers(), self.log)
                    if http_listener is not None:
                        nursery.start_soon(self.http.serve, http_listener)
                    if self.net.metrics_events is not None and self.libp2p_metrics is not None:
                        nursery.start_soon(
                            metrics_mod.run_libp2p_metrics,
                            self.net.metrics_events,
                            self.libp2p_metrics,
                        )
                    self.dispatch(resumed)
                    if on_ready is not None:
                        on_ready(self)
        finally:
            self.nursery = None
            if self.jobs is not None:
                self.jobs.shutdown()
            for name in (SOCKET_FILE, NODE_JSON):
                p = self.home / name
                if p.exists():
                    p.unlink()
            self.store.close()


_EFFECTS: dict[type, Callable[[Daemon, Any], None]] = {
    Log: Daemon._log_effect,
    Persist: Daemon._persist,
    Publish: Daemon._publish,
    DhtPut: Daemon._dht_put,
    DhtGet: Daemon._dht_get_effect,
    Dial: Daemon._dial_effect,
    ExchangePeers: Daemon._exchange,
    SendMessage: Daemon._send,
    FetchInputs: Daemon._fetch_inputs,
    RunContainer: Daemon._run_container,
    StopContainer: Daemon._stop_container,
    FetchOutputs: Daemon._fetch_outputs,
    CompareOutputs: Daemon._compare,
    AnswerServiceConnect: Daemon._answer_service,
    StoreBlock: Daemon._store_block,
    SyncChain: Daemon._sync_chain,
    FetchHeads: Daemon._fetch_heads,
}


async def run_until_signal(daemon: Daemon, on_ready: Callable[[Daemon], None] | None) -> None:
    """Run the daemon; SIGINT/SIGTERM cancel it and we return normally (exit code 0)."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        try:
            async with trio.open_nursery() as outer:

                async def watch() -> None:
                    async for signum in signals:
                        daemon.log("info", "stopping", signal=signal.Signals(signum).name)
                        outer.cancel_scope.cancel()
                        return

                outer.start_soon(watch)
                await daemon.run(on_ready=on_ready)
                outer.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            # A refusal at start (a port or the home in use) is one line for the user, as the
            # CLI prints a MeshError, not a traceback through the task group.
            if len(group.exceptions) == 1 and isinstance(group.exceptions[0], MeshError):
                raise group.exceptions[0] from None
            raise


def quiet_libp2p_logging() -> None:
    # py-libp2p logs hundreds of warnings per run for routine DHT stream resets (LIBP2P-NOTES).
    for name in ("libp2p", "multiaddr", "zeroconf", "async_service"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    logging.basicConfig(level=logging.CRITICAL)
    # P2PMESH_LIBP2P_DEBUG=libp2p.relay,libp2p.host.autonat: those loggers' debug lines on
    # stderr, to see what NAT traversal (or anything else in py-libp2p) is doing.
    # (py-libp2p's own "libp2p" logger has no handler and does not propagate: give each one.)
    for name in filter(None, os.environ.get("P2PMESH_LIBP2P_DEBUG", "").split(",")):
        logger = logging.getLogger(name.strip())
        logger.setLevel(logging.DEBUG)
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
        logger.addHandler(handler)
        logger.propagate = False


__all__ = ["Daemon", "EventLog", "caps_from_profile", "quiet_libp2p_logging", "run_until_signal"]
