"""Candle building: streaming builder vs vectorised function, on hand-built and real ticks."""

from __future__ import annotations

import datetime as dt

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from data_handling.candles import (
    CLOSED_COLUMNS,
    SESSION_ORIGIN_MS,
    CandleBuilder,
    candles_from_ticks,
    candles_of,
    interval_ms,
)
from data_handling.replay import ReplaySource, read_bars, read_ticks
from tests.conftest import FO_TICKS, INDEX_1MIN
from trading_core.messages import Candle, Tick

IST = dt.timezone(dt.timedelta(hours=5, minutes=30))
NIFTY_I = FO_TICKS / "Futures" / "NIFTY-I.csv"


def ist_ms(y, mo, d, h, mi, s=0) -> int:
    return int(dt.datetime(y, mo, d, h, mi, s, tzinfo=IST).timestamp() * 1000)


T0 = ist_ms(2022, 11, 18, 9, 15)  # 09:15:00 IST


def tick(key, ts, ltp, ltq=0, oi=0.0) -> Tick:
    return Tick(instrument_key=key, ts=ts, ltp=ltp, ltq=ltq, oi=oi)


def run(builder: CandleBuilder, ticks) -> list[Candle]:
    out = []
    for t in ticks:
        out.extend(builder.update(t))
    return out + builder.flush()


def to_frame(candles: list[Candle]) -> pl.DataFrame:
    cols = ("instrument_key", "interval", "ts", "open", "high", "low", "close", "volume", "oi", "ticks")
    return pl.DataFrame(
        [{c: getattr(k, c) for c in cols} for k in candles],
        schema={
            "instrument_key": pl.String, "interval": pl.String, "ts": pl.Int64, "open": pl.Float64,
            "high": pl.Float64, "low": pl.Float64, "close": pl.Float64, "volume": pl.Int64,
            "oi": pl.Float64, "ticks": pl.Int64,
        },
    ).sort("ts", "instrument_key", maintain_order=True)


def test_hand_built_ticks_give_exact_ohlcv():
    b = CandleBuilder("1m")
    A, B = "NSE_FO|A", "NSE_FO|B"
    assert b.update(tick(A, T0 + 0, 100.0, 10, 5.0)) == []
    assert b.update(tick(B, T0 + 1_000, 50.0, 1, 9.0)) == []
    assert b.update(tick(A, T0 + 20_000, 103.5, 20, 6.0)) == []
    assert b.update(tick(A, T0 + 40_000, 99.25, 5, 7.0)) == []
    assert b.update(tick(A, T0 + 59_999, 101.0, 3, 8.0)) == []
    f = b.forming(A)
    assert f is not None and f.final is False and f.close == 101.0 and f.ticks == 4
    assert b.forming("NSE_FO|unknown") is None

    closed = b.update(tick(A, T0 + 60_000, 102.0, 7, 8.5))  # first tick of 09:16 closes 09:15
    assert closed == [
        Candle(instrument_key=A, interval="1m", ts=T0, open=100.0, high=103.5, low=99.25,
               close=101.0, volume=38, oi=8.0, ticks=4, final=True)
    ]
    # B's forming bar is untouched by A's ticks
    assert b.forming(B) == Candle(instrument_key=B, interval="1m", ts=T0, open=50.0, high=50.0,
                                  low=50.0, close=50.0, volume=1, oi=9.0, ticks=1, final=False)
    # a gap of several minutes closes one candle, no empty ones in between
    closed = b.update(tick(B, T0 + 5 * 60_000 + 1, 51.0, 2, 9.5))
    assert [c.ts for c in closed] == [T0]
    rest = b.flush()
    assert [(c.instrument_key, c.ts, c.volume, c.final) for c in rest] == [
        (A, T0 + 60_000, 7, True),
        (B, T0 + 5 * 60_000, 2, True),
    ]


def test_flush_closes_everything_once_and_later_ticks_of_flushed_bars_are_late():
    b = CandleBuilder("1m")
    b.update(tick("K", T0, 10.0, 1))
    b.update(tick("K", T0 + 5, 11.0, 1))
    out = b.flush()
    assert len(out) == 1 and out[0].final and out[0].high == 11.0 and out[0].volume == 2
    assert b.forming("K") is None
    assert b.flush() == []
    assert b.update(tick("K", T0 + 10, 12.0)) == []  # same (already published) bucket
    assert b.late == 1 and b.forming("K") is None
    assert b.update(tick("K", T0 + 60_000, 13.0)) == []  # a new bucket opens normally
    assert b.forming("K").open == 13.0 and b.late == 1


def test_late_tick_is_counted_not_folded_and_vectorised_drops_it_too():
    ticks = [
        tick("K", T0 + 1_000, 100.0, 1),
        tick("K", T0 + 61_000, 101.0, 1),  # closes 09:15
        tick("K", T0 + 30_000, 500.0, 9),  # late: 09:15 was closed
        tick("K", T0 + 62_000, 99.0, 1),
        tick("K", T0 + 61_500, 98.0, 1),  # out of order but inside the forming bar: folded
    ]
    b = CandleBuilder("1m")
    got = run(b, ticks)
    assert b.late == 1
    assert [(c.ts, c.open, c.high, c.low, c.close, c.volume, c.ticks) for c in got] == [
        (T0, 100.0, 100.0, 100.0, 100.0, 1, 1),
        (T0 + 60_000, 101.0, 101.0, 98.0, 98.0, 3, 3),
    ]
    df = pl.DataFrame([{"instrument_key": t.instrument_key, "ts": t.ts, "ltp": t.ltp, "ltq": t.ltq, "oi": t.oi} for t in ticks])
    assert candles_from_ticks(df).equals(to_frame(got))


def test_streaming_equals_vectorised_on_a_real_day_of_nifty_futures():
    src = ReplaySource(NIFTY_I)
    assert len(src) == 16_687
    for interval in ("1m", "5m"):
        b = CandleBuilder(interval)
        streamed = to_frame(run(b, src.ticks()))
        assert b.late == 0
        vec = candles_from_ticks(read_ticks(NIFTY_I), interval)
        assert streamed.equals(vec), interval
        assert vec["ticks"].sum() == 16_687
        assert vec["volume"].sum() == read_ticks(NIFTY_I)["ltq"].sum()
    one_min = candles_from_ticks(read_ticks(NIFTY_I))
    # 09:15 .. 15:29 plus the few 15:30:0x prints
    assert one_min["ts"].min() == ist_ms(2022, 11, 18, 9, 15)
    assert one_min["ts"].max() == ist_ms(2022, 11, 18, 15, 30)
    assert one_min.height == 376


def test_buckets_of_3_5_9_15_45_minutes_align_to_0915_ist_on_real_bars():
    bars = read_bars(INDEX_1MIN / "2022_JUN_NIFTY.txt", dates=["2022-06-01"])
    regular = bars.filter(pl.col("ts") >= ist_ms(2022, 6, 1, 9, 15))
    ticks = ReplaySource(INDEX_1MIN / "2022_JUN_NIFTY.txt", dates=["2022-06-01"]).frame()
    open_0915 = ist_ms(2022, 6, 1, 9, 15)
    for n in (3, 5, 9, 15, 45):
        c = candles_from_ticks(ticks, f"{n}m").filter(pl.col("ts") >= open_0915 - n * 60_000 + 1)
        assert c["ts"][0] == open_0915, n  # 09:07 pre-open bar lies in an earlier bucket
        assert ((c["ts"] - open_0915) % (n * 60_000) == 0).all()
        # the first n-minute candle aggregates the first n one-minute bars (labels 09:16..)
        first = regular.head(n)
        assert (c["open"][0], c["high"][0], c["low"][0], c["close"][0]) == (
            first["open"][0], first["high"].max(), first["low"].min(), first["close"][-1]
        ), n
    # 30 minutes does not divide 45: epoch-aligned buckets start 09:00/09:30 IST ...
    c30 = candles_from_ticks(ticks, "30m")
    assert ist_ms(2022, 6, 1, 9, 0) in c30["ts"].to_list()
    assert open_0915 not in c30["ts"].to_list()
    # ... unless aligned to the session origin
    c30 = candles_from_ticks(ticks, "30m", origin_ms=SESSION_ORIGIN_MS)
    assert open_0915 in c30["ts"].to_list()
    assert ((c30["ts"] - open_0915) % 1_800_000 == 0).all()
    b = CandleBuilder("30m", origin_ms=SESSION_ORIGIN_MS)
    assert b.bucket(open_0915 + 29 * 60_000) == open_0915
    assert b.bucket(open_0915 + 30 * 60_000) == open_0915 + 1_800_000


def test_interval_parsing():
    assert interval_ms("1m") == 60_000 and interval_ms("15m") == 900_000
    for bad in ("0m", "1h", "5", "m", "-1m", "1.5m", ""):
        with pytest.raises(ValueError, match="bad candle interval"):
            CandleBuilder(bad)
    with pytest.raises(ValueError, match="missing column"):
        candles_from_ticks(pl.DataFrame({"ts": [1]}))


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["A", "B", "C"]),
            st.integers(0, 6 * 60_000),  # within 6 minutes, arbitrary order: many late ticks
            st.integers(1, 400).map(lambda p: p * 0.05),
            st.integers(0, 100),
            st.integers(0, 10),
        ),
        max_size=60,
    ),
    st.sampled_from(["1m", "2m", "5m"]),
)
def test_streaming_equals_vectorised_on_random_tick_sequences(rows, interval):
    ticks = [tick(k, T0 + dt_ms, p, q, float(oi)) for k, dt_ms, p, q, oi in rows]
    b = CandleBuilder(interval)
    got = to_frame(run(b, ticks))
    df = pl.DataFrame(
        [{"instrument_key": t.instrument_key, "ts": t.ts, "ltp": t.ltp, "ltq": t.ltq, "oi": t.oi} for t in ticks],
        schema={"instrument_key": pl.String, "ts": pl.Int64, "ltp": pl.Float64, "ltq": pl.Int64, "oi": pl.Float64},
    )
    vec = candles_from_ticks(df, interval)
    assert got.equals(vec)
    assert vec["ticks"].sum() + b.late == len(ticks)


def _row_by_row(builder: CandleBuilder, table: pl.DataFrame) -> list[tuple[int, Candle]]:
    return [(i, c) for i, row in enumerate(table.select("instrument_key", "ts", "ltp", "ltq", "oi").iter_rows())
            for c in builder.update_print(*row)]


def _by_table(builder: CandleBuilder, table: pl.DataFrame) -> list[tuple[int, Candle]]:
    closed = builder.update_table(table)
    assert closed.columns == list(CLOSED_COLUMNS)
    return list(zip(closed["row"].to_list(), candles_of(closed)))


def test_table_updates_equal_row_by_row_on_the_real_fo_day(shared_data, monkeypatch):
    # Every contract of 2022-11-18 in time order, in batches as the ingestor takes them.
    src = ReplaySource(FO_TICKS, limit=400_000)
    by_table, by_row = CandleBuilder("1m"), CandleBuilder("1m")
    monkeypatch.setattr(by_table, "_update_rows", None)      # time-ordered: never row by row
    closed = 0
    for batch in src.batches(rows=25_000, frames=False):
        got = _by_table(by_table, batch.table)
        assert got == _row_by_row(by_row, batch.table)
        closed += len(got)
    assert closed > 20_000
    assert by_table.flush() == by_row.flush() and by_table.late == by_row.late == 0


@settings(max_examples=80, deadline=None)
@given(
    st.lists(st.lists(st.tuples(st.sampled_from(["A", "B", "C"]), st.integers(0, 8 * 60_000),
                                 st.integers(1, 400).map(lambda p: p * 0.05), st.integers(0, 100),
                                 st.integers(0, 10).map(float)), max_size=40), max_size=5),
    st.booleans(), st.sampled_from(["1m", "3m"]),
)
def test_table_updates_equal_row_by_row_on_any_batches(batches, in_order, interval):
    by_table, by_row = CandleBuilder(interval), CandleBuilder(interval)
    schema = {"instrument_key": pl.String, "ts": pl.Int64, "ltp": pl.Float64, "ltq": pl.Int64, "oi": pl.Float64}
    for i, rows in enumerate(batches):
        if in_order:       # time-ordered batches take the column-wise path; others fall back
            rows = sorted(rows, key=lambda r: r[1])
        table = pl.DataFrame([(k, T0 + i * 60_000 + t, p, q, oi) for k, t, p, q, oi in rows],
                             schema=schema, orient="row")
        assert _by_table(by_table, table) == _row_by_row(by_row, table)
        if i == 2:
            assert by_table.flush() == by_row.flush()     # later ticks of flushed bars are late
    assert by_table.flush() == by_row.flush() and by_table.late == by_row.late
