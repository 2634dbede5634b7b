#!/usr/bin/env bash
# Set up everything p2pmesh needs on a fresh Debian/Ubuntu machine (run as root):
# system packages, a running Docker engine, a virtual environment with p2pmesh, local images.
# Safe to run again: every step skips what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${P2PMESH_VENV:-.venv}
PY=${PYTHON:-python3}

need=()
command -v dockerd >/dev/null || need+=(docker.io)
command -v busybox >/dev/null || need+=(busybox-static)
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v ip >/dev/null || need+=(iproute2)
"$PY" -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)
if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing ${need[*]}"
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
