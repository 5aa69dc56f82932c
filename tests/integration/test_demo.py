"""`bastion demo` and `scripts/demo`: the README's first command works, shows every step, stops
everything it started, and prints no secret."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from bastion.demo import servers
from bastion.demo.walkthrough import run_demo
from bastion.oauth import rfc7636

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).parents[2]
BASTION = [sys.executable, "-m", "bastion"]
STEPS = [
    "unregistered",  # enable
    "authorized demo",  # authorize
    "demo     authorized",  # oauth ls
    "tools/list → demo__add, demo__hello",
    "Hello, world! (from the demo server, signed in as demo)",
    "→ 5",
    "refreshed: the authorization server issued a new access token",
    "reconnected demo",
    "with the new access token",
    "revoked at the authorization server",
    "needs-authorization",
    "run `bastion oauth authorize demo`",
    "the gateway reconnected demo: tools/list_changed, tools/list → demo__add, demo__hello",
    "Hello, again!",
    "disabled demo",
    "demo MCP server and authorization server stopped",
    "deleted",
    "Demo complete in",
]
# Tokens, codes, verifiers and secrets are long base64url or hex strings; nothing printed is.
LONG_OPAQUE = re.compile(r"[A-Za-z0-9_\-]{40,}")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def demo_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "BROWSER")}
    (tmp_path / "tmp").mkdir()
    (tmp_path / "home").mkdir()
    env.update(TMPDIR=str(tmp_path / "tmp"), BASTION_HOME=str(tmp_path / "home"), PYTHONDONTWRITEBYTECODE="1")
    return env


def assert_demo_output(out: str, tmp_path: Path) -> None:
    for step in STEPS:
        assert step in out, f"missing {step!r} in:\n{out}"
    assert [int(n) for n in re.findall(r"^\[(\d+)\]", out, re.M)] == list(range(1, 13))
    assert not LONG_OPAQUE.search(out), LONG_OPAQUE.search(out)
    for word in ("access_token", "refresh_token", "code=", "code_verifier", "client_secret"):
        assert word not in out
    # The temporary home is gone and $BASTION_HOME was not touched.
    assert list((tmp_path / "tmp").glob("bastion-demo-*")) == []
    assert list((tmp_path / "home").iterdir()) == []


def test_bastion_demo_headless(tmp_path: Path) -> None:
    started = time.monotonic()
    result = subprocess.run(
        [*BASTION, "demo", "--headless"],
        env=demo_env(tmp_path),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )
    elapsed = time.monotonic() - started
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert_demo_output(output, tmp_path)
    assert "a headless browser (--headless)" in output
    assert elapsed < 45, f"the demo took {elapsed:.1f} s"


def test_scripts_demo(tmp_path: Path) -> None:
    script = ROOT / "scripts" / "demo"
    assert os.access(script, os.X_OK)
    text = script.read_text()
    assert "scripts/install" in text and 'bastion demo "$@"' in text
    # Run it for real when scripts/install has nothing to do (its stamp is current), as on any
    # machine where the tests run from the installed venv; a stale stamp would mean a pip install.
    listing = "".join(
        f"{hashlib.sha256((ROOT / name).read_bytes()).hexdigest()}  {name}\n"
        for name in ("requirements.lock", "pyproject.toml")
    )
    stamp = ROOT / ".venv" / ".bastion-lock-stamp"
    if not stamp.exists() or stamp.read_text().strip() != hashlib.sha256(listing.encode()).hexdigest():
        pytest.skip("the venv's install stamp is stale: scripts/demo would run pip install")
    result = subprocess.run(
        [str(script), "--headless"],
        env=demo_env(tmp_path),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert_demo_output(output, tmp_path)


async def test_demo_prints_no_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """In-process, with every secret of the run recorded: none of them reaches the output."""
    secrets: list[str] = []
    provider_cls: Any = servers.DemoProvider

    original_issue = provider_cls._issue
    original_register = provider_cls.register_client
    original_authorize = provider_cls.authorize
    original_pkce = rfc7636.generate_pkce

    def issue(self: Any, grant: Any, **kw: Any) -> Any:
        token = original_issue(self, grant, **kw)
        secrets.extend([token.access_token, token.refresh_token])
        return token

    async def register(self: Any, client_info: Any) -> None:
        secrets.append(client_info.client_secret)
        await original_register(self, client_info)

    async def authorize(self: Any, client: Any, params: Any) -> str:
        url: str = await original_authorize(self, client, params)
        secrets.extend(parse_qs(urlsplit(url).query)["code"])
        return url

    def pkce(*args: Any, **kw: Any) -> rfc7636.PKCE:
        value = original_pkce(*args, **kw)
        secrets.append(value.verifier)
        return value

    monkeypatch.setattr(provider_cls, "_issue", issue)
    monkeypatch.setattr(provider_cls, "register_client", register)
    monkeypatch.setattr(provider_cls, "authorize", authorize)
    monkeypatch.setattr(rfc7636, "generate_pkce", pkce)
    for name, value in demo_env(tmp_path).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr("tempfile.tempdir", None)

    seconds = await run_demo(headless=True)
    captured = capsys.readouterr()
    output = captured.out + captured.err
    assert "disabled demo" in output and seconds > 0
    # 3 token pairs (authorize, refresh, authorize again), 1 client secret (one registration),
    # 2 codes, 2 verifiers.
    assert len([s for s in secrets if s]) == 11, len(secrets)
    for secret in secrets:
        assert secret and secret not in output
