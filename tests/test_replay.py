"""Replay of the recorded NSE data (../shared/data): parsing, bars -> ticks, merge, pacing, errors."""

from __future__ import annotations

import datetime as dt

import numpy as np
import polars as pl
import pytest

from data_handling.candles import candles_from_ticks
from data_handling.instruments import instrument_key, tick_file_key
from data_handling.replay import ReplaySource, bars_to_ticks, read_bars, read_ticks
from tests.conftest import FO_TICKS, FUT_1MIN, INDEX_1MIN
from trading_core.messages import Tick

IST = dt.timezone(dt.timedelta(hours=5, minutes=30))
JUN_NIFTY = INDEX_1MIN / "2022_JUN_NIFTY.txt"
NIFTY_I = FO_TICKS / "Futures" / "NIFTY-I.csv"


def ist_ms(y, mo, d, h, mi, s=0) -> int:
    return int(dt.datetime(y, mo, d, h, mi, s, tzinfo=IST).timestamp() * 1000)


def data_lines(path) -> int:
    with open(path, "rb") as fh:
        return sum(1 for line in fh if line.strip())


def ist_date_col() -> pl.Expr:
    return ((pl.col("ts") + 19_800_000) // 86_400_000).cast(pl.Int32).cast(pl.Date)


# --------------------------------------------------------------------------- labelling
def test_bar_minute_labels_the_close(shared_data):
    """The README's claim, checked: index bar 'HH:MM' is the minute *ending* at HH:MM.

    NIFTY index bars and the NIFTY-I future of 2022-11-18 move together minute by minute.
    With read_bars' convention (ts = label - 1 minute = bar open) the bar returns line up
    with the future's 1-minute candles (same open time); shifted by a minute they do not.
    """
    bars = read_bars(INDEX_1MIN / "2022_NOV_NIFTY.txt", dates=["2022-11-18"])
    fut = candles_from_ticks(read_ticks(NIFTY_I))
    regular = (pl.col("ts") >= ist_ms(2022, 11, 18, 9, 16)) & (pl.col("ts") < ist_ms(2022, 11, 18, 15, 29))

    def corr(shift_ms: int) -> float:
        j = bars.with_columns(pl.col("ts") + shift_ms).join(fut, on="ts", suffix="_f").filter(regular)
        assert j.height > 360
        return float(np.corrcoef((j["close"] - j["open"]).to_numpy(), (j["close_f"] - j["open_f"]).to_numpy())[0, 1])

    assert corr(0) > 0.8
    assert abs(corr(60_000)) < 0.3 and abs(corr(-60_000)) < 0.3

    # and in the file itself: regular bars are labelled 09:16..15:30, never 09:15
    month = read_bars(JUN_NIFTY).with_columns(
        tod=((pl.col("ts") + 19_800_000) % 86_400_000) // 60_000  # open minute of day, IST
    )
    assert 9 * 60 + 14 not in month["tod"].to_list()  # no bar labelled 09:15
    per_day = month.group_by("date").agg(
        first=pl.col("ts").filter(pl.col("tod") >= 9 * 60 + 15).min(),
        last=pl.col("ts").filter(pl.col("tod") <= 15 * 60 + 29).max(),
    )
    assert per_day.height == 22
    for d, first, last in per_day.iter_rows():
        assert last == ist_ms(d.year, d.month, d.day, 15, 29)  # labelled 15:30
        assert first == ist_ms(d.year, d.month, d.day, 9, 15)


def test_read_bars_columns_units_and_every_bar_kept(shared_data):
    bars = read_bars(JUN_NIFTY)
    assert bars.schema == pl.Schema({
        "instrument_key": pl.String, "ts": pl.Int64, "open": pl.Float64, "high": pl.Float64,
        "low": pl.Float64, "close": pl.Float64, "volume": pl.Int64, "oi": pl.Float64, "date": pl.Date,
    })
    assert bars.height == data_lines(JUN_NIFTY)
    # NIFTY,20220601,09:08,16594.40,...  (pre-open, kept) and NIFTY,20220601,09:16,16602.20,16614.35,16561.95,16613.90,0,0
    assert bars.row(0) == ("NSE_INDEX|Nifty 50", ist_ms(2022, 6, 1, 9, 7), 16594.40, 16594.40, 16594.40, 16594.40, 0, 0.0, dt.date(2022, 6, 1))
    assert bars.row(1) == ("NSE_INDEX|Nifty 50", 1654055100000, 16602.20, 16614.35, 16561.95, 16613.90, 0, 0.0, dt.date(2022, 6, 1))
    assert 1654055100000 == ist_ms(2022, 6, 1, 9, 15)
    assert (bars.select(ist_date_col() == pl.col("date"))).to_series().all()
    # the 2021-02-24 outage day is replayed as recorded: stop at 10:08, resume 15:38, run to 17:02
    feb = read_bars(INDEX_1MIN / "2021_FEB_NIFTY.txt", dates=["2021-02-24"])
    gaps = feb["ts"].diff().drop_nulls()
    assert gaps.max() == ist_ms(2021, 2, 24, 15, 37) - ist_ms(2021, 2, 24, 10, 7)
    assert feb["ts"].max() == ist_ms(2021, 2, 24, 17, 1)


def test_futures_bars_have_volume_and_oi(shared_data):
    bars = read_bars(FUT_1MIN)  # CRLF line endings in this file
    assert bars.height == 45_964 == data_lines(FUT_1MIN)
    assert bars["instrument_key"].unique().to_list() == ["NSE_FO|BANKNIFTY_F1"]
    assert bars.row(0) == ("NSE_FO|BANKNIFTY_F1", ist_ms(2019, 1, 1, 9, 15), 27300.20, 27368.10, 27300.20, 27314.95, 18300, 1414860.0, dt.date(2019, 1, 1))
    assert (bars["volume"] > 0).all() and (bars["oi"] > 0).all()


# --------------------------------------------------------------------------- bars -> ticks
@pytest.mark.parametrize(
    "path, day",
    [(JUN_NIFTY, "2022-06-01"), (FUT_1MIN, "2019-01-01")],  # the futures day has 15:31 and 16:36 bars
)
def test_a_real_day_of_bars_replays_as_4_ticks_each_and_rebuilds_the_bars(shared_data, path, day):
    bars = read_bars(path, dates=[day])
    src = ReplaySource(path, dates=[day])
    assert len(src) == 4 * bars.height
    ticks = src.frame()
    assert ticks.columns == ["instrument_key", "ts", "ltp", "ltq", "oi", "seq"]
    assert ticks["seq"].to_list() == list(range(len(src)))
    assert ticks.select(ist_date_col()).to_series().unique().to_list() == [dt.date.fromisoformat(day)]
    rebuilt = candles_from_ticks(ticks)
    assert (rebuilt["ticks"] == 4).all()
    cols = ["instrument_key", "ts", "open", "high", "low", "close", "volume", "oi"]
    assert rebuilt.select(cols).equals(bars.select(cols))


def test_bars_to_ticks_order_timing_and_volume_split(shared_data):
    bars = read_bars(FUT_1MIN, dates=["2019-01-02"])
    ticks = bars_to_ticks(bars)
    assert ticks.columns == ["instrument_key", "ts", "ltp", "ltq", "oi"]
    assert ticks.height == 4 * bars.height
    t = ticks.with_columns(bar=pl.int_range(pl.len()) // 4, k=pl.int_range(pl.len()) % 4)
    b = bars.with_row_index("bar").with_columns(pl.col("bar").cast(pl.Int64))
    j = t.join(b, on="bar", suffix="_bar")
    assert (j["ts"] - j["ts_bar"] == j["k"] * 15_000).all()
    assert (j["oi"] == j["oi_bar"]).all()
    per_bar = j.group_by("bar", maintain_order=True).agg(
        pl.col("ltp"), pl.col("ltq"), pl.col("open", "high", "low", "close", "volume").first()
    )
    n_low_first = 0
    for row in per_bar.iter_rows(named=True):
        o, h, l, c, v = row["open"], row["high"], row["low"], row["close"], row["volume"]
        near, far = (h, l) if abs(o - h) <= abs(o - l) else (l, h)
        n_low_first += near == l and l != h
        assert row["ltp"] == [o, near, far, c]
        assert row["ltq"] == [v // 4, v // 4, v // 4, v - 3 * (v // 4)] and sum(row["ltq"]) == v
    assert 0 < n_low_first < per_bar.height  # both orders occur on a real day
    with pytest.raises(ValueError, match="missing column"):
        bars_to_ticks(bars.drop("volume"))


# --------------------------------------------------------------------------- filters, keys
def test_date_filter(shared_data):
    one = ReplaySource(JUN_NIFTY, dates=["2022-06-01"])
    same = ReplaySource(JUN_NIFTY, dates=[dt.date(2022, 6, 1)])
    assert one.frame().equals(same.frame())
    assert one.trading_dates == [dt.date(2022, 6, 1)]
    two = ReplaySource(JUN_NIFTY, dates=["2022-06-02", "2022-06-01"])
    assert two.trading_dates == [dt.date(2022, 6, 1), dt.date(2022, 6, 2)]
    assert len(two) == 4 * read_bars(JUN_NIFTY, dates=["2022-06-01", "2022-06-02"]).height > len(one)
    # a folder of 48 months: one day of both indices
    folder = ReplaySource(INDEX_1MIN, dates=["2022-06-01"])
    assert folder.instrument_keys == ["NSE_INDEX|Nifty 50", "NSE_INDEX|Nifty Bank"]
    n_bnf = read_bars(INDEX_1MIN / "2022_JUN_BNF.txt", dates=["2022-06-01"]).height
    assert len(folder) == len(one) + 4 * n_bnf
    with pytest.raises(ValueError) as e:
        ReplaySource(JUN_NIFTY, dates=["2022-06-05"])  # a Sunday
    assert str(e.value) == "no bars for 2022-06-05 in 2022_JUN_NIFTY.txt"
    with pytest.raises(ValueError, match="no bars for 2022-06-05 in 2022_JUN_NIFTY.txt"):
        read_bars(JUN_NIFTY, dates=["2022-06-05"])
    with pytest.raises(ValueError, match="bad date '2022-6-1x'"):
        ReplaySource(JUN_NIFTY, dates=["2022-6-1x"])


def test_instrument_mapping(shared_data):
    assert instrument_key("NIFTY") == "NSE_INDEX|Nifty 50"
    assert instrument_key("BANKNIFTY") == "NSE_INDEX|Nifty Bank"
    assert instrument_key("BANKNIFTY_F1") == "NSE_FO|BANKNIFTY_F1"
    assert instrument_key("SOMETHING") == "NSE_FO|SOMETHING"
    assert tick_file_key(FO_TICKS / "Futures" / "NIFTY-I.csv") == "NSE_FO|NIFTY-I"
    assert read_bars(INDEX_1MIN / "2022_JUN_BNF.txt")["instrument_key"].unique().to_list() == ["NSE_INDEX|Nifty Bank"]
    opt = read_ticks(FO_TICKS / "Options" / "BANKNIFTY22112429000PE.csv")
    assert opt["instrument_key"].unique().to_list() == ["NSE_FO|BANKNIFTY22112429000PE"]
    src = ReplaySource(FO_TICKS / "Futures", instruments={"NSE_FO|NIFTY-I", "NSE_FO|NIFTY-II"})
    assert src.instrument_keys == ["NSE_FO|NIFTY-I", "NSE_FO|NIFTY-II"]
    assert len(src) == data_lines(NIFTY_I) + data_lines(FO_TICKS / "Futures" / "NIFTY-II.csv")
    with pytest.raises(ValueError, match=r"no ticks for instrument\(s\) NSE_FO|NOPE"):
        ReplaySource(FO_TICKS / "Futures", instruments={"NSE_FO|NOPE"})


def test_read_ticks_real_file(shared_data):
    t = read_ticks(NIFTY_I)
    assert t.height == 16_687 == data_lines(NIFTY_I)
    assert t.schema == pl.Schema({"instrument_key": pl.String, "ts": pl.Int64, "ltp": pl.Float64,
                                  "ltq": pl.Int64, "oi": pl.Float64, "date": pl.Date})
    # 20221118,09:15:02,18417.00,3750,11375600
    assert t.row(4) == ("NSE_FO|NIFTY-I", ist_ms(2022, 11, 18, 9, 15, 2), 18417.0, 3750, 11375600.0, dt.date(2022, 11, 18))


# --------------------------------------------------------------------------- merge & order
def test_folder_merge_of_futures_is_time_ordered_and_keeps_file_order(shared_data):
    folder = FO_TICKS / "Futures"
    files = sorted(folder.glob("*.csv"))
    src = ReplaySource(folder)
    df = src.frame()
    assert len(src) == df.height == sum(data_lines(f) for f in files) == 43_441
    assert df["ts"].diff().drop_nulls().min() >= 0
    assert df["seq"].to_list() == list(range(df.height))
    # each instrument's own ticks come out exactly in its file's order
    for f in files:
        own = df.filter(pl.col("instrument_key") == tick_file_key(f)).select("ts", "ltp", "ltq", "oi")
        assert own.equals(read_ticks(f).select("ts", "ltp", "ltq", "oi")), f.name
    # ticks sharing a timestamp: files in sorted path order
    rank = {tick_file_key(f): i for i, f in enumerate(files)}
    r = df.with_columns(rank=pl.col("instrument_key").replace_strict(rank, return_dtype=pl.Int64))
    same_ts = (r["ts"].diff() == 0) & (r["rank"].diff() < 0)
    assert not same_ts.any()
    # NIFTY-I opens with 4 prints in the same second (two QTY=1 reference prints first)
    first = df.filter(pl.col("instrument_key") == "NSE_FO|NIFTY-I").head(4)
    assert first["ltp"].to_list() == [18396.00, 18390.60, 18416.80, 18409.20]
    assert first["ltq"].to_list() == [1, 1, 1600, 500]
    assert first["ts"].n_unique() == 1


def test_equal_timestamps_mixed_bar_and_tick_files_follow_sorted_path_order(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "a.csv").write_text("20221118,09:15:00,10.00,1,0\n20221118,09:15:00,10.05,2,0\n20221118,09:15:15,10.10,3,0\n")
    (tmp_path / "b" / "X.csv").write_text("20221118,09:15:00,20.00,1,0\n20221118,09:15:15,20.05,1,0\n")
    # bar 09:16 -> ticks at 09:15:00 (open), :15 (low: nearer the open), :30 (high), :45 (close)
    (tmp_path / "c.txt").write_text("NIFTY,20221118,09:16,30.00,31.00,29.50,30.50,0,0\n")
    (tmp_path / "0.csv").write_text("20221118,09:15:15,5.00,1,0\n")
    df = ReplaySource(tmp_path).frame()
    assert df.select("instrument_key", "ltp").rows() == [
        ("NSE_FO|a", 10.00), ("NSE_FO|a", 10.05), ("NSE_FO|X", 20.00), ("NSE_INDEX|Nifty 50", 30.00),
        ("NSE_FO|0", 5.00), ("NSE_FO|a", 10.10), ("NSE_FO|X", 20.05), ("NSE_INDEX|Nifty 50", 29.50),
        ("NSE_INDEX|Nifty 50", 31.00), ("NSE_INDEX|Nifty 50", 30.50),
    ]


# --------------------------------------------------------------------------- iteration
def test_ticks_are_messages_matching_the_frame_and_resume_from_start_seq(shared_data):
    src = ReplaySource(NIFTY_I, sleep=lambda s: pytest.fail("speed 0 must never sleep"))
    all_ticks = list(src.ticks())
    assert len(all_ticks) == len(src)
    assert all(isinstance(t, Tick) and t.source == "replay" for t in all_ticks)
    assert [t.seq for t in all_ticks] == list(range(len(src)))
    f = src.frame()
    for i in (0, 1, 4, 9_999, len(src) - 1):
        t = all_ticks[i]
        assert (t.instrument_key, t.ts, t.ltp, t.ltq, t.oi, t.seq) == f.row(i)
    assert type(all_ticks[0].ts) is int and type(all_ticks[0].ltq) is int and type(all_ticks[0].oi) is float
    resumed = list(src.ticks(start_seq=12_345))
    assert resumed == all_ticks[12_345:]
    assert list(src.ticks(start_seq=len(src))) == []
    for bad in (-1, len(src) + 1):
        with pytest.raises(ValueError, match="start_seq"):
            src.ticks(start_seq=bad)


def test_pacing_with_fake_sleep(shared_data):
    slept: list[float] = []
    src = ReplaySource(JUN_NIFTY, speed=60, dates=["2022-06-01", "2022-06-02"], sleep=slept.append)
    n = sum(1 for _ in src.ticks())
    assert n == len(src)
    bars = read_bars(JUN_NIFTY, dates=["2022-06-01", "2022-06-02"])
    # market time from each day's first tick to its last (the 09:07 pre-open bar to the
    # last bar's close tick at +45 s); the overnight gap is not waited for
    per_day = bars.group_by("date").agg(span=pl.col("ts").max() + 45_000 - pl.col("ts").min())
    expected_s = per_day["span"].sum() / 1000 / 60
    assert sum(slept) == pytest.approx(expected_s, abs=0.01)
    for span in per_day["span"]:  # a day's bars: about 6.25 min (375 regular minutes / 60) + pre-open/post-close
        assert 6.25 * 60 <= span / 1000 / 60 <= 6.5 * 60
    assert max(slept) == pytest.approx((ist_ms(2022, 6, 1, 9, 15) - ist_ms(2022, 6, 1, 9, 7, 45)) / 1000 / 60)
    assert min(slept) > 0.002  # no sleep calls for tiny debts
    assert len(slept) < n

    # a gap longer than max_gap_ms counts as nothing; speed 0 never sleeps
    slept.clear()
    src = ReplaySource(JUN_NIFTY, speed=60, dates=["2022-06-01"], max_gap_ms=5 * 60_000, sleep=slept.append)
    list(src.ticks())
    day = per_day.filter(pl.col("date") == dt.date(2022, 6, 1))["span"][0]
    assert sum(slept) == pytest.approx((day - 7.25 * 60_000) / 1000 / 60, abs=0.01)
    with pytest.raises(ValueError, match="speed"):
        ReplaySource(JUN_NIFTY, speed=-1)


def test_pacing_accumulates_tiny_gaps_into_few_sleeps(shared_data):
    slept: list[float] = []
    src = ReplaySource(NIFTY_I, speed=1000, sleep=slept.append)  # gaps of 1 s -> 1 ms each
    list(src.ticks())
    f = src.frame()
    span_s = (f["ts"].max() - f["ts"].min()) / 1000 / 1000
    assert sum(slept) == pytest.approx(span_s, abs=0.005)
    assert f["ts"].n_unique() > 2 * len(slept)  # many 1 ms steps merged into each sleep


def test_constant_rate_and_limit_for_load_tests(shared_data):
    slept: list[float] = []
    full = ReplaySource(NIFTY_I)
    src = ReplaySource(NIFTY_I, speed=60, rate=2_000, limit=5_000, sleep=slept.append)
    ticks = list(src.ticks())
    assert len(src) == len(ticks) == 5_000
    # the first 5,000 ticks of the stream, whatever the pace
    assert src.frame().equals(full.frame().head(5_000))
    # rate overrides speed: tick i is due i / rate seconds after the first, market gaps ignored
    assert sum(slept) == pytest.approx(4_999 / 2_000, abs=0.003)
    # one sleep per batch of the ticks due within 2 ms; a shorter one only where a batch is cut
    # at a 4,096-row chunk, and the first, which is shortened by the real time the first batch took
    assert sum(s <= 0.002 for s in slept[1:]) <= 1 and len(slept) < 5_000 / 4
    with pytest.raises(ValueError, match="rate"):
        ReplaySource(NIFTY_I, rate=-5)
    with pytest.raises(ValueError, match="limit"):
        ReplaySource(NIFTY_I, limit=0)


# --------------------------------------------------------------------------- errors
def test_malformed_line_names_file_and_line(tmp_path):
    good = "NIFTY,20220601,{t},16602.20,16614.35,16561.95,16613.90,0,0\n"
    lines = [good.format(t=f"09:{16 + i:02d}") for i in range(15)]
    lines.insert(3, "\n")  # a blank line still counts as a line
    lines.append("NIFTY,20220601,09:40,abc,16614.35,16561.95,16613.90,0,0\n")  # line 17
    lines.append(good.format(t="09:41"))
    p = tmp_path / "2022_JUN_NIFTY.txt"
    p.write_text("".join(lines))
    with pytest.raises(ValueError) as e:
        read_bars(p)
    assert str(e.value) == "2022_JUN_NIFTY.txt line 17: bad price 'abc' (OPEN)"
    with pytest.raises(ValueError, match=r"^2022_JUN_NIFTY.txt line 17: bad price 'abc'"):
        ReplaySource(p)
    # inside a folder the file is named relative to it; too many fields is caught too
    sub = tmp_path / "ticks" / "Futures"
    sub.mkdir(parents=True)
    (sub / "NIFTY-I.csv").write_text("20221118,09:15:00,18396.00,1,11375600\n20221118,09:15:01,18396.00,1,11375600,9\n")
    with pytest.raises(ValueError, match=r"^Futures/NIFTY-I.csv line 2: expected 5 comma-separated fields"):
        ReplaySource(tmp_path / "ticks")
    (sub / "NIFTY-I.csv").write_text("20221118,09:15:00,18396.00,1,11375600\n20221118,9:15:01,18396.00,1,11375600\n")
    with pytest.raises(ValueError, match=r"^NIFTY-I.csv line 2: bad time '9:15:01' \(expected HH:MM:SS\)$"):
        read_ticks(sub / "NIFTY-I.csv")
    (sub / "NIFTY-I.csv").write_text("20221118,09:15:00,18396.00,2.5,11375600\n")
    with pytest.raises(ValueError, match=r"^NIFTY-I.csv line 1: bad quantity '2.5'"):
        read_ticks(sub / "NIFTY-I.csv")
    p.write_text("NIFTY,20220601,09:16,16602.20,16600.00,16561.95,16613.90,0,0\n")  # high < open
    with pytest.raises(ValueError, match=r"^2022_JUN_NIFTY.txt line 1: bad bar"):
        read_bars(p)


def test_missing_paths_and_empty_inputs(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        ReplaySource(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="no \\*.txt bar files or \\*.csv tick files"):
        ReplaySource(tmp_path)
    (tmp_path / "notes.md").write_text("hello\n")
    with pytest.raises(ValueError, match="notes.md: not a replay file"):
        ReplaySource(tmp_path / "notes.md")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(ValueError, match="no ticks in empty.csv"):
        ReplaySource(tmp_path / "empty.csv")
    with pytest.raises(FileNotFoundError):
        read_bars(tmp_path / "missing.txt")
