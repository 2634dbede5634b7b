"""Connect to a port inside a container that has no network (a service job, core/service.py).

A ``network: none`` container has its own network namespace holding only a loopback device, so
nothing on the host can reach its ports. A thread that enters that namespace (``setns(2)`` into
``/proc/PID/ns/net``, the container's PID from the engine) can: the socket it opens there is
bound to the container's loopback for good, and keeps working after the thread is gone. Only
that one fresh thread ever changes namespace, and it ends right after, so no other thread of the
daemon (Trio's worker threads are reused) is ever left in a container's namespace.

Entering another network namespace needs CAP_SYS_ADMIN (root, in practice); a worker without it
declines service jobs, with ``forwarding_refusal``'s reason.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import socket
import threading
from typing import Any

CLONE_NEWNET = 0x40000000
CONNECT_TIMEOUT_S = 10.0


class NetnsError(Exception):
    """The container's namespace could not be entered, or nothing answers on the port."""


def _setns(fd: int) -> None:
    if hasattr(os, "setns"):  # Python 3.12+
        os.setns(fd, CLONE_NEWNET)
        return
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _in_fresh_thread(ns_path: str, fn: Any) -> Any:
    """Run ``fn()`` in a new thread that first enters the network namespace at ``ns_path``."""
    box: dict[str, Any] = {}

    def body() -> None:
        try:
            fd = os.open(ns_path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                _setns(fd)
            finally:
                os.close(fd)
            box["value"] = fn()
        except BaseException as exc:  # handed to the caller's thread
            box["error"] = exc

    t = threading.Thread(target=body, name="p2pmesh-netns", daemon=True)
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box.get("value")


def forwarding_refusal() -> str:
    """Why this process cannot forward into containers ("" when it can): it tries entering
    its own network namespace, which needs the same right as entering a container's."""
    if not hasattr(os, "setns") and ctypes.util.find_library("c") is None:
        return "no setns(2) on this system"
    try:
        _in_fresh_thread(f"/proc/{os.getpid()}/ns/net", lambda: None)
    except PermissionError:
        return "entering a container's network namespace needs root (CAP_SYS_ADMIN)"
    except OSError as exc:
        return f"cannot enter network namespaces ({exc.strerror or exc})"[:120]
    return ""


def connect_in(pid: int, port: int, timeout_s: float = CONNECT_TIMEOUT_S) -> socket.socket:
    """A TCP socket connected to 127.0.0.1:``port`` in the network namespace of process ``pid``
    (blocking: call it from a worker thread)."""
    if pid <= 0:
        raise NetnsError("the container is not running")

    def dial() -> socket.socket:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.settimeout(timeout_s)
            s.connect(("127.0.0.1", port))
            s.settimeout(None)
            s.setblocking(False)
        except BaseException:
            s.close()
            raise
        return s

    try:
        return _in_fresh_thread(f"/proc/{pid}/ns/net", dial)  # type: ignore[no-any-return]
    except PermissionError as exc:
        raise NetnsError(f"cannot enter the container's network namespace: {exc}") from None
    except FileNotFoundError:
        raise NetnsError("the container is not running") from None
    except (ConnectionRefusedError, TimeoutError):
        raise NetnsError(f"nothing answers on port {port} in the container (yet)") from None
    except OSError as exc:
        raise NetnsError(f"cannot connect to port {port} in the container: {exc}") from None


def container_pid(name: str) -> int:
    """The host PID of a running container's first process (0: not running)."""
    import docker

    client = docker.from_env(timeout=10)
    try:
        c = client.containers.get(name)
        state = c.attrs.get("State") or {}
        return int(state.get("Pid") or 0) if state.get("Running") else 0
    except docker.errors.NotFound:
        return 0
    finally:
        client.close()
