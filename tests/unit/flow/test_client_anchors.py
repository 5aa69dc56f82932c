"""Outside a discovery (code exchange, refresh, revocation), the OAuth client of the CLI and of the
gateway lets an endpoint be on loopback or a private network only when an enabled server is in
the same class (issue 12, point 11): the loopback test setup keeps working, a public-only setup
does not reach into this machine."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import httpx2
import pytest
from tests.unit.oauth.hostile import respond, serve

from bastion import serve as serve_module
from bastion.oauth.netguard import AddressRefused
from bastion.serve import Runtime
from bastion.service import Bastion

pytestmark = pytest.mark.anyio


def home_with(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, url: str) -> Path:
    monkeypatch.delenv("BASTION_STORE", raising=False)
    (tmp_path / "catalog.yaml").write_text(f'registry:\n  remote-a:\n    type: remote\n    remote: {{url: "{url}"}}\n')
    return tmp_path


class NoGateway:
    """Stands in for the gateway a `Runtime` builds (only its OAuth client is under test)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        pass


@contextlib.asynccontextmanager
async def client_of(app: Bastion, which: str) -> AsyncIterator[httpx2.AsyncClient]:
    """The OAuth client of the CLI (`Bastion.http`) or of the gateway (`Runtime.http`)."""
    if which == "cli":
        yield app.http
        return
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(serve_module, "Gateway", NoGateway)
        runtime = Runtime(app, watch=False)
    async with runtime.http:
        yield runtime.http


async def post_token(http: httpx2.AsyncClient, url: str) -> int:
    response = await http.post(url, data={"grant_type": "refresh_token", "refresh_token": "r"})
    return response.status_code


@pytest.mark.parametrize("which", ["cli", "gateway"])
async def test_loopback_token_endpoint_is_used_when_a_loopback_server_is_enabled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, which: str
) -> None:
    async with serve(respond()) as server:
        home = home_with(tmp_path, monkeypatch, server.url("/mcp"))
        async with Bastion.open(home) as app:
            await app.enable(["remote-a"])
            async with client_of(app, which) as http:
                assert await post_token(http, server.url("/token")) == 200


@pytest.mark.parametrize("which", ["cli", "gateway"])
async def test_loopback_token_endpoint_is_refused_when_only_public_servers_are_enabled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, which: str
) -> None:
    async with serve(respond()) as server:
        home = home_with(tmp_path, monkeypatch, "https://93.184.216.34/mcp")
        async with Bastion.open(home) as app:
            await app.enable(["remote-a"])
            async with client_of(app, which) as http:
                with pytest.raises(AddressRefused, match="loopback"):
                    await post_token(http, server.url("/token"))
    assert server.seen == []
