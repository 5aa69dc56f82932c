"""The client under test for the official MCP conformance suite: Bastion itself.

    .venv/bin/python conformance/client.py SERVER_URL

The suite starts a scenario's MCP server (and mock authorization server), then runs this with the
server's URL as the last argument, `MCP_CONFORMANCE_SCENARIO` and, for some scenarios,
`MCP_CONFORMANCE_CONTEXT` (JSON: pre-registered or client-credentials secrets).

Everything goes through the product as a user would run it, in a temporary `BASTION_HOME`:

1. `catalog.yaml` with one remote streamable-HTTP server `conformance` using OAuth;
   `bastion server enable conformance`; pre-registered credentials with
   `bastion oauth client set`, client-credentials secrets with `bastion secret set`;
2. `bastion gateway run --transport streamable-http --port 0`;
3. while the gateway reports the upstream `needs-authorization`: `bastion oauth authorize`
   with a headless browser ($BROWSER, tests/fixtures/headless-browser), at most
   `MAX_AUTHORIZATIONS` times (the 403 step-up loop is bounded);
4. the mcp SDK `Client` against the gateway: list tools, call the first one. A tool result
   saying the upstream needs authorization (the gateway's own step-up handling marked it)
   goes back to step 3.

Exit 0 when the tool call succeeded. Every wait is bounded; every process started is stopped.
Secrets are passed through the environment or stdin, never argv, and never printed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Coroutine, Mapping
from pathlib import Path
from typing import Any

import httpx2
import yaml

REPO = Path(__file__).resolve().parent.parent
HEADLESS_BROWSER = REPO / "tests" / "fixtures" / "headless-browser"
SERVER = "conformance"
CIMD_URL = "https://conformance-test.local/client-metadata.json"
"""The client ID metadata document URL the suite's `auth/basic-cimd` expects (its AS never fetches it)."""

MAX_AUTHORIZATIONS = 3
AUTHORIZE_TIMEOUT = 20.0
GATEWAY_READY_TIMEOUT = 20.0
SETTLE_TIMEOUT = 10.0
RECONNECT_TIMEOUT = 5.0
CALL_TIMEOUT = 15.0
SCENARIO_TIMEOUT = 55.0
READY_LINE = re.compile(r"gateway listening on (http://\S+)")


def log(message: str) -> None:
    print(f"conformance-client: {message}", file=sys.stderr, flush=True)


class ClientFailure(Exception):
    """The scenario cannot be completed; the message says why (no secrets)."""


def catalog_entry(url: str, context: Mapping[str, Any]) -> dict[str, Any]:
    oauth: dict[str, Any] = {
        "providers": [{"provider": SERVER}],
        "client_id_metadata_document": CIMD_URL,
    }
    if "private_key_pem" in context:
        oauth["client_credentials"] = {
            "client_id": context["client_id"],
            "token_endpoint_auth_method": "private_key_jwt",
            "private_key_secret": f"{SERVER}.private_key",
            "signing_alg": context.get("signing_algorithm", "RS256"),
        }
    elif _is_client_credentials(context):
        oauth["client_credentials"] = {
            "client_id": context["client_id"],
            "token_endpoint_auth_method": "client_secret_basic",
            "client_secret_secret": f"{SERVER}.client_secret",
        }
    return {
        "type": "remote",
        "title": "MCP conformance scenario server",
        "remote": {"url": url, "transport_type": "streamable-http"},
        "oauth": oauth,
    }


def _is_client_credentials(context: Mapping[str, Any]) -> bool:
    scenario = str(context.get("name", os.environ.get("MCP_CONFORMANCE_SCENARIO", "")))
    return scenario.startswith("auth/client-credentials")


class Bastion:
    """Runs `bastion` commands in one home."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.env = {
            **os.environ,
            "BASTION_HOME": str(home),
            "BASTION_STORE": "file",
            "BROWSER": str(HEADLESS_BROWSER),
            "BASTION_TEST_PYTHON": sys.executable,
            "PYTHONUNBUFFERED": "1",
        }
        # No BASTION_GATEWAY_TOKEN: the gateway makes its token file, which `gateway_auth` reads.
        for name in ("BASTION_CLIENT_SECRET", "MCP_CONFORMANCE_CONTEXT", "BASTION_GATEWAY_TOKEN"):
            self.env.pop(name, None)

    def gateway_auth(self) -> dict[str, str]:
        """The header the gateway requires (on loopback too), with the token of its home's file."""
        return {"Authorization": f"Bearer {(self.home / 'gateway-token').read_text(encoding='ascii').strip()}"}

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "bastion", *args]

    async def run(
        self, *args: str, timeout: float, stdin: str | None = None, extra_env: Mapping[str, str] | None = None
    ) -> int:
        """Run one command; its output goes to our stderr (the suite keeps it in stderr.txt)."""
        process = await asyncio.create_subprocess_exec(
            *self.argv(*args),
            env={**self.env, **(extra_env or {})},
            stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
            stdout=sys.stderr,
            stderr=sys.stderr,
        )
        try:
            await asyncio.wait_for(process.communicate(stdin.encode() if stdin is not None else None), timeout)
        except TimeoutError:
            raise ClientFailure(f"`bastion {' '.join(args[:3])}` did not finish within {timeout:g}s") from None
        finally:
            await stop_process(process)
        assert process.returncode is not None
        return process.returncode

    async def check(self, *args: str, timeout: float = 20.0, **kwargs: Any) -> None:
        status = await self.run(*args, timeout=timeout, **kwargs)
        if status != 0:
            raise ClientFailure(f"`bastion {' '.join(args[:3])}` exited with {status}")


async def stop_process(process: asyncio.subprocess.Process, grace: float = 5.0) -> None:
    """SIGTERM, then SIGKILL after `grace` seconds; always reaps."""
    if process.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(process.wait(), grace)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()


async def _pump(stream: asyncio.StreamReader, ready: asyncio.Future[str]) -> None:
    """Copy the gateway's stderr to ours, and resolve `ready` with the URL of its ready line."""
    while line := await stream.readline():
        text = line.decode("utf-8", "replace")
        sys.stderr.write(f"[gateway] {text}")
        sys.stderr.flush()
        match = READY_LINE.search(text)
        if match is not None and not ready.done():
            ready.set_result(match.group(1))
    if not ready.done():
        ready.set_exception(ClientFailure("the gateway exited before it was ready"))


@contextlib.asynccontextmanager
async def gateway(bastion: Bastion) -> AsyncIterator[str]:
    """`bastion gateway run` on a free loopback port; yields its MCP URL; stops it on exit."""
    argv = bastion.argv(
        "gateway", "run", "--transport", "streamable-http", "--host", "127.0.0.1", "--port", "0", "--servers", SERVER
    )
    process = await asyncio.create_subprocess_exec(
        *argv, env=bastion.env, stdin=subprocess.DEVNULL, stdout=sys.stderr, stderr=subprocess.PIPE
    )
    assert process.stderr is not None
    ready: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    pump = asyncio.create_task(_pump(process.stderr, ready))
    try:
        try:
            url = await asyncio.wait_for(asyncio.shield(ready), GATEWAY_READY_TIMEOUT)
        except TimeoutError:
            raise ClientFailure(f"the gateway printed no ready line within {GATEWAY_READY_TIMEOUT:g}s") from None
        log(f"gateway ready at {url}")
        yield url
    finally:
        await stop_process(process)
        with contextlib.suppress(asyncio.CancelledError, ClientFailure):
            await asyncio.wait_for(pump, 5.0)


async def health(http: httpx2.AsyncClient, url: str) -> tuple[str, str | None]:
    """(state, last_error) of the scenario's upstream, from the gateway's /health."""
    response = await http.get(url.rsplit("/", 1)[0] + "/health")
    for upstream in response.json().get("upstreams", []):
        if upstream.get("name") == SERVER:
            return str(upstream.get("state")), upstream.get("last_error")
    return "unknown", None


async def upstream_state(http: httpx2.AsyncClient, url: str) -> tuple[str, str | None]:
    """(state, last_error) once the upstream is no longer connecting (bounded)."""
    deadline = time.monotonic() + SETTLE_TIMEOUT
    state, error = await health(http, url)
    while state in ("connecting", "disconnected", "unknown") and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        state, error = await health(http, url)
    return state, error


async def await_reconnect(http: httpx2.AsyncClient, url: str, error_before: str | None) -> None:
    """After an authorization, wait (bounded) until the gateway has acted on the new tokens: the
    upstream reconnected (connecting or ready), or it needs authorization for another reason."""
    deadline = time.monotonic() + RECONNECT_TIMEOUT
    while time.monotonic() < deadline:
        state, error = await health(http, url)
        if state != "needs-authorization" or error != error_before:
            return
        await asyncio.sleep(0.05)
    log(f"the gateway did not reconnect within {RECONNECT_TIMEOUT:g}s of the authorization")


async def use_tools(url: str, auth: Mapping[str, str]) -> bool:
    """List the gateway's tools and call the first. False when the upstream needs authorization."""
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client
    from mcp.shared.exceptions import MCPError

    async with (
        httpx2.AsyncClient(headers=dict(auth), timeout=CALL_TIMEOUT, trust_env=False) as http,
        Client(streamable_http_client(url, http_client=http), read_timeout_seconds=CALL_TIMEOUT) as client,
    ):
        tools = (await client.list_tools()).tools
        log(f"tools: {', '.join(t.name for t in tools) or '(none)'}")
        if not tools:
            raise ClientFailure("the gateway lists no tools")
        try:
            result = await client.call_tool(tools[0].name, {})
        except MCPError as exc:
            if "needs authorization" in exc.error.message:
                log(f"{tools[0].name}: the upstream needs authorization again")
                return False
            raise ClientFailure(f"{tools[0].name} failed: {exc.error.message[:200]}") from None
        text = " ".join(getattr(block, "text", "") for block in result.content)
        if result.is_error:
            if "needs authorization" in text:
                log(f"{tools[0].name}: the upstream needs authorization again")
                return False
            raise ClientFailure(f"{tools[0].name} returned an error: {text[:200]}")
        log(f"{tools[0].name}: ok")
        return True


async def scenario(server_url: str, context: Mapping[str, Any], home: Path) -> None:
    (home / "catalog.yaml").write_text(
        yaml.safe_dump({"registry": {SERVER: catalog_entry(server_url, context)}}), encoding="utf-8"
    )
    (home / "config.yaml").write_text(
        yaml.safe_dump(
            {
                "oauth": {"callback_port": 0, "callback_timeout": AUTHORIZE_TIMEOUT},
                "gateway": {"connect_timeout": 10, "request_timeout": CALL_TIMEOUT},
            }
        ),
        encoding="utf-8",
    )
    bastion = Bastion(home)
    await bastion.check("server", "enable", SERVER)
    if _is_client_credentials(context):
        if "private_key_pem" in context:
            await bastion.check("secret", "set", f"{SERVER}.private_key", stdin=str(context["private_key_pem"]) + "\n")
        else:
            await bastion.check("secret", "set", f"{SERVER}.client_secret", stdin=str(context["client_secret"]) + "\n")
    elif "client_id" in context:
        args = ["oauth", "client", "set", SERVER, "--client-id", str(context["client_id"])]
        extra: dict[str, str] = {}
        if context.get("client_secret"):
            extra["BASTION_CLIENT_SECRET"] = str(context["client_secret"])
        await bastion.check(*args, extra_env=extra)

    authorizations = 0
    async with (
        gateway(bastion) as url,
        httpx2.AsyncClient(headers=bastion.gateway_auth(), timeout=5.0, trust_env=False) as http,
    ):
        while True:
            state, error = await upstream_state(http, url)
            log(f"upstream state: {state}" + (f" ({error})" if error else ""))
            if state == "needs-authorization":
                if authorizations >= MAX_AUTHORIZATIONS:
                    raise ClientFailure(f"still not authorized after {authorizations} authorizations; giving up")
                authorizations += 1
                await bastion.check(
                    "oauth", "authorize", SERVER, "--timeout", str(AUTHORIZE_TIMEOUT), timeout=AUTHORIZE_TIMEOUT + 10
                )
                await await_reconnect(http, url, error)
                continue
            if state != "ready":
                raise ClientFailure(f"the upstream is {state}: {error}")
            if await use_tools(url, bastion.gateway_auth()):
                return


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print("usage: client.py SERVER_URL", file=sys.stderr)
        return 2
    server_url = argv[-1]
    raw = os.environ.get("MCP_CONFORMANCE_CONTEXT")
    context: dict[str, Any] = json.loads(raw) if raw else {}
    log(f"scenario {os.environ.get('MCP_CONFORMANCE_SCENARIO', '?')}, context keys: {sorted(context)}")
    home = Path(tempfile.mkdtemp(prefix="bastion-conformance-"))
    try:
        asyncio.run(run_cancellable(scenario(server_url, context, home), SCENARIO_TIMEOUT))
    except ClientFailure as exc:
        log(f"FAILED: {exc}")
        return 1
    except TimeoutError:
        log(f"FAILED: the scenario did not finish within {SCENARIO_TIMEOUT:g}s")
        return 1
    except asyncio.CancelledError:
        log("stopped by a signal")
        return 1
    finally:
        shutil.rmtree(home, ignore_errors=True)
    return 0


async def run_cancellable(work: Coroutine[Any, Any, None], timeout: float) -> None:
    """Run `work` with a deadline; SIGTERM/SIGINT (the suite kills clients that time out) cancel
    it, so the `finally` blocks stop the gateway and any `bastion` child before we exit."""
    task = asyncio.ensure_future(asyncio.wait_for(work, timeout))
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, task.cancel)
    await task


if __name__ == "__main__":
    sys.exit(main(sys.argv))
