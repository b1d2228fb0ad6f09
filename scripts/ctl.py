"""Command-line control of a running desk, from another terminal, through the bus.

``python3 run.py status``          a table of services and strategies (state, pid, uptime,
                                   restarts, CPU, memory, signals today), from the health
                                   reports on the bus (``health.supervisor``,
                                   ``health.strategy_manager`` and each service's own).
``python3 run.py restart NAME``    restart one strategy: a ``Control`` command on
                                   ``control.strategy_manager``; the manager re-reads
                                   ``configs/strategies.json`` (so edited params apply to that
                                   strategy only), restarts it and answers on
                                   ``reply.strategy_manager``; the answer is printed.

Both find the bus from ``config.py`` / ``AMT_BUS_PUB`` / ``AMT_BUS_SUB``; a system started with
``--bus-pub``/``--bus-sub`` needs the same options here. Exit codes: 0 done, 1 failed or no
running system answered, 2 bad usage.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from trading_core import messages as m, settings as settings_mod  # noqa: E402
from trading_core.bus import BusClient, now_ms  # noqa: E402

SERVICES = ("bus", "api", "strategy_manager", "ingestor")


def _parser(prog: str, description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("--config", metavar="FILE", help="config file (default config.py, else config.example.py)")
    p.add_argument("--bus-pub", metavar="ENDPOINT", help="bus endpoint to publish to (BUS_PUB)")
    p.add_argument("--bus-sub", metavar="ENDPOINT", help="bus endpoint to subscribe to (BUS_SUB)")
    return p


def _settings(args: argparse.Namespace) -> tuple[str, str]:
    settings = settings_mod.load(args.config)
    return args.bus_pub or settings.bus_pub, args.bus_sub or settings.bus_sub


# --- status ---------------------------------------------------------------------------------------
def collect_health(bus_pub: str, bus_sub: str, timeout_s: float) -> dict[str, m.Health]:
    """The latest ``Health`` of every service heard within ``timeout_s`` seconds (returns early
    once the supervisor and the strategy manager have both been heard twice, so each service's
    once-a-second report had its chance)."""
    bus = BusClient(bus_pub, bus_sub, ["health."])
    seen: dict[str, m.Health] = {}
    counts: dict[str, int] = {}
    try:
        bus.wait_ready(min(timeout_s, 3.0))
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                got = bus.recv(100)
            except ValueError:
                continue
            if got is None:
                continue
            _, msg = got
            if isinstance(msg, m.Health) and msg.service != "probe":
                seen[msg.service] = msg
                counts[msg.service] = counts.get(msg.service, 0) + 1
                if counts.get("supervisor", 0) >= 2 and counts.get("strategy_manager", 0) >= 2:
                    break
    finally:
        bus.close()
    return seen


def _uptime(seconds: Any) -> str:
    if not isinstance(seconds, (int, float)) or seconds <= 0:
        return "-"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def _mb(value: Any) -> str:
    return f"{value / 1e6:.0f} MB" if isinstance(value, (int, float)) and value > 0 else "-"


def _cpu(value: Any) -> str:
    return f"{value:.1f}" if isinstance(value, (int, float)) else "-"


def table(headers: list[str], rows: list[list[Any]]) -> str:
    """A plain text table, columns left-aligned and padded to their widest cell."""
    cells = [[str(c) for c in headers]] + [["-" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells)


def status_rows(health: dict[str, m.Health]) -> tuple[list[list[Any]], list[list[Any]], dict[str, Any]]:
    """``(service rows, strategy rows, manager details)`` for :func:`status_main`'s tables."""
    sup = health.get("supervisor")
    sup_services = (sup.details.get("services", {}) if sup else {}) or {}
    services = []
    for name in list(SERVICES) + sorted(set(sup_services) - set(SERVICES)):
        s, own = sup_services.get(name, {}), health.get(name)
        if not s and own is None:
            continue
        state = own.status if own is not None else ("alive" if s.get("alive") else
                                                     "failed" if s.get("gave_up") else "down")
        d = own.details if own is not None else {}
        services.append([name, state, s.get("pid") or (own.pid if own else None), _uptime(s.get("uptime_s")),
                         s.get("restarts", "-"), _cpu(d.get("cpu_percent", s.get("cpu_percent"))),
                         _mb(d.get("rss_bytes", s.get("rss_bytes")))])
    mgr = health.get("strategy_manager")
    details = mgr.details if mgr else {}
    strategies = []
    for name, s in sorted((details.get("strategies") or {}).items()):
        strategies.append([name, s.get("cls", "-"), s.get("state", "-"), s.get("pid") if s.get("alive") else None,
                           _uptime(s.get("uptime_s")), s.get("restarts", 0), _cpu(s.get("cpu_percent")),
                           _mb(s.get("rss_bytes")), s.get("signals_today", 0)])
    return services, strategies, details


def status_main(argv: list[str]) -> int:
    """``run.py status``: print the services and strategies tables. Exit 1 if nothing answered."""
    p = _parser("run.py status", "A table of the running desk's services and strategies.")
    p.add_argument("--timeout", type=float, default=3.0, metavar="S",
                   help="seconds to listen for health reports (default 3)")
    p.add_argument("--json", action="store_true", help="print the raw health reports as JSON")
    args = p.parse_args(argv)
    try:
        bus_pub, bus_sub = _settings(args)
    except (ValueError, SyntaxError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    health = collect_health(bus_pub, bus_sub, args.timeout)
    if not health:
        print(f"error: no running desk answered on {bus_sub} within {args.timeout:g} s "
              "(is `python3 run.py` running? started with --bus-sub? pass the same here)",
              file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({k: {"status": h.status, "pid": h.pid, "ts": h.ts, "details": h.details}
                          for k, h in sorted(health.items())}, indent=1))
        return 0
    services, strategies, details = status_rows(health)
    print(f"Services ({time.strftime('%H:%M:%S')})")
    print(table(["SERVICE", "STATE", "PID", "UPTIME", "RESTARTS", "CPU%", "RSS"], services)
          if services else "  (no supervisor report: was the desk started with run.py?)")
    print()
    market = details.get("market_date")
    print("Strategies" + (f" (signals today = on {market}, IST date of the latest market data)" if market else ""))
    print(table(["STRATEGY", "CLASS", "STATE", "PID", "UPTIME", "RESTARTS", "CPU%", "RSS", "SIGNALS TODAY"],
                strategies) if strategies else "  (no strategy manager report)")
    last = details.get("last_command") or {}
    if last:
        print(f"\nlast command: {last.get('command')} {last.get('target')}: {last.get('message')}")
    return 0


# --- restart (and enable/disable) -------------------------------------------------------------------
def send_control(bus_pub: str, bus_sub: str, command: str, target: str,
                 timeout_s: float = 15.0) -> m.ControlReply | None:
    """Publish ``Control(command, target)`` to the strategy manager and wait for its
    ``ControlReply`` (``None`` if none came within ``timeout_s``)."""
    bus = BusClient(bus_pub, bus_sub, [m.exact(m.reply_topic("strategy_manager"))])
    try:
        if not bus.wait_ready(min(timeout_s, 5.0)):
            return None
        request = m.Control(command=command, target=target, ts=now_ms())
        bus.publish(m.control_topic("strategy_manager"), request)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                got = bus.recv(100)
            except ValueError:
                continue
            if got is None:
                continue
            _, msg = got
            if (isinstance(msg, m.ControlReply) and msg.request_ts == request.ts
                    and msg.target == target and msg.command == command):
                return msg
        return None
    finally:
        bus.close()


def restart_main(argv: list[str]) -> int:
    """``run.py restart NAME``: restart one strategy (re-reading its configuration)."""
    p = _parser("run.py restart", "Restart one strategy of the running desk (its new parameters "
                                  "from configs/strategies.json apply; the others are not touched).")
    p.add_argument("strategy", metavar="STRATEGY", help="strategy name, as in configs/strategies.json")
    p.add_argument("--timeout", type=float, default=15.0, metavar="S",
                   help="seconds to wait for the manager's answer (default 15)")
    args = p.parse_args(argv)
    try:
        bus_pub, bus_sub = _settings(args)
    except (ValueError, SyntaxError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    reply = send_control(bus_pub, bus_sub, "restart", args.strategy, args.timeout)
    if reply is None:
        print(f"error: no answer from the strategy manager on {bus_sub} within {args.timeout:g} s "
              "(is `python3 run.py` running? started with --bus-pub/--bus-sub? pass the same here)",
              file=sys.stderr)
        return 1
    print(reply.message if reply.ok else f"error: {reply.message}", file=sys.stdout if reply.ok else sys.stderr)
    return 0 if reply.ok else 1


if __name__ == "__main__":
    commands = {"status": status_main, "restart": restart_main}
    if len(sys.argv) < 2 or sys.argv[1] not in commands:
        print("usage: ctl.py status|restart ...", file=sys.stderr)
        sys.exit(2)
    sys.exit(commands[sys.argv[1]](sys.argv[2:]))
