#!/usr/bin/env bash
# Build the offline proxy image for the isolated profile, with no registry:
#   debootstrap a minimal Debian bookworm with nginx-light (the model proxy: injects the real API key)
#   and squid (the allowlist forward proxy for HTTP and CONNECT) and `docker import` it.
#   The same root filesystem recipe as the base image: images/base/build.sh with other packages.
#
# usage: images/proxy/build.sh [--force] [IMAGE_REF]      (default IMAGE_REF: sandbox-proxy:bookworm)
#
# Reuses IMAGE_REF when the engine already has it (unless --force). Needs root and debootstrap.
# The configuration is not in the image: sandbox/proxy.py writes it and copies it into each proxy
# container before it starts (the model proxy's holds the key). Nothing here listens by default.
# Environment: SANDBOX_DEBIAN_MIRROR (default http://deb.debian.org/debian).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
FORCE=()
IMAGE_REF=
for arg in "$@"; do
  case $arg in
    --force) FORCE=(--force) ;;
    -h | --help) sed -n '2,11s/^# \{0,1\}//p' "$0"; exit 0 ;;
    -*) printf 'build.sh: error: unknown option: %s (usage: build.sh [--force] [IMAGE_REF])\n' "$arg" >&2; exit 1 ;;
    *)
      [[ -z $IMAGE_REF ]] || { printf 'build.sh: error: only one IMAGE_REF may be given\n' >&2; exit 1; }
      IMAGE_REF=$arg
      ;;
  esac
done

exec bash "$HERE/../base/build.sh" "${FORCE[@]}" \
  --title sandbox-proxy \
  --packages nginx-light,squid,ca-certificates,tini \
  --entrypoint '["/usr/bin/tini", "--"]' \
  --cmd '["nginx", "-v"]' \
  "${IMAGE_REF:-sandbox-proxy:bookworm}"
