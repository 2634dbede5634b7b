"""Shared test configuration.

``scripts/test.sh`` (the README's test command, and so CI) sets up everything the suite needs,
Docker engine and images included, then runs pytest with ``P2PMESH_STRICT_SKIPS=1``. There a
skip means a broken setup, not a missing optional part, so every skip fails the run except the
GPU tests' ("needs an NVIDIA GPU") on a machine without one. Run pytest directly to get the
plain skips back.

``P2PMESH_FRESH_MACHINE=1`` says the suite runs in a container that shares only the host's Docker
socket (scripts/fresh_machine.sh): there the tests that need host privileges (mounting the
tmpfs /out, network namespaces, a second Docker engine) skip with a reason that starts with
"needs host privileges", and that reason is accepted then, and only then.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

ALLOWED_SKIP = "needs an NVIDIA GPU"
HOST_PRIVILEGES_SKIP = "needs host privileges"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome: Any = yield
    report = outcome.get_result()
    if os.environ.get("P2PMESH_STRICT_SKIPS") != "1" or not report.skipped:
        return
    reason = str(report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr)
    if ALLOWED_SKIP in reason:
        return
    fresh = os.environ.get("P2PMESH_FRESH_MACHINE") == "1"
    if not (fresh and reason.removeprefix("Skipped: ").startswith(HOST_PRIVILEGES_SKIP)):
        report.outcome = "failed"
        report.longrepr = f"skipped under P2PMESH_STRICT_SKIPS (a setup problem?): {reason}"
