"""What crosses the boundary between the host and the agent's container (standard library only;
imported by the host's modules and by ``sandbox.inside``).

The agent's git lives in the container's side of the boundary: its own repository (``AGENT_GIT``,
a directory the host creates once and never runs git in again) whose objects borrow the host
repository's object store through a read-only mount (alternates). The host reads the agent's work
only as a pack that ``EXPORT`` produces inside a container and the host's own ``git fetch``
verifies (``index-pack``); the refs it advertises are ``EXPORT_HEAD`` (the agent's HEAD commit)
and ``EXPORT_WIP`` (a commit of the whole workspace, uncommitted and untracked files included).
"""

from __future__ import annotations

LAUNCH_DIR = "/var/lib/sandbox"          # launch.json, secrets.json (copied in before start)
STATE_MOUNT = "/run/sandbox-state"       # the per-agent state dir (host: data_dir/state/NAME)
AGENT_GIT = "/var/lib/sandbox-git"       # the agent's own git dir (host: data_dir/agent-git/SLUG/NAME)
GITFILE = "gitdir: " + AGENT_GIT + "\n"  # the workspace's .git file (mounted read-only over it)

EXPORT = ["python3", "-m", "sandbox.inside", "export"]
EXPORT_HEAD = "refs/heads/head"
EXPORT_WIP = "refs/heads/wip"
