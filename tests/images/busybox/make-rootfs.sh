#!/usr/bin/env bash
# Builds a minimal root filesystem around Debian's static busybox into the
# folder given as $1 (the base of every ank-zenoh test image; no registry is
# needed). Usage: make-rootfs.sh DIR [BUSYBOX]
set -euo pipefail
root=${1:?usage: make-rootfs.sh DIR [BUSYBOX]}
busybox=${2:-/bin/busybox}
[ -x "$busybox" ] || { echo "make-rootfs: $busybox missing (apt-get install busybox-static)" >&2; exit 1; }
file "$busybox" 2>/dev/null | grep -q 'dynamically linked' && { echo "make-rootfs: $busybox is not static" >&2; exit 1; }
mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,etc,tmp,root,proc,sys,dev,run,var/www,home}
chmod 1777 "$root/tmp"
cp "$busybox" "$root/bin/busybox"
# One relative link per applet (`busybox --install` would link to the host path).
for applet in $("$root/bin/busybox" --list); do
  [ -e "$root/bin/$applet" ] || ln -s busybox "$root/bin/$applet"
done
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/home:/bin/false\n' >"$root/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"
printf 'ank-test busybox rootfs\n' >"$root/etc/issue"
