"""What a spawn makes on the host for its agent: the host branch, the agent's own repository and
workspace, its state dir (each undone on failure), then given to the agent's uid. Deleting an agent's
tree is ``SandboxManager.remove_tree``."""

from __future__ import annotations

import os
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sandbox import contract, labels as L, trace as trace_
from sandbox.engine import Engine
from sandbox.errors import AgentError
from sandbox.workspace import git as gitops

if TYPE_CHECKING:
    from sandbox.manager import SandboxManager
    from sandbox.spawn import spec as spec_


def make_state_dir(path: Path, uid: int, gid: int, *, supervised: bool = True) -> None:
    """An agent's state dir (mounted at ``contract.STATE_MOUNT``), new: its top the supervisor's (this
    host user's; root here stays root, so the agent's uid cannot write the state file), its
    ``contract.AGENT_STATE`` subdir the agent's (the hooks' report, reply.txt, Claude Code's config).
    Not ``supervised`` (the image alone, one uid for all): the agent's uid owns both."""
    path.mkdir(parents=True, exist_ok=True)
    (path / contract.AGENT_STATE).mkdir(exist_ok=True)
    if os.getuid() == 0:
        os.chown(path / contract.AGENT_STATE, uid, gid)
        if not supervised:
            os.chown(path, uid, gid)


def _chown_tree(uid: int, gid: int, *paths: Path) -> None:
    """Give the agent uid what the host made for it (its workspace and git dir), never following links."""
    for path in paths:
        os.lchown(path, uid, gid)
        for root, dirs, files in os.walk(path):
            for n in dirs + files:
                os.lchown(os.path.join(root, n), uid, gid)


def readable_by(path: Path, uid: int, gid: int) -> bool:
    """Can ``uid:gid`` (another uid than the owner, as the agent is) list and enter directory ``path``?
    (Its top only: a repository made under umask 077 is refused here, with a way out, not at the
    agent's first git command.)"""
    try:
        st = os.stat(path)
    except OSError:
        return True  # (the spawn says what is missing)
    bits = 0o500 if st.st_uid == uid else 0o050 if st.st_gid == gid else 0o005
    return st.st_mode & bits == bits


def make_workspace(mgr: SandboxManager, repo: gitops.Repo, ws: spec_.Workspace, branch: str, base: str, uid: int,
                   gid: int, undo: ExitStack, *, name: str, image: str, fresh: bool = True,
                   branches: dict[str, str] | None = None, trace: Any = trace_.OFF, copies: tuple[Any, ...] = ()) -> None:
    """The host branch, the agent's own repository and workspace, its state dir (each undone on
    failure), then given to the agent's uid (``give_to_agent``). A pool's slot (``fresh=False``)
    has its directories, ``.git`` file and state dir already, mounted in its container. ``copies``: the
    ``[setup] copy`` files (``setup.checked``), written into the workspace before it is given away."""
    gitops.branch_create(repo, branch, base)
    undo.callback(gitops.branch_delete, repo, branch)
    undo.callback(mgr.remove_tree, ws.agent_git, image)
    undo.callback(mgr.remove_tree, ws.path, image)
    mgr.records.record_objects(name, ws.objects_mode)
    gitops.workspace_create(repo, ws.path, ws.agent_git, branch, base, branches, shared=ws.objects is not None)
    if fresh:
        (ws.path / ".git").write_text(contract.GITFILE)
    mgr.records.fetched(name, ws.agent_git)
    mgr.records.record_repo(repo)
    if fresh:
        if ws.state_dir.exists():
            mgr.remove_tree(ws.state_dir, image)
        make_state_dir(ws.state_dir, uid, gid)
        undo.callback(mgr.remove_tree, ws.state_dir, image)
    trace.mark("workspace")
    from sandbox.workspace import setup as setup_

    setup_.copy_in(copies, ws.path, ws.agent_git, mgr.settings.data_dir, name)  # ([setup] copy: the user's files)
    give_to_agent(mgr, ws, uid, gid, image)
    trace.mark("owner")


def give_to_agent(mgr: SandboxManager, ws: spec_.Workspace, uid: int, gid: int, image: str) -> None:
    """The agent's workspace, git dir and its side of the state dir become its uid's (never this
    user's: git's ownership check then refuses the agent's repositories for the user, README
    "Security"), the first two's tops 0711 (no listing for others; the container's root supervisor,
    which has no CAP_DAC_*, still enters them). Made by the host a moment ago, before any agent
    process runs there."""
    for top in (ws.path, ws.agent_git):
        os.chmod(top, 0o711)
    if os.getuid() == 0:
        _chown_tree(uid, gid, ws.path, ws.agent_git)  # (the .git file too: git checks its owner; it is mounted ro)
        return
    chown_in_container(mgr, [ws.path, ws.agent_git, ws.state_dir / contract.AGENT_STATE], uid, gid, image)


def chown_in_container(mgr: SandboxManager, paths: list[Path], uid: int, gid: int, image: str) -> None:
    """``paths`` (trees this non-root host user just made) given to ``uid:gid``, which only root may
    do: a throwaway container as root with CAP_CHOWN (to give files away) and CAP_DAC_READ_SEARCH
    (to walk a tree made under any umask) and nothing else, running only ``chown -R -h`` (no link
    followed) on those mounts."""
    binds = [(str(p), f"/own/{i}") for i, p in enumerate(paths)]
    labels = {L.READER: paths[0].name, **({L.RUN_ID: mgr.settings.run_id} if mgr.settings.run_id else {})}
    res = Engine.run_tool(image, "0:0", binds, ["chown", "-R", "-h", f"{uid}:{gid}", "--", *(b for _, b in binds)],
                          labels, caps=("CHOWN", "DAC_READ_SEARCH"), timeout=mgr.settings.sync_timeout)
    if res.exit_code != 0:
        raise AgentError(f"the agent's files cannot be given to its uid {uid}: "
                         f"{res.stderr.decode('utf-8', 'replace').strip()[-300:] or f'exit {res.exit_code}'}")
