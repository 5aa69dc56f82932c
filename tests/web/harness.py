"""Helpers for the OAuth page's in-process tests: a catalog, a store record holding every kind of
secret, and an ASGI harness for the event stream (httpx2's ASGI transport buffers whole
responses, which an endless stream never finishes)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
from starlette.types import ASGIApp, Message

from bastion.store.models import ClientRegistration, ProviderRecord, TokenSet

MCP_URL = "http://127.0.0.1:9/mcp"
ISSUER = "http://127.0.0.1:9/auth"

CATALOG = f"""
registry:
  protected:
    type: remote
    title: Protected test server
    remote: {{url: "{MCP_URL}", transport_type: streamable-http}}
    oauth: {{providers: [{{provider: protected}}]}}
  local:
    title: A local server
    command: [python3, -c, "pass"]
  spare:
    title: Not enabled yet
    command: [python3, -c, "pass"]
"""

# Values that must never leave the store through the page.
SECRETS = {
    "access_token": "AT-must-not-leak-7f3a9c",
    "refresh_token": "RT-must-not-leak-51be02",
    "client_secret": "CS-must-not-leak-c0ffee",
    "registration_access_token": "RAT-must-not-leak-9d1e",
}
CLIENT_ID = "client-id-visible-42"


def authorized_record(*, expires_in: float = 3600.0, scopes: tuple[str, ...] = ("mcp:read",)) -> ProviderRecord:
    """A record holding every kind of secret the store keeps."""
    return ProviderRecord(
        server="protected",
        resource_url=MCP_URL,
        client=ClientRegistration(
            client_id=CLIENT_ID,
            client_secret=SECRETS["client_secret"],
            token_endpoint_auth_method="client_secret_basic",
            registration_access_token=SECRETS["registration_access_token"],
            redirect_uris=["http://127.0.0.1:8812/ui/oauth/callback"],
            issuer=ISSUER,
            source="dcr",
        ),
        tokens=TokenSet(
            access_token=SECRETS["access_token"],
            refresh_token=SECRETS["refresh_token"],
            expires_at=time.time() + expires_in,
            scopes=list(scopes),
            issuer=ISSUER,
            token_endpoint=f"{ISSUER}/token",
            resource=MCP_URL,
            client_id=CLIENT_ID,
        ),
    )


class EventReader:
    """Runs GET <path> on an ASGI app and collects the event stream's text."""

    def __init__(self, app: ASGIApp, path: str, headers: list[tuple[bytes, bytes]], client: tuple[str, int]) -> None:
        self.app = app
        self.path = path
        self.headers = headers
        self.client = client
        self.status: int | None = None
        self.text = ""
        self._disconnect = anyio.Event()

    async def receive(self) -> Message:
        await self._disconnect.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
        elif message["type"] == "http.response.body":
            self.text += message.get("body", b"").decode()

    def scope(self) -> dict[str, Any]:
        return {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": self.path,
            "raw_path": self.path.encode(),
            "root_path": "",
            "query_string": b"",
            "headers": self.headers,
            "client": self.client,
            "server": ("127.0.0.1", 8812),
        }

    async def wait_for(self, predicate: Callable[[str], bool], timeout: float = 10.0) -> str:
        with anyio.fail_after(timeout):
            while not predicate(self.text):
                await anyio.sleep(0.02)
        return self.text

    def disconnect(self) -> None:
        self._disconnect.set()


async def read_events(
    app: ASGIApp,
    action: Callable[[], Awaitable[None]],
    *,
    until: Callable[[str], bool],
    path: str = "/ui/events",
    host: bytes = b"127.0.0.1:8812",
    client: tuple[str, int] = ("127.0.0.1", 50000),
    timeout: float = 10.0,
) -> str:
    """Open the stream, wait for `hello`, run `action`, return the text once `until(text)`."""
    reader = EventReader(app, path, [(b"host", host)], client)
    text = ""

    async def run_app() -> None:
        await app(reader.scope(), reader.receive, reader.send)

    with anyio.fail_after(timeout + 5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(run_app)
            try:
                await reader.wait_for(lambda text: "event: hello" in text, timeout)
                await action()
                text = await reader.wait_for(until, timeout)
            finally:
                reader.disconnect()
    return text
