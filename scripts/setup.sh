#!/usr/bin/env bash
# Set up everything `sandbox` needs on a fresh Debian/Ubuntu machine, reusing what exists:
# system packages (tmux, git, debootstrap, acl), a virtualenv with the package (pinned by
# constraints.txt, see scripts/venv.sh), and the base
# and agent images (built offline from Debian's packages; nothing is pulled from a registry).
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '==> %s\n' "$*" >&2; }

need_pkgs=()
for cmd_pkg in tmux:tmux git:git debootstrap:debootstrap setfacl:acl docker:docker.io; do
  cmd=${cmd_pkg%%:*}; pkg=${cmd_pkg##*:}
  command -v "$cmd" >/dev/null 2>&1 || [ -x "/usr/sbin/$cmd" ] || need_pkgs+=("$pkg")
done
# Compose (compose.yaml and its test): v2's `docker compose`, else v1's `docker-compose` from Debian.
if ! docker compose version >/dev/null 2>&1 && ! command -v docker-compose >/dev/null 2>&1; then
  need_pkgs+=(docker-compose)
fi
if [ ${#need_pkgs[@]} -gt 0 ]; then
  say "installing system packages: ${need_pkgs[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
fi
docker info >/dev/null 2>&1 || { echo "the Docker engine is not reachable (is it running? are you in the docker group?)" >&2; exit 1; }

scripts/venv.sh .venv  # the package and its dependencies at the versions of constraints.txt
# The checkout's modules compiled now (even where PYTHONDONTWRITEBYTECODE is set): every command starts
# from bytecode (~30 ms a command otherwise); quick when nothing changed.
.venv/bin/python -m compileall -q sandbox >/dev/null || true

say "building the agent image (reused when up to date)"
.venv/bin/sandbox image build --offline --proxy
