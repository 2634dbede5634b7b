"""Images as content: export an engine's image into blobs, load blobs back, pull with a bound.

Blocking, meant for a worker thread, like the executor. The mesh moves an image as the blobs
its own engine's ``docker save`` is made of (docs/PROTOCOL.md §7.14):

* the **config** (JSON), whose sha256 is the image ID (``docker images --no-trunc``), and which
  lists the image's layers as ``rootfs.diff_ids``;
* one **layer** per diff ID: the uncompressed layer tar, whose sha256 is that diff ID.

Both names are digests of the bytes, so a receiver checks every blob by hashing it, and the
image ID it loads is checked against the one the offer names before anything runs.

``load`` builds a ``docker load`` archive from the config and only the layers the engine lacks:
the engine's loader skips the file of a layer whose chain (that layer on top of the ones below
it) it already holds, and only reads the file otherwise (checked on engine 20.10: an archive
without the base layer's file loads on an engine that has the base image). Which chains an
engine holds is read from its images' ``RootFS.Layers``.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import requests

from p2pmesh.errors import ExecutorError

_HEX64 = re.compile(r"[0-9a-f]{64}")
MAX_CONFIG_BYTES = 4 << 20  # a config is a few KiB; bounds what a hostile holder can make us parse
MAX_LAYERS = 256  # Docker's overlay driver stops at 128


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def chain_ids(diff_ids: Iterable[str]) -> list[str]:
    """The chain ID of each layer in order: a layer is the same only on the same layers below.

    chain(0) = diff(0); chain(n) = sha256(chain(n-1) + " " + diff(n)) (the OCI image spec).
    """
    out: list[str] = []
    for diff in diff_ids:
        out.append(diff if not out else digest_of(f"{out[-1]} {diff}".encode()))
    return out


@dataclass(frozen=True, slots=True)
class ImageConfig:
    image_id: str
    raw: bytes
    diff_ids: tuple[str, ...]


def parse_config(raw: bytes, image_id: str) -> ImageConfig:
    """Check a config blob against the image ID it must hash to and read its layer list.

    Raises:
        ValueError: the bytes do not hash to ``image_id`` or are not an image config.
    """
    if len(raw) > MAX_CONFIG_BYTES:
        raise ValueError(f"image config of {len(raw)} bytes, limit {MAX_CONFIG_BYTES}")
    got = digest_of(raw)
    if got != image_id:
        raise ValueError(f"image config hashes to {got[:19]}…, not the offer's {image_id[:19]}…")
    try:
        doc = json.loads(raw)
        diffs = doc["rootfs"]["diff_ids"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"not an image config: {type(exc).__name__}") from None
    if not isinstance(diffs, list) or not 0 < len(diffs) <= MAX_LAYERS:
        raise ValueError("image config: rootfs.diff_ids must list 1..256 layers")
    for d in diffs:
        if not isinstance(d, str) or not d.startswith("sha256:") or not _HEX64.fullmatch(d[7:]):
            raise ValueError("image config: a diff ID is not a sha256 digest")
    return ImageConfig(image_id, raw, tuple(diffs))


class _ChunkReader(io.RawIOBase):
    """A file object over an iterator of byte chunks (the engine's ``docker save`` stream)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._buf = b""

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        while not self._buf:
            try:
                self._buf = next(self._chunks)
            except StopIteration:
                return 0
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n


class Images:
    """Image operations on one engine (by default the one ``DOCKER_HOST`` names)."""

    def __init__(self, client: docker.DockerClient | None = None) -> None:
        if client is None:
            try:
                client = docker.from_env(timeout=300)
            except (docker.errors.DockerException, requests.RequestException) as exc:
                raise ExecutorError(f"cannot connect to the Docker engine: {exc}") from exc
        self._client = client
        self._lock = threading.Lock()  # one load at a time: loads of shared layers race

    # -- what the engine holds ------------------------------------------------------------------
    def image_id(self, ref: str) -> str | None:
        """The ID of ``ref`` (a name, ``name@digest`` or an ID) in this engine, or None."""
        try:
            return str(self._client.api.inspect_image(ref)["Id"])
        except docker.errors.ImageNotFound:
            return None
        except (docker.errors.DockerException, requests.RequestException) as exc:
            raise ExecutorError(f"cannot inspect image {ref}: {exc}") from exc

    def chains(self) -> set[str]:
        """Chain IDs of every layer stack the engine's images stand on."""
        try:
            rows = self._client.api.images(all=True)
            out: set[str] = set()
            for row in rows:
                layers = self._client.api.inspect_image(row["Id"])["RootFS"].get("Layers") or []
                out.update(chain_ids(layers))
        except (docker.errors.DockerException, requests.RequestException) as exc:
            raise ExecutorError(f"cannot list the engine's layers: {exc}") from exc
        return out

    def missing_layers(self, config: ImageConfig) -> list[str]:
        """Diff IDs of the layers whose chains the engine lacks (in order, no repeats)."""
        have = self.chains()
        out: list[str] = []
        for diff, chain in zip(config.diff_ids, chain_ids(config.diff_ids), strict=True):
            if chain not in have and diff not in out:
                out.append(diff)
        return out

    # -- export (the holder's side) -------------------------------------------------------------
    def export(
        self, image_id: str, put: Callable[[io.BufferedIOBase], tuple[str, int]]
    ) -> tuple[ImageConfig, dict[str, int]]:
        """Stream ``docker save`` of ``image_id`` into blobs; return its config and layer sizes.

        ``put`` stores one file object as a blob and returns (digest, size). Every layer and the
        config are checked against the names the engine's own manifest gives them.
        """
        try:
            stream = self._client.api.get_image(image_id, chunk_size=1 << 20)
        except (docker.errors.DockerException, requests.RequestException) as exc:
            raise ExecutorError(f"cannot save image {image_id[:19]}…: {exc}") from exc
        stored: dict[str, int] = {}
        config_raw = b""
        try:
            with tarfile.open(fileobj=io.BufferedReader(_ChunkReader(stream)), mode="r|") as tar:
                for member in tar:
                    f = tar.extractfile(member) if member.isfile() else None
                    if f is None:
                        continue
                    name = member.name
                    if name.endswith("/layer.tar"):
                        digest, size = put(f)  # type: ignore[arg-type]
                        stored[digest] = size
                    elif name == image_id[7:] + ".json":
                        config_raw = f.read(MAX_CONFIG_BYTES + 1)
        except (tarfile.TarError, OSError, requests.RequestException) as exc:
            raise ExecutorError(f"cannot read the saved image: {exc}") from exc
        try:
            config = parse_config(config_raw, image_id)
        except ValueError as exc:
            raise ExecutorError(f"engine's saved image is not what it names: {exc}") from exc
        missing = [d for d in config.diff_ids if d not in stored]
        if missing:
            raise ExecutorError(f"saved image lacks layer {missing[0][:19]}…")
        return config, {d: stored[d] for d in config.diff_ids}

    # -- load (the fetcher's side) --------------------------------------------------------------
    def load(self, config: ImageConfig, layers: dict[str, Path], scratch: Path) -> str:
        """Load the image from its config and the layer files the engine lacks; return its ID.

        Raises:
            ExecutorError: the engine refused the archive, or what it loaded is not
                ``config.image_id`` (then nothing of it is left tagged).
        """
        hex_id = config.image_id[7:]
        entries = [f"{d[7:]}/layer.tar" for d in config.diff_ids]
        manifest = [{"Config": f"{hex_id}.json", "RepoTags": None, "Layers": entries}]
        archive = scratch / f"load-{hex_id[:16]}.tar"
        try:
            with tarfile.open(archive, "w", format=tarfile.PAX_FORMAT) as tar:
                _add_bytes(tar, "manifest.json", json.dumps(manifest).encode())
                _add_bytes(tar, f"{hex_id}.json", config.raw)
                done: set[str] = set()
                for diff in config.diff_ids:
                    if diff in layers and diff not in done:
                        tar.add(str(layers[diff]), arcname=f"{diff[7:]}/layer.tar")
                        done.add(diff)
            with self._lock, open(archive, "rb") as f:
                try:
                    out = self._client.api.load_image(f)
                    for line in out if isinstance(out, Iterable) else ():
                        if isinstance(line, dict) and line.get("error"):
                            raise ExecutorError(f"engine refused the image: {line['error']}")
                except (docker.errors.DockerException, requests.RequestException) as exc:
                    raise ExecutorError(f"engine refused the image: {exc}") from exc
        finally:
            archive.unlink(missing_ok=True)
        got = self.image_id(config.image_id)
        if got != config.image_id:
            raise ExecutorError(f"engine loaded {got or 'nothing'}, not {config.image_id}")
        return got

    def tag(self, image_id: str, name: str) -> bool:
        """Give ``image_id`` the offer's ``name`` unless the name already means another image
        here (the owner's own tag is never moved); True when the name now means ``image_id``."""
        held = self.image_id(name)
        if held == image_id:
            return True
        if held is not None:
            return False
        repo, tag = _split(name)
        try:
            return bool(self._client.api.tag(image_id, repo, tag))
        except (docker.errors.DockerException, requests.RequestException) as exc:
            raise ExecutorError(f"cannot tag {image_id[:19]}… as {name}: {exc}") from exc

    def remove(self, image_id: str) -> bool:
        """Remove an image p2pmesh loaded (with its tags); True once it is gone (also when it
        was gone already), False while a container still uses it."""
        try:
            self._client.api.remove_image(image_id, force=True, noprune=False)
        except docker.errors.ImageNotFound:
            return True
        except docker.errors.APIError:
            return False  # a container still uses it: try again at the next eviction
        except requests.RequestException as exc:
            raise ExecutorError(f"cannot remove {image_id[:19]}…: {exc}") from exc
        return True

    def size(self, image_id: str) -> int:
        try:
            return int(self._client.api.inspect_image(image_id).get("Size") or 0)
        except (docker.errors.DockerException, requests.RequestException):
            return 0

    # -- registry -------------------------------------------------------------------------------
    def pull(self, name: str, timeout_s: float) -> tuple[str | None, str]:
        """Pull ``name`` from its registry within ``timeout_s``: (image ID or None, why not).

        The pull runs on its own thread with its own client, so a registry that never answers
        costs ``timeout_s`` and no more (the thread ends when the engine gives up).
        """
        box: dict[str, Any] = {}

        def run() -> None:
            try:
                client = docker.from_env(timeout=max(1, int(timeout_s)))
                try:
                    repo, tag = _split(name)
                    client.api.pull(repo, tag=tag)
                finally:
                    client.close()
                box["ok"] = True
            except Exception as exc:
                box["error"] = " ".join(str(exc).split())[:200]

        t = threading.Thread(target=run, name="p2pmesh-pull", daemon=True)
        started = time.monotonic()
        t.start()
        t.join(timeout_s)
        if t.is_alive():
            return None, f"registry did not answer within {timeout_s:.0f} s"
        if "ok" not in box:
            return None, f"pull failed after {time.monotonic() - started:.1f} s: {box['error']}"
        got = self.image_id(name)
        return got, "" if got else "pulled, yet the engine does not show it"


def _split(name: str) -> tuple[str, str | None]:
    """``repo[:tag][@digest]`` → (repo, tag or digest) as the engine's API wants them."""
    if "@" in name:
        repo, digest = name.split("@", 1)
        return repo, digest
    head, _, last = name.rpartition("/")
    if ":" in last:
        base, tag = last.split(":", 1)
        return (f"{head}/{base}" if head else base), tag
    return name, "latest"


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))
