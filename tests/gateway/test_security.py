"""Who may reach the gateway's HTTP listener."""

from __future__ import annotations

import httpx2
import pytest
from starlette.types import Receive, Scope, Send

from bastion.gateway.security import GatewaySecurityMiddleware, gateway_token, is_loopback_host


async def echo_authorization(scope: Scope, receive: Receive, send: Send) -> None:
    """Answers with the Authorization header the app received (or "-")."""
    value = dict(scope["headers"]).get(b"authorization", b"-")
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": value})


def client_for(app: GatewaySecurityMiddleware, base: str) -> httpx2.AsyncClient:
    return httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app), base_url=base)


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "[::1]", "127.1.2.3"])
def test_loopback_hosts(host: str) -> None:
    assert is_loopback_host(host)


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.4", "example.com", "::"])
def test_other_hosts_are_not_loopback(host: str) -> None:
    assert not is_loopback_host(host)


def test_loopback_listener_needs_no_token() -> None:
    assert gateway_token("127.0.0.1") is None


def test_other_listener_takes_token_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BASTION_GATEWAY_TOKEN", "from-env")
    assert gateway_token("0.0.0.0") == "from-env"


def test_other_listener_without_environment_token_gets_a_random_one(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("BASTION_GATEWAY_TOKEN", raising=False)
    token = gateway_token("0.0.0.0")
    assert token is not None and len(token) >= 32
    assert token in capsys.readouterr().err


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
