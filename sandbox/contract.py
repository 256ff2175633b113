"""What crosses the boundary between the host and the agent's container (standard library only;
imported by the host's modules and by ``sandbox.inside``).

The agent's git lives in the container's side of the boundary: its own repository (``AGENT_GIT``,
a directory the host creates once and never runs git in again) whose objects borrow the host
repository's object store through a read-only mount (alternates). The host reads the agent's work
only as a pack that ``EXPORT`` produces inside a container and the host's own ``git fetch``
verifies (``index-pack``); the refs it advertises are ``EXPORT_HEAD`` (the agent's HEAD commit)
and ``EXPORT_WIP`` (a commit of the whole workspace, uncommitted and untracked files included).
``CommandResult`` is what running a command gives, on either side.
"""

from __future__ import annotations

from collections import namedtuple

LAUNCH_DIR = "/var/lib/sandbox"          # launch.json, secrets.json (copied in before start)
STATE_MOUNT = "/run/sandbox-state"       # the per-agent state dir (host: data_dir/state/NAME)
AGENT_GIT = "/var/lib/sandbox-git"       # the agent's own git dir (host: data_dir/agent-git/SLUG/NAME)
GITFILE = "gitdir: " + AGENT_GIT + "\n"  # the workspace's .git file (mounted read-only over it)

EXPORT = ["python3", "-m", "sandbox.inside", "export"]
EXPORT_HEAD = "refs/heads/head"
EXPORT_WIP = "refs/heads/wip"


class CommandResult(namedtuple("CommandResult", "exit_code stdout stderr")):
    """What a finished command gave — on the host (``docker exec``, a local tmux) and inside the
    container (``sandbox.inside``'s tmux calls) alike: its exit code and its raw output.
    (A named tuple, not a dataclass: ``dataclasses`` would cost the resident init ~1 MiB.)"""

    __slots__ = ()
    exit_code: int
    stdout: bytes
    stderr: bytes

    @property
    def text(self) -> str:
        """``stdout`` decoded (UTF-8, undecodable bytes replaced)."""
        return self.stdout.decode("utf-8", "replace")
