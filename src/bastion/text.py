"""Text hygiene for what Bastion shows people: messages, `/health`, `/ui` and the terminal.

Pure functions of strings. Values that reach a person's screen may come from a hostile MCP
server, authorization server or imported catalog (an `error_description`, an issuer, a client id,
a tool description): URL user-info (`user:password@`) is cut out of every message, and what
goes to a terminal loses its control characters, so no escape sequence can rewrite the screen,
hide a line or fake one.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from typing import Final

_USERINFO: Final = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)[^/?#\s]*@")
"""`scheme://user:password@` (RFC 3986 §3.2.1): the user-info is the authority up to its last `@`
(a careless password may hold one); `[^/?#\\s]` keeps the match inside one authority."""
_BIDI: Final = frozenset("\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
"""Bidirectional formatting characters (they reorder what a terminal shows)."""
_SPACES: Final = frozenset("\t\n\r\v\f")


def strip_userinfo(text: str) -> str:
    """`text` with the user-info of every URL in it removed: `https://u:p@host/x` → `https://host/x`."""
    return _USERINFO.sub(r"\g<scheme>", text)


def terminal_text(text: str, *, keep_newlines: bool = False) -> str:
    """`text` safe to print: URL user-info removed, control characters (C0, DEL, C1, bidi overrides)
    dropped, and line breaks and tabs made spaces (kept as newlines with `keep_newlines`), so one
    message stays one line."""
    out: list[str] = []
    for char in strip_userinfo(text):
        if char == "\n" and keep_newlines:
            out.append(char)
        elif char in _SPACES:
            out.append(" ")
        elif char in _BIDI or unicodedata.category(char) == "Cc":
            continue
        else:
            out.append(char)
    return "".join(out)


class TerminalFormatter(logging.Formatter):
    """A log formatter whose lines are `terminal_text` (a traceback keeps its line breaks)."""

    def format(self, record: logging.LogRecord) -> str:
        return terminal_text(super().format(record), keep_newlines=True)
