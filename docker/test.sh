#!/usr/bin/env bash
# make docker-test: the compose demo for real, on a machine where a Docker engine runs but no image can be pulled
# (../shared/DOCKER-HERE.md). One command, idempotent, as root:
#   1. installs docker.io, docker-compose (v1) and debootstrap with apt when they are missing;
#   2. starts a private dockerd on build/docker/docker.sock (its own data root, so a second run reuses the
#      layer cache) and stops it again on exit, by its pid;
#   3. makes the base image once with debootstrap (Debian bookworm, Python 3.11; tarball cached in build/docker/);
#   4. builds docker/Dockerfile (the cpu variant: ONNX Runtime, no torch) on that base with this machine's CA bundle;
#   5. brings docker/compose.yaml up on a free loopback port, waits for /readyz, checks the backend (ONNX Runtime,
#      no torch in the image), the viewer, a rig PUT into the named volume and the demo streamer (exit 0, grids
#      received), prints a summary and one JSON line;
#   6. tears it all down (compose down -v) whatever happened.
# BEV_DOCKER_COMPOSE=ray runs docker/compose.ray.yaml instead (a Ray head and one worker, two replicas) and checks
# besides that both nodes' replicas answer and that a rig PUT through one is served by both.
# Environment: BEV_DOCKER_READY_TIMEOUT_S (600), BEV_DOCKER_DEMO_TIMEOUT_S (600), DEBIAN_MIRROR (deb.debian.org),
# BEV_MODELS_DIR (an absolute folder compose mounts as /app/models instead of bev_service/shipped/models/; the
# service reads it only when BEV_MODEL names a file there: by default it serves the model built into the image).
# Logs of each step stay in build/docker/*.log.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WORK=$ROOT/build/docker
SOCK=$WORK/docker.sock
PIDFILE=$WORK/dockerd.pid
EXTRA=$WORK/extra # staged build inputs; the one part of build/ that .dockerignore lets into the context
BASE_TARBALL=$WORK/base-bookworm.tar.gz
BASE_IMAGE=local/python-base:bookworm
IMAGE=bev-service:docker-test
PROJECT=bevdockertest
READY_TIMEOUT_S=${BEV_DOCKER_READY_TIMEOUT_S:-600}
DEMO_TIMEOUT_S=${BEV_DOCKER_DEMO_TIMEOUT_S:-600}
DEMO_FRAMES=20
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

# Debian's client matches the 20.10 engine and has BuildKit built in; a newer client without buildx does not.
DOCKER=/usr/bin/docker
export DOCKER_HOST=unix://$SOCK
VARIANT_NAME=${BEV_DOCKER_COMPOSE:-single}
case "$VARIANT_NAME" in
    single) COMPOSE_FILE=$ROOT/docker/compose.yaml SCALE=() ;;
    ray) COMPOSE_FILE=$ROOT/docker/compose.ray.yaml SCALE=(--scale ray-worker=1) ;;
    *)
        echo "BEV_DOCKER_COMPOSE must be single or ray, not '$VARIANT_NAME'" >&2
        exit 2
        ;;
esac
COMPOSE=(docker-compose --project-name "$PROJECT" --file "$COMPOSE_FILE")

log() { printf '[docker-test %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() {
    log "FAILED: $*"
    exit 1
}

install_tools() {
    local missing=()
    [ -x /usr/sbin/dockerd ] && [ -x "$DOCKER" ] || missing+=(docker.io)
    command -v docker-compose > /dev/null || missing+=(docker-compose)
    command -v debootstrap > /dev/null || missing+=(debootstrap)
    [ ${#missing[@]} -eq 0 ] && return
    log "apt-get install ${missing[*]}"
    # Another apt run (a test set-up installing chromium) may hold the lock: wait for it rather than fail.
    apt-get -o DPkg::Lock::Timeout=900 update -qq
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=900 install -y -qq "${missing[@]}" > "$WORK/apt.log"
}

dockerd_pid() {
    # The pid of the dockerd this script started, if it still runs (a run killed with -9 leaves one behind).
    local pid
    [ -f "$PIDFILE" ] || return 1
    pid=$(cat "$PIDFILE")
    [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2> /dev/null)" = dockerd ] && echo "$pid"
}

stop_dockerd() {
    local pid
    pid=$(dockerd_pid) || return 0
    log "stopping dockerd (pid $pid)"
    kill -TERM "$pid"
    for _ in $(seq 60); do
        kill -0 "$pid" 2> /dev/null || return 0
        sleep 0.5
    done
    kill -KILL "$pid" 2> /dev/null || true
}

start_dockerd() {
    stop_dockerd
    log "starting dockerd on $SOCK"
    mkdir -p "$WORK/data" "$WORK/exec"
    # nice: containers inherit it, and the build shares two cores with other work.
    nice -n 10 /usr/sbin/dockerd --host "unix://$SOCK" --data-root "$WORK/data" --exec-root "$WORK/exec" \
        --pidfile "$PIDFILE" > "$WORK/dockerd.log" 2>&1 &
    for _ in $(seq 120); do
        "$DOCKER" info > /dev/null 2>&1 && return 0
        sleep 0.5
    done
    tail -n 20 "$WORK/dockerd.log" >&2
    die "dockerd did not answer on $SOCK within 60 s"
}

COMPOSE_UP=0
UP_PID=
cleanup() {
    local rc=$?
    set +e
    [ -z "$UP_PID" ] || kill "$UP_PID" 2> /dev/null
    if [ "$COMPOSE_UP" = 1 ]; then
        "${COMPOSE[@]}" logs --no-color bev > "$WORK/bev.log" 2>&1
        [ "$VARIANT_NAME" != ray ] || "${COMPOSE[@]}" logs --no-color ray-worker > "$WORK/ray-worker.log" 2>&1
        log "compose down -v (service log kept in $WORK/bev.log)"
        "${COMPOSE[@]}" down -v --remove-orphans --timeout 10 > /dev/null 2>&1
    fi
    rm -rf "$EXTRA"
    stop_dockerd
    exit "$rc"
}

make_base_image() {
    "$DOCKER" image inspect "$BASE_IMAGE" > /dev/null 2>&1 && return
    if [ ! -s "$BASE_TARBALL" ]; then
        log "debootstrap bookworm (minbase + python3) from $MIRROR, once"
        local rootfs=$WORK/rootfs
        rm -rf "$rootfs"
        debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
            bookworm "$rootfs" "$MIRROR" > "$WORK/debootstrap.log" 2>&1 || die "debootstrap: see $WORK/debootstrap.log"
        # Package caches and lists are 100 MB that no layer needs (apt-get update restores the lists).
        tar -C "$rootfs" --exclude='./var/cache/apt/*' --exclude='./var/lib/apt/lists/*' -c . | gzip -1 > "$BASE_TARBALL.tmp"
        mv "$BASE_TARBALL.tmp" "$BASE_TARBALL"
        rm -rf "$rootfs"
    fi
    log "docker import $BASE_TARBALL as $BASE_IMAGE"
    "$DOCKER" import --change 'CMD ["python3"]' "$BASE_TARBALL" "$BASE_IMAGE" > /dev/null
}

pip_setting() {
    # A pip option as this machine's pip sees it: PIP_<NAME> first, then pip's config files.
    local env_name
    env_name=PIP_$(echo "$1" | tr 'a-z-' 'A-Z_')
    if [ -n "${!env_name:-}" ]; then
        echo "${!env_name}"
        return
    fi
    python3 -m pip config list 2> /dev/null | sed -n "s/^[a-z:]*\.$1='\(.*\)'\$/\1/p" | head -n 1
}

stage_extras() {
    # BUILD_ARGS gets the build arguments for what this machine needs: its CA bundle (a TLS proxy in front of the
    # package index). The cpu variant installs no torch, so the local torch wheel (pip's find-links) is not staged.
    BUILD_ARGS=(--build-arg "BASE_IMAGE=$BASE_IMAGE")
    rm -rf "$EXTRA"
    mkdir -p "$EXTRA"
    local cert
    cert=$(pip_setting cert)
    if [ -n "$cert" ] && [ -f "$cert" ]; then
        cp "$cert" "$EXTRA/ca.pem"
        BUILD_ARGS+=(--build-arg "EXTRA_CA=${EXTRA#"$ROOT"/}/ca.pem")
    fi
    log "build inputs: ${BUILD_ARGS[*]}"
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

http_status() {
    # Status of one GET, 0 when nothing answers. $1: URL.
    python3 - "$1" << 'EOF'
import sys, urllib.error, urllib.request
try:
    print(urllib.request.urlopen(sys.argv[1], timeout=5).status)
except urllib.error.HTTPError as e:
    print(e.code)
except OSError:
    print(0)
EOF
}

wait_ready() {
    # Seconds from now until GET $1 answers 200; fails after $2 s, or at once when the service keeps restarting.
    local start=$SECONDS cid restarts
    until [ "$(http_status "$1")" = 200 ]; do
        [ $((SECONDS - start)) -lt "$2" ] || return 1
        cid=$("${COMPOSE[@]}" ps -q bev 2> /dev/null) || true
        if [ -n "$cid" ]; then
            restarts=$("$DOCKER" inspect --format '{{.RestartCount}}' "$cid" 2> /dev/null) || restarts=0
            [ "$restarts" -lt 2 ] || return 1
        fi
        sleep 1
    done
    echo $((SECONDS - start))
}

check_service() {
    # The things a user of the compose demo meets first, beyond readiness. $1: base URL.
    local base=$1 health user
    health=$("$DOCKER" inspect --format '{{.State.Health.Status}}' "$("${COMPOSE[@]}" ps -q bev)")
    [ "$health" = healthy ] || die "bev container health is '$health', not healthy"
    user=$("${COMPOSE[@]}" exec -T bev id -u)
    [ "$user" != 0 ] || die "the service runs as root"
    # The cpu image serves on ONNX Runtime without torch (pyproject.toml's torch extra is not installed).
    ! "${COMPOSE[@]}" exec -T bev python -c "import torch" > /dev/null 2>&1 || die "torch is installed in the cpu image"
    python3 - "$base" "$ROOT/bev_service/shipped/default_rig.yaml" << 'EOF' || die "service checks (above)"
import json, re, sys, urllib.error, urllib.request

base, rig_path = sys.argv[1], sys.argv[2]


def call(path, data=None, method="GET", content_type=None):
    req = urllib.request.Request(base + path, data=data, method=method)
    if content_type:
        req.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")


failures = []
status, ready = call("/readyz")
if status != 200 or json.loads(ready).get("ready") is not True:
    failures.append(f"/readyz answered {status}: {ready[:200]!r}")
status, model = call("/v1/model")
if status != 200 or json.loads(model).get("backend") != "onnxruntime-cpu":
    failures.append(f"/v1/model answered {status}, not the onnxruntime-cpu backend: {model[:200]!r}")
status, page = call("/")
if status != 200 or "<html" not in page.lower():
    failures.append(f"viewer: GET / answered {status}: {page[:200]!r}")
status, rigs = call("/v1/rigs")
if status != 200 or "default" not in rigs:
    failures.append(f"GET /v1/rigs answered {status} without the default rig: {rigs[:200]!r}")
# A PUT writes <id>.yaml into the named volume as the non-root user: the volume must be writable.
text = re.sub(r"(?m)^rig_id: .*$", "rig_id: docker-test", open(rig_path).read())
status, body = call("/v1/rigs/docker-test", text.encode(), "PUT", "application/yaml")
if status not in (200, 201):
    failures.append(f"PUT /v1/rigs/docker-test answered {status}: {body[:200]!r}")
for failure in failures:
    print("  " + failure, file=sys.stderr)
sys.exit(1 if failures else 0)
EOF
    "${COMPOSE[@]}" exec -T bev test -f /app/rigs/docker-test.yaml || die "the PUT rig is not in the rigs volume"
    log "healthy, uid $user, no torch, onnxruntime-cpu backend, viewer page, /v1/rigs, rig PUT into the rigs volume: ok"
}

check_fleet() {
    # compose.ray.yaml: replicas on both nodes answer (X-Bev-Instance names the host), and a rig PUT through the
    # proxy is served by every replica and lies in the worker's view of the volume too. $1: base URL.
    local base=$1
    python3 - "$base" << 'EOF' || die "fleet checks (above)"
import sys, urllib.request

base = sys.argv[1]
hosts = {}
for _ in range(40):
    with urllib.request.urlopen(base + "/v1/rigs/docker-test", timeout=60) as reply:
        instance = reply.headers.get("X-Bev-Instance", "")
        host = instance.split("@")[-1].rsplit(":", 1)[0]
        hosts[host] = hosts.get(host, 0) + 1
if len(hosts) < 2:
    print(f"  40 GETs of the PUT rig were answered by {hosts}: expected replicas on both nodes", file=sys.stderr)
    sys.exit(1)
print(f"  the PUT rig served by replicas on {len(hosts)} nodes: {hosts}", file=sys.stderr)
EOF
    "${COMPOSE[@]}" exec -T ray-worker test -f /app/rigs/docker-test.yaml || die "the PUT rig is not in the worker's rigs volume"
    log "replicas on both nodes answer; the PUT rig is served by both and lies in the worker's volume: ok"
}

check_demo() {
    # Waits for the demo streamer, checks exit code 0 and received > 0 in its last line; prints that line.
    local cid code
    cid=$("${COMPOSE[@]}" ps -q demo)
    [ -n "$cid" ] || die "no demo container"
    code=$(timeout "$DEMO_TIMEOUT_S" "$DOCKER" wait "$cid") || die "demo still running after ${DEMO_TIMEOUT_S} s"
    "$DOCKER" logs "$cid" > "$WORK/demo.log" 2>&1
    log "demo output:"
    sed 's/^/    /' "$WORK/demo.log" >&2
    [ "$code" = 0 ] || die "demo exited with $code"
    python3 - "$WORK/demo.log" << 'EOF' || die "demo summary (above)"
import json, sys

lines = [line for line in open(sys.argv[1]).read().splitlines() if line.strip()]
assert lines, "the demo printed nothing"
summary = json.loads(lines[-1])
assert summary["received"] > 0, f"no grid came back: {summary}"
assert summary["errors"] == 0, f"errors: {summary}"
print(json.dumps(summary))
EOF
}

main() {
    [ "$(id -u)" = 0 ] || die "needs root (apt-get, dockerd)"
    # The image ships the package's networks (package data); the cpu variant serves the .onnx beside the model.
    local models=$ROOT/bev_service/shipped/models
    [ -f "$models/enet-pruned.onnx" ] || die "no $models/enet-pruned.onnx for the image to ship: make train"
    mkdir -p "$WORK"
    install_tools
    trap cleanup EXIT
    trap 'exit 130' INT TERM
    start_dockerd
    make_base_image
    stage_extras

    log "docker build $IMAGE (log: $WORK/build.log)"
    local t0=$SECONDS
    DOCKER_BUILDKIT=1 "$DOCKER" build --progress=plain --file "$ROOT/docker/Dockerfile" --tag "$IMAGE" \
        "${BUILD_ARGS[@]}" "$ROOT" > "$WORK/build.log" 2>&1 || {
        tail -n 40 "$WORK/build.log" >&2
        die "docker build"
    }
    local build_s=$((SECONDS - t0))
    rm -rf "$EXTRA"
    # Earlier builds' layers: keep the build cache to about one full set (the engine's data lives in build/).
    "$DOCKER" image prune --force > /dev/null
    "$DOCKER" builder prune --force --keep-storage 4GB > /dev/null
    local image_mb
    image_mb=$(($("$DOCKER" image inspect --format '{{.Size}}' "$IMAGE") / 1000000))
    log "built in ${build_s} s, ${image_mb} MB"

    local port
    port=$(free_port)
    export BEV_IMAGE=$IMAGE BEV_HOST_PORT=$port BEV_DEMO_FRAMES=$DEMO_FRAMES
    "${COMPOSE[@]}" config --quiet
    "${COMPOSE[@]}" down -v --remove-orphans > /dev/null 2>&1 || true
    log "compose up (viewer on http://127.0.0.1:$port)"
    COMPOSE_UP=1
    # Compose v1 holds `up` until bev is healthy (the demo depends on it), so it runs beside the /readyz poll.
    "${COMPOSE[@]}" up --detach --no-build "${SCALE[@]}" > "$WORK/compose-up.log" 2>&1 &
    UP_PID=$!
    local ready_s
    ready_s=$(wait_ready "http://127.0.0.1:$port/readyz" "$READY_TIMEOUT_S") || {
        "${COMPOSE[@]}" logs --no-color --tail 40 bev >&2
        die "/readyz not 200 within ${READY_TIMEOUT_S} s (or the service keeps restarting)"
    }
    log "/readyz 200 after ${ready_s} s"
    wait "$UP_PID" || {
        cat "$WORK/compose-up.log" >&2
        die "compose up"
    }
    UP_PID=
    # Both checks run (each in a subshell, where die ends only the check) so one run reports every failure.
    local summary="" failed=0
    summary=$(check_demo) || failed=1
    (check_service "http://127.0.0.1:$port") || failed=1
    [ "$VARIANT_NAME" != ray ] || (check_fleet "http://127.0.0.1:$port") || failed=1
    [ "$failed" = 0 ] || die "build ${build_s} s, compose up to /readyz ${ready_s} s; checks failed (above)"

    log "ok: build ${build_s} s, compose up to /readyz ${ready_s} s, image ${image_mb} MB"
    log "demo: $summary"
    printf '{"docker_test": "ok", "compose": "%s", "build_s": %d, "ready_s": %d, "image_mb": %d, "demo": %s}\n' \
        "$VARIANT_NAME" "$build_s" "$ready_s" "$image_mb" "$summary"
}

main "$@"
