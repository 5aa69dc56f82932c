"""Upstream lists are read page by page (nextCursor), and a paginator that never ends is cut off."""

from __future__ import annotations

from typing import Any

import mcp_types as types
import pytest

from bastion.gateway import upstream
from bastion.gateway.upstream import _all_pages

pytestmark = pytest.mark.anyio


def tool(name: str) -> types.Tool:
    return types.Tool(name=name, input_schema={"type": "object"})


async def test_all_pages_follows_cursors_in_order() -> None:
    pages = {None: (["a", "b"], "p2"), "p2": (["c"], "p3"), "p3": (["d"], None)}
    seen: list[str | None] = []

    async def fetch(*, params: types.PaginatedRequestParams) -> types.ListToolsResult:
        seen.append(params.cursor)
        names, cursor = pages[params.cursor]
        return types.ListToolsResult(tools=[tool(n) for n in names], next_cursor=cursor)

    tools = await _all_pages(fetch, lambda page: (page.tools, page.next_cursor))
    assert [t.name for t in tools] == ["a", "b", "c", "d"]
    assert seen == [None, "p2", "p3"]


async def test_endless_pagination_stops_at_the_page_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(upstream, "MAX_LIST_PAGES", 5)
    calls: list[Any] = []

    async def fetch(*, params: types.PaginatedRequestParams) -> types.ListToolsResult:
        calls.append(params.cursor)
        return types.ListToolsResult(tools=[tool(f"t{len(calls)}")], next_cursor="again")

    tools = await _all_pages(fetch, lambda page: (page.tools, page.next_cursor))
    assert len(calls) == 5 and len(tools) == 5
