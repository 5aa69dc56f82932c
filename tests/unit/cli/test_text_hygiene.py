"""What reaches a person's screen: URL user-info is cut from every message, `/health` and `/ui`
text, and terminal output has no control characters, whoever supplied the text (a hostile
authorization server's client id or issuer, an imported catalog's title, an upstream's tool text)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from click.testing import CliRunner

from bastion.cli.main import cli
from bastion.errors import DiscoveryError, UpstreamError
from bastion.store.models import ClientRegistration, ProviderRecord, TokenSet

ESCAPES = "\x1b]0;owned\x07\x1b[2J\x1b[31m"
CATALOG = f"""
registry:
  remote-a:
    type: remote
    title: "Notion{ESCAPES.encode("unicode_escape").decode()}\\u202e"
    remote: {{url: "https://mcp.example/mcp"}}
    oauth: {{providers: [{{provider: remote-a}}]}}
"""


@pytest.fixture
def runner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.setenv("BASTION_HOME", str(tmp_path))
    monkeypatch.delenv("BASTION_STORE", raising=False)
    (tmp_path / "catalog.yaml").write_text(CATALOG)
    return CliRunner()


def assert_clean(output: str) -> None:
    assert not any(ord(c) < 0x20 and c != "\n" or 0x7F <= ord(c) < 0xA0 for c in output), repr(output)
    assert "\u202e" not in output


def test_server_titles_from_a_catalog_print_without_control_characters(runner: CliRunner) -> None:
    result = runner.invoke(cli, ["server", "ls"])
    assert result.exit_code == 0, result.output
    assert "Notion" in result.output
    assert_clean(result.output)


def test_client_ids_and_issuers_from_an_authorization_server_print_clean(runner: CliRunner, tmp_path: Path) -> None:
    """A hostile authorization server chose its issuer and the client id it registered."""
    from bastion.service import Bastion

    async def store_hostile_record() -> None:
        async with Bastion.open(tmp_path) as app:
            client = ClientRegistration(client_id=f"id{ESCAPES}\r\nFAKE LINE", issuer="https://u:pw@as.example")
            tokens = TokenSet(
                access_token="a",
                issuer=f"https://alice:hunter2@as.example/{ESCAPES}",
                token_endpoint="https://as.example/token",
                client_id="c",
                scopes=[f"read{ESCAPES}"],
            )
            await app.store.put(
                ProviderRecord(server="remote-a", resource_url="https://mcp.example/mcp", client=client, tokens=tokens)
            )

    asyncio.run(store_hostile_record())
    result = runner.invoke(cli, ["oauth", "ls"])
    assert result.exit_code == 0, result.output
    assert_clean(result.output)
    assert "hunter2" not in result.output and "as.example" in result.output
    assert len(result.output.strip().splitlines()) == 2  # the header and one row: no faked line


def test_errors_print_on_one_clean_line(runner: CliRunner) -> None:
    result = runner.invoke(cli, ["oauth", "authorize", "remote-a\x1b[2J"])
    assert result.exit_code == 1
    assert_clean(result.output)
    assert len(result.output.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://alice:hunter2@mcp.example/mcp", "https://mcp.example/mcp"),
        ("redis://:hunter2@127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("http://hunter2@[::1]:8080/x?y=1", "http://[::1]:8080/x?y=1"),
        ("https://alice:p@hunter2@mcp.example/", "https://mcp.example/"),
    ],
)
def test_user_info_is_cut_out_of_every_message(url: str, shown: str) -> None:
    for error in (
        UpstreamError(f"cannot reach {url}", hint=f"check {url}"),
        DiscoveryError(f"metadata at {url}", error_description=f"see {url}"),
    ):
        assert "hunter2" not in str(error) and shown in str(error)
        assert "hunter2" not in (getattr(error, "error_description", None) or "")


def test_the_ui_view_shows_no_user_info() -> None:
    from bastion.web.status import oauth_view

    record = ProviderRecord(
        server="s",
        resource_url="https://mcp.example/mcp",
        client=ClientRegistration(client_id="c", issuer="https://alice:hunter2@as.example"),
        last_error="token endpoint https://alice:hunter2@as.example/token refused",
    )
    view = oauth_view(record, now=0.0)
    assert "hunter2" not in f"{view.issuer} {view.last_error}"
