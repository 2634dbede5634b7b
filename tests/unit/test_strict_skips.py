"""The strict-skip rule of tests/conftest.py, run on a small suite of skips in a subprocess."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

CONFTEST = Path(__file__).resolve().parents[1] / "conftest.py"
SKIPS = """
import pytest

def test_gpu():
    pytest.skip("needs an NVIDIA GPU (none here)")

def test_host():
    pytest.skip("needs host privileges: the tmpfs /out path mounts a tmpfs")

def test_quoted():
    pytest.skip("the engine said: needs host privileges")

def test_other():
    pytest.skip("Docker engine not reachable")
"""


def outcomes(tmp_path: Path, **env: str) -> dict[str, str]:
    shutil.copy(CONFTEST, tmp_path / "conftest.py")
    (tmp_path / "test_skips.py").write_text(SKIPS)
    clean = {k: v for k, v in os.environ.items() if not k.startswith("P2PMESH_")}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**clean, "P2PMESH_STRICT_SKIPS": "1", **env},
        check=False,
    )
    found: dict[str, str] = {}
    for line in proc.stdout.splitlines():  # "test_skips.py::test_gpu SKIPPED (…) [ 25%]"
        test, _, rest = line.partition(" ")
        if "::test_" in test and rest:
            found[test.split("::test_")[1]] = rest.split()[0]
    return found


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, {"gpu": "SKIPPED", "host": "FAILED", "quoted": "FAILED", "other": "FAILED"}),
        (
            {"P2PMESH_FRESH_MACHINE": "1"},
            {"gpu": "SKIPPED", "host": "SKIPPED", "quoted": "FAILED", "other": "FAILED"},
        ),
    ],
    ids=["everywhere", "fresh-machine"],
)
def test_host_privilege_skips_pass_only_on_a_fresh_machine(
    tmp_path: Path, env: dict[str, str], expected: dict[str, str]
) -> None:
    assert outcomes(tmp_path, **env) == expected
