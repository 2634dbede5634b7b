"""Recompute the job-protocol test vectors and compare them byte for byte (PROTOCOL.md §7).

tests/vectors/job_vectors.json is what another implementation tests its offers, bids, awards
and results against. It is pinned three ways: every envelope is rebuilt here by hand (msgpack
with sorted keys, the domain-separated signing input, nacl verification) rather than only
through our own helpers; scripts/make_job_vectors.py reproduces the file exactly; and the spec
embeds the bytes.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
from decimal import ROUND_CEILING, Decimal
from pathlib import Path
from types import ModuleType
from typing import Any

import msgpack
import nacl.signing
import pytest

from p2pmesh.core.auction import logs
from p2pmesh.core.auction import messages as m
from p2pmesh.core.jobspec import (
    InputRef,
    job_from_json_text,
    job_from_wire,
    job_to_wire,
    parse_job,
)
from p2pmesh.errors import DecodeError, JobSpecError, ValidationError

ROOT = Path(__file__).resolve().parents[2]
V = json.loads((ROOT / "tests/vectors/job_vectors.json").read_text(encoding="utf-8"))
KEYS = V["keys"]
MESSAGES = ("offer", "bid", "award", "result")
_B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


def _b58(data: bytes) -> str:
    n = int.from_bytes(data, "big")
    out = ""
    while n:
        n, r = divmod(n, 58)
        out = _B58[r] + out
    return "1" * (len(data) - len(data.lstrip(b"\x00"))) + out


def _canon(value: Any) -> Any:
    """Sorted map keys (by UTF-8 bytes), recursively: with msgpack's shortest forms, that is §2."""
    if isinstance(value, dict):
        return {k: _canon(value[k]) for k in sorted(value, key=lambda k: k.encode())}
    if isinstance(value, list):
        return [_canon(v) for v in value]
    return value


def _pack(value: Any) -> bytes:
    data: bytes = msgpack.packb(_canon(value), use_bin_type=True)
    return data


def _raw(name: str) -> bytes:
    return bytes.fromhex(V[name]["envelope"])


def _generator() -> ModuleType:
    path = ROOT / "scripts/make_job_vectors.py"
    spec = importlib.util.spec_from_file_location("make_job_vectors", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("role", ["requester", "worker"])
def test_keys(role: str) -> None:
    k = KEYS[role]
    pk = bytes(nacl.signing.SigningKey(bytes.fromhex(k["seed"])).verify_key)
    assert pk.hex() == k["public_key"]
    assert _b58(b"\x00\x24\x08\x01\x12\x20" + pk) == k["peer_id"]


def test_rfc8032_public_keys() -> None:
    # Published in RFC 8032 §7.1 (TEST 1, TEST 2): an outside check on key derivation.
    assert KEYS["requester"]["public_key"] == (
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
    )
    assert KEYS["worker"]["public_key"] == (
        "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c"
    )


def test_job_wire_form_and_digest() -> None:
    job = V["job"]
    data = bytes.fromhex(job["input"]["bytes_hex"])
    ref = InputRef("sha256:" + hashlib.sha256(data).hexdigest(), len(data), "file")
    assert job_to_wire(parse_job(job["job_file"]), {job["input"]["name"]: ref}) == job["wire"]
    assert _pack(job["wire"]).hex() == job["encoded"]
    assert job["job_digest"] == "sha256:" + hashlib.sha256(_pack(job["wire"])).hexdigest()
    assert job_from_wire(job["wire"]).digest == job["job_digest"]


@pytest.mark.parametrize("name", MESSAGES)
def test_envelope_by_hand(name: str) -> None:
    v = V[name]
    signer = KEYS[v["inputs"]["signer"]]
    env = msgpack.unpackb(_raw(name), raw=False)
    assert list(env) == ["body", "pk", "sig", "t", "v"]
    assert env["t"] == v["purpose"] == name and env["v"] == 1
    assert env["pk"].hex() == signer["public_key"]
    assert env["body"] == v["body"]
    unsigned = {"body": v["body"], "pk": env["pk"], "t": name, "v": 1}
    signed = _pack(unsigned)
    assert signed.hex() == v["signed_bytes"]
    message = b"p2pmesh/v1/" + name.encode() + b"\x00" + signed
    nacl.signing.VerifyKey(env["pk"]).verify(message, bytes.fromhex(v["signature"]))
    # Ed25519 is deterministic: the seed signs the same bytes to the same signature.
    key = nacl.signing.SigningKey(bytes.fromhex(signer["seed"]))
    assert key.sign(message).signature.hex() == v["signature"]
    assert _pack({**unsigned, "sig": bytes.fromhex(v["signature"])}) == _raw(name)


def test_offer_fields() -> None:
    o = m.parse_offer(_raw("offer"))
    i = V["offer"]["inputs"]
    assert o.requester == KEYS["requester"]["peer_id"]
    assert o.job_digest == V["job"]["job_digest"] == o.job.digest
    assert (o.job_id, o.created_at, o.deadline_at, o.bid_window_s, o.round) == (
        i["job_id"],
        i["created_at"],
        i["deadline_at"],
        i["bid_window_s"],
        i["round"],
    )
    assert list(o.addrs) == i["addrs"] and list(o.exclude) == i["exclude"]
    assert o.deadline_at == o.created_at + o.job.spec.deadline_s


def test_bid_fields() -> None:
    b = m.parse_bid(_raw("bid"), requester=KEYS["requester"]["peer_id"])
    i = V["bid"]["inputs"]
    assert b.bidder == KEYS["worker"]["peer_id"]
    assert V["bid"]["body"]["requester"] == KEYS["requester"]["peer_id"]
    assert (b.job_id, b.job_digest, b.round) == (
        V["offer"]["inputs"]["job_id"],
        V["job"]["job_digest"],
        0,
    )
    assert (b.price, b.eta_s, b.capacity, b.created_at) == (
        i["price"],
        i["eta_s"],
        i["capacity"],
        i["created_at"],
    )


def test_award_fields_and_bids_digest() -> None:
    a = m.parse_award(_raw("award"))
    worker = KEYS["worker"]["peer_id"]
    assert a.requester == KEYS["requester"]["peer_id"]
    assert (a.worker, a.price, a.winners) == (worker, 3, ((worker, 3),))
    assert a.bids_considered == 1
    # By hand: sha256 of the canonical list of the raw bid envelopes, sorted bytewise.
    by_hand = "sha256:" + hashlib.sha256(_pack(sorted([_raw("bid")]))).hexdigest()
    assert a.bids_digest == by_hand == V["award"]["bids_digest"]
    assert (a.created_at, a.deadline_at) == (
        V["award"]["inputs"]["created_at"],
        V["award"]["inputs"]["deadline_at"],
    )


def test_result_fields() -> None:
    r = m.parse_result(_raw("result"))
    i = V["result"]["inputs"]
    assert r.worker == KEYS["worker"]["peer_id"] and r.job_digest == V["job"]["job_digest"]
    assert (r.status, r.exit_code, r.error) == (i["status"], i["exit_code"], i["error"])
    assert V["result"]["body"]["result"]["error"] == i["error"]
    assert (r.output_digest, r.finished_at) == (i["output_digest"], i["finished_at"])


def test_bid_is_refused_by_anyone_but_its_requester() -> None:
    with pytest.raises(ValidationError, match="another requester"):
        m.parse_bid(_raw("bid"), requester=KEYS["worker"]["peer_id"])


@pytest.mark.parametrize("name", MESSAGES)
def test_any_changed_byte_is_refused(name: str) -> None:
    parse = {
        "offer": m.parse_offer,
        "bid": lambda raw: m.parse_bid(raw, requester=KEYS["requester"]["peer_id"]),
        "award": m.parse_award,
        "result": m.parse_result,
    }[name]
    raw = _raw(name)
    for i in range(0, len(raw), 7):
        with pytest.raises((DecodeError, ValidationError)):
            parse(raw[:i] + bytes([raw[i] ^ 0x01]) + raw[i + 1 :])


def test_generator_reproduces_the_file() -> None:
    gen = _generator()
    text = (ROOT / "tests/vectors/job_vectors.json").read_text(encoding="utf-8")
    assert gen.dumps(gen.build_vectors()) == text


def _section_7() -> str:
    doc = (ROOT / "docs/PROTOCOL.md").read_text(encoding="utf-8")
    start = doc.index("\n## 7.")
    end = doc.index("\n## ", start + 1)
    return doc[start:end]


def test_spec_embeds_the_vectors() -> None:
    # Hex is wrapped in the spec: compare with all whitespace removed.
    flat = re.sub(r"\s", "", _section_7())
    for name in MESSAGES:
        assert V[name]["envelope"] in flat, f"PROTOCOL.md §7 does not show the current {name}"
        assert V[name]["signature"] in flat
    assert V["job"]["encoded"] in flat
    assert V["job"]["job_digest"] in flat and V["award"]["bids_digest"] in flat


def test_spec_embeds_the_generator_text() -> None:
    gen = _generator()
    assert gen.markdown(gen.build_vectors()) in _section_7()


# --- job file → wire conversions, recomputed from the spec's rules (§7.11) ------------------

_SCALES = {"cpus": 1000, "ram_gb": 1024, "gpu_memory_gb": 1024, "disk_gb": 1024}
_RESOURCE_DEFAULTS = {"cpus": 1, "ram_gb": 1, "gpus": 0, "gpu_memory_gb": 0, "disk_gb": 1}
_WIRE_NAMES = {
    "cpus": "millicpus",
    "ram_gb": "ram_mib",
    "gpus": "gpus",
    "gpu_memory_gb": "gpu_memory_mib",
    "disk_gb": "disk_mib",
}


def _exact(literal: Decimal) -> Decimal:
    # The double a JSON reader makes, then its shortest decimal: for ≤ 15 significant digits
    # that is the literal itself, which is what this recomputation relies on.
    assert len(literal.normalize().as_tuple().digits) <= 15
    return literal


def _wire_decimal(literal: Decimal | int) -> list[int]:
    d = Decimal(literal).normalize()
    if d == 0:
        return [0, 0]
    sign, digits, exponent = d.as_tuple()
    assert isinstance(exponent, int)
    return [int("".join(map(str, digits))) * (-1 if sign else 1), exponent]


def _expected(field: str, value: Any) -> Any:
    if field == "resources":
        got = {**_RESOURCE_DEFAULTS, **value}
        return {
            _WIRE_NAMES[k]: (
                v
                if k == "gpus"
                else int((_exact(Decimal(v)) * _SCALES[k]).to_integral_value(ROUND_CEILING))
            )
            for k, v in got.items()
        }
    if field == "validation":
        out = {
            "mode": value["mode"],
            "target_error": _wire_decimal(value.get("target_error", Decimal("0.0001"))),
        }
        if value["mode"] == "numeric":
            out["rel_tol"] = _wire_decimal(value.get("rel_tol", 0))
            out["abs_tol"] = _wire_decimal(value.get("abs_tol", 0))
            out["files"] = value.get("files", ["**"])
        return out
    return value


@pytest.mark.parametrize("case", V["conversions"]["fields"], ids=lambda c: c["file"])
def test_conversion_follows_the_spec_rules(case: dict[str, Any]) -> None:
    value = json.loads(case["file"], parse_float=Decimal)
    assert case["wire"][case["field"]] == _expected(case["field"], value)
    if case["field"] == "timeout_s":
        assert case["wire"]["deadline_s"] == min(604_800, max(value, 3 * value + 600))


def test_minimal_file_gets_every_default() -> None:
    wire = V["conversions"]["minimal_wire"]
    assert wire["schema_version"] == 3  # the wire version; the file says 1
    assert wire["resources"] == _expected("resources", {})
    assert wire["validation"] == _expected("validation", {"mode": "exact"})
    assert (wire["timeout_s"], wire["deadline_s"], wire["redundancy"]) == (600, 2400, 2)
    assert (wire["env"], wire["inputs"], wire["labels"], wire["network"]) == ({}, {}, {}, "none")


def test_conversions_are_what_the_code_makes() -> None:
    gen = _generator()
    for case in V["conversions"]["fields"]:
        text = gen._with_field(case["field"], case["file"])
        wire = job_to_wire(job_from_json_text(text))
        assert {k: wire[k] for k in case["wire"]} == case["wire"]
    for case in V["conversions"]["refused"]:
        with pytest.raises(JobSpecError) as info:
            job_from_json_text(gen._with_field(case["field"], case["file"]))
        assert {p.split(":")[0] for p in info.value.problems} == {
            p.split(":")[0] for p in case["problems"]
        }


# --- award query and answer (§7.5): canonical msgpack written out by hand --------------------
def _mp_str(text: str) -> bytes:
    raw = text.encode()
    return (bytes([0xA0 | len(raw)]) if len(raw) < 32 else bytes([0xD9, len(raw)])) + raw


def test_award_query_and_answer_bytes_by_hand() -> None:
    job_id = V["award_query"]["body"]["job_id"]
    query = b"\x81" + _mp_str("job_id") + _mp_str(job_id)
    assert V["award_query"]["data_hex"] == query.hex()
    answer = b"\x82" + _mp_str("job_id") + _mp_str(job_id) + _mp_str("stands") + b"\xc2"
    assert V["award_answer"]["data_hex"] == answer.hex()
    assert (V["award_query"]["kind"], V["award_answer"]["kind"]) == ("award-query", "award-answer")


def test_log_stream_frames_by_hand() -> None:
    """§7.5a: map keys in canonical order (§2), ``data`` a ``bin``."""
    req = V["log_request"]["body"]
    job_id, offset = req["job_id"], req["offset"]
    assert offset < 128  # a positive fixint below
    frame = b"\x82" + _mp_str("job_id") + _mp_str(job_id) + _mp_str("offset") + bytes([offset])
    assert V["log_request"]["frame_hex"] == frame.hex()
    rep = V["log_reply"]["body"]
    data = bytes.fromhex(rep["data_hex"])
    reply = (
        b"\x84"
        + _mp_str("data")
        + b"\xc4"
        + bytes([len(data)])
        + data
        + _mp_str("ended")
        + b"\xc2"
        + _mp_str("offset")
        + bytes([rep["offset"]])
        + _mp_str("ok")
        + b"\xc3"
    )
    assert V["log_reply"]["frame_hex"] == reply.hex()
    ref = V["log_refusal"]["body"]
    refusal = b"\x82" + _mp_str("error") + _mp_str(ref["error"]) + _mp_str("ok") + b"\xc2"
    assert V["log_refusal"]["frame_hex"] == refusal.hex()
    # And the parsers read them back.
    assert logs.parse_log_request(frame) == logs.LogRequest(job_id, offset)
    assert logs.parse_log_reply(reply, asked=offset) == logs.LogChunk(offset, data, False)
    with pytest.raises(logs.LogRefused, match=ref["error"]):
        logs.parse_log_reply(refusal, asked=0)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x80",
        b"\x81" + _mp_str("job_id") + _mp_str("XYZ"),
        b"\x82" + _mp_str("job_id") + _mp_str("0" * 32) + _mp_str("stands") + b"\x01",
        b"\x82" + _mp_str("job_id") + _mp_str("0" * 32) + _mp_str("extra") + b"\xc2",
    ],
)
def test_malformed_award_answers_are_refused(data: bytes) -> None:
    from p2pmesh.core.auction import messages as m
    from p2pmesh.errors import DecodeError, ValidationError

    with pytest.raises((DecodeError, ValidationError)):
        m.parse_award_answer(data)
