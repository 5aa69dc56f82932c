"""`gateway: {naming: prefixed | bare}` and a catalog entry's `prefix:` (issue 13 point 1; docs/naming.md)."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

import mcp_types as types
import pytest
from hypothesis import given
from hypothesis import strategies as st
from mcp import Client
from pydantic import ValidationError

from bastion.config.catalog import MAX_PREFIX, CatalogEntry
from bastion.config.settings import GatewaySettings
from bastion.gateway.naming import MAX_CUT_SERVER, exposed_name
from bastion.gateway.pool import Routes, build_routes
from bastion.gateway.runtime import Gateway
from bastion.gateway.upstream import Listing, UpstreamState

from .conftest import ECHO
from .test_gateway import text_of

pytestmark = pytest.mark.anyio


@dataclass
class Serving:
    """What `build_routes` reads of an upstream."""

    name: str
    listing: Listing
    prefix: str | None = None
    state: UpstreamState = UpstreamState.READY


def serving(name: str, *tools: str, prompts: tuple[str, ...] = (), prefix: str | None = None) -> Serving:
    listing = Listing(
        tools=tuple(types.Tool(name=tool, input_schema={"type": "object"}) for tool in tools),
        prompts=tuple(types.Prompt(name=prompt) for prompt in prompts),
    )
    return Serving(name, listing, prefix)


def routes(*upstreams: Serving, naming: Any = "prefixed") -> Routes:
    return build_routes(upstreams, naming=naming)  # type: ignore[arg-type]


def exposed(table: Routes) -> dict[str, tuple[str, str]]:
    return {name: (route.server, route.name) for name, route in table.tools.items()}


def test_prefixed_is_the_default_and_unchanged() -> None:
    table = routes(serving("github", "search"), serving("linear", "search"))
    assert exposed(table) == {"github__search": ("github", "search"), "linear__search": ("linear", "search")}
    assert [tool["name"] for tool in table.tools_wire] == ["github__search", "linear__search"]
    assert table.collisions == ()


def test_bare_exposes_the_upstreams_own_names() -> None:
    table = routes(serving("time", "get_current_time"), serving("everything", "echo"), naming="bare")
    assert exposed(table) == {"echo": ("everything", "echo"), "get_current_time": ("time", "get_current_time")}
    assert sorted(tool["name"] for tool in table.tools_wire) == ["echo", "get_current_time"]


def test_bare_names_two_servers_share_take_the_prefixed_form_and_are_reported() -> None:
    table = routes(serving("a", "search", "only_a"), serving("b", "search"), naming="bare")
    assert exposed(table) == {"a__search": ("a", "search"), "b__search": ("b", "search"), "only_a": ("a", "only_a")}
    assert len(table.collisions) == 1
    assert "tool 'search' is offered by 2 servers" in table.collisions[0]
    assert "'a__search' (a)" in table.collisions[0] and "'b__search' (b)" in table.collisions[0]


def test_bare_prompts_follow_the_same_rule() -> None:
    table = routes(serving("a", prompts=("greet", "x")), serving("b", prompts=("greet",)), naming="bare")
    assert set(table.prompts) == {"a__greet", "b__greet", "x"}


def test_a_bare_name_equal_to_a_prefixed_one_is_prefixed_too() -> None:
    """`b` and `c` share `x`, so `b`'s becomes `b__x`, which `a` offers as its own bare name: `a`'s
    is prefixed as well (`a__b__x`), and nothing shadows anything."""
    table = routes(serving("a", "b__x"), serving("b", "x"), serving("c", "x"), naming="bare")
    assert exposed(table) == {"a__b__x": ("a", "b__x"), "b__x": ("b", "x"), "c__x": ("c", "x")}


@given(
    st.dictionaries(
        st.sampled_from(["a", "b", "a_b", "c"]),
        st.lists(st.sampled_from(["x", "y", "b__x", "a__y", "_b__x", "c__x"]), unique=True, max_size=4),
        min_size=1,
    )
)
def test_bare_naming_never_shadows_anything(servers: dict[str, list[str]]) -> None:
    table = routes(*(serving(name, *tools) for name, tools in servers.items()), naming="bare")
    offered = {(server, tool) for server, tools in servers.items() for tool in tools}
    assert set(exposed(table).values()) == offered  # every tool reachable, under exactly one name
    assert len(table.tools_wire) == len(offered)
    assert not any("hidden" in collision for collision in table.collisions)


def test_a_prefix_names_the_servers_tools() -> None:
    table = routes(serving("github-enterprise", "search", prefix="gh"))
    assert exposed(table) == {"gh__search": ("github-enterprise", "search")}


def test_a_prefix_another_server_holds_gets_escaped_names_and_is_reported() -> None:
    table = routes(serving("gh", "search"), serving("github", "search", prefix="gh"), serving("z", "t", prefix="q"))
    names = exposed(table)
    assert names["gh__search"] == ("gh", "search")  # a server's own name wins over another's prefix
    escaped = [name for name, route in names.items() if route == ("github", "search")]
    assert len(escaped) == 1 and escaped[0].startswith("_github__search-")
    assert names["q__t"] == ("z", "t")
    assert any("asks for the prefix 'gh', which server 'gh' uses" in c for c in table.collisions)


def test_two_servers_asking_for_one_prefix_the_first_by_name_keeps_it() -> None:
    table = routes(serving("b", "t", prefix="p"), serving("a", "t", prefix="p"))
    assert exposed(table)["p__t"] == ("a", "t")
    assert exposed_name("p", "t") == "p__t"


@pytest.mark.parametrize("prefix", ["a_", "a__b", "-x", "with space", "x" * (MAX_PREFIX + 1), ""])
def test_a_prefix_must_be_an_ordinary_name(prefix: str) -> None:
    with pytest.raises(ValidationError, match="`prefix` must start with a letter or digit"):
        CatalogEntry(name="s", command=["x"], prefix=prefix)


def test_the_longest_prefix_follows_the_cut_forms_arithmetic() -> None:
    assert MAX_PREFIX == MAX_CUT_SERVER
    long = "p" * MAX_PREFIX
    assert exposed_name(long, "t" * 40).startswith(f"{long}__")


def test_naming_is_prefixed_or_bare() -> None:
    assert GatewaySettings().naming == "prefixed"
    with pytest.raises(ValidationError):
        GatewaySettings.model_validate({"naming": "plain"})


async def test_bare_naming_through_a_real_gateway() -> None:
    """A client of a `naming: bare` gateway calls the upstream's own names; the server another one
    shares a name with answers under the prefixed form."""
    settings = GatewaySettings(connect_timeout=20, request_timeout=10, naming="bare")
    entries = [
        CatalogEntry(name="solo", command=[sys.executable, ECHO, "--name", "solo"]),
        CatalogEntry(name="other", command=[sys.executable, ECHO, "--name", "other"], prefix="o"),
    ]
    async with Gateway(entries, settings) as gateway:
        async with Client(gateway.server, mode="legacy") as client:
            names = {tool.name for tool in (await client.list_tools()).tools}
            # Both echo servers offer the same tools: all of them are prefixed ("o" is other's prefix).
            assert {"solo__echo", "o__echo"} <= names
            assert "echo" not in names
            assert text_of(await client.call_tool("o__echo", {"text": "hi"})) == "hi"
        await gateway.remove("other")
        async with Client(gateway.server, mode="legacy") as client:
            names = {tool.name for tool in (await client.list_tools()).tools}
            assert "echo" in names and "solo__echo" not in names
            assert text_of(await client.call_tool("echo", {"text": "bare"})) == "bare"
            prompt = await client.get_prompt("greet", {"who": "Ada"})
            assert "Ada" in str(prompt.messages[0].content)
