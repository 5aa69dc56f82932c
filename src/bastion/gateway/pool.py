"""Aggregation and routing over the upstreams that are ready.

`Routes` is an immutable snapshot rebuilt whenever an upstream's state or listing changes:
plain dicts from an exposed name (or resource URI) to `(server, original name)`, plus the
aggregated list results already in wire form. Request handlers read `pool.routes` once and
do one dict lookup; nothing here touches a session, so a leaner forwarding path can replace
the generic one without changing discovery or naming.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

import mcp_types as types
from mcp.shared.dispatcher import ProgressFnT
from mcp.shared.exceptions import MCPError
from mcp.shared.uri_template import InvalidUriTemplate, UriTemplate
from mcp_types import INTERNAL_ERROR, INVALID_PARAMS, SERVER_INFO_META_KEY

from bastion.gateway.naming import SEPARATOR, escaped_name, exposed_name
from bastion.gateway.startup import StartupGate
from bastion.gateway.upstream import Listing, Upstream, UpstreamState

logger = logging.getLogger(__name__)


class Route(NamedTuple):
    server: str
    name: str
    """The upstream's own name (tool or prompt name, resource URI, or template)."""


@dataclass(frozen=True, slots=True)
class Changes:
    """Which aggregated lists differ between two snapshots."""

    tools: bool = False
    prompts: bool = False
    resources: bool = False

    def __bool__(self) -> bool:
        return self.tools or self.prompts or self.resources


LIST_ENVELOPE: dict[str, Any] = {"resultType": "complete", "ttlMs": 0, "cacheScope": "private"}
"""Listings change whenever an upstream does: never fresh for long, never shared across callers.
(Required fields on the 2026-07-28 wire; sieved out for handshake-era clients.)"""


_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")


def literal_prefix(uri_template: str) -> str:
    """The text of a URI template before its first expression (RFC 6570 §2.2): the part every URI
    it matches starts with."""
    return uri_template.split("{", 1)[0]


def is_catch_all(uri_template: str) -> bool:
    """True when a template would take URIs of any scheme, and is refused: its literal prefix does
    not start with a whole RFC 3986 scheme and its `:` (§3.1). `{+uri}`, `{scheme}://{+rest}`,
    `x{y}`, `ht{+rest}` and `/files/{path}` are catch-alls; `notes://{id}`, `file:///{+path}` and
    `https://api.example.com/{+path}` are not (a broader one still loses to a more specific one)."""
    return _SCHEME.match(literal_prefix(uri_template)) is None


def _specificity(template: str) -> tuple[int, int]:
    """Sort key of a template, most specific first: the longer literal prefix, then more literal text."""
    literal = re.sub(r"\{[^}]*\}", "", template)
    return (-len(literal_prefix(template)), -len(literal))


def _dump(model: types.Tool | types.Prompt | types.Resource | types.ResourceTemplate) -> dict[str, Any]:
    return model.model_dump(by_alias=True, mode="json", exclude_none=True)


@dataclass(frozen=True, slots=True)
class Routes:
    """One consistent view of everything the gateway serves."""

    tools: dict[str, Route] = field(default_factory=dict)
    prompts: dict[str, Route] = field(default_factory=dict)
    resources: dict[str, Route] = field(default_factory=dict)
    templates: tuple[tuple[UriTemplate, Route], ...] = ()
    """Most specific first (`_specificity`), so the first match is the one to route to."""
    tools_wire: tuple[dict[str, Any], ...] = ()
    prompts_wire: tuple[dict[str, Any], ...] = ()
    resources_wire: tuple[dict[str, Any], ...] = ()
    templates_wire: tuple[dict[str, Any], ...] = ()
    collisions: tuple[str, ...] = ()

    def resource_route(self, uri: str) -> Route | None:
        """The server that lists `uri` as a concrete resource; else the one whose matching template
        has the longest literal prefix (catch-all templates are never routed to)."""
        route = self.resources.get(uri)
        if route is not None:
            return route
        for template, candidate in self.templates:
            if template.match(uri) is not None:
                return candidate
        return None

    def template_route(self, uri_template: str) -> Route | None:
        for _, candidate in self.templates:
            if candidate.name == uri_template:
                return candidate
        return None

    def diff(self, other: Routes) -> Changes:
        return Changes(
            tools=self.tools_wire != other.tools_wire,
            prompts=self.prompts_wire != other.prompts_wire,
            resources=self.resources_wire != other.resources_wire or self.templates_wire != other.templates_wire,
        )


Naming = Literal["prefixed", "bare"]
"""`gateway: {naming}`: `prefixed` exposes `<prefix>__<name>` (the default: stable whatever else
is enabled); `bare` exposes the upstream's own names, as Docker's gateway does, and gives the
prefixed form to the names two servers share (docs/naming.md)."""

_Item = tuple[str, Route, dict[str, Any]]
"""(exposed name, route, wire form with that name)."""


@dataclass(frozen=True, slots=True)
class _Exposed:
    """One upstream's listing as the gateway exposes it, computed once per listing: the pydantic
    dumps and renames are the expensive part of a rebuild, and a rebuild runs on every state
    change of every upstream (100 upstreams starting = hundreds of rebuilds)."""

    listing: Listing
    key: tuple[str, bool]
    """(the prefix its names were built with, whether they are escaped): recomputed when it changes."""
    tools: tuple[_Item, ...]
    prompts: tuple[_Item, ...]
    resources: tuple[_Item, ...]
    templates: tuple[tuple[str, dict[str, Any]], ...]


def _expose(server: str, listing: Listing, prefix: str | None = None, *, escaped: bool = False) -> _Exposed:
    """`server`'s listing with its prefixed names: `<prefix>__<name>` (the prefix defaults to the
    server's name), or the escaped form of the server's own name when another server holds the prefix."""
    key = prefix or server

    def name_of(original: str) -> str:
        return escaped_name(server, original) if escaped else exposed_name(key, original)

    tools = tuple(
        (name, Route(server, tool.name), {**_dump(tool), "name": name})
        for tool in listing.tools
        for name in (name_of(tool.name),)
    )
    prompts = tuple(
        (name, Route(server, prompt.name), {**_dump(prompt), "name": name})
        for prompt in listing.prompts
        for name in (name_of(prompt.name),)
    )
    resources = tuple(
        (uri, Route(server, uri), _dump(resource)) for resource in listing.resources for uri in (str(resource.uri),)
    )
    templates = tuple((template.uri_template, _dump(template)) for template in listing.resource_templates)
    return _Exposed(listing, (key, escaped), tools, prompts, resources, templates)


def _bare(kind: str, per_server: list[tuple[_Item, ...]], collisions: list[str]) -> list[_Item]:
    """`naming: bare`: each item under the upstream's own name, unless two servers share it — then
    each of them keeps its prefixed name — or it equals a prefixed name given out that way (then
    it is prefixed too, until nothing clashes). Prefixed names never clash among themselves, so
    the result is injective; the clashes are reported in `collisions`."""
    items = [item for group in per_server for item in group]
    owners: dict[str, list[_Item]] = {}
    for item in items:
        owners.setdefault(item[1].name, []).append(item)
    prefixed = {(item[1].server, item[1].name) for group in owners.values() if len(group) > 1 for item in group}
    while True:
        taken = {item[0] for item in items if (item[1].server, item[1].name) in prefixed}
        more = {
            (item[1].server, item[1].name)
            for item in items
            if (item[1].server, item[1].name) not in prefixed and item[1].name in taken
        }
        if not more:
            break
        prefixed |= more
    for name, group in owners.items():
        if len(group) > 1:
            shown = ", ".join(f"{item[0]!r} ({item[1].server})" for item in group)
            message = f"{kind} {name!r} is offered by {len(group)} servers; exposed as {shown}"
            logger.warning("%s", message)
            collisions.append(message)
    chosen: list[_Item] = []
    for item in items:
        exposed, route, wire = item
        if (route.server, route.name) in prefixed:
            chosen.append(item)
        else:
            chosen.append((route.name, route, {**wire, "name": route.name}))
    return chosen


def build_routes(
    upstreams: Iterable[Upstream], cache: dict[str, _Exposed] | None = None, naming: Naming = "prefixed"
) -> Routes:
    """Aggregate the listings of the ready upstreams, in server-name order.

    Exposed tool and prompt names cannot collide by construction (see naming.py): each server's
    names begin with its prefix (its `prefix:` or its name); a server asking for a prefix another
    server (first by name) holds gets escaped names, reported in `collisions`. With `naming:
    bare`, names are the upstream's own except where two servers share one (`_bare`). Resource URIs
    are not renamed, so two servers may claim one: the first server (by name) serves it and the
    clash is logged and reported in `collisions`, never shadowed silently.

    A read by URI goes to the server listing it as a concrete resource, else to the most specific
    matching template (longest literal prefix), never to the first server in name order. Catch-all
    templates (`is_catch_all`) are refused: neither listed nor routed to, and reported in
    `collisions`; so are two servers' templates sharing one literal prefix.

    `cache` (server name -> exposed listing) carries the per-listing work across rebuilds.
    """
    cache = {} if cache is None else cache
    tools: dict[str, Route] = {}
    prompts: dict[str, Route] = {}
    resources: dict[str, Route] = {}
    tools_wire: list[dict[str, Any]] = []
    prompts_wire: list[dict[str, Any]] = []
    resources_wire: list[dict[str, Any]] = []
    templates_wire: list[dict[str, Any]] = []
    collisions: list[str] = []

    template_owners: dict[str, str] = {}
    prefix_owners: dict[str, tuple[str, str]] = {}
    ordered: list[tuple[tuple[int, int, str, str], UriTemplate, Route]] = []

    def clash(kind: str, name: str, first: str, second: str) -> None:
        message = f"{kind} {name!r} of server {second!r} is hidden: server {first!r} already serves it"
        logger.warning("%s", message)
        collisions.append(message)

    def merge(
        kind: str,
        entries: Iterable[tuple[str, Route, dict[str, Any]]],
        table: dict[str, Route],
        wire_list: list[dict[str, Any]],
    ) -> None:
        """Add one server's entries; the first server (by name) keeps a clashing name."""
        for name, route, wire in entries:
            if (existing := table.get(name)) is not None:
                clash(kind, name, existing.server, route.server)
                continue
            table[name] = route
            wire_list.append(wire)

    ready = [upstream for upstream in sorted(upstreams, key=lambda u: u.name) if upstream.state is UpstreamState.READY]
    # A server's own name is its prefix unless it sets `prefix:`; own names are claimed first (no
    # `prefix:` can take a server's name from it), then explicit prefixes in server-name order.
    prefix_holders: dict[str, str] = {}
    for upstream in sorted(ready, key=lambda u: u.prefix is not None):
        prefix_holders.setdefault(upstream.prefix or upstream.name, upstream.name)
    exposures: list[tuple[str, _Exposed]] = []
    for upstream in ready:
        server, listing = upstream.name, upstream.listing
        prefix = upstream.prefix or server
        holder = prefix_holders[prefix]
        escaped = holder != server
        if escaped:
            message = (
                f"server {server!r} asks for the prefix {prefix!r}, which server {holder!r} uses: "
                f"its tools and prompts get escaped names (give it another `prefix:`)"
            )
            logger.warning("%s", message)
            collisions.append(message)
        exposed = cache.get(server)
        if exposed is None or exposed.listing is not listing or exposed.key != (prefix, escaped):
            exposed = cache[server] = _expose(server, listing, prefix, escaped=escaped)
        exposures.append((server, exposed))
    if naming == "bare":
        merge("tool", _bare("tool", [e.tools for _, e in exposures], collisions), tools, tools_wire)
        merge("prompt", _bare("prompt", [e.prompts for _, e in exposures], collisions), prompts, prompts_wire)
    else:
        for _, exposed in exposures:
            merge("tool", exposed.tools, tools, tools_wire)
            merge("prompt", exposed.prompts, prompts, prompts_wire)
    for server, exposed in exposures:
        merge("resource", exposed.resources, resources, resources_wire)
        for raw, wire in exposed.templates:
            if (first := template_owners.get(raw)) is not None:
                clash("resource template", raw, first, server)
                continue
            if is_catch_all(raw):
                message = (
                    f"resource template {raw!r} of server {server!r} is refused: it would take URIs meant for "
                    "other servers (a template must start with its scheme, e.g. `notes://{id}`)"
                )
                logger.warning("%s", message)
                collisions.append(message)
                continue
            try:
                parsed = UriTemplate.parse(raw)
            except InvalidUriTemplate:
                logger.warning("server %r: resource template %r is invalid; skipped", server, raw)
                continue
            prefix = literal_prefix(raw)
            if (sharer := prefix_owners.get(prefix)) is not None and sharer[0] != server:
                message = (
                    f"resource template {raw!r} of server {server!r} shares the literal prefix {prefix!r} with "
                    f"{sharer[1]!r} of server {sharer[0]!r}: a URI both match goes to {sharer[0]!r}"
                )
                logger.warning("%s", message)
                collisions.append(message)
            prefix_owners.setdefault(prefix, (server, raw))
            template_owners[raw] = server
            ordered.append(((*_specificity(raw), server, raw), parsed, Route(server, raw)))
            templates_wire.append(wire)

    templates = [(parsed, route) for _, parsed, route in sorted(ordered, key=lambda item: item[0])]
    return Routes(
        tools=tools,
        prompts=prompts,
        resources=resources,
        templates=tuple(templates),
        tools_wire=tuple(tools_wire),
        prompts_wire=tuple(prompts_wire),
        resources_wire=tuple(resources_wire),
        templates_wire=tuple(templates_wire),
        collisions=tuple(collisions),
    )


class Pool:
    """The upstreams by name, and the current routing snapshot."""

    def __init__(self, on_routes_changed: Callable[[Changes], None], naming: Naming = "prefixed") -> None:
        self.naming: Naming = naming
        self.upstreams: dict[str, Upstream] = {}
        self.routes = Routes()
        self._on_routes_changed = on_routes_changed
        self._exposed: dict[str, _Exposed] = {}
        self.startup = StartupGate()
        """Closed while upstreams of the gateway's start are on their first attempt (startup.py):
        listings, and requests for a name not known yet, wait for it."""

    def rebuild(self) -> None:
        """Recompute the snapshot; report which lists changed. Cheap enough to run on every state change
        (each upstream's listing is dumped and renamed once, see `_Exposed`)."""
        for gone in self._exposed.keys() - self.upstreams.keys():
            del self._exposed[gone]
        new = build_routes(self.upstreams.values(), self._exposed, self.naming)
        changes = new.diff(self.routes)
        self.routes = new
        if changes:
            self._on_routes_changed(changes)

    # -- forwarding: one snapshot read, one dict lookup, one request on a held session ----------

    def _upstream(self, route: Route) -> Upstream:
        upstream = self.upstreams.get(route.server)
        if upstream is None:
            raise MCPError(code=INTERNAL_ERROR, message=f"server {route.server!r} is no longer enabled")
        return upstream

    async def settled_routes(self) -> Routes:
        """The snapshot a listing serves: at once when the startup gate is open (one flag), else
        once the upstreams still starting have settled or the gate's bound has passed."""
        if not self.startup.open:
            await self.startup.wait()
        return self.routes

    async def _missing_tool(self, name: str) -> Route:
        """A tool name not in the snapshot: the server may still be starting (a one-shot client
        calls by name before any listing), so wait for the startup gate once; else say why."""
        route = (await self.settled_routes()).tools.get(name)
        if route is None:
            self._raise_if_unavailable(name)
            raise MCPError(code=INVALID_PARAMS, message=f"unknown tool {name!r}")
        return route

    async def _missing_resource(self, uri: str) -> Route:
        """A URI no ready server claims: wait for the startup gate once, as `_missing_tool`."""
        route = (await self.settled_routes()).resource_route(uri)
        if route is None:
            # SEP-2164: Invalid Params, with the URI asked for in `data`.
            raise MCPError(code=INVALID_PARAMS, message=f"unknown resource {uri!r}", data={"uri": uri})
        return route

    def _raise_if_unavailable(self, name: str) -> None:
        """A name of a server that is not ready gets that server's story, not "unknown"."""
        server, separator, _ = name.partition(SEPARATOR)
        upstream = self.upstreams.get(server) if separator else None
        if upstream is not None and upstream.state is not UpstreamState.READY:
            raise MCPError(code=INTERNAL_ERROR, message=upstream.unavailable_message())

    async def call_tool(
        self, params: types.CallToolRequestParams, progress: ProgressFnT | None = None
    ) -> dict[str, Any]:
        route = self.routes.tools.get(params.name) or await self._missing_tool(params.name)
        upstream, original = self._upstream(route), route.name
        request = types.CallToolRequest(params=params.model_copy(update={"name": original, "meta": None}))
        return _own_result(await upstream.send(request, progress=progress))

    # -- the lean path's entry points (lean.py): wire params in, the gateway's result dict out -----

    async def call_tool_raw(self, name: str, arguments: dict[str, Any] | None) -> dict[str, Any]:
        """`call_tool` for already-validated wire params (no `_meta`, no progress)."""
        route = self.routes.tools.get(name) or await self._missing_tool(name)
        upstream, original = self._upstream(route), route.name
        params: dict[str, Any] = {"name": original}
        if arguments is not None:
            params["arguments"] = arguments
        if upstream.can_send_raw():
            return _own_result(await upstream.send_raw("tools/call", params))
        request = types.CallToolRequest(params=types.CallToolRequestParams(name=original, arguments=arguments))
        return _own_result(await upstream.send(request))

    async def read_resource_raw(self, uri: str) -> dict[str, Any]:
        """`read_resource` for an already-validated URI (no `_meta`, no progress)."""
        upstream = self._upstream(self.routes.resource_route(uri) or await self._missing_resource(uri))
        if upstream.can_send_raw():
            return _own_result(await upstream.send_raw("resources/read", {"uri": uri}))
        request = types.ReadResourceRequest(params=types.ReadResourceRequestParams(uri=uri))
        return _own_result(await upstream.send(request))

    async def get_prompt(
        self, params: types.GetPromptRequestParams, progress: ProgressFnT | None = None
    ) -> dict[str, Any]:
        route = self.routes.prompts.get(params.name)
        if route is None and not self.startup.open:
            route = (await self.settled_routes()).prompts.get(params.name)
        if route is None:
            self._raise_if_unavailable(params.name)
            raise MCPError(code=INVALID_PARAMS, message=f"unknown prompt {params.name!r}")
        request = types.GetPromptRequest(params=params.model_copy(update={"name": route.name, "meta": None}))
        return _own_result(await self._upstream(route).send(request, progress=progress))

    async def read_resource(
        self, params: types.ReadResourceRequestParams, progress: ProgressFnT | None = None
    ) -> dict[str, Any]:
        route = self.routes.resource_route(params.uri) or await self._missing_resource(params.uri)
        request = types.ReadResourceRequest(params=params.model_copy(update={"meta": None}))
        return _own_result(await self._upstream(route).send(request, progress=progress))

    async def complete(self, params: types.CompleteRequestParams) -> dict[str, Any]:
        ref = params.ref
        if not self.startup.open:
            await self.settled_routes()
        if isinstance(ref, types.PromptReference):
            route = self.routes.prompts.get(ref.name)
            new_ref: types.PromptReference | types.ResourceTemplateReference | None = (
                None if route is None else ref.model_copy(update={"name": route.name})
            )
        else:
            route = self.routes.template_route(ref.uri) or self.routes.resources.get(ref.uri)
            new_ref = ref
        if route is None or new_ref is None:
            raise MCPError(code=INVALID_PARAMS, message="unknown completion reference")
        request = types.CompleteRequest(params=params.model_copy(update={"ref": new_ref, "meta": None}))
        return _own_result(await self._upstream(route).send(request))


def _own_result(result: dict[str, Any]) -> dict[str, Any]:
    """Make an upstream's result the gateway's: drop the upstream's identity stamp (the
    downstream sees the gateway's own) and mark a handshake-era result complete, which the
    2026-07-28 wire requires (handshake-era downstreams have it sieved out again)."""
    if "resultType" not in result:
        result["resultType"] = "complete"
    meta = result.get("_meta")
    if isinstance(meta, dict) and SERVER_INFO_META_KEY in meta:
        rest = {key: value for key, value in meta.items() if key != SERVER_INFO_META_KEY}
        if rest:
            result["_meta"] = rest
        else:
            del result["_meta"]
    return result
