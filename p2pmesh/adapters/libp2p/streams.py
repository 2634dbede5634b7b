"""Length-prefixed frames over libp2p streams, with size caps and deadlines.

A frame is a 4-byte big-endian length followed by that many bytes (PROTOCOL.md §5). A reader
refuses a length above the per-protocol cap before reading the body, so a hostile peer cannot
make us buffer more than the cap, and every read runs under a deadline so it cannot stall us.
"""

from __future__ import annotations

from typing import Any

import trio

from p2pmesh.errors import TransportError

FRAME_HEADER = 4


async def read_exactly(stream: Any, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        try:
            chunk = await stream.read(n - len(buf))
        except Exception as exc:
            raise TransportError(f"stream read failed: {type(exc).__name__}") from exc
        if not chunk:
            raise TransportError("stream closed mid-frame")
        buf += chunk
    return bytes(buf)


async def read_frame(stream: Any, *, max_bytes: int, timeout_s: float) -> bytes:
    with trio.move_on_after(timeout_s) as scope:
        header = await read_exactly(stream, FRAME_HEADER)
        size = int.from_bytes(header, "big")
        if size > max_bytes:
            raise TransportError(f"frame of {size} bytes exceeds limit {max_bytes}")
        return await read_exactly(stream, size)
    assert scope.cancelled_caught
    raise TransportError(f"no frame within {timeout_s:.0f} s")


async def write_frame(stream: Any, payload: bytes, *, timeout_s: float) -> None:
    with trio.move_on_after(timeout_s) as scope:
        try:
            await stream.write(len(payload).to_bytes(FRAME_HEADER, "big") + payload)
        except Exception as exc:
            raise TransportError(f"stream write failed: {type(exc).__name__}") from exc
        return
    assert scope.cancelled_caught
    raise TransportError(f"write not finished within {timeout_s:.0f} s")
