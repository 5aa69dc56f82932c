"""RFC 8707 — Resource Indicators for OAuth 2.0, §2 (the `resource` parameter), as the MCP
authorization spec uses it ("Canonical Server URI").

https://www.rfc-editor.org/rfc/rfc8707#section-2
https://modelcontextprotocol.io/specification/2025-06-18/basic/authorization#canonical-server-uri

The canonical form of an MCP server URL, sent as `resource` and compared with the
`resource` of the protected resource metadata:

- scheme and host lower-cased (RFC 3986 §6.2.2.1), the default port dropped (§6.2.3);
- no fragment (RFC 8707 §2: it MUST NOT include one), no user info (never send credentials);
- path and query kept as they are. The MCP spec prefers the form without a trailing slash
  "unless the trailing slash is semantically significant"; Bastion cannot know that for a
  path, so it only drops the bare root path (`https://x/` → `https://x`, the spec's own
  example form) and keeps `https://x/mcp/` as configured, since that is the URL the server
  answers on.
"""

from __future__ import annotations

from urllib.parse import SplitResult, urlsplit, urlunsplit

__all__ = ["canonical_resource", "resource_matches"]

_DEFAULT_PORTS = {"http": 80, "https": 443}


def _canonical_parts(url: str) -> SplitResult:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    host = parts.hostname  # lower-cased, brackets removed
    if not scheme or not host:
        raise ValueError(f"not an absolute URL: {url!r}")
    port = parts.port  # ValueError on a malformed port
    netloc = f"[{host}]" if ":" in host else host
    if port is not None and port != _DEFAULT_PORTS.get(scheme):
        netloc = f"{netloc}:{port}"
    path = parts.path
    if path == "/" and not parts.query:
        path = ""
    return SplitResult(scheme, netloc, path, parts.query, "")


def canonical_resource(url: str) -> str:
    """The canonical resource URI for `url` (see the module docstring). Raises ValueError when
    `url` is not an absolute URL with a host."""
    return urlunsplit(_canonical_parts(url))


def resource_matches(declared: str, server_url: str) -> bool:
    """True when the `declared` resource (protected resource metadata, RFC 9728 §3.3) covers
    the MCP server at `server_url`: same origin, and the declared path is the server's path or
    a parent of it at a path-segment boundary (`https://x/` covers `https://x/mcp`,
    `https://x/api` covers `https://x/api/mcp` but not `https://x/api2`). A trailing slash does
    not matter. A declared query must equal the server's query. Malformed URLs never match."""
    try:
        want = _canonical_parts(declared)
        have = _canonical_parts(server_url)
    except ValueError:
        return False
    if (want.scheme, want.netloc) != (have.scheme, have.netloc):
        return False
    want_path = want.path.rstrip("/") + "/"
    have_path = have.path.rstrip("/") + "/"
    if want.query:
        return want.query == have.query and want_path == have_path
    return have_path.startswith(want_path)
