#!/usr/bin/env bash
# Build a Debian bookworm base image from Debian's own packages (debootstrap --variant=minbase)
# and import it into Docker as $BASE_IMAGE. Why: CI machines cannot pull public images
# (python:3.11-slim-bookworm), but they reach the Debian mirror that the host's apt uses.
# Skips the work when the image already exists (it is the slow step: about 3 minutes).
set -euo pipefail
BASE_IMAGE="${BASE_IMAGE:-mnist-mlops-base:bookworm}"
if docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
  echo "debian-base: $BASE_IMAGE already exists; skipping debootstrap"
  exit 0
fi
command -v debootstrap >/dev/null 2>&1 || { echo "debian-base: debootstrap is not installed" >&2; exit 1; }
# The mirror the host's apt uses (deb822 or one-line sources), else Debian's default.
MIRROR="${DEBIAN_MIRROR:-}"
if [ -z "$MIRROR" ]; then
  MIRROR="$(grep -hoE '^URIs: *http[^ ]+' /etc/apt/sources.list.d/*.sources 2>/dev/null \
    | grep -v security | head -n1 | sed -E 's/^URIs: *//' || true)"
fi
if [ -z "$MIRROR" ]; then
  MIRROR="$(grep -hoE '^deb +(\[[^]]*\] +)?http[^ ]+' /etc/apt/sources.list 2>/dev/null \
    | grep -v security | head -n1 | awk '{print $NF}' || true)"
fi
MIRROR="${MIRROR:-http://deb.debian.org/debian}"
ROOTFS="$(mktemp -d /tmp/mnist-base.XXXXXX)"
trap 'rm -rf "$ROOTFS"' EXIT
echo "debian-base: debootstrap bookworm from $MIRROR into $ROOTFS"
debootstrap --variant=minbase bookworm "$ROOTFS" "$MIRROR" >"$ROOTFS.log" 2>&1 || {
  tail -n 30 "$ROOTFS.log" >&2; echo "debian-base: debootstrap failed" >&2; exit 1; }
rm -f "$ROOTFS.log"
# Keep the image lean and apt pointing at the same mirror inside builds.
rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/*
echo "deb $MIRROR bookworm main" >"$ROOTFS/etc/apt/sources.list"
tar -C "$ROOTFS" -c . | docker import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'CMD ["bash"]' - "$BASE_IMAGE" >/dev/null
echo "debian-base: imported $BASE_IMAGE"
