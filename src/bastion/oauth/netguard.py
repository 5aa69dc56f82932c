"""The OAuth client's HTTP transport: every request to a URL taken from metadata (discovery,
registration, token, revocation) resolves its host once, checks every address it got, and
connects to a checked address — never to what a second lookup might answer (DNS rebinding) —
while the Host header, TLS SNI and certificate verification keep the URL's own name.

Rules (the address check itself is `endpoint_security.address_refusal`, pure):

- an address outside the public internet (loopback, RFC 1918, carrier-grade NAT, unique-local,
  multicast, reserved) is used only when the MCP server the request is made for has an address
  in the same class; link-local and cloud metadata addresses never. The MCP server is the one
  named by the innermost `serving(server_url)` block (discovery, registration and the client
  credentials grant open one); outside of one, any of the servers `anchors()` names (the
  enabled servers) — the code exchange, refresh and revocation requests of the other modules;
- a response body is read up to `max_body` bytes (1 MiB: metadata, registration and token
  responses are a few KiB); a larger one is refused, without reading the rest;
- each request, body included, ends within `deadline` seconds: a server that trickles a byte
  a second is cut off, not just one that stops;
- bodies come uncompressed (`Accept-Encoding: identity`); a server that compresses anyway is
  refused, so the cap is on what lands in memory;
- every way of not getting an answer — no such name, a closed port, a filtered one, a stall, a
  reset — is the same `Unreachable` "could not reach <origin>", so the errors tell nothing about
  what listens where;
- no connection is reused: each request gets its own, to the address checked for it.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import ssl
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field

import anyio
import httpcore2
import httpx2

from bastion.oauth.endpoint_security import (
    AddressClass,
    IPAddress,
    address_class,
    address_refusal,
    parse_address,
    url_for_message,
)

__all__ = [
    "DEADLINE",
    "MAX_BODY",
    "AddressRefused",
    "GuardError",
    "GuardedTransport",
    "Resolver",
    "ResponseTooLarge",
    "Unreachable",
    "describe",
    "serving",
    "system_resolver",
]

MAX_BODY = 1024 * 1024
"""Bytes of one response body (the mcp SDK caps an SSE event at the same 1 MiB)."""
DEADLINE = 30.0
"""Seconds for one request, from resolving the name to the body's last byte."""

Resolver = Callable[[str, int], Awaitable[Sequence[IPAddress]]]
"""(host, port) → the addresses to check and connect to; raises OSError when there are none."""

_NO_ANSWER: tuple[type[Exception], ...] = (
    TimeoutError,
    OSError,
    httpcore2.TimeoutException,
    httpcore2.NetworkError,
    httpcore2.ProtocolError,
    httpcore2.ProxyError,
    httpcore2.UnsupportedProtocol,
    httpcore2.ConnectionNotAvailable,
)
"""What a request can end with when the other side does not answer properly."""


class GuardError(httpx2.TransportError):
    """A request the guard stopped. A `TransportError`, so every caller that handles an
    unreachable server handles these too. `origin` is the URL's scheme, host and port."""

    def __init__(self, message: str, *, origin: str) -> None:
        super().__init__(message)
        self.origin = origin


class Unreachable(GuardError):
    """No answer: unknown name, refused, timed out, reset, past the deadline (one message for all)."""


class AddressRefused(GuardError):
    """The host resolves to an address Bastion does not send this MCP server's requests to."""


class ResponseTooLarge(GuardError):
    """The response body is larger than the cap, or compressed when it was asked not to be."""


def describe(exc: httpx2.TransportError, url: str) -> str:
    """What to tell a person about a failed request to `url`: the guard's own message, else the
    one message for every kind of no-answer (whatever client raised it)."""
    if isinstance(exc, GuardError):
        return str(exc)
    try:
        origin = _origin(httpx2.URL(url))
    except httpx2.InvalidURL:
        origin = url_for_message(url)
    return f"could not reach {origin}"


def hint(exc: httpx2.TransportError, retry: str) -> str:
    """What to do next: `retry` when the server did not answer; when the guard refused the
    address or the answer, trying again will not help."""
    if isinstance(exc, AddressRefused):
        return "the server's metadata points where Bastion sends no credentials; check which server this is"
    if isinstance(exc, ResponseTooLarge):
        return "the authorization server's answer is not a plausible OAuth response; check the server"
    return retry


async def system_resolver(host: str, port: int) -> list[IPAddress]:
    """The system's answer for `host`, each address once, in its order."""
    infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses: list[IPAddress] = []
    for *_, sockaddr in infos:
        address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if address not in addresses:
            addresses.append(address)
    return addresses


@dataclass
class _Scope:
    """One operation for one MCP server: its addresses' classes, and one answer per name."""

    server_url: str
    answers: dict[str, tuple[IPAddress, ...]] = field(default_factory=dict)
    server_classes: frozenset[AddressClass] | None = None


_current: ContextVar[_Scope | None] = ContextVar("bastion_netguard_scope", default=None)


@contextlib.contextmanager
def serving(server_url: str) -> Iterator[None]:
    """Requests inside are made for the MCP server at `server_url`: its address classes decide,
    and each name is resolved once for the whole block (a nested block for the same server
    shares the outer one's answers)."""
    outer = _current.get()
    if outer is not None and outer.server_url == server_url:
        yield
        return
    token = _current.set(_Scope(server_url))
    try:
        yield
    finally:
        _current.reset(token)


def _origin(url: httpx2.URL) -> str:
    return url_for_message(f"{url.scheme}://{url.netloc.decode('ascii', 'replace')}")


def _host_port(url: str) -> tuple[str, int] | None:
    try:
        parsed = httpx2.URL(url)
    except httpx2.InvalidURL:
        return None
    if not parsed.raw_host:
        return None
    return _ascii_host(parsed), parsed.port or (443 if parsed.scheme == "https" else 80)


def _ascii_host(url: httpx2.URL) -> str:
    """The host as it goes on the wire (IDNA-encoded), for resolving."""
    return url.raw_host.decode("ascii")


class _PinnedBackend(httpcore2.AsyncNetworkBackend):
    """Connects to the checked addresses only, whatever host the connection asks for (TLS then
    runs over that socket with the URL's name as SNI and for verification)."""

    def __init__(self, addresses: Sequence[IPAddress], inner: httpcore2.AsyncNetworkBackend) -> None:
        self._addresses = addresses
        self._inner = inner

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore2.SOCKET_OPTION] | None = None,
    ) -> httpcore2.AsyncNetworkStream:
        failure: Exception = httpcore2.ConnectError("no address")
        for address in self._addresses:
            try:
                return await self._inner.connect_tcp(
                    str(address), port, timeout=timeout, local_address=local_address, socket_options=socket_options
                )
            except (httpcore2.ConnectError, httpcore2.ConnectTimeout) as exc:
                failure = exc
        raise failure

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore2.SOCKET_OPTION] | None = None,
    ) -> httpcore2.AsyncNetworkStream:
        raise httpcore2.ConnectError("unix sockets are not used for OAuth endpoints")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


def _identity_encoding(headers: Sequence[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    kept = [(name, value) for name, value in headers if name.lower() != b"accept-encoding"]
    return [*kept, (b"Accept-Encoding", b"identity")]


class _CappedStream(httpx2.AsyncByteStream):
    """The response body, up to `limit` bytes and until `deadline`; closing it closes the pool."""

    def __init__(
        self,
        stream: AsyncIterable[bytes],
        pool: httpcore2.AsyncConnectionPool,
        *,
        limit: int,
        deadline: float,
        origin: str,
    ) -> None:
        self._stream = stream
        self._pool = pool
        self._limit = limit
        self._deadline = deadline
        self._origin = origin

    async def __aiter__(self) -> AsyncIterator[bytes]:
        received = 0
        chunks = aiter(self._stream)
        try:
            while True:
                try:
                    with anyio.fail_after(max(self._deadline - anyio.current_time(), 0.0)):
                        chunk = await anext(chunks)
                except StopAsyncIteration:
                    return
                except _NO_ANSWER:
                    raise Unreachable(f"could not reach {self._origin}", origin=self._origin) from None
                received += len(chunk)
                if received > self._limit:
                    raise ResponseTooLarge(
                        f"{self._origin} sent a response larger than {_size(self._limit)}; Bastion stopped reading it",
                        origin=self._origin,
                    )
                yield chunk
        finally:
            await _close(chunks)

    async def aclose(self) -> None:
        try:
            await _close(self._stream)
        finally:
            with anyio.CancelScope(shield=True):
                await self._pool.aclose()


async def _close(stream: object) -> None:
    closer = getattr(stream, "aclose", None)
    if closer is not None:
        with anyio.CancelScope(shield=True):
            await closer()


def _size(limit: int) -> str:
    return f"{limit // (1024 * 1024)} MiB" if limit % (1024 * 1024) == 0 else f"{limit} bytes"


class GuardedTransport(httpx2.AsyncBaseTransport):
    """See the module docstring. `resolver` and `network_backend` are for tests (a resolver that
    answers what the test says, a backend that maps the checked addresses onto loopback)."""

    def __init__(
        self,
        *,
        anchors: Callable[[], Iterable[str]] = tuple,
        resolver: Resolver = system_resolver,
        network_backend: httpcore2.AsyncNetworkBackend | None = None,
        ssl_context: ssl.SSLContext | None = None,
        max_body: int = MAX_BODY,
        deadline: float = DEADLINE,
    ) -> None:
        self._anchors = anchors
        self._resolver = resolver
        self._backend = network_backend or httpcore2.AnyIOBackend()
        self._ssl_context = ssl_context or httpx2.create_ssl_context(trust_env=False)
        self._max_body = max_body
        self._deadline = deadline

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        origin = _origin(request.url)
        deadline = anyio.current_time() + self._deadline
        unreachable = Unreachable(f"could not reach {origin}", origin=origin)
        try:
            with anyio.fail_after(self._deadline):
                addresses = await self._checked_addresses(request.url, origin)
        except _NO_ANSWER:
            raise unreachable from None
        pool = httpcore2.AsyncConnectionPool(
            ssl_context=self._ssl_context,
            max_connections=1,
            max_keepalive_connections=0,
            network_backend=_PinnedBackend(addresses, self._backend),
        )
        core_request = httpcore2.Request(
            method=request.method,
            url=httpcore2.URL(
                scheme=request.url.raw_scheme,
                host=request.url.raw_host,
                port=request.url.port,
                target=request.url.raw_path,
            ),
            headers=_identity_encoding(request.headers.raw),
            content=request.stream,
            extensions=request.extensions,
        )
        try:
            try:
                with anyio.fail_after(max(deadline - anyio.current_time(), 0.0)):
                    response = await pool.handle_async_request(core_request)
            except _NO_ANSWER:
                raise unreachable from None
            self._check_head(response, origin)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await pool.aclose()
            raise
        assert isinstance(response.stream, AsyncIterable)
        return httpx2.Response(
            status_code=response.status,
            headers=response.headers,
            stream=_CappedStream(response.stream, pool, limit=self._max_body, deadline=deadline, origin=origin),
            extensions=response.extensions,
        )

    def _check_head(self, response: httpcore2.Response, origin: str) -> None:
        headers = httpx2.Headers(response.headers)
        encoding = headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            raise ResponseTooLarge(
                f"{origin} sent a compressed response ({encoding}) although Bastion asked for none",
                origin=origin,
            )
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > self._max_body:
            raise ResponseTooLarge(
                f"{origin} announced a response of {length} bytes, more than {_size(self._max_body)}; "
                "Bastion did not read it",
                origin=origin,
            )

    async def _checked_addresses(self, url: httpx2.URL, origin: str) -> tuple[IPAddress, ...]:
        scope = _current.get()
        addresses = await self._resolve(_ascii_host(url), url.port or (443 if url.scheme == "https" else 80), scope)
        for address in addresses:
            # What is refused whatever the server (metadata addresses, public ones included) first;
            # only a non-public address needs the server's own classes, which may cost a lookup.
            refusal = address_refusal(address, frozenset())
            if refusal is None:
                continue
            cls = address_class(address)
            if cls is not AddressClass.PUBLIC:
                refusal = address_refusal(address, await self._server_classes(scope, cls))
            if refusal is not None:
                raise AddressRefused(f"{origin} points to {refusal}", origin=origin)
        return addresses

    async def _resolve(self, host: str, port: int, scope: _Scope | None) -> tuple[IPAddress, ...]:
        literal = parse_address(host)
        if literal is not None:
            return (literal,)
        key = host.lower().rstrip(".")
        if scope is not None and key in scope.answers:
            return scope.answers[key]
        addresses = tuple(await self._resolver(host, port))
        if not addresses:
            raise OSError(f"no address for {host}")
        if scope is not None:
            scope.answers[key] = addresses
        return addresses

    async def _server_classes(self, scope: _Scope | None, wanted: AddressClass) -> frozenset[AddressClass]:
        """The classes of the MCP server's addresses (of the anchors', outside a scope: there the
        search stops at the first anchor in the `wanted` class)."""
        if scope is not None and scope.server_classes is not None:
            return scope.server_classes
        urls = [scope.server_url] if scope is not None else list(self._anchors())
        classes: set[AddressClass] = set()
        for url in urls:
            where = _host_port(url)
            if where is None:
                continue
            try:
                addresses = await self._resolve(*where, scope)
            except _NO_ANSWER:
                continue
            classes.update(address_class(a) for a in addresses)
            if scope is None and wanted in classes:
                break
        found = frozenset(classes)
        if scope is not None:
            scope.server_classes = found
        return found
