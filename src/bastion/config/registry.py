"""`registry.yaml`: which catalog servers are enabled (Docker's shape: `registry: {name: {ref: ""}}`)."""

from __future__ import annotations

from pathlib import Path

from bastion.config.files import read_yaml, write_yaml
from bastion.errors import ConfigError


def registry_path(home: Path) -> Path:
    return home / "registry.yaml"


def load_enabled(home: Path) -> list[str]:
    path = registry_path(home)
    doc = read_yaml(path)
    if doc is None:
        return []
    if not isinstance(doc, dict) or not isinstance(doc.get("registry") or {}, dict):
        raise ConfigError(f"{path}: expected `registry:` mapping server names to settings")
    return sorted(str(n) for n in (doc.get("registry") or {}))


def save_enabled(home: Path, names: list[str]) -> None:
    write_yaml(registry_path(home), {"registry": {n: {"ref": ""} for n in sorted(set(names))}})
