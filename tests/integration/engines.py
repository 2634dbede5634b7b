"""A second, empty Docker engine for one test, so that a worker does not see the first's images.

On one machine every daemon shares one engine, which hides image transfers. ``second_engine``
starts another ``dockerd`` with its own data root in a network namespace of its own (in the
host's namespace it would take over the first engine's ``docker0`` bridge), and stops it after:
the daemon, its mounts, the namespace and its folders. ``nsenter --net`` (not ``ip netns
exec``, which remounts /sys and hides the cgroups dockerd needs). Jobs run with ``network:
none``, so the engine needs no bridge (``--bridge none``).

Skips (with the reason) where it cannot run: not root, no ``dockerd``/``ip``/``nsenter``.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

START_TIMEOUT_S = 60.0


@dataclass
class Engine:
    root: Path
    netns: str
    proc: subprocess.Popen[bytes]

    @property
    def host(self) -> str:
        return f"unix://{self.root}/docker.sock"

    @property
    def env(self) -> dict[str, str]:
        return {"DOCKER_HOST": self.host}

    def client(self) -> object:
        import docker

        return docker.DockerClient(base_url=self.host, timeout=120)

    def log_tail(self, n: int = 20) -> str:
        path = self.root / "dockerd.log"
        lines = path.read_text(errors="replace").splitlines() if path.exists() else []
        return "\n".join(lines[-n:])


def missing() -> str | None:
    """Why a second engine cannot start here, or None."""
    if os.geteuid() != 0:
        return "a second Docker engine needs root"
    for tool in ("dockerd", "ip", "nsenter"):
        if shutil.which(tool) is None:
            return f"{tool} not found"
    return None


@contextlib.contextmanager
def second_engine(prefix: str = "p2pm-img") -> Iterator[Engine]:
    """A fresh engine (empty image store) for the block; torn down whatever happens."""
    import pytest

    why = missing()
    if why:
        pytest.skip(why)
    name = f"{prefix}-{secrets.token_hex(3)}"
    # Short path: the socket path must fit sun_path (108 bytes).
    root = Path(tempfile.mkdtemp(prefix=f"{name}-"))
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
    log = open(root / "dockerd.log", "wb")  # noqa: SIM115 - closed in teardown
    proc = subprocess.Popen(
        [
            "nsenter",
            f"--net=/var/run/netns/{name}",
            "dockerd",
            "--data-root",
            f"{root}/data",
            "--exec-root",
            f"{root}/exec",
            "-H",
            f"unix://{root}/docker.sock",
            "--pidfile",
            f"{root}/docker.pid",
            "--bridge",
            "none",
            "--iptables=false",
            "--ip6tables=false",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    engine = Engine(root, name, proc)
    try:
        _wait_ready(engine)
        yield engine
    finally:
        _stop(engine)
        log.close()


def _wait_ready(engine: Engine) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if engine.proc.poll() is not None:
            raise RuntimeError(f"second dockerd exited:\n{engine.log_tail()}")
        res = subprocess.run(
            ["docker", "-H", engine.host, "info", "--format", "{{.ServerVersion}}"],
            capture_output=True,
            check=False,
        )
        if res.returncode == 0:
            return
        time.sleep(0.5)
    raise RuntimeError(f"second dockerd not ready within {START_TIMEOUT_S} s:\n{engine.log_tail()}")


def _stop(engine: Engine) -> None:
    if engine.proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(engine.proc.pid, signal.SIGTERM)
        try:
            engine.proc.wait(30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(engine.proc.pid, signal.SIGKILL)
            engine.proc.wait(10)
    # The engine unmounts its overlays when it stops; any it left are ours to remove.
    prefix = f"{engine.root}/"
    with open("/proc/self/mounts", encoding="utf-8") as f:
        points = [line.split()[1] for line in f]
    for point in sorted(points, key=len, reverse=True):
        if point.startswith(prefix):
            subprocess.run(["umount", "-l", point], capture_output=True, check=False)
    subprocess.run(["ip", "netns", "del", engine.netns], capture_output=True, check=False)
    shutil.rmtree(engine.root, ignore_errors=True)
