"""Agent text on the user's terminal (stdlib only).

Everything an agent wrote — file contents in a diff, its answer, its pane — may carry terminal
control sequences (cursor moves, title or clipboard writes, hyperlinks that hide their target). On a
terminal they are shown, never obeyed: every control character except newline and tab becomes a
visible escape (``\\x1b``). Into a pipe or a file the bytes pass unchanged (a diff must still apply).
"""

from __future__ import annotations

import re
import sys
from typing import TextIO

# C0 controls but \t and \n, DEL, and the C1 controls (which some terminals obey in UTF-8 text too).
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def defang(text: str) -> str:
    r"""``text`` with every control character but ``\n`` and ``\t`` shown as ``\xNN``."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def for_stream(text: str, stream: TextIO | None = None) -> str:
    """``text`` as it may be written to ``stream`` (stdout by default): defanged on a terminal."""
    stream = stream or sys.stdout
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):
        tty = False
    return defang(text) if tty else text
