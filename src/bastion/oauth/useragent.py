"""How an authorization URL reaches a person: the browser, or a printed URL.

Passed into the flow so the CLI, the web page and tests each bring their own.
"""

from __future__ import annotations

import sys
import threading
import webbrowser
from typing import Protocol, TextIO


class UserAgent(Protocol):
    def open(self, url: str) -> None:
        """Show `url` to the user. Must not block the callback listener."""
        ...


class BrowserUserAgent:
    """Python's `webbrowser` (so `$BROWSER` is honoured), run on a thread: some browsers'
    launch commands block until they exit. Also prints the URL, in case nothing opens."""

    def __init__(self, out: TextIO | None = None) -> None:
        self._out = out or sys.stderr

    def open(self, url: str) -> None:
        print(f"Opening the browser. If it does not open, visit:\n  {url}", file=self._out, flush=True)
        threading.Thread(target=webbrowser.open, args=(url,), daemon=True, name="bastion-browser").start()


class PrintUserAgent:
    """`--no-browser`: print the URL for the user to open themselves."""

    def __init__(self, out: TextIO | None = None) -> None:
        self._out = out or sys.stderr

    def open(self, url: str) -> None:
        print(f"Open this URL in a browser to authorize:\n  {url}", file=self._out, flush=True)
