"""The ``notify`` setting: a command of the user's run when an agent starts to need them.

The command line is split like a shell would split it (``shlex.split``) but never run through one:
it is an argv, and what it learns of the agent comes in the environment — ``SANDBOX_AGENT`` (the
name), ``SANDBOX_STATE``, ``SANDBOX_REPO``, ``SANDBOX_BRANCH`` — values sandbox made (labels and
state names), never text the agent wrote (no task, reason or pane text). It runs detached (its own
session, stdin from /dev/null), and sandbox does not wait for it. Stdlib only.

    notify = "desktop"                                            # notify-send: "sandbox: NAME" / "is STATE"
    notify = "notify-send sandbox 'an agent needs you'"           # the same by hand
    notify = "sh -c 'printf \\"%s is %s\\\\n\\" \\"$SANDBOX_AGENT\\" \\"$SANDBOX_STATE\\" >> ~/agents.log'"
"""

from __future__ import annotations

import os
import shlex
import subprocess
from typing import Any

from sandbox.contract import S
from sandbox.errors import UsageError


def argv(command: str) -> list[str]:
    """The ``notify`` setting as an argv; a value that does not split is a usage error."""
    try:
        parts = shlex.split(command)
    except ValueError as e:
        raise UsageError(f"invalid setting notify={command!r}: {e}") from e
    if not parts:
        raise UsageError("invalid setting notify='': empty command")
    return parts


def environment(sb: Any) -> dict[str, str]:
    """What the command learns: sandbox's own values only (``sb``: a ``manager.Sandbox``)."""
    return {"SANDBOX_AGENT": sb.name, "SANDBOX_STATE": sb.state, "SANDBOX_REPO": sb.repo, "SANDBOX_BRANCH": sb.branch}


_started: list[subprocess.Popen[bytes]] = []


DESKTOP = "desktop"  # notify = "desktop": the desktop's notification (notify-send, libnotify's command)


def run(command: str, sb: Any) -> str | None:
    """Start the command for ``sb``; None, or why it could not be started (one line). Commands
    started before that have ended are reaped (a long-running ``top`` leaves no zombies).
    ``desktop``: ``notify-send`` with sandbox's own values (the name and the state)."""
    if command.strip() == DESKTOP:
        args = ["notify-send", "--app-name=sandbox", f"sandbox: {sb.name}", f"{sb.name} is {sb.state} ({sb.branch})"]
    else:
        args = argv(command)
    _started[:] = [p for p in _started if p.poll() is None]
    try:
        proc = subprocess.Popen(args, env={**os.environ, **environment(sb)}, stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                         close_fds=True)
    except OSError as e:
        return f"notify: cannot run {args[0]}: {e.strerror or e}"
    _started.append(proc)
    return None


# -- the webhook: ``notify_url`` ---------------------------------------------------------------------
# A JSON POST a phone or a chat reaches (ntfy's topic URLs, Slack's incoming webhooks, any receiver):
# sandbox's own values (name, state, repo, branch) and the agent's reason — the one field an agent
# writes (its state file) — as one defanged line of at most REASON_MAX characters. Never the task, the
# pane, an answer or a file of the agent's. Bounded: ATTEMPTS tries of TIMEOUT seconds each (a
# connection error or a 5xx answer is tried again after BACKOFF, doubled), then one line of why.
TIMEOUT = 3.0
ATTEMPTS = 3
BACKOFF = 0.5
REASON_MAX = 200
ENDED = ("exited", "failed", "stopped")  # with "waiting": the states a notification is for


NTFY = "ntfy:"  # notify_url = "ntfy:TOPIC": a message to the topic on the ``ntfy_url`` server


def check_url(url: str) -> str:
    """The ``notify_url`` setting: an http(s) URL with a host, or ``ntfy:TOPIC`` (ntfy's topic rule: 1-64
    letters, digits, ``_`` or ``-``), else ``ValueError`` (one line)."""
    import re
    import urllib.parse

    if url.strip().startswith(NTFY):
        topic = url.strip()[len(NTFY):]
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", topic):
            raise ValueError(f"notify_url = \"ntfy:TOPIC\" needs a topic of 1-64 letters, digits, _ or -, not {topic!r}")
        return url.strip()
    parts = urllib.parse.urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"notify_url must be an http:// or https:// URL, not {url!r}")
    return url.strip()


def payload(sb: Any) -> dict[str, str]:
    """What the webhook receives for ``sb`` (a ``manager.Sandbox``); ``text`` for Slack-like receivers."""
    from sandbox.terminal import one_line

    reason = one_line(str(sb.reason or ""), " ").strip()[:REASON_MAX]
    text = f"sandbox: {sb.name} is {sb.state}" + (f": {reason}" if reason else "")
    return {"name": sb.name, "state": sb.state, "repo": sb.repo, "branch": sb.branch, "reason": reason, "text": text}


def ntfy_request(server: str, topic: str, body: dict[str, str]) -> tuple[str, bytes, dict[str, str]]:
    """An ntfy publish (``POST SERVER/TOPIC``, the message as text, the title and tags as headers): the
    payload's ``text``; ``waiting`` at high priority (it needs you)."""
    headers = {"Content-Type": "text/plain; charset=utf-8", "User-Agent": "sandbox",
               "Title": f"sandbox: {body.get('name', '')}", "Tags": str(body.get("state", "")),
               "Priority": "high" if body.get("state") == "waiting" else "default"}
    return f"{server.rstrip('/')}/{topic}", str(body.get("text", "")).encode(), headers


def post(url: str, body: dict[str, str], *, timeout: float = TIMEOUT, attempts: int = ATTEMPTS,
         backoff: float = BACKOFF, ntfy_url: str = "https://ntfy.sh") -> str | None:
    """POST ``body`` as JSON to ``url`` (``ntfy:TOPIC``: as an ntfy message to ``ntfy_url``); None, or why
    it did not arrive (one line) after ``attempts``."""
    import json
    import time
    import urllib.error
    import urllib.request

    try:
        url = check_url(url)
    except ValueError as e:
        return f"notify_url: {e}"
    if url.startswith(NTFY):
        url, data, headers = ntfy_request(ntfy_url, url[len(NTFY):], body)
    else:
        data, headers = json.dumps(body).encode(), {"Content-Type": "application/json", "User-Agent": "sandbox"}
    why = ""
    for attempt in range(attempts):
        if attempt:
            time.sleep(backoff * 2 ** (attempt - 1))
        request = urllib.request.Request(url, data=data, method="POST", headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as answer:
                answer.read(1 << 16)
                return None
        except urllib.error.HTTPError as e:
            why = f"HTTP {e.code}"
            if e.code < 500:
                break  # (the receiver refused it: trying again would not help)
        except (OSError, ValueError) as e:
            why = str(getattr(e, "reason", None) or e)
    return f"notify_url: not delivered after {attempt + 1} tries: {why}"[:300]


MARKS_KEPT = 24 * 3600.0  # s: a transition's mark (below) is forgotten after a day


def first_time(settings: Any, sb: Any) -> bool:
    """Whether this transition of ``sb`` (its name, state, and the state file's ``since``) was not sent
    yet by any sender of this data dir (``wait --notify``, ``top``, the command server's watcher): a mark
    made with ``O_EXCL`` in ``<data dir>/notified/``. Without ``since`` (no state file), always."""
    import hashlib
    import time

    since = (getattr(sb, "agent_state", None) or {}).get(S.SINCE)
    data_dir = getattr(settings, "data_dir", None)
    if since is None or data_dir is None:
        return True
    where = os.path.join(str(data_dir), "notified")
    key = hashlib.sha256(f"{sb.name}\0{sb.state}\0{since}".encode()).hexdigest()[:32]
    try:
        os.makedirs(where, mode=0o700, exist_ok=True)
        now = time.time()
        for old in os.listdir(where)[:1000]:  # (bounded: the old marks go a few at a time)
            path = os.path.join(where, old)
            try:
                if now - os.lstat(path).st_mtime > MARKS_KEPT:
                    os.unlink(path)
            except OSError:
                pass
        os.close(os.open(os.path.join(where, key), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600))
    except FileExistsError:
        return False
    except OSError:
        return True  # (no mark can be made: better twice than never)
    return True


def send(settings: Any, sb: Any) -> str | None:
    """The ``notify_url`` webhook for ``sb`` when the settings name one and no other sender sent this
    transition yet (``first_time``); None, or why it failed."""
    url = getattr(settings, "notify_url", None)
    if not url or not first_time(settings, sb):
        return None
    return post(url, payload(sb), ntfy_url=getattr(settings, "ntfy_url", None) or "https://ntfy.sh")


NOTIFY_STATES = ("waiting", *ENDED)
PER_AGENT = (5, 300.0)  # the watcher sends at most 5 POSTs per agent in 300 s (an agent flapping its state)


def watch(list_agents: Any, settings: Any, *, every: float = 2.0, idle_every: float = 10.0,
          stop: Any = lambda: False, on_problem: Any = None) -> None:
    """Until ``stop()``: list the agents (``list_agents()``: snapshots, no sync) every ``every`` seconds
    (``idle_every`` while there are none, or the engine does not answer) and POST ``notify_url`` for each
    agent that turned ``waiting``, ``exited``, ``failed`` or ``stopped`` since the last look (an agent
    first seen after the first look counts as new), at most ``PER_AGENT`` per agent (an agent can flap its
    own state file: never a flood on your phone). What was so at the first look is not sent."""
    import time

    seen: dict[str, str] | None = None
    sent: dict[str, list[float]] = {}
    while not stop():
        try:
            found = list(list_agents())
        except Exception as e:  # (the engine away for a while: look again later)
            found = None
            if on_problem is not None:
                on_problem(f"notify watcher: {type(e).__name__}: {e}")
        if found is not None:
            now = {sb.name: sb.state for sb in found}
            if seen is not None:
                for sb in found:
                    if sb.state in NOTIFY_STATES and seen.get(sb.name) != sb.state:
                        recent = [t for t in sent.get(sb.name, []) if time.monotonic() - t < PER_AGENT[1]]
                        if len(recent) < PER_AGENT[0]:
                            send_later(settings, sb, on_problem)
                            recent.append(time.monotonic())
                        sent[sb.name] = recent
            seen = now
            sent = {k: v for k, v in sent.items() if k in now}
        time.sleep(every if found else idle_every)


def send_later(settings: Any, sb: Any, on_problem: Any = None) -> None:
    """``send`` in a daemon thread (``top``, the command server: never held up by a slow receiver);
    ``on_problem(line)`` hears why it failed."""
    import threading

    def deliver() -> None:
        problem = send(settings, sb)
        if problem and on_problem is not None:
            on_problem(problem)

    if getattr(settings, "notify_url", None):
        threading.Thread(target=deliver, name="sandbox-notify", daemon=True).start()
