"""Live logs (issue 16 item 1), with real daemons, a real engine and the CLI as a user runs it.

A requester (that does not work itself) offers a ten-second busybox job that prints a line a
second; ``p2pmesh logs ID --follow`` runs on the requester, and another on the worker, each as a
process whose stdout is a pipe, read line by line with the time each line arrived. The first line
must reach the requester's follower at least 5 s before the job ends, both followers' output must
be the job's final log byte for byte, and a peer that is not the job's requester (a bare libp2p
host, ``logpeer.py``) must be refused, as must malformed requests, without harm to the worker.
"""

from __future__ import annotations

import base64
import itertools
import json
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from jobmesh import BUSYBOX, docker_missing, request, wait_job, write_job
from mesh import Mesh, p2pmesh_cmd, wait_until
from trustmesh import start_mesh

pytestmark = [pytest.mark.integration, pytest.mark.docker]

HERE = Path(__file__).parent
LOGPEER = HERE / "logpeer.py"
REQUESTER, WORKER = 0, 1
LINES = 10
# One line a second for ten seconds, then an output file.
LOOP = (
    f"i=1; while [ $i -le {LINES} ]; do echo line $i of {LINES}; i=$((i+1)); sleep 1; done; "
    "echo done > /out/x"
)
FINAL_LOG = "".join(f"line {i} of {LINES}\n" for i in range(1, LINES + 1))


@dataclass
class Follow:
    """One ``p2pmesh logs ID --follow`` process; a thread stamps each line as it arrives."""

    proc: subprocess.Popen[bytes]
    lines: list[tuple[float, bytes]] = field(default_factory=list)  # (wall clock, line)
    thread: threading.Thread | None = None

    @classmethod
    def start(cls, node: Any, job_id: str) -> Follow:
        cmd = [*p2pmesh_cmd(), "logs", "--home", str(node.home), job_id, "--follow"]
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL
        )
        f = cls(proc)
        f.thread = threading.Thread(target=f._read, daemon=True)
        f.thread.start()
        return f

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in iter(self.proc.stdout.readline, b""):
            self.lines.append((time.time(), line))

    def finish(self, timeout: float) -> tuple[int, bytes, str]:
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
            raise AssertionError(f"`logs --follow` did not end; so far {self.text!r}") from None
        assert self.thread is not None
        self.thread.join(10)
        assert self.proc.stderr is not None
        return rc, self.text, self.proc.stderr.read().decode(errors="replace")

    @property
    def text(self) -> bytes:
        return b"".join(line for _, line in self.lines)


@dataclass
class Run:
    job_id: str
    doc: dict[str, Any]
    requester: tuple[int, bytes, str]
    requester_lines: list[tuple[float, bytes]]
    worker: tuple[int, bytes, str]
    worker_live: str | None  # the worker's own `p2pmesh logs ID` while the job ran
    final: str  # `p2pmesh logs ID` on the requester once the job is done
    worker_final: str  # and on the worker
    resumed: dict[str, Any]  # a `log-tail` from the end of the first line, while it ran


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Any:
    why = docker_missing((BUSYBOX,))
    if why:
        pytest.skip(why)
    m: Mesh = start_mesh(
        tmp_path_factory.mktemp("live-logs"), 2, node_args={REQUESTER: ["--no-work"]}
    )
    try:
        yield m
    finally:
        m.close()


@pytest.fixture(scope="module")
def run(mesh: Mesh, tmp_path_factory: pytest.TempPathFactory) -> Run:
    requester, worker = mesh.nodes[REQUESTER], mesh.nodes[WORKER]
    job = write_job(
        tmp_path_factory.mktemp("live-logs-job"),
        name="ten-lines",
        command=["sh", "-c", LOOP],
        timeout_s=60,
    )
    sub = requester.cli("offer", str(job), "--bid-window", "1")
    assert sub.returncode == 0, sub.stderr
    job_id = sub.stdout.strip()
    follow = Follow.start(requester, job_id)
    # The worker's own follower starts once the job is there (it learns of it from the offer).
    wait_until(
        lambda: any(j["job_id"] == job_id for j in request(worker, "jobs")),
        30,
        message=lambda: worker.log_tail(15),
    )
    own = Follow.start(worker, job_id)
    live = None
    try:
        wait_until(lambda: own.lines or None, 40, message=lambda: f"{worker.log_tail(15)}")
        live = request(worker, "logs", {"job_id": job_id})["log"]
        # A follower that reconnects asks from the offset it reached: from the second line.
        wait_until(lambda: len(follow.lines) >= 3 or None, 30, message=lambda: follow.text)
        skip = len(b"line 1 of 10\n")
        resumed = request(requester, "log-tail", {"job_id": job_id, "offset": skip})
        doc = wait_job(requester, job_id, timeout=120, mesh=mesh)
        req_out = follow.finish(60)
        own_out = own.finish(60)
    finally:
        for f in (follow, own):
            if f.proc.poll() is None:
                f.proc.kill()
                f.proc.wait(timeout=10)
    final = requester.cli("logs", job_id)
    assert final.returncode == 0, final.stderr
    worker_final = worker.cli("logs", job_id)
    assert worker_final.returncode == 0, worker_final.stderr
    return Run(
        job_id,
        doc,
        req_out,
        list(follow.lines),
        own_out,
        live,
        final.stdout,
        worker_final.stdout,
        resumed,
    )


def test_live_logs_first_line_reaches_follow_5s_before_the_job_ends(run: Run) -> None:
    assert run.doc["state"] == "done", run.doc
    rc, _, err = run.requester
    assert rc == 0, err
    [result] = [w["result"] for w in run.doc["workers"] if w["result"]]
    # The worker signs when its container finished (unix seconds, cut down: at most 1 s early).
    ended_at = float(result["finished_at"])
    first_at, first = run.requester_lines[0]
    last_at, _ = run.requester_lines[-1]
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(run.requester_lines)]
    print(
        f"\nMEASURED first line {first!r} reached the follower {ended_at - first_at:.1f} s before"
        f" the job ended (run {result['run_s']:.1f} s); the last line {last_at - first_at:.1f} s"
        f" after it; gaps between lines {min(gaps):.2f}..{max(gaps):.2f} s (written 1 s apart)"
    )
    assert first == b"line 1 of 10\n"
    assert first_at <= ended_at - 5, (first_at, ended_at)
    # Lines came as written, not all at the end.
    assert last_at - first_at >= 5, run.requester_lines


def test_live_logs_follow_output_equals_final_log(run: Run) -> None:
    _, text, err = run.requester
    assert run.final == FINAL_LOG
    assert text.decode() == run.final, err
    # The worker's own `logs --follow` and `logs` (while it ran: a prefix of the log) work too.
    rc, own, own_err = run.worker
    assert rc == 0, own_err
    assert own.decode() == FINAL_LOG, own_err
    assert run.worker_live is not None and FINAL_LOG.startswith(run.worker_live)
    assert run.worker_live.startswith("line 1 of 10\n"), run.worker_live
    assert run.worker_final == FINAL_LOG
    r = run.resumed
    data = base64.b64decode(r["data"])
    assert r["offset"] == len(b"line 1 of 10\n") and r["next"] == r["offset"] + len(data)
    assert data.startswith(b"line 2 of 10\n") and FINAL_LOG.encode()[r["offset"] :].startswith(data)
    assert r["source"] == run.doc["workers"][0]["peer_id"] and not r["ended"], r


def test_live_logs_non_requester_is_refused(mesh: Mesh, run: Run) -> None:
    worker = mesh.nodes[WORKER]
    res = subprocess.run(
        [sys.executable, str(LOGPEER), "--connect", worker.addr, "--job", run.job_id],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    got = json.loads(res.stdout)
    print(f"\nanswers to a stranger: {json.dumps(got, indent=1)}")
    assert got["stranger"] == {"reply": {"ok": False, "error": "not the requester of this job"}}
    assert got["unknown_job"] == {"reply": {"ok": False, "error": "no such job here"}}
    for case in ("negative_offset", "huge_offset", "extra_field", "garbage"):
        reply = got[case]["reply"]
        assert reply["ok"] is False and reply["error"].startswith("bad request"), (case, reply)
    assert "closed" in got["oversize"], got["oversize"]
    # None of it harmed the worker.
    assert worker.alive and worker.status()["node"]["peer_id"] == worker.peer_id


def test_live_logs_offer_wait_follow_shows_the_log_as_it_runs(mesh: Mesh, tmp_path: Path) -> None:
    """``offer --wait --follow`` without a terminal: each log line on stderr (``log| …``) as
    it comes, among the phase lines, well before the job is done."""
    requester = mesh.nodes[REQUESTER]
    job = write_job(tmp_path, name="ten-lines-offer", command=["sh", "-c", LOOP], timeout_s=60)
    cmd = [*p2pmesh_cmd(), "offer", "--home", str(requester.home), str(job), "--wait"]
    proc = subprocess.Popen(
        [*cmd, "--follow", "--bid-window", "1", "--out", str(tmp_path / "out")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    seen: list[tuple[float, str]] = []

    def read() -> None:
        assert proc.stderr is not None
        for line in iter(proc.stderr.readline, b""):
            seen.append((time.monotonic(), line.decode(errors="replace").rstrip("\n")))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        rc = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    reader.join(10)
    assert proc.stdout is not None
    out = proc.stdout.read().decode()
    text = "\n".join(line for _, line in seen)
    print(f"\n`offer --wait --follow` (piped) said:\n{text}")
    assert rc == 0, text
    logged = [(t, line[len("log| ") :]) for t, line in seen if line.startswith("log| ")]
    assert [line for _, line in logged] == FINAL_LOG.splitlines(), text
    assert logged[-1][0] - logged[0][0] >= 5, logged  # line by line, not all at the end
    assert seen[-1][0] - logged[0][0] >= 5, seen  # the first line well before the end
    assert out.startswith("job ") and ": done" in out.splitlines()[0], out


# -- a worker of an older release ---------------------------------------------------------------
@pytest.fixture(scope="module")
def old_mesh(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A requester and a worker that serves no log stream, as a release before live logs
    (``P2PMESH_FAULT=no-live-logs``)."""
    why = docker_missing((BUSYBOX,))
    if why:
        pytest.skip(why)
    m: Mesh = start_mesh(
        tmp_path_factory.mktemp("live-logs-old"),
        2,
        node_args={REQUESTER: ["--no-work"]},
        node_env={WORKER: {"P2PMESH_ALLOW_FAULTS": "1", "P2PMESH_FAULT": "no-live-logs"}},
    )
    try:
        yield m
    finally:
        m.close()


def test_live_logs_older_worker_gives_a_clear_line_then_the_final_log(
    old_mesh: Mesh, tmp_path: Path
) -> None:
    requester = old_mesh.nodes[REQUESTER]
    three = "for i in 1 2 3; do echo line $i; sleep 1; done"
    job = write_job(tmp_path, name="three-lines", command=["sh", "-c", three], timeout_s=60)
    sub = requester.cli("offer", str(job), "--bid-window", "1")
    assert sub.returncode == 0, sub.stderr
    job_id = sub.stdout.strip()
    follow = Follow.start(requester, job_id)
    try:
        doc = wait_job(requester, job_id, timeout=120, mesh=old_mesh)
        rc, text, err = follow.finish(60)
    finally:
        if follow.proc.poll() is None:
            follow.proc.kill()
            follow.proc.wait(timeout=10)
    print(f"\n`logs --follow` against an older worker: stderr {err!r}")
    assert doc["state"] == "done", doc
    assert rc == 0, err
    assert text == b"line 1\nline 2\nline 3\n"
    assert "does not serve /p2pmesh/log/1.0.0 (a release without live logs)" in err, err
    said = [
        json.loads(line)
        for line in requester.log_text().splitlines()
        if "no live logs (an older release)" in line
    ]
    assert len(said) == 1 and said[0]["job"] == job_id and said[0]["level"] == "warning", said
    assert old_mesh.nodes[WORKER].alive
