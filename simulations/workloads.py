"""Job templates and arrival processes.

Every template is a real job file document checked by ``core.jobspec.parse_job`` and turned
into the ``WireJob`` peers gossip, with fixed content references (``InputRef``) standing in for
input files: the simulator never moves real bytes, only their sizes. A template also carries
what the model needs and the job file cannot say: how long an honest run takes (log-normal
around ``run_s``) and how large the output is.

Arrivals are Poisson: exponential gaps with mean ``1 / rate``. Each job picks its requester
by weight (free riders ask more often than they work, see behaviours.py) and a template by
weight. A job's *intrinsic* run time is drawn once at submission, so every replica of a job
does the same amount of work and differences between replicas come from the workers.
``ScriptedJob``: an explicit job at an explicit time instead of an arrival (replay.py).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Any

from p2pmesh.core.jobspec import InputRef, WireJob, job_from_wire, job_to_wire, parse_job

# The daemon's default auction window (daemon/jobs.py DEFAULT_BID_WINDOW_S).
BID_WINDOW_S = 2


def digest_of(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Template:
    """One kind of job. ``doc`` is a job file (JSON object) before redundancy is filled in."""

    name: str
    doc: dict[str, Any]
    inputs: dict[str, int]  # input name -> size in bytes
    run_s: float  # median honest run time on a reference worker
    run_sigma: float  # log-normal spread of the intrinsic work per job
    output_bytes: int
    weight: float = 1.0
    numeric: bool = False  # outputs compared within a tolerance (replicas differ in bytes)


# Small scientific batch jobs (DESIGN.md §2's example workloads), short enough that a
# 100,000-job run fits in simulated hours.
TEMPLATES: tuple[Template, ...] = (
    Template(
        name="montecarlo",
        doc={
            "name": "montecarlo-pi",
            "image": "p2pmesh/python:3",
            "command": ["python3", "/in/mc.py", "--samples", "10000000"],
            "inputs": {"mc.py": "mc.py"},
            "resources": {"cpus": 1, "ram_gb": 0.5},
            "timeout_s": 300,
            "deadline_s": 1200,
            "max_price": 10,
        },
        inputs={"mc.py": 4_000},
        run_s=40.0,
        run_sigma=0.5,
        output_bytes=2_000,
        weight=3.0,
    ),
    Template(
        name="surrogate",
        doc={
            "name": "surrogate-material",
            "image": "p2pmesh/numpy:1",
            "command": ["python3", "/in/fit.py"],
            "inputs": {"fit.py": "fit.py", "data.npy": "data.npy"},
            "resources": {"cpus": 2, "ram_gb": 2},
            "timeout_s": 600,
            "deadline_s": 1800,
            "max_price": 10,
        },
        inputs={"fit.py": 6_000, "data.npy": 8_000_000},
        run_s=90.0,
        run_sigma=0.4,
        output_bytes=400_000,
        weight=1.0,
    ),
    Template(
        name="weather-ensemble",
        doc={
            "name": "weather-member",
            "image": "p2pmesh/numpy:1",
            "command": ["python3", "/in/member.py"],
            "inputs": {"member.py": "member.py", "init.nc": "init.nc"},
            "resources": {"cpus": 2, "ram_gb": 1},
            "timeout_s": 600,
            "deadline_s": 1800,
            "max_price": 10,
            "validation": {"mode": "numeric", "rel_tol": 1e-6, "abs_tol": 1e-9},
        },
        inputs={"member.py": 5_000, "init.nc": 2_000_000},
        run_s=60.0,
        run_sigma=0.4,
        output_bytes=1_000_000,
        weight=1.0,
        numeric=True,
    ),
)


@dataclass(slots=True)
class JobMeta:
    """What the model knows about one submitted job (the core never sees this)."""

    job_id: str
    template: Template
    requester: int
    submitted_at: float
    work_s: float  # intrinsic run time on a reference worker
    honest: str  # honest output digest (exact jobs) or the honest value class (numeric)
    final_state: str = ""
    finished_at: float = 0.0
    replicas: int = 0
    accepted_class: str = ""  # "honest", "wrong" or "" when nothing was accepted
    # Every worker awarded this job so far, as its owner would hear of it: a ring of colluders
    # shares its members' awards out of band (behaviours.Colluder).
    holders: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class ScriptedJob:
    """One job of an explicit script (``Plan.script``, built by replay.py): instead of a Poisson
    arrival, peer ``requester`` submits ``job`` at ``at`` seconds after the warm-up. ``template``
    carries what the model needs and the job file cannot say (run time, output size)."""

    at: float
    requester: int
    template: Template
    job: WireJob


@dataclass(frozen=True, slots=True)
class WorkloadConfig:
    """How jobs are built. ``redundancy``: an int (fixed k) or "auto"."""

    redundancy: int | str = 2
    target_error: float | None = None  # for "auto": the job's validation.target_error
    budget: int = 60  # enough for 2k+1 replicas at max_price for k <= 2
    templates: tuple[Template, ...] = TEMPLATES


def build_jobs(cfg: WorkloadConfig) -> list[tuple[Template, WireJob]]:
    """Parse every template into its wire job once; jobs of one template share the WireJob."""
    out = []
    for t in cfg.templates:
        doc = {"schema_version": 1, **t.doc, "budget": cfg.budget, "redundancy": cfg.redundancy}
        if cfg.target_error is not None:
            rule = doc.get("validation", {"mode": "exact"})
            doc["validation"] = {**rule, "target_error": cfg.target_error}
        spec = parse_job(doc)
        refs = {
            name: InputRef(digest_of(f"{t.name}/{name}"), size, "file")
            for name, size in t.inputs.items()
        }
        out.append((t, job_from_wire(job_to_wire(spec, refs))))
    return out


def intrinsic_work(t: Template, rng: Any) -> float:
    return t.run_s * math.exp(rng.gauss(0.0, t.run_sigma))


def arrival_rate(slots: int, util: float, k: float, templates: tuple[Template, ...]) -> float:
    """Jobs per second that keep about ``util`` of ``slots`` worker slots busy with ``k``
    replicas per job (Little's law: busy slots = rate × k × mean run time)."""
    total_w = sum(t.weight for t in templates)
    mean_work = sum(t.weight * t.run_s * math.exp(t.run_sigma**2 / 2) for t in templates) / total_w
    return util * max(1, slots) / (k * mean_work)


def pick(rng: Any, weights: list[float]) -> int:
    """Index drawn with probability proportional to ``weights``."""
    total = sum(weights)
    r = rng.random() * total
    acc = 0.0
    for i, w in enumerate(weights):
        acc += w
        if r < acc:
            return i
    return len(weights) - 1
