"""How the gateway names what its upstreams offer (see docs/naming.md).

Every tool and prompt of an ordinary server is exposed as ``<server>__<name>``: the catalog
name of the server (or its entry's ``prefix:``), two underscores, the upstream's own name.
(`naming: bare` keeps the upstream's own names where no two servers share one: pool.py `_bare`.)
The exposed name is a pure function of the pair, so enabling another server never renames anything, and the mapping is
injective: no two (server, name) pairs of different servers ever share an exposed name.

The result is always a valid MCP tool name (SEP-986: 1-128 chars of ``A-Za-z0-9._-``) of at
most 64 characters, the limit several clients enforce.

Three forms, told apart by their shape:

- **plain** ``<server>__<name>``: the server name is *ordinary* (`is_ordinary_server`: starts
  with a letter or digit, only ``A-Za-z0-9._-``, no ``__``, does not end with ``_``) and the
  whole is valid and fits. Reading up to the first ``__`` gives the server back, so two servers
  never meet here (``a`` + ``_b`` is ``a___b``; ``a_`` is not ordinary and never produces it).
- **cut** ``<server>__<name cut>-<8 hex>``: an ordinary server of at most 52 characters whose
  tool name is too long or holds other characters; the name part is made valid (other
  characters become ``_``) and cut, and 8 hex digits of the SHA-256 of the pair keep the cut
  names of one server apart. It still begins with ``<server>__`` (the cut never reaches the
  server name), so it cannot be another server's name either.
- **escaped** ``_<server and name made valid>-<16 hex>``: every other pair (a server name that
  is not ordinary, or too long for the cut form). Only these start with ``_``, so they never
  meet the first two forms; among themselves they differ by 64 bits of the SHA-256 of the pair.

Resource URIs and resource templates are not renamed: they are addresses that tool results
and clients quote verbatim.
"""

from __future__ import annotations

import hashlib
import re

from mcp.shared.tool_name_validation import TOOL_NAME_REGEX

from bastion.config.catalog import is_ordinary_name

SEPARATOR = "__"
MAX_NAME_LENGTH = 64
ESCAPE = "_"
"""The first character of an escaped name, and of no plain or cut name."""
_CUT_HASH = 8
_ESCAPED_HASH = 16
MAX_CUT_SERVER = MAX_NAME_LENGTH - _CUT_HASH - 1 - len(SEPARATOR) - 1
"""The longest server name whose cut names still keep `<server>__` and one character of the tool name
(`config.catalog.MAX_PREFIX`, the longest `prefix:` an entry may set, is this number; a test checks it)."""
_INVALID = re.compile(r"[^A-Za-z0-9._-]")


def _digest(server: str, name: str, length: int) -> str:
    return hashlib.sha256(f"{server}\x00{name}".encode()).hexdigest()[:length]


def is_ordinary_server(server: str) -> bool:
    """True when reading `<server>__<name>` up to its first `__` gives `server` back, and nothing
    else: the server's tools may keep the plain form."""
    return is_ordinary_name(server)


def exposed_name(server: str, name: str) -> str:
    """The name under which the gateway exposes `name` of upstream `server`."""
    plain = f"{server}{SEPARATOR}{name}"
    if is_ordinary_server(server):
        if len(plain) <= MAX_NAME_LENGTH and TOOL_NAME_REGEX.fullmatch(plain):
            return plain
        if len(server) <= MAX_CUT_SERVER:
            safe = _INVALID.sub("_", plain)[: MAX_NAME_LENGTH - _CUT_HASH - 1]
            return f"{safe}-{_digest(server, name, _CUT_HASH)}"
    return escaped_name(server, name)


def escaped_name(server: str, name: str) -> str:
    """The escaped form of the pair: `_<server and name made valid>-<16 hex>`. Used for servers
    whose names are not ordinary, and for a server whose `prefix:` another server holds."""
    plain = f"{server}{SEPARATOR}{name}"
    safe = _INVALID.sub("_", plain)[: MAX_NAME_LENGTH - len(ESCAPE) - _ESCAPED_HASH - 1]
    return f"{ESCAPE}{safe}-{_digest(server, name, _ESCAPED_HASH)}"


def is_valid_exposed_name(name: str) -> bool:
    """True when `name` obeys the rules every exposed name follows."""
    return len(name) <= MAX_NAME_LENGTH and TOOL_NAME_REGEX.fullmatch(name) is not None
