"""The profile on every real session in ../shared/data, checked against an independent, deliberately
plain computation written from the rules (integer paise parsed from the text, Python loops, no
engine code), plus incremental == batch == DuckDB on the same files. Writes a table of real days
to test-artifacts/profile_real_days.md for a trader to check against a chart."""

from __future__ import annotations

import csv
import datetime as dt
from collections import defaultdict
from pathlib import Path

import duckdb
import polars as pl
import pytest

from tests.conftest import FO_TICKS, FUT_1MIN, INDEX_1MIN, ROOT
from trading_core.profile import LiveAuctionEngine
from trading_core.profile_batch import compute_profiles, profile_from_duckdb
from trading_core.profile_config import config_for

IST = dt.timezone(dt.timedelta(hours=5, minutes=30))

# Session windows written down from the data README and NSE's announcements, in IST minutes:
# (open, close, halts). A bar belongs to the session when its minute (label - 1 .. label) lies
# inside [open, close) and outside every halt.
REGULAR = (9 * 60 + 15, 15 * 60 + 30, ())
SPECIAL = {
    "20210224": (9 * 60 + 15, 17 * 60, ((11 * 60 + 40, 15 * 60 + 45),)),   # outage, extended
    "20211104": (18 * 60 + 15, 19 * 60 + 15, ()),                          # Muhurat
    "20221024": (18 * 60 + 15, 19 * 60 + 15, ()),                          # Muhurat
}


def paise(text: str) -> int:
    whole, _, frac = text.partition(".")
    return int(whole) * 100 + int((frac + "00")[:2])


MONTHS = ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"]


def index_files(suffix: str) -> list[Path]:
    """Monthly index files in calendar order (their names sort alphabetically: APR before JAN)."""
    files = INDEX_1MIN.glob(f"*_{suffix}.txt")
    return sorted(files, key=lambda f: (f.name[:4], MONTHS.index(f.name[5:8])))


def read_bars(paths):
    """[(date 'YYYYMMDD', label minute, o, h, l, c (paise), volume)] in file order."""
    out = []
    for path in paths:
        with open(path, newline="") as f:
            for sym, d, hhmm, o, h, lo, c, v, _oi in csv.reader(f):
                out.append((d, int(hhmm[:2]) * 60 + int(hhmm[3:]), paise(o), paise(h), paise(lo),
                            paise(c), int(v)))
    return out


def read_ticks(path):
    """[(date, second of day, price paise, qty)] in file order."""
    out = []
    with open(path, newline="") as f:
        for d, hms, price, qty, _oi in csv.reader(f):
            out.append((d, int(hms[:2]) * 3600 + int(hms[3:5]) * 60 + int(hms[6:]), paise(price), int(qty)))
    return out


def epoch_ms(d: str, seconds: int) -> int:
    base = dt.datetime(int(d[:4]), int(d[4:6]), int(d[6:]), tzinfo=IST)
    return int(base.timestamp()) * 1000 + seconds * 1000


# --- the independent computation --------------------------------------------------------------------
def poc_and_value_area(counts: dict[int, int]):
    """POC (most, ties to the middle of the range, then lower) and the CBOT 70 % value area,
    grown by pairs of rows. ``counts``: row -> amount. Returns (poc, val, vah) rows."""
    lo_row, hi_row = min(counts), max(counts)
    rows = list(range(lo_row, hi_row + 1))
    amount = [counts.get(r, 0) for r in rows]
    best = max(amount)
    middle2 = lo_row + hi_row                      # twice the middle row
    poc = min((r for r, a in zip(rows, amount) if a == best), key=lambda r: (abs(2 * r - middle2), r))
    total = sum(amount)
    low = high = poc
    inside = counts.get(poc, 0)
    while inside * 10 < 7 * total:
        above = [counts.get(r, 0) for r in (high + 1, high + 2) if r <= hi_row]
        below = [counts.get(r, 0) for r in (low - 1, low - 2) if r >= lo_row]
        if above and (not below or sum(above) >= sum(below)):
            high += len(above)
            inside += sum(above)
        else:
            low -= len(below)
            inside += sum(below)
    return poc, low, high


def independent_bar_sessions(bars, row_paise: int):
    """{date: (tpo_poc, tpo_val, tpo_vah, vol_poc, vol_val, vol_vah or None)} in rows."""
    periods = defaultdict(dict)           # date -> period -> [low, high]
    volume = defaultdict(lambda: defaultdict(int))
    for d, label, o, h, lo, c, v in bars:
        open_m, close_m, halts = SPECIAL.get(d, REGULAR)
        start = label - 1
        if not (open_m <= start < close_m) or any(a <= start < b for a, b in halts):
            continue
        k = (start - open_m) // 30
        hi, low = max(h, o, c), min(lo, o, c)
        rng = periods[d].setdefault(k, [low, hi])
        rng[0], rng[1] = min(rng[0], low), max(rng[1], hi)
        if v > 0:                          # spread evenly over the bar's rows, remainder to the lowest
            r_lo, r_hi = low // row_paise, hi // row_paise
            n = r_hi - r_lo + 1
            for i, r in enumerate(range(r_lo, r_hi + 1)):
                volume[d][r] += v // n + (1 if i < v % n else 0)
    out = {}
    for d, per in periods.items():
        tpo = defaultdict(int)
        for low, hi in per.values():
            for r in range(low // row_paise, hi // row_paise + 1):
                tpo[r] += 1
        vol = {r: a for r, a in volume[d].items() if a}
        out[d] = poc_and_value_area(tpo) + (poc_and_value_area(vol) if vol else (None,) * 3)
    return out


def engine_rows(p, row_paise: int):
    def row(x):
        return None if x is None else round(x * 100) // row_paise
    vol = (row(p.volume_poc), row(p.volume_val), row(p.volume_vah)) if p.volume_source != "tpo" else (None,) * 3
    return (row(p.poc), row(p.val), row(p.vah)) + vol


# --- fixtures ---------------------------------------------------------------------------------------
INDEX = {"NIFTY": ("NSE_INDEX|Nifty 50", "NIFTY"), "BNF": ("NSE_INDEX|Nifty Bank", "BANKNIFTY")}


@pytest.fixture(scope="module", params=sorted(INDEX))
def index_data(request, shared_data):
    key, _ = INDEX[request.param]
    bars = read_bars(index_files(request.param))
    return key, bars


def bars_frame(bars) -> pl.DataFrame:
    return pl.DataFrame({
        "ts": [epoch_ms(d, (label - 1) * 60) for d, label, *_ in bars],
        "open": [b[2] / 100 for b in bars], "high": [b[3] / 100 for b in bars],
        "low": [b[4] / 100 for b in bars], "close": [b[5] / 100 for b in bars],
        "volume": [b[6] for b in bars]})


def run_engine(key: str, frame: pl.DataFrame, **kw):
    engine = LiveAuctionEngine(key, keep_sessions=10_000, **kw)
    for row in frame.iter_rows():
        engine.on_bar(*row)
    return engine.history + [engine.profile]


# --- tests -------------------------------------------------------------------------------------------
def test_index_sessions_match_independent_computation(index_data):
    key, bars = index_data
    cfg = config_for(key)
    row_paise = round(cfg.row_size * 100)
    expected = independent_bar_sessions(bars, row_paise)
    frame = bars_frame(bars)
    incremental = run_engine(key, frame)
    batch = compute_profiles(frame, instrument_key=key)
    assert [p.as_dict() for p in incremental] == [p.as_dict() for p in batch]
    got = {p.session.replace("-", ""): p for p in incremental}
    assert len(got) == len(expected) >= 490
    for d, want in expected.items():
        assert engine_rows(got[d], row_paise) == want, d
    # special days: a sensible profile, or a clear "not a regular session"
    outage, muhurat = got["20210224"], got["20211104"]
    assert outage.session_kind == "extended" and outage.trading_day and outage.prints > 100
    assert muhurat.session_kind == "muhurat" and not muhurat.trading_day
    assert muhurat.day_type == "Not a regular session" and muhurat.preopen is not None
    assert got["20221024"].session_kind == "muhurat"
    # no volume on an index: the volume profile says it fell back to TPOs
    assert all(p.volume_source == "tpo" for p in incremental)
    assert all(p.ib_low <= p.ib_high for p in incremental if p.ib_high is not None)


def test_unlisted_special_sessions_are_inferred_from_the_data(index_data):
    key, bars = index_data
    from trading_core.sessions import SessionCalendar
    frame = bars_frame([b for b in bars if b[0] in ("20221021", "20221024", "20221025")])
    plain = compute_profiles(frame, instrument_key=key, calendar=SessionCalendar(special={}))
    assert plain[1].empty and plain[1].day_type == "Not a regular session"
    inferred = compute_profiles(frame, instrument_key=key, calendar=SessionCalendar(special={}), infer=True)
    assert inferred[1].session_kind == "inferred" and not inferred[1].empty
    assert inferred[1].open_ms == epoch_ms("20221024", (18 * 60 + 15) * 60)
    assert inferred[2].prior.date == "2022-10-21"


def test_futures_volume_profile_matches_independent_computation(shared_data):
    key = "NSE_FO|BANKNIFTY_F1"
    bars = read_bars([FUT_1MIN])
    cfg = config_for(key)
    row_paise = round(cfg.row_size * 100)
    expected = independent_bar_sessions(bars, row_paise)
    frame = bars_frame(bars)
    incremental = run_engine(key, frame)
    con = duckdb.connect()
    con.register("fut", frame)
    from_db = profile_from_duckdb(con, "SELECT ts, open, high, low, close, volume FROM fut ORDER BY ts",
                                  instrument_key=key)
    assert [p.as_dict() for p in incremental] == [p.as_dict() for p in from_db]
    got = {p.session.replace("-", ""): p for p in incremental}
    assert len(got) == len(expected) == 122
    for d, want in expected.items():
        assert engine_rows(got[d], row_paise) == want, d
        assert got[d].volume_source == "bar" and want[3] is not None


@pytest.mark.parametrize("name", ["NIFTY-I", "BANKNIFTY-I", "NIFTY-II", "FINNIFTY-I"])
def test_tick_day_matches_independent_computation(shared_data, name):
    ticks = read_ticks(FO_TICKS / "Futures" / f"{name}.csv")
    key = f"NSE_FO|{name}"
    cfg = config_for(key, row_size=10.0 if name.startswith("BANK") else 5.0)
    row_paise = round(cfg.row_size * 100)
    # independent: session [09:15:00, 15:30:00); leading QTY=1 prints are reference prices
    periods, volume, seen_trade = {}, defaultdict(int), False
    for d, sec, price, qty in ticks:
        if not (9 * 3600 + 15 * 60 <= sec < 15 * 3600 + 30 * 60):
            continue
        if not seen_trade and qty == 1:
            continue
        seen_trade = True
        k = (sec - (9 * 3600 + 15 * 60)) // 1800
        rng = periods.setdefault(k, [price, price])
        rng[0], rng[1] = min(rng[0], price), max(rng[1], price)
        volume[price // row_paise] += qty
    tpo = defaultdict(int)
    for low, hi in periods.values():
        for r in range(low // row_paise, hi // row_paise + 1):
            tpo[r] += 1
    want = poc_and_value_area(tpo) + poc_and_value_area(volume)

    frame = pl.DataFrame({"ts": [epoch_ms(d, s) for d, s, _, _ in ticks],
                          "price": [p / 100 for _, _, p, _ in ticks], "qty": [q for *_, q in ticks]})
    engine = LiveAuctionEngine(key, config=cfg)
    for row in frame.iter_rows():
        engine.on_tick(*row)
    p = engine.profile
    assert engine_rows(p, row_paise) == want
    assert p == compute_profiles(frame, instrument_key=key, config=cfg)[-1]
    assert p.volume_source == "ltq" and p.volume_total == sum(volume.values())
    engine.on_time(epoch_ms(ticks[-1][0], 15 * 3600 + 30 * 60))       # files without a post-close print
    assert engine.profile.closed and engine.profile.day_type_final


def test_write_real_days_table(shared_data):
    """A small table of real days for a trader to check against a chart."""
    nifty = compute_profiles(bars_frame(read_bars(index_files("NIFTY"))),
                             instrument_key="NSE_INDEX|Nifty 50")
    fut = compute_profiles(bars_frame(read_bars([FUT_1MIN])), instrument_key="NSE_FO|BANKNIFTY_F1")
    ticks = read_ticks(FO_TICKS / "Futures" / "NIFTY-I.csv")
    tick_day = compute_profiles(pl.DataFrame({"ts": [epoch_ms(d, s) for d, s, _, _ in ticks],
                                              "price": [p / 100 for _, _, p, _ in ticks],
                                              "qty": [q for *_, q in ticks]}),
                                instrument_key="NSE_FO|NIFTY-I")
    by_date = {p.session: p for p in nifty}
    chosen = [("NIFTY 50 (index)", by_date[d]) for d in
              ("2021-02-01", "2021-02-24", "2021-11-04", "2022-06-02", "2022-06-08", "2022-06-16",
               "2022-06-23", "2022-06-30")]
    chosen += [("BANKNIFTY fut", {p.session: p for p in fut}["2019-01-04"]),
               ("NIFTY fut (ticks)", tick_day[-1])]
    lines = ["| Date | Instrument | Open type | Day type | IB (low-high) | POC | VAH | VAL | vPOC |",
             "|---|---|---|---|---|---|---|---|---|"]
    for inst, p in chosen:
        ib = f"{p.ib_low:.2f}-{p.ib_high:.2f}" if p.ib_high is not None else "-"
        vpoc = f"{p.volume_poc:.0f}" if p.volume_source != "tpo" else "(no volume)"
        lines.append(f"| {p.session} | {inst} | {p.open_type} | {p.day_type} | {ib} | {p.poc:.0f} | "
                     f"{p.vah:.0f} | {p.val:.0f} | {vpoc} |")
    out = ROOT / "test-artifacts" / "profile_real_days.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    assert len(lines) >= 7
