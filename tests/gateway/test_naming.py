"""Exposed names: `<server>__<name>`, stable, collision-free, valid and at most 64 characters."""

from __future__ import annotations

import pytest
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
