"""Who may reach the gateway's HTTP listener, and what a client can hold there (token, TLS, deadlines, limits)."""

from __future__ import annotations

import contextlib
import datetime
import functools
import io
import ipaddress
import json
import os
import re
import socket
import ssl
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import httpx2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from starlette.types import Receive, Scope, Send

from bastion.config.settings import GatewaySettings
from bastion.errors import GatewayError
from bastion.gateway.coalesce import HEAD_TIMEOUT_MESSAGE
from bastion.gateway.runtime import Gateway, ListenerLimits, TLSFiles, run_gateway
from bastion.gateway.security import GatewaySecurityMiddleware, gateway_token, home_token, is_loopback_host


async def echo_authorization(scope: Scope, receive: Receive, send: Send) -> None:
    """Answers with the Authorization header the app received (or "-")."""
    value = dict(scope["headers"]).get(b"authorization", b"-")
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": value})


@pytest.fixture
def home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    return home


def client_for(app: GatewaySecurityMiddleware, base: str) -> httpx2.AsyncClient:
    return httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app), base_url=base)


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "[::1]", "127.1.2.3"])
def test_loopback_hosts(host: str) -> None:
    assert is_loopback_host(host)


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.4", "example.com", "::"])
def test_other_hosts_are_not_loopback(host: str) -> None:
    assert not is_loopback_host(host)


def test_the_token_is_required_by_default_and_kept_in_a_private_file_of_the_home(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Point 12: loopback is no exception; the token is made once, 0600, and its value is never printed."""
    monkeypatch.delenv("BASTION_GATEWAY_TOKEN", raising=False)
    out = io.StringIO()
    token = gateway_token(home, out=out)
    assert token is not None and len(token) >= 43
    path = home / "gateway-token"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text().strip() == token
    assert str(path) in out.getvalue() and token not in out.getvalue()
    again = io.StringIO()
    assert gateway_token(home, out=again) == token  # the same token on every start
    assert token not in again.getvalue()


def test_environment_token_overrides_the_file(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BASTION_GATEWAY_TOKEN", "from-env")
    out = io.StringIO()
    assert gateway_token(home, out=out) == "from-env"
    assert "from-env" not in out.getvalue() and "$BASTION_GATEWAY_TOKEN" in out.getvalue()
    assert not (home / "gateway-token").exists()


def test_no_token_is_an_explicit_opt_out_warned_at_each_start(home: Path) -> None:
    out = io.StringIO()
    assert gateway_token(home, required=False, out=out) is None
    assert "warning" in out.getvalue() and "any process" in out.getvalue()


def test_a_token_file_others_can_write_is_refused(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BASTION_GATEWAY_TOKEN", raising=False)
    token = home_token(home)
    path = home / "gateway-token"
    os.chmod(path, 0o666)
    with pytest.raises(GatewayError) as caught:
        home_token(home)
    assert f"chmod 600 {path}" in str(caught.value) and token not in str(caught.value)


def test_a_readable_token_file_is_tightened(home: Path) -> None:
    token = home_token(home)
    os.chmod(home / "gateway-token", 0o644)
    assert home_token(home) == token
    assert stat.S_IMODE((home / "gateway-token").stat().st_mode) == 0o600


@pytest.mark.anyio
async def test_loopback_listener_refuses_requests_without_the_token() -> None:
    app = GatewaySecurityMiddleware(echo_authorization, token="s3cret", listen_host="127.0.0.1", listen_port=8811)
    async with client_for(app, "http://127.0.0.1:8811") as client:
        missing = await client.post("/mcp", content=b"{}")
        right = await client.post("/mcp", content=b"{}", headers={"authorization": "Bearer s3cret"})
        spelled = await client.post("/mcp", content=b"{}", headers={"authorization": "bearer  s3cret"})
    assert missing.status_code == 401
    assert right.status_code == 200 and spelled.status_code == 200


@pytest.mark.anyio
async def test_non_loopback_listener_refuses_requests_without_the_token() -> None:
    app = GatewaySecurityMiddleware(echo_authorization, token="s3cret", listen_host="0.0.0.0", listen_port=8811)
    async with client_for(app, "http://10.0.0.5:8811") as client:
        missing = await client.get("/health")
        wrong = await client.get("/health", headers={"authorization": "Bearer nope"})
        right = await client.get("/health", headers={"authorization": "Bearer s3cret"})
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"].startswith("Bearer")
    assert wrong.status_code == 401
    assert right.status_code == 200


@pytest.mark.anyio
async def test_downstream_authorization_header_never_reaches_the_app() -> None:
    app = GatewaySecurityMiddleware(echo_authorization, token="s3cret", listen_host="0.0.0.0", listen_port=8811)
    async with client_for(app, "http://10.0.0.5:8811") as client:
        response = await client.get("/mcp", headers={"authorization": "Bearer s3cret"})
    assert response.text == "-"


@pytest.mark.anyio
@pytest.mark.parametrize("origin", ["https://evil.example", "http://127.0.0.1.evil.example:8811", "null"])
async def test_foreign_origin_is_refused(origin: str) -> None:
    app = GatewaySecurityMiddleware(echo_authorization, token=None, listen_host="127.0.0.1", listen_port=8811)
    async with client_for(app, "http://127.0.0.1:8811") as client:
        response = await client.post("/mcp", headers={"origin": origin}, content=b"{}")
    assert response.status_code == 403


@pytest.mark.anyio
@pytest.mark.parametrize("origin", ["http://localhost:3000", "http://127.0.0.1:8811", "http://[::1]:5173"])
async def test_loopback_origin_is_accepted(origin: str) -> None:
    app = GatewaySecurityMiddleware(echo_authorization, token=None, listen_host="127.0.0.1", listen_port=8811)
    async with client_for(app, "http://127.0.0.1:8811") as client:
        response = await client.post("/mcp", headers={"origin": origin}, content=b"{}")
    assert response.status_code == 200


@pytest.mark.anyio
async def test_loopback_listener_refuses_a_rebound_host_name() -> None:
    """DNS rebinding without an Origin header: a foreign Host on a loopback listener is refused."""
    app = GatewaySecurityMiddleware(echo_authorization, token=None, listen_host="127.0.0.1", listen_port=8811)
    async with client_for(app, "http://attacker.example:8811") as client:
        response = await client.get("/health")
    assert response.status_code == 403


# -- the listener itself, on real sockets (points 12, 13, 14) --------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.asynccontextmanager
async def listening(home: Path, scheme: str = "http", **options: Any) -> AsyncIterator[str]:
    """`run_gateway` (no upstreams) on a free loopback port in this event loop; its base URL."""
    port = free_port()
    gateway = Gateway([], GatewaySettings())
    serve = functools.partial(run_gateway, gateway, "streamable-http", "127.0.0.1", port, home=home, **options)
    async with anyio.create_task_group() as tg:
        tg.start_soon(serve)
        with anyio.fail_after(10):
            while True:
                try:
                    stream = await anyio.connect_tcp("127.0.0.1", port)
                except OSError:
                    await anyio.sleep(0.02)
                    continue
                await stream.aclose()
                break
        try:
            yield f"{scheme}://127.0.0.1:{port}"
        finally:
            tg.cancel_scope.cancel()


class Raw:
    """One TCP connection speaking HTTP/1.1 by hand."""

    def __init__(self, stream: anyio.abc.SocketStream) -> None:
        self.stream = stream
        self.received = b""

    @classmethod
    async def open(cls, base: str) -> Raw:
        return cls(await anyio.connect_tcp("127.0.0.1", int(base.rsplit(":", 1)[1])))

    async def response(self, timeout: float = 5.0) -> bytes:
        """The first response's head and body (Content-Length framed), within `timeout`."""
        with anyio.fail_after(timeout):
            while b"\r\n\r\n" not in self.received:
                self.received += await self.stream.receive()
            head, _, rest = self.received.partition(b"\r\n\r\n")
            match = re.search(rb"content-length: *(\d+)", head, re.IGNORECASE)
            length = int(match.group(1)) if match else 0
            while len(rest) < length:
                rest += await self.stream.receive()
                self.received = head + b"\r\n\r\n" + rest
        return head + b"\r\n\r\n" + rest[:length]

    async def closed(self, timeout: float = 5.0) -> bool:
        with anyio.fail_after(timeout):
            try:
                while await self.stream.receive():
                    pass
            except (anyio.EndOfStream, anyio.BrokenResourceError, ConnectionResetError):
                return True
        return True


MODERN = "2026-07-28"
PING = json.dumps(
    {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/list",
        "params": {
            "_meta": {
                "io.modelcontextprotocol/protocolVersion": MODERN,
                "io.modelcontextprotocol/clientCapabilities": {},
            }
        },
    }
).encode()
"""A stateless (2026-07-28) request the lean path answers: `tools/list`."""
MCP_HEADERS = {
    "accept": "application/json, text/event-stream",
    "content-type": "application/json",
    "mcp-protocol-version": MODERN,
    "mcp-method": "tools/list",
}


def post_head(length: int, *extra: str, path: str = "/mcp") -> bytes:
    lines = [
        f"POST {path} HTTP/1.1",
        "host: 127.0.0.1",
        "accept: application/json, text/event-stream",
        "content-type: application/json",
        f"mcp-protocol-version: {MODERN}",
        "mcp-method: tools/list",
        f"content-length: {length}",
        *extra,
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


@pytest.fixture(params=["lane", "asgi"])
def front(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """POST /mcp served by the fast lane (front.py) or, with it off, by the ASGI app."""
    if request.param == "asgi":
        monkeypatch.setenv("BASTION_FAST_LANE", "0")
    return str(request.param)


@pytest.mark.anyio
async def test_the_http_listener_requires_the_token_on_loopback(
    home: Path, front: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Point 12: another local process without the token gets nothing, in the lane and on the ASGI path."""
    monkeypatch.delenv("BASTION_GATEWAY_TOKEN", raising=False)
    async with listening(home) as base, httpx2.AsyncClient(base_url=base, trust_env=False, timeout=10) as http:
        token = (home / "gateway-token").read_text().strip()
        assert (await http.get("/health")).status_code == 401
        assert (await http.post("/mcp", content=PING, headers=MCP_HEADERS)).status_code == 401
        signed = {**MCP_HEADERS, "authorization": f"Bearer {token}"}
        assert (await http.get("/health", headers=signed)).status_code == 200
        assert (await http.post("/mcp", content=PING, headers=signed)).json()["result"]["tools"] == []


@pytest.mark.anyio
@pytest.mark.parametrize("header", ["origin: http://evil.example", "authorization: Bearer wrong"])
async def test_a_refused_request_is_answered_before_its_body_is_read(home: Path, front: str, header: str) -> None:
    """Point 14: Host/Origin/token are screened from the headers; the body never has to come."""
    async with listening(home) as base:
        conn = await Raw.open(base)
        async with conn.stream:
            await conn.stream.send(post_head(100_000, header))  # and no body
            status = status_of(await conn.response(timeout=5))
    assert status in (401, 403)


@pytest.mark.anyio
async def test_a_trickled_body_gets_408_while_other_clients_are_served(home: Path, front: str) -> None:
    """Point 14: a body sent a byte at a time is cut off at the deadline (408, closed); meanwhile
    the gateway answers everyone else."""
    async with listening(home, limits=ListenerLimits(body_timeout=1.0)) as base:
        token = (home / "gateway-token").read_text().strip()
        events: list[str] = []

        async def trickle(conn: Raw) -> None:
            with contextlib.suppress(anyio.BrokenResourceError, ConnectionResetError):
                for byte in PING:
                    await conn.stream.send(bytes([byte]))
                    await anyio.sleep(0.25)

        slow = await Raw.open(base)
        async with slow.stream, anyio.create_task_group() as tg:
            await slow.stream.send(post_head(len(PING), f"authorization: Bearer {token}"))
            tg.start_soon(trickle, slow)
            async with httpx2.AsyncClient(base_url=base, trust_env=False, timeout=5) as http:
                for _ in range(3):
                    health = await http.get("/health", headers={"authorization": f"Bearer {token}"})
                    assert health.status_code == 200
                    events.append("served")
            reply = await slow.response(timeout=8)
            events.append("408" if status_of(reply) == 408 else f"got {reply[:40]!r}")
            assert b"connection: close" in reply.lower()
            assert await slow.closed()
            tg.cancel_scope.cancel()
    assert events == ["served", "served", "served", "408"]


@pytest.fixture(params=["lane", "asgi", "uvicorn"])
def protocol(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The listener's protocol: the fast lane's, the coalescing one, or uvicorn's own (the
    benchmarks' off switches); each keeps the header deadline."""
    if request.param == "asgi":
        monkeypatch.setenv("BASTION_FAST_LANE", "0")
    elif request.param == "uvicorn":
        monkeypatch.setenv("BASTION_COALESCE", "0")
    return str(request.param)


@pytest.mark.anyio
async def test_headers_trickled_a_byte_at_a_time_get_408_while_other_clients_are_served(
    home: Path, protocol: str
) -> None:
    """Point 14 (slowloris on the headers): uvicorn times only the gap between keep-alive
    requests, so a client sending its request head slowly held a connection for ever."""
    async with listening(home, limits=ListenerLimits(head_timeout=1.0)) as base:
        token = (home / "gateway-token").read_text().strip()
        head = post_head(len(PING), f"authorization: Bearer {token}")
        events: list[str] = []

        async def trickle(conn: Raw) -> None:
            with contextlib.suppress(anyio.BrokenResourceError, ConnectionResetError):
                for byte in head:
                    await conn.stream.send(bytes([byte]))
                    await anyio.sleep(0.2)

        slow, silent = await Raw.open(base), await Raw.open(base)
        async with slow.stream, silent.stream, anyio.create_task_group() as tg:
            tg.start_soon(trickle, slow)
            async with httpx2.AsyncClient(base_url=base, trust_env=False, timeout=5) as http:
                for _ in range(3):
                    health = await http.get("/health", headers={"authorization": f"Bearer {token}"})
                    assert health.status_code == 200
                    events.append("served")
            reply = await slow.response(timeout=8)
            events.append("408" if status_of(reply) == 408 else f"got {reply[:40]!r}")
            assert reply.endswith(b"\r\n\r\n" + HEAD_TIMEOUT_MESSAGE)  # framed by its own content-length
            assert await slow.closed()
            assert status_of(await silent.response(timeout=8)) == 408  # a connection that sends nothing
            assert await silent.closed()
            tg.cancel_scope.cancel()
    assert events == ["served", "served", "served", "408"]


@pytest.mark.anyio
async def test_a_keep_alive_connection_gets_the_header_deadline_for_each_request(home: Path) -> None:
    async with listening(home, limits=ListenerLimits(head_timeout=1.0)) as base:
        token = (home / "gateway-token").read_text().strip()
        conn = await Raw.open(base)
        async with conn.stream:
            request = f"GET /health HTTP/1.1\r\nhost: 127.0.0.1\r\nauthorization: Bearer {token}\r\n\r\n"
            await conn.stream.send(request.encode())
            assert status_of(await conn.response()) == 200
            conn.received = b""
            await conn.stream.send(b"GET /health HTTP/1.1\r\nhost: 127.0.0.1\r\n")  # and no end of head
            assert status_of(await conn.response(timeout=8)) == 408
            assert await conn.closed()


@pytest.mark.anyio
@pytest.mark.parametrize("path", ["/health", "/mcp"])
async def test_beyond_the_connection_limit_requests_get_503(home: Path, path: str) -> None:
    """Point 14: the listener bounds concurrent connections (the fast lane honours uvicorn's 503)."""
    async with listening(home, limits=ListenerLimits(max_connections=3)) as base:
        token = (home / "gateway-token").read_text().strip()
        idle = [await Raw.open(base) for _ in range(3)]
        await anyio.sleep(0.3)  # let the server accept them
        conn = await Raw.open(base)
        async with conn.stream:
            if path == "/mcp":
                await conn.stream.send(post_head(len(PING), f"authorization: Bearer {token}") + PING)
            else:
                await conn.stream.send(
                    f"GET /health HTTP/1.1\r\nhost: 127.0.0.1\r\nauthorization: Bearer {token}\r\n\r\n".encode()
                )
            assert status_of(await conn.response()) == 503
        for stream in idle:
            await stream.stream.aclose()


def self_signed(directory: Path) -> TLSFiles:
    """A certificate for 127.0.0.1 and its key, as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    files = TLSFiles(directory / "cert.pem", directory / "key.pem")
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.key.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return files


@pytest.mark.anyio
async def test_the_listener_serves_https_with_the_given_certificate(home: Path, tmp_path: Path) -> None:
    """Point 13: `--tls-cert/--tls-key` reach uvicorn's ssl options (and the fast lane works over TLS)."""
    tls = self_signed(tmp_path)
    context = ssl.create_default_context(cafile=str(tls.cert))
    async with (
        listening(home, scheme="https", tls=tls) as base,
        httpx2.AsyncClient(base_url=base, verify=context, trust_env=False, timeout=10) as http,
    ):
        token = (home / "gateway-token").read_text().strip()
        signed = {**MCP_HEADERS, "authorization": f"Bearer {token}"}
        assert (await http.get("/health", headers=signed)).status_code == 200
        assert (await http.post("/mcp", content=PING, headers=signed)).json()["id"] == 1


@pytest.mark.anyio
async def test_plain_http_off_loopback_is_refused_with_the_flags_to_add(home: Path) -> None:
    """Point 13: off loopback (192.0.2.1: TEST-NET, never bound here) TLS is required unless
    --insecure-http is given; with it, the listener goes on to bind (and fails: not our address)."""
    gateway = Gateway([], GatewaySettings())
    try:
        with pytest.raises(GatewayError) as refused:
            await run_gateway(gateway, "streamable-http", "192.0.2.1", 8811, home=home)
        assert "--tls-cert" in str(refused.value) and "--insecure-http" in str(refused.value)
        with pytest.raises(GatewayError) as bind:
            await run_gateway(gateway, "streamable-http", "192.0.2.1", 8811, home=home, insecure_http=True)
        assert "cannot listen" in str(bind.value)
    finally:
        await gateway.aclose()  # it was never started


def test_the_listeners_token_stays_out_of_its_repr() -> None:
    """A traceback with locals or a debug `%r` must not print the gateway token."""
    from bastion.gateway.runtime import _Listener

    listener = _Listener("the-gateway-token-value", None, ListenerLimits())
    assert "the-gateway-token-value" not in repr(listener)
