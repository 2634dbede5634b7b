"""Content-addressed blob store in the node home: ``blobs/<hex of sha256>``.

Inputs (files as they are, folders as deterministic tar archives) and outputs live here, named
by their digest, so any transfer is verified by hashing what arrived. Writes go to a temporary
file and are renamed into place only once the digest matches, so a crash never leaves a blob
that lies about its content.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from p2pmesh.errors import ValidationError

_DIGEST = re.compile(r"^sha256:([0-9a-f]{64})$")
CHUNK = 1 << 20
_TRANSFERS = itertools.count()


def hex_of(digest: str) -> str:
    m = _DIGEST.match(digest)
    if not m:
        raise ValidationError(f"not a sha256 digest: {digest[:80]!r}")
    return m[1]


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        (root / "tmp").mkdir(mode=0o700, exist_ok=True)

    def path(self, digest: str) -> Path:
        return self.root / hex_of(digest)

    def has(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def size(self, digest: str) -> int:
        return self.path(digest).stat().st_size

    def put_bytes(self, data: bytes) -> str:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        if not self.has(digest):
            tmp = self.root / "tmp" / f"{os.getpid()}-{next(_TRANSFERS)}-{hex_of(digest)}"
            tmp.write_bytes(data)
            tmp.replace(self.path(digest))
        return digest

    def put_file(self, src: Path) -> tuple[str, int]:
        h = hashlib.sha256()
        tmp = self.root / "tmp" / f"{os.getpid()}-{next(_TRANSFERS)}-{src.name[:40]}"
        size = 0
        with open(src, "rb") as f, open(tmp, "wb") as out:
            while chunk := f.read(CHUNK):
                h.update(chunk)
                out.write(chunk)
                size += len(chunk)
        digest = "sha256:" + h.hexdigest()
        tmp.replace(self.path(digest))
        return digest, size

    def put_stream(self, src: BinaryIO) -> tuple[str, int]:
        """Store what ``src`` reads (an image layer streamed out of the engine)."""
        h = hashlib.sha256()
        tmp = self.root / "tmp" / f"{os.getpid()}-{next(_TRANSFERS)}-stream"
        size = 0
        try:
            with open(tmp, "wb") as out:
                while chunk := src.read(CHUNK):
                    h.update(chunk)
                    out.write(chunk)
                    size += len(chunk)
            digest = "sha256:" + h.hexdigest()
            tmp.replace(self.path(digest))
        finally:
            tmp.unlink(missing_ok=True)
        return digest, size

    def partial(self, digest: str) -> Path:
        """Where a resumable transfer of ``digest`` keeps what has arrived so far: one file per
        digest (not per transfer), so a transfer cut short resumes where it stopped."""
        return self.root / "tmp" / f"partial-{hex_of(digest)}"

    def remove(self, digest: str) -> int:
        """Delete a blob; the bytes freed (0 if it was not there)."""
        path = self.path(digest)
        try:
            size = path.stat().st_size
            path.unlink()
        except FileNotFoundError:
            return 0
        return size

    def writer(self, digest: str, size: int) -> BlobWriter:
        return BlobWriter(self, digest, size)

    def read_chunks(self, digest: str) -> Iterator[bytes]:
        with open(self.path(digest), "rb") as f:
            while chunk := f.read(CHUNK):
                yield chunk


class BlobWriter:
    """Receives a blob piece by piece; ``commit`` checks size and digest before it counts."""

    def __init__(self, store: BlobStore, digest: str, size: int) -> None:
        self.store = store
        self.digest = digest
        self.expected = size
        # Unique per transfer: the same blob may be fetched from two peers at once (two
        # replicas with identical logs); each writes its own file and the first commit wins.
        self.tmp = store.root / "tmp" / f"{os.getpid()}-recv-{next(_TRANSFERS)}-{hex_of(digest)}"
        self._f = open(self.tmp, "wb")  # noqa: SIM115 - closed in commit/abort
        self._h = hashlib.sha256()
        self.received = 0

    def write(self, chunk: bytes) -> None:
        self.received += len(chunk)
        if self.received > self.expected:
            raise ValidationError("blob larger than announced")
        self._h.update(chunk)
        self._f.write(chunk)

    def commit(self) -> None:
        self._f.close()
        got = "sha256:" + self._h.hexdigest()
        if self.received != self.expected or got != self.digest:
            self.tmp.unlink(missing_ok=True)
            raise ValidationError(f"blob does not match its digest (got {got[:20]}…)")
        # Same content either way, so replacing a concurrent winner's file is harmless.
        os.replace(self.tmp, self.store.path(self.digest))

    def abort(self) -> None:
        self._f.close()
        self.tmp.unlink(missing_ok=True)
