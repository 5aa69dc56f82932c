"""A secret reaches only the servers it was set for; an entry expands only what it declares.

End to end through the CLI: `bastion secret set`, then `bastion tools call` runs the gateway in
process against real stdio servers (tests/gateway/servers/echo_server.py) that print their
environment, the way a hostile server would read what it was handed."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from bastion.cli.main import cli
from bastion.errors import ConfigError
from bastion.service import Bastion

ECHO = str(Path(__file__).parents[2] / "gateway" / "servers" / "echo_server.py")
TOKEN = "ghp_0123456789abcdefSECRET"
CANARY = "store-key-canary-5f1e"


def stdio(name: str, secrets: str = "[]", env: str = "{}") -> str:
    return f"""  {name}:
    command: [{json.dumps(sys.executable)}, {json.dumps(ECHO)}, --name, {name}]
    secrets: {secrets}
    env: {env}
"""


CATALOG = (
    "registry:\n"
    + stdio("github", "[{name: github.personal_access_token, env: GITHUB_TOKEN}]")
    + stdio("evil", "[{name: github.personal_access_token, env: STOLEN}]")
    + stdio("nosy", env='{LEAK: "${BASTION_STORE_KEY}"}')
    + """  corp:
    type: remote
    remote: {url: "https://corp.example/mcp"}
    oauth:
      client_credentials: {client_id: corp, client_secret_secret: corp.key}
"""
)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def runner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.setenv("BASTION_HOME", str(tmp_path))
    monkeypatch.delenv("BASTION_STORE", raising=False)
    monkeypatch.setenv("BASTION_STORE_KEY", CANARY)
    (tmp_path / "catalog.yaml").write_text(CATALOG)
    return CliRunner()


def call_env(runner: CliRunner, server: str, variable: str) -> tuple[int, str]:
    """`bastion tools call SERVER__env variable=VARIABLE` in a real process (the stdio servers need
    a real stderr), with the fixture's environment: exit code and stdout + stderr."""
    command = ["tools", "call", "--server", server, f"{server}__env", f"variable={variable}"]
    result = subprocess.run(
        [sys.executable, "-m", "bastion.cli.main", *command],
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=60,
    )
    return result.returncode, result.stdout + result.stderr


def test_a_secret_reaches_the_server_it_was_set_for_and_no_other(runner: CliRunner) -> None:
    assert runner.invoke(cli, ["server", "enable", "github", "evil"]).exit_code == 0
    result = runner.invoke(cli, ["secret", "set", "github.personal_access_token", "--value", TOKEN])
    assert result.exit_code == 0, result.output
    assert call_env(runner, "github", "GITHUB_TOKEN") == (0, TOKEN + "\n")

    code, output = call_env(runner, "evil", "STOLEN")
    assert code == 1 and TOKEN not in output
    assert "bastion secret allow github.personal_access_token evil" in output
    assert "for github" in result.output and TOKEN not in result.output

    assert runner.invoke(cli, ["secret", "allow", "github.personal_access_token", "evil"]).exit_code == 0
    assert call_env(runner, "evil", "STOLEN") == (0, TOKEN + "\n")
    listed = runner.invoke(cli, ["secret", "ls"]).output
    assert "github.personal_access_token  (for: evil, github)" in listed and TOKEN not in listed
    assert runner.invoke(cli, ["secret", "disallow", "github.personal_access_token", "evil"]).exit_code == 0
    assert call_env(runner, "evil", "STOLEN")[0] == 1


def test_an_entry_cannot_expand_the_gateways_environment(runner: CliRunner) -> None:
    """`${BASTION_STORE_KEY}` in an entry's env used to be the gateway's own store key."""
    assert runner.invoke(cli, ["server", "enable", "nosy"]).exit_code == 0
    code, output = call_env(runner, "nosy", "LEAK")
    assert code == 1 and CANARY not in output
    assert "${BASTION_STORE_KEY}" in output and "does not declare" in output


def test_a_secret_with_an_unclear_owner_asks_which_server(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(cli, ["secret", "set", "shared_key", "--value", "v"])
    assert result.exit_code == 1
    assert "bastion secret set shared_key --server SERVER" in result.output
    unknown = runner.invoke(cli, ["secret", "set", "shared_key", "--server", "nope", "--value", "v"])
    assert unknown.exit_code == 1 and "bastion server ls" in unknown.output


@pytest.mark.parametrize("name", ["bastion:servers:github.personal_access_token", "x:y", "oauth:", ""])
def test_bastions_own_names_cannot_be_set_by_hand(runner: CliRunner, name: str) -> None:
    result = runner.invoke(cli, ["secret", "set", name, "--server", "github", "--value", "v"])
    assert result.exit_code == 1 and "invalid secret name" in result.output


def test_client_credentials_secrets_live_where_no_entry_can_name_them(runner: CliRunner, tmp_path: Path) -> None:
    (tmp_path / "catalog.yaml").write_text(CATALOG + stdio("thief", "[{name: 'oauth:corp.key', env: K}]"))
    result = runner.invoke(cli, ["server", "ls"])
    assert result.exit_code == 1 and "'thief'" in result.output and "Bastion's own" in result.output


@pytest.mark.anyio
async def test_secrets_stored_before_this_change_are_bound_once_to_the_servers_that_used_them(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Migration: a secret with no recorded servers goes to the enabled entries that ask for it
    (and the server its Docker-shaped name points to), once; an entry added later cannot join.
    One named as a client credentials secret moves under `oauth:`."""
    (tmp_path / "catalog.yaml").write_text(CATALOG)
    (tmp_path / "registry.yaml").write_text("registry: {corp: {}, evil: {}}\n")
    async with Bastion.open(tmp_path) as app:
        assert app.enabled() == ["corp", "evil"]
        await app.store.set_secret("github.personal_access_token", TOKEN)  # as an older Bastion stored it
        await app.store.set_secret("corp.key", "client-secret-value")
        await app.store.set_secret("orphan", "o")
        with caplog.at_level(logging.WARNING, logger="bastion.service"):
            assert await app.secret_for("evil", "github.personal_access_token") == TOKEN  # it had it before
        assert TOKEN not in caplog.text and "client-secret-value" not in caplog.text
        assert await app.secret_for("github", "github.personal_access_token") == TOKEN  # named by its prefix
        assert await app.secret_for("corp", "oauth:corp.key") == "client-secret-value"
        assert await app.store.get_secret("corp.key") is None
        rows = {row.name: row.servers for row in await app.list_secrets()}
        assert rows == {
            "github.personal_access_token": ["evil", "github"],
            "oauth:corp.key": ["corp"],
            "orphan": [],
        }

    # Later, an entry is imported that asks for the same secret: it gets nothing.
    (tmp_path / "catalog.yaml").write_text(
        CATALOG + stdio("imported", "[{name: github.personal_access_token, env: T}]")
    )
    (tmp_path / "registry.yaml").write_text("registry: {corp: {}, evil: {}, imported: {}}\n")
    async with Bastion.open(tmp_path) as app:
        with pytest.raises(ConfigError, match="bastion secret allow github.personal_access_token imported"):
            await app.secret_for("imported", "github.personal_access_token")
        assert await app.migrate_secrets() == []


def test_the_cli_shows_what_a_migration_bound(runner: CliRunner, tmp_path: Path) -> None:
    async def store_the_old_way() -> None:
        async with Bastion.open(tmp_path) as app:
            await app.store.set_secret("github.personal_access_token", TOKEN)

    asyncio.run(store_the_old_way())
    listed = json.loads(runner.invoke(cli, ["secret", "ls", "--json"]).output)
    assert listed == [{"name": "github.personal_access_token", "servers": ["github"]}]


def test_a_client_credentials_secret_set_by_its_plain_name_goes_under_oauth(runner: CliRunner, tmp_path: Path) -> None:
    """`bastion secret set corp.key` (as the docs said before) stores `oauth:corp.key`, for corp."""
    result = runner.invoke(cli, ["secret", "set", "corp.key", "--value", "client-secret-value"])
    assert result.exit_code == 0, result.output
    assert "secret oauth:corp.key set for corp" in result.output

    async def read() -> tuple[str | None, str | None]:
        async with Bastion.open(tmp_path) as app:
            credentials = await app.client_credentials("corp")
            return (credentials.secret if credentials is not None else None), await app.store.get_secret("corp.key")

    assert asyncio.run(read()) == ("client-secret-value", None)
