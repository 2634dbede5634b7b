"""``python -m p2pmesh.simulations SCENARIO [...]``: the same as ``p2pmesh sim``."""

from __future__ import annotations

import sys

from p2pmesh.simulations.cli import run_cli

if __name__ == "__main__":
    sys.exit(run_cli(sys.argv[1:]))
