"""Agent text on the user's terminal (stdlib only).

Everything an agent wrote — file contents in a diff, its answer, its pane — may carry terminal
control sequences (cursor moves, title or clipboard writes, hyperlinks that hide their target) and
characters that change what text *looks* like without being seen: bidirectional overrides and
isolates that reorder a line (Trojan Source: code that reads differently than it runs), zero-width
and other invisible characters, line and paragraph separators. On a terminal they are shown, never
obeyed: each becomes a visible escape (``\\x1b``, ``\\u202e``), newline and tab excepted. Into a
pipe or a file the bytes pass unchanged (a diff must still apply).

The one filter for text from an agent: ``defang`` (a terminal, a ``top`` cell) and ``one_line`` (a
state or reason read from its files: one line, every such character replaced).
"""

from __future__ import annotations

import re
import sys
from typing import TextIO

# Characters that are not seen but change what is seen (Unicode's bidi controls, the invisible
# formatting characters and fillers that attacks on review use, and the tag characters that can
# smuggle ASCII text unseen).
INVISIBLE = (
    "\u00ad"            # soft hyphen
    "\u061c"            # arabic letter mark (bidi)
    "\u115f\u1160"      # hangul fillers
    "\u180e"            # mongolian vowel separator
    "\u200b-\u200f"     # zero width space, non-joiner, joiner; left-to-right and right-to-left marks
    "\u2028\u2029"      # line and paragraph separators
    "\u202a-\u202e"     # bidi embeddings and overrides
    "\u2060-\u2064"     # word joiner, invisible operators
    "\u2066-\u2069"     # bidi isolates
    "\u206a-\u206f"     # deprecated format characters
    "\u3164\uffa0"      # hangul fillers
    "\ufeff"            # zero width no-break space (BOM)
    "\ufff9-\ufffb"     # interlinear annotation
    "\U000e0000-\U000e007f"  # tags
)
# C0 controls but \t and \n, DEL, and the C1 controls (which some terminals obey in UTF-8 text too).
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f" + INVISIBLE + "]")
_CONTROL_OR_BREAK = re.compile("[\x00-\x1f\x7f-\x9f" + INVISIBLE + "]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def defang(text: str) -> str:
    r"""``text`` with every control or invisible character but ``\n`` and ``\t`` shown as an escape
    (``\x1b``, ``\u202e``, ``\U000e0041``)."""
    return _CONTROL.sub(_escape, text)


def one_line(text: str, replacement: str = "?") -> str:
    """``text`` with every control or invisible character, newline and tab included, replaced."""
    return _CONTROL_OR_BREAK.sub(replacement, text)


def for_stream(text: str, stream: TextIO | None = None) -> str:
    """``text`` as it may be written to ``stream`` (stdout by default): defanged on a terminal."""
    stream = stream or sys.stdout
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):
        tty = False
    return defang(text) if tty else text


# -- tables: measured in screen cells, of the text as it is printed ------------------------------------------
def cells(text: str) -> int:
    """How many terminal cells ``text`` takes: wide (East Asian wide/fullwidth, most emoji) 2, combining
    marks and zero-width characters 0, others 1."""
    import unicodedata

    n = 0
    for ch in text:
        if unicodedata.combining(ch) or unicodedata.category(ch) in ("Mn", "Me", "Cf"):
            continue
        n += 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1
    return n


def cut(text: str, width: int) -> str:
    """``text`` cut to at most ``width`` cells (a wide character that would straddle the edge is left out)."""
    if cells(text) <= width:
        return text
    out, used = [], 0
    for ch in text:
        w = cells(ch)
        if used + w > width:
            break
        out.append(ch)
        used += w
    return "".join(out)


def table(rows: list[list[str]], width: int | None = None) -> list[str]:
    """``rows`` (the first is the header) as aligned lines: columns padded to their widest cell in screen
    cells, two spaces apart, the last column unpadded; each line cut to ``width`` cells when given. The
    cells are measured as given: defang them first, so that what is measured is what is printed."""
    if not rows:
        return []
    n = max(len(r) for r in rows)
    widths = [max(cells(r[i]) for r in rows if i < len(r)) for i in range(n - 1)]
    lines = []
    for r in rows:
        line = "  ".join(c + " " * (w - cells(c)) for c, w in zip(r[:-1], widths))
        line = (line + "  " + r[-1] if len(r) == n else line).rstrip()
        lines.append(cut(line, width) if width is not None else line)
    return lines
