"""RFC 8252 — OAuth 2.0 for Native Apps, §7.3 (loopback interface redirection) and §8.3
(use the loopback IP literal rather than `localhost`).

https://www.rfc-editor.org/rfc/rfc8252#section-7.3

The authorization server must accept any port on a loopback redirect URI (§7.3), so Bastion
listens on an ephemeral port and registers `http://127.0.0.1:<port>/callback`.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

__all__ = ["is_loopback_host", "loopback_redirect_uri", "redirect_uri_port"]


def is_loopback_host(host: str) -> bool:
    """True for `localhost`, an address in 127.0.0.0/8, or ::1 (brackets allowed, any case,
    IPv4-mapped IPv6 included). No name resolution: other names are not loopback."""
    name = host.strip().lower()
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    if name.endswith("."):
        name = name[:-1]
    if name == "localhost" or name.endswith(".localhost"):
        # RFC 6761 §6.3: localhost and its subdomains are always the loopback interface.
        return True
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def loopback_redirect_uri(port: int, path: str = "/callback", host: str = "127.0.0.1") -> str:
    """`http://127.0.0.1:<port>/callback`; an IPv6 `host` is bracketed. Raises ValueError for a
    port outside 1–65535 or a host that is not loopback (RFC 8252 §8.3)."""
    if not 1 <= port <= 65535:
        raise ValueError(f"port out of range: {port}")
    if not is_loopback_host(host):
        raise ValueError(f"not a loopback host: {host!r}")
    bare = host.strip("[]")
    netloc_host = f"[{bare}]" if ":" in bare else bare
    if not path.startswith("/"):
        path = "/" + path
    return f"http://{netloc_host}:{port}{path}"


def redirect_uri_port(uri: str) -> int | None:
    """The explicit port of `uri`, or None when it has none or the URI is malformed."""
    try:
        return urlsplit(uri).port
    except ValueError:
        return None
