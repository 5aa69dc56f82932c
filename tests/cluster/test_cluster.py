"""Several gateways, one set of credentials: three `bastion gateway run` replicas (separate
homes, same configuration files) sharing one Redis store, one authorization server
(oidc-provider, rotating refresh tokens, short-lived access tokens) and one protected MCP server.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
import redis
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from tests.fixtures import peers
from tests.integration.harness import GatewayProcess, http_client

from .cluster import Cluster, PrivateRedis, RoundRobin, StoreEnv, protected_entry, refreshes, text_of, upstream_state

pytestmark = pytest.mark.anyio


def CATALOG(url: str) -> dict[str, Any]:  # noqa: N802
    return {"protected": protected_entry(url)}


async def wait_expired(store: StoreEnv, slack: float = 0.3) -> None:
    """Sleep until the stored access token of `protected` has expired (every replica's copy too)."""
    record = await store.record("protected")
    assert record is not None and record.tokens is not None and record.tokens.expires_at is not None
    await anyio.sleep(max(0.0, record.tokens.expires_at - time.time() + slack))


async def test_300_calls_over_three_replicas_across_an_expiry_refresh_once(
    tmp_path: Path, shared_store: StoreEnv, headless_browser: Path, oidc_factory: Any, protected_mcp_factory: Any
) -> None:
    # The new token is due 9 s after the refresh: the storm (~1.5 s here) must not outlast it.
    oidc = oidc_factory(access_token_ttl=10)
    protected = protected_mcp_factory(oidc.issuer)
    with Cluster(tmp_path, shared_store) as cluster:
        cluster.configure(CATALOG(protected.url), {"gateway": {"refresh_margin": 1}}, ["protected"])
        cluster.authorize(cluster.first)
        replicas = cluster.start()
        async with (
            http_client(replicas[0].url) as c0,
            http_client(replicas[1].url) as c1,
            http_client(replicas[2].url) as c2,
        ):
            clients = [c0, c1, c2]
            for client in clients:
                warm = await client.call_tool("protected__echo", {"text": "warm"})
                assert not warm.is_error, text_of(warm)
            await wait_expired(shared_store)
            before = refreshes(oidc)
            results: list[tuple[int, Any]] = []

            async def call(i: int) -> None:
                try:
                    results.append((i, await clients[i % 3].call_tool("protected__echo", {"text": str(i)})))
                except MCPError as exc:
                    results.append((i, exc))

            started = time.monotonic()
            with anyio.fail_after(60):
                async with anyio.create_task_group() as tg:
                    for i in range(300):
                        tg.start_soon(call, i)
            elapsed = time.monotonic() - started
    failures = [(i, r) for i, r in results if isinstance(r, MCPError) or r.is_error]
    assert len(results) == 300
    assert failures == [], failures[:5]
    assert sorted(text_of(r) for _, r in results) == sorted(str(i) for i in range(300))
    grants = [e for e in oidc.events() if e.get("grant_type") == "refresh_token"]
    assert refreshes(oidc) - before == 1, (f"storm took {elapsed:.1f}s", grants)
    print(f"300 calls over 3 replicas across an expiry: {elapsed:.2f}s, 1 refresh")


async def call_protected(url: str, count: int) -> list[Any]:
    """`count` concurrent calls through one client; each result, MCPError, or the client's failure."""
    results: list[Any] = []
    try:
        async with http_client(url) as client:

            async def call(i: int) -> None:
                try:
                    results.append(await client.call_tool("protected__echo", {"text": str(i)}))
                except MCPError as exc:
                    results.append(exc)

            async with anyio.create_task_group() as tg:
                for i in range(count):
                    tg.start_soon(call, i)
    except Exception as exc:  # the replica was killed under this client
        results.append(exc)
    return results


async def test_sigkill_of_the_refresh_lease_holder_mid_refresh(
    tmp_path: Path, shared_store: StoreEnv, headless_browser: Path, oidc_factory: Any, protected_mcp_factory: Any
) -> None:
    oidc = oidc_factory(access_token_ttl=5)
    protected = protected_mcp_factory(oidc.issuer)
    with Cluster(tmp_path, shared_store) as cluster:
        cluster.configure(CATALOG(protected.url), {"gateway": {"refresh_margin": 1}}, ["protected"])
        cluster.authorize(cluster.first)
        replicas = cluster.start()
        for replica in replicas:
            async with http_client(replica.url) as client:
                assert not (await client.call_tool("protected__echo", {"text": "warm"})).is_error
        oidc.set_knobs(refresh_response_delay=60)  # the refresh happens; its answer never arrives in time
        await wait_expired(shared_store)
        marks = [len(replica.log()) for replica in replicas]
        outcomes: dict[int, list[Any]] = {}
        finished: dict[int, float] = {}

        async def storm(index: int) -> None:
            outcomes[index] = await call_protected(replicas[index].url, 5)
            finished[index] = time.monotonic()

        async with anyio.create_task_group() as tg:
            for index in range(3):
                tg.start_soon(storm, index)
            with anyio.fail_after(15):
                while not oidc.events("refresh_response.delayed"):
                    await anyio.sleep(0.05)
            refreshing = "refreshing the access token of protected"
            holders = [i for i, r in enumerate(replicas) if refreshing in r.log()[marks[i] :]]
            assert len(holders) == 1, holders
            [holder] = holders
            assert shared_store.lease_owner("protected") is not None  # its lease is in Redis
            survivors = [i for i in range(3) if i != holder]
            for i in survivors:  # the others answer while their calls wait for the lease
                assert replicas[i].health()["status"] == "ok"
            os.kill(replicas[holder].proc.pid, signal.SIGKILL)
            killed = time.monotonic()
            oidc.set_knobs(refresh_response_delay=0)  # the next holder's refresh is answered at once
            with anyio.fail_after(30):  # never hung: the lease lapses within its TTL (10 s)
                while not all(i in finished for i in survivors):
                    await anyio.sleep(0.1)
        waited = max(finished[i] for i in survivors) - killed
        assert replicas[holder].proc.wait(5) == -signal.SIGKILL

        # Never half-written: the record is whole, either refreshed or cleanly needs-authorization.
        record = await shared_store.record("protected")
        assert record is not None
        survivors_results = [r for i in survivors for r in outcomes[i]]
        if record.needs_authorization:
            outcome = "needs-authorization"
            assert record.tokens is None and record.last_error and "invalid_grant" in record.last_error
            assert record.client is not None  # the registration is kept: authorize again is enough
            # The calls that waited end with an error (the session they were on is torn down when
            # the credentials go: "needs authorization" or "closed the connection; reconnecting").
            assert all(isinstance(result, MCPError) for result in survivors_results), survivors_results
            for i in survivors:  # and every survivor now says what to do
                with anyio.fail_after(10):
                    while upstream_state(replicas[i]) != "needs-authorization":
                        await anyio.sleep(0.1)
                async with http_client(replicas[i].url) as client:
                    with pytest.raises(MCPError, match="bastion oauth authorize protected"):
                        await client.call_tool("protected__echo", {"text": "x"})
        else:
            outcome = "refreshed"
            assert record.tokens is not None and (record.tokens.expires_at or 0) > time.time()
            assert all(not isinstance(r, MCPError | Exception) and not r.is_error for r in survivors_results)
        # No lease is left behind: a released one is gone at once, one whose holder died lapses
        # within its TTL (10 s); poll rather than race a survivor's release in flight.
        with anyio.fail_after(12):
            while shared_store.lease_owner("protected") is not None:
                await anyio.sleep(0.1)
        for i in survivors:
            assert replicas[i].health()["status"] == "ok"

        # Either way the survivors serve again once someone authorizes (from a survivor's home).
        if outcome == "needs-authorization":
            cluster.authorize(cluster.homes[survivors[0]])
        for i in survivors:
            with anyio.fail_after(10):
                while upstream_state(replicas[i]) != "ready":
                    await anyio.sleep(0.1)
            async with http_client(replicas[i].url) as client:
                result = await client.call_tool("protected__whoami", {})
                assert not result.is_error, text_of(result)
    print(f"holder replica-{holder} killed mid-refresh: {outcome}; survivors' calls done {waited:.1f}s after the kill")


def record_events(store: StoreEnv, into: list[tuple[float, dict[str, Any]]], stop: threading.Event) -> None:
    """Collect the store's change events with their arrival time (a thread)."""
    client = redis.Redis.from_url(store.url, socket_connect_timeout=1)
    pubsub = client.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]  # untyped in redis-py
    pubsub.subscribe(f"{store.prefix}events")
    try:
        while not stop.is_set():
            message = pubsub.get_message(timeout=0.05)
            if message is not None and message.get("type") == "message":
                into.append((time.time(), json.loads(message["data"])))
    finally:
        pubsub.close()
        client.close()


async def test_authorize_through_one_replica_reaches_the_others_within_a_second(
    tmp_path: Path, shared_store: StoreEnv, headless_browser: Path, oidc_factory: Any, protected_mcp_factory: Any
) -> None:
    oidc = oidc_factory()
    protected = protected_mcp_factory(oidc.issuer)
    with Cluster(tmp_path, shared_store) as cluster:
        cluster.configure(CATALOG(protected.url), {}, ["protected"])
        replicas = cluster.start()
        for replica in replicas:
            assert upstream_state(replica) == "needs-authorization"
        events: list[tuple[float, dict[str, Any]]] = []
        stop = threading.Event()
        listener = threading.Thread(target=record_events, args=(shared_store, events, stop), daemon=True)
        listener.start()
        ready_at: dict[int, float] = {}

        async def watch(index: int) -> None:
            with anyio.fail_after(60):
                while upstream_state(replicas[index]) != "ready":
                    await anyio.sleep(0.02)
            ready_at[index] = time.time()

        try:
            async with anyio.create_task_group() as tg:
                for index in (1, 2):
                    tg.start_soon(watch, index)
                await anyio.to_thread.run_sync(cluster.authorize, cluster.first)
                cli_done = time.time()
        finally:
            stop.set()
            listener.join(5)
        # The CLI's last write (the tokens) is its last change event.
        written = max(at for at, event in events if event.get("server") == "protected" and at <= cli_done)
        latencies = {index: ready_at[index] - written for index in (1, 2)}
        for index in (1, 2):
            async with http_client(replicas[index].url) as client:
                result = await client.call_tool("protected__whoami", {})
                assert not result.is_error, text_of(result)
    print(f"authorize via replica-0 -> ready on replica-1/2 after {latencies[1]:.3f}s / {latencies[2]:.3f}s")
    assert max(latencies.values()) <= 2.0, latencies


async def test_modern_clients_need_no_affinity_legacy_sessions_do(
    tmp_path: Path, shared_store: StoreEnv, node_deps: None
) -> None:
    with Cluster(tmp_path, shared_store) as cluster:
        cluster.configure({"time": {"type": "server", "command": peers.time_stdio_argv()}}, {}, ["time"])
        replicas = cluster.start()
        for replica in replicas:
            replica.wait_health(lambda h: h["upstreams_ready"] == 1)

        # 2026-07-28 (stateless): every request may go to another replica.
        balancer = RoundRobin([replica.base_url for replica in replicas])
        auth = replicas[0].auth  # one token for the whole cluster (BASTION_GATEWAY_TOKEN, as deployed)
        async with httpx2.AsyncClient(transport=balancer, headers=auth, timeout=30.0, trust_env=False) as http:
            async with Client(streamable_http_client(replicas[0].url, http_client=http), mode="auto") as client:
                assert "time__get_current_time" in {t.name for t in (await client.list_tools()).tools}
                for _ in range(6):
                    result = await client.call_tool("time__get_current_time", {"timezone": "UTC"})
                    assert not result.is_error and "UTC" in text_of(result)
        assert set(balancer.sent) == {0, 1, 2}, balancer.sent

        # Legacy (initialize + Mcp-Session-Id): the session lives in the replica that created it.
        headers = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
        initialize = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {
                "protocolVersion": "2025-06-18",
                "capabilities": {},
                "clientInfo": {"name": "t", "version": "1"},
            },
        }
        listing = {"jsonrpc": "2.0", "id": 2, "method": "tools/list", "params": {}}
        async with httpx2.AsyncClient(headers=auth, timeout=10.0, trust_env=False) as http:
            created = await http.post(replicas[0].url, json=initialize, headers=headers)
            assert created.status_code == 200, created.text
            session = {
                **headers,
                "Mcp-Session-Id": created.headers["mcp-session-id"],
                "MCP-Protocol-Version": "2025-06-18",
            }
            initialized = {"jsonrpc": "2.0", "method": "notifications/initialized"}
            assert (await http.post(replicas[0].url, json=initialized, headers=session)).status_code == 202
            elsewhere = await http.post(replicas[1].url, json=listing, headers=session)
            assert elsewhere.status_code == 404, (elsewhere.status_code, elsewhere.text)
            assert "session" in elsewhere.text.lower()
            home = await http.post(replicas[0].url, json=listing, headers=session)
            assert home.status_code == 200 and "time__get_current_time" in home.text


async def test_redis_restart_while_calls_run(
    tmp_path: Path,
    private_redis: PrivateRedis,
    private_store: StoreEnv,
    headless_browser: Path,
    oidc_factory: Any,
    protected_mcp_factory: Any,
) -> None:
    """Redis goes away across the refresh window and comes back (AOF keeps its data): no call
    with a valid token fails, /health and `oauth ls` say degraded meanwhile, a replica started
    during the outage catches up, and a revoke / authorize afterwards reaches every replica."""
    oidc = oidc_factory(access_token_ttl=20)  # refresh margin: min(60, 20 / 2) = 10 s
    protected = protected_mcp_factory(oidc.issuer)
    with Cluster(tmp_path, private_store, size=4) as cluster:
        cluster.configure(CATALOG(protected.url), {}, ["protected"])
        cluster.authorize(cluster.first)
        cluster.homes, late_home = cluster.homes[:3], cluster.homes[3]
        replicas = cluster.start()
        record = await private_store.record("protected")
        assert record is not None and record.tokens is not None and record.tokens.expires_at is not None
        expires = record.tokens.expires_at
        assert expires - time.time() > 12, "the replicas took too long to start"
        before = refreshes(oidc)
        failures: list[str] = []
        calls = [0]

        async def keep_calling(replica: GatewayProcess) -> None:
            async with http_client(replica.url) as client:
                while time.time() < expires + 3:  # past the first token's expiry: needs the refreshed one
                    try:
                        result = await client.call_tool("protected__echo", {"text": "x"})
                        if result.is_error:
                            failures.append(text_of(result))
                    except MCPError as exc:
                        failures.append(str(exc))
                    calls[0] += 1
                    await anyio.sleep(0.1)

        late: list[GatewayProcess] = []
        async with anyio.create_task_group() as tg:
            for replica in replicas:
                tg.start_soon(keep_calling, replica)
            await anyio.sleep(max(0.0, expires - 11.5 - time.time()))
            private_redis.stop()  # down from 1.5 s before the refresh window until 6 s into it
            down_at = time.time()
            late.append(await anyio.to_thread.run_sync(GatewayProcess, late_home))  # starts without its store
            for replica in [*replicas, *late]:
                with anyio.fail_after(8):
                    while not replica.health()["store"]["degraded"]:
                        await anyio.sleep(0.1)
            ls = await anyio.to_thread.run_sync(lambda: cluster.homes[1].run("oauth", "ls", "--json", check=False))
            assert ls.returncode == 1 and json.loads(ls.stdout) == []
            assert "the credential store is degraded" in ls.stderr and len(ls.stderr.strip().splitlines()) == 1
            await anyio.sleep(max(0.0, down_at + 7.5 - time.time()))
            private_redis.start()
            for replica in [*replicas, *late]:
                with anyio.fail_after(10):
                    while replica.health()["store"]["degraded"]:
                        await anyio.sleep(0.1)
        late_replica = late[0]
        try:
            assert failures == [], failures[:5]
            assert calls[0] > 100
            assert refreshes(oidc) - before == 1
            rows = cluster.homes[1].json("oauth", "ls", "--json")
            assert [set(row) for row in rows] == [{"server", "state", "issuer", "client_id", "scopes", "expires_at"}]
            assert rows[0]["state"] == "authorized" and rows[0]["expires_at"] > expires
            with anyio.fail_after(15):  # the replica started during the outage catches up
                while upstream_state(late_replica) != "ready":
                    await anyio.sleep(0.1)

            # Converged: a revoke, then an authorization, from two other replicas reach all four.
            everyone = [*replicas, late_replica]
            cluster.homes[1].run("oauth", "revoke", "protected")
            with anyio.fail_after(10):
                while any(upstream_state(r) != "needs-authorization" for r in everyone):
                    await anyio.sleep(0.1)
            cluster.authorize(cluster.homes[2])
            with anyio.fail_after(10):
                while any(upstream_state(r) != "ready" for r in everyone):
                    await anyio.sleep(0.1)
        finally:
            late_replica.stop()
    print(f"Redis down {7.5:.1f}s across the refresh window: {calls[0]} calls, 0 failed, 1 refresh after restart")
