"""`python -m bench.ab NAME=A NAME=B ...`: one optimization's before/after, measured side by side.

Starts the bench's echo upstream (streamable HTTP) and two `bastion gateway run` processes that
differ only in the environment given (`--a` / `--b`, e.g. `--a BASTION_COALESCE=1 --b
BASTION_COALESCE=0`), then measures direct, A and B in interleaved rounds, both protocol eras,
and prints p50 / p99, the added p50 against direct and the gateway's CPU per call. Prints only;
the figures go into docs/benchmarks.md by hand, with the command that produced them.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.measure import call_latencies, checked_call, http_connect, median, summary
from bench.procs import cpu_seconds
from bench.run import make_home, ready_gateway, start_echo_http


def _env(pairs: list[str]) -> dict[str, str]:
    env: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"expected NAME=VALUE, got {pair!r}")
        env[name] = value
    return env


async def _measure(url: str, tool: str, mode: str, pid: int | None, calls: int, seconds: float) -> dict[str, Any]:
    async with http_connect(url)(mode) as client:
        for _ in range(50):
            await checked_call(client, tool)
        cpu0 = cpu_seconds(pid) if pid else math.nan
        samples = await call_latencies(client, tool, warmup=0, calls=calls, seconds=seconds)
        cpu1 = cpu_seconds(pid) if pid else math.nan
    result = summary(samples)
    result["cpu"] = (cpu1 - cpu0) * 1e3 / len(samples) if samples else math.nan
    return result


async def _run(args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="bastion-ab-"))
    logs = work / "logs"
    logs.mkdir()
    echo, port = start_echo_http(logs)
    echo_url = f"http://127.0.0.1:{port}/mcp"
    catalog = {"up": {"type": "remote", "remote": {"url": echo_url, "transport_type": "streamable-http"}}}
    gateways = {}
    try:
        for label, pairs in (("A", args.a), ("B", args.b)):
            env = {**make_home(work / f"home-{label}", catalog), **_env(pairs)}
            gateways[label] = ready_gateway(env, logs, 1, name=f"gateway-{label}")
        paths = [("direct", echo_url, "echo", None)] + [
            (label, url, "up__echo", proc.pid) for label, (proc, url) in gateways.items()
        ]
        rows: dict[tuple[str, str], list[dict[str, Any]]] = {}
        added: dict[tuple[str, str], list[float]] = {}
        for index in range(args.rounds):
            order = paths[index % len(paths) :] + paths[: index % len(paths)]
            for mode in ("legacy", "auto"):
                this: dict[str, dict[str, Any]] = {}
                for label, url, tool, pid in order:
                    this[label] = await _measure(url, tool, mode, pid, args.calls, args.seconds)
                    rows.setdefault((label, mode), []).append(this[label])
                for label in gateways:
                    added.setdefault((label, mode), []).append(this[label]["p50"] - this["direct"]["p50"])
            print(f"round {index + 1}/{args.rounds} done", flush=True)
    finally:
        for proc, _ in gateways.values():
            proc.stop()
        echo.stop()
    print(
        f"\nA = {' '.join(args.a) or '(default)'}; B = {' '.join(args.b) or '(default)'}; "
        f"{args.rounds} interleaved rounds, medians of per-round figures (ms)\n"
    )
    print("| path | mode | p50 | p99 | added p50 | gateway CPU per call |")
    print("|---|---|---|---|---|---|")
    for label in ("direct", *gateways):
        for mode in ("legacy", "auto"):
            sel = rows[(label, mode)]
            add = median(added[(label, mode)]) if label != "direct" else math.nan
            print(
                f"| {label} | {'modern' if mode == 'auto' else mode} | {median([r['p50'] for r in sel]):.2f} |"
                f" {median([r['p99'] for r in sel]):.2f} | {add:+.2f} | {median([r['cpu'] for r in sel]):.2f} |"
            )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.ab", description=__doc__.split("\n\n")[0])
    parser.add_argument("--a", nargs="*", default=[], metavar="NAME=VALUE", help="environment of gateway A")
    parser.add_argument("--b", nargs="*", default=[], metavar="NAME=VALUE", help="environment of gateway B")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=1.5)
    started = time.perf_counter()
    asyncio.run(_run(parser.parse_args()))
    print(f"\n({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
