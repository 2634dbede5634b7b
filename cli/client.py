"""The CLI's side of the control socket: one blocking request, one reply."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

from p2pmesh.daemon.home import SOCKET_FILE
from p2pmesh.errors import DaemonNotRunning, MeshError, TransportError

MAX_REPLY_BYTES = 64 * 1024 * 1024


def request(
    home: Path, cmd: str, args: dict[str, Any] | None = None, *, timeout: float = 30.0
) -> Any:
    path = home / SOCKET_FILE
    hint = f"start one with: p2pmesh up --home {home}"
    if not path.exists():
        raise DaemonNotRunning(f"no p2pmesh daemon is running for home {home}; {hint}")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        try:
            s.connect(str(path))
        except (ConnectionRefusedError, FileNotFoundError):
            raise DaemonNotRunning(
                f"no p2pmesh daemon is running for home {home}; {hint}"
            ) from None
        except PermissionError:
            raise TransportError(f"permission denied on {path}: is it your node?") from None
        s.sendall(json.dumps({"cmd": cmd, "args": args or {}}).encode() + b"\n")
        buf = bytearray()
        while b"\n" not in buf:
            chunk = s.recv(1 << 20)
            if not chunk:
                break
            buf += chunk
            if len(buf) > MAX_REPLY_BYTES:
                raise TransportError("reply from daemon too large")
    except TimeoutError:
        raise TransportError(f"the daemon did not answer within {timeout:.0f} s") from None
    finally:
        s.close()
    try:
        reply = json.loads(bytes(buf).split(b"\n", 1)[0])
    except json.JSONDecodeError:
        raise TransportError("the daemon sent a malformed reply") from None
    if not reply.get("ok"):
        err = MeshError(reply.get("error", "unknown error"))
        err.code = str(reply.get("code") or MeshError.code)  # e.g. "job_spec": exit 2
        raise err
    return reply.get("result")
