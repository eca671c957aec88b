#!/usr/bin/env bash
# Installs the Debian packages ank-zenoh's runtimes and tests use, where they
# are missing and apt-get can run. Prints what it could not do; never fails.
set -u
want=()
command -v podman >/dev/null 2>&1 || want+=(podman)
command -v runc >/dev/null 2>&1 || want+=(runc)
[ -x /usr/libexec/podman/catatonit ] || command -v catatonit >/dev/null 2>&1 || want+=(catatonit)
command -v busybox >/dev/null 2>&1 || want+=(busybox-static)
command -v influxd >/dev/null 2>&1 || want+=(influxdb)
command -v supervisord >/dev/null 2>&1 || want+=(supervisor)
command -v ip >/dev/null 2>&1 || want+=(iproute2)
command -v openssl >/dev/null 2>&1 || want+=(openssl)
command -v chromium >/dev/null 2>&1 || want+=(chromium)
[ ${#want[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "system-deps: cannot install ${want[*]} (not root or no apt-get); tests needing them will skip" >&2
  exit 0
fi
echo "system-deps: installing ${want[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null 2>&1 || true
for p in "${want[@]}"; do
  apt-get install -y -qq --no-install-recommends "$p" >/dev/null 2>&1 \
    || echo "system-deps: apt-get install $p failed; tests needing it will skip" >&2
done
# Debian's influxdb and supervisor packages start system services; the tests
# start their own servers on free loopback ports, so stop the packaged ones.
for svc in influxdb supervisor; do
  if command -v systemctl >/dev/null 2>&1; then systemctl stop "$svc" >/dev/null 2>&1 || true; fi
  service "$svc" stop >/dev/null 2>&1 || true
done
exit 0
