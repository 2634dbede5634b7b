"""Ledger benchmarks (docs/BENCHMARKS.md, "Ledger: verification speed, memory and disk").

    python benchmarks/bench_ledger.py --out ledger.json              # 100,000 blocks
    python benchmarks/bench_ledger.py --blocks 20000 --repeat 5 --out small.json

speed   ``--blocks`` valid blocks (payments: a proposal by the payer, then the payee's agreement)
        across ``--authors`` chains, signed with real Ed25519 keys (fixed seeds). Timed in the
        same process, alternately, ``--repeat`` times: (1) ingesting all of them in chain order
        into a fresh ``Ledger`` — the full checks a node runs on a block from the mesh: canonical
        decode, envelope and schema rules, signature, hash, sequence and link, fork check — with
        the signature cache (``core/crypto.py``) emptied first, so every signature is really
        verified; (2) PyNaCl ``VerifyKey.verify`` of the same signed bytes and signatures, with
        the keys built beforehand: the floor. Reported: blocks/s, verifies/s, and their ratio
        (goal ≥ 80 %). Below the goal, one ingest is profiled (cProfile) and the functions that
        take the time are listed.
memory  the Python heap a ``Ledger`` holding all the blocks keeps (tracemalloc: the block bytes,
        parsed fields, indexes), and the RSS growth of the process while it was built.
disk    every block written through ``Store.put_block`` (one autocommit INSERT each, as the
        daemon does) into a fresh SQLite file in a temporary folder; after a WAL checkpoint, the
        file size; also the write and read-back rates.

Prints a table and writes every figure, with the machine and the date, as JSON to ``--out``.
"""

from __future__ import annotations

import argparse
import cProfile
import datetime as dt
import gc
import json
import os
import platform
import pstats
import random
import statistics
import sys
import tempfile
import time
import tracemalloc
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import nacl.signing
import psutil

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from p2pmesh.adapters.sqlite.store import Store  # noqa: E402
from p2pmesh.core import codec, crypto  # noqa: E402
from p2pmesh.core.crypto import Ed25519Signer, signing_input  # noqa: E402
from p2pmesh.core.envelope import seal  # noqa: E402
from p2pmesh.core.ledger.block import GENESIS, block_hash  # noqa: E402
from p2pmesh.core.ledger.chain import Ledger  # noqa: E402

GOAL_RATIO = 0.80
DIGEST = "sha256:" + "ab" * 32
VERDICT = "sha256:" + "cd" * 32


@dataclass(frozen=True, slots=True)
class Made:
    author: str
    seq: int
    raw: bytes


# -- making blocks -------------------------------------------------------------------------------
def make_blocks(n: int, authors: int, seed: int = 1) -> list[Made]:
    """``n`` valid blocks: payments between random pairs of ``authors`` keys, in creation order
    (each chain in order; chains interleaved as payments happen)."""
    if authors < 2:
        raise ValueError("need at least two authors")
    signers = [Ed25519Signer(bytes([i + 1]) * 32) for i in range(authors)]
    heads: dict[str, tuple[int, str]] = {s.peer_id: (0, GENESIS) for s in signers}
    rnd = random.Random(seed)
    out: list[Made] = []

    def append(signer: Ed25519Signer, kind: str, tx: dict[str, Any], link: dict[str, Any]) -> Made:
        seq, prev = heads[signer.peer_id]
        body = {
            "seq": seq + 1,
            "prev": prev,
            "kind": kind,
            "tx": tx,
            "link": link,
            "ts": 1_700_000_000 + len(out),
        }
        raw = seal(signer, "block", body)
        heads[signer.peer_id] = (seq + 1, block_hash(raw))
        made = Made(signer.peer_id, seq + 1, raw)
        out.append(made)
        return made

    job = 0
    while len(out) < n:
        payer, payee = rnd.sample(signers, 2)
        job += 1
        tx = {
            "job_id": f"{job:032x}",
            "payer": payer.peer_id,
            "payee": payee.peer_id,
            "amount": rnd.randint(1, 50),
            "accepted_digest": DIGEST,
            "verdict": VERDICT,
        }
        prop = append(payer, "proposal", tx, {"author": payee.peer_id, "seq": 0, "hash": ""})
        if len(out) < n:
            link = {"author": payer.peer_id, "seq": prop.seq, "hash": block_hash(prop.raw)}
            append(payee, "agreement", tx, link)
    return out


def raw_items(blocks: list[Made]) -> list[tuple[nacl.signing.VerifyKey, bytes, bytes]]:
    """(key, signed message, signature) for each block: what libsodium alone would check."""
    keys: dict[bytes, nacl.signing.VerifyKey] = {}
    items = []
    for b in blocks:
        env = codec.decode(b.raw)
        unsigned = {k: env[k] for k in ("t", "v", "pk", "body")}
        message = signing_input("block", codec.encode(unsigned))
        vk = keys.get(env["pk"])
        if vk is None:
            vk = keys[env["pk"]] = nacl.signing.VerifyKey(env["pk"])
        items.append((vk, message, env["sig"]))
    return items


# -- timing -------------------------------------------------------------------------------------
# Both clocks: wall time, and this process's CPU time, which a busy machine (other processes on
# the same cores) disturbs far less. The ratio is taken from CPU time.
def time_ingest(blocks: list[Made]) -> tuple[float, float]:
    crypto._VERIFIED.clear()  # every signature is verified for real
    led = Ledger("bench")
    w0, c0 = time.perf_counter(), time.process_time()
    for b in blocks:
        led.ingest(b.raw)
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    if led.block_count() != len(blocks):
        raise AssertionError(f"only {led.block_count()} of {len(blocks)} blocks were taken")
    return wall, cpu


def time_raw(items: list[tuple[nacl.signing.VerifyKey, bytes, bytes]]) -> tuple[float, float]:
    w0, c0 = time.perf_counter(), time.process_time()
    for vk, message, sig in items:
        vk.verify(message, sig)
    return time.perf_counter() - w0, time.process_time() - c0


# -- the proposed fix, tried in this process only (--try-fix) -------------------------------------
FIX_STAGES = (
    "signed bytes cut from the envelope",
    "+ peer ID memoised",
    "+ canonical check without rebuilding",
)


def apply_proposed_fix(stage: int) -> None:
    """What the report proposes for ``core/envelope.py``, ``core/ids.py`` and ``core/codec.py``,
    patched in here only to measure it (cumulative stages):

    1. the signed bytes are cut out of the envelope bytes (already proven canonical by
       ``decode``) instead of re-encoding the unsigned map: one canonical-encoding walk less;
    2. the peer ID of a public key is memoised instead of base58-encoded for every message;
    3. ``decode``'s canonical check walks the decoded value once (types, sorted unique keys,
       depth) and compares ``msgpack.packb`` of it with the input, instead of rebuilding every
       map sorted (``_canonical``) before packing.
    """
    import functools

    import msgpack

    from p2pmesh.core import envelope, ids
    from p2pmesh.core.ledger import block

    peer_id = (
        functools.lru_cache(maxsize=4096)(ids.peer_id_from_public_key)
        if stage >= 2
        else ids.peer_id_from_public_key
    )
    tails = {
        t: msgpack.packb("t") + msgpack.packb(t) + msgpack.packb("v") + msgpack.packb(1)
        for t in crypto.PURPOSES
    }

    def open_envelope(
        data: bytes, expected_type: str, *, max_bytes: int = codec.MAX_MESSAGE_BYTES
    ) -> envelope.Opened:
        value = codec.decode(data, max_bytes=max_bytes)
        if not isinstance(value, dict) or set(value) != envelope._FIELDS:
            raise envelope.DecodeError("envelope must be a map with exactly t, v, pk, body, sig")
        type_, version, pk, body, sig = (value[k] for k in ("t", "v", "pk", "body", "sig"))
        if type_ != expected_type or type_ not in crypto.PURPOSES:
            raise envelope.ValidationError(f"expected a {expected_type!r} envelope, got {type_!r}")
        if type(version) is not int or version != envelope.ENVELOPE_VERSION:
            raise envelope.ValidationError(f"unsupported envelope version {version!r}")
        if not isinstance(pk, bytes) or len(pk) != 32:
            raise envelope.ValidationError("pk must be 32 bytes")
        if not isinstance(sig, bytes) or len(sig) != 64:
            raise envelope.ValidationError("sig must be 64 bytes")
        if not isinstance(body, dict):
            raise envelope.ValidationError("body must be a map")
        # Canonical order is body, pk, sig, t, v: drop the sig entry, say 4 entries, not 5.
        tail = tails[type_]
        cut = len(data) - len(tail) - 70
        if data[0] != 0x85 or data[cut : cut + 6] != b"\xa3sig\xc4\x40":
            raise envelope.DecodeError("envelope is not in canonical form")
        unsigned = b"\x84" + data[1:cut] + data[cut + 70 :]
        if not crypto.verify(pk, type_, unsigned, sig):
            raise envelope.ValidationError("bad signature")
        return envelope.Opened(type_, peer_id(pk), pk, body, bytes(data))

    scalars = (str, bytes, int, bool, type(None))

    def check(value: Any, depth: int) -> None:
        if depth > codec.MAX_DEPTH:
            raise codec.DecodeError(f"nesting deeper than {codec.MAX_DEPTH}")
        t = type(value)
        if t is dict:
            prev = None
            for k, v in value.items():
                if type(k) is not str:
                    raise codec.DecodeError("map keys must be text")
                kb = k.encode("utf-8", "surrogatepass")
                if prev is not None and kb <= prev:
                    raise codec.DecodeError("not in canonical form")
                prev = kb
                check(v, depth + 1)
        elif t is list:
            for v in value:
                check(v, depth + 1)
        elif t not in scalars:
            raise codec.DecodeError(f"type {t.__name__} has no canonical encoding")

    original_decode = ORIGINAL["decode"]

    def decode(data: bytes, *, max_bytes: int = codec.MAX_MESSAGE_BYTES) -> Any:
        if not isinstance(data, bytes | bytearray | memoryview):
            raise codec.DecodeError("expected bytes")
        data = bytes(data)
        if len(data) > max_bytes:
            raise codec.DecodeError(f"message is {len(data)} bytes, limit {max_bytes}")
        try:
            value = msgpack.unpackb(
                data,
                raw=False,
                strict_map_key=True,
                use_list=True,
                max_str_len=codec.MAX_STR_BYTES,
                max_bin_len=codec.MAX_BIN_BYTES,
                max_array_len=codec.MAX_CONTAINER_LEN,
                max_map_len=codec.MAX_CONTAINER_LEN,
                max_ext_len=0,
            )
        except Exception as exc:
            raise codec.DecodeError(f"not msgpack: {type(exc).__name__}") from None
        check(value, 0)
        if msgpack.packb(value, use_bin_type=True) != data:
            raise codec.DecodeError("not in canonical form")
        return value

    envelope.open_envelope = open_envelope
    block.open_envelope = open_envelope  # imported by name there
    codec.decode = decode if stage >= 3 else original_decode


ORIGINAL: dict[str, Any] = {"decode": codec.decode}


def profile_ingest(blocks: list[Made], top: int = 18) -> dict[str, Any]:
    crypto._VERIFIED.clear()
    led = Ledger("bench")
    prof = cProfile.Profile()
    prof.enable()
    for b in blocks:
        led.ingest(b.raw)
    prof.disable()
    stats = pstats.Stats(prof)
    total = sum(v[2] for v in stats.stats.values())  # type: ignore[attr-defined]
    rows = []
    for (file, line, name), (_cc, ncalls, tottime, cumtime, _callers) in sorted(
        stats.stats.items(),  # type: ignore[attr-defined]
        key=lambda kv: -kv[1][2],
    )[:top]:
        where = f"{Path(file).name}:{line}" if line else file
        rows.append(
            {
                "function": f"{where}({name})",
                "calls": ncalls,
                "tottime_s": round(tottime, 4),
                "cumtime_s": round(cumtime, 4),
                "share_of_total": round(tottime / total, 4) if total else 0.0,
            }
        )
    return {"blocks": len(blocks), "total_s": round(total, 4), "top_by_own_time": rows}


# -- memory and disk ------------------------------------------------------------------------------
def measure_memory(blocks: list[Made]) -> dict[str, Any]:
    crypto._VERIFIED.clear()
    gc.collect()
    proc = psutil.Process()
    rss0 = proc.memory_info().rss
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    led = Ledger("bench")
    for b in blocks:
        # A copy made here, so the ledger owns its block bytes (as in a node) and they count.
        led.ingest(bytes(bytearray(b.raw)))
    crypto._VERIFIED.clear()  # the cache is bounded and shared; not the ledger's
    gc.collect()
    heap = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    rss = proc.memory_info().rss - rss0
    raw_bytes = sum(len(b.raw) for b in blocks)
    del led
    n = len(blocks)
    return {
        "blocks": n,
        "heap_bytes": heap,
        "heap_bytes_per_block": round(heap / n, 1),
        "heap_mib_per_100k": round(heap / n * 100_000 / 2**20, 1),
        "rss_growth_bytes": rss,
        "rss_mib_per_100k": round(rss / n * 100_000 / 2**20, 1),
        "block_bytes_mean": round(raw_bytes / n, 1),
    }


def measure_disk(blocks: list[Made]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="p2pmesh-bench-ledger-") as tmp:
        path = Path(tmp) / "state.db"
        store = Store(path)
        empty = path.stat().st_size
        t0 = time.perf_counter()
        for b in blocks:
            store.put_block(b.author, b.seq, b.raw)
        write_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        back = store.blocks()
        read_s = time.perf_counter() - t0
        if len(back) != len(blocks):
            raise AssertionError("blocks lost in the store")
        store._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        store.close()
        files = {p.name: p.stat().st_size for p in Path(tmp).iterdir()}
    size = sum(files.values()) - empty
    n = len(blocks)
    raw_bytes = sum(len(b.raw) for b in blocks)
    return {
        "blocks": n,
        "file_bytes": size,
        "bytes_per_block": round(size / n, 1),
        "mib_per_100k": round(size / n * 100_000 / 2**20, 1),
        "payload_bytes_per_block": round(raw_bytes / n, 1),
        "overhead": round(size / raw_bytes, 3),
        "write_blocks_per_s": round(n / write_s),
        "read_blocks_per_s": round(n / read_s),
        "files": files,
    }


# -- main -----------------------------------------------------------------------------------------
def machine() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "pynacl": metadata.version("pynacl"),
        "msgpack": metadata.version("msgpack"),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


def summarise(rounds: list[dict[str, float]], n: int, authors: int) -> dict[str, Any]:
    ratios = [r["raw_cpu"] / r["ingest_cpu"] for r in rounds]
    ratio = statistics.median(ratios)
    return {
        "blocks": n,
        "authors": authors,
        "rounds": len(rounds),
        "ingest_blocks_per_s_cpu_best": round(n / min(r["ingest_cpu"] for r in rounds)),
        "ingest_blocks_per_s_cpu_median": round(
            n / statistics.median(r["ingest_cpu"] for r in rounds)
        ),
        "ingest_blocks_per_s_wall_best": round(n / min(r["ingest_wall"] for r in rounds)),
        "raw_verifies_per_s_cpu_best": round(n / min(r["raw_cpu"] for r in rounds)),
        "raw_verifies_per_s_cpu_median": round(n / statistics.median(r["raw_cpu"] for r in rounds)),
        "raw_verifies_per_s_wall_best": round(n / min(r["raw_wall"] for r in rounds)),
        "ingest_us_per_block_cpu": round(min(r["ingest_cpu"] for r in rounds) / n * 1e6, 1),
        "raw_verify_us_cpu": round(min(r["raw_cpu"] for r in rounds) / n * 1e6, 1),
        "ratio_per_round": [round(x, 3) for x in ratios],
        "ratio_median": round(ratio, 3),
        "goal": GOAL_RATIO,
        "goal_met": ratio >= GOAL_RATIO,
        "seconds": rounds,
    }


def timed_rounds(
    blocks: list[Made],
    items: list[tuple[nacl.signing.VerifyKey, bytes, bytes]],
    repeat: int,
    label: str,
) -> list[dict[str, float]]:
    n = len(blocks)
    rounds = []
    for i in range(repeat):
        iw, ic = time_ingest(blocks)
        rw, rc = time_raw(items)
        rounds.append({"ingest_wall": iw, "ingest_cpu": ic, "raw_wall": rw, "raw_cpu": rc})
        print(
            f"{label} round {i + 1}: ingest {n / ic:,.0f} blocks/s, raw verify {n / rc:,.0f}/s, "
            f"ratio {rc / ic:.1%} (CPU time; wall {n / iw:,.0f} and {n / rw:,.0f})",
            flush=True,
        )
    return rounds


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--blocks", type=int, default=100_000)
    ap.add_argument("--authors", type=int, default=16)
    ap.add_argument("--repeat", type=int, default=3, help="timed rounds of each")
    ap.add_argument("--profile-blocks", type=int, default=20_000)
    ap.add_argument("--profile", action="store_true", help="profile even when the goal is met")
    ap.add_argument(
        "--try-fix", action="store_true", help="then time again with the proposed fix patched in"
    )
    ap.add_argument("--fix-blocks", type=int, default=20_000, help="subset for --try-fix")
    ap.add_argument("--skip-disk", action="store_true")
    ap.add_argument("--out", type=Path, help="write the results as JSON here")
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    blocks = make_blocks(args.blocks, args.authors)
    make_s = time.perf_counter() - t0
    items = raw_items(blocks)
    n = len(blocks)
    print(f"made {n:,} blocks across {args.authors} chains in {make_s:.1f} s", flush=True)

    memory = measure_memory(blocks)
    speed = summarise(timed_rounds(blocks, items, args.repeat, "as is:"), n, args.authors)
    profile = None
    if args.profile or not speed["goal_met"]:
        profile = profile_ingest(blocks[: args.profile_blocks])
    disk = None if args.skip_disk else measure_disk(blocks)
    fixed: dict[str, Any] | None = None
    if args.try_fix:
        # On a subset: the code as it is once more, then each stage, in one stretch of time.
        sub, sub_items = blocks[: args.fix_blocks], items[: args.fix_blocks]
        as_is = timed_rounds(sub, sub_items, args.repeat, "as is:")
        fixed = {"blocks": len(sub), "as is": summarise(as_is, len(sub), args.authors)}
        for stage, name in enumerate(FIX_STAGES, start=1):
            apply_proposed_fix(stage)
            rounds = timed_rounds(sub, sub_items, args.repeat, f"{name}:")
            fixed[name] = summarise(rounds, len(sub), args.authors)
        fixed["profile"] = profile_ingest(blocks[: args.profile_blocks])  # what is left

    results = {
        "command": " ".join(["python benchmarks/bench_ledger.py", *(argv or sys.argv[1:])]),
        "machine": machine(),
        "make_s": round(make_s, 1),
        "speed": speed,
        "memory": memory,
        "disk": disk,
        "profile": profile,
        "with_proposed_fix": fixed,
    }
    rows = [
        ("blocks (authors)", f"{n:,} ({args.authors})"),
        ("ingest, full checks (blocks/s, CPU)", f"{speed['ingest_blocks_per_s_cpu_best']:,}"),
        ("raw PyNaCl verify (/s, CPU)", f"{speed['raw_verifies_per_s_cpu_best']:,}"),
        ("ratio ingest/raw (median of rounds)", f"{speed['ratio_median']:.1%}"),
        ("goal ≥ 80 % met", "yes" if speed["goal_met"] else "NO"),
        (
            "µs per block: ingest / raw verify",
            f"{speed['ingest_us_per_block_cpu']} / {speed['raw_verify_us_cpu']}",
        ),
    ]
    if fixed is not None:
        for name in ("as is", *FIX_STAGES):
            f = fixed[name]
            label = f"{fixed['blocks'] // 1000}k: {name}"[:43]
            rows.append(
                (label, f"{f['ratio_median']:.1%} {f['ingest_blocks_per_s_cpu_best']:>6,}/s")
            )
    rows += [
        ("heap per 100k blocks (MiB)", f"{memory['heap_mib_per_100k']}"),
        ("RSS growth per 100k blocks (MiB)", f"{memory['rss_mib_per_100k']}"),
        ("mean block size (bytes)", f"{memory['block_bytes_mean']}"),
    ]
    if disk is not None:
        rows += [
            ("SQLite per 100k blocks (MiB)", f"{disk['mib_per_100k']}"),
            ("SQLite bytes/block (x payload)", f"{disk['bytes_per_block']} ({disk['overhead']}x)"),
            ("put_block writes/s", f"{disk['write_blocks_per_s']:,}"),
            ("read back (Store.blocks) blocks/s", f"{disk['read_blocks_per_s']:,}"),
        ]
    print()
    print(f"{'measure':<44}{'value':>18}")
    print("-" * 62)
    for k, v in rows:
        print(f"{k:<44}{v:>18}")
    if profile is not None:
        print(f"\nprofile of one ingest of {profile['blocks']:,} blocks (own time, top):")
        for r in profile["top_by_own_time"]:
            share, own, calls = r["share_of_total"], r["tottime_s"], r["calls"]
            print(f"  {share:>6.1%}  {own:>8.3f} s  {calls:>8}  {r['function']}")
    if fixed is not None:
        print(f"\nprofile with the proposed fix, {fixed['profile']['blocks']:,} blocks:")
        for r in fixed["profile"]["top_by_own_time"]:
            share, own, calls = r["share_of_total"], r["tottime_s"], r["calls"]
            print(f"  {share:>6.1%}  {own:>8.3f} s  {calls:>8}  {r['function']}")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")
        print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
