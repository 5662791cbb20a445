#!/usr/bin/env bash
# Stage the torch / torchvision wheels pinned in pyproject.toml (with the CUDA wheels they pull
# in, ~3 GB) into .docker-wheels/, which scripts/ci/build-images.sh serves to the Docker build.
# Why: the host's pip already has them (a local wheel index on CI machines), so each image
# build does not download them again. Also stages the host's CA bundle as pip's PIP_CERT.
# Usage: scripts/ci/stage-wheels.sh [python]   (default .venv/bin/python)
set -euo pipefail
cd "$(dirname "$0")/../.."
PY="${1:-.venv/bin/python}"
DEST=.docker-wheels
mkdir -p "$DEST"
mapfile -t pins < <("$PY" - <<'PY'
import re
import tomllib

project = tomllib.load(open("pyproject.toml", "rb"))["project"]
reqs = project["dependencies"] + [r for rs in project["optional-dependencies"].values() for r in rs]
for req in reqs:
    if re.match(r"^(torch|torchvision)\s*==", req):
        print(req.replace(" ", ""))
PY
)
[ ${#pins[@]} -ge 1 ] || { echo "stage-wheels: no torch pin found in pyproject.toml" >&2; exit 1; }
echo "stage-wheels: ${pins[*]} -> $DEST/"
"$PY" -m pip download --quiet --only-binary=:all: --dest "$DEST" "${pins[@]}" \
  2> >(grep -v "is neither a file nor a directory" >&2)
# The CA bundle pip trusts on this host (pip config `cert` or PIP_CERT), for pip inside the build.
cert="${PIP_CERT:-$("$PY" -m pip config get global.cert 2>/dev/null || true)}"
cert="${cert:-/etc/ssl/certs/ca-certificates.crt}"
if [ -f "$cert" ]; then cp "$cert" "$DEST/host-ca.crt"; fi
du -sh "$DEST" | awk '{print "stage-wheels: " $1 " staged"}'
