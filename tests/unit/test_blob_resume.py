"""The blob stream resumes from an offset (PROTOCOL.md §7.6), over real libp2p streams.

Node A serves one blob; node B fetches it with ``JobWire.fetch_from``: whole, from an offset
(only the rest comes, at its position), and with an offset past the end (the whole blob comes,
from position 0, as from a server that predates the field).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import trio

from p2pmesh.adapters.libp2p.net import JobWire, MeshNet
from p2pmesh.errors import TransportError

DATA = bytes(range(256)) * 9000  # 2.2 MiB: three 1 MiB frames
DIGEST = "sha256:" + hashlib.sha256(DATA).hexdigest()


async def _fetch(
    tmp_path: Path, offset: int, max_size: int = 1 << 30
) -> list[tuple[int, int]] | TransportError:
    blob = tmp_path / "blob"
    blob.write_bytes(DATA)
    got: list[tuple[int, int]] = []
    buf = bytearray()

    def sink(chunk: bytes, at: int) -> None:
        got.append((at, len(chunk)))
        del buf[at - (offset if got[0][0] else 0) :]
        buf.extend(chunk)

    send_a, _ = trio.open_memory_channel[Any](64)
    send_b, _ = trio.open_memory_channel[Any](64)
    a = MeshNet(bytes([7]) * 32, send_a, local_records=list)
    b = MeshNet(bytes([8]) * 32, send_b, local_records=list)
    async with a.running(["/ip4/127.0.0.1/tcp/0"], mdns=False):
        JobWire(a, may_fetch=lambda peer, digest: digest == DIGEST, blob_path=lambda d: blob)
        async with b.running(["/ip4/127.0.0.1/tcp/0"], mdns=False):
            wire = JobWire(b, may_fetch=lambda peer, digest: False, blob_path=lambda d: None)
            addr = f"{a.listen_addrs()[0]}/p2p/{a.peer_id}"
            with trio.fail_after(30):
                try:
                    size = await wire.fetch_from(
                        a.peer_id, (addr,), DIGEST, offset=offset, max_size=max_size, sink=sink
                    )
                except TransportError as exc:  # caught here: the nursery would wrap it
                    return exc
    assert size == len(DATA)
    start = got[0][0]
    assert bytes(buf) == DATA[start:]
    return got


async def test_a_whole_blob_comes_in_chunks_from_position_0(tmp_path: Path) -> None:
    got = await _fetch(tmp_path, 0)
    assert not isinstance(got, TransportError)
    assert got[0][0] == 0 and len(got) == 3 and sum(n for _, n in got) == len(DATA)


async def test_a_resumed_fetch_gets_only_the_rest(tmp_path: Path) -> None:
    got = await _fetch(tmp_path, 1_500_000)
    assert not isinstance(got, TransportError)
    assert got[0][0] == 1_500_000
    assert sum(n for _, n in got) == len(DATA) - 1_500_000


async def test_an_offset_past_the_end_gets_the_whole_blob(tmp_path: Path) -> None:
    got = await _fetch(tmp_path, len(DATA) + 1)
    assert not isinstance(got, TransportError)
    assert got[0][0] == 0 and sum(n for _, n in got) == len(DATA)


async def test_a_blob_larger_than_allowed_is_refused_before_its_bytes(tmp_path: Path) -> None:
    got = await _fetch(tmp_path, 0, max_size=1000)
    assert isinstance(got, TransportError) and "limit 1000" in str(got)
