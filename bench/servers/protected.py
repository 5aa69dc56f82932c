"""tests/fixtures/protected_mcp.py with TCP_NODELAY on its accepted connections.

The fixture binds its listener with `socket.socket(AF_INET, SOCK_STREAM)` (proto 0), and asyncio
only disables Nagle on sockets whose proto is IPPROTO_TCP: every response then waits ~40 ms for the
client's delayed ACK, which would drown the figures. Same server, same arguments otherwise.

    python -m bench.servers.protected --issuer URL [--port 0 ...]
"""

from __future__ import annotations

import socket
import types

from tests.fixtures import protected_mcp


class _TcpSocket(socket.socket):
    def __init__(self, family: int = -1, type: int = -1, proto: int = -1, fileno: int | None = None) -> None:
        if fileno is None and type == socket.SOCK_STREAM and proto in (-1, 0):
            proto = socket.IPPROTO_TCP
        super().__init__(family, type, proto, fileno)


def main() -> None:
    namespace = types.ModuleType("socket")
    namespace.__dict__.update(vars(socket))
    namespace.socket = _TcpSocket  # type: ignore[attr-defined]
    protected_mcp.socket = namespace  # type: ignore[attr-defined]
    protected_mcp.main()


if __name__ == "__main__":
    main()
