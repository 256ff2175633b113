"""``python3 -m sandbox.inside export``: the agent's work for the host (standard library only).

Runs in the agent's container (over ``docker exec -i``) or in a throwaway reader container, as the
remote end of the host's ``git fetch``: the host verifies every object it receives, so nothing here
is trusted by the host.
"""

from __future__ import annotations

import os
import sys


def _write(path: str, text: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def export(argv: list[str]) -> int:
    """Serve the agent's work to the host's ``git fetch`` over stdin/stdout (``git upload-pack``).

    ``export [--snapshot] [--workdir W] [--objects DIR] [--fallback SHA] [--exclude PATH]…``: a throwaway bare
    repository in /tmp borrows the agent's objects (and ``--objects``, the host's store) and
    advertises two refs: the agent's HEAD commit and, with ``--snapshot``, a commit of the whole
    workspace (tracked, modified and untracked files, not ignored ones; symlinks as links; the
    agent's HEAD as parent; the HEAD itself when nothing is uncommitted). ``--fallback`` is the
    commit to use when the agent's own HEAD cannot be read; ``--exclude`` (the files ``[setup] copy``
    put there) stays out of the snapshot: as the agent's HEAD has it (absent, mostly). The agent's repository and index are
    never changed. Nothing here is trusted by the host: it verifies every object it receives.
    """
    import shutil
    import subprocess
    import tempfile

    from sandbox import contract

    opts: dict[str, str] = {}
    flags = set()
    excluded: list[str] = []
    it = iter(argv)
    for a in it:
        if a in ("--workdir", "--objects", "--fallback"):
            opts[a] = next(it, "")
        elif a == "--exclude":
            excluded.append(next(it, ""))
        else:
            flags.add(a)
    excluded = [p for p in excluded if p and not p.startswith("/") and ".." not in p.split("/")]
    tmp = tempfile.mkdtemp(prefix="sandbox-export-")
    # git by absolute path, its HOME the private scratch dir: no global config, excludes or attributes
    # of the agent's HOME (the host started this program: nothing the agent planted runs in it)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GIT_", "XDG_"))}
    env.update(HOME=tmp, GIT_CONFIG_GLOBAL=os.devnull, GIT_TERMINAL_PROMPT="0", GIT_OPTIONAL_LOCKS="0",
               GIT_AUTHOR_NAME="sandbox", GIT_AUTHOR_EMAIL="sandbox@localhost", GIT_COMMITTER_NAME="sandbox",
               GIT_COMMITTER_EMAIL="sandbox@localhost")

    def fail(code: int, why: str) -> int:
        print(f"sandbox export: {why}", file=sys.stderr)
        return code

    def git(*args: str, index: str | None = None, cwd: str | None = None) -> str | None:
        e = dict(env, GIT_INDEX_FILE=index) if index else env
        p = subprocess.run([contract.GIT, *args], env=e, cwd=cwd or tmp, stdin=subprocess.DEVNULL,
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        return p.stdout.strip() if p.returncode == 0 else None

    try:
        # A bare repository made by hand (no `git init`: one process less on every read).
        repo = os.path.join(tmp, "repo.git")
        for d in ("objects/info", "refs/heads"):
            os.makedirs(os.path.join(repo, d))
        _write(os.path.join(repo, "HEAD"), "ref: " + contract.EXPORT_HEAD + "\n")
        _write(os.path.join(repo, "config"), "[core]\n\trepositoryformatversion = 0\n\tbare = true\n")
        borrowed = [d for d in (os.path.join(contract.AGENT_GIT, "objects"), opts.get("--objects", ""))
                    if d and os.path.isdir(d)]
        _write(os.path.join(repo, "objects", "info", "alternates"), "".join(d + "\n" for d in borrowed))
        bare = ["--git-dir", repo]
        fmt = ["log", "-1", "--format=%H %T %ct"]
        found = git("--git-dir", contract.AGENT_GIT, *fmt, "HEAD", "--") or ""
        if len(found.split()) != 3 and opts.get("--fallback"):
            found = git(*bare, *fmt, opts["--fallback"], "--") or ""
        if len(found.split()) != 3:
            return fail(3, "the agent's repository has no readable HEAD commit")
        head, head_tree, when = found.split()
        refs = {contract.EXPORT_HEAD: head}
        workdir = opts.get("--workdir")
        if "--snapshot" in flags and workdir and os.path.isdir(workdir):
            index = os.path.join(tmp, "index")
            wt = [*bare, "--work-tree", workdir]
            tree = None
            own = os.path.join(contract.AGENT_GIT, "index")
            if os.path.isfile(own) and not os.path.islink(own):  # its stat data spares rehashing every file
                # copy2: the copy keeps the index's mtime, so git's own rule for "racily clean" entries (a
                # file changed in the second the index was written, same size) still has it look at their
                # content; a copy dated now made such an edit invisible (a backup without it)
                shutil.copy2(own, index)
                if git(*wt, "add", "--all", "--ignore-errors", "--", ".", index=index, cwd=workdir) is not None:
                    tree = git(*bare, "write-tree", index=index)
            if tree is None:
                if os.path.exists(index):
                    os.unlink(index)
                git(*bare, "read-tree", head, index=index)
                git(*wt, "add", "--all", "--ignore-errors", "--", ".", index=index, cwd=workdir)
                tree = git(*bare, "write-tree", index=index)
            if tree is not None and excluded:  # (`[setup] copy`: as HEAD has them, whatever the workspace's
                # .gitignore says now; an agent that committed one committed it, the snapshot adds nothing)
                git(*wt, "reset", "-q", head, "--", *(":(literal)" + p for p in excluded), index=index, cwd=workdir)
                tree = git(*bare, "write-tree", index=index)
            if tree is None:
                return fail(4, "cannot read the workspace")
            wip = head
            if tree != head_tree:  # a commit of the workspace, dated like HEAD: the same state, the same id
                e = dict(env, GIT_AUTHOR_DATE=f"@{when} +0000", GIT_COMMITTER_DATE=f"@{when} +0000")
                p = subprocess.run([contract.GIT, *bare, "commit-tree", tree, "-p", head, "-m",
                                    "sandbox: workspace snapshot"], env=e, cwd=tmp, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                   stderr=subprocess.DEVNULL, text=True)
                if p.returncode != 0:
                    return fail(4, "cannot commit the workspace snapshot")
                wip = p.stdout.strip()
            refs[contract.EXPORT_WIP] = wip
        _write(os.path.join(repo, "packed-refs"),
               "# pack-refs with: peeled sorted\n" + "".join(f"{sha} {ref}\n" for ref, sha in sorted(refs.items())))
        sys.stdout.flush()
        return subprocess.run([contract.GIT, "upload-pack", "--strict", repo], env=env, cwd=tmp).returncode
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
