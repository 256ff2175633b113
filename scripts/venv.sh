#!/usr/bin/env bash
# The virtualenv (default .venv; or the directory given) with the package and its test dependencies
# at exactly the versions of constraints.txt. Reused as it is while it imports and constraints.txt
# and pyproject.toml are the ones it was installed from (their sha256 is kept in the venv);
# otherwise pip brings it to the pins.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '==> %s\n' "$*" >&2; }

VENV=${1:-.venv}
PY=${PYTHON:-python3}
if [ ! -x "$VENV/bin/python" ]; then
  say "creating $VENV"
  "$PY" -m venv "$VENV"
fi
# compat: the checkout on sys.path through a plain .pth line (the default editable finder costs every
# command a few ms of start-up)
MODE=editable_mode=compat
want=$( (cat constraints.txt pyproject.toml; echo "$MODE") | sha256sum | cut -d' ' -f1)
stamp="$VENV/.sandbox-constraints.sha256"
# -I: not the current directory's sandbox/, the installed one
if [ "$(cat "$stamp" 2>/dev/null || true)" = "$want" ] \
   && "$VENV/bin/python" -I -c "import sandbox, docker, typer, tenacity, pydantic_settings, libtmux, pytest" 2>/dev/null; then
  exit 0
fi
say "installing the package and its test dependencies into $VENV (constraints.txt)"
rm -f "$stamp"
"$VENV/bin/python" -m pip install -q -c constraints.txt --upgrade pip >/dev/null
"$VENV/bin/python" -m pip install -q -c constraints.txt --config-settings "$MODE" -e '.[test]'
echo "$want" >"$stamp"
