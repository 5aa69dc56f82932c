"""The startup gate: a client's first listing waits for the upstreams that are still starting.

Desktop clients start a stdio gateway and list at once; an upstream started with `npx` or `uvx`
takes seconds to answer `initialize`, and whether a client re-lists on `list_changed` is up to
the client. So while any upstream of the gateway's start is making its first connection attempt,
the listings (`tools/list`, `prompts/list`, `resources/list`, `resources/templates/list`) and a
request for a name that is not known yet wait until every such upstream has settled (ready,
failed, backing off, needs-authorization) — at most `startup_wait` seconds after the start.
Then the gate opens for good: later listings never wait, and an upstream that settles after the
bound arrives with `list_changed`, as any change does.

`open` is the one flag a request reads on the hot path; nothing else is checked once the gate
is open. Upstreams added later (`Gateway.add`/`apply`, e.g. a server enabled while the gateway
runs) do not close it again.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import anyio


class StartupGate:
    """Open when no upstream of the start is still on its first attempt, or the bound has passed."""

    def __init__(self) -> None:
        self.open = True
        self._pending: set[str] = set()
        self._opened = anyio.Event()
        self._opened.set()
        self._deadline = -math.inf
        self.started_at: float | None = None
        """`anyio.current_time()` when `begin` was called (for the "ready in" line)."""
        self.opened_at: float | None = None
        self.pending_at_open: frozenset[str] = frozenset()
        """The upstreams still on their first attempt when the bound opened the gate."""

    def begin(self, names: Iterable[str], bound: float) -> None:
        """Close the gate until each of `names` has `settle`d, at most `bound` seconds from now."""
        self.started_at = anyio.current_time()
        self._pending = set(names)
        if not self._pending:
            self._finish()
            return
        self.open = False
        self.opened_at = None
        self._opened = anyio.Event()
        self._deadline = self.started_at + bound

    def settle(self, name: str) -> None:
        """`name` has finished its first attempt (or was removed); open when it was the last."""
        if self.open or name not in self._pending:
            return
        self._pending.discard(name)
        if not self._pending:
            self._finish()

    async def wait(self) -> None:
        """Return once the gate is open (at once when it is)."""
        if self.open:
            return
        with anyio.move_on_after(max(0.0, self._deadline - anyio.current_time())):
            await self._opened.wait()
        self._finish()

    async def expire(self) -> None:
        """Open the gate at the bound even if nobody waits (run in the gateway's task group), so
        that the one-flag check of later requests stops seeing it closed."""
        await self.wait()

    def _finish(self) -> None:
        if not self.open or self.opened_at is None:
            self.opened_at = anyio.current_time()
            self.pending_at_open = frozenset(self._pending)
        self.open = True
        self._opened.set()
