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
