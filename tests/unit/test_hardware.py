"""Hardware profile: this machine, a fake NVML, readiness lines, Docker probe failures."""

from __future__ import annotations

import gc
import json
import socket
import time
import warnings
from pathlib import Path
from typing import Any

import pynvml
import pytest

from p2pmesh.adapters import hardware
from p2pmesh.adapters.hardware import (
    GpuInfo,
    HardwareProfile,
    probe_docker,
    probe_gpus,
    profile,
    profile_to_dict,
    readiness,
)

GIB = 1024**3


class _Mem:
    def __init__(self, total: int) -> None:
        self.total = total
        self.used = 0
        self.free = total


class FakeNvml:
    """Just the part of pynvml's API the probe uses; failures are injected per call."""

    NVMLError = pynvml.NVMLError

    def __init__(
        self,
        devices: list[dict[str, Any]],
        *,
        driver: str | bytes = "550.54.15",
        init_error: Exception | None = None,
        fail_index: dict[int, Exception] | None = None,
    ) -> None:
        self.devices = devices
        self.driver = driver
        self.init_error = init_error
        self.fail_index = fail_index or {}
        self.inits = 0
        self.shutdowns = 0

    def nvmlInit(self) -> None:
        if self.init_error is not None:
            raise self.init_error
        self.inits += 1

    def nvmlShutdown(self) -> None:
        self.shutdowns += 1

    def nvmlSystemGetDriverVersion(self) -> str | bytes:
        return self.driver

    def nvmlDeviceGetCount(self) -> int:
        return len(self.devices)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        if index in self.fail_index:
            raise self.fail_index[index]
        return index

    def nvmlDeviceGetName(self, handle: int) -> str | bytes:
        return self.devices[handle]["name"]

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> _Mem:
        return _Mem(self.devices[handle]["total"])

    def nvmlDeviceGetCudaComputeCapability(self, handle: int) -> tuple[int, int]:
        return self.devices[handle]["cc"]

    def nvmlDeviceGetUUID(self, handle: int) -> str | bytes:
        return self.devices[handle]["uuid"]


TWO_GPUS = [
    {"name": "NVIDIA H100 80GB HBM3", "total": 80 * GIB, "cc": (9, 0), "uuid": "GPU-aaaa"},
    # Older pynvml releases hand back bytes; the probe must decode them.
    {"name": b"NVIDIA GeForce RTX 3090", "total": 24 * GIB, "cc": (8, 6), "uuid": b"GPU-bbbb"},
]


def _profile(**over: Any) -> HardwareProfile:
    base: dict[str, Any] = {
        "cpus_logical": 8,
        "cpus_physical": 4,
        "ram_mb": 16000,
        "ram_available_mb": 12000,
        "disk_free_mb": 50000,
        "load_1m": 0.5,
        "gpus": (),
        "executors": ("docker",),
        "executor_problems": (),
        "os": "Linux",
        "arch": "x86_64",
        "python": "3.11.7",
    }
    base.update(over)
    return HardwareProfile(**base)


# --- GPUs through a fake NVML -------------------------------------------------------------


def test_fake_nvml_two_gpus() -> None:
    nvml = FakeNvml(TWO_GPUS)
    gpus, note = probe_gpus(nvml=nvml)
    assert gpus == [
        GpuInfo(0, "NVIDIA H100 80GB HBM3", 81920, "550.54.15", "9.0", "GPU-aaaa"),
        GpuInfo(1, "NVIDIA GeForce RTX 3090", 24576, "550.54.15", "8.6", "GPU-bbbb"),
    ]
    assert note == "2 NVIDIA GPU(s), driver 550.54.15"
    assert (nvml.inits, nvml.shutdowns) == (1, 1)


def test_fake_nvml_bytes_driver_version() -> None:
    gpus, _ = probe_gpus(nvml=FakeNvml(TWO_GPUS[:1], driver=b"535.104.05"))
    assert gpus[0].driver == "535.104.05"


@pytest.mark.parametrize(
    ("error", "text"),
    [
        (pynvml.NVMLError_LibraryNotFound(), "NVML Shared Library Not Found"),
        (pynvml.NVMLError_DriverNotLoaded(), "Driver Not Loaded"),
        (OSError("libnvidia-ml.so.1: cannot open shared object file"), "cannot open shared"),
    ],
)
def test_fake_nvml_init_failures_mean_no_gpus(error: Exception, text: str) -> None:
    nvml = FakeNvml(TWO_GPUS, init_error=error)
    gpus, note = probe_gpus(nvml=nvml)
    assert gpus == []
    assert note.startswith("no NVIDIA GPU: NVML unavailable (")
    assert text in note
    # nvmlInit failed, so there is nothing to shut down.
    assert nvml.shutdowns == 0


def test_fake_nvml_error_after_init_still_shuts_down() -> None:
    nvml = FakeNvml(TWO_GPUS)

    def boom() -> int:
        raise pynvml.NVMLError_Unknown()

    nvml.nvmlDeviceGetCount = boom  # type: ignore[method-assign]
    gpus, note = probe_gpus(nvml=nvml)
    assert gpus == []
    assert note == "no NVIDIA GPU: NVML error (Unknown Error)"
    assert nvml.shutdowns == 1


def test_fake_nvml_one_lost_gpu_does_not_hide_the_other() -> None:
    nvml = FakeNvml(TWO_GPUS, fail_index={0: pynvml.NVMLError_GpuIsLost()})
    gpus, note = probe_gpus(nvml=nvml)
    assert [g.index for g in gpus] == [1]
    assert note == "1 NVIDIA GPU(s), driver 550.54.15; GPU 0 skipped (GPU is lost)"
    assert nvml.shutdowns == 1


def test_fake_nvml_zero_devices() -> None:
    gpus, note = probe_gpus(nvml=FakeNvml([]))
    assert gpus == []
    assert note == "no NVIDIA GPU: driver 550.54.15 reports none"


def test_shutdown_failure_is_swallowed() -> None:
    nvml = FakeNvml(TWO_GPUS)

    def bad_shutdown() -> None:
        raise pynvml.NVMLError_Uninitialized()

    nvml.nvmlShutdown = bad_shutdown  # type: ignore[method-assign]
    gpus, _ = probe_gpus(nvml=nvml)
    assert len(gpus) == 2


def test_real_pynvml_on_this_machine_never_raises() -> None:
    # No NVIDIA driver on the dev machines and CI; on a GPU box this lists its GPUs.
    gpus, note = probe_gpus()
    assert isinstance(gpus, list)
    assert note
    if not gpus:
        assert note.startswith("no NVIDIA GPU")


def test_profile_carries_fake_gpus(tmp_path: Path) -> None:
    p = profile(tmp_path, check_docker=False, nvml=FakeNvml(TWO_GPUS))
    assert [g.name for g in p.gpus] == ["NVIDIA H100 80GB HBM3", "NVIDIA GeForce RTX 3090"]
    assert p.gpu_note.startswith("2 NVIDIA GPU(s)")
    d = profile_to_dict(p)
    assert d["gpus"][1] == {
        "index": 1,
        "name": "NVIDIA GeForce RTX 3090",
        "memory_mb": 24576,
        "driver": "550.54.15",
        "compute_capability": "8.6",
        "uuid": "GPU-bbbb",
    }


# --- this machine -------------------------------------------------------------------------


def test_profile_of_this_machine(tmp_path: Path) -> None:
    p = profile(tmp_path)
    assert p.cpus_logical >= 1
    assert 1 <= p.cpus_physical <= p.cpus_logical
    assert p.ram_mb > 0
    assert 0 < p.ram_available_mb <= p.ram_mb
    assert p.disk_free_mb > 0
    assert p.load_1m >= 0.0
    # The Docker engine runs on the dev machines and in CI (.ci/run starts it).
    assert p.executors == ("docker",), p.executor_problems
    assert p.executor_problems == ()
    assert p.os and p.arch and p.python.startswith("3.")
    assert readiness(p, work_enabled=True) == []


def test_profile_of_home_that_does_not_exist_yet(tmp_path: Path) -> None:
    p = profile(tmp_path / "not" / "yet" / "made", check_docker=False)
    assert p.disk_free_mb > 0
    assert p.executors == ()
    assert p.executor_problems == ("Docker engine not checked: check_docker=False",)


def test_profile_to_dict_is_json(tmp_path: Path) -> None:
    p = profile(tmp_path, check_docker=False, nvml=FakeNvml(TWO_GPUS))
    d = profile_to_dict(p)
    assert json.loads(json.dumps(d)) == d
    assert set(d) == {
        "cpus_logical",
        "cpus_physical",
        "ram_mb",
        "ram_available_mb",
        "disk_free_mb",
        "load_1m",
        "gpus",
        "gpu_note",
        "executors",
        "executor_problems",
        "os",
        "arch",
        "python",
    }


# --- Docker probe -------------------------------------------------------------------------


def test_probe_docker_reaches_the_local_engine() -> None:
    assert probe_docker() == (True, "Docker engine reachable")


def test_probe_docker_closed_socket_fails_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent")
    started = time.monotonic()
    ok, note = probe_docker(timeout_s=1.0)
    assert time.monotonic() - started < 2.0
    assert ok is False
    assert note.startswith("Docker engine not reachable: ")
    assert "\n" not in note


def test_probe_docker_stale_socket_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A socket file left behind by a dead dockerd: connect is refused.
    path = tmp_path / "docker.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(str(path))
    monkeypatch.setenv("DOCKER_HOST", f"unix://{path}")
    ok, note = probe_docker(timeout_s=1.0)
    assert ok is False
    assert str(path) in note


def test_probe_docker_failure_leaks_no_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        probe_docker(timeout_s=1.0)
        gc.collect()
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)]


def test_profile_without_engine_lists_no_executor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent")
    p = profile(tmp_path)
    assert p.executors == ()
    assert len(p.executor_problems) == 1
    (line,) = readiness(p, work_enabled=True)
    assert line.startswith("no executor: Docker engine not reachable (")
    assert line.endswith("); install docker.io and start dockerd")


# --- readiness ----------------------------------------------------------------------------


def test_readiness_ready() -> None:
    assert readiness(_profile(), work_enabled=True) == []


def test_readiness_no_executor_message() -> None:
    p = _profile(
        executors=(),
        executor_problems=("Docker engine not reachable: connection refused",),
    )
    assert readiness(p, work_enabled=True) == [
        "no executor: Docker engine not reachable (connection refused); "
        "install docker.io and start dockerd"
    ]


def test_readiness_no_executor_without_reason() -> None:
    (line,) = readiness(_profile(executors=()), work_enabled=True)
    assert line == "no executor: none found; install docker.io and start dockerd"


def test_readiness_low_disk() -> None:
    p = _profile(disk_free_mb=hardware.MIN_DISK_FREE_MB - 1)
    (line,) = readiness(p, work_enabled=True)
    assert line.startswith("low disk: 1023 MiB free")


def test_readiness_work_disabled_is_always_ready() -> None:
    p = _profile(
        executors=(), executor_problems=("Docker engine not reachable: x",), disk_free_mb=0
    )
    assert readiness(p, work_enabled=False) == []
    assert len(readiness(p, work_enabled=True)) == 2


def test_no_gpu_is_not_a_readiness_problem() -> None:
    p = _profile(gpus=(), gpu_note="no NVIDIA GPU: NVML unavailable (Driver Not Loaded)")
    assert readiness(p, work_enabled=True) == []
