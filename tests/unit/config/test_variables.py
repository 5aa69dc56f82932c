"""`${VAR}` in a catalog entry names only what the entry declares, never the gateway's environment."""

from __future__ import annotations

import pytest

from bastion.config.catalog import CatalogEntry
from bastion.errors import UpstreamError
from bastion.gateway.upstream import expand_variables, resolve_secrets

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def test_the_gateways_environment_is_not_a_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BASTION_STORE_KEY", "the-store-key")
    with pytest.raises(UpstreamError, match="does not declare") as caught:
        expand_variables("Bearer ${BASTION_STORE_KEY}", {}, server="s", where="header Authorization")
    assert "the-store-key" not in str(caught.value)


async def test_a_secret_is_not_read_from_the_environment_variable_it_names(monkeypatch: pytest.MonkeyPatch) -> None:
    """`secrets: [{name: x, env: BASTION_STORE_KEY}]` with `x` unset used to hand over the store key."""
    monkeypatch.setenv("BASTION_STORE_KEY", "the-store-key")
    entry = CatalogEntry(name="s", command=["x"], secrets=[{"name": "x", "env": "BASTION_STORE_KEY"}])

    async def nothing_stored(server: str, name: str) -> str | None:
        return None

    with pytest.raises(UpstreamError, match=r"bastion secret set x --server s"):
        await resolve_secrets(entry, nothing_stored)


async def test_headers_may_name_the_entrys_secrets_and_env() -> None:
    from bastion.gateway.upstream import declared_variables  # new with this rule

    entry = CatalogEntry(
        name="s",
        type="remote",
        remote={"url": "https://s.example/mcp"},
        secrets=[{"name": "s.token", "env": "TOKEN"}],
        env={"WORKSPACE": "ws-${TOKEN}"},
    )

    async def stored(server: str, name: str) -> str | None:
        return {("s", "s.token"): "t0k"}.get((server, name))

    variables = declared_variables(entry, await resolve_secrets(entry, stored))
    assert expand_variables("${s.token} ${TOKEN} ${WORKSPACE}", variables, server="s", where="h") == "t0k t0k ws-t0k"
