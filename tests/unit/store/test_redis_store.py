"""`RedisStore`: the contract on a real Redis, plus what only a shared, encrypted, networked
store can get wrong — plaintext at rest, the wrong key, leases of dead holders, events between
gateways, Redis going away and coming back, writers in several processes.

Needs `redis-server` (a shared one at BASTION_TEST_REDIS_URL, default redis://127.0.0.1:6379/0;
each test uses its own key prefix and removes its keys). The restart test runs its own server.
"""

from __future__ import annotations

import base64
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import pytest
import redis
import redis.asyncio

from bastion.config.settings import Settings, StoreSettings
from bastion.errors import ConfigError, StoreError, StoreKeyError, StoreLockTimeout, StoreUnavailable
from bastion.store.base import Store
from bastion.store.factory import open_store
from bastion.store.models import StoreEvent
from bastion.store.redis_store import GENERATE_KEY, RedisStore, parse_store_key

from .contract import (
    ACCESS,
    CLIENT_SECRET,
    REFRESH,
    SECRET_VALUE,
    SECRETS,
    StoreContract,
    changed,
    child_code,
    make_record,
    run_child,
    watching,
)

pytestmark = [pytest.mark.anyio, pytest.mark.redis]

REDIS_URL = os.environ.get("BASTION_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
RAW_KEY = secrets.token_bytes(32)
KEY = base64.urlsafe_b64encode(RAW_KEY).decode()
OTHER_KEY = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()


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
    """A fresh namespace; every key under it is removed afterwards."""
    prefix = f"bastion-test:{secrets.token_hex(8)}:"
    yield prefix
    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@pytest.fixture
async def raw(redis_url: str) -> AsyncIterator[redis.asyncio.Redis]:
    client = redis.asyncio.Redis.from_url(redis_url)
    yield client
    await client.aclose()


def redis_setup(url: str, prefix: str, *, key: str = KEY, lease_ttl: float = 10.0) -> str:
    return f"""
from bastion.store.redis_store import RedisStore
def make_store():
    return RedisStore.from_url({url!r}, key={key!r}, prefix={prefix!r}, lease_ttl={lease_ttl!r})
"""


class TestRedisStore(StoreContract):
    @pytest.fixture
    async def store(self, redis_url: str, prefix: str) -> AsyncIterator[RedisStore]:
        store = RedisStore.from_url(redis_url, key=KEY, prefix=prefix)
        yield store
        await store.aclose()

    @pytest.fixture
    def child_setup(self, redis_url: str, prefix: str) -> str:
        return redis_setup(redis_url, prefix)


@pytest.fixture
async def store(redis_url: str, prefix: str) -> AsyncIterator[RedisStore]:
    store = RedisStore.from_url(redis_url, key=KEY, prefix=prefix)
    yield store
    await store.aclose()


@pytest.fixture
async def other(redis_url: str, prefix: str) -> AsyncIterator[RedisStore]:
    """A second gateway on the same data."""
    store = RedisStore.from_url(redis_url, key=KEY, prefix=prefix)
    yield store
    await store.aclose()


async def raw_dump(raw: redis.asyncio.Redis, prefix: str) -> dict[bytes, object]:
    """Every key under `prefix` with its value, as Redis holds them."""
    dump: dict[bytes, object] = {}
    async for key in raw.scan_iter(match=f"{prefix}*", count=1000):
        kind = await raw.type(key)
        if kind == b"hash":
            dump[key] = await raw.hgetall(key)
        elif kind == b"string":
            dump[key] = await raw.get(key)
        else:
            raise AssertionError(f"unexpected {kind!r} at {key!r}")
    return dump


def all_bytes(dump: dict[bytes, object]) -> bytes:
    parts: list[bytes] = []
    for key, value in dump.items():
        parts.append(key)
        if isinstance(value, dict):
            for field, item in value.items():
                parts += [field, item]
        elif isinstance(value, bytes):
            parts.append(value)
    return b"\n".join(parts)


# -- encrypted at rest


async def test_redis_holds_no_token_client_secret_or_secret_value_in_clear(
    store: RedisStore, raw: redis.asyncio.Redis, prefix: str
) -> None:
    await store.put(make_record())
    await store.put(make_record("github"))
    await store.set_secret("github.token", SECRET_VALUE)
    async with store.lock("notion"):
        dump = await raw_dump(raw, prefix)
    blob = all_bytes(dump)
    assert f"{prefix}records".encode() in dump and f"{prefix}lease:notion".encode() in dump
    for secret in SECRETS:
        assert secret.encode() not in blob
    for clear in (b"access_token", b"refresh_token", b"client_secret", b"as.example.com", b"Bearer"):
        assert clear not in blob


async def test_published_events_carry_names_and_revisions_only(store: RedisStore, raw: redis.asyncio.Redis) -> None:
    async with raw.pubsub() as pubsub:
        await pubsub.subscribe(f"{store.prefix}events")
        written = await store.put(make_record())
        await store.set_secret("github.token", SECRET_VALUE)
        await store.delete("notion")
        messages: list[bytes] = []
        with anyio.fail_after(5):
            while len(messages) < 3:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1)
                if message is not None:
                    messages.append(message["data"])
    assert StoreEvent.model_validate_json(messages[0]) == StoreEvent(server="notion", revision=written.revision)
    assert b'"secret":"github.token"' in messages[1]
    assert StoreEvent.model_validate_json(messages[2]) == StoreEvent(server="notion", kind="deleted")
    for secret in SECRETS:
        assert all(secret.encode() not in message for message in messages)


async def test_a_value_moved_to_another_name_does_not_decrypt(store: RedisStore, raw: redis.asyncio.Redis) -> None:
    """The associated data binds each value to its name: a copy under another name is refused."""
    await store.put(make_record())
    await store.put(make_record("github"))
    await store.set_secret("a", SECRET_VALUE)
    records = f"{store.prefix}records"
    await raw.hset(records, "github", await raw.hget(records, "notion") or b"")
    await raw.hset(f"{store.prefix}secrets", "b", await raw.hget(f"{store.prefix}secrets", "a") or b"")
    for read in (store.get("github"), store.list(), store.get_secret("b")):
        with pytest.raises(StoreKeyError) as info:
            await read
        assert "cannot decrypt" in str(info.value) and store.where in str(info.value)
        assert all(secret not in str(info.value) for secret in SECRETS)
    assert (await store.get("notion")) is not None


async def test_a_corrupt_record_is_an_error_that_does_not_quote_it(store: RedisStore, raw: redis.asyncio.Redis) -> None:
    torn = b'{"server": "notion", "resource_url": "https://x", "tokens": {"access_token": "' + ACCESS.encode()
    await raw.hset(f"{store.prefix}records", "notion", store._sealer.seal(b"record\0notion", torn))
    with pytest.raises(StoreError) as info:
        await store.get("notion")
    assert "corrupt" in str(info.value) and "bastion oauth authorize notion" in str(info.value)
    assert ACCESS not in str(info.value)


# -- the key


async def test_the_wrong_key_is_refused_and_changes_nothing(
    store: RedisStore, raw: redis.asyncio.Redis, redis_url: str, prefix: str
) -> None:
    written = await store.put(make_record())
    await store.set_secret("token", SECRET_VALUE)
    before = await raw_dump(raw, prefix)
    wrong = RedisStore.from_url(redis_url, key=OTHER_KEY, prefix=prefix)
    try:
        attempts = [
            wrong.get("notion"),
            wrong.list(),
            wrong.put(make_record(counter=1)),
            wrong.put(make_record("new")),
            wrong.compare_and_set(make_record(counter=1), written.revision),
            wrong.delete("notion"),
            wrong.get_secret("token"),
            wrong.set_secret("token", "overwritten"),
            wrong.delete_secret("token"),
        ]
        for attempt in attempts:
            with pytest.raises(StoreKeyError) as info:
                await attempt
            message = str(info.value)
            assert "BASTION_STORE_KEY is not the key this store was written with" in message
            assert OTHER_KEY not in message and KEY not in message
    finally:
        await wrong.aclose()
    assert await raw_dump(raw, prefix) == before
    assert await store.get("notion") == written
    assert await store.get_secret("token") == SECRET_VALUE


@pytest.mark.parametrize("key", [None, "", "  "])
def test_a_missing_key_says_how_to_generate_one(redis_url: str, key: str | None) -> None:
    with pytest.raises(StoreKeyError) as info:
        RedisStore.from_url(redis_url, key=key)
    assert "BASTION_STORE_KEY is not set" in str(info.value)
    assert GENERATE_KEY in str(info.value)


def test_the_suggested_command_generates_a_valid_key() -> None:
    command = GENERATE_KEY.removeprefix("python -c ").strip('"')
    result = subprocess.run([sys.executable, "-c", command], capture_output=True, check=True, timeout=30)
    assert len(parse_store_key(result.stdout.decode())) == 32


@pytest.mark.parametrize(
    "spelling",
    [
        RAW_KEY.hex(),
        RAW_KEY.hex().upper(),
        base64.b64encode(RAW_KEY).decode(),
        base64.b64encode(RAW_KEY).decode().rstrip("="),
        base64.urlsafe_b64encode(RAW_KEY).decode(),
        base64.urlsafe_b64encode(RAW_KEY).decode().rstrip("=") + "\n",
    ],
)
def test_key_spellings_hex_base64_and_base64url_are_one_key(spelling: str) -> None:
    assert parse_store_key(spelling) == RAW_KEY


@pytest.mark.parametrize(
    "bad",
    [
        "correct horse battery staple",
        base64.b64encode(secrets.token_bytes(31)).decode(),
        base64.b64encode(secrets.token_bytes(33)).decode(),
        secrets.token_hex(31),
        secrets.token_hex(32)[:-1] + "g",
        "YWJj$ZGVm",
    ],
)
def test_a_malformed_key_is_refused_without_quoting_it(bad: str) -> None:
    with pytest.raises(StoreKeyError) as info:
        parse_store_key(bad)
    assert "32 random bytes" in str(info.value) and bad not in str(info.value)


async def test_a_store_written_with_one_spelling_reads_with_another(redis_url: str, prefix: str) -> None:
    hex_store = RedisStore.from_url(redis_url, key=RAW_KEY.hex(), prefix=prefix)
    b64_store = RedisStore.from_url(redis_url, key=base64.b64encode(RAW_KEY).decode(), prefix=prefix)
    try:
        written = await hex_store.put(make_record())
        assert await b64_store.get("notion") == written
    finally:
        await hex_store.aclose()
        await b64_store.aclose()


async def test_open_store_builds_a_redis_store_from_settings(
    redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BASTION_STORE_KEY", KEY)
    store = open_store(Settings(store=StoreSettings(backend="redis", url=redis_url)), tmp_path)
    try:
        assert isinstance(store, RedisStore) and isinstance(store, Store)
        assert store.prefix == "bastion:" and store.lease_ttl == 10.0
    finally:
        await store.aclose()


@pytest.mark.parametrize("url", ["http://:hunter2@127.0.0.1:6379/0", "redis://:hunter2@127.0.0.1:notaport/0"])
def test_an_invalid_url_is_a_config_error_that_does_not_quote_it(url: str) -> None:
    with pytest.raises(ConfigError, match="URL is invalid") as info:
        RedisStore.from_url(url, key=KEY)
    assert "hunter2" not in str(info.value)


async def test_messages_and_repr_never_show_the_redis_password() -> None:
    port = free_port()
    store = RedisStore.from_url(f"redis://:hunter2@127.0.0.1:{port}/0", key=KEY)
    try:
        with pytest.raises(StoreUnavailable) as info:
            await store.get("notion")
        assert f"Redis at 127.0.0.1:{port} is unreachable; gateways keep serving the tokens they hold" in str(
            info.value
        )
        assert "hunter2" not in str(info.value) and "hunter2" not in repr(store)
    finally:
        await store.aclose()


# -- leases and fencing


async def test_a_dead_holder_blocks_others_at_most_the_lease_ttl(redis_url: str, prefix: str) -> None:
    ttl = 1.0
    store = RedisStore.from_url(redis_url, key=KEY, prefix=prefix, lease_ttl=ttl)
    body = """
    async with store.lock("notion") as lease:
        print("locked", lease.fencing_token, flush=True)
        await anyio.sleep(60)
    """
    code = child_code(redis_setup(redis_url, prefix, lease_ttl=ttl), body)
    try:
        async with await anyio.open_process([sys.executable, "-c", code]) as child:
            assert child.stdout is not None
            output = b""
            with anyio.fail_after(30):
                while not output.endswith(b"\n"):
                    output += await child.stdout.receive()
            line = output.decode().split()
            assert line[0] == "locked"
            await anyio.sleep(ttl)  # the child renews meanwhile: it is still the holder
            with pytest.raises(StoreLockTimeout):
                async with store.lock("notion", timeout=0.1):
                    pytest.fail("got a lease its live holder renews")
            child.send_signal(signal.SIGKILL)
            await child.wait()
        killed = anyio.current_time()
        async with store.lock("notion", timeout=5) as lease:
            waited = anyio.current_time() - killed
        assert waited < ttl + 0.5
        assert lease.fencing_token > int(line[1])
    finally:
        await store.aclose()


async def test_a_holder_whose_renewal_stops_loses_the_lease_after_the_ttl(
    redis_url: str, prefix: str, other: RedisStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    stalled = RedisStore.from_url(redis_url, key=KEY, prefix=prefix, lease_ttl=0.5)

    async def no_renewal(server: str, owner: str) -> None:
        await anyio.sleep_forever()

    monkeypatch.setattr(stalled, "_renew", no_renewal)
    try:
        async with stalled.lock("notion"):
            started = anyio.current_time()
            async with other.lock("notion", timeout=5):
                waited = anyio.current_time() - started
        assert 0.3 < waited < 1.5
    finally:
        await stalled.aclose()


async def test_a_live_holder_keeps_its_lease_beyond_the_ttl(redis_url: str, prefix: str, other: RedisStore) -> None:
    holder = RedisStore.from_url(redis_url, key=KEY, prefix=prefix, lease_ttl=0.3)
    try:
        async with holder.lock("notion"):
            with pytest.raises(StoreLockTimeout) as info:
                async with other.lock("notion", timeout=1.2):
                    pytest.fail("got a lease its live holder renews")
            assert "notion" in str(info.value) and "10s" in str(info.value)
        with anyio.fail_after(1):
            async with other.lock("notion", timeout=1):
                pass
    finally:
        await holder.aclose()


async def test_writes_under_an_expired_lease_are_refused(
    redis_url: str, prefix: str, other: RedisStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stale holder read revision N; the next holder wrote N+1. The stale holder's CAS on N
    fails by revision, and even its unconditional put and delete are refused by the lease check."""
    stalled = RedisStore.from_url(redis_url, key=KEY, prefix=prefix, lease_ttl=0.3)

    async def no_renewal(server: str, owner: str) -> None:
        await anyio.sleep_forever()

    monkeypatch.setattr(stalled, "_renew", no_renewal)
    try:
        await stalled.put(make_record(counter=0))
        async with stalled.lock("notion") as stale_lease:
            read = await stalled.get("notion")
            assert read is not None
            async with other.lock("notion", timeout=5) as lease:
                assert lease.fencing_token > stale_lease.fencing_token
                fresh = await other.compare_and_set(make_record(counter=1), read.revision)
                assert fresh is not None
            assert await stalled.compare_and_set(make_record(counter=2), read.revision) is None
            assert await stalled.compare_and_set(make_record(counter=2), fresh.revision) is None  # lease gone
            with pytest.raises(StoreLockTimeout, match="expired before this write"):
                await stalled.put(make_record(counter=3))
            with pytest.raises(StoreLockTimeout):
                await stalled.delete("notion")
        assert await other.get("notion") == fresh
        await stalled.put(make_record(counter=4))  # outside the lease: an ordinary write
    finally:
        await stalled.aclose()


async def test_fencing_tokens_increase_across_gateways(store: RedisStore, other: RedisStore) -> None:
    tokens = []
    for gateway in (store, other, store, other):
        async with gateway.lock("notion") as lease:
            tokens.append(lease.fencing_token)
    assert tokens == sorted(set(tokens))


async def test_leases_of_different_stores_under_different_prefixes_are_independent(
    redis_url: str, store: RedisStore
) -> None:
    elsewhere = RedisStore.from_url(redis_url, key=KEY, prefix=store.prefix + "elsewhere:")
    try:
        async with store.lock("notion"):
            with anyio.fail_after(2):
                async with elsewhere.lock("notion", timeout=1):
                    pass
    finally:
        await elsewhere.aclose()


# -- events between gateways


async def test_another_gateway_sees_puts_and_deletes_within_a_second(store: RedisStore, other: RedisStore) -> None:
    async with watching(other) as watcher:
        for n in range(3):
            written = await store.put(make_record(counter=n))
            await watcher.wait_for(changed("notion", written.revision), timeout=1.0)
        assert await store.delete("notion")
        await watcher.wait_for(lambda e: e.server == "notion" and e.kind == "deleted", timeout=1.0)


async def test_watch_reports_records_not_secrets(store: RedisStore, other: RedisStore) -> None:
    async with watching(other) as watcher:
        await store.set_secret("token", SECRET_VALUE)
        await store.delete_secret("token")
        written = await store.put(make_record("last"))
        event = await watcher.wait_for(lambda e: e.server != "watch-probe")
        assert event == StoreEvent(server="last", revision=written.revision)


# -- Redis goes away and comes back


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisServer:
    """A private `redis-server` on a free loopback port, started and stopped by PID."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    async def start(self) -> None:
        command = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        command += ["--appendonly", "no", "--dir", str(self.directory)]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.asyncio.Redis.from_url(self.url, socket_connect_timeout=1)
        try:
            with anyio.fail_after(10):
                while True:
                    try:
                        await client.ping()
                        return
                    except redis.exceptions.ConnectionError:
                        await anyio.sleep(0.05)
        finally:
            await client.aclose()

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None


@pytest.fixture
async def own_redis(tmp_path: Path) -> AsyncIterator[RedisServer]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    server = RedisServer(tmp_path)
    await server.start()
    try:
        yield server
    finally:
        server.stop()


async def test_redis_down_is_store_unavailable_and_the_store_recovers_by_itself(own_redis: RedisServer) -> None:
    store = RedisStore.from_url(own_redis.url, key=KEY, connect_timeout=0.5, command_timeout=1.0)
    store.WATCH_BACKOFF = (0.05, 0.5)
    try:
        async with watching(store) as watcher:
            await store.put(make_record())
            assert not store.degraded

            own_redis.stop()
            calls = [store.get("notion"), store.list(), store.put(make_record()), store.get_secret("x")]
            for call in calls:
                with pytest.raises(StoreUnavailable) as info:
                    await call
                assert f"Redis at 127.0.0.1:{own_redis.port} is unreachable" in str(info.value)
            with pytest.raises(StoreUnavailable):
                async with store.lock("notion", timeout=5):
                    pytest.fail("locked without Redis")
            assert store.degraded

            await anyio.sleep(0.5)  # the watcher notices and retries
            await own_redis.start()
            await watcher.wait_for(lambda e: e.kind == "resync" and e.server is None, timeout=5)
            assert await store.get("notion") is None  # this Redis keeps nothing across a restart
            assert not store.degraded
            check = redis.asyncio.Redis.from_url(own_redis.url)
            try:
                assert await check.exists(f"{store.prefix}keycheck")  # the key is proven again
            finally:
                await check.aclose()
            written = await store.put(make_record())
            await watcher.wait_for(changed("notion", written.revision), timeout=1.0)
            async with store.lock("notion", timeout=1):
                pass
    finally:
        await store.aclose()


async def test_leaving_a_lease_while_redis_is_down_does_not_raise_and_it_is_free_after(own_redis: RedisServer) -> None:
    """Releasing while Redis is down does not raise over the body's result; the lease is gone
    after the restart (no persistence) and can be taken again."""
    store = RedisStore.from_url(own_redis.url, key=KEY, lease_ttl=0.6, connect_timeout=0.5, command_timeout=1.0)
    try:
        async with store.lock("notion"):
            own_redis.stop()
            await anyio.sleep(0.3)  # a renewal fails meanwhile, and is logged
        await own_redis.start()
        with anyio.fail_after(3):
            async with store.lock("notion", timeout=2):
                pass
    finally:
        await store.aclose()


# -- writers in several processes


async def test_writer_processes_using_lock_and_compare_and_set_lose_no_update(
    store: RedisStore, redis_url: str, prefix: str
) -> None:
    """4 processes x 25 increments of one counter through lock + get + compare_and_set."""
    await store.put(make_record(counter=0))
    body = """
    for _ in range(25):
        async with store.lock("notion", timeout=60):
            current = await store.get("notion")
            record = current.model_copy(update={"last_error": str(int(current.last_error) + 1)})
            assert await store.compare_and_set(record, current.revision) is not None
    """
    async with anyio.create_task_group() as tg:
        for _ in range(4):
            tg.start_soon(run_child, redis_setup(redis_url, prefix), body)
    final = await store.get("notion")
    assert final is not None and final.last_error == "100"


async def test_compare_and_set_alone_is_atomic_across_processes(store: RedisStore, redis_url: str, prefix: str) -> None:
    """3 processes x 30 optimistic increments (retry on conflict, no lock): none lost."""
    await store.put(make_record(counter=0))
    body = """
    done = 0
    while done < 30:
        current = await store.get("notion")
        record = current.model_copy(update={"last_error": str(int(current.last_error) + 1)})
        if await store.compare_and_set(record, current.revision) is not None:
            done += 1
    """
    async with anyio.create_task_group() as tg:
        for _ in range(3):
            tg.start_soon(run_child, redis_setup(redis_url, prefix), body)
    final = await store.get("notion")
    assert final is not None and final.last_error == "90"


async def test_concurrent_compare_and_sets_from_two_gateways_have_one_winner(
    store: RedisStore, other: RedisStore
) -> None:
    base = await store.put(make_record())
    results = []

    async def attempt(gateway: RedisStore, n: int) -> None:
        results.append(await gateway.compare_and_set(make_record(counter=n), base.revision))

    async with anyio.create_task_group() as tg:
        for n in range(10):
            tg.start_soon(attempt, (store, other)[n % 2], n)
    winners = [r for r in results if r is not None]
    assert len(winners) == 1
    assert await other.get("notion") == winners[0]
    assert winners[0].tokens is not None and winners[0].tokens.refresh_token == REFRESH
    assert winners[0].client is not None and winners[0].client.client_secret == CLIENT_SECRET


async def test_the_keycheck_is_shared_so_a_second_gateway_with_the_same_key_starts_fine(
    store: RedisStore, other: RedisStore
) -> None:
    await store.set_secret("x", "1")
    assert await other.get_secret("x") == "1"
