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

And for every address a discovered host resolves to (`address_refusal`, applied by
`bastion.oauth.netguard` to the address it then connects to):

- a public address is always fine;
- a loopback, private (RFC 1918), carrier-grade NAT (RFC 6598), unique-local (RFC 4193),
  multicast or otherwise reserved address only when the MCP server's own address is in that same
  class (a loopback test setup, an intranet deployment), so a server on the internet cannot make
  Bastion reach into this machine or its network;
- link-local, unspecified and cloud metadata addresses never.

Pure: no name resolution here; `netguard` resolves, asks `address_refusal`, and connects.
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Collection
from urllib.parse import urlsplit

from bastion.errors import InsecureEndpointError
from bastion.oauth.rfc8252 import is_loopback_host

__all__ = [
    "AddressClass",
    "IPAddress",
    "address_class",
    "address_refusal",
    "check_endpoint",
    "is_forbidden_host",
    "parse_address",
    "url_for_message",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

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


def _address(host: str) -> IPAddress | None:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return _parse_ipv4_lenient(host)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def parse_address(host: str) -> IPAddress | None:
    """The IP address `host` spells, in any form resolvers accept (brackets, a zone id, IPv4-mapped
    IPv6, `2852039166`, `0x7f.1`), or None for a name."""
    name = host.strip().lower().strip("[]").rstrip(".")
    return _address(name.split("%", 1)[0])  # drop an IPv6 zone id


def _is_forbidden_address(address: IPAddress) -> bool:
    return (
        address in _METADATA_ADDRESSES
        or address.is_unspecified
        or any(address.version == net.version and address in net for net in _LINK_LOCAL)
    )


def is_forbidden_host(host: str) -> bool:
    """True for a link-local, unspecified or cloud metadata host (see the module docstring)."""
    name = host.strip().lower().strip("[]").rstrip(".")
    if name in _METADATA_NAMES:
        return True
    address = parse_address(name)
    return address is not None and _is_forbidden_address(address)


class AddressClass(enum.Enum):
    """Where an address leads. An endpoint may be in a class other than PUBLIC only when the MCP
    server's own address is in that class too (LINK_LOCAL: never)."""

    PUBLIC = "public"
    """Globally routable."""
    LOOPBACK = "loopback"
    """127.0.0.0/8, ::1: this machine."""
    PRIVATE = "private"
    """RFC 1918: 10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16."""
    SHARED = "carrier-grade NAT"
    """RFC 6598: 100.64.0.0/10."""
    UNIQUE_LOCAL = "unique-local"
    """RFC 4193: fc00::/7."""
    LINK_LOCAL = "link-local"
    """169.254.0.0/16, fe80::/10: where cloud metadata services answer."""
    MULTICAST = "multicast"
    """224.0.0.0/4, ff00::/8."""
    RESERVED = "reserved"
    """Anything else not globally routable: 0.0.0.0/8, 240.0.0.0/4, documentation and benchmarking
    ranges, IPv4-compatible IPv6, ..."""


_CLASS_NETWORKS: tuple[tuple[AddressClass, ipaddress.IPv4Network | ipaddress.IPv6Network], ...] = (
    (AddressClass.LOOPBACK, ipaddress.ip_network("127.0.0.0/8")),
    (AddressClass.LOOPBACK, ipaddress.ip_network("::1/128")),
    (AddressClass.LINK_LOCAL, ipaddress.ip_network("169.254.0.0/16")),
    (AddressClass.LINK_LOCAL, ipaddress.ip_network("fe80::/10")),
    (AddressClass.PRIVATE, ipaddress.ip_network("10.0.0.0/8")),
    (AddressClass.PRIVATE, ipaddress.ip_network("172.16.0.0/12")),
    (AddressClass.PRIVATE, ipaddress.ip_network("192.168.0.0/16")),
    (AddressClass.SHARED, ipaddress.ip_network("100.64.0.0/10")),
    (AddressClass.UNIQUE_LOCAL, ipaddress.ip_network("fc00::/7")),
    (AddressClass.MULTICAST, ipaddress.ip_network("224.0.0.0/4")),
    (AddressClass.MULTICAST, ipaddress.ip_network("ff00::/8")),
    (AddressClass.RESERVED, ipaddress.ip_network("::/96")),  # unspecified and IPv4-compatible
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
"""RFC 6052's well-known prefix: the last 32 bits are the IPv4 address a NAT64 gateway reaches."""


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address leads to: IPv4-mapped, NAT64 (64:ff9b::/96), 6to4."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address.sixtofour


def address_class(address: IPAddress) -> AddressClass:
    """The class of `address` (an IPv6 address that embeds an IPv4 one has the IPv4's class)."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            return address_class(embedded)
    for cls, network in _CLASS_NETWORKS:
        if address.version == network.version and address in network:
            return cls
    if not address.is_global or address.is_reserved:
        return AddressClass.RESERVED
    return AddressClass.PUBLIC


def address_refusal(address: IPAddress, server_classes: Collection[AddressClass]) -> str | None:
    """None when Bastion may connect to `address` on behalf of an MCP server whose own addresses
    are in `server_classes`; otherwise why not, as the end of a sentence ("... resolves to X, ...")."""
    unwrapped = _embedded_ipv4(address) if isinstance(address, ipaddress.IPv6Address) else None
    if _is_forbidden_address(address) or (unwrapped is not None and _is_forbidden_address(unwrapped)):
        return f"{address}, a link-local, unspecified or cloud metadata address, which Bastion never uses"
    cls = address_class(address)
    if cls is AddressClass.PUBLIC or (cls in server_classes and cls is not AddressClass.LINK_LOCAL):
        return None
    return (
        f"{address}, a {cls.value} address, while the MCP server is not on one; Bastion refuses it so "
        "that a server cannot make it reach into this machine or its network"
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
