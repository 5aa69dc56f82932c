"""Run the official MCP conformance suite's SERVER scenarios, directly and through Bastion, and count.

    .venv/bin/python conformance/server_run.py [--jobs N] [--bare] [--strict] [--out DIR]
        [--revision REV] [--target NAME]

`scripts/server-conformance` installs the pinned suite and Node runtime (as scripts/conformance
does) and calls this. The server under test is the reference server tests/fixtures/
conformance_server.py (mcp SDK 2.3.0). For each revision (2025-11-25, 2026-07-28) one suite
process, `server --url URL --requirements REV`, runs against each target:

- `direct`: the reference server over streamable HTTP;
- `gw-http`: `bastion gateway run --transport streamable-http` in a temporary BASTION_HOME, with the
  reference server as a streamable-HTTP upstream (`type: remote`);
- `gw-stdio`: the same with the reference server as a stdio upstream (`type: server`);
- with `--bare`, also `gw-http-bare` and `gw-stdio-bare`: config.yaml says `gateway: {naming:
  bare}` (issue 13, point 1). A Bastion that refuses the setting is reported and those targets are
  skipped; the prefixed ones still run.

The gateway's legacy SSE front (`--transport sse`, GET /sse + POST /messages/) is not a target: the
suite's server runner speaks only streamable HTTP (the SDK's StreamableHTTPClientTransport and raw
POSTs), so it cannot drive an SSE endpoint.

The suite cannot send an `Authorization` header (`conformance server` has no header option), so the
gateway runs with `--no-token`, the documented opt-out for a harness that cannot send headers. It
listens on 127.0.0.1 only, in a throw-away home.

Each (revision, target) gets its own reference server and gateway, run a few at a time (`--jobs`).
The suite's checks.json per scenario land in DIR/<revision>/<target>/; `summary.json` in DIR holds
every count. Counting is conformance/run.py's: SUCCESS passes, FAILURE and WARNING fail, other
statuses (INFO, SKIPPED) are not counted; a scenario that left no checks.json counts one failure.
Scored scenarios are the revision's requirement set; the `not_scored` ones (extensions, pending)
run and are shown apart.

Exit status: non-zero when a scored check fails DIRECTLY (the reference server or the harness is
broken). Failures through the gateway are printed but do not fail the run, unless `--strict`:
then any check that passes directly and fails through a gateway target fails the run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import NODE, SUITE, _node_version, _run, _suite_version  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
REFERENCE = REPO / "tests" / "fixtures" / "conformance_server.py"
DEFAULT_OUT = REPO / "test-output" / "server-conformance"
REVISIONS = ("2025-11-25", "2026-07-28")
SERVER_NAME = "ref"
SCENARIO_TIMEOUT_MS = 15_000
SUITE_DEADLINE = 600.0
START_DEADLINE = 30.0
READY_LINE = re.compile(r"gateway listening on (http://\S+)")
PASS, FAIL = ("SUCCESS",), ("FAILURE", "WARNING")


@dataclass(frozen=True)
class Target:
    name: str
    upstream: str | None  # None: the reference server directly; else "http" or "stdio"
    bare: bool = False


TARGETS = [Target("direct", None), Target("gw-http", "http"), Target("gw-stdio", "stdio")]
BARE_TARGETS = [Target("gw-http-bare", "http", bare=True), Target("gw-stdio-bare", "stdio", bare=True)]


@dataclass
class Scenario:
    name: str
    scored: bool
    checks: list[dict[str, Any]] = field(default_factory=list)
    missing: bool = False  # the suite left no checks.json for it

    @property
    def passed(self) -> int:
        return sum(1 for c in self.checks if c.get("status") in PASS)

    @property
    def failed(self) -> int:
        return sum(1 for c in self.checks if c.get("status") in FAIL) + (1 if self.missing else 0)

    def failing(self) -> list[str]:
        ids = [str(c.get("id")) for c in self.checks if c.get("status") in FAIL]
        return ids + (["(no checks.json: the scenario did not finish)"] if self.missing else [])

    def passing(self) -> set[str]:
        return {str(c.get("id")) for c in self.checks if c.get("status") in PASS}


@dataclass
class Outcome:
    revision: str
    target: Target
    scenarios: list[Scenario] = field(default_factory=list)
    note: str | None = None  # why it did not run, if it did not

    def total(self, scored: bool) -> tuple[int, int]:
        chosen = [s for s in self.scenarios if s.scored is scored]
        return sum(s.passed for s in chosen), sum(s.failed for s in chosen)


class Skip(Exception):
    """The target cannot run (e.g. Bastion refused `naming: bare`); the message says why."""


# --- what a revision runs -----------------------------------------------------------------------


async def requirement_set(revision: str) -> tuple[list[str], list[str]]:
    """(scored, not scored) server scenarios of a revision, as the pinned suite lists them."""
    code, out = await _run([str(NODE), str(SUITE), "list", "--requirements", revision], 60.0)
    scored: list[str] = []
    extra: list[str] = []
    section = None
    for line in out.splitlines():
        if line.startswith("Server scenarios"):
            section = "server"
        elif line and not line.startswith(" "):
            section = "other" if not line.startswith("Run and reported") else "not_scored"
        elif section == "server" and (m := re.match(r"^\s+- (\S+)$", line)):
            scored.append(m.group(1))
        elif section == "not_scored" and (m := re.match(r"^\s+- (\S+) \[server\]$", line)):
            extra.append(m.group(1))
    if code != 0 or not scored:
        raise SystemExit(f"server-conformance: could not list the {revision} requirement set:\n{out[-2000:]}")
    return scored, extra


# --- the things under test ----------------------------------------------------------------------


async def _start(argv: list[str], env: dict[str, str] | None = None) -> asyncio.subprocess.Process:
    # stdin is a pipe we hold: the reference server exits when it closes, the gateway on its EOF too
    return await asyncio.create_subprocess_exec(
        *argv,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        start_new_session=True,
    )


async def _stop(process: asyncio.subprocess.Process) -> None:
    if process.stdin is not None:
        with contextlib.suppress(OSError):
            process.stdin.close()
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), 5)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            await process.wait()
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)  # whatever it left in its group (a stdio upstream)


async def _drain(stream: asyncio.StreamReader | None, into: Path) -> None:
    if stream is None:
        return
    with into.open("ab") as sink:
        while chunk := await stream.read(65536):
            sink.write(chunk)


@contextlib.asynccontextmanager
async def reference_server(logs: Path) -> AsyncIterator[str]:
    """The reference server on a free loopback port; yields its URL."""
    process = await _start([sys.executable, str(REFERENCE), "--port", "0"])
    assert process.stdout is not None
    err = asyncio.create_task(_drain(process.stderr, logs / "reference.stderr.txt"))
    try:
        try:
            line = await asyncio.wait_for(process.stdout.readline(), START_DEADLINE)
            url = str(json.loads(line)["url"])
        except (TimeoutError, ValueError, KeyError):
            raise Skip("the reference server printed no ready line; see reference.stderr.txt") from None
        yield url
    finally:
        await _stop(process)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(err, 5)


def _bastion_env(home: Path) -> dict[str, str]:
    env = {**os.environ, "BASTION_HOME": str(home), "BASTION_STORE": "file", "PYTHONUNBUFFERED": "1"}
    for name in ("BASTION_GATEWAY_TOKEN", "BASTION_CLIENT_SECRET"):
        env.pop(name, None)
    return env


def write_home(home: Path, target: Target, upstream_url: str | None) -> None:
    if target.upstream == "http":
        entry: dict[str, Any] = {
            "type": "remote",
            "title": "conformance reference server (HTTP)",
            "remote": {"url": upstream_url, "transport_type": "streamable-http"},
        }
    else:
        entry = {
            "type": "server",
            "title": "conformance reference server (stdio)",
            "command": [sys.executable, str(REFERENCE), "--stdio"],
        }
    (home / "catalog.yaml").write_text(yaml.safe_dump({"registry": {SERVER_NAME: entry}}), encoding="utf-8")
    if target.bare:
        (home / "config.yaml").write_text(yaml.safe_dump({"gateway": {"naming": "bare"}}), encoding="utf-8")


@contextlib.asynccontextmanager
async def gateway(target: Target, logs: Path, upstream_url: str | None) -> AsyncIterator[str]:
    """`bastion gateway run` in a throw-away home in front of the reference server; yields /mcp's URL."""
    with tempfile.TemporaryDirectory(prefix="bastion-srvconf-") as tmp:
        home = Path(tmp)
        write_home(home, target, upstream_url)
        env = _bastion_env(home)
        bastion = [sys.executable, "-m", "bastion"]
        code, out = await _run([*bastion, "server", "enable", SERVER_NAME], 60.0, env=env)
        (logs / "enable.txt").write_text(out, encoding="utf-8")
        if code != 0:
            refused = target.bare and "naming" in out
            why = "Bastion refused `gateway: {naming: bare}`" if refused else "`bastion server enable` failed"
            raise Skip(f"{why}; see {logs / 'enable.txt'}")
        # --no-token: the suite's server runner cannot send the gateway token (no header option).
        argv = [*bastion, "gateway", "run", "--transport", "streamable-http", "--host", "127.0.0.1", "--port", "0"]
        process = await _start([*argv, "--servers", SERVER_NAME, "--no-token"], env)
        out_task = asyncio.create_task(_drain(process.stdout, logs / "gateway.stdout.txt"))
        ready: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        err_task = asyncio.create_task(_watch_stderr(process.stderr, logs / "gateway.stderr.txt", ready))
        try:
            try:
                url = await asyncio.wait_for(asyncio.shield(ready), START_DEADLINE)
            except (TimeoutError, EOFError):
                text = (logs / "gateway.stderr.txt").read_text("utf-8", "replace")
                refused = target.bare and "naming" in text
                why = "Bastion refused `gateway: {naming: bare}`" if refused else "the gateway did not start"
                raise Skip(f"{why}; see {logs / 'gateway.stderr.txt'}") from None
            await _wait_upstream_ready(url)
            yield url
        finally:
            await _stop(process)
            for task in (out_task, err_task):
                with contextlib.suppress(TimeoutError, EOFError):
                    await asyncio.wait_for(task, 5)


async def _watch_stderr(stream: asyncio.StreamReader | None, into: Path, ready: asyncio.Future[str]) -> None:
    assert stream is not None
    with into.open("ab") as sink:
        while line := await stream.readline():
            sink.write(line)
            sink.flush()
            match = READY_LINE.search(line.decode("utf-8", "replace"))
            if match and not ready.done():
                ready.set_result(match.group(1))
    if not ready.done():
        ready.set_exception(EOFError())


async def _wait_upstream_ready(url: str) -> None:
    """Until /health says the upstream is ready, at most START_DEADLINE seconds."""
    health = url.rsplit("/", 1)[0] + "/health"
    deadline = time.monotonic() + START_DEADLINE
    async with httpx2.AsyncClient(timeout=5.0) as client:
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx2.HTTPError, ValueError):
                body = (await client.get(health)).json()
                if body.get("upstreams_total") and body.get("upstreams_ready") == body.get("upstreams_total"):
                    return
            await asyncio.sleep(0.2)
    raise Skip(f"the gateway's upstream was not ready within {START_DEADLINE:g}s ({health})")


@contextlib.asynccontextmanager
async def under_test(target: Target, logs: Path) -> AsyncIterator[str]:
    """The URL the suite tests for this target, with everything behind it running."""
    if target.upstream == "stdio":
        async with gateway(target, logs, None) as url:
            yield url
        return
    async with reference_server(logs) as ref_url:
        if target.upstream is None:
            yield ref_url
        else:
            async with gateway(target, logs, ref_url) as url:
                yield url


# --- one suite run ------------------------------------------------------------------------------


async def run_target(
    revision: str, target: Target, plan: tuple[list[str], list[str]], out: Path, slots: asyncio.Semaphore
) -> Outcome:
    outcome = Outcome(revision, target)
    results = out / revision / target.name
    results.mkdir(parents=True, exist_ok=True)
    async with slots:
        started = time.monotonic()
        try:
            async with under_test(target, results) as url:
                argv = [str(NODE), str(SUITE), "server", "--url", url, "--requirements", revision]
                argv += ["--timeout", str(SCENARIO_TIMEOUT_MS), "-o", str(results)]
                code, text = await _run(argv, SUITE_DEADLINE)
                (results / "suite.txt").write_text(text, encoding="utf-8")
                if code == -1:
                    outcome.note = f"the suite was stopped after {SUITE_DEADLINE:g}s"
        except Skip as exc:
            outcome.note = str(exc)
            print(f"SKIP {revision} {target.name:<14} {exc}", flush=True)
            return outcome
        elapsed = time.monotonic() - started
    scored, extra = plan
    for name, is_scored in [(s, True) for s in scored] + [(s, False) for s in extra]:
        outcome.scenarios.append(read_scenario(results, name, is_scored))
    for s in outcome.scenarios:
        mark = "ok  " if s.failed == 0 else ("FAIL" if s.scored else "fail")
        tag = "" if s.scored else "  (not scored)"
        print(f"{mark} {revision} {target.name:<14} {s.name:<46} {s.passed:>3} passed {s.failed:>2} failed{tag}")
    print(f"---- {revision} {target.name}: done in {elapsed:.1f}s", flush=True)
    return outcome


def read_scenario(results: Path, name: str, scored: bool) -> Scenario:
    scenario = Scenario(name, scored)
    found = sorted(results.glob(f"server-{name}-*/checks.json"))
    # the timestamp suffix keeps `tools-call-error` apart from a longer name sharing its prefix
    found = [f for f in found if re.fullmatch(rf"server-{re.escape(name)}-\d{{4}}-.*", f.parent.name)]
    if not found:
        scenario.missing = True
        return scenario
    checks = json.loads(found[-1].read_text(encoding="utf-8"))
    scenario.checks = [c for c in checks if isinstance(c, dict)]
    return scenario


# --- the report ---------------------------------------------------------------------------------


def regressions(outcomes: list[Outcome]) -> dict[tuple[str, str], list[str]]:
    """(revision, target) -> `scenario: check` lines that pass directly and fail through the gateway."""
    direct = {(o.revision, s.name): s.passing() for o in outcomes if o.target.upstream is None for s in o.scenarios}
    found: dict[tuple[str, str], list[str]] = {}
    for o in outcomes:
        if o.target.upstream is None:
            continue
        lines = []
        for s in o.scenarios:
            ok_directly = direct.get((o.revision, s.name), set())
            lost = [c for c in s.failing() if c in ok_directly or not ok_directly or c.startswith("(no checks")]
            lines += [f"{s.name}: {check}" for check in dict.fromkeys(lost)]
        found[(o.revision, o.target.name)] = lines
    return found


def kept(outcomes: list[Outcome], outcome: Outcome) -> tuple[int, int]:
    """(checks passing here too, checks passing directly), over the scored scenarios.

    The suite emits fewer checks when a scenario stops early (a tool it cannot find), so a
    target's own total is not comparable with the direct run's; this count is.
    """
    direct = next((o for o in outcomes if o.revision == outcome.revision and o.target.upstream is None), None)
    if direct is None:
        return 0, 0
    want = {(s.name, c) for s in direct.scenarios if s.scored for c in s.passing()}
    have = {(s.name, c) for s in outcome.scenarios if s.scored for c in s.passing()}
    return len(want & have), len(want)


def print_table(outcomes: list[Outcome]) -> None:
    print()
    head = f"{'revision':<11} {'target':<14} {'scored passed/total':>20} {'of direct':>10} {'not scored':>11}  note"
    print(head)
    for o in outcomes:
        if o.note and not o.scenarios:
            print(f"{o.revision:<11} {o.target.name:<14} {'-':>20} {'-':>10} {'-':>11}  {o.note}")
            continue
        sp, sf = o.total(True)
        xp, xf = o.total(False)
        k, n = kept(outcomes, o)
        row = f"{o.revision:<11} {o.target.name:<14} {f'{sp}/{sp + sf}':>20} {f'{k}/{n}':>10} {f'{xp}/{xp + xf}':>11}"
        print(f"{row}  {o.note or ''}")


def summary(outcomes: list[Outcome], seconds: float) -> dict[str, Any]:
    return {
        "suite": _suite_version(),
        "node": _node_version(),
        "commit": _commit(),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "seconds": round(seconds, 1),
        "runs": [
            {
                "revision": o.revision,
                "target": o.target.name,
                "note": o.note,
                "scored": dict(zip(("passed", "failed"), o.total(True), strict=True)),
                "not_scored": dict(zip(("passed", "failed"), o.total(False), strict=True)),
                "direct_checks_kept": dict(zip(("kept", "of"), kept(outcomes, o), strict=True)),
                "scenarios": [
                    {
                        "name": s.name,
                        "scored": s.scored,
                        "passed": s.passed,
                        "failed": s.failed,
                        "failing_checks": s.failing(),
                    }
                    for s in o.scenarios
                ],
            }
            for o in outcomes
        ],
    }


def _commit() -> str | None:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        done = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
        return done.stdout.strip() or None
    return None


async def main_async(args: argparse.Namespace) -> int:
    if not NODE.exists() or not SUITE.exists():
        print("server-conformance: the suite is not installed; run scripts/server-conformance", file=sys.stderr)
        return 1
    out: Path = args.out
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    revisions = [r for r in REVISIONS if not args.revision or r == args.revision]
    targets = [t for t in TARGETS + (BARE_TARGETS if args.bare else []) if not args.target or t.name == args.target]
    plans = dict(zip(revisions, await asyncio.gather(*(requirement_set(r) for r in revisions)), strict=True))
    jobs = [(r, t) for r in revisions for t in targets]
    print(f"running {len(jobs)} suite runs, {args.jobs} at a time; results in {out}", flush=True)
    print("note: the gateway's SSE front is not measured: the suite's server runner speaks streamable HTTP only")
    started = time.monotonic()
    slots = asyncio.Semaphore(args.jobs)
    outcomes = list(await asyncio.gather(*(run_target(r, t, plans[r], out, slots) for r, t in jobs)))
    (out / "summary.json").write_text(json.dumps(summary(outcomes, time.monotonic() - started), indent=2) + "\n")

    print_table(outcomes)
    direct_failures = [
        f"{o.revision} {s.name}: {', '.join(s.failing())}"
        for o in outcomes
        if o.target.upstream is None
        for s in o.scenarios
        if s.scored and s.failed
    ]
    direct_failures += [f"{o.revision}: {o.note}" for o in outcomes if o.target.upstream is None and o.note]
    lost = regressions(outcomes)
    for (revision, name), lines in lost.items():
        if lines:
            print(f"\nthrough {name} at {revision}, {len(lines)} checks fail that pass directly:")
            for line in lines:
                print(f"  {line}")
    for line in direct_failures:
        print(f"DIRECT FAILURE {line}")
    strict_failed = args.strict and (any(lost.values()) or any(o.note for o in outcomes))
    status = "failed" if direct_failures or strict_failed else "ok"
    print(f"\nserver-conformance: {status} (direct failures: {len(direct_failures)}; see {out / 'summary.json'})")
    return 1 if status == "failed" else 0


def main() -> int:
    parser = argparse.ArgumentParser(description="run the MCP conformance suite's server scenarios")
    parser.add_argument("--jobs", type=int, default=max(2, min(4, (os.cpu_count() or 2) + 1)))
    parser.add_argument("--bare", action="store_true", help="also run the gateway with `gateway: {naming: bare}`")
    parser.add_argument("--strict", action="store_true", help="fail on any check lost through the gateway")
    parser.add_argument("--revision", choices=REVISIONS, default=None, help="run only this revision")
    parser.add_argument("--target", default=None, help="run only this target (direct, gw-http, gw-stdio, ...)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
