"""Tests for bootstrap/images/build.py that need no Docker engine: finding the Debian mirror."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from p2pmesh.bootstrap.images import IMAGES, debian_mirror, ensure_images, image_tag
from p2pmesh.bootstrap.images.build import MIRROR_ENV
from p2pmesh.errors import ConfigError

DEB822 = """\
Types: deb
# a comment inside the stanza
URIs: http://mirror.example/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://mirror.example/debian-security
Suites: bookworm-security
Components: main
"""


@pytest.fixture(autouse=True)
def no_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(MIRROR_ENV, raising=False)


def test_deb822_sources(tmp_path: Path) -> None:
    (tmp_path / "debian.sources").write_text(DEB822)
    assert debian_mirror((tmp_path,)) == "http://mirror.example/debian"


def test_one_line_list_with_options(tmp_path: Path) -> None:
    listing = tmp_path / "sources.list"
    listing.write_text(
        "# deb http://commented.example/debian bookworm main\n"
        "deb-src http://src.example/debian bookworm main\n"
        "deb [arch=amd64 signed-by=/k.gpg] http://one.example/debian bookworm main\n"
    )
    assert debian_mirror((listing,)) == "http://one.example/debian"


def test_disabled_files_and_stanzas_are_ignored(tmp_path: Path) -> None:
    (tmp_path / "a.sources.disabled-by-farm").write_text(DEB822)
    (tmp_path / "b.sources").write_text(DEB822.replace("Types: deb\n", "Types: deb\nEnabled: no\n"))
    with pytest.raises(ConfigError, match="bookworm"):
        debian_mirror((tmp_path,))


def test_environment_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(MIRROR_ENV, "http://override.example/debian")
    assert debian_mirror((tmp_path,)) == "http://override.example/debian"


def test_recipes_ship_executable() -> None:
    for recipe in IMAGES.values():
        script = Path(__file__).resolve().parents[2] / "bootstrap" / "images" / recipe.script
        assert script.stat().st_mode & stat.S_IXUSR, script
    assert image_tag("busybox") == "p2pmesh/busybox:1"
    assert image_tag("alpine:3") == "alpine:3"


def test_unknown_image_name() -> None:
    with pytest.raises(ValueError, match="unknown image"):
        ensure_images(["nope"])
