#!/usr/bin/env bash
# Set up everything p2pmesh needs on a fresh Debian/Ubuntu machine (run as root):
# system packages, a running Docker engine, a virtual environment with p2pmesh, local images.
# Safe to run again: every step skips what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${P2PMESH_VENV:-.venv}
PY=${PYTHON:-python3}

# Each system package is wanted only when what it provides is missing; `why` says what for.
need=() why=()
want() { need+=("$1"); why+=("$2"); }
command -v dockerd >/dev/null || want docker.io "Docker engine and CLI for the job sandbox"
command -v busybox >/dev/null || want busybox-static "the p2pmesh/busybox image"
command -v debootstrap >/dev/null || want debootstrap "the p2pmesh/python image"
command -v ip >/dev/null || want iproute2 "the ip command"
command -v chromium >/dev/null || want chromium "headless browser for the status page test"
"$PY" -c 'import venv, ensurepip' 2>/dev/null || want python3-venv "the virtual environment"
# libp2p pins fastecdsa 2.3.2, which has no wheel for this Python and is compiled from source
# at pip install (C compiler, Python headers, GMP); its two other sdists are pure Python. An
# existing venv that already has it needs none of this.
if ! "$VENV/bin/python" -c 'import fastecdsa' 2>/dev/null; then
  command -v gcc >/dev/null || want gcc "C compiler for fastecdsa, which has no wheel"
  py_inc=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
  [ -f "$py_inc/Python.h" ] || want python3-dev "Python headers for fastecdsa"
  compgen -G "/usr/include/gmp.h" >/dev/null || compgen -G "/usr/include/*/gmp.h" >/dev/null \
    || want libgmp-dev "GMP for fastecdsa"
fi
if [ ${#need[@]} -gt 0 ]; then
  line=""
  for i in "${!need[@]}"; do line+="${line:+, }${need[$i]} (${why[$i]})"; done
  echo "setup: installing $line"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need[@]}" >/dev/null
fi

if ! docker info >/dev/null 2>&1; then
  echo "setup: starting the Docker engine"
  nohup dockerd >/var/log/p2pmesh-dockerd.log 2>&1 &
  for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
  docker info >/dev/null 2>&1 || { echo "setup: dockerd did not start; see /var/log/p2pmesh-dockerd.log" >&2; exit 1; }
fi

"$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "setup: Python 3.11+ needed" >&2; exit 1; }
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
# pip's own chatter goes to a log; it is shown only if the install fails.
pip_log=$(mktemp)
if ! { "$VENV/bin/python" -m pip install -q --upgrade pip && \
       "$VENV/bin/python" -m pip install -q -e ".[test]"; } >"$pip_log" 2>&1; then
  cat "$pip_log" >&2; rm -f "$pip_log"; echo "setup: pip install failed" >&2; exit 1
fi
rm -f "$pip_log"

"$VENV/bin/python" -m p2pmesh.bootstrap.images busybox python
echo "setup: ready ($("$VENV/bin/p2pmesh" --version))"
