"""Why is my job waiting (issue 16 item 2), with real daemons and a real engine.

A job no known peer fits says so, and why, from the requester's peer table, in ``p2pmesh job
ID`` and in ``offer --wait``; each worker logs why it did not bid and counts it by reason in
``p2pmesh status``. A job that runs shows ``running`` with its elapsed time and timeout, then
``done``.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest
from jobmesh import BUSYBOX, docker_missing, job_doc, job_state, request, write_job
from mesh import Mesh, p2pmesh_cmd, wait_until
from trustmesh import start_mesh

pytestmark = [pytest.mark.integration, pytest.mark.docker]

REQUESTER, STRICT, ANY_IMAGE = 0, 1, 2  # node1 allows our python image only, node2 any image


def flat(text: str) -> str:
    """Whitespace folded, so a line the console wrapped still matches."""
    return " ".join(text.split())


def _offer_wait(node: Any, job: Path, *extra: str) -> subprocess.Popen[str]:
    """``p2pmesh offer JOB --wait`` with its output piped (no terminal): one line per phase."""
    cmd = [*p2pmesh_cmd(), "offer", "--home", str(node.home), str(job), "--wait", *extra]
    return subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL
    )


def _finish(proc: subprocess.Popen[str], timeout: float) -> tuple[str, str]:
    try:
        return proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=10)
        raise AssertionError(f"`offer --wait` did not return: {err[-2000:]}") from None


def _job_id(node: Any, name: str) -> str | None:
    for j in request(node, "jobs"):
        if j["role"] == "requester" and j["name"] == name:
            return str(j["job_id"])
    return None


def _declines(log_text: str, job_id: str) -> list[dict[str, Any]]:
    out = []
    for line in log_text.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("msg") == "not bidding" and entry.get("job") == job_id:
            out.append(entry)
    return out


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Any:
    why = docker_missing((BUSYBOX,))
    if why:
        pytest.skip(why)
    m: Mesh = start_mesh(
        tmp_path_factory.mktemp("why-waiting"),
        3,
        node_args={REQUESTER: ["--no-work"]},
        allow={STRICT: ["p2pmesh/python:*"], ANY_IMAGE: ["*"]},
    )
    try:
        yield m
    finally:
        m.close()


def test_a_job_no_peer_fits_says_why_in_job_and_offer_wait(mesh: Mesh, tmp_path: Path) -> None:
    requester, strict, any_image = (mesh.nodes[i] for i in (REQUESTER, STRICT, ANY_IMAGE))
    # node1 does not allow the image; node2 allows any image (and holds this one) but has
    # fewer than 16 GPUs: so the job fits nobody, on a machine with a GPU too (a record holds
    # at most 16, and no machine here has that many).
    doc = job_doc(name="needs-gpu", image=BUSYBOX)
    doc["resources"] = {**doc["resources"], "gpus": 16, "gpu_memory_gb": 8}
    job = write_job(tmp_path, doc=doc)
    proc = _offer_wait(requester, job, "--bid-window", "1")
    try:
        jid = wait_until(lambda: _job_id(requester, "needs-gpu"), 30, message="no job submitted")
        reasons = f"1 lacks 16 GPUs, 1 does not allow image {BUSYBOX}"
        want = f"no bids yet: 2 peers known, 0 fit ({reasons})"

        def shown() -> str | None:
            res = requester.cli("job", jid)
            return res.stdout if want in flat(res.stdout) else None

        out = wait_until(shown, 30, message=lambda: requester.cli("job", jid).stdout)
        print(f"\n`p2pmesh job ID` while nobody fits:\n{out}")
        doc_json = job_state(requester, jid)
        assert doc_json["phase"]["name"] == "offered", doc_json["phase"]
        assert doc_json["waiting"] == {
            "known": 2,
            "fit": 0,
            "reasons": {"lacks 16 GPUs": 1, f"does not allow image {BUSYBOX}": 1},
            "text": want,
        }
        # Each worker says why it did not bid, in its log and in its status counters.
        wait_until(
            lambda: _declines(strict.log_text(), jid) and _declines(any_image.log_text(), jid),
            30,
            message=lambda: strict.log_tail(10) + any_image.log_tail(10),
        )
        [s] = _declines(strict.log_text(), jid)
        [a] = _declines(any_image.log_text(), jid)
        assert s["level"] == "info" and s["reason"] == f"image not allowed: {BUSYBOX}"
        have = len(any_image.status()["node"]["capabilities"]["gpus"])
        assert a["level"] == "info" and a["reason"] == f"needs 16 GPUs, have {have}"
        assert strict.status()["node"]["declines"].get("image not allowed", 0) >= 1
        assert any_image.status()["node"]["declines"].get("too few GPUs", 0) >= 1
        status_text = flat(any_image.cli("status").stdout)
        assert re.search(r"Not bidding \d+ too few GPUs", status_text), status_text
        request(requester, "cancel", {"job_id": jid})
        _, err = _finish(proc, 30)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            proc.wait(timeout=10)
    print(f"`offer --wait` (piped) said:\n{err}")
    assert proc.returncode == 1
    assert want in flat(err), err
    assert err.strip().splitlines()[-1].endswith("cancelled: cancelled by requester"), err


def test_a_job_that_runs_shows_running_with_elapsed_then_done(mesh: Mesh, tmp_path: Path) -> None:
    requester = mesh.nodes[REQUESTER]
    cmd = ["sh", "-c", "sleep 12; echo hi > /out/x"]
    job = write_job(tmp_path, name="sleeps", command=cmd, timeout_s=60)
    proc = _offer_wait(requester, job, "--bid-window", "1", "--out", str(tmp_path / "out"))
    try:
        jid = wait_until(lambda: _job_id(requester, "sleeps"), 30, message="no job submitted")
        pattern = re.compile(r"running (\d+) s of 60 s timeout")

        def running_a_while() -> str | None:
            text = flat(requester.cli("job", jid).stdout)
            found = pattern.search(text)
            return text if found and int(found.group(1)) >= 2 else None

        text = wait_until(running_a_while, 40, message=lambda: requester.cli("job", jid).stdout)
        print(f"\n`p2pmesh job ID` while it runs: {pattern.search(text).group(0)}")  # type: ignore[union-attr]
        phase = job_state(requester, jid)["phase"]
        assert phase["name"] == "running" and phase["timeout_s"] == 60
        assert phase["elapsed_s"] >= 2 and isinstance(phase["since"], int)
        out, err = _finish(proc, 90)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            proc.wait(timeout=10)
    print(f"`offer --wait` (piped) said:\n{err}")
    assert proc.returncode == 0, err
    phases = [line.split(" ", 1)[1] for line in err.strip().splitlines() if " " in line]
    assert any(p.startswith("running ") and "of 60 s timeout" in p for p in phases), phases
    assert phases[-1] == "done", phases
    assert f"job {jid}: done" in out
    assert job_state(requester, jid)["phase"]["name"] in ("done", "paying")
