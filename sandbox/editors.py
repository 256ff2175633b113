"""Opening an agent's workspace in an editor, through its container (``sandbox code``).

Stdlib only, pure. VS Code's Dev Containers extension (and Cursor, its fork) attaches to a running
container by a folder URI: ``vscode-remote://attached-container+HEX/PATH``, HEX being the hex of the
JSON ``{"containerName": "/NAME"}``; ``code --folder-uri URI`` opens it. The editor then works inside
the agent's container, as the container's user, on the workspace there. Never the host's copy of the
workspace: it is the agent's (README "Security"), and an editor opening it on the host would run what
the agent put there (workspace settings, tasks, extensions' hooks) as you.
"""

from __future__ import annotations

import json
import shutil
import urllib.parse
from dataclasses import dataclass

EDITORS = {"code": "code", "cursor": "cursor"}  # --editor NAME -> the program on PATH


@dataclass(frozen=True)
class Open:
    """What ``sandbox code`` runs: the editor's argv, and whether that program is on PATH."""

    uri: str
    argv: tuple[str, ...]
    found: bool


def attached_uri(container_name: str, workdir: str) -> str:
    """The Dev Containers URI attaching to ``container_name`` (the engine's name, without its slash) at
    ``workdir`` (an absolute path in the container)."""
    if not workdir.startswith("/"):
        raise ValueError(f"the workdir must be an absolute path, not {workdir!r}")
    target = json.dumps({"containerName": "/" + container_name.lstrip("/")}, separators=(",", ":"))
    return f"vscode-remote://attached-container+{target.encode().hex()}{urllib.parse.quote(workdir)}"


def decode(uri: str) -> tuple[dict[str, str], str]:
    """The container description and the path of an ``attached_uri`` (tests, and users who check it)."""
    scheme = "vscode-remote://attached-container+"
    if not uri.startswith(scheme):
        raise ValueError(f"not an attached-container URI: {uri!r}")
    hexpart, slash, path = uri[len(scheme):].partition("/")
    return json.loads(bytes.fromhex(hexpart)), urllib.parse.unquote(slash + path)


def opener(editor: str, container_name: str, workdir: str) -> Open:
    """The command that opens ``workdir`` of ``container_name`` in ``editor`` (``code`` or ``cursor``)."""
    program = EDITORS.get(editor)
    if program is None:
        raise ValueError(f"--editor {editor!r}: {' or '.join(EDITORS)}")
    uri = attached_uri(container_name, workdir)
    return Open(uri=uri, argv=(program, "--folder-uri", uri), found=shutil.which(program) is not None)
