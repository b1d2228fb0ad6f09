"""Speed of the Market Profile engine (trading_core.profile) on the recorded data in ../shared/data.

    python3 benchmarks/bench_profile.py            # about a minute; prints a markdown section
    python3 benchmarks/bench_profile.py --append   # ... and appends it to benchmarks/RESULTS.md
    python3 benchmarks/bench_profile.py --quick    # about 20 s, fewer repeats (run_all.py)
    python3 benchmarks/bench_profile.py --smoke    # a couple of seconds (tests/test_benchmarks.py)
    python3 benchmarks/bench_profile.py --json out.json

Measures (single process, one core):
1. incremental ``on_tick`` per tick: real NIFTY-I ticks of 2022-11-18 replayed as 40 consecutive days
   (so session rollovers, which build the finished day's profile, are included);
2. incremental ``on_ticks`` (numpy chunk path) on the same stream, chunks of 1,000 ticks;
3. the full F&O day: 2.78 M ticks of 1,381 contracts merged in time order, one engine each;
4. reading ``engine.profile`` after a change (the lazy POC/VA/IB/... build), per read;
5. the batch path: sessions per second over all index and futures 1-minute files
   (polars DataFrame -> profiles), and through DuckDB (``read_csv`` -> ``.pl()`` -> profiles).
File parsing is excluded from (1)-(4) and reported separately in (5).

``--quick`` runs each measure once or twice instead of 2-5 times. ``--smoke`` feeds 2 days of
NIFTY-I, reads the profile 50 times and profiles one month of NIFTY bars and the futures file
(no full F&O day). Checks: the per-tick and the chunked engine build the same profile; the batch
path gives one session per IST trading date in the bars.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import common  # noqa: E402

import duckdb  # noqa: E402
import numpy as np  # noqa: E402
import polars as pl  # noqa: E402

from trading_core.profile import LiveAuctionEngine  # noqa: E402
from trading_core.profile_batch import compute_profiles  # noqa: E402
from trading_core.profile_config import ProfileConfig, derive_row_size  # noqa: E402

DATA = Path(os.environ.get("AMT_SHARED_DATA", ROOT.parent / "shared" / "data")).resolve()
IST_MS = 19_800_000
DAY_MS = 86_400_000
MONTHS = ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"]


def read_ticks(path: Path) -> pl.DataFrame:
    df = pl.read_csv(path, has_header=False, new_columns=["d", "t", "price", "qty", "oi"],
                     schema_overrides={"d": pl.Utf8, "t": pl.Utf8, "price": pl.Float64, "qty": pl.Int64})
    ts = pl.concat_str(["d", "t"], separator=" ").str.strptime(pl.Datetime("ms"), "%Y%m%d %H:%M:%S")
    return df.select(ts=ts.dt.epoch("ms") - IST_MS, price="price", qty="qty")


def read_bars(paths: list[Path]) -> pl.DataFrame:
    frames = []
    for path in paths:
        df = pl.read_csv(path, has_header=False, new_columns=["s", "d", "t", "o", "h", "l", "c", "v", "oi"],
                         schema_overrides={"d": pl.Utf8, "t": pl.Utf8, "o": pl.Float64, "h": pl.Float64,
                                           "l": pl.Float64, "c": pl.Float64, "v": pl.Int64})
        ts = pl.concat_str(["d", "t"], separator=" ").str.strptime(pl.Datetime("ms"), "%Y%m%d %H:%M")
        frames.append(df.select(ts=ts.dt.epoch("ms") - IST_MS - 60_000, open="o", high="h", low="l",
                                close="c", volume="v"))
    return pl.concat(frames)


def index_files(suffix: str) -> list[Path]:
    files = (DATA / "nse-index-1min").glob(f"*_{suffix}.txt")
    return sorted(files, key=lambda f: (f.name[:4], MONTHS.index(f.name[5:8])))


best_of = common.best_of


def bench(b: common.Bench, mode: str) -> None:
    """Run the measures of the module doc into ``b`` (rows, headlines, checks)."""
    smoke, quick = mode == "smoke", mode == "quick"

    def reps(n: int) -> int:
        return 1 if smoke else max(1, min(n, 2)) if quick else n

    key = "NSE_FO|NIFTY-I"
    day = read_ticks(DATA / "nse-fo-ticks" / "2022-11-18" / "Futures" / "NIFTY-I.csv")
    days = 2 if smoke else 40
    ts = np.concatenate([day["ts"].to_numpy() + k * DAY_MS for k in range(days)])
    price = np.tile(day["price"].to_numpy(), days)
    qty = np.tile(day["qty"].to_numpy(), days)
    ts_l, price_l, qty_l = ts.tolist(), price.tolist(), qty.tolist()
    n = len(ts_l)

    def per_tick():
        e = LiveAuctionEngine(key)
        on_tick = e.on_tick
        for t_ms, px, q in zip(ts_l, price_l, qty_l):
            on_tick(t_ms, px, q)
        return e

    t = best_of(per_tick, reps(5))
    b.row(f"on_tick, real NIFTY-I ticks x {days} days",
          f"{n:,} ticks in {t:.3f} s = **{n / t / 1e6:.2f} M ticks/s** ({t / n * 1e9:.0f} ns/tick)")
    b.headline("engine on_tick, NIFTY-I ticks", n / t, "ticks/s", common.human_rate(n / t, "ticks/s"))

    def chunked():
        e = LiveAuctionEngine(key)
        for a in range(0, n, 1000):
            e.on_ticks(ts[a:a + 1000], price[a:a + 1000], qty[a:a + 1000])
        return e

    t = best_of(chunked, reps(3))
    b.row("on_ticks (numpy), chunks of 1,000", f"{n / t / 1e6:.1f} M ticks/s")
    one, other = per_tick().profile, chunked().profile
    b.check("on_tick and on_ticks build the same profile", one == other,
            f"session {one.session}, POC {one.poc}, VAH {one.vah}, VAL {one.val}, {n:,} ticks")
    if not smoke:
        full_fo_day(b, 1 if quick else 2)

    e = per_tick()
    reads = 50 if smoke else 2000

    def read_profile():
        for i in range(reads):
            e.on_tick(ts_l[-1], price_l[-1], 1)
            e.profile
    t = best_of(read_profile, reps(3))
    b.row("`engine.profile` after a change (lazy rebuild)", f"{t / reads * 1e6:.0f} us per read")

    # batch path: sessions per second
    if smoke:
        nifty = read_bars([DATA / "nse-index-1min" / "2022_JUN_NIFTY.txt"])
        bnf = nifty.clear()
    else:
        nifty, bnf = read_bars(index_files("NIFTY")), read_bars(index_files("BNF"))
    fut = read_bars([DATA / "nse-fut-1min" / "BANKNIFTY_F1_2019-01_2019-06.txt"])
    sessions = []

    def batch():
        sessions.clear()
        sessions.extend(compute_profiles(nifty, instrument_key="NSE_INDEX|Nifty 50"))
        sessions.extend(compute_profiles(bnf, instrument_key="NSE_INDEX|Nifty Bank"))
        sessions.extend(compute_profiles(fut, instrument_key="NSE_FO|BANKNIFTY_F1"))
    t = best_of(batch, reps(3))
    bars = nifty.height + bnf.height + fut.height
    dates = sum(f.select(((pl.col("ts") + IST_MS) // DAY_MS).n_unique()).item() if f.height else 0
                for f in (nifty, bnf, fut))
    b.check("batch: one session per IST trading date", len(sessions) == dates,
            f"{len(sessions):,} sessions, {dates:,} distinct dates in the bars")
    what = ("one month of NIFTY and the futures file" if smoke
            else "all 1-minute files (2021-2022 indices, 2019 futures)")
    b.row(f"batch, polars frames of {what}",
          f"{len(sessions):,} sessions ({bars:,} bars) in {t:.2f} s = **{len(sessions) / t:,.0f} sessions/s**")
    b.headline("batch profile, 1-minute bars", len(sessions) / t, "sessions/s", f"{len(sessions) / t:,.0f} sessions/s")

    con = duckdb.connect()
    path = str(DATA / "nse-fut-1min" / "BANKNIFTY_F1_2019-01_2019-06.txt")
    sql = f"""
        SELECT epoch_ms(strptime(column1 || column2, '%Y%m%d%H:%M')) - 19800000 - 60000 AS ts,
               column3 AS open, column4 AS high, column5 AS low, column6 AS close, column7 AS volume
        FROM read_csv('{path}', header = false, columns = {{'column0': 'VARCHAR', 'column1': 'VARCHAR',
             'column2': 'VARCHAR', 'column3': 'DOUBLE', 'column4': 'DOUBLE', 'column5': 'DOUBLE',
             'column6': 'DOUBLE', 'column7': 'BIGINT', 'column8': 'BIGINT'}})
        ORDER BY ts"""
    t = best_of(lambda: compute_profiles(con.sql(sql).pl(), instrument_key="NSE_FO|BANKNIFTY_F1"), reps(3))
    b.row("batch via DuckDB (read_csv + SQL + .pl() + profiles), futures file",
          f"122 sessions in {t:.3f} s = **{122 / t:,.0f} sessions/s** (CSV parsing included)")


def full_fo_day(b: common.Bench, repeat: int) -> None:
    """Measure 3 of the module doc: every contract of the F&O day, one engine each, best of ``repeat``."""
    # the full F&O day: every contract, merged in time order
    paths = sorted((DATA / "nse-fo-ticks" / "2022-11-18").glob("*/*.csv"))
    t0 = time.perf_counter()
    frames = [read_ticks(p).with_columns(sym=pl.lit(i, dtype=pl.Int32)) for i, p in enumerate(paths)]
    allt = pl.concat(frames).sort("ts", maintain_order=True)
    parse = time.perf_counter() - t0
    first = allt.group_by("sym").agg(pl.col("price").first()).sort("sym")["price"].to_list()
    configs = [ProfileConfig(row_size=derive_row_size(0.05, max(p, 1.0) * 0.02), tick_size=0.05)
               for p in first]
    a_sym, a_ts, a_px, a_q = (allt[c].to_list() for c in ("sym", "ts", "price", "qty"))

    def full_day():
        engines = [LiveAuctionEngine(f"NSE_FO|{p.stem}", config=c) for p, c in zip(paths, configs)]
        feeds = [e.on_tick for e in engines]
        for s, t_ms, px, q in zip(a_sym, a_ts, a_px, a_q):
            feeds[s](t_ms, px, q)
        return engines

    t = best_of(full_day, repeat)
    b.row(f"full F&O day: {len(paths):,} contracts, one engine each",
          f"{len(a_ts):,} ticks in {t:.2f} s = **{len(a_ts) / t / 1e6:.2f} M ticks/s** "
          f"(CSV parsing, not included: {parse:.1f} s)")
    b.headline("engine on_tick, full F&O day (1,381 engines)", len(a_ts) / t, "ticks/s",
               common.human_rate(len(a_ts) / t, "ticks/s"))


def main() -> int:
    args = common.parser(__doc__, quick=True).parse_args()
    mode = common.mode_of(args)
    b = common.Bench("profile", "Market Profile engine", ["numpy", "polars", "duckdb", "msgspec"], mode,
                     note={"smoke": "one run each, small inputs", "quick": "best of 1-2 runs, one process"}
                     .get(mode, "best of 2-5 runs, one process"))
    bench(b, mode)
    return b.finish(args)


if __name__ == "__main__":
    sys.exit(main())
