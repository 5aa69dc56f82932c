"""`resources/read` goes to the server that owns the URI: a concrete resource first, then the most
specific template (longest literal prefix); catch-all templates are refused and reported."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import mcp_types as types
import pytest
from mcp.shared.exceptions import MCPError
from mcp_types import INVALID_PARAMS

from bastion.gateway.pool import Pool, build_routes, is_catch_all
from bastion.gateway.upstream import Listing, UpstreamState

pytestmark = pytest.mark.anyio


@dataclass
class FakeUpstream:
    """What `build_routes` and `Pool.read_resource` use of an `Upstream`: name, state, listing, send."""

    name: str
    listing: Listing
    state: UpstreamState = UpstreamState.READY
    reads: list[str] = field(default_factory=list)
    prefix: str | None = None

    async def send(self, request: Any, progress: Any = None) -> dict[str, Any]:
        self.reads.append(request.params.uri)
        return {"contents": []}

    def can_send_raw(self) -> bool:
        return False


def serving(name: str, *templates: str, resources: tuple[str, ...] = ()) -> FakeUpstream:
    listing = Listing(
        resources=tuple(types.Resource(uri=uri, name=uri) for uri in resources),
        resource_templates=tuple(types.ResourceTemplate(uri_template=t, name=t) for t in templates),
    )
    return FakeUpstream(name, listing)


async def read_through(upstreams: list[FakeUpstream], uri: str) -> str:
    """The name of the server a read of `uri` reaches."""
    pool = Pool(lambda changes: None)
    pool.upstreams = {u.name: u for u in upstreams}  # type: ignore[misc]
    pool.rebuild()
    await pool.read_resource(types.ReadResourceRequestParams(uri=uri))
    [reached] = [u.name for u in upstreams if uri in u.reads]
    return reached


async def test_a_catch_all_template_of_an_earlier_server_does_not_take_another_servers_reads() -> None:
    """`a-thief` sorts first and lists `{+uri}`; the read of a `notes://` URI still goes to `notes`."""
    thief = serving("a-thief", "{+uri}")
    notes = serving("notes", "notes://pages/{id}")
    assert await read_through([thief, notes], "notes://pages/42") == "notes"
    assert thief.reads == []


async def test_the_longest_literal_prefix_wins_over_name_order() -> None:
    broad = serving("a-files", "file:///{+path}")
    narrow = serving("z-project", "file:///home/me/project/{+path}")
    assert await read_through([broad, narrow], "file:///home/me/project/README.md") == "z-project"
    assert await read_through([broad, narrow], "file:///etc/hosts") == "a-files"


async def test_a_broad_template_does_not_take_reads_of_a_more_specific_one() -> None:
    """`a-fetch` lists `https://{+rest}`; reads under the API another server templates go there."""
    fetch = serving("a-fetch", "https://{+rest}")
    api = serving("z-api", "https://api.example.com/items/{id}")
    assert await read_through([fetch, api], "https://api.example.com/items/7") == "z-api"


async def test_a_concrete_resource_wins_over_any_template() -> None:
    templated = serving("a-templates", "notes://pages/{id}")
    concrete = serving("z-concrete", resources=("notes://pages/1",))
    assert await read_through([templated, concrete], "notes://pages/1") == "z-concrete"


@pytest.mark.parametrize("template", ["{+uri}", "{scheme}://{+rest}", "x{y}", "ht{+rest}", "/files/{path}", "{/path*}"])
def test_catch_all_templates_are_refused_listed_nowhere_and_reported(template: str) -> None:
    assert is_catch_all(template)
    routes = build_routes([serving("greedy", template)])  # type: ignore[list-item]
    assert routes.templates == () and routes.templates_wire == ()
    assert routes.resource_route("https://host/path") is None
    assert any("greedy" in clash and template in clash and "refused" in clash for clash in routes.collisions)


@pytest.mark.parametrize(
    "template", ["notes://{id}", "repo://{owner}/{repo}/contents{/path*}", "file:///{+path}", "mcp:{id}"]
)
def test_templates_that_name_their_origin_are_kept(template: str) -> None:
    assert not is_catch_all(template)
    assert [route.name for _, route in build_routes([serving("ok", template)]).templates] == [template]  # type: ignore[list-item]


def test_two_servers_sharing_a_literal_prefix_is_reported() -> None:
    routes = build_routes([serving("a", "notes://{id}/x"), serving("b", "notes://{id}/y")])  # type: ignore[list-item]
    assert any("'a'" in clash and "'b'" in clash and "notes://" in clash for clash in routes.collisions)


async def test_a_uri_no_server_serves_is_invalid_params_with_the_uri_in_data() -> None:
    """SEP-2164 (2026-07-28): resource not found is -32602 and names the URI in `data.uri`."""
    pool = Pool(lambda changes: None)
    upstream = serving("notes", "notes://{id}")
    pool.upstreams = {"notes": upstream}  # type: ignore[dict-item]
    pool.rebuild()
    with pytest.raises(MCPError) as missing:
        await pool.read_resource_raw("other://nothing")
    assert missing.value.error.code == INVALID_PARAMS
    assert missing.value.error.data == {"uri": "other://nothing"}
    assert upstream.reads == []
