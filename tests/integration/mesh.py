"""A harness that runs real ``p2pmesh up`` daemons as OS processes on 127.0.0.1.

Used by the integration tests and the benchmarks (and meant for the jobs tests too)::

    with Mesh(tmp_path, 5, record_ttl=20) as mesh:
        mesh.wait_all_listed(timeout=30)
        peers = mesh.nodes[1].peers()          # ``p2pmesh peers --json`` through the CLI

Every node has its own home (key, database, control socket, ``node.json``) and listens on an
ephemeral TCP port; the first node of a ``Mesh`` is the bootstrap of the others. Each daemon's
stdout and stderr go to ``daemon.log`` in its home (appended across restarts, so a test failure
can show the whole story). Processes are always cleaned up by PID: by ``Mesh.__exit__``, by
``MeshNode.close`` and, as a last resort, by an ``atexit`` hook over every process this module
started that is still running. Nothing here kills a process it did not start.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from p2pmesh.errors import MeshError

T = TypeVar("T")

LOCAL_LISTEN = "/ip4/127.0.0.1/tcp/0"
LOG_FILE = "daemon.log"
NODE_JSON = "node.json"
SOCKET_FILE = "control.sock"
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0
CLI_TIMEOUT_S = 30.0

# Every daemon this module started and has not yet reaped, by PID.
_LIVE: dict[int, subprocess.Popen[bytes]] = {}


def _reap_all() -> None:
    for pid, proc in list(_LIVE.items()):
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        _LIVE.pop(pid, None)


atexit.register(_reap_all)


def p2pmesh_cmd() -> list[str]:
    """How to run the CLI: the interpreter running us, so the venv's install is the one used."""
    return [sys.executable, "-m", "p2pmesh.cli.main"]


def run_cli(
    args: Sequence[str], *, env: Mapping[str, str] | None = None, timeout: float = CLI_TIMEOUT_S
) -> subprocess.CompletedProcess[str]:
    """Run ``p2pmesh ARGS`` to completion and return the result (never raises on exit code)."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [*p2pmesh_cmd(), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def wait_until(
    predicate: Callable[[], T],
    timeout: float,
    *,
    interval: float = 0.25,
    message: str | Callable[[], str] = "condition not met",
    ignore: tuple[type[BaseException], ...] = (),
) -> T:
    """Poll ``predicate`` until it returns something truthy, and return that.

    Exceptions in ``ignore`` count as "not yet". On timeout raise ``AssertionError`` with
    ``message`` (a callable is evaluated then, so it can describe the last state seen).
    """
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except ignore as exc:
            last_exc = exc
        if time.monotonic() >= deadline:
            text = message() if callable(message) else message
            if last_exc is not None:
                text += f" (last error: {last_exc!r})"
            raise AssertionError(f"after {timeout:.1f} s: {text}")
        time.sleep(interval)


class MeshNode:
    """One ``p2pmesh up`` process with its own home. Can be stopped and started again."""

    def __init__(
        self,
        home: Path,
        *,
        name: str = "node",
        listen: Sequence[str] = (LOCAL_LISTEN,),
        bootstrap: Sequence[str] = (),
        record_ttl: int | None = None,
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.home = Path(home)
        self.name = name
        self.listen = list(listen)
        self.bootstrap = list(bootstrap)
        self.record_ttl = record_ttl
        self.extra_args = list(extra_args)
        self.env = dict(env or {})
        self.proc: subprocess.Popen[bytes] | None = None
        self.info: dict[str, Any] = {}
        self.started_at = 0.0  # monotonic time of the last spawn
        self.ready_at = 0.0  # monotonic time node.json was seen for the last spawn
        self.home.mkdir(parents=True, exist_ok=True)
        os.chmod(self.home, 0o700)

    # -- paths and identity ----------------------------------------------------------------
    @property
    def log_path(self) -> Path:
        return self.home / LOG_FILE

    @property
    def node_json_path(self) -> Path:
        return self.home / NODE_JSON

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def peer_id(self) -> str:
        return str(self.info["peer_id"])

    @property
    def addrs(self) -> list[str]:
        return [str(a) for a in self.info["addrs"]]

    @property
    def addr(self) -> str:
        """The first listen address, with ``/p2p/<peer id>``: what others bootstrap from."""
        return self.addrs[0]

    @property
    def port(self) -> int:
        return int(self.addr.split("/tcp/")[1].split("/")[0])

    def argv(self) -> list[str]:
        args = ["up", "--home", str(self.home), "--no-mdns", "--no-tui", "--no-shipped-bootstrap"]
        for a in self.listen:
            args += ["--listen", a]
        for b in self.bootstrap:
            args += ["--bootstrap", b]
        if self.record_ttl is not None:
            args += ["--record-ttl", str(self.record_ttl)]
        if "--http" not in self.extra_args:
            # The HTTP endpoint is on by default (127.0.0.1:8484 or the next free port): tests
            # that do not ask for it must not take ports outside their own ranges.
            args += ["--http", "off"]
        if "--hidden-replicas" not in self.extra_args:
            # A hidden replica goes to one job in ten by chance (PROTOCOL.md §8.7): tests that
            # count replicas, containers or credits must not depend on that draw.
            args += ["--hidden-replicas", "0"]
        return [*p2pmesh_cmd(), *args, *self.extra_args]

    # -- life cycle ------------------------------------------------------------------------
    def spawn(self) -> None:
        """Start the process without waiting for it to listen (see ``wait_ready``)."""
        if self.alive:
            raise RuntimeError(f"{self.name} is already running (pid {self.pid})")
        # A SIGKILLed daemon leaves its node.json behind; ours, in our home, so ours to remove.
        with contextlib.suppress(FileNotFoundError):
            self.node_json_path.unlink()
        self.info = {}
        with self.log_path.open("ab") as log:
            log.write(f"\n=== harness: {' '.join(self.argv())}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                self.argv(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env},
                # Own process group: a Ctrl-C on the test run is not delivered to the daemons
                # twice; the harness stops them itself, by PID.
                start_new_session=True,
                cwd=self.home,
            )
        _LIVE[self.proc.pid] = self.proc
        self.started_at = time.monotonic()

    def poll_ready(self) -> dict[str, Any] | None:
        """This spawn's ``node.json`` if it is written yet (its ``pid`` must match), else None.

        Raises ``AssertionError`` if the process has already exited.
        """
        assert self.proc is not None, "not started"
        if self.info:
            return self.info
        if self.proc.poll() is not None:
            raise AssertionError(
                f"{self.name} exited with code {self.proc.returncode} before listening\n"
                + self.log_tail()
            )
        try:
            doc = json.loads(self.node_json_path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        if doc.get("pid") != self.proc.pid or not doc.get("addrs"):
            return None
        self.info = doc
        self.ready_at = time.monotonic()
        return doc

    def wait_ready(self, timeout: float = START_TIMEOUT_S) -> dict[str, Any]:
        """Wait for this spawn's ``node.json`` and return it."""
        return wait_until(
            self.poll_ready,
            timeout,
            interval=0.05,
            message=lambda: f"{self.name} wrote no node.json\n{self.log_tail()}",
        )

    def start(self, timeout: float = START_TIMEOUT_S) -> MeshNode:
        self.spawn()
        self.wait_ready(timeout)
        return self

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def send_signal(self, signum: int) -> None:
        assert self.proc is not None
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signum)

    def wait_exit(self, timeout: float) -> int:
        assert self.proc is not None
        try:
            rc = self.proc.wait(timeout=timeout)
        finally:
            if self.proc.poll() is not None:
                _LIVE.pop(self.proc.pid, None)
        return rc

    def stop(
        self, signum: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT_S, *, check: bool = True
    ) -> int:
        """Send ``signum`` and wait ≤ ``timeout`` s. With ``check``, assert exit code 0."""
        assert self.proc is not None, "not started"
        self.send_signal(signum)
        try:
            rc = self.wait_exit(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(
                f"{self.name} (pid {self.pid}) did not exit within {timeout} s of "
                f"{signal.Signals(signum).name}\n{self.log_tail()}"
            ) from None
        if check:
            assert rc == 0, f"{self.name} exited with code {rc}\n{self.log_tail()}"
        return rc

    def kill(self) -> int:
        """SIGKILL, as a crash would: nothing is cleaned up (node.json stays)."""
        assert self.proc is not None, "not started"
        self.send_signal(signal.SIGKILL)
        return self.wait_exit(STOP_TIMEOUT_S)

    def close(self) -> None:
        """Stop if running, without asserting anything (cleanup path): SIGTERM, then SIGKILL."""
        if not self.alive:
            return
        try:
            self.stop(signal.SIGTERM, STOP_TIMEOUT_S, check=False)
        except AssertionError:
            pass  # stop() already SIGKILLed it

    # -- talking to the daemon -----------------------------------------------------------------
    def cli(self, *args: str, timeout: float = CLI_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
        """``p2pmesh ARGS --home HOME`` (``--home`` is added after the subcommand)."""
        return run_cli([args[0], "--home", str(self.home), *args[1:]], timeout=timeout)

    def cli_json(self, *args: str) -> Any:
        res = self.cli(*args, "--json")
        if res.returncode != 0:
            raise AssertionError(
                f"p2pmesh {' '.join(args)} on {self.name}: exit {res.returncode}: "
                f"{res.stderr.strip()}"
            )
        return json.loads(res.stdout)

    def peers(self) -> list[dict[str, Any]]:
        """``p2pmesh peers --json``: what a user sees."""
        return list(self.cli_json("peers"))

    def status(self) -> dict[str, Any]:
        return dict(self.cli_json("status"))

    def query(self, cmd: str, timeout: float = 10.0) -> Any:
        """The same control request the CLI makes, in-process: cheap enough to poll with."""
        from p2pmesh.cli import client

        return client.request(self.home, cmd, timeout=timeout)

    def listed_ids(self) -> set[str]:
        return {p["peer_id"] for p in self.query("peers")}

    # -- diagnostics ---------------------------------------------------------------------------
    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 25) -> str:
        tail = self.log_text().splitlines()[-lines:]
        return f"--- {self.name} log ({self.log_path}) ---\n" + "\n".join(tail)

    def __repr__(self) -> str:
        return f"MeshNode({self.name}, pid={self.pid}, home={self.home})"


class Mesh:
    """N nodes on loopback; node 0 is the bootstrap of the others. A context manager.

    ``node_args`` / ``node_env`` give per-node extras (index → args/env); ``extra_args`` and
    ``env`` apply to every node.
    """

    def __init__(
        self,
        base: Path,
        n: int,
        *,
        record_ttl: int | None = None,
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        node_args: Mapping[int, Sequence[str]] | None = None,
        node_env: Mapping[int, Mapping[str, str]] | None = None,
        start_timeout: float = START_TIMEOUT_S,
    ) -> None:
        if n < 1:
            raise ValueError("a mesh needs at least one node")
        self.base = Path(base)
        self.n = n
        self.record_ttl = record_ttl
        self.extra_args = list(extra_args)
        self.env = dict(env or {})
        self.node_args = dict(node_args or {})
        self.node_env = dict(node_env or {})
        self.start_timeout = start_timeout
        self.nodes: list[MeshNode] = []

    def _make(self, i: int, bootstrap: Sequence[str]) -> MeshNode:
        return MeshNode(
            self.base / f"node{i}",
            name=f"node{i}",
            bootstrap=bootstrap,
            record_ttl=self.record_ttl,
            extra_args=[*self.extra_args, *self.node_args.get(i, ())],
            env={**self.env, **self.node_env.get(i, {})},
        )

    @property
    def bootstrap_node(self) -> MeshNode:
        return self.nodes[0]

    def spawn_all(self) -> Mesh:
        """Start the bootstrap node and wait for it; then spawn the others, without waiting."""
        try:
            first = self._make(0, ())
            self.nodes.append(first)
            first.start(self.start_timeout)
            rest = [self._make(i, [first.addr]) for i in range(1, self.n)]
            self.nodes.extend(rest)
            for node in rest:
                node.spawn()
        except BaseException:
            self.close()
            raise
        return self

    def start(self) -> Mesh:
        """``spawn_all`` and wait until every node listens."""
        self.spawn_all()
        try:
            for node in self.nodes:
                node.wait_ready(self.start_timeout)
        except BaseException:
            self.close()
            raise
        return self

    def add_node(self, *, bootstrap: Sequence[str] | None = None, start: bool = True) -> MeshNode:
        node = self._make(len(self.nodes), [self.nodes[0].addr] if bootstrap is None else bootstrap)
        self.nodes.append(node)
        if start:
            node.start(self.start_timeout)
        return node

    def close(self) -> None:
        """Stop every running node: SIGTERM to all at once, then SIGKILL what is left."""
        running = [n for n in self.nodes if n.alive]
        for node in running:
            with contextlib.suppress(ProcessLookupError):
                node.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for node in running:
            try:
                node.wait_exit(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(AssertionError, subprocess.TimeoutExpired):
                    node.kill()

    def __enter__(self) -> Mesh:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- views -----------------------------------------------------------------------------------
    def alive_nodes(self) -> list[MeshNode]:
        return [n for n in self.nodes if n.alive]

    def missing(self, nodes: Iterable[MeshNode] | None = None) -> dict[str, set[str]]:
        """For each node (by name), the peer IDs of the other given nodes it does not list."""
        group = list(self.alive_nodes() if nodes is None else nodes)
        ids = {n.peer_id for n in group}
        out: dict[str, set[str]] = {}
        for n in group:
            gap = ids - {n.peer_id} - n.listed_ids()
            if gap:
                out[n.name] = gap
        return out

    def wait_all_listed(
        self,
        timeout: float,
        nodes: Iterable[MeshNode] | None = None,
        interval: float = 0.25,
        *,
        ignore_dead: bool = False,
    ) -> None:
        """Wait until each given node (default: all running) lists all the others.

        With ``ignore_dead`` a node that dies meanwhile is dropped from the group (benchmarks
        report deaths instead of stopping); otherwise its death fails the wait.
        """
        group = list(self.alive_nodes() if nodes is None else nodes)
        state: dict[str, Any] = {}

        def done() -> bool:
            if ignore_dead:
                group[:] = [n for n in group if n.alive]
            state["missing"] = self.missing(group)
            return not state["missing"]

        def describe() -> str:
            names = {n.peer_id: n.name for n in self.nodes if n.info}
            gaps = {k: sorted(names.get(p, p) for p in v) for k, v in state["missing"].items()}
            return f"nodes missing peers: {gaps}\n" + "\n".join(n.log_tail(8) for n in group)

        wait_until(
            done,
            timeout,
            interval=interval,
            message=describe,
            ignore=(MeshError,) if ignore_dead else (),
        )

    def log_tails(self, lines: int = 15) -> str:
        return "\n".join(n.log_tail(lines) for n in self.nodes)


__all__ = ["LOCAL_LISTEN", "Mesh", "MeshNode", "p2pmesh_cmd", "run_cli", "wait_until"]
