"""The `Store` contract, written once for every backend.

A backend's test module subclasses `StoreContract` (as `TestXxxStore`) and provides:

- `store`: an async fixture yielding a fresh, empty store (closed afterwards);
- `child_setup`: Python source, run in a child process, that defines `make_store()`
  returning a store on the same data (used to prove cross-process locks and events);
- `private_root`: the directory whose permissions must be 0700/0600, or None (e.g. Redis).
"""

from __future__ import annotations

import os
import stat
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest
from anyio.abc import ObjectReceiveStream

from bastion.errors import StoreLockTimeout
from bastion.store.base import Store
from bastion.store.models import ClientRegistration, ProviderRecord, StoreEvent, TokenSet

pytestmark = pytest.mark.anyio

EVENT_TIMEOUT = 5.0
"""Generous bound for "eventually"; `test_watch_notices_a_change_within_a_second` checks latency."""

ACCESS = "at-SECRET-access-4f1c"
REFRESH = "rt-SECRET-refresh-9b2e"
CLIENT_SECRET = "cs-SECRET-client-77aa"
SECRET_VALUE = "sv-SECRET-value-0d0d"
SECRETS = (ACCESS, REFRESH, CLIENT_SECRET, SECRET_VALUE)


def make_record(server: str = "notion", *, counter: int | None = None, tokens: bool = True) -> ProviderRecord:
    return ProviderRecord(
        server=server,
        resource_url=f"https://mcp.example.com/{server}",
        client=ClientRegistration(client_id="client-1", client_secret=CLIENT_SECRET, issuer="https://as.example.com"),
        tokens=TokenSet(
            access_token=ACCESS,
            refresh_token=REFRESH,
            expires_at=time.time() + 3600,
            scopes=["read"],
            issuer="https://as.example.com",
            token_endpoint="https://as.example.com/token",
            client_id="client-1",
        )
        if tokens
        else None,
        last_error=None if counter is None else str(counter),
    )


CHILD_TEMPLATE = """
import sys
import anyio
from bastion.store.models import ProviderRecord, ClientRegistration
{setup}

async def main():
    store = make_store()
    try:
{body}
    finally:
        await store.aclose()

anyio.run(main)
"""


def child_code(setup: str, body: str) -> str:
    """A `python -c` program that runs `body` (async, with `store` bound) in a fresh process."""
    return CHILD_TEMPLATE.format(setup=textwrap.dedent(setup), body=textwrap.indent(textwrap.dedent(body), " " * 8))


async def run_child(setup: str, body: str) -> str:
    result = await anyio.run_process([sys.executable, "-c", child_code(setup, body)], check=False)
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout.decode()


class Watching:
    """Events seen by a running `store.watch()` consumer."""

    def __init__(self, events: ObjectReceiveStream[StoreEvent]) -> None:
        self._events = events
        self.seen: list[StoreEvent] = []

    async def wait_for(self, match: Callable[[StoreEvent], bool], timeout: float = EVENT_TIMEOUT) -> StoreEvent:
        with anyio.fail_after(timeout):
            async for event in self._events:
                self.seen.append(event)
                if match(event):
                    return event
        raise AssertionError("the watch ended")


@asynccontextmanager
async def watching(store: Store) -> AsyncIterator[Watching]:
    """Run a watch consumer; return once it has provably seen a change (so it is live)."""
    send, receive = anyio.create_memory_object_stream[StoreEvent](1000)

    async def consume() -> None:
        async with send:
            async for event in store.watch():
                await send.send(event)

    async with receive, anyio.create_task_group() as tg:
        tg.start_soon(consume)
        watcher = Watching(receive)
        with anyio.fail_after(EVENT_TIMEOUT):
            while True:
                probe = await store.put(make_record("watch-probe", tokens=False))
                with anyio.move_on_after(0.1):
                    await watcher.wait_for(changed("watch-probe", probe.revision))
                    break
        yield watcher
        tg.cancel_scope.cancel()


def changed(server: str, revision: int) -> Callable[[StoreEvent], bool]:
    return lambda e: e.server == server and e.kind == "changed" and (e.revision is None or e.revision >= revision)


class StoreContract:
    """Behaviour every `Store` backend must have."""

    @pytest.fixture
    def child_setup(self) -> str:
        raise NotImplementedError

    @pytest.fixture
    def private_root(self) -> Path | None:
        return None

    # -- get / put / list / delete

    async def test_get_of_unknown_server_is_none(self, store: Store) -> None:
        assert await store.get("nobody") is None

    async def test_put_then_get_round_trips_the_record(self, store: Store) -> None:
        written = await store.put(make_record())
        got = await store.get("notion")
        assert got == written
        assert got is not None and got.tokens is not None and got.tokens.refresh_token == REFRESH
        assert got.client is not None and got.client.client_secret == CLIENT_SECRET

    async def test_every_write_bumps_the_revision(self, store: Store) -> None:
        revisions = [(await store.put(make_record())).revision for _ in range(3)]
        assert revisions == sorted(set(revisions)) and revisions[0] >= 1
        got = await store.get("notion")
        assert got is not None and got.revision == revisions[-1]

    async def test_put_ignores_the_revision_it_is_given(self, store: Store) -> None:
        first = await store.put(make_record())
        second = await store.put(make_record().model_copy(update={"revision": 999}))
        assert second.revision == first.revision + 1

    async def test_list_returns_every_record_sorted_by_server(self, store: Store) -> None:
        for name in ("zeta", "alpha", "Mid"):
            await store.put(make_record(name))
        assert [r.server for r in await store.list()] == ["Mid", "alpha", "zeta"]

    async def test_list_of_an_empty_store_is_empty(self, store: Store) -> None:
        assert await store.list() == []

    async def test_delete_removes_the_record_and_says_whether_there_was_one(self, store: Store) -> None:
        await store.put(make_record())
        assert await store.delete("notion") is True
        assert await store.get("notion") is None
        assert await store.list() == []
        assert await store.delete("notion") is False

    async def test_revisions_never_repeat_across_a_delete(self, store: Store) -> None:
        """Otherwise a compare-and-set on a revision read before the delete could succeed."""
        old = await store.put(make_record())
        await store.delete("notion")
        new = await store.put(make_record())
        assert new.revision > old.revision

    @pytest.mark.parametrize(
        "names",
        [
            ["a/b", "a%2Fb", "a_b", "a-b", "a.b"],
            ["Notion", "notion", "NOTION"],
            ["../escape", ".hidden", "..", "."],
            ["with space", "ünïcödé", "emoji-🔑", "tab\tnew\nline", "back\\slash"],
        ],
    )
    async def test_server_names_with_unsafe_characters_stay_distinct(self, store: Store, names: list[str]) -> None:
        for name in names:
            await store.put(make_record(name))
        assert sorted(r.server for r in await store.list()) == sorted(names)
        for name in names:
            got = await store.get(name)
            assert got is not None and got.server == name

    # -- compare-and-set

    async def test_compare_and_set_with_zero_creates_an_absent_record(self, store: Store) -> None:
        written = await store.compare_and_set(make_record(), 0)
        assert written is not None and written.revision >= 1
        assert await store.get("notion") == written

    async def test_compare_and_set_with_zero_fails_when_the_record_exists(self, store: Store) -> None:
        existing = await store.put(make_record())
        assert await store.compare_and_set(make_record(counter=1), 0) is None
        assert await store.get("notion") == existing

    async def test_compare_and_set_on_the_current_revision_writes(self, store: Store) -> None:
        current = await store.put(make_record())
        written = await store.compare_and_set(make_record(counter=1), current.revision)
        assert written is not None
        assert written.revision > current.revision and written.last_error == "1"
        assert await store.get("notion") == written

    async def test_compare_and_set_on_a_stale_revision_returns_none_and_writes_nothing(self, store: Store) -> None:
        stale = await store.put(make_record())
        current = await store.put(make_record(counter=1))
        assert await store.compare_and_set(make_record(counter=2), stale.revision) is None
        assert await store.get("notion") == current

    async def test_compare_and_set_on_a_deleted_record_fails(self, store: Store) -> None:
        stale = await store.put(make_record())
        await store.delete("notion")
        assert await store.compare_and_set(make_record(counter=1), stale.revision) is None
        assert await store.get("notion") is None

    async def test_of_concurrent_compare_and_sets_on_one_revision_exactly_one_wins(self, store: Store) -> None:
        base = await store.put(make_record())
        results: list[ProviderRecord | None] = []

        async def attempt(n: int) -> None:
            results.append(await store.compare_and_set(make_record(counter=n), base.revision))

        async with anyio.create_task_group() as tg:
            for n in range(8):
                tg.start_soon(attempt, n)
        winners = [r for r in results if r is not None]
        assert len(winners) == 1
        assert await store.get("notion") == winners[0]

    # -- lock

    async def test_lock_excludes_other_tasks(self, store: Store) -> None:
        holders = 0
        most = 0

        async def critical() -> None:
            nonlocal holders, most
            async with store.lock("notion", timeout=10):
                holders += 1
                most = max(most, holders)
                await anyio.sleep(0.02)
                holders -= 1

        async with anyio.create_task_group() as tg:
            for _ in range(5):
                tg.start_soon(critical)
        assert most == 1

    async def test_lock_on_another_server_does_not_wait(self, store: Store) -> None:
        async with store.lock("notion", timeout=5):
            with anyio.fail_after(2):
                async with store.lock("github", timeout=5) as lease:
                    assert lease.server == "github"

    async def test_fencing_tokens_increase_with_every_grant(self, store: Store) -> None:
        tokens = []
        for _ in range(3):
            async with store.lock("notion") as lease:
                assert lease.server == "notion"
                tokens.append(lease.fencing_token)
        assert tokens == sorted(set(tokens))

    async def test_lock_times_out_with_store_lock_timeout(self, store: Store) -> None:
        async with store.lock("notion"):
            started = anyio.current_time()
            with pytest.raises(StoreLockTimeout) as info:
                async with store.lock("notion", timeout=0.2):
                    pytest.fail("got a lock that is held")
            assert 0.15 <= anyio.current_time() - started < 2
            assert "notion" in str(info.value)

    async def test_a_free_lock_with_zero_timeout_is_taken(self, store: Store) -> None:
        async with store.lock("notion", timeout=0):
            with pytest.raises(StoreLockTimeout):
                async with store.lock("notion", timeout=0):
                    pytest.fail("got a lock that is held")

    async def test_lock_is_released_when_the_body_raises(self, store: Store) -> None:
        with pytest.raises(RuntimeError):
            async with store.lock("notion"):
                raise RuntimeError("boom")
        with anyio.fail_after(2):
            async with store.lock("notion", timeout=1):
                pass

    async def test_waiting_for_the_lock_can_be_cancelled(self, store: Store) -> None:
        async with store.lock("notion"):
            with anyio.move_on_after(0.1) as scope:
                async with store.lock("notion", timeout=30):
                    pytest.fail("got a lock that is held")
            assert scope.cancelled_caught
        async with store.lock("notion", timeout=1):
            pass

    async def test_lock_held_by_another_process_times_out_here(self, store: Store, child_setup: str) -> None:
        body = """
        async with store.lock("notion"):
            print("locked", flush=True)
            sys.stdin.readline()
        """
        code = child_code(child_setup, body)
        async with await anyio.open_process([sys.executable, "-c", code]) as child:
            assert child.stdout is not None and child.stdin is not None
            with anyio.fail_after(30):
                assert (await child.stdout.receive()).startswith(b"locked")
            with pytest.raises(StoreLockTimeout):
                async with store.lock("notion", timeout=0.3):
                    pytest.fail("got a lock another process holds")
            await child.stdin.send(b"\n")
            assert await child.wait() == 0
        with anyio.fail_after(5):
            async with store.lock("notion", timeout=5):
                pass

    async def test_lock_then_compare_and_set_is_a_safe_refresh(self, store: Store) -> None:
        """The refresh pattern of `base.py`: concurrent increments under the lock lose nothing."""
        await store.put(make_record(counter=0))

        async def increment() -> None:
            async with store.lock("notion", timeout=10):
                current = await store.get("notion")
                assert current is not None and current.last_error is not None
                await anyio.sleep(0)
                written = await store.compare_and_set(
                    make_record(counter=int(current.last_error) + 1), current.revision
                )
                assert written is not None

        async with anyio.create_task_group() as tg:
            for _ in range(10):
                tg.start_soon(increment)
        final = await store.get("notion")
        assert final is not None and final.last_error == "10"

    # -- secrets

    async def test_secret_set_get_overwrite_delete(self, store: Store) -> None:
        assert await store.get_secret("github.token") is None
        await store.set_secret("github.token", "one")
        assert await store.get_secret("github.token") == "one"
        await store.set_secret("github.token", SECRET_VALUE)
        assert await store.get_secret("github.token") == SECRET_VALUE
        assert await store.delete_secret("github.token") is True
        assert await store.get_secret("github.token") is None
        assert await store.delete_secret("github.token") is False

    async def test_list_secrets_returns_sorted_names_only(self, store: Store) -> None:
        await store.set_secret("b/key", SECRET_VALUE)
        await store.set_secret("A key", "x")
        await store.set_secret("c.key", "")
        names = await store.list_secrets()
        assert names == sorted(["b/key", "A key", "c.key"])
        assert SECRET_VALUE not in repr(names)

    async def test_secrets_and_records_do_not_mix(self, store: Store) -> None:
        await store.set_secret("notion", SECRET_VALUE)
        assert await store.get("notion") is None
        assert await store.list() == []
        await store.put(make_record())
        assert await store.list_secrets() == ["notion"]
        assert await store.get_secret("notion") == SECRET_VALUE

    async def test_secret_values_keep_every_character(self, store: Store) -> None:
        value = 'multi\nline "quoted" ünïcödé 🔑 \\ \x00 end'
        await store.set_secret("odd", value)
        assert await store.get_secret("odd") == value

    # -- watch

    async def test_watch_sees_a_put_from_this_process(self, store: Store) -> None:
        async with watching(store) as watcher:
            written = await store.put(make_record())
            event = await watcher.wait_for(changed("notion", written.revision))
            assert event.revision in (None, written.revision)

    async def test_watch_notices_a_change_within_a_second(self, store: Store) -> None:
        async with watching(store) as watcher:
            for n in range(3):
                written = await store.put(make_record(counter=n))
                await watcher.wait_for(changed("notion", written.revision), timeout=1.0)

    async def test_watch_sees_a_delete(self, store: Store) -> None:
        await store.put(make_record())
        async with watching(store) as watcher:
            assert await store.delete("notion")
            await watcher.wait_for(lambda e: e.server == "notion" and e.kind == "deleted")

    async def test_watch_sees_a_compare_and_set(self, store: Store) -> None:
        current = await store.put(make_record())
        async with watching(store) as watcher:
            written = await store.compare_and_set(make_record(counter=1), current.revision)
            assert written is not None
            await watcher.wait_for(changed("notion", written.revision))

    async def test_watch_sees_a_change_made_by_another_process(self, store: Store, child_setup: str) -> None:
        async with watching(store) as watcher:
            body = """
            written = await store.put(ProviderRecord(server="from child", resource_url="https://x.example"))
            print(written.revision)
            """
            revision = int(await run_child(child_setup, body))
            await watcher.wait_for(changed("from child", revision))
        got = await store.get("from child")
        assert got is not None and got.revision == revision

    async def test_watch_ends_on_aclose(self, store: Store) -> None:
        events = store.watch()
        done = anyio.Event()

        async def consume() -> None:
            async for _ in events:
                pass
            done.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(consume)
            await anyio.sleep(0.2)
            await store.aclose()
            with anyio.fail_after(3):
                await done.wait()

    # -- hygiene

    async def test_files_are_private(self, store: Store, private_root: Path | None) -> None:
        if private_root is None:
            pytest.skip("this backend keeps no local files")
        await store.put(make_record())
        await store.set_secret("token", SECRET_VALUE)
        async with store.lock("notion"):
            pass
        await store.delete(make_record("other").server)
        checked = 0
        for dirpath, _dirnames, filenames in os.walk(private_root):
            assert stat.S_IMODE(os.stat(dirpath).st_mode) == 0o700, dirpath
            for filename in filenames:
                path = os.path.join(dirpath, filename)
                assert stat.S_IMODE(os.stat(path).st_mode) == 0o600, path
                checked += 1
        assert checked > 0

    async def test_reprs_never_show_secrets(self, store: Store) -> None:
        written = await store.put(make_record())
        await store.set_secret("token", SECRET_VALUE)
        shown = [
            repr(store),
            str(store),
            repr(written),
            repr(await store.get("notion")),
            repr(await store.list()),
            repr(await store.list_secrets()),
        ]
        async with store.lock("notion") as lease:
            shown.append(repr(lease))
        for text in shown:
            for secret in SECRETS:
                assert secret not in text
