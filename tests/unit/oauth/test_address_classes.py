"""Which addresses an endpoint's host may resolve to (SSRF guard, issue 12 point 11): public
always; loopback, RFC 1918, RFC 6598, RFC 4193, multicast and reserved only when the MCP server
is in the same class; link-local and cloud metadata never."""

from __future__ import annotations

import ipaddress

import pytest

from bastion.oauth.endpoint_security import AddressClass, address_class, address_refusal, parse_address

C = AddressClass


@pytest.mark.parametrize(
    ("address", "cls"),
    [
        ("93.184.216.34", C.PUBLIC),
        ("2606:2800:220:1:248:1893:25c8:1946", C.PUBLIC),
        ("127.0.0.1", C.LOOPBACK),
        ("127.9.8.7", C.LOOPBACK),
        ("::1", C.LOOPBACK),
        ("::ffff:127.0.0.1", C.LOOPBACK),
        ("10.0.0.1", C.PRIVATE),
        ("172.16.0.1", C.PRIVATE),
        ("172.31.255.254", C.PRIVATE),
        ("192.168.1.1", C.PRIVATE),
        ("::ffff:10.0.0.1", C.PRIVATE),
        ("64:ff9b::a00:1", C.PRIVATE),  # NAT64 of 10.0.0.1
        ("2002:a00:1::1", C.PRIVATE),  # 6to4 of 10.0.0.1
        ("100.64.0.1", C.SHARED),
        ("100.127.255.254", C.SHARED),
        ("fc00::1", C.UNIQUE_LOCAL),
        ("fd12:3456::1", C.UNIQUE_LOCAL),
        ("169.254.1.1", C.LINK_LOCAL),
        ("fe80::1", C.LINK_LOCAL),
        ("224.0.0.1", C.MULTICAST),
        ("ff02::1", C.MULTICAST),
        ("0.1.2.3", C.RESERVED),
        ("240.0.0.1", C.RESERVED),
        ("255.255.255.255", C.RESERVED),
        ("192.0.2.1", C.RESERVED),
        ("198.18.0.1", C.RESERVED),
        ("2001:db8::1", C.RESERVED),
        ("::7f00:1", C.RESERVED),  # IPv4-compatible IPv6
    ],
)
def test_address_class(address: str, cls: AddressClass) -> None:
    assert address_class(ipaddress.ip_address(address)) is cls


@pytest.mark.parametrize("address", ["10.0.0.1", "127.0.0.1", "100.64.0.1", "fd00::1", "224.0.0.1", "240.0.0.1"])
def test_non_public_address_is_refused_for_a_public_server(address: str) -> None:
    refusal = address_refusal(ipaddress.ip_address(address), {C.PUBLIC})
    assert refusal is not None and address in refusal and "MCP server" in refusal


@pytest.mark.parametrize(
    ("address", "server"),
    [
        ("10.0.0.1", C.PRIVATE),
        ("192.168.4.4", C.PRIVATE),
        ("127.0.0.2", C.LOOPBACK),
        ("::1", C.LOOPBACK),
        ("100.64.3.3", C.SHARED),
        ("fd00::5", C.UNIQUE_LOCAL),
    ],
)
def test_address_in_the_servers_own_class_is_allowed(address: str, server: AddressClass) -> None:
    assert address_refusal(ipaddress.ip_address(address), {server}) is None


def test_an_intranet_server_does_not_open_loopback() -> None:
    assert address_refusal(ipaddress.ip_address("127.0.0.1"), {C.PRIVATE}) is not None


@pytest.mark.parametrize(
    "address", ["169.254.169.254", "fe80::1", "::ffff:169.254.169.254", "100.100.100.200", "0.0.0.0"]
)
def test_link_local_and_metadata_addresses_are_refused_even_for_a_server_in_that_class(address: str) -> None:
    every = set(AddressClass)
    refusal = address_refusal(ipaddress.ip_address(address), every)
    assert refusal is not None and "never" in refusal


def test_public_address_is_always_allowed() -> None:
    assert address_refusal(ipaddress.ip_address("93.184.216.34"), set()) is None


@pytest.mark.parametrize(
    ("host", "address"),
    [("127.0.0.1", "127.0.0.1"), ("[::1]", "::1"), ("2130706433", "127.0.0.1"), ("0x7f.1", "127.0.0.1")],
)
def test_parse_address_reads_every_spelling(host: str, address: str) -> None:
    assert parse_address(host) == ipaddress.ip_address(address)


def test_parse_address_of_a_name_is_none() -> None:
    assert parse_address("auth.example.com") is None
