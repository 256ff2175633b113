"""The label namespace: labels are the registry (static facts only; labels cannot change).

Every container `sandbox` creates carries ``sandbox.managed=1`` and ``sandbox.schema=SCHEMA``;
containers without them are never listed or touched.
"""

from __future__ import annotations

PREFIX = "sandbox."
SCHEMA = "2"  # 2: the agent has its own repository (AGENT_GIT); the host fetches from it

MANAGED = PREFIX + "managed"
SCHEMA_KEY = PREFIX + "schema"
NAME = PREFIX + "name"
AGENT = PREFIX + "agent"
MODEL = PREFIX + "model"
REPO = PREFIX + "repo"            # the main checkout's top-level directory
GITDIR = PREFIX + "gitdir"        # the repository's common git dir
BRANCH = PREFIX + "branch"
BASE = PREFIX + "base"            # the base commit (full sha)
WORKSPACE = PREFIX + "worktree"   # the agent's workspace (its working files) on the host (the label keeps
                                  # its first name: existing containers are found by it)
AGENT_GIT = PREFIX + "agent-git"  # the agent's own git dir on the host (never run git in it)
OBJECTS = PREFIX + "objects"      # "shared": it borrows the host's object store; "reachable": a pack of its own
IMAGE = PREFIX + "image"
PROFILE = PREFIX + "profile"
CREATED = PREFIX + "created"      # ISO 8601, UTC
VERSION = PREFIX + "version"      # the CLI version that created it
TASK = PREFIX + "task"            # a short summary of the task
SESSION = PREFIX + "session"      # the tmux session name inside the container
UID = PREFIX + "uid"              # the agent's uid (the container's own user is root: its supervisor)
GID = PREFIX + "gid"              # the agent's gid (absent on older containers: the uid's number)
STATE_DIR = PREFIX + "state-dir"  # host directory mounted at /run/sandbox-state
READER = PREFIX + "reader"        # on a throwaway container reading an agent's work (value: the agent)
RUN_ID = PREFIX + "run-id"        # optional: stamps everything a test run creates
RETRIES = PREFIX + "retries"      # restarts allowed after a non-zero exit (supervision)
MAX_TIME = PREFIX + "max-time"    # wall-clock limit in seconds ("" = none)
IDLE_TIMEOUT = PREFIX + "idle-timeout"  # idle limit in seconds ("" = none)
MAX_COST = PREFIX + "max-cost"    # budget in USD ("" = none): stopped, work kept, when the estimate passes it
DISK = PREFIX + "disk"            # bytes its workspace + git + state dir may use ("" = none): watched by the host
ALLOW = PREFIX + "allow"          # isolated profile: the egress allowlist, comma-separated
# On an isolated agent's proxies and internal network (never sandbox.managed: they are not agents)
PROXY_OF = PREFIX + "proxy-of"    # the agent's name
PROXY_ROLE = PREFIX + "proxy-role"  # "model", "egress" or "network"
# On a warm pool's containers (never sandbox.managed: not agents until claimed; the claim is on the host)
POOL = PREFIX + "pool"            # the pool's key (sandbox.pool)
POOL_SLOT = PREFIX + "pool-slot"  # the slot's id
BACKEND = PREFIX + "backend"      # "swarm": a Swarm service's task (absent: the local engine)
SWARM = "swarm"
SWARM_SERVICE = "com.docker.swarm.service.id"   # set by Swarm on a task's container
SWARM_NODE = "com.docker.swarm.node.id"
MODE = PREFIX + "mode"            # "headless": the image alone (no host workspace; work in the pushed branch)
REMOTE = PREFIX + "remote"        # headless: the repository it clones and pushes to (no credentials)
HEADLESS = "headless"
# On a plan's agents (`sandbox run plan.toml`, sandbox/plan.py): which plan, which task, which try
PLAN = PREFIX + "plan"                  # the plan's name
PLAN_TASK = PREFIX + "plan-task"        # the task's name in the plan
PLAN_ATTEMPT = PREFIX + "plan-attempt"  # 1, 2, …: a failed task is spawned again under a new name

# Set by Compose on the containers it starts: a headless replica's name is PROJECT-SERVICE-NUMBER
# (what Compose v2 names the container; v1 says PROJECT_SERVICE_NUMBER): the same label set on every
# replica cannot carry a name of its own.
COMPOSE_PROJECT = "com.docker.compose.project"
COMPOSE_SERVICE = "com.docker.compose.service"
COMPOSE_NUMBER = "com.docker.compose.container-number"

TASK_SUMMARY_MAX = 200


def managed_filter(*extra: str) -> list[str]:
    """Label filters for the engine's list call (``key`` or ``key=value``)."""
    return [f"{MANAGED}=1", *extra]


def matches(labels: dict[str, str], filters: list[str]) -> bool:
    """Do ``labels`` pass every ``key`` or ``key=value`` filter (the engine's own rule, done here)?"""
    for f in filters:
        key, eq, value = f.partition("=")
        if key not in labels or (eq and labels[key] != value):
            return False
    return True


def summarize(task: str, limit: int = TASK_SUMMARY_MAX) -> str:
    """One line, at most ``limit`` characters, for the task label and `ls`."""
    line = " ".join(task.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def name_of(labels: dict[str, str], container_name: str) -> str:
    """An agent's name: its ``sandbox.name`` label; for a Compose replica, PROJECT-SERVICE-NUMBER; else
    the container's name."""
    if labels.get(NAME):
        return labels[NAME]
    parts = [labels.get(k, "") for k in (COMPOSE_PROJECT, COMPOSE_SERVICE, COMPOSE_NUMBER)]
    if all(parts):
        return "-".join(parts)
    return container_name
