"""`python -m bench --quick` as a smoke test: the harness runs end to end, every figure produces
numbers, they are finite, and nothing it started is left running. Never asserts a time bound."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.integration


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("bench")
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    data = json.loads((out / "benchmarks.json").read_text())
    data["_markdown"] = (out / "benchmarks.md").read_text()
    data["_stderr"] = done.stderr
    return data


def test_every_figure_ran(quick_run: dict[str, Any]) -> None:
    assert quick_run.get("failures", {}) == {}, quick_run["failures"]
    for figure in ("latency", "throughput", "scale", "token", "cli", "steady_state"):
        assert figure in quick_run, figure
    assert quick_run["orphans"] == []


def test_latency_numbers_are_finite(quick_run: dict[str, Any]) -> None:
    summary = quick_run["latency"]["summary"]
    for key in ("direct-http/auto", "direct-stdio/auto", "bastion-http-http/auto", "bastion-stdio-stdio/auto"):
        item = summary[key]
        assert item["errors"] == [], (key, item["errors"])
        assert item["samples"] > 0
        assert _finite(item["p50"]) and _finite(item["p99"]), (key, item)
        assert item["p50"] > 0
    assert _finite(summary["bastion-http-http/auto"]["added_p50"])


def test_throughput_scale_token_cli(quick_run: dict[str, Any]) -> None:
    for row in quick_run["throughput"]["table"]:
        assert _finite(row["direct"]) and _finite(row["bastion"]) and row["bastion"] > 0, row
    for row in quick_run["scale"]:
        assert row["tools"] == row["expected_tools"], row
        assert _finite(row["all_listed_s"]) and _finite(row["list_raw"]["p50"]) and _finite(row["rss_mib"])
        assert _finite(row["list_last_byte"]["p50"]) and _finite(row["list_parse"]["p50"]) and row["list_bytes"] > 0
    for row in quick_run["throughput"]["table"]:
        assert _finite(row["nowire"]) and row["nowire"] > 0, row  # the raw channel's before/after
    token = quick_run["token"]
    assert isinstance(token["refreshes_at_expiry"], int)
    assert _finite(token["at_expiry"]["p50"]) and _finite(token["baseline"]["p50"])
    for item in quick_run["cli"].values():
        assert _finite(item["median_ms"]) and item["median_ms"] > 0


def test_markdown_has_the_tables(quick_run: dict[str, Any]) -> None:
    text = quick_run["_markdown"]
    assert "## Goals" in text and "Machine:" in text and "cores" in text
    assert "| Bastion, HTTP front → HTTP upstream |" in text
