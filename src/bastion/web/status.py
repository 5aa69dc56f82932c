"""What one row of the OAuth page shows, built from plain values: the catalog entries of the
enabled servers, the store's provider records and, when the page runs inside a gateway, the
gateway's status rows. No I/O; the clock is passed in. Nothing secret is copied out of a record:
a view holds client ids, issuers, scopes and expiry times, never a token or a client secret.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from bastion.config.catalog import CatalogEntry
from bastion.store.models import ProviderRecord, ProviderState
from bastion.text import strip_userinfo


class UpstreamStatusRow(Protocol):
    """One row of `gateway_status()`: what a running gateway knows about one upstream.

    `bastion.gateway.upstream.UpstreamStatus` has this shape, so `Gateway.status` can be passed
    as is; `GatewayRow` is a plain implementation for anything else. It must hold no secret.
    """

    @property
    def name(self) -> str:
        """The server name (the catalog / registry key)."""
        ...

    @property
    def state(self) -> str:
        """disconnected, connecting, ready, needs-authorization or failed."""
        ...

    @property
    def transport(self) -> str:
        """stdio, streamable-http or sse."""
        ...

    @property
    def tools(self) -> int:
        """How many tools the upstream currently lists."""
        ...

    @property
    def last_error(self) -> str | None:
        """The last connection or protocol error, one line, secret-free."""
        ...


GatewayStatus = Callable[[], Sequence[UpstreamStatusRow]]
"""Called on every render and about twice a second while a page listens for changes: must be
cheap, synchronous and never block (read in-memory state only)."""


@dataclass(frozen=True)
class GatewayRow:
    """A plain `UpstreamStatusRow`."""

    name: str
    state: str
    transport: str
    tools: int = 0
    last_error: str | None = None


NOT_RUNNING = "not running"


@dataclass(frozen=True)
class OAuthView:
    """The OAuth side of a row."""

    state: ProviderState
    issuer: str | None = None
    client_id: str | None = None
    client_source: str | None = None
    """preregistered, cimd or dcr."""
    granted_scopes: tuple[str, ...] = ()
    requested_scopes: tuple[str, ...] = ()
    """Scopes to ask for on the next authorization (a step-up after `insufficient_scope`)."""
    expires_at: float | None = None
    refreshable: bool = False
    has_tokens: bool = False
    last_error: str | None = None


@dataclass(frozen=True)
class ServerView:
    """One enabled server."""

    name: str
    title: str
    transport: str
    connection: str
    """The gateway's upstream state, or `NOT_RUNNING`."""
    tools: int | None
    """None when no gateway runs it."""
    oauth: OAuthView | None
    """None for a server without OAuth."""
    last_error: str | None
    in_catalog: bool = True


@dataclass(frozen=True)
class AvailableView:
    """A catalog server that is not enabled."""

    name: str
    title: str
    transport: str
    uses_oauth: bool


@dataclass(frozen=True)
class Snapshot:
    servers: list[ServerView] = field(default_factory=list)
    available: list[AvailableView] = field(default_factory=list)


def transport_of(entry: CatalogEntry) -> str:
    if entry.is_remote and entry.remote is not None:
        return entry.remote.transport_type
    return "stdio"


def oauth_view(record: ProviderRecord | None, now: float) -> OAuthView:
    """The OAuth state of a record; a missing record is `unregistered`."""
    if record is None:
        return OAuthView(state=ProviderState.UNREGISTERED)
    tokens = record.tokens
    client = record.client
    issuer = tokens.issuer if tokens is not None else (client.issuer if client is not None else None)
    return OAuthView(
        state=record.state(now),
        issuer=strip_userinfo(issuer) if issuer is not None else None,
        client_id=client.client_id if client is not None else None,
        client_source=client.source if client is not None else None,
        granted_scopes=tuple(tokens.scopes) if tokens is not None else (),
        requested_scopes=tuple(record.requested_scopes),
        expires_at=tokens.expires_at if tokens is not None else None,
        refreshable=tokens is not None and bool(tokens.refresh_token),
        has_tokens=tokens is not None,
        last_error=strip_userinfo(record.last_error) if record.last_error else None,
    )


def snapshot(
    enabled: Sequence[str],
    catalog: Mapping[str, CatalogEntry],
    records: Mapping[str, ProviderRecord],
    gateway: Sequence[UpstreamStatusRow] | None,
    flow_errors: Mapping[str, str],
    now: float,
) -> Snapshot:
    """Rows for the enabled servers (registry order), then the catalog servers one can enable.

    The last error shown is the gateway's, else the store's, else the page's own last failed
    authorization of that server."""
    running = {row.name: row for row in gateway or ()}
    servers: list[ServerView] = []
    for name in enabled:
        entry = catalog.get(name)
        row = running.get(name)
        if entry is None:
            servers.append(
                ServerView(
                    name=name,
                    title="",
                    transport="?",
                    connection=row.state if row is not None else NOT_RUNNING,
                    tools=row.tools if row is not None else None,
                    oauth=None,
                    last_error="enabled but not in the catalog (check catalog.yaml)",
                    in_catalog=False,
                )
            )
            continue
        oauth = oauth_view(records.get(name), now) if entry.uses_oauth else None
        errors = (
            row.last_error if row is not None else None,
            oauth.last_error if oauth is not None else None,
            flow_errors.get(name),
        )
        servers.append(
            ServerView(
                name=name,
                title=entry.title or "",
                transport=row.transport if row is not None else transport_of(entry),
                connection=str(row.state) if row is not None else NOT_RUNNING,
                tools=row.tools if row is not None else None,
                oauth=oauth,
                last_error=next((strip_userinfo(e) for e in errors if e), None),
            )
        )
    enabled_set = set(enabled)
    available = [
        AvailableView(name=name, title=entry.title or "", transport=transport_of(entry), uses_oauth=entry.uses_oauth)
        for name, entry in sorted(catalog.items())
        if name not in enabled_set
    ]
    return Snapshot(servers=servers, available=available)


def gateway_signature(rows: Sequence[UpstreamStatusRow] | None) -> tuple[tuple[str, str, int, str | None], ...]:
    """What of the gateway's status the page shows: a change here is a change event."""
    return tuple(sorted((row.name, str(row.state), row.tools, row.last_error) for row in rows or ()))
