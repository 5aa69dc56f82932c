"""The bench's own environments for the alternatives, never the project venv.

- `.cache/bench-venv/fastmcp`: FastMCP (the version of the anchors) with `mcp` 2.3.0, plus py-spy and
  pyinstrument for profiling.
- `.cache/bench-venv/mcp-proxy`: `mcp-proxy` 0.13.0 (it pins `mcp` 1.x, so it cannot share a venv
  with FastMCP's `mcp` 2.3.0).
- `.cache/bench-npm`: `mcp-remote` from npm.

Each is created once and reused while its marker matches the pinned versions. A failed install is
reported (the figure is skipped with the reason), never fatal.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".cache"
VENVS = CACHE / "bench-venv"
NPM_DIR = CACHE / "bench-npm"

FASTMCP = "fastmcp==4.2.3"
MCP_PROXY = "mcp-proxy==0.13.0"
MCP_REMOTE = "mcp-remote@0.15.1"
PROFILERS = ("py-spy==0.4.3", "pyinstrument==5.1.3")


@dataclass
class Env:
    name: str
    ok: bool
    detail: str
    path: Path

    @property
    def python(self) -> Path:
        return self.path / "bin" / "python"

    def bin(self, name: str) -> Path:
        return self.path / "bin" / name


def _base_python() -> str:
    # The interpreter the project venv was made from (not the venv itself).
    return getattr(sys, "_base_executable", sys.executable)


def _venv(name: str, requirements: list[str], timeout: float = 600.0) -> Env:
    path = VENVS / name
    marker = path / ".bench-requirements"
    wanted = "\n".join(requirements)
    if marker.exists() and marker.read_text() == wanted:
        return Env(name, True, "cached", path)
    try:
        if not (path / "bin" / "python").exists():
            subprocess.run([_base_python(), "-m", "venv", str(path)], check=True, capture_output=True, timeout=120)
        result = subprocess.run(
            [str(path / "bin" / "pip"), "install", "-q", "--disable-pip-version-check", *requirements],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return Env(name, False, f"venv creation failed: {exc}", path)
    if result.returncode != 0:
        tail = "\n".join(line for line in result.stderr.splitlines() if "ignored" not in line)[-800:]
        return Env(name, False, f"pip install {' '.join(requirements)} failed: {tail}", path)
    marker.write_text(wanted)
    return Env(name, True, "installed", path)


def fastmcp_env() -> Env:
    return _venv("fastmcp", [FASTMCP, *PROFILERS])


def mcp_proxy_env() -> Env:
    return _venv("mcp-proxy", [MCP_PROXY])


def mcp_remote_env(timeout: float = 300.0) -> Env:
    binary = NPM_DIR / "node_modules" / ".bin" / "mcp-remote"
    marker = NPM_DIR / ".bench-requirements"
    if binary.exists() and marker.exists() and marker.read_text() == MCP_REMOTE:
        return Env("mcp-remote", True, "cached", NPM_DIR)
    NPM_DIR.mkdir(parents=True, exist_ok=True)
    if not (NPM_DIR / "package.json").exists():
        (NPM_DIR / "package.json").write_text('{"name": "bastion-bench", "private": true}\n')
    try:
        result = subprocess.run(
            ["npm", "install", "--no-audit", "--no-fund", "--loglevel=error", MCP_REMOTE],
            cwd=NPM_DIR,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return Env("mcp-remote", False, f"npm install failed: {exc}", NPM_DIR)
    if result.returncode != 0 or not binary.exists():
        return Env("mcp-remote", False, f"npm install {MCP_REMOTE} failed: {result.stderr[-800:]}", NPM_DIR)
    marker.write_text(MCP_REMOTE)
    return Env("mcp-remote", True, "installed", NPM_DIR)


def version_of(env: Env, package: str) -> str:
    try:
        result = subprocess.run(
            [str(env.python), "-c", f"import importlib.metadata as m; print(m.version({package!r}))"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.SubprocessError):
        return "?"
    return result.stdout.strip() or "?"
