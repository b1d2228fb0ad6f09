#!/usr/bin/env python3
"""Start the trading desk: the ZeroMQ bus, the ingestor, the strategy manager, the execution service
(risk guard, paper or live orders) and the API server.

With no options it runs the built-in seeded simulator (or Upstox, once an access token is
configured) and serves the desk at http://127.0.0.1:8000. With --replay it replays recorded
NSE data instead. Each service is its own OS process; one that dies is restarted with
exponential backoff (0.5 s doubling, capped at 30 s); more than 5 deaths in 2 minutes is a
crash loop and the supervisor gives up with a clear message. Ctrl-C or SIGTERM stops
everything within 5 seconds.

Commands (each has its own --help):
  python3 run.py status              a table of services and strategies (pid, uptime, CPU, memory)
  python3 run.py restart STRATEGY    restart one strategy without stopping the rest
  python3 run.py sql "SELECT ..."    read-only SQL on the recorded market, running or not
  python3 run.py export ...          hive-partitioned Parquet of recorded days
  python3 run.py kill-switch         flatten every position and stop new orders (--resume, --status)

Examples:
  python3 run.py
  python3 run.py --replay ../shared/data/nse-index-1min/2022_JUN_NIFTY.txt --date 2022-06-01 --speed 60
  python3 run.py --replay ../shared/data/nse-fo-ticks/2022-11-18 --speed 0 --db data/fo-day.duckdb
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402

from trading_core import messages as m, persistence, settings as settings_mod  # noqa: E402
from trading_core.bus import BusClient, now_ms  # noqa: E402
from scripts.service import BusRates  # noqa: E402
from trading_core.supervision import Child, child_env, kill_all, python_cmd, stop_all  # noqa: E402

SERVICES = ("bus", "api", "strategy_manager", "execution", "ingestor")
SCRIPTS = {"bus": "scripts/bus.py", "api": "api/server.py",
           "strategy_manager": "scripts/strategy_manager.py", "execution": "scripts/execution.py",
           "ingestor": "scripts/ingestor.py"}
READY_TIMEOUT_S = 30.0
EXIT_CONFIG = 2


def say(message: str) -> None:
    """One supervisor line on the terminal."""
    print(f"{time.strftime('%H:%M:%S')} supervisor       {message}", flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="run.py", description=__doc__.split("\n\n")[0],
                                epilog="\n\n".join(__doc__.split("\n\n")[1:]),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    feed = p.add_argument_group("market data")
    feed.add_argument("--replay", metavar="PATH",
                      help="replay recorded data: a bar file (SYMBOL,YYYYMMDD,HH:MM,O,H,L,C,V,OI), "
                           "a tick file (YYYYMMDD,HH:MM:SS,PRICE,QTY,OI) or a folder of them, "
                           "merged in time order")
    feed.add_argument("--date", action="append", default=[], metavar="YYYY-MM-DD",
                      help="with --replay: only this IST trading date (repeatable)")
    feed.add_argument("--speed", type=float, default=1.0, metavar="X",
                      help="replay/simulator speed: 1 = real time (default), 60 = a minute per "
                           "second, 0 = as fast as possible")
    feed.add_argument("--instrument", action="append", default=[], metavar="KEY",
                      help="with --replay: only this instrument key, e.g. 'NSE_FO|NIFTY-I' "
                           "(repeatable)")
    feed.add_argument("--rate", type=float, default=0.0, metavar="N",
                      help="with --replay: a constant N ticks per second, whatever the market "
                           "times (overrides --speed; for load tests)")
    feed.add_argument("--limit", type=int, metavar="N",
                      help="with --replay: only the first N ticks of the merged stream")
    feed.add_argument("--feed", choices=["auto", "sim", "replay", "upstox"], default="auto",
                      help="auto (default): replay with --replay, upstox with an access token, "
                           "else the simulator")
    where = p.add_argument_group("where things live (override config.py)")
    where.add_argument("--config", metavar="FILE", help="config file (default config.py, else "
                                                        "config.example.py)")
    where.add_argument("--db", metavar="FILE", help="DuckDB file for ticks and candles (DUCKDB_PATH)")
    where.add_argument("--host", help="API/UI bind address (API_HOST, default 127.0.0.1)")
    where.add_argument("--port", type=int, help="API/UI port (API_PORT, default 8000)")
    where.add_argument("--bus-pub", metavar="ENDPOINT",
                       help="bus endpoint publishers connect to (BUS_PUB, default tcp://127.0.0.1:5555)")
    where.add_argument("--bus-sub", metavar="ENDPOINT",
                       help="bus endpoint subscribers connect to (BUS_SUB, default tcp://127.0.0.1:5556)")
    where.add_argument("--query-endpoint", metavar="ENDPOINT",
                       help="where the ingestor answers research SQL (QUERY_ENDPOINT, default "
                            "tcp://127.0.0.1:5557)")
    where.add_argument("--strategies", metavar="FILE",
                       help="strategy definitions (STRATEGIES_PATH, default configs/strategies.json)")
    where.add_argument("--log-dir", metavar="DIR", help="service logs (LOG_DIR, default logs/)")
    return p.parse_args(argv)


def overrides(args: argparse.Namespace) -> dict[str, str]:
    """Environment variables that hand the command-line options to every service."""
    env = settings_mod.ENV
    pairs = {"duckdb_path": args.db, "api_host": args.host, "api_port": args.port,
             "bus_pub": args.bus_pub, "bus_sub": args.bus_sub, "query_endpoint": args.query_endpoint,
             "strategies_path": args.strategies, "log_dir": args.log_dir}
    out = {env[k]: str(Path(v).resolve()) if k in ("duckdb_path", "strategies_path", "log_dir") else str(v)
           for k, v in pairs.items() if v is not None}
    if args.config:
        out["AMT_CONFIG"] = str(Path(args.config).resolve())
    return out


def port_free(host: str, port: int) -> bool:
    """True when ``host:port`` can be bound now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def preflight(args: argparse.Namespace, settings: settings_mod.Settings) -> str | None:
    """Check everything that would make a service fail at start. Returns one error line or None."""
    from strategy import registry
    try:
        registry.load_strategies(settings.strategies_path)
    except registry.StrategyConfigError as exc:
        return str(exc)
    feed = args.feed if args.feed != "auto" else (
        "replay" if args.replay else "upstox" if settings.access_token else "sim")
    if feed == "upstox":
        from data_handling.upstox_instruments import check_settings
        problem = check_settings(settings)     # token set, URLs well formed, modes name WATCHLIST entries
        if problem:
            return problem
    if feed == "replay" and not args.replay:
        return "--feed replay needs --replay PATH"
    if args.replay and not Path(args.replay).exists():
        return f"--replay: {args.replay} does not exist"
    if args.speed < 0:
        return "--speed must be 0 (as fast as possible) or positive"
    if args.rate < 0:
        return "--rate must be 0 (off) or a positive number of ticks per second"
    if args.limit is not None and args.limit <= 0:
        return "--limit must be a positive number of ticks"
    if not port_free(settings.api_host, settings.api_port):
        return (f"port {settings.api_port} on {settings.api_host} is in use (another run.py?); "
                f"stop it or choose another with --port")
    for name, endpoint in (("--bus-pub", settings.bus_pub), ("--bus-sub", settings.bus_sub)):
        url = urlparse(endpoint)
        if url.scheme == "tcp" and not port_free(url.hostname or "127.0.0.1", url.port or 0):
            return f"bus endpoint {endpoint} is in use (another run.py?); choose another with {name}"
    url = urlparse(settings.query_endpoint)
    if url.scheme == "tcp" and not port_free(url.hostname or "127.0.0.1", url.port or 0):
        # Not fatal: recording matters more than research (the ingestor then runs without it).
        say(f"warning: query endpoint {settings.query_endpoint} is in use (another run.py?); "
            f"research SQL on this system will not work; choose another with --query-endpoint")
    try:
        persistence.check_writable(settings.duckdb_path)
    except persistence.DatabaseLockedError as exc:
        return str(exc)
    return None


class Supervisor:
    """Starts the services in order, restarts the ones that die, stops all on request."""

    def __init__(self, args: argparse.Namespace, settings: settings_mod.Settings, env: dict[str, str]):
        self.settings = settings
        ingest_args = ["--speed", str(args.speed), "--feed", args.feed]
        if args.replay:
            ingest_args += ["--replay", str(Path(args.replay).resolve())]
        for d in args.date:
            ingest_args += ["--date", d]
        for key in args.instrument:
            ingest_args += ["--instrument", key]
        if args.rate:
            ingest_args += ["--rate", str(args.rate)]
        if args.limit:
            ingest_args += ["--limit", str(args.limit)]
        self.children = {name: Child(name, python_cmd(str(ROOT / SCRIPTS[name]),
                                                      *(ingest_args if name == "ingestor" else [])),
                                     child_env(env))
                         for name in SERVICES}
        self.stopping = threading.Event()
        self.exit_code = 0
        self.health: dict[str, m.Health] = {}
        self.bus: BusClient | None = None

    def start(self, name: str) -> None:
        child = self.children[name]
        child.start()
        say(f"started {name} (pid {child.pid})")

    def wait_ready(self, names: list[str], timeout_s: float) -> None:
        """Wait until each of ``names`` has reported status ready on the bus, or exited."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not self.stopping.is_set():
            self.drain(100)
            if all(self.health.get(n) and self.health[n].pid == self.children[n].pid
                   and self.health[n].status in ("ready", "running") for n in names):
                return
            if any(not self.children[n].alive() for n in names):
                return
        if not self.stopping.is_set():
            say(f"warning: {', '.join(names)} not ready after {timeout_s:.0f} s; starting the feed anyway")

    def drain(self, timeout_ms: int) -> None:
        got = self.bus.recv(timeout_ms)
        while got is not None:
            _, msg = got
            if isinstance(msg, m.Health):
                self.health[msg.service] = msg
            got = self.bus.recv(0)

    def run(self) -> int:
        self.start("bus")
        self.bus = BusClient(self.settings.bus_pub, self.settings.bus_sub, ["health."])
        if not self.bus.wait_ready(10):
            say("error: the bus did not answer within 10 s; see logs/bus.log")
            self.stop()
            return 1
        self.start("api")
        self.start("strategy_manager")
        self.start("execution")          # risk guard + orders: subscribed before the first signal
        self.wait_ready(["api", "strategy_manager", "execution"], READY_TIMEOUT_S)
        if not self.stopping.is_set():
            self.start("ingestor")
        last_report = 0.0
        rates = BusRates()               # the supervisor's own bus frames per second, as every service's
        while not self.stopping.is_set():
            self.drain(100)
            for name, child in self.children.items():
                self.handle(name, child, child.check())
            if time.monotonic() - last_report >= 1.0:
                last_report = time.monotonic()
                self.bus.publish(m.health_topic("supervisor"), m.Health(
                    service="supervisor", pid=os.getpid(), status="running", ts=now_ms(),
                    details={"services": {n: c.stats() for n, c in self.children.items()},
                             **rates.sample()}))
        self.stop()
        return self.exit_code

    def handle(self, name: str, child: Child, event: str | None) -> None:
        if event == "exited":
            say(f"{name} (pid {child.pid}) exited with code {child.last_exit}; "
                f"restarting in {child.restart_at - time.monotonic():.1f} s")
        elif event == "restarted":
            say(f"restarted {name} (pid {child.pid}, restart {child.restarts})")
        elif event == "config_error":
            say(f"{name} stopped on a configuration error (see its line above); shutting down")
            self.exit_code = EXIT_CONFIG
            self.stopping.set()
        elif event == "crash_loop":
            say(f"{name} died {len(child.deaths)} times within {child.policy.window_s:.0f} s; "
                f"giving up and shutting down — see {self.settings.log_dir / (name + '.log')}")
            self.exit_code = 1
            self.stopping.set()

    def stop(self) -> None:
        """Stop execution first (its last events still reach the ingestor's audit trail), then the
        ingestor (it flushes DuckDB) with the other services in parallel, then the bus: <= 5 s."""
        everyone = psutil.Process().children(recursive=True)
        say("stopping all services")
        order = [["execution"], ["ingestor", "strategy_manager", "api"], ["bus"]]
        budget = {0: 1.0, 1: 3.0, 2: 0.4}
        for i, group in enumerate(order):
            stop_all([self.children[n] for n in group], timeout_s=budget[i])
            for n in group:
                if self.children[n].proc is not None:
                    say(f"{n} stopped (exit {self.children[n].last_exit})")
        if self.bus is not None:
            self.bus.close()
        kill_all([p for p in everyone if p.is_running()], timeout_s=0.3)


# Subcommands: name -> "module:function"; each function takes the remaining argv, returns an exit code.
COMMANDS = {
    "status": "scripts.ctl:status_main",
    "restart": "scripts.ctl:restart_main",
    "sql": "scripts.research:sql_main",
    "export": "scripts.research:export_main",
    "kill-switch": "scripts.execution:kill_switch_main",
}


def run_command(name: str, argv: list[str]) -> int:
    """Run subcommand ``name`` (see :data:`COMMANDS`)."""
    import importlib
    module_name, func = COMMANDS[name].split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError:
        print(f"error: '{name}' is not available in this version", file=sys.stderr)
        return EXIT_CONFIG
    return getattr(module, func)(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in COMMANDS:
        return run_command(argv[0], argv[1:])
    args = parse_args(argv)
    env = overrides(args)
    os.environ.update(env)
    try:
        settings = settings_mod.load(os.environ.get("AMT_CONFIG"))
    except (ValueError, SyntaxError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    problem = preflight(args, settings)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return EXIT_CONFIG
    if settings.live_trading:      # real orders: the user must type LIVE here (scripts/execution.py)
        from scripts.execution import live_gate
        problem, live_env = live_gate(settings, args.feed if args.feed != "auto" else (
            "replay" if args.replay else "upstox" if settings.access_token else "sim"))
        if problem:
            print(f"error: {problem}", file=sys.stderr)
            return EXIT_CONFIG
        env.update(live_env)
    # One feed run per run.py: a restarted ingestor resumes a replay instead of starting over.
    env["AMT_RUN_ID"] = f"run-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"
    supervisor = Supervisor(args, settings, env)

    def on_signal(signum, frame):
        if not supervisor.stopping.is_set():
            say(f"received {signal.Signals(signum).name}")
            supervisor.stopping.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    say(f"UI at http://{settings.api_host}:{settings.api_port}  (Ctrl-C to stop)")
    return supervisor.run()


if __name__ == "__main__":
    sys.exit(main())
