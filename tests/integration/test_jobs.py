"""Jobs end to end: real ``p2pmesh up`` daemons as processes, real Docker containers.

What is checked, as a user sees it through the CLI: word count with redundancy 2 (output equal
to the host's own ``wc -w``, two distinct workers named in result.json), a job nobody may run
ending ``no-bids`` at its deadline with a clear reason, ``cancel`` stopping the containers, bad
job files (exit 2, one line per problem naming the field), ``offer --dry-run`` printing the
digest the daemon then uses, and each example in ``examples/`` producing its ``expected/``
outputs. Then failures: a worker SIGKILLed mid-job is replaced by a spare bidder, and a
requester restarted mid-job (SIGTERM, same home and port) still gets its result.

Two meshes, each a module fixture shared by the tests that use it, in file order: ``mesh3``
(3 nodes; node0 requests, node1 and node2 work) and ``mesh4`` (4 nodes for the failure tests:
node0 requests, three workers so a spare bid exists). Each test still passes when run alone.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from jobmesh import (
    ALLOW_OURS,
    containers,
    docker_engine,
    history,
    job_doc,
    job_state,
    last_job,
    node_of,
    offer,
    remove_leftovers,
    request,
    restart_on_same_port,
    short_id,
    wait_job,
    wc_words,
    workers,
    write_job,
)
from mesh import Mesh, MeshNode, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.docker]

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
WORD_COUNT = EXAMPLES / "word-count"
EXAMPLE_NAMES = sorted(p.parent.name for p in EXAMPLES.glob("*/job.json"))
DISCOVERY_TIMEOUT_S = 45.0
JOB_TIMEOUT_S = 120.0
EXAMPLE_TIMEOUT_S = 60.0  # each example takes a few seconds
GONE_TIMEOUT_S = 30.0  # a stopped container is removed by its daemon within this
DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")


# -- fixtures -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def engine() -> Iterator[Any]:
    yield from docker_engine()


def _mesh(base: Path, n: int, engine: Any) -> Iterator[Mesh]:
    mesh = Mesh(base, n, extra_args=ALLOW_OURS)
    try:
        mesh.start()
        mesh.wait_all_listed(DISCOVERY_TIMEOUT_S)
        yield mesh
    finally:
        mesh.close()
        # Last resort: the daemons remove their containers; anything left is reported here.
        left = remove_leftovers(engine, mesh.nodes)
        if left:
            print(f"removed containers left behind by the daemons: {left}")


@pytest.fixture(scope="module")
def mesh3(tmp_path_factory: pytest.TempPathFactory, engine: Any) -> Iterator[Mesh]:
    yield from _mesh(tmp_path_factory.mktemp("mesh3"), 3, engine)


@pytest.fixture(scope="module")
def mesh4(tmp_path_factory: pytest.TempPathFactory, engine: Any) -> Iterator[Mesh]:
    yield from _mesh(tmp_path_factory.mktemp("mesh4"), 4, engine)


# -- helpers ------------------------------------------------------------------------------------
def job_ids(node: MeshNode) -> set[str]:
    return {j["job_id"] for j in node.cli_json("jobs")}


def assert_containers_gone(engine: Any, job_id: str, mesh: Mesh) -> None:
    wait_until(
        lambda: not containers(engine, job=job_id),
        GONE_TIMEOUT_S,
        interval=0.5,
        message=lambda: (
            f"containers of job {job_id} still exist: "
            f"{[(c.name, c.status) for c in containers(engine, job=job_id)]}\n{mesh.log_tails(8)}"
        ),
    )


def assert_replicated(doc: dict[str, Any], mesh: Mesh, requester: MeshNode, k: int) -> list[str]:
    """k distinct mesh workers (not the requester) reported the accepted output; return them."""
    reported = workers(doc, "reported")
    assert len(reported) == k and len(set(reported)) == k, doc["workers"]
    assert requester.peer_id not in reported
    known = {n.peer_id for n in mesh.nodes if n.info}
    assert set(reported) <= known, (reported, known)
    for w in doc["workers"]:
        if w["state"] == "reported":
            res = w["result"]
            assert (res["status"], res["exit_code"]) == ("exited", 0), w
            assert res["output_digest"] == doc["output_digest"], w
    return reported


def copy_input(folder: Path) -> Path:
    """The word-count text, copied next to a job file a test writes."""
    folder.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copy(WORD_COUNT / "data" / "text.txt", folder / "text.txt"))


def sleepy_count_job(folder: Path, seconds: int, **changes: Any) -> tuple[Path, int]:
    """A job that sleeps, then counts words of an input; (job file, the count ``wc`` gives)."""
    text = copy_input(folder)
    path = write_job(
        folder,
        file_name=f"sleep{seconds}.json",
        **{
            "name": f"sleep-{seconds}-then-count",
            "command": ["sh", "-c", f"sleep {seconds}; wc -w < /in/text.txt > /out/count.txt"],
            "inputs": {"text.txt": "text.txt"},
            "redundancy": 2,
            **changes,
        },
    )
    return path, wc_words(text)


def read_count(folder: Path) -> int:
    return int((folder / "outputs" / "count.txt").read_text().strip())


# -- the main path ------------------------------------------------------------------------------
def test_word_count_with_redundancy_2(mesh3: Mesh, engine: Any, tmp_path: Path) -> None:
    requester = mesh3.nodes[0]
    out = tmp_path / "results"
    res = offer(requester, WORD_COUNT / "job.json", "--wait", "--out", str(out))
    assert res.rc == 0, res.describe() + "\n" + mesh3.log_tails()
    assert res.state == "done" and res.doc["redundancy"] == 2

    assert read_count(out) == wc_words(WORD_COUNT / "data" / "text.txt")
    result = json.loads((out / "result.json").read_text())
    assert result["job_id"] == res.job_id and result["state"] == "done"
    reported = assert_replicated(result, mesh3, requester, 2)
    assert set(reported) == {mesh3.nodes[1].peer_id, mesh3.nodes[2].peer_id}
    assert (out / "log.txt").exists()

    # The same job through the other read commands.
    assert res.job_id in job_ids(requester)
    assert requester.cli_json("job", res.job_id)["state"] == "done"
    logs = requester.cli("logs", res.job_id)
    assert logs.returncode == 0, logs.stderr
    for worker in (mesh3.nodes[1], mesh3.nodes[2]):
        mine = {j["job_id"]: j for j in worker.cli_json("jobs")}
        assert mine[res.job_id]["role"] == "worker"
        assert mine[res.job_id]["state"] == "reported"
    assert_containers_gone(engine, res.job_id, mesh3)


def test_dry_run_prints_the_digest_the_daemon_uses(mesh3: Mesh, tmp_path: Path) -> None:
    requester = mesh3.nodes[0]
    before = job_ids(requester)
    dry = [offer(requester, WORD_COUNT / "job.json", "--dry-run", json_out=False) for _ in (1, 2)]
    for d in dry:
        assert d.rc == 0, d.describe()
    doc = json.loads(dry[0].stdout)
    digest = doc["job_digest"]
    assert DIGEST_RE.fullmatch(digest), digest
    assert json.loads(dry[1].stdout)["job_digest"] == digest  # deterministic
    assert doc["job"]["image"] == "p2pmesh/busybox:1"
    assert job_ids(requester) == before  # a dry run sends nothing

    # Inputs are content-addressed: other bytes under the same name, another digest.
    folder = tmp_path / "changed"
    shutil.copytree(WORD_COUNT, folder)
    (folder / "data" / "text.txt").write_text("one two three\n")
    changed = offer(requester, folder / "job.json", "--dry-run", json_out=False)
    assert changed.rc == 0 and json.loads(changed.stdout)["job_digest"] != digest

    # Submitted for real (no --wait), the daemon names the same digest.
    sub = offer(requester, WORD_COUNT / "job.json", "--bid-window", "1")
    assert sub.rc == 0, sub.describe()
    assert sub.doc["job_digest"] == digest
    assert wait_job(requester, sub.job_id, mesh=mesh3)["state"] == "done"


BAD_FILES: dict[str, tuple[dict[str, Any], list[str]]] = {
    "missing-image": ({"image": None}, ["image"]),
    "negative-cpus": ({"resources": {"cpus": -1}}, ["resources.cpus"]),
    "timeout-not-a-number": ({"timeout_s": "ten"}, ["timeout_s"]),
    "redundancy-zero": ({"redundancy": 0}, ["redundancy"]),
    "deadline-before-timeout": ({"timeout_s": 100, "deadline_s": 50}, ["deadline_s"]),
    "missing-input": ({"inputs": {"text.txt": "nope.txt"}}, ["inputs.text.txt"]),
    "misspelt-field": ({"imagee": "p2pmesh/busybox:1"}, ["imagee"]),
    "three-at-once": (
        {"max_price": -5, "network": "internet", "env": {"1BAD": "x"}},
        ["max_price", "network", "env.1BAD"],
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_job_file_exits_2_naming_the_fields(case: str, mesh3: Mesh, tmp_path: Path) -> None:
    changes, fields = BAD_FILES[case]
    doc = job_doc()
    for key, value in changes.items():
        if value is None:
            del doc[key]
        elif key == "resources":
            doc[key] = {**doc[key], **value}
        else:
            doc[key] = value
    path = write_job(tmp_path, doc=doc)
    requester = mesh3.nodes[0]
    before = job_ids(requester)
    res = offer(requester, path, "--wait", json_out=False)
    assert res.rc == 2, res.describe()
    lines = res.stderr.strip().splitlines()
    assert len(lines) == len(fields), lines  # one line per problem, nothing else
    for field in fields:
        assert any(line.startswith(f"{field}:") for line in lines), (field, lines)
    assert res.stdout == ""
    assert job_ids(requester) == before  # nothing was sent


def test_unreadable_job_file_exits_2(mesh3: Mesh, tmp_path: Path) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text('{"schema_version": 1,, }')
    res = offer(mesh3.nodes[0], broken, json_out=False)
    assert res.rc == 2 and "line 1" in res.stderr, res.describe()
    res = offer(mesh3.nodes[0], tmp_path / "absent.json", json_out=False)
    assert res.rc == 2 and "absent.json" in res.stderr, res.describe()


@pytest.mark.parametrize(
    ("script", "error"),
    [
        (
            "echo x > /out/a; ln -s /etc/passwd /out/link; mkfifo /out/f",
            "/out/f: FIFO not allowed (outputs are plain files and folders)",
        ),
        ("cd /out && seq 10001 | xargs touch", "/out holds more than 10000 entries"),
    ],
    ids=["link-and-fifo", "too-many-entries"],
)
def test_refused_outputs_fail_the_job_with_the_reason(
    script: str, error: str, mesh3: Mesh, engine: Any, tmp_path: Path
) -> None:
    # Both workers refuse the same /out in the same words: that is the job's result, decided
    # by their agreement, not a lost replica to be run again elsewhere.
    path = write_job(tmp_path, command=["sh", "-c", script], redundancy=2)
    res = offer(mesh3.nodes[0], path, "--wait", "--out", str(tmp_path / "results"))
    assert res.rc == 1, res.describe() + "\n" + mesh3.log_tails()
    assert res.state == "failed", res.doc
    assert res.doc["error"].startswith("job ended out_refused (exit 0) on 2 agreeing"), res.doc
    assert res.doc["error"].endswith(f": {error}"), res.doc
    assert len(res.doc["workers"]) == 2, res.doc["workers"]
    for w in res.doc["workers"]:
        assert w["state"] == "reported", w
        assert (w["result"]["status"], w["result"]["error"]) == ("out_refused", error), w
    assert_containers_gone(engine, res.job_id, mesh3)


def test_image_nobody_allows_ends_no_bids_at_its_deadline(mesh3: Mesh, tmp_path: Path) -> None:
    deadline_s = 20
    # Pinned by digest: the requester need not hold it (an image it lacks is refused at offer).
    never = "otherorg/never-allowed@sha256:" + "0" * 64
    path = write_job(tmp_path, image=never, timeout_s=10, deadline_s=deadline_s)
    res = offer(mesh3.nodes[0], path, "--wait", "--bid-window", "1", timeout=deadline_s + 30)
    assert res.rc == 1, res.describe()
    assert res.state == "no-bids", res.doc
    assert "no peer bid before the deadline" in res.doc["error"]
    assert "--allow-image" in res.doc["error"]  # tells the user where to look
    assert res.doc["bids_received"] == 0 and res.doc["workers"] == []
    took = res.doc["finished_at"] - res.doc["created_at"]
    assert deadline_s - 1 <= took <= deadline_s + 5, res.doc["history"]  # at, not long after
    assert res.seconds <= deadline_s + 15
    # Without --json the user gets the reason on one line, and the same exit code.
    plain = mesh3.nodes[0].cli("job", res.job_id)
    assert plain.returncode == 0 and "no peer bid" in plain.stdout


def test_cancel_stops_the_containers(mesh3: Mesh, engine: Any, tmp_path: Path) -> None:
    requester = mesh3.nodes[0]
    path = write_job(
        tmp_path, file_name="long.json", command=["sleep", "200"], timeout_s=250, redundancy=2
    )
    sub = offer(requester, path, "--bid-window", "1")
    assert sub.rc == 0, sub.describe()
    job_id = sub.job_id

    def both_running() -> bool:
        running = [c for c in containers(engine, job=job_id) if c.status == "running"]
        return len(running) == 2

    wait_until(both_running, 60, interval=0.3, message=lambda: mesh3.log_tails(8))
    assert job_state(requester, job_id)["state"] in ("awarded", "running")

    res = requester.cli("cancel", job_id)
    assert res.returncode == 0, res.stderr
    assert job_id in res.stdout and "cancelled" in res.stdout, res.stdout
    assert_containers_gone(engine, job_id, mesh3)
    doc = job_state(requester, job_id)
    assert doc["state"] == "cancelled" and doc["error"] == "cancelled by requester"
    for worker in (mesh3.nodes[1], mesh3.nodes[2]):
        wait_until(
            lambda w=worker: job_state(w, job_id)["state"] == "cancelled",
            10,
            message=f"{worker.name} did not record the cancel",
        )
    # Cancelling a finished job changes nothing and says so.
    again = requester.cli("cancel", job_id)
    assert again.returncode == 0 and "cancelled" in again.stdout


# -- the examples -------------------------------------------------------------------------------
def _close(a: Any, b: Any, rel: float, abs_: float, where: str) -> None:
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for key in a:
            _close(a[key], b[key], rel, abs_, f"{where}.{key}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _close(x, y, rel, abs_, f"{where}[{i}]")
    elif isinstance(a, float) or isinstance(b, float):
        assert math.isclose(a, b, rel_tol=rel, abs_tol=abs_), (where, a, b)
    else:
        assert a == b, (where, a, b)


def assert_matches_expected(example: Path, outputs: Path) -> None:
    """Every file under ``expected/`` is in the outputs: byte for byte, or for the numeric
    validation's JSON files, number for number within the job's own tolerances."""
    spec = json.loads((example / "job.json").read_text())
    rule = spec.get("validation", {"mode": "exact"})
    expected_dir = example / "expected"
    expected = sorted(p for p in expected_dir.rglob("*") if p.is_file())
    assert expected, f"{example.name} documents no expected output"
    for want in expected:
        rel = want.relative_to(expected_dir)
        got = outputs / rel
        assert got.is_file(), f"{example.name}: no {rel} in outputs"
        numeric = rule.get("mode") == "numeric" and any(
            rel.match(g) for g in rule.get("files", ["**"])
        )
        if numeric and want.suffix == ".json":
            _close(
                json.loads(want.read_text()),
                json.loads(got.read_text()),
                float(rule.get("rel_tol", 0.0)),
                float(rule.get("abs_tol", 0.0)),
                f"{example.name}/{rel}",
            )
        else:
            assert got.read_bytes() == want.read_bytes(), f"{example.name}: {rel} differs"


@pytest.mark.parametrize("name", EXAMPLE_NAMES)
def test_example_runs_end_to_end(name: str, mesh3: Mesh, engine: Any, tmp_path: Path) -> None:
    example = EXAMPLES / name
    requester = mesh3.nodes[0]
    args = ("--wait", "--out", str(tmp_path), "--bid-window", "1")
    res = offer(requester, example / "job.json", *args, timeout=EXAMPLE_TIMEOUT_S)
    if res.rc is None:
        doc = last_job(requester)
        request(requester, "cancel", {"job_id": doc["job_id"]})
        pytest.fail(f"{name}: not done in {EXAMPLE_TIMEOUT_S} s\n{history(doc)}")
    assert res.rc == 0, res.describe() + "\n" + history(res.doc) + "\n" + mesh3.log_tails()
    assert res.state == "done"
    k = json.loads((example / "job.json").read_text()).get("redundancy", 2)
    assert_replicated(res.doc, mesh3, requester, k if isinstance(k, int) else 2)
    assert_matches_expected(example, tmp_path / "outputs")
    assert_containers_gone(engine, res.job_id, mesh3)


# -- failures -----------------------------------------------------------------------------------
def test_worker_killed_mid_job_is_replaced(mesh4: Mesh, engine: Any, tmp_path: Path) -> None:
    """SIGKILL one of two running workers: after the connection grace the requester gives its
    replica to the spare bidder, and the job completes with two results from live workers."""
    requester = mesh4.nodes[0]
    path, words = sleepy_count_job(tmp_path, 6)
    sub = offer(requester, path, "--bid-window", "2")
    assert sub.rc == 0, sub.describe()
    job_id = sub.job_id

    def two_running() -> list[str] | None:
        doc = job_state(requester, job_id)
        run = workers(doc, "running")
        live = [c for c in containers(engine, job=job_id) if c.status == "running"]
        return run if len(run) == 2 and len(live) == 2 else None

    first = wait_until(two_running, 60, interval=0.2, message=lambda: mesh4.log_tails(8))
    assert job_state(requester, job_id)["bids_received"] == 3  # a spare bid exists
    victim = node_of(mesh4, first[0])
    survivor = node_of(mesh4, first[1])
    victim.kill()

    doc = wait_job(requester, job_id, timeout=JOB_TIMEOUT_S, mesh=mesh4)
    assert doc["state"] == "done", doc
    reported = assert_replicated(doc, mesh4, requester, 2)
    assert victim.peer_id not in reported and survivor.peer_id in reported
    lost = {w["peer_id"]: w for w in doc["workers"] if w["state"] == "lost"}
    assert set(lost) == {victim.peer_id}
    # Its kernel closed the connection at once: the connection grace, not the silence rule.
    assert lost[victim.peer_id]["lost_reason"].startswith("connection closed"), lost
    exported = request(requester, "export", {"job_id": job_id, "dest": str(tmp_path / "out")})
    assert read_count(Path(exported["dest"])) == words

    # The killed worker's container outlived it; started again, the node removes it.
    assert containers(engine, job=job_id, node=short_id(victim)), "no container to clean up?"
    victim.start()
    mesh4.wait_all_listed(DISCOVERY_TIMEOUT_S)
    assert_containers_gone(engine, job_id, mesh4)
    assert job_state(requester, job_id)["state"] == "done"


def test_requester_restarted_mid_job_gets_its_result(
    mesh4: Mesh, engine: Any, tmp_path: Path
) -> None:
    requester = mesh4.nodes[0]
    path, words = sleepy_count_job(tmp_path, 10)
    sub = offer(requester, path, "--bid-window", "1")
    assert sub.rc == 0, sub.describe()
    job_id = sub.job_id
    wait_until(
        lambda: len(workers(job_state(requester, job_id), "running")) == 2,
        60,
        interval=0.2,
        message=lambda: mesh4.log_tails(8),
    )
    restart_on_same_port(requester)  # SIGTERM, exit 0 asserted
    assert job_state(requester, job_id)["state"] in ("running", "awarded")

    doc = wait_job(requester, job_id, timeout=JOB_TIMEOUT_S, mesh=mesh4)
    assert doc["state"] == "done", doc
    assert_replicated(doc, mesh4, requester, 2)
    assert not workers(doc, "lost"), doc["workers"]  # nobody was written off meanwhile
    exported = request(requester, "export", {"job_id": job_id, "dest": str(tmp_path / "out")})
    assert read_count(Path(exported["dest"])) == words
    assert json.loads((tmp_path / "out" / "result.json").read_text())["state"] == "done"
    assert_containers_gone(engine, job_id, mesh4)
