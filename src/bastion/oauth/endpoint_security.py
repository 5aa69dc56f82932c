"""Which endpoints Bastion sends credentials to: OAuth 2.1 §1.5 / RFC 9700 §4.15 (endpoints
over TLS), RFC 8252 §8.3 (loopback), and a refusal of link-local and cloud metadata
addresses so a malicious server cannot point Bastion at the host's metadata service (SSRF).

https://datatracker.ietf.org/doc/html/draft-ietf-oauth-v2-1#section-1.5
https://www.rfc-editor.org/rfc/rfc9700#section-4.15

Rules for every endpoint URL discovered or configured (metadata, authorization, token,
registration, revocation, jwks):

- the scheme is https, or http when both the endpoint and the MCP server are on a loopback
  host (a local test setup);
- the host is never link-local (169.254.0.0/16, fe80::/10), unspecified (0.0.0.0, ::) or a
  cloud metadata address (169.254.169.254, fd00:ec2::254, 100.100.100.200,
  metadata.google.internal, metadata.goog, instance-data.ec2.internal), in any spelling that
  resolvers accept (IPv4-mapped IPv6, `2852039166`, `0xa9.0xfe.0xa9.0xfe`, a trailing dot).

Pure: no name resolution. A DNS name that resolves to such an address is not caught here.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from bastion.errors import InsecureEndpointError
from bastion.oauth.rfc8252 import is_loopback_host

__all__ = ["check_endpoint", "is_forbidden_host", "url_for_message"]

_METADATA_NAMES = frozenset({"metadata.google.internal", "metadata.goog", "instance-data.ec2.internal"})
_METADATA_ADDRESSES = frozenset(
    {
        ipaddress.ip_address("169.254.169.254"),  # AWS, GCP, Azure, OpenStack, DigitalOcean, ...
        ipaddress.ip_address("fd00:ec2::254"),  # AWS IMDS over IPv6
        ipaddress.ip_address("100.100.100.200"),  # Alibaba Cloud
    }
)
_LINK_LOCAL = (ipaddress.ip_network("169.254.0.0/16"), ipaddress.ip_network("fe80::/10"))

_HINT = "check the server's metadata, or report it to the server's operator"


def url_for_message(url: str) -> str:
    """`url` without user info, query or fragment, fit for an error message or a log line."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "<invalid URL>"
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{port}" if port is not None else host
    if not parts.scheme:
        return f"//{netloc}{parts.path}" if netloc else parts.path
    return f"{parts.scheme}://{netloc}{parts.path}" if netloc else f"{parts.scheme}:{parts.path}"


def _parse_ipv4_lenient(host: str) -> ipaddress.IPv4Address | None:
    """An IPv4 address in the forms inet_aton(3) accepts: 1 to 4 parts, each decimal, octal
    (leading 0) or hex (0x), the last part filling the remaining bytes."""
    parts = host.split(".")
    if not 1 <= len(parts) <= 4:
        return None
    numbers: list[int] = []
    for part in parts:
        lowered = part.lower()
        try:
            if lowered.startswith("0x"):
                numbers.append(int(lowered[2:] or "0", 16))
            elif len(lowered) > 1 and lowered.startswith("0"):
                numbers.append(int(lowered[1:], 8))
            elif lowered.isdigit():
                numbers.append(int(lowered, 10))
            else:
                return None
        except ValueError:
            return None
    *head, last = numbers
    if any(n > 255 for n in head) or last >= 256 ** (4 - len(head)):
        return None
    value = last
    for index, n in enumerate(head):
        value += n << (8 * (3 - index))
    return ipaddress.IPv4Address(value)


def _address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return _parse_ipv4_lenient(host)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def is_forbidden_host(host: str) -> bool:
    """True for a link-local, unspecified or cloud metadata host (see the module docstring)."""
    name = host.strip().lower().strip("[]").rstrip(".")
    if name in _METADATA_NAMES:
        return True
    address = _address(name.split("%", 1)[0])  # drop an IPv6 zone id
    if address is None:
        return False
    return (
        address in _METADATA_ADDRESSES
        or address.is_unspecified
        or any(address.version == net.version and address in net for net in _LINK_LOCAL)
    )


def check_endpoint(url: str, server_url: str, *, what: str) -> None:
    """Raise InsecureEndpointError unless Bastion may send credentials to `url`, an endpoint
    (named `what`, e.g. "token_endpoint") of the MCP server at `server_url`."""
    shown = url_for_message(url)
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018 — raises ValueError on a malformed port
    except ValueError:
        raise InsecureEndpointError(f"{what} {shown} is not a valid URL", hint=_HINT) from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise InsecureEndpointError(
            f"{what} {shown} uses the scheme {scheme or '(none)'!r}; Bastion only uses https endpoints",
            hint=_HINT,
        )
    if not host:
        raise InsecureEndpointError(f"{what} {shown} has no host", hint=_HINT)
    if is_forbidden_host(host):
        raise InsecureEndpointError(
            f"{what} {shown} points to a link-local or cloud metadata address; Bastion refuses it "
            "because a server could use it to reach this machine's cloud credentials",
            hint=_HINT,
        )
    if scheme == "http":
        try:
            server_host = urlsplit(server_url).hostname or ""
        except ValueError:
            server_host = ""
        if not (is_loopback_host(host) and is_loopback_host(server_host)):
            raise InsecureEndpointError(
                f"{what} {shown} is plain http; Bastion sends credentials only over https",
                hint="the authorization server must publish https endpoints (http is accepted only when "
                "the MCP server and the endpoint are both on a loopback address, for local testing)",
            )
