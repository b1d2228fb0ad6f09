"""Hand-checked small cases for each Auction Market Theory rule (trading_core.profile_rules),
the session calendar and the per-instrument configuration."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest

from trading_core import profile_rules as rules
from trading_core.profile_config import ProfileConfig, config_for, derive_row_size
from trading_core.sessions import (EXTENDED, INFERRED, MUHURAT, SessionCalendar, SpecialSession,
                                   fmt_ist, infer_sessions, ist_day, ist_ms, period_letter)

CFG = ProfileConfig()


def arr(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.int64)


# --- TPO histogram (CBOT: letters from the period's low to its high) ----------------------------
def test_tpo_histogram_fills_each_period_range():
    # periods over rows: A 10..12, B 11..13, C 12..12
    r0, counts = rules.tpo_histogram(arr(10, 11, 12), arr(12, 13, 12))
    assert r0 == 10
    assert counts.tolist() == [1, 2, 3, 1]


def test_tpo_histogram_gap_between_periods_leaves_empty_rows():
    r0, counts = rules.tpo_histogram(arr(0, 5), arr(1, 6))
    assert (r0, counts.tolist()) == (0, [1, 1, 0, 0, 0, 1, 1])


# --- POC and its tie rule ----------------------------------------------------------------------
def test_poc_single_maximum():
    assert rules.select_poc(arr(1, 4, 2)) == 1


def test_poc_tie_goes_to_row_nearest_middle():
    # n=6, middle between rows 2 and 3; candidates 0, 3, 5 -> 3 is nearest
    assert rules.select_poc(arr(5, 1, 1, 5, 2, 5)) == 3


def test_poc_tie_equidistant_goes_to_lower_row():
    # n=5, middle row 2; candidates 1 and 3 both one row away -> lower (1)
    assert rules.select_poc(arr(3, 5, 2, 5, 1)) == 1


def test_poc_one_row_day():
    assert rules.select_poc(arr(4)) == 0


# --- value area (CBOT pairs, Dalton) -------------------------------------------------------------
def test_value_area_pairs():
    # total 32, 70% = 22.4. POC row 4 (8). Up pair 6+4=10 > down pair 5+3=8 -> add up (18).
    # Then up 2+1=3 < down 5+3=8 -> add down (26 >= 22.4). VA rows 2..6.
    assert rules.value_area(arr(1, 2, 3, 5, 8, 6, 4, 2, 1), 4) == (2, 6, 26)


def test_value_area_tie_takes_upper_pair():
    # total 15 (70% = 10.5); POC row 2 (5); pairs 3+2 vs 3+2 tie -> upper first (10), then lower.
    assert rules.value_area(arr(2, 3, 5, 3, 2), 2) == (0, 4, 15)
    # stops after the upper pair when it already reaches 70 %
    assert rules.value_area(arr(1, 3, 6, 3, 1), 2, 70) == (2, 4, 10)


def test_value_area_fewer_than_two_rows_compares_what_remains():
    # total 22 (15.4); POC row 1 (9). Up 3+3=6 vs down (one row) 4 -> up (15);
    # then up (one row) 3 vs down 4 -> down (19).
    assert rules.value_area(arr(4, 9, 3, 3, 3), 1) == (0, 3, 19)


def test_value_area_exhausted_side():
    # POC at the top (total 13, 70% = 9.1): only the lower side remains; its pair 2+1 is added
    assert rules.value_area(arr(1, 1, 2, 9), 3) == (1, 3, 12)


def test_value_area_one_row_day():
    assert rules.value_area(arr(3), 0) == (0, 0, 3)


def test_value_area_pairs_see_past_an_empty_row():
    # One-row-at-a-time growth (as in the PyPI marketprofile package) would compare row 4 (0)
    # with row 2 (3). The pair method compares rows 4+5 (0+3) with rows 2+1 (3+4).
    counts = arr(0, 4, 3, 4, 0, 3)
    lo, hi, inside = rules.value_area(counts, rules.select_poc(counts))
    # POC: rows 1 and 3 tie (4); middle of 6 rows is 2.5 -> row 3. Up pair rows 4,5 = 3,
    # down pair rows 2,1 = 7 -> down (11 >= 9.8).
    assert (lo, hi, inside) == (1, 3, 11)


# --- tails, single prints, poor extremes -------------------------------------------------------
def test_buying_tail_and_inner_single_prints():
    ex = rules.extremes(arr(1, 1, 2, 3, 1, 1, 3, 2, 1))
    assert (ex.bottom_run, ex.top_run) == (2, 1)
    assert ex.excess_low and not ex.excess_high
    assert not ex.poor_low and not ex.poor_high
    assert ex.singles == ((4, 5),)


def test_selling_tail_and_poor_low():
    ex = rules.extremes(arr(2, 1, 3, 1, 1))
    assert ex.poor_low and not ex.poor_high
    assert ex.excess_high and ex.top_run == 2
    assert ex.singles == ((1, 1),)


def test_only_one_period_has_no_tails_or_singles():
    ex = rules.extremes(arr(1, 1, 1, 1))
    assert ex.singles == () and not ex.excess_high and not ex.excess_low


def test_one_row_day_with_two_tpos_is_poor_both_ends():
    ex = rules.extremes(arr(2))
    assert ex.poor_high and ex.poor_low and ex.singles == ()


# --- open types (Dalton) -------------------------------------------------------------------------
@pytest.mark.parametrize("o,h,lo,c,hk,lk,expected", [
    (100, 200, 100, 190, 5, 0, rules.OPEN_DRIVE_UP),             # opens at the low, closes high
    (200, 200, 100, 110, 0, 5, rules.OPEN_DRIVE_DOWN),
    (120, 200, 100, 190, 5, 2, rules.OPEN_TEST_DRIVE_UP),        # probe 20 % down first, then drive
    (180, 200, 100, 110, 2, 5, rules.OPEN_TEST_DRIVE_DOWN),
    (150, 200, 100, 160, 5, 2, rules.OPEN_REJECTION_REVERSE_UP),  # 50 % down first, back through open
    (150, 200, 100, 140, 2, 5, rules.OPEN_REJECTION_REVERSE_DOWN),
    (150, 200, 100, 150, 2, 5, rules.OPEN_AUCTION_IN_RANGE),      # rotation around the open
    (120, 200, 100, 150, 5, 2, rules.OPEN_AUCTION_IN_RANGE),      # probe, but no drive
])
def test_open_types(o, h, lo, c, hk, lk, expected):
    assert rules.classify_open(o, h, lo, c, hk, lk, 300, 50, CFG) == expected


def test_open_auction_out_of_range_and_without_prior():
    assert rules.classify_open(150, 200, 100, 150, 2, 5, 120, 50, CFG) == rules.OPEN_AUCTION_OUT_OF_RANGE
    assert rules.classify_open(150, 200, 100, 150, 2, 5, None, None, CFG) == rules.OPEN_AUCTION
    assert rules.classify_open(150, 150, 150, 150, 0, 0, None, None, CFG) == rules.OPEN_AUCTION


# --- day types (Dalton) --------------------------------------------------------------------------
def _day(high, low, close, ib_high, ib_low, counts=None, typical=None):
    counts = arr(*(counts or [2] * ((high - low) // 5 + 1)))
    ex = rules.extremes(counts)
    return rules.classify_day(high, low, close, ib_high, ib_low, counts, low // 5, 5, ex.singles,
                              typical, CFG)


def test_day_normal_no_extension():
    assert _day(200, 100, 150, 200, 100, typical=150) == rules.NORMAL


def test_day_non_trend_narrow_range():
    assert _day(200, 100, 150, 200, 100, typical=300) == rules.NON_TREND


def test_day_normal_variation_small_extension():
    assert _day(250, 100, 240, 200, 100) == rules.NORMAL_VARIATION        # 0.5 IB up


def test_day_extension_below_threshold_is_not_extension():
    assert _day(205, 100, 200, 200, 100) == rules.NORMAL                   # 5 % of the IB


def test_day_trend_big_extension_close_at_extreme():
    assert _day(400, 100, 390, 200, 100) == rules.TREND                    # 2 IB up, close at top
    assert _day(400, 100, 250, 200, 100) == rules.NORMAL_VARIATION         # closes mid-range


def test_day_neutral_center_and_extreme():
    assert _day(260, 40, 150, 200, 100) == rules.NEUTRAL_CENTER
    assert _day(260, 40, 250, 200, 100) == rules.NEUTRAL_EXTREME


def test_day_double_distribution():
    # rows of 5 ticks from 100: IB 100..149 (rows 0-9, 3 TPOs each), single prints rows 10-13,
    # upper distribution rows 14-19 (3 TPOs each)
    counts = [3] * 10 + [1] * 4 + [3] * 6
    assert _day(199, 100, 195, 149, 100, counts) == rules.DOUBLE_DISTRIBUTION
    # the same single prints inside the IB do not make it a double distribution
    assert _day(199, 100, 195, 180, 100, counts) != rules.DOUBLE_DISTRIBUTION


# --- prior-day relations -------------------------------------------------------------------------
@pytest.mark.parametrize("today,expected", [
    ((30, 40), "higher"), ((0, 5), "lower"), ((12, 18), "inside"), ((5, 25), "outside"),
    ((15, 25), "overlapping higher"), ((5, 15), "overlapping lower"), ((10, 20), "unchanged"),
])
def test_value_relation(today, expected):
    assert rules.value_relation(today[0], today[1], 10, 20) == expected


def test_position():
    assert [rules.position(p, 10, 20) for p in (9, 10, 20, 21)] == ["below", "inside", "inside", "above"]


# --- sessions ------------------------------------------------------------------------------------
def test_regular_session_and_letters():
    cal = SessionCalendar()
    spec = cal.spec(ist_day(ist_ms("2022-06-01", "12:00")))
    assert spec.open_ms == ist_ms("2022-06-01", "09:15")
    assert spec.close_ms == ist_ms("2022-06-01", "15:30")
    assert spec.regular and spec.trading_day
    assert spec.n_periods(30 * 60_000) == 13                       # A..M, M = 15:15-15:30
    assert [period_letter(i) for i in (0, 1, 11, 12, 26)] == ["A", "B", "L", "M", "a"]
    assert fmt_ist(spec.open_ms) == "2022-06-01 09:15:00"


def test_special_sessions_from_config():
    cal = SessionCalendar()
    outage = cal.spec(ist_day(ist_ms("2021-02-24", "12:00")))
    assert outage.kind == EXTENDED and outage.trading_day and not outage.regular
    assert outage.close_ms == ist_ms("2021-02-24", "17:00")
    assert outage.in_break(ist_ms("2021-02-24", "15:37")) and not outage.in_break(ist_ms("2021-02-24", "15:45"))
    muhurat = cal.spec(ist_day(ist_ms("2021-11-04", "12:00")))
    assert muhurat.kind == MUHURAT and not muhurat.trading_day
    assert muhurat.open_ms == ist_ms("2021-11-04", "18:15")
    holiday = SessionCalendar(special={dt.date(2022, 1, 26): SpecialSession("09:15", "15:30", "holiday")})
    assert holiday.spec(ist_day(ist_ms("2022-01-26", "10:00"))).n_periods(1800_000) == 0


def test_infer_unlisted_muhurat_session_from_bar_times():
    cal = SessionCalendar(special={})
    # bar open times as in the index files on a Muhurat evening: 18:07 (pre-open), 18:15..19:15, 19:17
    minutes = [18 * 60 + 7] + list(range(18 * 60 + 15, 19 * 60 + 16)) + [19 * 60 + 17]
    ts = [ist_ms("2022-10-24", m) for m in minutes] + [ist_ms("2022-10-25", "10:00")]
    inferred = infer_sessions(ts, cal)
    assert list(inferred) == [dt.date(2022, 10, 24)]
    sp = inferred[dt.date(2022, 10, 24)]
    assert (sp.open, sp.close, sp.kind) == ("18:15", "19:15", INFERRED)


# --- configuration ---------------------------------------------------------------------------------
def test_default_row_sizes():
    assert config_for("NSE_INDEX|Nifty 50").row_size == 5.0
    assert config_for("NSE_INDEX|Nifty Bank").row_size == 10.0
    fut = config_for("NSE_FO|BANKNIFTY22NOVFUT")
    assert (fut.row_size, fut.tick_size) == (10.0, 0.05)
    assert config_for("NSE_FO|NIFTY22NOVFUT").row_size == 5.0
    with pytest.raises(ValueError):
        config_for("NSE_INDEX|Nifty 500")
    assert config_for("NSE_INDEX|Nifty 500", recent_range=150.0).row_size == 5.0


def test_derive_row_size_nice_multiples_of_tick():
    assert derive_row_size(0.05, 150.0) == 5.0        # 3.75 -> 5
    assert derive_row_size(0.05, 400.0) == 10.0
    assert derive_row_size(0.05, 1.0) == 0.05
    with pytest.raises(ValueError):
        derive_row_size(0.05, 0)


def test_config_validation():
    with pytest.raises(ValueError):
        ProfileConfig(row_size=5.03, tick_size=0.05)
    with pytest.raises(ValueError):
        ProfileConfig(value_area_percent=0)
    assert ProfileConfig(row_size=5, tick_size=0.05).ticks_per_row == 100


def test_calendar_from_plain_config_values():
    cal = SessionCalendar.from_config({
        "2024-01-20": {"open": "09:15", "close": "15:30", "kind": "extended", "note": "Saturday",
                       "breaks": [["11:00", "11:30"]]},
        "2024-11-01": ("18:00", "19:00", "muhurat")})
    sat = cal.spec(ist_day(ist_ms("2024-01-20", "10:00")))
    assert sat.kind == EXTENDED and sat.in_break(ist_ms("2024-01-20", "11:10")) and sat.note == "Saturday"
    assert cal.spec(ist_day(ist_ms("2024-11-01", "10:00"))).open_ms == ist_ms("2024-11-01", "18:00")
    assert cal.spec(ist_day(ist_ms("2021-02-24", "10:00"))).kind == EXTENDED     # NSE defaults kept
    with pytest.raises(ValueError):
        SessionCalendar.from_config({"2024-01-20": ("09:15", "25:00", "regular")})
    with pytest.raises(ValueError):
        SessionCalendar.from_config({"2024-01-20": ("09:15", "15:30", "party")})
