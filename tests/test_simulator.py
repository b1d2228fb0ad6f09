"""The seeded simulator: repeatable, inside the session, on the tick grid, paced."""

from __future__ import annotations

import datetime as dt
import itertools

import polars as pl
import pytest

from data_handling.candles import candles_from_ticks
from data_handling.simulator import SimulatedSource, session_open_ms
from trading_core.messages import Tick

IST = dt.timezone(dt.timedelta(hours=5, minutes=30))
WATCH = ["NSE_INDEX|Nifty 50", "NSE_INDEX|Nifty Bank", "NSE_FO|NIFTY-I", "NSE_FO|RELIANCE"]
FRI = dt.date(2024, 6, 7)  # a Friday


def ist_ms(y, mo, d, h, mi, s=0) -> int:
    return int(dt.datetime(y, mo, d, h, mi, s, tzinfo=IST).timestamp() * 1000)


def take(src: SimulatedSource, n: int) -> list[Tick]:
    return list(itertools.islice(src.ticks(), n))


def frame(ticks: list[Tick]) -> pl.DataFrame:
    return pl.DataFrame(
        [{"instrument_key": t.instrument_key, "ts": t.ts, "ltp": t.ltp, "ltq": t.ltq, "oi": t.oi, "seq": t.seq} for t in ticks]
    ).with_columns(
        ist=pl.from_epoch("ts", time_unit="ms").dt.replace_time_zone("UTC").dt.convert_time_zone("Asia/Kolkata")
    )


def test_same_seed_same_ticks_different_seed_differs():
    a = take(SimulatedSource(WATCH, seed=7, speed=0, start_ms=session_open_ms(FRI)), 1000)
    b = take(SimulatedSource(WATCH, seed=7, speed=0, start_ms=session_open_ms(FRI)), 1000)
    assert a == b
    src = SimulatedSource(WATCH, seed=7, speed=0, start_ms=session_open_ms(FRI))
    assert take(src, 1000) == take(src, 1000) == a  # every ticks() call starts afresh
    c = take(SimulatedSource(WATCH, seed=8, speed=0, start_ms=session_open_ms(FRI)), 1000)
    assert [t.ts for t in c] == [t.ts for t in a]  # same clock ...
    assert sum(x.ltp != y.ltp for x, y in zip(a, c)) > 900  # ... different prices


def test_messages_round_robin_and_seq():
    ticks = take(SimulatedSource(WATCH, speed=0, start_ms=session_open_ms(FRI), tick_interval_ms=250), 400)
    assert all(isinstance(t, Tick) and t.source == "sim" for t in ticks)
    assert [t.seq for t in ticks] == list(range(400))
    assert [t.instrument_key for t in ticks] == WATCH * 100
    assert ticks[0].ts == ist_ms(2024, 6, 7, 9, 15)
    assert all(b.ts - a.ts == 250 for a, b in zip(ticks, ticks[1:]))


def test_timestamps_stay_in_session_and_roll_over_to_the_next_weekday():
    # one tick a minute: 375 ticks a session; 2000 ticks run from Friday into the next week
    src = SimulatedSource(WATCH, speed=0, start_ms=session_open_ms(FRI), tick_interval_ms=60_000)
    df = frame(take(src, 2000))
    assert df["ts"].diff().drop_nulls().min() > 0
    tod = df["ist"].dt.hour().cast(pl.Int32) * 60 + df["ist"].dt.minute().cast(pl.Int32)
    assert tod.min() == 9 * 60 + 15 and tod.max() == 15 * 60 + 29
    days = df["ist"].dt.date().unique(maintain_order=True).to_list()
    assert days[:3] == [FRI, dt.date(2024, 6, 10), dt.date(2024, 6, 11)]  # Friday -> Monday
    assert all(d.weekday() < 5 for d in days)
    per_day = df.group_by(df["ist"].dt.date(), maintain_order=True).len()
    assert set(per_day["len"].head(5)) == {375}
    # after the last tick of Friday (15:29) comes Monday 09:15
    i = tod.to_list().index(15 * 60 + 29)
    assert df["ts"][i + 1] == ist_ms(2024, 6, 10, 9, 15)


def test_start_defaults_to_0915_ist_of_todays_ist_date_and_start_ms_is_normalised():
    # 2024-06-06 20:00 UTC is already 2024-06-07 01:30 IST: the session is the 7th's
    clock = lambda: dt.datetime(2024, 6, 6, 20, 0, tzinfo=dt.timezone.utc).timestamp()
    assert SimulatedSource(WATCH, clock=clock).start_ms == ist_ms(2024, 6, 7, 9, 15)
    assert SimulatedSource(WATCH, start_ms=ist_ms(2024, 6, 7, 8, 0)).start_ms == ist_ms(2024, 6, 7, 9, 15)
    assert SimulatedSource(WATCH, start_ms=ist_ms(2024, 6, 7, 11, 0)).start_ms == ist_ms(2024, 6, 7, 11, 0)
    assert SimulatedSource(WATCH, start_ms=ist_ms(2024, 6, 7, 15, 30)).start_ms == ist_ms(2024, 6, 10, 9, 15)
    for bad in (dict(watchlist=[]), dict(speed=-1), dict(tick_interval_ms=0)):
        with pytest.raises(ValueError):
            SimulatedSource(**{"watchlist": WATCH, **bad})


def test_prices_on_the_tick_grid_positive_and_realistic():
    src = SimulatedSource(WATCH, speed=0, start_ms=session_open_ms(FRI), tick_interval_ms=250)
    df = frame(take(src, 90_000 * 2))  # two full sessions
    p = df["ltp"]
    assert (p > 0).all()
    assert ((p * 20 - (p * 20).round()).abs() < 1e-6).all()  # multiples of 0.05
    assert ((p * 100).round() == p * 100).all()  # and printed cleanly (2 decimals)
    levels = df.group_by("instrument_key").agg(pl.col("ltp").first()).rows()
    expect = {"NSE_INDEX|Nifty 50": 24000, "NSE_INDEX|Nifty Bank": 52000, "NSE_FO|NIFTY-I": 24000, "NSE_FO|RELIANCE": 1000}
    for key, first in levels:
        assert abs(first / expect[key] - 1) < 0.1, key
    days = df.group_by("instrument_key", df["ist"].dt.date().alias("day")).agg(
        range_pct=(pl.col("ltp").max() / pl.col("ltp").min() - 1) * 100,
        max_step_pct=(pl.col("ltp").pct_change().abs().max() * 100),
    )
    assert days.height == 8
    assert days["range_pct"].min() > 0.2 and days["range_pct"].max() < 5  # a plausible intraday range
    assert days["max_step_pct"].max() < 0.2  # no jumps inside a session
    # the ticks make regular candles: 25 fifteen-minute bars a session, from 09:15 IST
    c = candles_from_ticks(df.filter(pl.col("instrument_key") == "NSE_INDEX|Nifty 50"), "15m")
    assert c.height == 50 and c["ts"][0] == ist_ms(2024, 6, 7, 9, 15) and (c["ticks"] == 900).all()


def test_index_has_no_volume_others_trade_with_slowly_changing_oi():
    df = frame(take(SimulatedSource(WATCH, speed=0, start_ms=session_open_ms(FRI)), 20_000))
    idx = df.filter(pl.col("instrument_key").str.starts_with("NSE_INDEX|"))
    fo = df.filter(~pl.col("instrument_key").str.starts_with("NSE_INDEX|"))
    assert (idx["ltq"] == 0).all() and (idx["oi"] == 0).all()
    assert (fo["ltq"] > 0).all() and fo["ltq"].n_unique() > 3
    oi = fo.filter(pl.col("instrument_key") == "NSE_FO|NIFTY-I")["oi"]
    assert oi.min() > 0 and oi.n_unique() > 10
    assert (oi.diff().drop_nulls().abs() <= 3 * 25).all()  # at most a few lots per tick


def test_pacing_with_fake_sleep(monkeypatch):
    # the pacer's clock stands still between sleeps: with the real one, a slow step of a loaded
    # machine shortened the next sleep (seen once in CI: a sleep more than 1 ms short of 0.25 s)
    monkeypatch.setattr("data_handling.simulator.time.monotonic", lambda: 100.0)
    slept: list[float] = []
    src = SimulatedSource(WATCH, speed=1.0, start_ms=session_open_ms(FRI), tick_interval_ms=250, sleep=slept.append)
    take(src, 101)
    assert len(slept) == 100 and sum(slept) == pytest.approx(25.0, abs=1e-6)
    assert all(s == pytest.approx(0.25, abs=1e-3) for s in slept)
    slept.clear()
    take(SimulatedSource(WATCH, speed=250.0, start_ms=session_open_ms(FRI), tick_interval_ms=250, sleep=slept.append), 1001)
    # 1 ms a tick: debts are pooled into sleeps of at least 2 ms
    assert sum(slept) == pytest.approx(1.0, abs=0.003) and len(slept) <= 500
    never = SimulatedSource(WATCH, speed=0, sleep=lambda s: pytest.fail("speed 0 must never sleep"))
    take(never, 1000)
