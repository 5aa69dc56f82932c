"""/health reports the credential store when the runtime gives a status callable."""

from __future__ import annotations

from typing import Any

from bastion.gateway.pool import Pool
from bastion.gateway.server import health_payload


def test_health_without_a_store_status_is_unchanged() -> None:
    assert "store" not in health_payload(Pool(lambda changes: None))


def test_health_reports_a_degraded_store_and_stays_ok() -> None:
    status: dict[str, Any] = {"backend": "redis", "where": "127.0.0.1:6379", "degraded": False}
    pool = Pool(lambda changes: None)
    assert health_payload(pool, lambda: dict(status))["store"] == status
    status["degraded"] = True
    payload = health_payload(pool, lambda: dict(status))
    assert payload["store"]["degraded"] is True
    assert payload["status"] == "ok"  # the gateway goes on with the tokens it holds
