"""File-system pieces shared by the file and keyring stores: safe file names, private
directories, cross-process locks with fencing tokens, and change events from a directory.

Layout of a lock directory (one set of files per server, named by `encode_name`):

    <name>.lock    flock'd while `Store.lock(server)` is held (the lease)
    <name>.wlock   flock'd around each read-modify-write (put, compare_and_set, delete)
    <name>.fence   the last fencing token granted, replaced atomically under the lease
    <name>.rev     the revision of the last deleted record, so revisions never repeat
"""

from __future__ import annotations

import builtins
import errno
import fcntl
import logging
import os
import re
import stat
import time
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from contextlib import AbstractAsyncContextManager, aclosing, asynccontextmanager, contextmanager, suppress
from pathlib import Path

import anyio
import anyio.to_thread
from pydantic import BaseModel, ConfigDict, ValidationError
from watchfiles import Change, awatch

from bastion.config.files import DIR_MODE, FILE_MODE, atomic_write, check_private
from bastion.errors import StoreError, StoreLockTimeout
from bastion.store.base import Lease
from bastion.store.models import ProviderRecord, StoreEvent

logger = logging.getLogger(__name__)

_SAFE = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_-")
_ENCODED = re.compile(r"(?:[a-z0-9_-]|%[0-9A-F]{2})+")
_MAX_ENCODED = 200
"""NAME_MAX is 255 bytes; leave room for suffixes and `atomic_write`'s temp-file affixes."""


def encode_name(name: str) -> str:
    """A file name for `name`: lower-case letters, digits, `_` and `-` stay, every other byte
    of its UTF-8 becomes `%XX`. Reversible, never starts with a dot, and distinct names stay
    distinct on case-insensitive file systems (upper-case letters are escaped)."""
    if not name:
        raise StoreError("an empty name cannot be stored", hint="give the server or secret a name")
    out = "".join(c if c in _SAFE else "".join(f"%{b:02X}" for b in c.encode("utf-8")) for c in name)
    if len(out) > _MAX_ENCODED:
        raise StoreError(
            f"name {name[:40]!r}... is too long for the file store",
            hint="use a shorter server or secret name",
        )
    return out


def decode_name(encoded: str) -> str | None:
    """The name `encode_name` made `encoded` from, or None if it is not such a file name."""
    if not _ENCODED.fullmatch(encoded):
        return None
    raw = bytearray()
    i = 0
    while i < len(encoded):
        if encoded[i] == "%":
            raw.append(int(encoded[i + 1 : i + 3], 16))
            i += 3
        else:
            raw.append(ord(encoded[i]))
            i += 1
    try:
        name = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return name if encode_name(name) == encoded else None


def names_in(directory: Path, suffix: str, *, warn: bool = True) -> dict[str, Path]:
    """name -> path for every `<encoded name><suffix>` file in `directory` (temp files skipped)."""
    found: dict[str, Path] = {}
    for entry in os.scandir(directory):
        if entry.name.startswith(".") or not entry.name.endswith(suffix):
            continue
        name = decode_name(entry.name[: -len(suffix)])
        if name is None:
            if warn:
                logger.warning("ignoring %s: not a file name the store writes", entry.path)
            continue
        found[name] = Path(entry.path)
    return found


def ensure_private_dir(path: Path) -> None:
    """Create `path` as a 0700 directory, or check and tighten an existing one."""
    try:
        path.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
        st = path.stat()
    except OSError as exc:
        raise StoreError(f"cannot create the store directory {path}: {exc.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise StoreError(f"{path} is not a directory", hint="move it away; the store needs a directory there")
    check_private(path, st, error=StoreError, refuse_shared_write=False)
    _tighten_files(path)


def _tighten_files(directory: Path) -> None:
    """Set 0600 on every file in `directory`, and remove temp files a crash left behind."""
    now = time.time()
    for entry in os.scandir(directory):
        try:
            if not entry.is_file(follow_symlinks=False):
                continue
            st = entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue  # another process's temp file, renamed into place since the scan
        if entry.name.startswith(".") and entry.name.endswith(".tmp") and now - st.st_mtime > 60:
            with suppress(FileNotFoundError):
                os.unlink(entry.path)
            continue
        if stat.S_IMODE(st.st_mode) & 0o077:
            logger.warning("%s had mode %o; setting it to 0600", entry.path, stat.S_IMODE(st.st_mode))
            with suppress(FileNotFoundError):
                os.chmod(entry.path, FILE_MODE)


def write_file(path: Path, data: bytes) -> None:
    """Replace `path` atomically (temp + fsync + rename + directory fsync), mode 0600."""
    try:
        atomic_write(path, data, FILE_MODE)
    except OSError as exc:
        raise StoreError(f"cannot write {path}: {exc.strerror}", hint="check free space and permissions") from None


def read_file(path: Path) -> bytes | None:
    """The content of `path`, or None if it does not exist."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StoreError(f"cannot read {path}: {exc.strerror}", hint="check its permissions") from None


def remove_file(path: Path) -> bool:
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise StoreError(f"cannot remove {path}: {exc.strerror}", hint="check its permissions") from None
    return True


def _open_lock_file(path: Path) -> int:
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
    except OSError as exc:
        raise StoreError(f"cannot open the lock file {path}: {exc.strerror}") from None


def _read_counter(path: Path) -> int:
    data = read_file(path)
    if data is None:
        return 0
    try:
        return int(data.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise StoreError(
            f"{path} is corrupt (expected a number)",
            hint="delete it; the store recreates it",
        ) from None


class FileLocks:
    """Per-server cross-process locks in `directory`.

    `lease()` is `Store.lock`: flock on `<name>.lock`, polled without blocking so that waiting
    is cancellable and times out, plus a per-process semaphore (flock excludes open file
    descriptions, not tasks sharing one). Not re-entrant: a task that asks again for a lease it
    holds waits and times out like anyone else. `write_lock()` is the short blocking flock that
    makes a read-modify-write atomic across processes; it is taken in worker threads.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._task_locks: dict[str, anyio.Semaphore] = {}
        ensure_private_dir(directory)

    def path(self, name: str, suffix: str) -> Path:
        return self.directory / f"{encode_name(name)}{suffix}"

    @asynccontextmanager
    async def lease(self, server: str, timeout: float) -> AsyncGenerator[Lease, None]:
        path = self.path(server, ".lock")
        deadline = anyio.current_time() + timeout
        task_lock = self._task_locks.setdefault(server, anyio.Semaphore(1))
        try:
            task_lock.acquire_nowait()  # so that timeout=0 means "try once"
        except anyio.WouldBlock:
            try:
                with anyio.fail_after(timeout):
                    await task_lock.acquire()
            except TimeoutError:
                raise _lock_timeout(server, timeout, "another task in this process holds it") from None
        try:
            fd = await _flock_polling(path, deadline, server, timeout)
            try:
                token = await anyio.to_thread.run_sync(self._next_fencing_token, server)
                yield Lease(server=server, fencing_token=token)
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)
        finally:
            task_lock.release()

    def _next_fencing_token(self, server: str) -> int:
        path = self.path(server, ".fence")
        token = _read_counter(path) + 1
        write_file(path, str(token).encode("ascii"))
        return token

    @contextmanager
    def write_lock(self, name: str) -> Iterator[None]:
        """Blocking; call from a worker thread. `name` may be a server or a reserved `.name`."""
        path = self.directory / f"{name}.wlock" if name.startswith(".") else self.path(name, ".wlock")
        fd = _open_lock_file(path)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing the last descriptor releases the flock

    def last_deleted_revision(self, server: str) -> int:
        return _read_counter(self.path(server, ".rev"))

    def remember_deleted_revision(self, server: str, revision: int) -> None:
        if revision > self.last_deleted_revision(server):
            write_file(self.path(server, ".rev"), str(revision).encode("ascii"))


async def _flock_polling(path: Path, deadline: float, server: str, timeout: float) -> int:
    fd = _open_lock_file(path)
    delay = 0.001
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return fd
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise StoreError(f"cannot lock {path}: {exc.strerror}") from None
            remaining = deadline - anyio.current_time()
            if remaining <= 0:
                raise _lock_timeout(server, timeout, f"another process holds {path}")
            await anyio.sleep(min(delay, remaining))
            delay = min(delay * 2, 0.02)
    except BaseException:
        os.close(fd)
        raise


def _lock_timeout(server: str, timeout: float, why: str) -> StoreLockTimeout:
    return StoreLockTimeout(
        f"timed out after {timeout:g}s waiting for the store lock of {server!r}",
        hint=f"{why}; retry once it finishes refreshing",
    )


class _Revision(BaseModel):
    model_config = ConfigDict(extra="ignore")
    revision: int


def read_revision(path: Path) -> int | None:
    """The `revision` field of the JSON file at `path`; None if it is gone or unreadable."""
    data = read_file(path)
    if data is None:
        return None
    try:
        return _Revision.model_validate_json(data).revision
    except ValidationError:
        return None


_Signature = tuple[int, int, int, int]
"""(inode, size, mtime_ns, ctime_ns): changes whenever a file is replaced."""


class _Known:
    def __init__(self, signature: _Signature, revision: int | None) -> None:
        self.signature = signature
        self.revision = revision


class DirWatcher:
    """`Store.watch()` over a directory of `<encoded server>.json` files that each hold a
    `revision` (the file store's records, the keyring store's change markers).

    Mechanism: `watchfiles.awatch` (inotify / FSEvents / kqueue; polling when
    `WATCHFILES_FORCE_POLLING` is set) wakes the watcher within ~`STEP_MS` of a change; on each
    wake-up, and every `RESCAN_MS` regardless, the directory is re-scanned and compared with
    the last scan (file signature, then revision). The re-scan makes the result independent of
    which notifications the OS delivered, and bounds the delay for anything missed (including
    changes made between `watch()` and the watcher's start) to `RESCAN_MS`. One event is
    emitted per new revision seen; writes faster than the watcher coalesce into the latest.
    """

    STEP_MS = 20
    DEBOUNCE_MS = 200
    RESCAN_MS = 200

    def __init__(self, directory: Path, suffix: str = ".json") -> None:
        self.directory = directory
        self.suffix = suffix
        self._stops: set[anyio.Event] = set()
        self._closed = False

    def watch(self) -> AsyncIterator[StoreEvent]:
        # Scan now, so changes made after watch() returns are reported even if the consumer
        # starts iterating later.
        return self._events(self._scan({}, set())[1])

    async def _events(self, known: dict[str, _Known]) -> AsyncGenerator[StoreEvent, None]:
        if self._closed:
            return
        stop = anyio.Event()
        self._stops.add(stop)
        try:
            events, known = await anyio.to_thread.run_sync(self._scan, known, set())
            for event in events:
                yield event
            changes_iter = awatch(
                self.directory,
                watch_filter=self._relevant,
                stop_event=stop,
                step=self.STEP_MS,
                debounce=self.DEBOUNCE_MS,
                rust_timeout=self.RESCAN_MS,
                yield_on_timeout=True,
                recursive=False,
            )
            async with aclosing(changes_iter):
                async for changes in changes_iter:
                    hinted = {Path(path).name for _, path in changes}
                    events, known = await anyio.to_thread.run_sync(self._scan, known, hinted)
                    for event in events:
                        yield event
        finally:
            stop.set()
            self._stops.discard(stop)

    def close(self) -> None:
        """End every watch iterator (each finishes within `STEP_MS`)."""
        self._closed = True
        for stop in self._stops:
            stop.set()

    def _relevant(self, change: Change, path: str) -> bool:
        name = os.path.basename(path)
        return not name.startswith(".") and name.endswith(self.suffix)

    def _scan(self, known: dict[str, _Known], hinted: set[str]) -> tuple[list[StoreEvent], dict[str, _Known]]:
        current: dict[str, _Known] = {}
        events: list[StoreEvent] = []
        for server, path in sorted(names_in(self.directory, self.suffix, warn=False).items()):
            try:
                st = path.stat()
            except FileNotFoundError:
                continue
            signature = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
            before = known.get(server)
            if before is not None and before.signature == signature and path.name not in hinted:
                current[server] = before
                continue
            revision = read_revision(path)
            current[server] = _Known(signature, revision)
            if before is None or before.revision != revision:
                events.append(StoreEvent(server=server, kind="changed", revision=revision))
        for server in sorted(known.keys() - current.keys()):
            events.append(StoreEvent(server=server, kind="deleted"))
        return events, current


class LocalRecordStore:
    """What `FileStore` and `KeyringStore` share: records read and written by blocking helpers
    (`_read`, `_read_all`, `_write`, `_delete`) run on a worker thread, leases from `FileLocks`,
    and changes from a `DirWatcher`. Subclasses set `_locks` and `_watcher` and supply the helpers."""

    _locks: FileLocks
    _watcher: DirWatcher

    def _read(self, server: str) -> ProviderRecord | None:
        raise NotImplementedError

    def _read_all(self) -> list[ProviderRecord]:
        raise NotImplementedError

    def _write(self, record: ProviderRecord, expected_revision: int | None) -> ProviderRecord | None:
        raise NotImplementedError

    def _delete(self, server: str) -> bool:
        raise NotImplementedError

    async def get(self, server: str) -> ProviderRecord | None:
        return await anyio.to_thread.run_sync(self._read, server)

    async def list(self) -> builtins.list[ProviderRecord]:
        return await anyio.to_thread.run_sync(self._read_all)

    async def put(self, record: ProviderRecord) -> ProviderRecord:
        written = await anyio.to_thread.run_sync(self._write, record, None)
        assert written is not None  # unconditional writes always succeed
        return written

    async def compare_and_set(self, record: ProviderRecord, expected_revision: int) -> ProviderRecord | None:
        return await anyio.to_thread.run_sync(self._write, record, expected_revision)

    async def delete(self, server: str) -> bool:
        return await anyio.to_thread.run_sync(self._delete, server)

    def lock(self, server: str, *, timeout: float = 30.0) -> AbstractAsyncContextManager[Lease]:
        return self._locks.lease(server, timeout)

    def watch(self) -> AsyncIterator[StoreEvent]:
        return self._watcher.watch()
