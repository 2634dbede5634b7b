"""The local control endpoint: JSON lines over a Unix socket in the node home, mode 0600.

One request per connection: ``{"cmd": str, "args": {…}}\\n`` → ``{"ok": true, "result": …}\\n``
or ``{"ok": false, "error": str}\\n``. The socket's file mode (and the home's 0700) is the access
control: only the node's owner can talk to it.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

from p2pmesh.errors import ConfigError, MeshError

MAX_REQUEST_BYTES = 1024 * 1024
REQUEST_TIMEOUT_S = 10.0

Handler = Callable[[dict[str, Any]], Awaitable[Any]]


def socket_in_use(path: Path) -> bool:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(1.0)
    try:
        s.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        s.close()


async def open_control_listener(path: Path) -> trio.SocketListener:
    if path.exists() or path.is_symlink():
        if socket_in_use(path):
            raise ConfigError(
                f"another p2pmesh daemon is already running with this home ({path.parent})"
            )
        path.unlink()
    sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    # umask first so there is no window where the socket is reachable by others.
    old = os.umask(0o177)
    try:
        await sock.bind(str(path))
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    sock.listen(64)
    return trio.SocketListener(sock)


async def _read_line(stream: trio.SocketStream) -> bytes:
    buf = bytearray()
    while b"\n" not in buf:
        chunk = await stream.receive_some(65536)
        if not chunk:
            break
        buf += chunk
        if len(buf) > MAX_REQUEST_BYTES:
            raise ValueError("request too large")
    return bytes(buf.split(b"\n", 1)[0])


async def serve_control(
    listener: trio.SocketListener, handlers: dict[str, Handler], log: Callable[..., None]
) -> None:
    async def one(stream: trio.SocketStream) -> None:
        async with stream:
            reply: dict[str, Any]
            try:
                with trio.fail_after(REQUEST_TIMEOUT_S):
                    line = await _read_line(stream)
                req = json.loads(line)
                if not isinstance(req, dict) or not isinstance(req.get("cmd"), str):
                    raise ValueError("request must be {cmd, args}")
                handler = handlers.get(req["cmd"])
                if handler is None:
                    raise ValueError(f"unknown command {req['cmd']!r}")
                args = req.get("args") or {}
                if not isinstance(args, dict):
                    raise ValueError("args must be an object")
                reply = {"ok": True, "result": await handler(args)}
            except MeshError as exc:
                reply = {"ok": False, "error": str(exc), "code": exc.code}
            except (ValueError, trio.TooSlowError, json.JSONDecodeError) as exc:
                reply = {"ok": False, "error": f"bad request: {exc}", "code": "bad_request"}
            except Exception as exc:
                log("error", "control handler failed", error=repr(exc))
                reply = {"ok": False, "error": f"internal error: {exc!r}", "code": "internal"}
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await stream.send_all(json.dumps(reply, default=str).encode() + b"\n")

    await trio.serve_listeners(one, [listener])
