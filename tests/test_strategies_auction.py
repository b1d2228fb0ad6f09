"""The auction strategies (IB acceptance, 80 % rule, open-drive continuation, responsive value
fade) on real NSE 1-minute index data (../shared/data/nse-index-1min).

Each strategy is compared, over every recorded day, with an independent reference written here
from its rule text: TPO periods and the IB from the raw vendor bars (the minute label is the bar's
close, see ``tests/test_strategies.py``), and the prior day's value area and the open type from
the *batch* Market Profile path (:func:`trading_core.profile_batch.compute_profiles` over the
whole history), not from the live engine the strategies run. Named days show where each fires and
where it must not.
"""

from __future__ import annotations

import datetime as dt
import functools

import polars as pl
import pytest

from strategy.eighty_percent import EightyPercentRule
from strategy.ib_acceptance import IBAcceptance
from strategy.open_drive import OpenDrive
from strategy.value_fade import ValueFade
from tests.test_strategies import KEYS, _midnight_ms, as_tuples, day, load_days, reference_signals
from trading_core import profile_rules as rules
from trading_core.messages import Candle, Signal
from trading_core.profile_batch import compute_profiles
from trading_core.sessions import SessionCalendar

IST = dt.timezone(dt.timedelta(hours=5, minutes=30))
OPEN = 9 * 60 + 15
NIFTY, BANK = KEYS["NIFTY"], KEYS["BANKNIFTY"]


# --- independent reference -------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def batch_profiles(symbol: str) -> dict:
    """{YYYYMMDD: AuctionProfile} of every recorded day, from the batch path."""
    bars = [b.candle() for bars in load_days(symbol).values() for b in bars]
    df = pl.DataFrame({"ts": [c.ts for c in bars], "open": [c.open for c in bars],
                       "high": [c.high for c in bars], "low": [c.low for c in bars],
                       "close": [c.close for c in bars]})
    return {p.session.replace("-", ""): p for p in compute_profiles(df, KEYS[symbol])}


class Period:
    """A TPO period from the raw bars: ``index`` (0 = A), OHLC, ``end_ms``."""

    def __init__(self, index: int, bars, open_ms: int):
        self.index, self.letter = index, "ABCDEFGHIJKLM"[index]
        self.open, self.close = bars[0].open, bars[-1].close
        self.high, self.low = max(b.high for b in bars), min(b.low for b in bars)
        self.end_ms = min(open_ms + (index + 1) * 1_800_000, open_ms + 375 * 60_000)


@functools.lru_cache(maxsize=None)
def session(symbol: str, date: str) -> dict | None:
    """A regular session's bars, periods, open, and the prior day (batch path; None if that day
    is more than 6 calendar days back, i.e. not recorded)."""
    mid = _midnight_ms(date)
    if SessionCalendar().spec((mid + 19_800_000) // 86_400_000).kind != "regular":
        return None
    bars = [b for b in load_days(symbol)[date] if OPEN < b.label <= 15 * 60 + 30]
    if not bars:
        return None
    groups: dict[int, list] = {}
    for b in bars:                                   # label L is the bar L-1 .. L
        groups.setdefault((b.label - 1 - OPEN) // 30, []).append(b)
    profile = batch_profiles(symbol)[date]
    prior = profile.prior
    if prior is not None and not 0 < (dt.date(int(date[:4]), int(date[4:6]), int(date[6:]))
                                      - dt.date.fromisoformat(prior.date)).days <= 6:
        prior = None
    return {"bars": bars, "full": bars[0].label == OPEN + 1, "mid": mid, "open": bars[0].open,
            "periods": [Period(i, groups[i], mid + OPEN * 60_000) for i in sorted(groups)],
            "profile": profile, "prior": prior}


def at(d: dict, hhmm: str) -> int:
    return d["mid"] + (int(hhmm[:2]) * 60 + int(hhmm[3:])) * 60_000


def windows(periods, n):
    """(period, the n consecutive periods ending with it) for every period that has them."""
    for i, p in enumerate(periods):
        w = periods[max(0, i - n + 1):i + 1]
        if len(w) == n and w[0].index == p.index - n + 1:
            yield p, w


def ref_ib_acceptance(symbol, date, acceptance_periods=2, stop="ib_mid", target_ib_multiple=1.0,
                      max_signals_per_day=2, last_entry="14:30"):
    d = session(symbol, date)
    if not d or not d["full"]:
        return []
    ib = [p for p in d["periods"] if p.index < 2]
    hi, lo = max(p.high for p in ib), min(p.low for p in ib)
    out, fired = [], set()
    for p, w in windows(d["periods"], acceptance_periods):
        if w[0].index < 2 or len(fired) >= max_signals_per_day or p.end_ms > at(d, last_entry) or hi <= lo:
            continue
        rng, e = hi - lo, p.close
        if "BUY" not in fired and all(x.close > hi for x in w):
            s = {"ib_mid": (hi + lo) / 2, "ib_opposite": lo, "acceptance_extreme": min(x.low for x in w)}[stop]
            t = hi + target_ib_multiple * rng
            if s < e < t:
                fired.add("BUY")
                out.append(("BUY", p.end_ms, e, s, t))
        elif "SELL" not in fired and all(x.close < lo for x in w):
            s = {"ib_mid": (hi + lo) / 2, "ib_opposite": hi, "acceptance_extreme": max(x.high for x in w)}[stop]
            t = lo - target_ib_multiple * rng
            if t < e < s:
                fired.add("SELL")
                out.append(("SELL", p.end_ms, e, s, t))
    return out


def ref_eighty_percent(symbol, date, acceptance_periods=2, last_entry="14:30"):
    d = session(symbol, date)
    if not d or not d["full"] or d["prior"] is None:
        return []
    bottom, top = d["prior"].val, d["prior"].vah + d["prior"].row_size
    side = "SELL" if d["open"] >= top else "BUY" if d["open"] < bottom else None
    if side is None:
        return []
    for p, w in windows(d["periods"], acceptance_periods):
        if p.end_ms > at(d, last_entry) or not all(bottom <= x.close < top for x in w):
            continue
        s, t = ((max([top] + [x.high for x in w]), bottom) if side == "SELL"
                else (min([bottom] + [x.low for x in w]), top))
        if min(s, t) < p.close < max(s, t):
            return [(side, p.end_ms, p.close, s, t)]
    return []


def ref_open_drive(symbol, date, include_test_drive=False, require_outside_value=False, stop="a_extreme",
                   target_multiple=1.0):
    d = session(symbol, date)
    if not d or not d["full"]:
        return []
    a, open_type = d["periods"][0], d["profile"].open_type
    up = {rules.OPEN_DRIVE_UP} | ({rules.OPEN_TEST_DRIVE_UP} if include_test_drive else set())
    down = {rules.OPEN_DRIVE_DOWN} | ({rules.OPEN_TEST_DRIVE_DOWN} if include_test_drive else set())
    if open_type in up:
        side, s = "BUY", a.low if stop == "a_extreme" else d["open"]
    elif open_type in down:
        side, s = "SELL", a.high if stop == "a_extreme" else d["open"]
    else:
        return []
    if require_outside_value and d["profile"].open_vs_prior_value != ("above" if side == "BUY" else "below"):
        return []
    t = a.close + target_multiple * (a.high - a.low) * (1 if side == "BUY" else -1)
    return [(side, a.end_ms, a.close, s, t)] if min(s, t) < a.close < max(s, t) else []


def ref_value_fade(symbol, date, max_probe_rows=4, stop_buffer_rows=1, target="poc",
                   require_open_inside_value=True, first_entry="09:45", last_entry="14:30"):
    d = session(symbol, date)
    if not d or not d["full"] or d["prior"] is None:
        return []
    pr = d["prior"]
    row, bottom, top = pr.row_size, pr.val, pr.vah + pr.row_size
    if require_open_inside_value and not bottom <= d["open"] < top:
        return []
    out, fired, hi, lo, prev = [], set(), float("-inf"), float("inf"), None
    for b in d["bars"]:
        hi, lo = max(hi, b.high), min(lo, b.low)
        pc, prev = prev, b.close
        if pc is None or not at(d, first_entry) <= b.close_ts <= at(d, last_entry):
            continue
        e = b.close
        if "SELL" not in fired and hi >= top and pc >= top and e < top and hi - top <= max_probe_rows * row:
            s, t = hi + stop_buffer_rows * row, pr.poc if target == "poc" else bottom
            if t < e < s:
                fired.add("SELL")
                out.append(("SELL", b.close_ts, e, s, t))
        elif "BUY" not in fired and lo < bottom and pc < bottom and e >= bottom and bottom - lo <= max_probe_rows * row:
            s, t = lo - stop_buffer_rows * row, pr.poc if target == "poc" else top
            if s < e < t:
                fired.add("BUY")
                out.append(("BUY", b.close_ts, e, s, t))
    return out


CASES = {IBAcceptance: ref_ib_acceptance, EightyPercentRule: ref_eighty_percent,
         OpenDrive: ref_open_drive, ValueFade: ref_value_fade}


def run(cls, symbol: str, params=None, dates=None, since: str = "") -> list[Signal]:
    """Feed recorded days to a fresh strategy: all of them from ``since``, or, with ``dates``, the
    ten recorded days before the first of them up to the last (the prior days the rules need)."""
    out: list[Signal] = []
    strat = cls("t", [KEYS[symbol]], params or {}, out.append)
    days = list(load_days(symbol))
    if dates is not None:
        days = [d for d in days if d <= max(dates)]
        first = days.index(min(dates))
        days = days[max(0, first - 10):]
    for d in days:
        if d >= since:
            for b in load_days(symbol)[d]:
                strat.on_candle(b.candle())
    return out


def on(signals: list[Signal], date: str) -> list[tuple]:
    return [t for t in as_tuples(signals) if dt.datetime.fromtimestamp(t[1] / 1000, IST).strftime("%Y%m%d") == date]


def hhmm(ts: int) -> str:
    return dt.datetime.fromtimestamp(ts / 1000, IST).strftime("%H:%M")


# --- every recorded day ----------------------------------------------------------------------
@pytest.mark.parametrize("cls", list(CASES), ids=lambda c: c.__name__)
def test_every_nifty_day_matches_the_reference(shared_data, cls):
    got = as_tuples(run(cls, "NIFTY"))
    expected = [s for d in load_days("NIFTY") for s in CASES[cls]("NIFTY", d)]
    assert got == expected
    assert len(got) >= 40 and {s[0] for s in got} == {"BUY", "SELL"}
    per_day = [dt.datetime.fromtimestamp(s[1] / 1000, IST).date() for s in got]
    assert max(per_day.count(x) for x in per_day) <= 2


@pytest.mark.parametrize("cls,params", [
    (IBAcceptance, {"acceptance_periods": 3, "stop": "acceptance_extreme", "target_ib_multiple": 2.0,
                    "max_signals_per_day": 1, "last_entry": "13:30"}),
    (IBAcceptance, {"stop": "ib_opposite"}),
    (EightyPercentRule, {"acceptance_periods": 1, "last_entry": "12:00"}),
    (OpenDrive, {"include_test_drive": True, "stop": "open", "target_multiple": 0.5}),
    (OpenDrive, {"require_outside_value": True}),
    (ValueFade, {"max_probe_rows": 10, "stop_buffer_rows": 0, "target": "other_side",
                 "require_open_inside_value": False, "first_entry": "10:15", "last_entry": "15:00"}),
], ids=lambda x: x.__name__ if isinstance(x, type) else "")
def test_params_on_banknifty_2022(shared_data, cls, params):
    dates = [d for d in load_days("BANKNIFTY") if d.startswith("2022")]
    got = [s for s in as_tuples(run(cls, "BANKNIFTY", params, since="20211220"))
           if s[1] >= _midnight_ms(dates[0])]
    expected = [s for d in dates for s in CASES[cls]("BANKNIFTY", d, **params)]
    assert got == expected and len(got) >= 10


# --- named days ---------------------------------------------------------------------------------
def test_ib_acceptance_budget_day_2021_02_01(shared_data):
    """The trend day: periods E and F closed above the IB high (13773.8), C and D had not:
    BUY at the end of F (12:15), the IB doubled as target."""
    [s] = on(run(IBAcceptance, "NIFTY", dates=["20210201"]), "20210201")
    assert (s[0], hhmm(s[1])) == ("BUY", "12:15") and s[2] == 13807.45
    assert s[3] == pytest.approx((13661.75 + 13773.8) / 2) and s[4] == pytest.approx(13773.8 + (13773.8 - 13661.75))
    periods = session("NIFTY", "20210201")["periods"]
    assert [p.close > 13773.8 for p in periods[2:6]] == [False, False, True, True]


@pytest.mark.parametrize("date", ["20220106", "20220110", "20220113"])
def test_ib_breakout_without_acceptance_gives_nothing(shared_data, date):
    """The 1-minute close beyond the IB came (ib_breakout fires) but no two periods held there."""
    bars = day("NIFTY", date)
    assert reference_signals(bars)
    assert on(run(IBAcceptance, "NIFTY", dates=[date]), date) == []


def test_eighty_percent_2022_11_09(shared_data):
    """Opened at 18296.4, above 2022-11-07's value (18095-18190; 11-08 was a holiday); D and E
    closed back inside: SELL at 11:45 targeting the prior VAL."""
    d = session("NIFTY", "20221109")
    pr = d["prior"]
    assert (pr.date, pr.val, pr.vah + pr.row_size, d["open"]) == ("2022-11-07", 18095.0, 18190.0, 18296.4)
    assert [p.close < 18190.0 for p in d["periods"][:5]] == [False, False, False, True, True]
    [s] = on(run(EightyPercentRule, "NIFTY", dates=["20221109"]), "20221109")
    assert (s[0], hhmm(s[1]), s[2], s[4]) == ("SELL", "11:45", 18181.3, 18095.0)
    assert s[3] == max(18190.0, d["periods"][3].high, d["periods"][4].high)


def test_eighty_percent_needs_the_re_entry(shared_data):
    """2022-01-03 opened above prior value and stayed above it: nothing. Without the prior day
    (the strategy started on that day) nothing either."""
    d = session("NIFTY", "20220103")
    top = d["prior"].vah + d["prior"].row_size
    assert d["open"] >= top and all(p.close >= top for p in d["periods"])
    assert on(run(EightyPercentRule, "NIFTY", dates=["20220103"]), "20220103") == []
    out: list[Signal] = []
    strat = EightyPercentRule("t", [NIFTY], {}, out.append)
    for b in day("NIFTY", "20221109"):
        strat.on_candle(b.candle())
    assert out == [] and strat.books[NIFTY].prior is None


def test_open_drive_2022_11_09_and_test_drives(shared_data):
    """2022-11-09 was an Open Drive Down: SELL at 09:45. 2022-01-03 an Open Test Drive Up: only
    with include_test_drive."""
    assert batch_profiles("NIFTY")["20221109"].open_type == rules.OPEN_DRIVE_DOWN
    [s] = on(run(OpenDrive, "NIFTY", dates=["20221109"]), "20221109")
    a = session("NIFTY", "20221109")["periods"][0]
    assert (s[0], hhmm(s[1]), s[2], s[3]) == ("SELL", "09:45", a.close, a.high)
    assert s[4] == pytest.approx(a.close - (a.high - a.low))
    assert batch_profiles("NIFTY")["20220103"].open_type == rules.OPEN_TEST_DRIVE_UP
    assert on(run(OpenDrive, "NIFTY", dates=["20220103"]), "20220103") == []
    [t] = on(run(OpenDrive, "NIFTY", {"include_test_drive": True}, dates=["20220103"]), "20220103")
    assert t[0] == "BUY" and hhmm(t[1]) == "09:45"


def test_value_fade_rejected_probe_2022_01_31(shared_data):
    """Opened inside value; probed above its top (17370) to 17410 (8 points: within 4 rows of 5)
    and closed back inside at 12:08: SELL, stop a row beyond the high, target the prior POC."""
    [s] = on(run(ValueFade, "NIFTY", dates=["20220131"]), "20220131")
    assert (s[0], hhmm(s[1]), s[2], s[3], s[4]) == ("SELL", "12:08", 17369.7, 17380.6, 17335.0)


def test_value_fade_deep_probe_is_initiative_2022_01_17(shared_data):
    """The high went 71.55 points above value (more than 4 rows): not faded; with 50 rows it is."""
    d = session("NIFTY", "20220117")
    top = d["prior"].vah + d["prior"].row_size
    assert max(b.high for b in d["bars"]) - top == pytest.approx(71.55)
    assert on(run(ValueFade, "NIFTY", dates=["20220117"]), "20220117") == []
    [s] = on(run(ValueFade, "NIFTY", {"max_probe_rows": 50}, dates=["20220117"]), "20220117")
    assert s[0] == "SELL"


def test_special_sessions_give_nothing(shared_data):
    """Muhurat evenings and the extended outage day are not regular sessions."""
    for cls in CASES:
        sig = run(cls, "NIFTY", {"include_test_drive": True} if cls is OpenDrive else None, dates=["20221024"])
        for date in ("20210224", "20211104", "20221024"):
            assert on(sig, date) == [], (cls.__name__, date)


# --- robustness ---------------------------------------------------------------------------------
def test_ignores_other_instruments_duplicates_and_non_final(shared_data):
    expected = on(run(EightyPercentRule, "NIFTY", dates=["20221109"]), "20221109")
    out: list[Signal] = []
    strat = EightyPercentRule("t", [NIFTY], {}, out.append)
    bank = {b.label: b for b in day("BANKNIFTY", "20221109")}
    for d, bars in load_days("NIFTY").items():
        if not "20221020" <= d <= "20221109":
            continue
        for b in bars:
            c = b.candle()
            if d == "20221109":
                if b.label in bank:
                    strat.on_candle(bank[b.label].candle())
                strat.on_candle(Candle(**{**{f: getattr(c, f) for f in c.__struct_fields__},
                                          "final": False, "close": 1.0}))
            strat.on_candle(c)
            strat.on_candle(c)
    assert as_tuples(out)[-1:] == expected and out[-1].strategy == "t"


def test_params_are_checked():
    with pytest.raises(ValueError, match=r"^params\.last_entry: '10:30' is before the first possible acceptance"):
        IBAcceptance("t", [NIFTY], {"last_entry": "10:30"}, print)
    with pytest.raises(ValueError, match=r"^params\.last_entry: "):
        ValueFade("t", [NIFTY], {"first_entry": "12:00", "last_entry": "11:00"}, print)
    with pytest.raises(ValueError, match=r"^params\.stop: "):
        OpenDrive("t", [NIFTY], {"stop": "somewhere"}, print)
    with pytest.raises(ValueError, match=r"^params\.acceptance_periods: "):
        EightyPercentRule("t", [NIFTY], {"acceptance_periods": 0}, print)
