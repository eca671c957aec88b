#!/usr/bin/env bash
# Builds the local container images the podman tests and benches use, without
# any registry: a busybox root filesystem imported as localhost/ank-test/busybox,
# then tests/images/<name>/Containerfile built FROM it. Idempotent: skips when
# every image exists and was built from the current recipe (label
# ank-test.recipe = hash of tests/images/); `--force` rebuilds.
#
# Images (see docs/podman.md for the mapping from Ankaios's test images):
#   localhost/ank-test/busybox:latest       base (busybox-static)
#   localhost/ank-test/alpine:latest        ghcr.io/eclipse-ankaios/tests/alpine:latest
#   localhost/ank-test/sleepy:latest        ghcr.io/eclipse-ankaios/tests/sleepy:latest
#   localhost/ank-test/nginx:alpine-slim    ghcr.io/eclipse-ankaios/tests/nginx:alpine-slim
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
images_dir="$here/tests/images"
export CONTAINERS_CONF=${CONTAINERS_CONF:-$here/containers.conf}
force=0
[ "${1:-}" = "--force" ] && force=1

command -v podman >/dev/null 2>&1 || { echo "build-test-images: podman is not installed (make system-deps)" >&2; exit 1; }

recipe=$(cd "$images_dir" && find . -type f | LC_ALL=C sort | xargs sha256sum | sha256sum | cut -c1-16)
targets=(busybox:latest alpine:latest sleepy:latest nginx:alpine-slim)

current() {  # whether image $1 exists and carries this recipe's label
  local label
  label=$(podman image inspect --format '{{index .Labels "ank-test.recipe"}}' "localhost/ank-test/$1" 2>/dev/null) || return 1
  [ "$label" = "$recipe" ]
}

if [ $force = 0 ]; then
  all=1
  for t in "${targets[@]}"; do current "$t" || all=0; done
  if [ $all = 1 ]; then echo "build-test-images: up to date ($recipe)"; exit 0; fi
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
bash "$images_dir/busybox/make-rootfs.sh" "$work/rootfs"
tar -C "$work/rootfs" --numeric-owner --owner=0 --group=0 -cf "$work/rootfs.tar" .
podman import -q \
  --change 'CMD ["/bin/sh"]' \
  --change 'ENV PATH=/bin:/sbin:/usr/bin:/usr/sbin' \
  --change "LABEL ank-test.recipe=$recipe" \
  "$work/rootfs.tar" localhost/ank-test/busybox:latest >/dev/null
for t in alpine:latest sleepy:latest nginx:alpine-slim; do
  name=${t%%:*}
  podman build -q --pull=never --label "ank-test.recipe=$recipe" \
    -t "localhost/ank-test/$t" -f "$images_dir/$name/Containerfile" "$images_dir/$name" >/dev/null
done
# Earlier builds of these tags are left dangling; drop them.
podman image prune -f --filter label=ank-test.recipe >/dev/null 2>&1 || true
echo "build-test-images: built ${targets[*]/#/localhost/ank-test/} ($recipe)"
