#!/usr/bin/env python3
"""Generate tests/vectors/proof_vectors.json: byte-exact wrong-result proof vectors (§8.8).

Usage (from the repository root, installed or not)::

    python scripts/make_proof_vectors.py          # (re)write the JSON file
    python scripts/make_proof_vectors.py --check  # exit 1 if the file is not what the code makes

One job whose requester accepted output R on three agreeing workers and outvoted a fourth that
claimed output W: the four signed results, the verdict, the proof envelope, the fields a parser
must derive from it, and refused variants, each sealed by the requester with the rule it
breaks. Fixed seeds and times (Ed25519 signatures are deterministic): running it twice gives
the same bytes. tests/unit/test_proof_vectors.py checks the file against this script and
against the parser. All byte strings are lowercase hex.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

_ROOT = Path(__file__).resolve().parent.parent
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

from p2pmesh.core.auction import messages as m  # noqa: E402
from p2pmesh.core.auction import proofs  # noqa: E402
from p2pmesh.core.crypto import Ed25519Signer  # noqa: E402
from p2pmesh.core.envelope import seal  # noqa: E402

VECTORS_PATH = _ROOT / "tests" / "vectors" / "proof_vectors.json"
NOW = 1_700_000_000
JOB_ID = "00112233445566778899aabbccddeeff"
JOB_DIGEST = "sha256:" + "5a" * 32
RIGHT = "sha256:" + "11" * 32
WRONG = "sha256:" + "22" * 32
EMPTY = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
REQUESTER = Ed25519Signer(bytes(range(32)))
WORKERS = [Ed25519Signer(bytes([0x40 + i]) * 32) for i in range(5)]


def result(signer: Ed25519Signer, digest: str, **over: Any) -> bytes:
    fields: dict[str, Any] = {
        "job_id": JOB_ID,
        "job_digest": JOB_DIGEST,
        "status": "exited",
        "exit_code": 0,
        "output_digest": digest,
        "output_size": 4096,
        "log_digest": EMPTY,
        "log_size": 0,
        "log_truncated": False,
        "run_ms": 2000,
        "cpu_ms": 1900,
        "max_memory_mb": 20,
        "finished_at": NOW + 10,
        **over,
    }
    return m.build_result(signer, **fields).raw


def verdict(**over: Any) -> bytes:
    kw: dict[str, Any] = {
        "job_id": JOB_ID,
        "job_digest": JOB_DIGEST,
        "outcome": "accepted",
        "accepted_digest": RIGHT,
        "agreeing": [w.peer_id for w in WORKERS[1:4]],
        "dissenting": [WORKERS[0].peer_id],
        "now": NOW + 20,
        **over,
    }
    return m.build_verdict(REQUESTER, **kw).raw


def _sealed(v: bytes, wrong: bytes, agreeing: list[bytes], signer: Any = REQUESTER) -> bytes:
    return seal(signer, proofs.PROOF_TYPE, {"verdict": v, "wrong": wrong, "agreeing": agreeing})


def build_vectors() -> dict[str, Any]:
    v = verdict()
    wrong = result(WORKERS[0], WRONG)
    agreeing = sorted(result(w, RIGHT) for w in WORKERS[1:4])
    proof = proofs.build_proof(REQUESTER, verdict=v, wrong=wrong, agreeing=agreeing)
    refused = [
        ("signed by another key than the verdict's", _sealed(v, wrong, agreeing, WORKERS[4])),
        (
            "the proven result has the accepted output",
            _sealed(v, result(WORKERS[0], RIGHT), agreeing),
        ),
        ("the proven worker is not a dissenter", _sealed(v, result(WORKERS[4], WRONG), agreeing)),
        ("the proven result failed", _sealed(v, result(WORKERS[0], WRONG, exit_code=1), agreeing)),
        (
            "agreeing results do not lead by two",
            _sealed(v, wrong, sorted(result(w, RIGHT) for w in WORKERS[1:3])),
        ),
        ("agreeing results not in ascending byte order", _sealed(v, wrong, agreeing[::-1])),
        (
            "an agreeing result has another output",
            _sealed(
                v,
                wrong,
                sorted([*(result(w, RIGHT) for w in WORKERS[1:3]), result(WORKERS[3], WRONG)]),
            ),
        ),
        ("the verdict is not accepted", _sealed(verdict(outcome="failed"), wrong, agreeing)),
        (
            "a result of another job",
            _sealed(v, result(WORKERS[0], WRONG, job_id="f" * 32), agreeing),
        ),
    ]
    return {
        "about": "Wrong-result proof vectors, docs/PROTOCOL.md §8.8. Hex byte strings.",
        "requester_seed": REQUESTER_SEED_HEX,
        "worker_seeds": [bytes([0x40 + i]).hex() * 32 for i in range(5)],
        "verdict": v.hex(),
        "wrong": wrong.hex(),
        "agreeing": [a.hex() for a in agreeing],
        "proof": proof.raw.hex(),
        "parsed": {
            "worker": proof.worker,
            "requester": proof.requester,
            "job_id": proof.job_id,
            "job_digest": proof.job_digest,
            "wrong_digest": proof.wrong_digest,
            "accepted_digest": proof.accepted_digest,
            "agreeing": list(proof.agreeing),
            "at": proof.at,
            "key": proof.key,
            "size": len(proof.raw),
        },
        "refused": [{"why": why, "envelope": raw.hex()} for why, raw in refused],
    }


REQUESTER_SEED_HEX = bytes(range(32)).hex()


def dumps(vectors: dict[str, Any]) -> str:
    return json.dumps(vectors, indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="compare, do not write")
    args = ap.parse_args(argv)
    text = dumps(build_vectors())
    if args.check:
        current = VECTORS_PATH.read_text(encoding="utf-8") if VECTORS_PATH.exists() else ""
        if current != text:
            print(
                f"{VECTORS_PATH} is out of date: run scripts/make_proof_vectors.py", file=sys.stderr
            )
            return 1
        return 0
    VECTORS_PATH.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
