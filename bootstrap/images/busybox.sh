#!/bin/sh
# Build the tiny test image p2pmesh/busybox:1 from the Debian package busybox-static.
#
# Usage: busybox.sh [TAG]      (default TAG: p2pmesh/busybox:1)
#
# The rootfs holds /bin/busybox, one symlink per applet, empty /in /out /tmp mount points and an
# /etc/passwd that knows "nobody" (jobs run as 65534:65534). It is tarred with numeric root
# ownership and fed to `docker import`, so no registry and no root-owned files on disk are needed.
set -eu

TAG="${1:-p2pmesh/busybox:1}"

if [ ! -x /bin/busybox ] || ! dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q "ok installed"; then
    echo "busybox.sh: installing busybox-static" >&2
    apt-get install -y --no-install-recommends busybox-static >&2 \
        || { apt-get update >&2 && apt-get install -y --no-install-recommends busybox-static >&2; }
fi

ROOTFS="$(mktemp -d "${TMPDIR:-/tmp}/p2pmesh-busybox-rootfs.XXXXXX")"
trap 'rm -rf "$ROOTFS"' EXIT INT TERM

mkdir -p "$ROOTFS/bin" "$ROOTFS/etc" "$ROOTFS/in" "$ROOTFS/out" "$ROOTFS/tmp"
cp /bin/busybox "$ROOTFS/bin/busybox"
chmod 0755 "$ROOTFS/bin/busybox"
for applet in $("$ROOTFS/bin/busybox" --list-full); do
    case "$applet" in
        linuxrc) continue ;;  # an init for initramfs use, not a command
    esac
    mkdir -p "$ROOTFS/$(dirname "$applet")"
    [ -e "$ROOTFS/$applet" ] || ln -s /bin/busybox "$ROOTFS/$applet"
done

cat > "$ROOTFS/etc/passwd" <<'PASSWD'
root:x:0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
PASSWD
cat > "$ROOTFS/etc/group" <<'GROUP'
root:x:0:
nogroup:x:65534:
GROUP
chmod 0755 "$ROOTFS/in" "$ROOTFS/out"
chmod 1777 "$ROOTFS/tmp"

tar -C "$ROOTFS" --numeric-owner --owner=0 --group=0 -cf - . | docker import \
    --change 'ENV PATH=/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV HOME=/tmp' \
    --change 'WORKDIR /tmp' \
    --change 'CMD ["/bin/sh"]' \
    --message "p2pmesh busybox image from busybox-static" \
    - "$TAG"
