"""Trust benchmark: replicas per job and accepted wrong answers, fixed k=2 against "auto".

    python benchmarks/bench_trust.py --out trust.json
    python benchmarks/bench_trust.py --jobs 30 --target-error 0.01 --out trust.json
    python benchmarks/bench_trust.py --fault-after 3 --out trust-late.json   # a cheater that turns

The mesh (docs/BENCHMARKS.md, "Trust: replicas and accepted-wrong"): real ``p2pmesh up``
daemons on 127.0.0.1, real Docker containers. node0..node2 are honest workers that also request
jobs; node3 is started with ``P2PMESH_FAULT=wrong-result`` (every digit of its outputs shifted
by one), optionally honest for its first ``--fault-after`` jobs, at ``--cheater-price``
(default 1, the honest price; 0 models a cheater that undercuts). Every node runs
``--max-jobs 20``.

For each mode (``k2``: ``"redundancy": 2``; ``auto``: ``"redundancy": "auto"`` with
``validation.target_error = --target-error``) a fresh mesh runs ``--jobs`` word counts, each
on an input of its own whose true count the benchmark computes, requested round-robin by
node0..node2, ``--in-flight`` at a time (default 3: one per requester, so reputation evidence
from one job can shape the next award). Per job it records the replicas awarded (workers that
were given the job and did not decline), the replicas that reported, the final state and
whether a ``done`` job's exported output equals the truth. Reported per mode: mean replicas
per job, accepted-wrong count, states, jobs the cheater ran, wall time.

Prints a table and writes every figure, with the machine and the date, as JSON to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "integration"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_mesh import machine_info  # noqa: E402
from jobmesh import docker_client, docker_missing, remove_leftovers  # noqa: E402
from trustmesh import (  # noqa: E402
    Submitted,
    auto_choice,
    fault_env,
    replicas,
    reported_workers,
    run_jobs,
    start_mesh,
    wc_job,
)

CHEATER = 3
HONEST = (0, 1, 2)


def job_changes(mode: str, target_error: float) -> dict[str, Any]:
    if mode == "k2":
        return {"redundancy": 2, "validation": {"mode": "exact", "target_error": target_error}}
    if mode == "auto":
        return {"redundancy": "auto", "validation": {"mode": "exact", "target_error": target_error}}
    raise ValueError(f"unknown mode {mode!r}")


def row(s: Submitted, cheater: str) -> dict[str, Any]:
    return {
        "job": s.case.name,
        "requester": s.node.name,
        "state": s.state,
        "replicas": replicas(s.doc),
        "reported": len(reported_workers(s.doc)),
        "cheater_ran": cheater in reported_workers(s.doc),
        "auto": auto_choice(s.doc),
        "correct": None if s.state != "done" else s.outputs == s.case.truth,
        "price_total": s.doc.get("price_total"),
    }


def run_mode(mode: str, args: argparse.Namespace, base: Path) -> dict[str, Any]:
    mesh = start_mesh(
        base,
        4,
        node_env={CHEATER: fault_env("wrong-result", after=args.fault_after)},
        node_args={
            CHEATER: ["--price", str(args.cheater_price)],
            **{i: ["--spot-check", str(args.spot_check)] for i in HONEST},
        },
    )
    client = docker_client()
    try:
        cheater = mesh.nodes[CHEATER].peer_id
        changes = job_changes(mode, args.target_error)
        cases = [
            (mesh.nodes[HONEST[i % len(HONEST)]], wc_job(base / "jobs", i, **changes))
            for i in range(args.jobs)
        ]
        rows: list[dict[str, Any]] = []
        t0 = time.monotonic()
        for start in range(0, len(cases), args.in_flight):
            batch = cases[start : start + args.in_flight]
            subs = run_jobs(batch, base / "out", timeout=args.job_timeout, mesh=mesh)
            rows += [row(s, cheater) for s in subs]
        wall = time.monotonic() - t0
    finally:
        mesh.close()
        if client is not None:
            remove_leftovers(client, mesh.nodes)
            client.close()
    n = len(rows)
    states: dict[str, int] = {}
    for r in rows:
        states[r["state"]] = states.get(r["state"], 0) + 1
    half = n // 2
    return {
        "mode": mode,
        "jobs": n,
        "mean_replicas": round(sum(r["replicas"] for r in rows) / n, 3),
        "mean_reported": round(sum(r["reported"] for r in rows) / n, 3),
        "mean_replicas_second_half": round(
            sum(r["replicas"] for r in rows[half:]) / max(1, n - half), 3
        ),
        "accepted_wrong": sum(r["correct"] is False for r in rows),
        "states": states,
        "cheater_ran": sum(r["cheater_ran"] for r in rows),
        "ran_alone": sum(r["auto"] == "alone" for r in rows),
        "spot_checks": sum(r["auto"] == "spot check" for r in rows),
        "credits_paid": sum(r["price_total"] or 0 for r in rows),
        "wall_s": round(wall, 1),
        "rows": rows,
    }


def print_table(results: list[dict[str, Any]], args: argparse.Namespace) -> None:
    print(
        f"\n{args.jobs} jobs, 3 honest + 1 wrong-result (fault after {args.fault_after}, "
        f"price {args.cheater_price}), target_error {args.target_error}, "
        f"spot check {args.spot_check}, {args.in_flight} in flight"
    )
    head = (
        f"{'mode':<6} {'replicas/job':>12} {'2nd half':>9} {'reported/job':>12} "
        f"{'wrong accepted':>14} {'alone':>6} {'spot':>5} {'cheater ran':>11} {'wall s':>7}  states"
    )
    print(head)
    print("-" * len(head))
    for r in results:
        print(
            f"{r['mode']:<6} {r['mean_replicas']:>12.2f} {r['mean_replicas_second_half']:>9.2f} "
            f"{r['mean_reported']:>12.2f} {r['accepted_wrong']:>14} {r['ran_alone']:>6} "
            f"{r['spot_checks']:>5} {r['cheater_ran']:>11} {r['wall_s']:>7.1f}  {r['states']}"
        )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--jobs", type=int, default=20, help="jobs per mode")
    ap.add_argument("--modes", default="k2,auto", help="comma-separated: k2, auto")
    ap.add_argument("--target-error", type=float, default=0.05, help="validation.target_error")
    ap.add_argument("--spot-check", type=float, default=0.1, help="requesters' --spot-check")
    ap.add_argument("--fault-after", type=int, default=0, help="cheater honest for N jobs")
    ap.add_argument("--cheater-price", type=int, default=1, help="cheater's --price")
    ap.add_argument("--in-flight", type=int, default=3, help="jobs submitted at once")
    ap.add_argument("--job-timeout", type=float, default=300.0, help="per batch, s")
    ap.add_argument("--out", required=True, help="JSON results file")
    ap.add_argument("--keep", action="store_true", help="keep the node homes (logs) afterwards")
    args = ap.parse_args(argv)
    why = docker_missing()
    if why:
        print(f"cannot run: {why}", file=sys.stderr)
        return 2
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    for m in modes:
        job_changes(m, args.target_error)  # refuse an unknown mode before starting anything

    base = Path(tempfile.mkdtemp(prefix="p2pmesh-bench-trust-"))
    results: dict[str, Any] = {
        "machine": machine_info(),
        "base": str(base),
        "params": {k: v for k, v in vars(args).items() if k not in ("out", "keep")},
        "modes": [],
    }
    try:
        for m in modes:
            res = run_mode(m, args, base / m)
            summary = {k: v for k, v in res.items() if k != "rows"}
            print(f"{m}: {json.dumps(summary)}", flush=True)
            results["modes"].append(res)
        print_table(results["modes"], args)
    finally:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
