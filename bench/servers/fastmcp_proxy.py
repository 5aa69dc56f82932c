"""FastMCP's proxy in front of the echo upstream (runs in the bench's own FastMCP venv).

    python fastmcp_proxy.py --port P --url http://127.0.0.1:N/mcp            # create_proxy(url)
    python fastmcp_proxy.py --port P --url http://127.0.0.1:N/mcp --reuse    # one connected Client
    python fastmcp_proxy.py --port P --stdio PYTHON ECHO_SCRIPT              # stdio upstream

Serves streamable HTTP at /mcp on 127.0.0.1:P (FastMCP's defaults otherwise).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import threading
import time

from fastmcp import Client
from fastmcp.client.transports import StdioTransport
from fastmcp.server import create_proxy


def _exit_on_stdin_eof() -> None:
    def watch() -> None:
        with contextlib.suppress(OSError, ValueError):
            while sys.stdin.buffer.read(4096):
                pass
        time.sleep(0.5)
        os._exit(0)

    threading.Thread(target=watch, daemon=True).start()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--url")
    parser.add_argument("--reuse", action="store_true")
    parser.add_argument("--stdio", nargs=2, metavar=("PYTHON", "SCRIPT"))
    args = parser.parse_args()
    if not sys.stdin.isatty():
        _exit_on_stdin_eof()
    run = {"transport": "http", "host": "127.0.0.1", "port": args.port, "show_banner": False, "log_level": "warning"}
    if args.stdio:
        client = Client(StdioTransport(command=args.stdio[0], args=[args.stdio[1]]))
        async with client:
            await create_proxy(client, name="fastmcp-proxy").run_async(**run)
    elif args.reuse:
        client = Client(args.url)
        async with client:
            await create_proxy(client, name="fastmcp-proxy").run_async(**run)
    else:
        await create_proxy(args.url, name="fastmcp-proxy").run_async(**run)


if __name__ == "__main__":
    asyncio.run(main())
