"""Bearer tokens on the wire to remote upstreams (RFC 6750 §2.1, §3; MCP authorization spec).

https://www.rfc-editor.org/rfc/rfc6750

`UpstreamBearerAuth` is the `httpx2.Auth` of one upstream's long-lived HTTP client. Per request
it reads the token from `TokenProvider.cached_token` (memory, no I/O) and only awaits
`fresh_token` when the provider says the token is near expiry. A 401 gets one
`refresh_after_401` and one retry; a 403 whose challenge says `insufficient_scope` asks the
provider to step up. Either way, when no usable token is left the upstream is told (through
`on_needs_authorization`) and the response goes back to the transport unchanged: an upstream
without a token is `needs-authorization`, not a gateway error.

Only this object sets `Authorization` on upstream requests; nothing from a downstream request
is ever copied to an upstream one. Token values never reach a log line or a message.

Where a token may go is decided once, when the upstream connects (`token_destination_problem`):
only to the URL it was obtained for (`TokenProvider.obtained_for`; a catalog edit or an imported
entry that points a server's name at another URL gets no token), and never over plain http except
to a loopback host. Requests then only read the token from memory.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Callable, Generator
from urllib.parse import urlsplit, urlunsplit

import httpx2

from bastion.oauth import rfc6750, rfc8707
from bastion.oauth.api import TokenProvider
from bastion.oauth.rfc8252 import is_loopback_host

logger = logging.getLogger(__name__)


def bearer_challenge_params(headers: list[str]) -> dict[str, str]:
    """The auth-params of the `Bearer` challenge among WWW-Authenticate values (RFC 6750 §3),
    lower-cased keys; empty when there is none. The grammar lives in `bastion.oauth.rfc6750`."""
    challenge = rfc6750.bearer_challenge(rfc6750.parse_www_authenticate_headers(headers))
    return dict(challenge.params) if challenge is not None else {}


def _shown(url: str) -> str:
    """`url` for a message: scheme, host, port and path only (a query may carry a key)."""
    try:
        parts = urlsplit(rfc8707.canonical_resource(url))
    except ValueError:
        return "(not an absolute URL)"
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


def plain_http_problem(url: str) -> str | None:
    """Why no OAuth token may be sent to `url` whatever it was obtained for: plain http to a host
    that is not loopback (anyone on the path would read it). None when https, or http to loopback."""
    parts = urlsplit(url)
    if parts.scheme.lower() == "http" and not is_loopback_host(parts.hostname or ""):
        return f"its URL {_shown(url)} is plain http; Bastion sends OAuth tokens only over https (or to loopback)"
    return None


def token_destination_problem(url: str, obtained_for: str | None) -> str | None:
    """Why the token obtained for `obtained_for` must not be sent to the server at `url`, or None
    when `url` is that URL (compared in RFC 8707 canonical form)."""
    try:
        canonical = rfc8707.canonical_resource(url)
    except ValueError:
        return "its URL is not an absolute URL; no token is sent to it"
    if obtained_for == canonical:
        return None
    if obtained_for is None:
        return "Bastion does not know which URL its token was obtained for; it is not sent"
    return (
        f"its URL changed: the token was obtained for {_shown(obtained_for)}, the server is now "
        f"at {_shown(url)}; the token is not sent there"
    )


class UpstreamBearerAuth(httpx2.Auth):
    """Injects the upstream's bearer token; refreshes once on 401; steps up on insufficient_scope."""

    def __init__(
        self,
        server: str,
        provider: TokenProvider,
        on_needs_authorization: Callable[[str], None],
    ) -> None:
        self._server = server
        self._provider = provider
        self._on_needs_authorization = on_needs_authorization
        self.gave_up = False
        """Set once no usable token is left: later 401s on this connection are not refreshed again."""

    def sync_auth_flow(self, request: httpx2.Request) -> Generator[httpx2.Request, httpx2.Response, None]:
        raise RuntimeError("UpstreamBearerAuth only works with httpx2.AsyncClient")

    async def token(self) -> str | None:
        """The token to send now: from memory, refreshed first when it is near expiry."""
        provider, server = self._provider, self._server
        token = provider.cached_token(server)
        if token is None or provider.needs_refresh(server):
            token = await provider.fresh_token(server)
        return token

    async def async_auth_flow(self, request: httpx2.Request) -> AsyncGenerator[httpx2.Request, httpx2.Response]:
        provider, server = self._provider, self._server
        token = await self.token()
        _authorize(request, token)
        response = yield request

        if response.status_code == 401:
            if token is None:
                self._give_up("no access token is stored")
                return
            if self.gave_up:
                return
            renewed = await provider.refresh_after_401(server, token)
            if renewed is None or renewed == token:
                self._give_up("the server rejected the access token and it could not be refreshed")
                return
            _authorize(request, renewed)
            response = yield request
            if response.status_code == 401:
                self._give_up("the server rejected a freshly refreshed access token")
                return

        if response.status_code == 403:
            params = bearer_challenge_params(response.headers.get_list("www-authenticate"))
            if params.get("error") == "insufficient_scope":
                scopes = params.get("scope", "").split()
                await provider.step_up(server, scopes)
                needed = f" ({' '.join(scopes)})" if scopes else ""
                self._give_up(f"the server requires more scopes{needed}")

    def _give_up(self, reason: str) -> None:
        self.gave_up = True
        self._on_needs_authorization(reason)


def _authorize(request: httpx2.Request, token: str | None) -> None:
    if token is None:
        request.headers.pop("Authorization", None)
    else:
        request.headers["Authorization"] = f"Bearer {token}"
