#!/usr/bin/env bash
# Build the serving and the pipeline image (Dockerfile targets) one after the other, and report
# each build's time and image size. CI builds FROM the debootstrap base (scripts/ci/debian-base.sh)
# with the torch wheels staged in .docker-wheels/ (scripts/ci/stage-wheels.sh).
#   BASE_IMAGE=mnist-mlops-base:bookworm IMAGE_TAG=ci scripts/ci/build-images.sh [serving|pipeline]...
set -euo pipefail
cd "$(dirname "$0")/../.."
BASE_IMAGE="${BASE_IMAGE:-mnist-mlops-base:bookworm}"
IMAGE_TAG="${IMAGE_TAG:-ci}"
LOG_DIR="${LOG_DIR:-$(mktemp -d /tmp/mnist-images.XXXXXX)}"
mkdir -p "$LOG_DIR"
# Staged wheels (scripts/ci/stage-wheels.sh) are served to the build over HTTP on a fixed
# localhost port (the URL is a build argument: a fixed one keeps the layer cache).
WHEELS_PORT="${WHEELS_PORT:-37651}"
build_args=(--build-arg "BASE_IMAGE=$BASE_IMAGE")
SERVER_PID=""
trap '[ -z "$SERVER_PID" ] || kill "$SERVER_PID" 2>/dev/null || true' EXIT
if compgen -G ".docker-wheels/torch-*.whl" >/dev/null; then
  python3 -m http.server --bind 127.0.0.1 --directory .docker-wheels "$WHEELS_PORT" \
    >"$LOG_DIR/wheel-server.log" 2>&1 &
  SERVER_PID=$!
  for _ in $(seq 20); do
    python3 -c "import urllib.request as u; u.urlopen('http://127.0.0.1:$WHEELS_PORT/', timeout=1)" \
      2>/dev/null && break
    kill -0 "$SERVER_PID" 2>/dev/null || { cat "$LOG_DIR/wheel-server.log" >&2; exit 1; }
    sleep 0.5
  done
  build_args+=(--build-arg "TORCH_FIND_LINKS=http://127.0.0.1:$WHEELS_PORT/")
  echo "build-images: torch wheels from .docker-wheels/ (http://127.0.0.1:$WHEELS_PORT/)"
fi
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(serving pipeline)
for target in "${targets[@]}"; do
  image="mnist-mlops-$target:$IMAGE_TAG"
  log="$LOG_DIR/build-$target.log"
  echo "build-images: building $image from $BASE_IMAGE (log: $log)"
  start=$(date +%s)
  if ! docker build --network host "${build_args[@]}" --target "$target" --tag "$image" . \
      >"$log" 2>&1; then
    tail -n 40 "$log" >&2
    echo "build-images: building $image failed (full log: $log)" >&2
    exit 1
  fi
  # the image this tag pointed at before is now dangling: 6-8 GB each, so drop it at once
  docker image prune --force >/dev/null
  size=$(docker image inspect --format '{{.Size}}' "$image")
  echo "build-images: $image built in $(( $(date +%s) - start )) s, $(( size / 1000000 )) MB"
done
