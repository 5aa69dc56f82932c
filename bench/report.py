"""docs/benchmarks.md from the run's data (plus the hand-written analysis in bench/NOTES.md)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

NOTES = Path(__file__).resolve().parent / "NOTES.md"
MODE_NAMES = {"legacy": "legacy", "auto": "modern"}


def sanitize(value: Any) -> Any:
    """NaN/inf → None (JSON has no NaN); tuples/sets → lists."""
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else value
    if isinstance(value, dict):
        return {str(k): sanitize(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [sanitize(v) for v in value]
    return value


def _f(value: Any, digits: int = 2, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    text = f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"
    return text


def _latency_table(section: dict[str, Any], modes: list[str]) -> list[str]:
    summary = section["summary"]
    head = "| path |"
    rule = "|---|"
    for mode in modes:
        name = MODE_NAMES.get(mode, mode)
        head += f" {name} p50 / p99 | added p50 |"
        rule += "---|---|"
    head += " proxy CPU ms/call (" + " / ".join(MODE_NAMES.get(m, m) for m in modes) + ") |"
    rule += "---|"
    lines = [head, rule]
    for path in section["paths"]:
        row = f"| {path['label']} |"
        cpu = []
        for mode in modes:
            item = summary.get(f"{path['key']}/{mode}")
            if item is None:
                row += " (not measured in this mode) | — |"
                cpu.append("—")
                continue
            if item.get("p50") is None or (isinstance(item["p50"], float) and math.isnan(item["p50"])):
                row += " error | — |"
                cpu.append("—")
                continue
            row += f" {_f(item['p50'])} / {_f(item['p99'])} | {_f(item.get('added_p50'), signed=True)} |"
            cpu.append(_f(item.get("proxy_cpu_ms_per_call")))
        row += " " + " / ".join(cpu) + " |"
        lines.append(row)
    errors = [f"- {key}: {err}" for key, item in summary.items() for err in item.get("errors", [])[:1]]
    if errors:
        lines += ["", "Errors:", *errors]
    return lines


def goals(data: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(goal, measured, PASS/MISS/n.a.)"""
    out: list[tuple[str, str, str]] = []
    lat = data.get("latency", {}).get("summary", {})
    modes = data.get("config", {}).get("modes", ["auto"])

    added = {m: lat.get(f"bastion-http-http/{m}", {}).get("added_p50") for m in modes}
    if all(v is not None and not math.isnan(v) for v in added.values()) and added:
        measured = ", ".join(f"{MODE_NAMES[m]} {_f(v, signed=True)} ms" for m, v in added.items())
        out.append(("added latency ≤ 1 ms p50 (HTTP → HTTP)", measured, _ok(all(v <= 1.0 for v in added.values()))))
    else:
        out.append(("added latency ≤ 1 ms p50 (HTTP → HTTP)", "not measured", "n.a."))

    ratios = {}
    for m in modes:
        ours = lat.get(f"bastion-http-http/{m}", {}).get("added_p50")
        theirs = lat.get(f"fastmcp-create/{m}", {}).get("added_p50")
        if ours is not None and theirs is not None and not math.isnan(ours) and not math.isnan(theirs):
            ratios[m] = theirs / ours if ours > 0 else math.inf
    if ratios:
        measured = ", ".join(f"{MODE_NAMES[m]} {r:.1f}×" for m, r in ratios.items())
        out.append(
            (
                "≥ 10× less added latency than FastMCP's `create_proxy(url)`",
                measured,
                _ok(all(r >= 10 for r in ratios.values())),
            )
        )
    else:
        out.append(("≥ 10× less added latency than FastMCP's proxy", "not measured (run without --quick)", "n.a."))

    tp = [row for row in data.get("throughput", {}).get("table", []) if row["clients"] == 32]
    if tp:
        measured = ", ".join(
            f"{MODE_NAMES[r['mode']]} {r['ratio'] * 100:.0f}%" for r in tp if r.get("ratio") is not None
        )
        out.append(
            ("throughput at 32 clients ≥ 50% of direct", measured, _ok(all((r.get("ratio") or 0) >= 0.5 for r in tp)))
        )
    else:
        out.append(("throughput at 32 clients ≥ 50% of direct", "not measured", "n.a."))

    scale = {row["servers"]: row for row in data.get("scale", [])}
    if 100 in scale:
        row = scale[100]
        out.append(("100 upstreams ready ≤ 5 s", f"{_f(row['all_listed_s'])} s", _ok(row["all_listed_s"] <= 5.0)))
        raw = row["list_raw"]["p50"]
        wire = row.get("list_wire", {}).get("p50")
        last_byte = row.get("list_last_byte", {}).get("p50")
        if last_byte is not None:
            parse = row["list_parse"]["p50"]
            out.append(
                (
                    f"tools/list over {row['tools']} tools ≤ 50 ms",
                    f"{_f(last_byte, 1)} ms p50 to the last byte of the {row['list_bytes'] / 1e6:.1f} MB reply"
                    f" (p99 {_f(row['list_last_byte']['p99'], 1)}); the client's `json.loads` of it adds"
                    f" {_f(parse, 1)} ms; {_f(wire, 1)} ms through httpx2 + `json.loads`; {_f(raw, 1)} ms through"
                    " the SDK client, which validates the 5,000 tools itself",
                    _ok(last_byte <= 50.0),
                )
            )
        elif wire is None:
            out.append(
                (
                    f"tools/list over {row['tools']} tools ≤ 50 ms",
                    f"{_f(raw, 1)} ms (p50, result as JSON)",
                    _ok(raw <= 50.0),
                )
            )
        else:
            out.append(
                (
                    f"tools/list over {row['tools']} tools ≤ 50 ms",
                    f"{_f(wire, 1)} ms p50 on the wire (POST + `json.loads`); {_f(raw, 1)} ms through the SDK"
                    " client, which validates the 5,000 tools itself",
                    _ok(wire <= 50.0),
                )
            )
    else:
        out.append(("100 upstreams ready ≤ 5 s", "not measured", "n.a."))
        out.append(("tools/list over 5,000 tools ≤ 50 ms", "not measured", "n.a."))

    steady = data.get("steady_state")
    token_steady = data.get("token", {}).get("steady_state")
    if steady:
        parts = [steady]
        if token_steady:
            parts.append(token_steady)
        reads = sum(p["delta"]["store_get"] + p["delta"]["store_list"] + p["delta"]["store_get_secret"] for p in parts)
        opens = sum(p["delta"]["file_opens"] for p in parts)
        spawns = sum(p["delta"]["spawns"] + p["new_children"] for p in parts)
        calls = sum(p["calls"] for p in parts)
        out.append(
            (
                "zero store reads and zero process spawns per call",
                f"{reads} store reads, {opens} file opens, {spawns} spawns/new children over {calls} calls",
                _ok(reads == 0 and spawns == 0 and opens == 0),
            )
        )
    else:
        out.append(("zero store reads and zero process spawns per call", "not measured", "n.a."))

    token = data.get("token")
    if token:
        out.append(
            (
                f"exactly one refresh per expiry ({token['calls']} concurrent calls)",
                f"{token['refreshes_at_expiry']} refresh(es), {token['errors_at_expiry']} errors",
                _ok(token["refreshes_at_expiry"] == 1 and token["errors_at_expiry"] == 0),
            )
        )
    else:
        out.append(("exactly one refresh per expiry", "not measured", "n.a."))

    cli = data.get("cli", {}).get("bastion --help")
    if cli:
        out.append(("`bastion --help` ≤ 200 ms", f"{_f(cli['median_ms'], 0)} ms", _ok(cli["median_ms"] <= 200)))
    else:
        out.append(("`bastion --help` ≤ 200 ms", "not measured", "n.a."))
    return out


def _ok(flag: bool) -> str:
    return "PASS" if flag else "MISS"


def render(data: dict[str, Any]) -> str:
    m = data["machine"]
    cfg = data["config"]
    modes = list(cfg["modes"])
    v = m["versions"]
    envs = data.get("environments", {})
    lines = [
        "# Benchmarks: what the gateway costs",
        "",
        "Generated by `python -m bench`"
        + (" --quick (smoke-test counts; not for comparison)" if data["mode"] == "quick" else "")
        + f" on {m['date']} at commit {m['commit']}; the run took {data['total_s']:.0f} s.",
        "",
        f"Machine: {m['cores']} cores, {m['cpu']}; {m['platform']}; Python {m['python']}, Node {m['node']}.",
        "Versions: "
        + ", ".join(f"{k} {val}" for k, val in v.items() if val)
        + "; not installed: "
        + (", ".join(k for k, val in v.items() if not val) or "—")
        + ".",
        "Alternatives (own venvs under `.cache/bench-venv`, npm under `.cache/bench-npm`): "
        + ", ".join(f"{k} {e.get('version', '')} ({'ok' if e['ok'] else 'not installed'})" for k, e in envs.items())
        + ("." if envs else "none in this run."),
        "",
        "Method: upstream = `bench/servers/echo.py` (an `mcp` 2.3.0 `MCPServer` with one `echo` tool, uvicorn"
        " without uvloop/httptools); client = `mcp` 2.3.0 `Client`, one persistent session per path and"
        f' mode, {cfg["warmup"]} warm-up calls, then up to {cfg["calls"]} timed `call_tool("echo")` or'
        f" {cfg['seconds']} s, whichever comes first; {cfg['rounds']} interleaved round(s), the order of"
        " the paths rotated each round. Figures are medians over rounds of each round's p50 and p99;"
        " **added** = p50(path) − p50(direct to the same upstream transport) within the same round."
        ' "legacy" = `mode="legacy"` (initialize handshake, session id); "modern" = `mode="auto"`'
        " (the stateless 2026-07-28 protocol against an mcp 2.3.0 server). Proxy CPU = utime+stime of the"
        " proxy process over the timed calls (10 ms ticks), per call.",
        "",
        "## Goals",
        "",
        "| goal | measured | |",
        "|---|---|---|",
    ]
    for goal, measured, verdict in goals(data):
        lines.append(f"| {goal} | {measured} | **{verdict}** |")

    if "latency" in data:
        lines += ["", "## 1–2. Per-call latency of `echo` (ms)", ""]
        lines += _latency_table(data["latency"], modes)
    if "oauth_remote" in data:
        lines += [
            "",
            "### OAuth-protected remote server (tests/fixtures protected_mcp + oidc-provider)",
            "",
            "Direct = the same `Client` with a Bearer token obtained independently"
            ' (tests/fixtures/oauth_client.py); "added" is against it.',
            "",
        ]
        lines += _latency_table(data["oauth_remote"], modes)
        if data["oauth_remote"].get("mcp_remote_note"):
            lines += ["", f"mcp-remote: {data['oauth_remote']['mcp_remote_note']}"]
    if "throughput" in data:
        tp = data["throughput"]
        lines += [
            "",
            f"## 3. Throughput (calls/s; {tp['seconds_per_point']} s per point, one session per client,"
            " all clients in the bench process)",
            "",
            "Bastion = the default (lean path + raw upstream channel); no wire = the lean path with"
            " `BASTION_WIRE=0` (upstream through the SDK client); generic = `BASTION_LEAN_PATH=0`; all"
            " measured in the same rounds.",
            "",
            "| clients | mode | direct | Bastion | Bastion / direct | no wire | no wire / direct | generic |"
            " generic / direct | errors (direct / Bastion / no wire / generic) |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for row in tp["table"]:
            lines.append(
                f"| {row['clients']} | {MODE_NAMES.get(row['mode'], row['mode'])} | {_f(row['direct'], 0)} |"
                f" {_f(row['bastion'], 0)} | {_f(row['ratio'])} | {_f(row.get('nowire'), 0)} |"
                f" {_f(row.get('nowire_ratio'))} | {_f(row.get('generic'), 0)} |"
                f" {_f(row.get('generic_ratio'))} | {row['direct_errors']} / {row['bastion_errors']}"
                f" / {row.get('nowire_errors', '—')} / {row.get('generic_errors', '—')} |"
            )
    if "scale" in data:
        lines += [
            "",
            f"## 4. Scale ({cfg['tools_per_server']} tools per upstream, all upstreams in one echo process)",
            "",
            "tools/list four ways: served (one 2026-07-28 POST on a plain socket, timed to the reply's"
            " last byte; the client's `json.loads` of the reply timed apart), on the wire through httpx2"
            " (POST + `json.loads`), through the SDK client with the result left as JSON (`send_request`"
            " still validates every tool client-side), and typed `list_tools()`; lean = the default,"
            " generic = `BASTION_LEAN_PATH=0`.",
            "",
            "| upstreams | tools listed | `gateway run` → listening (s) | → all tools listed (s) |"
            " served: last byte p50 / p99 (ms) | reply size (MB) | client `json.loads` p50 (ms) |"
            " httpx2 p50 / p99, lean (ms) | httpx2 p50, generic (ms) | SDK JSON p50 / p99, lean (ms) |"
            " SDK JSON p50, generic (ms) | typed `list_tools()` p50, lean (ms) | gateway RSS (MiB) |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for row in data["scale"]:
            wire = row.get("list_wire", {})
            last_byte = row.get("list_last_byte", {})
            size = row.get("list_bytes")
            lines.append(
                f"| {row['servers']} | {row['tools']} | {_f(row['listening_s'])} | {_f(row['all_listed_s'])} |"
                f" {_f(last_byte.get('p50'), 1)} / {_f(last_byte.get('p99'), 1)} |"
                f" {_f(size / 1e6 if size else None)} | {_f(row.get('list_parse', {}).get('p50'), 1)} |"
                f" {_f(wire.get('p50'), 1)} / {_f(wire.get('p99'), 1)} |"
                f" {_f(row.get('list_wire_generic', {}).get('p50'), 1)} |"
                f" {_f(row['list_raw']['p50'], 1)} / {_f(row['list_raw']['p99'], 1)} |"
                f" {_f(row.get('list_raw_generic', {}).get('p50'), 1)} |"
                f" {_f(row['list_typed']['p50'], 1)} | {_f(row['rss_mib'], 0)} |"
            )
    if "token" in data:
        t = data["token"]
        lines += [
            "",
            f"## 5. Token path: {t['calls']} concurrent calls at the moment the access token is due",
            "",
            f"Access token TTL {t['ttl_s']} s, `refresh_margin` {t['refresh_margin_s']} s; Bastion home authorized"
            " with `bastion oauth authorize` through the headless browser; one downstream session, the calls"
            " fired together when the token became due"
            + (" (fired late: the setup took longer than the TTL)" if t["fired_late"] else "")
            + ". Before: the same burst with a valid token; after: again with the refreshed one.",
            "",
            f"Refresh requests seen by the authorization server during the burst: **{t['refreshes_at_expiry']}**"
            f" (during the baseline burst: {t['refreshes_during_baseline']}); errors: {t['errors_at_expiry']}.",
            "",
            "| burst | p50 (ms) | p99 (ms) | max (ms) | wall (ms) |",
            "|---|---|---|---|---|",
        ]
        for name, key in (
            ("before (valid token)", "baseline"),
            ("at expiry", "at_expiry"),
            ("after refresh", "after_refresh"),
        ):
            item = t[key]
            lines.append(
                f"| {name} | {_f(item['p50'], 1)} | {_f(item['p99'], 1)} | {_f(item['max'], 1)} |"
                f" {_f(item['wall_ms'], 0)} |"
            )
        e = t["extra_ms"]
        lines += [
            "",
            f"Extra latency of the calls at expiry (vs the median of before/after): p50 {_f(e['p50'], 1, True)} ms,"
            f" p99 {_f(e['p99'], 1, True)} ms, max {_f(e['max'], 1, True)} ms.",
        ]
    if "steady_state" in data:
        s = data["steady_state"]
        d = s["delta"]
        lines += [
            "",
            "## Steady state: what one call costs besides the forwarding",
            "",
            "Counted inside a gateway process started through `bench/servers/counting_gateway.py` (an audit"
            " hook for `open` and process-spawn events, counters around every store backend's `get`, `list`,"
            " `get_secret`), between two snapshots taken after warm-up; children of the gateway from /proc.",
            "",
            "| calls | store reads | file opens | spawns | new children |",
            "|---|---|---|---|---|",
            f"| {s['calls']} (echo over HTTP and stdio upstreams) |"
            f" {d['store_get'] + d['store_list'] + d['store_get_secret']}"
            f" | {d['file_opens']} | {d['spawns']} | {s['new_children']} |",
        ]
        ts = data.get("token", {}).get("steady_state")
        if ts:
            d = ts["delta"]
            lines.append(
                f"| {ts['calls']} (OAuth-protected upstream, token cached) |"
                f" {d['store_get'] + d['store_list'] + d['store_get_secret']} | {d['file_opens']} | {d['spawns']} |"
                f" {ts['new_children']} |"
            )
    if "cli" in data:
        lines += [
            "",
            "## 6. CLI start (wall time of the whole process, ms)",
            "",
            "| command | median | min | max | runs |",
            "|---|---|---|---|---|",
        ]
        for name, item in data["cli"].items():
            lines.append(
                f"| `{name}` | {_f(item['median_ms'], 0)} | {_f(item['min_ms'], 0)} | {_f(item['max_ms'], 0)} |"
                f" {item['runs']} |"
            )
    if data.get("notes") or data.get("failures"):
        lines += ["", "## Run notes", ""]
        lines += [f"- {n}" for n in data.get("notes", [])]
        lines += [f"- figure **{k}** failed: {v}" for k, v in data.get("failures", {}).items()]
    if data.get("orphans"):
        lines += ["", f"**Orphan processes left after the run: {data['orphans']}**"]
    if NOTES.exists() and data["mode"] != "quick":
        lines += ["", NOTES.read_text().strip()]
    return "\n".join(lines) + "\n"
