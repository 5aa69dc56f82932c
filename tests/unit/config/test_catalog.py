"""Catalog loading: Docker's catalog shape, user overrides, and errors that name the file,
the entry and the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from bastion.config.catalog import load_catalog, parse_catalog
from bastion.config.settings import load_settings
from bastion.errors import ConfigError, UnknownServerError

DOCKER_STYLE = """
registry:
  notion-remote:
    type: remote
    title: Notion
    description: Notion's hosted server
    remote: {url: "https://mcp.notion.com/mcp", transport_type: streamable-http, headers: {X-A: "${TOKEN}"}}
    oauth:
      providers:
        - provider: notion-remote
          secret: notion.token
          env: NOTION_TOKEN
  local:
    type: server
    command: [python, -m, server]
    env: [{name: LEVEL, value: debug}]
    secrets: [{name: local.key, env: LOCAL_KEY}]
"""


def test_docker_catalog_shape_is_accepted() -> None:
    entries = parse_catalog(DOCKER_STYLE, "docker.yaml")
    notion = entries["notion-remote"]
    assert notion.is_remote and notion.uses_oauth
    assert notion.remote is not None and notion.remote.headers == {"X-A": "${TOKEN}"}
    local = entries["local"]
    assert not local.is_remote and local.command == ["python", "-m", "server"]
    assert local.env[0].name == "LEVEL" and local.secrets[0].env == "LOCAL_KEY"


def test_user_catalog_overrides_and_adds(tmp_path: Path) -> None:
    (tmp_path / "catalog.yaml").write_text(
        "registry:\n  notion-remote: {type: remote, remote: {url: 'http://127.0.0.1:1/mcp'}}\n"
        "  mine: {type: server, command: [echo]}\n"
    )
    catalog = load_catalog(tmp_path)
    assert catalog.get("notion-remote").remote is not None
    assert catalog.get("notion-remote").remote.url == "http://127.0.0.1:1/mcp"  # type: ignore[union-attr]
    assert "mine" in catalog and "linear-remote" in catalog


def test_invalid_yaml_names_the_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "catalog.yaml").write_text("registry:\n  a: [unclosed\n")
    with pytest.raises(ConfigError, match=r"catalog\.yaml: line \d+ invalid YAML"):
        load_catalog(tmp_path)


@pytest.mark.parametrize(
    ("doc", "field"),
    [
        ("registry:\n  bad: {type: remote, remote: {url: 'ftp://x'}}\n", "remote.url"),
        (
            "registry:\n  bad: {type: remote, remote: {url: 'http://x', transport_type: carrier-pigeon}}\n",
            "remote.transport_type",
        ),
        ("registry:\n  bad: {type: remote}\n", "(entry)"),
        ("registry:\n  bad: {type: server, command: 'not a list'}\n", "command"),
    ],
)
def test_invalid_entry_names_file_entry_and_field(doc: str, field: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_catalog(doc, "/home/me/catalog.yaml")
    message = str(info.value)
    assert "/home/me/catalog.yaml" in message and "'bad'" in message
    if field != "(entry)":
        assert field in message


def test_unknown_server_says_how_to_list() -> None:
    catalog = load_catalog(Path("/nonexistent"))
    with pytest.raises(UnknownServerError, match="bastion server ls"):
        catalog.get("nope")


def test_settings_errors_name_the_field(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text("oauth: {callback_port: 99999}\n")
    with pytest.raises(ConfigError, match="oauth.callback_port"):
        load_settings(tmp_path)


def test_bastion_store_env_selects_redis(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BASTION_STORE", "redis://127.0.0.1:6379/0")
    settings = load_settings(tmp_path)
    assert settings.store.backend == "redis" and settings.store.url == "redis://127.0.0.1:6379/0"
    monkeypatch.setenv("BASTION_STORE", "nonsense")
    with pytest.raises(ConfigError, match="BASTION_STORE"):
        load_settings(tmp_path)


def test_store_prefix_from_config_and_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BASTION_STORE_PREFIX", raising=False)
    (tmp_path / "config.yaml").write_text("store: {backend: file, prefix: 'team-a:'}\n")
    monkeypatch.setenv("BASTION_STORE", "redis://127.0.0.1:6379/0")
    settings = load_settings(tmp_path)  # BASTION_STORE replaces the backend and URL, not the prefix
    assert (settings.store.backend, settings.store.prefix) == ("redis", "team-a:")
    monkeypatch.setenv("BASTION_STORE_PREFIX", "team-b:")
    assert load_settings(tmp_path).store.prefix == "team-b:"
