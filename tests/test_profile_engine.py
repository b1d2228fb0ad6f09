"""LiveAuctionEngine on hand-checked small sessions: rows, TPOs, volume, IB, open/day type,
session boundaries (pre-open, close, outage, Muhurat), day rollover, bus message and throttle."""

from __future__ import annotations

import duckdb
import msgspec
import numpy as np
import polars as pl
import pytest

from trading_core import messages as m
from trading_core import profile_rules as rules
from trading_core.profile import LiveAuctionEngine, PublishThrottle, interval_ms
from trading_core.profile_batch import (composite_profile, compute_profile, compute_profiles,
                                        profile_from_duckdb, profiles_table)
from trading_core.profile_config import ProfileConfig, config_for
from trading_core.profile_model import PriorSession
from trading_core.sessions import SessionCalendar, ist_ms

D = "2022-06-01"
NIFTY = "NSE_INDEX|Nifty 50"
FUT = "NSE_FO|NIFTY22JUNFUT"


def t(hhmm: str, sec: int = 0, date: str = D) -> int:
    return ist_ms(date, hhmm, sec)


def four_period_day(engine: LiveAuctionEngine, date: str = D) -> None:
    """A 100-114.95, B 105-119, C 110-124, D 120-129 (one 1-minute bar each)."""
    engine.on_bar(t("09:15", date=date), 102, 114.95, 100, 113)
    engine.on_bar(t("09:45", date=date), 112, 119, 105, 118)
    engine.on_bar(t("10:15", date=date), 118, 124, 110, 122)
    engine.on_bar(t("10:45", date=date), 122, 129, 120, 128)


def test_hand_checked_four_period_profile():
    e = LiveAuctionEngine(NIFTY)
    four_period_day(e)
    p = e.profile
    # rows of 5: A 100,105,110; B 105,110,115; C 110,115,120; D 120,125
    assert p.row_low == 100.0 and p.tpo.tolist() == [1, 2, 3, 2, 2, 1]
    assert p.tpo_letters() == ["A", "AB", "ABC", "BC", "CD", "D"]
    # POC 110 (3 TPOs); 70 % of 11 = 7.7: up pair 115+120 (4) beats 105+100 (3) -> 7;
    # then 125 alone (1) loses to 105+100 (3) -> 10.
    assert (p.poc, p.val, p.vah, p.tpo_total, p.va_tpo) == (110.0, 100.0, 120.0, 11, 10)
    assert (p.ib_high, p.ib_low, p.ib_range, p.ib_complete) == (119.0, 100.0, 19.0, True)
    assert p.ext_up == 10.0 and p.ext_down == 0.0 and p.ext_up_ib == pytest.approx(10 / 19)
    assert (p.open, p.high, p.low, p.last) == (102.0, 129.0, 100.0, 128.0)
    # A: open 102, low 100 first (bar closed up), high 114.95, close 113 -> a 2-point test, then a drive
    assert p.open_type == rules.OPEN_TEST_DRIVE_UP and p.open_type_final
    assert p.day_type == rules.NORMAL_VARIATION and not p.day_type_final
    assert not (p.poor_high or p.poor_low or p.excess_high or p.excess_low) and p.single_prints == ()
    assert p.volume_source == "tpo" and (p.volume_poc, p.volume_val, p.volume_vah) == (110.0, 100.0, 120.0)
    assert [q.letter for q in p.periods] == ["A", "B", "C", "D"] and p.period == "D"
    e.on_time(t("15:30"))
    assert e.profile.closed and e.profile.day_type_final and e.profile.period == "M"


def test_open_type_is_provisional_until_period_a_ends():
    e = LiveAuctionEngine(NIFTY)
    e.on_bar(t("09:15"), 100, 100, 100, 100)
    e.on_bar(t("09:20"), 100, 120, 100, 119)
    p = e.profile
    assert p.open_type == rules.OPEN_DRIVE_UP and not p.open_type_final
    assert p.day_type == rules.UNDETERMINED and not p.ib_complete
    e.on_time(t("09:45"))
    assert e.profile.open_type_final and e.profile.period == "B"


def test_tick_volume_profile_and_reference_prints():
    e = LiveAuctionEngine(FUT)
    assert e.config.tick_size == 0.05
    e.on_tick(t("09:15"), 104.0, 1)            # reference price, not a trade
    for price, qty in ((100, 10), (106, 50), (107, 30), (111, 20), (116, 5)):
        e.on_tick(t("09:16"), price, qty)
    p = e.profile
    assert p.reference_prints == 1 and p.open == 100.0 and p.prints == 5
    assert p.tpo.tolist() == [1, 1, 1, 1] and p.volume.tolist() == [10, 80, 20, 5]
    # TPO: four-way tie, middle between rows 105 and 110 -> lower (105); VA 105..115 (3 of 4)
    assert (p.poc, p.val, p.vah) == (105.0, 105.0, 115.0)
    # volume: POC 105 (80 of 115 < 80.5) -> up pair 110+115 (25) beats 100 (10)
    assert (p.volume_poc, p.volume_val, p.volume_vah, p.volume_total) == (105.0, 105.0, 115.0, 115)
    assert p.volume_source == "ltq"


def test_one_row_day():
    e = LiveAuctionEngine(NIFTY)
    e.on_tick(t("09:20"), 100.0)
    e.on_tick(t("09:50"), 101.0)
    e.on_time(t("15:30"))
    p = e.profile
    assert p.tpo.tolist() == [2] and p.poc == p.val == p.vah == 100.0
    assert p.poor_high and p.poor_low and not p.excess_high and p.single_prints == ()
    assert p.ib_range == 1.0 and p.day_type == rules.NORMAL


def test_bar_volume_spread_over_its_rows():
    e = LiveAuctionEngine(FUT)
    e.on_bar(t("09:15"), 100, 114.95, 100, 110, volume=10)    # rows 100, 105, 110: 4, 3, 3
    e.on_bar(t("09:16"), 111, 111, 111, 111, volume=7)
    p = e.profile
    assert p.volume.tolist() == [4, 3, 10] and p.volume_source == "bar"


def test_pre_open_and_post_close_bars_are_not_profiled():
    e = LiveAuctionEngine(NIFTY)
    e.on_bar(t("09:07"), 99, 99, 99, 99)             # the "09:08" pre-open bar
    e.on_bar(t("09:15"), 100, 101, 100, 101)
    e.on_bar(t("15:29"), 103, 104, 103, 104)         # the "15:30" bar: last of the session (M)
    e.on_bar(t("15:30"), 105, 105, 105, 105)         # the "15:31" bar: after the close
    p = e.profile
    assert p.preopen == 99.0 and p.outside_prints == 2 and p.prints == 2
    assert p.high == 104.0 and p.closed and [q.letter for q in p.periods] == ["A", "M"]


def test_bar_at_close_ends_session():
    e = LiveAuctionEngine(NIFTY)
    e.on_bar(t("15:29"), 100, 100, 100, 100)
    assert e.profile.closed                          # the bar ends at 15:30


def test_outage_day_halt_and_extension():
    date = "2021-02-24"
    e = LiveAuctionEngine(NIFTY)
    e.on_bar(t("09:15", date=date), 100, 110, 100, 105)
    e.on_bar(t("10:07", date=date), 105, 106, 104, 105)
    e.on_bar(t("15:37", date=date), 150, 150, 150, 150)      # re-open call auction, in the halt
    e.on_bar(t("15:45", date=date), 120, 121, 119, 120)
    e.on_bar(t("16:59", date=date), 122, 123, 121, 122)
    e.on_bar(t("17:01", date=date), 125, 125, 125, 125)      # after the extended close
    p = e.profile
    assert p.session_kind == "extended" and p.trading_day and p.closed
    assert p.outside_prints == 2 and p.high == 123.0
    assert [q.letter for q in p.periods] == ["A", "B", "N", "P"]
    assert any("outage" in n for n in p.notes)
    assert any("no prints from 10:07 to 15:45" in n for n in p.notes)


def test_muhurat_session_is_not_regular_and_not_a_prior_day():
    e = LiveAuctionEngine(NIFTY)
    four_period_day(e, "2021-11-03")
    e.on_bar(t("18:07", date="2021-11-04"), 200, 200, 200, 200)
    e.on_bar(t("18:15", date="2021-11-04"), 200, 205, 199, 204)
    e.on_bar(t("18:50", date="2021-11-04"), 204, 206, 203, 205)
    p = e.profile
    assert p.session_kind == "muhurat" and not p.trading_day
    assert p.day_type == rules.NOT_REGULAR and p.poc is not None and p.preopen == 200.0
    assert p.prior.date == "2021-11-03"
    e.on_bar(t("09:15", date="2021-11-08"), 130, 131, 129, 130)
    assert e.profile.prior.date == "2021-11-03"            # the Muhurat evening is skipped


def test_unknown_evening_session_without_config():
    cal = SessionCalendar(special={})
    e = LiveAuctionEngine(NIFTY, calendar=cal)
    e.on_bar(t("18:15", date="2022-10-24"), 200, 205, 199, 204)
    e.on_time(t("23:00", date="2022-10-24"))
    p = e.profile
    assert p.empty and p.day_type == rules.NOT_REGULAR
    assert any("not a regular session" in n for n in p.notes)


def test_rollover_and_prior_references():
    e = LiveAuctionEngine(NIFTY)
    four_period_day(e, "2022-06-01")
    e.on_bar(t("09:15", date="2022-06-02"), 130, 135, 130, 134)
    day1 = e.history[-1]
    assert day1.closed and day1.day_type_final and day1.session == "2022-06-01"
    p = e.profile
    assert p.prior == e.prior == PriorSession("2022-06-01", 129.0, 100.0, 128.0, 110.0, 120.0, 100.0, 5.0, None)
    assert (p.open_vs_prior_range, p.open_vs_prior_value) == ("above", "above")
    assert p.value_relation == "higher" and p.balance == "imbalance up"
    assert p.open_type == rules.OPEN_DRIVE_UP
    e.on_bar(t("15:00", date="2022-06-01"), 1, 1, 1, 1)         # an earlier date: ignored
    assert e.stale_prints == 1 and e.profile.prints == 1


def test_cumulative_volume_feed():
    e = LiveAuctionEngine(FUT)
    e.on_tick_cum(t("09:10"), 99.0, 1000)                   # pre-open: sets the baseline
    e.on_tick_cum(t("09:15"), 100.0, 1010)
    e.on_tick_cum(t("09:16"), 106.0, 1060)
    e.on_tick_cum(t("09:17"), 106.0, 5)                     # counter went down: 0, rebased
    e.on_tick_cum(t("09:18"), 101.0, 25)
    p = e.profile
    assert p.volume.tolist() == [30, 50] and p.volume_source == "cum_volume"


def test_gaps_are_reported():
    e = LiveAuctionEngine(NIFTY)
    e.on_tick(t("09:20"), 100.0)
    e.on_tick(t("09:40"), 100.0)
    assert e.profile.gaps == ((t("09:20"), t("09:40")),)


def test_ticks_and_their_minute_bars_give_the_same_tpo_profile():
    rng = np.random.default_rng(3)
    ts = np.sort(rng.integers(t("09:15"), t("15:30"), 3000))
    price = np.round(18000 + np.cumsum(rng.normal(0, 2, 3000)), 1)
    ticks = pl.DataFrame({"ts": ts, "price": price})
    bars = (ticks.with_columns(m=pl.col("ts") // 60_000 * 60_000)
            .group_by("m", maintain_order=True)
            .agg(open=pl.col("price").first(), high=pl.col("price").max(),
                 low=pl.col("price").min(), close=pl.col("price").last())
            .rename({"m": "ts"}))
    a, b = compute_profile(ticks, instrument_key=NIFTY), compute_profile(bars, instrument_key=NIFTY)
    assert a.tpo.tolist() == b.tpo.tolist()
    assert (a.poc, a.vah, a.val, a.ib_high, a.ib_low, a.day_type) == (b.poc, b.vah, b.val, b.ib_high, b.ib_low, b.day_type)


def test_on_message_tick_and_candle():
    e = LiveAuctionEngine(FUT)
    assert e.on_message(m.Tick(instrument_key=FUT, ts=t("09:15", 5), ltp=100.0, ltq=50))
    assert not e.on_message(m.Candle(instrument_key=FUT, interval="1m", ts=t("09:16"), open=1,
                                     high=1, low=1, close=1, final=False))
    assert e.on_message(m.Candle(instrument_key=FUT, interval="1m", ts=t("09:16"), open=100,
                                 high=110, low=100, close=110, volume=20))
    assert e.profile.high == 110.0 and e.profile.volume_total == 70
    assert interval_ms("30s") == 30_000
    with pytest.raises(ValueError):
        interval_ms("1x")
    with pytest.raises(TypeError):
        e.on_message(m.Control(command="x"))


def test_profile_message_round_trip():
    e = LiveAuctionEngine(NIFTY)
    assert e.to_message() is None and e.profile is None
    four_period_day(e)
    msg = e.to_message()
    topic, decoded = m.decode(m.encode(m.profile_topic(NIFTY), msg))
    assert topic == "profile.NSE_INDEX|Nifty 50" and isinstance(decoded, m.Profile)
    assert decoded == msg
    assert (decoded.poc, decoded.vah, decoded.val, decoded.ib_high, decoded.open_type) == (
        110.0, 120.0, 100.0, 119.0, rules.OPEN_TEST_DRIVE_UP)
    assert decoded.periods[0] == ["A", 100.0, 114.95] and decoded.volume == []
    assert len(msgspec.json.encode(msg)) < 2000


def test_publish_throttle():
    th = PublishThrottle(1000)
    assert th.should_publish(0, 1, (1, 0, False))            # first change
    assert not th.should_publish(10, 1, (1, 0, False))       # nothing new
    assert not th.should_publish(500, 2, (1, 0, False))      # changed, but < 1 s
    assert th.should_publish(1000, 2, (1, 0, False))         # the held-back change, a second later
    assert th.should_publish(1001, 2, (1, 1, False))         # period close: at once
    assert not th.should_publish(1500, 3, (1, 1, False))
    assert th.should_publish(1600, 3, (1, 1, True))          # session close: at once


def test_engine_period_key_and_version():
    e = LiveAuctionEngine(NIFTY)
    e.on_tick(t("09:16"), 100.0)
    v, k = e.version, e.period_key
    e.on_tick(t("09:17"), 100.0)
    assert e.version > v and e.period_key == k
    e.on_time(t("09:45"))
    assert e.period_key[1] == k[1] + 1


def test_batch_from_duckdb_equals_engine():
    e = LiveAuctionEngine(NIFTY)
    four_period_day(e, "2022-06-01")
    four_period_day(e, "2022-06-02")
    rows = [(t(h, date=d), o, hi, lo, c) for d in ("2022-06-01", "2022-06-02") for h, o, hi, lo, c in (
        ("09:15", 102, 114.95, 100, 113), ("09:45", 112, 119, 105, 118),
        ("10:15", 118, 124, 110, 122), ("10:45", 122, 129, 120, 128))]
    df = pl.DataFrame(rows, schema=["ts", "open", "high", "low", "close"], orient="row")
    con = duckdb.connect()
    con.register("bars", df)
    profiles = profile_from_duckdb(con, "SELECT * FROM bars WHERE ts >= ? ORDER BY ts", [0],
                                   instrument_key=NIFTY)
    assert profiles == e.history + [e.profile]
    table = profiles_table(profiles)
    assert table.height == 2 and table["poc"].to_list() == [110.0, 110.0]


def test_composite_of_sessions():
    e = LiveAuctionEngine(NIFTY)
    four_period_day(e, "2022-06-01")
    e.on_bar(t("09:15", date="2022-06-02"), 125, 134.95, 125, 130)
    c = composite_profile(e.history + [e.profile], 5)
    assert c.sessions == ("2022-06-01", "2022-06-02")
    assert c.tpo.tolist() == [1, 2, 3, 2, 2, 2, 1]
    assert c.poc == 110.0 and c.val <= c.poc <= c.vah
    assert e.composite(1).sessions == ("2022-06-02",)
    with pytest.raises(ValueError):
        composite_profile([], 5)


def test_batch_input_errors():
    with pytest.raises(ValueError):
        compute_profiles(pl.DataFrame({"ts": [1], "foo": [1.0]}), instrument_key=NIFTY)
    with pytest.raises(ValueError):
        compute_profiles(pl.DataFrame({"ts": [1, 2], "price": [1.0, 2.0],
                                       "instrument_key": ["a", "b"]}), config=ProfileConfig())
    with pytest.raises(ValueError):
        compute_profiles(pl.DataFrame({"ts": [1], "price": [float("nan")]}), instrument_key=NIFTY)
    with pytest.raises(ValueError):
        LiveAuctionEngine(NIFTY).on_tick(t("09:20"), float("nan"))
    with pytest.raises(ValueError):
        LiveAuctionEngine(NIFTY).on_bar(t("09:20"), 1, float("inf"), 1, 1)
    assert compute_profiles(pl.DataFrame({"ts": [], "price": []}), instrument_key=NIFTY) == []


def test_batch_accepts_datetime_ts_and_instrument_column():
    import datetime as dt
    df = pl.DataFrame({"ts": [dt.datetime(2022, 6, 1, 3, 50, tzinfo=dt.timezone.utc)],
                       "ltp": [100.0], "ltq": [5], "instrument_key": [FUT]})
    p = compute_profile(df)
    assert p.instrument_key == FUT and p.volume_total == 5
    assert p.period == "A" and p.ts == t("09:20")


def test_config_override_row_size():
    e = LiveAuctionEngine(NIFTY, config=config_for(NIFTY, row_size=10.0))
    four_period_day(e)
    assert e.profile.row_size == 10.0 and e.profile.tpo.tolist() == [2, 3, 2]


def test_numpy_scalars_in_give_plain_python_out():
    e = LiveAuctionEngine(FUT)
    for i in range(3):
        e.on_tick(np.int64(t("09:20") + i * 1000), np.float64(100 + i), np.int64(10))
    e.on_tick(np.int64(t("10:20")), np.float64(90.0), np.int64(10))
    p = e.profile
    assert all(type(v).__module__ != "numpy" for v in p.as_dict().values())
    assert m.decode(m.encode("profile.x", e.to_message()))[1].ts == t("10:20")


def test_batch_over_the_ingestor_tick_table_layout():
    """Rows as the ingestor stores them (ticks: instrument_key, ts, ltp, ltq, oi, seq, source)."""
    con = duckdb.connect()
    con.sql("CREATE TABLE ticks (instrument_key VARCHAR, ts BIGINT, ltp DOUBLE, ltq BIGINT, "
            "oi DOUBLE, seq BIGINT, source VARCHAR)")
    rng = np.random.default_rng(11)
    e = LiveAuctionEngine(FUT)
    seq = 0
    for d in ("2022-06-01", "2022-06-02"):
        for sec in sorted(rng.integers(9 * 3600, 15 * 3600 + 40 * 60, 400).tolist()):
            tick = m.Tick(instrument_key=FUT, ts=ist_ms(d, 0) + sec * 1000,
                          ltp=round(18000 + float(rng.normal(0, 20)), 1), ltq=int(rng.integers(1, 20)) * 50,
                          seq=seq)
            seq += 1
            e.on_message(tick)
            con.execute("INSERT INTO ticks VALUES (?, ?, ?, ?, 0, ?, 'sim')",
                        [tick.instrument_key, tick.ts, tick.ltp, tick.ltq, tick.seq])
    profiles = profile_from_duckdb(con, "SELECT * FROM ticks WHERE instrument_key = ? ORDER BY ts, seq", [FUT])
    assert profiles == e.history + [e.profile]
    assert profiles[-1].instrument_key == FUT and profiles[-1].volume_source == "ltq"
    assert profiles[-1].prior.date == "2022-06-01"
