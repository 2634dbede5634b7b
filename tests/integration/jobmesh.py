"""Job helpers for the jobs integration tests and benchmarks, on top of ``mesh.py``'s harness.

``mesh.py`` runs the daemons; this module adds what jobs need: a mesh whose workers allow our
local images, job files written by a test, ``p2pmesh offer`` / ``job`` / ``cancel`` through the
CLI (as a user runs them) or the control socket (cheap enough to poll), and a look at the
Docker engine by label, to see which containers of a job exist.

Containers of ours carry the labels ``p2pmesh.job=<job id>`` and ``p2pmesh.node=<last 8 chars
of the node's peer ID>``; the daemons remove them. ``remove_leftovers`` is the last-resort cleanup
after a test, restricted to the nodes the test started, and says what it had to remove so a test
can fail on it.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mesh import CLI_TIMEOUT_S, Mesh, MeshNode, wait_until

BUSYBOX = "p2pmesh/busybox:1"
PYTHON = "p2pmesh/python:1"
ALLOW_OURS = ("--allow-image", "p2pmesh/*")
FINAL = frozenset({"done", "failed", "timeout", "cancelled", "no-bids", "inconclusive"})
JOB_LABEL = "p2pmesh.job"
NODE_LABEL = "p2pmesh.node"

# A job a test can write with a few changes: small, quick, busybox, exact validation.
BASE_JOB: dict[str, Any] = {
    "schema_version": 1,
    "name": "test-job",
    "image": BUSYBOX,
    "command": ["sh", "-c", "echo hi > /out/x"],
    "env": {},
    "inputs": {},
    "resources": {"cpus": 0.5, "ram_gb": 0.125, "gpus": 0, "gpu_memory_gb": 0, "disk_gb": 0.1},
    "timeout_s": 60,
    "deadline_s": 300,
    "max_price": 10,
    "budget": 40,
    "redundancy": 1,
    "validation": {"mode": "exact"},
    "network": "none",
    "labels": {},
}


# -- Docker -------------------------------------------------------------------------------------
def docker_client() -> Any:
    """A Docker SDK client, or None when no engine answers."""
    try:
        import docker

        client = docker.from_env(timeout=20)
        client.ping()
    except Exception:
        return None
    return client


def docker_engine() -> Iterator[Any]:
    """The body of a Docker test module's ``engine`` fixture: skip the module when no engine
    answers or an image is missing, yield a client, close it after."""
    import pytest

    why = docker_missing()
    if why:
        pytest.skip(why)
    client = docker_client()
    assert client is not None
    yield client
    client.close()


def close_mesh(mesh: Mesh, engine: Any) -> None:
    """Stop a test's mesh, then remove (and say) any container its daemons left behind."""
    mesh.close()
    left = remove_leftovers(engine, mesh.nodes)
    if left:
        print(f"removed containers left behind by the daemons: {left}")


def docker_missing(images: Sequence[str] = (BUSYBOX, PYTHON)) -> str | None:
    """Why the jobs tests cannot run here (no engine, missing image), or None."""
    client = docker_client()
    if client is None:
        return "no Docker engine answers"
    try:
        for image in images:
            try:
                client.images.get(image)
            except Exception:
                return f"image {image} missing (build it: python -m p2pmesh.bootstrap.images)"
    finally:
        client.close()
    return None


@dataclass(frozen=True)
class Container:
    id: str
    name: str
    status: str  # created | running | exited | ...


def containers(client: Any, **labels: str) -> list[Container]:
    """Containers (running or not) carrying every given label, e.g. ``job=ID`` or ``node=X``.

    One list call (no per-container inspect), so a container removed meanwhile is no error.
    """
    filters = [f"p2pmesh.{k}={v}" for k, v in labels.items()]
    rows = client.api.containers(all=True, filters={"label": filters})
    return [Container(r["Id"], r["Names"][0].lstrip("/"), r["State"]) for r in rows]


def short_id(node: MeshNode) -> str:
    """What a node puts in its containers' ``p2pmesh.node`` label."""
    return node.peer_id[-8:]


def remove_leftovers(client: Any, nodes: Iterable[MeshNode]) -> list[str]:
    """Force-remove containers labelled as belonging to ``nodes``, and unmount the /out tmpfs
    a daemon stopped mid-job leaves under its home; return what had to be removed."""
    removed: list[str] = []
    for node in nodes:
        if node.info:
            for c in containers(client, node=short_id(node)):
                with contextlib.suppress(Exception):
                    client.api.remove_container(c.id, force=True)
                    removed.append(c.name)
        home = f"{node.home.resolve()}/"
        with open("/proc/self/mounts", encoding="utf-8") as f:
            points = [line.split()[1] for line in f]
        for point in points:
            if point.startswith(home) and "/.p2pmesh-out-" in point:
                subprocess.run(["umount", "-l", point], capture_output=True, check=False)
                removed.append(point)
    return removed


# -- job files ----------------------------------------------------------------------------------
def job_doc(**changes: Any) -> dict[str, Any]:
    doc = json.loads(json.dumps(BASE_JOB))
    doc.update(changes)
    return doc


def write_job(
    folder: Path, file_name: str = "job.json", doc: dict[str, Any] | None = None, **changes: Any
) -> Path:
    """Write ``BASE_JOB`` with ``changes`` (or ``doc`` as given) to ``folder/file_name``."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / file_name
    path.write_text(json.dumps(doc if doc is not None else job_doc(**changes), indent=2))
    return path


# -- talking to a requester ---------------------------------------------------------------------
@dataclass
class Offered:
    """One finished ``p2pmesh offer``: exit code, the JSON document (if any), stderr, time."""

    rc: int | None  # None: still running after the timeout (then killed)
    doc: dict[str, Any]
    stdout: str
    stderr: str
    seconds: float

    @property
    def job_id(self) -> str:
        return str(self.doc.get("job_id", ""))

    @property
    def state(self) -> str:
        return str(self.doc.get("state", ""))

    def describe(self) -> str:
        head = "no exit before the timeout" if self.rc is None else f"exit {self.rc}"
        return f"{head}, state {self.state!r}, stderr: {self.stderr.strip()[-1500:]}"


def offer(
    node: MeshNode, job: Path | str, *args: str, timeout: float = 180.0, json_out: bool = True
) -> Offered:
    """``p2pmesh offer JOB ARGS [--json]`` on ``node``; never raises on the exit code, nor
    on a timeout (then ``rc`` is None and the process has been killed)."""
    extra = ["--json"] if json_out else []
    t0 = time.monotonic()
    try:
        res = node.cli("offer", str(job), *args, *extra, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        out, err = (
            (x.decode(errors="replace") if isinstance(x, bytes) else x or "")
            for x in (exc.stdout, exc.stderr)
        )
        return Offered(None, {}, out, err, time.monotonic() - t0)
    took = time.monotonic() - t0
    doc: dict[str, Any] = {}
    if json_out and res.stdout.strip():
        with contextlib.suppress(json.JSONDecodeError):
            doc = json.loads(res.stdout)
    return Offered(res.returncode, doc, res.stdout, res.stderr, took)


def request(
    node: MeshNode, cmd: str, args: dict[str, Any] | None = None, timeout: float = CLI_TIMEOUT_S
) -> Any:
    """A control-socket request, as the CLI makes it, without starting a process."""
    from p2pmesh.cli import client

    return client.request(node.home, cmd, args, timeout=timeout)


def job_state(node: MeshNode, job_id: str) -> dict[str, Any]:
    return dict(request(node, "job", {"job_id": job_id}))


def history(doc: dict[str, Any]) -> str:
    """A job document's history, one event a line, for failure messages."""
    lines = [f"job {doc.get('job_id', '?')} {doc.get('state', '?')}: {doc.get('error') or ''}"]
    lines += [f"  {h['at']} {h['event']}" for h in doc.get("history", [])]
    return "\n".join(lines)


def last_job(node: MeshNode) -> dict[str, Any]:
    """The newest job this node requested (to explain an ``offer`` that did not finish)."""
    mine = [j for j in request(node, "jobs") if j.get("role") == "requester"]
    return dict(mine[-1]) if mine else {}


def wait_job(
    node: MeshNode,
    job_id: str,
    states: Iterable[str] = FINAL,
    timeout: float = 120.0,
    mesh: Mesh | None = None,
) -> dict[str, Any]:
    """Poll ``job`` on ``node`` until its state is one of ``states``; return the document."""
    wanted = frozenset(states)
    last: dict[str, Any] = {}

    def reached() -> dict[str, Any] | None:
        last.update(job_state(node, job_id))
        return dict(last) if last.get("state") in wanted else None

    def describe() -> str:
        tails = mesh.log_tails(10) if mesh is not None else node.log_tail(15)
        return f"not in {sorted(wanted)}: {history(last)}\n{tails}"

    return wait_until(reached, timeout, interval=0.2, message=describe)


def workers(doc: dict[str, Any], state: str | None = None) -> list[str]:
    """Peer IDs of a job's replicas (optionally only those in ``state``)."""
    return [w["peer_id"] for w in doc.get("workers", []) if state is None or w["state"] == state]


def node_of(mesh: Mesh, peer_id: str) -> MeshNode:
    for n in mesh.nodes:
        if n.info and n.peer_id == peer_id:
            return n
    raise KeyError(peer_id)


def restart_on_same_port(node: MeshNode, signum: int | None = None) -> None:
    """Stop ``node`` (SIGTERM, exit 0 asserted) and start it again on the same home and port."""
    port = node.port
    if signum is None:
        node.stop()
    else:
        node.stop(signum, check=False)
    node.listen = [f"/ip4/127.0.0.1/tcp/{port}"]
    node.start()
    assert node.port == port, f"{node.name} came back on port {node.port}, not {port}"


def wc_words(path: Path) -> int:
    """``wc -w`` of a file, computed by the host's own ``wc``."""
    res = subprocess.run(
        ["wc", "-w"], stdin=path.open("rb"), capture_output=True, text=True, check=True
    )
    return int(res.stdout.split()[0])


__all__ = [
    "ALLOW_OURS",
    "BASE_JOB",
    "BUSYBOX",
    "FINAL",
    "PYTHON",
    "Container",
    "Offered",
    "containers",
    "docker_client",
    "docker_missing",
    "history",
    "job_doc",
    "job_state",
    "last_job",
    "node_of",
    "offer",
    "remove_leftovers",
    "request",
    "restart_on_same_port",
    "short_id",
    "wait_job",
    "wc_words",
    "workers",
    "write_job",
]
