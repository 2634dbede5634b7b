"""tests/vectors/proof_vectors.json (PROTOCOL.md §8.8): what another implementation tests its
wrong-result proof parser against. The file is what scripts/make_proof_vectors.py makes, the
proof parses to the listed fields, and every refused variant is refused."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from p2pmesh.core.auction import proofs
from p2pmesh.core.crypto import Ed25519Signer
from p2pmesh.errors import DecodeError, ValidationError

ROOT = Path(__file__).resolve().parents[2]
V = json.loads((ROOT / "tests/vectors/proof_vectors.json").read_text(encoding="utf-8"))


def test_the_file_is_what_the_script_makes() -> None:
    spec = importlib.util.spec_from_file_location(
        "make_proof_vectors", ROOT / "scripts/make_proof_vectors.py"
    )
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.dumps(mod.build_vectors()) == (ROOT / "tests/vectors/proof_vectors.json").read_text(
        encoding="utf-8"
    )


def test_the_proof_parses_to_the_listed_fields() -> None:
    p = proofs.parse_proof(bytes.fromhex(V["proof"]))
    parsed = V["parsed"]
    assert (
        p.worker == parsed["worker"] == Ed25519Signer(bytes.fromhex(V["worker_seeds"][0])).peer_id
    )
    assert p.requester == parsed["requester"]
    assert p.requester == Ed25519Signer(bytes.fromhex(V["requester_seed"])).peer_id
    assert (p.job_id, p.job_digest, p.at) == (parsed["job_id"], parsed["job_digest"], parsed["at"])
    assert (p.wrong_digest, p.accepted_digest) == (
        parsed["wrong_digest"],
        parsed["accepted_digest"],
    )
    assert list(p.agreeing) == parsed["agreeing"] and p.key == parsed["key"]
    assert len(p.raw) == parsed["size"] <= proofs.MAX_PROOF_BYTES


@pytest.mark.parametrize("case", V["refused"], ids=[c["why"] for c in V["refused"]])
def test_every_refused_variant_is_refused(case: dict[str, str]) -> None:
    with pytest.raises((DecodeError, ValidationError)):
        proofs.parse_proof(bytes.fromhex(case["envelope"]))
