"""Issue 12 against real peers (oidc-provider, the protected mcp SDK server, `bastion gateway run`):
a stored token goes only to the URL it was obtained for, and a server that refuses every token
costs one refresh, not a storm. The hostile MCP server is a small HTTP server in the test, on
127.0.0.1, that records what it receives."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures import peers
from tests.integration.harness import GatewayProcess, Home

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def home(tmp_path: Path, headless_browser: Path) -> Home:
    return Home(tmp_path / "home")


def remote_entry(url: str) -> dict[str, Any]:
    return {
        "type": "remote",
        "remote": {"url": url, "transport_type": "streamable-http"},
        "oauth": {"providers": [{"provider": "protected"}]},
    }


def refreshes(oidc: peers.OidcHandle) -> int:
    return sum(
        1
        for e in oidc.events()
        if e["event"] in ("grant.success", "grant.error") and e.get("grant_type") == "refresh_token"
    )


class RefusingServer:
    """An MCP server URL that answers 401 `invalid_token` to every request, with protected resource
    metadata naming `issuer` (so `bastion oauth authorize` works against it). Records the
    Authorization header of every request to /mcp."""

    def __init__(self, issuer: str) -> None:
        seen: list[str | None] = []
        self.seen = seen

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                return None

            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                port = self.server.server_address[1]
                if self.path.startswith("/.well-known/oauth-protected-resource"):
                    body = json.dumps(
                        {
                            "resource": f"http://127.0.0.1:{port}/mcp",
                            "authorization_servers": [issuer],
                            "scopes_supported": ["mcp:read"],
                        }
                    ).encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                seen.append(self.headers.get("Authorization"))
                metadata = f"http://127.0.0.1:{port}/.well-known/oauth-protected-resource/mcp"
                self.send_response(401)
                self.send_header(
                    "WWW-Authenticate",
                    f'Bearer error="invalid_token", resource_metadata="{metadata}", scope="mcp:read"',
                )
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_GET = do_POST = do_DELETE = _answer

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/mcp"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
        self._thread.start()

    def bearers(self) -> list[str]:
        return [value for value in self.seen if value]

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


@pytest.fixture
def refusing_factory() -> Iterator[Any]:
    started: list[RefusingServer] = []

    def start(issuer: str) -> RefusingServer:
        server = RefusingServer(issuer)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def state_of(health: dict[str, Any], name: str) -> dict[str, Any]:
    """The upstream `name` in a /health answer ({} while it is being replaced after a catalog edit)."""
    return next((u for u in health["upstreams"] if u["name"] == name), {})


async def test_a_catalog_edit_pointing_the_name_elsewhere_gets_no_token(
    home: Home, oidc: peers.OidcHandle, protected_mcp: peers.ProtectedMcpHandle, refusing_factory: Any
) -> None:
    """Point 1: `protected` was authorized at its URL; the catalog (edited, or an imported entry
    overriding it) now points the same name at another server. The running gateway must not send
    the token there, nor refresh it after that server's 401: it says the URL changed."""
    home.write_catalog({"protected": remote_entry(protected_mcp.url)})
    home.run("server", "enable", "protected")
    home.run("oauth", "authorize", "protected", "--callback-port", "0", "--timeout", "60")
    elsewhere = refusing_factory(oidc.issuer)
    with GatewayProcess(home) as gateway:
        gateway.wait_health(lambda h: state_of(h, "protected").get("state") == "ready")
        before = refreshes(oidc)
        home.write_catalog({"protected": remote_entry(elsewhere.url)})
        health = gateway.wait_health(lambda h: state_of(h, "protected").get("state") == "needs-authorization")
        error = state_of(health, "protected").get("last_error") or ""
        time.sleep(1.0)  # room for a (wrong) refresh after the 401
        sent = len(elsewhere.bearers())  # a count: a failure must not print the tokens
        assert sent == 0
        assert refreshes(oidc) == before
    assert "URL changed" in error and elsewhere.url in error
    assert "bastion oauth authorize protected" in error


async def test_a_server_refusing_every_token_costs_one_refresh(
    home: Home, oidc: peers.OidcHandle, refusing_factory: Any
) -> None:
    """Point 10: a server that answers 401 to every token, even one refreshed a moment ago, made
    the gateway refresh dozens of times a second (each refresh wrote the store, the store event
    reconnected the upstream, whose 401 refreshed again). One refresh, then needs-authorization."""
    hostile = refusing_factory(oidc.issuer)
    home.write_catalog({"hostile": remote_entry(hostile.url)})
    home.run("server", "enable", "hostile")
    home.run("oauth", "authorize", "hostile", "--callback-port", "0", "--timeout", "60")
    assert refreshes(oidc) == 0
    with GatewayProcess(home) as gateway:
        health = gateway.wait_health(lambda h: state_of(h, "hostile").get("state") == "needs-authorization")
        time.sleep(4.0)  # a storm would go on meanwhile
        health = gateway.health()
        assert refreshes(oidc) <= 1
        sent = len(hostile.bearers())
        assert sent <= 6
    upstream = state_of(health, "hostile")
    assert upstream.get("state") == "needs-authorization"
    assert "bastion oauth authorize hostile" in (upstream.get("last_error") or "")
