"""Real sockets on 127.0.0.1 for the OAuth client's network guard: tiny HTTP/1.1 servers that
answer well, hugely, slowly or not at all; a resolver and a network backend the test controls
(names → the addresses the test says; checked addresses → loopback, so nothing leaves the host)."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpcore2

Handler = Callable[["Seen", asyncio.StreamWriter, "Server"], Awaitable[None]]
"""Writes the response for one request (the request is already read)."""


@dataclass
class Seen:
    """One request a server received."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    sni: str | None = None


@dataclass
class Server:
    port: int
    seen: list[Seen] = field(default_factory=list)
    connections: int = 0
    written: int = 0
    """Body bytes the handlers managed to write (for "stopped reading" checks)."""

    def url(self, path: str = "/", host: str = "127.0.0.1", scheme: str = "http") -> str:
        return f"{scheme}://{host}:{self.port}{path}"


async def _read_request(reader: asyncio.StreamReader) -> Seen | None:
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ConnectionError):
        return None
    lines = head.decode("latin-1").split("\r\n")
    method, path, _ = lines[0].split(" ", 2)
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0") or 0)
    body = await asyncio.wait_for(reader.readexactly(length), 5) if length else b""
    return Seen(method, path, headers, body)


@contextlib.asynccontextmanager
async def serve(handler: Handler, *, tls: ssl.SSLContext | None = None) -> AsyncIterator[Server]:
    """A server on 127.0.0.1 (an ephemeral port) answering every request with `handler`, one
    request per connection; everything it started is stopped on exit."""
    server = Server(port=0)
    tasks: set[asyncio.Task[None]] = set()
    sni: list[str | None] = []
    if tls is not None:

        def remember(sock: ssl.SSLObject, name: str | None, context: ssl.SSLContext) -> None:
            sni.append(name)

        tls.sni_callback = remember  # type: ignore[assignment]

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        server.connections += 1
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        try:
            seen = await _read_request(reader)
            if seen is None:
                return
            seen.sni = sni[-1] if sni else None
            server.seen.append(seen)
            await handler(seen, writer, server)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            tasks.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 1)

    listener = await asyncio.start_server(on_connect, "127.0.0.1", 0, ssl=tls)
    server.port = listener.sockets[0].getsockname()[1]
    try:
        yield server
    finally:
        listener.close()
        for task in list(tasks):
            task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 5)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(listener.wait_closed(), 5)


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# -- handlers ----------------------------------------------------------------------------------


def respond(
    status: int = 200, body: bytes | dict[str, Any] = b"{}", headers: Sequence[tuple[str, str]] = ()
) -> Handler:
    data = json.dumps(body).encode() if isinstance(body, dict) else body

    async def handler(seen: Seen, writer: asyncio.StreamWriter, server: Server) -> None:
        head = [f"HTTP/1.1 {status} X", f"Content-Length: {len(data)}", "Content-Type: application/json"]
        head += [f"{name}: {value}" for name, value in headers]
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + data)
        await writer.drain()

    return handler


def endless(*, announce: int | None = None, limit: int = 64 * 1024 * 1024) -> Handler:
    """A 200 whose body never ends (chunked), or announces `announce` bytes; stops at `limit`."""

    async def handler(seen: Seen, writer: asyncio.StreamWriter, server: Server) -> None:
        framing = f"Content-Length: {announce}" if announce is not None else "Transfer-Encoding: chunked"
        writer.write(f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n{framing}\r\n\r\n".encode())
        if announce is None:
            writer.write(b'd\r\n{"padding": "\r\n')
        piece = b"x" * 65536
        while server.written < limit:
            writer.write(b"%x\r\n%s\r\n" % (len(piece), piece) if announce is None else piece)
            server.written += len(piece)
            await writer.drain()

    return handler


def trickle(*, every: float = 0.2, limit: int = 1000) -> Handler:
    """Headers at once, then one body byte every `every` seconds (never finishing)."""

    async def handler(seen: Seen, writer: asyncio.StreamWriter, server: Server) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n")
        await writer.drain()
        for _ in range(limit):
            writer.write(b" ")
            server.written += 1
            await writer.drain()
            await asyncio.sleep(every)

    return handler


def silent(seconds: float = 30.0) -> Handler:
    """Reads the request, then says nothing."""

    async def handler(seen: Seen, writer: asyncio.StreamWriter, server: Server) -> None:
        await asyncio.sleep(seconds)

    return handler


# -- name resolution and connections the test controls -----------------------------------------


class FakeResolver:
    """`answers[name]`: the addresses for a name, or a list of such lists, one per lookup (the
    last repeats) — a rebinding name. Unknown names fail like NXDOMAIN."""

    def __init__(self, answers: dict[str, Sequence[str] | Sequence[Sequence[str]]]) -> None:
        self.answers = answers
        self.lookups: list[str] = []

    async def __call__(self, host: str, port: int) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
        self.lookups.append(host)
        answer = self.answers.get(host)
        if answer is None:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        if answer and not isinstance(answer[0], str):
            rounds = [list(a) for a in answer]
            index = min(self.lookups.count(host) - 1, len(rounds) - 1)
            chosen: Sequence[str] = rounds[index]
        else:
            chosen = [str(a) for a in answer]
        return [ipaddress.ip_address(a) for a in chosen]


class LoopbackBackend(httpcore2.AsyncNetworkBackend):
    """Records the address each connection was asked for and connects to 127.0.0.1 instead
    when the address is in `stand_ins` (a loopback address is used as is; anything else fails,
    so a test never leaves the machine)."""

    def __init__(self, stand_ins: Iterable[str] = ()) -> None:
        self.stand_ins = set(stand_ins)
        self.asked: list[str] = []
        self._inner = httpcore2.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore2.SOCKET_OPTION] | None = None,
    ) -> httpcore2.AsyncNetworkStream:
        self.asked.append(host)
        if host in self.stand_ins:
            host = "127.0.0.1"
        elif not ipaddress.ip_address(host).is_loopback:
            raise httpcore2.ConnectError(f"test backend: {host} is not a stand-in")
        return await self._inner.connect_tcp(host, port, timeout=timeout, local_address=local_address)

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[httpcore2.SOCKET_OPTION] | None = None
    ) -> httpcore2.AsyncNetworkStream:
        raise httpcore2.ConnectError("no unix sockets in tests")

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


def self_signed(name: str, tmp: Any, *also: str) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server context, client context trusting only this certificate) for `name` (and `also`)."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in (name, *also)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path = tmp / f"{name}.pem"
    key_path = tmp / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert_path, key_path)
    client = ssl.create_default_context(cafile=str(cert_path))
    return server, client


def routes(table: dict[str, Handler]) -> Handler:
    """Dispatch on the request path; anything else is a 404."""
    missing = respond(404, {"error": "not_found"})

    async def handler(seen: Seen, writer: asyncio.StreamWriter, server: Server) -> None:
        await table.get(seen.path, missing)(seen, writer, server)

    return handler


def protected(resource_metadata: str) -> Handler:
    """An MCP endpoint that answers 401 with a `resource_metadata` hint."""
    return respond(
        401, {"error": "unauthorized"}, [("WWW-Authenticate", f'Bearer resource_metadata="{resource_metadata}"')]
    )
