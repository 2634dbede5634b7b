"""``run_node``: the Trio daemon. One task owns ``core.Node``; everything else feeds it events.

Tasks in the node's nursery: the libp2p services (inside ``MeshNet.running``), the gossip
subscription reader, a one-second ticker, a periodic hardware re-profile, the effect dispatcher
(the only caller of ``Node.handle``), the SQLite writer, and the control socket server. A
SIGINT/SIGTERM cancels the nursery; libp2p is shut down in order inside its context manager.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
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
from p2pmesh.adapters.libp2p.net import MeshNet
from p2pmesh.adapters.sqlite.store import Store, TrioStore
from p2pmesh.bootstrap.peers import shipped_bootstrap
from p2pmesh.core.auction import provider as provider_mod
from p2pmesh.core.auction import requester as requester_mod
from p2pmesh.core.auction.messages import TOPIC_OFFERS, TOPIC_VERDICTS
from p2pmesh.core.capability import Capabilities, Gpu
from p2pmesh.core.crypto import Ed25519Signer
from p2pmesh.core.effects import (
    CompareOutputs,
    DhtGet,
    DhtPut,
    Dial,
    Effect,
    ExchangePeers,
    FetchInputs,
    FetchOutputs,
    Log,
    Persist,
    Publish,
    RunContainer,
    SendMessage,
    StopContainer,
)
from p2pmesh.core.events import (
    CancelRequested,
    MessageReceived,
    PeerDiscovered,
    ProfileChanged,
    RecordReceived,
    Ticked,
)
from p2pmesh.core.ledger.payments import (
    TOPIC_FRAUD,
    TOPIC_HEADS,
    FetchHeads,
    StoreBlock,
    SyncChain,
)
from p2pmesh.core.node import TOPIC_CAPABILITIES, Node, NodeConfig
from p2pmesh.daemon.control import open_control_listener, serve_control
from p2pmesh.daemon.home import DB_FILE, NODE_JSON, SOCKET_FILE, ensure_home, load_or_create_key
from p2pmesh.daemon.jobs import DEFAULT_BID_WINDOW_S, JobRunner
from p2pmesh.daemon.settings import Settings

TICK_S = 1.0
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
        self.store = Store(self.home / DB_FILE)
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
                fault_fork_ledger=settings.fault == "fork-ledger",
            ),
            self.signer,
            caps_from_profile(self.profile, [], settings),
            last_seq=int(self.store.get_meta("record_seq", 0)),
            started_at=self.started_at,
            rng=random.SystemRandom(),
        )
        self.events_send, self.events_recv = trio.open_memory_channel[Any](4096)
        self.persist_send, self.persist_recv = trio.open_memory_channel[Persist](4096)
        self.net = MeshNet(
            load_or_create_key(self.home),
            self.events_send,
            check_record=lambda data: self.node.check_gossip_record(data, time.time()),
            local_records=self.node.records,
        )
        self._dialling: set[str] = set()
        self._net_limiter = trio.CapacityLimiter(64)
        self.nursery: trio.Nursery | None = None
        self.jobs: JobRunner | None = None

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
            if isinstance(eff, Log):
                self.log(eff.level, eff.msg, **eff.fields)
            elif isinstance(eff, Persist) and eff.table == "payments":
                # Durable with the proposal it describes: a restart must resend it.
                self.tstore.call_now(self.store.put_payment, eff.key, eff.value)
            elif isinstance(eff, Persist):
                try:
                    self.persist_send.send_nowait(eff)
                except trio.WouldBlock:
                    self.log("error", "persist queue full; write dropped", table=eff.table)
            elif isinstance(eff, Publish):
                self.nursery.start_soon(self._limited, self.net.publish, eff.topic, eff.data)
            elif isinstance(eff, DhtPut):
                self.nursery.start_soon(self._limited, self.net.dht_put, eff.key, eff.value)
            elif isinstance(eff, DhtGet):
                self.nursery.start_soon(self._limited, self._dht_get, eff.key)
            elif isinstance(eff, Dial):
                if eff.peer_id not in self._dialling:
                    self._dialling.add(eff.peer_id)
                    self.nursery.start_soon(self._dial, eff.peer_id, eff.addrs)
            elif isinstance(eff, ExchangePeers):
                self.nursery.start_soon(self._limited, self.net.exchange_peers, eff.peer_id)
            elif isinstance(eff, SendMessage):
                assert self.jobs is not None
                self.nursery.start_soon(self._limited, self.jobs.send_message, eff)
            elif isinstance(eff, FetchInputs):
                assert self.jobs is not None
                self.nursery.start_soon(self.jobs.fetch_inputs, eff)
            elif isinstance(eff, RunContainer):
                assert self.jobs is not None
                self.nursery.start_soon(self.jobs.run_container, eff)
            elif isinstance(eff, StopContainer):
                assert self.jobs is not None
                self.jobs.stop_container(eff)
            elif isinstance(eff, FetchOutputs):
                assert self.jobs is not None
                self.nursery.start_soon(self.jobs.fetch_outputs, eff)
            elif isinstance(eff, StoreBlock):
                # Durable before anything that depends on it is sent: a block of ours that a
                # peer holds but we lost would make our next block a fork.
                self.tstore.call_now(self.store.put_block, eff.author, eff.seq, eff.raw)
            elif isinstance(eff, SyncChain):
                assert self.jobs is not None
                req = {"author": eff.author, "first": eff.first, "last": eff.last}
                self.nursery.start_soon(self._limited, self.jobs.sync_chain, eff.peer_id, req)
            elif isinstance(eff, FetchHeads):
                assert self.jobs is not None
                self.nursery.start_soon(
                    self._limited, self.jobs.sync_chain, eff.peer_id, {"heads": True}
                )
            elif isinstance(eff, CompareOutputs):
                assert self.jobs is not None
                self.nursery.start_soon(self.jobs.compare_outputs, eff)
            else:
                self.log("error", "unknown effect", effect=repr(eff))

    async def _limited(self, fn: Callable[..., Any], *args: Any) -> None:
        async with self._net_limiter:
            await fn(*args)

    async def _dht_get(self, key: str) -> None:
        value = await self.net.dht_get(key)
        if value is not None:
            self.net.emit(RecordReceived(value, "dht"))

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
        async for eff in self.persist_recv:
            now = time.time()
            if eff.table == "peers":
                await self.tstore.call(self.store.put_peer, eff.key, eff.value, now)
            elif eff.table == "meta":
                await self.tstore.call(self.store.set_meta, eff.key, eff.value)
            elif eff.table == "frauds":
                await self.tstore.call(self.store.put_fraud, eff.key, eff.value)
            elif eff.table == "payments":
                await self.tstore.call(self.store.put_payment, eff.key, eff.value)
            elif eff.table == "jobs":
                role, _, job_id = eff.key.partition(":")
                doc = eff.value
                await self.tstore.call(self.store.put_job, job_id, role, doc["state"], doc, now)
            else:
                self.log("error", "unknown persist table", table=eff.table)

    async def _ticker(self) -> None:
        while True:
            await trio.sleep(TICK_S)
            for pid, addrs in self.net.take_mdns_peers():
                self.net.emit(PeerDiscovered(pid, addrs))
            self.net.emit(Ticked())

    async def _reprofiler(self) -> None:
        while True:
            await trio.sleep(REPROFILE_S)
            self.profile = await trio.to_thread.run_sync(
                lambda: hardware.profile(self.home, check_docker=self.settings.work)
            )
            caps = caps_from_profile(self.profile, self.net.listen_addrs(), self.settings)
            self.net.emit(ProfileChanged(caps))

    async def _restore_jobs(self) -> list[Effect]:
        now = int(time.time())
        effects: list[Effect] = []
        blocks = await self.tstore.call(self.store.blocks)
        frauds = await self.tstore.call(self.store.frauds)
        pending = await self.tstore.call(self.store.payments)
        self.node.ledger.restore(blocks, frauds, pending)
        if blocks:
            self.log("info", "ledger restored", blocks=len(blocks), pending=len(pending))
        if self.settings.work and "docker" in self.profile.executors:
            assert self.jobs is not None
            try:
                removed = await trio.to_thread.run_sync(
                    self.jobs.executor.remove_stale, f"p2pmesh.node={self.node.peer_id[-8:]}"
                )
                if removed:
                    self.log("info", "removed containers left by a crash", count=removed)
            except Exception as exc:
                self.log("warning", "could not clean stale containers", error=str(exc))
        for row in await self.tstore.call(self.store.jobs):
            try:
                if row["role"] == "requester":
                    j = requester_mod.from_doc(row["doc"], self.node.peer_id, now)
                    self.node.requester.jobs[j.job_id] = j
                    if j.verdict_raw:
                        self.node.requester.replay_verdict(j.verdict_raw)
                elif row["role"] == "worker":
                    effects += self.node.provider.restore(row["doc"], now)
            except Exception as exc:
                self.log("error", "could not restore job", job=row["job_id"], error=repr(exc))
        return effects

    # -- control ---------------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        now = time.time()
        node = self.node.node_json(now)
        node["net"] = dataclasses.asdict(self.net.stats)
        node["pid"] = os.getpid()
        return {"node": node, "peers": self.node.peers_json(now), "events": list(self.log.recent)}

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
            window = int(args.get("bid_window_s") or DEFAULT_BID_WINDOW_S)
            return await self.jobs.submit(path, max(1, min(window, 600)))

        async def jobs(args: dict[str, Any]) -> Any:
            out = [
                {**requester_mod.job_view(j), "role": "requester"}
                for j in self.node.requester.jobs.values()
            ]
            out += [
                {**provider_mod.worker_view(w), "role": "worker"}
                for w in self.node.provider.jobs.values()
                if w.state != "bid"
            ]
            return sorted(out, key=lambda d: d.get("created_at") or 0)

        async def job(args: dict[str, Any]) -> Any:
            job_id = str(args.get("job_id", ""))
            j = self.node.requester.jobs.get(job_id)
            if j is not None:
                return {**requester_mod.job_view(j), "role": "requester"}
            w = self.node.provider.jobs.get(job_id)
            if w is not None:
                return {**provider_mod.worker_view(w), "role": "worker"}
            matches = [k for k in self.node.requester.jobs if k.startswith(job_id)]
            if job_id and len(matches) == 1:
                return {
                    **requester_mod.job_view(self.node.requester.jobs[matches[0]]),
                    "role": "requester",
                }
            raise ValueError(f"no job {job_id!r} on this node")

        async def cancel(args: dict[str, Any]) -> Any:
            job_id = str(args.get("job_id", ""))
            if job_id not in self.node.requester.jobs:
                raise ValueError(f"no job {job_id!r} requested from this node")
            self.net.emit(CancelRequested(job_id))
            return {"job_id": job_id, "cancelling": True}

        async def export(args: dict[str, Any]) -> Any:
            assert self.jobs is not None
            return await trio.to_thread.run_sync(
                self.jobs.export, str(args.get("job_id", "")), str(args.get("dest", ""))
            )

        async def logs(args: dict[str, Any]) -> Any:
            assert self.jobs is not None
            job_id = str(args.get("job_id", ""))
            j = self.node.requester.jobs.get(job_id)
            if j is None:
                raise ValueError(f"no job {job_id!r} requested from this node")
            return {"job_id": job_id, "state": j.state, "log": self.jobs.logs(job_id)}

        async def reputation(args: dict[str, Any]) -> Any:
            now = time.time()
            peer = args.get("peer_id")
            book = self.node.book
            if peer:
                matches = [
                    p
                    for p in {
                        *book.evidence,
                        *(e.record.peer_id for e in self.node.peers.entries()),
                    }
                    if p.endswith(str(peer).lstrip("…")) or p == peer
                ]
                if len(matches) != 1:
                    raise ValueError(f"no single peer matches {peer!r}")
                return book.explain(matches[0], now)
            known = {*book.evidence, *(e.record.peer_id for e in self.node.peers.entries())}
            return sorted((book.explain(p, now) for p in known), key=lambda d: -d["reputation"])

        async def balance(args: dict[str, Any]) -> Any:
            peer = args.get("peer_id") or self.node.peer_id
            return self.node.ledger.balance_json(str(peer))

        async def ledger(args: dict[str, Any]) -> Any:
            from p2pmesh.core.ledger.accounts import compute

            lm = self.node.ledger
            out: dict[str, Any] = {"self": self.node.peer_id}
            peer = args.get("peer_id")
            if args.get("verify"):
                report = await trio.to_thread.run_sync(lm.ledger.verify_all)
                books = compute(lm.ledger)
                report["balances_sum"] = books.total()
                report["balances_match"] = all(
                    books.get(p).balance == lm.account(p).balance for p in books.accounts
                )
                if report["balances_sum"] != 0 or not report["balances_match"]:
                    report["ok"] = False
                    report["problems"].append("balances do not sum to zero or do not match")
                out["verify"] = report
            chains = {}
            for author, chain in lm.ledger.chains.items():
                if peer and not author.endswith(str(peer)):
                    continue
                chains[author] = [
                    {
                        "seq": b.seq,
                        "kind": b.kind,
                        "hash": b.hash,
                        "prev": b.prev,
                        "job_id": b.tx.job_id,
                        "payer": b.tx.payer,
                        "payee": b.tx.payee,
                        "amount": b.tx.amount,
                        "ts": b.ts,
                    }
                    for b in chain[-200:]
                ]
            out["chains"] = chains
            out["balances"] = {p: lm.balance_json(p) for p in lm.live.books.accounts}
            out["excluded"] = sorted(lm.ledger.frauds)
            return out

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
            "export": export,
            "logs": logs,
        }

    def write_node_json(self) -> None:
        doc = {
            "peer_id": self.node.peer_id,
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
        try:
            async with self.net.running(list(self.settings.listen), mdns=self.settings.mdns):
                for raw in await self.tstore.call(self.store.peer_records):
                    self.net.emit(RecordReceived(raw, "store"))
                self.jobs = JobRunner(
                    self.home,
                    self.net,
                    self.node,
                    self.log,
                    self.node.peer_id[-8:],
                    fault=self.settings.fault,
                    fault_after=self.settings.fault_after,
                )
                if self.settings.fault:
                    for _ in range(3):
                        self.log(
                            "warning",
                            f"FAULT INJECTION ACTIVE: {self.settings.fault} "
                            "(P2PMESH_ALLOW_FAULTS=1); this node misbehaves on purpose",
                        )
                self.net.add_topic_validator(
                    TOPIC_OFFERS, lambda data: self.node.check_offer(data, time.time())
                )
                self.net.add_topic_validator(
                    TOPIC_VERDICTS, lambda data: self.node.check_verdict(data, time.time())
                )
                self.net.add_topic_validator(
                    TOPIC_HEADS, lambda data: self.node.check_block(data, time.time())
                )
                self.net.add_topic_validator(
                    TOPIC_FRAUD, lambda data: self.node.check_fraud(data, time.time())
                )
                resumed = await self._restore_jobs()
                caps = caps_from_profile(self.profile, self.net.listen_addrs(), self.settings)
                self.net.emit(ProfileChanged(caps))
                self.write_node_json()
                self.log(
                    "info",
                    "node listening",
                    peer_id=self.node.peer_id,
                    addrs=[f"{a}/p2p/{self.node.peer_id}" for a in self.net.listen_addrs()],
                )
                async with trio.open_nursery() as nursery:
                    self.nursery = nursery
                    nursery.start_soon(self._owner)
                    nursery.start_soon(self._persister)
                    nursery.start_soon(self._ticker)
                    nursery.start_soon(self._reprofiler)
                    nursery.start_soon(
                        self.net.subscribe_loop,
                        TOPIC_CAPABILITIES,
                        lambda data, sender: RecordReceived(data, "gossip", sender),
                    )
                    nursery.start_soon(
                        self.net.subscribe_loop,
                        TOPIC_OFFERS,
                        lambda data, sender: MessageReceived("offer", data, sender),
                    )
                    nursery.start_soon(
                        self.net.subscribe_loop,
                        TOPIC_VERDICTS,
                        lambda data, sender: MessageReceived("verdict", data, sender),
                    )
                    for topic, kind in ((TOPIC_HEADS, "head"), (TOPIC_FRAUD, "fraud")):
                        nursery.start_soon(
                            self.net.subscribe_loop,
                            topic,
                            lambda data, sender, kind=kind: MessageReceived(kind, data, sender),
                        )
                    nursery.start_soon(serve_control, listener, self.handlers(), self.log)
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


async def run_until_signal(daemon: Daemon, on_ready: Callable[[Daemon], None] | None) -> None:
    """Run the daemon; SIGINT/SIGTERM cancel it and we return normally (exit code 0)."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as outer:

            async def watch() -> None:
                async for signum in signals:
                    daemon.log("info", "stopping", signal=signal.Signals(signum).name)
                    outer.cancel_scope.cancel()
                    return

            outer.start_soon(watch)
            await daemon.run(on_ready=on_ready)
            outer.cancel_scope.cancel()


def quiet_libp2p_logging() -> None:
    # py-libp2p logs hundreds of warnings per run for routine DHT stream resets (LIBP2P-NOTES).
    for name in ("libp2p", "multiaddr", "zeroconf", "async_service"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    logging.basicConfig(level=logging.CRITICAL)


__all__ = ["Daemon", "EventLog", "caps_from_profile", "quiet_libp2p_logging", "run_until_signal"]
