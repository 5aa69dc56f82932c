"""Desktop MCP clients: merge a `bastion gateway run` stdio entry into their own configuration
file, without touching their other entries — or, with a URL, an HTTP entry for a running gateway
that sends the gateway token (`Authorization: Bearer`); the file is then made 0600, since it holds
the token.

| client       | file (Linux / macOS)                                              | key          |
|--------------|-------------------------------------------------------------------|--------------|
| claude       | ~/.config/Claude/claude_desktop_config.json / ~/Library/Application Support/Claude/… | mcpServers |
| cursor       | ~/.cursor/mcp.json                                                | mcpServers   |
| vscode       | ~/.config/Code/User/mcp.json / ~/Library/Application Support/Code/User/mcp.json | servers |
| claude-code  | ~/.claude.json                                                    | mcpServers   |
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bastion.config.files import atomic_write
from bastion.errors import ConfigError

ENTRY_NAME = "bastion"


@dataclass(frozen=True)
class DesktopClient:
    name: str
    title: str
    key: str
    """The top-level key holding the servers."""
    typed: bool
    """Whether entries carry `"type": "stdio"` (and `"type": "http"`)."""
    http: bool = True
    """Whether its configuration file takes HTTP servers (`url` + `headers`)."""

    def config_path(self) -> Path:
        home = Path.home()
        mac = sys.platform == "darwin"
        xdg = Path(os.environ.get("XDG_CONFIG_HOME") or home / ".config")
        app_support = home / "Library" / "Application Support"
        if self.name == "claude":
            return (app_support if mac else xdg) / "Claude" / "claude_desktop_config.json"
        if self.name == "cursor":
            return home / ".cursor" / "mcp.json"
        if self.name == "vscode":
            return (app_support if mac else xdg) / "Code" / "User" / "mcp.json"
        return home / ".claude.json"


CLIENTS: dict[str, DesktopClient] = {
    c.name: c
    for c in (
        DesktopClient("claude", "Claude Desktop", "mcpServers", typed=False, http=False),
        DesktopClient("cursor", "Cursor", "mcpServers", typed=False),
        DesktopClient("vscode", "VS Code", "servers", typed=True),
        DesktopClient("claude-code", "Claude Code", "mcpServers", typed=True),
    )
}


def get_client(name: str) -> DesktopClient:
    try:
        return CLIENTS[name]
    except KeyError:
        raise ConfigError(f"unknown client {name!r}", hint=f"known clients: {', '.join(CLIENTS)}") from None


def gateway_entry(client: DesktopClient, home: Path | None) -> dict[str, Any]:
    exe = shutil.which("bastion") or str(Path(sys.executable).with_name("bastion"))
    entry: dict[str, Any] = {"command": exe, "args": ["gateway", "run", "--transport", "stdio"]}
    if home is not None:
        entry["env"] = {"BASTION_HOME": str(home)}
    if client.typed:
        entry = {"type": "stdio", **entry}
    return entry


def http_entry(client: DesktopClient, url: str, token: str) -> dict[str, Any]:
    """An entry for a running gateway at `url` that sends the gateway token."""
    if not client.http:
        raise ConfigError(
            f"{client.title}'s configuration file takes stdio servers only",
            hint=f"run `bastion client connect {client.name}` without --url (Bastion then runs over stdio)",
        )
    entry: dict[str, Any] = {"url": url, "headers": {"Authorization": f"Bearer {token}"}}
    return {"type": "http", **entry} if client.typed else entry


def _read(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        doc = json.loads(path.read_text(encoding="utf-8") or "{}")
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"{path}: invalid JSON at line {exc.lineno}: {exc.msg}",
            hint="fix the file by hand; Bastion left it untouched",
        ) from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: expected a JSON object", hint="fix the file by hand; Bastion left it untouched")
    return doc


def _write(path: Path, doc: dict[str, Any], *, private: bool = False) -> None:
    mode = path.stat().st_mode & 0o777 if path.exists() else 0o600
    if private:
        mode &= 0o700  # it holds the gateway token now: nobody else may read it
    atomic_write(path, (json.dumps(doc, indent=2) + "\n").encode(), mode=mode)


def connect(client: DesktopClient, home: Path | None, *, url: str | None = None, token: str | None = None) -> Path:
    """Merge Bastion's entry into the client's file: stdio (`gateway run --transport stdio`), or
    with `url` and `token` an HTTP entry for a running gateway."""
    path = client.config_path()
    if url is not None:
        if token is None:
            raise ValueError("an HTTP entry needs the gateway token")
        entry = http_entry(client, url, token)
    else:
        entry = gateway_entry(client, home)
    doc = _read(path)
    servers = doc.get(client.key)
    if servers is None:
        servers = {}
    if not isinstance(servers, dict):
        raise ConfigError(f"{path}: `{client.key}` is not an object", hint="fix the file by hand")
    servers[ENTRY_NAME] = entry
    doc[client.key] = servers
    _write(path, doc, private=url is not None)
    return path


def disconnect(client: DesktopClient) -> bool:
    path = client.config_path()
    doc = _read(path)
    servers = doc.get(client.key)
    if not isinstance(servers, dict) or ENTRY_NAME not in servers:
        return False
    del servers[ENTRY_NAME]
    _write(path, doc)
    return True


def is_connected(client: DesktopClient) -> bool:
    try:
        doc = _read(client.config_path())
    except ConfigError:
        return False
    servers = doc.get(client.key)
    return isinstance(servers, dict) and ENTRY_NAME in servers
