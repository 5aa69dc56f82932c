"""The hot path's off switches (gateway/switches.py)."""

from __future__ import annotations

import pytest

from bastion.gateway.coalesce import coalesce_enabled
from bastion.gateway.front import fast_lane_enabled
from bastion.gateway.lean import lean_enabled
from bastion.gateway.switches import switched_on
from bastion.gateway.upstream import wire_enabled


@pytest.mark.parametrize("value", ["0", "false", "No", " off ", "OFF"])
def test_off_values_turn_a_switch_off(value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BASTION_TEST_SWITCH", value)
    assert not switched_on("BASTION_TEST_SWITCH")


@pytest.mark.parametrize("value", [None, "1", "yes", "on", ""])
def test_anything_else_leaves_it_on(value: str | None, monkeypatch: pytest.MonkeyPatch) -> None:
    if value is None:
        monkeypatch.delenv("BASTION_TEST_SWITCH", raising=False)
    else:
        monkeypatch.setenv("BASTION_TEST_SWITCH", value)
    assert switched_on("BASTION_TEST_SWITCH")


def test_each_optimization_reads_its_own_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    checks = {
        "BASTION_LEAN_PATH": lean_enabled,
        "BASTION_WIRE": wire_enabled,
        "BASTION_COALESCE": coalesce_enabled,
        "BASTION_FAST_LANE": fast_lane_enabled,
    }
    for variable in checks:
        monkeypatch.delenv(variable, raising=False)
    for variable, check in checks.items():
        assert check()
        monkeypatch.setenv(variable, "0")
        assert not check()
        assert all(other() for name, other in checks.items() if name != variable)
        monkeypatch.delenv(variable)
