#!/usr/bin/env bash
# CI stage: build the course image and test it as a learner would use it.
#   bash docker/test_image.sh
# 1. a Docker daemon (started here if none runs; docker.io installed if missing: root only)
# 2. the base image: docker/Dockerfile's default if it can be pulled, else a local Debian one
#    made with debootstrap (kept between runs as qvl-local-base:bookworm)
# 3. the image, built with that base (layers cached between runs on the same machine)
# 4. inside it, as the non-root user: `qvl env`, then every notebook under nbmake (tiny model)
# 5. the JupyterLab service on 127.0.0.1 only: refused without the token, served with it;
#    a container without JUPYTER_TOKEN prints a generated one and requires it
# Prints each step's time and the image size; removes the containers it started.
# A learner never needs this: scripts/test.sh does not use Docker.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/stage.sh
IMAGE="${QVL_TEST_IMAGE:-qvl-course:test}"
LOCAL_BASE=qvl-local-base:bookworm
PORT="${QVL_TEST_PORT:-18888}"
work="$(mktemp -d)"
containers=()
cleanup() {
    for c in "${containers[@]}"; do docker rm -f "$c" > /dev/null 2>&1 || true; done
    [ -z "${mirror_pid:-}" ] || kill "$mirror_pid" 2> /dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
start=$SECONDS

ensure_docker() {
    if docker info > /dev/null 2>&1; then return; fi
    if ! command -v dockerd > /dev/null; then
        [ "$(id -u)" = 0 ] || { echo "error: no Docker daemon, and installing one needs root." >&2; exit 2; }
        DEBIAN_FRONTEND=noninteractive apt-get -o Acquire::Retries=5 install -y -qq docker.io > "$work/apt.log" 2>&1 \
            || { echo "error: installing docker.io failed:" >&2; tail -20 "$work/apt.log" >&2; exit 2; }
    fi
    # No bridge or iptables: this stage builds and runs with --network host.
    nohup dockerd --iptables=false --bridge=none > /var/log/qvl-dockerd.log 2>&1 &
    for _ in $(seq 60); do docker info > /dev/null 2>&1 && return; sleep 1; done
    echo "error: dockerd did not start; see /var/log/qvl-dockerd.log" >&2; exit 2
}

# The Dockerfile's default base if the registry answers; otherwise a Debian bookworm base
# (python3 3.11 like CI) with this machine's CA bundle and pip settings, so that pip inside
# reaches the same package registry as here.
choose_base() {
    local default
    default="$(sed -n 's/^ARG BASE=//p' docker/Dockerfile)"
    if docker image inspect "$default" > /dev/null 2>&1 \
        || timeout 120 docker pull -q "$default" > /dev/null 2>&1; then
        base="$default"; return
    fi
    base="$LOCAL_BASE"
    if docker image inspect "$LOCAL_BASE" > /dev/null 2>&1; then return; fi
    if ! command -v debootstrap > /dev/null; then
        DEBIAN_FRONTEND=noninteractive apt-get -o Acquire::Retries=5 install -y -qq debootstrap > "$work/apt.log" 2>&1 \
            || { echo "error: installing debootstrap failed:" >&2; tail -20 "$work/apt.log" >&2; exit 2; }
    fi
    local root="$work/rootfs"
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
        bookworm "$root" http://deb.debian.org/debian > "$work/debootstrap.log" \
        || { tail -20 "$work/debootstrap.log" >&2; exit 2; }
    cp /etc/ssl/certs/ca-certificates.crt "$root/usr/local/share/ca-certificates/host.crt"
    cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
    printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' > "$root/etc/pip.conf"
    if [ -f /etc/apt/sources.list.d/debian.sources ]; then  # this machine's mirrors, with updates
        cp /etc/apt/sources.list.d/debian.sources "$root/etc/apt/sources.list.d/"
        rm -f "$root/etc/apt/sources.list"
    fi
    rm -rf "$root"/var/cache/apt/archives/*.deb
    tar -C "$root" -c . | docker import - "$LOCAL_BASE" > /dev/null
}

# Where this machine's pip has local mirrors (file:// indexes, as on the course's CI machines),
# serve them to the build on loopback so that PyTorch's 5 GB come from disk, not the network.
serve_local_mirror() {
    mirror_args=()
    local dirs=() url top urls=""
    for url in $(pip config get global.extra-index-url 2> /dev/null || true); do
        [[ "$url" == file://* ]] && [ -d "${url#file://}" ] && dirs+=("${url#file://}")
    done
    [ "${#dirs[@]}" -gt 0 ] || return 0
    top="$(python3 -c 'import os, sys; print(os.path.commonpath([os.path.dirname(d.rstrip("/")) for d in sys.argv[1:]]))' "${dirs[@]}")"
    python3 -m http.server --bind 127.0.0.1 18899 --directory "$top" > "$work/mirror.log" 2>&1 &
    mirror_pid=$!
    for url in "${dirs[@]}"; do urls+="http://127.0.0.1:18899/${url#"$top"/} "; done
    mirror_args=(--build-arg "PIP_EXTRA_INDEX_URL=${urls% }")
    echo "using the local package mirrors under $top: ${urls% }"
}

build() {
    DOCKER_BUILDKIT=0 docker build --network host --force-rm -q -f docker/Dockerfile -t "$IMAGE" \
        --build-arg "BASE=$base" "${mirror_args[@]}" . > "$work/build.log" 2>&1 \
        || { tail -40 "$work/build.log" >&2; exit 1; }
    echo "image $IMAGE: $(docker image inspect -f '{{.Size}}' "$IMAGE" | awk '{printf "%.2f GB", $1/1e9}')"
}

in_container() {
    # As the image's own user (never root), with the tiny model, nothing from the host mounted.
    docker run --rm --network host -e QVL_MODEL=tiny -e HF_HUB_OFFLINE=1 "$IMAGE" "$@"
}

check_notebooks() {
    in_container bash -c 'test "$(id -u)" != 0 || { echo "runs as root" >&2; exit 1; }
        qvl env
        python -m pytest -q --nbmake --nbmake-timeout=2400 notebooks -p tests.nbpoll --durations=0'
}

http_code() { curl -s -o /dev/null -w '%{http_code}' "$@"; }

wait_for_lab() {
    for _ in $(seq 90); do
        [ "$(http_code "http://127.0.0.1:$PORT/api")" = 200 ] && return
        sleep 1
    done
    docker logs "$1" | tail -20 >&2
    echo "error: JupyterLab did not answer on 127.0.0.1:$PORT" >&2; exit 1
}

check_service() {
    local token c listeners
    token="$(python3 -c 'import secrets; print(secrets.token_urlsafe(24))')"
    c="$(docker run -d --network host -e JUPYTER_TOKEN="$token" -e QVL_LAB_IP=127.0.0.1 \
        -e QVL_LAB_PORT="$PORT" "$IMAGE")"
    containers+=("$c")
    wait_for_lab "$c"
    listeners="$(ss -ltnH "sport = :$PORT" | awk '{print $4}' | sort -u)"
    [ "$listeners" = "127.0.0.1:$PORT" ] || { echo "error: listens on: $listeners" >&2; exit 1; }
    local no_token with_token wrong
    no_token="$(http_code "http://127.0.0.1:$PORT/api/contents/notebooks")"
    wrong="$(http_code -H "Authorization: token not-$token" "http://127.0.0.1:$PORT/api/contents/notebooks")"
    with_token="$(http_code -H "Authorization: token $token" "http://127.0.0.1:$PORT/api/contents/notebooks")"
    echo "notebook list without token: $no_token, wrong token: $wrong, with token: $with_token"
    [ "$no_token" = 403 ] && [ "$wrong" = 403 ] && [ "$with_token" = 200 ] || exit 1
    # The log is read whole before it is searched: under pipefail, `docker logs | grep -q` fails
    # with 141 (SIGPIPE) when grep quits at its first match, and the if would read a leak as none.
    local log
    log="$(docker logs "$c" 2>&1)"
    if grep -qF -- "$token" <<< "$log"; then
        echo "error: the token given in JUPYTER_TOKEN appears in the log" >&2; exit 1
    fi
    docker rm -f "$c" > /dev/null
    # Without JUPYTER_TOKEN: a generated token, printed once, and required.
    c="$(docker run -d --network host -e QVL_LAB_IP=127.0.0.1 -e QVL_LAB_PORT="$PORT" "$IMAGE")"
    containers+=("$c")
    wait_for_lab "$c"
    log="$(docker logs "$c" 2>&1)"  # whole, then searched (see above)
    token="$(sed -n '/token (shown once/{n;s/^ *//;p;q}' <<< "$log")"
    [ -n "$token" ] || { echo "error: no generated token in the log" >&2; exit 1; }
    [ "$(http_code "http://127.0.0.1:$PORT/api/contents/notebooks")" = 403 ] || exit 1
    [ "$(http_code -H "Authorization: token $token" "http://127.0.0.1:$PORT/api/contents/notebooks")" = 200 ] || exit 1
    echo "generated token printed once and required"
    local health
    for _ in $(seq 60); do  # the first check runs 15 s after the start
        health="$(docker inspect -f '{{.State.Health.Status}}' "$c")"
        [ "$health" = starting ] || break
        sleep 2
    done
    echo "health check: $health"
    [ "$health" = healthy ] || exit 1
}

stage "docker daemon" ensure_docker
stage "base image" choose_base
echo "base: $base"
serve_local_mirror
stage "build" build
stage "qvl env and notebooks in the container" check_notebooks
stage "JupyterLab service" check_service
echo "== image test passed in $((SECONDS - start)) s"
