"""Watching a running container: its CPU time and peak memory, and its output stream."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import docker.errors
import requests


class Figures(Protocol):
    """A running container's CPU time and peak memory, refreshed by ``sample`` at every poll."""

    max_memory: int | None
    cpu_s: float | None

    def sample(self) -> None: ...


class CgroupSampler:
    """Reads a running container's CPU time and peak memory straight from its cgroup.

    The cheapest source (no engine call), but only where the engine runs on this host in our
    PID namespace and its cgroup tree is visible here: the PID is accepted only if its cgroup
    path names the container. ``visible`` tells whether any file could be read.
    """

    def __init__(self, pid: int, cid: str) -> None:
        self.max_memory: int | None = None
        self.cpu_s: float | None = None
        self._files: list[tuple[str, Path]] = []
        self.visible = False
        try:
            lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
        except OSError:
            return
        root = Path("/sys/fs/cgroup")
        for line in lines:
            _, controllers, path = line.split(":", 2)
            if cid not in path:
                continue
            rel = path.lstrip("/")
            names = controllers.split(",")
            if controllers == "":  # cgroup v2: one unified tree
                self._files += [
                    ("mem", root / rel / "memory.peak"),
                    ("mem", root / rel / "memory.current"),
                ]
                self._files.append(("cpu_stat", root / rel / "cpu.stat"))
            if "memory" in names:
                self._files.append(("mem", root / "memory" / rel / "memory.max_usage_in_bytes"))
            if "cpuacct" in names:
                self._files.append(("cpu_ns", root / "cpuacct" / rel / "cpuacct.usage"))

    def sample(self) -> None:
        for kind, path in self._files:
            try:
                text = path.read_text()
            except OSError:
                continue  # the cgroup goes away with the container; keep the last figures
            self.visible = True
            if kind == "mem":
                self.max_memory = max(self.max_memory or 0, int(text))
            elif kind == "cpu_ns":
                self.cpu_s = max(self.cpu_s or 0.0, int(text) / 1e9)
            else:
                fields = dict(line.split() for line in text.splitlines() if " " in line)
                if "usage_usec" in fields:
                    self.cpu_s = max(self.cpu_s or 0.0, int(fields["usage_usec"]) / 1e6)


class EngineStats:
    """The same figures from the engine's one-shot stats call (a few ms, no host access).

    Works wherever the Docker socket works: a daemon in a container that shares only the
    socket, or an engine in its own namespaces. The engine reports current usage (and, on
    cgroup v1, the peak); the peak kept here is the highest seen.
    """

    def __init__(self, api: Any, cid: str) -> None:
        self.max_memory: int | None = None
        self.cpu_s: float | None = None
        self._api, self._cid = api, cid

    def sample(self) -> None:
        try:
            stats = self._api.stats(self._cid, stream=False, one_shot=True)
        except (docker.errors.DockerException, requests.RequestException):
            return  # gone, or the engine is busy: keep the last figures
        memory = stats.get("memory_stats") or {}
        peak = max(int(memory.get("max_usage") or 0), int(memory.get("usage") or 0))
        if peak:
            self.max_memory = max(self.max_memory or 0, peak)
        # An exited container reports zeros: only a rise is news.
        usage = (stats.get("cpu_stats") or {}).get("cpu_usage") or {}
        cpu_ns = int(usage.get("total_usage") or 0)
        if cpu_ns:
            self.cpu_s = max(self.cpu_s or 0.0, cpu_ns / 1e9)


def open_figures(source: str, pid: int, cid: str, api: Any) -> Figures:
    """The figures of a just-started container from ``source`` (auto: cgroup files if visible)."""
    if source == "engine":
        return EngineStats(api, cid)
    cgroup = CgroupSampler(pid, cid)
    cgroup.sample()
    if cgroup.visible or source == "cgroup":
        return cgroup
    engine = EngineStats(api, cid)
    engine.sample()
    return engine


@dataclass
class LogPump:
    """Copies the attach stream into the log file, up to a cap, then keeps draining."""

    container: Any
    path: Path
    cap: int
    written: int = 0
    truncated: bool = False
    _thread: threading.Thread = field(init=False)

    def __post_init__(self) -> None:
        # Attached before start, so not a byte is missed; the engine keeps no log (driver none).
        self._stream = self.container.attach(stdout=True, stderr=True, stream=True, logs=False)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
        self._file = os.fdopen(fd, "wb")
        self._thread = threading.Thread(
            target=self._pump, name=f"p2pmesh-log-{self.container.name}", daemon=True
        )
        self._thread.start()

    def _pump(self) -> None:
        try:
            for chunk in self._stream:
                room = self.cap - self.written
                if room > 0:
                    self._file.write(chunk[:room])
                    # Flushed chunk by chunk: the worker serves this file live while it grows.
                    self._file.flush()
                    self.written += min(room, len(chunk))
                if len(chunk) > room:
                    self.truncated = True  # keep reading so the job never blocks on stdout
        except Exception:
            # The stream breaks, with whatever exception the transport picks, when the container
            # is removed under it; everything read so far is already in the file.
            pass
        finally:
            self._file.close()

    def drain(self, timeout: float) -> None:
        self._thread.join(timeout)

    def close(self) -> None:
        self._thread.join(2.0)
        self._stream.close()
