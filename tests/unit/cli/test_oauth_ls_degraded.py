"""`bastion oauth ls` with the redis store unreachable: a warning on stderr, `--json` still a list."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from click.testing import CliRunner

from bastion.cli.main import cli


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port  # nothing listens there once the socket is closed


def test_oauth_ls_reports_a_degraded_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BASTION_HOME", str(tmp_path))
    monkeypatch.setenv("BASTION_STORE", f"redis://:hunter2@127.0.0.1:{closed_port()}/0")
    monkeypatch.setenv("BASTION_STORE_KEY", "00" * 32)
    runner = CliRunner()
    as_json = runner.invoke(cli, ["oauth", "ls", "--json"])
    assert as_json.exit_code == 1
    assert json.loads(as_json.stdout) == []
    assert "the credential store is degraded: Redis at 127.0.0.1:" in as_json.stderr
    assert "unreachable" in as_json.stderr
    table = runner.invoke(cli, ["oauth", "ls"])
    assert table.exit_code == 1 and table.stdout == ""
    assert len(table.stderr.strip().splitlines()) == 1
    assert "hunter2" not in as_json.output + table.output
