"""Live logs: a job's requester pulls its container's log from a worker while it runs.

The exchange is one request and one reply on the log stream (PROTOCOL.md §7.5a): "the log of
job J from byte offset O" answered with the bytes the worker holds from there (at most one
chunk) and whether the run has ended with them. The requester asks again from the offset it
reached, so a broken connection or a restarted follower resumes where it left off, and the
worker keeps no state per follower.

Everything here is pure: who may ask, the limits, which bytes a request gets. Reading the log
(a file the executor writes while the container runs, then a blob) is the daemon's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from p2pmesh.core import codec, schema
from p2pmesh.core.auction.messages import _job_id
from p2pmesh.errors import ValidationError

MiB = 1 << 20
# A worker keeps at most this much of a container's stdout and stderr (the rest is dropped and
# the result says ``log_truncated``).
LOG_MAX_BYTES = 4 * MiB
# The worker may append a line of its own after the cap (e.g. why /out was refused).
LOG_NOTE_BYTES = 4096
LOG_END_MAX = LOG_MAX_BYTES + LOG_NOTE_BYTES
# One reply carries at most this many bytes of log: the codec's largest ``bin`` (§2).
LOG_CHUNK_BYTES = codec.MAX_BIN_BYTES
MAX_LOG_REQUEST = 256
MAX_LOG_REPLY = LOG_CHUNK_BYTES + 512
# A worker with nothing new for a follower holds its request this long before it answers
# (a long poll: a new line reaches the follower at once, without a request per tick).
LOG_WAIT_S = 2.0
MAX_ERROR_CHARS = 200

# Refusals, word for word on the wire (the follower shows them).
NO_SUCH_JOB = "no such job here"
NOT_REQUESTER = "not the requester of this job"
PAST_END = "offset is past the end of the log"


@dataclass(frozen=True, slots=True)
class LogRequest:
    job_id: str
    offset: int


@dataclass(frozen=True, slots=True)
class LogChunk:
    offset: int
    data: bytes
    ended: bool  # the run is over and ``data`` reaches the end of its log

    @property
    def next_offset(self) -> int:
        return self.offset + len(self.data)


class LogRefused(Exception):
    """The worker answered, and refused: its words are the message."""


def build_log_request(job_id: str, offset: int) -> bytes:
    return codec.encode({"job_id": job_id, "offset": offset}, max_bytes=MAX_LOG_REQUEST)


def parse_log_request(raw: bytes) -> LogRequest:
    """A follower's request; raises ``DecodeError`` / ``ValidationError`` on anything else."""
    d = codec.decode(raw, max_bytes=MAX_LOG_REQUEST)
    if not isinstance(d, dict):
        raise ValidationError("log request must be a map")
    schema.exact_keys(d, {"job_id", "offset"})
    return LogRequest(_job_id(d), schema.int_in(d, "offset", 0, LOG_END_MAX))


@dataclass(frozen=True, slots=True)
class LogAccess:
    """What a worker's node says about one log request: refused (``error``), or which log."""

    error: str = ""
    phase: str = "waiting"  # waiting (no container yet) | running | ended
    log_digest: str | None = None  # the finished run's log blob, once reported


def worker_log_access(job: Any, peer: str | None) -> LogAccess:
    """May ``peer`` (None: this node's own owner) read the log of worker job ``job``?

    Only the peer that awarded us the job may: anyone else, and a job we only bid on, gets the
    same refusal as an unknown job or the requester's, so the log never leaks.
    """
    if job is None or job.award is None:
        return LogAccess(NO_SUCH_JOB)
    if peer is not None and peer != job.award.requester:
        return LogAccess(NOT_REQUESTER)
    if job.state == "fetching":
        return LogAccess(phase="waiting")
    if job.state == "running":
        return LogAccess(phase="running")
    digest = job.result.log_digest if job.result is not None and job.result.log_size else None
    return LogAccess(phase="ended", log_digest=digest)


def log_slice(offset: int, size: int, ended: bool) -> tuple[int, int] | str:
    """Which bytes ``[start, end)`` of a log of ``size`` bytes so far answer ``offset``, or the
    refusal. A running log may still grow to an offset it has not reached; an ended one not."""
    if offset > size:
        return PAST_END if ended or offset > LOG_END_MAX else (offset, offset)
    return offset, min(size, offset + LOG_CHUNK_BYTES)


def build_log_reply(chunk: LogChunk) -> bytes:
    if len(chunk.data) > LOG_CHUNK_BYTES or chunk.next_offset > LOG_END_MAX:
        raise ValueError("log chunk over the limits")
    return codec.encode(
        {"ok": True, "offset": chunk.offset, "data": chunk.data, "ended": chunk.ended},
        max_bytes=MAX_LOG_REPLY,
    )


def build_log_refusal(error: str) -> bytes:
    return codec.encode({"ok": False, "error": error[:MAX_ERROR_CHARS]})


def parse_log_reply(raw: bytes, *, asked: int) -> LogChunk:
    """The worker's answer to a request from offset ``asked``.

    Raises ``LogRefused`` with the worker's words, ``DecodeError`` / ``ValidationError`` for an
    answer that breaks the rules (a chunk for another offset, over the chunk limit or past the
    log cap).
    """
    d = codec.decode(raw, max_bytes=MAX_LOG_REPLY)
    if not isinstance(d, dict):
        raise ValidationError("log reply must be a map")
    if d.get("ok") is False:
        schema.exact_keys(d, {"ok", "error"})
        raise LogRefused(schema.text(d, "error", MAX_ERROR_CHARS))
    if d.get("ok") is not True:
        raise ValidationError("ok: must be a boolean")
    schema.exact_keys(d, {"ok", "offset", "data", "ended"})
    offset = schema.int_in(d, "offset", 0, LOG_END_MAX)
    if offset != asked:
        raise ValidationError(f"offset: {offset} answers a request from {asked}")
    data = d["data"]
    if not isinstance(data, bytes) or len(data) > LOG_CHUNK_BYTES:
        raise ValidationError(f"data: must be at most {LOG_CHUNK_BYTES} bytes")
    if offset + len(data) > LOG_END_MAX:
        raise ValidationError("data: goes past the log cap")
    return LogChunk(offset, data, schema.boolean(d, "ended"))
