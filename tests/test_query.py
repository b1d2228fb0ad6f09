"""Research SQL: the read-only guard, the ingestor's query service and the client, on real data.

A database is filled the way the ingestor fills it (ticks and 1-minute candles of a real
NIFTY month, source ``replay``); the query service runs on it in this process, and the client
talks to it over ZeroMQ exactly as ``run.py sql`` and strategy processes do, or, with the
service stopped, opens the file read-only itself.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import duckdb
import polars as pl
import pytest

from data_handling.replay import bars_to_ticks, read_bars
from tests.conftest import INDEX_1MIN
from tests.system_harness import free_port
from trading_core import persistence, query as q, query_client, query_server, settings as settings_mod, views

MONTH = INDEX_1MIN / "2022_JUN_NIFTY.txt"
KEY = "NSE_INDEX|Nifty 50"


def fill(con: duckdb.DuckDBPyConnection, bars: pl.DataFrame, source: str = "replay") -> None:
    """Insert ``bars`` (read_bars frame) as the ingestor would: 4 ticks per bar and the bars."""
    ticks = bars_to_ticks(bars).with_row_index("seq").with_columns(
        pl.col("seq").cast(pl.Int64), source=pl.lit(source))
    con.register("_t", ticks.to_arrow())
    con.execute("INSERT INTO ticks BY NAME SELECT instrument_key, ts, ltp, ltq, oi, seq, source FROM _t")
    con.unregister("_t")
    candles = bars.select("instrument_key", "ts", "open", "high", "low", "close", "volume", "oi",
                          ticks=pl.lit(4, pl.Int32), source=pl.lit(source))
    con.register("_c", candles.to_arrow())
    con.execute("INSERT INTO candles_1m BY NAME SELECT * FROM _c")
    con.unregister("_c")


@pytest.fixture(scope="module")
def bars(shared_data) -> pl.DataFrame:
    return read_bars(MONTH)


@pytest.fixture(scope="module")
def db(tmp_path_factory, bars) -> Path:
    path = tmp_path_factory.mktemp("querydb") / "market.duckdb"
    con = persistence.connect(path)
    views.install(con)
    fill(con, bars)
    con.close()
    return path


@pytest.fixture(scope="module")
def offline_db(tmp_path_factory, bars) -> Path:
    """The same data in a file no connection of this process holds (for the system-stopped case)."""
    path = tmp_path_factory.mktemp("offline") / "market.duckdb"
    con = persistence.connect(path)
    views.install(con)
    fill(con, bars)
    con.close()
    return path


@pytest.fixture(scope="module")
def system(db):
    """The query service on ``db`` (as in the ingestor) and settings pointing the client at it.
    Shared by the module: tests that change data put it back."""
    con = persistence.connect(db)
    views.install(con)
    settings = dataclasses.replace(settings_mod.load(), duckdb_path=db,
                                   query_endpoint=f"tcp://127.0.0.1:{free_port()}")
    server = query_server.QueryServer(con, settings.query_endpoint, q.Limits(30.0, 2_000_000),
                                      before_query=views.before_query, db_label=str(db))
    server.start()
    try:
        yield settings, server, con
    finally:
        server.stop()
        con.close()


def fingerprint(con) -> str:
    """A hash of every row of every table and of the catalog: proves a refused statement changed
    nothing."""
    h = hashlib.sha256()
    for (name,) in con.execute("SELECT table_name FROM duckdb_tables() WHERE NOT temporary "
                               "ORDER BY 1").fetchall():
        h.update(repr(con.execute(f'SELECT \'{name}\', count(*), sum(hash(t)) FROM "{name}" t').fetchall()).encode())
    h.update(repr(con.execute("SELECT view_name, sql FROM duckdb_views() WHERE NOT internal ORDER BY 1")
                  .fetchall()).encode())
    h.update(repr(con.execute("SELECT function_name FROM duckdb_functions() WHERE NOT internal ORDER BY 1")
                  .fetchall()).encode())
    return h.hexdigest()


# --- reading works, and gives what the data says --------------------------------------------


def test_counts_via_service_match_the_source_file(system, bars):
    settings, _, _ = system
    df = query_client.query("SELECT date_ist, count(*) AS ticks FROM ticks_ist GROUP BY ALL ORDER BY 1",
                            settings=settings)
    expect = bars.group_by("date").agg(n=pl.len()).sort("date")
    assert df["date_ist"].to_list() == expect["date"].to_list()
    assert df["ticks"].to_list() == [4 * n for n in expect["n"].to_list()]


def test_params_list_and_dict(system, bars):
    settings, _, _ = system
    day = bars.filter(pl.col("date") == pl.date(2022, 6, 9))
    a = query_client.query("SELECT max(high) AS h FROM candles_1m_ist WHERE date_ist = ?::DATE",
                           ["2022-06-09"], settings=settings)
    b = query_client.query("SELECT max(high) AS h FROM candles_1m_ist WHERE date_ist = $d::DATE",
                           {"d": "2022-06-09"}, settings=settings)
    assert a["h"][0] == b["h"][0] == day["high"].max()
    with pytest.raises(ValueError, match="params"):
        query_client.query("SELECT ?", [object()], settings=settings)


def test_n_minute_candles_are_aligned_to_0915_and_equal_the_source_bars(system, bars):
    settings, _, _ = system
    got = query_client.query("SELECT * FROM candles(15) WHERE date_ist = DATE '2022-06-09' "
                             "AND time_ist::TIME >= '09:15' ORDER BY ts", settings=settings)
    # Independent: bucket the vendor bars by hand, 15 minutes from 09:15 IST.
    ist = (pl.col("ts") + 19_800_000)
    day = bars.filter(pl.col("date") == pl.date(2022, 6, 9)).with_columns(
        minute=(ist % 86_400_000) // 60_000).filter(pl.col("minute") >= 555)
    want = day.with_columns(bucket=(pl.col("minute") - 555) // 15).group_by("bucket").agg(
        open=pl.col("open").first(), high=pl.col("high").max(), low=pl.col("low").min(),
        close=pl.col("close").last(), n=pl.len()).sort("bucket")
    assert got.height == want.height == 26          # 25 bars 09:15 ... 15:15, and 15:30 after the close
    assert [t.strftime("%H:%M") for t in got["time_ist"].to_list()][:3] == ["09:15", "09:30", "09:45"]
    for col in ("open", "high", "low", "close"):
        assert got[col].to_list() == want[col].to_list(), col
    assert got["bars"].to_list() == want["n"].to_list()
    # 75-minute bars start at 09:15, 10:30, 11:45, 13:00 and 14:15 every day.
    starts = query_client.query("SELECT DISTINCT strftime(time_ist, '%H:%M') AS s FROM candles(75) "
                                "WHERE time_ist::TIME BETWEEN '09:15' AND '15:29' ORDER BY 1",
                                settings=settings)["s"].to_list()
    assert starts == ["09:15", "10:30", "11:45", "13:00", "14:15"]


def test_tick_candles_rebuild_the_minute_bars(system, bars):
    settings, _, _ = system
    got = query_client.query("SELECT ts, open, high, low, close FROM tick_candles(60) "
                             "WHERE date_ist = DATE '2022-06-14' ORDER BY ts", settings=settings)
    want = bars.filter(pl.col("date") == pl.date(2022, 6, 14)).sort("ts")
    assert got["ts"].to_list() == want["ts"].to_list()
    assert got["high"].to_list() == want["high"].to_list()
    assert got["close"].to_list() == want["close"].to_list()


def test_sessions_have_the_days_levels_and_follow_new_candles(system, bars):
    settings, _, con = system
    s = query_client.query("SELECT * FROM sessions ORDER BY date", settings=settings)
    days = bars["date"].unique().sort().to_list()
    assert s["date"].to_list() == days
    assert s["closed"].to_list() == [True] * (len(days) - 1) + [True]   # the last day reached 15:30
    one = s.filter(pl.col("date") == pl.date(2022, 6, 9)).row(0, named=True)
    day = bars.filter(pl.col("date") == pl.date(2022, 6, 9))
    minute = ((day["ts"] + 19_800_000) % 86_400_000) // 60_000
    ib = day.filter((minute >= 555) & (minute < 615))                # 09:15-10:15 IST
    regular = day.filter((minute >= 555) & (minute < 930))
    assert (one["ib_high"], one["ib_low"]) == (ib["high"].max(), ib["low"].min())
    assert (one["high"], one["low"]) == (regular["high"].max(), regular["low"].min())
    assert one["val"] <= one["poc"] <= one["vah"]
    assert one["open_type"] and one["day_type"]
    assert one["prior_high"] == s.filter(pl.col("date") == pl.date(2022, 6, 8))["high"][0]
    # A new day of candles arrives: the next query sees it, and only that instrument is recomputed.
    july = read_bars(INDEX_1MIN / "2022_JUL_NIFTY.txt", dates=["2022-07-01"])
    fill(con, july)
    try:
        s2 = query_client.query("SELECT date, closed, prior_close FROM sessions ORDER BY date",
                                settings=settings)
        assert s2.height == len(days) + 1
        assert s2["prior_close"][-1] == s.filter(pl.col("date") == days[-1])["close"][0]
        # The incremental refresh equals a computation over the whole history, priors included.
        full = profiles_table_of(con)
        stored = query_client.query("SELECT * FROM sessions ORDER BY date", settings=settings)
        assert stored.select(full.columns).equals(full)
    finally:
        con.execute("DELETE FROM ticks WHERE ts >= ?", [int(july["ts"].min())])
        con.execute("DELETE FROM candles_1m WHERE ts >= ?", [int(july["ts"].min())])
    s3 = query_client.query("SELECT count(*) AS n FROM sessions", settings=settings)
    assert s3["n"][0] == len(days)
    # A day removed in the middle: its session goes, and the next day's prior is the day before.
    mid = bars.filter(pl.col("date") == pl.date(2022, 6, 15))
    lo, hi = int(mid["ts"].min()), int(mid["ts"].max())
    con.execute("DELETE FROM candles_1m WHERE ts BETWEEN ? AND ?", [lo, hi])
    try:
        s4 = query_client.query("SELECT date, close, prior_close FROM sessions ORDER BY date", settings=settings)
        assert datetime.date(2022, 6, 15) not in s4["date"].to_list() and s4.height == len(days) - 1
        before = s4.filter(pl.col("date") == pl.date(2022, 6, 14))["close"][0]
        assert s4.filter(pl.col("date") == pl.date(2022, 6, 16))["prior_close"][0] == before
        assert profiles_table_of(con).equals(
            query_client.query("SELECT * FROM sessions ORDER BY date", settings=settings)
            .select(profiles_table_of(con).columns))
    finally:
        con.register("_c", mid.select("instrument_key", "ts", "open", "high", "low", "close", "volume", "oi",
                                      ticks=pl.lit(4, pl.Int32), source=pl.lit("replay")).to_arrow())
        con.execute("INSERT INTO candles_1m BY NAME SELECT * FROM _c")
        con.unregister("_c")
    assert query_client.query("SELECT count(*) AS n FROM sessions", settings=settings)["n"][0] == len(days)


def profiles_table_of(con) -> pl.DataFrame:
    """Every NIFTY session computed in one pass over all its candles (no incremental refresh)."""
    from trading_core.profile_batch import compute_profiles
    df = con.sql("SELECT ts, open, high, low, close, volume FROM candles_1m WHERE instrument_key = ? "
                 "ORDER BY ts", params=[KEY]).pl()
    rows = [dict(date=p.session, poc=p.poc, vah=p.vah, val=p.val, ib_high=p.ib_high, ib_low=p.ib_low,
                 open_type=p.open_type, day_type=p.day_type, closed=p.closed, prior_close=p.prior.close if p.prior else None,
                 prior_poc=p.prior.poc if p.prior else None, value_relation=p.value_relation)
            for p in compute_profiles(df, instrument_key=KEY)]
    return pl.DataFrame(rows).with_columns(pl.col("date").str.to_date())


# --- read-only -------------------------------------------------------------------------------

WRITES = [
    "INSERT INTO ticks (instrument_key, ts, ltp, ltq, oi, seq, source) VALUES ('X', 1, 1, 1, 0, 1, 'sim')",
    "UPDATE ticks SET ltp = 0",
    "DELETE FROM candles_1m",
    "TRUNCATE ticks",
    "DROP TABLE ticks",
    "DROP VIEW ticks_ist",
    "CREATE TABLE evil AS SELECT 1",
    "CREATE OR REPLACE VIEW ticks_ist AS SELECT 1",
    "CREATE MACRO m(x) AS x",
    "ALTER TABLE ticks ADD COLUMN x INT",
    "MERGE INTO ticks USING (SELECT 1 AS a) s ON false WHEN NOT MATCHED THEN DO NOTHING",
    "COPY ticks TO '{tmp}/copy.csv'",
    "COPY (SELECT 1) TO '{tmp}/copy2.parquet' (FORMAT parquet)",
    "EXPORT DATABASE '{tmp}/export'",
    "ATTACH '{tmp}/other.duckdb' AS other",
    "DETACH market",
    "INSTALL httpfs",
    "LOAD httpfs",
    "SET threads = 1",
    "RESET threads",
    "PRAGMA threads = 1",
    "PRAGMA enable_profiling",
    "PRAGMA force_checkpoint",
    "CHECKPOINT",
    "VACUUM",
    "ANALYZE",
    "BEGIN TRANSACTION",
    "CALL pragma_version()",
    "SET VARIABLE v = 1",
    "USE memory",
    "SELECT * FROM checkpoint()",
    "SELECT * FROM read_text('/etc/hostname')",
    "SELECT * FROM read_csv('{tmp}/x.csv')",
    "SELECT * FROM '/etc/hostname'",
    "SELECT * FROM glob('/*')",
    "SELECT * FROM query('SELECT 1')",
    "SELECT * FROM ticks, LATERAL (SELECT * FROM read_blob('/etc/hostname'))",
    "WITH x AS (SELECT * FROM read_parquet('{tmp}/*.parquet')) SELECT * FROM x",
    "SELECT 1; DELETE FROM ticks",
    "PIVOT ticks ON source",
]


@pytest.mark.parametrize("sql", WRITES)
def test_writes_of_every_kind_are_refused_and_change_nothing(system, sql, tmp_path):
    settings, _, con = system
    sql = sql.format(tmp=tmp_path)
    before = fingerprint(con)
    with pytest.raises(q.QueryRefused) as err:
        query_client.query(sql, settings=settings)
    assert "\n" not in str(err.value) and len(str(err.value)) < 300
    assert fingerprint(con) == before
    assert list(tmp_path.iterdir()) == []
    assert query_client.query("SELECT count(*) AS n FROM ticks", settings=settings)["n"][0] > 0


def test_file_mode_refuses_the_same_and_leaves_no_lock(offline_db, tmp_path):
    settings = dataclasses.replace(settings_mod.load(), duckdb_path=offline_db,
                                   query_endpoint=f"tcp://127.0.0.1:{free_port()}")
    for sql in ("DELETE FROM ticks", "COPY ticks TO '%s/x.csv'" % tmp_path, "SELECT * FROM read_text('/etc/hostname')",
                "ATTACH '%s/o.duckdb'" % tmp_path):
        with pytest.raises(q.QueryRefused):
            query_client.query(sql, settings=settings)
    # DuckDB itself refuses a write on the read-only connection even past the guard:
    con = query_client.open_read_only(offline_db)
    with pytest.raises(duckdb.Error):
        con.execute("DELETE FROM ticks")
    with pytest.raises(duckdb.Error):
        con.execute("SELECT * FROM read_text('/etc/hostname')")
    con.close()
    r = query_client.query_result("SELECT count(*) AS n FROM ticks", settings=settings)
    assert r.via == "file" and r.table.column("n")[0].as_py() > 0
    persistence.check_writable(offline_db)          # nothing kept the file: a system could start now
    assert list(tmp_path.iterdir()) == []


def test_file_mode_and_service_answer_the_same(offline_db):
    con = persistence.connect(offline_db)
    settings = dataclasses.replace(settings_mod.load(), duckdb_path=offline_db,
                                   query_endpoint=f"tcp://127.0.0.1:{free_port()}")
    server = query_server.QueryServer(con, settings.query_endpoint, db_label=str(offline_db))
    server.start()
    sql = ("SELECT date_ist, count(*) AS n, max(ltp) AS hi FROM ticks_ist GROUP BY ALL ORDER BY ALL")
    live = query_client.query_result(sql, settings=settings)
    assert live.via == "server"
    server.stop()
    con.close()
    off = query_client.query_result(sql, settings=settings)
    assert off.via == "file"
    assert off.table.equals(live.table)


# --- limits ----------------------------------------------------------------------------------

# About 10^12 row combinations: hours of work, whatever the machine.
HEAVY = "SELECT sum(hash(a.ltp + b.ltp + c.range)) FROM ticks a, ticks b, range(1000) c"


def test_a_query_over_the_time_limit_is_cancelled_and_the_service_goes_on(system):
    settings, server, _ = system
    before = server.timeouts
    started = time.monotonic()
    with pytest.raises(q.QueryTimeout, match="time limit of 1 s"):
        query_client.query(HEAVY, settings=settings, timeout_s=1)
    assert time.monotonic() - started < 10
    assert server.timeouts == before + 1
    assert query_client.query("SELECT count(*) AS n FROM candles_1m", settings=settings)["n"][0] > 0


def test_the_time_limit_applies_in_file_mode_too(offline_db):
    settings = dataclasses.replace(settings_mod.load(), duckdb_path=offline_db,
                                   query_endpoint=f"tcp://127.0.0.1:{free_port()}")
    with pytest.raises(q.QueryTimeout):
        query_client.query(HEAVY, settings=settings, timeout_s=0.5)


def test_the_row_limit_raises_or_truncates(system, bars):
    settings, _, _ = system
    with pytest.raises(q.QueryTooLarge, match="more than 1,000 rows"):
        query_client.query("SELECT * FROM ticks", settings=settings, max_rows=1000)
    r = query_client.query_result("SELECT * FROM ticks ORDER BY seq", settings=settings, max_rows=1000,
                                  truncate=True)
    assert r.truncated and r.table.num_rows == 1000
    full = query_client.query("SELECT ts FROM ticks", settings=settings, max_rows=4 * bars.height)
    assert full.height == 4 * bars.height


def test_the_server_ceiling_caps_what_a_client_asks(offline_db):
    con = persistence.connect(offline_db)
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    server = query_server.QueryServer(con, endpoint, q.Limits(30.0, 500))
    server.start()
    settings = dataclasses.replace(settings_mod.load(), duckdb_path=offline_db, query_endpoint=endpoint)
    try:
        with pytest.raises(q.QueryTooLarge, match="more than 500 rows"):
            query_client.query("SELECT * FROM ticks", settings=settings, max_rows=10_000)
    finally:
        server.stop()
        con.close()


def test_a_locked_file_without_a_service_is_a_clear_error(offline_db, tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import duckdb, sys, time
        con = duckdb.connect({str(offline_db)!r})
        print("locked", flush=True)
        sys.stdin.read()
    """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        settings = dataclasses.replace(settings_mod.load(), duckdb_path=offline_db,
                                       query_endpoint=f"tcp://127.0.0.1:{free_port()}")
        with pytest.raises(q.QueryUnavailable, match=f"held by PID {holder.pid}"):
            query_client.query("SELECT 1", settings=settings, timeout_s=1)
    finally:
        holder.stdin.close()
        holder.wait(10)


def test_a_missing_file_is_a_clear_error(tmp_path):
    settings = dataclasses.replace(settings_mod.load(), duckdb_path=tmp_path / "none.duckdb",
                                   query_endpoint=f"tcp://127.0.0.1:{free_port()}")
    with pytest.raises(q.QueryUnavailable, match="no database at"):
        query_client.query("SELECT 1", settings=settings)
    assert not (tmp_path / "none.duckdb").exists()


def test_sql_errors_are_one_line(system):
    settings, _, _ = system
    with pytest.raises(q.QuerySQLError) as err:
        query_client.query("SELECT no_such_column FROM ticks", settings=settings)
    assert "no_such_column" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(q.QuerySQLError):
        query_client.query("SELEC 1", settings=settings)


def test_a_service_recording_another_file_is_not_mistaken_for_ours(system, tmp_path, bars):
    settings, server, _ = system
    other = dataclasses.replace(settings, duckdb_path=tmp_path / "other.duckdb")
    with pytest.raises(q.QueryUnavailable, match="records .*market.duckdb, not .*other.duckdb"):
        query_client.query_result("SELECT 1", settings=other, via="server")
    # Our file is not held by anyone: it is read directly, not through the other system.
    con = persistence.connect(other.duckdb_path)
    fill(con, bars.filter(pl.col("date") == pl.date(2022, 6, 1)))
    con.close()
    r = query_client.query_result("SELECT count(*) AS n FROM candles_1m", settings=other)
    assert r.via == "file" and r.table.column("n")[0].as_py() == bars.filter(pl.col("date") == pl.date(2022, 6, 1)).height
    served_before = server.served
    assert query_client.query("SELECT 1 AS x", settings=other, any_db=True)["x"][0] == 1
    assert server.served == served_before + 1


def test_a_file_recorded_before_the_research_views_still_has_them(tmp_path, bars):
    path = tmp_path / "old.duckdb"
    con = persistence.connect(path)                  # base schema only: no views.install
    fill(con, bars.filter(pl.col("date") <= pl.date(2022, 6, 3)))
    con.close()
    settings = dataclasses.replace(settings_mod.load(), duckdb_path=path,
                                   query_endpoint=f"tcp://127.0.0.1:{free_port()}")
    c = query_client.query("SELECT count(*) AS n FROM candles(30)", settings=settings)
    assert c["n"][0] > 0
    s = query_client.query("SELECT date, poc FROM sessions ORDER BY date", settings=settings)
    assert s["date"].to_list() == [datetime.date(2022, 6, d) for d in (1, 2, 3)]
    assert query_client.query("SELECT count(*) AS n FROM signal_outcomes", settings=settings)["n"][0] == 0
    con = duckdb.connect(str(path), read_only=True)   # and the file itself was not changed
    assert con.execute("SELECT count(*) FROM duckdb_views() WHERE view_name = 'signal_outcomes'").fetchone()[0] == 0
    con.close()
