"""A small MCP server for gateway tests.

    python echo_server.py [--name NAME] [--http PORT] [--start-delay SECONDS]     # stdio by default

`--start-delay` sleeps before serving, so `initialize` is answered that much later (a server
started with `npx`/`uvx` that is still installing).

Tools: `echo`, `region` (an `x-mcp-header` parameter), `env` (reads an environment variable), `pid`,
`crash` (the process exits), `hang` (never answers), `slow_progress` (reports progress). Also a prompt and a resource.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Annotated

import anyio
from mcp.server.mcpserver import Context, MCPServer
from pydantic import Field


def build(name: str = "echo") -> MCPServer:
    server = MCPServer(name)

    @server.tool()
    def echo(text: str) -> str:
        """Return the text."""
        return text

    @server.tool()
    def region(region: Annotated[str, Field(json_schema_extra={"x-mcp-header": "Region"})], text: str = "") -> str:
        """Return the region (a parameter mirrored into an `Mcp-Param-Region` header on the 2026 wire)."""
        return f"{region}:{text}"

    @server.tool()
    def env(variable: str) -> str:
        """Return an environment variable of the server process."""
        return os.environ.get(variable, "<unset>")

    @server.tool()
    def pid() -> int:
        """The server's process id."""
        return os.getpid()

    @server.tool()
    def crash() -> str:
        """Exit the process without answering."""
        os._exit(3)

    @server.tool()
    async def hang() -> str:
        """Never answer."""
        await anyio.sleep_forever()
        return "unreachable"

    @server.tool()
    async def slow_progress(steps: int, ctx: Context) -> str:
        """Report `steps` progress notifications, then answer."""
        for step in range(steps):
            await ctx.report_progress(step + 1, steps)
        return "done"

    @server.tool()
    async def log(text: str, ctx: Context) -> str:
        """Send `text` as a warning log message, then answer."""
        await ctx.warning(text)
        return "logged"

    @server.prompt()
    def greet(who: str) -> str:
        """Greet someone."""
        return f"Hello, {who}!"

    @server.resource(f"{name}://hello")
    def hello() -> str:
        """A fixed text."""
        return f"hello from {name}"

    return server


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--name", default="echo")
    parser.add_argument("--http", type=int, default=None)
    parser.add_argument("--start-delay", type=float, default=0.0)
    args = parser.parse_args()
    if args.start_delay:
        time.sleep(args.start_delay)
    server = build(args.name)
    if args.http is None:
        server.run()
    else:
        server.run("streamable-http", host="127.0.0.1", port=args.http)


if __name__ == "__main__":
    main()
