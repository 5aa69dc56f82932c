"""The official suite's server scenarios, directly and through the gateway (docs/conformance.md).

Runs scripts/server-conformance and asserts that the reference server passes every scored check
directly (else the harness, not the gateway, is broken) and that the runner printed its table and
its final line. What fails through the gateway today (issue 13) is reported, not asserted here:
once the gateway passes what the direct run passes, add `--strict` to the command below.
Deselect with `-m "not conformance"`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TIMEOUT = 600
BARE_FLOOR = {
    ("2025-11-25", "gw-http-bare"): 56,
    ("2025-11-25", "gw-stdio-bare"): 56,
    ("2026-07-28", "gw-http-bare"): 115,
    ("2026-07-28", "gw-stdio-bare"): 115,
}

pytestmark = pytest.mark.conformance


def test_the_reference_server_passes_the_server_suite_directly_and_the_gateway_is_measured() -> None:
    if shutil.which("npm") is None:
        pytest.skip("npm is needed to install the conformance suite")
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    try:
        done = subprocess.run(
            [str(REPO / "scripts" / "server-conformance"), "--bare", "--jobs", "3"],
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            start_new_session=True,
        )
    except subprocess.TimeoutExpired as exc:
        partial = exc.stdout.decode("utf-8", "replace") if isinstance(exc.stdout, bytes) else exc.stdout or ""
        pytest.fail(f"scripts/server-conformance did not finish within {TIMEOUT}s:\n{partial}")
    output = done.stdout
    lines = output.splitlines()
    assert lines and lines[-1].startswith("server-conformance: "), f"no final line:\n{output}\n{done.stderr[-3000:]}"
    table = {
        (cells[0], cells[1]): cells[2:]
        for line in lines
        if line.startswith(("2025-11-25 ", "2026-07-28 ")) and len(cells := line.split()) >= 4
    }
    for revision in ("2025-11-25", "2026-07-28"):
        for target in ("direct", "gw-http", "gw-stdio", "gw-http-bare", "gw-stdio-bare"):
            assert (revision, target) in table, f"no table row for {revision} {target}:\n{output}"
    # A ratchet, not the goal: with `naming: bare` the gateway keeps at least the checks it kept
    # when bare names landed (docs/conformance.md); issue 13 raises these to the direct run's.
    for (revision, target), floor in BARE_FLOOR.items():
        kept = int(table[(revision, target)][1].split("/")[0])
        assert kept >= floor, f"{revision} {target}: {kept} of the direct run's checks, was {floor}:\n{output}"
    assert "DIRECT FAILURE" not in output, output
    assert done.returncode == 0, f"{output}\n\n(per-scenario results: test-output/server-conformance/)"
