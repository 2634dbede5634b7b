#!/bin/sh
# Build p2pmesh/jupyter:1: Debian bookworm minbase with Jupyter Notebook (Debian's
# jupyter-notebook package, notebook 6.4) and NumPy, for the example service job notebook.json.
#
# Usage (as root, from the repository root, after scripts/setup.sh):
#   sh examples/jupyter/build.sh [TAG [MIRROR [SUITE]]]
#   TAG     default p2pmesh/jupyter:1
#   MIRROR  the Debian archive URL to debootstrap from; by default read from this machine's apt
#           sources (as python -m p2pmesh.bootstrap.images does), so no host name is written here.
#   SUITE   default bookworm.
#
# Not part of scripts/setup.sh: it installs some 150 packages (a few minutes, about 400 MB),
# which the tests do not need. A worker that serves notebooks builds it once (or `docker load`s
# it from a machine that did) and allows it: p2pmesh up --allow-image 'p2pmesh/jupyter:*'.
set -eu

TAG="${1:-p2pmesh/jupyter:1}"
SUITE="${3:-bookworm}"
HERE="$(cd "$(dirname "$0")" && pwd)"
PY="${PYTHON:-$HERE/../../.venv/bin/python}"
[ -x "$PY" ] || PY=python3
MIRROR="${2:-$("$PY" -c 'from p2pmesh.bootstrap.images.build import debian_mirror; print(debian_mirror())')}"

if [ "$(id -u)" != 0 ]; then
    echo "build.sh: must run as root (debootstrap)" >&2
    exit 1
fi
command -v debootstrap >/dev/null 2>&1 || {
    echo "build.sh: installing debootstrap" >&2
    apt-get install -y --no-install-recommends debootstrap >&2 \
        || { apt-get update >&2 && apt-get install -y --no-install-recommends debootstrap >&2; }
}

ROOTFS="$(mktemp -d "${TMPDIR:-/tmp}/p2pmesh-jupyter-rootfs.XXXXXX")"
cleanup() {
    grep -o " $ROOTFS/[^ ]*" /proc/mounts | sort -r | while read -r mnt; do
        umount -l "$mnt" || true
    done
    rm -rf --one-file-system "$ROOTFS"
}
trap cleanup EXIT INT TERM

# debootstrap's own resolver cannot configure Jupyter's dependency tree (python3-zmq fails in
# its second stage); apt inside the new root can, from the same mirror.
debootstrap --variant=minbase --include=python3-minimal "$SUITE" "$ROOTFS" "$MIRROR" >&2
mount -t proc proc "$ROOTFS/proc"
cp /etc/resolv.conf "$ROOTFS/etc/resolv.conf" 2>/dev/null || true
chroot "$ROOTFS" apt-get update >&2
DEBIAN_FRONTEND=noninteractive chroot "$ROOTFS" apt-get install -y --no-install-recommends \
    jupyter-notebook python3-ipykernel python3-numpy >&2
chroot "$ROOTFS" apt-get clean
umount "$ROOTFS/proc"
: > "$ROOTFS/etc/resolv.conf"

rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/*
mkdir -p "$ROOTFS/in" "$ROOTFS/out"
chmod 0755 "$ROOTFS/in"
chmod 1777 "$ROOTFS/out" "$ROOTFS/tmp"

# The sandbox's root is read-only and its user unprivileged: everything Jupyter writes goes to
# /tmp (runtime, config, data) or /out (the notebooks, which come back as the job's outputs).
tar -C "$ROOTFS" --numeric-owner --one-file-system \
    --exclude=./dev/* --exclude=./proc/* --exclude=./sys/* -cf - . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV HOME=/tmp' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'ENV JUPYTER_RUNTIME_DIR=/tmp/jupyter/runtime' \
    --change 'ENV JUPYTER_DATA_DIR=/tmp/jupyter/data' \
    --change 'ENV JUPYTER_CONFIG_DIR=/tmp/jupyter/config' \
    --change 'ENV IPYTHONDIR=/tmp/ipython' \
    --change 'ENV PYTHONDONTWRITEBYTECODE=1' \
    --change 'WORKDIR /out' \
    --change 'CMD ["jupyter", "notebook", "--no-browser", "--ip=127.0.0.1", "--port=8888", "--notebook-dir=/out"]' \
    --message "p2pmesh jupyter image: debootstrap $SUITE minbase + jupyter-notebook, python3-numpy" \
    - "$TAG"
echo "built $TAG" >&2
