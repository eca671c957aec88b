#!/usr/bin/env bash
# make test-ankaios: Eclipse Ankaios's own Robot Framework system tests
# (../shared/ankaios-stests, or $ANK_STESTS) against this checkout's real
# ank-server, ank-agent and ank (bin/, first in PATH; ANK_BIN_DIR=bin):
# nothing in between translates or rewrites their output.
#
# - The suite is copied to a temporary directory (the original is read-only).
#   Left out there, and reported as not runnable: control_interface/ (its
#   control_interface_tester image is built from Ankaios's Rust sources) and
#   *_containerd.robot (no containerd/nerdctl here).
# - The suite's setup hook tools/setup_robot_tests.sh is not part of the copy
#   (it prepares Ankaios's build tree); the copy gets one that checks that the
#   local stand-in images exist.
# - Podman runs on an isolated storage (CONTAINERS_STORAGE_CONF: own graph and
#   run roots; the host's store as a read-only additional image store, where
#   scripts/build-test-images.sh built the stand-ins), so the suite's teardown
#   (`podman rm --all`, `podman volume rm --all`) cannot touch anyone else's
#   containers. /tmp/ankaios (the suite's ANKAIOS_TMP_FOLDER, removed after
#   each test) and /tmp/.certs (its CERTS_DIR) are redirected into the
#   temporary directory as well, in the variables and in the copied
#   configuration files that name them.
# - ANK_BIN_DIR is a directory of one-line wrappers that exec this checkout's
#   bin/ programs; the only one that adds anything is ank-agent's: when TMPDIR
#   is not set (the suite's normal case) it sets ANKAGENT_RUN_FOLDER to the
#   redirected ANKAIOS_TMP_FOLDER (ank-zenoh's agents keep instance records
#   in their run folder; Ankaios's keep nothing across runs, and the suite
#   removes that folder after each test). With TMPDIR set (the TMPDIR test)
#   the agent's own default, $TMPDIR/ankaios/<name>_io, is what runs.
#   Robot itself runs without TMPDIR, as the suite assumes.
# - Images: ANK_IMAGE_MAP maps ghcr.io/eclipse-ankaios/tests/ onto the local
#   stand-ins localhost/ank-test/.
# - Every ank-server starts from its startup manifest alone (ANKSERVER_FRESH_STATE).
#
# Writes results/output.xml, log.html and results.tsv (one line per test:
# suite, test, status, seconds, message) plus a summary; exits 0 when it ran
# (whatever the results), non-zero when it could not run.
# Extra arguments go to robot (e.g. --test "Test Ankaios CLI lists connected agents").
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
# Beside the checkout (as CI lays it out), else the workplace's shared folder.
src=${ANK_STESTS:-$here/../shared/ankaios-stests}
[ -d "$src/tests/stests" ] || [ -n "${ANK_STESTS:-}" ] || src=/work/shared/ankaios-stests
py=${PYTHON:-$here/.venv/bin/python}
[ -d "$src/tests/stests" ] || { echo "test-ankaios: no suite at $src (set ANK_STESTS)" >&2; exit 2; }
"$py" -c "import robot" 2>/dev/null || { echo "test-ankaios: robotframework missing (make venv)" >&2; exit 2; }

work=$(mktemp -d "${TMPDIR:-/tmp}/ank-stests.XXXXXX")
echo "test-ankaios: working in $work"
cp -r "$src/." "$work/"
chmod -R u+w "$work"
rm -rf "$work/tests/stests/control_interface"
find "$work/tests/stests" -name '*_containerd.robot' -delete
{ grep -rlZ -e /tmp/.certs -e /tmp/ankaios "$work/tests/resources/configs" || true; } |
  xargs -0 -r sed -i -e "s#/tmp/\.certs#$work/certs#g" -e "s#/tmp/ankaios#$work/tmp/ankaios#g"
cat > "$work/tools/setup_robot_tests.sh" <<'SETUP'
#!/usr/bin/env bash
# ank-zenoh's stand-in for Ankaios's setup hook: the mTLS test certificates
# (Ankaios's own tools/certs/create_certs.sh) and the images must exist.
bash tools/certs/create_certs.sh "$ANK_STEST_CERTS" || exit 1
for image in alpine:latest sleepy:latest nginx:alpine-slim; do
  podman image exists "localhost/ank-test/$image" || { echo "missing localhost/ank-test/$image (make images)"; exit 1; }
done
SETUP
chmod +x "$work/tools/setup_robot_tests.sh"

export CONTAINERS_CONF=${CONTAINERS_CONF:-$here/containers.conf}
host_store=$(podman info --format '{{.Store.GraphRoot}}')
bash "$here/scripts/build-test-images.sh" >/dev/null
mkdir -p "$work/storage" "$work/run" "$work/tmp"
cat > "$work/storage.conf" <<CONF
[storage]
driver = "overlay"
graphroot = "$work/storage"
runroot = "$work/run"
[storage.options]
additionalimagestores = ["$host_store"]
CONF
export CONTAINERS_STORAGE_CONF="$work/storage.conf"
podman image exists localhost/ank-test/alpine:latest || { echo "test-ankaios: isolated storage cannot see the images" >&2; exit 2; }

mkdir -p "$work/bin"
for prog in ank ank-server ank-agent; do
  {
    echo '#!/usr/bin/env bash'
    [ "$prog" = ank-agent ] && echo "[ -n \"\${TMPDIR:-}\" ] || export ANKAGENT_RUN_FOLDER='$work/tmp/ankaios'"
    echo "exec '$here/bin/$prog' \"\$@\""
  } > "$work/bin/$prog"
  chmod +x "$work/bin/$prog"
done
export PATH="$work/bin:$here/bin:$(dirname "$py"):$PATH"
export ANK_BIN_DIR="$work/bin"
export ANK_IMAGE_MAP="ghcr.io/eclipse-ankaios/tests/=localhost/ank-test/"
export ANKSERVER_FRESH_STATE=1
export ANK_STEST_CERTS="$work/certs"  # the suite's CERTS_DIR (/tmp/.certs), kept in the work directory
export PYTHONPATH="$here"

start=$(date +%s)
(cd "$work" && env -u TMPDIR "$py" -m robot --outputdir "$work/results" --variable "ANKAIOS_TMP_FOLDER:$work/tmp/ankaios" \
  --variable "CERTS_DIR:$work/certs" --loglevel INFO --console dotted "$@" tests/stests) || true
end=$(date +%s)
"$py" - "$work/results/output.xml" "$work/results/results.tsv" "$((end - start))" <<'PY'
import sys
from robot.api import ExecutionResult, ResultVisitor

rows = []


class Tests(ResultVisitor):
    def visit_test(self, test):  # noqa: N802 - robot's API
        message = " ".join(test.message.split())[:200]
        rows.append((test.parent.longname, test.name, test.status, f"{test.elapsedtime / 1000:.1f}", message))


ExecutionResult(sys.argv[1]).visit(Tests())
with open(sys.argv[2], "w") as out:
    out.write("suite\ttest\tstatus\tseconds\tmessage\n")
    for row in rows:
        out.write("\t".join(row) + "\n")
for suite, name, status, secs, message in rows:
    print(f"{status:<5} {secs:>6} s  {suite.split('.')[-1]} / {name}" + (f"  -- {message[:100]}" if status != "PASS" else ""))
counts = {s: sum(1 for r in rows if r[2] == s) for s in ("PASS", "FAIL", "SKIP")}
print(f"test-ankaios: {counts['PASS']} passed, {counts['FAIL']} failed, {counts['SKIP']} skipped "
      f"of {len(rows)} in {sys.argv[3]} s; table: {sys.argv[2]}")
PY
