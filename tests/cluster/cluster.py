"""Helpers for the cluster tests: replicas of `bastion gateway run`, each with its own
$BASTION_HOME (same catalog.yaml, registry.yaml and config.yaml, as on separate machines), all
pointed at one Redis through BASTION_STORE / BASTION_STORE_KEY / BASTION_STORE_PREFIX."""

from __future__ import annotations

import json
import secrets
import shutil
import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import redis

from bastion.store.models import ProviderRecord
from bastion.store.redis_store import RedisStore
from tests.fixtures import peers
from tests.integration.harness import GatewayProcess, Home

CONFIG_FILES = ("catalog.yaml", "registry.yaml", "config.yaml")


@dataclass(frozen=True)
class StoreEnv:
    """One shared store: the Redis URL, the encryption key and the key prefix."""

    url: str
    key: str
    prefix: str

    def environ(self) -> dict[str, str]:
        return {"BASTION_STORE": self.url, "BASTION_STORE_KEY": self.key, "BASTION_STORE_PREFIX": self.prefix}

    def open(self) -> RedisStore:
        """A store object of the test's own (to look at what the replicas wrote)."""
        return RedisStore.from_url(self.url, key=self.key, prefix=self.prefix, connect_timeout=1.0, command_timeout=2.0)

    async def record(self, server: str) -> ProviderRecord | None:
        store = self.open()
        try:
            return await store.get(server)
        finally:
            await store.aclose()

    def lease_owner(self, server: str) -> bytes | None:
        client = redis.Redis.from_url(self.url, socket_connect_timeout=1)
        try:
            value = client.get(f"{self.prefix}lease:{server}")
            return value if isinstance(value, bytes) else None
        finally:
            client.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class PrivateRedis:
    """A `redis-server` on a free loopback port, with AOF (fsync always) in `directory`, so a
    restart keeps the data. Started and stopped by PID; never the shared Redis."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> None:
        command = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        command += ["--appendonly", "yes", "--appendfsync", "always", "--dir", str(self.directory)]
        with open(self.directory / "redis.log", "ab") as log:
            self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.5)
        deadline = time.monotonic() + timeout
        try:
            while True:
                try:
                    client.ping()
                    return
                except redis.exceptions.ConnectionError:
                    if self.process.poll() is not None or time.monotonic() > deadline:
                        raise AssertionError(f"redis-server did not start: {self.log()[-2000:]}") from None
                    time.sleep(0.05)
        finally:
            client.close()

    def stop(self, timeout: float = 10.0) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout)

    def log(self) -> str:
        path = self.directory / "redis.log"
        return path.read_text(errors="replace") if path.exists() else ""


def protected_entry(url: str) -> dict[str, Any]:
    return {
        "type": "remote",
        "remote": {"url": url, "transport_type": "streamable-http"},
        "oauth": {"providers": [{"provider": "protected"}]},
    }


class Cluster:
    """`size` homes with the same configuration files and one store; replicas started together."""

    def __init__(self, root: Path, store: StoreEnv, size: int = 3) -> None:
        self.store = store
        self.homes = [Home(root / f"replica-{i}") for i in range(size)]
        # One gateway token for every replica, as a deployment behind a load balancer sets it.
        token = secrets.token_urlsafe(32)
        for home in self.homes:
            home.env.update(store.environ())
            home.env["BASTION_GATEWAY_TOKEN"] = token
        self.replicas: list[GatewayProcess] = []

    @property
    def first(self) -> Home:
        return self.homes[0]

    def configure(self, catalog: dict[str, Any], config: dict[str, Any], enable: list[str]) -> None:
        """Write the catalog and config in the first home, enable there (which creates the shared
        provider records), then copy the three files to the other homes, as a deployment would."""
        self.first.write_catalog(catalog)
        self.first.write_config(config)
        self.first.run("server", "enable", *enable)
        for home in self.homes[1:]:
            for name in CONFIG_FILES:
                shutil.copyfile(self.first.path / name, home.path / name)

    def start(self) -> list[GatewayProcess]:
        with ThreadPoolExecutor(len(self.homes)) as pool:
            self.replicas = list(pool.map(GatewayProcess, self.homes))
        return self.replicas

    def stop(self) -> None:
        for replica in self.replicas:
            replica.stop()

    def authorize(self, home: Home, server: str = "protected") -> None:
        home.run("oauth", "authorize", server, "--callback-port", "0", "--timeout", "60")

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def refreshes(oidc: peers.OidcHandle) -> int:
    """Refresh-token grants the authorization server handled (successful or not)."""
    return sum(
        1
        for e in oidc.events()
        if e["event"] in ("grant.success", "grant.error") and e.get("grant_type") == "refresh_token"
    )


def upstream_state(replica: GatewayProcess, server: str = "protected") -> str | None:
    for upstream in replica.health()["upstreams"]:
        if upstream["name"] == server:
            return str(upstream["state"])
    return None


def text_of(result: Any) -> str:
    return "".join(getattr(block, "text", "") for block in result.content)


class RoundRobin(httpx2.AsyncBaseTransport):
    """A client-side load balancer without affinity: each HTTP request goes to the next replica."""

    def __init__(self, base_urls: list[str]) -> None:
        self._targets = [httpx2.URL(url) for url in base_urls]
        self._next = 0
        self._inner = httpx2.AsyncHTTPTransport()
        self.sent: list[int] = []

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        index = self._next % len(self._targets)
        self._next += 1
        self.sent.append(index)
        target = self._targets[index]
        request.url = request.url.copy_with(host=target.host, port=target.port)
        request.headers["Host"] = f"{target.host}:{target.port}"
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


def dump(value: Any) -> str:
    return json.dumps(value, indent=1, default=str)[:4000]
