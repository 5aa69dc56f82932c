"""Processes the bench starts: each in its own process group, logged to a file, stopped by PID.

Every `Proc` is registered in `RUNNING` and stopped by `stop_all()` (also at interpreter exit), so a
failing figure never leaves a server behind. HTTP servers are given a stdin pipe they watch: if the
bench dies, even by SIGKILL, they see EOF and exit.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

from tests.fixtures.procfs import alive as alive
from tests.fixtures.procfs import cmdline as cmdline
from tests.fixtures.procfs import descendants as descendants
from tests.fixtures.procfs import stat_fields

RUNNING: list[Proc] = []


class BenchError(RuntimeError):
    pass


class Proc:
    def __init__(
        self,
        name: str,
        argv: list[str],
        log_dir: Path,
        *,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        stdin_pipe: bool = True,
    ) -> None:
        self.name = name
        self.argv = argv
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = log_dir / f"{name}-{time.monotonic_ns()}.log"
        with open(self.log_path, "wb") as log:
            self.popen = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE if stdin_pipe else subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=cwd,
                start_new_session=True,
            )
        RUNNING.append(self)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def wait_for(self, pattern: str, timeout: float = 60.0) -> re.Match[str]:
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            match = regex.search(self.log())
            if match:
                return match
            if self.popen.poll() is not None:
                raise BenchError(f"{self.name} exited ({self.popen.returncode}):\n{self.log()[-3000:]}")
            if time.monotonic() > deadline:
                self.stop()
                raise BenchError(f"{self.name} not ready after {timeout:.0f}s:\n{self.log()[-3000:]}")
            time.sleep(0.01)

    def wait_json_ready(self, timeout: float = 60.0) -> dict[str, object]:
        match = self.wait_for(r'(\{"ready": true[^\n]*\})\n', timeout)
        return dict(json.loads(match.group(1)))

    def stop(self, timeout: float = 5.0) -> None:
        popen = self.popen
        if popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(popen.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                popen.wait(timeout)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(popen.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            popen.wait(timeout)
        if popen.stdin is not None:
            with contextlib.suppress(OSError):
                popen.stdin.close()
        if self in RUNNING:
            RUNNING.remove(self)

    def __enter__(self) -> Proc:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def stop_all() -> None:
    for proc in list(reversed(RUNNING)):
        proc.stop()


atexit.register(stop_all)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, proc: Proc, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            raise BenchError(f"{proc.name} exited ({proc.popen.returncode}):\n{proc.log()[-3000:]}")
        with socket.socket() as sock:
            sock.settimeout(0.2)
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.02)
    raise BenchError(f"{proc.name} did not listen on {port} within {timeout:.0f}s:\n{proc.log()[-3000:]}")


def cpu_seconds(pid: int) -> float:
    """utime + stime of `pid` (not its children), in seconds."""
    try:
        fields = stat_fields(pid)
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")
