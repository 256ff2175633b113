#!/usr/bin/env bash
# Set up everything `sandbox` needs on a fresh Debian/Ubuntu machine, reusing what exists:
# system packages (tmux, git, debootstrap, acl), a virtualenv with the package, and the base
# and agent images (built offline from Debian's packages; nothing is pulled from a registry).
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '==> %s\n' "$*" >&2; }

need_pkgs=()
for cmd_pkg in tmux:tmux git:git debootstrap:debootstrap setfacl:acl docker:docker.io; do
  cmd=${cmd_pkg%%:*}; pkg=${cmd_pkg##*:}
  command -v "$cmd" >/dev/null 2>&1 || [ -x "/usr/sbin/$cmd" ] || need_pkgs+=("$pkg")
done
if [ ${#need_pkgs[@]} -gt 0 ]; then
  say "installing system packages: ${need_pkgs[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
fi
docker info >/dev/null 2>&1 || { echo "the Docker engine is not reachable (is it running? are you in the docker group?)" >&2; exit 1; }

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  say "creating .venv"
  "$PY" -m venv .venv
fi
if ! .venv/bin/python -c "import sandbox, docker, typer, tenacity, pydantic_settings, libtmux, pytest" 2>/dev/null; then
  say "installing the package and its test dependencies into .venv"
  .venv/bin/pip install -q --upgrade pip >/dev/null
  .venv/bin/pip install -q -e '.[test]'
fi

say "building the agent image (reused when up to date)"
.venv/bin/sandbox image build --offline
