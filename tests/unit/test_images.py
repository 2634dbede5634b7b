"""Images by content (issue 17): config and layer digests, chain IDs, resumable layer transfer,
the blob stream's offset, and the cache's least-recently-used eviction."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
import trio

from p2pmesh.adapters.docker.images import _split, chain_ids, parse_config
from p2pmesh.core.cache import Entry, to_evict, used_bytes
from p2pmesh.daemon.blobs import BlobStore
from p2pmesh.daemon.images import Cache, ImageError, ImageService, _Partial
from p2pmesh.errors import TransportError


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


LAYER_A, LAYER_B = b"layer a" * 1000, b"layer b" * 3000
CONFIG = json.dumps(
    {
        "architecture": "amd64",
        "rootfs": {"type": "layers", "diff_ids": [_digest(LAYER_A), _digest(LAYER_B)]},
    }
).encode()
IMAGE_ID = _digest(CONFIG)


# -- config and digests -------------------------------------------------------------------------
def test_a_config_is_checked_against_the_image_id() -> None:
    config = parse_config(CONFIG, IMAGE_ID)
    assert config.diff_ids == (_digest(LAYER_A), _digest(LAYER_B))
    with pytest.raises(ValueError, match="hashes to"):
        parse_config(CONFIG + b" ", IMAGE_ID)
    with pytest.raises(ValueError, match="not an image config"):
        parse_config(b"[]", _digest(b"[]"))
    bad = json.dumps({"rootfs": {"diff_ids": ["sha256:xyz"]}}).encode()
    with pytest.raises(ValueError, match="diff ID"):
        parse_config(bad, _digest(bad))
    empty = json.dumps({"rootfs": {"diff_ids": []}}).encode()
    with pytest.raises(ValueError, match=r"1\.\.256"):
        parse_config(empty, _digest(empty))


def test_chain_ids_follow_the_oci_rule() -> None:
    a, b = _digest(b"a"), _digest(b"b")
    assert chain_ids([a]) == [a]
    assert chain_ids([a, b]) == [a, _digest(f"{a} {b}".encode())]
    # The same layer on another base is another chain: it must be fetched again.
    assert chain_ids([b, a])[1] != chain_ids([a, b])[1]


def test_image_names_split_as_the_engine_wants_them() -> None:
    assert _split("p2pmesh/busybox:1") == ("p2pmesh/busybox", "1")
    assert _split("localhost:5000/x") == ("localhost:5000/x", "latest")
    assert _split("localhost:5000/x:2") == ("localhost:5000/x", "2")
    assert _split("x@sha256:" + "0" * 64) == ("x", "sha256:" + "0" * 64)


# -- resumable transfer -------------------------------------------------------------------------
class FakeWire:
    """Serves blobs from a dict like the blob stream does: from ``offset`` when it resumes,
    cut after ``cut_after`` bytes on the first tries, or with bytes flipped (a tampered peer)."""

    def __init__(self, blobs: dict[str, bytes], *, cut_after: int = 0, cuts: int = 0) -> None:
        self.blobs = blobs
        self.cut_after = cut_after
        self.cuts = cuts
        self.requests: list[tuple[str, int]] = []
        self.resume = True

    async def fetch_from(
        self, peer: str, addrs: Any, digest: str, *, offset: int, max_size: int, sink: Any
    ) -> int:
        self.requests.append((digest, offset))
        data = self.blobs[digest]
        if len(data) > max_size:
            raise TransportError("too large")
        at = offset if self.resume else 0
        sent = 0
        while at < len(data):
            chunk = data[at : at + 1000]
            sink(chunk, at)
            at += len(chunk)
            sent += len(chunk)
            if self.cuts and sent >= self.cut_after:
                self.cuts -= 1
                raise TransportError("stream closed mid-frame")
        return len(data)


def _service(tmp_path: Path, wire: FakeWire) -> ImageService:
    blobs = BlobStore(tmp_path / "blobs")
    cache = Cache(None, None, blobs, 1 << 30)
    return ImageService(blobs, cache, wire, lambda *a, **k: None, pull=False)


async def _no_progress(detail: str) -> None:
    return None


@pytest.mark.parametrize("resume", [True, False])
def test_a_cut_layer_transfer_resumes_from_what_arrived(tmp_path: Path, resume: bool) -> None:
    d = _digest(LAYER_B)
    wire = FakeWire({d: LAYER_B}, cut_after=5000, cuts=2)
    wire.resume = resume  # an older peer ignores the offset and sends it all again
    svc = _service(tmp_path, wire)

    async def main() -> int:
        return await svc._fetch_layer("peer", (), d, 1 << 20, 0, 1, 0, _no_progress)

    assert trio.run(main) == len(LAYER_B)
    assert svc.blobs.path(d).read_bytes() == LAYER_B
    # Each try asks from what arrived; a peer that ignores the offset restarts the file.
    assert [o for _, o in wire.requests] == ([0, 5000, 10000] if resume else [0, 5000, 5000])
    assert not svc.blobs.partial(d).exists()


def test_a_tampered_layer_is_refused_and_leaves_nothing(tmp_path: Path) -> None:
    d = _digest(LAYER_A)
    svc = _service(tmp_path, FakeWire({d: LAYER_A[:-1] + b"X"}))

    async def main() -> int:
        return await svc._fetch_layer("peer", (), d, 1 << 20, 0, 1, 0, _no_progress)

    with pytest.raises(ImageError, match="does not match its digest"):
        trio.run(main)
    assert not svc.blobs.has(d) and not svc.blobs.partial(d).exists()


def test_a_config_that_is_not_the_offered_image_is_refused(tmp_path: Path) -> None:
    other = CONFIG.replace(b"amd64", b"arm64")
    svc = _service(tmp_path, FakeWire({IMAGE_ID: other}))

    async def main() -> None:
        await svc._from_mesh("job", "x:1", IMAGE_ID, "peer", (), _no_progress)

    with pytest.raises(ImageError, match="hashes to"):
        trio.run(main)


def test_a_partial_file_rehashes_what_it_holds(tmp_path: Path) -> None:
    p = _Partial(tmp_path / "part")
    p.open()
    p.write(b"hello ", 0)
    p.close()
    q = _Partial(tmp_path / "part")
    q.open()
    assert q.size == 6
    q.write(b"world", 6)
    q.close()
    assert q.digest() == _digest(b"hello world")
    r = _Partial(tmp_path / "part")
    r.open()
    r.write(b"hello world", 0)  # the peer started over: so do we
    r.close()
    assert r.size == 11 and r.digest() == _digest(b"hello world")


# -- cache eviction -----------------------------------------------------------------------------
def _entries() -> list[Entry]:
    return [
        Entry("sha256:old", "image", 50, 1.0),
        Entry("sha256:mid", "input", 30, 2.0),
        Entry("sha256:new", "image", 40, 3.0),
    ]


def test_eviction_takes_the_least_recently_used_until_it_fits() -> None:
    assert used_bytes(_entries()) == 120
    assert to_evict(_entries(), 200) == []
    assert [e.key for e in to_evict(_entries(), 70)] == ["sha256:old"]
    assert [e.key for e in to_evict(_entries(), 40)] == ["sha256:old", "sha256:mid"]
    assert [e.key for e in to_evict(_entries(), 0)] == ["sha256:old", "sha256:mid", "sha256:new"]


def test_eviction_never_takes_what_a_running_job_uses() -> None:
    keep = frozenset({"sha256:old"})
    assert [e.key for e in to_evict(_entries(), 70, keep=keep)] == ["sha256:mid", "sha256:new"]
    assert to_evict(_entries(), 0, keep=frozenset(e.key for e in _entries())) == []
