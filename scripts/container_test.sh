#!/usr/bin/env bash
# Build the bids_qa container image with podman from a local base and check that it works the way
# it is meant to be used: offline (--network none), on a read-only root (--read-only), as a user
# that does not exist in the image (--user 1000:1000).
#
# Usage: scripts/container_test.sh [--rebuild-base] [--keep]
#
# No registry has to be reachable: the base is a Debian bookworm rootfs made with debootstrap and
# imported with `podman import` (cached as $BIDS_QA_BASE_IMAGE; --rebuild-base remakes it). torch
# is installed in the image from pip's configured indexes (torch==2.13.0, the CPU build where this
# machine's pip configuration provides it); the host's pip configuration and every local file or
# folder it names (constraints, requirements, find-links, file:// indexes, cert) are mounted into
# the build. Needs root (or rootful podman), podman, runc and
# debootstrap: apt-get install podman buildah runc debootstrap.
#
# Checks (each one prints "ok ..." or stops the script with "FAIL ..." and exit status 1):
#   1. the image's OCI labels carry the package version;
#   2. `bids_qa --version` in the container prints that version;
#   3. every bids_qa/weights/*.safetensors of the source tree is inside the image, byte for byte;
#   4. `bids_qa demo /tmp/out` (the built-in example) succeeds inside the container;
#   5. the demo again into a mounted folder, then the BIDS-App itself (participant, then group) on
#      the demo dataset mounted read-only: per-scan TSVs, group tables and reports exist on the
#      host, owned by uid 1000 and readable by another user (uid 2000, also checked by reading every
#      file in a container), and dataset_description.json names bids_qa and its version.
# Environment: BIDS_QA_IMAGE (default localhost/bids_qa:test), BIDS_QA_BASE_IMAGE (default
# localhost/bids_qa-base:bookworm), DEBIAN_MIRROR, TORCH_SPEC (default torch==2.13.0),
# TORCH_INDEX_URL (default empty: pip's configured index).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
IMAGE=${BIDS_QA_IMAGE:-localhost/bids_qa:test}
BASE_IMAGE=${BIDS_QA_BASE_IMAGE:-localhost/bids_qa-base:bookworm}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
TORCH_INDEX_URL=${TORCH_INDEX_URL:-}
REBUILD_BASE=0
KEEP=0
for arg in "$@"; do
    case "$arg" in
        --rebuild-base) REBUILD_BASE=1 ;;
        --keep) KEEP=1 ;;
        -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
        *) echo "container_test: unknown argument $arg" >&2; exit 64 ;;
    esac
done

for tool in podman runc python3; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "container_test: $tool not found (apt-get install podman buildah runc debootstrap)" >&2
        exit 77
    fi
done

# podman on these machines: runc (crun is not installed), open-file and process limits below the
# host's hard limits (podman's defaults are higher, which runc may not set without
# CAP_SYS_RESOURCE), host network for the build only (pip needs an index; nothing at run time does).
PODMAN=(podman --runtime runc)
ULIMIT=(--ulimit nofile=1024:1024 --ulimit nproc=4096:4096)
VERSION=$(sed -n 's/^__version__ = "\(.*\)"/\1/p' "$REPO/bids_qa/__init__.py")
WORK=$(mktemp -d /tmp/bids_qa_container_test.XXXXXX)
cleanup() {
    if [ "$KEEP" = 1 ]; then
        echo "container_test: kept $WORK"
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT
fail() { echo "FAIL $*" >&2; exit 1; }
step() { echo; echo "== $* ($(date +%H:%M:%S))"; }

# ---------------------------------------------------------------------------------------------
step "base image $BASE_IMAGE"
if [ "$REBUILD_BASE" = 1 ] || ! "${PODMAN[@]}" image exists "$BASE_IMAGE"; then
    command -v debootstrap >/dev/null 2>&1 || { echo "container_test: debootstrap not found" >&2; exit 77; }
    ROOTFS="$WORK/rootfs"
    # python3-venv brings ensurepip (pip inside the image's virtual environment); ca-certificates for pip.
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
        bookworm "$ROOTFS" "$DEBIAN_MIRROR" > "$WORK/debootstrap.log" 2>&1 \
        || { tail -20 "$WORK/debootstrap.log"; fail "debootstrap"; }
    rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/archives/*.deb
    tar -C "$ROOTFS" --numeric-owner -c . \
        | "${PODMAN[@]}" import --change 'CMD ["/bin/bash"]' - "$BASE_IMAGE" > "$WORK/import.log" 2>&1 \
        || { cat "$WORK/import.log"; fail "podman import"; }
    rm -rf "$ROOTFS"
    echo "imported a debootstrap Debian bookworm rootfs as $BASE_IMAGE"
else
    echo "reusing $BASE_IMAGE (--rebuild-base to remake it)"
fi

# ---------------------------------------------------------------------------------------------
step "pip configuration for the build"
# The host's pip settings (global, user and PIP_* variables merged) become the image's
# /etc/pip.conf during the build only. Every local file or folder a setting names (constraint,
# requirement, find-links, file:// indexes, cert, client-cert, ...) is mounted read-only at the
# same path, so the copied settings resolve inside the build exactly as on the host.
MOUNTS=(-v /etc/ssl/certs:/etc/ssl/certs:ro)
python3 - "$WORK/pip.conf" > "$WORK/pip_mounts" <<'PY'
import os, subprocess, sys
out = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True).stdout
settings = {}
for line in out.splitlines():
    key, _, value = line.partition("=")
    section, _, name = key.rpartition(".")
    if section in (":env:", "global", "install"):
        settings[name] = value.strip().strip("'\"")
with open(sys.argv[1], "w") as fh:
    fh.write("[global]\n" + "".join(f"{k} = {v}\n" for k, v in sorted(settings.items())))
paths = set()
for value in settings.values():
    for item in value.split():
        path = item[len("file://"):] if item.startswith("file://") else item
        path = path.rstrip("/") or path
        if path.endswith("/simple"):  # a PEP 503 index links to ../../files: mount its parent
            path = os.path.dirname(path)
        if path.startswith("/") and os.path.exists(path):
            paths.add(path)  # podman follows a symbolic link on the host side
# one mount per tree: a path inside another mounted folder (or /etc/ssl/certs) comes with it
kept = []
for path in sorted(paths, key=len):
    if not any(path == top or path.startswith(top + "/") for top in kept + ["/etc/ssl/certs"]):
        kept.append(path)
print("\n".join(sorted(kept)))
PY
while read -r path; do
    [ -n "$path" ] && MOUNTS+=(-v "$path:$path:ro")
done < "$WORK/pip_mounts"
MOUNTS+=(-v "$WORK/pip.conf:/etc/pip.conf:ro")
sed 's/^/  /' "$WORK/pip.conf"
echo "  mounts: ${MOUNTS[*]}"

# ---------------------------------------------------------------------------------------------
step "build $IMAGE (base $BASE_IMAGE, $TORCH_SPEC)"
REF=$(git -C "$REPO" rev-parse HEAD 2>/dev/null || echo "")
SOURCE_URL=$(git -C "$REPO" remote get-url origin 2>/dev/null || echo "")
start=$(date +%s)
"${PODMAN[@]}" build "${ULIMIT[@]}" --network host --pull=never "${MOUNTS[@]}" \
    --build-arg BASE="$BASE_IMAGE" \
    --build-arg TORCH_SPEC="$TORCH_SPEC" \
    --build-arg TORCH_INDEX_URL="$TORCH_INDEX_URL" \
    --build-arg VERSION="$VERSION" \
    --build-arg VCS_REF="$REF" \
    --build-arg SOURCE_URL="$SOURCE_URL" \
    --build-arg BUILD_DATE="$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
    -f "$REPO/Dockerfile" -t "$IMAGE" "$REPO" > "$WORK/build.log" 2>&1 \
    || { tail -40 "$WORK/build.log"; fail "podman build"; }
grep -E '^(torch|scorers:|bids_qa) ' "$WORK/build.log" | sed 's/^/  /' || true
echo "built in $(( $(date +%s) - start )) s; size $("${PODMAN[@]}" image inspect --format '{{.Size}}' "$IMAGE" | awk '{printf "%.0f MB", $1/1e6}')"

# Every run: no network, read-only root (podman mounts a fresh tmpfs on /tmp), a uid that has no
# passwd entry in the image.
RUN=("${PODMAN[@]}" run --rm "${ULIMIT[@]}" --network none --read-only --user 1000:1000)

# ---------------------------------------------------------------------------------------------
step "1. OCI labels"
label=$("${PODMAN[@]}" image inspect --format '{{index .Labels "org.opencontainers.image.version"}}' "$IMAGE")
[ "$label" = "$VERSION" ] || fail "org.opencontainers.image.version is '$label', expected '$VERSION'"
# shellcheck disable=SC2016  # a Go template, not a shell expansion
"${PODMAN[@]}" image inspect --format '{{range $k, $v := .Labels}}{{$k}}={{$v}}{{"\n"}}{{end}}' "$IMAGE" \
    | grep '^org.opencontainers' | sed 's/^/  /'
echo "ok labels"

# ---------------------------------------------------------------------------------------------
step "2. bids_qa --version"
got=$("${RUN[@]}" "$IMAGE" --version)
echo "  $got"
[ "$got" = "bids_qa $VERSION" ] || fail "--version printed '$got', expected 'bids_qa $VERSION'"
echo "ok --version"

# ---------------------------------------------------------------------------------------------
step "3. weights shipped in the image"
: > "$WORK/weights.host"
if compgen -G "$REPO/bids_qa/weights/*.safetensors" > /dev/null; then
    (cd "$REPO/bids_qa/weights" && sha256sum -- *.safetensors) | sort > "$WORK/weights.host"
fi
"${RUN[@]}" --entrypoint python "$IMAGE" -c '
import hashlib, sys
from importlib import resources
from bids_qa.scoring import REGISTRY
weights = resources.files("bids_qa").joinpath("weights")
for f in sorted(weights.iterdir() if weights.is_dir() else [], key=lambda p: p.name):
    if f.name.endswith(".safetensors"):
        print(hashlib.sha256(f.read_bytes()).hexdigest() + "  " + f.name)
print("scorers: " + ", ".join(e.name + ("" if e.available() else " (no weights)") for e in REGISTRY), file=sys.stderr)
' > "$WORK/weights.unsorted" 2> "$WORK/scorers" || { cat "$WORK/scorers"; fail "listing the weights in the image"; }
sort "$WORK/weights.unsorted" > "$WORK/weights.image"
sed 's/^/  /' "$WORK/scorers"
diff "$WORK/weights.host" "$WORK/weights.image" || fail "weights in the image differ from bids_qa/weights"
echo "ok weights: $(wc -l < "$WORK/weights.host") file(s) identical"

# ---------------------------------------------------------------------------------------------
step "4. bids_qa demo /tmp/out (inside the container)"
"${RUN[@]}" "$IMAGE" demo /tmp/out --quiet > "$WORK/demo_tmp.log" 2>&1 \
    || { tail -30 "$WORK/demo_tmp.log"; fail "bids_qa demo /tmp/out"; }
tail -12 "$WORK/demo_tmp.log" | sed 's/^/  /'
grep -q 'group_T1w.tsv' "$WORK/demo_tmp.log" || fail "the demo printed no group_T1w.tsv"
echo "ok demo in /tmp"

# ---------------------------------------------------------------------------------------------
step "5. demo into a mounted folder, then the BIDS-App on a read-only input"
OUT="$WORK/out"
mkdir -p "$OUT"
chown 1000:1000 "$OUT"
"${RUN[@]}" -v "$OUT:/out" "$IMAGE" demo /out/demo --quiet > "$WORK/demo_out.log" 2>&1 \
    || { tail -30 "$WORK/demo_out.log"; fail "bids_qa demo /out/demo"; }
for level in participant group; do
    "${RUN[@]}" -v "$OUT/demo/bids:/data:ro" -v "$OUT:/out" "$IMAGE" /data /out/app "$level" --device auto \
        > "$WORK/app_$level.log" 2>&1 || { tail -30 "$WORK/app_$level.log"; fail "bids_qa /data /out/app $level"; }
    tail -3 "$WORK/app_$level.log" | sed 's/^/  /'
done
for qa in "$OUT/demo/qa" "$OUT/app"; do
    for scan in sub-01_T1w sub-01_T2w sub-02_T1w sub-02_T2w; do
        sub=${scan%%_*}
        for suffix in _qa.tsv _qa.json _report.html; do
            [ -s "$qa/$sub/anat/$scan$suffix" ] || fail "missing $qa/$sub/anat/$scan$suffix"
        done
    done
    for contrast in T1w T2w; do
        rows=$(($(wc -l < "$qa/group_$contrast.tsv") - 1))
        [ "$rows" = 2 ] || fail "$qa/group_$contrast.tsv has $rows rows, expected 2"
        [ -s "$qa/group_$contrast.html" ] || fail "missing $qa/group_$contrast.html"
    done
    python3 - "$qa/dataset_description.json" "$VERSION" <<'PY' || fail "dataset_description.json of $qa"
import json, sys
d = json.load(open(sys.argv[1]))
gen = d["GeneratedBy"][0]
assert d["DatasetType"] == "derivative", d
assert (gen["Name"], gen["Version"]) == ("bids_qa", sys.argv[2]), gen
where = sys.argv[1].rsplit("/", 3)[-3] + "/" + sys.argv[1].rsplit("/", 2)[-2]
if gen.get("Container", {}).get("Type") in ("podman", "docker"):
    print(f"  {where}: GeneratedBy.Container {gen['Container']}")
else:  # podman --read-only hides /run/.containerenv; it sets $container=podman instead
    print(f"  WARN {where}: no GeneratedBy.Container (podman --read-only: only $container=podman tells)")
PY
done
stray=$(find "$OUT" ! -uid 1000 | head -3)
[ -z "$stray" ] || fail "files not owned by uid 1000: $stray"
# Another user (uid 2000, not the owner, not in its group) must be able to read every output: a
# lab shares one derivatives folder. Checked by the permission bits and by reading every file.
unreadable=$(find "$OUT/app" "$OUT/demo/qa" \( -type f ! -perm -o=r \) -o \( -type d ! -perm -o=rx \) | head -3)
[ -z "$unreadable" ] || fail "outputs other users cannot read: $unreadable"
"${PODMAN[@]}" run --rm "${ULIMIT[@]}" --network none --read-only --user 2000:2000 \
    -v "$OUT:/out:ro" --entrypoint python "$IMAGE" -c '
import os, sys
n = 0
for top in ("/out/app", "/out/demo/qa"):
    for folder, _, files in os.walk(top):
        for name in files:
            with open(os.path.join(folder, name), "rb") as fh:
                fh.read(1)
            n += 1
print(f"  uid 2000 read {n} output files")
' || fail "another user (uid 2000) cannot read the outputs"
echo "ok outputs: 8 scans x (_qa.tsv, _qa.json, _report.html), 4 group tables of 2 rows, owned by 1000, readable by others"

echo
echo "container_test: all checks passed ($IMAGE, bids_qa $VERSION)"
