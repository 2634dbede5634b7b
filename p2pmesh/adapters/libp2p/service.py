"""The service stream ``/p2pmesh/service/1.0.0``: a TCP connection carried over libp2p
(PROTOCOL.md §7.13).

The requester opens a stream to the worker running its service job and writes one frame,
``{"job_id": ID, "probe": BOOL}``. The worker asks its node whether that peer may connect
(the decision is the core's, ``core/service.py``), connects to the container's port, and answers
one frame ``{"ok": true}`` or ``{"ok": false, "error": TEXT}``. After ``ok`` (and never for a
probe) the stream carries the connection's raw bytes both ways; a half-close (FIN) on either
side is passed on as one, and a reset or error ends both.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from p2pmesh.adapters.libp2p.streams import read_frame, write_frame
from p2pmesh.core import codec
from p2pmesh.errors import DecodeError, TransportError

log = logging.getLogger(__name__)

SERVICE_PROTOCOL = "/p2pmesh/service/1.0.0"
MAX_REQUEST = 256
MAX_REPLY = 1024
STREAM_TIMEOUT_S = 10.0
CHUNK = 64 * 1024
_JOB_ID = re.compile(r"[0-9a-f]{32}")

# (job_id, peer, probe) -> (ok, error, port, conn_id)
Admit = Callable[[str, str, bool], Awaitable[tuple[bool, str, int, int]]]
# (job_id, port) -> a connected trio stream into the container
Dial = Callable[[str, int], Awaitable[Any]]
# (job_id, conn_id) -> None, when a forwarded connection ends
Closed = Callable[[str, int], Awaitable[None]]


def parse_request(frame: bytes) -> tuple[str, bool]:
    """The request frame, checked: raises ``DecodeError`` for anything but the two fields."""
    req = codec.decode(frame, max_bytes=MAX_REQUEST)
    if (
        not isinstance(req, dict)
        or set(req) != {"job_id", "probe"}
        or not isinstance(req["job_id"], str)
        or not _JOB_ID.fullmatch(req["job_id"])
        or not isinstance(req["probe"], bool)
    ):
        raise DecodeError('a service request is {"job_id": 32 hex, "probe": bool}')
    return req["job_id"], req["probe"]


async def relay(stream: Any, sock: Any) -> None:
    """Copy bytes both ways between a libp2p stream and a trio stream until both ends close.

    A clean end of one direction is passed on as a half-close, so a client that shuts its
    write side still gets its answer; an error in either direction ends the pair.
    """
    async with trio.open_nursery() as nursery:

        async def to_stream() -> None:
            try:
                while data := await sock.receive_some(CHUNK):
                    await stream.write(data)
            except Exception:
                nursery.cancel_scope.cancel()
                return
            with contextlib.suppress(Exception):
                await stream.close_write()

        async def to_sock() -> None:
            try:
                while True:
                    try:
                        data = await stream.read(CHUNK)
                    except Exception as exc:
                        if type(exc).__name__ == "StreamEOF":
                            break
                        raise
                    if not data:
                        break
                    await sock.send_all(data)
            except Exception:
                nursery.cancel_scope.cancel()
                return
            with contextlib.suppress(Exception):
                await sock.send_eof()

        nursery.start_soon(to_stream)
        nursery.start_soon(to_sock)


class ServiceWire:
    """Serves the service protocol on a worker, and opens it from a requester."""

    def __init__(self, net: Any, *, admit: Admit, dial: Dial, closed: Closed) -> None:
        self.net = net
        self._admit = admit
        self._dial = dial
        self._closed = closed
        net.set_stream_handler(SERVICE_PROTOCOL, self._serve)

    async def _reply(self, stream: Any, ok: bool, error: str = "") -> None:
        body: dict[str, Any] = {"ok": True} if ok else {"ok": False, "error": error[:400]}
        await write_frame(stream, codec.encode(body), timeout_s=STREAM_TIMEOUT_S)

    async def _serve(self, stream: Any) -> None:
        job_id, conn_id, sock = "", -1, None
        clean = False  # ended as the protocol says: close, so the last frame is read first
        try:
            peer = str(stream.muxed_conn.peer_id)
            frame = await read_frame(stream, max_bytes=MAX_REQUEST, timeout_s=STREAM_TIMEOUT_S)
            try:
                req_job, probe = parse_request(frame)
            except DecodeError as exc:
                await self._reply(stream, False, f"malformed request: {exc}")
                clean = True
                return
            ok, error, port, conn = await self._admit(req_job, peer, probe)
            if not ok or probe:
                await self._reply(stream, ok, error)
                clean = True
                return
            job_id, conn_id = req_job, conn
            try:
                sock = await self._dial(job_id, port)
            except Exception as exc:
                await self._reply(stream, False, str(exc) or type(exc).__name__)
                clean = True
                return
            await self._reply(stream, True)
            await relay(stream, sock)
            clean = True
        except (TransportError, DecodeError) as exc:
            self.net.stats.count(self.net.stats.stream_errors, "serve service")
            log.debug("service stream: %s", exc)
        except Exception as exc:
            self.net.stats.count(self.net.stats.stream_errors, "serve service")
            log.debug("service stream failed: %r", exc)
        finally:
            if sock is not None:
                with contextlib.suppress(Exception):
                    await sock.aclose()
            # A reset would overtake an answer still on its way (the asker would read
            # "stream reset" instead of the reason); a half-close lets it arrive first.
            with contextlib.suppress(Exception):
                await (stream.close() if clean else stream.reset())
            if conn_id >= 0:
                with trio.CancelScope(shield=True):
                    await self._closed(job_id, conn_id)

    async def open(self, pid: Any, job_id: str, *, probe: bool) -> Any:
        """A stream to the service of ``job_id`` on peer ``pid``, admitted (for a probe: only
        checked, then closed); raises ``TransportError`` with the worker's reason otherwise."""
        stream = await self.net.open_stream(pid, SERVICE_PROTOCOL)
        try:
            await write_frame(
                stream,
                codec.encode({"job_id": job_id, "probe": probe}),
                timeout_s=STREAM_TIMEOUT_S,
            )
            # A dial into the container may take up to its own 10 s before the answer.
            reply = codec.decode(
                await read_frame(stream, max_bytes=MAX_REPLY, timeout_s=2 * STREAM_TIMEOUT_S)
            )
        except DecodeError as exc:
            with contextlib.suppress(Exception):
                await stream.reset()
            raise TransportError(f"bad answer from the worker: {exc}") from None
        except BaseException:
            with contextlib.suppress(Exception):
                await stream.reset()
            raise
        if not isinstance(reply, dict) or reply.get("ok") is not True:
            with contextlib.suppress(Exception):
                await stream.reset()
            error = reply.get("error") if isinstance(reply, dict) else None
            raise TransportError(str(error)[:400] if error else f"refused: {reply!r}"[:200])
        if probe:
            with contextlib.suppress(Exception):
                await stream.close()
        return stream
