"""One strategy in its own OS process: connects a :class:`strategy.base.Strategy` to the bus.

Started by ``scripts/strategy_manager.py`` as ``python3 scripts/strategy_process.py NAME``
(runs alone too: it then reads ``configs/strategies.json``). The strategy does no I/O; this
wrapper, through :class:`strategy.runner.StrategyRunner`:

1. subscribes to its instruments' ticks, 1-minute candles and profiles (exact topics) and
   sends a heartbeat (``health.strategy.<NAME>``) at least once a second from its main loop,
   whatever it is doing (status ``waiting`` -> ``warming`` -> ``running``);
2. waits for the first live message of its instruments: its time is the *cutoff* (the market's
   "now", so a replay of 2022 warm-starts on 2022 data); if instead the ingestor reports that its
   replay has finished, the cutoff is the end of what is recorded;
3. warm start: reads from DuckDB (through ``trading_core.query_client``, which works while the
   ingestor holds the file) the 1-minute candles before the cutoff of the current IST day and of
   the ``warm_days`` recorded days before it, waits until the candle just before the cutoff is
   there (the ingestor writes in batches; at most :data:`SETTLE_S` s), and replays them;
4. then handles the live messages, queued meanwhile, in order.

Signals go to ``signal.<NAME>``. During the warm start, signals of earlier days are history and
never sent; today's that were sent before a restart are not sent again (their keys come from the
manager, ``AMT_EMITTED_SIGNALS``, the signals it saw on the bus, and from the ``signals`` table the
ingestor records); today's that were never sent (candles that closed while the strategy was down)
are sent late, with their own ``ts``.

An exception in a hook (live or during warm-up) is logged with its traceback and the process
exits with :data:`EXIT_STRATEGY_ERROR`: the manager restarts it with backoff and the warm start
rebuilds its state; the other strategies are separate processes and are not touched. A bad
configuration exits with code 2 (not restarted).

Environment (set by the manager): ``AMT_STRATEGY_CONFIG`` the validated entry as JSON (else the
strategies file is read), ``AMT_EMITTED_SIGNALS`` a JSON list of ``[instrument_key, side, ts]``.
"""

from __future__ import annotations

import collections
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scripts import scheduling, service  # noqa: E402
from strategy import registry  # noqa: E402
from strategy.runner import StrategyRunner  # noqa: E402
from trading_core import logs, messages as m, settings as settings_mod  # noqa: E402
from trading_core.bus import BusClient  # noqa: E402

EXIT_STRATEGY_ERROR = 3
SETTLE_S = 20.0            # longest wait for the ingestor to write the candle before the cutoff
DAY_MS = 86_400_000
IST_OFFSET_MS = 19_800_000
CANDLE_COLUMNS = "instrument_key, ts, open, high, low, close, volume, oi, ticks"


class History:
    """Read access to the recorded market for the warm start: ``query(sql, params)`` returning
    rows as tuples. Uses ``trading_core.query_client.query`` (the ingestor's query server while
    the system runs, else a read-only connection), or, where that module is missing, a read-only
    DuckDB connection of our own (only possible while no ingestor holds the file).

    Raises ``RuntimeError`` (one line) when the database cannot be read.
    """

    def __init__(self, duckdb_path: Path) -> None:
        self.duckdb_path = duckdb_path
        try:
            from trading_core import query_client  # issue 7: the ingestor's query server
        except ImportError:
            query_client = None
        self._client = query_client

    def query(self, sql: str, params: list[Any]) -> list[tuple]:
        if self._client is not None:
            try:
                return list(self._client.query(sql, params=params).iter_rows())
            except Exception as exc:  # noqa: BLE001 - any failure of the client: one line up
                raise RuntimeError(f"query failed: {str(exc).splitlines()[0] if str(exc) else exc!r}") from exc
        import duckdb
        if not self.duckdb_path.exists():
            return []
        try:
            con = duckdb.connect(str(self.duckdb_path), read_only=True)
        except duckdb.Error as exc:
            raise RuntimeError(f"cannot open {self.duckdb_path} read-only: {str(exc).splitlines()[0]}") from exc
        try:
            return con.execute(sql, params).fetchall()
        except duckdb.CatalogException:
            return []                                     # a fresh file without the tables yet
        finally:
            con.close()


def _in(keys: list[str]) -> str:
    return ",".join("?" * len(keys))


def history_ready(history: History, first: m.Tick | m.Candle, cutoff: int) -> bool:
    """True when DuckDB holds everything of ``first``'s instrument published before ``first``
    (the first live message, whose time gave ``cutoff``). The ingestor writes ticks, and the
    candles they close, in publication order, so it is enough that ``first`` itself (a tick) is
    written, or the candle opening a minute before the cutoff, or any tick a minute after it."""
    key = first.instrument_key
    seq = first.seq if isinstance(first, m.Tick) else -1
    rows = history.query(
        "SELECT (SELECT max(ts) FROM candles_1m WHERE instrument_key = ? AND ts < ?), "
        "(SELECT max(ts) FROM ticks WHERE instrument_key = ?), "
        "(SELECT count(*) FROM ticks WHERE instrument_key = ? AND ts = ? AND seq = ?)",
        [key, cutoff, key, key, first.ts, seq])
    candle_ts, tick_ts, written = rows[0] if rows else (None, None, 0)
    return bool(written) or (candle_ts is not None and candle_ts >= cutoff - 60_000) or (
        tick_ts is not None and tick_ts >= cutoff + 60_000)


def load_candles(history: History, keys: list[str], cutoff: int, days: int) -> tuple[list[m.Candle], int]:
    """The recorded 1-minute candles of ``keys`` before ``cutoff`` (epoch ms UTC) from the start
    of the ``days``-th recorded IST date before the cutoff's date (0: the cutoff's date only),
    time-ordered. Returns ``(candles, start_ms)``."""
    cut_day = (cutoff + IST_OFFSET_MS) // DAY_MS
    start_day = cut_day
    if days > 0:
        rows = history.query(
            f"SELECT DISTINCT (ts + {IST_OFFSET_MS}) // {DAY_MS} AS day FROM candles_1m "
            f"WHERE instrument_key IN ({_in(keys)}) AND ts < ? ORDER BY day DESC LIMIT ?",
            [*keys, cut_day * DAY_MS - IST_OFFSET_MS, days])
        if rows:
            start_day = min(int(r[0]) for r in rows)
    start = start_day * DAY_MS - IST_OFFSET_MS
    rows = history.query(
        f"SELECT {CANDLE_COLUMNS} FROM candles_1m WHERE instrument_key IN ({_in(keys)}) "
        f"AND ts >= ? AND ts < ? ORDER BY ts, instrument_key", [*keys, start, cutoff])
    candles = [m.Candle(instrument_key=r[0], interval="1m", ts=int(r[1]), open=float(r[2]),
                        high=float(r[3]), low=float(r[4]), close=float(r[5]), volume=int(r[6]),
                        oi=float(r[7]), ticks=int(r[8])) for r in rows]
    return candles, start


def recorded_end(history: History, keys: list[str]) -> int | None:
    """One minute after the open of the last recorded candle of ``keys`` (``None`` if none)."""
    rows = history.query(f"SELECT max(ts) FROM candles_1m WHERE instrument_key IN ({_in(keys)})", keys)
    return int(rows[0][0]) + 60_000 if rows and rows[0][0] is not None else None


def emitted_in_db(history: History, name: str, since: int) -> list[tuple[str, str, int]]:
    """Keys of the signals of strategy ``name`` since ``since`` in the ``signals`` table (written
    by the ingestor from the bus); ``[]`` when there is no such table."""
    try:
        rows = history.query("SELECT instrument_key, side, ts FROM signals WHERE strategy = ? AND ts >= ?",
                             [name, since])
    except RuntimeError:
        return []
    return [(str(r[0]), str(r[1]), int(r[2])) for r in rows]


def read_config(name: str, settings: settings_mod.Settings) -> registry.StrategyConfig:
    """The config of strategy ``name``: ``AMT_STRATEGY_CONFIG`` if set, else the strategies file.
    Raises :class:`registry.StrategyConfigError`."""
    text = os.environ.get("AMT_STRATEGY_CONFIG")
    if text:
        try:
            entry = json.loads(text)
        except json.JSONDecodeError as exc:
            raise registry.StrategyConfigError([f"AMT_STRATEGY_CONFIG: invalid JSON: {exc.msg}"]) from None
        configs = registry.parse_strategies(json.dumps({"strategies": [entry]}), "AMT_STRATEGY_CONFIG")
    else:
        configs = registry.load_strategies(settings.strategies_path)
    found = [c for c in configs if c.name == name]
    if not found:
        raise registry.StrategyConfigError([f"{settings.strategies_path}: no strategy named '{name}'"])
    return found[0]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: strategy_process.py NAME", file=sys.stderr)
        return service.EXIT_CONFIG
    name = argv[0]
    settings = settings_mod.load()
    log = logs.setup(f"strategy.{name}", settings.log_dir, [settings.access_token])
    scheduling.use_tick_path_priority(settings, log)
    service.die_with_parent()
    stopping = service.stop_on_signals(lambda: None)
    try:
        config = read_config(name, settings)
    except registry.StrategyConfigError as exc:
        service.fatal(log, str(exc))
    try:
        already = [tuple(k) for k in json.loads(os.environ.get("AMT_EMITTED_SIGNALS") or "[]")]
    except (json.JSONDecodeError, TypeError):
        log.warning("AMT_EMITTED_SIGNALS is not a JSON list; ignored")
        already = []

    subscriptions: list[bytes] = []
    for key in config.instruments:
        subscriptions += [m.exact(m.tick_topic(key)), m.exact(m.candle_topic(key)),
                          m.exact(m.profile_topic(key))]
    subscriptions.append(m.exact(m.health_topic("ingestor")))   # a finished replay sends no more data
    bus = BusClient(settings.bus_pub, settings.bus_sub, subscriptions)
    health = service.HealthReporter(bus, f"strategy.{name}")
    info: dict[str, Any] = {"class": config.cls_name, "instruments": config.instruments,
                            "params": config.params, "errors": 0, "last_message_ts": 0, "warm": {}}

    def publish(signal: m.Signal) -> None:
        bus.publish(m.signal_topic(name), signal)
        log.info("signal %s %s entry %.2f SL %.2f target %.2f at %s: %s", signal.side,
                 signal.instrument_key, signal.entry, signal.stop_loss, signal.target,
                 time.strftime("%Y-%m-%d %H:%M", time.gmtime((signal.ts + IST_OFFSET_MS) / 1000)),
                 signal.reason)

    runner = StrategyRunner(lambda emit: registry.build(config, emit), publish, already)

    def beat(status: str | None = None) -> None:
        if health.due():
            health.send(status, **info, **runner.stats())

    def crash(where: str) -> int:
        log.exception("%s raised in %s; exiting so the manager restarts it", name, where)
        health.send("error", **info, **runner.stats())
        bus.close()
        return EXIT_STRATEGY_ERROR

    if not bus.wait_ready(15):
        log.warning("bus did not answer within 15 s")
    try:
        runner.start()
    except Exception:
        return crash("on_start")
    health.send("waiting", **info, **runner.stats())
    log.info("started on %s (%s); waiting for market data", ", ".join(config.instruments),
             config.cls_name)

    # --- the first live message sets the cutoff ----------------------------------------------
    pending: collections.deque = collections.deque()
    cutoff = first = None
    feed_finished = False
    while not stopping.is_set() and cutoff is None and not feed_finished:
        beat("waiting")
        frame = bus.recv_raw(200)
        if frame is None:
            continue
        try:
            _, msg = m.decode(frame)
        except ValueError as exc:
            log.warning("undecodable bus frame skipped: %s", exc)
            continue
        if isinstance(msg, m.Health):
            feed_finished = msg.service == "ingestor" and msg.status == "finished"
            continue
        pending.append(msg)
        if isinstance(msg, m.Tick):
            cutoff, first = msg.ts - msg.ts % 60_000, msg
        elif isinstance(msg, m.Candle):
            cutoff, first = msg.ts, msg

    # --- warm start ----------------------------------------------------------------------------
    if cutoff is not None or feed_finished:
        started = time.monotonic()
        days = config.history_days
        warm: dict[str, Any] = {"cutoff_ts": cutoff, "days": days}
        info["warm"] = warm
        history = History(settings.duckdb_path)

        def fetch() -> tuple[list[m.Candle], int, list, bool, int | None]:
            if first is None:     # the replay finished before we came up: all of it is recorded
                end = recorded_end(history, config.instruments)
                if end is None:
                    return [], 0, [], True, None
                candles, start = load_candles(history, config.instruments, end, days)
                return candles, start, emitted_in_db(history, name, start), True, end
            deadline = time.monotonic() + SETTLE_S
            while not (ready := history_ready(history, first, cutoff)) and time.monotonic() < deadline \
                    and not stopping.is_set():
                stopping.wait(0.25)
            candles, start = load_candles(history, config.instruments, cutoff, days)
            return candles, start, emitted_in_db(history, name, start), ready, cutoff

        try:
            candles, start, emitted, ready, cutoff = in_background(fetch, lambda: beat("warming"), stopping)
            warm["cutoff_ts"] = cutoff
            if not ready:
                log.warning("warm start: the candle before %s was not in DuckDB after %.0f s; "
                            "continuing (there may be a gap)", _ist(cutoff), SETTLE_S)
            runner.remember(emitted)
            warm.update(candles=len(candles), from_ts=start, known_signals=len(already) + len(emitted),
                        complete=ready)
        except RuntimeError as exc:
            candles = []
            warm.update(candles=0, error=str(exc))
            log.warning("warm start impossible, starting cold: %s", exc)
        except Stopping:
            bus.close()
            log.info("stopped during the warm start")
            return 0
        try:
            day_start = cutoff - (cutoff + IST_OFFSET_MS) % DAY_MS if cutoff is not None else 0
            fed = runner.warm_up(candles, send_from_ts=day_start, every=lambda: beat("warming"))
        except Exception:
            return crash("warm start")
        warm.update(fed=fed, took_ms=round((time.monotonic() - started) * 1000))
        if cutoff is not None:
            log.info("warm start: %d candles from %s to %s in %d ms (today's signals: %d sent late, %d "
                     "already sent before; %d of earlier days not sent)", fed, _ist(warm.get("from_ts") or cutoff),
                     _ist(cutoff), warm["took_ms"], runner.late, runner.suppressed, runner.history)
        else:
            log.info("warm start: nothing recorded yet for %s", ", ".join(config.instruments))

    # --- live -----------------------------------------------------------------------------------
    beat("running")
    handle, decode, health_type = runner.handle, m.decode_message, m.Health
    while pending and not stopping.is_set():
        msg = pending.popleft()
        if not isinstance(msg, health_type):
            try:
                handle(msg)
            except Exception:
                return crash(f"handling {type(msg).__name__} {getattr(msg, 'ts', '')}")
    while not stopping.is_set():
        # A burst at a time: one poll, one heartbeat check and one clock read per burst, not per
        # tick (a strategy may take every print of an option chain).
        frames = bus.recv_batch(200)
        handled = 0
        for frame in frames:
            try:
                msg = decode(frame)
            except ValueError as exc:
                info["errors"] += 1
                log.warning("undecodable bus frame skipped: %s", exc)
                continue
            if msg.__class__ is not health_type:
                handled += 1
                try:
                    handle(msg)
                except Exception:
                    return crash(f"handling {type(msg).__name__} {getattr(msg, 'ts', '')}")
                if not handled & 63:        # a slow on_tick must not look stuck mid-burst
                    beat("running")
        if handled:
            info["last_message_ts"] = int(time.time() * 1000)
        beat("running")
    health.send("stopping", **info, **runner.stats())
    bus.close()
    log.info("stopped (%d signals sent)", runner.signals)
    return 0


class Stopping(Exception):
    """SIGTERM arrived while waiting for the database."""


def in_background(fn, beat, stopping) -> Any:
    """Run ``fn()`` (database I/O) in a daemon thread and return its result, calling ``beat()``
    every 0.2 s meanwhile: heartbeats come from the thread that runs the strategy's hooks, which
    must not block on I/O. Re-raises ``fn``'s exception; raises :class:`Stopping` as soon as
    ``stopping`` is set (the thread is abandoned: the process is exiting)."""
    result: dict[str, Any] = {}

    def work() -> None:
        try:
            result["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            result["error"] = exc

    thread = threading.Thread(target=work, name="warm-start", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(0.2)
        if stopping.is_set():
            raise Stopping()
        beat()
    if "error" in result:
        raise result["error"]
    return result["value"]


def _ist(ts_ms: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime((ts_ms + IST_OFFSET_MS) / 1000))


if __name__ == "__main__":
    service.exit_now(main())
