"""A peer that is not a job's requester, asking a node for the job's live log (PROTOCOL.md §7.5a).

Standalone (``python logpeer.py --connect MULTIADDR --job ID``): a bare py-libp2p host with a key
of its own connects to one node and, on the log stream, sends one request per case below, each on
a new stream, printing one JSON document on stdout: for each case, the decoded answer, or
``{"closed": reason}`` when the node closed the stream without one.

Cases: the job from offset 0 (a stranger's request for a real job), an unknown job, a negative
offset, an offset past the log cap, a map with an extra field, undecodable bytes, and a frame
header announcing more than the request cap (the node must close without reading it).
Nothing here is imported by p2pmesh itself.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

import multiaddr
import trio
from libp2p import new_host
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.peer.peerinfo import info_from_p2p_addr

from p2pmesh.adapters.libp2p.net import LOG_PROTOCOL
from p2pmesh.adapters.libp2p.streams import read_frame, write_frame
from p2pmesh.core import codec
from p2pmesh.core.auction import logs
from p2pmesh.errors import DecodeError, TransportError


def cases(job_id: str) -> dict[str, bytes | None]:
    """Request frames by case name; None: a bare oversized header instead of a frame."""
    return {
        "stranger": logs.build_log_request(job_id, 0),
        "unknown_job": logs.build_log_request("f" * 32, 0),
        "negative_offset": codec.encode({"job_id": job_id, "offset": -1}),
        "huge_offset": codec.encode({"job_id": job_id, "offset": 1 << 40}),
        "extra_field": codec.encode({"job_id": job_id, "offset": 0, "more": True}),
        "garbage": b"\xc1\xc1",
        "oversize": None,
    }


async def ask(host: Any, peer: Any, frame: bytes | None) -> dict[str, Any]:
    stream = await host.new_stream(peer, [LOG_PROTOCOL])
    try:
        if frame is None:
            await stream.write((logs.MAX_LOG_REQUEST + 1).to_bytes(4, "big"))
        else:
            await write_frame(stream, frame, timeout_s=10)
        try:
            raw = await read_frame(stream, max_bytes=logs.MAX_LOG_REPLY, timeout_s=15)
        except TransportError as exc:
            return {"closed": str(exc)}
        try:
            reply = codec.decode(raw, max_bytes=logs.MAX_LOG_REPLY)
        except DecodeError as exc:
            return {"undecodable": str(exc)}
        if isinstance(reply, dict) and isinstance(reply.get("data"), bytes):
            reply["data"] = reply["data"].decode(errors="replace")
        return {"reply": reply}
    finally:
        await stream.close()


async def run(target: str, job_id: str) -> dict[str, Any]:
    info = info_from_p2p_addr(multiaddr.Multiaddr(target))
    host = new_host(key_pair=create_new_key_pair())
    out: dict[str, Any] = {"peer_id": str(host.get_id())}
    async with host.run([multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]):
        with trio.fail_after(60):
            await host.connect(info)
            for name, frame in cases(job_id).items():
                out[name] = await ask(host, info.peer_id, frame)
        await host.close()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--connect", required=True, help="the node's multiaddr, ending in /p2p/ID")
    ap.add_argument("--job", required=True, help="a job ID the node runs")
    args = ap.parse_args(argv)
    logging.disable(logging.WARNING)  # py-libp2p's routine warnings are not our output
    result = trio.run(run, args.connect, args.job)
    sys.stdout.write(json.dumps(result, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
