"""What the gateway needs from the OAuth client, as a Protocol.

The gateway never reads the store or runs discovery per request: it asks a `TokenProvider`
for the cached bearer token (no I/O), and only on expiry or a 401 for a refresh (single-flight
per server, and across processes sharing the store).
"""

from __future__ import annotations

from typing import Protocol


class TokenProvider(Protocol):
    def cached_token(self, server: str) -> str | None:
        """The current access token from memory, or None. Never does I/O."""
        ...

    def obtained_for(self, server: str) -> str | None:
        """The canonical URL (RFC 8707 form) of the MCP server the cached token was obtained for;
        None when there is no cached token. No I/O. The gateway checks it when it connects: a token
        is sent only to the URL it was obtained for."""
        ...

    def needs_refresh(self, server: str) -> bool:
        """True when the cached token is within the refresh margin of its expiry. No I/O."""
        ...

    async def fresh_token(self, server: str) -> str | None:
        """A token valid beyond the refresh margin: the cached one, or a refreshed one.
        None when the server has no usable token (it is then `needs-authorization`)."""
        ...

    async def refresh_after_401(self, server: str, rejected: str) -> str | None:
        """The upstream rejected `rejected`: refresh once (unless someone already did) and return
        the new token, or None when the user must authorize again."""
        ...

    async def step_up(self, server: str, challenged_scopes: list[str]) -> None:
        """A 403 insufficient_scope: mark the provider needs-authorization with the union of the
        scopes held and challenged."""
        ...
