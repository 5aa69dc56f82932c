"""Server-rendered HTML of the OAuth page: pure functions of views, every value escaped.

The page is complete without JavaScript (forms post, the server redirects back); `ui.js`
only re-fetches the fragment when the event stream says something changed.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

from bastion.store.models import ProviderState
from bastion.web.security import CSRF_FIELD
from bastion.web.status import AvailableView, OAuthView, ServerView, Snapshot


@dataclass(frozen=True)
class Notice:
    """One line of the page's activity list (what the page itself did, and how it went)."""

    at: float
    level: str
    """info or error."""
    text: str


@dataclass(frozen=True)
class Links:
    """Where the page's routes are, under whatever prefix the app is mounted at."""

    base: str
    """The mount prefix, e.g. `/ui` (no trailing slash)."""

    def to(self, path: str) -> str:
        return f"{self.base}{path}"


def _relative(seconds: float) -> str:
    seconds = abs(seconds)
    if seconds < 90:
        return f"{int(seconds)}s"
    if seconds < 90 * 60:
        return f"{int(seconds // 60)} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def expiry_text(expires_at: float | None, now: float) -> str:
    if expires_at is None:
        return "no expiry given"
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(expires_at))
    left = expires_at - now
    return f"expires {stamp} (in {_relative(left)})" if left >= 0 else f"expired {stamp} ({_relative(left)} ago)"


def _scopes(scopes: Sequence[str]) -> str:
    return " ".join(f"<code>{escape(s)}</code>" for s in scopes) or "<em>none</em>"


def _oauth_cell(oauth: OAuthView | None, now: float) -> str:
    if oauth is None:
        return "<span class='oauth-state state-none'>no OAuth</span>"
    lines: list[str] = []
    state = oauth.state
    if state in (ProviderState.AUTHORIZED, ProviderState.EXPIRED) or (
        state is ProviderState.NEEDS_AUTHORIZATION and oauth.has_tokens
    ):
        lines.append(escape(expiry_text(oauth.expires_at, now)) + (" · refreshable" if oauth.refreshable else ""))
        lines.append(f"scopes: {_scopes(oauth.granted_scopes)}")
    if state is ProviderState.NEEDS_AUTHORIZATION:
        asked = _scopes(oauth.requested_scopes) if oauth.requested_scopes else "<em>as before</em>"
        lines.append(f"asks for: {asked}")
    if oauth.client_id is not None:
        source = f" ({escape(oauth.client_source)})" if oauth.client_source else ""
        lines.append(f"client: <code class='client-id'>{escape(oauth.client_id)}</code>{source}")
    if oauth.issuer is not None:
        lines.append(f"issuer: <code>{escape(oauth.issuer)}</code>")
    details = "".join(f"<div>{line}</div>" for line in lines)
    return (
        f"<span class='oauth-state state-{escape(state.value)}'>{escape(state.value)}</span>"
        f"<div class='detail'>{details}</div>"
    )


def _form(links: Links, action: str, server: str, label: str, csrf: str, *, new_tab: bool = False) -> str:
    target = " target='_blank'" if new_tab else ""
    return (
        f"<form method='post' action='{escape(links.to('/' + action))}'{target} class='action action-{action}'>"
        f"<input type='hidden' name='{CSRF_FIELD}' value='{escape(csrf)}'>"
        f"<input type='hidden' name='server' value='{escape(server)}'>"
        f"<button type='submit' name='do' value='{action}'>{escape(label)}</button></form>"
    )


def _actions(view: ServerView, links: Links, csrf: str) -> str:
    forms: list[str] = []
    oauth = view.oauth
    if oauth is not None:
        label = "Re-authorize" if oauth.state is ProviderState.AUTHORIZED else "Authorize"
        forms.append(_form(links, "authorize", view.name, label, csrf, new_tab=True))
        if oauth.has_tokens:
            forms.append(_form(links, "revoke", view.name, "Revoke", csrf))
    forms.append(_form(links, "disable", view.name, "Disable", csrf))
    return "".join(forms)


def _server_row(view: ServerView, links: Links, csrf: str, now: float) -> str:
    state = view.oauth.state.value if view.oauth is not None else "none"
    tools = "—" if view.tools is None else str(view.tools)
    error = escape(view.last_error) if view.last_error else "—"
    title = f"<div class='title'>{escape(view.title)}</div>" if view.title else ""
    return (
        f"<tr id='server-{escape(view.name)}' data-server='{escape(view.name)}' data-oauth-state='{escape(state)}'"
        f" data-connection='{escape(view.connection)}'>"
        f"<td class='name'><strong>{escape(view.name)}</strong>{title}</td>"
        f"<td class='transport'>{escape(view.transport)}</td>"
        f"<td class='connection'>{escape(view.connection)}</td>"
        f"<td class='oauth'>{_oauth_cell(view.oauth, now)}</td>"
        f"<td class='tools'>{tools}</td>"
        f"<td class='error'>{error}</td>"
        f"<td class='actions'>{_actions(view, links, csrf)}</td></tr>"
    )


def _available_row(view: AvailableView, links: Links, csrf: str) -> str:
    oauth = "OAuth" if view.uses_oauth else "—"
    title = f"<div class='title'>{escape(view.title)}</div>" if view.title else ""
    return (
        f"<tr id='available-{escape(view.name)}' data-server='{escape(view.name)}'>"
        f"<td class='name'><strong>{escape(view.name)}</strong>{title}</td>"
        f"<td class='transport'>{escape(view.transport)}</td><td>{oauth}</td>"
        f"<td class='actions'>{_form(links, 'enable', view.name, 'Enable', csrf)}</td></tr>"
    )


def _notices(notices: Sequence[Notice]) -> str:
    if not notices:
        return ""
    items = "".join(
        f"<li class='notice notice-{escape(n.level)}'><time>{time.strftime('%H:%M:%S', time.localtime(n.at))}</time> "
        f"{escape(n.text)}</li>"
        for n in reversed(notices)
    )
    return f"<ul id='notices'>{items}</ul>"


def fragment(snap: Snapshot, notices: Sequence[Notice], links: Links, csrf: str, now: float) -> str:
    """The live part of the page: activity, enabled servers, servers one can enable."""
    if snap.servers:
        rows = "".join(_server_row(v, links, csrf, now) for v in snap.servers)
        servers = (
            "<table id='servers'><thead><tr><th>Server</th><th>Transport</th><th>Connection</th><th>OAuth</th>"
            f"<th>Tools</th><th>Last error</th><th></th></tr></thead><tbody>{rows}</tbody></table>"
        )
    else:
        servers = "<p id='servers' class='empty'>No server is enabled. Enable one below.</p>"
    available = ""
    if snap.available:
        rows = "".join(_available_row(v, links, csrf) for v in snap.available)
        available = (
            "<h2>Catalog</h2><table id='available'><thead><tr><th>Server</th><th>Transport</th><th>Auth</th>"
            f"<th></th></tr></thead><tbody>{rows}</tbody></table>"
        )
    return f"{_notices(notices)}<h2>Enabled servers</h2>{servers}{available}"


def page(body: str, links: Links) -> str:
    """The whole page around `fragment(...)`."""
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'><title>Bastion</title>"
        f"<link rel='stylesheet' href='{escape(links.to('/static/ui.css'))}'>"
        f"<script src='{escape(links.to('/static/ui.js'))}' defer></script></head><body>"
        "<header><h1>Bastion</h1><p>MCP servers and their OAuth authorizations. "
        "<span id='live-status'>Reload the page to see changes.</span></p></header>"
        f"<main id='live' data-fragment='{escape(links.to('/fragment'))}' data-events='{escape(links.to('/events'))}'>"
        f"{body}</main></body></html>"
    )


def message_page(title: str, text: str, *, ok: bool, links: Links) -> str:
    """The page a new tab shows: the end of an authorization, or why it could not start."""
    back = f"<p><a href='{escape(links.to('/'))}'>Back to the Bastion page</a></p>"
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'><title>Bastion</title>"
        f"<link rel='stylesheet' href='{escape(links.to('/static/ui.css'))}'></head><body>"
        f"<main class='message {'ok' if ok else 'failed'}'><h1>{escape(title)}</h1><p>{escape(text)}</p>{back}"
        "</main></body></html>"
    )
