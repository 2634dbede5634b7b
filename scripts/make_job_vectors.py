#!/usr/bin/env python3
"""Generate tests/vectors/job_vectors.json: byte-exact job-protocol vectors (PROTOCOL.md §7).

Usage (from the repository root, installed or not)::

    python scripts/make_job_vectors.py             # (re)write the JSON file
    python scripts/make_job_vectors.py --check     # exit 1 if the file is not what the code makes
    python scripts/make_job_vectors.py --markdown  # print the §7 "Test vectors" subsection

One offer, the bid that answers it, the award that follows and the worker's result (one whose
/out was refused, so it carries the signed error text), built from fixed seeds and fixed times
(Ed25519 signatures are deterministic), so running it twice gives the same bytes.
tests/unit/test_job_vectors.py checks the file against this script and against an independent
recomputation, and checks that docs/PROTOCOL.md embeds the current bytes.

Every body in these vectors is plain JSON (no byte strings), so no typed-JSON wrapper is needed;
``*_hex``, ``signed_bytes``, ``signature`` and ``envelope`` fields are lowercase hex.
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from pathlib import Path
from typing import Any

# Run from a bare checkout too, like scripts/make_vectors.py.
_ROOT = Path(__file__).resolve().parent.parent
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

from p2pmesh.core import codec  # noqa: E402
from p2pmesh.core.auction import logs  # noqa: E402
from p2pmesh.core.auction import messages as m  # noqa: E402
from p2pmesh.core.crypto import Ed25519Signer  # noqa: E402
from p2pmesh.core.ids import sha256_hex  # noqa: E402
from p2pmesh.core.jobspec import (  # noqa: E402
    InputRef,
    WireJob,
    job_from_json_text,
    job_from_wire,
    job_to_wire,
    parse_job,
)
from p2pmesh.errors import JobSpecError  # noqa: E402

VECTORS_PATH = _ROOT / "tests" / "vectors" / "job_vectors.json"

# RFC 8032 §7.1 TEST 1 and TEST 2 secret keys: their public keys are published there, so an
# implementer can check key derivation against an outside source.
SEED_REQUESTER = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
SEED_WORKER = bytes.fromhex("4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb")
NOW = 1_700_000_000  # 2023-11-14T22:13:20Z, as in protocol_vectors.json
JOB_ID = "00112233445566778899aabbccddeeff"
BID_WINDOW_S = 2
LOG_OFFSET = 13  # a follower that has the first line, asking for the next
LOG_DATA = b"line 2 of 10\n"
INPUT_BYTES = b"import random\nprint(sum(random.random() ** 2 < 1 for _ in range(10**6)))\n"
JOB_FILE: dict[str, Any] = {
    "schema_version": 1,
    "name": "monte-carlo-pi",
    "image": "p2pmesh/python:3.11",
    # What ``p2pmesh offer`` writes after resolving the tag on the requester's engine.
    "image_id": "sha256:" + sha256_hex(b"p2pmesh job vector image config"),
    "command": ["python3", "/in/pi.py"],
    "env": {"SEED": "42"},
    "inputs": {"pi.py": "pi.py"},
    "resources": {"cpus": 1, "ram_gb": 0.5},
    "timeout_s": 300,
    "max_price": 5,
    "budget": 10,
    "redundancy": 2,
}
# Job file → wire conversions (PROTOCOL.md §7.11): the smallest job file, then one field
# written in several ways. Fragments are JSON *text*: the literal's spelling is the point.
MINIMAL_FILE = (
    '{"schema_version": 1, "name": "n", "image": "p2pmesh/busybox:1", "command": ["true"], '
    '"max_price": 1, "budget": 2}'
)
CONVERSIONS: list[tuple[str, str]] = [
    ("resources", "{}"),
    ("resources", '{"cpus": 0.5, "ram_gb": 0.1, "disk_gb": 2.5}'),
    ("resources", '{"cpus": 1.1, "ram_gb": 0.3}'),
    ("resources", '{"cpus": 0.0001, "ram_gb": 1e-3, "disk_gb": 0.0009765625}'),
    ("resources", '{"cpus": 1.0005, "gpus": 2, "gpu_memory_gb": 39.5}'),
    ("resources", '{"cpus": 256, "ram_gb": 4096, "disk_gb": 16384}'),
    ("validation", '{"mode": "exact"}'),
    ("validation", '{"mode": "exact", "target_error": 0.05}'),
    ("validation", '{"mode": "numeric"}'),
    ("validation", '{"mode": "numeric", "rel_tol": 1e-9, "abs_tol": 1.5E-3}'),
    ("validation", '{"mode": "numeric", "rel_tol": 1e-09, "abs_tol": 0.0015, "files": ["*.csv"]}'),
    ("validation", '{"mode": "numeric", "rel_tol": 1, "abs_tol": 250.0}'),
    ("validation", '{"mode": "numeric", "rel_tol": 0.000001, "abs_tol": -0.0}'),
    ("validation", '{"mode": "numeric", "abs_tol": 123456789012345e-20}'),
    ("timeout_s", "60"),
    ("deadline_s", "3600"),
]
REFUSED_FILES: list[tuple[str, str]] = [
    ("resources", '{"cpus": 0}'),
    ("resources", '{"cpus": 256.0001}'),
    ("resources", '{"gpus": 1.0}'),
    ("resources", '{"gpu_memory_gb": 8}'),
    ("timeout_s", "60.0"),
    ("validation", '{"mode": "numeric", "rel_tol": 0.1234567890123456}'),
    ("validation", '{"mode": "numeric", "abs_tol": 1e-301}'),
    ("validation", '{"mode": "numeric", "abs_tol": 2e300}'),
    ("validation", '{"mode": "exact", "target_error": 1}'),
]
BID_PRICE = 3
BID_ETA_S = 2
BID_CAPACITY = 1
RESULT_AT = NOW + 40
RESULT_ERROR = "/out/link: symbolic link not allowed (outputs are plain files and folders)"


def vector_job() -> WireJob:
    spec = parse_job(JOB_FILE)
    ref = InputRef("sha256:" + sha256_hex(INPUT_BYTES), len(INPUT_BYTES), "file")
    return job_from_wire(job_to_wire(spec, {"pi.py": ref}))


def _with_field(key: str, fragment: str) -> str:
    return MINIMAL_FILE[:-1] + f', "{key}": {fragment}}}'


def conversions() -> dict[str, Any]:
    """What each file fragment becomes on the wire, and fragments a requester must refuse."""
    minimal = job_to_wire(job_from_json_text(MINIMAL_FILE))
    cases = []
    for key, fragment in CONVERSIONS:
        wire = job_to_wire(job_from_json_text(_with_field(key, fragment)))
        # The field itself and whatever else it changed (a timeout moves the default deadline).
        changed = {k: v for k, v in wire.items() if k == key or minimal[k] != v}
        cases.append({"field": key, "file": fragment, "wire": changed})
    refused = []
    for key, fragment in REFUSED_FILES:
        try:
            job_from_json_text(_with_field(key, fragment))
        except JobSpecError as exc:
            refused.append({"field": key, "file": fragment, "problems": list(exc.problems)})
        else:
            raise AssertionError(f"{key}: {fragment} was accepted")
    return {
        "minimal_file": MINIMAL_FILE,
        "minimal_wire": minimal,
        "fields": cases,
        "refused": refused,
    }


def _key(seed: bytes) -> dict[str, Any]:
    s = Ed25519Signer(seed)
    return {"seed": seed.hex(), "public_key": s.public_key.hex(), "peer_id": s.peer_id}


def _message(raw: bytes, inputs: dict[str, Any]) -> dict[str, Any]:
    env = codec.decode(raw)
    unsigned = {k: env[k] for k in ("body", "pk", "t", "v")}
    return {
        "purpose": env["t"],
        "inputs": inputs,
        "body": env["body"],
        "signed_bytes": codec.encode(unsigned).hex(),
        "signature": env["sig"].hex(),
        "envelope": raw.hex(),
    }


def build_vectors() -> dict[str, Any]:
    requester = Ed25519Signer(SEED_REQUESTER)
    worker = Ed25519Signer(SEED_WORKER)
    job = vector_job()
    wire = job_to_wire(job.spec, job.input_refs)
    deadline_at = NOW + job.spec.deadline_s
    addrs = (f"/ip4/192.0.2.1/tcp/4001/p2p/{requester.peer_id}",)
    offer = m.build_offer(
        requester,
        job_id=JOB_ID,
        job=job,
        created_at=NOW,
        deadline_at=deadline_at,
        bid_window_s=BID_WINDOW_S,
        round_=0,
        addrs=addrs,
    )
    bid = m.build_bid(
        worker, offer, price=BID_PRICE, eta_s=BID_ETA_S, capacity=BID_CAPACITY, now=NOW + 1
    )
    award = m.build_award(
        requester,
        job_id=JOB_ID,
        job_digest=job.digest,
        round_=0,
        worker=worker.peer_id,
        price=BID_PRICE,
        winners=[(worker.peer_id, BID_PRICE)],
        considered=[bid.raw],
        now=NOW + BID_WINDOW_S,
        deadline_at=deadline_at,
    )
    empty = m.raw_digest(b"")
    result_fields: dict[str, Any] = {
        "job_id": JOB_ID,
        "job_digest": job.digest,
        "status": "out_refused",
        "exit_code": 0,
        "output_digest": empty,
        "output_size": 0,
        "log_digest": empty,
        "log_size": 0,
        "log_truncated": False,
        "run_ms": 1234,
        "cpu_ms": 1100,
        "max_memory_mb": 12,
        "finished_at": RESULT_AT,
        "error": RESULT_ERROR,
    }
    result = m.build_result(worker, **result_fields)
    return {
        "about": "p2pmesh job-protocol test vectors (docs/PROTOCOL.md §7). Generated by "
        "scripts/make_job_vectors.py; do not edit by hand.",
        "informative": "free to differ (PROTOCOL.md, Test vectors): about, format, "
        "informative, every inputs block, and the problems texts of conversions.refused",
        "format": "hex strings are lowercase; bodies are plain JSON (they hold no byte strings)",
        "keys": {"requester": _key(SEED_REQUESTER), "worker": _key(SEED_WORKER)},
        "job": {
            "job_file": JOB_FILE,
            "input": {"name": "pi.py", "bytes_hex": INPUT_BYTES.hex()},
            "wire": wire,
            "encoded": codec.encode(wire).hex(),
            "job_digest": job.digest,
        },
        "conversions": conversions(),
        "offer": _message(
            offer.raw,
            {
                "signer": "requester",
                "job_id": JOB_ID,
                "created_at": NOW,
                "deadline_at": deadline_at,
                "bid_window_s": BID_WINDOW_S,
                "round": 0,
                "addrs": list(addrs),
                "exclude": [],
            },
        ),
        "bid": _message(
            bid.raw,
            {
                "signer": "worker",
                "price": BID_PRICE,
                "eta_s": BID_ETA_S,
                "capacity": BID_CAPACITY,
                "created_at": NOW + 1,
            },
        ),
        "award": _message(
            award.raw,
            {
                "signer": "requester",
                "considered": ["bid"],
                "created_at": NOW + BID_WINDOW_S,
                "deadline_at": deadline_at,
            },
        )
        | {"bids_digest": m.bids_digest([bid.raw])},
        "result": _message(result.raw, {"signer": "worker", **result_fields}),
        # Job-stream data that is not an envelope (§7.5, award query): canonical msgpack.
        "award_query": {
            "kind": m.AWARD_QUERY,
            "body": {"job_id": JOB_ID},
            "data_hex": m.build_award_query(JOB_ID).hex(),
        },
        "award_answer": {
            "kind": m.AWARD_ANSWER,
            "body": {"job_id": JOB_ID, "stands": False},
            "data_hex": m.build_award_answer(JOB_ID, False).hex(),
        },
        # The log stream (§7.5a): request and reply frames, canonical msgpack, no envelope.
        "log_request": {
            "body": {"job_id": JOB_ID, "offset": LOG_OFFSET},
            "frame_hex": logs.build_log_request(JOB_ID, LOG_OFFSET).hex(),
        },
        "log_reply": {
            "body": {"ok": True, "offset": LOG_OFFSET, "data_hex": LOG_DATA.hex(), "ended": False},
            "frame_hex": logs.build_log_reply(logs.LogChunk(LOG_OFFSET, LOG_DATA, False)).hex(),
        },
        "log_refusal": {
            "body": {"ok": False, "error": logs.NOT_REQUESTER},
            "frame_hex": logs.build_log_refusal(logs.NOT_REQUESTER).hex(),
        },
    }


def dumps(vectors: dict[str, Any]) -> str:
    return json.dumps(vectors, indent=2, ensure_ascii=False) + "\n"


def _wrap(hex_text: str) -> str:
    return "\n".join(textwrap.wrap(hex_text, 64))


def markdown(v: dict[str, Any]) -> str:
    """The §7 test-vector subsection of docs/PROTOCOL.md, hex wrapped at 64 characters."""
    keys = v["keys"]
    job = v["job"]
    out = [
        "Keys (RFC 8032 §7.1 TEST 1 for the requester, TEST 2 for the worker):",
        "",
        "```text",
    ]
    for role in ("requester", "worker"):
        out += [
            f"{role:<9} seed        {keys[role]['seed']}",
            f"{role:<9} public key  {keys[role]['public_key']}",
            f"{role:<9} peer ID     {keys[role]['peer_id']}",
        ]
    out += [
        "```",
        "",
        "The job file (its one input `pi.py` holds the bytes given in the JSON), its canonical "
        "wire form and digest:",
        "",
        "```json",
        json.dumps(job["job_file"], ensure_ascii=False),
        "```",
        "",
        "```text",
        _wrap(job["encoded"]),
        "```",
        "",
        f"`job_digest` = `{job['job_digest']}`",
        "",
    ]
    conv = v["conversions"]
    out += [
        "Job file → wire conversions (§7.11). The smallest job file and its wire form (every "
        "default filled in):",
        "",
        "```json",
        conv["minimal_file"],
        json.dumps(conv["minimal_wire"], ensure_ascii=False, sort_keys=True),
        "```",
        "",
        "One field added to that file, written as shown (JSON text: the literal's spelling is "
        "part of the case), gives these fields of the wire form (the field itself and any "
        "other it changes):",
        "",
        "| field | in the job file | on the wire |",
        "|---|---|---|",
    ]
    for case in conv["fields"]:
        wire = json.dumps(case["wire"], ensure_ascii=False, sort_keys=True)
        out.append(f"| `{case['field']}` | `{case['file']}` | `{wire}` |")
    out += [
        "",
        "Refused job files (the requester reports the field; the message text is informative):",
        "",
        "| field | in the job file | refusal |",
        "|---|---|---|",
    ]
    for case in conv["refused"]:
        out.append(f"| `{case['field']}` | `{case['file']}` | {'; '.join(case['problems'])} |")
    out.append("")
    for name, title in (
        ("offer", f"Offer (round 0, published at {NOW})"),
        ("bid", f"Bid (price {BID_PRICE}, sent at {NOW + 1})"),
        ("award", f"Award (the window closed at {NOW + BID_WINDOW_S}; one bid considered)"),
        ("result", f"Result (the job's /out held a symbolic link; sent at {RESULT_AT})"),
    ):
        msg = v[name]
        out += [
            f"{title}. Body:",
            "",
            "```json",
            json.dumps(msg["body"], ensure_ascii=False, sort_keys=True, indent=2),
            "```",
            "",
            "Signature and envelope:",
            "",
            "```text",
            _wrap(msg["signature"]),
            "",
            _wrap(msg["envelope"]),
            "```",
            "",
        ]
    out += [f"The award's `bids_digest` = `{v['award']['bids_digest']}`.", ""]
    for name in ("award_query", "award_answer"):
        msg = v[name]
        body = json.dumps(msg["body"], ensure_ascii=False, sort_keys=True)
        out += [f"`{msg['kind']}` data for `{body}` (canonical msgpack, no envelope):", ""]
        out += ["```text", _wrap(msg["data_hex"]), "```", ""]
    out += [
        f"Log stream (§7.5a): a request for job `{JOB_ID}` from offset {LOG_OFFSET}, the reply "
        f"carrying the {len(LOG_DATA)} bytes `{LOG_DATA.decode().strip()}\\n` (`data` is a "
        "msgpack `bin`), and a refusal:",
        "",
        "```text",
    ]
    for name in ("log_request", "log_reply", "log_refusal"):
        out += [_wrap(v[name]["frame_hex"]), ""]
    out.pop()
    out.append("```")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    parser.add_argument("--markdown", action="store_true", help="print the PROTOCOL.md text")
    args = parser.parse_args(argv)
    vectors = build_vectors()
    if args.markdown:
        print(markdown(vectors))
        return 0
    text = dumps(vectors)
    if args.check:
        current = VECTORS_PATH.read_text(encoding="utf-8") if VECTORS_PATH.exists() else ""
        if current != text:
            print(f"{VECTORS_PATH} is stale: run scripts/make_job_vectors.py", file=sys.stderr)
            return 1
        return 0
    VECTORS_PATH.parent.mkdir(parents=True, exist_ok=True)
    VECTORS_PATH.write_text(text, encoding="utf-8")
    print(f"wrote {VECTORS_PATH}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
