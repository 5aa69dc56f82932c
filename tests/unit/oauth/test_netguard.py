"""The OAuth client's guarded transport (issue 12, points 8 and 11), on real loopback sockets:
resolve once, check, connect to the checked address with the URL's name kept for Host, SNI and
certificate verification; a body cap and a deadline per request; one message for every way of
not getting an answer."""

from __future__ import annotations

import time
from ipaddress import ip_address
from pathlib import Path

import anyio
import httpx2
import pytest
from tests.unit.oauth.hostile import (
    FakeResolver,
    LoopbackBackend,
    closed_port,
    endless,
    respond,
    self_signed,
    serve,
    silent,
    trickle,
)

from bastion.oauth import endpoint_security
from bastion.oauth.netguard import AddressRefused, GuardedTransport, ResponseTooLarge, Unreachable, serving

pytestmark = pytest.mark.anyio

PUBLIC = "93.184.216.34"
"""A public address, for classification only: the test backend stands in 127.0.0.1 for it."""
NO_ANCHORS: tuple[str, ...] = ()
"""No enabled server: outside an operation, only public addresses."""


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def client(
    resolver: FakeResolver | None = None,
    backend: LoopbackBackend | None = None,
    *,
    anchors: tuple[str, ...] = ("http://127.0.0.1/mcp",),
    **options: object,
) -> httpx2.AsyncClient:
    transport = GuardedTransport(
        resolver=resolver or FakeResolver({}),
        network_backend=backend or LoopbackBackend(),
        anchors=lambda: anchors,
        **options,  # type: ignore[arg-type]
    )
    return httpx2.AsyncClient(transport=transport, trust_env=False, timeout=httpx2.Timeout(30.0, connect=10.0))


# -- SSRF: which addresses --------------------------------------------------------------------


async def test_name_resolving_to_a_private_address_is_refused_for_a_loopback_server() -> None:
    """evil.test → 10.0.0.1 while the MCP server is on 127.0.0.1: refused before any connection."""
    backend = LoopbackBackend(stand_ins=["10.0.0.1"])
    async with serve(respond()) as server, client(FakeResolver({"evil.test": ["10.0.0.1"]}), backend) as http:
        with serving(server.url("/mcp")), pytest.raises(AddressRefused) as info:
            await http.get(server.url("/.well-known/x", host="evil.test"))
    assert "10.0.0.1" in str(info.value) and "private" in str(info.value)
    assert f"evil.test:{server.port}" in str(info.value)
    assert backend.asked == [] and server.seen == []


async def test_name_resolving_to_loopback_is_refused_for_a_public_server() -> None:
    resolver = FakeResolver({"mcp.example.test": [PUBLIC], "evil.test": ["127.0.0.1"]})
    async with serve(respond()) as server, client(resolver) as http:
        with serving("https://mcp.example.test/mcp"), pytest.raises(AddressRefused, match="loopback"):
            await http.get(server.url("/", host="evil.test"))
    assert server.seen == []


async def test_intranet_name_is_allowed_when_the_mcp_server_is_on_the_intranet() -> None:
    """intranet.test → 10.2.2.2 for an MCP server on 10.1.1.1: the same class, so it is used —
    and the connection goes to 10.2.2.2 (the test backend stands 127.0.0.1 in for it)."""
    resolver = FakeResolver({"mcp.intranet.test": ["10.1.1.1"], "auth.intranet.test": ["10.2.2.2"]})
    backend = LoopbackBackend(stand_ins=["10.2.2.2"])
    async with serve(respond(body={"ok": True})) as server, client(resolver, backend) as http:
        with serving(f"http://mcp.intranet.test:{server.port}/mcp"):
            response = await http.get(server.url("/meta", host="auth.intranet.test"))
    assert response.json() == {"ok": True}
    assert backend.asked == ["10.2.2.2"]
    assert server.seen[0].headers["host"] == f"auth.intranet.test:{server.port}"


async def test_literal_loopback_endpoint_for_a_loopback_server_works() -> None:
    async with serve(respond(body={"ok": True})) as server, client() as http:
        with serving(server.url("/mcp")):
            response = await http.get(server.url("/token"))
    assert response.status_code == 200


async def test_literal_private_endpoint_is_refused_for_a_public_server() -> None:
    resolver = FakeResolver({"mcp.example.test": [PUBLIC]})
    async with client(resolver) as http:
        with serving("https://mcp.example.test/mcp"), pytest.raises(AddressRefused):
            await http.get("http://192.168.1.1/token")


async def test_a_name_with_one_private_address_among_public_ones_is_refused() -> None:
    resolver = FakeResolver({"mcp.example.test": [PUBLIC], "mixed.test": [PUBLIC, "10.0.0.7"]})
    backend = LoopbackBackend(stand_ins=[PUBLIC])
    async with client(resolver, backend) as http:
        with serving("https://mcp.example.test/mcp"), pytest.raises(AddressRefused, match="10.0.0.7"):
            await http.get("http://mixed.test/token")
    assert backend.asked == []


async def test_metadata_address_is_refused_even_for_a_server_on_the_same_network() -> None:
    resolver = FakeResolver({"mcp.cloud.test": ["169.254.10.10"], "imds.test": ["169.254.169.254"]})
    async with client(resolver) as http:
        with serving("http://mcp.cloud.test/mcp"), pytest.raises(AddressRefused, match="never"):
            await http.get("http://imds.test/latest/meta-data/")


async def test_a_public_address_on_the_never_list_is_refused_too(monkeypatch: pytest.MonkeyPatch) -> None:
    """The never-used list is checked before the class: a metadata service on a public address
    (Azure's wire server is one) must not slip through as "public"."""
    monkeypatch.setattr(
        endpoint_security, "_METADATA_ADDRESSES", endpoint_security._METADATA_ADDRESSES | {ip_address(PUBLIC)}
    )
    resolver = FakeResolver({"mcp.example.test": ["93.184.216.35"], "wire.test": [PUBLIC]})
    backend = LoopbackBackend(stand_ins=[PUBLIC])
    async with client(resolver, backend) as http:
        with serving("https://mcp.example.test/mcp"), pytest.raises(AddressRefused, match="never"):
            await http.get("http://wire.test/token")
    assert backend.asked == []


async def test_outside_an_operation_the_enabled_servers_decide() -> None:
    """Requests the other modules make (code exchange, refresh, revocation) carry no server: a
    private address is used when one of the anchors (the enabled servers) is private, else not."""
    resolver = FakeResolver({"auth.intranet.test": ["10.2.2.2"], "mcp.intranet.test": ["10.1.1.1"]})
    backend = LoopbackBackend(stand_ins=["10.2.2.2"])
    async with serve(respond()) as server:
        url = server.url("/token", host="auth.intranet.test")
        async with client(resolver, backend, anchors=NO_ANCHORS) as http:
            with pytest.raises(AddressRefused):
                await http.post(url)
        async with client(resolver, backend, anchors=("https://mcp.intranet.test/mcp",)) as http:
            assert (await http.post(url)).status_code == 200


# -- DNS rebinding ----------------------------------------------------------------------------


async def test_rebinding_name_connects_to_the_address_that_was_checked() -> None:
    """A resolver that answers public, then 127.0.0.1: the request goes to the public address it
    checked (a stand-in on loopback here), never to 127.0.0.1; the next request, which resolves
    to 127.0.0.1, is refused."""
    resolver = FakeResolver({"mcp.example.test": [PUBLIC], "rebind.test": [[PUBLIC], ["127.0.0.1"]]})
    backend = LoopbackBackend(stand_ins=[PUBLIC])
    async with serve(respond(body={"ok": True})) as server, client(resolver, backend, anchors=NO_ANCHORS) as http:
        url = server.url("/.well-known/oauth-authorization-server", host="rebind.test")
        first = await http.get(url)
        with pytest.raises(AddressRefused, match="127.0.0.1"):
            await http.get(url)
    assert first.json() == {"ok": True}
    assert backend.asked == [PUBLIC]
    assert server.seen[0].headers["host"] == f"rebind.test:{server.port}"


async def test_one_operation_resolves_each_name_once() -> None:
    """Inside one `serving` block a name keeps its first answer: a rebinding name cannot switch
    between the requests of one discovery."""
    resolver = FakeResolver({"mcp.example.test": [PUBLIC], "rebind.test": [[PUBLIC], ["127.0.0.1"]]})
    backend = LoopbackBackend(stand_ins=[PUBLIC])
    async with serve(respond()) as server, client(resolver, backend) as http:
        with serving("https://mcp.example.test/mcp"):
            for _ in range(3):
                await http.get(server.url("/", host="rebind.test"))
    assert resolver.lookups.count("rebind.test") == 1
    assert backend.asked == [PUBLIC] * 3


async def test_tls_keeps_the_name_for_sni_and_certificate_verification(tmp_path: Path) -> None:
    """Connected to the checked address, TLS still says and verifies the URL's name."""
    server_tls, client_tls = self_signed("auth.test", tmp_path)
    resolver = FakeResolver({"auth.test": [PUBLIC]})
    backend = LoopbackBackend(stand_ins=[PUBLIC])
    async with serve(respond(body={"ok": True}), tls=server_tls) as server:
        async with client(resolver, backend, ssl_context=client_tls) as http:
            response = await http.get(server.url("/meta", host="auth.test", scheme="https"))
    assert response.json() == {"ok": True}
    assert server.seen[0].sni == "auth.test"
    assert server.seen[0].headers["host"] == f"auth.test:{server.port}"
    assert backend.asked == [PUBLIC]


async def test_tls_certificate_for_another_name_is_refused(tmp_path: Path) -> None:
    server_tls, client_tls = self_signed("other.test", tmp_path)
    resolver = FakeResolver({"auth.test": [PUBLIC]})
    async with serve(respond(), tls=server_tls) as server:
        async with client(resolver, LoopbackBackend(stand_ins=[PUBLIC]), ssl_context=client_tls) as http:
            with pytest.raises(Unreachable):
                await http.get(server.url("/meta", host="auth.test", scheme="https"))
    assert server.seen == []


# -- one message for every way of not getting an answer -----------------------------------------


async def test_closed_port_silent_server_and_unknown_name_say_the_same() -> None:
    """A closed port, a server that never answers and a name that does not resolve all read
    "could not reach <origin>": the message tells nothing about what listens there."""
    messages = []
    async with serve(silent()) as server, client(deadline=1.0) as http:
        for port in (closed_port(), server.port):
            with pytest.raises(Unreachable) as info:
                await http.get(f"http://127.0.0.1:{port}/x")
            messages.append(str(info.value).replace(str(port), "PORT"))
        with pytest.raises(Unreachable) as info:
            await http.get("http://nowhere.test:1234/x")
        messages.append(str(info.value).replace("nowhere.test:1234", "127.0.0.1:PORT"))
    assert messages == ["could not reach http://127.0.0.1:PORT"] * 3


# -- size cap and deadline --------------------------------------------------------------------


async def test_endless_body_is_cut_at_the_cap() -> None:
    start = time.monotonic()
    async with serve(endless()) as server:
        async with client() as http:
            with anyio.fail_after(10), pytest.raises(ResponseTooLarge) as info:
                await http.get(server.url("/.well-known/oauth-protected-resource"))
    assert f"http://127.0.0.1:{server.port}" in str(info.value) and "1 MiB" in str(info.value)
    assert server.written < 16 * 1024 * 1024, "the client kept reading after the cap"
    assert time.monotonic() - start < 10


async def test_announced_large_body_is_refused_without_reading_it() -> None:
    async with serve(endless(announce=50 * 1024 * 1024)) as server:
        async with client() as http:
            with anyio.fail_after(5), pytest.raises(ResponseTooLarge, match="announced"):
                await http.get(server.url("/token"))


async def test_body_under_the_cap_is_read_whole() -> None:
    body = b'{"x": "' + b"y" * (1024 * 1024 - 100) + b'"}'
    async with serve(respond(body=body)) as server, client() as http:
        response = await http.get(server.url("/meta"))
    assert response.content == body


async def test_cap_is_configurable() -> None:
    async with serve(respond(body=b"z" * 2000)) as server, client(max_body=1000) as http:
        with pytest.raises(ResponseTooLarge, match="1000 bytes"):
            await http.get(server.url("/meta"))


async def test_trickling_server_hits_the_deadline_not_just_a_read_timeout() -> None:
    """One byte every 0.2 s never trips a 30 s read timeout; the 1 s deadline ends it."""
    async with serve(trickle()) as server:
        async with client(deadline=1.0) as http:
            start = time.monotonic()
            with anyio.fail_after(10), pytest.raises(Unreachable):
                await http.get(server.url("/token"))
    assert time.monotonic() - start < 10
    assert server.written >= 2, "the server did trickle"


async def test_server_silent_after_accepting_hits_the_deadline() -> None:
    async with serve(silent()) as server, client(deadline=1.0) as http:
        with anyio.fail_after(10), pytest.raises(Unreachable):
            await http.post(server.url("/token"), data={"grant_type": "refresh_token"})


async def test_compressed_response_is_refused_and_identity_is_asked_for() -> None:
    """The cap is on what lands in memory: no gzip bomb behind a small body."""
    handler = respond(body=b"\x1f\x8b" + b"\x00" * 20, headers=[("Content-Encoding", "gzip")])
    async with serve(handler) as server, client() as http:
        with pytest.raises(ResponseTooLarge, match="compressed"):
            await http.get(server.url("/meta"))
    assert server.seen[0].headers["accept-encoding"] == "identity"


async def test_no_connection_is_reused() -> None:
    async with serve(respond()) as server, client() as http:
        for _ in range(3):
            await http.get(server.url("/meta"))
    assert server.connections == 3


async def test_an_international_name_is_resolved_as_it_goes_on_the_wire() -> None:
    resolver = FakeResolver({"xn--bcher-kva.test": [PUBLIC]})
    backend = LoopbackBackend(stand_ins=[PUBLIC])
    async with serve(respond()) as server, client(resolver, backend) as http:
        await http.get(f"http://bücher.test:{server.port}/meta")
    assert resolver.lookups == ["xn--bcher-kva.test"]
    assert server.seen[0].headers["host"] == f"xn--bcher-kva.test:{server.port}"
