"""User agents for the demo: a real browser when there is one, else a headless stand-in."""

from __future__ import annotations

import ipaddress
import os
import sys
import threading
import webbrowser
from collections.abc import Callable
from urllib.parse import parse_qs, urljoin, urlsplit

import httpx2

MAX_HOPS = 10


def browser_available() -> bool:
    """A browser can be opened: `$BROWSER` is set, or there is a desktop (a display on Linux
    and the BSDs; macOS and Windows always have one)."""
    if os.environ.get("BROWSER"):
        return True
    if sys.platform in ("darwin", "win32"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def _is_loopback(url: str) -> bool:
    host = (urlsplit(url).hostname or "").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _same_endpoint(url: str, target: str) -> bool:
    a, b = urlsplit(url), urlsplit(target)
    return (a.scheme, a.hostname, a.port, a.path) == (b.scheme, b.hostname, b.port, b.path)


class HeadlessUserAgent:
    """Plays the browser: GETs the authorization URL, follows redirects hop by hop on loopback
    only, and stops once it has delivered the redirect to the client's `redirect_uri` (the
    loopback callback). Runs on a thread, so the caller's callback listener keeps answering.
    `report` receives one line without any query string (codes and state stay unprinted)."""

    def __init__(self, report: Callable[[str], None]) -> None:
        self._report = report
        self.thread: threading.Thread | None = None

    def open(self, url: str) -> None:
        self.thread = threading.Thread(target=self._run, args=(url,), daemon=True, name="bastion-demo-headless")
        self.thread.start()

    def _run(self, url: str) -> None:
        try:
            self._report(self._follow(url))
        except httpx2.HTTPError as exc:
            self._report(f"headless browser: HTTP error {type(exc).__name__}")

    def _follow(self, url: str) -> str:
        redirect_uris = parse_qs(urlsplit(url).query).get("redirect_uri")
        if not redirect_uris:
            return "headless browser: the authorization URL has no redirect_uri"
        callback = redirect_uris[0]
        current = url
        with httpx2.Client(follow_redirects=False, timeout=10.0, trust_env=False) as client:
            for _ in range(MAX_HOPS):
                if not _is_loopback(current):
                    return "headless browser: refusing to leave 127.0.0.1"
                response = client.get(current)
                where = urlsplit(current)
                if _same_endpoint(current, callback):
                    return f"headless browser: callback {where.path} answered HTTP {response.status_code}"
                if not response.is_redirect or "location" not in response.headers:
                    return f"headless browser: {where.path} answered HTTP {response.status_code}, no redirect"
                current = urljoin(current, response.headers["location"])
        return "headless browser: too many redirects"


class DemoBrowserUserAgent:
    """Python's `webbrowser` (honours `$BROWSER`), on a thread: some browsers' commands wait."""

    def __init__(self, report: Callable[[str], None]) -> None:
        self._report = report

    def open(self, url: str) -> None:
        self._report("opening your browser on the authorization server's /authorize page")

        def run() -> None:
            if not webbrowser.open(url):
                self._report(f"no browser opened; open this URL yourself:\n      {url}")

        threading.Thread(target=run, daemon=True, name="bastion-demo-browser").start()
