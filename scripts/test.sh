#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the whole test suite against the real engine, git, tmux and
# the real Claude Code binary (driven by the bundled scripted model server). Extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/python -m pytest "$@"
