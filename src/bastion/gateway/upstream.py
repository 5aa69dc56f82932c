"""One upstream MCP server: how to reach it, and the supervisor that keeps a session to it.

`Upstream.run()` is the supervisor: it resolves secrets, opens the transport (a stdio
subprocess from the catalog `command`, or streamable HTTP / SSE to `remote.url`), negotiates
the protocol era with `mcp.Client` (`mode="auto"`), lists what the server offers, and then
holds that one session open; every forwarded request rides it. When the session ends (the
process exited, the HTTP transport broke) it reconnects with capped exponential backoff; a
stdio server that keeps dying is given up after `restart_max` attempts and reported `failed`.
Each upstream owns its resources (exit stack, task group), so one that hangs or fails never
holds up another.
"""

from __future__ import annotations

import enum
import functools
import logging
import math
import re
import ssl
import sys
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Final, Self, TypeVar

import anyio
import httpx2
import mcp_types as types
from mcp import Client
from mcp.client._transport import TransportStreams
from mcp.client.session import ClientSession, IncomingMessage
from mcp.client.sse import sse_client
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared._stream_protocols import ReadStream
from mcp.shared.dispatcher import CallOptions, Dispatcher, ProgressFnT
from mcp.shared.exceptions import MCPError
from mcp.shared.inbound import MCP_NAME_HEADER, NAME_BEARING_METHODS, encode_header_value
from mcp.shared.message import SessionMessage
from mcp_types import CONNECTION_CLOSED, INTERNAL_ERROR, LOG_LEVEL_META_KEY, REQUEST_TIMEOUT
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from pydantic import TypeAdapter

from bastion.config.catalog import CatalogEntry
from bastion.config.settings import GatewaySettings
from bastion.errors import NeedsAuthorizationError, SecretNotAllowedError, UpstreamError
from bastion.gateway.auth import UpstreamBearerAuth, plain_http_problem, token_destination_problem
from bastion.gateway.httpcap import cap_responses
from bastion.gateway.rawhttp import LimitExceeded, RawHTTPError
from bastion.gateway.switches import switched_on
from bastion.gateway.wire import Resend, WireChannel
from bastion.oauth.api import TokenProvider
from bastion.oauth.rfc6750 import is_token68
from bastion.text import strip_userinfo

logger = logging.getLogger(__name__)

SecretLookup = Callable[[str, str], Awaitable[str | None]]
"""`(server, name)`: the stored secret `name` when it is set for `server` (`Bastion.secret_for`);
None when it is not set; raises `SecretNotAllowedError` when it is set for other servers only."""

CLIENT_INFO: Final = types.Implementation(name="bastion", version="0.1.0")
STABLE_AFTER: Final = 30.0
"""A session that stayed ready this long resets the consecutive-failure count."""
BACKOFF_INITIAL: Final = 0.5
BACKOFF_MAX: Final = 30.0
MAX_LIST_PAGES: Final = 100
SSE_READ_TIMEOUT: Final = 300.0

_RAW_RESULT: Final[Any] = TypeAdapter(dict[str, Any])
"""Results are passed through as the wire dict, never rebuilt as models. (`send_request` is typed
for models only, but accepts any `TypeAdapter`; hence `Any`.)"""

_LIST_CHANGED_METHODS: Final = frozenset(
    {
        "notifications/tools/list_changed",
        "notifications/prompts/list_changed",
        "notifications/resources/list_changed",
    }
)
_LIST_CHANGED: Final = (
    types.ToolListChangedNotification,
    types.PromptListChangedNotification,
    types.ResourceListChangedNotification,
)
_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_.-]*)\}")


class UpstreamState(enum.StrEnum):
    """Where one upstream's supervisor is."""

    DISCONNECTED = "disconnected"
    """Not connected: not started yet, or the session ended and the next attempt waits out its backoff."""
    CONNECTING = "connecting"
    """Opening the transport, negotiating the protocol and listing tools/prompts/resources."""
    READY = "ready"
    """The session is up and its listing is served; requests are forwarded over it."""
    NEEDS_AUTHORIZATION = "needs-authorization"
    """No usable token (none stored, refresh failed, or more scopes needed); waits for `reconnect()`."""
    FAILED = "failed"
    """Cannot run as configured (missing secret, bad command) or gave up after `restart_max` attempts;
    waits for `reconnect()`."""


@dataclass(frozen=True, slots=True)
class Listing:
    """What a ready upstream offers, as its own names (before the gateway renames them)."""

    tools: tuple[types.Tool, ...] = ()
    prompts: tuple[types.Prompt, ...] = ()
    resources: tuple[types.Resource, ...] = ()
    resource_templates: tuple[types.ResourceTemplate, ...] = ()


EMPTY_LISTING: Final = Listing()


@dataclass(frozen=True, slots=True)
class UpstreamStatus:
    """A snapshot of one upstream for `status()` and `/health`. Holds no secret."""

    name: str
    state: UpstreamState
    transport: str
    tools: int
    prompts: int
    resources: int
    resource_templates: int
    last_error: str | None
    restarts: int
    protocol_version: str | None

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "state": str(self.state),
            "transport": self.transport,
            "tools": self.tools,
            "prompts": self.prompts,
            "resources": self.resources,
            "resource_templates": self.resource_templates,
            "last_error": self.last_error,
            "restarts": self.restarts,
            "protocol_version": self.protocol_version,
        }


def transport_kind(entry: CatalogEntry) -> str:
    if not entry.is_remote:
        return "stdio"
    assert entry.remote is not None
    return "sse" if entry.remote.transport_type == "sse" else "streamable-http"


def expand_variables(value: str, variables: Mapping[str, str], *, server: str, where: str) -> str:
    """Replace each `${VAR}` by `variables[VAR]` (what the entry declares); never the gateway's
    environment, so an entry cannot read the store key or another server's variables. A missing
    one is an error."""

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1)
        found = variables.get(name)
        if found is None:
            raise UpstreamError(
                f"server {server!r}: {where} uses ${{{name}}}, which the entry does not declare",
                hint=f"declare it in the entry's `secrets` (`{{name: SECRET_NAME, env: {name}}}`, then "
                f"`bastion secret set SECRET_NAME --server {server}`); the gateway's environment is never read",
            )
        return found

    return _VARIABLE.sub(substitute, value)


def declared_variables(entry: CatalogEntry, secrets: Mapping[str, str]) -> dict[str, str]:
    """What `${VAR}` in a header may name: the entry's secrets (`resolve_secrets`) and its own `env`
    values (themselves expanded from its secrets)."""
    declared = dict(secrets)
    for spec in entry.env:
        declared[spec.name] = expand_variables(spec.value, secrets, server=entry.name, where=f"env {spec.name}")
    return declared


async def resolve_secrets(entry: CatalogEntry, secret_lookup: SecretLookup) -> dict[str, str]:
    """The entry's secrets as `{env var name: value}` (and by secret name), from the store, each
    only when it was set for this server. Never from the gateway's environment."""
    values: dict[str, str] = {}
    for spec in entry.secrets:
        try:
            value = await secret_lookup(entry.name, spec.name)
        except SecretNotAllowedError as exc:
            raise UpstreamError(f"server {entry.name!r}: {exc.args[0]}", hint=exc.hint) from None
        if value is None:
            raise UpstreamError(
                f"server {entry.name!r} needs the secret {spec.name!r}",
                hint=f"run `bastion secret set {spec.name} --server {entry.name}`",
            )
        values[spec.env] = value
        values.setdefault(spec.name, value)
    return values


class _WatchedReadStream:
    """A transport's read stream that sets `ended` once the transport stops delivering."""

    def __init__(self, inner: ReadStream[SessionMessage | Exception], ended: anyio.Event) -> None:
        self._inner = inner
        self._ended = ended

    @property
    def last_context(self) -> object:
        # The dispatcher reads the sender's contextvars snapshot off context-aware streams.
        return getattr(self._inner, "last_context", None)

    async def receive(self) -> SessionMessage | Exception:
        try:
            return await self._inner.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError):
            self._ended.set()
            raise

    async def aclose(self) -> None:
        self._ended.set()
        await self._inner.aclose()

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> SessionMessage | Exception:
        try:
            return await self.receive()
        except anyio.EndOfStream:
            raise StopAsyncIteration from None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc_val: BaseException | None, exc_tb: TracebackType | None
    ) -> None:
        await self.aclose()


@asynccontextmanager
async def _watched(
    transport: AbstractAsyncContextManager[TransportStreams], ended: anyio.Event
) -> AsyncIterator[TransportStreams]:
    async with transport as (read_stream, write_stream):
        yield _WatchedReadStream(read_stream, ended), write_stream


def describe_error(exc: BaseException) -> str:
    """A one-line description of a connect failure, without secrets (no URLs with queries, no headers)."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    if isinstance(exc, MCPError):
        return exc.error.message
    if isinstance(exc, httpx2.HTTPStatusError):
        return f"HTTP {exc.response.status_code} from {exc.request.url.copy_with(query=None)}"
    if isinstance(exc, httpx2.RequestError):
        return f"{type(exc).__name__} for {exc.request.url.copy_with(query=None)}"
    if isinstance(exc, TimeoutError):
        return "timed out"
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class Upstream:
    """The supervisor of one upstream server and the session it holds."""

    def __init__(
        self,
        entry: CatalogEntry,
        settings: GatewaySettings,
        *,
        token_provider: TokenProvider | None,
        secret_lookup: SecretLookup,
        on_change: Callable[[Upstream], None],
        on_log: Callable[[str, types.LoggingMessageNotificationParams], None] | None = None,
        log_listeners: Callable[[], bool] | None = None,
        mode: str = "auto",
    ) -> None:
        self.entry = entry
        self.name = entry.name
        self.prefix = entry.prefix
        """The catalog entry's `prefix:` for exposed names (None: the server's name)."""
        self.settings = settings
        self.transport = transport_kind(entry)
        self.state = UpstreamState.DISCONNECTED
        self.listing: Listing = EMPTY_LISTING
        self.last_error: str | None = None
        self.restarts = 0
        self.protocol_version: str | None = None
        self._token_provider = token_provider
        self._secret_lookup = secret_lookup
        self._on_change = on_change
        self._on_log_message = on_log
        self._log_listeners = log_listeners
        """Whether anyone downstream can receive relayed log messages now (None: assume so)."""
        self._mode = mode
        self._session: ClientSession | None = None
        self._raw: tuple[_StampFn, Dispatcher[Any]] | None = None
        """The held session's stamp and dispatcher (`_raw_channel`), looked up once per session."""
        self._wire: WireChannel | None = None
        """The raw channel of the held session (streamable-HTTP upstreams), see `send_raw`."""
        self._stop = anyio.Event()
        self._reconnect = anyio.Event()
        self._relist = anyio.Event()
        self._auth_problem: str | None = None
        self._refused: str | None = None
        """The access token the server refused last (memory only, never shown): reconnecting with the
        same one again backs off (`_back_off_refused`)."""
        self._connect_scope: anyio.CancelScope | None = None
        self._request_timeout = settings.request_timeout

    # -- supervisor ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Supervise the upstream until cancelled. Never raises for the upstream's own failures."""
        failures = 0
        refusals = 0
        while True:
            self._stop = anyio.Event()
            self._reconnect = anyio.Event()
            self._auth_problem = None
            ready_at: list[float] = []
            error: str | None = None
            try:
                await self._serve_once(ready_at)
            except NeedsAuthorizationError as exc:
                self._auth_problem = str(exc)
            except UpstreamError as exc:
                # Configuration problems (missing secret, unset variable): retrying will not help.
                self._park(UpstreamState.FAILED, str(exc))
                await self._reconnect.wait()
                failures = 0
                continue
            except Exception as exc:  # task boundary: whatever the transport raised, this upstream failed
                error = describe_error(exc)
                logger.info("upstream %r: connection failed: %s", self.name, error, exc_info=logger.isEnabledFor(10))
            finally:
                self._forget_session()
            if self._auth_problem is not None:
                self._park(
                    UpstreamState.NEEDS_AUTHORIZATION,
                    f"{self._auth_problem}; run `bastion oauth authorize {self.name}`",
                )
                await self._reconnect.wait()
                refusals = refusals + 1 if self._holds_refused_token() else 0
                if refusals:
                    await self._back_off_refused(min(BACKOFF_INITIAL * 2 ** (refusals - 1), BACKOFF_MAX))
                failures = 0
                continue
            if self._reconnect.is_set():
                failures = 0
                continue
            if ready_at and anyio.current_time() - ready_at[0] >= STABLE_AFTER:
                failures = 0
            failures += 1
            self.restarts += 1
            reason = error or ("the server process exited" if self.transport == "stdio" else "the connection ended")
            if self.transport == "stdio" and failures > self.settings.restart_max:
                self._park(
                    UpstreamState.FAILED,
                    f"{reason}; gave up after {failures} attempts in a row "
                    f"(check the server's command and logs, then reconnect it)",
                )
                await self._reconnect.wait()
                failures = 0
                continue
            delay = min(BACKOFF_INITIAL * 2 ** (failures - 1), BACKOFF_MAX)
            self._park(UpstreamState.DISCONNECTED, f"{reason}; retrying in {delay:g}s")
            with anyio.move_on_after(delay):
                await self._reconnect.wait()

    async def _serve_once(self, ready_at: list[float]) -> None:
        """Connect, list, then hold the session until it ends or a reconnect is asked for."""
        self._set_state(UpstreamState.CONNECTING)
        connected = False
        with anyio.CancelScope(deadline=anyio.current_time() + self.settings.connect_timeout) as scope:
            self._connect_scope = scope
            async with AsyncExitStack() as stack:
                transport, wire = await self._open_transport(stack)
                client = Client(
                    _watched(transport, self._stop),
                    mode=self._mode,
                    read_timeout_seconds=self._request_timeout,
                    message_handler=self._on_message,
                    logging_callback=self._on_log,
                    # 2026-07-28 upstreams send log messages only to requests that opt in.
                    log_level="info",
                    client_info=CLIENT_INFO,
                    cache=None,
                )
                await stack.enter_async_context(client)
                session = client.session
                listing = await self._fetch_listing(session)
                scope.deadline = math.inf
                connected = True
                self._connect_scope = None
                self._session = session
                self._raw = _raw_channel(session)
                self._wire = wire
                self.protocol_version = session.protocol_version
                self.listing = listing
                self.last_error = None
                self._refused = None
                ready_at.append(anyio.current_time())
                self._set_state(UpstreamState.READY)
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._relist_loop, session)
                    if session.protocol_version in MODERN_PROTOCOL_VERSIONS:
                        tg.start_soon(self._listen_loop, client)
                    await self._stop.wait()
                    tg.cancel_scope.cancel()
                # Stop routing to this session now; closing the transport can take a while.
                self._drop_session(session)
        self._connect_scope = None
        if scope.cancelled_caught and not connected:
            raise TimeoutError(f"no answer within {self.settings.connect_timeout:g}s")

    async def _open_transport(
        self, stack: AsyncExitStack
    ) -> tuple[AbstractAsyncContextManager[TransportStreams], WireChannel | None]:
        """The transport to the server, and the raw channel beside it (streamable HTTP only)."""
        entry = self.entry
        secrets = await resolve_secrets(entry, self._secret_lookup)
        if self.transport == "stdio":
            env = {
                spec.name: expand_variables(spec.value, secrets, server=self.name, where=f"env {spec.name}")
                for spec in entry.env
            }
            env.update({spec.env: secrets[spec.env] for spec in entry.secrets})
            params = StdioServerParameters(command=entry.command[0], args=list(entry.command[1:]), env=env)
            return stdio_client(params, errlog=sys.stderr), None
        remote = entry.remote
        assert remote is not None
        variables = declared_variables(entry, secrets)
        headers = {
            key: expand_variables(value, variables, server=self.name, where=f"header {key}")
            for key, value in remote.headers.items()
        }
        for key, value in headers.items():
            if any(c in value for c in "\r\n\0"):
                # h11 would refuse it quoting the value (a secret, often) into the SDK's log.
                raise UpstreamError(
                    f"server {self.name!r}: header {key!r} holds a line break or NUL once its variables are expanded",
                    hint="check the secret or variable it expands, and set it again without line breaks",
                )
        auth: UpstreamBearerAuth | None = None
        if entry.uses_oauth and self._token_provider is not None:
            auth = await self._bearer_auth(self._token_provider, remote.url)
        timeout = httpx2.Timeout(self.settings.connect_timeout, read=max(SSE_READ_TIMEOUT, self._request_timeout))
        if self.transport == "sse":
            transport = sse_client(
                remote.url,
                headers=headers,
                timeout=self.settings.connect_timeout,
                sse_read_timeout=max(SSE_READ_TIMEOUT, self._request_timeout),
                httpx_client_factory=functools.partial(_capped_client, self.name),
                auth=auth,
            )
            return transport, None
        # One client per session, reused by every request on it (no per-call client), on the
        # process's one TLS context: building one per client cost ~25 ms each, half the start-up
        # time of 100 upstreams (docs/benchmarks.md).
        http_client = cap_responses(
            httpx2.AsyncClient(headers=headers, auth=auth, timeout=timeout, verify=_tls_context()), self.name
        )
        wire = self._wire_channel(remote.url, http_client, auth)
        if wire is not None:
            stack.callback(wire.close)
            http_client.event_hooks["response"].append(wire.observe)
        await stack.enter_async_context(http_client)
        return streamable_http_client(remote.url, http_client=http_client), wire

    async def _bearer_auth(self, provider: TokenProvider, url: str) -> UpstreamBearerAuth:
        """The session's token injection, once it is clear the token may go to `url` (checked here,
        at connect time, not per request): over https or to loopback, and only to the URL the token
        was obtained for. Otherwise the server needs authorization (or a fixed URL)."""
        problem = plain_http_problem(url)
        if problem is not None:
            raise UpstreamError(f"server {self.name!r}: {problem}", hint="use an https URL in its catalog entry")
        obtained_for = provider.obtained_for(self.name)
        if obtained_for is not None and (problem := token_destination_problem(url, obtained_for)) is not None:
            raise NeedsAuthorizationError(problem)  # before a refresh: that token is not for this URL
        token = await provider.fresh_token(self.name)
        if token is None:
            raise NeedsAuthorizationError("no access token is stored")
        if not is_token68(token):  # RFC 6750 b64token; one stored before tokens were checked at parsing
            raise NeedsAuthorizationError("the stored access token is not a valid Bearer token")
        problem = token_destination_problem(url, provider.obtained_for(self.name))
        if problem is not None:
            raise NeedsAuthorizationError(problem)
        return UpstreamBearerAuth(self.name, provider, self._needs_authorization)

    def _wire_channel(
        self, url: str, http_client: httpx2.AsyncClient, auth: UpstreamBearerAuth | None
    ) -> WireChannel | None:
        """The raw channel for `send_raw`, or None where only httpx2 can reach the server (a proxy
        applies to the URL, a URL or header the small client refuses) or it is switched off."""
        if not wire_enabled() or _proxied(url, http_client):
            return None
        try:
            return WireChannel(
                url,
                dict(http_client.headers),
                bearer=auth.token if auth is not None else None,
                on_notification=self._on_wire_notification,
                ssl_context=_tls_context(),
                connect_timeout=self.settings.connect_timeout,
            )
        except ValueError as exc:
            logger.debug("upstream %r: no raw channel: %s", self.name, exc)
            return None

    async def _fetch_listing(self, session: ClientSession) -> Listing:
        caps = session.server_capabilities or types.ServerCapabilities()
        tools: tuple[types.Tool, ...] = ()
        prompts: tuple[types.Prompt, ...] = ()
        resources: tuple[types.Resource, ...] = ()
        templates: tuple[types.ResourceTemplate, ...] = ()
        if caps.tools is not None:
            tools = await _all_pages(session.list_tools, lambda page: (page.tools, page.next_cursor))
        if caps.prompts is not None:
            prompts = await _all_pages(session.list_prompts, lambda page: (page.prompts, page.next_cursor))
        if caps.resources is not None:
            resources = await _all_pages(session.list_resources, lambda page: (page.resources, page.next_cursor))
            templates = await _all_pages(
                session.list_resource_templates, lambda page: (page.resource_templates, page.next_cursor)
            )
        return Listing(tools, prompts, resources, templates)

    async def _relist_loop(self, session: ClientSession) -> None:
        while True:
            await self._relist.wait()
            self._relist = anyio.Event()
            try:
                with anyio.fail_after(self._request_timeout):
                    listing = await self._fetch_listing(session)
            except (MCPError, TimeoutError) as exc:
                logger.warning("upstream %r: re-listing after a change failed: %s", self.name, describe_error(exc))
                continue
            self.listing = listing
            self._on_change(self)

    async def _listen_loop(self, client: Client) -> None:
        """2026-07-28 upstreams announce list changes only on a `subscriptions/listen` stream."""
        caps = client.session.server_capabilities or types.ServerCapabilities()
        wants_tools = bool(caps.tools and caps.tools.list_changed)
        wants_prompts = bool(caps.prompts and caps.prompts.list_changed)
        wants_resources = bool(caps.resources and caps.resources.list_changed)
        if not (wants_tools or wants_prompts or wants_resources):
            return
        try:
            async with client.listen(
                tools_list_changed=wants_tools,
                prompts_list_changed=wants_prompts,
                resources_list_changed=wants_resources,
            ) as subscription:
                async for _event in subscription:
                    self._relist.set()
        except Exception as exc:  # task boundary: losing change events must not end the session
            logger.info("upstream %r: change subscription ended: %s", self.name, describe_error(exc))

    async def _on_message(self, message: IncomingMessage) -> None:
        if isinstance(message, _LIST_CHANGED):
            self._relist.set()
        elif isinstance(message, Exception):
            logger.debug("upstream %r: transport reported %s", self.name, describe_error(message))

    def _on_wire_notification(self, message: dict[str, Any]) -> None:
        """A notification that arrived on a raw channel's response stream."""
        method = message.get("method")
        if method in _LIST_CHANGED_METHODS:
            self._relist.set()
        elif method == "notifications/message":
            try:
                params = types.LoggingMessageNotificationParams.model_validate(message.get("params"))
            except ValueError:
                logger.debug("upstream %r: malformed log message dropped", self.name)
                return
            self._log(params)

    async def _on_log(self, params: types.LoggingMessageNotificationParams) -> None:
        self._log(params)

    def _log(self, params: types.LoggingMessageNotificationParams) -> None:
        logger.debug("upstream %r [%s] %s", self.name, params.level, params.data)
        if self._on_log_message is not None:
            self._on_log_message(self.name, params)

    def _drop_session(self, session: ClientSession) -> None:
        if self._session is session:
            self._forget_session()
            self._set_state(UpstreamState.DISCONNECTED)

    def _forget_session(self) -> None:
        """Stop routing to the held session and the raw channel that goes with it."""
        self._session = None
        self._raw = None
        self._wire = None

    def _holds_refused_token(self) -> bool:
        provider = self._token_provider
        return self._refused is not None and provider is not None and provider.cached_token(self.name) == self._refused

    async def _back_off_refused(self, delay: float) -> None:
        """A reconnect while the token held is still the one the server refused: wait `delay` first
        (a server refusing every token is not asked again and again); a new token connects at once."""
        with anyio.move_on_after(delay):
            while self._holds_refused_token():
                self._reconnect = anyio.Event()
                await self._reconnect.wait()

    def _needs_authorization(self, reason: str) -> None:
        # The token the server just refused (None when there is none, e.g. after a step-up).
        self._refused = self._token_provider.cached_token(self.name) if self._token_provider is not None else None
        self._auth_problem = reason
        self._stop.set()
        if self._connect_scope is not None:
            self._connect_scope.cancel()

    def _set_state(self, state: UpstreamState) -> None:
        self.state = state
        self._on_change(self)

    def _park(self, state: UpstreamState, error: str) -> None:
        self.last_error = strip_userinfo(error)  # shown by /health and /ui
        self.listing = EMPTY_LISTING
        self.protocol_version = None
        self._set_state(state)

    # -- control (safe to call from any task) ---------------------------------------------------

    def reconnect(self) -> None:
        """Drop the session (if any) and connect again now, resetting the failure count."""
        self._reconnect.set()
        self._stop.set()

    def status(self) -> UpstreamStatus:
        listing = self.listing
        return UpstreamStatus(
            name=self.name,
            state=self.state,
            transport=self.transport,
            tools=len(listing.tools),
            prompts=len(listing.prompts),
            resources=len(listing.resources),
            resource_templates=len(listing.resource_templates),
            last_error=self.last_error,
            restarts=self.restarts,
            protocol_version=self.protocol_version,
        )

    # -- forwarding (the hot path) --------------------------------------------------------------

    def unavailable_message(self) -> str:
        name = self.name
        if self.state is UpstreamState.NEEDS_AUTHORIZATION:
            return f"server {name!r} needs authorization: run `bastion oauth authorize {name}`"
        if self.state is UpstreamState.FAILED:
            return f"server {name!r} failed: {self.last_error}"
        detail = f" (last error: {self.last_error})" if self.last_error else ""
        return f"server {name!r} is {self.state.value}{detail}; try again shortly"

    async def send(
        self,
        request: types.ClientRequest,
        *,
        progress: ProgressFnT | None = None,
    ) -> dict[str, Any]:
        """Forward `request` over the held session; the result is the upstream's wire dict.

        Raises `MCPError` naming the server when it is unavailable, times out or goes away;
        the upstream's own JSON-RPC errors pass through unchanged.
        """
        session = self._session
        if session is None:
            raise MCPError(code=INTERNAL_ERROR, message=self.unavailable_message())
        try:
            result: dict[str, Any] = await session.send_request(request, _RAW_RESULT, progress_callback=progress)
            return result
        except MCPError as exc:
            raise self._forwarding_error(session, exc, request.method) from None

    def can_send_raw(self) -> bool:
        """Whether `send_raw` can use the held session's raw channel (see there)."""
        return self._raw is not None  # set and cleared with the session

    async def send_raw(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        """Forward one request, given as its wire params, over the held session without the typed layer.

        The lean path (lean.py) uses this for `tools/call` and `resources/read`. The params are
        stamped by the session exactly as `ClientSession.send_request` stamps them
        (protocol-version/method/name headers, the 2026-07-28 `_meta` envelope, `Mcp-Param-*`);
        the result is the wire dict as received (no request model dump, no per-version result
        validation). The downstream side sieves the result for its own client anyway.

        For a streamable-HTTP upstream the request goes out on the session's raw channel
        (wire.py: one POST on a keep-alive connection, the reply parsed with one `json.loads`);
        whatever that channel hands back as not run (401, 403, 404, a redirect, no connection) is
        sent again through the SDK session, whose transport and `UpstreamBearerAuth` handle it as
        for any request. Other transports use the session dispatcher's `send_raw_request` — same
        request ids, timeout, cancellation and transport. Errors are the same as `send`'s.
        """
        session = self._session
        if session is None:
            raise MCPError(code=INTERNAL_ERROR, message=self.unavailable_message())
        channel = self._raw
        if channel is None:  # pragma: no cover - guarded by can_send_raw()
            raise MCPError(code=INTERNAL_ERROR, message=self.unavailable_message())
        stamp, dispatcher = channel
        data: dict[str, Any] = {"method": method, "params": params}
        opts: CallOptions = {}
        stamp(data, opts)
        if self._log_listeners is not None and not self._log_listeners():
            # 2026-07-28 log delivery is a per-request opt-in, and it costs the upstream work on
            # every call; with no downstream session to relay to, don't ask for it.
            meta = data["params"].get("_meta")
            if isinstance(meta, dict):
                meta.pop(LOG_LEVEL_META_KEY, None)
        headers = opts.setdefault("headers", {})
        name_key = NAME_BEARING_METHODS.get(method)
        if name_key is not None and MCP_NAME_HEADER not in headers:
            name = params.get(name_key)
            if isinstance(name, str):
                headers[MCP_NAME_HEADER] = encode_header_value(name)
        wire = self._wire
        if wire is not None:
            try:
                with anyio.fail_after(self._request_timeout):
                    return await wire.request(method, data["params"], headers)
            except Resend:
                pass
            except TimeoutError:
                raise self._forwarding_error(
                    session, MCPError(code=REQUEST_TIMEOUT, message="timed out"), method
                ) from None
            except LimitExceeded as exc:
                raise MCPError(
                    code=INTERNAL_ERROR,
                    message=f"server {self.name!r} {exc}, more than the gateway accepts: the reply was dropped, "
                    f"and the request may have run there — check that server, or ask it for less",
                ) from None
            except RawHTTPError as exc:
                raise MCPError(
                    code=INTERNAL_ERROR,
                    message=f"server {self.name!r}: the connection broke before the reply ({exc}); "
                    f"the request may or may not have run",
                ) from None
            except MCPError as exc:
                raise self._forwarding_error(session, exc, method) from None
        opts["timeout"] = self._request_timeout
        try:
            return await dispatcher.send_raw_request(method, data["params"], opts)
        except MCPError as exc:
            raise self._forwarding_error(session, exc, method) from None

    def _forwarding_error(self, session: ClientSession, exc: MCPError, method: str) -> MCPError:
        """The error a forwarded request fails with: the upstream's own JSON-RPC errors unchanged,
        else what happened to the server (needs authorization, timed out, went away)."""
        if self._auth_problem is not None:
            return MCPError(
                code=INTERNAL_ERROR,
                message=f"server {self.name!r} needs authorization: run `bastion oauth authorize {self.name}`",
            )
        if exc.code == REQUEST_TIMEOUT:
            return MCPError(
                code=REQUEST_TIMEOUT,
                message=f"server {self.name!r} did not answer {method} within {self._request_timeout:g}s",
            )
        if exc.code == CONNECTION_CLOSED or exc.error.message == "Session terminated":
            self._drop_session(session)
            self._stop.set()
            return MCPError(
                code=CONNECTION_CLOSED,
                message=f"server {self.name!r} closed the connection; reconnecting",
            )
        return exc


_StampFn = Callable[[dict[str, Any], CallOptions], None]

WIRE_ENV: Final = "BASTION_WIRE"
_PROXY_VARIABLES: Final = ("http", "https", "all")


def wire_enabled() -> bool:
    """The raw upstream channel is on unless `BASTION_WIRE=0` (benchmarks compare both)."""
    return switched_on(WIRE_ENV)


def _proxied(url: str, http_client: httpx2.AsyncClient) -> bool:
    """Whether `http_client` sends requests for `url` through a proxy. Only httpx2 speaks to
    proxies, so then the raw channel stays off and every request takes the SDK's path, through the
    proxy. The client is asked itself: it read `urllib.request.getproxies()` (the environment, and
    the system settings on macOS and Windows) and `no_proxy` when it was built, and matches them as
    it routes (private in httpx2 2.16: `_transport_for_url`, `_transport`). Should that lookup be
    gone, any configured HTTP(S) proxy counts, whatever `no_proxy` says."""
    route = getattr(http_client, "_transport_for_url", None)
    direct = getattr(http_client, "_transport", None)
    if not callable(route) or direct is None:
        proxies = urllib.request.getproxies()
        return any(proxies.get(kind) for kind in _PROXY_VARIABLES)
    try:
        return route(httpx2.URL(url)) is not direct
    except httpx2.InvalidURL:
        return True  # httpx2 cannot route it either; the small client is not the one to try


def _capped_client(
    server: str,
    headers: dict[str, str] | None = None,
    timeout: httpx2.Timeout | None = None,
    auth: httpx2.Auth | None = None,
) -> httpx2.AsyncClient:
    """The SSE transport's client: the SDK's, with the reply caps of httpcap.py."""
    return cap_responses(create_mcp_http_client(headers=headers, timeout=timeout, auth=auth), server)


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """httpx2's default context (same trust store and settings, `SSL_CERT_FILE` etc. honoured),
    built once per process and shared by every upstream's clients: each costs ~25 ms to build."""
    return httpx2.create_ssl_context()


def _raw_channel(session: ClientSession) -> tuple[_StampFn, Dispatcher[Any]] | None:
    """The session's request stamp and dispatcher (private in mcp 2.3.0: `_stamp`, `_dispatcher`),
    or None if this SDK version has neither, in which case callers use the typed `send`."""
    stamp = getattr(session, "_stamp", None)
    dispatcher = getattr(session, "_dispatcher", None)
    if not callable(stamp) or dispatcher is None or not hasattr(dispatcher, "send_raw_request"):
        return None
    return stamp, dispatcher


@dataclass
class UpstreamHandle:
    """An upstream plus the cancel scope its supervisor runs in (owned by the runtime)."""

    upstream: Upstream
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    done: anyio.Event = field(default_factory=anyio.Event)


PageT = TypeVar("PageT")
ItemT = TypeVar("ItemT")


async def _all_pages(
    fetch: Callable[..., Awaitable[PageT]],
    items_of: Callable[[PageT], tuple[Sequence[ItemT], str | None]],
) -> tuple[ItemT, ...]:
    """Every item of a paginated list, following `nextCursor` for at most `MAX_LIST_PAGES` pages
    (a paginator that never ends cannot hang the connection)."""
    items: list[ItemT] = []
    cursor: str | None = None
    for _ in range(MAX_LIST_PAGES):
        page = await fetch(params=types.PaginatedRequestParams(cursor=cursor))
        found, cursor = items_of(page)
        items.extend(found)
        if cursor is None:
            break
    return tuple(items)
