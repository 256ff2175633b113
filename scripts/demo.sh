#!/usr/bin/env bash
# Set up, then run the main job: spawn a real Claude Code agent on a task in a throwaway demo
# repository (or in REPO=/path/to/your/repo). With no ANTHROPIC_API_KEY set, the agent talks to the
# scripted model bundled with sandbox, offline, so the whole flow runs without spending tokens.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
S=.venv/bin/sandbox
REPO=${REPO:-}
if [ -z "$REPO" ]; then
  REPO=$(mktemp -d /tmp/sandbox-demo.XXXXXX)/repo
  mkdir -p "$REPO" && git -C "$REPO" init -q -b main
  echo "# demo" > "$REPO/README.md"
  git -C "$REPO" add README.md
  git -C "$REPO" -c user.name=demo -c user.email=demo@example.invalid commit -q -m "initial"
fi
TASK=${TASK:-add login rate limiting}
name=$("$S" spawn --repo "$REPO" --model sonnet "$TASK")
echo "spawned $name in $REPO"
for _ in $(seq 1 60); do
  state=$("$S" ls --repo "$REPO" --json | .venv/bin/python -c "import json,sys; print(next(a['state'] for a in json.load(sys.stdin) if a['name']=='$name'))")
  git -C "$REPO" log --oneline "sandbox/$name" | grep -q 'sandbox:' && [ "$state" = idle ] && break
  sleep 1
done
"$S" ls --repo "$REPO"
echo; echo "--- the agent's pane ---"; "$S" logs "$name" | sed 's/[[:space:]]*$//' | sed '/^$/d' | tail -20
echo; echo "--- commits on sandbox/$name ---"; git -C "$REPO" log --oneline "sandbox/$name"
echo
echo "attach:  $S attach $name     (or: docker exec -it sandbox-$name tmux attach -t $name)"
echo "see:     $S diff $name     merge: $S merge $name"
echo "remove:  $S rm $name   (refuses while its commits are neither merged nor pushed; --force backs them up first)"
