"""`$BASTION_HOME` and its YAML files are private to their user (the store directory's check,
`config.files.check_private`): what decides where tokens go cannot be changed by someone else."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner

from bastion.cli.main import cli
from bastion.config.paths import ensure_home
from bastion.errors import ConfigError


@pytest.fixture
def home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    (home / "catalog.yaml").write_text("registry: {}\n")
    return home


@pytest.mark.parametrize("mode", [0o770, 0o777, 0o722], ids=oct)
def test_a_home_others_can_write_is_refused_with_the_chmod_to_run(home: Path, mode: int) -> None:
    os.chmod(home, mode)
    with pytest.raises(ConfigError) as refused:
        ensure_home(home)
    assert f"`chmod 700 {home}`" in str(refused.value)
    assert stat.S_IMODE(home.stat().st_mode) == mode  # refused, not silently "fixed"


@pytest.mark.parametrize("name", ["catalog.yaml", "registry.yaml", "config.yaml"])
@pytest.mark.parametrize("mode", [0o664, 0o646], ids=oct)
def test_a_yaml_file_others_can_write_is_refused_with_the_chmod_to_run(home: Path, name: str, mode: int) -> None:
    path = home / name
    path.write_text("{}\n")
    os.chmod(path, mode)
    with pytest.raises(ConfigError) as refused:
        ensure_home(home)
    assert f"`chmod 600 {path}`" in str(refused.value)


def test_a_readable_home_is_tightened_to_0700_and_readable_files_are_accepted(home: Path) -> None:
    os.chmod(home, 0o755)
    os.chmod(home / "catalog.yaml", 0o644)
    assert ensure_home(home) == home
    assert stat.S_IMODE(home.stat().st_mode) == 0o700


def test_a_new_home_is_created_0700(tmp_path: Path) -> None:
    home = ensure_home(tmp_path / "new" / "home")
    assert stat.S_IMODE(home.stat().st_mode) == 0o700


def test_a_home_of_another_user_is_refused(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: home.stat().st_uid + 1)
    with pytest.raises(ConfigError, match="belongs to another user"):
        ensure_home(home)


def test_the_cli_refuses_a_world_writable_catalog_before_reading_it(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BASTION_HOME", str(home))
    monkeypatch.delenv("BASTION_STORE", raising=False)
    os.chmod(home / "catalog.yaml", 0o666)
    result = CliRunner().invoke(cli, ["server", "ls"])
    assert result.exit_code == 1
    assert f"chmod 600 {home / 'catalog.yaml'}" in result.output
