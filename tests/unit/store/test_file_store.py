"""`FileStore`: the contract, plus what only files can get wrong — several writer
processes, a writer killed mid-write, corrupt files, permissions, file names."""

from __future__ import annotations

import json
import os
import signal
import stat
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bastion.errors import StoreError
from bastion.store import _fs
from bastion.store.file import FileStore
from bastion.store.models import ProviderRecord

from .contract import ACCESS, REFRESH, StoreContract, child_code, make_record, run_child

pytestmark = pytest.mark.anyio


def file_setup(root: Path) -> str:
    return f"""
from pathlib import Path
from typing import Any
from bastion.store.file import FileStore
def make_store():
    return FileStore(Path({str(root)!r}))
"""


class TestFileStore(StoreContract):
    @pytest.fixture
    async def store(self, tmp_path: Path) -> AsyncIterator[FileStore]:
        store = FileStore(tmp_path / "store")
        yield store
        await store.aclose()

    @pytest.fixture
    def child_setup(self, tmp_path: Path) -> str:
        return file_setup(tmp_path / "store")

    @pytest.fixture
    def private_root(self, tmp_path: Path) -> Path:
        return tmp_path / "store"


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[FileStore]:
    store = FileStore(tmp_path / "store")
    yield store
    await store.aclose()


# -- several processes


async def test_writer_processes_using_lock_and_compare_and_set_lose_no_update(store: FileStore, tmp_path: Path) -> None:
    """4 processes x 50 increments of one counter through lock + get + compare_and_set."""
    await store.put(make_record(counter=0))
    body = """
    for _ in range(50):
        async with store.lock("notion", timeout=60):
            current = await store.get("notion")
            record = current.model_copy(update={"last_error": str(int(current.last_error) + 1)})
            assert await store.compare_and_set(record, current.revision) is not None
    """
    async with anyio.create_task_group() as tg:
        for _ in range(4):
            tg.start_soon(run_child, file_setup(tmp_path / "store"), body)
    final = await store.get("notion")
    assert final is not None and final.last_error == "200"


async def test_compare_and_set_alone_is_atomic_across_processes(store: FileStore, tmp_path: Path) -> None:
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
            tg.start_soon(run_child, file_setup(tmp_path / "store"), body)
    final = await store.get("notion")
    assert final is not None and final.last_error == "90"


async def test_a_writer_killed_mid_write_leaves_the_old_or_the_new_record(store: FileStore, tmp_path: Path) -> None:
    """SIGKILL a process in a tight write loop, many times; every time the record parses and
    its revision only moves forward."""
    await store.put(make_record(counter=0))
    body = """
    current = await store.get("notion")
    n = int(current.last_error)
    print("writing", flush=True)
    while True:
        n += 1
        await store.put(current.model_copy(update={"last_error": str(n)}))
    """
    code = child_code(file_setup(tmp_path / "store"), body)
    last_revision = 1
    for attempt in range(15):
        async with await anyio.open_process([sys.executable, "-c", code]) as child:
            assert child.stdout is not None
            with anyio.fail_after(30):
                assert (await child.stdout.receive()).startswith(b"writing")
            await anyio.sleep(0.01 + (attempt % 5) * 0.013)
            child.send_signal(signal.SIGKILL)
            await child.wait()
        record = await store.get("notion")
        assert record is not None and record.last_error is not None
        assert record.revision >= last_revision
        assert int(record.last_error) == record.revision - 1
        last_revision = record.revision
    assert last_revision > 15  # the children did write
    assert [r.server for r in await store.list()] == ["notion"]


async def test_the_lock_of_a_killed_process_is_released(store: FileStore, tmp_path: Path) -> None:
    body = """
    async with store.lock("notion"):
        print("locked", flush=True)
        await anyio.sleep(60)
    """
    code = child_code(file_setup(tmp_path / "store"), body)
    async with await anyio.open_process([sys.executable, "-c", code]) as child:
        assert child.stdout is not None
        with anyio.fail_after(30):
            assert (await child.stdout.receive()).startswith(b"locked")
        child.send_signal(signal.SIGKILL)
        await child.wait()
    with anyio.fail_after(5):
        async with store.lock("notion", timeout=5) as lease:
            assert lease.fencing_token == 2  # the dead holder's grant still counts


# -- corrupt files


@pytest.mark.parametrize("cut", [0, 1, 40, -1])
async def test_a_torn_record_is_an_error_naming_the_file(store: FileStore, tmp_path: Path, cut: int) -> None:
    await store.put(make_record())
    path = tmp_path / "store" / "providers" / "notion.json"
    data = path.read_bytes()
    path.write_bytes(data[:cut])
    for read in (store.get("notion"), store.list()):
        with pytest.raises(StoreError) as info:
            await read
        message = str(info.value)
        assert str(path) in message and "corrupt" in message
        assert "bastion oauth authorize notion" in message
        assert ACCESS not in message and REFRESH not in message


async def test_a_record_with_a_bad_field_does_not_quote_its_secrets(store: FileStore, tmp_path: Path) -> None:
    await store.put(make_record())
    path = tmp_path / "store" / "providers" / "notion.json"
    doc = json.loads(path.read_text())
    doc["tokens"]["expires_at"] = ACCESS
    doc["tokens"]["scopes"] = REFRESH
    path.write_text(json.dumps(doc))
    with pytest.raises(StoreError) as info:
        await store.get("notion")
    assert ACCESS not in str(info.value) and REFRESH not in str(info.value)
    assert "tokens" in str(info.value)


async def test_a_record_under_another_servers_file_name_is_an_error(store: FileStore, tmp_path: Path) -> None:
    await store.put(make_record("github"))
    providers = tmp_path / "store" / "providers"
    os.rename(providers / "github.json", providers / "notion.json")
    with pytest.raises(StoreError, match="'github', not 'notion'"):
        await store.get("notion")


async def test_a_corrupt_secret_file_is_an_error_without_its_content(store: FileStore, tmp_path: Path) -> None:
    await store.set_secret("token", "value")
    path = tmp_path / "store" / "secrets" / "token.json"
    path.write_text('{"name": "token", "value": ' + json.dumps(ACCESS))  # torn
    with pytest.raises(StoreError) as info:
        await store.get_secret("token")
    assert str(path) in str(info.value) and ACCESS not in str(info.value)


async def test_temp_files_and_strangers_are_ignored(store: FileStore, tmp_path: Path) -> None:
    providers = tmp_path / "store" / "providers"
    (providers / ".notion.json.abc.tmp").write_text("{torn")
    (providers / "README.txt").write_text("hello")
    (providers / "Upper.json").write_text("{}")  # not a name the store writes
    await store.put(make_record())
    assert [r.server for r in await store.list()] == ["notion"]


# -- permissions


def test_opening_tightens_existing_permissions(tmp_path: Path) -> None:
    root = tmp_path / "store"
    (root / "providers").mkdir(parents=True, mode=0o755)
    os.chmod(root, 0o755)
    os.chmod(root / "providers", 0o777)
    record = root / "providers" / "notion.json"
    record.write_text(make_record().model_dump_json())
    os.chmod(record, 0o644)
    FileStore(root)
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    assert stat.S_IMODE((root / "providers").stat().st_mode) == 0o700
    assert stat.S_IMODE(record.stat().st_mode) == 0o600


def test_opening_removes_old_temp_files_only(tmp_path: Path) -> None:
    providers = tmp_path / "store" / "providers"
    providers.mkdir(parents=True)
    old = providers / ".notion.json.old.tmp"
    fresh = providers / ".notion.json.new.tmp"
    old.write_text("x")
    fresh.write_text("x")
    os.utime(old, (0, 0))
    FileStore(tmp_path / "store")
    assert not old.exists() and fresh.exists()


def test_a_store_path_that_is_a_file_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "store").write_text("")
    with pytest.raises(StoreError):
        FileStore(tmp_path / "store")


async def test_secrets_live_apart_from_records(store: FileStore, tmp_path: Path) -> None:
    await store.set_secret("notion", "sv-1")
    await store.put(make_record())
    assert "sv-1" not in (tmp_path / "store" / "providers" / "notion.json").read_text()
    assert (tmp_path / "store" / "secrets" / "notion.json").exists()


# -- file names


@given(st.text(min_size=1, max_size=16))
def test_file_names_round_trip_and_are_safe(name: str) -> None:
    encoded = _fs.encode_name(name)
    assert _fs.decode_name(encoded) == name
    assert set(encoded) <= set("abcdefghijklmnopqrstuvwxyz0123456789_-%ABCDEF")
    assert not encoded.startswith(".")


@given(st.text(min_size=1, max_size=16), st.text(min_size=1, max_size=16))
def test_distinct_names_get_distinct_file_names_even_ignoring_case(a: str, b: str) -> None:
    if a != b:
        assert _fs.encode_name(a).lower() != _fs.encode_name(b).lower()


@pytest.mark.parametrize("encoded", ["Upper", "%2f", "%zz", "a%2", "%FF", "", "a.b"])
def test_names_the_store_never_writes_do_not_decode(encoded: str) -> None:
    assert _fs.decode_name(encoded) is None


async def test_too_long_a_name_is_a_clear_error(store: FileStore) -> None:
    with pytest.raises(StoreError, match="too long"):
        await store.put(make_record("x" * 201))
    await store.put(make_record("x" * 200))


async def test_an_empty_name_is_an_error(store: FileStore) -> None:
    with pytest.raises(StoreError, match="empty"):
        await store.set_secret("", "v")


# -- watch details


async def test_watch_reports_changes_made_before_iteration_starts(store: FileStore) -> None:
    events = store.watch()
    written = await store.put(make_record())
    with anyio.fail_after(5):
        event = await anext(events)
    assert (event.server, event.kind, event.revision) == ("notion", "changed", written.revision)


async def test_watch_ignores_secrets_and_lock_files(store: FileStore) -> None:
    events = store.watch()
    await store.set_secret("token", "v")
    async with store.lock("notion"):
        pass
    written = await store.put(make_record("last"))
    with anyio.fail_after(5):
        event = await anext(events)
    assert event.server == "last" and event.revision == written.revision


async def test_a_consumer_that_stops_iterating_releases_its_watcher(store: FileStore) -> None:
    async def first_event() -> None:
        async for _ in store.watch():
            break

    async with anyio.create_task_group() as tg:
        tg.start_soon(first_event)
        await anyio.sleep(0.1)
        await store.put(make_record())
    with anyio.fail_after(3):
        while store._watcher._stops:  # the generator was closed when the consumer let go
            await anyio.sleep(0.02)


async def test_watch_of_a_corrupt_record_reports_it_changed(store: FileStore, tmp_path: Path) -> None:
    events = store.watch()
    (tmp_path / "store" / "providers" / "notion.json").write_text("{torn")
    with anyio.fail_after(5):
        event = await anext(events)
    assert event == type(event)(server="notion", kind="changed", revision=None)


async def test_records_written_by_an_older_process_are_read(store: FileStore, tmp_path: Path) -> None:
    body = """
    await store.put(ProviderRecord(server="old", resource_url="https://x.example"))
    """
    await run_child(file_setup(tmp_path / "store"), body)
    got = await store.get("old")
    assert isinstance(got, ProviderRecord) and got.revision == 1


def test_opening_the_store_while_another_writer_renames_its_temp_file_is_fine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A writer in another process renames its temp file into place between this process's
    directory scan and its stat of that entry (a CI run met it): the open goes on."""
    from bastion.store import _fs

    directory = tmp_path / "providers"
    directory.mkdir(mode=0o700)
    (directory / ".notion.json.abc123.tmp").write_bytes(b"{}")
    real_scandir = os.scandir

    def scandir_then_rename(path: Any) -> Any:
        entries = list(real_scandir(path))
        (directory / ".notion.json.abc123.tmp").rename(directory / "notion.json")
        return iter(entries)

    monkeypatch.setattr(_fs.os, "scandir", scandir_then_rename)
    _fs.ensure_private_dir(directory)
    assert (directory / "notion.json").exists()
