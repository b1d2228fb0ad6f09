"""Property tests: incremental == batch for any print sequence (ticks or bars, in order or not,
across sessions, special days, pre-open/post-close prints), and the profile's invariants."""

from __future__ import annotations

import numpy as np
import polars as pl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trading_core import profile_rules as rules
from trading_core.profile import LiveAuctionEngine
from trading_core.profile_batch import compute_profiles
from trading_core.profile_config import ProfileConfig
from trading_core.sessions import ist_ms

KEY = "NSE_FO|NIFTY22JUNFUT"
# a regular day, the next day, the outage day (halt + extension), a Muhurat evening
DAYS = ["2022-06-01", "2022-06-02", "2021-02-24", "2021-11-04"]
CONFIGS = [ProfileConfig(row_size=5.0, tick_size=0.05),
           ProfileConfig(row_size=0.5, tick_size=0.05, gap_minutes=1),
           ProfileConfig(row_size=1.0, tick_size=0.05, reference_print_qty=None, ib_periods=1)]
PROPS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])

seconds_of_day = st.one_of(st.integers(9 * 3600, 15 * 3600 + 45 * 60),       # around the regular day
                           st.integers(18 * 3600, 19 * 3600 + 30 * 60),       # Muhurat evening
                           st.integers(9 * 3600 + 10 * 60, 10 * 3600 + 20 * 60))  # A, B, IB edge


@st.composite
def prints(draw, bars: bool):
    n = draw(st.integers(1, 120))
    rows = []
    for _ in range(n):
        day = draw(st.integers(0, len(DAYS) - 1))
        sec = draw(seconds_of_day)
        ts = ist_ms(DAYS[day], 0) + sec * 1000 + draw(st.integers(0, 999))
        if bars:
            a, b, c, d = sorted(draw(st.lists(st.integers(0, 600), min_size=4, max_size=4)))
            o, cl = draw(st.permutations([b, c]))
            rows.append((ts, 100 + o * 0.05, 100 + d * 0.05, 100 + a * 0.05, 100 + cl * 0.05,
                         draw(st.sampled_from([0, 0, 1, 7, 250]))))
        else:
            rows.append((ts, 100 + draw(st.integers(0, 600)) * 0.05, draw(st.sampled_from([0, 1, 1, 2, 75]))))
    order = draw(st.sampled_from(["sorted", "raw", "mostly"]))
    if order != "raw":
        rows.sort(key=lambda r: r[0])
    if order == "mostly" and len(rows) > 2:
        for _ in range(draw(st.integers(1, 3))):
            i = draw(st.integers(0, len(rows) - 2))
            rows[i], rows[i + 1] = rows[i + 1], rows[i]
    return rows


def tick_frame(rows):
    return pl.DataFrame(rows, schema={"ts": pl.Int64, "price": pl.Float64, "qty": pl.Int64}, orient="row")


def bar_frame(rows):
    return pl.DataFrame(rows, schema={"ts": pl.Int64, "open": pl.Float64, "high": pl.Float64,
                                      "low": pl.Float64, "close": pl.Float64, "volume": pl.Int64},
                        orient="row")


def engine_profiles(engine):
    cur = engine.profile
    return engine.history + ([cur] if cur is not None else [])


def same(a, b):
    assert [p.as_dict() for p in a] == [p.as_dict() for p in b]


def check_invariants(p):
    if p.empty:
        return
    assert p.val <= p.poc <= p.vah
    top_row = float(p.row_prices()[-1])
    assert p.row_low <= p.val and p.vah <= top_row                # rows are [price, price + row_size)
    assert p.row_low <= p.low < p.row_low + p.row_size and top_row <= p.high < top_row + p.row_size
    assert p.va_tpo * 100 >= 70 * p.tpo_total and p.tpo_total == int(p.tpo.sum())
    prices = p.row_prices()
    inside = (prices >= p.val - 1e-9) & (prices <= p.vah + 1e-9)
    assert int(p.tpo[inside].sum()) == p.va_tpo
    assert p.tpo[prices == p.poc][0] == p.tpo.max()
    if p.volume_source != "tpo":
        vin = (prices >= p.volume_val - 1e-9) & (prices <= p.volume_vah + 1e-9)
        assert p.volume_val <= p.volume_poc <= p.volume_vah
        assert int(p.volume[vin].sum()) * 100 >= 70 * p.volume_total
    if p.ib_high is not None:
        assert p.low <= p.ib_low <= p.ib_high <= p.high
        assert p.ext_up >= 0 and p.ext_down >= 0
    assert p.tpo[0] > 0 and p.tpo[-1] > 0


@PROPS
@given(rows=prints(bars=False), cfg=st.sampled_from(CONFIGS), data=st.data())
def test_ticks_incremental_equals_batch(rows, cfg, data):
    df = tick_frame(rows)
    batch = compute_profiles(df, instrument_key=KEY, config=cfg)
    one = LiveAuctionEngine(KEY, config=cfg)
    for r in rows:
        one.on_tick(*r)
    same(engine_profiles(one), batch)
    # the numpy chunk path, split anywhere
    chunked = LiveAuctionEngine(KEY, config=cfg)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(rows)), max_size=4)))
    ts, price, qty = df["ts"].to_numpy(), df["price"].to_numpy(), df["qty"].to_numpy()
    for a, b in zip([0] + cuts, cuts + [len(rows)]):
        chunked.on_ticks(ts[a:b], price[a:b], qty[a:b])
    same(engine_profiles(chunked), batch)
    # at any tick: the engine's profile so far equals the batch over the prefix
    k = data.draw(st.integers(1, len(rows)))
    prefix = LiveAuctionEngine(KEY, config=cfg)
    for r in rows[:k]:
        prefix.on_tick(*r)
    same(engine_profiles(prefix), compute_profiles(df.head(k), instrument_key=KEY, config=cfg))
    for p in batch:
        check_invariants(p)


@PROPS
@given(rows=prints(bars=True), cfg=st.sampled_from(CONFIGS))
def test_bars_incremental_equals_batch(rows, cfg):
    batch = compute_profiles(bar_frame(rows), instrument_key=KEY, config=cfg)
    e = LiveAuctionEngine(KEY, config=cfg)
    for r in rows:
        e.on_bar(*r)
    same(engine_profiles(e), batch)
    for p in batch:
        check_invariants(p)


@settings(max_examples=300, deadline=None)
@given(counts=st.lists(st.integers(0, 9), min_size=1, max_size=40).filter(lambda c: sum(c) > 0),
       pct=st.sampled_from([50, 68, 70, 80, 100]))
def test_value_area_contains_poc_and_share(counts, pct):
    arr = np.array(counts, dtype=np.int64)
    poc = rules.select_poc(arr)
    assert arr[poc] == arr.max()
    lo, hi, inside = rules.value_area(arr, poc, pct)
    assert lo <= poc <= hi
    assert inside == int(arr[lo:hi + 1].sum())
    assert inside * 100 >= pct * int(arr.sum())
