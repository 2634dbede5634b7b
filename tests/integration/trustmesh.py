"""Trust helpers for the cross-validation tests and benchmark, on top of ``mesh.py``/``jobmesh.py``.

``mesh.py`` runs the daemons and ``jobmesh.py`` writes job files and talks to a requester; this
module adds what the trust tests need:

* a mesh whose nodes carry fault-injection environments (``P2PMESH_FAULT`` and friends);
* word-count jobs whose *input differs per job* (so every job has its own true answer, and a
  wrong answer for one job can never match another's), with that answer computed here;
* jobs submitted through the control socket without waiting (many at once, from several
  requesters), followed to a final state, and their outputs exported to check them;
* what a user reads from ``p2pmesh reputation --json``;
* counting replicas per job from the job document.

The final states include ``inconclusive`` (``jobmesh.FINAL`` does not list it).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jobmesh import ALLOW_OURS, BUSYBOX, PYTHON, job_doc, job_state, request, write_job
from mesh import Mesh, MeshNode, wait_until

FINAL = frozenset({"done", "failed", "timeout", "cancelled", "no-bids", "inconclusive"})
FAULT_ENV = "P2PMESH_FAULT"

WORDS = (
    "alpha",
    "bravo",
    "charlie",
    "delta",
    "echo",
    "foxtrot",
    "golf",
    "hotel",
    "india",
    "juliet",
    "kilo",
    "lima",
    "mike",
    "november",
    "oscar",
    "papa",
    "quebec",
    "romeo",
    "sierra",
    "tango",
    "uniform",
    "victor",
    "whiskey",
    "xray",
    "yankee",
    "zulu",
)


def fault_env(fault: str, *, after: int = 0, slow_s: float | None = None) -> dict[str, str]:
    """The environment that makes a daemon misbehave on purpose."""
    env = {"P2PMESH_ALLOW_FAULTS": "1", FAULT_ENV: fault}
    if after:
        env["P2PMESH_FAULT_AFTER"] = str(after)
    if slow_s is not None:
        env["P2PMESH_FAULT_SLOW_S"] = str(slow_s)
    return env


def start_mesh(
    base: Path,
    n: int,
    *,
    node_env: Mapping[int, Mapping[str, str]] | None = None,
    node_args: Mapping[int, Sequence[str]] | None = None,
    allow: Mapping[int, Sequence[str]] | None = None,
    max_jobs: int = 20,
    discovery_timeout: float = 45.0,
    newcomer_checks: int = 0,
) -> Mesh:
    """Start ``n`` daemons and wait until each lists all the others.

    Every node allows ``p2pmesh/*`` images unless ``allow`` gives it its own patterns. The
    default ``max_jobs`` is high on purpose: a worker awarded more jobs than it has slots
    declines, and a decline excludes it from that job for good (see the trust tests' module
    docstring), which in a 4-node mesh can leave a job with nobody to run it.
    ``newcomer_checks`` is 0 (the newcomer lottery off, PROTOCOL.md §8.9) by default: these
    tests pick which stranger wins by its price (a cheater bidding 0 is awarded first), and
    with the rule on every node here is a newcomer, drawn by lottery instead.
    The caller closes the mesh (``mesh.close()``).
    """
    allow = dict(allow or {})
    args: dict[int, list[str]] = {}
    for i in range(n):
        patterns = allow.get(i, [ALLOW_OURS[1]])
        args[i] = [a for p in patterns for a in ("--allow-image", p)]
        args[i] += list((node_args or {}).get(i, ()))
    mesh = Mesh(
        base,
        n,
        extra_args=["--max-jobs", str(max_jobs), "--newcomer-checks", str(newcomer_checks)],
        node_env=node_env,
        node_args=args,
    )
    mesh.start()
    try:
        mesh.wait_all_listed(discovery_timeout)
    except BaseException:
        mesh.close()
        raise
    return mesh


# -- jobs ---------------------------------------------------------------------------------------
def wc_text(i: int) -> str:
    """A text of its own for job ``i``: 17 + 7·i words (so job i's count has its own digits)."""
    n = 17 + 7 * i
    words = [WORDS[(i * 5 + j * 3) % len(WORDS)] for j in range(n)]
    lines = [" ".join(words[k : k + 9]) for k in range(0, n, 9)]
    return "\n".join(lines) + "\n"


def wc_truth(text: str) -> bytes:
    """What ``wc -w < text > /out/count.txt`` writes in busybox: the count and a newline."""
    return f"{len(text.split())}\n".encode()


@dataclass
class JobCase:
    """A job file written for a test and the truth its output must equal (None: unknown)."""

    name: str
    path: Path
    truth: dict[str, bytes] | None = None


def wc_job(folder: Path, i: int, **changes: Any) -> JobCase:
    """Word count of its own text ``i``: exact validation, redundancy 2 unless changed."""
    d = folder / f"wc{i:03d}"
    d.mkdir(parents=True, exist_ok=True)
    text = wc_text(i)
    (d / "text.txt").write_text(text)
    path = write_job(
        d,
        **{
            "name": f"wc-{i}",
            "command": ["sh", "-c", "wc -w < /in/text.txt > /out/count.txt"],
            "inputs": {"text.txt": "text.txt"},
            "redundancy": 2,
            "timeout_s": 60,
            "deadline_s": 400,
            "max_price": 10,
            "budget": 100,
            **changes,
        },
    )
    return JobCase(f"wc-{i}", path, {"count.txt": wc_truth(text)})


def script_job(folder: Path, name: str, script: str, **changes: Any) -> JobCase:
    """A busybox job that runs ``script`` (given as the input ``run.sh``); no truth known."""
    d = folder / name
    d.mkdir(parents=True, exist_ok=True)
    (d / "run.sh").write_text(script)
    doc = job_doc(
        name=name,
        image=BUSYBOX,
        command=["sh", "/in/run.sh"],
        inputs={"run.sh": "run.sh"},
        timeout_s=60,
        deadline_s=400,
        max_price=10,
        budget=100,
    )
    doc.update(changes)
    return JobCase(name, write_job(d, doc=doc))


def py_sum_job(folder: Path, i: int, **changes: Any) -> JobCase:
    """Python image: the sum of squares below a number of its own (input ``n.txt``)."""
    d = folder / f"py{i:03d}"
    d.mkdir(parents=True, exist_ok=True)
    n = 1000 + 37 * i
    (d / "n.txt").write_text(f"{n}\n")
    (d / "run.py").write_text(
        "n = int(open('/in/n.txt').read())\n"
        "open('/out/sum.txt', 'w').write(f'{sum(k * k for k in range(n))}\\n')\n"
    )
    path = write_job(
        d,
        **{
            "name": f"py-sum-{i}",
            "image": PYTHON,
            "command": ["python3", "/in/run.py"],
            "inputs": {"n.txt": "n.txt", "run.py": "run.py"},
            "timeout_s": 60,
            "deadline_s": 400,
            "max_price": 10,
            "budget": 100,
            **changes,
        },
    )
    truth = f"{sum(k * k for k in range(n))}\n".encode()
    return JobCase(f"py-sum-{i}", path, {"sum.txt": truth})


# -- submitting and following ---------------------------------------------------------------------
@dataclass
class Submitted:
    node: MeshNode
    job_id: str
    case: JobCase
    submitted_at: float = field(default_factory=time.monotonic)
    doc: dict[str, Any] = field(default_factory=dict)
    outputs: dict[str, bytes] | None = None  # exported files, for a done job

    @property
    def state(self) -> str:
        return str(self.doc.get("state", ""))


def submit(node: MeshNode, case: JobCase, bid_window_s: int = 1) -> Submitted:
    """What ``p2pmesh offer JOB --bid-window N`` (no ``--wait``) does, over the control socket."""
    sub = request(
        node, "submit", {"job_file": str(case.path.absolute()), "bid_window_s": bid_window_s}
    )
    return Submitted(node, str(sub["job_id"]), case)


def wait_final(subs: Iterable[Submitted], timeout: float, mesh: Mesh | None = None) -> None:
    """Poll every job until it is final; fill in ``doc``. Raises AssertionError on timeout."""
    pending = list(subs)

    def step() -> bool:
        for s in list(pending):
            s.doc = job_state(s.node, s.job_id)
            if s.state in FINAL:
                pending.remove(s)
        return not pending

    def describe() -> str:
        lines = [f"{len(pending)} job(s) not final:"]
        for s in pending:
            hist = "; ".join(h["event"] for h in s.doc.get("history", [])[-6:])
            lines.append(f"  {s.case.name} on {s.node.name}: {s.state!r}: {hist}")
        if mesh is not None:
            lines.append(mesh.log_tails(6))
        return "\n".join(lines)

    wait_until(step, timeout, interval=0.5, message=describe)


def export(sub: Submitted, dest: Path) -> dict[str, bytes]:
    """Fetch a done job's outputs as ``p2pmesh offer --out`` writes them; {relative path: bytes}."""
    res = request(sub.node, "export", {"job_id": sub.job_id, "dest": str(dest.absolute())})
    files = dest / "outputs"
    sub.outputs = {str(p): (files / p).read_bytes() for p in res["files"]}
    return sub.outputs


def run_jobs(
    jobs: Sequence[tuple[MeshNode, JobCase]],
    out: Path,
    *,
    timeout: float,
    mesh: Mesh | None = None,
    bid_window_s: int = 1,
) -> list[Submitted]:
    """Submit all jobs at once, wait for every one to be final, export the done ones."""
    subs = [submit(node, case, bid_window_s) for node, case in jobs]
    wait_final(subs, timeout, mesh)
    for s in subs:
        if s.state == "done":
            export(s, out / s.job_id)
    return subs


def accepted_wrong(subs: Iterable[Submitted]) -> list[Submitted]:
    """Done jobs whose exported outputs differ from the truth computed by the test."""
    return [
        s
        for s in subs
        if s.state == "done" and s.case.truth is not None and s.outputs != s.case.truth
    ]


# -- reading the job document --------------------------------------------------------------------
def replicas(doc: Mapping[str, Any]) -> int:
    """Replicas awarded for a job (every worker that was given it, including replaced ones that
    had started: a declined award or an undelivered one did not run and is not counted)."""
    n = 0
    for w in doc.get("workers", []):
        why = w.get("lost_reason") or ""
        if why.startswith(("declined", "award not delivered")):
            continue
        n += 1
    return n


def reported_workers(doc: Mapping[str, Any]) -> list[str]:
    return [w["peer_id"] for w in doc.get("workers", []) if w["state"] == "reported"]


def history(doc: Mapping[str, Any]) -> list[str]:
    return [str(h["event"]) for h in doc.get("history", [])]


def auto_choice(doc: Mapping[str, Any]) -> str | None:
    """For an ``auto`` job: "alone", "spot check" or "pair" as the requester decided."""
    for e in history(doc):
        if e.startswith("auto redundancy:"):
            if "spot check" in e:
                return "spot check"
            if "runs alone" in e or "budget pays one" in e:
                return "alone"
            return "pair"
    return None


# -- reputation ----------------------------------------------------------------------------------
def reputation_table(node: MeshNode) -> dict[str, dict[str, Any]]:
    """``p2pmesh reputation --json`` on ``node``, by peer ID."""
    return {r["peer_id"]: r for r in node.cli_json("reputation")}


def reputation_of(node: MeshNode, peer_id: str) -> dict[str, Any]:
    """``p2pmesh reputation PEER --json`` on ``node``."""
    return dict(node.cli_json("reputation", peer_id))


def dump(obj: Any) -> str:
    return json.dumps(obj, indent=1, sort_keys=True, default=str)[:6000]


def add_worker(
    mesh: Mesh, *, allow: Sequence[str] = (ALLOW_OURS[1],), args: Sequence[str] = ()
) -> MeshNode:
    """Start one more node (bootstrapping from node0) with its own image patterns."""
    mesh.node_args[len(mesh.nodes)] = [
        *(a for p in allow for a in ("--allow-image", p)),
        *args,
    ]
    return mesh.add_node()


__all__ = [
    "FINAL",
    "JobCase",
    "Submitted",
    "accepted_wrong",
    "add_worker",
    "auto_choice",
    "dump",
    "export",
    "fault_env",
    "history",
    "py_sum_job",
    "replicas",
    "reported_workers",
    "reputation_of",
    "reputation_table",
    "run_jobs",
    "script_job",
    "start_mesh",
    "submit",
    "wait_final",
    "wc_job",
    "wc_text",
    "wc_truth",
]
