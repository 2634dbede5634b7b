"""Live logs (PROTOCOL.md §7.5a): the core's rules, and the log stream over real libp2p streams.

The rules: who may read a job's log (only the peer that awarded it, as the worker's ``Node``
sees it through a whole job flow), which bytes answer an offset, and every limit a hostile
request or reply can break. The stream: a ``JobWire`` serving the log protocol to a bare
py-libp2p host writing frames by hand, and a ``JobWire`` asking a host that does not speak the
protocol (an older release) or answers outside the rules (a hostile worker).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import msgpack
import multiaddr
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st
from libp2p import new_host
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.peer.peerinfo import info_from_p2p_addr

from p2pmesh.adapters.libp2p.net import LOG_PROTOCOL, OLD_PEER, JobWire, MeshNet
from p2pmesh.adapters.libp2p.streams import read_frame, write_frame
from p2pmesh.core import codec
from p2pmesh.core.auction import logs
from p2pmesh.errors import DecodeError, TransportError, ValidationError
from tests.unit.test_auction_flow import JOB_ID, Mesh, Script, make_job

CAP = logs.LOG_END_MAX


# -- requests -------------------------------------------------------------------------------
def test_a_request_round_trips() -> None:
    raw = logs.build_log_request(JOB_ID, 1234)
    assert logs.parse_log_request(raw) == logs.LogRequest(JOB_ID, 1234)
    assert logs.parse_log_request(logs.build_log_request(JOB_ID, CAP)).offset == CAP


@pytest.mark.parametrize(
    "body",
    [
        {"job_id": JOB_ID, "offset": -1},
        {"job_id": JOB_ID, "offset": CAP + 1},
        {"job_id": JOB_ID, "offset": 2**63},
        {"job_id": JOB_ID, "offset": True},
        {"job_id": JOB_ID, "offset": "0"},
        {"job_id": "A" * 32, "offset": 0},
        {"job_id": "ab", "offset": 0},
        {"job_id": JOB_ID},
        {"job_id": JOB_ID, "offset": 0, "from": "x"},
    ],
    ids=[
        "negative",
        "past-cap",
        "huge",
        "bool",
        "text-offset",
        "upper-hex",
        "short-id",
        "no-offset",
        "extra-field",
    ],
)
def test_a_request_outside_the_rules_is_refused(body: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        logs.parse_log_request(codec.encode(body))


@pytest.mark.parametrize(
    "raw",
    [b"", b"\xc1", b"\x92\x01\x02", codec.encode({"job_id": JOB_ID, "offset": 0, "x": "y" * 300})],
    ids=["empty", "invalid", "a-list", "oversize"],
)
def test_a_request_that_is_no_small_map_is_refused(raw: bytes) -> None:
    with pytest.raises((DecodeError, ValidationError)):
        logs.parse_log_request(raw)


# The decoders' invariant (STYLE R7): on any input, a valid value or one of their errors.
_maps = st.dictionaries(
    st.sampled_from(["job_id", "offset", "ok", "data", "ended", "error", "x"]),
    st.one_of(
        st.integers(min_value=-(2**63), max_value=2**64 - 1),
        st.booleans(),
        st.binary(max_size=64),
        st.text(max_size=40),
        st.just(JOB_ID),
        st.none(),
    ),
    max_size=6,
)


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.binary(max_size=300), _maps.map(lambda d: msgpack.packb(d))))
def test_any_request_bytes_parse_or_are_refused(raw: bytes) -> None:
    try:
        req = logs.parse_log_request(raw)
    except (DecodeError, ValidationError):
        return
    assert 0 <= req.offset <= CAP and len(req.job_id) == 32


@settings(max_examples=400, deadline=None)
@given(
    st.one_of(st.binary(max_size=300), _maps.map(lambda d: msgpack.packb(d))),
    st.integers(min_value=0, max_value=CAP),
)
def test_any_reply_bytes_parse_or_are_refused(raw: bytes, asked: int) -> None:
    try:
        chunk = logs.parse_log_reply(raw, asked=asked)
    except (DecodeError, ValidationError, logs.LogRefused):
        return
    assert chunk.offset == asked and len(chunk.data) <= logs.LOG_CHUNK_BYTES
    assert chunk.next_offset <= CAP


@given(st.integers(min_value=0, max_value=CAP + 10), st.integers(0, CAP), st.booleans())
def test_a_slice_is_within_the_log_and_one_chunk(offset: int, size: int, ended: bool) -> None:
    span = logs.log_slice(offset, size, ended)
    if isinstance(span, str):
        assert offset > size and (ended or offset > CAP)
        return
    start, end = span
    assert start == offset and start <= end <= max(size, offset)
    assert end - start <= logs.LOG_CHUNK_BYTES


# -- which bytes ------------------------------------------------------------------------------
def test_an_offset_gets_at_most_one_chunk_of_what_is_there() -> None:
    assert logs.log_slice(0, 10, False) == (0, 10)
    assert logs.log_slice(4, 10, True) == (4, 10)
    assert logs.log_slice(10, 10, True) == (10, 10)  # at the end: nothing, and ended
    big = 3 * logs.LOG_CHUNK_BYTES
    assert logs.log_slice(5, big, False) == (5, 5 + logs.LOG_CHUNK_BYTES)


def test_an_offset_past_the_end_waits_while_running_and_is_refused_once_ended() -> None:
    # A running log may still reach it (a follower resuming after the file was moved away).
    assert logs.log_slice(20, 10, False) == (20, 20)
    assert logs.log_slice(20, 10, True) == logs.PAST_END
    assert logs.log_slice(CAP + 1, 10, False) == logs.PAST_END


# -- replies ----------------------------------------------------------------------------------
def test_a_reply_round_trips_and_a_refusal_carries_its_words() -> None:
    chunk = logs.LogChunk(7, b"hello\n", True)
    assert logs.parse_log_reply(logs.build_log_reply(chunk), asked=7) == chunk
    with pytest.raises(logs.LogRefused, match=r"^not the requester of this job$"):
        logs.parse_log_reply(logs.build_log_refusal(logs.NOT_REQUESTER), asked=0)


def test_a_worker_never_builds_a_reply_over_the_limits() -> None:
    with pytest.raises(ValueError):
        logs.build_log_reply(logs.LogChunk(0, b"x" * (logs.LOG_CHUNK_BYTES + 1), False))
    with pytest.raises(ValueError):
        logs.build_log_reply(logs.LogChunk(CAP, b"x", False))


@pytest.mark.parametrize(
    ("body", "asked"),
    [
        ({"ok": True, "offset": 5, "data": b"x", "ended": False}, 0),  # another offset
        ({"ok": True, "offset": 0, "data": b"x" * (logs.LOG_CHUNK_BYTES + 1), "ended": False}, 0),
        ({"ok": True, "offset": CAP, "data": b"xy", "ended": True}, CAP),  # past the cap
        ({"ok": True, "offset": -1, "data": b"", "ended": True}, -1),
        ({"ok": True, "offset": 0, "data": "text", "ended": False}, 0),  # not bin
        ({"ok": True, "offset": 0, "data": b"", "ended": 1}, 0),
        ({"ok": True, "offset": 0, "data": b"", "ended": False, "more": 1}, 0),
        ({"ok": True, "offset": 0, "data": b""}, 0),
        ({"ok": 1, "offset": 0, "data": b"", "ended": False}, 0),
        ({"ok": False, "error": "x" * 201}, 0),
        ({"ok": False}, 0),
    ],
    ids=[
        "other-offset",
        "oversize-chunk",
        "past-cap",
        "negative-offset",
        "text-data",
        "int-ended",
        "extra-field",
        "no-ended",
        "ok-not-bool",
        "long-error",
        "no-error",
    ],
)
def test_a_reply_outside_the_rules_is_refused(body: dict[str, Any], asked: int) -> None:
    # Written by msgpack itself: our encoder would not build some of these (a bin over the
    # codec's limit); keys sorted, so only the rule under test is broken.
    raw = msgpack.packb(dict(sorted(body.items())), use_bin_type=True)
    with pytest.raises((DecodeError, ValidationError)):
        logs.parse_log_reply(raw, asked=asked)


# -- who may ask: the worker's node, through a whole job -------------------------------------
def test_only_the_peer_that_awarded_the_job_may_read_its_log() -> None:
    mesh = Mesh(prices=(3, 1, 5))
    mesh.scripts = {"B": Script(run_s=30)}
    mesh.submit("A", make_job(redundancy=1, budget=10))
    worker, stranger, requester = mesh.node("B"), mesh.ids["C"], mesh.ids["A"]
    # B has bid, but nobody awarded it yet: as unknown as a job it never saw.
    assert worker.log_access(JOB_ID, requester).error == logs.NO_SUCH_JOB
    assert worker.log_access("f" * 32, requester).error == logs.NO_SUCH_JOB
    assert mesh.node("C").log_access(JOB_ID, requester).error == logs.NO_SUCH_JOB  # lost the bid
    mesh.run(10, until=lambda: mesh.work("B").state == "running")
    assert worker.log_access(JOB_ID, requester) == logs.LogAccess(phase="running")
    assert worker.log_access(JOB_ID, None) == logs.LogAccess(phase="running")  # its owner
    assert worker.log_access(JOB_ID, stranger).error == logs.NOT_REQUESTER
    assert worker.log_access(JOB_ID, worker.peer_id).error == logs.NOT_REQUESTER
    mesh.run_job()
    ended = worker.log_access(JOB_ID, requester)
    result = mesh.work("B").result
    assert result is not None and ended.phase == "ended" and ended.log_digest == result.log_digest
    assert worker.log_access(JOB_ID, stranger).error == logs.NOT_REQUESTER
    # The requester's side: where the log comes from.
    src = mesh.node("A").log_sources(JOB_ID)
    assert src is not None and src["final"] and src["state"] == "done"
    assert [w["peer_id"] for w in src["workers"]] == [mesh.ids["B"]]
    assert src["workers"][0]["log_digest"] == result.log_digest
    assert mesh.node("A").log_sources("f" * 32) is None
    assert worker.log_sources(JOB_ID) is None  # B did not request it


# -- the stream -------------------------------------------------------------------------------
Serve = Callable[[str, logs.LogRequest], Awaitable[logs.LogChunk | str]]


async def _served(serve: Serve | None, talk: Callable[[Any, Any], Awaitable[Any]]) -> Any:
    """A node serving the log stream with ``serve`` (None: a node without it), and a bare
    host connected to it; returns what ``talk(host, node_peer_id)`` returns."""
    send, _ = trio.open_memory_channel[Any](64)
    server = MeshNet(bytes([5]) * 32, send, local_records=list)
    async with server.running(["/ip4/127.0.0.1/tcp/0"], mdns=False):
        JobWire(server, may_fetch=lambda p, d: False, blob_path=lambda d: None, log_chunk=serve)
        client = new_host(key_pair=create_new_key_pair(bytes([6]) * 32))
        async with client.run([multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]):
            addr = f"{server.listen_addrs()[0]}/p2p/{server.peer_id}"
            info = info_from_p2p_addr(multiaddr.Multiaddr(addr))
            with trio.fail_after(30):
                await client.connect(info)
                got = await talk(client, info.peer_id)
            await client.close()
    return got


async def _ask_raw(frame: bytes | None, serve: Serve) -> Any:
    async def talk(client: Any, peer: Any) -> Any:
        stream = await client.new_stream(peer, [LOG_PROTOCOL])
        if frame is None:
            await stream.write((logs.MAX_LOG_REQUEST + 1).to_bytes(4, "big"))
        else:
            await write_frame(stream, frame, timeout_s=5)
        try:
            return codec.decode(
                await read_frame(stream, max_bytes=logs.MAX_LOG_REPLY, timeout_s=15),
                max_bytes=logs.MAX_LOG_REPLY,
            )
        except TransportError as exc:
            return exc

    return await _served(serve, talk)


CLIENT_ID = "12D3KooW"  # filled in by the serve function: the peer the stream names


def _serve_for(asked: list[tuple[str, logs.LogRequest]]) -> Serve:
    async def serve(peer: str, req: logs.LogRequest) -> logs.LogChunk | str:
        asked.append((peer, req))
        if req.job_id != JOB_ID:
            return logs.NO_SUCH_JOB
        return logs.LogChunk(req.offset, b"line\n"[req.offset :], req.offset >= 5)

    return serve


async def test_the_stream_serves_a_chunk_and_passes_the_authenticated_peer() -> None:
    asked: list[tuple[str, logs.LogRequest]] = []
    got = await _ask_raw(logs.build_log_request(JOB_ID, 1), _serve_for(asked))
    assert got == {"ok": True, "offset": 1, "data": b"ine\n", "ended": False}
    [(peer, req)] = asked
    assert req == logs.LogRequest(JOB_ID, 1)
    assert peer.startswith(CLIENT_ID) and len(peer) > 40


async def test_the_stream_says_why_it_refuses() -> None:
    asked: list[tuple[str, logs.LogRequest]] = []
    got = await _ask_raw(logs.build_log_request("f" * 32, 0), _serve_for(asked))
    assert got == {"ok": False, "error": "no such job here"}


@pytest.mark.parametrize(
    "frame",
    [
        codec.encode({"job_id": JOB_ID, "offset": -5}),
        codec.encode({"job_id": JOB_ID, "offset": 1 << 40}),
        b"\xc1",
        b"",
    ],
    ids=["negative", "huge", "garbage", "empty"],
)
async def test_a_malformed_request_is_answered_bad_request_and_never_served(frame: bytes) -> None:
    asked: list[tuple[str, logs.LogRequest]] = []
    got = await _ask_raw(frame, _serve_for(asked))
    assert got["ok"] is False and got["error"].startswith("bad request"), got
    assert asked == []


async def test_an_oversized_request_gets_no_answer() -> None:
    asked: list[tuple[str, logs.LogRequest]] = []
    got = await _ask_raw(None, _serve_for(asked))
    assert isinstance(got, TransportError) and asked == []


async def _ask_with_wire(server_handler: Any) -> Any:
    """A ``JobWire`` (the requester) asks a bare host serving ``server_handler`` (None: it does
    not speak the log protocol at all); returns the chunk or the exception."""
    send, _ = trio.open_memory_channel[Any](64)
    requester = MeshNet(bytes([7]) * 32, send, local_records=list)
    async with requester.running(["/ip4/127.0.0.1/tcp/0"], mdns=False):
        wire = JobWire(requester, may_fetch=lambda p, d: False, blob_path=lambda d: None)
        worker = new_host(key_pair=create_new_key_pair(bytes([8]) * 32))
        if server_handler is not None:
            worker.set_stream_handler(LOG_PROTOCOL, server_handler)
        async with worker.run([multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]):
            addr = f"{worker.get_addrs()[0]}"
            if "/p2p/" not in addr:
                addr += f"/p2p/{worker.get_id()}"
            with trio.fail_after(30):
                try:
                    got: Any = await wire.log_request(str(worker.get_id()), (addr,), JOB_ID, 0)
                except (TransportError, logs.LogRefused) as exc:
                    got = exc
            await worker.close()
    return got


async def test_an_older_worker_without_the_protocol_is_told_apart() -> None:
    got = await _ask_with_wire(None)
    assert isinstance(got, TransportError) and str(got) == OLD_PEER


def _answering(reply: bytes) -> Any:
    async def handler(stream: Any) -> None:
        await read_frame(stream, max_bytes=logs.MAX_LOG_REQUEST, timeout_s=5)
        await write_frame(stream, reply, timeout_s=5)
        await stream.close()

    return handler


async def test_a_hostile_reply_is_refused_by_the_requester() -> None:
    other = codec.encode({"ok": True, "offset": 9, "data": b"x", "ended": False})
    got = await _ask_with_wire(_answering(other))
    assert isinstance(got, TransportError) and "bad log reply" in str(got)


async def test_an_oversized_reply_frame_is_not_read() -> None:
    async def handler(stream: Any) -> None:
        await read_frame(stream, max_bytes=logs.MAX_LOG_REQUEST, timeout_s=5)
        await stream.write((logs.MAX_LOG_REPLY + 1).to_bytes(4, "big"))
        await stream.close()

    got = await _ask_with_wire(handler)
    assert isinstance(got, TransportError) and "exceeds limit" in str(got)


async def test_a_good_reply_and_a_refusal_reach_the_requester() -> None:
    chunk = logs.LogChunk(0, b"line 1\n", False)
    assert await _ask_with_wire(_answering(logs.build_log_reply(chunk))) == chunk
    got = await _ask_with_wire(_answering(logs.build_log_refusal(logs.NOT_REQUESTER)))
    assert isinstance(got, logs.LogRefused) and str(got) == logs.NOT_REQUESTER


# -- the view -------------------------------------------------------------------------------
def test_offer_wait_follow_shows_the_last_lines_as_plain_text() -> None:
    from rich.console import Console

    from p2pmesh.cli.jobs import TAIL_LINES, log_tail, progress_view

    text = "".join(f"line {i}\n" for i in range(20)) + "[bold red]not markup[/] half"
    tail = log_tail(text)
    assert len(tail) == TAIL_LINES and tail[-1] == "[bold red]not markup[/] half"
    job = {"job_id": JOB_ID, "name": "n", "state": "running", "workers": [], "round": 0}
    console = Console(record=True, width=80, color_system=None)
    console.print(progress_view(job, 0.0, tail))
    shown = console.export_text()
    assert "line 19" in shown and "line 11" not in shown
    assert "[bold red]not markup[/] half" in shown  # a job's log is never read as markup
