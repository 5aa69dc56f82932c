"""The official MCP conformance suite, with Bastion as the client under test (docs/conformance.md).

Runs scripts/conformance (which installs the pinned suite with `npm ci` when needed) and asserts
its exit status. On failure the message is the runner's own report: one line per scenario, the
failing ones with the folder of their checks.json and client logs, and the final count.
Deselect with `-m "not conformance"` (it takes a few minutes).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TIMEOUT = 900

pytestmark = pytest.mark.conformance


def test_the_conformance_suite_passes_through_the_gateway() -> None:
    if shutil.which("npm") is None:
        pytest.skip("npm is needed to install the conformance suite")
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    try:
        done = subprocess.run(
            [str(REPO / "scripts" / "conformance")],
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
        pytest.fail(f"scripts/conformance did not finish within {TIMEOUT}s:\n{partial}")
    output = done.stdout.strip()
    last = output.splitlines()[-1] if output else ""
    assert last.startswith("conformance: "), f"no final count line:\n{output}\n{done.stderr[-3000:]}"
    assert done.returncode == 0, f"{output}\n\n(per-scenario results: test-output/conformance/)"
