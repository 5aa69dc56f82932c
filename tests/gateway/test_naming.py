"""Exposed names: `<server>__<name>`, stable, collision-free, valid and at most 64 characters."""

from __future__ import annotations

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from mcp.shared.tool_name_validation import validate_tool_name

from bastion.gateway.naming import MAX_NAME_LENGTH, exposed_name, is_valid_exposed_name


def test_plain_name_is_server_double_underscore_tool() -> None:
    assert exposed_name("github", "search_issues") == "github__search_issues"


def test_name_depends_only_on_its_server_and_tool() -> None:
    assert exposed_name("notion", "search") == exposed_name("notion", "search")


@pytest.mark.parametrize(
    ("server", "tool"),
    [
        ("a" * 40, "b" * 40),
        ("srv", "tool with spaces/and:colons"),
        ("srv", "ünïcode"),
        ("a__b", "c"),
        ("x", "y" * 200),
    ],
)
def test_unusual_names_become_valid_bounded_names(server: str, tool: str) -> None:
    name = exposed_name(server, tool)
    assert len(name) <= MAX_NAME_LENGTH
    assert is_valid_exposed_name(name)
    assert validate_tool_name(name).is_valid


def test_ambiguous_split_does_not_collide() -> None:
    """(`a__b`, `c`) and (`a`, `b__c`) would both read `a__b__c`; only the unambiguous one keeps it."""
    assert exposed_name("a", "b__c") == "a__b__c"
    assert exposed_name("a__b", "c") != "a__b__c"


def test_truncated_names_of_different_tools_differ() -> None:
    long = "t" * 100
    assert exposed_name("srv", long + "1") != exposed_name("srv", long + "2")


def test_sanitized_names_that_look_alike_differ() -> None:
    assert exposed_name("srv", "a b") != exposed_name("srv", "a_b")


def test_server_ending_in_underscore_does_not_take_the_name_of_a_tool_starting_with_one() -> None:
    """`a` + `_b` and `a_` + `b` both read `a___b` as plain names; the ordinary server keeps it."""
    assert exposed_name("a", "_b") == "a___b"
    assert exposed_name("a_", "b") != "a___b"


def test_ordinary_servers_keep_todays_names() -> None:
    assert exposed_name("github-official", "create_issue") == "github-official__create_issue"
    assert exposed_name("my_server.v2", "_private") == "my_server.v2___private"
    assert exposed_name("srv", "ünïcode") == "srv___n_code-" + exposed_name("srv", "ünïcode")[-8:]


@pytest.mark.parametrize("server", ["a_", "a__b", "_a", "-a", "my server", "x" * 60])
def test_servers_that_are_not_ordinary_get_an_escaped_name(server: str) -> None:
    name = exposed_name(server, "b" * 10)
    assert name.startswith("_") and is_valid_exposed_name(name)


def test_a_tool_name_cannot_imitate_another_servers_escaped_or_cut_name() -> None:
    """A hostile server named `a` can choose any tool name: it still never meets the names of
    `a__b` (escaped) or of an ordinary server's cut names."""
    victim_escaped = exposed_name("a__b", "c")
    victim_cut = exposed_name("ab", "t" * 100)
    for tool in (victim_escaped, victim_escaped[len("a__") :], victim_cut, victim_cut[len("a__") :], "b__c"):
        assert exposed_name("a", tool) not in (victim_escaped, victim_cut)


_PIECES = st.text(alphabet="ab_.- ", min_size=1, max_size=6)


@settings(max_examples=2000, deadline=None)
@given(_PIECES, _PIECES)
def test_no_other_reading_of_a_name_belongs_to_another_server(server: str, tool: str) -> None:
    """Every other way to cut `<server>__<tool>` at a `__` is a pair of another server, and that
    pair's exposed name differs."""
    joined = f"{server}__{tool}"
    mine = exposed_name(server, tool)
    for at in range(len(joined) - 1):
        if joined.startswith("__", at) and joined[:at] != server and joined[:at] and joined[at + 2 :]:
            assert exposed_name(joined[:at], joined[at + 2 :]) != mine


@settings(max_examples=2000, deadline=None)
@given(_PIECES, _PIECES, _PIECES, _PIECES)
def test_pairs_of_different_servers_never_share_an_exposed_name(s1: str, n1: str, s2: str, n2: str) -> None:
    assume(s1 != s2)
    assert exposed_name(s1, n1) != exposed_name(s2, n2)


@settings(max_examples=300, deadline=None)
@given(st.text(min_size=1, max_size=80), st.text(min_size=1, max_size=200))
def test_every_exposed_name_is_valid_and_bounded(server: str, tool: str) -> None:
    name = exposed_name(server, tool)
    assert is_valid_exposed_name(name) and validate_tool_name(name).is_valid
