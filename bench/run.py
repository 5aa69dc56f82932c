"""`python -m bench [--quick] [--only FIGURE ...]`: what the gateway costs, side by side.

Starts everything on 127.0.0.1 (the echo upstream, Bastion, the alternatives, the OAuth peers),
measures, stops everything by PID, and writes docs/benchmarks.{md,json}. Every comparison is
measured in the same run, in interleaved rounds (the order of the paths rotates each round);
figures are medians over rounds of each round's p50 / p99, and "added" is through − direct
within the same round. Every load loop is bounded in count and in time.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx2
import yaml

from bench import envs, report
from bench.measure import (
    GATEWAY_TOKENS,
    Connect,
    burst,
    call_latencies,
    checked_call,
    gateway_auth,
    http_connect,
    list_bytes_latencies,
    list_latencies,
    list_wire_latencies,
    median,
    stdio_connect,
    summary,
    throughput,
)
from bench.procs import (
    BenchError,
    Proc,
    alive,
    cmdline,
    cpu_seconds,
    descendants,
    free_port,
    rss_mib,
    stop_all,
    wait_port,
)

ROOT = envs.ROOT
PY = sys.executable
ECHO = str(ROOT / "bench" / "servers" / "echo.py")
FASTMCP_PROXY = str(ROOT / "bench" / "servers" / "fastmcp_proxy.py")
RAW_FORWARDER = str(ROOT / "bench" / "servers" / "raw_forwarder.py")
COUNTING_GATEWAY = str(ROOT / "bench" / "servers" / "counting_gateway.py")
FIGURES = ("latency", "throughput", "scale", "token", "cli")


@dataclass
class Config:
    quick: bool
    rounds: int = 5
    warmup: int = 50
    warmup_seconds: float = 0.5
    calls: int = 1000
    seconds: float = 1.5
    modes: tuple[str, ...] = ("legacy", "auto")
    tp_clients: tuple[int, ...] = (1, 8, 32, 128)
    tp_seconds: float = 1.5
    tp_rounds: int = 2
    scale: tuple[int, ...] = (1, 10, 100)
    tools_per_server: int = 50
    list_reps: int = 30
    token_calls: int = 500
    token_ttl: int = 15
    steady_calls: int = 500
    cli_runs: int = 15
    alternatives: bool = True

    @classmethod
    def make(cls, quick: bool) -> Config:
        if not quick:
            return cls(quick=False)
        return cls(
            quick=True,
            rounds=1,
            warmup=5,
            warmup_seconds=0.2,
            calls=30,
            seconds=0.5,
            modes=("auto",),
            tp_clients=(1, 8),
            tp_seconds=0.5,
            tp_rounds=1,
            scale=(1, 10),
            list_reps=5,
            token_calls=50,
            token_ttl=10,
            steady_calls=30,
            cli_runs=3,
            alternatives=False,
        )


@dataclass
class LatencyPath:
    key: str
    label: str
    connect: Connect
    tool: str
    upstream: str  # "http" | "stdio": which direct path "added" is measured against
    group: str  # "direct" | "bastion" | "alternative"
    cpu_pid: Callable[[], int | None] = lambda: None
    modes: tuple[str, ...] = ("legacy", "auto")


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- homes and gateways ------------------------------------------------------------------------


def make_home(path: Path, catalog: dict[str, Any], config: dict[str, Any] | None = None) -> dict[str, str]:
    """A $BASTION_HOME with `catalog` enabled; returns the environment to run `bastion` in it."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "catalog.yaml").write_text(yaml.safe_dump({"registry": catalog}))
    (path / "registry.yaml").write_text(yaml.safe_dump({"registry": {name: {"ref": ""} for name in catalog}}))
    if config:
        (path / "config.yaml").write_text(yaml.safe_dump(config))
    env = {**os.environ, "BASTION_HOME": str(path)}
    env.pop("BASTION_STORE", None)
    env.pop("BASTION_GATEWAY_TOKEN", None)  # the default: the home's token file
    return env


def start_gateway(
    env: dict[str, str],
    log_dir: Path,
    *,
    counting: bool = False,
    name: str = "gateway",
    lean: bool = True,
    wire: bool = True,
) -> Proc:
    """`bastion gateway run` on HTTP; `lean=False` runs the SDK's generic path (BASTION_LEAN_PATH=0),
    `wire=False` the lean path without the raw upstream channel (BASTION_WIRE=0)."""
    argv = [PY, COUNTING_GATEWAY] if counting else [PY, "-m", "bastion"]
    env = {**env, "BASTION_LEAN_PATH": "1" if lean else "0", "BASTION_WIRE": "1" if wire else "0"}
    proc = Proc(name, [*argv, "gateway", "run", "--transport", "streamable-http", "--port", "0"], log_dir, env=env)
    url = proc.wait_for(r"gateway listening on (http://\S+)", 60).group(1)
    # The gateway requires its token on loopback too; read it where a client finds it.
    token = env.get("BASTION_GATEWAY_TOKEN") or (Path(env["BASTION_HOME"]) / "gateway-token").read_text().strip()
    GATEWAY_TOKENS[url.rsplit("/", 1)[0]] = token
    return proc


def gateway_url(proc: Proc) -> str:
    return proc.wait_for(r"gateway listening on (http://\S+)").group(1)


def ready_gateway(env: dict[str, str], log_dir: Path, upstreams: int, **kwargs: Any) -> tuple[Proc, str]:
    """`start_gateway(...)`, then wait until `upstreams` upstreams are ready; the process and its URL."""
    proc = start_gateway(env, log_dir, **kwargs)
    url = gateway_url(proc)
    wait_health(url, lambda h: h["upstreams_ready"] == upstreams)
    return proc, url


def health(url: str) -> dict[str, Any]:
    base = url.rsplit("/", 1)[0]
    response = httpx2.get(f"{base}/health", headers=gateway_auth(url), timeout=10.0, trust_env=False)
    response.raise_for_status()
    return dict(response.json())


def wait_health(url: str, predicate: Callable[[dict[str, Any]], bool], timeout: float = 60.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        state = health(url)
        if predicate(state):
            return state
        if time.monotonic() > deadline:
            raise BenchError(f"gateway health never matched: {json.dumps(state)[:2000]}")
        time.sleep(0.02)


def start_echo_http(log_dir: Path, servers: int = 1, tools: int = 1) -> tuple[Proc, int]:
    proc = Proc("echo-http", [PY, ECHO, "--http", "--servers", str(servers), "--tools", str(tools)], log_dir)
    ready = proc.wait_json_ready(120)
    return proc, int(str(ready["port"]))


def start_protected(issuer: str, log_dir: Path) -> tuple[Proc, str]:
    """The OAuth-protected MCP server of tests/fixtures."""
    proc = Proc("protected", [PY, "-m", "tests.fixtures.protected_mcp", "--issuer", issuer], log_dir, cwd=ROOT)
    ready = proc.wait_json_ready(60)
    return proc, str(ready["url"])


def find_child(marker: str, exclude: set[int] | None = None) -> int | None:
    for pid in sorted(descendants(os.getpid())):
        if exclude and pid in exclude:
            continue
        if marker in cmdline(pid):
            return pid
    return None


def counters(proc: Proc, path: Path, timeout: float = 5.0) -> dict[str, Any]:
    """Ask the counting gateway for its counters (SIGUSR1) and read them."""
    path.unlink(missing_ok=True)
    os.kill(proc.pid, signal.SIGUSR1)
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise BenchError("the counting gateway did not write its counters")
        time.sleep(0.01)
    return dict(json.loads(path.read_text()))


def counter_delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, int]:
    keys = ("file_opens", "spawns", "store_get", "store_list", "store_get_secret")
    return {key: int(after.get(key, 0)) - int(before.get(key, 0)) for key in keys}


# --- figure 1 and 2: per-call latency ----------------------------------------------------------


class Bench:
    def __init__(self, cfg: Config, workdir: Path) -> None:
        self.cfg = cfg
        self.work = workdir
        self.logs = workdir / "logs"
        self.results: dict[str, Any] = {"notes": []}
        self.env_status: dict[str, Any] = {}

    def note(self, text: str) -> None:
        log(text)
        self.results["notes"].append(text)

    # ...........................................................................................

    async def latency(self) -> None:
        cfg = self.cfg
        echo, port = start_echo_http(self.logs)
        echo_url = f"http://127.0.0.1:{port}/mcp"
        env = make_home(
            self.work / "home-latency",
            {
                "up-http": {"type": "remote", "remote": {"url": echo_url, "transport_type": "streamable-http"}},
                "up-stdio": {"type": "server", "command": [PY, ECHO]},
            },
        )
        gateway, gw_url = ready_gateway(env, self.logs, 2)
        generic, generic_url = ready_gateway(env, self.logs, 2, name="gateway-generic", lean=False)
        nowire, nowire_url = ready_gateway(env, self.logs, 2, name="gateway-nowire", wire=False)
        stdio_gateway = [PY, "-m", "bastion", "gateway", "run", "--transport", "stdio"]

        def stdio_front(marker: str) -> Callable[[], int | None]:
            return lambda: find_child(marker)

        paths = [
            LatencyPath("direct-http", "direct, streamable HTTP", http_connect(echo_url), "echo", "http", "direct"),
            LatencyPath("direct-stdio", "direct, stdio", stdio_connect([PY, ECHO]), "echo", "stdio", "direct"),
            LatencyPath(
                "bastion-http-http",
                "Bastion, HTTP front → HTTP upstream",
                http_connect(gw_url),
                "up-http__echo",
                "http",
                "bastion",
                lambda: gateway.pid,
            ),
            LatencyPath(
                "bastion-http-stdio",
                "Bastion, HTTP front → stdio upstream",
                http_connect(gw_url),
                "up-stdio__echo",
                "stdio",
                "bastion",
                lambda: gateway.pid,
            ),
            LatencyPath(
                "bastion-http-http-nowire",
                "Bastion lean path without the raw upstream channel (BASTION_WIRE=0), HTTP → HTTP",
                http_connect(nowire_url),
                "up-http__echo",
                "http",
                "bastion",
                lambda: nowire.pid,
            ),
            LatencyPath(
                "bastion-http-http-generic",
                "Bastion generic path (BASTION_LEAN_PATH=0), HTTP → HTTP",
                http_connect(generic_url),
                "up-http__echo",
                "http",
                "bastion",
                lambda: generic.pid,
            ),
            LatencyPath(
                "bastion-http-stdio-generic",
                "Bastion generic path (BASTION_LEAN_PATH=0), HTTP → stdio",
                http_connect(generic_url),
                "up-stdio__echo",
                "stdio",
                "bastion",
                lambda: generic.pid,
            ),
            LatencyPath(
                "bastion-stdio-http",
                "Bastion, stdio front → HTTP upstream",
                stdio_connect(stdio_gateway, env),
                "up-http__echo",
                "http",
                "bastion",
                stdio_front("gateway run --transport stdio"),
            ),
            LatencyPath(
                "bastion-stdio-stdio",
                "Bastion, stdio front → stdio upstream",
                stdio_connect(stdio_gateway, env),
                "up-stdio__echo",
                "stdio",
                "bastion",
                stdio_front("gateway run --transport stdio"),
            ),
        ]
        if cfg.alternatives:
            paths += self._alternative_paths(echo_url)

        rounds: list[dict[str, Any]] = []
        for index in range(cfg.rounds):
            shift = index % len(paths)
            order = paths[shift:] + paths[:shift]
            this_round: dict[str, Any] = {}
            for path in order:
                for mode in cfg.modes:
                    if mode not in path.modes:
                        continue
                    key = f"{path.key}/{mode}"
                    try:
                        this_round[key] = await self._measure_path(path, mode)
                    except Exception as exc:
                        this_round[key] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
                        log(f"{key}: {this_round[key]['error']}")
            rounds.append(this_round)
            log(f"latency round {index + 1}/{cfg.rounds} done")

        self.results["latency"] = {
            "paths": [
                {"key": p.key, "label": p.label, "group": p.group, "upstream": p.upstream, "modes": list(p.modes)}
                for p in paths
            ],
            "rounds": rounds,
            "summary": _latency_summary(paths, rounds, cfg.modes),
        }
        gateway.stop()
        generic.stop()
        nowire.stop()
        await self.steady_state(env)
        echo.stop()

    def _alternative_paths(self, echo_url: str) -> list[LatencyPath]:
        paths: list[LatencyPath] = []
        for client, front in (("httpx2", "uvicorn"), ("rawhttp", "uvicorn"), ("rawhttp", "asyncio")):
            port = free_port()
            key = f"raw-forwarder-{client}" + ("-bare" if front == "asyncio" else "")
            proc = Proc(
                key,
                [PY, RAW_FORWARDER, "--port", str(port), "--upstream", echo_url, "--client", client, "--front", front],
                self.logs,
            )
            wait_port(port, proc)
            stack = "uvicorn + httptools" if front == "uvicorn" else "a bare asyncio protocol + httptools"
            paths.append(
                LatencyPath(
                    key,
                    f"raw byte forwarder, no MCP ({stack}, {client} client): the floor",
                    http_connect(f"http://127.0.0.1:{port}/mcp"),
                    "echo",
                    "http",
                    "alternative",
                    lambda proc=proc: proc.pid,  # type: ignore[misc]
                )
            )
        fastmcp = envs.fastmcp_env()
        self.env_status["fastmcp"] = {"ok": fastmcp.ok, "detail": fastmcp.detail}
        if fastmcp.ok:
            self.env_status["fastmcp"]["version"] = envs.version_of(fastmcp, "fastmcp")
            for key, label, extra in (
                ("fastmcp-create", "FastMCP `create_proxy(url)`", ["--url", echo_url]),
                ("fastmcp-reuse", "FastMCP proxy reusing one client", ["--url", echo_url, "--reuse"]),
                ("fastmcp-stdio", "FastMCP proxy, stdio upstream", ["--stdio", PY, ECHO]),
            ):
                port = free_port()
                proc = Proc(key, [str(fastmcp.python), FASTMCP_PROXY, "--port", str(port), *extra], self.logs)
                wait_port(port, proc)
                paths.append(
                    LatencyPath(
                        key,
                        label,
                        http_connect(f"http://127.0.0.1:{port}/mcp"),
                        "echo",
                        "stdio" if key == "fastmcp-stdio" else "http",
                        "alternative",
                        lambda proc=proc: proc.pid,  # type: ignore[misc]
                    )
                )
        else:
            self.note(f"FastMCP not measured: {fastmcp.detail}")
        proxy = envs.mcp_proxy_env()
        self.env_status["mcp-proxy"] = {"ok": proxy.ok, "detail": proxy.detail}
        if proxy.ok:
            self.env_status["mcp-proxy"]["version"] = envs.version_of(proxy, "mcp-proxy")
            port = free_port()
            binary = str(proxy.bin("mcp-proxy"))
            proc = Proc(
                "mcp-proxy-http",
                [binary, "--log-level", "WARNING", "--host", "127.0.0.1", "--port", str(port), "--", PY, ECHO],
                self.logs,
            )
            wait_port(port, proc)
            paths.append(
                LatencyPath(
                    "mcp-proxy-http-stdio",
                    "mcp-proxy, HTTP front → stdio",
                    http_connect(f"http://127.0.0.1:{port}/mcp"),
                    "echo",
                    "stdio",
                    "alternative",
                    lambda proc=proc: proc.pid,  # type: ignore[misc]
                    modes=("legacy",),
                )
            )
            paths.append(
                LatencyPath(
                    "mcp-proxy-stdio-http",
                    "mcp-proxy, stdio front → HTTP",
                    stdio_connect([binary, "--log-level", "WARNING", "--transport", "streamablehttp", echo_url]),
                    "echo",
                    "http",
                    "alternative",
                    lambda: find_child("--transport streamablehttp"),
                    modes=("legacy",),
                )
            )
        else:
            self.note(f"mcp-proxy not measured: {proxy.detail}")
        return paths

    async def _measure_path(self, path: LatencyPath, mode: str) -> dict[str, Any]:
        cfg = self.cfg
        async with path.connect(mode) as client:
            await checked_call(client, path.tool)
            pid = path.cpu_pid()
            version = client.session.protocol_version
            warm_until = time.perf_counter() + cfg.warmup_seconds
            for _ in range(cfg.warmup):
                await checked_call(client, path.tool)
                if time.perf_counter() > warm_until:
                    break
            cpu0 = cpu_seconds(pid) if pid else math.nan
            samples = await call_latencies(client, path.tool, warmup=0, calls=cfg.calls, seconds=cfg.seconds)
            cpu1 = cpu_seconds(pid) if pid else math.nan
        result = summary(samples)
        result["protocol"] = version
        result["proxy_cpu_ms_per_call"] = (cpu1 - cpu0) * 1e3 / len(samples) if samples else math.nan
        return result

    # ...........................................................................................

    async def steady_state(self, env: dict[str, str]) -> None:
        """Store reads, file opens and spawns per call, from the counting gateway."""
        cfg = self.cfg
        path = self.work / "counters-steady.json"
        gateway = start_gateway({**env, "BENCH_COUNTERS": str(path)}, self.logs, counting=True, name="counting")
        try:
            url = gateway_url(gateway)
            wait_health(url, lambda h: h["upstreams_ready"] == 2)
            tools = ("up-http__echo", "up-stdio__echo")
            async with http_connect(url)("auto") as client:
                for tool in tools:
                    for _ in range(max(cfg.warmup, 20)):
                        await checked_call(client, tool)
                children_before = descendants(gateway.pid)
                before = counters(gateway, path)
                for tool in tools:
                    for _ in range(cfg.steady_calls):
                        await checked_call(client, tool)
                after = counters(gateway, path)
                children_after = descendants(gateway.pid)
            delta = counter_delta(before, after)
            calls = cfg.steady_calls * len(tools)
            self.results["steady_state"] = {
                "calls": calls,
                "delta": delta,
                "recent_opens": after.get("recent_opens", [])[-5:],
                "children_before": len(children_before),
                "children_after": len(children_after),
                "new_children": len(children_after - children_before),
            }
        finally:
            gateway.stop()

    # --- figure 3: throughput -------------------------------------------------------------------

    async def throughput(self) -> None:
        cfg = self.cfg
        echo, port = start_echo_http(self.logs)
        echo_url = f"http://127.0.0.1:{port}/mcp"
        env = make_home(
            self.work / "home-throughput",
            {"up-http": {"type": "remote", "remote": {"url": echo_url, "transport_type": "streamable-http"}}},
        )
        gateway, gw_url = ready_gateway(env, self.logs, 1)
        generic, generic_url = ready_gateway(env, self.logs, 1, name="gateway-generic", lean=False)
        nowire, nowire_url = ready_gateway(env, self.logs, 1, name="gateway-nowire", wire=False)
        paths = {
            "direct": (http_connect(echo_url), "echo"),
            "bastion": (http_connect(gw_url), "up-http__echo"),
            "nowire": (http_connect(nowire_url), "up-http__echo"),
            "generic": (http_connect(generic_url), "up-http__echo"),
        }
        points: list[dict[str, Any]] = []
        try:
            for index in range(cfg.tp_rounds):
                for clients in cfg.tp_clients:
                    for mode in cfg.modes:
                        shift = (index + clients) % len(paths)
                        order = list(paths)[shift:] + list(paths)[:shift]
                        for key in order:
                            connect, tool = paths[key]
                            result = await throughput(connect, mode, tool, clients, cfg.tp_seconds)
                            points.append({"path": key, "mode": mode, "round": index, **result})
                            log(
                                f"throughput {key}/{mode} x{clients}: {result['calls_per_s']:.0f}/s "
                                f"({result['errors']} errors)"
                            )
        finally:
            gateway.stop()
            generic.stop()
            nowire.stop()
            echo.stop()
        table: list[dict[str, Any]] = []
        for clients in cfg.tp_clients:
            for mode in cfg.modes:
                row: dict[str, Any] = {"clients": clients, "mode": mode}
                for key in paths:
                    sel = [p for p in points if p["clients"] == clients and p["mode"] == mode and p["path"] == key]
                    row[key] = median([p["calls_per_s"] for p in sel])
                    row[f"{key}_errors"] = sum(p["errors"] for p in sel)
                ratios: dict[str, list[float]] = {"bastion": [], "nowire": [], "generic": []}
                for index in range(cfg.tp_rounds):
                    pair = {
                        p["path"]: p["calls_per_s"]
                        for p in points
                        if p["clients"] == clients and p["mode"] == mode and p["round"] == index
                    }
                    if pair.get("direct"):
                        for key in ratios:
                            ratios[key].append(pair[key] / pair["direct"])
                row["ratio"] = median(ratios["bastion"])
                row["generic_ratio"] = median(ratios["generic"])
                row["nowire_ratio"] = median(ratios["nowire"])
                table.append(row)
        self.results["throughput"] = {"points": points, "table": table, "seconds_per_point": cfg.tp_seconds}

    # --- figure 4: scale ------------------------------------------------------------------------

    async def scale(self) -> None:
        cfg = self.cfg
        rows: list[dict[str, Any]] = []
        for servers in cfg.scale:
            echo, port = start_echo_http(self.logs, servers=servers, tools=cfg.tools_per_server)
            try:
                catalog = {
                    f"s{i}": {
                        "type": "remote",
                        "remote": {"url": f"http://127.0.0.1:{port}/s{i}/mcp", "transport_type": "streamable-http"},
                    }
                    for i in range(servers)
                }
                if servers == 1:
                    catalog = {
                        "s0": {
                            "type": "remote",
                            "remote": {"url": f"http://127.0.0.1:{port}/mcp", "transport_type": "streamable-http"},
                        }
                    }
                env = make_home(self.work / f"home-scale-{servers}", catalog)
                expected = servers * cfg.tools_per_server

                def all_ready(h: dict[str, Any], n: int = servers, e: int = expected) -> bool:
                    return bool(h["upstreams_ready"] == n and h["tools"] == e)

                started = time.perf_counter()
                gateway = start_gateway(env, self.logs, name=f"gateway-scale-{servers}")
                try:
                    listening = time.perf_counter() - started
                    url = gateway_url(gateway)
                    wait_health(url, all_ready, 90)
                    ready = time.perf_counter() - started
                    async with http_connect(url)("auto") as client:
                        listed = await list_latencies(client, cfg.list_reps, 20.0)
                    wire = await list_wire_latencies(url, cfg.list_reps, 20.0)
                    served = await list_bytes_latencies(url, cfg.list_reps, 20.0)
                    rss = rss_mib(gateway.pid)
                finally:
                    gateway.stop()
                generic = start_gateway(env, self.logs, name=f"gateway-scale-{servers}-generic", lean=False)
                try:
                    url = gateway_url(generic)
                    wait_health(url, all_ready, 90)
                    async with http_connect(url)("auto") as client:
                        listed_generic = await list_latencies(client, cfg.list_reps, 20.0)
                    wire_generic = await list_wire_latencies(url, cfg.list_reps, 20.0)
                finally:
                    generic.stop()
                rows.append(
                    {
                        "servers": servers,
                        "tools": listed["tools"],
                        "expected_tools": expected,
                        "listening_s": listening,
                        "all_listed_s": ready,
                        "list_raw": listed["raw"],
                        "list_typed": listed["typed"],
                        "list_wire": wire,
                        "list_last_byte": served["last_byte"],
                        "list_parse": served["parse"],
                        "list_bytes": served["bytes"],
                        "list_raw_generic": listed_generic["raw"],
                        "list_wire_generic": wire_generic,
                        "rss_mib": rss,
                    }
                )
                log(f"scale {servers}: ready in {ready:.2f}s, list {listed['raw']['p50']:.1f} ms, {rss:.0f} MiB")
            finally:
                echo.stop()
        self.results["scale"] = rows

    # --- figure 5: the token path ---------------------------------------------------------------

    async def token(self) -> None:
        from tests.fixtures import peers

        cfg = self.cfg
        peers.ensure_node_deps()
        oidc = peers.start_oidc(access_token_ttl=cfg.token_ttl)
        try:
            protected, url = start_protected(oidc.issuer, self.logs)
            try:
                await self._token(oidc, url)
            finally:
                protected.stop()
        finally:
            oidc.stop()

    async def _token(self, oidc: Any, protected_url: str) -> None:
        cfg = self.cfg
        from tests.fixtures import peers

        margin = 1
        env = make_home(
            self.work / "home-token",
            {
                "protected": {
                    "type": "remote",
                    "remote": {"url": protected_url, "transport_type": "streamable-http"},
                    "oauth": {"providers": [{"provider": "protected"}]},
                }
            },
            {"gateway": {"refresh_margin": margin}},
        )
        env.update(peers.headless_browser_env(self.work / "headless.log"))
        authorize = [PY, "-m", "bastion", "oauth", "authorize", "protected", "--callback-port", "0", "--timeout", "60"]
        result = subprocess.run(authorize, env=env, capture_output=True, text=True, timeout=90)
        if result.returncode != 0:
            raise BenchError(f"bastion oauth authorize failed: {result.stderr[-2000:]}")
        authorized_at = time.time()
        rows = json.loads(
            subprocess.run(
                [PY, "-m", "bastion", "oauth", "ls", "--json"], env=env, capture_output=True, text=True, timeout=60
            ).stdout
        )
        expires_at = float(rows[0].get("expires_at") or (authorized_at + cfg.token_ttl))

        def refreshes() -> int:
            return sum(
                1
                for e in oidc.events()
                if e["event"] in ("grant.success", "grant.error") and e.get("grant_type") == "refresh_token"
            )

        counters_path = self.work / "counters-token.json"
        gateway = start_gateway({**env, "BENCH_COUNTERS": str(counters_path)}, self.logs, counting=True, name="gw-tok")
        try:
            url = gateway_url(gateway)
            wait_health(url, lambda h: h["upstreams_ready"] == 1)
            tool = "protected__echo"
            async with http_connect(url)("auto") as client:
                for _ in range(20):
                    r = await client.call_tool(tool, {"text": "warm"})
                    if r.is_error:
                        raise BenchError(f"protected__echo failed: {r.content}")
                refresh_before_baseline = refreshes()
                before = counters(gateway, counters_path)
                children_before = descendants(gateway.pid)
                baseline = await burst(client, tool, cfg.token_calls, {"text": "x"})
                after = counters(gateway, counters_path)
                children_after = descendants(gateway.pid)
                baseline_refreshes = refreshes() - refresh_before_baseline
                # Fire at the moment the token becomes due: its expiry less the refresh margin.
                due = expires_at - margin
                wait = due - time.time()
                late = wait < 0
                if wait > 0:
                    await anyio.sleep(wait + 0.05)
                before_refreshes = refreshes()
                at_expiry = await burst(client, tool, cfg.token_calls, {"text": "y"})
                await anyio.sleep(0.3)
                counted = refreshes() - before_refreshes
                # And once more with the fresh token, to separate the refresh from the burst itself.
                after_refresh = await burst(client, tool, cfg.token_calls, {"text": "z"})
        finally:
            gateway.stop()
        base = summary(baseline["latencies"])
        exp = summary(at_expiry["latencies"])
        post = summary(after_refresh["latencies"])
        self.results["token"] = {
            "calls": cfg.token_calls,
            "ttl_s": cfg.token_ttl,
            "refresh_margin_s": margin,
            "fired_late": late,
            "refreshes_at_expiry": counted,
            "refreshes_during_baseline": baseline_refreshes,
            "errors_at_expiry": len(at_expiry["errors"]),
            "error_samples": at_expiry["errors"][:3],
            "baseline": {**base, "wall_ms": baseline["wall_ms"], "errors": len(baseline["errors"])},
            "at_expiry": {**exp, "wall_ms": at_expiry["wall_ms"]},
            "after_refresh": {**post, "wall_ms": after_refresh["wall_ms"], "errors": len(after_refresh["errors"])},
            "extra_ms": {
                "p50": exp["p50"] - median([base["p50"], post["p50"]]),
                "p99": exp["p99"] - median([base["p99"], post["p99"]]),
                "max": exp["max"] - median([base["max"], post["max"]]),
            },
            "steady_state": {
                "calls": cfg.token_calls,
                "delta": counter_delta(before, after),
                "new_children": len(children_after - children_before),
            },
        }
        log(f"token: {counted} refresh(es) for {cfg.token_calls} calls at expiry")

    # --- figure 2b: mcp-remote in front of the protected server -----------------------------------

    async def oauth_remote(self) -> None:
        from tests.fixtures import oauth_client, peers

        remote = envs.mcp_remote_env()
        self.env_status["mcp-remote"] = {"ok": remote.ok, "detail": remote.detail, "version": envs.MCP_REMOTE}
        peers.ensure_node_deps()
        oidc = peers.start_oidc(access_token_ttl=3600)
        protected = None
        try:
            protected, protected_url = start_protected(oidc.issuer, self.logs)
            env = make_home(
                self.work / "home-oauth",
                {
                    "protected": {
                        "type": "remote",
                        "remote": {"url": protected_url, "transport_type": "streamable-http"},
                        "oauth": {"providers": [{"provider": "protected"}]},
                    }
                },
            )
            env.update(peers.headless_browser_env(self.work / "headless-oauth.log"))
            authorize = [PY, "-m", "bastion", "oauth", "authorize", "protected", "--callback-port", "0"]
            done = subprocess.run(authorize, env=env, capture_output=True, text=True, timeout=90)
            if done.returncode != 0:
                raise BenchError(f"bastion oauth authorize failed: {done.stderr[-2000:]}")
            token = await anyio.to_thread.run_sync(
                lambda: oauth_client.obtain_tokens(oidc.issuer, protected_url).access_token
            )
            gateway, gw_url = ready_gateway(env, self.logs, 1, name="gateway-oauth")
            paths = [
                LatencyPath(
                    "oauth-direct",
                    "direct, streamable HTTP + Bearer",
                    http_connect(protected_url, {"Authorization": f"Bearer {token}"}),
                    "echo",
                    "http",
                    "direct",
                ),
                LatencyPath(
                    "oauth-bastion-http",
                    "Bastion, HTTP front",
                    http_connect(gw_url),
                    "protected__echo",
                    "http",
                    "bastion",
                    lambda: gateway.pid,
                ),
                LatencyPath(
                    "oauth-bastion-stdio",
                    "Bastion, stdio front",
                    stdio_connect([PY, "-m", "bastion", "gateway", "run", "--transport", "stdio"], env),
                    "protected__echo",
                    "http",
                    "bastion",
                    lambda: find_child("gateway run --transport stdio"),
                ),
            ]
            remote_note = None
            if remote.ok:
                remote_path, remote_note = await self._mcp_remote_path(protected_url, remote)
                if remote_path is not None:
                    paths.append(remote_path)
            else:
                remote_note = remote.detail
            if remote_note:
                self.note(f"mcp-remote: {remote_note}")
            rounds: list[dict[str, Any]] = []
            for index in range(self.cfg.rounds):
                shift = index % len(paths)
                this_round: dict[str, Any] = {}
                for path in paths[shift:] + paths[:shift]:
                    for mode in self.cfg.modes:
                        if mode not in path.modes:
                            continue
                        key = f"{path.key}/{mode}"
                        try:
                            this_round[key] = await self._measure_oauth_path(path, mode)
                        except Exception as exc:
                            this_round[key] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
                            log(f"{key}: {this_round[key]['error']}")
                rounds.append(this_round)
            gateway.stop()
            self.results["oauth_remote"] = {
                "paths": [
                    {"key": p.key, "label": p.label, "group": p.group, "upstream": p.upstream, "modes": list(p.modes)}
                    for p in paths
                ],
                "rounds": rounds,
                "summary": _latency_summary(paths, rounds, self.cfg.modes, direct_key="oauth-direct"),
                "mcp_remote_note": remote_note,
            }
        finally:
            if protected is not None:
                protected.stop()
            oidc.stop()

    async def _measure_oauth_path(self, path: LatencyPath, mode: str) -> dict[str, Any]:
        cfg = self.cfg
        async with path.connect(mode) as client:
            pid = path.cpu_pid()
            version = client.session.protocol_version
            warm_until = time.perf_counter() + cfg.warmup_seconds
            for _ in range(cfg.warmup):
                r = await client.call_tool(path.tool, {"text": "hello"})
                if r.is_error:
                    raise BenchError(f"{path.tool}: {r.content}")
                if time.perf_counter() > warm_until:
                    break
            cpu0 = cpu_seconds(pid) if pid else math.nan
            samples = await call_latencies(client, path.tool, warmup=0, calls=cfg.calls, seconds=cfg.seconds)
            cpu1 = cpu_seconds(pid) if pid else math.nan
        result = summary(samples)
        result["protocol"] = version
        result["proxy_cpu_ms_per_call"] = (cpu1 - cpu0) * 1e3 / len(samples) if samples else math.nan
        return result

    async def _mcp_remote_path(self, url: str, remote: envs.Env) -> tuple[LatencyPath | None, str | None]:
        """mcp-remote needs its own OAuth flow: its browser opener is pointed at the headless user agent
        (BROWSER and an `xdg-open` on PATH), its cache in a private MCP_REMOTE_CONFIG_DIR."""
        from tests.fixtures import peers

        shim = self.work / "xdg-shim"
        shim.mkdir(parents=True, exist_ok=True)
        browser = peers.headless_browser_env(self.work / "headless-mcp-remote.log")
        opener = shim / "xdg-open"
        opener.write_text(f'#!/bin/sh\nexec "{browser["BROWSER"]}" "$1"\n')
        opener.chmod(0o755)
        env = {
            **os.environ,
            **browser,
            "PATH": f"{shim}:{os.environ.get('PATH', '')}",
            "MCP_REMOTE_CONFIG_DIR": str(self.work / "mcp-remote-auth"),
        }
        binary = str(envs.NPM_DIR / "node_modules" / ".bin" / "mcp-remote")
        argv = [binary, url, "--allow-http", "--transport", "http-only", "--silent"]
        path = LatencyPath(
            "mcp-remote",
            f"mcp-remote {envs.MCP_REMOTE.split('@')[1]}, stdio front",
            stdio_connect(argv, env),
            "echo",
            "http",
            "alternative",
            lambda: find_child("mcp-remote"),
        )
        try:
            with anyio.fail_after(90):
                async with path.connect("legacy") as client:
                    r = await client.call_tool("echo", {"text": "hello"})
                    if r.is_error:
                        return None, f"authorized, but echo failed: {r.content}"
        except Exception as exc:
            return None, f"could not be driven headlessly ({type(exc).__name__}: {str(exc)[:300]})"
        return path, None

    # --- figure 6: CLI start ----------------------------------------------------------------------

    def cli(self) -> None:
        home = self.work / "home-cli"
        env = make_home(home, {})
        bastion = str(Path(PY).parent / "bastion")
        commands = {
            "python -c pass": [PY, "-c", "pass"],
            "bastion --help": [bastion, "--help"],
            "bastion oauth ls": [bastion, "oauth", "ls"],
        }
        times: dict[str, list[float]] = {name: [] for name in commands}
        for argv in commands.values():  # one untimed run each (page cache)
            subprocess.run(argv, env=env, capture_output=True, timeout=60)
        for _ in range(self.cfg.cli_runs):
            for name, argv in commands.items():
                start = time.perf_counter()
                done = subprocess.run(argv, env=env, capture_output=True, timeout=60)
                elapsed = (time.perf_counter() - start) * 1e3
                if done.returncode != 0:
                    raise BenchError(f"{name} failed: {done.stderr.decode()[-500:]}")
                times[name].append(elapsed)
        self.results["cli"] = {
            name: {"median_ms": statistics.median(v), "min_ms": min(v), "max_ms": max(v), "runs": len(v)}
            for name, v in times.items()
        }


def _latency_summary(
    paths: list[LatencyPath], rounds: list[dict[str, Any]], modes: tuple[str, ...], direct_key: str | None = None
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for path in paths:
        for mode in modes:
            if mode not in path.modes:
                continue
            key = f"{path.key}/{mode}"
            ok = [r[key] for r in rounds if key in r and "error" not in r[key]]
            errors = [r[key]["error"] for r in rounds if key in r and "error" in r[key]]
            base_key = f"{direct_key or 'direct-' + path.upstream}/{mode}"
            added = [
                r[key]["p50"] - r[base_key]["p50"]
                for r in rounds
                if key in r and "error" not in r[key] and base_key in r and "error" not in r[base_key]
            ]
            out[key] = {
                "p50": median([m["p50"] for m in ok]),
                "p99": median([m["p99"] for m in ok]),
                "added_p50": median(added) if path.group != "direct" else math.nan,
                "proxy_cpu_ms_per_call": median([m["proxy_cpu_ms_per_call"] for m in ok]),
                "protocol": ok[0]["protocol"] if ok else None,
                "samples": sum(m["n"] for m in ok),
                "errors": errors,
            }
    return out


def machine() -> dict[str, Any]:
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import importlib.metadata as md

    versions = {}
    for package in ("mcp", "httpx2", "uvicorn", "starlette", "anyio", "pydantic", "uvloop", "httptools"):
        try:
            versions[package] = md.version(package)
        except md.PackageNotFoundError:
            versions[package] = None
    node = shutil.which("node")
    node_version = subprocess.run([node, "--version"], capture_output=True, text=True).stdout.strip() if node else None
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return {
        "cores": os.cpu_count(),
        "cpu": model,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "node": node_version,
        "versions": versions,
        "commit": commit.stdout.strip() or None,
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


async def _run(bench: Bench, figures: list[str]) -> None:
    steps: dict[str, Callable[[], Any]] = {
        "latency": bench.latency,
        "oauth": bench.oauth_remote,
        "throughput": bench.throughput,
        "scale": bench.scale,
        "token": bench.token,
    }
    for name in figures:
        started = time.perf_counter()
        log(f"figure {name}")
        try:
            if name == "cli":
                bench.cli()
            else:
                await steps[name]()
        except Exception as exc:
            bench.results.setdefault("failures", {})[name] = f"{type(exc).__name__}: {exc}"[:2000]
            log(f"figure {name} failed:\n{traceback.format_exc()}")
        finally:
            stop_all()
        bench.results.setdefault("durations_s", {})[name] = round(time.perf_counter() - started, 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny counts (a smoke test, ~a minute)")
    parser.add_argument("--only", nargs="*", choices=[*FIGURES, "oauth"], help="run only these figures")
    parser.add_argument("--out", type=Path, default=None, help="directory for benchmarks.{md,json} (default docs/)")
    parser.add_argument("--no-alternatives", action="store_true", help="skip FastMCP / mcp-proxy / mcp-remote")
    args = parser.parse_args(argv)
    cfg = Config.make(args.quick)
    if args.no_alternatives:
        cfg.alternatives = False
    out = args.out or (ROOT / ("test-output/bench-quick" if args.quick else "docs"))
    out.mkdir(parents=True, exist_ok=True)
    workdir = envs.CACHE / "bench-run" / f"{os.getpid()}"
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    figures = args.only or ["latency", *(["oauth"] if cfg.alternatives else []), "throughput", "scale", "token", "cli"]
    bench = Bench(cfg, workdir)
    started = time.perf_counter()
    try:
        asyncio.run(_run(bench, figures))
    finally:
        stop_all()
    leftovers = [pid for pid in descendants(os.getpid()) if alive(pid)]
    data = {
        "machine": machine(),
        "mode": "quick" if cfg.quick else "full",
        "config": {k: v for k, v in vars(cfg).items()},
        "environments": bench.env_status,
        "total_s": round(time.perf_counter() - started, 1),
        "orphans": leftovers,
        **bench.results,
    }
    data = report.sanitize(data)
    (out / "benchmarks.json").write_text(json.dumps(data, indent=2, default=str, allow_nan=False) + "\n")
    (out / "benchmarks.md").write_text(report.render(data))
    log(f"wrote {out / 'benchmarks.md'} and {out / 'benchmarks.json'} in {data['total_s']}s")
    shutil.rmtree(workdir, ignore_errors=True)
    return 1 if leftovers else 0
