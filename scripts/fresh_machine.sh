#!/usr/bin/env bash
# Fresh-machine check: the README's commands on a minimal Debian 12 that has never seen p2pmesh.
#
#   bash scripts/fresh_machine.sh [COMMAND]     (as root, on a host with a Docker engine)
#
# 1. Once, builds a pristine root file system (debootstrap minbase of bookworm with only python3,
#    python3-venv, python3-pip, git and CA certificates) and imports it into the local engine as
#    $BASE_TAG. Nothing else is ever committed into that image, so every check starts from the
#    same bare machine; the engine caches it between runs.
# 2. Starts a container of it that shares the host's Docker socket and /tmp (job folders must
#    have the same path for the engine), with --network host --pid host --cgroupns host and no
#    privileges: no mounts, no host cgroup files, as for anyone running the daemon in a
#    container.
# 3. Clones the commit under test (HEAD of this repository, through a git bundle) into it, runs
#    `bash scripts/setup.sh`, rebuilds the small busybox job image there (a fresh machine must
#    be able to build its images; the larger Python image is reused from the host), then runs
#    COMMAND, by default `bash scripts/demo.sh`, which must end with its ledger check.
# 4. Fails, printing the last lines of what went wrong, if any step fails; always removes its
#    container and files.
#
# Example, the whole suite on a fresh machine (tests that need host privileges skip):
#   bash scripts/fresh_machine.sh 'P2PMESH_FRESH_MACHINE=1 bash scripts/test.sh'
set -euo pipefail
cd "$(dirname "$0")/.."
BASE_TAG=p2pmesh-fresh/bookworm:minbase-1
SUITE=bookworm
INCLUDE=python3,python3-venv,python3-pip,git,ca-certificates
TIMEOUT_S=${P2PMESH_FRESH_TIMEOUT_S:-1200}
COMMAND=${1:-bash scripts/demo.sh}
BUSYBOX=p2pmesh/busybox:1
started=$SECONDS

say() { echo "fresh-machine: $*"; }
fail() { echo "fresh-machine: FAILED: $*" >&2; exit 1; }

commit=$(git rev-parse HEAD)
work=$(mktemp -d /tmp/p2pmesh-fresh.XXXXXX)
name=p2pmesh-fresh-$(basename "$work" | cut -d. -f2 | tr 'A-Z' 'a-z')
cleanup() {
  docker rm -f "$name" >/dev/null 2>&1 || true
  # P2PMESH_FRESH_LOG=FILE keeps the whole log of the check.
  [ -n "${P2PMESH_FRESH_LOG:-}" ] && [ -f "$work/check.log" ] && cp "$work/check.log" "$P2PMESH_FRESH_LOG"
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM  # so that the EXIT trap runs on Ctrl-C or kill too

mirror() {
  if [ -n "${P2PMESH_DEBIAN_MIRROR:-}" ]; then echo "$P2PMESH_DEBIAN_MIRROR"; return; fi
  # The same mirror the project's image recipes use (this machine's apt sources).
  "${P2PMESH_VENV:-.venv}/bin/python" -c \
    'from p2pmesh.bootstrap.images import debian_mirror; print(debian_mirror())'
}

if ! docker image inspect "$BASE_TAG" >/dev/null 2>&1; then
  command -v debootstrap >/dev/null || fail "debootstrap is missing here; run bash scripts/setup.sh"
  say "building $BASE_TAG once (debootstrap, about two minutes)"
  root="$work/root"
  if ! debootstrap --variant=minbase --include="$INCLUDE" "$SUITE" "$root" "$(mirror)" \
      >"$work/debootstrap.log" 2>&1; then
    tail -n 30 "$work/debootstrap.log" >&2
    fail "debootstrap failed"
  fi
  # Downloaded packages are not part of the machine.
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
  tar -C "$root" --numeric-owner -cf - . | docker import \
    --change 'ENV LANG=C.UTF-8' --change 'CMD ["/bin/bash"]' \
    --message "p2pmesh fresh-machine check: debootstrap --variant=minbase --include=$INCLUDE $SUITE" \
    - "$BASE_TAG" >/dev/null
  rm -rf "$root"
fi

git bundle create "$work/src.bundle" HEAD 2>/dev/null
# The machine's own network settings: a proxy, and the CA bundle where TLS is intercepted on
# the way out (on an ordinary network this is the same Debian bundle the image has).
net=()
for var in http_proxy https_proxy no_proxy HTTP_PROXY HTTPS_PROXY NO_PROXY; do
  [ -n "${!var:-}" ] && net+=(-e "$var=${!var}")
done
ca=/etc/ssl/certs/ca-certificates.crt
[ -f "$ca" ] && net+=(-v "$ca:$ca:ro")
docker run -d --name "$name" --network host --pid host --cgroupns host \
  -v /var/run/docker.sock:/var/run/docker.sock -v /tmp:/tmp "${net[@]}" \
  "$BASE_TAG" sleep infinity >/dev/null

busybox_before=$(docker image inspect -f '{{.Id}}' "$BUSYBOX" 2>/dev/null || true)
src="$work/p2pmesh"
script=$(cat <<EOF
set -euo pipefail
git -c advice.detachedHead=false clone -q "$work/src.bundle" "$src"
cd "$src"
git -c advice.detachedHead=false checkout -q "$commit"
t=\$SECONDS
echo "== bash scripts/setup.sh"
bash scripts/setup.sh
echo "== took: setup.sh \$((SECONDS - t)) s"; t=\$SECONDS
echo "== rebuilding $BUSYBOX on this machine"
.venv/bin/python -m p2pmesh.bootstrap.images --force busybox
echo "== $COMMAND"
$COMMAND
echo "== took: busybox image and $COMMAND \$((SECONDS - t)) s"
EOF
)
say "checking $commit in $name: setup.sh, busybox image, $COMMAND"
log="$work/check.log"
if ! timeout "$TIMEOUT_S" docker exec "$name" bash -c "$script" >"$log" 2>&1; then
  tail -n 40 "$log" >&2
  fail "see the lines above ($((SECONDS - started)) s)"
fi
busybox_after=$(docker image inspect -f '{{.Id}}' "$BUSYBOX" 2>/dev/null || true)
if [ -z "$busybox_after" ] || [ "$busybox_after" = "$busybox_before" ]; then
  tail -n 20 "$log" >&2
  fail "$BUSYBOX was not rebuilt on the fresh machine"
fi
if [ "$COMMAND" = "bash scripts/demo.sh" ] && ! grep -q 'verified .*balances sum to 0' "$log"; then
  tail -n 40 "$log" >&2
  fail "the demo did not end with its ledger check"
fi
grep -E '^setup: installing|^== took|verified |passed|failed' "$log" | sed 's/^/fresh-machine: /' || true
say "passed in $((SECONDS - started)) s"
