#!/usr/bin/env python3
"""Check GPU profiling on a machine with an NVIDIA GPU (there is none on the dev machines).

Usage: ``python scripts/gpu_check.py`` from the repository root, installed or not.

Prints the hardware profile as JSON on stdout. Exits 0 when at least one GPU was found and every
GPU found has sane fields; otherwise exits 1 with the reason on stderr.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

# Run from a bare checkout too (the GPU machine may not have the package installed).
_ROOT = Path(__file__).resolve().parent.parent
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

from p2pmesh.adapters.hardware import profile, profile_to_dict  # noqa: E402

_CC = re.compile(r"^\d+\.\d+$")


def problems_of(p: dict) -> list[str]:
    """Reasons the GPU part of a profile dict is not sane; empty means fine."""
    if not p["gpus"]:
        return [f"no GPU found: {p.get('gpu_note') or 'no reason given'}"]
    problems: list[str] = []
    for g in p["gpus"]:
        where = f"GPU {g.get('index')}"
        if not str(g.get("name", "")).strip():
            problems.append(f"{where}: empty name")
        if not isinstance(g.get("memory_mb"), int) or g["memory_mb"] <= 0:
            problems.append(f"{where}: memory_mb {g.get('memory_mb')!r} is not > 0")
        if not _CC.match(str(g.get("compute_capability", ""))):
            problems.append(
                f"{where}: compute capability {g.get('compute_capability')!r} is not like '8.0'"
            )
        if not str(g.get("driver", "")).strip():
            problems.append(f"{where}: empty driver version")
        if not str(g.get("uuid", "")).strip():
            problems.append(f"{where}: empty uuid")
    return problems


def main() -> int:
    # The GPU machine may have no Docker engine; that is not what this script checks.
    result = profile_to_dict(profile(Path(".")))
    print(json.dumps(result, indent=2))
    problems = problems_of(result)
    if problems:
        print("gpu_check: FAIL: " + "; ".join(problems), file=sys.stderr)
        return 1
    print(f"gpu_check: OK: {len(result['gpus'])} GPU(s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
