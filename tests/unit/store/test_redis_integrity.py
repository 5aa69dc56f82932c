"""`RedisStore` integrity: the associated data binds prefix, name and revision, and a read refuses
a record rolled back to an older revision. Real Redis (BASTION_TEST_REDIS_URL, default
redis://127.0.0.1:6379/0), one key prefix per test, removed afterwards."""

from __future__ import annotations

import base64
import os
import secrets
from collections.abc import AsyncIterator, Iterator

import pytest
import redis
import redis.asyncio

from bastion.errors import StoreError, StoreKeyError
from bastion.store.redis_store import RedisStore

from .contract import SECRET_VALUE, SECRETS, make_record

pytestmark = [pytest.mark.anyio, pytest.mark.redis]

REDIS_URL = os.environ.get("BASTION_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
KEY = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()


def _new_prefix(redis_url: str) -> Iterator[str]:
    prefix = f"bastion-test:{secrets.token_hex(8)}:"
    yield prefix
    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


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


@pytest.fixture
def prefix(redis_url: str) -> Iterator[str]:
    yield from _new_prefix(redis_url)


@pytest.fixture
def other_prefix(redis_url: str) -> Iterator[str]:
    yield from _new_prefix(redis_url)


@pytest.fixture
async def raw(redis_url: str) -> AsyncIterator[redis.asyncio.Redis]:
    client = redis.asyncio.Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
async def store(redis_url: str, prefix: str) -> AsyncIterator[RedisStore]:
    store = RedisStore.from_url(redis_url, key=KEY, prefix=prefix)
    yield store
    await store.aclose()


def gateway(redis_url: str, prefix: str) -> RedisStore:
    """Another gateway process (nothing in memory) on the same data."""
    return RedisStore.from_url(redis_url, key=KEY, prefix=prefix)


async def test_a_record_copied_into_another_stores_prefix_does_not_decrypt(
    store: RedisStore, raw: redis.asyncio.Redis, redis_url: str, other_prefix: str
) -> None:
    """Two stores under one key (one Redis, two prefixes): a record moved across is refused."""
    await store.put(make_record())
    other = gateway(redis_url, other_prefix)
    try:
        await other.put(make_record())
        for kind in ("records", "revisions"):
            await raw.hset(f"{other_prefix}{kind}", "notion", await raw.hget(f"{store.prefix}{kind}", "notion") or b"")
        with pytest.raises(StoreKeyError, match="cannot decrypt"):
            await other.get("notion")
    finally:
        await other.aclose()


async def test_a_secret_copied_into_another_stores_prefix_does_not_decrypt(
    store: RedisStore, raw: redis.asyncio.Redis, redis_url: str, other_prefix: str
) -> None:
    await store.set_secret("github.token", SECRET_VALUE)
    other = gateway(redis_url, other_prefix)
    try:
        await other.set_secret("placeholder", "x")
        sealed = await raw.hget(f"{store.prefix}secrets", "github.token") or b""
        await raw.hset(f"{other_prefix}secrets", "github.token", sealed)
        with pytest.raises(StoreKeyError) as info:
            await other.get_secret("github.token")
        assert all(secret not in str(info.value) for secret in SECRETS)
    finally:
        await other.aclose()


async def test_an_old_record_put_back_under_the_current_revision_does_not_decrypt(
    store: RedisStore, raw: redis.asyncio.Redis, redis_url: str, prefix: str
) -> None:
    """Restoring an old copy of a record (an old refresh token) without its revision: refused even
    by a gateway that never read it before."""
    await store.put(make_record(counter=1))
    old = await raw.hget(f"{prefix}records", "notion") or b""
    await store.put(make_record(counter=2))
    await raw.hset(f"{prefix}records", "notion", old)
    fresh = gateway(redis_url, prefix)
    try:
        with pytest.raises(StoreKeyError, match="cannot decrypt"):
            await fresh.get("notion")
    finally:
        await fresh.aclose()


async def test_a_record_rolled_back_with_its_revision_is_refused(
    store: RedisStore, raw: redis.asyncio.Redis, prefix: str
) -> None:
    first = await store.put(make_record(counter=1))
    old = await raw.hget(f"{prefix}records", "notion") or b""
    await store.put(make_record(counter=2))
    assert (await store.get("notion")) is not None
    await raw.hset(f"{prefix}records", "notion", old)
    await raw.hset(f"{prefix}revisions", "notion", first.revision)
    for read in (lambda: store.get("notion"), store.list):
        with pytest.raises(StoreError, match="rolled back") as info:
            await read()
        assert "bastion oauth authorize notion" in str(info.value)
        assert all(secret not in str(info.value) for secret in SECRETS)


async def test_records_and_secrets_sealed_the_old_way_are_read_then_rewritten(
    store: RedisStore, raw: redis.asyncio.Redis, prefix: str, redis_url: str
) -> None:
    """Before this change the associated data was `record\\0<server>` / `secret\\0<name>` (format
    0x01). Such values still read; the next write seals them the new way (0x02), after which the
    old copy put back is a rollback."""
    legacy = make_record(counter=7)
    legacy_sealed = store._sealer.seal(b"record\0notion", legacy.model_dump_json(exclude={"revision"}).encode())
    await raw.hset(f"{prefix}records", "notion", legacy_sealed)
    await raw.hset(f"{prefix}revisions", "notion", 3)
    await raw.hset(f"{prefix}secrets", "github.token", store._sealer.seal(b"secret\0github.token", b"old-secret"))

    read = await store.get("notion")
    assert read is not None and read.revision == 3 and read.tokens == legacy.tokens
    assert await store.get_secret("github.token") == "old-secret"

    written = await store.compare_and_set(read, 3)
    assert written is not None and written.revision == 4
    await store.set_secret("github.token", "old-secret")
    assert (await raw.hget(f"{prefix}records", "notion") or b"")[:1] == b"\x02"
    assert (await raw.hget(f"{prefix}secrets", "github.token") or b"")[:1] == b"\x02"
    fresh = gateway(redis_url, prefix)
    try:
        assert (await fresh.get("notion")) == await store.get("notion")
        assert await fresh.get_secret("github.token") == "old-secret"
    finally:
        await fresh.aclose()

    await raw.hset(f"{prefix}records", "notion", legacy_sealed)
    await raw.hset(f"{prefix}revisions", "notion", 4)
    with pytest.raises(StoreError, match="rolled back"):
        await store.get("notion")
