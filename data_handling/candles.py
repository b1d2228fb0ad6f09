"""OHLCV candles from ticks: a streaming builder and its vectorised twin.

Buckets
-------
A tick at ``ts`` (epoch ms UTC) belongs to the bucket starting at
``origin_ms + floor((ts - origin_ms) / interval_ms) * interval_ms``; with the default
``origin_ms = 0`` that is plain epoch alignment, ``floor(ts / interval_ms) * interval_ms``.
A candle's ``ts`` is its bucket's start (the bar's *open* time).

IST is UTC+05:30, a whole number of minutes, so epoch-aligned minute buckets start on IST
minutes. The session opens at 09:15 IST = 03:45 UTC = 225 minutes after UTC midnight, and
UTC midnights are epoch-aligned for any N dividing 1440; so N-minute buckets start exactly
at 09:15 IST iff N divides 45: **1, 3, 5, 9, 15 and 45 minutes align to 09:15 IST** (the
5-minute bars are 09:15, 09:20, ...). 10-, 30- and 60-minute buckets do *not*: epoch-aligned
30-minute buckets start at 09:00 and 09:30 IST. For those pass
``origin_ms=SESSION_ORIGIN_MS`` (09:15 IST of 1970-01-01), which aligns every interval that
divides a day (1440 minutes) to 09:15 IST on every day.

Late ticks
----------
A candle is emitted as ``final`` once a tick of a later bucket of the same instrument
arrives (or at :meth:`CandleBuilder.flush`). A tick that arrives after that for an
earlier bucket (an out-of-order or delayed print) is counted in ``CandleBuilder.late`` and
folded into no candle: the candle it belongs to was already published as final, and
consumers (DuckDB rows, strategies) treat final candles as immutable, so amending it would
mean retracting a published bar. The tick itself is still valid and is stored/forwarded
by whoever received it. Ticks out of order *within* the forming bucket are folded in
(``close`` is the last tick *received*). :func:`candles_from_ticks` drops the same ticks,
so both give identical candles for the same tick sequence.
"""

from __future__ import annotations

import re

import polars as pl

from trading_core.messages import Candle, Tick

IST_OFFSET_MS = (5 * 60 + 30) * 60_000
SESSION_ORIGIN_MS = (9 * 60 + 15) * 60_000 - IST_OFFSET_MS
"""09:15 IST on 1970-01-01 as epoch ms (03:45 UTC): an ``origin_ms`` aligning buckets to the open."""

CANDLE_COLUMNS = ("instrument_key", "interval", "ts", "open", "high", "low", "close", "volume", "oi", "ticks")
_INTERVAL_RE = re.compile(r"^([1-9][0-9]*)m$")


def interval_ms(interval: str) -> int:
    """Length in ms of an ``"Nm"`` interval (``"1m"`` -> 60_000, ``"15m"`` -> 900_000).

    Raises ``ValueError`` for anything else (``"0m"``, ``"1h"``, ``"5"``).
    """
    m = _INTERVAL_RE.match(interval) if isinstance(interval, str) else None
    if not m:
        raise ValueError(f"bad candle interval {interval!r}: expected 'Nm' (N minutes, N >= 1)")
    return int(m.group(1)) * 60_000


class CandleBuilder:
    """Streaming OHLCV candle builder, one forming candle per instrument.

    ``interval``: ``"Nm"`` (see :func:`interval_ms`); ``origin_ms``: bucket origin in epoch
    ms (default 0 = epoch alignment; see the module docstring for 09:15 IST alignment).

    Candle fields: ``ts`` bucket start (epoch ms UTC); ``open``/``close`` first/last
    ``ltp`` received; ``high``/``low`` max/min ``ltp`` (rupees); ``volume`` sum of ``ltq``
    (units); ``oi`` last ``oi`` received; ``ticks`` number of ticks folded in. Buckets
    without ticks produce no candle. Attribute ``late``: count of ticks dropped because
    their bucket was already closed.

    Raises ``ValueError`` for a bad interval.
    """

    def __init__(self, interval: str = "1m", origin_ms: int = 0) -> None:
        self.interval = interval
        self.interval_ms = interval_ms(interval)
        self.origin_ms = int(origin_ms)
        self.late = 0
        # key -> [bucket, open, high, low, close, volume, oi, ticks, is_open]
        self._state: dict[str, list] = {}

    def bucket(self, ts: int) -> int:
        """Start (epoch ms UTC) of the bucket holding ``ts``."""
        o, n = self.origin_ms, self.interval_ms
        return o + (ts - o) // n * n

    def _candle(self, key: str, s: list, final: bool) -> Candle:
        return Candle(
            instrument_key=key,
            interval=self.interval,
            ts=s[0],
            open=s[1],
            high=s[2],
            low=s[3],
            close=s[4],
            volume=s[5],
            oi=s[6],
            ticks=s[7],
            final=final,
        )

    def update(self, tick: Tick) -> list[Candle]:
        """Fold ``tick`` in; return the candles it closed (``final=True``), usually ``[]``.

        A tick of a later bucket than its instrument's forming candle closes that candle
        (returned) and starts a new one. A tick of an earlier (already closed) bucket is
        counted in ``self.late`` and ignored.
        """
        return self.update_print(tick.instrument_key, tick.ts, tick.ltp, tick.ltq, tick.oi)

    def update_print(self, key: str, ts: int, ltp: float, ltq: int, oi: float) -> list[Candle]:
        """:meth:`update` from the fields of a tick (instrument_key, ts epoch ms UTC, LTP
        rupees, LTQ units, OI units), for feeds that carry ticks as columns."""
        o, n = self.origin_ms, self.interval_ms
        b = o + (ts - o) // n * n
        s = self._state.get(key)
        if s is not None:
            if b == s[0] and s[8]:
                if ltp > s[2]:
                    s[2] = ltp
                elif ltp < s[3]:
                    s[3] = ltp
                s[4] = ltp
                s[5] += ltq
                s[6] = oi
                s[7] += 1
                return []
            if b <= s[0]:
                self.late += 1
                return []
        self._state[key] = [b, ltp, ltp, ltp, ltp, ltq, oi, 1, True]
        if s is not None and s[8]:
            return [self._candle(key, s, True)]
        return []

    def update_table(self, ticks: pl.DataFrame) -> pl.DataFrame:
        """:meth:`update_print` for every row of ``ticks`` (columns ``instrument_key, ts,
        ltp, ltq, oi`` as in :class:`Tick`), in row order, computed column-wise when the rows
        are in time order: the same candles and the same state as row by row, without a
        Python call per tick or per candle (a replay's batches; see ``scripts/ingestor.py``).

        Returns the candles closed, one row each in :data:`CLOSED_COLUMNS`: ``row`` (UInt32,
        the index of the tick that closed it) then the :data:`CANDLE_COLUMNS`, ordered by
        ``row`` (every candle is ``final``). Rows out of time order, or older than an
        instrument's forming candle, take the row-by-row path (late ticks counted in ``late``).
        """
        if not len(ticks):
            return _closed_frame([])
        if not ticks.get_column("ts").is_sorted():
            return self._update_rows(ticks)
        o, n = self.origin_ms, self.interval_ms
        groups = (
            ticks.lazy()
            .select("instrument_key", "ts", "ltp", "ltq", "oi")
            .with_row_index("_first")
            .group_by("instrument_key", ts=pl.lit(o, pl.Int64) + (pl.col("ts") - o) // n * n,
                      maintain_order=True)
            .agg(pl.col("_first").first(), pl.col("ltp").first().alias("open"), pl.col("ltp").max().alias("high"),
                 pl.col("ltp").min().alias("low"), pl.col("ltp").last().alias("close"),
                 pl.col("ltq").sum().alias("volume"), pl.col("oi").last(), pl.len().cast(pl.Int64).alias("ticks"))
            .with_columns(row=pl.col("_first").shift(-1).over("instrument_key"),
                          _nth=pl.int_range(pl.len()).over("instrument_key"))
            .collect()
        )
        # Each instrument's first bucket meets the state: it continues the forming candle, or
        # closes it at its first tick (a few rows per batch, so in Python).
        state, interval = self._state, self.interval
        continued, closed_state, new = [], [], []
        for key, b, first, op, hi, lo, vol, count in groups.filter(pl.col("_nth") == 0).select(
                "instrument_key", "ts", "_first", "open", "high", "low", "volume", "ticks").iter_rows():
            s = state.get(key)
            if s is None:
                new.append(key)
                continue
            if b < s[0] or (b == s[0] and not s[8]):
                return self._update_rows(ticks)         # late ticks: exactly as row by row
            if b == s[0]:
                continued.append((key, b, s[1], max(hi, s[2]), min(lo, s[3]), s[5] + vol, s[7] + count))
            elif s[8]:
                closed_state.append((first, key, interval, *s[:8]))
        if continued:
            groups = groups.update(pl.DataFrame(continued, schema={
                "instrument_key": pl.String, "ts": pl.Int64, "open": pl.Float64, "high": pl.Float64,
                "low": pl.Float64, "volume": pl.Int64, "ticks": pl.Int64}, orient="row"), on=["instrument_key", "ts"])
        state.update(dict.fromkeys(new))    # flush() closes candles in the order instruments came
        for key, *values in groups.filter(pl.col("row").is_null()).select(
                "instrument_key", "ts", "open", "high", "low", "close", "volume", "oi", "ticks").iter_rows():
            state[key] = [*values, True]
        inside = groups.filter(pl.col("row").is_not_null()).select(
            pl.col("row"), "instrument_key", pl.lit(interval).alias("interval"), *CANDLE_COLUMNS[2:])
        if not closed_state:
            return inside.sort("row")
        return pl.concat([_closed_frame(closed_state), inside]).sort("row")

    def _update_rows(self, ticks: pl.DataFrame) -> pl.DataFrame:
        rows = ticks.select("instrument_key", "ts", "ltp", "ltq", "oi").iter_rows()
        return _closed_frame([(i, c.instrument_key, c.interval, c.ts, c.open, c.high, c.low, c.close,
                               c.volume, c.oi, c.ticks)
                              for i, row in enumerate(rows) for c in self.update_print(*row)])

    def forming(self, instrument_key: str) -> Candle | None:
        """The candle still forming for ``instrument_key`` (``final=False``), or None."""
        s = self._state.get(instrument_key)
        if s is None or not s[8]:
            return None
        return self._candle(instrument_key, s, False)

    def flush(self) -> list[Candle]:
        """Close every forming candle and return them (``final=True``), in the order the
        instruments were first seen. Use at end of stream or shutdown. Later ticks of those
        buckets (or earlier ones) count as late."""
        out = []
        for key, s in self._state.items():
            if s[8]:
                out.append(self._candle(key, s, True))
                s[8] = False
        return out


CLOSED_COLUMNS = ("row", *CANDLE_COLUMNS)
_CLOSED_SCHEMA = {"row": pl.UInt32, "instrument_key": pl.String, "interval": pl.String, "ts": pl.Int64,
                  "open": pl.Float64, "high": pl.Float64, "low": pl.Float64, "close": pl.Float64,
                  "volume": pl.Int64, "oi": pl.Float64, "ticks": pl.Int64}


def _closed_frame(rows: list[tuple]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=_CLOSED_SCHEMA, orient="row")


def candles_of(closed: pl.DataFrame) -> list[Candle]:
    """The rows of a :meth:`CandleBuilder.update_table` result as final :class:`Candle` messages."""
    return [Candle(**row, final=True) for row in closed.select(CANDLE_COLUMNS).iter_rows(named=True)]


def candles_from_ticks(df: pl.DataFrame, interval: str = "1m", origin_ms: int = 0) -> pl.DataFrame:
    """Vectorised :class:`CandleBuilder`: all candles of a tick frame, as after ``flush()``.

    ``df``: ticks in arrival order with columns ``instrument_key, ts, ltp, ltq, oi``
    (e.g. :func:`data_handling.replay.read_ticks` or ``ReplaySource.frame()``).
    Ticks late for their instrument (bucket earlier than one already seen) are dropped,
    exactly as the streaming builder does.

    Returns columns ``instrument_key`` (String), ``interval`` (String), ``ts`` (Int64 bucket
    start, epoch ms UTC), ``open, high, low, close`` (Float64), ``volume`` (Int64), ``oi``
    (Float64), ``ticks`` (Int64), sorted by ``ts`` then ``instrument_key``.
    Raises ``ValueError`` for a missing column or a bad interval.
    """
    n = interval_ms(interval)
    needed = ("instrument_key", "ts", "ltp", "ltq", "oi")
    missing = [c for c in needed if c not in df.columns]
    if missing:
        raise ValueError(f"candles_from_ticks: missing column(s) {missing}")
    o = int(origin_ms)
    bucket = pl.lit(o, pl.Int64) + (pl.col("ts").cast(pl.Int64) - o) // n * n
    return (
        df.lazy()
        .select(needed)
        .with_columns(_b=bucket)
        .filter(pl.col("_b") >= pl.col("_b").cum_max().over("instrument_key"))
        .group_by("instrument_key", "_b", maintain_order=True)
        .agg(
            open=pl.col("ltp").first(),
            high=pl.col("ltp").max(),
            low=pl.col("ltp").min(),
            close=pl.col("ltp").last(),
            volume=pl.col("ltq").sum(),
            oi=pl.col("oi").last(),
            ticks=pl.len(),
        )
        .select(
            pl.col("instrument_key").cast(pl.String),
            interval=pl.lit(interval, pl.String),
            ts=pl.col("_b"),
            open=pl.col("open").cast(pl.Float64),
            high=pl.col("high").cast(pl.Float64),
            low=pl.col("low").cast(pl.Float64),
            close=pl.col("close").cast(pl.Float64),
            volume=pl.col("volume").cast(pl.Int64),
            oi=pl.col("oi").cast(pl.Float64),
            ticks=pl.col("ticks").cast(pl.Int64),
        )
        .sort("ts", "instrument_key", maintain_order=True)
        .collect()
    )
