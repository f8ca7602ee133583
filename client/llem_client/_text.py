"""Text from others made safe to print: control characters shown as escapes.

A job name, a model id or a server's error message is data from someone else. Printed raw, an
escape sequence in it (``\x1b[2J`` clears the screen) acts on the reader's terminal, and a
newline in it forges a line of a log. Everything the CLI prints and the service logs of such
text goes through `escape_controls`.
"""

from __future__ import annotations

import re

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    return _NAMED.get(char) or f"\\x{ord(char):02x}"


def escape_controls(text: str) -> str:
    """``text`` with each C0/C1 control character (and DEL) written as ``\\n``, ``\\x1b``...

    Printable text, non-ASCII letters included, is left as it is.
    """
    return _CONTROL.sub(_escape, text)
