"""The OAuth page end to end in a real browser (Debian chromium driven by Playwright) against a
real authorization server (oidc-provider with its HTML login and consent forms) and a real
OAuth-protected MCP server, with `bastion ui` and the CLI as separate processes:

0. the browser signs in with the gateway token (a form POST; loopback needs it too);
1. the page shows the enabled server `unregistered`;
2. Authorize opens the authorization server in a new tab; we sign in and consent there; the
   callback tab says done, and the first tab shows the server `authorized` without a reload;
3. Revoke turns it back to `registered`;
4. `bastion oauth authorize` in another process (headless user agent as $BROWSER) and then
   `bastion server disable` show up on the page by themselves;
5. with JavaScript off the page still reads and its forms still work.

Screenshots go to test-output/ui/. Every wait is bounded; every process is stopped by its id.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Locator, Page, Route, expect, sync_playwright

from tests.fixtures import peers

pytestmark = [pytest.mark.browser, pytest.mark.integration]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = Path(__file__).resolve().parents[2] / "test-output" / "ui"
WAIT_MS = 20_000
CLI_TIMEOUT = 90.0
UI_START_TIMEOUT = 30.0
LIVE = "Live"


@pytest.fixture
def authorization_peers() -> Iterator[tuple[peers.OidcHandle, peers.ProtectedMcpHandle]]:
    peers.ensure_node_deps()
    with peers.start_oidc(interactions="forms") as oidc, peers.start_protected_mcp(oidc.issuer) as mcp:
        yield oidc, mcp


@pytest.fixture
def env(tmp_path: Path, authorization_peers: tuple[peers.OidcHandle, peers.ProtectedMcpHandle]) -> dict[str, str]:
    """A fresh $BASTION_HOME whose catalog has the protected MCP server, enabled by the CLI."""
    _, mcp = authorization_peers
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    (home / "catalog.yaml").write_text(
        "registry:\n"
        "  protected:\n"
        "    type: remote\n"
        "    title: OAuth-protected test server\n"
        f"    remote: {{url: '{mcp.url}', transport_type: streamable-http}}\n"
        "    oauth: {providers: [{provider: protected}]}\n"
    )
    environment = {k: v for k, v in os.environ.items() if k not in ("BASTION_STORE", "BASTION_GATEWAY_TOKEN")}
    environment.update(
        BASTION_HOME=str(home),
        PYTHONUNBUFFERED="1",
        **peers.headless_browser_env(tmp_path / "headless-browser.log"),
    )
    run_cli(environment, "server", "enable", "protected")
    return environment


def run_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "bastion", *args],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
    )
    assert result.returncode == 0, f"bastion {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture
def ui_url(env: dict[str, str], tmp_path: Path) -> Iterator[str]:
    """`bastion ui --port 0` in its own process group (stopped by its id); yields the URL it prints."""
    log_path = tmp_path / "bastion-ui.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "bastion", "ui", "--port", "0"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + UI_START_TIMEOUT
        while (match := re.search(r"Bastion UI: (http://\S+)", log_path.read_text())) is None:
            assert process.poll() is None, f"bastion ui exited:\n{log_path.read_text()}"
            assert time.monotonic() < deadline, f"bastion ui printed no URL:\n{log_path.read_text()}"
            time.sleep(0.05)
        yield match.group(1)
    finally:
        stop_group(process)
        output = log_path.read_text()
        assert "Traceback" not in output, output


def stop_group(process: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    """SIGTERM the process group, SIGKILL it after `grace` seconds."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(grace)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(grace)


def loopback_only(route: Route) -> None:
    """Keep the browser on this machine (the authorization server's page @imports a web font)."""
    host = urlsplit(route.request.url).hostname or ""
    if host in ("127.0.0.1", "localhost", "::1"):
        route.continue_()
    else:
        route.abort()


def row(page: Page, server: str = "protected") -> Locator:
    return page.locator(f"#server-{server}")


def mark_no_reload(page: Page) -> None:
    """Set a marker that a reload would erase, once the event stream is connected."""
    expect(page.locator("#live-status")).to_contain_text(LIVE)
    page.evaluate("window.__bastionNoReload = true")


def assert_not_reloaded(page: Page) -> None:
    assert page.evaluate("window.__bastionNoReload === true"), "the page was reloaded"


def sign_in(page: Page, ui_url: str, env: dict[str, str]) -> None:
    """The page sends an unsigned browser to its sign-in form; the token goes in a POST."""
    page.goto(ui_url)
    expect(page.locator("h1")).to_contain_text("Sign in")
    token = (Path(env["BASTION_HOME"]) / "gateway-token").read_text().strip()
    page.locator("input[name=token]").fill(token)
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("#live")).to_be_attached()
    assert page.url == ui_url and token not in page.url


def shot(page: Page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def stored_tokens(env: dict[str, str]) -> list[str]:
    """The token values in the file store right now (to check the page never shows them)."""
    path = Path(env["BASTION_HOME"]) / "store" / "providers"
    values: list[str] = []
    for file in path.glob("*.json"):
        tokens = json.loads(file.read_text()).get("tokens") or {}
        values += [tokens[k] for k in ("access_token", "refresh_token") if tokens.get(k)]
    return values


def test_authorize_revoke_and_cli_changes_show_on_the_page(env: dict[str, str], ui_url: str) -> None:
    assert Path(CHROMIUM).exists(), "the browser tests need Debian's chromium: apt-get install chromium (.ci/run does)"
    expect.set_options(timeout=WAIT_MS)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 800})
            context.set_default_timeout(WAIT_MS)
            context.route("**/*", loopback_only)
            page = context.new_page()
            console_errors: list[str] = []
            page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)

            # 0. Sign in (loopback too): the cookie is derived from the token, HttpOnly, Strict.
            sign_in(page, ui_url, env)
            token = (Path(env["BASTION_HOME"]) / "gateway-token").read_text().strip()
            (cookie,) = context.cookies()
            assert cookie["name"] == "bastion_session" and cookie["value"] != token
            assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/ui/"
            shot(page, "0-signed-in")

            # 1. The enabled server, not authorized yet.
            expect(row(page)).to_have_attribute("data-oauth-state", "unregistered")
            mark_no_reload(page)
            shot(page, "1-unregistered")

            # 2. Authorize in a new tab: sign in and consent at the authorization server.
            with context.expect_page() as new_tab:
                row(page).locator("form.action-authorize button").click()
            tab = new_tab.value
            tab.locator("input[name=login]").fill("test-user")
            tab.locator("input[name=password]").fill("test-password")
            shot(tab, "2-login-form")
            tab.get_by_role("button", name="Sign-in").click()
            expect(tab.get_by_role("button", name="Continue")).to_be_visible()
            shot(tab, "3-consent-form")
            tab.get_by_role("button", name="Continue").click()
            expect(tab.locator("h1")).to_contain_text("protected is authorized")
            assert "/ui/oauth/callback" in tab.url
            shot(tab, "4-callback-done")
            tab.close()

            expect(row(page)).to_have_attribute("data-oauth-state", "authorized")
            expect(row(page).locator(".oauth")).to_contain_text("mcp:read")
            assert_not_reloaded(page)
            shot(page, "5-authorized-live")
            content = page.content()
            tokens = stored_tokens(env)
            assert tokens, "the flow stored no token"
            assert not [t for t in tokens if t in content], "a token reached the page"

            # 3. Revoke (a form post: the page itself reloads here).
            row(page).locator("form.action-revoke button").click()
            expect(row(page)).to_have_attribute("data-oauth-state", "registered")
            expect(page.locator("#notices")).to_contain_text("protected: revoked")
            shot(page, "6-revoked")

            # 4. The CLI, in other processes; the page follows by itself.
            mark_no_reload(page)
            run_cli(env, "oauth", "authorize", "protected", "--callback-port", "0", "--timeout", "60")
            expect(row(page)).to_have_attribute("data-oauth-state", "authorized")
            assert_not_reloaded(page)
            shot(page, "7-authorized-by-cli")

            run_cli(env, "server", "disable", "protected")
            expect(row(page)).to_have_count(0)
            expect(page.locator("#available-protected")).to_be_visible()
            assert_not_reloaded(page)
            shot(page, "8-disabled-by-cli")

            # 5. Without JavaScript the page still reads and acts (and the live tab follows).
            static = browser.new_context(java_script_enabled=False)
            static.set_default_timeout(WAIT_MS)
            static.route("**/*", loopback_only)
            plain = static.new_page()
            sign_in(plain, ui_url, env)
            plain.locator("#available-protected form.action-enable button").click()
            expect(row(plain)).to_have_attribute("data-oauth-state", "unregistered")
            shot(plain, "9-enabled-without-javascript")
            expect(row(page)).to_have_attribute("data-oauth-state", "unregistered")
            assert_not_reloaded(page)

            assert int(page.locator("#live").get_attribute("data-refreshes") or "0") >= 3
            assert not console_errors, console_errors
        finally:
            browser.close()
