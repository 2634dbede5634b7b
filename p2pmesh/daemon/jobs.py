"""Carries out the core's job effects: messages, input and output transfer, containers.

Everything here is I/O on behalf of decisions the core already made; outcomes go back to the
core as events. Job folders live under ``<home>/work/<job_id>/`` and are removed once the
job's outputs are safely in the blob store.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import json
import os
import secrets
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from p2pmesh import packing
from p2pmesh.adapters.docker.executor import ContainerSpec, DockerExecutor
from p2pmesh.adapters.instant import InstantExecutor
from p2pmesh.adapters.libp2p.net import OLD_PEER, JobWire, MeshNet
from p2pmesh.core.auction import logs as logs_mod
from p2pmesh.core.auction.logs import LOG_MAX_BYTES
from p2pmesh.core.effects import (
    CompareOutputs,
    FetchInputs,
    FetchOutputs,
    RunContainer,
    SendMessage,
    StopContainer,
)
from p2pmesh.core.events import (
    BlocksReceived,
    ContainerFinished,
    ImageProgress,
    InputsFetched,
    JobSubmitted,
    MessageDelivered,
    OutputsCompared,
    OutputsFetched,
    SendFailed,
)
from p2pmesh.core.jobspec import InputRef, JobSpec, WireJob
from p2pmesh.daemon.blobs import BlobStore
from p2pmesh.daemon.images import Cache, ImageError, ImageService
from p2pmesh.errors import (
    ExecutorError,
    JobSpecError,
    MeshError,
    PackingError,
    TransportError,
    ValidationError,
)
from p2pmesh.jobfile import load_job_file

MiB = 1 << 20
MAX_INPUT_DIR_BYTES = 1 << 30
PIDS_LIMIT = 512
DEFAULT_BID_WINDOW_S = 2
SEND_RETRIES = 3
EXPORT_MAX_BYTES = 1 << 34  # unpacked outputs; checked on fetch with the limit export uses


class JobRunner:
    def __init__(
        self,
        home: Path,
        net: MeshNet,
        node: Any,
        log: Any,
        short_id: str,
        *,
        fault: str | None = None,
        fault_after: int = 0,
        bench_executor: str | None = None,
        store: Any = None,
        tstore: Any = None,
        pull: bool = True,
        cache_bytes: int = 10 * (1 << 30),
    ) -> None:
        self.fault = fault
        self.ring = (
            Ring(fault[len("collude:") :]) if fault and fault.startswith("collude:") else None
        )
        self.bench_executor = bench_executor
        self.fault_after = fault_after
        self.jobs_done = 0
        self.home = home
        self.net = net
        self.node = node
        self.log = log
        self.short_id = short_id
        self.blobs = BlobStore(home / "blobs")
        self.work = home / "work"
        self.work.mkdir(mode=0o700, exist_ok=True)
        for left in self.work.glob(".check-*"):  # an output check a crash interrupted
            shutil.rmtree(left, ignore_errors=True)
        self.withheld: set[str] = set()  # FAULT withhold-outputs: our output digests
        self.wire = JobWire(
            net,
            may_fetch=self.may_fetch,
            blob_path=self.blobs.path,
            ledger_blocks=self.ledger_blocks,
            # FAULT no-live-logs: no log stream at all, as a release before it (PROTOCOL §7.5a).
            log_chunk=None if fault == "no-live-logs" else self.serve_log,
        )
        self.cache = Cache(store, tstore, self.blobs, cache_bytes)
        self.images = ImageService(
            self.blobs, self.cache, self.wire, log, pull=pull, tamper=fault == "tamper-image"
        )
        self._holds: dict[str, list[str]] = {}  # job -> cache keys it uses while it runs
        self._executor: DockerExecutor | InstantExecutor | None = None
        self._log_said: set[tuple[str, str, str]] = set()  # live-log trouble, logged once
        self._stop: set[str] = set()
        self._running: dict[str, float] = {}  # job -> monotonic start of its container
        self.container_seconds_done = 0.0  # of containers that have finished (for /metrics)
        self.containers_finished = 0

    @property
    def executor(self) -> DockerExecutor | InstantExecutor:
        if self._executor is None:
            self._executor = (
                InstantExecutor() if self.bench_executor == "instant" else DockerExecutor()
            )
        return self._executor

    # -- what the stream servers ask the core (on the event loop, never a thread) -------------
    def may_fetch(self, peer: str, digest: str) -> bool:
        if self.node.may_serve_image(peer, digest) or self.images.is_mesh_image(digest):
            return self.images.may_serve_config(digest)  # an image's config, exported on demand
        if not self.blobs.has(digest):
            return False
        owners = self.images.images_of(digest)
        if owners and any(
            self.node.may_serve_image(peer, image_id) or self.images.is_mesh_image(image_id)
            for image_id in owners
        ):
            return True
        if digest in self.withheld:
            self.log("warning", "FAULT withhold-outputs: refusing our outputs", peer=peer)
            return False
        return self.node.may_serve_blob(peer, digest)

    async def serve_log(self, peer: str, req: logs_mod.LogRequest) -> logs_mod.LogChunk | str:
        """A requester's live-log request (PROTOCOL.md §7.5a): the chunk, or the refusal."""
        return await self.log_chunk(req.job_id, req.offset, peer)

    async def log_chunk(
        self, job_id: str, offset: int, peer: str | None, *, wait_s: float = logs_mod.LOG_WAIT_S
    ) -> logs_mod.LogChunk | str:
        """The log of a job we work on from ``offset``, for ``peer`` (None: our own owner).

        While the container runs, the bytes come from the file the executor writes (flushed
        chunk by chunk), afterwards from the log blob of our result: the blob is that file, so
        what a follower read stays a prefix of the final log. With nothing new yet, the answer
        waits up to ``wait_s`` for more (a long poll).
        """
        give_up = time.monotonic() + wait_s
        while True:
            access = self.node.log_access(job_id, peer)
            if access.error:
                return access.error
            ended = access.phase == "ended"
            path: Path | None = None
            if access.phase == "running":
                path = self.work / job_id / "log.txt"
            elif access.log_digest is not None and self.blobs.has(access.log_digest):
                path = self.blobs.path(access.log_digest)
            try:
                size = path.stat().st_size if path is not None else 0
            except OSError:
                size = 0  # not written yet, or just moved into the blob store
            span = logs_mod.log_slice(offset, size, ended)
            if isinstance(span, str):
                return span
            start, end = span
            if end > start or ended or time.monotonic() >= give_up:
                break
            await trio.sleep(0.1)
        data = b""
        if end > start and path is not None:
            try:
                with open(path, "rb") as f:
                    f.seek(start)
                    data = f.read(end - start)
            except OSError:
                data = b""  # the run's folder went away between stat and read: ask again
        return logs_mod.LogChunk(start, data, ended and start + len(data) == size)

    def ledger_blocks(self, req: dict[str, Any]) -> list[bytes]:
        """Serve a ledger request: ``{"heads": true}`` or ``{"author", "first", "last"}``."""
        return self.node.serve_ledger(req)

    async def sync_chain(self, peer: str, request: dict[str, Any]) -> None:
        try:
            blocks = await self.wire.ledger_request(peer, request)
        except TransportError as exc:
            self.net.stats.count(self.net.stats.stream_errors, "ledger request")
            self.log("debug", "ledger sync failed", peer=peer, error=str(exc))
            return
        if blocks:
            self.net.inbound(BlocksReceived(tuple(blocks), peer), "ledger-sync")

    # -- submit (control socket) ---------------------------------------------------------------
    async def submit(self, job_file: str, bid_window_s: int, image_id: str = "") -> dict[str, Any]:
        spec, paths = load_job_file(Path(job_file))
        spec = await self._pin_image(spec, image_id)
        refs: dict[str, InputRef] = {}
        for name, path in sorted(paths.items()):
            refs[name] = await trio.to_thread.run_sync(self._store_input, path)
        job = WireJob(spec, refs)
        job_id = secrets.token_hex(16)
        await self.net.emit(JobSubmitted(job_id, job, bid_window_s))
        return {"job_id": job_id, "job_digest": job.digest}

    async def _pin_image(self, spec: JobSpec, image_id: str) -> JobSpec:
        """Name the image by its ID in this engine, and make it servable to the job's workers.

        Raises ``JobSpecError`` for an image this engine lacks that is not pinned by digest,
        and for an ID (from the file or the CLI) that this engine does not hold.
        """
        if self.bench_executor == "instant":
            return spec  # the benchmark executor runs no image
        want = image_id or spec.image_id
        try:
            if want:
                found = await trio.to_thread.run_sync(self.images.images.image_id, want)
                if found != want:
                    raise ImageError(f"image_id: {want} is not in this node's Docker engine")
            else:
                want = await trio.to_thread.run_sync(self.images.resolve, spec.image)
        except ImageError as exc:
            raise JobSpecError([str(exc)]) from None
        except ExecutorError as exc:
            raise JobSpecError([f"image: {exc}"]) from None
        return dataclasses.replace(spec, image_id=want)

    def _store_input(self, path: Path) -> InputRef:
        if path.is_dir():
            data = packing.pack_dir(path, max_bytes=MAX_INPUT_DIR_BYTES)
            return InputRef(self.blobs.put_bytes(data), len(data), "dir")
        digest, size = self.blobs.put_file(path)
        return InputRef(digest, size, "file")

    # -- effects -------------------------------------------------------------------------------
    async def send_message(self, eff: SendMessage) -> None:
        last = ""
        for attempt in range(SEND_RETRIES):
            try:
                await self.wire.send(eff.peer_id, eff.addrs, eff.kind, eff.data)
                self.net.stats.count(self.net.stats.job_out, eff.kind)
                await self.net.emit(MessageDelivered(eff.job_id, eff.peer_id, eff.kind))
                return
            except TransportError as exc:
                self.net.stats.count(self.net.stats.stream_errors, "send")
                last = str(exc)
                await trio.sleep(0.5 * (attempt + 1))
        await self.net.emit(SendFailed(eff.job_id, eff.peer_id, eff.kind, last))

    async def fetch_inputs(self, eff: FetchInputs) -> None:
        job_dir = self.work / eff.job_id
        in_dir = job_dir / "in"
        try:
            if eff.image and self.bench_executor != "instant":
                await self._get_image(eff)
            if job_dir.exists():
                await trio.to_thread.run_sync(shutil.rmtree, job_dir)
            in_dir.mkdir(parents=True, mode=0o755)
            for name, digest, size, kind in eff.refs:
                if self.blobs.has(digest):
                    if await self.cache.touch(digest):
                        self.cache.hits += 1
                else:
                    writer = self.blobs.writer(digest, size)
                    try:
                        await self.wire.fetch(eff.requester, eff.addrs, digest, size, writer)
                        writer.commit()
                    except BaseException:
                        writer.abort()
                        raise
                    self.cache.misses += 1
                    await self.cache.put(digest, "input", size)
                self._hold(eff.job_id, [digest])
                await trio.to_thread.run_sync(self._materialize, in_dir, name, digest, kind)
        except ImageError as exc:
            self.log("warning", "image not got", job=eff.job_id, error=str(exc))
            await self._release(eff.job_id)
            await self.net.emit(InputsFetched(eff.job_id, False, str(exc)[:200]))
            return
        except (TransportError, ValidationError, PackingError, OSError) as exc:
            await self._release(eff.job_id)
            if isinstance(exc, TransportError):
                self.net.stats.count(self.net.stats.stream_errors, "fetch inputs")
            await self.net.emit(InputsFetched(eff.job_id, False, str(exc)[:200]))
            return
        await self.net.emit(InputsFetched(eff.job_id, True))

    async def _get_image(self, eff: FetchInputs) -> None:
        """The image first, as its own phase: its time is not the job's ``timeout_s``."""

        async def progress(detail: str) -> None:
            await self.net.emit(ImageProgress(eff.job_id, detail))

        try:
            ref = await self.images.ensure(
                eff.job_id, eff.image, eff.image_id, eff.requester, eff.addrs, progress
            )
        except ExecutorError as exc:
            raise ImageError(f"image {eff.image}: {exc}") from None
        self._hold(eff.job_id, [ref])
        await progress("image ready")

    def _hold(self, job_id: str, keys: list[str]) -> None:
        self.cache.hold(keys)
        self._holds.setdefault(job_id, []).extend(keys)

    async def _release(self, job_id: str) -> None:
        """The job no longer needs its image and inputs: they may go, oldest first."""
        self.cache.release(self._holds.pop(job_id, []))
        if self.cache.store is None:
            return
        try:
            gone = await self.cache.evict()
        except (ExecutorError, OSError) as exc:
            self.log("warning", "cache eviction failed", error=str(exc))
            return
        if gone:
            self.log("info", "cache evicted", entries=len(gone))

    def _materialize(self, in_dir: Path, name: str, digest: str, kind: str) -> None:
        target = in_dir / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if kind == "dir":
            packing.unpack(
                self.blobs.path(digest).read_bytes(), target, max_bytes=MAX_INPUT_DIR_BYTES
            )
        else:
            shutil.copyfile(self.blobs.path(digest), target)
        # The container runs as an unprivileged user: inputs must be readable by it.
        for p in [target, *target.rglob("*")] if target.is_dir() else [target]:
            p.chmod(0o755 if p.is_dir() else 0o644)
        in_dir.chmod(0o755)

    def _container_spec(self, job_id: str, job: WireJob) -> ContainerSpec:
        s = job.spec
        r = s.resources
        return ContainerSpec(
            name=f"p2pmesh-{job_id[:16]}-{self.short_id}",
            # By ID when the job names one: the bits the requester offered, whatever this
            # engine's tag of that name means.
            image=s.image_id or s.image,
            command=tuple(s.command),
            env=dict(s.env),
            cpus=r.millicpus / 1000,
            memory_bytes=max(r.ram_mib * MiB, 16 * MiB),
            pids_limit=PIDS_LIMIT,
            gpus=r.gpus,
            network=s.network != "none",
            timeout_s=float(s.timeout_s),
            out_max_bytes=r.disk_mib * MiB,
            log_max_bytes=LOG_MAX_BYTES,
            labels={"p2pmesh.job": job_id, "p2pmesh.node": self.short_id},
        )

    async def run_container(self, eff: RunContainer) -> None:
        job_dir = self.work / eff.job_id
        out_dir = job_dir / "out"
        log_path = job_dir / "log.txt"
        self._running[eff.job_id] = time.monotonic()
        if self.ring is not None:
            self.ring.holds(eff.job_id, self.node.peer_id, eff.job.spec.redundancy)
        try:
            spec = self._container_spec(eff.job_id, eff.job)
            assert spec.name == f"p2pmesh-{eff.job_id[:16]}-{self.short_id}"
            started = time.monotonic()
            try:
                outcome = await trio.to_thread.run_sync(
                    lambda: self.executor.run(
                        spec,
                        job_dir / "in",
                        out_dir,
                        log_path,
                        should_stop=lambda: eff.job_id in self._stop,
                    ),
                    abandon_on_cancel=True,
                )
            except (ExecutorError, ValueError) as exc:
                self.log("error", "container could not run", job=eff.job_id, error=str(exc))
                log_path.write_text(f"p2pmesh: the job could not start: {exc}\n")
                out_dir.mkdir(parents=True, exist_ok=True)
                await self._finish(
                    eff.job_id,
                    out_dir,
                    log_path,
                    "error",
                    None,
                    time.monotonic() - started,
                    0.0,
                    0,
                    False,
                )
                return
            await self._finish(
                eff.job_id,
                out_dir,
                log_path,
                outcome.status,
                outcome.exit_code,
                outcome.run_s,
                outcome.cpu_s or 0.0,
                outcome.max_memory_bytes or 0,
                outcome.log_truncated,
                # The executor's words for a refused /out are the same on every worker.
                outcome.error if outcome.status in ("out_refused", "out_too_large") else "",
            )
        finally:
            await self._release(eff.job_id)
            began = self._running.pop(eff.job_id, None)
            if began is not None:
                self.container_seconds_done += time.monotonic() - began
                self.containers_finished += 1
            self._stop.discard(eff.job_id)

    async def _finish(
        self,
        job_id: str,
        out_dir: Path,
        log_path: Path,
        status: str,
        exit_code: int | None,
        run_s: float,
        cpu_s: float,
        max_mem: int,
        log_truncated: bool,
        error: str = "",
    ) -> None:
        def pack() -> tuple[str, int, str, int]:
            if self.ring is not None and out_dir.exists() and self.ring.cheats(job_id):
                falsify_outputs(out_dir)
            if self.fault == "wrong-result" and out_dir.exists():
                # P2PMESH_FAULT_AFTER=N: honest for the first N jobs, to earn credibility first.
                self.jobs_done += 1
                if self.jobs_done > self.fault_after:
                    falsify_outputs(out_dir)
            try:
                data = packing.pack_dir(out_dir, max_bytes=1 << 34) if out_dir.exists() else b""
            except PackingError as exc:
                # The executor refuses what packing would; this is a file changed behind it.
                with open(log_path, "a") as f:
                    f.write(f"\np2pmesh: outputs refused: {exc}\n")
                data = b""
                shown = str(exc).replace(str(out_dir), "/out")  # no host path in a signed text
                nonlocal_status[0], nonlocal_error[0] = "out_refused", f"/out refused: {shown}"
            out_digest = self.blobs.put_bytes(data)
            if self.fault == "withhold-outputs":
                # The result will name these outputs; nobody will ever be served them.
                self.withheld.add(out_digest)
            log_digest, log_size = (
                self.blobs.put_file(log_path)
                if log_path.exists()
                else (self.blobs.put_bytes(b""), 0)
            )
            return out_digest, len(data), log_digest, log_size

        nonlocal_status, nonlocal_error = [status], [error]
        out_digest, out_size, log_digest, log_size = await trio.to_thread.run_sync(pack)
        with contextlib.suppress(OSError):
            await trio.to_thread.run_sync(shutil.rmtree, self.work / job_id)
        await self.net.emit(
            ContainerFinished(
                job_id,
                nonlocal_status[0],
                exit_code,
                out_digest,
                out_size,
                log_digest,
                log_size,
                log_truncated,
                int(run_s * 1000),
                int(cpu_s * 1000),
                max_mem // MiB,
                nonlocal_error[0],
            )
        )

    def running_since(self) -> dict[str, float]:
        """Job → monotonic time its container started, for the containers running now."""
        return dict(self._running)

    def containers(self, now_mono: float) -> tuple[int, float]:
        """Containers running now, and container seconds so far (finished and running)."""
        running = sum(now_mono - t for t in self._running.values())
        return len(self._running), self.container_seconds_done + running

    def stop_container(self, eff: StopContainer) -> None:
        self._stop.add(eff.job_id)

    def shutdown(self) -> None:
        """On daemon exit: remove our containers now (a restart re-runs the jobs).

        By label, not from ``_running``: the nursery's cancellation has already run every
        ``run_container``'s ``finally`` (emptying ``_running``) by the time this is called.
        """
        if self._executor is None:
            return  # this process never started a container
        try:
            removed = self._executor.remove_stale(f"p2pmesh.node={self.short_id}")
        except Exception as exc:
            self.log("warning", "could not remove containers on exit", error=str(exc))
            return
        if removed:
            self.log("info", "removed running containers on exit", count=removed)

    async def fetch_outputs(self, eff: FetchOutputs, addrs: tuple[str, ...] = ()) -> None:
        """Fetch a result's outputs and log, and say ok only once they are verified on disk.

        The core pays the worker on this answer (PROTOCOL.md §8.1), so ok means: this worker
        served both blobs (transferred even when an equal copy is held already: that is what
        shows it delivers), each matched the result's digest and size (the store's writer
        checks while receiving), and the output archive unpacks under the rules ``export``
        uses.
        """
        try:
            for digest, size in (
                (eff.output_digest, eff.output_size),
                (eff.log_digest, eff.log_size),
            ):
                await self._fetch_blob(eff.worker, addrs, digest, size)
            await trio.to_thread.run_sync(self._check_outputs, eff)
        except (TransportError, ValidationError, PackingError, OSError) as exc:
            await self.net.emit(OutputsFetched(eff.job_id, eff.worker, False, str(exc)[:200]))
            return
        await self.net.emit(OutputsFetched(eff.job_id, eff.worker, True))

    async def _fetch_blob(
        self, worker: str, addrs: tuple[str, ...], digest: str, size: int
    ) -> None:
        for attempt in range(SEND_RETRIES):
            writer = self.blobs.writer(digest, size)
            try:
                await self.wire.fetch(worker, addrs, digest, size, writer)
                writer.commit()
                return
            except TransportError as exc:
                writer.abort()
                self.net.stats.count(self.net.stats.stream_errors, "fetch outputs")
                # A refusal is the worker's answer, not a glitch: asking again changes nothing.
                if str(exc).startswith("peer refused") or attempt == SEND_RETRIES - 1:
                    raise
            except BaseException:
                writer.abort()
                raise
            await trio.sleep(0.5 * (attempt + 1))

    def _check_outputs(self, eff: FetchOutputs) -> None:
        """Raise unless both blobs have their announced sizes and the archive unpacks."""
        for digest, size in ((eff.output_digest, eff.output_size), (eff.log_digest, eff.log_size)):
            if self.blobs.size(digest) != size:
                raise ValidationError(f"{digest[:20]}… is not the size the result names")
        data = self.blobs.path(eff.output_digest).read_bytes()
        if not data:
            return  # no outputs at all (export shows an empty folder)
        scratch = self.work / f".check-{eff.job_id}-{secrets.token_hex(4)}"
        try:
            packing.unpack(data, scratch, max_bytes=EXPORT_MAX_BYTES)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    async def compare_outputs(self, eff: CompareOutputs) -> None:
        def run() -> list[list[str]]:
            from p2pmesh.core.validation.compare import group_results

            outputs = {w: self.blobs.path(d).read_bytes() for w, d in eff.outputs}
            return group_results(outputs, eff.rule)

        workers = tuple(sorted(w for w, _ in eff.outputs))
        try:
            groups = await trio.to_thread.run_sync(run)
        except OSError as exc:
            # A blob vanished under us: every replica stands alone, so the job adds replicas.
            self.log("error", "output comparison failed", job=eff.job_id, error=str(exc))
            groups = [[w] for w in workers]
        await self.net.emit(OutputsCompared(eff.job_id, workers, tuple(tuple(g) for g in groups)))

    # -- export to the user's folder (control socket) ------------------------------------------
    def export(self, job_id: str, outputs: dict[str, Any], dest: str) -> dict[str, Any]:
        """Unpack a job's accepted outputs into ``dest`` (runs on a worker thread: ``outputs``
        is the plain data ``Node.job_outputs`` returned on the event loop, nothing live)."""
        doc = outputs["job"]
        if not outputs["output_digest"] or not outputs["log_digest"]:
            raise MeshError(f"job {job_id} has no outputs yet (state {outputs['state']})")
        for digest in (outputs["output_digest"], outputs["log_digest"]):
            # Exported long after the fetch (``job ID --out``): the blob may have been removed
            # or damaged on this disk since, and is checked again against its name.
            if not self.blobs.has(digest):
                raise MeshError(f"job {job_id}: {digest[:20]}… is no longer in the blob store")
            if "sha256:" + hashlib.sha256(self.blobs.path(digest).read_bytes()).hexdigest() != (
                digest
            ):
                raise MeshError(f"job {job_id}: {digest[:20]}… in the blob store is damaged")
        out = Path(dest)
        out.mkdir(parents=True, exist_ok=True)
        files = out / "outputs"
        if files.exists():
            shutil.rmtree(files)
        data = self.blobs.path(outputs["output_digest"]).read_bytes()
        if data:
            packing.unpack(data, files, max_bytes=EXPORT_MAX_BYTES)
        else:
            files.mkdir()
        shutil.copyfile(self.blobs.path(outputs["log_digest"]), out / "log.txt")
        (out / "result.json").write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
        return {
            "dest": str(out),
            "files": sorted(str(p.relative_to(files)) for p in files.rglob("*") if p.is_file()),
            "job": doc,
        }

    async def follow_log(self, job_id: str, offset: int, want: str | None) -> dict[str, Any]:
        """One step of ``p2pmesh logs ID --follow``: the next bytes of a job's log from
        ``offset``, from the worker ``want`` the follower reads (or the first in play).

        A job we run is read here; a job we requested is asked of its worker over the log
        stream, or read from the log blob we hold once its outputs are in. ``data`` is base64:
        a chunk may end inside a UTF-8 character. ``restart``: the follower's worker is no
        longer in play, so this answer is from the start of another one's log.
        """
        out: dict[str, Any] = {"job_id": job_id, "note": "", "restart": False}
        src = self.node.log_sources(job_id)
        if src is None:
            doc = self.node.job(job_id)
            if doc is None:
                raise ValueError(f"no job {job_id!r} on this node")
            got = await self.log_chunk(job_id, offset, None)
            return {**out, **_chunk_json(got, offset), "role": "worker", "state": doc["state"]}
        out.update(role="requester", state=src["state"])
        workers = src["workers"]
        pick = next((w for w in workers if w["peer_id"] == want), None)
        if pick is None and workers:
            pick = workers[0]
            if want is not None:
                out["restart"], offset = True, 0
        if pick is None:
            if src["final"]:
                return {
                    **out,
                    **_chunk_json(logs_mod.LogChunk(offset, b"", True), offset),
                    "note": f"no log: the job ended {src['state']} before any worker ran it",
                }
            return {
                **out,
                **_chunk_json(logs_mod.LogChunk(offset, b"", False), offset),
                "note": "waiting for a worker",
            }
        out["source"] = pick["peer_id"]
        digest = pick["log_digest"]
        if digest is not None and self.blobs.has(digest):
            return {**out, **_chunk_json(self._blob_chunk(digest, offset), offset)}
        try:
            chunk = await self.wire.log_request(
                pick["peer_id"], self.node.peer_addrs(pick["peer_id"]), job_id, offset
            )
        except logs_mod.LogRefused as exc:
            note = f"the worker refused: {exc}"
            self._log_once(job_id, pick["peer_id"], "live log refused", str(exc))
        except TransportError as exc:
            self.net.stats.count(self.net.stats.stream_errors, "log request")
            note = str(exc)
            if note == OLD_PEER:
                msg = "worker has no live logs (an older release): its log comes with the result"
                self._log_once(job_id, pick["peer_id"], msg, "")
        else:
            return {**out, **_chunk_json(chunk, offset)}
        # Nothing this time: the follower waits and asks again; a job that ended with no log
        # from this worker ends the follow.
        return {
            **out,
            **_chunk_json(logs_mod.LogChunk(offset, b"", src["final"]), offset),
            "note": note,
        }

    def _log_once(self, job_id: str, peer: str, msg: str, error: str) -> None:
        """A follower asks about once a second: say each thing once per job and worker."""
        key = (job_id, peer, msg + error)
        if key in self._log_said:
            return
        if len(self._log_said) >= 1024:
            self._log_said.clear()
        self._log_said.add(key)
        self.log("warning", msg, job=job_id, peer=peer, **({"error": error} if error else {}))

    def _blob_chunk(self, digest: str, offset: int) -> logs_mod.LogChunk:
        size = self.blobs.size(digest)
        span = logs_mod.log_slice(offset, size, True)
        if isinstance(span, str):
            return logs_mod.LogChunk(offset, b"", True)
        start, end = span
        with open(self.blobs.path(digest), "rb") as f:
            f.seek(start)
            data = f.read(end - start)
        return logs_mod.LogChunk(start, data, start + len(data) == size)

    def logs(self, log_digests: list[str]) -> str | None:
        """The first of these logs we hold (the accepted replica's comes first)."""
        for digest in log_digests:
            if self.blobs.has(digest):
                return self.blobs.path(digest).read_text(errors="replace")
        return None


def _chunk_json(got: logs_mod.LogChunk | str, offset: int) -> dict[str, Any]:
    if isinstance(got, str):
        return {"offset": offset, "next": offset, "data": "", "ended": True, "note": got}
    return {
        "offset": got.offset,
        "next": got.next_offset,
        "data": base64.b64encode(got.data).decode(),
        "ended": got.ended,
    }


class Ring:
    """FAULT collude:RING: one owner's colluding nodes, as the simulator's ring behaves.

    Members tell each other which jobs they hold through files in one folder, the owner's out of
    band channel (``P2PMESH_RING_DIR``, else a folder under the temporary directory named after
    the ring). A member cheats, with the same wrong output as every other member
    (``falsify_outputs`` is deterministic), exactly when the ring holds a strict majority of the
    replicas it knows of: its members among the job's holders, against the job's public
    ``redundancy`` (awards name only their recipient, so nobody else is known).
    """

    def __init__(self, name: str) -> None:
        base = os.environ.get("P2PMESH_RING_DIR") or os.path.join(
            tempfile.gettempdir(), f"p2pmesh-ring-{name}"
        )
        self.dir = Path(base)
        self.redundancy: dict[str, int] = {}

    def holds(self, job_id: str, peer_id: str, redundancy: Any) -> None:
        self.redundancy[job_id] = redundancy if isinstance(redundancy, int) else 1
        folder = self.dir / job_id
        folder.mkdir(parents=True, exist_ok=True)
        (folder / peer_id).touch()

    def cheats(self, job_id: str) -> bool:
        """Decided once per job for the whole ring (the first member to finish writes the
        decision, the others follow it): a member that finished first waits up to
        ``RING_WAIT_S`` for the others' awards to show up, as an owner who sees every award."""
        folder = self.dir / job_id
        k = self.redundancy.pop(job_id, 1)
        deadline = time.monotonic() + RING_WAIT_S
        while True:
            try:
                ours = sum(1 for p in folder.iterdir() if not p.name.startswith("."))
            except OSError:
                return False
            cheat = 2 * ours > max(ours, k)
            if cheat or time.monotonic() >= deadline:
                break
            time.sleep(0.1)
        try:
            fd = os.open(folder / ".decision", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return (folder / ".decision").read_text() == "cheat"
        with os.fdopen(fd, "w") as f:
            f.write("cheat" if cheat else "honest")
        return cheat


RING_WAIT_S = 3.0


def falsify_outputs(out_dir: Path) -> None:
    """FAULT wrong-result: a plausible wrong answer. Every digit in every output file is shifted
    by one (a count of 58 becomes 69, 3.14 becomes 4.25), so the files still parse."""
    table = bytes.maketrans(b"0123456789", b"1234567890")
    for p in sorted(out_dir.rglob("*")):
        if p.is_file() and not p.is_symlink():
            data = p.read_bytes()
            if p.suffix == ".npy" and len(data) > 128:
                header_end = data.index(b"\n") + 1 if b"\n" in data else 128
                body = bytearray(data[header_end:])
                for i in range(0, len(body), 8):
                    body[i] ^= 0x01
                p.write_bytes(data[:header_end] + bytes(body))
            else:
                p.write_bytes(data.translate(table))
