"""`KeyringStore`: the contract on a test keyring, plus the keyring's own layout and failures."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import keyring
import keyring.errors
import pytest

from bastion.errors import StoreError, StoreUnavailable
from bastion.store.keyring_store import KeyringStore

from .contract import ACCESS, REFRESH, SECRET_VALUE, StoreContract, make_record
from .memkeyring import JsonFileKeyring, MemoryKeyring

pytestmark = pytest.mark.anyio

HERE = Path(__file__).parent


class TestKeyringStore(StoreContract):
    @pytest.fixture
    async def store(self, tmp_path: Path) -> AsyncIterator[KeyringStore]:
        backend = JsonFileKeyring(tmp_path / "keyring.json")
        store = KeyringStore(state_dir=tmp_path / "state", backend=backend)
        yield store
        await store.aclose()

    @pytest.fixture
    def child_setup(self, tmp_path: Path) -> str:
        return f"""
sys.path.insert(0, {str(HERE)!r})
from pathlib import Path
from memkeyring import JsonFileKeyring
from bastion.store.keyring_store import KeyringStore
def make_store():
    backend = JsonFileKeyring(Path({str(tmp_path / "keyring.json")!r}))
    return KeyringStore(state_dir=Path({str(tmp_path / "state")!r}), backend=backend)
"""

    @pytest.fixture
    def private_root(self, tmp_path: Path) -> Path:
        return tmp_path / "state"


@pytest.fixture
def backend() -> MemoryKeyring:
    return MemoryKeyring()


@pytest.fixture
async def store(tmp_path: Path, backend: MemoryKeyring) -> AsyncIterator[KeyringStore]:
    store = KeyringStore(state_dir=tmp_path / "state", backend=backend)
    yield store
    await store.aclose()


@pytest.fixture
def installed_keyring() -> Iterator[MemoryKeyring]:
    previous = keyring.get_keyring()
    backend = MemoryKeyring()
    keyring.set_keyring(backend)
    yield backend
    keyring.set_keyring(previous)


async def test_records_secrets_and_indexes_are_keyring_entries(store: KeyringStore, backend: MemoryKeyring) -> None:
    written = await store.put(make_record())
    await store.set_secret("token", SECRET_VALUE)
    entries = backend.entries
    assert json.loads(entries["bastion\0provider:notion"])["revision"] == written.revision
    assert json.loads(entries["bastion\0index:providers"]) == ["notion"]
    assert entries["bastion\0secret:token"] == SECRET_VALUE
    assert json.loads(entries["bastion\0index:secrets"]) == ["token"]


async def test_deleting_removes_entries_and_index_names(store: KeyringStore, backend: MemoryKeyring) -> None:
    await store.put(make_record())
    await store.set_secret("token", SECRET_VALUE)
    await store.delete("notion")
    await store.delete_secret("token")
    assert json.loads(backend.entries["bastion\0index:providers"]) == []
    assert json.loads(backend.entries["bastion\0index:secrets"]) == []
    assert not [k for k in backend.entries if "provider:" in k or "secret:" in k]


async def test_change_markers_hold_no_secrets(store: KeyringStore, tmp_path: Path) -> None:
    await store.put(make_record())
    marker = (tmp_path / "state" / "changes" / "notion.json").read_text()
    assert ACCESS not in marker and REFRESH not in marker
    assert json.loads(marker) == {"server": "notion", "revision": 1}


async def test_a_dangling_index_name_is_skipped(store: KeyringStore, backend: MemoryKeyring) -> None:
    """What a crash between the index update and the entry write leaves behind."""
    await store.put(make_record())
    backend.entries["bastion\0index:providers"] = json.dumps(["ghost", "notion"])
    backend.entries["bastion\0index:secrets"] = json.dumps(["ghost"])
    assert [r.server for r in await store.list()] == ["notion"]
    assert await store.list_secrets() == []


async def test_the_service_name_separates_stores(tmp_path: Path, backend: MemoryKeyring) -> None:
    one = KeyringStore("bastion-a", state_dir=tmp_path / "a", backend=backend)
    two = KeyringStore("bastion-b", state_dir=tmp_path / "b", backend=backend)
    await one.put(make_record())
    assert await two.get("notion") is None
    assert "bastion-a\0provider:notion" in backend.entries


async def test_a_corrupt_entry_is_an_error_without_its_content(store: KeyringStore, backend: MemoryKeyring) -> None:
    backend.entries["bastion\0provider:notion"] = '{"server": "notion", "tokens": "' + ACCESS
    with pytest.raises(StoreError) as info:
        await store.get("notion")
    assert "provider:notion" in str(info.value) and ACCESS not in str(info.value)


async def test_a_failing_keyring_is_store_unavailable(store: KeyringStore, backend: MemoryKeyring) -> None:
    backend.fail_with = keyring.errors.KeyringLocked(f"locked, while reading {ACCESS}")
    with pytest.raises(StoreUnavailable) as info:
        await store.get("notion")
    assert "KeyringLocked" in str(info.value) and ACCESS not in str(info.value)
    with pytest.raises(StoreUnavailable):
        await store.set_secret("token", SECRET_VALUE)


async def test_without_a_backend_the_installed_keyring_is_used(
    tmp_path: Path, installed_keyring: MemoryKeyring
) -> None:
    store = KeyringStore(state_dir=tmp_path / "state")
    await store.set_secret("token", SECRET_VALUE)
    assert installed_keyring.entries["bastion\0secret:token"] == SECRET_VALUE
    await store.aclose()
