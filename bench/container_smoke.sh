#!/usr/bin/env bash
# Container smoke test for the gateway image (manual; not part of CI).
#
# Builds the image with podman, runs `gateway demo` in it, and checks: /health answers with two
# accounts, a demo /v1/messages request gets the emulator's echo, the process runs as uid 10001,
# /data is writable by it, the image's HEALTHCHECK passes, the default CMD (`serve` on 0.0.0.0)
# refuses to start without API keys, and the image holds no compiler. Prints PASS/FAIL lines and
# the image size; the container is always removed. Exit status 0 only if every check passed.
#
#   bench/container_smoke.sh                         # BASE=docker.io/library/python:3.11-slim
#   BASE=local-debootstrap bench/container_smoke.sh  # no registry: build a Debian base locally
#
# Environment:
#   BASE       base image (default docker.io/library/python:3.11-slim), or `local-debootstrap`:
#              debootstrap Debian bookworm (minbase + python3, python3-venv, ca-certificates),
#              import it as localhost/debian-python:bookworm (kept; REBUILD_BASE=1 redoes it).
#              Needs root and debootstrap. DEBIAN_MIRROR overrides the mirror (default: the
#              first one apt uses here, else http://deb.debian.org/debian).
#   IMAGE      tag to build (default gateway:local); SKIP_BUILD=1 uses an existing one.
#   PORT       host port published on 127.0.0.1 (default: a free one).
#   PIP_CA     CA bundle handed to pip as a build secret, for TLS-intercepting proxies
#              (default /etc/ssl/certs/ca-certificates.crt when it exists; empty: none).
#   PODMAN     podman command (default podman). PODMAN_GLOBAL_FLAGS / PODMAN_RUN_FLAGS add
#              flags; otherwise the script probes for what this machine needs (see probe_podman).
#   WAIT_SECONDS  how long to wait for /health (default 60).
set -euo pipefail

cd "$(dirname "$0")/.."

BASE=${BASE:-docker.io/library/python:3.11-slim}
IMAGE=${IMAGE:-gateway:local}
PODMAN=${PODMAN:-podman}
WAIT_SECONDS=${WAIT_SECONDS:-60}
LOCAL_BASE=localhost/debian-python:bookworm
if [[ -z ${PIP_CA+set} && -s /etc/ssl/certs/ca-certificates.crt ]]; then
    PIP_CA=/etc/ssl/certs/ca-certificates.crt
fi
PIP_CA=${PIP_CA:-}

read -r -a GLOBAL <<<"${PODMAN_GLOBAL_FLAGS:-}"
read -r -a RUNFLAGS <<<"${PODMAN_RUN_FLAGS:-}"
CID=""
FAILURES=0
CHECKS=0

log() { printf '%s\n' "$*"; }
pass() { CHECKS=$((CHECKS + 1)); log "PASS: $*"; }
fail() { CHECKS=$((CHECKS + 1)); FAILURES=$((FAILURES + 1)); log "FAIL: $*"; }
pm() { "$PODMAN" "${GLOBAL[@]}" "$@"; }

cleanup() {
    if [[ -n $CID ]]; then
        pm stop -t 5 "$CID" >/dev/null 2>&1 || true
        pm rm -f -v "$CID" >/dev/null 2>&1 || true
        log "container $CID removed"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

debian_mirror() {
    local m=""
    if [[ -d /etc/apt/sources.list.d || -f /etc/apt/sources.list ]]; then
        m=$(grep -rhoE '(URIs:|^deb) +https?://[^ ]*debian/?( |$)' /etc/apt/sources.list \
                /etc/apt/sources.list.d/ 2>/dev/null | grep -v security | head -n1 \
                | awk '{print $2}' || true)
    fi
    printf '%s\n' "${m:-http://deb.debian.org/debian}"
}

build_local_base() {
    if [[ ${REBUILD_BASE:-0} != 1 ]] && pm image exists "$LOCAL_BASE"; then
        log "base: using existing $LOCAL_BASE (REBUILD_BASE=1 rebuilds it)"
        return
    fi
    command -v debootstrap >/dev/null || { log "FAIL: debootstrap not installed"; exit 1; }
    [[ $(id -u) == 0 ]] || { log "FAIL: BASE=local-debootstrap needs root"; exit 1; }
    local mirror rootfs
    mirror=${DEBIAN_MIRROR:-$(debian_mirror)}
    rootfs=$(mktemp -d /tmp/gateway-rootfs.XXXXXX)
    log "base: debootstrap bookworm from $mirror into $rootfs"
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
        bookworm "$rootfs" "$mirror" >"$rootfs.log" 2>&1 \
        || { tail -n 20 "$rootfs.log"; log "FAIL: debootstrap"; exit 1; }
    # what a container never needs: package caches, docs, man pages, locales
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
        "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* \
        "$rootfs"/usr/share/locale/*
    tar -C "$rootfs" -c . | pm import --quiet --change 'CMD ["/bin/bash"]' - "$LOCAL_BASE" >/dev/null
    rm -rf "$rootfs" "$rootfs.log"
    log "base: imported $LOCAL_BASE"
}

# Some sandboxes need extra podman flags. Probe with a throw-away container of the base image
# and add only what the error asks for:
#   crun "cgroups in hybrid mode not supported"  -> --runtime runc (cgroup v1 + v2 hybrid hosts)
#   "setrlimit ... not permitted" -> --ulimit nofile/nproc at or below the host's limits (no
#                              CAP_SYS_RESOURCE, so podman's default 1048576 cannot be set)
probe_podman() {
    local image=$1 out attempt
    for attempt in 1 2 3 4; do
        if out=$(pm run --rm --network none "${RUNFLAGS[@]}" --entrypoint /bin/sh "$image" \
                -c 'exit 0' 2>&1); then
            log "podman: global flags [${GLOBAL[*]}] run flags [${RUNFLAGS[*]}]"
            return 0
        fi
        if [[ $out == *"hybrid mode not supported"* ]] && [[ " ${GLOBAL[*]} " != *" runc "* ]] \
                && command -v runc >/dev/null; then
            GLOBAL+=(--runtime runc)
        elif [[ ${out,,} == *"rlimit"* ]] && [[ " ${RUNFLAGS[*]} " != *nproc* ]]; then
            local n
            n=$(ulimit -Hn)
            ((n > 16384)) && n=16384
            RUNFLAGS+=(--ulimit "nofile=$n:$n" --ulimit nproc=16384:16384)
        else
            log "$out"
            log "FAIL: podman cannot run a container here (attempt $attempt)"
            exit 1
        fi
    done
    log "FAIL: podman probe gave up"
    exit 1
}

image_size() {
    local bytes
    bytes=$(pm image inspect --format '{{.Size}}' "$IMAGE")
    python3 -c "import sys; b=int(sys.argv[1]); print(f'{b} bytes ({b/1e6:.1f} MB)')" "$bytes"
}

# --- base and build ---------------------------------------------------------------------------
log "== gateway container smoke test  $(date -u +%Y-%m-%dT%H:%M:%SZ)"
log "podman: $(pm --version)"
if [[ $BASE == local-debootstrap ]]; then
    build_local_base
    BASE_REF=$LOCAL_BASE
else
    BASE_REF=$BASE
    pm image exists "$BASE_REF" || pm pull "$BASE_REF" >/dev/null
fi
probe_podman "$BASE_REF"

if [[ ${SKIP_BUILD:-0} != 1 ]]; then
    build_args=(build --format docker --build-arg "BASE=$BASE_REF" -t "$IMAGE" -f Containerfile)
    [[ -n $PIP_CA ]] && build_args+=(--secret "id=pip_ca,src=$PIP_CA")
    log "build: $PODMAN ${GLOBAL[*]} ${build_args[*]} ."
    start=$(date +%s)
    if pm "${build_args[@]}" . >/tmp/gateway-container-build.log 2>&1; then
        pass "image $IMAGE built from $BASE_REF in $(($(date +%s) - start))s"
    else
        tail -n 40 /tmp/gateway-container-build.log
        fail "podman build (log: /tmp/gateway-container-build.log)"
        exit 1
    fi
fi
log "image size: $(image_size)"
pm images --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep -E "^(localhost/)?${IMAGE}" || true

# --- static checks of the image ---------------------------------------------------------------
hc=$(pm image inspect --format '{{json .Config.Healthcheck}}' "$IMAGE" 2>/dev/null || true)
if [[ $hc == *"/health"* ]]; then pass "image carries the HEALTHCHECK"; else
    fail "image has no HEALTHCHECK (built without --format docker?): $hc"; fi
user=$(pm image inspect --format '{{.Config.User}}' "$IMAGE")
if [[ $user == 10001* ]]; then pass "image USER is $user"; else fail "image USER is '$user'"; fi
# shellcheck disable=SC2016  # expanded by the container's shell
if compilers=$(pm run --rm "${RUNFLAGS[@]}" --network none --entrypoint /bin/sh "$IMAGE" \
        -c 'for c in gcc cc g++ clang make; do command -v $c; done; exit 0' 2>/dev/null); then
    if [[ -z $compilers ]]; then pass "no compiler in the image"; else
        fail "compilers in the image: $compilers"; fi
else
    fail "could not run a shell in the image"
fi

# default CMD: `serve --host 0.0.0.0` without GATEWAY_API_KEYS must refuse to start
probe_name=gateway-smoke-cmd-$$
set +e
out=$(timeout 30 "$PODMAN" "${GLOBAL[@]}" run --rm --name "$probe_name" "${RUNFLAGS[@]}" \
    --network none "$IMAGE" 2>&1)
rc=$?
set -e
pm rm -f -v "$probe_name" >/dev/null 2>&1 || true  # only there if it did start (timeout)
if [[ $rc != 0 && $rc != 124 && $out == *GATEWAY_API_KEYS* ]]; then
    pass "default CMD refuses a 0.0.0.0 bind without API keys (exit $rc)"
else
    fail "default CMD without API keys: exit $rc: ${out:0:300}"
fi

# --- the demo in a container --------------------------------------------------------------------
PORT=${PORT:-$(free_port)}
# A fixed name, so the EXIT trap removes the container even when `run` fails after creating it.
# No --rm: if the demo dies, its logs are still there to print.
CID=gateway-smoke-$$
if ! pm run -d --name "$CID" "${RUNFLAGS[@]}" -p "127.0.0.1:$PORT:8080" "$IMAGE" \
        demo --host 0.0.0.0 --port 8080 >/dev/null 2> >(grep -v 'systemd' >&2); then
    fail "podman run of the demo on 127.0.0.1:$PORT"
    log "RESULT: FAIL ($FAILURES of $CHECKS checks failed)"
    exit 1
fi
log "container $CID started: demo on http://127.0.0.1:$PORT"

health=""
deadline=$(($(date +%s) + WAIT_SECONDS))
while (($(date +%s) < deadline)); do
    if health=$(python3 - "http://127.0.0.1:$PORT/health" <<'EOF' 2>/dev/null
import sys, urllib.request
print(urllib.request.urlopen(sys.argv[1], timeout=3).read().decode())
EOF
    ); then
        break
    fi
    health=""
    if [[ $(pm inspect --format '{{.State.Running}}' "$CID" 2>/dev/null) != true ]]; then
        log "container exited before /health answered"
        break
    fi
    sleep 1
done

if [[ -z $health ]]; then
    fail "/health did not answer within ${WAIT_SECONDS}s"
    log "--- container logs ---"
    pm logs "$CID" 2>&1 | tail -n 40 || true
    log "RESULT: FAIL ($FAILURES of $CHECKS checks failed)"
    exit 1
fi
accounts=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1]).get("accounts"))' "$health" \
    2>/dev/null || echo "?")
if [[ $accounts == 2 ]]; then pass "/health: accounts=2 (${health:0:160})"; else
    fail "/health: accounts=$accounts: ${health:0:300}"; fi

if reply=$(python3 - "http://127.0.0.1:$PORT/v1/messages" <<'EOF' 2>&1
import json, sys, urllib.request
body = {"model": "claude-sonnet-4-5", "max_tokens": 64,
        "messages": [{"role": "user", "content": "hi"}]}
req = urllib.request.Request(sys.argv[1], data=json.dumps(body).encode(), method="POST",
                             headers={"content-type": "application/json", "x-api-key": "demo",
                                      "anthropic-version": "2023-06-01"})
data = json.loads(urllib.request.urlopen(req, timeout=30).read())
text = data["content"][0]["text"]
print(text)
sys.exit(0 if text.startswith("Echo") else 1)
EOF
); then
    pass "POST /v1/messages answered: ${reply:0:120}"
else
    fail "POST /v1/messages: ${reply:0:300}"
fi

uid=$(pm exec "$CID" id -u 2>/dev/null || echo "?")
if [[ $uid == 10001 ]]; then pass "process runs as uid 10001"; else fail "uid is $uid"; fi
# shellcheck disable=SC2016
if pm exec "$CID" /bin/sh -c 'f=/data/gateway/.w && touch "$f" && rm "$f"' 2>/dev/null; then
    pass "/data/gateway writable by the gateway user"
else
    fail "/data/gateway not writable by uid $uid"
fi

# (podman without systemd logs that it cannot set up the periodic timer; the check itself runs)
set +e
hc_out=$(pm healthcheck run "$CID" 2>&1)
rc=$?
set -e
hc_out=$(grep -v systemd <<<"$hc_out" || true)
if [[ $rc == 0 ]]; then
    pass "podman healthcheck run: healthy ${hc_out}"
else
    fail "podman healthcheck run: exit $rc ${hc_out:0:300}"
fi

start=$(date +%s)
if pm stop -t 15 "$CID" >/dev/null 2>&1; then
    pass "container stopped on SIGTERM in $(($(date +%s) - start))s"
else
    fail "podman stop"
fi
pm rm -f -v "$CID" >/dev/null 2>&1 || true
CID=""

log "image size: $(image_size)"
if ((FAILURES == 0)); then
    log "RESULT: PASS ($CHECKS checks)"
else
    log "RESULT: FAIL ($FAILURES of $CHECKS checks failed)"
    exit 1
fi
