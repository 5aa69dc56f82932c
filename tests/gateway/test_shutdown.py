"""A gateway process that is told to stop leaves no upstream child process behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import anyio
import pytest
from mcp import Client, StdioServerParameters

from tests.fixtures.procfs import alive
from tests.fixtures.procfs import children as children_of

from .conftest import ECHO


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc")
@pytest.mark.parametrize(("transport", "signum"), [("streamable-http", signal.SIGTERM), ("stdio", signal.SIGINT)])
def test_stopping_the_gateway_stops_every_upstream_child(
    tmp_path: Path, transport: str, signum: signal.Signals
) -> None:
    config = tmp_path / "servers.yaml"
    config.write_text(
        "registry:\n"
        f"  one: {{command: [{sys.executable!r}, {ECHO!r}, --name, one]}}\n"
        f"  two: {{command: [{sys.executable!r}, {ECHO!r}, --name, two]}}\n",
        encoding="utf-8",
    )
    gateway = subprocess.Popen(
        [sys.executable, "-m", "bastion.gateway", "--config", str(config), "--transport", transport, "--port", "0"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 20
        children: set[int] = set()
        while time.monotonic() < deadline and len(children) < 2:
            children = children_of(gateway.pid)
            time.sleep(0.1)
        assert len(children) == 2, gateway.stderr.read1().decode() if gateway.poll() is not None else "no children"
        time.sleep(1.0)  # let the sessions come up
        gateway.send_signal(signum)
        gateway.wait(timeout=20)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(alive(pid) for pid in children):
            time.sleep(0.1)
        assert not [pid for pid in children if alive(pid)]
    finally:
        if gateway.poll() is None:
            gateway.kill()
            gateway.wait()
        for pid in children_of(gateway.pid):
            os.kill(pid, signal.SIGKILL)
        for stream in (gateway.stdin, gateway.stdout, gateway.stderr):
            if stream is not None:
                stream.close()


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_gateway_process_serves_stdio_clients(tmp_path: Path, mode: str) -> None:
    config = tmp_path / "servers.yaml"
    config.write_text(f"registry:\n  one: {{command: [{sys.executable!r}, {ECHO!r}, --name, one]}}\n", encoding="utf-8")
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "bastion.gateway", "--config", str(config), "--transport", "stdio"]
    )
    async with Client(params, mode=mode) as client:
        for _ in range(100):
            names = {tool.name for tool in (await client.list_tools(cache_mode="bypass")).tools}
            if "one__echo" in names:
                break
            await anyio.sleep(0.1)
        result = await client.call_tool("one__echo", {"text": "via stdio"})
        assert result.content[0].text == "via stdio"  # type: ignore[union-attr]
