"""Jobs benchmarks with real daemon processes and real Docker (docs/BENCHMARKS.md, "Jobs: …").

    python benchmarks/bench_jobs.py --out jobs.json                           # both
    python benchmarks/bench_jobs.py --only latency --repeat 10 --out l.json
    python benchmarks/bench_jobs.py --only throughput --nodes 10 --jobs 200 --out t.json
    python benchmarks/bench_jobs.py --only throughput --rate 5 --jobs 100 --out t5.json
    python benchmarks/bench_jobs.py --only throughput --profile --out t.json  # + py-spy

latency     A 2-node mesh (node0 requests, node1 works). The same trivial command,
            ``sh -c 'echo hi > /out/x'`` in ``p2pmesh/busybox:1``, run three ways side by side,
            ``--repeat`` times each, in rotating order after one unmeasured warm-up of each:
            a bare ``docker run --rm --network none -v DIR:/out …`` (the docker CLI, until it
            exits), and ``p2pmesh offer JOB --wait --out DIR`` with redundancy 1 at
            ``--bid-window 1`` (the minimum) and ``2`` (the default), from the CLI's start until
            it exits with the file on disk. Each p2pmesh run is split into phases from the
            daemons' own log lines (offer published, awarded, accepted, running, result, done).
            Goal: p2pmesh median ≤ 1.5 × docker median + 0.5 s.
throughput  ``--nodes`` daemons (node0 requests, the others work with ``--max-jobs`` slots, so
            capacity never stops them bidding). ``--jobs`` jobs with the product's default
            redundancy 2 are submitted through the control socket (the request the CLI makes,
            without a process start per job), back to back or ``--rate`` per second, each with
            ``--bid-window 1``. Counted from the requester's own log: the first "job awarded"
            line of each job (sub-second timestamps; a job's history has whole seconds only).
            Reported: awarded jobs/s from the first submit to the last award, the steady rate
            between the 10th and 90th percentile awards, submit → award latency, bids per job,
            re-offered jobs, CPU per awarded job (all daemons, requester) and the CPU of every
            other process on the machine. ``--payload true`` runs a trivial container per
            replica (``true`` in busybox); ``--payload absent`` names an image the workers allow
            but do not have, so each run fails at once without a container (and the job is
            tried on worker after worker); ``--payload instant`` starts the workers with the
            benchmark-only executor (``P2PMESH_BENCH_EXECUTOR=instant``, adapters/instant.py),
            which returns one fixed output at once: offer, bids, award, statuses, result, output
            fetch, verdict and payment, and nothing else. Goal: ≥ 50 awarded jobs/s.
            ``--profile`` samples node0 and node1 with py-spy (``pip install py-spy``) and
            reports their hottest functions.

``--quiet-load L`` waits (up to ``--quiet-wait`` s) before each part until the 1-minute load
average is ≤ L: on a shared machine a benchmark would otherwise measure the other work.

Prints tables and writes every figure, with the machine and the date, as JSON to ``--out``.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import datetime as dt
import itertools
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import psutil

import p2pmesh

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "integration"))

from jobmesh import (  # noqa: E402
    ALLOW_OURS,
    BUSYBOX,
    FINAL,
    docker_client,
    docker_missing,
    history,
    job_doc,
    offer,
    remove_leftovers,
    request,
    write_job,
)
from mesh import Mesh, MeshNode, wait_until  # noqa: E402

LATENCY_GOAL_FACTOR = 1.5
LATENCY_GOAL_SLACK_S = 0.5
THROUGHPUT_GOAL = 50.0
TRIVIAL = ["sh", "-c", "echo hi > /out/x"]
PHASES = (
    ("offer published", "requester"),
    ("job awarded", "requester"),
    ("award accepted", "worker"),
    ("job running", "requester"),
    ("result sent", "worker"),
    ("result received", "requester"),
    ("job done", "requester"),
)


# -- helpers -----------------------------------------------------------------------------------
def machine_info() -> dict[str, Any]:
    commit = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    docker_version = subprocess.run(
        ["docker", "version", "--format", "{{.Server.Version}}"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpus": os.cpu_count(),
        "ram_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "libp2p": metadata.version("libp2p"),
        "docker": docker_version,
        "p2pmesh_commit": commit + ("+uncommitted" if dirty else ""),
        # Where the daemons' p2pmesh comes from (a patched copy on PYTHONPATH shows here).
        "p2pmesh_path": str(Path(p2pmesh.__file__).parent),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def stats(values: list[float]) -> dict[str, float | int | None]:
    if not values:
        return {"n": 0, "median": None, "min": None, "max": None, "p90": None}
    ordered = sorted(values)
    p90 = ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]
    return {
        "n": len(values),
        "median": round(statistics.median(values), 3),
        "min": round(ordered[0], 3),
        "max": round(ordered[-1], 3),
        "p90": round(p90, 3),
    }


def log_lines(node: MeshNode) -> list[dict[str, Any]]:
    """The daemon's JSON log lines (harness lines and anything else skipped)."""
    out = []
    for line in node.log_text().splitlines():
        if not line.startswith("{"):
            continue
        with contextlib.suppress(json.JSONDecodeError):
            doc = json.loads(line)
            if isinstance(doc, dict) and "ts" in doc and "msg" in doc:
                out.append(doc)
    return out


def first_ts(lines: list[dict[str, Any]], msg: str, job_id: str) -> float | None:
    for line in lines:
        if line["msg"] == msg and line.get("job") == job_id:
            return float(line["ts"])
    return None


def cpu_seconds(nodes: list[MeshNode]) -> dict[str, float]:
    out = {}
    for n in nodes:
        if n.pid is None:
            continue
        with contextlib.suppress(psutil.NoSuchProcess):
            t = psutil.Process(n.pid).cpu_times()
            out[n.name] = t.user + t.system
    return out


def busy_cpu_s() -> float:
    """CPU seconds the whole machine has been busy (all processes, ours included)."""
    t = psutil.cpu_times()
    return t.user + t.nice + t.system + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0)


def docker_engine_cpu() -> float:
    """CPU seconds used so far by the Docker engine and containerd (0 if not visible)."""
    total = 0.0
    for p in psutil.process_iter(["name", "cpu_times"]):
        if p.info["name"] in ("dockerd", "containerd") or (p.info["name"] or "").startswith(
            "containerd-shim"
        ):
            t = p.info["cpu_times"]
            if t is not None:
                total += t.user + t.system
    return total


def wait_for_quiet(max_load: float, max_wait_s: float) -> dict[str, Any]:
    """Wait (up to ``max_wait_s``) until the 1-minute load average is ≤ ``max_load``: the machine
    may be shared, and a benchmark on a saturated machine measures the other work."""
    t0 = time.monotonic()
    while os.getloadavg()[0] > max_load and time.monotonic() - t0 < max_wait_s:
        time.sleep(5.0)
    load = [round(x, 2) for x in os.getloadavg()]
    return {"waited_s": round(time.monotonic() - t0, 1), "loadavg": load}


# -- (a) offer to outputs ----------------------------------------------------------------------
def docker_run(out: Path) -> float:
    out.mkdir(parents=True)
    t0 = time.perf_counter()
    subprocess.run(
        ["docker", "run", "--rm", "--network", "none", "-v", f"{out}:/out", BUSYBOX, *TRIVIAL],
        check=True,
        capture_output=True,
    )
    took = time.perf_counter() - t0
    assert (out / "x").read_text() == "hi\n"
    return took


def p2pmesh_run(
    requester: MeshNode, worker: MeshNode, job: Path, out: Path, window: int
) -> dict[str, Any]:
    started = time.time()
    t0 = time.perf_counter()
    res = offer(requester, job, "--wait", "--out", str(out), "--bid-window", str(window))
    took = time.perf_counter() - t0
    ended = started + took
    if res.rc != 0:
        raise RuntimeError(f"offer failed: {res.describe()}\n{history(res.doc)}")
    assert (out / "outputs" / "x").read_text() == "hi\n"
    rlog, wlog = log_lines(requester), log_lines(worker)
    marks = {"cli start": started}
    for msg, side in PHASES:
        ts = first_ts(rlog if side == "requester" else wlog, msg, res.job_id)
        if ts is not None:
            marks[msg] = ts
    marks["cli exit"] = ended
    names = list(marks)
    phases = {f"{a} → {b}": round(marks[b] - marks[a], 3) for a, b in itertools.pairwise(names)}
    run_s = next((w["result"]["run_s"] for w in res.doc["workers"] if w.get("result")), None)
    return {"seconds": took, "phases": phases, "worker_run_s": run_s, "job_id": res.job_id}


def bench_latency(base: Path, repeat: int, windows: tuple[int, ...]) -> dict[str, Any]:
    job = write_job(
        base / "job",
        doc=job_doc(
            name="trivial",
            command=TRIVIAL,
            redundancy=1,
            timeout_s=60,
            deadline_s=120,
            max_price=10,
            budget=10,
        ),
    )
    with Mesh(base / "mesh", 2, extra_args=ALLOW_OURS) as mesh:
        mesh.wait_all_listed(60)
        requester, worker = mesh.nodes
        runs: dict[str, list[dict[str, Any]]] = {"docker": []}
        for w in windows:
            runs[f"bw{w}"] = []
        kinds = list(runs)
        # Unmeasured warm-up: image and page caches, the worker's first Docker client.
        docker_run(base / "warm-docker")
        for w in windows:
            p2pmesh_run(requester, worker, job, base / f"warm-bw{w}", w)
        for i in range(repeat):
            order = kinds[i % len(kinds) :] + kinds[: i % len(kinds)]
            for kind in order:
                out = base / f"{kind}-{i}"
                if kind == "docker":
                    runs[kind].append({"seconds": docker_run(out)})
                else:
                    runs[kind].append(p2pmesh_run(requester, worker, job, out, int(kind[2:])))
                print(f"latency {kind} run {i + 1}: {runs[kind][-1]['seconds']:.3f} s", flush=True)
        load_end = [round(x, 2) for x in os.getloadavg()]
    docker_median = statistics.median(r["seconds"] for r in runs["docker"])
    limit = LATENCY_GOAL_FACTOR * docker_median + LATENCY_GOAL_SLACK_S
    summary: dict[str, Any] = {
        "repeat": repeat,
        "docker_s": stats([r["seconds"] for r in runs["docker"]]),
        "goal_limit_s": round(limit, 3),
        "loadavg_at_end": load_end,
    }
    for w in windows:
        rs = runs[f"bw{w}"]
        med = statistics.median(r["seconds"] for r in rs)
        phase_names = list(rs[0]["phases"])
        summary[f"bid_window_{w}"] = {
            "seconds": stats([r["seconds"] for r in rs]),
            "ratio_to_docker": round(med / docker_median, 2),
            "goal_met": med <= limit,
            "phases_median_s": {
                p: round(statistics.median(r["phases"].get(p, 0.0) for r in rs), 3)
                for p in phase_names
            },
            "worker_run_s_median": round(
                statistics.median(r["worker_run_s"] or 0.0 for r in rs), 3
            ),
        }
    return {"summary": summary, "runs": runs}


# -- (b) auction throughput ----------------------------------------------------------------------
def start_profile(pid: int, seconds: float, dest: Path) -> subprocess.Popen[bytes] | None:
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        print("py-spy not found; no profile (pip install py-spy)", flush=True)
        return None
    return subprocess.Popen(
        [
            spy,
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(int(seconds)),
            "--rate",
            "200",
            "--format",
            "raw",
            "--output",
            str(dest),
            "--nonblocking",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def summarize_profile(path: Path, top: int = 40) -> dict[str, Any]:
    """Collapsed stacks → share of samples per function (self and inclusive)."""
    self_n: collections.Counter[str] = collections.Counter()
    incl_n: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [
            f.split(" (")[0] + " (" + f.split(" (")[1].split(":")[0] + ")" if " (" in f else f
            for f in stack.split(";")
        ]
        self_n[frames[-1]] += n
        for f in set(frames):
            incl_n[f] += n
    if not total:
        return {"samples": 0}
    return {
        "samples": total,
        "self_pct": {f: round(100 * n / total, 1) for f, n in self_n.most_common(top)},
        "inclusive_pct": {f: round(100 * n / total, 1) for f, n in incl_n.most_common(top)},
    }


def bench_throughput(
    base: Path,
    nodes: int,
    jobs: int,
    payload: str,
    max_jobs: int,
    profile: bool,
    timeout: float,
    rate: float = 0.0,
    daemon_args: tuple[str, ...] = (),
) -> dict[str, Any]:
    # Pinned by digest: an image the requester lacks is otherwise refused at offer (issue 17).
    absent = "p2pmesh/absent-on-purpose@sha256:" + "0" * 64
    image = absent if payload == "absent" else BUSYBOX
    env = (
        {"P2PMESH_ALLOW_FAULTS": "1", "P2PMESH_BENCH_EXECUTOR": "instant"}
        if payload == "instant"
        else {}
    )
    job = write_job(
        base / "job",
        doc=job_doc(
            name=f"throughput-{payload}",
            image=image,
            command=["true"],
            redundancy=2,
            resources={
                "cpus": 0.1,
                "ram_gb": 0.0625,
                "gpus": 0,
                "gpu_memory_gb": 0,
                "disk_gb": 0.01,
            },
            timeout_s=60,
            deadline_s=900,
            max_price=10,
            budget=20,
        ),
    )
    client = docker_client()
    with Mesh(
        base / "mesh",
        nodes,
        extra_args=[*ALLOW_OURS, "--max-jobs", str(max_jobs), *daemon_args],
        env=env,
    ) as mesh:
        try:
            mesh.wait_all_listed(300)
            requester = mesh.nodes[0]
            time.sleep(3.0)  # let start-up gossip settle
            cpu0, engine0, busy0 = cpu_seconds(mesh.nodes), docker_engine_cpu(), busy_cpu_s()
            spies = []
            if profile:
                for who, node in (("requester", requester), ("worker", mesh.nodes[1])):
                    if node.pid is not None:
                        spy = start_profile(node.pid, 30, base / f"{who}.pyspy.txt")
                        if spy is not None:
                            spies.append(spy)
                time.sleep(1.0)
            t_first = time.time()
            ids: list[str] = []
            for i in range(jobs):
                if rate > 0:  # paced: job i goes at t_first + i / rate
                    time.sleep(max(0.0, t_first + i / rate - time.time()))
                sub = request(requester, "submit", {"job_file": str(job), "bid_window_s": 1})
                ids.append(sub["job_id"])
            t_last = time.time()
            pending = set(ids)

            def all_awarded() -> bool:
                lines = log_lines(requester)
                seen = {ln.get("job") for ln in lines if ln["msg"] == "job awarded"}
                pending.difference_update(seen)
                return not pending

            try:
                wait_until(all_awarded, timeout, interval=0.5)
                complete = True
            except AssertionError:
                complete = False  # reported: how many were awarded within the time limit
                print(f"{len(pending)} of {jobs} jobs not awarded within {timeout:g} s", flush=True)
            t_awarded = time.time()
            cpu1, engine1, busy1 = cpu_seconds(mesh.nodes), docker_engine_cpu(), busy_cpu_s()
            load = [round(x, 2) for x in os.getloadavg()]

            # Let every job finish (so that no container outlives the mesh), then look back.
            def all_final() -> bool:
                docs = request(requester, "jobs")
                mine = [d for d in docs if d.get("role") == "requester"]
                return all(d["state"] in FINAL for d in mine)

            try:
                wait_until(all_final, timeout if complete else 1.0, interval=1.0)
            except AssertionError:
                for job_id in ids:
                    with contextlib.suppress(Exception):
                        request(requester, "cancel", {"job_id": job_id})
            for spy in spies:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    spy.wait(timeout=40)
            docs = {
                d["job_id"]: d for d in request(requester, "jobs") if d.get("role") == "requester"
            }
            lines = log_lines(requester)
        finally:
            mesh.close()
            if client is not None:
                left = remove_leftovers(client, mesh.nodes)
                if left:
                    print(f"removed leftovers: {left}", flush=True)
    awards: dict[str, float] = {}
    replica_awards = 0
    for ln in lines:
        if ln["msg"] == "job awarded" and ln.get("job") in docs:
            replica_awards += len(ln.get("workers", []))
            awards.setdefault(ln["job"], float(ln["ts"]))
    submitted = {j: first_ts(lines, "offer published", j) or t_first for j in ids}
    times = sorted(awards.values()) or [t_awarded]
    n = len(awards)
    i10, i90 = int(0.1 * (n - 1)), int(0.9 * (n - 1))
    lo, hi = times[i10], times[i90]
    steady = (i90 - i10) / (hi - lo) if n > 1 and hi > lo else None
    states = collections.Counter(d["state"] for d in docs.values())
    cpu = {k: round(cpu1.get(k, 0.0) - cpu0.get(k, 0.0), 2) for k in cpu1}
    window = t_awarded - t_first
    result: dict[str, Any] = {
        "nodes": nodes,
        "jobs": jobs,
        "payload": payload,
        "redundancy": 2,
        "max_jobs_per_worker": max_jobs,
        "submit_pacing_per_s": rate or "burst",
        "submit_s": round(t_last - t_first, 3),
        "submit_rate_per_s": round(jobs / (t_last - t_first), 1) if t_last > t_first else None,
        "awarded_jobs": n,
        "all_awarded_within_timeout": complete,
        "replica_awards": replica_awards,
        "first_submit_to_last_award_s": round(times[-1] - t_first, 3),
        "awarded_jobs_per_s": round(n / max(times[-1] - t_first, 1e-9), 1),
        "steady_awarded_jobs_per_s_p10_p90": round(steady, 1) if steady else None,
        "submit_to_award_s": stats([awards[j] - submitted[j] for j in awards]),
        "bids_per_job": stats([float(d["bids_received"]) for d in docs.values()]),
        "jobs_reoffered": sum(1 for d in docs.values() if d["round"] > 0),
        "final_states": dict(states),
        "daemon_cpu_s_until_all_awarded": cpu,
        "requester_cpu_pct_of_one_core": round(100 * cpu.get("node0", 0.0) / window, 1),
        "daemon_cpu_ms_per_awarded_job": round(1000 * sum(cpu.values()) / n) if n else None,
        "requester_cpu_ms_per_awarded_job": round(1000 * cpu.get("node0", 0.0) / n) if n else None,
        "all_daemons_cpu_pct_of_machine": round(
            100 * sum(cpu.values()) / window / (os.cpu_count() or 1), 1
        ),
        "docker_engine_cpu_s_until_all_awarded": round(engine1 - engine0, 2),
        # Everything else on the machine (other users' work): makes a busy machine visible.
        "other_processes_cpu_pct_of_machine": round(
            100
            * max(0.0, (busy1 - busy0) - sum(cpu.values()) - (engine1 - engine0))
            / window
            / (os.cpu_count() or 1),
            1,
        ),
        "loadavg_at_end": load,
        "goal_met": complete and n / (times[-1] - t_first) >= THROUGHPUT_GOAL,
    }
    for who in ("requester", "worker"):
        prof = base / f"{who}.pyspy.txt"
        if profile and prof.exists():
            result[f"{who}_profile"] = summarize_profile(prof)
    return result


# -- output --------------------------------------------------------------------------------------
def print_tables(results: dict[str, Any]) -> None:
    lat = results.get("latency")
    if lat:
        s = lat["summary"]
        print(
            f"\nJobs: offer to outputs (median of {s['repeat']}, seconds; load average "
            f"{s.get('loadavg_at_start')} at start, {s['loadavg_at_end']} at end)"
        )
        print(f"{'run':<34} {'median':>7} {'p90':>7} {'min':>7} {'max':>7}  ratio  goal")
        d = s["docker_s"]
        print(f"{'docker run --rm':<34} {d['median']:>7} {d['p90']:>7} {d['min']:>7} {d['max']:>7}")
        for key in [k for k in s if k.startswith("bid_window_")]:
            b = s[key]
            x = b["seconds"]
            label = f"p2pmesh offer --wait, {key.replace('_', ' ')} s"
            goal = "met" if b["goal_met"] else f"MISSED (≤ {s['goal_limit_s']})"
            print(
                f"{label:<34} {x['median']:>7} {x['p90']:>7} {x['min']:>7} {x['max']:>7}"
                f"  {b['ratio_to_docker']:>4}×  {goal}"
            )
        for key in [k for k in s if k.startswith("bid_window_")]:
            print(f"  phases, {key.replace('_', ' ')} s (median):")
            for p, v in s[key]["phases_median_s"].items():
                print(f"    {p:<40} {v:>6}")
            print(f"    {'(worker container run_s)':<40} {s[key]['worker_run_s_median']:>6}")
    for t in results.get("throughput", []):
        print(
            f"\nJobs: auction throughput ({t['nodes']} nodes, {t['jobs']} jobs submitted "
            f"{t['submit_pacing_per_s']}{'/s' if t['submit_pacing_per_s'] != 'burst' else ''}, "
            f"payload {t['payload']}, redundancy {t['redundancy']})"
        )
        goal = "met" if t["goal_met"] else f"MISSED (goal ≥ {THROUGHPUT_GOAL:g})"
        rows = [
            ("awarded jobs/s (first submit → last award)", f"{t['awarded_jobs_per_s']}  {goal}"),
            (
                "jobs awarded",
                f"{t['awarded_jobs']} of {t['jobs']}"
                + ("" if t["all_awarded_within_timeout"] else " (the rest: not within the limit)"),
            ),
            ("steady awarded jobs/s (p10 → p90 award)", t["steady_awarded_jobs_per_s_p10_p90"]),
            ("submit rate, jobs/s", t["submit_rate_per_s"]),
            (
                "submit → award, median / p90 / max s",
                f"{t['submit_to_award_s']['median']} / {t['submit_to_award_s']['p90']} / "
                f"{t['submit_to_award_s']['max']}",
            ),
            (
                "bids per job, median (min)",
                f"{t['bids_per_job']['median']} ({t['bids_per_job']['min']})",
            ),
            ("jobs re-offered (round > 0)", t["jobs_reoffered"]),
            ("requester CPU, % of one core", t["requester_cpu_pct_of_one_core"]),
            (
                "CPU ms per awarded job: all daemons / requester",
                f"{t['daemon_cpu_ms_per_awarded_job']} / {t['requester_cpu_ms_per_awarded_job']}",
            ),
            ("all daemons CPU, % of machine", t["all_daemons_cpu_pct_of_machine"]),
            ("Docker engine CPU s", t["docker_engine_cpu_s_until_all_awarded"]),
            ("other processes CPU, % of machine", t["other_processes_cpu_pct_of_machine"]),
            ("load average at start / end", f"{t.get('loadavg_at_start')} / {t['loadavg_at_end']}"),
            ("final states", t["final_states"]),
        ]
        for a, b in rows:
            print(f"  {a:<44} {b}")
        for who in ("requester", "worker"):
            prof = t.get(f"{who}_profile")
            if not prof or not prof.get("samples"):
                continue
            # The frames nearly every sample shares (interpreter, trio's loop, main) say nothing.
            top = max(prof["inclusive_pct"].values())
            shown = [(f, p) for f, p in prof["inclusive_pct"].items() if p < 0.9 * top][:14]
            print(
                f"  {who} (node{0 if who == 'requester' else 1}) profile, {prof['samples']} "
                "samples at 200/s; inclusive %:"
            )
            for f, pct in shown:
                print(f"    {pct:>5}  {f}")
            print("   self %:")
            for f, pct in list(prof["self_pct"].items())[:8]:
                print(f"    {pct:>5}  {f}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--only", default="latency,throughput", help="comma-separated subset")
    ap.add_argument("--repeat", type=int, default=10, help="latency: runs of each kind")
    ap.add_argument("--windows", default="1,2", help="latency: bid windows to measure, s")
    ap.add_argument("--nodes", type=int, default=10, help="throughput: daemons")
    ap.add_argument("--jobs", type=int, default=200, help="throughput: jobs submitted")
    ap.add_argument("--payload", default="true,absent", help="throughput: true, absent, instant")
    ap.add_argument(
        "--rate", type=float, default=0.0, help="throughput: submit jobs/s (0: back to back)"
    )
    ap.add_argument("--max-jobs", type=int, default=64, help="throughput: slots per worker")
    ap.add_argument("--timeout", type=float, default=300.0, help="throughput: wait limit, s")
    ap.add_argument("--profile", action="store_true", help="throughput: py-spy the requester")
    ap.add_argument(
        "--quiet-load",
        type=float,
        default=0.0,
        help="before each part, wait until the 1-min load average is ≤ this (0: no)",
    )
    ap.add_argument("--quiet-wait", type=float, default=600.0, help="…but at most this long, s")
    ap.add_argument(
        "--daemon-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="throughput: one more `p2pmesh up` argument for every daemon (repeatable), "
        "e.g. --daemon-arg=--no-sortition",
    )
    ap.add_argument("--out", required=True, help="JSON results file")
    ap.add_argument("--keep", action="store_true", help="keep the node homes (logs) afterwards")
    args = ap.parse_args(argv)
    only = {x.strip() for x in args.only.split(",") if x.strip()}
    why = docker_missing((BUSYBOX,))
    if why:
        print(f"bench_jobs: {why}", file=sys.stderr)
        return 1

    base = Path(tempfile.mkdtemp(prefix="p2pmesh-bench-jobs-"))
    results: dict[str, Any] = {"machine": machine_info(), "base": str(base)}
    try:
        if "latency" in only:
            windows = tuple(int(w) for w in args.windows.split(",") if w.strip())
            quiet = wait_for_quiet(args.quiet_load or 1e9, args.quiet_wait)
            results["latency"] = bench_latency(base / "latency", args.repeat, windows)
            results["latency"]["summary"]["loadavg_at_start"] = quiet["loadavg"]
        if "throughput" in only:
            results["throughput"] = []
            for payload in [p.strip() for p in args.payload.split(",") if p.strip()]:
                quiet = wait_for_quiet(args.quiet_load or 1e9, args.quiet_wait)
                res = bench_throughput(
                    base / f"throughput-{payload}",
                    args.nodes,
                    args.jobs,
                    payload,
                    args.max_jobs,
                    args.profile,
                    args.timeout,
                    args.rate,
                    tuple(args.daemon_arg),
                )
                res["loadavg_at_start"] = quiet["loadavg"]
                print(f"throughput {payload}: {json.dumps(res)}", flush=True)
                results["throughput"].append(res)
    finally:
        Path(args.out).write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    print_tables(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
