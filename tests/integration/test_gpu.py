"""GPU paths on a machine that has an NVIDIA GPU; skipped with the reason everywhere else.

The profile must list every GPU NVML reports, with sane fields, and a job that asks for one GPU
must see it inside the sandbox (the container gets it through a Docker device request). These
need an NVIDIA driver, and for the container test the NVIDIA container runtime as well.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from p2pmesh.adapters.hardware import probe_gpus

GPUS, NOTE = probe_gpus()
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not GPUS, reason=f"needs an NVIDIA GPU: {NOTE}"),
]


def test_profile_lists_every_gpu_with_sane_fields() -> None:
    for g in GPUS:
        assert g.name and g.memory_mb > 0 and g.driver
        major, _, minor = g.compute_capability.partition(".")
        assert major.isdigit() and minor.isdigit()


def test_a_job_asking_for_a_gpu_sees_it(tmp_path: Path) -> None:
    from p2pmesh.adapters.docker import ContainerSpec, DockerExecutor

    works, why = DockerExecutor.probe()
    if not works:
        pytest.skip(f"GPU present but no Docker engine: {why}")
    image = "nvidia/cuda:12.4.1-base-ubuntu22.04"
    executor = DockerExecutor()
    if not executor.image_present(image):
        pytest.skip(f"GPU present but the image {image} is not available offline")
    spec = ContainerSpec(
        name=f"p2pmesh-gpu-test-{uuid.uuid4().hex[:8]}",
        image=image,
        command=("sh", "-c", "nvidia-smi -L > /out/gpus.txt"),
        env={},
        cpus=1.0,
        memory_bytes=512 << 20,
        pids_limit=64,
        gpus=1,
        network=False,
        timeout_s=60,
        out_max_bytes=1 << 20,
        log_max_bytes=1 << 16,
        labels={"p2pmesh.test": "gpu"},
    )
    (tmp_path / "in").mkdir()
    outcome = executor.run(spec, tmp_path / "in", tmp_path / "out", tmp_path / "log.txt")
    assert outcome.status == "exited" and outcome.exit_code == 0, outcome
    assert "GPU 0" in (tmp_path / "out" / "gpus.txt").read_text()
