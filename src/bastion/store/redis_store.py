"""`RedisStore`: one set of credentials shared by several gateways, in Redis.

Keys, under a prefix P (default `bastion:`; one Redis database can hold several stores):

    P keycheck          AES-GCM of a constant: proves BASTION_STORE_KEY before the first read or write
    P records           hash  server -> sealed ProviderRecord JSON (without its revision)
    P revisions         hash  server -> last revision written (kept after a delete: revisions never repeat)
    P secrets           hash  name -> sealed secret value
    P fences            hash  server -> last fencing token granted
    P lease:<server>    the holder of `lock(server)`: a random owner value, expiring after the lease TTL
    P events            pub/sub channel: {"server"|"secret": name, "kind": ..., "revision": ...}

Sealed values are `0x02 || 96-bit random nonce || AES-256-GCM(ciphertext || tag)`. The associated
data binds each value to where it belongs: the key prefix, the kind and name (`record`/`secret`,
the server or secret name) and, for a record, its revision. A value copied under another name or
into another store's prefix does not decrypt, and neither does a record put back with another
revision than the one it was sealed for. An older record with its own older revision restored
beside it (a rollback) decrypts, and is refused because this process already saw a higher
revision of that record (`_seen`, in memory). Names, revisions and fencing tokens are in clear.

Values sealed by an older Bastion (`0x01`, associated data `record\\0<server>` or `secret\\0<name>`)
are still read, and rewritten in the new format by their next write; once this process has read
or written a record in the new format, an `0x01` one for that server is refused as a rollback.

Every write is one Lua script (check, write, bump the revision, publish), so compare-and-set
is atomic across gateways. A write made by a task that holds `lock(server)` also checks that
its lease is still its own: a holder whose lease expired (it stalled, or lost Redis for longer
than the TTL) cannot overwrite what the next holder wrote.
"""

from __future__ import annotations

import base64
import binascii
import builtins
import logging
import os
import random
import secrets
import time
from collections.abc import AsyncGenerator, AsyncIterator, Iterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from contextvars import ContextVar
from types import MappingProxyType
from typing import Literal

import anyio
import redis.asyncio
import redis.exceptions
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pydantic import BaseModel, ConfigDict, ValidationError
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from bastion.errors import ConfigError, StoreError, StoreKeyError, StoreLockTimeout, StoreUnavailable
from bastion.store.base import Lease
from bastion.store.models import ProviderRecord, StoreEvent

logger = logging.getLogger(__name__)

DEFAULT_PREFIX = "bastion:"
DEFAULT_LEASE_TTL = 10.0

GENERATE_KEY = 'python -c "import secrets,base64;print(base64.urlsafe_b64encode(secrets.token_bytes(32)).decode())"'

_LEGACY = b"\x01"
"""Associated data: the value's kind and name only (no prefix, no revision). Read, never written."""
_FORMAT = b"\x02"
"""Associated data: `_associated_data` (prefix, kind, name, revision)."""
_WRITE_ATTEMPTS = 20
_NONCE_BYTES = 12
_KEYCHECK_NAME = b"keycheck"
_KEYCHECK_PLAINTEXT = b"bastion store key check"
_NO_LEASES: Mapping[str, str] = MappingProxyType({})


# -- the key (pure)


def parse_store_key(text: str | None) -> bytes:
    """BASTION_STORE_KEY -> the 32-byte AES-256 key. Accepts 64 hex digits, or base64 / base64url
    (padding optional). Messages never quote the value."""
    if text is None or not text.strip():
        raise StoreKeyError(
            "the redis store needs an encryption key: BASTION_STORE_KEY is not set",
            hint=f"generate one with `{GENERATE_KEY}`, and give every gateway the same value",
        )
    text = text.strip()
    raw: bytes | None
    if len(text) == 64 and all(c in "0123456789abcdefABCDEF" for c in text):
        raw = bytes.fromhex(text)
    else:
        standard = text.replace("-", "+").replace("_", "/")
        try:
            raw = base64.b64decode(standard + "=" * (-len(standard) % 4), validate=True)
        except (binascii.Error, ValueError):
            raw = None
    if raw is None or len(raw) != 32:
        got = "is not base64, base64url or hex" if raw is None else f"decodes to {len(raw)} bytes"
        raise StoreKeyError(
            f"BASTION_STORE_KEY must be 32 random bytes, base64, base64url or hex encoded; it {got}",
            hint=f"generate one with `{GENERATE_KEY}`",
        )
    return raw


class _Sealer:
    """AES-256-GCM with a random 96-bit nonce per value and where it belongs as associated data."""

    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)

    def __repr__(self) -> str:
        return "_Sealer(***)"

    def seal(self, name: bytes, plaintext: bytes, *, version: bytes = _LEGACY) -> bytes:
        nonce = os.urandom(_NONCE_BYTES)
        return version + nonce + self._aead.encrypt(nonce, plaintext, name)

    def open(self, name: bytes, sealed: bytes, *, version: bytes = _LEGACY) -> bytes | None:
        """The plaintext, or None if the key is wrong or the value was altered or moved."""
        if not sealed.startswith(version) or len(sealed) < 1 + _NONCE_BYTES + 16:
            return None
        nonce, ciphertext = sealed[1 : 1 + _NONCE_BYTES], sealed[1 + _NONCE_BYTES :]
        try:
            return self._aead.decrypt(nonce, ciphertext, name)
        except InvalidTag:
            return None


def _associated_data(prefix: str, kind: bytes, name: str, revision: int | None = None) -> bytes:
    """Where a value belongs, unambiguously: each part length-prefixed."""
    parts = [b"bastion-store-v2", prefix.encode("utf-8", "surrogatepass"), kind, _encode(name)]
    if revision is not None:
        parts.append(str(revision).encode())
    return b"".join(len(part).to_bytes(4, "big") + part for part in parts)


def _record_name(server: str) -> bytes:
    return b"record\0" + _encode(server)


def _secret_name(name: str) -> bytes:
    return b"secret\0" + _encode(name)


def _encode(name: str) -> bytes:
    if not name:
        raise StoreError("a server or secret name cannot be empty")
    return name.encode("utf-8", "surrogatepass")


def _decode(name: bytes) -> str:
    return name.decode("utf-8", "surrogatepass")


# -- Lua scripts: each runs atomically in Redis

_WRITE = """
local records, revisions, lease = KEYS[1], KEYS[2], KEYS[3]
local server, data, expected, owner, channel, sealed_for = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
if owner ~= '' and redis.call('GET', lease) ~= owner then return -1 end
local revision = tonumber(redis.call('HGET', revisions, server) or '0')
if expected ~= '' then
  local current = 0
  if redis.call('HEXISTS', records, server) == 1 then current = revision end
  if current ~= tonumber(expected) then return 0 end
end
revision = revision + 1
if revision ~= tonumber(sealed_for) then return -2 end
redis.call('HSET', records, server, data)
redis.call('HSET', revisions, server, revision)
redis.call('PUBLISH', channel, cjson.encode({server = server, kind = 'changed', revision = revision}))
return revision
"""
"""-> the new revision; 0: `expected` is not the current revision; -1: the caller's lease is gone;
-2: `data` was sealed for another revision than the one it would get (someone wrote meanwhile)."""

_DELETE = """
local records, lease = KEYS[1], KEYS[2]
local server, owner, channel = ARGV[1], ARGV[2], ARGV[3]
if owner ~= '' and redis.call('GET', lease) ~= owner then return -1 end
if redis.call('HDEL', records, server) == 0 then return 0 end
redis.call('PUBLISH', channel, cjson.encode({server = server, kind = 'deleted'}))
return 1
"""

_SET_SECRET = """
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('PUBLISH', ARGV[3], cjson.encode({secret = ARGV[1], kind = 'changed'}))
return 1
"""

_DELETE_SECRET = """
if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('PUBLISH', ARGV[2], cjson.encode({secret = ARGV[1], kind = 'deleted'}))
return 1
"""

_ACQUIRE = """
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 0 end
return redis.call('HINCRBY', KEYS[2], ARGV[3], 1)
"""
"""-> the fencing token of the new lease, or 0 if someone else holds it."""

_RENEW = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
return redis.call('PEXPIRE', KEYS[1], ARGV[2])
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
return redis.call('DEL', KEYS[1])
"""


class _WireEvent(BaseModel):
    """A message on the events channel (written by the Lua scripts above)."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    server: str | None = None
    secret: str | None = None
    kind: Literal["changed", "deleted"]
    revision: int | None = None


class RedisStore:
    """The `Store` protocol on Redis, encrypted with AES-256-GCM. Safe across processes and hosts.

    `degraded` is True while Redis is unreachable (the last operation failed); methods then
    raise `StoreUnavailable`, and `watch()` keeps retrying and reports a `resync` when back.
    """

    WATCH_STEP = 0.25
    """How often a watcher checks for `aclose()` while no message arrives."""
    WATCH_PING_EVERY = 5.0
    """An idle watcher pings Redis this often, so a dead connection is noticed."""
    WATCH_BACKOFF = (0.1, 5.0)
    """First and longest wait between watcher reconnection attempts (doubling, with jitter)."""

    def __init__(
        self,
        client: redis.asyncio.Redis,
        key: bytes,
        *,
        prefix: str = DEFAULT_PREFIX,
        lease_ttl: float = DEFAULT_LEASE_TTL,
    ) -> None:
        if len(key) != 32:
            raise StoreKeyError("the store key must be 32 bytes", hint=f"generate one with `{GENERATE_KEY}`")
        if lease_ttl <= 0:
            raise ConfigError("the lease TTL must be positive")
        self._redis = client
        self._sealer = _Sealer(key)
        self.prefix = prefix
        self.lease_ttl = lease_ttl
        self.where = _where(client)
        """`HOST:PORT` (or the socket path) of the Redis server: safe to show, never credentials."""
        self._keys = {name: f"{prefix}{name}" for name in ("keycheck", "records", "revisions", "secrets", "fences")}
        self._channel = f"{prefix}events"
        self._write_script = client.register_script(_WRITE)
        self._delete_script = client.register_script(_DELETE)
        self._set_secret_script = client.register_script(_SET_SECRET)
        self._delete_secret_script = client.register_script(_DELETE_SECRET)
        self._acquire_script = client.register_script(_ACQUIRE)
        self._renew_script = client.register_script(_RENEW)
        self._release_script = client.register_script(_RELEASE)
        self._key_checked = False
        self._degraded = False
        self._closed = False
        self._local_locks: dict[str, anyio.Semaphore] = {}
        self._seen: dict[str, int] = {}
        """The highest revision of each record this process read or wrote: an older one is a rollback."""
        self._upgraded: set[str] = set()
        """Records this process read or wrote in the current format: an `_LEGACY` one is a rollback."""
        # The leases held by the current task (and the tasks it starts): server -> owner value.
        self._held: ContextVar[Mapping[str, str]] = ContextVar(f"bastion-redis-leases-{id(self)}", default=_NO_LEASES)

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        key: str | None,
        prefix: str = DEFAULT_PREFIX,
        lease_ttl: float = DEFAULT_LEASE_TTL,
        connect_timeout: float = 2.0,
        command_timeout: float = 5.0,
    ) -> RedisStore:
        """A store on the Redis at `url` (`redis://`, `rediss://`, `unix://`), encrypted with `key`
        (BASTION_STORE_KEY, see `parse_store_key`). Connects lazily: nothing is sent yet."""
        raw_key = parse_store_key(key)
        try:
            client = redis.asyncio.Redis.from_url(
                url,
                socket_connect_timeout=connect_timeout,
                socket_timeout=command_timeout,
                socket_keepalive=True,
                # No silent retries: a retried write may already have been applied (a CAS would
                # then report a conflict it caused). Callers see `StoreUnavailable` and decide.
                retry=Retry(NoBackoff(), 0),
            )
        except ValueError:
            # redis-py's message may quote parts of the URL, which can hold a password.
            raise ConfigError(
                "the redis store URL is invalid",
                hint="expected redis://[[USER]:PASSWORD@]HOST[:PORT][/DB], rediss://... or unix:///path/to/socket",
            ) from None
        return cls(client, raw_key, prefix=prefix, lease_ttl=lease_ttl)

    def __repr__(self) -> str:
        return f"RedisStore({self.where!r}, prefix={self.prefix!r})"

    @property
    def degraded(self) -> bool:
        """True when the last operation could not reach Redis (for /health and `bastion oauth ls`)."""
        return self._degraded

    # -- records

    async def get(self, server: str) -> ProviderRecord | None:
        await self._check_key()
        field = _encode(server)
        with self._talking():
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.hget(self._keys["records"], field)
                pipe.hget(self._keys["revisions"], field)
                sealed, revision = await pipe.execute()
        return None if sealed is None else self._open_record(server, sealed, revision)

    async def list(self) -> builtins.list[ProviderRecord]:
        await self._check_key()
        with self._talking():
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.hgetall(self._keys["records"])
                pipe.hgetall(self._keys["revisions"])
                sealed_by_name, revisions = await pipe.execute()
        records = [
            self._open_record(_decode(field), sealed, revisions.get(field)) for field, sealed in sealed_by_name.items()
        ]
        return sorted(records, key=lambda record: record.server)

    async def put(self, record: ProviderRecord) -> ProviderRecord:
        written = await self._write(record, None)
        assert written is not None  # unconditional writes always succeed
        return written

    async def compare_and_set(self, record: ProviderRecord, expected_revision: int) -> ProviderRecord | None:
        return await self._write(record, expected_revision)

    async def delete(self, server: str) -> bool:
        await self._check_key()
        owner = self._held.get().get(server, "")
        with self._talking():
            result = await self._delete_script(
                keys=[self._keys["records"], self._lease_key(server)],
                args=[_encode(server), owner, self._channel],
            )
        if result == -1:
            raise _lease_lost(server, self.lease_ttl)
        return bool(result)

    async def _write(self, record: ProviderRecord, expected_revision: int | None) -> ProviderRecord | None:
        await self._check_key()
        server = record.server
        field = _encode(server)
        written = record.model_copy(update={"revision": 0, "updated_at": time.time()})
        plaintext = written.model_dump_json(exclude={"revision"}).encode()
        owner = self._held.get().get(server, "")
        expected = "" if expected_revision is None else str(expected_revision)
        # The revision is part of the associated data, so seal for the one the write will get and
        # let the script refuse (-2) when another write took it first; then seal again.
        for _ in range(_WRITE_ATTEMPTS):
            with self._talking():
                counter = await self._redis.hget(self._keys["revisions"], field)
            sealed_for = int(counter or 0) + 1
            sealed = self._sealer.seal(self._record_data(server, sealed_for), plaintext, version=_FORMAT)
            with self._talking():
                revision = await self._write_script(
                    keys=[self._keys["records"], self._keys["revisions"], self._lease_key(server)],
                    args=[field, sealed, expected, owner, self._channel, str(sealed_for)],
                )
            if revision != -2:
                break
        else:
            raise StoreError(
                f"the record of {server!r} in Redis at {self.where} changed {_WRITE_ATTEMPTS} times while "
                "this write was sealed",
                hint="retry; other gateways are writing it constantly",
            )
        if revision == -1:
            if expected_revision is not None:
                return None  # someone else may have written since: the caller re-reads
            raise _lease_lost(server, self.lease_ttl)
        if revision == 0:
            return None
        self._saw(server, int(revision))
        return written.model_copy(update={"revision": int(revision)})

    def _record_data(self, server: str, revision: int) -> bytes:
        return _associated_data(self.prefix, b"record", server, revision)

    def _saw(self, server: str, revision: int) -> None:
        self._seen[server] = max(revision, self._seen.get(server, 0))
        self._upgraded.add(server)

    def _open_record(self, server: str, sealed: bytes, revision: bytes | None) -> ProviderRecord:
        what = f"the record of {server!r}"
        number = int(revision or 0)
        if sealed.startswith(_LEGACY):
            if server in self._upgraded:
                raise _rolled_back(what, self.where, server, "it is sealed the way an older Bastion sealed it")
            plaintext = self._open(_record_name(server), sealed, what)
        else:
            plaintext = self._open(self._record_data(server, number), sealed, what, version=_FORMAT)
        seen = self._seen.get(server, 0)
        if number < seen:
            raise _rolled_back(what, self.where, server, f"revision {number} is older than revision {seen} read before")
        try:
            record = ProviderRecord.model_validate_json(plaintext)
        except ValidationError as exc:
            raise self._corrupt(what, exc, f"run `bastion oauth authorize {server}`") from None
        if record.server != server:  # cannot happen unless sealed under its name by this key
            raise StoreError(f"{what} in Redis at {self.where} names {record.server!r}")
        if sealed.startswith(_FORMAT):
            self._saw(server, number)
        else:
            self._seen[server] = max(number, seen)
        return record.model_copy(update={"revision": number})

    # -- lock and events

    def lock(self, server: str, *, timeout: float = 30.0) -> AbstractAsyncContextManager[Lease]:
        """A lease on `server` across every gateway sharing this Redis: taken with SET NX PX,
        renewed every TTL/3 while held, released only by its owner. A holder that dies blocks
        the others for at most `lease_ttl` seconds. Each grant carries a fencing token from a
        per-server counter; writes by the holding task are refused once its lease is gone."""
        return self._lease(server, timeout)

    @asynccontextmanager
    async def _lease(self, server: str, timeout: float) -> AsyncGenerator[Lease, None]:
        deadline = anyio.current_time() + timeout
        local = self._local_locks.setdefault(server, anyio.Semaphore(1))
        try:
            local.acquire_nowait()  # so that timeout=0 means "try once"
        except anyio.WouldBlock:
            try:
                with anyio.fail_after(timeout):
                    await local.acquire()
            except TimeoutError:
                raise _lock_timeout(server, timeout, "another task in this process holds it") from None
        try:
            owner = secrets.token_hex(16)
            token = await self._acquire(server, owner, deadline, timeout)
            held = self._held.set({**self._held.get(), server: owner})
            failure: BaseException | None = None
            try:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._renew, server, owner)
                    try:
                        yield Lease(server=server, fencing_token=token)
                    except BaseException as exc:  # re-raised below, unwrapped by the task group
                        failure = exc
                    tg.cancel_scope.cancel()
            finally:
                self._held.reset(held)
                await self._release(server, owner)
            if failure is not None:
                raise failure
        finally:
            local.release()

    async def _acquire(self, server: str, owner: str, deadline: float, timeout: float) -> int:
        delay = 0.005
        ttl_ms = max(1, round(self.lease_ttl * 1000))
        while True:
            with self._talking():
                token = await self._acquire_script(
                    keys=[self._lease_key(server), self._keys["fences"]], args=[owner, ttl_ms, _encode(server)]
                )
            if token:
                return int(token)
            remaining = deadline - anyio.current_time()
            if remaining <= 0:
                raise _lock_timeout(
                    server, timeout, f"another gateway holds it (a lease lasts {self.lease_ttl:g}s if its holder dies)"
                )
            await anyio.sleep(min(delay * random.uniform(0.5, 1.5), remaining))
            delay = min(delay * 2, 0.1)

    async def _renew(self, server: str, owner: str) -> None:
        ttl_ms = max(1, round(self.lease_ttl * 1000))
        while True:
            await anyio.sleep(self.lease_ttl / 3)
            try:
                with self._talking():
                    kept = await self._renew_script(keys=[self._lease_key(server)], args=[owner, ttl_ms])
            except StoreError as exc:
                # Keep trying: the lease lasts lease_ttl after the last renewal that got through.
                logger.warning("cannot renew the store lease of %r: %s", server, exc)
                continue
            if not kept:
                logger.warning(
                    "lost the store lease of %r (expired after %gs without renewal); writes under it are refused",
                    server,
                    self.lease_ttl,
                )
                return

    async def _release(self, server: str, owner: str) -> None:
        with anyio.CancelScope(shield=True), anyio.move_on_after(self.lease_ttl):
            try:
                with self._talking():
                    await self._release_script(keys=[self._lease_key(server)], args=[owner])
            except StoreError as exc:
                logger.warning("cannot release the store lease of %r (it expires by itself): %s", server, exc)

    def _lease_key(self, server: str) -> bytes:
        return self.prefix.encode() + b"lease:" + _encode(server)

    def watch(self) -> AsyncIterator[StoreEvent]:
        """Record changes published by every gateway (pub/sub), this one included. After Redis was
        unreachable, yields `StoreEvent(server=None, kind="resync")` once it is back: re-read all.
        Changes made before the subscription is live (the first `__anext__`) are not reported."""
        return self._events()

    async def _events(self) -> AsyncGenerator[StoreEvent, None]:
        missed = False
        first_wait, longest_wait = self.WATCH_BACKOFF
        wait = first_wait
        while not self._closed:
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                with self._talking():
                    await pubsub.subscribe(self._channel)
                if missed:
                    logger.info("store events: Redis at %s is back; re-reading everything", self.where)
                    missed, wait = False, first_wait
                    yield StoreEvent(server=None, kind="resync")
                pinged = anyio.current_time()
                while not self._closed:
                    with self._talking():
                        message = await pubsub.get_message(timeout=self.WATCH_STEP)
                        if message is None and anyio.current_time() - pinged > self.WATCH_PING_EVERY:
                            await pubsub.ping()
                            pinged = anyio.current_time()
                    if message is not None and message.get("type") == "message":  # not a pong
                        event = _parse_event(message.get("data"))
                        if event is not None:
                            yield event
            except StoreUnavailable as exc:
                if self._closed:
                    return
                if not missed:
                    logger.warning("store events: %s; retrying", exc)
                missed = True
                await anyio.sleep(wait * random.uniform(0.5, 1.0))
                wait = min(wait * 2, longest_wait)
            finally:
                with anyio.CancelScope(shield=True):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]  # untyped in redis-py

    # -- secrets

    async def get_secret(self, name: str) -> str | None:
        await self._check_key()
        with self._talking():
            sealed = await self._redis.hget(self._keys["secrets"], _encode(name))
        if sealed is None:
            return None
        assert isinstance(sealed, bytes)
        what = f"the secret {name!r}"
        if sealed.startswith(_LEGACY):
            plaintext = self._open(_secret_name(name), sealed, what)
        else:
            plaintext = self._open(_associated_data(self.prefix, b"secret", name), sealed, what, version=_FORMAT)
        return plaintext.decode("utf-8", "surrogatepass")

    async def set_secret(self, name: str, value: str) -> None:
        await self._check_key()
        sealed = self._sealer.seal(
            _associated_data(self.prefix, b"secret", name), value.encode("utf-8", "surrogatepass"), version=_FORMAT
        )
        with self._talking():
            await self._set_secret_script(keys=[self._keys["secrets"]], args=[_encode(name), sealed, self._channel])

    async def delete_secret(self, name: str) -> bool:
        await self._check_key()
        with self._talking():
            deleted = await self._delete_secret_script(
                keys=[self._keys["secrets"]], args=[_encode(name), self._channel]
            )
        return bool(deleted)

    async def list_secrets(self) -> builtins.list[str]:
        with self._talking():
            names = await self._redis.hkeys(self._keys["secrets"])
        return sorted(_decode(name) for name in names if isinstance(name, bytes))

    async def aclose(self) -> None:
        self._closed = True
        await self._redis.aclose()

    # -- helpers

    async def _check_key(self) -> None:
        """Prove the key once per store: a wrong key must fail before anything is written."""
        if self._key_checked:
            return
        keycheck = self._keys["keycheck"]
        with self._talking():
            sealed = await self._redis.get(keycheck)
            if sealed is None:
                if self._seen:  # the store was emptied (a Redis restart without persistence, FLUSHDB)
                    logger.warning("the store in Redis at %s is new: forgetting the revisions read before", self.where)
                    self._seen.clear()
                    self._upgraded.clear()
                await self._redis.set(keycheck, self._sealer.seal(_KEYCHECK_NAME, _KEYCHECK_PLAINTEXT), nx=True)
                sealed = await self._redis.get(keycheck)
        if sealed is None:
            return  # deleted meanwhile (FLUSHDB?): check again next time
        assert isinstance(sealed, bytes)
        if self._sealer.open(_KEYCHECK_NAME, sealed) != _KEYCHECK_PLAINTEXT:
            raise StoreKeyError(
                f"cannot decrypt the store in Redis at {self.where} (prefix {self.prefix!r}): "
                "BASTION_STORE_KEY is not the key this store was written with",
                hint="set BASTION_STORE_KEY to the key the other gateways use; nothing was changed in Redis",
            )
        self._key_checked = True

    def _open(self, name: bytes, sealed: bytes, what: str, *, version: bytes = _LEGACY) -> bytes:
        plaintext = self._sealer.open(name, sealed, version=version)
        if plaintext is None:
            raise StoreKeyError(
                f"cannot decrypt {what} in Redis at {self.where}: "
                "BASTION_STORE_KEY is not the key it was written with, or the value was altered or moved",
                hint="check BASTION_STORE_KEY; nothing was changed in Redis",
            )
        return plaintext

    def _corrupt(self, what: str, exc: ValidationError, what_to_do: str) -> StoreError:
        # Only the location and pydantic's message: `str(exc)` would quote the input (secrets).
        first = exc.errors(include_url=False, include_input=False, include_context=False)[0]
        where = ".".join(str(p) for p in first["loc"])
        reason = f"{where}: {first['msg']}" if where else first["msg"]
        return StoreError(f"{what} in Redis at {self.where} is corrupt ({reason})", hint=what_to_do)

    @contextmanager
    def _talking(self) -> Iterator[None]:
        """Map redis-py's errors to the store's, and keep `degraded` up to date."""
        try:
            yield
        except redis.exceptions.AuthenticationError:
            self._degraded = True
            raise StoreUnavailable(
                f"Redis at {self.where} refused the store's credentials",
                hint="check the user and password in the store URL",
            ) from None
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError) as exc:
            self._degraded = True
            self._key_checked = False  # Redis may come back empty: prove the key again then
            raise StoreUnavailable(
                f"Redis at {self.where} is unreachable; gateways keep serving the tokens they hold",
                hint="start Redis or fix the store URL; the store recovers by itself once Redis answers",
            ) from exc
        except redis.exceptions.ResponseError as exc:
            # Only the error code (READONLY, OOM, NOPERM, ...): the rest may echo arguments.
            code = str(exc).split(" ", 1)[0] or type(exc).__name__
            raise StoreError(
                f"Redis at {self.where} refused a store command ({code})",
                hint="the store needs a writable primary with Lua scripting and pub/sub allowed",
            ) from None
        self._degraded = False


def _where(client: redis.asyncio.Redis) -> str:
    kwargs = client.connection_pool.connection_kwargs
    if "path" in kwargs:
        return f"unix:{kwargs['path']}"
    host = kwargs.get("host", "localhost")
    port = kwargs.get("port", 6379)
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


def _parse_event(data: object) -> StoreEvent | None:
    if not isinstance(data, bytes):
        return None
    try:
        wire = _WireEvent.model_validate_json(data)
    except ValidationError:
        logger.debug("ignoring a malformed message on the store events channel")
        return None
    if wire.server is None:  # a secret changed: `watch()` reports records only, like FileStore
        return None
    return StoreEvent(server=wire.server, kind=wire.kind, revision=wire.revision)


def _rolled_back(what: str, where: str, server: str, why: str) -> StoreError:
    return StoreError(
        f"{what} in Redis at {where} was rolled back ({why}); refused",
        hint=f"someone with write access to Redis put an older copy back: check who can write to it, then run "
        f"`bastion oauth authorize {server}` (if Redis was emptied on purpose, restart the gateways)",
    )


def _lock_timeout(server: str, timeout: float, why: str) -> StoreLockTimeout:
    return StoreLockTimeout(
        f"timed out after {timeout:g}s waiting for the store lock of {server!r}",
        hint=f"{why}; retry once it finishes refreshing",
    )


def _lease_lost(server: str, ttl: float) -> StoreLockTimeout:
    return StoreLockTimeout(
        f"the store lease of {server!r} expired before this write, which was refused",
        hint=f"this gateway stalled or lost Redis for more than {ttl:g}s and another may have written since; retry",
    )
