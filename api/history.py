"""History mode: list the recorded trading days and replay one instrument's day to one browser.

The API never opens the DuckDB file (the ingestor owns it): every read goes through the
ingestor's read-only query service (:func:`trading_core.query_client.query_result` with
``via="server"``), on a daemon thread, so neither the event loop nor the bus reader ever waits
for DuckDB. The replay itself runs the same domain code as the live path: the day's ticks go,
in ``ORDER BY ts, seq`` order, through :class:`data_handling.candles.CandleBuilder` ("1m") and
:class:`trading_core.profile.LiveAuctionEngine` (configured as the ingestor's
:class:`scripts.profiles.ProfileFeed` does; options get no profile there, nor here), and the
frames carry the very payload shapes the live stream carries (``Tick``, ``Candle``, ``Profile``,
``Signal`` of :mod:`trading_core.messages`), so the page draws them with its existing code.
The engine starts with the prior trading day's references (POC, value area, range) computed by
the batch path from the recorded 1-minute candles of the preceding days (:func:`load_prior`), as
an engine that had been fed those days would have them.

Decision: a separate WebSocket, ``/ws/history``, rather than new message types on ``/ws``. The
live socket's sender, queue and resync logic stay untouched; history frames never interleave
with live batches on one connection; a session's lifetime is simply its connection's (closing
it cancels the replay); and the page keeps its health strip live from ``/ws`` meanwhile.

HTTP (installed on the API's FastAPI app by :func:`install`)::

    GET /api/history/days
    -> 200 {"days": [{"date": "2022-06-09", "ticks": 1512,
                      "instruments": [{"instrument_key": "NSE_INDEX|Nifty 50", "source": "replay",
                                       "ticks": 1512, "first_ts": ms, "last_ts": ms,
                                       "signals": 1}, ...]}, ...],      # newest date first,
            "truncated": false, "elapsed_ms": 12.3}                      # busiest instrument first
    -> 503 {"kind": "unavailable", "error": "one line"} (no query service), 504 (time limit),
       500 {"kind", "error"} for any other query failure

Dates are IST trading dates (a day is 00:00-24:00 Asia/Kolkata); ``ts`` epoch ms UTC.

WebSocket ``/ws/history`` (JSON text frames; one replay session per connection at a time)::

    client -> server
    {"type": "history", "date": "YYYY-MM-DD", "instrument_key": K, "speed": X,
     "source": "replay" | "sim" | "upstox" | null}      start (replaces this connection's session);
                                                        X in 0, 1, 10, 60, 300 (0 = flat out);
                                                        source null: the one with most ticks
    {"type": "history_pause"} / {"type": "history_resume"}
    {"type": "history_speed", "speed": X}               change the pace of the running session
    {"type": "history_stop"}                            end the session (so does closing the socket)

    server -> client (every frame of a session carries its "sid", an integer)
    {"type": "history_start", "sid", "date", "instrument_key", "source", "speed", "ticks": N,
     "first_ts", "last_ts", "signals": n, "prior": {"date","poc","vah","val",...} | null}
    {"type": "history_batch", "sid", "market_ts": ms, "done": ticks so far, "total": N,
     "ticks": {K: Tick}, "candles": [Candle...], "signals": [Signal...], "profiles": {K: Profile},
     "health": {}}                                      about every 100 ms of wall time, like /ws
    {"type": "history_state", "sid", "state": "paused" | "playing" | "stopped", "speed"}
    {"type": "history_end", "sid", "ticks", "candles", "signals", "wall_ms"}
    {"type": "history_error", "sid" | null, "error": "one line"}   bad request or failed query

``history_batch`` candles are the minutes that closed in that window (``final: true``) plus the
forming one (``final: false``); ``ticks`` holds the window's last tick; ``signals`` are the
signals recorded that day for that instrument (``signals`` table, same feed source) whose ``ts``
the replay's market clock has reached; ``profiles`` the engine's profile when it changed.

Pacing: market time runs at X times wall time from the first tick; a gap of more than 15
minutes of market time between two ticks is skipped (as ``data_handling.replay`` does); at
speed 0 ticks are processed as fast as the loop allows, in slices of :data:`SLICE_TICKS` with
the event loop free in between, and still sent in ~100 ms frames. A client that reads slowly
slows its own replay down (one frame in flight); nobody else waits for it.

Bounded memory: ticks are fetched in time windows of about :data:`CHUNK_ROWS` rows (a window
is never more than :data:`MAX_WINDOW_ROWS`; at most the unplayed rest of one and the next,
prefetched, are held: a few MB of numpy arrays, 40 bytes a tick), a frame holds at most one
day's candles, and at most :data:`MAX_SESSIONS` sessions run at once in the API process. Ticks
recorded for the day after its session started are not replayed.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import itertools
import logging
import math
import threading
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

import msgspec
import numpy as np
import polars as pl
import pyarrow as pa
from fastapi import WebSocket, WebSocketDisconnect
from fastapi.responses import Response

from data_handling.candles import CandleBuilder
from scripts.profiles import config_for_live, wants_profile
from trading_core import messages as m, query as q, query_client, settings as settings_mod
from trading_core.profile import LiveAuctionEngine
from trading_core.profile_batch import compute_profiles
from trading_core.profile_model import PriorSession, PriorTracker
from trading_core.sessions import DAY_MS, IST_OFFSET_MS

log = logging.getLogger("api")

SPEEDS = (0, 1, 10, 60, 300)        # allowed replay speeds: X times market time, 0 = flat out
SOURCES = ("replay", "sim", "upstox")
BATCH_S = 0.1                       # frame period (wall seconds), as the live /ws batches
SLICE_TICKS = 4096                  # ticks processed between two yields to the event loop
CHUNK_ROWS = 20_000                 # target ticks per fetched time window
MAX_WINDOW_ROWS = 4 * CHUNK_ROWS    # a window with more rows is fetched again, narrower
GAP_SKIP_MS = 15 * 60_000           # market-time gaps longer than this are not waited for
MAX_SESSIONS = 8                    # concurrent replays in the API process
MAX_SIGNALS = 5_000                 # recorded signals of one day and instrument sent as markers
DAYS_CACHE_S = 5.0                  # /api/history/days answers are reused this long
MAX_DAY_ROWS = 50_000               # (day, instrument, source) rows listed by /api/history/days
QUERY_TIMEOUT_S = 30.0
MAX_KEY_LEN = 200

_encode = msgspec.json.Encoder().encode

Fetch = Callable[[str, list, int], Awaitable[pa.Table]]
"""``await fetch(sql, params, max_rows) -> pyarrow.Table``; raises :class:`trading_core.query.QueryError`."""


class HistoryError(ValueError):
    """A bad history request or an unplayable day; the message is one line for the user."""


# --- reading DuckDB through the query service ------------------------------------------------


def _in_daemon_thread(fn, *args, **kwargs) -> asyncio.Future:
    """Run a blocking call on a daemon thread (a stuck query never holds up the API's exit) and
    return an awaitable of its result; a cancelled awaiter simply drops the result."""
    loop = asyncio.get_running_loop()
    fut = loop.create_future()

    def settle(method, value) -> None:
        if not fut.done():
            method(value)

    def run() -> None:
        try:
            result, method = fn(*args, **kwargs), fut.set_result
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting coroutine
            result, method = exc, fut.set_exception
        with contextlib.suppress(RuntimeError):         # the loop is closed: the API is stopping
            loop.call_soon_threadsafe(settle, method, result)

    threading.Thread(target=run, name="history-query", daemon=True).start()
    return fut


def service_fetch(settings: settings_mod.Settings, timeout_s: float = QUERY_TIMEOUT_S) -> Fetch:
    """A :data:`Fetch` that asks the running ingestor's query service (``settings.query_endpoint``,
    which must serve ``settings.duckdb_path``) and never opens the file. Raises
    :class:`trading_core.query.QueryUnavailable` at once when nothing listens there."""

    def blocking(sql: str, params: list, max_rows: int) -> pa.Table:
        if not query_client.server_listening(settings.query_endpoint):
            raise q.QueryUnavailable(f"no query service on {settings.query_endpoint}: is the "
                                     f"ingestor running? (history reads DuckDB only through it)")
        return query_client.query_result(sql, params, settings=settings, via="server",
                                         max_rows=max_rows, timeout_s=timeout_s).table

    async def fetch(sql: str, params: list, max_rows: int) -> pa.Table:
        return await _in_daemon_thread(blocking, sql, params, max_rows)

    return fetch


def ist_day_bounds(date: str) -> tuple[int, int]:
    """``[start, end)`` in epoch ms UTC of the IST calendar day ``date`` (``"YYYY-MM-DD"``).
    Raises :class:`HistoryError` for anything else."""
    try:
        d = dt.date.fromisoformat(date) if isinstance(date, str) and len(date) == 10 else None
    except ValueError:
        d = None
    if d is None:
        raise HistoryError(f"history: date must be YYYY-MM-DD, got {date!r}")
    start = (d - dt.date(1970, 1, 1)).days * DAY_MS - IST_OFFSET_MS
    return start, start + DAY_MS


def _ist_date(day: int) -> str:
    return (dt.date(1970, 1, 1) + dt.timedelta(days=int(day))).isoformat()


_DAY = f"(ts + {IST_OFFSET_MS}) // {DAY_MS}"
DAYS_SQL = f"""
SELECT {_DAY} AS day, instrument_key, source, count(*) AS ticks, min(ts) AS first_ts, max(ts) AS last_ts
FROM ticks GROUP BY ALL"""
DAYS_WITH_SIGNALS_SQL = f"""
WITH t AS ({DAYS_SQL}),
     s AS (SELECT {_DAY} AS day, instrument_key, source, count(*) AS signals FROM signals GROUP BY ALL)
SELECT t.*, coalesce(s.signals, 0) AS signals FROM t LEFT JOIN s USING (day, instrument_key, source)
ORDER BY day DESC, ticks DESC, instrument_key, source"""
STATS_SQL = """
SELECT source, count(*) AS ticks, min(ts) AS first_ts, max(ts) AS last_ts, arg_min(ltp, ts) AS first_ltp
FROM ticks WHERE instrument_key = ? AND ts >= ? AND ts < ? GROUP BY source ORDER BY ticks DESC, source"""
WINDOW_SQL = """
SELECT ts, ltp, ltq, oi, seq FROM ticks
WHERE instrument_key = ? AND source = ? AND ts >= ? AND ts < ? ORDER BY ts, seq"""
SIGNALS_SQL = """
SELECT strategy, instrument_key, ts, side, entry, stop_loss, target, reason FROM signals
WHERE instrument_key = ? AND source = ? AND ts >= ? AND ts < ? ORDER BY ts, strategy"""
PRIOR_SQL = f"""
WITH c AS (SELECT ts, open, high, low, close, volume, (ts + {IST_OFFSET_MS}) // {DAY_MS} AS day
           FROM candles_1m WHERE instrument_key = ? AND source = ? AND ts >= ? AND ts < ?)
SELECT ts, open, high, low, close, volume FROM c
WHERE day IN (SELECT DISTINCT day FROM c ORDER BY day DESC LIMIT ?) ORDER BY ts"""
PRIOR_LOOKBACK_DAYS = 45            # calendar days searched for the prior trading sessions


async def list_days(fetch: Fetch, max_rows: int = MAX_DAY_ROWS) -> dict[str, Any]:
    """The recorded days: ``{"days": [...], "truncated", "elapsed_ms"}`` (see the module doc),
    at most ``max_rows`` (day, instrument, source) rows, newest days first (``truncated`` says
    older ones were left out). Signal counts come from the ``signals`` table (0 when a file has none). One query; the rows
    are shaped into days on a worker thread. Raises :class:`trading_core.query.QueryError`."""
    started = time.perf_counter()
    try:
        table = await fetch(DAYS_WITH_SIGNALS_SQL, [], max_rows + 1)
    except q.QuerySQLError as exc:      # an older file without the signals table
        log.info("history: days listed without signal counts (%s)", exc)
        table = await fetch(DAYS_SQL + " ORDER BY day DESC, ticks DESC, instrument_key, source", [],
                            max_rows + 1)
    days = await _in_daemon_thread(_shape_days, table, max_rows)
    return {"days": days, "truncated": table.num_rows > max_rows,
            "elapsed_ms": round((time.perf_counter() - started) * 1000, 1)}


def _shape_days(table: pa.Table, max_rows: int) -> list[dict[str, Any]]:
    days: dict[int, dict[str, Any]] = {}
    for r in table.slice(0, max_rows).to_pylist():
        day = days.setdefault(r["day"], {"date": _ist_date(r["day"]), "ticks": 0, "instruments": []})
        day["ticks"] += r["ticks"]
        day["instruments"].append({
            "instrument_key": r["instrument_key"], "source": r["source"], "ticks": r["ticks"],
            "first_ts": r["first_ts"], "last_ts": r["last_ts"], "signals": r.get("signals", 0)})
    return list(days.values())


class TickWindows:
    """One instrument's ticks of one day, fetched in consecutive time windows of about
    :data:`CHUNK_ROWS` rows (``[lo, hi)`` windows partition the day's ``ts`` range, so ties of
    ``ts`` are never split or repeated). Each :meth:`next` returns a dict of numpy arrays
    ``ts`` (int64 ms), ``ltp`` (float64 rupees), ``ltq`` (int64 units), ``oi`` (float64),
    ``seq`` (int64), ordered by ``ts, seq``; :attr:`done` once the day is read."""

    def __init__(self, fetch: Fetch, instrument_key: str, source: str, first_ts: int,
                 last_ts: int, total: int):
        self.fetch = fetch
        self.key = instrument_key
        self.source = source
        self.lo = int(first_ts)
        self.end = int(last_ts) + 1
        span = max(1, self.end - self.lo)
        self.width = max(1_000, span * CHUNK_ROWS // max(1, total))
        self.windows = 0

    @property
    def done(self) -> bool:
        return self.lo >= self.end

    @property
    def covered_until(self) -> int:
        """Every tick before this ``ts`` has been returned by :meth:`next`."""
        return self.lo

    async def next(self) -> dict[str, np.ndarray]:
        """Fetch the next window (possibly empty). Raises :class:`trading_core.query.QueryError`."""
        while True:
            hi = min(self.end, self.lo + self.width)
            try:
                table = await self.fetch(WINDOW_SQL, [self.key, self.source, self.lo, hi], MAX_WINDOW_ROWS)
            except q.QueryTooLarge:
                if self.width <= 1:
                    raise
                self.width = max(1, self.width // 4)
                continue
            break
        self.lo = hi
        self.windows += 1
        n = table.num_rows
        # next width: aim at CHUNK_ROWS rows, changing by at most x8 / :4 per window
        factor = 8.0 if n == 0 else min(8.0, max(0.25, CHUNK_ROWS / n))
        self.width = max(1_000, int(self.width * factor))
        return {name: table.column(name).to_numpy() for name in ("ts", "ltp", "ltq", "oi", "seq")}


async def load_prior(fetch: Fetch, instrument_key: str, source: str, day_start: int,
                     config) -> PriorSession | None:
    """The prior trading day's references for a replay starting at ``day_start`` (epoch ms):
    the engine's batch path (:func:`trading_core.profile_batch.compute_profiles`) on the recorded
    1-minute candles of the last ``config.history_sessions`` recorded days before it (as the
    ``sessions`` table computes them), chained by :class:`PriorTracker` as the live engine chains
    days. ``None`` when nothing earlier is recorded. Raises :class:`trading_core.query.QueryError`."""
    lookback = max(PRIOR_LOOKBACK_DAYS, 2 * config.history_sessions) * DAY_MS
    table = await fetch(PRIOR_SQL, [instrument_key, source, day_start - lookback, day_start,
                                    int(config.history_sessions)], 20_000)
    if table.num_rows == 0:
        return None
    return await _in_daemon_thread(_prior_from_bars, table, instrument_key, config)


def _prior_from_bars(table: pa.Table, instrument_key: str, config) -> PriorSession | None:
    profiles = compute_profiles(pl.from_arrow(table), instrument_key=instrument_key, config=config)
    tracker = PriorTracker(config.history_sessions)
    for p in profiles:
        tracker.push(p)
    return tracker.prior


# --- the replay itself (no I/O) ----------------------------------------------------------------


class MarketClock:
    """Market time (epoch ms) running at ``speed`` times wall time (seconds of a monotonic
    clock passed in by the caller); ``speed`` 0 means unpaced (:meth:`at` is +inf). Pure."""

    def __init__(self, start_ms: int, speed: float, now_s: float):
        self.speed = float(speed)
        self.paused = False
        self._base_ms = float(start_ms)
        self._base_s = now_s

    def at(self, now_s: float) -> float:
        """The market time reached at wall time ``now_s``."""
        if self.speed == 0 and not self.paused:
            return math.inf
        if self.paused:
            return self._base_ms
        return self._base_ms + (now_s - self._base_s) * 1000.0 * self.speed

    def rebase(self, market_ms: float, now_s: float) -> None:
        """Let market time be ``market_ms`` at ``now_s`` (after a pause, a speed change, a skipped gap)."""
        self._base_ms = float(market_ms)
        self._base_s = now_s

    def pause(self, market_ms: float, now_s: float) -> None:
        self.rebase(market_ms, now_s)
        self.paused = True

    def resume(self, now_s: float) -> None:
        self._base_s = now_s
        self.paused = False

    def set_speed(self, speed: float, market_ms: float, now_s: float) -> None:
        self.rebase(market_ms, now_s)
        self.speed = float(speed)


class DayPlayer:
    """Feeds one instrument's recorded ticks of one day, in order, to a ``CandleBuilder("1m")``
    and (unless ``engine`` is None) a :class:`LiveAuctionEngine`, and collects what the next
    frame shows. No I/O; the caller paces it (:meth:`advance`) and sends :meth:`take_frame`.

    ``signals``: the day's recorded :class:`trading_core.messages.Signal` s, oldest first;
    each is released into a frame once the market clock reaches its ``ts``.
    Attributes: ``clock`` (market ms reached), ``done`` (ticks processed), ``total``,
    ``candles_sent``, ``signals_sent``, ``covered_until`` (set by the caller: every tick before
    this ``ts`` has been added; ``math.inf`` once the day is fully read).
    """

    def __init__(self, instrument_key: str, source: str, engine: LiveAuctionEngine | None,
                 signals: list[m.Signal], total: int, sid: int = 0):
        self.key = instrument_key
        self.source = source
        self.engine = engine
        self.builder = CandleBuilder("1m")
        self.signals = signals
        self.total = total
        self.sid = sid
        self.clock = -math.inf
        self.last_ts: int | None = None
        self.done = 0
        self.covered_until: float = -math.inf
        self.candles_sent = 0
        self.signals_sent = 0
        self.frames = 0
        self._cols: dict[str, np.ndarray] = {}
        self._i = 0
        self._n = 0
        self._sig_i = 0
        self._candles: list[m.Candle] = []
        self._signals_out: list[m.Signal] = []
        self._tick: m.Tick | None = None
        self._profile_version = -1

    # --- input ------------------------------------------------------------------------------
    def add(self, cols: dict[str, np.ndarray], covered_until: float) -> None:
        """Append a fetched window (:class:`TickWindows` arrays) after what is buffered."""
        if self._i < self._n and self._cols:
            cols = {k: np.concatenate((self._cols[k][self._i:], cols[k])) for k in cols}
        self._cols, self._i, self._n = cols, 0, len(cols["ts"])
        self.covered_until = covered_until

    @property
    def buffered(self) -> int:
        """Ticks added but not processed yet."""
        return self._n - self._i

    @property
    def next_ts(self) -> int | None:
        """``ts`` of the next buffered tick (None when the buffer is empty)."""
        return int(self._cols["ts"][self._i]) if self._i < self._n else None

    # --- stepping ---------------------------------------------------------------------------
    def advance(self, until_ms: float, max_ticks: int = SLICE_TICKS) -> int:
        """Process the buffered ticks with ``ts <= until_ms``, at most ``max_ticks`` of them;
        move the clock and release the signals it reached. Returns ticks processed."""
        i, n = self._i, self._n
        if i < n:
            ts = self._cols["ts"]
            j = n if until_ms == math.inf else int(np.searchsorted(ts, math.floor(until_ms), side="right"))
            j = max(i, min(j, i + max_ticks, n))
        else:
            j = i
        if j > i:
            c = self._cols
            tsl, ltp, ltq = c["ts"][i:j], c["ltp"][i:j], c["ltq"][i:j]
            if self.engine is not None:
                self.engine.on_ticks(tsl, ltp, ltq)
            key, source, update, closed = self.key, self.source, self.builder.update, self._candles
            tick = None
            for t, p, qty, oi, seq in zip(tsl.tolist(), ltp.tolist(), ltq.tolist(),
                                          c["oi"][i:j].tolist(), c["seq"][i:j].tolist()):
                tick = m.Tick(instrument_key=key, ts=t, ltp=p, ltq=qty, oi=oi, seq=seq, source=source)
                got = update(tick)
                if got:
                    closed.extend(got)
            self._tick = tick
            self.last_ts = tick.ts
            self._i = j
            self.done += j - i
        self._settle(until_ms)
        return j - i

    def _settle(self, until_ms: float) -> None:
        if self._i < self._n:                       # a later tick is buffered: stop just before it
            reach = min(until_ms, self._cols["ts"][self._i] - 1)
        else:                                       # nothing buffered: as far as the data is known
            reach = min(until_ms, self.covered_until - 1)
        if reach == math.inf or reach == -math.inf:
            reach = self.last_ts if self.last_ts is not None else -math.inf
        if self.last_ts is not None:
            reach = max(reach, self.last_ts)
        self.clock = max(self.clock, reach)
        sigs = self.signals
        while self._sig_i < len(sigs) and sigs[self._sig_i].ts <= self.clock:
            self._signals_out.append(sigs[self._sig_i])
            self._sig_i += 1

    def finish(self) -> None:
        """End of the day: close the forming minute (as the ingestor does at the end of a
        replay) and release the remaining signals."""
        self._candles.extend(self.builder.flush())
        if self.last_ts is not None:
            self.clock = max(self.clock, self.last_ts)
        self._signals_out.extend(self.signals[self._sig_i:])
        self._sig_i = len(self.signals)

    # --- output -----------------------------------------------------------------------------
    def take_frame(self) -> bytes | None:
        """The ``history_batch`` frame of what happened since the last one (None: nothing)."""
        profile = None
        if self.engine is not None and self.engine.version != self._profile_version:
            self._profile_version = self.engine.version
            profile = self.engine.to_message()
        if not (self._candles or self._signals_out or self._tick is not None or profile is not None):
            return None
        candles = self._candles
        self.candles_sent += len(candles)
        forming = self.builder.forming(self.key)
        if forming is not None:
            candles = candles + [forming]
        frame = _encode({
            "type": "history_batch", "sid": self.sid,
            "market_ts": None if self.clock == -math.inf else int(self.clock),
            "done": self.done, "total": self.total,
            "ticks": {self.key: self._tick} if self._tick is not None else {},
            "candles": candles, "signals": self._signals_out,
            "profiles": {self.key: profile} if profile is not None else {},
            "health": {},
        })
        self.signals_sent += len(self._signals_out)
        self._candles, self._signals_out, self._tick = [], [], None
        self.frames += 1
        return frame


# --- requests -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    """A validated ``{"type": "history", ...}`` message."""

    date: str
    instrument_key: str
    speed: int
    source: str | None = None


def parse_speed(value: Any, where: str = "history") -> int:
    """One of :data:`SPEEDS`, or :class:`HistoryError` naming the value."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value not in SPEEDS:
        raise HistoryError(f"{where}: speed must be one of {', '.join(map(str, SPEEDS))} "
                           f"(0 = as fast as possible), got {value!r}")
    return int(value)


def parse_request(msg: dict[str, Any]) -> Request:
    """Validate a start message; raises :class:`HistoryError` with a one-line reason."""
    ist_day_bounds(msg.get("date"))                                # validates the date
    key = msg.get("instrument_key")
    if not isinstance(key, str) or not key.strip() or len(key) > MAX_KEY_LEN:
        raise HistoryError(f"history: instrument_key must be a non-empty string, got {key!r:.80}")
    source = msg.get("source")
    if source is not None and source not in SOURCES:
        raise HistoryError(f"history: source must be one of {', '.join(SOURCES)} or null, got {source!r:.40}")
    return Request(msg["date"], key, parse_speed(msg.get("speed")), source)


# --- sessions -------------------------------------------------------------------------------------


class Session:
    """One replay running for one connection (see :meth:`HistoryService.serve`)."""

    def __init__(self, sid: int, req: Request, send: Callable[[bytes], Awaitable[None]]):
        self.sid = sid
        self.req = req
        self.send = send
        self.clock: MarketClock | None = None
        self.player: DayPlayer | None = None
        self.wake = asyncio.Event()              # set on resume / speed change
        self.task: asyncio.Task | None = None
        self.speed = req.speed
        self.paused = False
        self.started = time.monotonic()

    def market_ms(self, now_s: float) -> float:
        """Where the replay is: the clock's time, but not beyond the last tick processed
        when unpaced or held up."""
        assert self.clock is not None and self.player is not None
        at = self.clock.at(now_s)
        clock = self.player.clock
        if at == math.inf or clock == -math.inf:
            return clock if clock != -math.inf else float(self.player.next_ts or 0)
        return at

    def pause(self) -> None:
        if self.clock is not None and not self.paused:
            now = asyncio.get_running_loop().time()
            self.clock.pause(self.market_ms(now), now)
        self.paused = True

    def resume(self) -> None:
        if self.clock is not None and self.paused:
            self.clock.resume(asyncio.get_running_loop().time())
        self.paused = False
        self.wake.set()

    def set_speed(self, speed: int) -> None:
        if self.clock is not None:
            now = asyncio.get_running_loop().time()
            self.clock.set_speed(speed, self.market_ms(now), now)
        self.speed = speed
        self.wake.set()


class HistoryService:
    """The history routes' state: the fetch function, the running sessions, the days cache.

    ``fetch``: how DuckDB is read (default :func:`service_fetch` of ``settings``);
    ``max_sessions``: concurrent replays allowed. Counters for tests and health:
    ``started``, ``finished``, ``cancelled``, ``failed``.
    """

    def __init__(self, settings: settings_mod.Settings | None = None, fetch: Fetch | None = None,
                 max_sessions: int = MAX_SESSIONS):
        if fetch is None:
            if settings is None:
                raise ValueError("HistoryService needs settings or a fetch function")
            fetch = service_fetch(settings)
        self.fetch = fetch
        self.max_sessions = max_sessions
        self.sessions: set[Session] = set()
        self._ids = itertools.count(1)
        self._days: tuple[float, dict] | None = None
        self._days_task: asyncio.Task | None = None
        self.started = self.finished = self.cancelled = self.failed = 0

    def stats(self) -> dict[str, int]:
        return {"history_sessions": len(self.sessions), "history_started": self.started,
                "history_finished": self.finished, "history_cancelled": self.cancelled,
                "history_failed": self.failed}

    # --- GET /api/history/days -------------------------------------------------------------
    async def days(self) -> dict[str, Any]:
        """:func:`list_days`, shared by concurrent callers and cached :data:`DAYS_CACHE_S`."""
        hit = self._days
        if hit is not None and time.monotonic() - hit[0] < DAYS_CACHE_S:
            return hit[1]
        if self._days_task is None or self._days_task.done():
            self._days_task = asyncio.ensure_future(list_days(self.fetch))
        result = await asyncio.shield(self._days_task)
        self._days = (time.monotonic(), result)
        return result

    # --- WS /ws/history --------------------------------------------------------------------
    async def serve(self, ws) -> None:
        """Handle one ``/ws/history`` connection (a Starlette/FastAPI ``WebSocket``) until it
        closes; its running session, if any, is cancelled then."""
        await ws.accept()
        peer = f"{ws.client.host}:{ws.client.port}" if ws.client else "?"
        lock = asyncio.Lock()

        async def send(frame: bytes) -> None:
            async with lock:                    # the session task and this loop both send
                await ws.send_text(frame.decode())

        current: Session | None = None
        try:
            while True:
                msg = await ws.receive()
                if msg["type"] == "websocket.disconnect":
                    break
                current = await self._on_message(msg.get("text"), current, send, peer)
        except Exception as exc:              # noqa: BLE001 - a broken connection ends this client only
            log.debug("history ws %s: %r", peer, exc)
        finally:
            if current is not None:
                await self._stop(current)

    async def _on_message(self, text: str | None, current: Session | None, send, peer: str) -> Session | None:
        async def error(why: str, sid: int | None = None) -> None:
            log.info("history ws %s: %s", peer, why)
            await send(_encode({"type": "history_error", "sid": sid, "error": why}))

        try:
            msg = msgspec.json.decode(text or "")
        except msgspec.DecodeError:
            msg = None
        if not isinstance(msg, dict):
            await error(f"history: messages must be JSON objects, got {text!r:.80}")
            return current
        kind = msg.get("type")
        if kind == "history":
            try:
                req = parse_request(msg)
            except HistoryError as exc:
                await error(str(exc))
                return current
            if current is not None:
                await self._stop(current)
                current = None
            if len(self.sessions) >= self.max_sessions:
                await error(f"history: {self.max_sessions} replays are already running on this "
                            f"server; stop one and try again")
                return None
            session = Session(next(self._ids), req, send)
            self.sessions.add(session)
            self.started += 1
            session.task = asyncio.create_task(self._run(session, peer))
            return session
        if kind == "history_stop":                     # idempotent: nothing running is fine too
            if current is not None:
                await self._stop(current)
            await send(_encode({"type": "history_state", "sid": current.sid if current else None,
                                "state": "stopped", "speed": current.speed if current else None}))
            return None
        if kind in ("history_pause", "history_resume", "history_speed"):
            if current is None or current.task is None or current.task.done():
                await error(f"history: no replay running for {kind}")
                return current
            if kind == "history_speed":
                try:
                    current.set_speed(parse_speed(msg.get("speed"), "history_speed"))
                except HistoryError as exc:
                    await error(str(exc), current.sid)
                    return current
            elif kind == "history_pause":
                current.pause()
            else:
                current.resume()
            await send(_encode({"type": "history_state", "sid": current.sid,
                                "state": "paused" if current.paused else "playing",
                                "speed": current.speed}))
            return current
        await error(f"history: unknown message type {kind!r:.40} (want history, history_pause, "
                    f"history_resume, history_speed or history_stop)")
        return current

    async def _stop(self, session: Session) -> None:
        task = session.task
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
            self.cancelled += 1
            log.info("history session %d (%s %s) stopped after %.1f s", session.sid,
                     session.req.instrument_key, session.req.date, time.monotonic() - session.started)
        self.sessions.discard(session)

    async def _run(self, session: Session, peer: str) -> None:
        try:
            await self._play(session)
            self.finished += 1
        except asyncio.CancelledError:
            raise
        except (HistoryError, q.QueryError) as exc:
            self.failed += 1
            log.info("history session %d (%s): %s", session.sid, peer, exc)
            with contextlib.suppress(Exception):
                await session.send(_encode({"type": "history_error", "sid": session.sid,
                                            "error": " ".join(str(exc).split())}))
        except (WebSocketDisconnect, OSError) as exc:   # the client went away mid-send
            self.failed += 1
            log.info("history session %d (%s): connection lost (%r)", session.sid, peer, exc)
        except Exception:                     # noqa: BLE001 - a bug: log it, end this session only
            self.failed += 1
            log.exception("history session %d (%s) failed", session.sid, peer)
        finally:
            self.sessions.discard(session)

    async def _play(self, session: Session) -> None:
        req, fetch, sid = session.req, self.fetch, session.sid
        loop = asyncio.get_running_loop()
        wall0 = loop.time()
        day_start, day_end = ist_day_bounds(req.date)
        stats = (await fetch(STATS_SQL, [req.instrument_key, day_start, day_end], 100)).to_pylist()
        if req.source is not None:
            stats = [s for s in stats if s["source"] == req.source]
        if not stats:
            raise HistoryError(f"history: no ticks recorded for {req.instrument_key} on {req.date}"
                               + (f" from source {req.source}" if req.source else ""))
        st = stats[0]
        source, total = st["source"], int(st["ticks"])
        windows = TickWindows(fetch, req.instrument_key, source, st["first_ts"], st["last_ts"], total)
        cfg = config_for_live(req.instrument_key, float(st["first_ltp"])) \
            if wants_profile(req.instrument_key) else None

        async def prior_or_none() -> PriorSession | None:
            if cfg is None:
                return None
            try:
                return await load_prior(fetch, req.instrument_key, source, day_start, cfg)
            except (q.QueryError, ValueError) as exc:    # no candles table, odd rows: no prior
                log.info("history: no prior day for %s %s (%s)", req.instrument_key, req.date, exc)
                return None

        async def signal_rows() -> list[dict]:
            try:
                return (await fetch(SIGNALS_SQL, [req.instrument_key, source, day_start, day_end],
                                    MAX_SIGNALS + 1)).to_pylist()[:MAX_SIGNALS]
            except q.QueryError as exc:                  # an older file without signals
                log.info("history: no recorded signals read (%s)", exc)
                return []

        # the three reads are independent: one round trip's wait instead of three
        first, prior, sig_rows = await asyncio.gather(windows.next(), prior_or_none(), signal_rows())
        while len(first["ts"]) == 0 and not windows.done:
            first = await windows.next()
        engine = LiveAuctionEngine(req.instrument_key, cfg, prior=prior) if cfg is not None else None
        signals = [m.Signal(**r) for r in sig_rows]
        player = DayPlayer(req.instrument_key, source, engine, signals, total, sid)
        player.add(first, math.inf if windows.done else windows.covered_until)
        session.player = player
        session.clock = MarketClock(st["first_ts"], session.speed, loop.time())
        if session.paused:                               # paused before the data arrived
            session.clock.pause(st["first_ts"], loop.time())
        await session.send(_encode({
            "type": "history_start", "sid": sid, "date": req.date, "instrument_key": req.instrument_key,
            "source": source, "speed": session.speed, "ticks": total, "first_ts": st["first_ts"],
            "last_ts": st["last_ts"], "signals": len(signals),
            "prior": None if prior is None else {"date": prior.date, "poc": prior.poc, "vah": prior.vah,
                                                 "val": prior.val, "high": prior.high, "low": prior.low,
                                                 "close": prior.close}}))
        log.info("history session %d: %s %s (%s, %d ticks, %d signals) at speed %s", sid,
                 req.instrument_key, req.date, source, total, len(signals), session.speed)

        prefetch: asyncio.Task | None = None
        next_frame = loop.time() + BATCH_S
        try:
            while True:
                if session.paused:
                    frame = player.take_frame()
                    if frame is not None:
                        await session.send(frame)
                    session.wake.clear()
                    while session.paused:
                        await session.wake.wait()
                        session.wake.clear()
                    next_frame = loop.time() + BATCH_S
                    continue
                # keep ticks buffered: prefetch the next window, wait for it only when empty
                if prefetch is None and not windows.done and player.buffered < CHUNK_ROWS // 2:
                    prefetch = asyncio.ensure_future(windows.next())
                if prefetch is not None and (prefetch.done() or player.buffered == 0):
                    cols = await prefetch
                    prefetch = None
                    player.add(cols, math.inf if windows.done else windows.covered_until)
                    continue
                now = loop.time()
                target = session.clock.at(now)
                nxt = player.next_ts
                if (nxt is not None and target != math.inf and nxt > target and player.last_ts is not None
                        and nxt - player.last_ts > GAP_SKIP_MS):
                    session.clock.rebase(nxt, now)       # a long gap: do not wait for it
                    target = float(nxt)
                processed = player.advance(target, SLICE_TICKS)
                finished = player.buffered == 0 and windows.done and prefetch is None
                if finished:
                    player.finish()
                if finished or loop.time() >= next_frame:
                    frame = player.take_frame()
                    if frame is not None:
                        await session.send(frame)
                    next_frame = max(next_frame + BATCH_S, loop.time())
                if finished:
                    break
                if processed >= SLICE_TICKS:
                    await asyncio.sleep(0)               # more is due: let the loop breathe first
                else:
                    await _sleep_or_wake(session.wake, next_frame - loop.time())
        finally:
            if prefetch is not None:
                prefetch.cancel()
        wall_ms = round((loop.time() - wall0) * 1000)
        await session.send(_encode({"type": "history_end", "sid": sid, "ticks": player.done,
                                    "candles": player.candles_sent, "signals": player.signals_sent,
                                    "wall_ms": wall_ms}))
        log.info("history session %d finished: %d ticks, %d candles, %d frames in %d ms", sid,
                 player.done, player.candles_sent, player.frames, wall_ms)


async def _sleep_or_wake(event: asyncio.Event, seconds: float) -> None:
    """Sleep ``seconds`` (at most), returning early when ``event`` is set (a speed change or
    a pause must not wait for the next frame)."""
    if seconds <= 0:
        await asyncio.sleep(0)
        return
    if event.is_set():
        event.clear()
        return
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(event.wait(), seconds)
    event.clear()


# --- wiring into the API ------------------------------------------------------------------------


def install(app, settings: settings_mod.Settings, service: HistoryService | None = None) -> HistoryService:
    """Add ``GET /api/history/days`` and ``WS /ws/history`` to the FastAPI ``app``; returns the
    :class:`HistoryService` behind them (``service``, or one reading through ``settings``'
    query service)."""
    history = service or HistoryService(settings)
    status_of = {"unavailable": 503, "timeout": 504, "busy": 503}

    @app.get("/api/history/days")
    async def history_days() -> Response:
        try:
            body, status = await history.days(), 200
        except q.QueryError as exc:
            body, status = q.describe(exc), status_of.get(exc.kind, 500)
        return Response(_encode(body), status_code=status, media_type="application/json",
                        headers={"Cache-Control": "no-cache"})

    @app.websocket("/ws/history")
    async def history_ws(ws: WebSocket) -> None:
        await history.serve(ws)

    return history
