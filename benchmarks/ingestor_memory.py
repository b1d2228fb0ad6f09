"""Where the ingestor's memory goes over many sessions: its per-tick work in one process, without
the bus, with and without the DuckDB writer, RSS printed at each new session.

    python3 benchmarks/ingestor_memory.py                  # 30 sessions, every part
    python3 benchmarks/ingestor_memory.py --parts nodb     # candles and profiles only
    python3 benchmarks/ingestor_memory.py --parts db --sessions 20

The sessions are the real 2022-11-18 ``NIFTY-I`` future (16,687 ticks) copied onto consecutive
weekdays, as in ``bench_system.py``'s memory part, fed in batches of 20 ticks (a paced replay's
size) to the ingestor's own pieces: ``CandleBuilder.update_print``, ``ProfileFeed.on_print`` and
``persistence.BatchWriter`` (``add_tick_table``, a hand-over every 50 batches). ``--parts``:
``all`` (default), ``db`` (the writer only) or ``nodb`` (candles and profiles only). Prints one
line per session: ``parts date rss_mb duckdb_mb python_blocks`` (DuckDB's own count of
the memory it holds, ``duckdb_memory()``; ``sys.getallocatedblocks()``); writes nothing else (the DuckDB file is temporary).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

import psutil  # noqa: E402

from bench_system import MEMORY_FILES, make_sessions  # noqa: E402
from data_handling.candles import CandleBuilder  # noqa: E402
from data_handling.replay import ReplaySource  # noqa: E402
from scripts.profiles import ProfileFeed  # noqa: E402
from strategy.base import ist_date  # noqa: E402
from trading_core import audit, persistence, views  # noqa: E402


def duckdb_mb(con) -> float:
    """Megabytes DuckDB says it holds (``duckdb_memory()``, all tags)."""
    return con.execute("SELECT sum(memory_usage_bytes) FROM duckdb_memory()").fetchall()[0][0] / 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    ap.add_argument("--parts", choices=["all", "db", "nodb"], default="all")
    ap.add_argument("--sessions", type=int, default=30)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="amt-ingestor-memory-") as tmp:
        folder, _ = make_sessions(Path(tmp), MEMORY_FILES, args.sessions)
        src = ReplaySource(folder)
        con = persistence.connect(Path(tmp) / "memory.duckdb")
        views.install(con)
        audit.install(con)
        persistence.start_run(con, "memory", "replay", str(folder))
        writer = persistence.BatchWriter(con, "memory", "replay")
        builder, profiles = CandleBuilder("1m"), ProfileFeed(lambda *_: None)
        proc, day = psutil.Process(), None
        for n, batch in enumerate(src.batches(rows=20), 1):
            if args.parts != "db":
                for key, ts, ltp, ltq, oi in zip(batch.keys, batch.ts, batch.ltp, batch.ltq, batch.oi):
                    profiles.on_print(key, ts, ltp, ltq)
                    for candle in builder.update_print(key, ts, ltp, ltq, oi):
                        if args.parts == "all":
                            writer.add_candle(candle)
            if args.parts != "nodb":
                writer.add_tick_table(batch.table)
                if n % 50 == 0:
                    writer.maybe_handover()
            if (d := ist_date(batch.ts[-1])) != day:
                if day is not None and args.parts != "nodb":
                    writer.checkpoint()             # as the ingestor does at each new IST day
                day = d
                print(f"{args.parts} {d} {proc.memory_info().rss / 1e6:.1f} "
                      f"{duckdb_mb(con):.1f} {sys.getallocatedblocks()}", flush=True)
        writer.close()
        con.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
