#!/usr/bin/env bash
# Build the offline base image for the agent image, with no registry:
#   debootstrap a minimal Debian bookworm (tmux, git, tini, python3, ...) and `docker import` it.
#
# usage: images/base/build.sh [--force] [--packages P1,P2] [--title T] [--entrypoint JSON] [--cmd JSON] [IMAGE_REF]
#   (default IMAGE_REF: sandbox-base:bookworm; the options make other images the same way: images/proxy/build.sh)
# Reuses IMAGE_REF when the engine already has it (unless --force). Needs root and debootstrap.
# Environment: SANDBOX_DEBIAN_MIRROR (default http://deb.debian.org/debian).
set -euo pipefail

SUITE=bookworm
PACKAGES=tmux,git,tini,ca-certificates,procps,python3,less
TITLE=sandbox-base
ENTRYPOINT_JSON=
CMD_JSON='["/bin/bash"]'
MIRROR=${SANDBOX_DEBIAN_MIRROR:-http://deb.debian.org/debian}
PATH_ENV=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

log() { printf '==> %s\n' "$*"; }
die() {
  printf 'build.sh: error: %s\n' "$*" >&2
  exit 1
}
usage() { sed -n '2,8s/^# \{0,1\}//p' "$0"; }

FORCE=0
IMAGE_REF=
while [[ $# -gt 0 ]]; do
  arg=$1
  shift
  case $arg in
    --force) FORCE=1 ;;
    --packages | --title | --entrypoint | --cmd)
      [[ $# -gt 0 ]] || die "$arg needs a value"
      case $arg in
        --packages) PACKAGES=$1 ;;
        --title) TITLE=$1 ;;
        --entrypoint) ENTRYPOINT_JSON=$1 ;;
        --cmd) CMD_JSON=$1 ;;
      esac
      shift
      ;;
    -h | --help) usage; exit 0 ;;
    -*) die "unknown option: $arg (usage: build.sh [--force] [--packages P1,P2] [--title T] [--entrypoint JSON] [--cmd JSON] [IMAGE_REF])" ;;
    *)
      [[ -z $IMAGE_REF ]] || die "only one IMAGE_REF may be given"
      IMAGE_REF=$arg
      ;;
  esac
done
[[ $TITLE =~ ^[a-z0-9][a-z0-9._-]*$ ]] || die "--title must be an image name (lower case, digits, . _ -): $TITLE"
IMAGE_REF=${IMAGE_REF:-$TITLE:bookworm}
[[ $PACKAGES =~ ^[a-z0-9][a-z0-9.+-]*(,[a-z0-9][a-z0-9.+-]*)*$ ]] || die "--packages must be Debian package names separated by commas: $PACKAGES"

command -v docker >/dev/null 2>&1 || die "the docker CLI is not installed (apt package: docker.io)"

if [[ $FORCE -eq 0 ]] && docker image inspect "$IMAGE_REF" >/dev/null 2>&1; then
  log "reusing $IMAGE_REF: the engine already has it (--force rebuilds it)"
  exit 0
fi

[[ $(id -u) -eq 0 ]] || die "building the base image needs root (debootstrap creates device nodes and chroots); run it as root, e.g. sudo $0 $IMAGE_REF"
command -v debootstrap >/dev/null 2>&1 || die "debootstrap is not installed (apt package: debootstrap; apt-get install debootstrap)"
docker info >/dev/null 2>&1 || die "cannot reach the Docker engine (is dockerd running? try: docker info)"

WORK=$(mktemp -d "/var/tmp/$TITLE.XXXXXX")
ROOTFS=$WORK/rootfs

cleanup() {
  # An interrupted debootstrap can leave proc/sys mounted inside the rootfs: never rm through a mount.
  local mnt
  if [[ -n ${WORK:-} && -d $WORK ]]; then
    for mnt in $(awk -v p="$WORK/" 'index($2, p) == 1 { print $2 }' /proc/mounts | sort -r); do
      umount -l "$mnt" 2>/dev/null || true
    done
    rm -rf --one-file-system "$WORK"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

start=$SECONDS
log "debootstrap $SUITE (minbase + ${PACKAGES//,/ }) from $MIRROR into $ROOTFS (takes about 45 s)"
# debootstrap prints one line per package and step ("I: Extracting bash...", ~300 lines): noise here.
# Its phase lines still show, and the tail of its own log is printed on failure.
if ! debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$ROOTFS" "$MIRROR" 2>&1 |
  { grep --line-buffered -vE '^I: (Retrieving|Validating|Extracting|Unpacking|Configuring) [a-z0-9][a-z0-9.+-]*(:[a-z0-9]+)?( [0-9][^ ]*|\.\.\.)$' || true; }; then
  if [[ -f $ROOTFS/debootstrap/debootstrap.log ]]; then
    printf '%s\n' '--- last lines of debootstrap.log ---' >&2
    tail -n 25 "$ROOTFS/debootstrap/debootstrap.log" >&2
  fi
  die "debootstrap failed (is $MIRROR reachable? set SANDBOX_DEBIAN_MIRROR to use another mirror)"
fi
log "debootstrap done in $((SECONDS - start)) s"

log "trimming the root filesystem (apt caches and lists, man pages, translations, host files)"
rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/cache/apt/*.bin \
  "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/log/bootstrap.log \
  "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/info/*
find "$ROOTFS/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} +
# Later `apt-get install`s in derived images keep the same diet (as debian:*-slim does).
cat >"$ROOTFS/etc/dpkg/dpkg.cfg.d/sandbox-slim" <<'EOF'
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
EOF
cat >"$ROOTFS/etc/apt/sources.list" <<EOF
deb http://deb.debian.org/debian $SUITE main
deb http://deb.debian.org/debian $SUITE-updates main
deb http://deb.debian.org/debian-security $SUITE-security main
EOF
# debootstrap copies these from the host; the engine provides its own at run time.
: >"$ROOTFS/etc/hostname"
: >"$ROOTFS/etc/resolv.conf"

start=$SECONDS
log "importing the root filesystem into the engine as $IMAGE_REF"
CHANGES=(--change "ENV PATH=$PATH_ENV" --change "CMD $CMD_JSON")
[[ -z $ENTRYPOINT_JSON ]] || CHANGES+=(--change "ENTRYPOINT $ENTRYPOINT_JSON")
tar --numeric-owner -C "$ROOTFS" -c . |
  docker import \
    "${CHANGES[@]}" \
    --change "LABEL org.opencontainers.image.title=$TITLE" \
    --change "LABEL org.opencontainers.image.description=\"debootstrap $SUITE minbase + ${PACKAGES//,/ }\"" \
    --message "$TITLE: debootstrap $SUITE minbase + $PACKAGES" \
    - "$IMAGE_REF" >/dev/null
log "imported $IMAGE_REF ($(docker image inspect --format '{{.Id}}' "$IMAGE_REF")) in $((SECONDS - start)) s"
