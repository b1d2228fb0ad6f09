"""The execution service: every signal through the risk guard, then paper (or live) orders and
managed positions, all on the bus.

Subscribes to ``signal.`` (strategies), ``tick.`` (the ingestor) and ``control.execution``;
publishes ``risk.<strategy>``, ``order.<instrument>``, ``fill.<instrument>``,
``position.<instrument>``, ``event.execution`` (service events), ``reply.execution`` (answers
to control commands) and ``health.execution`` once a second (counters, open positions, PnL, the
kill switch). The logic is :class:`trading_core.execution_engine.ExecutionEngine`; this file is
its I/O.

Start-up: report ``ready`` as soon as the subscriptions are live (the supervisor starts the feed
only then), then recover from the audit trail in DuckDB through the query service of the
ingestor (:mod:`trading_core.query_client`): earlier risk decisions (the day's trades and
instrument locks), the latest state of every position and order (open positions are managed
again, unfilled entries re-sent), the kill switch, and the ticks recorded since each open
position's last update (so a stop hit while this service was down is still taken). Signals
recorded while it was down are rejected as ``missed``. Messages arriving meanwhile wait in the
socket. If the audit trail cannot be read within 60 s, the service trades nothing (kill switch
on) and says so.

Kill switch: ``Control(command="kill_switch")`` on ``control.execution`` (``python3 run.py
kill-switch``, or the button in the browser) cancels unfilled entries, exits every open position
and refuses new signals until ``Control(command="resume")`` (``run.py kill-switch --resume``).
It survives restarts (read back from the audit trail).

Live orders (``LIVE_TRADING = True``) only with the Upstox live feed and a confirmation typed at
start-up (``run.py`` asks; see :func:`live_gate`); otherwise paper. Run by ``run.py``; alone:
``python3 scripts/execution.py`` (needs the bus and the ingestor).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import msgspec  # noqa: E402

from scripts import scheduling, service  # noqa: E402
from trading_core import logs, messages as m, settings as settings_mod  # noqa: E402
from trading_core.bus import BusClient, now_ms  # noqa: E402
from trading_core.execution_client import (ExecutionClient, PaperExecutionClient,  # noqa: E402
                                           UpstoxExecutionClient, upstox_key_or_raise)
from trading_core.execution_engine import ExecutionEngine  # noqa: E402
from trading_core.paper import PaperConfig  # noqa: E402
from trading_core.risk import DAY_MS, IST_OFFSET_MS, LotSizes, RiskBook, RiskConfig  # noqa: E402

SERVICE = "execution"
LIVE_ENV = "AMT_LIVE_CONFIRMED"
RECOVERY_WAIT_S = 60.0
WATCH_RELOAD_S = 5.0

_tick_decoder = msgspec.json.Decoder(m.Tick)


# --- configuration ------------------------------------------------------------------------------
def risk_config(settings: settings_mod.Settings, extra_lots: Callable[[str], int | None] | None = None) -> RiskConfig:
    """The risk guard's settings from config (validated at load)."""
    return RiskConfig(capital=settings.capital, risk_per_trade_pct=settings.risk_per_trade_pct,
                      min_reward_risk=settings.min_reward_risk, daily_loss_limit=settings.daily_loss_limit,
                      max_trades_per_day=settings.max_trades_per_day, entry_cutoff=settings.entry_cutoff,
                      lot_sizes=LotSizes(settings.lot_sizes, extra_lots)).validate()


def paper_config(settings: settings_mod.Settings) -> PaperConfig:
    """Paper execution / position management settings from config."""
    return PaperConfig(slippage=settings.slippage, time_exit_minutes=settings.time_exit_minutes,
                       trail_trigger=settings.trail_trigger, square_off=settings.square_off).validate()


def watched(settings: settings_mod.Settings) -> set[str] | None:
    """Instruments of every strategy in the strategies file (enabled or not): their day of ticks
    is kept for late signals. None (keep all) if the file cannot be read."""
    try:
        from strategy import registry
        return {k for c in registry.load_strategies(settings.strategies_path) for k in c.instruments}
    except Exception:  # noqa: BLE001 - a bad file is reported by the strategy manager
        return None


def live_gate(settings: settings_mod.Settings, feed: str, ask: Callable[[str], str] = input,
              interactive: bool | None = None) -> tuple[str | None, dict[str, str]]:
    """The start-up check for ``LIVE_TRADING = True``: returns ``(error line or None, env to give
    the services)``. Live orders need the Upstox feed (not a replay or the simulator) and the user
    typing ``LIVE`` at a terminal; anything else stops the start with one line (exit code 2)."""
    if not settings.live_trading:
        return None, {}
    if feed != "upstox":
        return (f"LIVE_TRADING = True places real orders, so it runs only on the Upstox live feed, "
                f"not on the {feed} feed; set LIVE_TRADING = False to paper trade"), {}
    interactive = sys.stdin.isatty() if interactive is None else interactive
    if not interactive:
        return ("LIVE_TRADING = True needs a confirmation typed at start-up: start python3 run.py "
                "in a terminal, or set LIVE_TRADING = False"), {}
    print(f"\n  LIVE TRADING: real orders with real money on your Upstox account.\n"
          f"  Capital {settings.capital:,.0f}, risk {settings.risk_per_trade_pct:g}% a trade, daily loss "
          f"limit {settings.daily_loss_limit:,.0f}, at most {settings.max_trades_per_day} trades a day.\n"
          f"  Kill switch: python3 run.py kill-switch (or the button in the browser).\n", flush=True)
    try:
        answer = ask("  Type LIVE to trade live, anything else to stop: ")
    except EOFError:
        answer = ""
    if answer.strip() != "LIVE":
        return "live trading not confirmed; nothing was started", {}
    return None, {LIVE_ENV: "1"}


def make_client(settings: settings_mod.Settings, paper: PaperConfig, log) -> tuple[ExecutionClient, Any]:
    """The paper client, or (LIVE_TRADING and confirmed) the Upstox client with the instruments
    master as resolver. Returns ``(client, master or None)``; exits with EXIT_CONFIG when live
    trading is asked for but not confirmed or not possible."""
    if not settings.live_trading:
        return PaperExecutionClient(paper), None
    if os.environ.get(LIVE_ENV) != "1":
        if sys.stdin.isatty():
            problem, _ = live_gate(settings, "upstox")
            if problem:
                service.fatal(log, f"execution: {problem}")
        else:
            service.fatal(log, "execution: LIVE_TRADING = True but live trading was not confirmed at "
                               "start-up (start with python3 run.py in a terminal)")
    master = None
    try:
        from data_handling import upstox_instruments as ui
        master = ui.load_master(settings.upstox_instruments_url, settings.instruments_cache)
    except Exception as exc:  # noqa: BLE001 - resolve Upstox keys only, then
        log.warning("instruments master not available (%s); only Upstox keys can be traded", exc)

    def resolve(key: str) -> str:
        if master is not None and not key.split("|", 1)[0].endswith("_INDEX"):
            try:
                return master.resolve(key).instrument_key
            except Exception as exc:  # noqa: BLE001 - unknown / ambiguous: refuse the order
                raise ValueError(str(exc)) from None
        return upstox_key_or_raise(key)

    try:
        client = UpstoxExecutionClient(settings.access_token, settings.upstox_base_url,
                                       settings.upstox_order_base_url, resolve)
    except ValueError as exc:
        service.fatal(log, f"execution: {exc}")
    return client, master


# --- recovery -------------------------------------------------------------------------------------
def _rows(settings, sql: str, params=None, via: str = "server") -> list:
    from trading_core import query_client
    return query_client.query_result(sql, params, settings=settings, via=via).frame().rows()


def load_audit(settings, via: str, started_ms: int) -> dict[str, list]:
    """Read what recovery needs from the audit trail (see the module docstring). ``started_ms``:
    wall ms our subscriptions went live; signals recorded before it were missed. Raises
    :class:`trading_core.query_client.QueryError` when the trail cannot be read."""
    from trading_core.query_client import QuerySQLError
    dec = msgspec.json.Decoder
    try:
        decisions = [dec(m.RiskDecision).decode(r[0]) for r in _rows(
            settings, "SELECT payload FROM events WHERE kind = 'risk' ORDER BY seq", via=via)]
    except QuerySQLError as exc:
        if "events" in str(exc):
            return {"decisions": [], "positions": [], "orders": [], "kill": [], "missed": []}
        raise
    positions = [dec(m.Position).decode(r[0]) for r in _rows(settings, """
        SELECT payload FROM events WHERE kind = 'position'
        QUALIFY row_number() OVER (PARTITION BY position_id ORDER BY seq DESC) = 1""", via=via)]
    orders = [dec(m.Order).decode(r[0]) for r in _rows(settings, """
        SELECT payload FROM events WHERE kind = 'order'
        QUALIFY row_number() OVER (PARTITION BY order_id ORDER BY seq DESC) = 1 ORDER BY seq""", via=via)]
    kill = [r[0] for r in _rows(settings, """
        SELECT event FROM events
        WHERE (kind = 'control' AND service = 'execution' AND event IN ('kill_switch', 'resume'))
           OR (kind = 'service_event' AND service = 'execution' AND event IN ('kill_switch', 'resumed'))
        ORDER BY seq DESC LIMIT 1""", via=via)]
    missed = [dec(m.Signal).decode(r[0]) for r in _rows(settings, """
        SELECT payload FROM events WHERE kind = 'signal' AND received_ms < ?
          AND signal_id NOT IN (SELECT signal_id FROM events WHERE kind = 'risk')
        ORDER BY seq""", [started_ms], via=via)]
    return {"decisions": decisions, "positions": positions, "orders": orders, "kill": kill, "missed": missed}


def recover(engine: ExecutionEngine, settings, log, started_ms: int, stopping,
            wait_s: float = RECOVERY_WAIT_S) -> dict[str, Any] | None:
    """Wait for the ingestor's query service (at most ``wait_s``; then try the file itself), read
    the audit trail, restore the engine and catch up with the recorded ticks. Returns a summary,
    or None if the trail could not be read."""
    from trading_core import query_client
    deadline = time.monotonic() + wait_s
    via = "server"
    while not query_client.server_listening(settings.query_endpoint):
        if stopping.is_set():
            return None
        if time.monotonic() >= deadline:
            via = "file"
            break
        time.sleep(0.2)
    audit = None
    while audit is None:
        try:
            audit = load_audit(settings, via, started_ms)
        except query_client.QueryError as exc:
            if time.monotonic() >= deadline or stopping.is_set():
                log.error("recovery: the audit trail cannot be read (%s)", exc)
                return None
            time.sleep(0.5)
    kill = bool(audit["kill"]) and audit["kill"][0] == "kill_switch"
    counts = engine.restore(audit["decisions"], audit["positions"], audit["orders"], kill_switch=kill)
    caught = 0
    since: dict[str, int] = {}
    for pos in engine.book.open.values():
        since[pos.instrument_key] = min(since.get(pos.instrument_key, pos.last_ts), pos.last_ts)
    for entry in engine.entries.values():
        key = entry.order.instrument_key
        since[key] = min(since.get(key, entry.order.ts), entry.order.ts)
    for key, ts in since.items():
        # that day's ticks since the last update, and the first tick of a later day (which squares
        # off a position the session ended on)
        day_end = (ts + IST_OFFSET_MS) // DAY_MS * DAY_MS + DAY_MS - IST_OFFSET_MS
        try:
            rows = _rows(settings, "SELECT ts, seq, ltp FROM ticks WHERE instrument_key = ? AND ts >= ? "
                                   "AND ts < ? ORDER BY ts, seq", [key, ts, day_end], via=via)
            rows += _rows(settings, "SELECT ts, seq, ltp FROM ticks WHERE instrument_key = ? AND ts >= ? "
                                    "ORDER BY ts, seq LIMIT 1", [key, day_end], via=via)
        except query_client.QueryError as exc:
            log.warning("recovery: recorded ticks of %s not read (%s); managing from the next tick", key, exc)
            continue
        caught += engine.catch_up(key, rows)
    missed = 0
    for sig in audit["missed"]:
        if engine.reject(sig, "missed", "missed: published while the execution service was not running"):
            missed += 1
    return {**counts, "ticks_replayed": caught, "missed_signals": missed, "kill_switch": kill, "via": via}


# --- the service ------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args(argv)
    settings = settings_mod.load()
    log = logs.setup(SERVICE, settings.log_dir, [settings.access_token])
    scheduling.use_latency_slice(settings.latency_slice_us, log)     # the order path: never REALTIME
    service.die_with_parent()
    stopping = service.stop_on_signals(lambda: None)
    paper = paper_config(settings)
    client, master = make_client(settings, paper, log)

    def master_lot(key: str) -> int | None:
        """The instruments master's lot of a live contract (None: the LOT_SIZES table decides)."""
        try:
            return master.resolve(key).lot_size
        except Exception:  # noqa: BLE001 - not in the master
            return None

    extra = master_lot if master is not None else None
    bus = BusClient(settings.bus_pub, settings.bus_sub, [m.SIGNAL + ".", m.exact(m.control_topic(SERVICE))])
    engine = ExecutionEngine(RiskBook(risk_config(settings, extra)), paper, client, bus.publish,
                             watch=watched(settings), max_signal_delay_ms=int(settings.max_signal_delay_s * 1000))
    ticks = TickSubscriptions(bus)
    ticks.follow(engine.watch)
    health = service.HealthReporter(bus, SERVICE)
    if not bus.wait_ready(15):
        log.warning("bus at %s did not answer within 15 s", settings.bus_pub)
    started_ms = now_ms()
    health.send("ready", **engine.status())

    def event(name: str, message: str, **details) -> None:
        bus.publish(m.event_topic(SERVICE), m.ServiceEvent(service=SERVICE, event=name, message=message,
                                                           ts=now_ms(), details=details))
        log.info("%s: %s", name, message)

    # Events are published once recovery found the ingestor, so the audit trail records them.
    rules = (f"{client.name} execution; capital {settings.capital:,.0f}, risk {settings.risk_per_trade_pct:g}% "
             f"a trade, min reward:risk {settings.min_reward_risk:g}, daily loss limit "
             f"{settings.daily_loss_limit:,.0f}, max {settings.max_trades_per_day} trades a day, entries "
             f"until {settings.entry_cutoff} IST")
    # "ready" (not "recovering") while recovering: the supervisor starts the ingestor, whose query
    # service recovery needs, only once we are ready; messages meanwhile wait in our socket.
    status = "ready"
    health.send(status, phase="recovering", **engine.status())
    summary = recover(engine, settings, log, started_ms, stopping)
    ticks.follow([p.instrument_key for p in engine.book.open.values()]
                 + [e.order.instrument_key for e in engine.entries.values()])
    event("started", rules, client=client.name)
    if client.name != "paper":
        event("live_confirmed", "LIVE TRADING: orders go to Upstox", client=client.name)
    if summary is None and not stopping.is_set():
        engine.kill_switch = True
        event("recovery_failed", "the audit trail could not be read: no new trades (kill switch on) until "
                                 "restarted with the ingestor's query service available")
    elif summary is not None:
        event("recovered", f"{summary['positions']} open position(s), {summary['entries']} unfilled "
                           f"entr{'y' if summary['entries'] == 1 else 'ies'}, {summary['decisions']} earlier "
                           f"decision(s), {summary['ticks_replayed']} recorded tick(s) replayed, "
                           f"{summary['missed_signals']} missed signal(s)"
                           + ("; kill switch ENGAGED" if summary["kill_switch"] else ""), **summary)
    status = "running"
    health.send(status, **engine.status())

    watch_mtime = _mtime(settings.strategies_path)
    watch_due = time.monotonic() + WATCH_RELOAD_S
    health_due = 0.0
    errors = 0
    while not stopping.is_set():
        for _ in range(10):                 # up to 10 bursts of 1,024 frames between housekeeping
            frames = bus.recv_batch(50)
            rx_ms = engine.clock()              # when the burst arrived: one clock read, not one per tick
            for frame in frames:
                try:
                    handle(frame, engine, bus, event, log, ticks, rx_ms)
                except Exception:  # noqa: BLE001 - one bad message must not stop trading
                    errors += 1
                    log.exception("failed on %r", frame[:120])
            if len(frames) < 1024:
                break
        try:
            engine.poll()
        except Exception:  # noqa: BLE001
            errors += 1
            log.exception("applying the client's outcomes failed")
        if time.monotonic() >= watch_due:
            watch_due = time.monotonic() + WATCH_RELOAD_S
            mtime = _mtime(settings.strategies_path)
            if mtime != watch_mtime:
                watch_mtime = mtime
                engine.watch = watched(settings)
                ticks.follow(engine.watch)
        if time.monotonic() >= health_due:
            health_due = time.monotonic() + 1.0
            health.send(status, errors=errors, **engine.status())
    health.send("stopping", errors=errors, **engine.status())
    open_n = len(engine.book.open)
    event("stopped", f"stopped with {open_n} open position(s)"
                     + (" (they are recovered at the next start)" if open_n else ""), open_positions=open_n)
    client.close()
    bus.close()
    return 0


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


class TickSubscriptions:
    """The ticks this service takes from the bus: those of the watched instruments (every
    strategy's, :func:`watched`), and of any instrument a signal names; every tick when the
    strategies file cannot be read (``watch`` None). Taking only these, rather than every
    tick, spares the service the decoding of a whole option chain it never trades (at full
    replay speed of a busy F&O day that was a core's worth of CPU). An instrument first named
    by a signal (the strategies file changed and was not yet re-read) is subscribed at that
    moment, so its fill waits for the next tick that arrives after the subscription."""

    def __init__(self, bus: BusClient):
        self.bus = bus
        self.keys: set[str] = set()
        self.every = False

    def follow(self, keys: Iterable[str] | None) -> None:
        """Subscribe to the ticks of ``keys`` (instrument keys) too; None = every tick."""
        if self.every:
            return
        if keys is None:
            self.bus.subscribe(m.TICK + ".")
            self.every = True
            return
        for key in keys:
            if key not in self.keys:
                self.bus.subscribe(m.exact(m.tick_topic(key)))
                self.keys.add(key)


def handle(frame: bytes, engine: ExecutionEngine, bus: BusClient, event, log,
           ticks: TickSubscriptions | None = None, rx_ms: int | None = None) -> None:
    """Dispatch one bus frame: a tick, a signal or a control command. ``rx_ms``: wall ms (epoch
    UTC) the frame arrived, default now."""
    sep = frame.find(m.SEPARATOR)
    if frame.startswith(b"tick."):
        key = frame[5:sep].decode()
        if engine.wants(key):
            t = _tick_decoder.decode(frame[sep + 1:])
            engine.on_tick(key, t.ts, t.ltp, t.seq, rx_ms)
        return
    _, msg = m.decode(frame)
    if isinstance(msg, m.Signal):
        if ticks is not None:
            ticks.follow([msg.instrument_key])
        d = engine.on_signal(msg)
        log.info("%s %s %s %s: %s", msg.strategy, msg.side, msg.instrument_key,
                 "APPROVED" if d.approved else f"REJECTED ({d.rule})", d.reason)
    elif isinstance(msg, m.Control):
        control(msg, engine, bus, event)


def control(msg: m.Control, engine: ExecutionEngine, bus: BusClient, event) -> None:
    """Carry out a ``control.execution`` command and answer on ``reply.execution``."""
    ok, details = True, {}
    if msg.command in ("kill_switch", "kill"):
        details = engine.kill()
        text = (f"kill switch ENGAGED: {details['flattened']} position(s) flattened (realised "
                f"{details['realised']:,.2f}), {details['cancelled']} entry order(s) cancelled; no new "
                f"orders until `python3 run.py kill-switch --resume`")
        event("kill_switch", text, **details)
    elif msg.command == "resume":
        engine.resume()
        text = "kill switch released: signals are traded again"
        event("resumed", text)
    elif msg.command == "status":
        details = engine.status()
        text = (f"{details['client']}: {details['open_positions']} open, realised {details['realised_pnl']:,.2f}, "
                f"unrealised {details['unrealised_pnl']:,.2f}, kill switch "
                f"{'ON' if details['kill_switch'] else 'off'}")
    else:
        ok, text = False, f"unknown command {msg.command!r} (kill_switch, resume, status)"
    bus.publish(m.reply_topic(SERVICE), m.ControlReply(service=SERVICE, command=msg.command, target=msg.target,
                                                       request_ts=msg.ts, ok=ok, message=text,
                                                       details=details, ts=now_ms()))


# --- python3 run.py kill-switch --------------------------------------------------------------------
def send(bus_pub: str, bus_sub: str, command: str, timeout_s: float = 10.0) -> m.ControlReply | None:
    """Publish ``Control(command)`` on ``control.execution`` and wait for the answer (None when
    no execution service answered within ``timeout_s``)."""
    bus = BusClient(bus_pub, bus_sub, [m.exact(m.reply_topic(SERVICE))])
    try:
        if not bus.wait_ready(min(timeout_s, 5.0)):
            return None
        request = m.Control(command=command, target="cli", ts=now_ms())
        bus.publish(m.control_topic(SERVICE), request)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                got = bus.recv(100)
            except ValueError:
                continue
            if got and isinstance(got[1], m.ControlReply) and got[1].request_ts == request.ts \
                    and got[1].command == command:
                return got[1]
        return None
    finally:
        bus.close()


def kill_switch_main(argv: list[str]) -> int:
    """``python3 run.py kill-switch [--resume | --status]``: flatten everything and stop new orders
    (or release the switch, or show the execution status) on the running desk. Exit codes: 0 done,
    1 no execution service answered, 2 bad usage."""
    p = argparse.ArgumentParser(prog="run.py kill-switch", description=(
        "Kill switch of the running desk: cancel unfilled entries, exit every open position and refuse "
        "new signals until released with --resume."))
    what = p.add_mutually_exclusive_group()
    what.add_argument("--resume", action="store_true", help="release the kill switch")
    what.add_argument("--status", action="store_true", help="only show open positions, PnL and the switch")
    p.add_argument("--config", metavar="FILE", help="config file (default config.py, else config.example.py)")
    p.add_argument("--bus-pub", metavar="ENDPOINT", help="bus endpoint to publish to (BUS_PUB)")
    p.add_argument("--bus-sub", metavar="ENDPOINT", help="bus endpoint to subscribe to (BUS_SUB)")
    p.add_argument("--timeout", type=float, default=10.0, metavar="S", help="wait this long for the answer")
    args = p.parse_args(argv)
    try:
        settings = settings_mod.load(args.config)
    except (ValueError, SyntaxError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return service.EXIT_CONFIG
    command = "resume" if args.resume else "status" if args.status else "kill_switch"
    reply = send(args.bus_pub or settings.bus_pub, args.bus_sub or settings.bus_sub, command, args.timeout)
    if reply is None:
        print(f"error: no execution service answered within {args.timeout:g} s (is python3 run.py running "
              f"with this config / --bus-pub / --bus-sub?)", file=sys.stderr)
        return 1
    print(reply.message if reply.ok else f"error: {reply.message}", file=sys.stdout if reply.ok else sys.stderr)
    return 0 if reply.ok else 1


if __name__ == "__main__":
    sys.exit(main())
