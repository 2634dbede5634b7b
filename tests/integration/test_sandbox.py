"""The Docker sandbox against a real engine, with the local p2pmesh/busybox:1 image.

Each test runs one hostile or ordinary job and checks both the outcome and that the container is
gone afterwards. Every job runs on both /out paths (the tmpfs one, which needs mount rights, and
the watchdog one), which must give the same outcome. The whole module takes about a minute on a
warm engine.

With ``P2PMESH_FRESH_MACHINE=1`` (a container that shares only the Docker socket, where nothing
may be mounted) the tmpfs path is skipped as needing host privileges; everywhere else it runs.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import pytest

from p2pmesh.adapters.docker import ContainerOutcome, ContainerSpec, DockerExecutor
from p2pmesh.adapters.docker.executor import _create_args
from p2pmesh.bootstrap.images import ensure_images
from p2pmesh.errors import ExecutorError

MiB = 1 << 20
IMAGE = "p2pmesh/busybox:1"
TEST_LABEL = "p2pmesh.test=sandbox"
FRESH_MACHINE = os.environ.get("P2PMESH_FRESH_MACHINE") == "1"
PLAIN_ONLY = "not allowed (outputs are plain files and folders)"


def make_spec(command: list[str], **overrides: Any) -> ContainerSpec:
    fields: dict[str, Any] = {
        "name": f"p2pmesh-sbx-test-{uuid.uuid4().hex[:10]}",
        "image": IMAGE,
        "command": tuple(command),
        "env": {"GREETING": "hello"},
        "cpus": 1.0,
        "memory_bytes": 64 * MiB,
        "pids_limit": 64,
        "gpus": 0,
        "network": False,
        "timeout_s": 20.0,
        "out_max_bytes": 1 * MiB,
        "log_max_bytes": 64 * 1024,
        "labels": {"p2pmesh.test": "sandbox"},
    }
    fields.update(overrides)
    return ContainerSpec(**fields)


@dataclass
class Ran:
    outcome: ContainerOutcome
    log: bytes
    in_dir: Path
    out_dir: Path
    wall_s: float


@pytest.fixture(scope="module")
def engine() -> Iterator[docker.DockerClient]:
    works, reason = DockerExecutor.probe()
    if not works:
        pytest.skip(reason)
    ensure_images(["busybox"])
    client = docker.from_env()
    yield client
    client.close()


@pytest.fixture(params=["tmpfs", "watchdog"])
def out_cap(request: pytest.FixtureRequest) -> str:
    if request.param == "tmpfs" and FRESH_MACHINE:
        pytest.skip("needs host privileges: the tmpfs /out path mounts a tmpfs")
    return str(request.param)


@pytest.fixture
def run_job(
    engine: docker.DockerClient, tmp_path: Path, out_cap: Any
) -> Iterator[Callable[..., Ran]]:
    names: list[str] = []
    default = DockerExecutor(engine, out_cap=out_cap)

    def run(
        command: list[str],
        *,
        executor: DockerExecutor | None = None,
        should_stop: Callable[[], bool] | None = None,
        **overrides: Any,
    ) -> Ran:
        spec = make_spec(command, **overrides)
        names.append(spec.name)
        job = tmp_path / spec.name
        in_dir = job / "in"
        in_dir.mkdir(parents=True)
        (in_dir / "hello.txt").write_text("hi from the host\n")
        started = time.monotonic()
        outcome = (executor or default).run(
            spec, in_dir, job / "out", job / "log", should_stop=should_stop
        )
        wall = time.monotonic() - started
        assert engine.containers.list(all=True, filters={"name": spec.name}) == []
        # Only the job's own folders remain: no staging tmpfs, nothing else.
        assert sorted(p.name for p in job.iterdir()) == ["in", "log", "out"]
        return Ran(outcome, (job / "log").read_bytes(), in_dir, job / "out", wall)

    yield run
    leftovers = engine.containers.list(all=True, filters={"label": TEST_LABEL})
    assert [c.name for c in leftovers if c.name in names] == []
    assert host_mounts_under(tmp_path) == []


def host_mounts_under(root: Path) -> list[str]:
    # Other test runs may share this machine, so look only below our own folder.
    with open("/proc/self/mounts", encoding="utf-8") as mounts:
        return [line.split()[1] for line in mounts if line.split()[1].startswith(str(root))]


@pytest.mark.docker
def test_normal_job_writes_out_and_exits_zero(run_job: Callable[..., Ran]) -> None:
    ran = run_job(["sh", "-c", "cat /in/hello.txt > /out/x; echo $GREETING; id -u; pwd"])
    assert ran.outcome.status == "exited"
    assert ran.outcome.exit_code == 0
    assert (ran.out_dir / "x").read_text() == "hi from the host\n"
    assert ran.log == b"hello\n65534\n/tmp\n"
    assert ran.outcome.log_bytes == len(ran.log) and not ran.outcome.log_truncated


@pytest.mark.docker
def test_no_network_only_loopback(run_job: Callable[..., Ran]) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.setblocking(False)
        port = listener.getsockname()[1]
        ran = run_job(
            [
                "sh",
                "-c",
                f"ls /sys/class/net; echo routes:; ip route; "
                f"nc -w 2 127.0.0.1 {port} </dev/null && echo CONNECTED || echo REFUSED",
            ]
        )
        with pytest.raises(BlockingIOError):
            listener.accept()  # the job's 127.0.0.1 is its own: nothing reached the host
    assert ran.log.splitlines()[:2] == [b"lo", b"routes:"]
    assert b"REFUSED" in ran.log and b"CONNECTED" not in ran.log
    assert b"default" not in ran.log  # no route anywhere


@pytest.mark.docker
def test_fork_bomb_is_held_by_pids_limit(run_job: Callable[..., Ran]) -> None:
    ran = run_job(["sh", "-c", "b(){ b|b& }; b; sleep 30"], pids_limit=32, timeout_s=3)
    assert ran.outcome.status == "timeout"
    assert b"can't fork" in ran.log
    assert ran.wall_s < 10


@pytest.mark.docker
def test_memory_bomb_is_oom_killed(run_job: Callable[..., Ran]) -> None:
    # busybox tail buffers a "line" that never ends, so it grows until the limit kills it.
    ran = run_job(["tail", "/dev/zero"], memory_bytes=16 * MiB)
    assert ran.outcome.status == "oom"
    assert ran.outcome.exit_code == 137


@pytest.mark.docker
def test_only_out_and_tmp_are_writable(run_job: Callable[..., Ran]) -> None:
    script = (
        "for p in /x /in/x /etc/x /bin/x; do touch $p 2>/dev/null && echo WROTE $p; done; "
        "echo t > /tmp/t && echo tmp-ok; echo o > /out/o && echo out-ok"
    )
    ran = run_job(["sh", "-c", script])
    assert ran.log == b"tmp-ok\nout-ok\n"
    assert sorted(p.name for p in ran.in_dir.iterdir()) == ["hello.txt"]
    assert (ran.out_dir / "o").read_text() == "o\n"


@pytest.mark.docker
def test_timeout_kills_the_job(run_job: Callable[..., Ran]) -> None:
    ran = run_job(["sleep", "100"], timeout_s=2)
    assert ran.outcome.status == "timeout"
    assert 2 <= ran.outcome.run_s < 4
    assert ran.wall_s < 6


@pytest.mark.docker
def test_huge_log_is_truncated_and_drained(run_job: Callable[..., Ran]) -> None:
    ran = run_job(["sh", "-c", "yes 0123456789abcdef | head -c 20000000; echo done"])
    assert ran.outcome.status == "exited" and ran.outcome.exit_code == 0
    assert ran.outcome.log_truncated
    assert len(ran.log) == ran.outcome.log_bytes == 64 * 1024


@pytest.mark.docker
@pytest.mark.parametrize(
    "command",
    [
        "dd if=/dev/zero of=/out/big bs=64k count=64",  # 4 MiB against a 1 MiB cap
        "truncate -s 10G /out/sparse",  # no blocks, but its apparent size counts
        "dd if=/dev/zero of=/out/a bs=1k count=600; dd if=/dev/zero of=/out/b bs=1k count=600",
    ],
    ids=["dense", "sparse", "two-files"],
)
def test_huge_output_is_refused(run_job: Callable[..., Ran], command: str) -> None:
    ran = run_job(["sh", "-c", command])
    assert ran.outcome.status == "out_too_large"
    assert list(ran.out_dir.iterdir()) == []


@pytest.mark.docker
def test_output_exactly_at_cap_is_kept(run_job: Callable[..., Ran]) -> None:
    ran = run_job(["sh", "-c", "mkdir /out/d; dd if=/dev/zero of=/out/d/f bs=1k count=1024"])
    assert ran.outcome.status == "exited", ran.log
    assert (ran.out_dir / "d" / "f").stat().st_size == 1 * MiB


@pytest.mark.docker
@pytest.mark.parametrize(
    ("command", "error"),
    [
        # The first refused entry in byte order of its path is named, whatever the listing order.
        (
            "echo x > /out/f; ln -s /etc/passwd /out/l; mkfifo /out/p",
            f"/out/l: symbolic link {PLAIN_ONLY}",
        ),
        ("mkdir -p /out/a/b; mkfifo /out/a/b/q; ln -s x /out/z", f"/out/a/b/q: FIFO {PLAIN_ONLY}"),
        ("echo x > /out/f; ln /out/f /out/g", f"/out/f: hard link {PLAIN_ONLY}"),
        ("cd /out && seq 10001 | xargs touch", "/out holds more than 10000 entries"),
    ],
    ids=["symlink", "fifo", "hard-link", "too-many-entries"],
)
def test_output_that_is_not_plain_data_is_refused(
    run_job: Callable[..., Ran], command: str, error: str
) -> None:
    ran = run_job(["sh", "-c", command])
    assert (ran.outcome.status, ran.outcome.error) == ("out_refused", error)
    assert ran.outcome.exit_code == 0
    assert list(ran.out_dir.iterdir()) == []


@pytest.mark.docker
def test_exactly_the_most_entries_is_kept(run_job: Callable[..., Ran]) -> None:
    ran = run_job(["sh", "-c", "cd /out && seq 10000 | xargs touch"])
    assert ran.outcome.status == "exited", ran.outcome.error
    assert len(list(ran.out_dir.iterdir())) == 10_000


@pytest.mark.docker
def test_runaway_writer_is_stopped_at_the_cap(run_job: Callable[..., Ran]) -> None:
    ran = run_job(
        ["sh", "-c", "while true; do dd if=/dev/zero bs=64k count=16 2>/dev/null; done > /out/f"]
    )
    assert ran.outcome.status == "out_too_large"
    assert ran.wall_s < 5
    assert list(ran.out_dir.iterdir()) == []
    ok = run_job(["sh", "-c", "echo fine > /out/f"])
    assert ok.outcome.status == "exited"
    assert (ok.out_dir / "f").read_text() == "fine\n"
    assert ok.out_dir.stat().st_mode & 0o777 == 0o755  # writable only while the job ran


@pytest.mark.docker
def test_output_over_the_cap_then_idle_is_stopped(run_job: Callable[..., Ran]) -> None:
    # Past the cap but within the tmpfs slack: both paths stop it, neither waits for the timeout.
    ran = run_job(["sh", "-c", "dd if=/dev/zero of=/out/f bs=64k count=24; sleep 100"])
    assert ran.outcome.status == "out_too_large"
    assert ran.wall_s < 5


@pytest.mark.docker
def test_no_host_mount_while_the_job_runs(run_job: Callable[..., Ran], tmp_path: Path) -> None:
    seen: list[list[str]] = []

    def look() -> bool:
        seen.append(host_mounts_under(tmp_path))
        return len(seen) >= 3

    ran = run_job(["sh", "-c", "echo kept > /out/f; sleep 100"], should_stop=look)
    assert ran.outcome.status == "killed"
    assert seen == [[], [], []]  # detached from the host once the container ran
    assert (ran.out_dir / "f").read_text() == "kept\n"


@pytest.mark.docker
def test_should_stop_cancels(run_job: Callable[..., Ran]) -> None:
    deadline = time.monotonic() + 0.5
    ran = run_job(["sleep", "100"], should_stop=lambda: time.monotonic() > deadline)
    assert ran.outcome.status == "killed"
    assert ran.wall_s < 4


@pytest.mark.docker
@pytest.mark.parametrize("figures", ["auto", "engine"])
def test_resource_figures_are_reported(
    engine: docker.DockerClient, run_job: Callable[..., Ran], out_cap: Any, figures: Any
) -> None:
    executor = DockerExecutor(engine, out_cap=out_cap, figures=figures)
    ran = run_job(
        ["sh", "-c", "i=0; while [ $i -lt 400000 ]; do i=$((i+1)); done"], executor=executor
    )
    assert ran.outcome.status == "exited"
    assert ran.outcome.cpu_s is not None and ran.outcome.cpu_s > 0
    assert ran.outcome.max_memory_bytes is not None and ran.outcome.max_memory_bytes > 0


@pytest.mark.docker
def test_unknown_command_is_a_job_error(run_job: Callable[..., Ran]) -> None:
    ran = run_job(["no-such-command"])
    assert ran.outcome.status == "error"
    assert "no-such-command" in ran.outcome.error


@pytest.mark.docker
def test_missing_image_raises(engine: docker.DockerClient, tmp_path: Path) -> None:
    spec = make_spec(["true"], image="p2pmesh-sbx-test-missing:0")
    (tmp_path / "in").mkdir()
    with pytest.raises(ExecutorError, match="not present"):
        DockerExecutor(engine).run(spec, tmp_path / "in", tmp_path / "out", tmp_path / "log")


@pytest.mark.docker
def test_kill_and_remove_stale(engine: docker.DockerClient) -> None:
    executor = DockerExecutor(engine)
    marker = f"p2pmesh.test.stale={uuid.uuid4().hex[:8]}"
    key, value = marker.split("=")
    name = f"p2pmesh-sbx-test-{uuid.uuid4().hex[:10]}"
    engine.containers.run(
        IMAGE, ["sleep", "100"], name=name, labels={key: value}, detach=True, network_mode="none"
    )
    assert executor.kill(name) is True
    assert executor.kill(name) is False  # no longer running
    assert executor.kill("p2pmesh-sbx-test-absent") is False
    assert executor.remove_stale(marker) == 1
    assert engine.containers.list(all=True, filters={"name": name}) == []


def test_create_args_pin_the_sandbox(tmp_path: Path) -> None:
    spec = make_spec(["true"], cpus=1.5, gpus=0, network=False)
    args = _create_args(spec, tmp_path / "in", tmp_path / "stage")
    host = {k: args[k] for k in ("network_mode", "read_only", "cap_drop", "security_opt", "user")}
    assert host == {
        "network_mode": "none",
        "read_only": True,
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges"],
        "user": "65534:65534",
    }
    assert args["nano_cpus"] == 1_500_000_000
    assert args["mem_limit"] == args["memswap_limit"] == 64 * MiB
    assert args["pids_limit"] == 64
    assert args["device_requests"] is None
    assert args["labels"]["p2pmesh.job"] == spec.name
    mounts = {m["Target"]: (m["Source"], m["ReadOnly"]) for m in args["mounts"]}
    assert mounts == {"/in": (str(tmp_path / "in"), True), "/out": (str(tmp_path / "stage"), False)}
    assert args["tmpfs"] == {"/tmp": f"size={64 * MiB},mode=1777"}
    gpu = _create_args(make_spec(["true"], gpus=2), tmp_path, tmp_path)["device_requests"]
    assert [(d["Count"], d["Capabilities"]) for d in gpu] == [(2, [["gpu"]])]


@pytest.mark.parametrize(
    "bad",
    [
        {"name": "-bad"},
        {"cpus": 0},
        {"memory_bytes": 1024},
        {"pids_limit": 0},
        {"timeout_s": 0},
        {"user": "nobody"},
    ],
)
def test_spec_validation(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        make_spec(["true"], **bad)
