#!/bin/sh
# Build p2pmesh/python:1: Debian bookworm minbase with python3-minimal and python3-numpy.
#
# Usage: python.sh TAG MIRROR [SUITE]
#   MIRROR  the Debian archive URL to debootstrap from. The Python driver
#           (python -m p2pmesh.bootstrap.images) reads it from this machine's apt sources,
#           so no host name is written into the project.
#   SUITE   default bookworm.
#
# Needs root (debootstrap chroots and creates device nodes). The rootfs lives in a temp dir that
# is removed on every exit path; any mount debootstrap left behind is detached first so the
# removal cannot reach the host's /proc or /dev.
set -eu

TAG="${1:?usage: python.sh TAG MIRROR [SUITE]}"
MIRROR="${2:?usage: python.sh TAG MIRROR [SUITE]}"
SUITE="${3:-bookworm}"

if [ "$(id -u)" != 0 ]; then
    echo "python.sh: must run as root (debootstrap)" >&2
    exit 1
fi
if ! command -v debootstrap >/dev/null 2>&1; then
    echo "python.sh: installing debootstrap" >&2
    apt-get install -y --no-install-recommends debootstrap >&2 \
        || { apt-get update >&2 && apt-get install -y --no-install-recommends debootstrap >&2; }
fi

ROOTFS="$(mktemp -d "${TMPDIR:-/tmp}/p2pmesh-python-rootfs.XXXXXX")"
cleanup() {
    # Deepest mounts first; lazy so a busy one cannot keep the tree pinned.
    grep -o " $ROOTFS/[^ ]*" /proc/mounts | sort -r | while read -r mnt; do
        umount -l "$mnt" || true
    done
    rm -rf --one-file-system "$ROOTFS"
}
trap cleanup EXIT INT TERM

debootstrap --variant=minbase --include=python3-minimal,python3-numpy \
    "$SUITE" "$ROOTFS" "$MIRROR" >&2

# Package caches and lists are dead weight in an image that never runs apt.
rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/*
mkdir -p "$ROOTFS/in" "$ROOTFS/out"
chmod 0755 "$ROOTFS/in" "$ROOTFS/out"
chmod 1777 "$ROOTFS/tmp"

# The engine provides /dev, /proc and /sys; their contents must not be baked in.
tar -C "$ROOTFS" --numeric-owner --one-file-system \
    --exclude=./dev/* --exclude=./proc/* --exclude=./sys/* -cf - . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV HOME=/tmp' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'ENV PYTHONDONTWRITEBYTECODE=1' \
    --change 'ENV PYTHONUNBUFFERED=1' \
    --change 'WORKDIR /tmp' \
    --change 'CMD ["python3"]' \
    --message "p2pmesh python image: debootstrap $SUITE minbase + python3-minimal, python3-numpy" \
    - "$TAG"
