"""`mount_ui`: the page under /ui in front of another ASGI app (the gateway's), which keeps
everything else, lifespan included; and a Starlette `Mount` works too."""

from __future__ import annotations

import httpx2
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.types import Receive, Scope, Send

from bastion.service import Bastion
from bastion.web import close_ui, create_ui_app, mount_ui

pytestmark = pytest.mark.anyio


class Inner:
    """Stands in for the gateway's app: answers "inner" and records the scope types it saw."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.seen.append(scope["type"])
        if scope["type"] == "lifespan":
            message = await receive()
            assert message["type"] == "lifespan.startup"
            await send({"type": "lifespan.startup.complete"})
            return
        await PlainTextResponse(f"inner {scope['path']}")(scope, receive, send)


async def test_page_under_ui_everything_else_to_the_inner_app(bastion: Bastion) -> None:
    inner = Inner()
    app = mount_ui(inner, create_ui_app(bastion))
    transport = httpx2.ASGITransport(app=app, client=("127.0.0.1", 50000))
    async with httpx2.AsyncClient(transport=transport, base_url="http://127.0.0.1:8811") as http:
        page = await http.get("/ui/")
        mcp = await http.post("/mcp")
        uix = await http.get("/uix")
        bare = await http.get("/ui?x=1")
    assert page.status_code == 200 and "id='server-protected'" in page.text
    assert "action='/ui/authorize'" in page.text
    assert mcp.text == "inner /mcp" and uix.text == "inner /uix"
    assert bare.status_code == 307 and bare.headers["location"] == "/ui/?x=1"

    async def receive() -> dict[str, str]:
        return {"type": "lifespan.startup"}

    sent: list[str] = []

    async def send(message: dict[str, str]) -> None:
        sent.append(message["type"])

    await app({"type": "lifespan", "asgi": {"version": "3.0"}}, receive, send)  # type: ignore[arg-type]
    assert "lifespan" in inner.seen and sent == ["lifespan.startup.complete"]


async def test_a_starlette_mount_works_too(bastion: Bastion) -> None:
    async def other(request: Request) -> Response:
        return PlainTextResponse("other")

    app = Starlette(routes=[Mount("/ui", app=create_ui_app(bastion)), Route("/other", other)])
    transport = httpx2.ASGITransport(app=app, client=("127.0.0.1", 50000))
    async with httpx2.AsyncClient(transport=transport, base_url="http://127.0.0.1:8811") as http:
        page = await http.get("/ui/")
        fragment = await http.get("/ui/fragment")
    assert page.status_code == 200 and "data-fragment='/ui/fragment'" in page.text
    assert fragment.status_code == 200 and "action='/ui/revoke'" not in fragment.text
    assert "action='/ui/disable'" in fragment.text


async def test_close_ui_ends_new_event_streams_at_once(bastion: Bastion) -> None:
    ui = create_ui_app(bastion)
    close_ui(ui)
    transport = httpx2.ASGITransport(app=mount_ui(Inner(), ui), client=("127.0.0.1", 50000))
    async with httpx2.AsyncClient(transport=transport, base_url="http://127.0.0.1:8811") as http:
        events = await http.get("/ui/events")  # would never finish if the stream stayed open
    assert events.status_code == 200 and events.text == ""
