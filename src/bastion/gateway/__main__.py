"""`python -m bastion.gateway --config servers.yaml`: run the gateway on a catalog file.

A stand-in runner until `bastion gateway run` exists: every server in the file's `registry:`
is run; secrets come from the environment only.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import anyio

from bastion.config.catalog import parse_catalog
from bastion.config.settings import GatewaySettings
from bastion.errors import BastionError
from bastion.gateway.runtime import Gateway, run_gateway


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bastion.gateway")
    parser.add_argument("--config", type=Path, required=True, help="a catalog file (`registry:` of servers)")
    parser.add_argument("--transport", choices=["stdio", "streamable-http", "sse"], default="stdio")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8811)
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr)
    try:
        entries = parse_catalog(args.config.read_text(encoding="utf-8"), str(args.config))
        gateway = Gateway(entries.values(), GatewaySettings())
        anyio.run(run_gateway, gateway, args.transport, args.host, args.port)
    except BastionError as exc:
        print(f"bastion: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
