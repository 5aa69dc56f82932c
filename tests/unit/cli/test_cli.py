"""The CLI shell: exit codes, one-line errors with a next step, JSON shapes, and no network on
enable. In-process with click's runner; the real-peer flow is in tests/integration."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from bastion.cli.main import cli

CATALOG = """
registry:
  remote-a:
    type: remote
    remote: {url: "http://127.0.0.1:9/mcp"}
    oauth: {providers: [{provider: remote-a}]}
  local-b:
    type: server
    command: [python, -c, "pass"]
"""


@pytest.fixture
def runner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.setenv("BASTION_HOME", str(tmp_path))
    monkeypatch.delenv("BASTION_STORE", raising=False)
    (tmp_path / "catalog.yaml").write_text(CATALOG)
    return CliRunner()


def test_enable_records_unregistered_provider_and_prints_the_hint(runner: CliRunner) -> None:
    result = runner.invoke(cli, ["server", "enable", "remote-a", "local-b"])
    assert result.exit_code == 0, result.output
    assert "bastion oauth authorize remote-a" in result.output
    rows = json.loads(runner.invoke(cli, ["oauth", "ls", "--json"]).output)
    assert rows == [
        {
            "server": "remote-a",
            "state": "unregistered",
            "issuer": None,
            "client_id": None,
            "scopes": [],
            "expires_at": None,
        }
    ]
    servers = {r["name"]: r for r in json.loads(runner.invoke(cli, ["server", "ls", "--json"]).output)}
    assert servers["remote-a"]["enabled"] and servers["local-b"]["enabled"]
    assert servers["local-b"]["transport"] == "stdio"


def test_unknown_server_exits_nonzero_with_one_line(runner: CliRunner) -> None:
    result = runner.invoke(cli, ["server", "enable", "nope"])
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line]
    assert len(lines) == 1 and "nope" in lines[0] and "bastion server ls" in lines[0]


def test_authorize_of_a_disabled_server_says_to_enable_it(runner: CliRunner) -> None:
    result = runner.invoke(cli, ["oauth", "authorize", "remote-a", "--no-browser"])
    assert result.exit_code == 1
    assert "bastion server enable remote-a" in result.output


def test_feature_flags_round_trip(runner: CliRunner) -> None:
    assert "oauth-dcr" in runner.invoke(cli, ["feature", "ls"]).output
    assert runner.invoke(cli, ["feature", "disable", "oauth-dcr"]).exit_code == 0
    assert "disabled" in runner.invoke(cli, ["feature", "ls"]).output
    bad = runner.invoke(cli, ["feature", "enable", "warp-drive"])
    assert bad.exit_code == 1 and "known features" in bad.output


def test_client_set_shows_registered_and_never_prints_the_secret(runner: CliRunner) -> None:
    runner.invoke(cli, ["server", "enable", "remote-a"])
    result = runner.invoke(
        cli, ["oauth", "client", "set", "remote-a", "--client-id", "cid", "--client-secret", "TOPSECRET"]
    )
    assert result.exit_code == 0 and "TOPSECRET" not in result.output
    [row] = json.loads(runner.invoke(cli, ["oauth", "ls", "--json"]).output)
    assert row["state"] == "registered" and row["client_id"] == "cid"
    inspect = runner.invoke(cli, ["server", "inspect", "remote-a"])
    assert "TOPSECRET" not in inspect.output and "cid" in inspect.output
    assert runner.invoke(cli, ["oauth", "client", "rm", "remote-a"]).exit_code == 0
    [row] = json.loads(runner.invoke(cli, ["oauth", "ls", "--json"]).output)
    assert row["state"] == "unregistered"


def test_secrets_are_listed_by_name_only(runner: CliRunner) -> None:
    assert runner.invoke(cli, ["secret", "set", "api.key", "--value", "s3cr3t-value"]).exit_code == 0
    listed = runner.invoke(cli, ["secret", "ls"])
    assert "api.key" in listed.output and "s3cr3t-value" not in listed.output
    assert runner.invoke(cli, ["secret", "rm", "api.key"]).exit_code == 0
    assert "api.key" not in runner.invoke(cli, ["secret", "ls"]).output


def test_secret_from_stdin_keeps_every_line(runner: CliRunner, tmp_path: Path) -> None:
    """A PEM private key (client credentials with private_key_jwt) is many lines; all are kept,
    only the final newline is dropped."""
    import asyncio

    from bastion.service import Bastion

    pem = "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg\n-----END PRIVATE KEY-----"
    result = runner.invoke(cli, ["secret", "set", "cc.key"], input=pem + "\n")
    assert result.exit_code == 0, result.output
    assert "MIGH" not in result.output

    async def read() -> str | None:
        async with Bastion.open(tmp_path) as app:
            return await app.store.get_secret("cc.key")

    assert asyncio.run(read()) == pem


def test_unreachable_server_fails_with_a_clear_error(runner: CliRunner) -> None:
    runner.invoke(cli, ["server", "enable", "remote-a"])
    result = runner.invoke(cli, ["oauth", "authorize", "remote-a", "--no-browser", "--callback-port", "0"])
    assert result.exit_code == 1
    assert "cannot reach the MCP server" in result.output
    [row] = json.loads(runner.invoke(cli, ["oauth", "ls", "--json"]).output)
    assert row["state"] == "unregistered"


def test_invalid_catalog_is_reported_with_file_and_entry(runner: CliRunner, tmp_path: Path) -> None:
    (tmp_path / "catalog.yaml").write_text("registry:\n  broken: {type: remote, remote: {url: 'nope'}}\n")
    result = runner.invoke(cli, ["server", "ls"])
    assert result.exit_code == 1
    assert "catalog.yaml" in result.output and "'broken'" in result.output and "remote.url" in result.output


def test_gateway_run_off_loopback_without_tls_names_the_flags_to_add(runner: CliRunner) -> None:
    """Point 13 (192.0.2.1 is TEST-NET: refused before anything binds)."""
    result = runner.invoke(cli, ["gateway", "run", "--transport", "streamable-http", "--host", "192.0.2.1"])
    assert result.exit_code == 1
    assert "--tls-cert FILE --tls-key FILE" in result.output and "--insecure-http" in result.output


def test_ui_off_loopback_without_tls_names_the_flags_to_add(runner: CliRunner) -> None:
    """`bastion ui` too: its sign-in POST and session cookie would cross the network in clear."""
    result = runner.invoke(cli, ["ui", "--host", "192.0.2.1"])
    assert result.exit_code == 1
    assert "--tls-cert FILE --tls-key FILE" in result.output and "--insecure-http" in result.output


def test_gateway_run_wants_both_tls_files(runner: CliRunner, tmp_path: Path) -> None:
    cert = tmp_path / "cert.pem"
    cert.write_text("not a certificate")
    result = runner.invoke(cli, ["gateway", "run", "--transport", "streamable-http", "--tls-cert", str(cert)])
    assert result.exit_code == 1 and "--tls-cert and --tls-key go together" in result.output
