"""`bastion client connect|disconnect|ls`: merge into each client's own file, touching nothing else."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner

from bastion.cli.main import cli
from bastion.clients import CLIENTS


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / ".config"))
    monkeypatch.setenv("BASTION_HOME", str(tmp_path / "bastion"))
    return tmp_path


@pytest.mark.parametrize("name", sorted(CLIENTS))
def test_connect_merges_and_disconnect_removes_only_our_entry(home: Path, name: str) -> None:
    client = CLIENTS[name]
    path = client.config_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"theme": "dark", client.key: {"other": {"command": "x"}}}))
    runner = CliRunner()
    result = runner.invoke(cli, ["client", "connect", name])
    assert result.exit_code == 0, result.output
    doc = json.loads(path.read_text())
    assert doc["theme"] == "dark" and doc[client.key]["other"] == {"command": "x"}
    entry = doc[client.key]["bastion"]
    assert entry["args"] == ["gateway", "run", "--transport", "stdio"]
    assert entry["env"] == {"BASTION_HOME": str(home / "bastion")}
    assert ("type" in entry) == client.typed
    assert "connected" in runner.invoke(cli, ["client", "ls"]).output
    assert runner.invoke(cli, ["client", "disconnect", name]).exit_code == 0
    doc = json.loads(path.read_text())
    assert doc == {"theme": "dark", client.key: {"other": {"command": "x"}}}


def test_connect_creates_a_missing_file(home: Path) -> None:
    result = CliRunner().invoke(cli, ["client", "connect", "cursor"])
    assert result.exit_code == 0
    assert "bastion" in json.loads((home / ".cursor" / "mcp.json").read_text())["mcpServers"]


def test_invalid_client_file_is_left_untouched(home: Path) -> None:
    path = CLIENTS["cursor"].config_path()
    path.parent.mkdir(parents=True)
    path.write_text("{broken")
    result = CliRunner().invoke(cli, ["client", "connect", "cursor"])
    assert result.exit_code == 1 and "invalid JSON" in result.output
    assert path.read_text() == "{broken"


def test_unknown_client(home: Path) -> None:
    result = CliRunner().invoke(cli, ["client", "connect", "notepad"])
    assert result.exit_code == 1 and "known clients" in result.output


@pytest.mark.parametrize("name", sorted(n for n, c in CLIENTS.items() if c.http))
def test_connect_with_a_url_writes_the_gateway_token_into_a_private_file(
    home: Path, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Point 12: a client connected over HTTP sends the gateway token; its file is made 0600."""
    monkeypatch.delenv("BASTION_GATEWAY_TOKEN", raising=False)
    client = CLIENTS[name]
    path = client.config_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({client.key: {}}))
    os.chmod(path, 0o644)
    result = CliRunner().invoke(cli, ["client", "connect", name, "--url", "http://127.0.0.1:8811/mcp"])
    assert result.exit_code == 0, result.output
    token = (home / "bastion" / "gateway-token").read_text().strip()
    entry = json.loads(path.read_text())[client.key]["bastion"]
    assert entry["url"] == "http://127.0.0.1:8811/mcp"
    assert entry["headers"] == {"Authorization": f"Bearer {token}"}
    assert ("type" in entry) == client.typed
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert token not in result.output


def test_connect_with_a_url_uses_the_environment_token(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BASTION_GATEWAY_TOKEN", "env-token")
    result = CliRunner().invoke(cli, ["client", "connect", "cursor", "--url", "http://127.0.0.1:8811/mcp"])
    assert result.exit_code == 0, result.output
    entry = json.loads(CLIENTS["cursor"].config_path().read_text())["mcpServers"]["bastion"]
    assert entry["headers"] == {"Authorization": "Bearer env-token"}


def test_claude_desktop_is_connected_over_stdio_only(home: Path) -> None:
    result = CliRunner().invoke(cli, ["client", "connect", "claude", "--url", "http://127.0.0.1:8811/mcp"])
    assert result.exit_code == 1 and "without --url" in result.output
    assert not CLIENTS["claude"].config_path().exists()
