"""A benchmark-only executor that runs nothing: every job "exits 0" at once with one fixed file.

``bench_jobs.py --payload instant`` starts its workers with it, so that the throughput figure is
the mesh's own work — offer, bids, award, statuses, result, output fetch, verdict and payment —
and neither a container start nor an image check. The daemon uses it only when started with
``P2PMESH_BENCH_EXECUTOR=instant`` *and* ``P2PMESH_ALLOW_FAULTS=1`` (daemon/settings.py): a node
that reports results it never computed is a fault, however convenient.

Every worker writes the same bytes, so replicas agree and the job is paid as any other.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from p2pmesh.adapters.docker.executor import ContainerOutcome, ContainerSpec
from p2pmesh.errors import ExecutorError

OUTPUT_NAME = "instant.txt"
OUTPUT = b"p2pmesh instant executor: no container was run\n"
LOG = b"p2pmesh: benchmark executor, nothing ran\n"


class InstantExecutor:
    """The ``DockerExecutor`` methods the daemon calls, without an engine."""

    def run(
        self,
        spec: ContainerSpec,
        in_dir: Path,
        out_dir: Path,
        log_path: Path,
        should_stop: Callable[[], bool] | None = None,
    ) -> ContainerOutcome:
        started = time.monotonic()
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
            (out_dir / OUTPUT_NAME).write_bytes(OUTPUT)
            log_path.parent.mkdir(parents=True, exist_ok=True)
            log_path.write_bytes(LOG)
        except OSError as exc:
            raise ExecutorError(f"cannot prepare the job folders: {exc}") from exc
        return ContainerOutcome(
            status="exited",
            exit_code=0,
            run_s=time.monotonic() - started,
            max_memory_bytes=0,
            cpu_s=0.0,
            log_bytes=len(LOG),
            log_truncated=False,
            error="",
        )

    def image_present(self, image: str) -> bool:
        return True

    def local_images(self) -> None:
        return None  # not known: every allowed image counts as held

    def kill(self, name: str) -> bool:
        return False

    def remove_stale(self, label: str = "") -> int:
        return 0
