"""Client-side measurement loops (the bench's own process, the project's `mcp` 2.3.0 `Client`)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import statistics
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpx2
import mcp_types as types
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from pydantic import TypeAdapter

Connect = Callable[[str], AbstractAsyncContextManager[Client]]
"""A downstream connection factory: `connect(mode)` with mode "legacy" or "auto"."""

RAW: Any = TypeAdapter(dict[str, Any])
ECHO_ARGS = {"text": "hello"}


def quantile(values: Sequence[float], q: float) -> float:
    """Nearest-rank quantile (q in [0, 1]); nan when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[rank - 1]


def summary(samples_ms: Sequence[float]) -> dict[str, float]:
    return {
        "n": len(samples_ms),
        "p50": quantile(samples_ms, 0.50),
        "p99": quantile(samples_ms, 0.99),
        "mean": statistics.fmean(samples_ms) if samples_ms else math.nan,
        "max": max(samples_ms) if samples_ms else math.nan,
    }


def median(values: Sequence[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return statistics.median(finite) if finite else math.nan


GATEWAY_TOKENS: dict[str, str] = {}
"""Base URL of a running gateway -> its token (`bench.run.start_gateway` records it): the gateway
requires it on loopback too, so every client of it sends it, as a real client does."""


def gateway_auth(url: str) -> dict[str, str]:
    """The Authorization header for `url` if it is a gateway's, else nothing."""
    token = GATEWAY_TOKENS.get(url.rsplit("/", 1)[0])
    return {"Authorization": f"Bearer {token}"} if token is not None else {}


def http_connect(url: str, headers: dict[str, str] | None = None) -> Connect:
    sent = {**gateway_auth(url), **(headers or {})}

    @contextlib.asynccontextmanager
    async def connect(mode: str) -> AsyncIterator[Client]:
        async with httpx2.AsyncClient(headers=sent, timeout=60.0, trust_env=False) as http:
            async with Client(streamable_http_client(url, http_client=http), mode=mode) as client:
                yield client

    return connect


def stdio_connect(argv: Sequence[str], env: dict[str, str] | None = None) -> Connect:
    @contextlib.asynccontextmanager
    async def connect(mode: str) -> AsyncIterator[Client]:
        params = StdioServerParameters(command=argv[0], args=list(argv[1:]), env=env)
        async with Client(params, mode=mode) as client:
            yield client

    return connect


def _text(result: types.CallToolResult) -> str:
    return "".join(getattr(block, "text", "") for block in result.content)


async def checked_call(client: Client, tool: str) -> None:
    result = await client.call_tool(tool, ECHO_ARGS)
    if result.is_error or _text(result) != ECHO_ARGS["text"]:
        raise RuntimeError(f"{tool} answered {_text(result)!r} (is_error={result.is_error})")


async def call_latencies(client: Client, tool: str, *, warmup: int, calls: int, seconds: float) -> list[float]:
    """Sequential calls on one session: `warmup` untimed, then up to `calls` timed (at most `seconds`)."""
    for _ in range(warmup):
        await checked_call(client, tool)
    samples: list[float] = []
    deadline = time.perf_counter() + seconds
    call = client.call_tool
    while len(samples) < calls and time.perf_counter() < deadline:
        start = time.perf_counter_ns()
        result = await call(tool, ECHO_ARGS)
        samples.append((time.perf_counter_ns() - start) / 1e6)
        if result.is_error:
            raise RuntimeError(f"{tool} failed: {_text(result)}")
    return samples


async def throughput(connect: Connect, mode: str, tool: str, clients: int, seconds: float) -> dict[str, float]:
    """`clients` sessions, each calling `tool` back to back for `seconds` (count-capped too)."""
    cap = int(seconds * 5000) + 10  # far above any rate seen here: a bound, not a limit
    ready = 0
    all_ready = anyio.Event()
    go = anyio.Event()
    done_at: list[float] = []
    counts = {"calls": 0, "errors": 0, "connect_errors": 0}
    start_box: list[float] = []

    async def worker() -> None:
        nonlocal ready
        try:
            async with connect(mode) as client:
                ready += 1
                if ready == clients:
                    all_ready.set()
                await go.wait()
                deadline = start_box[0] + seconds
                n = 0
                while n < cap and time.perf_counter() < deadline:
                    n += 1
                    try:
                        result = await client.call_tool(tool, ECHO_ARGS)
                        if result.is_error:
                            counts["errors"] += 1
                        else:
                            counts["calls"] += 1
                    except Exception:
                        counts["errors"] += 1
                done_at.append(time.perf_counter())
        except Exception:
            counts["connect_errors"] += 1
            ready += 1
            if ready == clients:
                all_ready.set()

    with anyio.fail_after(seconds + 120):
        async with anyio.create_task_group() as tg:
            for _ in range(clients):
                tg.start_soon(worker)
            await all_ready.wait()
            start_box.append(time.perf_counter())
            go.set()
    elapsed = (max(done_at) - start_box[0]) if done_at else math.nan
    return {
        "clients": clients,
        "seconds": elapsed,
        "calls": counts["calls"],
        "errors": counts["errors"] + counts["connect_errors"],
        "calls_per_s": counts["calls"] / elapsed if elapsed and elapsed > 0 else math.nan,
    }


async def burst(client: Client, tool: str, n: int, args: dict[str, Any] | None = None) -> dict[str, Any]:
    """`n` concurrent calls on one session; latency of each (ms) and the errors."""
    latencies: list[float] = []
    errors: list[str] = []

    async def one(i: int) -> None:
        start = time.perf_counter_ns()
        try:
            result = await client.call_tool(tool, args or {"text": str(i)})
            if result.is_error:
                errors.append(_text(result)[:200])
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {exc}"[:200])
        latencies.append((time.perf_counter_ns() - start) / 1e6)

    started = time.perf_counter()
    with anyio.fail_after(120):
        async with anyio.create_task_group() as tg:
            for i in range(n):
                tg.start_soon(one, i)
    return {"wall_ms": (time.perf_counter() - started) * 1e3, "latencies": latencies, "errors": errors}


async def list_latencies(client: Client, reps: int, seconds: float) -> dict[str, Any]:
    """tools/list: the SDK's typed `list_tools()` and the same request with the result left as JSON."""
    request = types.ListToolsRequest(params=types.PaginatedRequestParams())
    typed: list[float] = []
    raw: list[float] = []
    count = 0
    await client.list_tools()
    deadline = time.perf_counter() + seconds
    while len(raw) < reps and time.perf_counter() < deadline:
        start = time.perf_counter_ns()
        result: dict[str, Any] = await client.session.send_request(request, RAW)
        raw.append((time.perf_counter_ns() - start) / 1e6)
        count = len(result.get("tools", []))
        start = time.perf_counter_ns()
        await client.list_tools()
        typed.append((time.perf_counter_ns() - start) / 1e6)
    return {"tools": count, "raw": summary(raw), "typed": summary(typed)}


async def list_wire_latencies(url: str, reps: int, seconds: float) -> dict[str, Any]:
    """tools/list as the gateway serves it: one 2026-07-28 POST over a held connection, the body
    parsed with `json.loads` (no SDK client-side result validation, which at 5,000 tools costs the
    client more than the gateway)."""
    version = "2026-07-28"
    meta = {"io.modelcontextprotocol/protocolVersion": version, "io.modelcontextprotocol/clientCapabilities": {}}
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {"_meta": meta}}
    headers = {
        "accept": "application/json, text/event-stream",
        "content-type": "application/json",
        "mcp-protocol-version": version,
        "mcp-method": "tools/list",
        **gateway_auth(url),
    }
    samples: list[float] = []
    async with httpx2.AsyncClient(headers=headers, timeout=30.0, trust_env=False) as http:
        (await http.post(url, json=body)).raise_for_status()
        deadline = time.perf_counter() + seconds
        while len(samples) < reps and time.perf_counter() < deadline:
            start = time.perf_counter_ns()
            response = await http.post(url, json=body)
            json.loads(response.content)
            samples.append((time.perf_counter_ns() - start) / 1e6)
    return summary(samples)


async def list_bytes_latencies(url: str, reps: int, seconds: float) -> dict[str, Any]:
    """tools/list split at the client's edge: one 2026-07-28 POST on a plain socket (no HTTP
    library), timed to the reply's last byte — what the gateway costs — and, separately, the
    client's `json.loads` of that reply. Returns {"last_byte": summary, "parse": summary, "bytes": n}."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    version = "2026-07-28"
    meta = {"io.modelcontextprotocol/protocolVersion": version, "io.modelcontextprotocol/clientCapabilities": {}}
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {"_meta": meta}}).encode()
    auth = "".join(f"{name}: {value}\r\n" for name, value in gateway_auth(url).items())
    head = (
        f"POST {parts.path or '/'} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
        "accept: application/json, text/event-stream\r\ncontent-type: application/json\r\n"
        f"mcp-protocol-version: {version}\r\nmcp-method: tools/list\r\n{auth}content-length: {len(body)}\r\n\r\n"
    )
    request = head.encode() + body
    reader, writer = await asyncio.open_connection(host, port)
    last: list[float] = []
    parse: list[float] = []
    size = 0

    async def one() -> bytes:
        writer.write(request)
        status_and_headers = await reader.readuntil(b"\r\n\r\n")
        length = next(
            int(line.split(b":", 1)[1])
            for line in status_and_headers.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        return await reader.readexactly(length)

    try:
        await one()
        deadline = time.perf_counter() + seconds
        while len(last) < reps and time.perf_counter() < deadline:
            start = time.perf_counter_ns()
            reply = await one()
            received = time.perf_counter_ns()
            json.loads(reply)
            parse.append((time.perf_counter_ns() - received) / 1e6)
            last.append((received - start) / 1e6)
            size = len(reply)
    finally:
        writer.close()
    return {"last_byte": summary(last), "parse": summary(parse), "bytes": size}
