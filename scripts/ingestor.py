"""The ingestor: takes ticks from a feed source, publishes each on the bus, builds 1-minute
candles, and persists both to DuckDB in Arrow batches through its recorder process
(``scripts/recorder.py``, which owns the file, records signals and the audit trail and serves
research SQL), so that this process runs one busy Python thread. About ten times a second it also
publishes the last tick of each instrument that printed (``last_ticks``, for the API: a
browser shows prices, it does not need every print).

Feeds: ``--replay PATH`` (recorded files, see ``data_handling/replay.py``), the seeded
simulator (default when no access token is configured), or the Upstox live feed
(``data_handling/upstox_feed.py``: market status published on ``market.status``, a feed gap
backfilled into DuckDB only, counters under ``upstox`` in ``health.ingestor``; a rejected
token exits with code 2).
A replay that reaches its end stays up (status ``finished``) so the supervisor does not
replay it again; a restarted replay with the same ``AMT_RUN_ID`` resumes after the last
persisted tick.

Run by ``run.py``; alone: ``python3 scripts/ingestor.py --replay FILE --speed 0``
(needs the bus, ``python3 scripts/bus.py``).
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from data_handling.candles import CandleBuilder  # noqa: E402
from data_handling.upstox_instruments import UpstoxConfigError  # noqa: E402  (no SDK import)
from scripts.profiles import ProfileFeed  # noqa: E402
from scripts import scheduling, service  # noqa: E402
from scripts.latency_probe import LatencyProbe  # noqa: E402
from trading_core import logs, messages as m, persistence, settings as settings_mod  # noqa: E402
from trading_core.bus import BusClient  # noqa: E402
from trading_core.sessions import ist_day  # noqa: E402
from trading_core import audit  # noqa: E402
from scripts.recorder import RecorderError, RecorderLink, connect_waiting  # noqa: E402

SERVICE = "ingestor"
TABLE_MIN_ROWS = 16_384     # a replay batch this big takes the column-wise path (see on_batch)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--feed", choices=["auto", "sim", "replay", "upstox"], default="auto")
    p.add_argument("--replay", metavar="PATH", help="recorded file or folder to replay")
    p.add_argument("--speed", type=float, default=1.0, help="1 = real time, 0 = as fast as possible")
    p.add_argument("--date", action="append", default=[], metavar="YYYY-MM-DD",
                   help="replay only this IST trading date (repeatable)")
    p.add_argument("--instrument", action="append", default=[], metavar="KEY",
                   help="replay only this instrument key (repeatable)")
    p.add_argument("--rate", type=float, default=0.0, metavar="N",
                   help="replay at a constant N ticks per second (overrides --speed; load tests)")
    p.add_argument("--limit", type=int, default=None, metavar="N",
                   help="replay only the first N ticks")
    p.add_argument("--warmup", type=float, default=75.0, metavar="MINUTES",
                   help="simulator only: produce the session's first MINUTES at once, so the chart "
                        "and the initial balance are there when the page opens (default 75)")
    p.add_argument("--run-id", default=os.environ.get("AMT_RUN_ID") or f"run-{int(time.time())}",
                   help="feed run id; a restart with the same id resumes a replay")
    return p.parse_args(argv)


def choose_feed(args: argparse.Namespace, settings: settings_mod.Settings) -> str:
    """Resolve ``--feed auto``: replay if ``--replay``, upstox if a token is set, else sim."""
    if args.feed != "auto":
        return args.feed
    if args.replay:
        return "replay"
    return "upstox" if settings.access_token else "sim"


def make_source(feed: str, args: argparse.Namespace, settings: settings_mod.Settings,
                sleep) -> object:
    """Build the feed source. Raises ValueError / FileNotFoundError with a one-line message."""
    if feed == "replay":
        from data_handling.replay import ReplaySource
        if not args.replay:
            raise ValueError("--feed replay needs --replay PATH")
        return ReplaySource(args.replay, speed=args.speed, dates=args.date or None,
                            instruments=args.instrument or None, rate=args.rate, limit=args.limit,
                            sleep=sleep)
    if feed == "sim":
        from data_handling.simulator import SimulatedSource
        return SimulatedSource(list(settings.watchlist), seed=settings.sim_seed, speed=args.speed,
                               sleep=sleep)
    if feed == "upstox":
        # Resolves WATCHLIST through the instruments master (downloaded once a day); raises
        # UpstoxConfigError (a ValueError) for a missing token or an unknown symbol.
        from data_handling.upstox_feed import UpstoxSource
        return UpstoxSource.from_settings(settings)
    raise ValueError(f"unknown feed {feed!r}")


class Counters:
    """Numbers the health thread reports; written by the feed thread only."""

    def __init__(self) -> None:
        self.published = 0
        self.candles = 0
        self.last_tick_ts = 0
        self.first_tick_ts = 0
        self.last_tick_wall_ms = 0
        self.total: int | None = None
        self.status = "starting"


def health_loop(settings, counters: Counters, writer: RecorderLink, feed: str,
                stop: threading.Event, extra=lambda: {}) -> None:
    """Publish ``health.ingestor`` once a second from its own socket (ZeroMQ sockets are per
    thread), with the recorder process's counts as of its last stats."""
    bus = BusClient(settings.bus_pub, settings.bus_sub)
    reporter = service.HealthReporter(bus, SERVICE)
    try:
        while not stop.is_set():
            writer.poll_stats(0)
            reporter.send(counters.status, feed=feed, ticks_published=counters.published,
                          ticks_written=writer.rows_written, candles=counters.candles,
                          replay_total=counters.total, last_tick_ts=counters.last_tick_ts,
                          last_tick_wall_ms=counters.last_tick_wall_ms,
                          last_flush_ms=round(writer.last_flush_ms, 3), checkpoints=writer.checkpoints,
                          checkpoints_skipped=writer.checkpoints_skipped,
                          recorder={"pid": writer.pid, **writer.process}, **writer.research, **extra())
            stop.wait(1.0)
        reporter.send("stopping", ticks_published=counters.published, ticks_written=writer.rows_written)
    finally:
        bus.close()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = settings_mod.load()
    log = logs.setup(SERVICE, settings.log_dir, [settings.access_token])
    service.die_with_parent()
    scheduling.use_tick_path_priority(settings, log)
    stopping = service.stop_on_signals(lambda: None)
    feed = choose_feed(args, settings)
    counters = Counters()
    warmup_ms = int(args.warmup * 60_000) if feed == "sim" else 0

    def sleep(seconds: float) -> None:
        """Pace the feed; wakes at once on SIGTERM; no pacing during the simulator's warm-up."""
        if warmup_ms and counters.last_tick_ts - counters.first_tick_ts < warmup_ms:
            return
        stopping.wait(seconds)

    try:
        writer = RecorderLink(args.run_id, feed)
    except OSError as exc:
        service.fatal(log, f"ingestor: cannot start the recorder process: {exc}")
    try:
        source = make_source(feed, args, settings, sleep)
        con = connect_waiting(settings.duckdb_path)
    except (ValueError, FileNotFoundError, persistence.DatabaseLockedError) as exc:
        service.fatal(log, f"ingestor: {exc}")
    # The start-up reads and deletes below run here; then the recorder process owns the file.

    start_seq = persistence.start_run(con, args.run_id, feed, str(args.replay or ""))
    builder = CandleBuilder("1m")
    if feed == "replay":
        counters.total = len(source)
        if start_seq == 0:
            frame = source.frame()
            if len(frame):
                deleted = persistence.clear_replayed_range(
                    con, frame["instrument_key"].unique().to_list(),
                    int(frame["ts"].min()), int(frame["ts"].max()))
                if deleted:
                    log.info("replaced %d ticks of an earlier replay of the same range", deleted)
                audit.clear_replayed(con, frame["instrument_key"].unique().to_list(),
                                     int(frame["ts"].min()), int(frame["ts"].max()))
        else:
            for tick in persistence.forming_ticks(con, "replay"):
                builder.update(tick)
            log.info("resuming replay run %s at tick %d of %d", args.run_id, start_seq, len(source))
    con.close()
    try:
        writer.open()
    except RecorderError as exc:
        log.error("ingestor: %s", exc)
        return 1

    bus = BusClient(settings.bus_pub, settings.bus_sub)
    if not bus.wait_ready(15):
        log.warning("bus at %s did not answer within 15 s; publishing anyway", settings.bus_pub)
    health_stop = threading.Event()
    feed_health = getattr(source, "health", dict)          # upstox: connection, bad input, gaps, market
    health = threading.Thread(target=health_loop, args=(settings, counters, writer, feed, health_stop,
                                                        feed_health),
                              name="health", daemon=True)
    health.start()

    log.info("feed %s started%s", feed,
             f": {counters.total} ticks from {args.replay} at speed {args.speed:g}"
             if feed == "replay" else f" (speed {args.speed:g})")
    counters.status = "running"
    publish = bus.publish_raw
    publish_frames = bus.publish_frames
    profiles = ProfileFeed(bus.publish)
    monotonic = time.monotonic
    housekeeping_due = 0.0
    session_day = None                              # IST day number being recorded (sessions.ist_day)
    encode = m.encode
    tick_topic = m.tick_topic
    seq_offset = start_seq if feed in ("sim", "upstox") else 0
    probe = LatencyProbe.from_env()
    if feed == "replay":
        items = source.batches(start_seq)           # columns and pre-built frames: see on_batch
    else:
        items = probe.wrap(source.ticks()) if probe else source.ticks()

    def on_candles(candles) -> None:
        for candle in candles:
            publish(encode(m.candle_topic(candle.instrument_key), candle))
            writer.add_candle(candle)
            counters.candles += 1

    last_frames: dict[str, bytes] = {}              # instrument -> its last tick frame, for LastTicks

    def publish_last_ticks() -> None:
        if last_frames:
            publish(m.last_ticks_frame(last_frames.items()))
            last_frames.clear()

    def on_tick(tick: m.Tick) -> None:
        if seq_offset:
            tick.seq += seq_offset
        frame = encode(tick_topic(tick.instrument_key), tick)
        publish(frame)
        last_frames[tick.instrument_key] = frame
        writer.add_tick(tick)
        profiles.on_tick(tick)
        if closed := builder.update(tick):
            on_candles(closed)
        counters.published += 1
        counters.last_tick_ts = tick.ts

    def on_batch(batch) -> None:
        """A replay's run of ticks: the same work as on_tick without a message object per tick
        (frames pre-built column-wise, rows stored as a table). A big batch (a full-speed
        replay) also computes its candles and profiles column-wise and sends its frames in
        runs, each closed candle right after the tick that closed it, as on_tick publishes it;
        a small one (a paced replay: the ticks due within 2 ms) goes tick by tick, since the
        column-wise path costs about 3 ms a batch whatever its size, which would be latency
        (benchmarks/bench_system.py)."""
        if probe:
            probe.stamp_batch(batch.first_seq, len(batch))
        frames, table = batch.frames, batch.table
        if len(batch) < TABLE_MIN_ROWS:
            update, on_print, last = builder.update_print, profiles.on_print, last_frames
            for frame, key, ts, ltp, ltq, oi in zip(frames, batch.keys, batch.ts, batch.ltp,
                                                    batch.ltq, batch.oi):
                publish(frame)
                last[key] = frame
                on_print(key, ts, ltp, ltq)
                if closed := update(key, ts, ltp, ltq, oi):
                    on_candles(closed)
        else:
            closed = builder.update_table(table)
            sent = 0
            if len(closed):
                for row, candle_frame in zip(closed.get_column("row").to_list(), m.candle_frames(closed)):
                    publish_frames(frames[sent:row + 1])
                    publish(candle_frame)
                    sent = row + 1
                writer.add_candle_table(closed)
                counters.candles += len(closed)
            publish_frames(frames[sent:] if sent else frames)
            profiles.on_table(table)
            last_frames.update(zip(batch.keys, frames))
        writer.add_tick_table(batch.rows)
        counters.published += len(batch)
        counters.last_tick_ts = batch.ts[-1]

    def feed_event(item) -> None:
        """A live feed's item that is not a tick: publish a market status; store a gap's backfill
        (DuckDB only: its ticks are in the past and never go on the bus); None = idle."""
        if isinstance(item, m.MarketStatus):
            publish(encode(m.market_status_topic(), item))
        elif item is not None:                      # data_handling.upstox_backfill.Backfill
            for t in item.ticks:
                t.seq += seq_offset
                writer.add_tick(t)
            for c in item.candles:
                writer.add_candle(c)
        writer.maybe_handover()                     # a quiet feed still flushes its last ticks

    exit_code = 0
    try:
        for item in items:
            if stopping.is_set():
                break
            if feed == "replay":
                on_batch(item)
            elif item.__class__ is m.Tick:
                on_tick(item)
            else:                                   # upstox: market status, gap backfill, idle
                feed_event(item)
                continue
            if not counters.first_tick_ts:
                counters.first_tick_ts = counters.last_tick_ts
            if (now := monotonic()) >= housekeeping_due:
                housekeeping_due = now + 0.1
                counters.last_tick_wall_ms = int(time.time() * 1000)
                if (day := ist_day(counters.last_tick_ts)) != session_day:   # a new IST day: fold the last one in
                    if session_day is not None:
                        writer.checkpoint()
                    session_day = day
                writer.maybe_handover()
                profiles.publish_due(counters.last_tick_wall_ms)
                publish_last_ticks()
        else:
            on_candles(builder.flush())
            publish_last_ticks()
            writer.checkpoint()
            profiles.publish_due(force=True)
            if feed == "replay":
                writer.finish_run()
            if probe:
                probe.dump()
            counters.status = "finished"
            log.info("feed %s finished: %d ticks, %d candles", feed, counters.published, counters.candles)
            while not stopping.is_set():
                writer.maybe_handover()
                stopping.wait(0.5)
        counters.status = "stopping"
        if feed != "replay":
            # A live or simulated feed stops mid-bar: record the partial bar too.
            for candle in builder.flush():
                writer.add_candle(candle)
    except UpstoxConfigError as exc:                # e.g. the access token expired: no restart loop
        counters.status = "error"
        service.fatal(log, f"ingestor: {exc}")
    except RecorderError as exc:                    # the supervisor restarts both; a replay resumes
        counters.status = "error"
        log.error("ingestor: %s; exiting", exc)
        exit_code = 1
    finally:
        if probe:
            probe.dump()
        if hasattr(source, "close"):
            source.close()
        writer.close()           # the recorder writes what is queued, then stops
        health_stop.set()
        health.join(timeout=2)
        bus.close()
    log.info("stopped: %d ticks published, %d written to %s", counters.published, writer.rows_written,
             settings.duckdb_path)
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
