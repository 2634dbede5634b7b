"""Image transfer between two Docker engines on one machine (docs/BENCHMARKS.md, "Jobs: images").

    python benchmarks/bench_images.py --image p2pmesh/python:1 --repeat 3 --out images.json

Two engines: the machine's own (the requester's) and a second, empty one in a network namespace
of its own (tests/integration/engines.py), used by the worker. Two ways to move ``--image`` from
the first to the second, ``--repeat`` times each, the second engine emptied before every run
(``docker rmi`` and ``image prune``, so no layer is left):

baseline  ``docker save IMAGE | docker -H ENGINE2 load``, timed until ``load`` exits.
mesh      a 2-node mesh (node0 requests with the first engine, node1 works with the second,
          ``--no-pull``); a job naming the image is offered and the worker gets it over the
          mesh. Figures from the daemons' own log lines: the requester's export (``docker
          save`` into blobs, first run only: the blobs stay in its cache) and the worker's
          transfer (config and layers over the blob stream, verify, ``docker load``), bytes
          and seconds; and offer → job done as the user sees it.

Prints a table and writes every figure, with the machine and the date, as JSON to ``--out``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "integration"))

from engines import second_engine  # noqa: E402
from jobmesh import job_doc, request, wait_job, write_job  # noqa: E402
from trustmesh import start_mesh  # noqa: E402

MiB = 1 << 20


def _entries(text: str, msg: str) -> list[dict[str, Any]]:
    out = []
    for line in text.splitlines():
        try:
            e = json.loads(line)
        except ValueError:
            continue
        if e.get("msg") == msg:
            out.append(e)
    return out


def _empty(engine: Any, image: str) -> None:
    subprocess.run(["docker", "-H", engine.host, "rmi", "-f", image], capture_output=True)
    subprocess.run(["docker", "-H", engine.host, "image", "prune", "-af"], capture_output=True)


def _baseline(engine: Any, image: str) -> float:
    t0 = time.monotonic()
    save = subprocess.Popen(["docker", "save", image], stdout=subprocess.PIPE)
    subprocess.run(
        ["docker", "-H", engine.host, "load"], stdin=save.stdout, check=True, capture_output=True
    )
    assert save.wait() == 0
    return time.monotonic() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--image", default="p2pmesh/python:1")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    size = int(
        subprocess.run(
            ["docker", "image", "inspect", args.image, "--format", "{{.Size}}"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    )
    runs: dict[str, list[dict[str, Any]]] = {"baseline": [], "mesh": []}
    with tempfile.TemporaryDirectory(prefix="p2pm-bench-img-") as tmp, second_engine() as engine:
        base = Path(tmp)
        for _ in range(args.repeat):
            _empty(engine, args.image)
            runs["baseline"].append({"seconds": _baseline(engine, args.image)})
        _empty(engine, args.image)
        mesh = start_mesh(
            base / "mesh",
            2,
            node_args={0: ["--no-work"], 1: ["--no-pull"]},
            node_env={1: engine.env},
        )
        try:
            requester, worker = mesh.nodes
            for i in range(args.repeat):
                _empty(engine, args.image)
                job = write_job(
                    base / f"job{i}",
                    doc=job_doc(name=f"img{i}", image=args.image, command=["true"]),
                )
                t0 = time.monotonic()
                sub = request(requester, "submit", {"job_file": str(job), "bid_window_s": 1})
                doc = wait_job(requester, sub["job_id"], timeout=600, mesh=mesh)
                took = time.monotonic() - t0
                assert doc["state"] == "done", doc
                got = [
                    e
                    for e in _entries(worker.log_text(), "image fetched from the mesh")
                    if e.get("job") == sub["job_id"]
                ]
                exported = _entries(requester.log_text(), "image exported for the mesh")
                runs["mesh"].append(
                    {
                        "offer_to_done_s": took,
                        "transfer_s": got[0]["seconds"],
                        "bytes": got[0]["bytes"],
                        "layers": got[0]["layers_fetched"],
                        "export_s": exported[-1]["seconds"] if i == 0 and exported else None,
                    }
                )
        finally:
            mesh.close()
    base_s = statistics.median(r["seconds"] for r in runs["baseline"])
    mesh_s = statistics.median(r["transfer_s"] for r in runs["mesh"])
    nbytes = runs["mesh"][0]["bytes"]
    print(f"image {args.image}: {size / MiB:.1f} MiB in the engine, {nbytes / MiB:.1f} MiB sent")
    print(f"docker save | docker load    median {base_s:.2f} s  ({size / MiB / base_s:.0f} MiB/s)")
    print(
        f"mesh transfer (worker side)  median {mesh_s:.2f} s  ({nbytes / MiB / mesh_s:.0f} MiB/s)"
    )
    print(f"requester export (first run) {runs['mesh'][0]['export_s']} s")
    done_s = statistics.median(r["offer_to_done_s"] for r in runs["mesh"])
    print(f"offer -> done, medians       {done_s:.2f} s")
    if args.out:
        args.out.write_text(
            json.dumps(
                {
                    "image": args.image,
                    "image_bytes": size,
                    "runs": runs,
                    "machine": platform.platform(),
                    "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
