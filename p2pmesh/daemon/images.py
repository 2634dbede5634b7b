"""Getting a job's image, serving ours, and the cache that remembers both (issue 17).

A worker that lacks the image a job names (by its ID, PROTOCOL.md §7.14) gets it before the
inputs, as its own phase ("getting image", reported to the requester as status details):

1. **registry** (unless ``up --no-pull``): ``docker pull`` of the name, within
   ``PULL_TIMEOUT_S``; kept only if it gives the offer's image ID;
2. **mesh**: the config blob from the requester (its sha256 must be the image ID), then only
   the layers whose chains the engine lacks, each a blob named by its diff ID, streamed in
   chunks into a partial file that a broken transfer resumes from, checked by digest, then
   ``docker load`` and the loaded ID checked against the offer's. The image is tagged with the
   offer's name unless that name already means another image here.

A requester exports its own image into blobs when it offers a job that names it, and serves
them only to the workers awarded such a job (``Node.may_serve_image``).

The cache (``cache`` table, ``core/cache.py``) lists what may be removed to stay within
``cache_gb``: input blobs fetched for jobs, images p2pmesh loaded or pulled (never an image the
owner had: those are not in the table), and export blobs. Least recently used goes first; what
a running job uses is kept.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

from p2pmesh.adapters.docker.images import MAX_CONFIG_BYTES, ImageConfig, Images, parse_config
from p2pmesh.core import cache as cache_mod
from p2pmesh.core.jobspec import pinned_by_digest
from p2pmesh.daemon.blobs import BlobStore
from p2pmesh.errors import ExecutorError, TransportError

PULL_TIMEOUT_S = 60.0
# A requester exports its image only once a worker asks for it (most workers hold it); the
# worker asks again meanwhile, this long at most (a docker save runs at ~100 MB/s or more).
EXPORT_WAIT_S = 300.0
# Not served by the requester this long (or it is unreachable), a worker also asks the peers it
# is connected to (at most MAX_SOURCES): any that holds the image from the mesh serves it.
FALLBACK_AFTER_S = 5.0
MAX_SOURCES = 8
EXPORT_RETRY_S = 30.0  # an export that failed (the image left the engine) is not retried sooner
LAYER_TRIES = 4  # a transfer cut short resumes from what arrived, this many times in all
MiB = 1 << 20
GiB = 1 << 30


class ImageError(Exception):
    """The image could not be got; the message says why (it ends up in the job's result)."""


Progress = Callable[[str], Awaitable[None]]


class Cache:
    """The cache table and its limit; every call runs on the store's thread (``tstore``)."""

    def __init__(self, store: Any, tstore: Any, blobs: BlobStore, limit_bytes: int) -> None:
        self.store = store
        self.tstore = tstore
        self.blobs = blobs
        self.limit_bytes = limit_bytes
        self.hits = 0
        self.misses = 0
        self.evicted = 0
        self.transferred_bytes = 0  # image bytes fetched from peers (layers and configs)
        self.in_use: dict[str, int] = {}  # key -> jobs using it now (never evicted)
        self.remove_image: Callable[[str], bool] = lambda image_id: False
        # key -> (kind, size), mirrored from the table so ``p2pmesh status`` reads no disk.
        self._mirror: dict[str, tuple[str, int]] = {}
        if store is not None:
            for key, kind, size, _, _ in tstore.call_now(store.cache_entries):
                self._mirror[key] = (kind, size)

    def kind_of(self, key: str) -> str:
        """The cache's kind for ``key`` ("" when it does not list it)."""
        entry = self._mirror.get(key)
        return entry[0] if entry else ""

    async def entries(self) -> list[cache_mod.Entry]:
        if self.store is None:
            return []
        rows = await self.tstore.call(self.store.cache_entries)
        return [cache_mod.Entry(k, t, z, u) for k, t, z, u, _ in rows]

    async def put(self, key: str, kind: str, size: int, name: str = "") -> None:
        if self.store is None:
            return
        await self.tstore.call(self.store.cache_put, key, kind, size, time.time(), name)
        self._mirror[key] = (kind, size)

    async def touch(self, key: str) -> bool:
        """Mark ``key`` used now; False when the cache does not list it."""
        if self.store is None:
            return False
        return bool(await self.tstore.call(self.store.cache_touch, key, time.time()))

    def hold(self, keys: list[str]) -> None:
        for k in keys:
            self.in_use[k] = self.in_use.get(k, 0) + 1

    def release(self, keys: list[str]) -> None:
        for k in keys:
            n = self.in_use.get(k, 0) - 1
            if n > 0:
                self.in_use[k] = n
            else:
                self.in_use.pop(k, None)

    async def evict(self) -> list[str]:
        """Remove least recently used entries until the cache fits its limit."""
        entries = await self.entries()
        gone: list[str] = []
        for e in cache_mod.to_evict(entries, self.limit_bytes, keep=frozenset(self.in_use)):
            if e.kind == "image":
                removed = await trio.to_thread.run_sync(self.remove_image, e.key)
                if not removed:
                    continue  # a container still uses it (or it is gone): next time
                self.blobs.remove(e.key)  # its config blob, if we served it (same name)
            else:
                await trio.to_thread.run_sync(self.blobs.remove, e.key)
            await self.tstore.call(self.store.cache_remove, e.key)
            self._mirror.pop(e.key, None)
            self.evicted += 1
            gone.append(e.key)
        return gone

    def view(self) -> dict[str, Any]:
        kinds: dict[str, int] = {}
        for kind, _ in self._mirror.values():
            kinds[kind] = kinds.get(kind, 0) + 1
        return {
            "used_bytes": sum(size for _, size in self._mirror.values()),
            "limit_bytes": self.limit_bytes,
            "entries": len(self._mirror),
            "by_kind": kinds,
            "hits": self.hits,
            "misses": self.misses,
            "evicted": self.evicted,
            "image_bytes_fetched": self.transferred_bytes,
        }


class ImageService:
    """The worker's and the requester's image work, on top of one engine and one blob store."""

    def __init__(
        self,
        blobs: BlobStore,
        cache: Cache,
        wire: Any,
        log: Any,
        *,
        pull: bool,
        pull_timeout_s: float = PULL_TIMEOUT_S,
        images: Images | None = None,
        tamper: bool = False,
    ) -> None:
        self.blobs = blobs
        self.cache = cache
        self.wire = wire
        self.log = log
        self.pull_allowed = pull
        self.pull_timeout_s = pull_timeout_s
        self._images = images
        # Digests of blobs that belong to exported images, and to which: what we may serve.
        self.served: dict[str, set[str]] = {}
        self._export_lock = trio.Lock()
        self._exports_send, self._exports_recv = trio.open_memory_channel[str](64)
        self._pending: set[str] = set()
        self._failed: dict[str, float] = {}  # image ID -> when its export last failed
        self.tamper = tamper  # FAULT tamper-image: serve our images with one layer damaged
        cache.remove_image = self._remove_image

    @property
    def images(self) -> Images:
        if self._images is None:
            self._images = Images()
        return self._images

    def _remove_image(self, image_id: str) -> bool:
        return self.images.remove(image_id)

    # -- requester: resolve and export ----------------------------------------------------------
    def resolve(self, image: str) -> str:
        """The ID of ``image`` in this engine, "" for a reference pinned by digest that the
        engine lacks. Raises ``ImageError`` for a name this engine does not hold."""
        found = self.images.image_id(image)
        if found:
            return found
        if pinned_by_digest(image):
            return ""
        raise ImageError(
            f"image: {image} is not in this node's Docker engine and not pinned by digest "
            "(name@sha256:…); build, pull or load it first, so that workers can get it "
            "from this node"
        )

    def is_mesh_image(self, image_id: str) -> bool:
        """An image p2pmesh loaded or pulled here (never one the owner had): we serve it to any
        peer that asks for it by its ID, as the requester did to us."""
        return self.cache.kind_of(image_id) == "image"

    def may_serve_config(self, image_id: str) -> bool:
        """A worker awarded a job of ours asks for our image's config: serve it if the export
        is complete, else start the export (the worker asks again) and say no for now."""
        if self.blobs.has(image_id) and image_id in self.served:
            return True
        if self.blobs.has(image_id):
            try:
                config = parse_config(self.blobs.path(image_id).read_bytes(), image_id)
            except (OSError, ValueError):
                config = None
            if config is not None and all(self.blobs.has(d) for d in config.diff_ids):
                self._serve(config)  # exported before a restart
                return True
        failed = self._failed.get(image_id)
        if failed is not None and time.monotonic() - failed < EXPORT_RETRY_S:
            return False
        if image_id not in self._pending:
            try:
                self._exports_send.send_nowait(image_id)
                self._pending.add(image_id)
            except trio.WouldBlock:
                pass  # asked again in a second
        return False

    async def exporter(self) -> None:
        """Run exports one at a time, as workers ask for them (started by the daemon)."""
        async for image_id in self._exports_recv:
            try:
                await self.export(image_id)
                self._failed.pop(image_id, None)
            except (ExecutorError, OSError) as exc:
                self._failed[image_id] = time.monotonic()
                self.log("warning", "cannot export image", image_id=image_id, error=str(exc))
            finally:
                self._pending.discard(image_id)

    async def export(self, image_id: str) -> None:
        """Make our image's config and layers servable blobs (once: they stay in the cache)."""
        async with self._export_lock:
            if self.blobs.has(image_id):
                try:
                    config = parse_config(self.blobs.path(image_id).read_bytes(), image_id)
                except (OSError, ValueError):
                    config = None
                if config is not None and all(self.blobs.has(d) for d in config.diff_ids):
                    self._serve(config)
                    for key in (image_id, *config.diff_ids):
                        await self.cache.touch(key)
                    return
            started = time.monotonic()
            config, sizes = await trio.to_thread.run_sync(
                self.images.export, image_id, self.blobs.put_stream
            )
            if self.tamper:
                top = self.blobs.path(config.diff_ids[-1])
                data = bytearray(top.read_bytes())
                data[len(data) // 2] ^= 0xFF
                top.write_bytes(bytes(data))
                self.log("warning", "FAULT tamper-image: one layer damaged", image_id=image_id)
            # The config last: once it is there, the export is complete.
            self.blobs.put_bytes(config.raw)
            if self.cache.kind_of(image_id) != "image":
                # (An image from the mesh keeps its entry: its config blob has the same name
                # and goes with it.)
                await self.cache.put(image_id, "export", len(config.raw))
            for diff, size in sizes.items():
                await self.cache.put(diff, "export", size)
            self._serve(config)
            self.log(
                "info",
                "image exported for the mesh",
                image_id=image_id,
                layers=len(sizes),
                bytes=sum(sizes.values()),
                seconds=round(time.monotonic() - started, 2),
            )

    def _serve(self, config: ImageConfig) -> None:
        for key in (config.image_id, *config.diff_ids):
            self.served.setdefault(key, set()).add(config.image_id)

    def images_of(self, digest: str) -> set[str]:
        """The exported images a blob belongs to (empty: not an image blob of ours)."""
        return self.served.get(digest, set())

    # -- worker: get the image ------------------------------------------------------------------
    async def ensure(
        self,
        job_id: str,
        image: str,
        image_id: str,
        requester: str,
        addrs: tuple[str, ...],
        progress: Progress,
    ) -> str:
        """Make the job's image present; return the reference to run (its ID when known)."""
        want = image_id or image
        got = await trio.to_thread.run_sync(self.images.image_id, want)
        if got and (not image_id or got == image_id):
            if await self.cache.touch(got):
                self.cache.hits += 1
            if image_id:
                await trio.to_thread.run_sync(self._tag, got, image)
            return got if image_id else image
        self.cache.misses += 1
        why: list[str] = []
        if self.pull_allowed:
            await progress(f"getting image: pulling {image} from its registry")
            pulled, err = await trio.to_thread.run_sync(
                self.images.pull, image, self.pull_timeout_s
            )
            if pulled and (not image_id or pulled == image_id):
                size = await trio.to_thread.run_sync(self.images.size, pulled)
                await self.cache.put(pulled, "image", size, image)
                self.log("info", "image pulled", job=job_id, image=image, image_id=pulled)
                return pulled if image_id else image
            why.append(err or f"the registry's {image} is {pulled}, not {image_id}")
            self.log("info", "image pull failed", job=job_id, image=image, reason=why[-1])
        else:
            why.append("pulling is off (up --no-pull)")
        if not image_id:
            raise ImageError(f"image {image} not present and not fetchable: {'; '.join(why)}")
        try:
            await self._from_mesh(job_id, image, image_id, requester, addrs, progress)
        except ImageError as exc:
            raise ImageError(f"image {image}: {exc}") from None
        return image_id

    def _tag(self, image_id: str, name: str) -> None:
        with contextlib.suppress(ExecutorError):
            self.images.tag(image_id, name)

    async def _from_mesh(
        self,
        job_id: str,
        image: str,
        image_id: str,
        peer: str,
        addrs: tuple[str, ...],
        progress: Progress,
    ) -> None:
        started = time.monotonic()
        await progress("getting image: asking the requester for its config")
        config, peer, addrs = await self._fetch_config(peer, addrs, image_id, progress)
        raw = config.raw
        missing = await trio.to_thread.run_sync(self.images.missing_layers, config)
        fetched: dict[str, Path] = {}
        total = len(raw)
        limit = self.cache.limit_bytes
        for i, diff in enumerate(missing):
            if not self.blobs.has(diff):
                total += await self._fetch_layer(
                    peer, addrs, diff, max(0, limit - total), i, len(missing), total, progress
                )
            fetched[diff] = self.blobs.path(diff)
        await progress(f"getting image: loading {len(missing)} layer(s) into the engine")
        scratch = self.blobs.root / "tmp"
        try:
            loaded = await trio.to_thread.run_sync(self.images.load, config, fetched, scratch)
        except ExecutorError as exc:
            raise ImageError(str(exc)) from None
        finally:
            # The engine holds the layers now; a second copy would only halve the cache.
            for diff in fetched:
                self.blobs.remove(diff)
        if loaded != image_id:
            raise ImageError(f"loaded {loaded}, not the offer's {image_id}")
        await trio.to_thread.run_sync(self._tag, loaded, image)
        size = await trio.to_thread.run_sync(self.images.size, loaded)
        await self.cache.put(loaded, "image", size, image)
        self.cache.transferred_bytes += total
        seconds = time.monotonic() - started
        self.log(
            "info",
            "image fetched from the mesh",
            job=job_id,
            image=image,
            image_id=image_id,
            source=peer,
            layers_fetched=len(missing),
            layers_total=len(config.diff_ids),
            bytes=total,
            seconds=round(seconds, 3),
            mib_per_s=round(total / MiB / seconds, 1) if seconds > 0 else None,
        )
        await progress(f"image ready: {total / MiB:.1f} MiB in {seconds:.1f} s")

    def _other_peers(self, requester: str) -> list[str]:
        net = getattr(self.wire, "net", None)
        peers = net.connected_peers() if net is not None else []
        return [p for p in sorted(peers) if p != requester][:MAX_SOURCES]

    async def _fetch_config(
        self, requester: str, addrs: tuple[str, ...], image_id: str, progress: Progress
    ) -> tuple[ImageConfig, str, tuple[str, ...]]:
        """The image's config, checked against its ID, and who served it: the requester, or
        (after ``FALLBACK_AFTER_S``, or at once when it is unreachable) a connected peer that
        holds the image. A peer whose config does not hash to the ID is not asked again."""
        give_up = time.monotonic() + EXPORT_WAIT_S
        others_from = time.monotonic() + FALLBACK_AFTER_S
        wait = 0.1
        bad: set[str] = set()
        last = "nobody asked"
        while True:
            sources = [(requester, addrs)]
            if time.monotonic() >= others_from:
                sources += [(p, ()) for p in self._other_peers(requester)]
            for peer, peer_addrs in sources:
                if peer in bad:
                    continue
                buf = bytearray()

                def sink(chunk: bytes, at: int, buf: bytearray = buf) -> None:
                    del buf[at:]
                    buf.extend(chunk)

                try:
                    await self.wire.fetch_from(
                        peer, peer_addrs, image_id, offset=0, max_size=MAX_CONFIG_BYTES, sink=sink
                    )
                except TransportError as exc:
                    last = str(exc)
                    if peer == requester and not last.startswith("peer refused"):
                        others_from = time.monotonic()  # the requester is unreachable
                    continue
                try:
                    return parse_config(bytes(buf), image_id), peer, peer_addrs
                except ValueError as exc:
                    if peer == requester:
                        raise ImageError(str(exc)) from None
                    bad.add(peer)
                    last = str(exc)
                    self.log("warning", "peer served a wrong image config", peer=peer, error=last)
            if time.monotonic() > give_up:
                raise ImageError(f"no peer serves image {image_id[:19]}…: {last}")
            await progress("getting image: waiting for the requester (or a peer) to export it")
            await trio.sleep(wait)
            wait = min(1.0, wait * 2)

    async def _fetch_layer(
        self,
        peer: str,
        addrs: tuple[str, ...],
        digest: str,
        max_size: int,
        index: int,
        count: int,
        before: int,
        progress: Progress,
    ) -> int:
        """One layer into the blob store, resuming a partial file; returns its size."""
        part = _Partial(self.blobs.partial(digest))
        last_error = ""

        async def report() -> None:
            while True:
                await trio.sleep(1.0)
                got = (before + part.size) / MiB
                await progress(f"getting image: layer {index + 1} of {count}, {got:.1f} MiB")

        for attempt in range(LAYER_TRIES):
            part.open()
            size: int | None = None
            failed: TransportError | None = None
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(report)
                    try:
                        size = await self.wire.fetch_from(
                            peer,
                            addrs,
                            digest,
                            offset=part.size,
                            max_size=max_size,
                            sink=part.write,
                        )
                    except TransportError as exc:
                        failed = exc  # caught in here, not wrapped in the nursery's group
                    finally:
                        nursery.cancel_scope.cancel()
            finally:
                part.close()
            if failed is not None or size is None:
                last_error = str(failed)
                self.log(
                    "info",
                    "layer transfer cut short; resuming",
                    layer=digest,
                    have=part.size,
                    attempt=attempt + 1,
                    error=last_error,
                )
                await trio.sleep(0.5 * (attempt + 1))
                continue
            got = part.digest()
            if part.size != size or got != digest:
                part.discard()
                raise ImageError(
                    f"layer {digest[:19]}… does not match its digest (got {got[:19]}…); "
                    "refused, nothing was loaded"
                )
            os.replace(part.path, self.blobs.path(digest))
            return size
        if "limit" in last_error:
            last_error += f" (this worker's cache holds {self.cache.limit_bytes} bytes: cache_gb)"
        raise ImageError(f"layer {digest[:19]}… not fetched: {last_error}")


class _Partial:
    """What has arrived of one blob, in a file that outlives a broken transfer: ``open``
    re-hashes it, so the next request asks only for the rest (``size`` is the offset)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.size = 0
        self._h = hashlib.sha256()
        self._f: Any = None

    def open(self) -> None:
        self._h = hashlib.sha256()
        self.size = 0
        if self.path.exists():
            with open(self.path, "rb") as f:
                while chunk := f.read(MiB):
                    self._h.update(chunk)
                    self.size += len(chunk)
        self._f = open(self.path, "ab")  # noqa: SIM115 - closed by close()

    def write(self, chunk: bytes, at: int) -> None:
        if at != self.size:  # the peer sends the whole blob after all: start over
            self._f.seek(0)
            self._f.truncate()
            self._h, self.size = hashlib.sha256(), 0
        self._f.write(chunk)
        self._h.update(chunk)
        self.size += len(chunk)

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None

    def digest(self) -> str:
        return "sha256:" + self._h.hexdigest()

    def discard(self) -> None:
        self.close()
        self.path.unlink(missing_ok=True)
