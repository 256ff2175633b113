"""``sandbox rebase NAME``: the agent's branch onto the current base, inside its container.

The host decides from its own refs (after the usual verified sync): which commit is the new base, whether
the agent is between turns and its workspace clean, whether there is anything to do. The rebase itself
runs in the agent's container, as the agent, in its own repository — git there sees the new base through
the shared object store (``objects = "shared"``, read-only). On a conflict it is aborted there (the agent's
branch and files as they were) and the agent is sent the conflicted files as a prompt; its work is never
touched otherwise. What the container's git prints is the agent's: defanged, capped, never obeyed.
"""

from __future__ import annotations

from dataclasses import dataclass

from sandbox import contract
from sandbox.errors import AgentError, Conflict, NotFound, UsageError
from sandbox.manager import Sandbox, SandboxManager
from sandbox.terminal import defang
from sandbox.workspace import git as gitops
from sandbox.workspace import work

# Git in the container, for the host's calls: by absolute path, no hooks, no fsmonitor, no editor, no prompt,
# neither the image's system file nor the agent's global one (its repository's config is its own business:
# it only acts on the agent's own repository, and what it prints is data).
GIT = ["/usr/bin/env", "GIT_EDITOR=true", "GIT_SEQUENCE_EDITOR=true", "GIT_TERMINAL_PROMPT=0",
       "GIT_CONFIG_NOSYSTEM=1", "GIT_CONFIG_GLOBAL=/dev/null", "GIT_OPTIONAL_LOCKS=0", contract.GIT,
       "-c", "core.hooksPath=/dev/null", "-c", "core.fsmonitor=false", "-c", "commit.gpgSign=false"]
MAX_LISTED = 50      # conflicted files named in the prompt and the result
BETWEEN_TURNS = ("idle", "waiting")


@dataclass(frozen=True)
class Rebased:
    name: str
    onto: str            # the branch (or revision) rebased onto
    onto_head: str
    before: str          # the agent's branch tip before
    after: str           # and after (== before when nothing moved)
    conflicted: tuple[str, ...] = ()
    prompted: bool = False

    @property
    def moved(self) -> bool:
        return self.after != self.before


def _git(mgr: SandboxManager, sb: Sandbox, *args: str, who: tuple[str, str] = ("", "")) -> contract.CommandResult:
    ident = [f"GIT_COMMITTER_NAME={who[0]}", f"GIT_COMMITTER_EMAIL={who[1]}"] if all(who) else []
    return mgr.exec(sb.name, [*GIT[:1], *ident, *GIT[1:], "-C", str(sb.workspace), *args])


def _committer(repo: gitops.Repo, head: str) -> tuple[str, str]:
    """Who committed the agent's tip (its identity: the rebased commits keep it), from the host's refs."""
    out = gitops.git(repo.top, "log", "-1", "--format=%cn%x00%ce", head, "--", check=False).stdout.strip()
    name, _, email = out.partition("\0")
    return (" ".join(name.split()), "".join(email.split())) if name and email else ("", "")


def _said(res: contract.CommandResult) -> str:
    """What the container's git printed, as one defanged line (the agent's text: shown, never obeyed)."""
    return defang(" ".join((res.stderr + b" " + res.stdout).decode("utf-8", "replace").split()))[:200]


def prompt(onto: str, onto_head: str, files: tuple[str, ...]) -> str:
    listed = ", ".join(files[:MAX_LISTED]) + (f" (and {len(files) - MAX_LISTED} more)" if len(files) > MAX_LISTED else "")
    return (f"Your branch no longer applies cleanly on {onto} (now {onto_head[:12]}): rebasing it conflicts in "
            f"{listed}. Please run `git rebase {onto_head}`, resolve those files, `git rebase --continue`, "
            "and make sure the tests still pass.")


def rebase(mgr: SandboxManager, name: str, onto: str | None = None) -> Rebased:
    """Rebase agent ``name``'s branch onto ``onto`` (default: the main checkout's current branch)."""
    sb = mgr.require_running(name)
    if sb.headless:
        raise UsageError(f"{name} runs headless: its branch is on its remote", hint="rebase it there")
    if sb.state not in BETWEEN_TURNS:
        raise Conflict(f"agent {name} is {sb.state}: a rebase would move its files under it",
                       hint=f"`sandbox wait {name}`, then rebase")
    src = mgr.source(sb)
    repo = src.repo
    if mgr.records.objects_of(repo, name) is None:
        raise UsageError(f"{name} has its own object store (objects = \"reachable\", or the isolated profile): "
                         "its repository cannot see the new base",
                         hint=f"merge {src.branch} yourself (`git rebase` on the host), or spawn with objects = \"shared\"")
    current = gitops.git(repo.top, "symbolic-ref", "-q", "--short", "HEAD", check=False).stdout.strip() or None
    target = onto or current
    if target is None:
        raise UsageError(f"{repo.top} is on a detached HEAD", hint="pass --onto BRANCH")
    onto_head = gitops.head_of(repo, target) or gitops.git(
        repo.top, "rev-parse", "--verify", "--quiet", f"{target}^{{commit}}", check=False).stdout.strip()
    if not onto_head:
        raise NotFound(f"no branch or commit {target!r} in {repo.top}")
    got = work.of(mgr, sb)  # (the verified sync: the host's refs are the agent's now; strict)
    if got.head is None:
        raise NotFound(f"branch {src.branch} no longer exists in {repo.top}")
    if got.dirty:
        raise Conflict(f"agent {name} has uncommitted changes: a rebase would move them",
                       hint=f"ask it to commit first (`sandbox send {name} \"commit your work\"`), then rebase")
    if gitops.git(repo.top, "merge-base", "--is-ancestor", onto_head, got.head, check=False).returncode == 0:
        return Rebased(name, target, onto_head, got.head, got.head)
    res = _git(mgr, sb, "rebase", "--no-autostash", "--quiet", onto_head, who=_committer(repo, got.head))
    if res.exit_code == 0:
        after = work.of(mgr, sb).head or got.head
        if after == got.head or gitops.git(repo.top, "merge-base", "--is-ancestor", onto_head, after,
                                          check=False).returncode != 0:
            raise AgentError(f"the rebase in {name}'s container said it succeeded, but {src.branch} is not on "
                             f"{target} ({after[:12]})", hint=f"see `sandbox diff {name}`")
        return Rebased(name, target, onto_head, got.head, after)
    listed = _git(mgr, sb, "diff", "--name-only", "-z", "--diff-filter=U")
    files = tuple(sorted({defang(p) for p in listed.stdout.decode("utf-8", "replace").split("\0") if p}))[:MAX_LISTED * 4]
    aborted = _git(mgr, sb, "rebase", "--abort")
    now = work.of(mgr, sb)
    if aborted.exit_code != 0 or now.head != got.head or now.dirty:
        raise AgentError(f"the rebase of {name} stopped and could not be undone in its container "
                         f"({_said(aborted) or 'no message'})",
                         hint=f"its work before is {got.head[:12]} on {src.branch}: `sandbox attach {name}`")
    if not files:
        why = _said(res) or f"git rebase exited {res.exit_code}"
        raise AgentError(f"the rebase of {name} failed ({why}); its work is as it was")
    mgr.send(name, prompt(target, onto_head, files))
    return Rebased(name, target, onto_head, got.head, got.head, conflicted=files, prompted=True)
