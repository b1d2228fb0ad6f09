"""Research SQL beside the recorder: does a heavy query stall tick persistence, and how large is a
recorded tick in DuckDB? Uses the real F&O day in ../shared/data/nse-fo-ticks/2022-11-18.

    python3 benchmarks/bench_query.py                  # about 8 minutes; prints a markdown section
    python3 benchmarks/bench_query.py --append         # ... and appends it to benchmarks/RESULTS.md
    python3 benchmarks/bench_query.py --month-days 5   # a shorter "month"
    python3 benchmarks/bench_query.py --quick          # about a minute: the day only (run_all.py)
    python3 benchmarks/bench_query.py --smoke          # a few seconds on the futures only (tests)
    python3 benchmarks/bench_query.py --json out.json

1. A real day: the 2.78 M prints of 1,381 contracts replayed (``ReplaySource``, full speed) into
   a fresh file through the ingestor's ``BatchWriter`` (handover every 0.1 s), checkpointed:
   file bytes per tick.
2. Flush latency: on that file, the ingestor's set-up (``BatchWriter`` + ``QueryServer`` on
   their own cursors of one connection) is fed the next day's ticks (the same prints a day later)
   at a steady ``--rate`` ticks/s, first alone, then while another process's client runs heavy
   research queries back to back through the query service (volume at price over every tick,
   15-minute candles of every contract, a per-second tick aggregation). Reported: the writer's
   flush time per batch (p50/p99/max), the age of the oldest tick when its batch committed, and
   the writer's queue depth; then the same at full speed (throughput with and without queries).
3. A simulated month: the real day inserted ``--month-days`` times, one trading day apart,
   through the same Arrow batch insert the writer uses; bytes per tick after a checkpoint, and
   two research queries timed on it.

``--quick`` records the whole day only (bytes per tick): no latency phases, no month. ``--smoke`` uses the day's
9 futures (43,441 ticks) instead of all 1,381 contracts, 0.5 s phases at 2,000 ticks/s and a 1-day
month. Checks: the rows in each file equal the ticks written, and every
tick fed to a writer in phase 2 was written.
"""

from __future__ import annotations

import datetime as dt
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import common  # noqa: E402

import duckdb  # noqa: E402
import polars as pl  # noqa: E402

from data_handling.replay import ReplaySource  # noqa: E402
from trading_core import messages as m, persistence, query as q, query_server, views  # noqa: E402

DATA = Path(os.environ.get("AMT_SHARED_DATA", ROOT.parent / "shared" / "data")).resolve()
DAY = DATA / "nse-fo-ticks" / "2022-11-18"
DAY_MS = 86_400_000

HEAVY_QUERIES = [
    ("volume at price, every tick",
     "SELECT instrument_key, floor(ltp / 5) * 5 AS px, sum(ltq) AS v, count(*) AS n FROM ticks GROUP BY ALL"),
    ("15-minute candles, every contract", "SELECT count(*), sum(volume) FROM candles(15)"),
    ("per-second aggregation of every tick",
     "SELECT instrument_key, ts // 1000 AS s, max(ltp) - min(ltp) AS r, sum(ltq) AS v FROM ticks GROUP BY ALL "
     "ORDER BY r DESC LIMIT 100"),
]


def file_size(path: Path) -> int:
    wal = path.with_name(path.name + ".wal")
    return path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)


def used_bytes(path: Path) -> int:
    """Bytes of the blocks DuckDB uses in ``path`` (``PRAGMA database_size``: used blocks x block
    size): the data, without the free blocks a file keeps after checkpoints for later reuse."""
    import duckdb
    con = duckdb.connect(str(path), read_only=True)
    try:
        row = con.execute("SELECT block_size, used_blocks FROM pragma_database_size()").fetchone()
    finally:
        con.close()
    return int(row[0]) * int(row[1])


def record_day(path: Path, instruments: list[str] | None = None) -> tuple[int, float]:
    """Replay the real day (only ``instruments`` if given) into ``path`` the way the ingestor writes
    it. Returns (ticks, seconds)."""
    con = persistence.connect(path)
    views.install(con)
    source = ReplaySource(DAY, speed=0, instruments=instruments)
    writer = persistence.BatchWriter(con, "bench-day", "replay")
    started = time.perf_counter()
    n = 0
    for tick in source.ticks():
        writer.add_tick(tick)
        n += 1
        if n & 255 == 0:
            writer.maybe_handover()
    writer.close()
    took = time.perf_counter() - started
    con.execute("CHECKPOINT")
    con.close()
    return n, took


class FlushProbe:
    """Samples the writer's per-batch flush time, the age of each batch's oldest tick at commit
    and the queue depth (a thread polling every millisecond)."""

    def __init__(self, writer: persistence.BatchWriter):
        self.writer = writer
        self.flush_ms: list[float] = []
        self.queue: list[int] = []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        seen = self.writer.batches_written
        while not self._stop.is_set():
            b = self.writer.batches_written
            if b != seen:
                seen = b
                self.flush_ms.append(self.writer.last_flush_ms)
            self.queue.append(self.writer._queue.qsize())
            time.sleep(0.001)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


def feed(writer: persistence.BatchWriter, ticks: list[m.Tick], rate: float | None, seconds: float,
         ages: list[float]) -> tuple[int, float]:
    """Feed ``ticks`` (cycled) for ``seconds`` at ``rate`` ticks/s (None: flat out), handing over
    as the ingestor does. ``ages``: for each handover, ms from its oldest tick's arrival to commit
    (measured by waiting on the batch counter in a helper). Returns (ticks fed, seconds)."""
    started = time.perf_counter()
    n = 0
    i = 0
    first_in_batch = None
    pending: list[tuple[int, float]] = []      # (batch number expected, first-tick time)
    handovers = writer.batches_written

    def check_pending() -> None:
        done = writer.batches_written
        while pending and pending[0][0] <= done:
            ages.append((time.perf_counter() - pending.pop(0)[1]) * 1000)

    while True:
        now = time.perf_counter()
        if now - started >= seconds:
            break
        if rate is not None:
            due = int((now - started) * rate)
            if n >= due:
                time.sleep(0.0005)
                check_pending()
                continue
        tick = ticks[i]
        i = (i + 1) % len(ticks)
        if first_in_batch is None:
            first_in_batch = time.perf_counter()
        writer.add_tick(tick)
        n += 1
        if n & 255 == 0:
            before = writer._last_handover
            writer.maybe_handover()
            if writer._last_handover != before:
                handovers += 1
                pending.append((handovers, first_in_batch))
                first_in_batch = None
            check_pending()
    writer.handover()
    deadline = time.perf_counter() + 30
    while pending and time.perf_counter() < deadline:
        time.sleep(0.001)
        check_pending()
    return n, time.perf_counter() - started


QUERY_LOOP = r"""
import sys, time, dataclasses
sys.path.insert(0, {root!r})
from trading_core import query_client, settings
st = dataclasses.replace(settings.load(), duckdb_path={db!r}, query_endpoint={endpoint!r})
queries = {queries!r}
stop_at = time.monotonic() + {seconds!r}
i = 0
while time.monotonic() < stop_at:
    t = time.perf_counter()
    query_client.query(queries[i % len(queries)][1], settings=st, timeout_s=120)
    print(i % len(queries), round((time.perf_counter() - t) * 1000, 1), flush=True)
    i += 1
"""


def latency(path: Path, rate: float, seconds: float, instruments: list[str] | None = None,
            fed_written: list[tuple[int, int]] | None = None) -> list[tuple[str, str]]:
    """Phase 2 of the module doc (only ``instruments`` if given). Appends (ticks fed, rows written)
    of each writer to ``fed_written``."""
    con = persistence.connect(path)
    views.install(con)
    endpoint = f"ipc://{tempfile.mkdtemp()}/query.sock"
    server = query_server.QueryServer(con, endpoint, q.Limits(120, 5_000_000), db_label=str(path))
    server.start()
    src = ReplaySource(DAY, speed=0, instruments=instruments)
    ticks = []
    for t in src.ticks():
        t.ts += DAY_MS
        t.source = "bench"
        ticks.append(t)
    rows: list[tuple[str, str]] = []
    results: dict[str, dict] = {}
    try:
        for mode, r in (("steady", rate), ("full speed", None)):
            for with_queries in (False, True):
                writer = persistence.BatchWriter(con, f"bench-{mode}-{with_queries}", "bench")
                proc = None
                if with_queries:
                    proc = subprocess.Popen(
                        [sys.executable, "-c", QUERY_LOOP.format(root=str(ROOT), db=str(path), endpoint=endpoint,
                                                                  queries=HEAVY_QUERIES, seconds=seconds + 60)],
                        stdout=subprocess.PIPE, text=True)
                    time.sleep(1.0)                     # the first query is running
                ages: list[float] = []
                with FlushProbe(writer) as probe:
                    n, took = feed(writer, ticks, r, seconds, ages)
                writer.close()
                if fed_written is not None:
                    fed_written.append((n, writer.rows_written))
                qtimes: list[tuple[int, float]] = []
                if proc is not None:
                    proc.kill()
                    out, _ = proc.communicate()
                    qtimes = [(int(a), float(b)) for a, b in (line.split() for line in out.splitlines() if line)]
                results[f"{mode}/{with_queries}"] = dict(n=n, took=took, flush=probe.flush_ms, ages=ages,
                                                        queue=probe.queue, qtimes=qtimes)
                rows.append((
                    f"{mode}{' (' + format(int(r), ',') + ' ticks/s)' if r else ''}, "
                    f"{'during heavy queries' if with_queries else 'no queries'}",
                    f"{n / took:,.0f} ticks/s fed; flush p50 {pct(probe.flush_ms, 50):.1f} ms, "
                    f"p99 {pct(probe.flush_ms, 99):.1f} ms, max {max(probe.flush_ms or [0]):.1f} ms "
                    f"({len(probe.flush_ms)} batches); oldest tick committed after p50 "
                    f"{pct(ages, 50):.0f} ms, p99 {pct(ages, 99):.0f} ms, max {max(ages or [0]):.0f} ms; "
                    f"writer queue max {max(probe.queue or [0])}"
                    + (f"; {len(qtimes)} queries ran, "
                       + ", ".join(f"{HEAVY_QUERIES[k][0]} {statistics.median([t for j, t in qtimes if j == k]):,.0f} ms"
                                   for k in range(len(HEAVY_QUERIES)) if any(j == k for j, _ in qtimes))
                       if qtimes else "")))
                print(rows[-1], file=sys.stderr, flush=True)
    finally:
        server.stop()
        con.close()
    return rows


def month(path: Path, days: int, instruments: list[str] | None = None,
          counts: list[tuple[int, int]] | None = None) -> list[tuple[str, str]]:
    """Phase 3 of the module doc (only ``instruments`` if given). Appends (rows in the file, rows
    inserted) to ``counts``."""
    src = ReplaySource(DAY, speed=0, instruments=instruments)
    frame = src.frame()
    base = pl.DataFrame({
        "instrument_key": frame["instrument_key"], "ts": frame["ts"], "ltp": frame["ltp"],
        "ltq": frame["ltq"], "oi": frame["oi"]}).with_row_index("seq").with_columns(
        pl.col("seq").cast(pl.Int64), source=pl.lit("replay"))
    con = persistence.connect(path)
    views.install(con)
    started = time.perf_counter()
    day = 0
    k = 0
    while k < days:
        day += 1
        weekday = (dt.date(2022, 11, 18) + dt.timedelta(days=day)).weekday()
        if weekday >= 5:
            continue                                   # trading days only
        shifted = base.with_columns(ts=pl.col("ts") + day * DAY_MS, seq=pl.col("seq") + k * base.height)
        for chunk in shifted.iter_slices(50_000):
            con.execute("BEGIN")
            con.register("_b", chunk.to_arrow())
            con.execute("INSERT INTO ticks BY NAME SELECT * FROM _b")
            con.unregister("_b")
            con.execute("COMMIT")
        k += 1
    took = time.perf_counter() - started
    con.execute("CHECKPOINT")
    n = con.execute("SELECT count(*) FROM ticks").fetchone()[0]
    if counts is not None:
        counts.append((n, days * base.height))
    t = time.perf_counter()
    con.execute("SELECT floor(ltp / 5) * 5, sum(ltq) FROM ticks WHERE instrument_key = 'NSE_FO|NIFTY-I' "
                "AND ts >= ? AND ts < ? GROUP BY 1", [int(base["ts"].min()) + DAY_MS * 3,
                                                      int(base["ts"].min()) + DAY_MS * 4]).fetchall()
    one_day = time.perf_counter() - t
    t = time.perf_counter()
    con.execute("SELECT instrument_key, date_ist, count(*), max(ltp) - min(ltp) FROM ticks_ist GROUP BY ALL").fetchall()
    all_days = time.perf_counter() - t
    con.close()
    size = file_size(path)
    return [(f"simulated month: the real day x {days} trading days",
             f"{n:,} ticks, file {size / 1e6:,.0f} MB = **{size / n:.1f} bytes/tick** "
             f"(inserted at {n / took / 1e6:.2f} M ticks/s)"),
            ("on the month: volume at price of one contract-day", f"{one_day * 1000:,.0f} ms"),
            ("on the month: ticks and range per contract and day (all rows)", f"{all_days * 1000:,.0f} ms")]


def main() -> int:
    ap = common.parser(__doc__, quick=True)
    ap.add_argument("--rate", type=float, help="steady feed rate, ticks/s (default 20,000; 2,000 with --smoke)")
    ap.add_argument("--seconds", type=float,
                    help="seconds per latency phase, 0 = no latency phases (default 15; 0 with --quick, "
                         "0.5 with --smoke)")
    ap.add_argument("--month-days", type=int,
                    help="trading days in the simulated month, 0 = no month (default 20; 0 with --quick, "
                         "1 with --smoke)")
    ap.add_argument("--keep", metavar="DIR", help="write the databases here instead of a temporary folder")
    args = ap.parse_args()
    mode = common.mode_of(args)
    smoke = mode == "smoke"
    rate = args.rate or (2_000 if smoke else 20_000)
    seconds = args.seconds if args.seconds is not None else {"smoke": 0.5, "quick": 0.0}.get(mode, 15.0)
    month_days = args.month_days if args.month_days is not None else {"smoke": 1, "quick": 0}.get(mode, 20)
    if rate <= 0 or seconds < 0 or month_days < 0:
        ap.error(f"--rate must be positive, --seconds and --month-days at least 0, got {rate}, {seconds}, "
                 f"{month_days}")
    instruments = common.tick_subset(smoke=True) if smoke else None
    bench = common.Bench("query", "Research queries beside the recorder", ["duckdb", "pyarrow", "polars", "zmq",
                         "msgspec"], mode)
    work = Path(args.keep or tempfile.mkdtemp(prefix="bench_query_"))
    work.mkdir(parents=True, exist_ok=True)
    day_db = work / "day.duckdb"
    day_db.unlink(missing_ok=True)
    n, took = record_day(day_db, instruments)
    size, used = file_size(day_db), used_bytes(day_db)
    what = ("the day's 9 futures (smoke)" if smoke else "a real day (2022-11-18 F&O, 1,381 contracts)")
    bench.row(f"{what} recorded through BatchWriter",
              f"{n:,} ticks in {took:.1f} s; blocks in use {used / 1e6:,.1f} MB = **{used / n:.1f} bytes/tick**, "
              f"file {size / 1e6:,.1f} MB = {size / n:.1f} bytes/tick (free blocks kept for reuse included; "
              f"ticks, their 1-minute candles are not built here, and the schema)")
    day_name = "the futures (smoke)" if smoke else "a real F&O day"
    bench.headline(f"storage, {day_name} through BatchWriter", used / n, "bytes/tick",
                   f"{used / n:.1f} bytes/tick ({size / n:.1f} with the file's free blocks)")
    bench.headline(f"BatchWriter, {day_name} from ReplaySource", n / took, "ticks/s",
                   common.human_rate(n / took, "ticks/s"))
    with duckdb.connect(str(day_db), read_only=True) as con:
        rows = con.execute("SELECT count(*) FROM ticks").fetchone()[0]
    bench.check("day file: rows == ticks replayed", rows == n, f"{rows:,} rows, {n:,} ticks")
    if seconds:
        fed_written: list[tuple[int, int]] = []
        lat_rows = latency(day_db, rate, seconds, instruments, fed_written)
        for measure, result in lat_rows:
            bench.row(measure, result, progress=False)      # latency() printed them as it went
        bench.check("latency phases: every tick fed was written", all(a == b for a, b in fed_written),
                    "; ".join(f"{a:,} fed / {b:,} written" for a, b in fed_written))
    if month_days:
        month_db = work / "month.duckdb"
        month_db.unlink(missing_ok=True)
        counts: list[tuple[int, int]] = []
        month_rows = month(month_db, month_days, instruments, counts)
        for measure, result in month_rows:
            bench.row(measure, result)
        bench.check("month file: rows == inserted", all(a == b for a, b in counts),
                    "; ".join(f"{a:,} rows / {b:,} inserted" for a, b in counts))
        month_size = file_size(month_db)
        if counts and counts[0][0]:
            bench.headline(f"storage, {day_name} x {month_days} days", month_size / counts[0][0], "bytes/tick",
                           f"{month_size / counts[0][0]:.1f} bytes/tick")
    if not args.keep:
        for p in work.iterdir():
            p.unlink()
        work.rmdir()
    return bench.finish(args)


if __name__ == "__main__":
    sys.exit(main())
