"""Service jobs in the daemon: the worker's forwarding and the requester's local listeners.

Worker: each service stream (``adapters/libp2p/service.py``) is put to the core as a
``ServiceConnectRequested`` event; the core answers with an ``AnswerServiceConnect`` effect,
which this module hands back to the waiting stream; an admitted one is connected into the
container's network namespace (``adapters/docker/netns.py``) and relayed. Its end is reported
as ``ServiceConnectionClosed``, which restarts the session's idle clock.

Requester: ``p2pmesh connect ID --listen HOST:PORT`` opens a TCP listener here; every
connection to it becomes one service stream to the job's worker. The listener closes when the
job ends, on ``disconnect``, or with the daemon.
"""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
from typing import Any

import trio
from libp2p.peer.id import ID

from p2pmesh.adapters.docker import netns
from p2pmesh.adapters.libp2p.service import ServiceWire, relay
from p2pmesh.core.effects import AnswerServiceConnect
from p2pmesh.core.events import ServiceConnectionClosed, ServiceConnectRequested
from p2pmesh.errors import MeshError, TransportError

FINAL = frozenset({"done", "failed", "timeout", "cancelled", "no-bids", "inconclusive"})
ADMIT_TIMEOUT_S = 10.0
MAX_LISTENERS = 16
MAX_LOCAL_CONNECTIONS = 64  # per listener: the worker admits fewer; this bounds our own sockets


class ServiceError(MeshError):
    code = "service"


class ServiceRunner:
    def __init__(self, net: Any, jobwire: Any, node: Any, log: Any, short_id: str) -> None:
        self.net = net
        self.jobwire = jobwire  # for ``_connect`` (dial a peer by its addresses)
        self.node = node
        self.log = log
        self.short_id = short_id
        self._ids = itertools.count(1)
        self._waiting: dict[int, tuple[trio.Event, list[AnswerServiceConnect]]] = {}
        self.listeners: dict[str, tuple[trio.CancelScope, str, str]] = {}
        self.nursery: trio.Nursery | None = None
        self._pids: dict[str, int] = {}  # container name -> its PID on the host
        self.wire = ServiceWire(net, admit=self._admit, dial=self._dial, closed=self._closed)

    # -- worker ---------------------------------------------------------------------------------
    def answer(self, eff: AnswerServiceConnect) -> None:
        """The effect handler (on the owner task): wake the stream that asked."""
        waiting = self._waiting.get(eff.conn_id)
        if waiting is not None:
            waiting[1].append(eff)
            waiting[0].set()

    async def _admit(self, job_id: str, peer: str, probe: bool) -> tuple[bool, str, int, int]:
        conn_id = next(self._ids)
        done = trio.Event()
        box: list[AnswerServiceConnect] = []
        self._waiting[conn_id] = (done, box)
        try:
            if not self.net.inbound(
                ServiceConnectRequested(job_id, peer, conn_id, probe), "service-stream"
            ):
                return False, "the worker is busy; try again", 0, -1
            with trio.move_on_after(ADMIT_TIMEOUT_S):
                await done.wait()
        finally:
            self._waiting.pop(conn_id, None)
        if not box:
            return False, "the worker did not decide in time", 0, -1
        a = box[0]
        if a.ok and not probe:
            return True, "", a.port, conn_id
        return a.ok, a.reason, a.port, -1

    async def _dial(self, job_id: str, port: int) -> trio.SocketStream:
        name = f"p2pmesh-{job_id[:16]}-{self.short_id}"
        try:
            # The engine is asked once per container, not per connection (a third of a
            # connection's set-up time otherwise); a failed dial asks again.
            pid = self._pids.get(name) or await trio.to_thread.run_sync(netns.container_pid, name)
            try:
                sock = await trio.to_thread.run_sync(netns.connect_in, pid, port)
            except netns.NetnsError:
                self._pids.pop(name, None)
                raise
            if len(self._pids) > 256:
                self._pids.clear()
            self._pids[name] = pid
        except netns.NetnsError as exc:
            raise ServiceError(str(exc)) from None
        except Exception as exc:
            raise ServiceError(f"cannot reach the container: {exc}"[:200]) from None
        return trio.SocketStream(trio.socket.from_stdlib_socket(sock))

    async def _closed(self, job_id: str, conn_id: int) -> None:
        await self.net.emit(ServiceConnectionClosed(job_id, conn_id))

    # -- requester ------------------------------------------------------------------------------
    def _target(self, job_id: str, peer: str | None) -> tuple[str, str, tuple[str, ...]]:
        """(job_id, worker, worker addresses) for a connect; refuses what cannot work."""
        doc = self.node.job(job_id, prefix=True)
        if doc is not None and doc.get("role") == "requester":
            job_id = doc["job_id"]
            service = doc.get("service")
            if service is None:
                raise ServiceError(f"job {job_id[:12]} is not a service job")
            if doc["state"] in FINAL:
                raise ServiceError(f"job {job_id[:12]} has ended ({doc['state']})")
            worker = peer or service.get("worker")
            if not worker:
                raise ServiceError(
                    f"job {job_id[:12]} is not running yet ({doc['state']}); try again when "
                    "`p2pmesh job` says running"
                )
        elif peer:
            worker = peer  # not our job: the worker decides (and refuses a non-requester)
        else:
            raise ServiceError(
                f"no job {job_id!r} requested from this node (name the worker with --peer to "
                "ask it anyway)"
            )
        if len(job_id) != 32:
            raise ServiceError("give the whole job ID (32 hex digits) of a job not requested here")
        return job_id, worker, tuple(self.node.peer_addrs(worker))

    async def connect(self, args: dict[str, Any]) -> dict[str, Any]:
        """Control command ``connect``: check with the worker, then listen locally."""
        assert self.nursery is not None
        job_id, worker, addrs = self._target(str(args.get("job_id", "")), args.get("peer"))
        host, port = _listen_addr(str(args.get("listen") or "127.0.0.1:0"))
        if job_id in self.listeners:
            where = self.listeners[job_id][1]
            raise ServiceError(f"already listening for job {job_id[:12]} on {where}")
        if len(self.listeners) >= MAX_LISTENERS:
            raise ServiceError(f"at most {MAX_LISTENERS} service listeners at once")
        try:
            pid = await self.jobwire._connect(worker, addrs)
            await self.wire.open(pid, job_id, probe=True)
        except TransportError as exc:
            raise ServiceError(f"the worker refused: {exc}") from None
        try:
            listeners = await trio.open_tcp_listeners(port, host=host)
        except OSError as exc:
            raise ServiceError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
        bound = listeners[0].socket.getsockname()
        where = f"{bound[0]}:{bound[1]}"
        scope = trio.CancelScope()
        self.listeners[job_id] = (scope, where, worker)
        self.nursery.start_soon(self._serve, job_id, worker, pid, listeners, scope)
        self.log("info", "service listener open", job=job_id, listen=where, worker=worker)
        return {"job_id": job_id, "listen": where, "worker": worker}

    async def disconnect(self, args: dict[str, Any]) -> dict[str, Any]:
        job_id = str(args.get("job_id", ""))
        for jid, (scope, where, _) in list(self.listeners.items()):
            if jid.startswith(job_id) and job_id:
                scope.cancel()
                return {"job_id": jid, "closed": where}
        raise ServiceError(f"no service listener for job {job_id!r}")

    def listening(self) -> dict[str, str]:
        return {jid: where for jid, (_, where, _) in self.listeners.items()}

    async def _serve(
        self, job_id: str, worker: str, pid: ID, listeners: list[Any], scope: trio.CancelScope
    ) -> None:
        limiter = trio.CapacityLimiter(MAX_LOCAL_CONNECTIONS)
        try:
            with scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._watch, job_id, nursery.cancel_scope)

                    async def one(sock: trio.SocketStream) -> None:
                        async with limiter:
                            await self._tunnel(job_id, pid, sock)

                    await trio.serve_listeners(one, listeners, handler_nursery=nursery)
        finally:
            self.listeners.pop(job_id, None)
            for ls in listeners:
                with contextlib.suppress(Exception):
                    await ls.aclose()
            self.log("info", "service listener closed", job=job_id)

    async def _watch(self, job_id: str, scope: trio.CancelScope) -> None:
        """Close the listener once the job is over (ours) or its worker ends the session."""
        while True:
            await trio.sleep(1.0)
            doc = self.node.job(job_id)
            if doc is None or doc.get("role") != "requester":
                continue  # not our job: the worker refuses each connection once it has ended
            if doc["state"] in FINAL:
                scope.cancel()
                return

    async def _tunnel(self, job_id: str, pid: ID, sock: trio.SocketStream) -> None:
        async with sock:
            try:
                stream = await self.wire.open(pid, job_id, probe=False)
            except TransportError as exc:
                self.log("warning", "service connection refused", job=job_id, error=str(exc))
                return
            try:
                await relay(stream, sock)
            finally:
                with contextlib.suppress(Exception):
                    await stream.reset()


def _listen_addr(text: str) -> tuple[str, int]:
    host, sep, port_s = text.rpartition(":")
    if not sep or not port_s.isdigit() or not 0 <= int(port_s) <= 65535:
        raise ServiceError(f"--listen takes HOST:PORT (e.g. 127.0.0.1:8888), got {text!r}")
    host = host.strip("[]") or "127.0.0.1"
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ServiceError(f"--listen needs an IP address, got {host!r}") from None
    if not ip.is_loopback:
        # The tunnel has no login of its own: whoever reaches the port uses the session.
        raise ServiceError(f"--listen must be a loopback address (127.0.0.1 or ::1), got {host}")
    return host, int(port_s)
