"""DuckDB persistence: batched writes lose nothing, resume and replace rules, lock errors."""

from __future__ import annotations

import subprocess
import sys

import pytest

from trading_core import messages as m, persistence


def ticks(n: int, key: str = "NSE_FO|NIFTY-I", start_ts: int = 1_668_743_100_000, source="replay"):
    return [m.Tick(instrument_key=key, ts=start_ts + i * 250, ltp=18400 + i * 0.05, ltq=50, oi=1e7,
                   seq=i, source=source) for i in range(n)]


def test_every_tick_written_including_last_partial_batch(tmp_path):
    con = persistence.connect(tmp_path / "t.duckdb")
    assert persistence.start_run(con, "r1", "replay", "x") == 0
    writer = persistence.BatchWriter(con, "r1", "replay", max_rows=1000)
    data = ticks(2_345)
    for t in data:
        writer.add_tick(t)
    writer.close()
    rows = con.execute("SELECT instrument_key, ts, ltp, ltq, oi, seq, source FROM ticks ORDER BY seq").fetchall()
    assert rows == [(t.instrument_key, t.ts, t.ltp, t.ltq, t.oi, t.seq, t.source) for t in data]
    assert con.execute("SELECT last_seq FROM feed_runs").fetchall()[0][0] == 2_344
    assert persistence.start_run(con, "r1", "replay", "x") == 2_345  # a restart resumes after it


def test_forming_bar_ticks_are_recovered_for_a_resumed_replay(tmp_path):
    con = persistence.connect(tmp_path / "t.duckdb")
    persistence.start_run(con, "r1", "replay", "x")
    writer = persistence.BatchWriter(con, "r1", "replay")
    data = ticks(300)  # 75 s of ticks: one closed minute, one forming
    for t in data:
        writer.add_tick(t)
    first = data[0].ts // 60_000 * 60_000
    writer.add_candle(m.Candle(instrument_key=data[0].instrument_key, interval="1m", ts=first, open=1,
                               high=1, low=1, close=1))
    writer.close()
    forming = persistence.forming_ticks(con, "replay")
    assert forming == [t for t in data if t.ts >= first + 60_000]


def test_replaying_a_range_again_replaces_only_replay_rows(tmp_path):
    con = persistence.connect(tmp_path / "t.duckdb")
    for run, source in (("a", "replay"), ("b", "sim")):
        persistence.start_run(con, run, source, "")
        w = persistence.BatchWriter(con, run, source)
        for t in ticks(100, source=source):
            w.add_tick(t)
        w.close()
    data = ticks(100)
    deleted = persistence.clear_replayed_range(con, ["NSE_FO|NIFTY-I"], data[0].ts, data[-1].ts)
    assert deleted == 100
    assert con.execute("SELECT source, count(*) FROM ticks GROUP BY ALL").fetchall() == [("sim", 100)]


def test_ist_views(tmp_path):
    con = persistence.connect(tmp_path / "t.duckdb")
    persistence.start_run(con, "r", "replay", "")
    w = persistence.BatchWriter(con, "r", "replay")
    w.add_tick(m.Tick(instrument_key="K", ts=1_668_743_100_000, ltp=1.0))  # 2022-11-18 03:45 UTC
    w.close()
    got = con.execute("SELECT time_ist::VARCHAR, date_ist::VARCHAR FROM ticks_ist").fetchall()[0]
    assert got == ("2022-11-18 09:15:00", "2022-11-18")


def test_locked_file_names_the_holder(tmp_path):
    db = tmp_path / "locked.duckdb"
    holder = subprocess.Popen([sys.executable, "-c", f"import duckdb,time; c=duckdb.connect({str(db)!r}); "
                               "print('ok', flush=True); time.sleep(30)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ok"
        with pytest.raises(persistence.DatabaseLockedError) as err:
            persistence.check_writable(db)
    finally:
        holder.kill()
        holder.wait()
    text = str(err.value)
    assert "\n" not in text and str(db) in text and f"PID {holder.pid}" in text


def test_checkpoint_runs_after_the_batches_queued_before_it_and_keeps_every_row(tmp_path):
    """BatchWriter.checkpoint (the ingestor's end of session): DuckDB's CHECKPOINT runs on the
    writer thread after what was buffered, every row stays, and the WAL is folded into the file."""
    import polars as pl
    path = tmp_path / "c.duckdb"
    con = persistence.connect(path)
    persistence.start_run(con, "r", "replay", "x")
    writer = persistence.BatchWriter(con, "r", "replay", flush_interval_s=3600)
    rows = 0
    for day in range(3):
        table = pl.DataFrame({"instrument_key": ["NSE_FO|NIFTY-I"] * 1000,
                              "ts": [1_668_742_500_000 + day * 86_400_000 + i for i in range(1000)],
                              "ltp": [18_300.0 + i % 7 for i in range(1000)], "ltq": [50] * 1000,
                              "oi": [1e7] * 1000, "seq": list(range(rows, rows + 1000))})
        writer.add_tick_table(table)
        rows += 1000
        writer.checkpoint()
    writer.close()
    assert writer.checkpoints == 3 and writer.error is None
    assert con.execute("SELECT count(*), count(DISTINCT seq) FROM ticks").fetchone() == (rows, rows)
    wal = path.with_name(path.name + ".wal")
    assert not wal.exists() or wal.stat().st_size == 0      # the last checkpoint folded the WAL in



def test_clearing_an_earlier_replay_leaves_no_transaction_open(tmp_path):
    """The ingestor clears the replayed range on its main connection at start; nothing of that may
    keep a transaction open, or DuckDB refuses every later CHECKPOINT and the ingestor's memory
    grows with each session (benchmarks/ingestor_memory.py)."""
    from trading_core import audit, views
    con = persistence.connect(tmp_path / "c.duckdb")
    views.install(con)
    audit.install(con)
    persistence.start_run(con, "r", "replay", "x")
    keys = ["NSE_FO|NIFTY-I"]
    persistence.clear_replayed_range(con, keys, 0, 2**62)
    audit.clear_replayed(con, keys, 0, 2**62)
    writer = persistence.BatchWriter(con, "r", "replay")
    writer.checkpoint()
    writer.close()
    assert (writer.checkpoints, writer.checkpoints_skipped) == (1, 0)


def test_the_recorder_lets_duckdb_give_freed_memory_back_while_idle(tmp_path):
    """Without jemalloc's background threads an ingestor idle after a replay's last CHECKPOINT
    kept about 100 MB it had freed (benchmarks/bench_system.py --only memory --sessions 30:
    384 MB idle against 275 MB with them)."""
    con = persistence.connect(tmp_path / "m.duckdb")
    assert con.execute("SELECT current_setting('allocator_background_threads')").fetchone()[0] is True
