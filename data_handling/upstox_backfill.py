"""Fill a live-feed gap from Upstox's intraday candle API.

After a reconnect, each instrument's gap runs from its last tick before the drop (``before``)
to its first tick after (``after``). The minutes strictly between those two ticks' minutes had
no live tick at all, so their 1-minute candles (``GET /v3/historical-candle/intraday/{key}/
minutes/1``, through the SDK's ``HistoryV3Api``) fill them exactly: each candle is stored as
itself in ``candles_1m`` and as 4 ticks in ``ticks`` (open, the extreme nearer the open, the
other extreme, close at +0/+15/+30/+45 s, volume split ``v//4, v//4, v//4, rest`` — the same
expansion as a replay of 1-minute bars, ``data_handling.replay.bars_to_ticks``), every one
flagged ``backfilled``. The two partial minutes at the edges keep what the live feed delivered.
Backfilled rows go to DuckDB only, never on the bus: they are in the past, and strategies and
the candle builder expect time order.

API response (Upstox): ``{"status": "success", "data": {"candles": [[ISO time with +05:30,
open, high, low, close, volume, oi], ...]}}``, newest first, today's session only.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from typing import Any, Callable, Iterable

import polars as pl

from trading_core import messages as m

log = logging.getLogger("upstox")

MINUTE_MS = 60_000


@dataclasses.dataclass(frozen=True, slots=True)
class CandleRow:
    """One API candle: ``ts`` bar open (epoch ms UTC), prices rupees, ``volume``/``oi`` units."""

    ts: int
    open: float
    high: float
    low: float
    close: float
    volume: int
    oi: float


@dataclasses.dataclass(slots=True)
class Backfill:
    """What one instrument's gap was filled with: ``ticks`` (``backfilled=True``) and ``candles``
    (1-minute, final), both in time order. ``gap_from_ts``/``gap_to_ts``: the last tick before and
    the first tick after the gap (epoch ms UTC)."""

    instrument_key: str
    gap_from_ts: int
    gap_to_ts: int
    ticks: list[m.Tick]
    candles: list[m.Candle]


def parse_candles(raw: Iterable[Any], where: str = "") -> list[CandleRow]:
    """API candle arrays -> :class:`CandleRow` in time order. A malformed row raises ``ValueError``
    naming it and ``where``."""
    out = []
    for row in raw:
        try:
            ts = int(dt.datetime.fromisoformat(str(row[0])).timestamp() * 1000)
            out.append(CandleRow(ts, float(row[1]), float(row[2]), float(row[3]), float(row[4]),
                                 int(row[5]), float(row[6]) if len(row) > 6 and row[6] is not None else 0.0))
        except (IndexError, TypeError, ValueError) as exc:
            raise ValueError(f"bad intraday candle {row!r} {where}({exc})") from None
    out.sort(key=lambda c: c.ts)
    return out


def gap_minutes(before_ts: int, after_ts: int) -> tuple[int, int] | None:
    """``(first, last)`` bar open times (epoch ms) of the whole minutes strictly between the
    minute of ``before_ts`` and the minute of ``after_ts``; None when there are none."""
    first = before_ts - before_ts % MINUTE_MS + MINUTE_MS
    last = after_ts - after_ts % MINUTE_MS - MINUTE_MS
    return (first, last) if first <= last else None


def fill(instrument_key: str, candles: list[CandleRow], before_ts: int, after_ts: int,
         next_seq: Callable[[], int], source: str = "upstox") -> Backfill:
    """The backfill of one gap: the candles inside :func:`gap_minutes`, as candles and as ticks
    (``seq`` from ``next_seq``, ``backfilled=True``)."""
    span = gap_minutes(before_ts, after_ts)
    inside = [c for c in candles if span and span[0] <= c.ts <= span[1]]
    if not inside:
        return Backfill(instrument_key, before_ts, after_ts, [], [])
    from data_handling.replay import bars_to_ticks
    bars = pl.DataFrame({"instrument_key": [instrument_key] * len(inside),
                         "ts": [c.ts for c in inside], "open": [c.open for c in inside],
                         "high": [c.high for c in inside], "low": [c.low for c in inside],
                         "close": [c.close for c in inside], "volume": [c.volume for c in inside],
                         "oi": [c.oi for c in inside]},
                        schema={"instrument_key": pl.String, "ts": pl.Int64, "open": pl.Float64,
                                "high": pl.Float64, "low": pl.Float64, "close": pl.Float64,
                                "volume": pl.Int64, "oi": pl.Float64})
    ticks = [m.Tick(instrument_key=instrument_key, ts=ts, ltp=ltp, ltq=ltq, oi=oi, seq=next_seq(),
                    source=source, backfilled=True)
             for ts, ltp, ltq, oi in bars_to_ticks(bars).select("ts", "ltp", "ltq", "oi").iter_rows()]
    out_candles = [m.Candle(instrument_key=instrument_key, interval="1m", ts=c.ts, open=c.open,
                            high=c.high, low=c.low, close=c.close, volume=c.volume, oi=c.oi, ticks=4,
                            final=True) for c in inside]
    return Backfill(instrument_key, before_ts, after_ts, ticks, out_candles)


class IntradayCandles:
    """Today's 1-minute candles of one instrument from the Upstox intraday candle API, through
    the SDK's ``HistoryV3Api`` on ``api_client`` (whose ``configuration.host`` is the REST base
    URL). :meth:`fetch` raises ``upstox_client.rest.ApiException`` on an HTTP error and
    ``ValueError`` on a malformed answer."""

    def __init__(self, api_client, timeout_s: float = 15.0):
        from upstox_client.api.history_v3_api import HistoryV3Api
        self.api = HistoryV3Api(api_client)
        self.timeout_s = timeout_s

    def fetch(self, upstox_key: str) -> list[CandleRow]:
        """Candles of ``upstox_key`` (an Upstox instrument key, e.g. ``NSE_FO|43885``), oldest first."""
        response = self.api.get_intra_day_candle_data(upstox_key, "minutes", 1,
                                                      _request_timeout=self.timeout_s)
        data = getattr(response, "data", None)
        candles = getattr(data, "candles", None)
        if getattr(response, "status", "success") != "success" or candles is None:
            raise ValueError(f"intraday candle API answered without candles for {upstox_key}")
        return parse_candles(candles, f"for {upstox_key} ")
