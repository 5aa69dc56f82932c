"""`bastion …` with counters of what the gateway process does, for the steady-state goals.

    BENCH_COUNTERS=/path/counters.json python counting_gateway.py gateway run --transport streamable-http --port 0

Counts, from the moment the process starts: file opens (the `open` audit event: `open()`,
`os.open`, `io.open_code`), process spawns (`subprocess.Popen`, `os.posix_spawn`, `os.fork`,
`os.exec*`, `os.system`) and calls of every store backend's read methods (`get`, `list`,
`get_secret`). On SIGUSR1 it writes them (and the paths of the last opens) to $BENCH_COUNTERS.
Only the bench's counting run uses this wrapper; the latency figures run plain `bastion`.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import sys
from collections import Counter, deque
from typing import Any

COUNTS: Counter[str] = Counter()
RECENT_OPENS: deque[str] = deque(maxlen=20)
SPAWN_EVENTS = frozenset(
    {"subprocess.Popen", "os.posix_spawn", "os.fork", "os.forkpty", "os.exec", "os.system", "os.spawn"}
)


def _hook(event: str, args: tuple[Any, ...]) -> None:
    if event == "open":
        COUNTS["file_opens"] += 1
        RECENT_OPENS.append(str(args[0]) if args else "?")
    elif event in SPAWN_EVENTS:
        COUNTS["spawns"] += 1


def _count_store_reads() -> None:
    import importlib

    for module_name in ("bastion.store.file", "bastion.store.keyring_store", "bastion.store.redis_store"):
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        for value in list(vars(module).values()):
            if not isinstance(value, type) or value.__module__ != module_name:
                continue
            for method in ("get", "list", "get_secret"):
                original = value.__dict__.get(method)
                if original is None or not callable(original):
                    continue

                def wrap(fn: Any, key: str) -> Any:
                    @functools.wraps(fn)
                    async def counted(*a: Any, **kw: Any) -> Any:
                        COUNTS[key] += 1
                        return await fn(*a, **kw)

                    return counted

                setattr(value, method, wrap(original, f"store_{method}"))


def _dump(signum: int, frame: object) -> None:
    path = os.environ.get("BENCH_COUNTERS")
    if path:
        data = {**COUNTS, "recent_opens": list(RECENT_OPENS)}
        tmp = path + ".tmp"
        with open(tmp, "w") as handle:
            json.dump(data, handle)
        os.replace(tmp, path)
        COUNTS["file_opens"] -= 1  # our own write above
        RECENT_OPENS.pop()


def main() -> None:
    _count_store_reads()
    signal.signal(signal.SIGUSR1, _dump)
    sys.addaudithook(_hook)
    from bastion.cli.main import main as bastion_main

    sys.argv = ["bastion", *sys.argv[1:]]
    bastion_main()


if __name__ == "__main__":
    main()
