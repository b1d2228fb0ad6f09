"""DuckDB insert rate of the project's tick schema: the ingestor's ``BatchWriter`` against plain Arrow
batch inserts and row-by-row ``executemany``, on real ticks of 2022-11-18.

    python3 benchmarks/bench_storage.py            # about 20-40 s; prints a markdown section
    python3 benchmarks/bench_storage.py --append   # ... and appends it to benchmarks/RESULTS.md
    python3 benchmarks/bench_storage.py --quick    # about 15 s: one BatchWriter run, no 1,000-row batches (run_all.py)
    python3 benchmarks/bench_storage.py --smoke    # about a second (tests/test_benchmarks.py)

Ticks: ``ReplaySource`` of ``nse-fo-ticks/2022-11-18`` limited to the 9 futures and 20 busiest
options (481,171 ticks; the futures' first 20,000 with ``--smoke``), as ``messages.Tick`` objects.
Each phase writes a fresh DuckDB file made by ``persistence.connect`` (the project's full ``ticks``
table: 33 columns, quote columns NULL as for replayed data) in a temporary folder:

1. ``persistence.BatchWriter``, the ingestor's way: ``add_tick`` for every tick from this thread,
   ``maybe_handover`` every 0.1 s as ``scripts/ingestor.py`` calls it, a writer thread inserting
   each batch as an Arrow table in its own transaction; timed from the first ``add_tick`` to the
   return of ``close()`` (everything committed). Fastest of ``--repeat`` runs.
   Then the same through ``scripts.recorder.RecorderLink``, the system's path: the batches go
   as Arrow IPC down a pipe to a recorder process (``scripts/recorder.py``, at nice 10) whose
   ``BatchWriter`` inserts them (a bus proxy runs in this process for its recorders).
2. Arrow batch insert alone, in one thread (the writer thread's SQL: ``BEGIN``, ``register``,
   ``INSERT INTO ticks BY NAME``, ``COMMIT``) of prepared Arrow tables of 1,000 (not with
   ``--quick``), 10,000 and 50,000 rows: DuckDB's own cost, the ``INSERT`` and the ``COMMIT``
   (WAL written to disk, and DuckDB's automatic checkpoints) timed apart. Without the feed
   running beside it this is not a ceiling for (1): there the commits' disk waits overlap with
   the feed thread's work.
3. Row-by-row ``executemany`` of the same columns on a small sample (5,000 rows; 2,000 with
   ``--quick``, 500 with ``--smoke``), one transaction: the contrast that made the project buffer rows.

Checks, after each phase: ``count(*)``, ``sum(ltq)`` and ``max(seq)`` in the file equal those of
the ticks inserted. Bytes per tick on disk are measured by ``bench_query.py`` (a whole real day).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

import pyarrow as pa  # noqa: E402

from trading_core import messages as m, persistence  # noqa: E402

BASE_COLUMNS = persistence.TICK_BASE_SCHEMA.names


def verify(bench: common.Bench, con, label: str, ticks: list[m.Tick]) -> None:
    """Check that the ``ticks`` table holds exactly ``ticks`` (count, sum of ltq, max seq)."""
    got = con.execute("SELECT count(*), coalesce(sum(ltq), 0), coalesce(max(seq), -1) FROM ticks").fetchone()
    want = (len(ticks), sum(t.ltq for t in ticks), max((t.seq for t in ticks), default=-1))
    bench.check(f"{label}: rows in DuckDB == inserted", tuple(got) == want,
                f"count/sum(ltq)/max(seq) in the file {tuple(got)}, inserted {want}")


def feed(batcher: persistence.TickBatcher, ticks: list[m.Tick]) -> None:
    """``add_tick`` for every tick, ``maybe_handover`` every 0.1 s (the ingestor's housekeeping
    cadence)."""
    monotonic = time.monotonic
    add = batcher.add_tick
    due = 0.0
    for t in ticks:
        add(t)
        if (now := monotonic()) >= due:
            due = now + 0.1
            batcher.maybe_handover()


def batch_writer(ticks: list[m.Tick], path: Path) -> float:
    """Phase 1: feed ``ticks`` through a ``BatchWriter`` on a fresh file; seconds until committed."""
    con = persistence.connect(path)
    try:
        started = time.perf_counter()
        writer = persistence.BatchWriter(con, "bench-storage", "replay")
        feed(writer, ticks)
        writer.close()
        took = time.perf_counter() - started
        if writer.error is not None:
            raise RuntimeError(f"BatchWriter failed: {writer.error}")
        return took
    finally:
        con.close()


def recorder_link(ticks: list[m.Tick], path: Path) -> float:
    """Phase 1, the system's way: the same feed through a ``RecorderLink`` to a recorder
    process writing ``path``; seconds from the first ``add_tick`` until its ``close()`` returns."""
    from scripts.recorder import RecorderLink
    from tests.system_harness import recorder_environment
    with recorder_environment(path, path.parent / "logs"):
        link = RecorderLink("bench-storage", "replay")    # reads its settings from the environment
        con = persistence.connect(path)
        persistence.start_run(con, "bench-storage", "replay", str(path))
        con.close()
        link.open()
        started = time.perf_counter()
        feed(link, ticks)
        link.close()
        took = time.perf_counter() - started
    if link.error is not None or link.proc.returncode != 0:
        raise RuntimeError(f"recorder failed: {link.error or f'exit code {link.proc.returncode}'}")
    return took


def arrow_tables(ticks: list[m.Tick], rows: int) -> list[pa.Table]:
    """``ticks`` as Arrow tables of ``rows`` rows in the writer's schema (quote columns NULL)."""
    out = []
    for lo in range(0, len(ticks), rows):
        chunk = ticks[lo:lo + rows]
        cols = {name: [getattr(t, name) for t in chunk] for name in BASE_COLUMNS}
        base = pa.Table.from_pydict(cols, schema=persistence.TICK_BASE_SCHEMA)
        out.append(persistence._with_quotes(base, []))
    return out


def arrow_insert(tables: list[pa.Table], path: Path) -> tuple[float, float, float]:
    """Phase 2: insert prepared tables with the writer thread's SQL. Returns seconds
    ``(total, in INSERT, in COMMIT)``."""
    con = persistence.connect(path)
    clock = time.perf_counter
    try:
        insert = commit = 0.0
        started = clock()
        for table in tables:
            con.execute("BEGIN")
            con.register("_tick_batch", table)
            t0 = clock()
            con.execute("INSERT INTO ticks BY NAME SELECT * FROM _tick_batch")
            t1 = clock()
            con.unregister("_tick_batch")
            t2 = clock()
            con.execute("COMMIT")
            t3 = clock()
            insert += t1 - t0
            commit += t3 - t2
        return clock() - started, insert, commit
    finally:
        con.close()


def row_by_row(ticks: list[m.Tick], path: Path) -> float:
    """Phase 3: ``executemany`` of one parameter row per tick, one transaction; seconds."""
    con = persistence.connect(path)
    try:
        rows = [tuple(getattr(t, name) for name in BASE_COLUMNS) for t in ticks]
        sql = f"INSERT INTO ticks ({', '.join(BASE_COLUMNS)}) VALUES ({', '.join('?' * len(BASE_COLUMNS))})"
        started = time.perf_counter()
        con.execute("BEGIN")
        con.executemany(sql, rows)
        con.execute("COMMIT")
        return time.perf_counter() - started
    finally:
        con.close()


def main() -> int:
    ap = common.parser(__doc__, quick=True)
    ap.add_argument("--repeat", type=int,
                    help="BatchWriter runs, the fastest reported (default 2; 1 with --quick or --smoke)")
    ap.add_argument("--rows-sample", type=int,
                    help="rows for executemany (default 5,000; 2,000 with --quick, 500 with --smoke)")
    args = ap.parse_args()
    mode = common.mode_of(args)
    bench = common.Bench("storage", "DuckDB insert rate of the tick schema", ["duckdb", "pyarrow"],
                         mode, note="fresh file per phase, one process")
    repeat = args.repeat or (2 if mode == "default" else 1)
    sample = args.rows_sample or {"smoke": 500, "quick": 2_000}.get(mode, 5_000)
    if repeat < 1 or sample < 1:
        ap.error(f"--repeat and --rows-sample must be at least 1, got {repeat} and {sample}")
    ticks = common.real_ticks(20_000 if args.smoke else None, smoke=args.smoke)
    n = len(ticks)
    bench.data["ticks"] = n
    with tempfile.TemporaryDirectory(prefix="bench_storage_") as tmp:
        tmp_path = Path(tmp)

        def fresh(name: str) -> Path:
            path = tmp_path / f"{name}.duckdb"
            for p in (path, path.with_name(path.name + ".wal")):
                p.unlink(missing_ok=True)
            return path

        def check_file(path: Path, label: str, expected: list[m.Tick]) -> None:
            import duckdb
            con = duckdb.connect(str(path), read_only=True)
            try:
                verify(bench, con, label, expected)
            finally:
                con.close()

        # 1. BatchWriter
        times = []
        for i in range(repeat):
            path = fresh(f"writer{i}")
            times.append(batch_writer(ticks, path))
            check_file(path, f"BatchWriter run {i + 1}", ticks)
        t = min(times)
        rate = n / t
        bench.data["batch_writer_s"] = times
        bench.row("`persistence.BatchWriter` (the ingestor's path: add_tick, handover every 0.1 s, "
                  "writer thread)", f"{n:,} ticks committed in {t:.2f} s = **{common.human_rate(rate, 'ticks/s')}**"
                  + (f" (runs: {', '.join(f'{x:.2f}' for x in times)} s)" if repeat > 1 else ""))
        bench.headline("DuckDB insert, BatchWriter (project)", rate, "ticks/s", common.human_rate(rate, "ticks/s"))
        path = fresh("recorder")
        t_rec = recorder_link(ticks, path)
        check_file(path, "RecorderLink", ticks)
        bench.data["recorder_link_s"] = t_rec
        bench.row("`scripts.recorder.RecorderLink` (the system's path: the same batches as Arrow IPC "
                  "through a pipe to the recorder process)",
                  f"{n:,} ticks committed in {t_rec:.2f} s = **{common.human_rate(n / t_rec, 'ticks/s')}**")
        bench.headline("DuckDB insert through the recorder process (project)", n / t_rec, "ticks/s",
                       common.human_rate(n / t_rec, "ticks/s"))

        # 2. Arrow batches alone
        arrow = {}
        for rows in ((10_000, 50_000) if mode == "quick" else (1_000, 10_000, 50_000)):
            tables = arrow_tables(ticks, rows)
            path = fresh(f"arrow{rows}")
            t, t_ins, t_commit = arrow_insert(tables, path)
            check_file(path, f"Arrow batches of {rows:,}", ticks)
            arrow[rows] = {"rows_per_s": n / t, "insert_rows_per_s": n / t_ins,
                           "commit_ms": t_commit / len(tables) * 1000, "batches": len(tables)}
            bench.row(f"Arrow batch insert alone, one thread, {rows:,} rows per batch and transaction",
                      f"{n:,} rows in {t:.2f} s = {common.human_rate(n / t, 'rows/s')}; the INSERTs alone "
                      f"**{common.human_rate(n / t_ins, 'rows/s')}**, COMMIT {t_commit / len(tables) * 1000:.0f} ms "
                      f"per batch ({t_commit / t:.0%} of the time)")
        bench.data["arrow"] = arrow
        bench.headline("DuckDB INSERT of Arrow batches of 10,000, without COMMIT", arrow[10_000]["insert_rows_per_s"],
                       "rows/s", common.human_rate(arrow[10_000]["insert_rows_per_s"], "rows/s"))
        bench.headline("DuckDB COMMIT per batch of 10,000 (WAL to disk)", arrow[10_000]["commit_ms"], "ms",
                       f"{arrow[10_000]['commit_ms']:.0f} ms")

        # 3. row by row
        few = ticks[:sample]
        path = fresh("rows")
        t = row_by_row(few, path)
        check_file(path, "executemany", few)
        slow = len(few) / t
        bench.data["executemany_rows_per_s"] = slow
        bench.row("row-by-row `executemany` (contrast), one transaction",
                  f"{len(few):,} rows in {t:.2f} s = **{common.human_rate(slow, 'rows/s')}** "
                  f"({rate / slow:,.0f}x slower than BatchWriter)")
        bench.headline("DuckDB insert, row-by-row executemany (contrast)", slow, "rows/s",
                       common.human_rate(slow, "rows/s"))
    bench.footer = [
        f"{n:,} real ticks (futures and the 20 busiest options of 2022-11-18, in replay order) into the "
        "project's 33-column `ticks` table. The BatchWriter figure is the whole ingestor-side cost "
        "(Python lists per column, Arrow conversion, the insert on the writer thread), with feed and "
        "writer sharing one process (the writer thread's inserts and commits overlap with the feed "
        "thread's work). The Arrow rows split DuckDB's own cost: the INSERT itself, and a COMMIT per "
        "batch that writes the WAL to disk (DuckDB's automatic checkpoints land in some commits). For "
        "scale: the real day averages 123 ticks/s (2,777,447 prints from 09:15 to 15:30) and its busiest "
        "second has 310 prints."]
    return bench.finish(args)


if __name__ == "__main__":
    sys.exit(main())
