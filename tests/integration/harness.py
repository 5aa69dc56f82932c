"""A temporary $BASTION_HOME, the `bastion` CLI run in it, and `bastion gateway run` as a real
process (stopped by PID; its descendants are tracked so tests can check for orphans).

The gateway requires its token on loopback too: `GatewayProcess.token` reads it the way a client
does (BASTION_GATEWAY_TOKEN in the home's environment, else the home's `gateway-token` file the
gateway made), and `http_client(url)` sends it for any URL a `GatewayProcess` printed."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx2
import yaml
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

from tests.fixtures.procfs import alive as alive
from tests.fixtures.procfs import descendants as descendants

BASTION = [sys.executable, "-m", "bastion"]
READY = re.compile(r"gateway listening on (http://\S+)")
_TOKENS: dict[str, str] = {}
"""Base URL of a running `GatewayProcess` -> its gateway token (for `http_client`)."""


class Home:
    """A temporary $BASTION_HOME and a way to run `bastion` in it."""

    def __init__(self, path: Path, env: dict[str, str] | None = None) -> None:
        path.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.env = {**(env or os.environ), "BASTION_HOME": str(path)}
        self.env.pop("BASTION_STORE", None)
        self.env.pop("BASTION_GATEWAY_TOKEN", None)  # the default: the home's token file
        self.outputs: list[str] = []

    def run(self, *args: str, check: bool = True, timeout: float = 90.0) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([*BASTION, *args], env=self.env, capture_output=True, text=True, timeout=timeout)
        self.outputs += [result.stdout, result.stderr]
        if check and result.returncode != 0:
            raise AssertionError(f"bastion {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
        return result

    def json(self, *args: str) -> Any:
        return json.loads(self.run(*args).stdout)

    def write_catalog(self, entries: dict[str, Any]) -> None:
        (self.path / "catalog.yaml").write_text(yaml.safe_dump({"registry": entries}))

    def write_config(self, doc: dict[str, Any]) -> None:
        (self.path / "config.yaml").write_text(yaml.safe_dump(doc))

    def stdio_params(self, *extra: str) -> StdioServerParameters:
        return StdioServerParameters(
            command=BASTION[0], args=[*BASTION[1:], "gateway", "run", "--transport", "stdio", *extra], env=self.env
        )


class GatewayProcess:
    """`bastion gateway run --transport streamable-http --port 0` in `home`."""

    def __init__(self, home: Home, *extra: str, transport: str = "streamable-http") -> None:
        self.home = home
        self.log_path = home.path / f"gateway-{time.monotonic_ns()}.log"
        self._log = self.log_path.open("w")
        self.proc = subprocess.Popen(
            [*BASTION, "-v", "gateway", "run", "--transport", transport, "--port", "0", *extra],
            env=home.env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.url = self._wait_ready()
        self.token = home.env.get("BASTION_GATEWAY_TOKEN") or (home.path / "gateway-token").read_text().strip()
        _TOKENS[self.base_url] = self.token

    @property
    def auth(self) -> dict[str, str]:
        """The header a client sends."""
        return {"Authorization": f"Bearer {self.token}"}

    def _wait_ready(self, timeout: float = 60.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = READY.search(self.log_path.read_text())
            if match:
                return match.group(1)
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self.stop()
        raise AssertionError(f"gateway did not start:\n{self.log_path.read_text()[-4000:]}")

    @property
    def base_url(self) -> str:
        return self.url.rsplit("/", 1)[0]

    def health(self) -> dict[str, Any]:
        response = httpx2.get(f"{self.base_url}/health", headers=self.auth, timeout=10.0, trust_env=False)
        response.raise_for_status()
        return dict(response.json())

    def wait_health(self, predicate: Any, timeout: float = 20.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        health = self.health()
        while not predicate(health):
            if time.monotonic() > deadline:
                raise AssertionError(f"health never matched: {health}")
            time.sleep(0.1)
            health = self.health()
        return health

    def log(self) -> str:
        return self.log_path.read_text()

    def terminate(self, timeout: float = 15.0) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def stop(self) -> None:
        _TOKENS.pop(getattr(self, "url", "").rsplit("/", 1)[0], None)
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()

    def __enter__(self) -> GatewayProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.asynccontextmanager
async def http_client(url: str, *, mode: str = "auto", headers: dict[str, str] | None = None) -> AsyncIterator[Client]:
    """An MCP client of `url`; for a `GatewayProcess`'s URL it sends that gateway's token (unless
    `headers` bring an Authorization of their own)."""
    sent = dict(headers or {})
    token = _TOKENS.get(url.rsplit("/", 1)[0])
    if token is not None and not any(k.lower() == "authorization" for k in sent):
        sent["Authorization"] = f"Bearer {token}"
    async with httpx2.AsyncClient(headers=sent, timeout=60.0, trust_env=False) as http:
        async with Client(streamable_http_client(url, http_client=http), mode=mode) as client:
            yield client
