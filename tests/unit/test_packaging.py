"""`pip install .` ships every module: the explicit package list matches the source tree."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_package_on_disk_is_listed_in_pyproject() -> None:
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(cfg["packages"])
    mapping = cfg["package-dir"]
    on_disk = set()
    for name, folder in mapping.items():
        base = ROOT / folder
        for init in base.rglob("__init__.py"):
            rel = init.parent.relative_to(base).parts
            if "__pycache__" in rel:
                continue
            on_disk.add(".".join((name, *rel)))
    # A sub-folder of p2pmesh/ mapped elsewhere (p2pmesh.cli -> cli/) is not under p2pmesh/.
    assert on_disk == listed, (
        f"missing: {sorted(on_disk - listed)}, extra: {sorted(listed - on_disk)}"
    )
