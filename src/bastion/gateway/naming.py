"""How the gateway names what its upstreams offer (see docs/naming.md).

Every tool and prompt is exposed as ``<server>__<name>``: the catalog name of the server,
two underscores, the upstream's own name. The exposed name is a pure function of the pair,
so enabling another server never renames anything, and two servers never share a name.

The result is always a valid MCP tool name (SEP-986: 1-128 chars of ``A-Za-z0-9._-``) of at
most 64 characters, the limit several clients enforce. When the plain form would break those
rules -- it is too long, holds other characters, or the server name itself contains ``__`` so
that the split would be ambiguous -- the name is made valid (other characters become ``_``),
cut to fit, and ends with ``-`` plus 8 hex digits of the SHA-256 of the original pair.

Resource URIs and resource templates are not renamed: they are addresses that tool results
and clients quote verbatim.
"""

from __future__ import annotations

import hashlib
import re

from mcp.shared.tool_name_validation import TOOL_NAME_REGEX

SEPARATOR = "__"
MAX_NAME_LENGTH = 64
_HASH_LENGTH = 8
_INVALID = re.compile(r"[^A-Za-z0-9._-]")


def _digest(server: str, name: str) -> str:
    return hashlib.sha256(f"{server}\x00{name}".encode()).hexdigest()[:_HASH_LENGTH]


def exposed_name(server: str, name: str) -> str:
    """The name under which the gateway exposes `name` of upstream `server`."""
    plain = f"{server}{SEPARATOR}{name}"
    if len(plain) <= MAX_NAME_LENGTH and SEPARATOR not in server and TOOL_NAME_REGEX.fullmatch(plain):
        return plain
    safe = _INVALID.sub("_", plain)[: MAX_NAME_LENGTH - _HASH_LENGTH - 1]
    return f"{safe}-{_digest(server, name)}"


def is_valid_exposed_name(name: str) -> bool:
    """True when `name` obeys the rules every exposed name follows."""
    return len(name) <= MAX_NAME_LENGTH and TOOL_NAME_REGEX.fullmatch(name) is not None
