"""Deliberate misbehaviour is opt-in twice (daemon/settings.py ``read_fault``)."""

from __future__ import annotations

import pytest

from p2pmesh.daemon.settings import FAULTS, read_fault
from p2pmesh.errors import ConfigError


@pytest.mark.parametrize("fault", FAULTS)
def test_every_fault_needs_allow_faults(fault: str) -> None:
    assert read_fault({"P2PMESH_FAULT": fault, "P2PMESH_ALLOW_FAULTS": "1"}) == fault
    with pytest.raises(ConfigError, match="P2PMESH_ALLOW_FAULTS=1"):
        read_fault({"P2PMESH_FAULT": fault})


def test_withhold_outputs_is_a_fault_and_unknown_ones_are_refused() -> None:
    assert "withhold-outputs" in FAULTS
    with pytest.raises(ConfigError, match="must be one of"):
        read_fault({"P2PMESH_FAULT": "withhold", "P2PMESH_ALLOW_FAULTS": "1"})
    assert read_fault({}) is None


def test_benchmark_executor_needs_allow_faults_and_a_known_name() -> None:
    from p2pmesh.daemon.settings import read_bench_executor

    env = {"P2PMESH_BENCH_EXECUTOR": "instant"}
    with pytest.raises(ConfigError, match="P2PMESH_ALLOW_FAULTS=1"):
        read_bench_executor(env)
    assert read_bench_executor({**env, "P2PMESH_ALLOW_FAULTS": "1"}) == "instant"
    with pytest.raises(ConfigError, match="must be one of"):
        read_bench_executor({"P2PMESH_BENCH_EXECUTOR": "docker", "P2PMESH_ALLOW_FAULTS": "1"})
    assert read_bench_executor({}) is None


def test_instant_executor_writes_the_same_output_everywhere(tmp_path) -> None:
    from p2pmesh.adapters.docker.executor import ContainerSpec
    from p2pmesh.adapters.instant import OUTPUT, OUTPUT_NAME, InstantExecutor

    spec = ContainerSpec(
        name="p2pmesh-test-instant",
        image="p2pmesh/busybox:1",
        command=("true",),
        env={},
        cpus=0.1,
        memory_bytes=64 << 20,
        pids_limit=64,
        gpus=0,
        network=False,
        timeout_s=10.0,
        out_max_bytes=1 << 20,
        log_max_bytes=1 << 20,
        labels={},
    )
    outs = []
    for i in range(2):
        out, log = tmp_path / f"out{i}", tmp_path / f"log{i}.txt"
        res = InstantExecutor().run(spec, tmp_path, out, log)
        assert (res.status, res.exit_code, res.error) == ("exited", 0, "")
        assert res.log_bytes == len(log.read_bytes())
        outs.append(sorted(p.name for p in out.iterdir()))
        assert (out / OUTPUT_NAME).read_bytes() == OUTPUT
    assert outs[0] == outs[1] == [OUTPUT_NAME]


def test_collude_names_its_ring_and_needs_allow_faults() -> None:
    ok = {"P2PMESH_FAULT": "collude:ring-1", "P2PMESH_ALLOW_FAULTS": "1"}
    assert read_fault(ok) == "collude:ring-1"
    with pytest.raises(ConfigError, match="P2PMESH_ALLOW_FAULTS=1"):
        read_fault({"P2PMESH_FAULT": "collude:ring-1"})
    for bad in ("collude:", "collude:a/b", "collude:" + "x" * 65, "collude"):
        with pytest.raises(ConfigError):
            read_fault({"P2PMESH_FAULT": bad, "P2PMESH_ALLOW_FAULTS": "1"})


def test_a_ring_cheats_exactly_when_it_holds_a_strict_majority_it_knows_of(
    tmp_path, monkeypatch
) -> None:
    from p2pmesh.daemon.jobs import Ring

    monkeypatch.setenv("P2PMESH_RING_DIR", str(tmp_path))
    a, b = Ring("r"), Ring("r")
    a.holds("j1", "A", 2)
    assert not a.cheats("j1")  # one of two: the other replica may be honest
    a.holds("j2", "A", 2)
    b.holds("j2", "B", 2)
    assert a.cheats("j2") and b.cheats("j2")  # both replicas it can see are the ring's
    a.holds("j3", "A", "auto")
    assert a.cheats("j3")  # "auto": maybe alone, and alone is a majority
    a.holds("j4", "A", 3)
    b.holds("j4", "B", 3)
    assert a.cheats("j4")  # two of three
