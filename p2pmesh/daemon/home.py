"""The node home: where the key, config, database, blobs and control socket live.

Resolution order: ``--home``, then ``$P2PMESH_HOME``, then ``~/.p2pmesh``. The key file holds the
32-byte Ed25519 seed; it must be readable by its owner only, because whoever reads it *is* this
node (its libp2p identity and the signer of its records, bids and ledger blocks).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import nacl.utils

from p2pmesh.errors import ConfigError

KEY_FILE = "node.key"
CONFIG_FILE = "config.toml"
DB_FILE = "state.db"
SOCKET_FILE = "control.sock"
NODE_JSON = "node.json"
_KEY_HEADER = b"p2pmesh-ed25519-seed-v1\n"


def resolve_home(flag: str | None) -> Path:
    if flag:
        return Path(flag).expanduser().absolute()
    env = os.environ.get("P2PMESH_HOME")
    if env:
        return Path(env).expanduser().absolute()
    return Path.home() / ".p2pmesh"


def ensure_home(home: Path) -> Path:
    try:
        home.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create node home {home}: {exc.strerror}") from exc
    return home


def load_or_create_key(home: Path) -> bytes:
    """Return the node's 32-byte seed, creating it (mode 0600) on first start."""
    path = home / KEY_FILE
    if not path.exists():
        seed = nacl.utils.random(32)
        # O_EXCL: two nodes started at once on one home must not both write a key.
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return load_or_create_key(home)
        with os.fdopen(fd, "wb") as f:
            f.write(_KEY_HEADER + seed.hex().encode() + b"\n")
        return seed
    return load_key(path)


def load_key(path: Path) -> bytes:
    try:
        st = path.stat()
    except OSError as exc:
        raise ConfigError(f"cannot read key file {path}: {exc.strerror}") from exc
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            f"key file {path} is accessible by other users (mode {stat.S_IMODE(st.st_mode):o})",
            hint=f"run: chmod 600 {path}",
        )
    data = path.read_bytes()
    if not data.startswith(_KEY_HEADER):
        raise ConfigError(f"key file {path} is corrupt (unknown format)")
    text = data[len(_KEY_HEADER) :].strip()
    try:
        seed = bytes.fromhex(text.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise ConfigError(f"key file {path} is corrupt (not hex)") from None
    if len(seed) != 32:
        raise ConfigError(f"key file {path} is corrupt (seed is {len(seed)} bytes, not 32)")
    return seed
