"""Fixtures for the cluster tests: several `bastion gateway run` replicas sharing one Redis.

Every test here is marked `integration` and `redis`. The shared Redis is the one at
BASTION_TEST_REDIS_URL (default redis://127.0.0.1:6379/0), used under a random key prefix that
is deleted afterwards; its lifecycle is never touched. Tests that stop Redis start their own
`redis-server` (`PrivateRedis`) on a free loopback port and stop it by PID.
"""

from __future__ import annotations

import base64
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

# The peers' fixtures (authorization server, protected MCP server, headless browser).
from tests.integration.conftest import (  # noqa: F401  (pytest finds fixtures by name)
    headless_browser,
    node_deps,
    oidc_factory,
    protected_mcp_factory,
)

from .cluster import PrivateRedis, StoreEnv

REDIS_URL = os.environ.get("BASTION_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.integration)
            item.add_marker(pytest.mark.redis)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def redis_url() -> str:
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.exceptions.ConnectionError:
        pytest.skip(f"no Redis at {REDIS_URL} (set BASTION_TEST_REDIS_URL)")
    finally:
        client.close()
    return REDIS_URL


def _store_env(url: str) -> Iterator[StoreEnv]:
    env = StoreEnv(
        url=url,
        key=base64.urlsafe_b64encode(secrets.token_bytes(32)).decode(),
        prefix=f"bastion-test:cluster:{secrets.token_hex(6)}:",
    )
    yield env
    client = redis.Redis.from_url(url, socket_connect_timeout=2)
    try:
        keys = list(client.scan_iter(match=f"{env.prefix}*", count=1000))
        if keys:
            client.delete(*keys)
    except redis.exceptions.ConnectionError:
        pass
    finally:
        client.close()


@pytest.fixture
def shared_store(redis_url: str) -> Iterator[StoreEnv]:
    """The shared Redis under a fresh prefix and a fresh BASTION_STORE_KEY."""
    yield from _store_env(redis_url)


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    """A redis-server of this test's own, with AOF (it keeps its data across a restart)."""
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed (CI installs it; see .ci/run)")
    server = PrivateRedis(tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def private_store(private_redis: PrivateRedis) -> Iterator[StoreEnv]:
    yield from _store_env(private_redis.url)
