"""Simulation benchmarks at internet scale (docs/SIMULATIONS.md, "Benchmarks").

    python benchmarks/bench_sim.py --peers 10000 --jobs 30000 --out sim.json
    python benchmarks/bench_sim.py --only honest,sybil --peers 2000 --jobs 4000
    python benchmarks/bench_sim.py --parallel 4 ...      # one process per case, at once

Cases (each in its own process, so peak RSS is per case):

colluders-fixed   20 % colluding saboteurs (one ring, cheat when holding the majority of a
                  job's winners), ``redundancy: 2``: accepted-wrong rate, mean redundancy
colluders-auto    the same with ``redundancy: "auto"`` (default target_error 1e-4)
colluders-auto-1pct   the same with ``target_error`` 0.01 (a worker may run alone sooner)
sybil             ``--peers`` honest peers, then a swarm of ``--sybils`` fresh identities of one
                  owner (price 1, colluding) joins a third into the arrivals; the arrivals are
                  spread so that the swarm's first simulated hour lies inside them: share of
                  awards the swarm wins in that hour
honest            honest peers of equal capacity and price: Gini of earnings
colluders-k3      winner-aware colluders against ``redundancy: 3`` (majority of three)
scenario-NAME     scenario NAME of ``p2pmesh sim`` with the CLI's defaults (``--sweep``: all)

Reported per case: the metrics of ``p2pmesh sim --json`` plus wall seconds, CPU seconds, peak
RSS (MiB) of the case's process, and the run's details (states, messages by kind, ...).
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import datetime as dt
import json
import os
import platform
import resource
import subprocess
import sys
import time
from typing import Any

from p2pmesh.simulations.scenarios import SCENARIOS

CASES = (
    "colluders-fixed",
    "colluders-auto",
    "colluders-auto-1pct",
    "sybil",
    "honest",
    "colluders-k3",
    *(f"scenario-{s}" for s in SCENARIOS),
)
SYBIL_SPAN_S = 5400.0  # arrivals last 1.5 h: join at 1/3 (30 min), measure the next hour


def case_kwargs(case: str, peers: int, jobs: int, seed: int, sybils: int) -> dict[str, Any]:
    from p2pmesh.simulations.network import NetConfig

    # At 10,000 peers, gossiping ledger heads to even two peers each makes every node hold
    # copies of many chains (memory grows as peers × blocks); payer and payee still exchange
    # and sync each other's chains. See docs/SIMULATIONS.md, "Ledger replication".
    net = NetConfig(offer_fanout=8, head_fanout=0)
    base: dict[str, Any] = {"peers": peers, "jobs": jobs, "seed": seed, "net": net}
    if case == "colluders-fixed":
        return {**base, "name": "colluders", "fraction": 0.2, "redundancy": 2}
    if case == "colluders-auto":
        return {**base, "name": "colluders", "fraction": 0.2, "redundancy": "auto"}
    if case == "colluders-auto-1pct":
        return {
            **base,
            "name": "colluders",
            "fraction": 0.2,
            "redundancy": "auto",
            "target_error": 0.01,
        }
    if case == "sybil":
        return {
            **base,
            "name": "sybil",
            "fraction": sybils / peers,
            "rate": jobs / SYBIL_SPAN_S,
        }
    if case == "honest":
        return {**base, "name": "honest"}
    if case == "colluders-k3":
        return {**base, "name": "colluders", "fraction": 0.2, "redundancy": 3}
    if case.startswith("scenario-"):
        return {"peers": peers, "jobs": jobs, "seed": seed, "name": case[len("scenario-") :]}
    raise ValueError(f"unknown case {case!r}")


def run_case(case: str, peers: int, jobs: int, seed: int, sybils: int) -> dict[str, Any]:
    """Run one case in this process and return its results."""
    from p2pmesh.simulations.scenarios import run

    kwargs = case_kwargs(case, peers, jobs, seed, sybils)
    name = kwargs.pop("name")
    wall = time.perf_counter()
    cpu = time.process_time()
    report = run(name, **kwargs)
    return {
        "case": case,
        "metrics": report.to_json(),
        "wall_s": round(time.perf_counter() - wall, 1),
        "cpu_s": round(time.process_time() - cpu, 1),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "details": report.details,
    }


def _spawn(case: str, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [
        sys.executable,
        __file__,
        "--one",
        case,
        "--peers",
        str(args.peers),
        "--jobs",
        str(args.jobs),
        "--seed",
        str(args.seed),
        "--sybils",
        str(args.sybils),
    ]
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        return {
            "case": case,
            "error": proc.stderr.strip().splitlines()[-1:] or ["failed"],
            "wall_s": round(time.perf_counter() - started, 1),
        }
    return json.loads(proc.stdout)


def _row(r: dict[str, Any]) -> str:
    if "error" in r:
        return f"{r['case']:<20} ERROR {r['error']}"
    m = r["metrics"]
    sybil = "—" if m["sybil_share"] is None else f"{m['sybil_share']:.3f}"
    return (
        f"{r['case']:<20} {m['peers']:>6} {m['jobs']:>7} {m['accepted_wrong_rate']:>8.4f} "
        f"{m['mean_redundancy']:>6.3f} {sybil:>7} {m['gini_honest_earnings']:>6.3f} "
        f"{m['latency_p50_s']:>7.1f} {m['latency_p99_s']:>8.1f} {r['wall_s']:>8.1f} "
        f"{r['cpu_s']:>8.1f} {r['peak_rss_mib']:>8.0f}"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--peers", type=int, default=10_000)
    p.add_argument("--jobs", type=int, default=30_000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--sybils", type=int, default=1_000)
    p.add_argument("--only", default=",".join(CASES[:5]), help="comma-separated cases")
    p.add_argument("--sweep", action="store_true", help="every scenario-NAME case")
    p.add_argument("--parallel", type=int, default=1, help="cases run at once (default 1)")
    p.add_argument("--out", help="write every figure as JSON here")
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one case, print JSON
    args = p.parse_args(argv)
    if args.one:
        print(json.dumps(run_case(args.one, args.peers, args.jobs, args.seed, args.sybils)))
        return 0
    cases = [c.strip() for c in args.only.split(",") if c.strip()]
    if args.sweep:
        cases = [c for c in CASES if c.startswith("scenario-")]
    for c in cases:
        if c not in CASES:
            p.error(f"unknown case {c!r}; one of {', '.join(CASES)}")
    print(
        f"{'case':<20} {'peers':>6} {'jobs':>7} {'wrong':>8} {'k':>6} {'sybil':>7} "
        f"{'gini':>6} {'p50_s':>7} {'p99_s':>8} {'wall_s':>8} {'cpu_s':>8} {'rss_MiB':>8}",
        flush=True,
    )
    results: list[dict[str, Any]] = []
    with cf.ThreadPoolExecutor(max_workers=max(1, args.parallel)) as pool:
        futures = {pool.submit(_spawn, c, args): c for c in cases}
        for fut in cf.as_completed(futures):
            r = fut.result()
            results.append(r)
            print(_row(r), flush=True)
    doc = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "processor": platform.processor(),
            "load_avg_at_end": os.getloadavg(),
        },
        "args": {k: v for k, v in vars(args).items() if k != "one"},
        "results": sorted(results, key=lambda r: cases.index(r["case"])),
    }
    if args.out:
        with open(args.out, "w") as f:
            json.dump(doc, f, indent=2)
            f.write("\n")
    return 0 if all("error" not in r for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
