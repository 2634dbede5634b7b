"""The node's HTTP endpoint: ``/metrics``, the status page ``/`` and ``/api/…``, read-only.

A deliberately small HTTP/1.1 server on trio sockets, in the daemon's own Trio loop: one
request per connection (``Connection: close``), GET and HEAD only, no request body. Every
request is bounded (header bytes, header count, wall time, concurrent connections); anything
malformed gets a 400 and the connection is closed, never an exception out of the server.

Access control: loopback by default; any other address must be asked for (``--http-public``).
Whatever the address, a request whose ``Host`` header does not name the bound address is
refused with 403, so a web page that a browser loaded from elsewhere cannot reach the node
through a DNS name rebound to 127.0.0.1 (DNS rebinding). IP literals cannot be rebound, so on
a wildcard bind (``0.0.0.0``, ``::``) any IP literal with the right port is accepted; a DNS
name only as ``localhost`` on a loopback bind.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from p2pmesh.errors import ConfigError

DEFAULT_HTTP = "127.0.0.1:8484"
# A taken port is not fatal: the next free one is used, as far as this many above it.
PORT_TRIES = 32
MAX_HEADER_BYTES = 16 * 1024
MAX_HEADERS = 64
REQUEST_TIMEOUT_S = 10.0
MAX_CONNECTIONS = 32
MAX_RESPONSE_BYTES = 32 * 1024 * 1024

REASONS = {
    200: "OK",
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    413: "Content Too Large",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
    505: "HTTP Version Not Supported",
}

# The page has inline CSS and nothing else: no script, no image, no frame, no form target.
CSP = "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; frame-ancestors 'none'"


class BadRequest(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    path: str  # without the query string
    query: str
    version: str
    headers: dict[str, str]  # lower-case names


@dataclass(slots=True)
class Response:
    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)


def text(status: int, msg: str) -> Response:
    return Response(status, (msg + "\n").encode())


def json_response(value: Any, status: int = 200) -> Response:
    body = json.dumps(value, indent=2, sort_keys=True, default=str).encode() + b"\n"
    return Response(status, body, "application/json")


# -- the address --------------------------------------------------------------------------------
def parse_http_addr(value: str) -> tuple[str, int] | None:
    """``off`` → None; ``HOST:PORT`` or ``[V6]:PORT`` → (host, port). HOST is an IP literal or
    ``localhost`` (a name that resolves elsewhere would make the Host check meaningless)."""
    v = value.strip()
    if v.lower() in ("off", "no", "none", "false", ""):
        return None
    if v.startswith("["):
        host, sep, port_s = v[1:].partition("]:")
        if not sep:
            raise ConfigError(f"http: {value!r} is not [IPV6]:PORT")
    else:
        host, sep, port_s = v.rpartition(":")
        if not sep or ":" in host:
            raise ConfigError(f"http: {value!r} is not HOST:PORT (IPv6 as [ADDR]:PORT), or off")
    if host == "localhost":
        host = "127.0.0.1"
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ConfigError(f"http: {host!r} is not an IP address (or localhost)") from None
    if not port_s.isdigit() or not 0 <= int(port_s) <= 65535:
        raise ConfigError(f"http: port {port_s!r} is not in 0..65535")
    return host, int(port_s)


def is_loopback(host: str) -> bool:
    return ipaddress.ip_address(host).is_loopback


def url_of(host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host else host
    if ipaddress.ip_address(host).is_unspecified:
        # What a user on this machine can open; other machines use one of its addresses.
        shown = "127.0.0.1" if ":" not in host else "[::1]"
    return f"http://{shown}:{port}/"


def host_allowed(header: str | None, bound_host: str, bound_port: int) -> bool:
    """Does a ``Host`` header name the address we are bound to (see the module doc)?"""
    if not header or len(header) > 300:
        return False
    h = header.strip().lower()
    if h.startswith("["):
        name, sep, port_s = h[1:].partition("]")
        if port_s and not port_s.startswith(":"):
            return False
        port_s = port_s[1:]
    else:
        name, sep, port_s = h.rpartition(":")
        if not sep:
            name, port_s = h, ""
        if ":" in name:
            return False
    # An absent port means 80, which is only right when we are bound to 80.
    port = int(port_s) if port_s.isdigit() else (80 if port_s == "" else -1)
    if port != bound_port:
        return False
    bound = ipaddress.ip_address(bound_host)
    if name == "localhost":
        return bound.is_loopback or bound.is_unspecified
    try:
        ip = ipaddress.ip_address(name)
    except ValueError:
        return False  # a DNS name: exactly what rebinding uses
    if bound.is_unspecified:
        return ip.version == bound.version  # an IPv6 wildcard is bound v6-only
    return ip == bound


# -- parsing ----------------------------------------------------------------------------------
_TOKEN = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


def parse_request(head: bytes) -> Request:
    """The request line and headers (``head`` ends before the blank line). BadRequest if it is
    not well-formed HTTP/1.x."""
    try:
        text_ = head.decode("latin-1")
    except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes every byte
        raise BadRequest(400, "undecodable request") from None
    lines = text_.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3:
        raise BadRequest(400, "malformed request line")
    method, target, version = parts
    if not method or not set(method) <= _TOKEN:
        raise BadRequest(400, "malformed method")
    if version not in ("HTTP/1.1", "HTTP/1.0"):
        if version.startswith("HTTP/"):
            raise BadRequest(505, "only HTTP/1.0 and HTTP/1.1")
        raise BadRequest(400, "malformed version")
    if not target.startswith("/") or any(ord(c) <= 32 or ord(c) >= 127 for c in target):
        raise BadRequest(400, "malformed target")
    path, _, query = target.partition("?")
    headers: dict[str, str] = {}
    if len(lines) - 1 > MAX_HEADERS:
        raise BadRequest(431, "too many headers")
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name or not set(name) <= _TOKEN:
            # Also refuses obsolete line folding (a line starting with white space).
            raise BadRequest(400, "malformed header")
        key = name.lower()
        if key in ("host", "content-length") and key in headers:
            raise BadRequest(400, f"duplicate {key}")
        value = value.strip(" \t")
        if any(ord(c) < 32 and c != "\t" for c in value):
            raise BadRequest(400, "control character in header")
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    if "transfer-encoding" in headers:
        raise BadRequest(400, "request bodies are not accepted")
    cl = headers.get("content-length", "0")
    if not cl.isdigit():
        raise BadRequest(400, "malformed content-length")
    if int(cl) > 0:
        raise BadRequest(413, "request bodies are not accepted")
    return Request(method, path, query, version, headers)


async def read_head(stream: trio.abc.ReceiveStream) -> bytes:
    """Bytes up to the blank line that ends the headers (not included)."""
    buf = bytearray()
    while True:
        end = buf.find(b"\r\n\r\n")
        if end >= 0:
            return bytes(buf[:end])
        if len(buf) > MAX_HEADER_BYTES:
            raise BadRequest(431, "request head too large")
        chunk = await stream.receive_some(4096)
        if not chunk:
            raise BadRequest(400, "connection closed before the end of the headers")
        buf += chunk


def render(resp: Response, *, head_only: bool = False) -> bytes:
    lines = [
        f"HTTP/1.1 {resp.status} {REASONS.get(resp.status, 'Unknown')}",
        f"Content-Type: {resp.content_type}",
        f"Content-Length: {len(resp.body)}",
        "Connection: close",
        "Cache-Control: no-store",
        "X-Content-Type-Options: nosniff",
        "Referrer-Policy: no-referrer",
        f"Content-Security-Policy: {CSP}",
    ]
    lines += [f"{k}: {v}" for k, v in resp.headers.items()]
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head if head_only else head + resp.body


# -- serving ----------------------------------------------------------------------------------
Route = Callable[[Request], Awaitable[Response]]


@dataclass
class HttpStats:
    requests: dict[str, int] = field(default_factory=dict)  # by status code
    refused_host: int = 0


class HttpServer:
    """Binds, then serves ``routes`` (exact paths, or prefixes ending in ``/``)."""

    def __init__(
        self,
        routes: dict[str, Route],
        log: Callable[..., None],
    ) -> None:
        self.routes = routes
        self.log = log
        self.stats = HttpStats()
        self.host = ""
        self.port = 0
        self._limiter = trio.CapacityLimiter(MAX_CONNECTIONS)

    @property
    def url(self) -> str:
        return url_of(self.host, self.port)

    async def bind(self, host: str, port: int) -> trio.SocketListener:
        """Listen on ``host:port``, or the next free port above it (``port`` 0: the OS picks)."""
        family = trio.socket.AF_INET6 if ":" in host else trio.socket.AF_INET
        last: OSError | None = None
        for p in [0] if port == 0 else range(port, min(port + PORT_TRIES, 65536)):
            sock = trio.socket.socket(family, trio.socket.SOCK_STREAM)
            try:
                sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_REUSEADDR, 1)
                if family == trio.socket.AF_INET6:
                    sock.setsockopt(trio.socket.IPPROTO_IPV6, trio.socket.IPV6_V6ONLY, 1)
                await sock.bind((host, p))
                sock.listen(64)
            except OSError as exc:
                sock.close()
                last = exc
                if exc.errno == errno.EADDRINUSE:
                    continue
                raise ConfigError(f"http: cannot listen on {host}:{p}: {exc.strerror}") from None
            self.host, self.port = host, sock.getsockname()[1]
            if port and self.port != port:
                self.log("warning", "http port taken, using the next free one", port=self.port)
            return trio.SocketListener(sock)
        raise ConfigError(
            f"http: ports {port}..{port + PORT_TRIES - 1} on {host} are all taken "
            f"({last.strerror if last else ''})",
            hint="choose another with --http HOST:PORT, or --http off",
        )

    def _route(self, path: str) -> Route | None:
        if path in self.routes:
            return self.routes[path]
        for prefix, route in self.routes.items():
            if prefix.endswith("/") and prefix != "/" and path.startswith(prefix):
                return route
        return None

    async def respond(self, req: Request) -> Response:
        if not host_allowed(req.headers.get("host"), self.host, self.port):
            self.stats.refused_host += 1
            return text(403, "forbidden: the Host header does not name this server's address")
        if req.method not in ("GET", "HEAD"):
            return Response(405, b"only GET and HEAD\n", headers={"Allow": "GET, HEAD"})
        route = self._route(req.path)
        if route is None:
            return text(404, "not found")
        return await route(req)

    async def handle(self, stream: trio.SocketStream) -> None:
        async with stream:
            try:
                self._limiter.acquire_nowait()
            except trio.WouldBlock:
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    await stream.send_all(render(text(503, "busy")))
                return
            try:
                await self._handle(stream)
            finally:
                self._limiter.release()

    async def _handle(self, stream: trio.SocketStream) -> None:
        head_only = False
        try:
            with trio.fail_after(REQUEST_TIMEOUT_S):
                try:
                    req = parse_request(await read_head(stream))
                    head_only = req.method == "HEAD"
                    resp = await self.respond(req)
                except BadRequest as exc:
                    resp = text(exc.status, f"bad request: {exc.reason}")
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return
                except Exception as exc:
                    self.log("error", "http handler failed", error=repr(exc))
                    resp = text(500, "internal error")
                if len(resp.body) > MAX_RESPONSE_BYTES:
                    resp = text(500, "response too large")
                key = str(resp.status)
                self.stats.requests[key] = self.stats.requests.get(key, 0) + 1
                await stream.send_all(render(resp, head_only=head_only))
        except trio.TooSlowError:
            self.stats.requests["408"] = self.stats.requests.get("408", 0) + 1
            with (
                contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError),
                trio.move_on_after(1.0),
            ):
                await stream.send_all(render(text(408, "request timeout")))
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            return

    async def serve(self, listener: trio.SocketListener) -> None:
        await trio.serve_listeners(self.handle, [listener])


__all__ = [
    "DEFAULT_HTTP",
    "BadRequest",
    "HttpServer",
    "Request",
    "Response",
    "host_allowed",
    "is_loopback",
    "json_response",
    "parse_http_addr",
    "parse_request",
    "url_of",
]
