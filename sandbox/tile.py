"""``sandbox tile``: one host tmux session with a pane attached to each agent (libtmux).

The host's own tmux server (the user's, or the one of ``socket_name``: ``tmux -L``) gets a session
(``SESSION``) whose windows hold one pane per running agent, each running that agent's attach command
(``Sandbox.attach_command()``: ``docker exec -it … tmux attach``), at most ``PER_WINDOW`` panes a window
in tmux's ``tiled`` layout, each pane's border titled with the agent's name. Run again, it reuses the
session: a pane whose agent it already shows is kept (found by the pane option ``@sandbox-agent``),
agents without one get one. Leaving is tmux's own ``C-b d``; a pane closes when its agent stops.

The pane command is the attach argv joined with ``shlex.join`` (tmux runs a pane's command through
``sh -c``): agent names are validated at spawn, and quoting keeps any label value one word anyway.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sandbox.errors import NotFound, SandboxError

if TYPE_CHECKING:
    from sandbox.manager import Sandbox

SESSION = "sandbox"
PER_WINDOW = 12          # tiled stays readable up to 12 panes (4×3 on a wide terminal)
OPTION = "@sandbox-agent"
SIZE = (240, 60)         # the session's size before a client attaches (tmux then resizes it)


@dataclass
class Tiled:
    session: str
    added: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    windows: int = 0


def _shown(server: Any, session: str) -> dict[str, str]:
    """Agent name -> pane id, for the panes of ``session`` that show an agent."""
    from libtmux import exc as tmux_exc

    res = server.cmd("list-panes", "-s", "-t", f"={session}", "-F", "#{pane_id}\t#{" + OPTION + "}")
    if res.stderr:  # (libtmux's cmd never raises: an unread session would add every pane again)
        raise tmux_exc.LibTmuxException(" ".join(res.stderr))
    out: dict[str, str] = {}
    for line in res.stdout:
        pane_id, _, name = line.partition("\t")
        if name:
            out[name] = pane_id
    return out


def _dress(window: Any) -> None:
    """Titles on the pane borders, tiled: libtmux's own calls, which raise when tmux refuses."""
    window.set_option("pane-border-status", "top")
    window.set_option("pane-border-format", " #{" + OPTION + "} ")
    window.select_layout("tiled")


def _mark(pane: Any, name: str) -> None:
    """The pane option that finds the agent's pane again on the next run (a pane whose mark failed
    would be added twice)."""
    pane.set_option(OPTION, name)


def tile(agents: list[Sandbox], *, socket_name: str | None = None, session_name: str = SESSION) -> Tiled:
    """Build (or bring up to date) the session: one pane per running agent of ``agents``."""
    import libtmux
    from libtmux import exc as tmux_exc

    running = [sb for sb in agents if sb.engine_state == "running"]
    if not running:
        raise NotFound("no running agent to tile", hint="see `sandbox ls`")
    server = libtmux.Server(socket_name=socket_name)
    result = Tiled(session=session_name)
    try:
        session = server.sessions.get(session_name=session_name, default=None)
        shown = _shown(server, session_name) if session is not None else {}
        for sb in running:
            if sb.name in shown:
                result.kept.append(sb.name)
                continue
            command = shlex.join(sb.attach_command())
            if session is None:
                session = server.new_session(session_name=session_name, window_name="agents", window_command=command,
                                             attach=False, x=SIZE[0], y=SIZE[1])
                window = session.active_window
                pane = window.active_pane
            else:
                windows = list(session.windows)
                window = next((w for w in windows if len(w.panes) < PER_WINDOW), None)
                if window is None:
                    window = session.new_window(window_name=f"agents-{len(windows) + 1}", window_shell=command,
                                                attach=False)
                    pane = window.active_pane
                else:
                    window.select_layout("tiled")  # room for one more
                    pane = window.split(shell=command)
            assert pane is not None
            _mark(pane, sb.name)
            _dress(window)
            result.added.append(sb.name)
        assert session is not None
        for window in session.windows:
            _dress(window)
        result.windows = len(session.windows)
    except (tmux_exc.LibTmuxException, OSError) as e:
        raise SandboxError(f"tmux: {e}", hint="is tmux installed on this host?") from e
    return result


def attach_argv(session_name: str = SESSION, *, socket_name: str | None = None, inside_tmux: bool = False) -> list[str]:
    """The tmux argv that shows the session: ``switch-client`` from inside tmux (same server), else ``attach``."""
    prefix = ["tmux", *(["-L", socket_name] if socket_name else [])]
    if inside_tmux and socket_name is None:
        return [*prefix, "switch-client", "-t", f"={session_name}"]
    return [*prefix, "attach-session", "-t", f"={session_name}"]
