"""Pytest fixtures for the real peers (see tests/fixtures/peers.py and tests/fixtures/README.md).

Every peer runs on 127.0.0.1 in its own process group and is stopped at teardown. A missing
``node``/``npm`` fails the tests (CI installs everything); nothing is skipped.

    def test_x(oidc, protected_mcp): ...                       # defaults
    @pytest.mark.parametrize("oidc", [{"issuer_path": "/t1"}], indirect=True)
    def test_y(oidc): ...                                      # knobs through indirect params
    def test_z(oidc_factory): oidc = oidc_factory(access_token_ttl=2)   # several / custom
"""

from __future__ import annotations

import webbrowser
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from mcp.client.stdio import StdioServerParameters

from tests.fixtures import peers

OidcFactory = Callable[..., peers.OidcHandle]
ProtectedMcpFactory = Callable[..., peers.ProtectedMcpHandle]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def node_deps() -> None:
    """Node programs installed (``npm ci`` where node_modules is missing or stale)."""
    peers.ensure_node_deps()


@pytest.fixture
def oidc_factory(node_deps: None) -> Iterator[OidcFactory]:
    """``oidc_factory(**config) -> OidcHandle``; everything it started is stopped at teardown."""
    started: list[peers.OidcHandle] = []

    def start(**config: Any) -> peers.OidcHandle:
        handle = peers.start_oidc(**config)
        started.append(handle)
        return handle

    yield start
    for handle in reversed(started):
        handle.stop()


@pytest.fixture
def oidc(request: pytest.FixtureRequest, oidc_factory: OidcFactory) -> peers.OidcHandle:
    """An oidc-provider; parametrize indirectly with a dict of server.js config to change it."""
    config: dict[str, Any] = getattr(request, "param", None) or {}
    return oidc_factory(**config)


@pytest.fixture(scope="module")
def oidc_module(node_deps: None) -> Iterator[peers.OidcHandle]:
    """One default oidc-provider shared by a module (cheaper; events accumulate across tests)."""
    with peers.start_oidc() as handle:
        yield handle


@pytest.fixture
def protected_mcp_factory() -> Iterator[ProtectedMcpFactory]:
    """``protected_mcp_factory(issuer, **options) -> ProtectedMcpHandle``; stopped at teardown."""
    started: list[peers.ProtectedMcpHandle] = []

    def start(issuer: str, **options: Any) -> peers.ProtectedMcpHandle:
        handle = peers.start_protected_mcp(issuer, **options)
        started.append(handle)
        return handle

    yield start
    for handle in reversed(started):
        handle.stop()


@pytest.fixture
def protected_mcp(
    request: pytest.FixtureRequest, oidc: peers.OidcHandle, protected_mcp_factory: ProtectedMcpFactory
) -> peers.ProtectedMcpHandle:
    """A protected MCP server trusting the ``oidc`` fixture; indirect params: start_protected_mcp kwargs."""
    options: dict[str, Any] = getattr(request, "param", None) or {}
    return protected_mcp_factory(oidc.issuer, **options)


@pytest.fixture
def everything_http(node_deps: None) -> Iterator[peers.EverythingHandle]:
    """server-everything over streamable HTTP; ``.url`` is http://127.0.0.1:PORT/mcp."""
    with peers.start_everything_http("streamableHttp") as handle:
        yield handle


@pytest.fixture
def everything_sse(node_deps: None) -> Iterator[peers.EverythingHandle]:
    """server-everything over the legacy HTTP+SSE transport; ``.url`` is http://127.0.0.1:PORT/sse."""
    with peers.start_everything_http("sse") as handle:
        yield handle


@pytest.fixture
def everything_stdio(node_deps: None) -> StdioServerParameters:
    """StdioServerParameters for ``mcp-server-everything stdio`` (the client owns the process)."""
    return peers.everything_stdio_params()


@pytest.fixture
def time_stdio() -> StdioServerParameters:
    """StdioServerParameters for PyPI ``mcp-server-time`` (local zone UTC)."""
    return peers.time_stdio_params()


@pytest.fixture
def headless_browser(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """$BROWSER set to the headless user agent for this test (also for Python's ``webbrowser`` in
    this process). Yields the path of the file where each run appends its one-line report."""
    log = tmp_path / "headless-browser.log"
    for name, value in peers.headless_browser_env(log).items():
        monkeypatch.setenv(name, value)
    saved = webbrowser._tryorder  # type: ignore[attr-defined]
    webbrowser._tryorder = None  # type: ignore[attr-defined]  # re-read $BROWSER at next use
    yield log
    webbrowser._tryorder = saved  # type: ignore[attr-defined]
