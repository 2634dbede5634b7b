#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the whole test suite: unit, property, integration with real
# daemons as processes, and real containers. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
VENV=${P2PMESH_VENV:-.venv}
"$VENV/bin/ruff" check .
P2PMESH_STRICT_SKIPS=1 "$VENV/bin/python" -m pytest -q "$@"
