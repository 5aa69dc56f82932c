"""RFC 6750 — The OAuth 2.0 Authorization Framework: Bearer Token Usage, §3 (the
WWW-Authenticate response header), with the challenge grammar of RFC 9110 §11.6.1.

https://www.rfc-editor.org/rfc/rfc6750#section-3
https://www.rfc-editor.org/rfc/rfc9110#section-11.6.1

    WWW-Authenticate = #challenge
    challenge        = auth-scheme [ 1*SP ( token68 / #auth-param ) ]
    auth-param       = token BWS "=" BWS ( token / quoted-string )
    token68          = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="

The parser is for headers sent by servers we do not control, so it is lenient: it never
raises, skips what it cannot read, accepts unquoted values that are not strict tokens (such
as URLs) and a missing comma between parameters. The formatter is strict: it always writes
quoted values (RFC 6750 §3 examples, the `realm` rule of RFC 9110 §11.5, and parsers that
only look for `name="value"`), so `parse_www_authenticate(format_challenge(ch)) == [ch]`.
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = [
    "Challenge",
    "bearer_challenge",
    "format_challenge",
    "is_token",
    "is_token68",
    "parse_www_authenticate",
    "parse_www_authenticate_headers",
]

_TCHAR = frozenset(string.ascii_letters + string.digits + "!#$%&'*+-.^_`|~")
_TOKEN68_CHAR = frozenset(string.ascii_letters + string.digits + "-._~+/")
_OWS = " \t"
_TOKEN68_RE = re.compile(r"[A-Za-z0-9\-._~+/]+=*")


def is_token(value: str) -> bool:
    """True when `value` is an RFC 9110 §5.6.2 token (a valid scheme or parameter name)."""
    return bool(value) and all(c in _TCHAR for c in value)


def is_token68(value: str) -> bool:
    """True when `value` is an RFC 9110 §11.2 token68."""
    return _TOKEN68_RE.fullmatch(value) is not None


@dataclass(frozen=True)
class Challenge:
    """One challenge of a WWW-Authenticate header.

    `scheme` is kept as sent (compare it case-insensitively, or use `is_bearer`); parameter
    names are lower-cased (they are case-insensitive, RFC 9110 §11.2) and kept in order.
    """

    scheme: str
    params: tuple[tuple[str, str], ...] = ()
    token68: str | None = None

    @classmethod
    def of(cls, scheme: str, **params: str | None) -> Challenge:
        """A challenge with the given parameters, skipping those that are None."""
        return cls(scheme, tuple((name.lower(), value) for name, value in params.items() if value is not None))

    def param(self, name: str) -> str | None:
        """The value of parameter `name` (case-insensitive), the first if it is repeated."""
        wanted = name.lower()
        for key, value in self.params:
            if key == wanted:
                return value
        return None

    @property
    def is_bearer(self) -> bool:
        return self.scheme.lower() == "bearer"

    @property
    def realm(self) -> str | None:
        return self.param("realm")

    @property
    def resource_metadata(self) -> str | None:
        """RFC 9728 §5.1: the URL of the protected resource metadata."""
        return self.param("resource_metadata")

    @property
    def scope(self) -> list[str]:
        """RFC 6750 §3: the space-delimited scopes the resource wants; [] when absent."""
        value = self.param("scope")
        return value.split() if value else []

    @property
    def error(self) -> str | None:
        """RFC 6750 §3.1: `invalid_request`, `invalid_token` or `insufficient_scope`."""
        return self.param("error")

    @property
    def error_description(self) -> str | None:
        return self.param("error_description")

    @property
    def error_uri(self) -> str | None:
        return self.param("error_uri")


class _Scanner:
    """A cursor over one header value. Every method stops at the end of the text."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def at_end(self) -> bool:
        return self.pos >= len(self.text)

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def skip_ows(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos] in _OWS:
            self.pos += 1

    def skip_separators(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos] in " \t,":
            self.pos += 1

    def read_while(self, allowed: frozenset[str]) -> str:
        start = self.pos
        while self.pos < len(self.text) and self.text[self.pos] in allowed:
            self.pos += 1
        return self.text[start : self.pos]

    def read_quoted(self) -> str:
        """A quoted-string, the opening quote under the cursor. An unterminated string runs to
        the end of the text (best effort)."""
        self.pos += 1
        out: list[str] = []
        while self.pos < len(self.text):
            char = self.text[self.pos]
            self.pos += 1
            if char == '"':
                break
            if char == "\\" and self.pos < len(self.text):
                char = self.text[self.pos]
                self.pos += 1
            out.append(char)
        return "".join(out)

    def read_bare_value(self) -> str:
        """An unquoted value: a token in the RFC, but servers also send URLs and the like, so
        read up to the next comma or whitespace."""
        start = self.pos
        while self.pos < len(self.text) and self.text[self.pos] not in " \t,":
            self.pos += 1
        return self.text[start : self.pos]

    def skip_element(self) -> None:
        """Skip garbage up to the next comma that is not inside a quoted string."""
        while self.pos < len(self.text):
            char = self.text[self.pos]
            if char == ",":
                return
            if char == '"':
                self.read_quoted()
            else:
                self.pos += 1

    def try_token68(self) -> str | None:
        """A token68 that is the whole rest of the list element, else None (cursor unchanged)."""
        start = self.pos
        value = self.read_while(_TOKEN68_CHAR)
        if value:
            while self.peek() == "=":
                self.pos += 1
            value = self.text[start : self.pos]
            self.skip_ows()
            if self.at_end() or self.peek() == ",":
                return value
        self.pos = start
        return None


def parse_www_authenticate(value: str) -> list[Challenge]:
    """Every challenge in one WWW-Authenticate header value, in order.

    Never raises: unreadable parts are skipped and `[]` means nothing could be read.
    """
    scanner = _Scanner(value)
    challenges: list[Challenge] = []
    scheme: str | None = None
    params: list[tuple[str, str]] = []
    token68: str | None = None

    def finish() -> None:
        if scheme is not None:
            challenges.append(Challenge(scheme, tuple(params), token68))

    while True:
        scanner.skip_separators()
        if scanner.at_end():
            break
        name = scanner.read_while(_TCHAR)
        if not name:
            # Not a token: skip this list element (a stray quoted string as a whole).
            if scanner.peek() == '"':
                scanner.read_quoted()
            else:
                scanner.pos += 1
            scanner.skip_element()
            continue
        after_name = scanner.pos
        scanner.skip_ows()
        if scanner.peek() == "=":
            # An auth-param of the current challenge.
            scanner.pos += 1
            scanner.skip_ows()
            if scheme is None:
                scanner.skip_element()
                continue
            param_value = scanner.read_quoted() if scanner.peek() == '"' else scanner.read_bare_value()
            params.append((name.lower(), param_value))
            continue
        # A new challenge: auth-scheme [ 1*SP ( token68 / #auth-param ) ].
        finish()
        scheme, params, token68 = name, [], None
        scanner.pos = after_name
        scanner.skip_ows()
        token68 = scanner.try_token68()
    finish()
    return challenges


def parse_www_authenticate_headers(values: Iterable[str]) -> list[Challenge]:
    """Every challenge in several WWW-Authenticate header lines, in order."""
    return [challenge for value in values for challenge in parse_www_authenticate(value)]


def _quote(value: str) -> str:
    if any((ord(c) < 0x20 and c != "\t") or ord(c) == 0x7F for c in value):
        # CR/LF would split the header: refuse rather than escape (RFC 9110 §5.6.4 qdtext).
        raise ValueError("auth-param value contains a control character")
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def format_challenge(ch: Challenge) -> str:
    """The challenge as a header value. Raises ValueError when the scheme, a parameter name or
    the token68 is not valid (those cannot be quoted), or a value holds a control character."""
    if not is_token(ch.scheme):
        raise ValueError(f"invalid auth-scheme: {ch.scheme!r}")
    parts: list[str] = []
    if ch.token68 is not None:
        if not is_token68(ch.token68):
            raise ValueError("invalid token68")
        parts.append(ch.token68)
    for name, value in ch.params:
        if not is_token(name):
            raise ValueError(f"invalid auth-param name: {name!r}")
        parts.append(f"{name}={_quote(value)}")
    return f"{ch.scheme} {', '.join(parts)}" if parts else ch.scheme


def bearer_challenge(challenges: Sequence[Challenge]) -> Challenge | None:
    """The first Bearer challenge, or None."""
    return next((challenge for challenge in challenges if challenge.is_bearer), None)
