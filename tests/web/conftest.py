"""Fixtures for the OAuth page's tests: a `$BASTION_HOME` with a catalog and a `Bastion` on it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bastion.service import Bastion
from tests.web.harness import CATALOG


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("BASTION_STORE", raising=False)
    monkeypatch.delenv("BASTION_GATEWAY_TOKEN", raising=False)
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    (home / "catalog.yaml").write_text(CATALOG)
    return home


@pytest.fixture
async def bastion(home: Path) -> AsyncIterator[Bastion]:
    async with Bastion.open(home) as app:
        await app.enable(["protected", "local"])
        yield app
