"""Build the project's local container images with ``docker import`` (DESIGN.md §7).

There is no registry to pull from, so each image is made from Debian packages by a shell recipe
next to this file, and tagged locally:

* ``busybox`` → ``p2pmesh/busybox:1``: busybox-static plus applet links; builds in seconds. Used
  by the sandbox tests and the demo's shell jobs.
* ``python`` → ``p2pmesh/python:1``: debootstrap minbase of bookworm with python3-minimal and
  python3-numpy, from the Debian mirror this machine's apt is configured with (read from
  ``/etc/apt/sources.list*`` at run time; ``$P2PMESH_DEBIAN_MIRROR`` overrides). About a minute.

An image that already exists is not rebuilt unless forced. Builds are serialised across
processes with a lock file, so parallel test runs do not import the same image twice.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import docker.errors

from p2pmesh.errors import ConfigError, ExecutorError

__all__ = ["IMAGES", "debian_mirror", "ensure_images", "image_exists", "image_tag"]

_HERE = Path(__file__).resolve().parent
DEBIAN_SUITE = "bookworm"
MIRROR_ENV = "P2PMESH_DEBIAN_MIRROR"
APT_SOURCES = (Path("/etc/apt/sources.list"), Path("/etc/apt/sources.list.d"))
# Long enough for debootstrap on a slow mirror, short enough that a hung download ends a CI job.
BUILD_TIMEOUT_S = 900.0
_OUTPUT_TAIL = 3000


@dataclass(frozen=True, slots=True)
class Recipe:
    tag: str
    script: str
    needs_mirror: bool


IMAGES: dict[str, Recipe] = {
    "busybox": Recipe("p2pmesh/busybox:1", "busybox.sh", needs_mirror=False),
    "python": Recipe("p2pmesh/python:1", "python.sh", needs_mirror=True),
}


def image_tag(name: str) -> str:
    """Map a recipe name (``busybox``) to its tag; any other reference is returned unchanged."""
    recipe = IMAGES.get(name)
    return recipe.tag if recipe else name


def image_exists(name: str) -> bool:
    """Tell whether the local engine has an image, by recipe name or by any image reference.

    Raises:
        ExecutorError: the Docker engine cannot be reached.
    """
    with _client() as client:
        return _exists(client, image_tag(name))


def ensure_images(names: list[str], *, force: bool = False) -> None:
    """Build each named image (``busybox``, ``python``) that is missing, or all of them if forced.

    Raises:
        ValueError: a name is not a known recipe.
        ConfigError: the python image is wanted and no Debian mirror can be found.
        ExecutorError: the engine cannot be reached or a recipe failed (its output is quoted).
    """
    unknown = [n for n in names if n not in IMAGES]
    if unknown:
        raise ValueError(f"unknown image(s) {unknown}; known: {sorted(IMAGES)}")
    with _client() as client:
        wanted = [n for n in dict.fromkeys(names) if force or not _exists(client, IMAGES[n].tag)]
        if not wanted:
            return
        with _build_lock():
            for name in wanted:
                recipe = IMAGES[name]
                # Another process may have built it while we waited for the lock.
                if force or not _exists(client, recipe.tag):
                    _build(client, recipe)


def debian_mirror(sources: tuple[Path, ...] = APT_SOURCES, suite: str = DEBIAN_SUITE) -> str:
    """Find the Debian archive URL apt uses for ``suite``, or ``$P2PMESH_DEBIAN_MIRROR``.

    Reads one-line ``.list`` files and deb822 ``.sources`` files; disabled files (other suffixes)
    and ``Enabled: no`` stanzas are ignored.

    Raises:
        ConfigError: no enabled ``deb`` source lists ``suite``.
    """
    override = os.environ.get(MIRROR_ENV, "").strip()
    if override:
        return override
    for path in _source_files(sources):
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        entries = _deb822_entries(text) if path.suffix == ".sources" else _one_line_entries(text)
        for uri, suites in entries:
            if suite in suites:
                return uri
    raise ConfigError(
        f"no apt source for Debian {suite} found in {', '.join(map(str, sources))}",
        hint=f"set {MIRROR_ENV} to a Debian mirror URL",
    )


def _source_files(sources: tuple[Path, ...]) -> Iterator[Path]:
    for src in sources:
        if src.is_dir():
            yield from sorted(p for p in src.iterdir() if p.suffix in (".list", ".sources"))
        elif src.is_file():
            yield src


def _one_line_entries(text: str) -> Iterator[tuple[str, list[str]]]:
    for raw in text.splitlines():
        words = raw.split("#", 1)[0].split()
        if not words or words[0] != "deb":
            continue
        words = words[1:]
        if words and words[0].startswith("["):  # [arch=amd64 signed-by=...] options
            while words and not words[0].endswith("]"):
                words = words[1:]
            words = words[1:]
        if len(words) >= 2:
            yield words[0], [words[1]]


def _deb822_entries(text: str) -> Iterator[tuple[str, list[str]]]:
    for stanza in text.split("\n\n"):
        fields: dict[str, str] = {}
        key = ""
        for line in stanza.splitlines():
            if line.startswith("#") or not line.strip():
                continue
            if line[0].isspace() and key:
                fields[key] += " " + line.strip()
            elif ":" in line:
                key, value = line.split(":", 1)
                key = key.strip().lower()
                fields[key] = value.strip()
        if "deb" not in fields.get("types", "").split():
            continue
        if fields.get("enabled", "yes").lower() == "no":
            continue
        suites = fields.get("suites", "").split()
        for uri in fields.get("uris", "").split():
            yield uri, suites


@contextlib.contextmanager
def _client() -> Iterator[docker.DockerClient]:
    try:
        client = docker.from_env()
        client.ping()
    except docker.errors.DockerException as exc:
        raise ExecutorError(f"Docker engine not reachable: {exc}") from exc
    try:
        yield client
    finally:
        client.close()


def _exists(client: docker.DockerClient, ref: str) -> bool:
    try:
        client.images.get(ref)
    except docker.errors.ImageNotFound:
        return False
    except docker.errors.DockerException as exc:
        raise ExecutorError(f"cannot inspect image {ref}: {exc}") from exc
    return True


def _image_id(client: docker.DockerClient, ref: str) -> str | None:
    try:
        return client.images.get(ref).id
    except docker.errors.DockerException:
        return None


@contextlib.contextmanager
def _build_lock() -> Iterator[None]:
    path = Path(tempfile.gettempdir()) / "p2pmesh-images.lock"
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    except OSError:
        # An unusable lock only risks a duplicate build, never a wrong image.
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _build(client: docker.DockerClient, recipe: Recipe) -> None:
    args = ["sh", str(_HERE / recipe.script), recipe.tag]
    if recipe.needs_mirror:
        args += [debian_mirror(), DEBIAN_SUITE]
    old_id = _image_id(client, recipe.tag)
    with tempfile.TemporaryFile() as output:
        try:
            proc = subprocess.run(
                args,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                timeout=BUILD_TIMEOUT_S,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise ExecutorError(f"building {recipe.tag} took over {BUILD_TIMEOUT_S:.0f} s") from exc
        if proc.returncode != 0:
            output.seek(0)
            tail = output.read().decode("utf-8", "replace")[-_OUTPUT_TAIL:]
            raise ExecutorError(
                f"building {recipe.tag} failed (exit {proc.returncode}):\n{tail}",
                hint=f"run: sh {args[1]} {' '.join(args[2:])}",
            )
    new_id = _image_id(client, recipe.tag)
    if new_id is None:
        raise ExecutorError(f"{recipe.script} finished but {recipe.tag} does not exist")
    if old_id and old_id != new_id:
        # A forced rebuild leaves the old image untagged; drop it unless a container uses it.
        with contextlib.suppress(docker.errors.DockerException):
            client.images.remove(old_id)
