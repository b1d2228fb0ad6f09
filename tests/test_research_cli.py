"""``python3 run.py sql`` / ``run.py export`` and the browser console's endpoint, on a file of real
recorded data (the system stopped: the client opens the file read-only)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import duckdb
import polars as pl
import pytest

from data_handling.replay import read_bars, read_ticks
from scripts import research
from tests.conftest import FO_TICKS, INDEX_1MIN
from tests.system_harness import ROOT, free_port
from tests.test_query import fill
from trading_core import audit, persistence, settings as settings_mod, views


@pytest.fixture(scope="module")
def db(tmp_path_factory, shared_data) -> Path:
    """NIFTY and BANKNIFTY index bars of June 2022, and two real futures tick files of 2022-11-18."""
    path = tmp_path_factory.mktemp("clidb") / "market.duckdb"
    con = persistence.connect(path)
    views.install(con)
    audit.install(con)                 # as the ingestor does: orders, fills, trades (issue 6)
    fill(con, read_bars(INDEX_1MIN / "2022_JUN_NIFTY.txt"))
    fill(con, read_bars(INDEX_1MIN / "2022_JUN_BNF.txt"))
    ticks = pl.concat([read_ticks(FO_TICKS / "Futures" / "NIFTY-I.csv"),
                       read_ticks(FO_TICKS / "Futures" / "BANKNIFTY-I.csv")]).drop("date")
    ticks = ticks.with_row_index("seq").with_columns(pl.col("seq").cast(pl.Int64) + 10_000_000,
                                                     source=pl.lit("replay"))
    con.register("_t", ticks.to_arrow())
    con.execute("INSERT INTO ticks BY NAME SELECT * FROM _t")
    con.close()
    return path


@pytest.fixture()
def cli(db, monkeypatch):
    """Run ``sql_main``/``export_main`` in this process with the file and an endpoint nobody serves."""
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    monkeypatch.setenv("AMT_DUCKDB_PATH", str(db))
    monkeypatch.setenv("AMT_QUERY_ENDPOINT", endpoint)
    return db


def test_table_output_is_readable_and_says_where_it_ran(cli, capsys):
    assert research.sql_main(["SELECT date_ist, count(*) AS ticks FROM ticks_ist "
                              "WHERE instrument_key = 'NSE_INDEX|Nifty 50' GROUP BY ALL ORDER BY 1"]) == 0
    out = capsys.readouterr().out
    assert "2022-06-01" in out and "1512" in out            # 378 bars x 4 ticks
    assert "22 rows" in out and "via file" in out


def test_table_output_shows_the_first_rows_of_a_large_result(cli, capsys):
    assert research.sql_main(["--rows", "7", "SELECT ts FROM ticks ORDER BY ts"]) == 0
    out = capsys.readouterr().out
    assert "first 7 shown" in out
    assert out.count("\n│ ") == 3 + 7                        # name, ---, dtype, then 7 rows


@pytest.mark.parametrize("fmt", ["csv", "json", "parquet"])
def test_formats_written_to_a_file_hold_every_row(cli, tmp_path, fmt, capsys):
    out = tmp_path / f"r.{fmt}"
    sql = "SELECT instrument_key, ts, ltp, ltq FROM ticks WHERE instrument_key LIKE 'NSE_FO|%' ORDER BY seq"
    assert research.sql_main(["--format", fmt, "--out", str(out), sql]) == 0
    read = {"csv": pl.read_csv, "json": pl.read_json, "parquet": pl.read_parquet}[fmt]
    got = read(out)
    want = pl.concat([read_ticks(FO_TICKS / "Futures" / "NIFTY-I.csv"),
                      read_ticks(FO_TICKS / "Futures" / "BANKNIFTY-I.csv")])
    assert got.height == want.height
    assert got["ltp"].to_list() == want["ltp"].to_list()
    assert "rows written" in capsys.readouterr().err


def test_csv_and_json_to_stdout_with_params(cli, capsys):
    assert research.sql_main(["--format", "csv", "-p", "2022-06-09", "-p", "NSE_INDEX|Nifty 50",
                              "SELECT max(high) AS h FROM candles_1m_ist WHERE date_ist = ?::DATE "
                              "AND instrument_key = ?"]) == 0
    day = read_bars(INDEX_1MIN / "2022_JUN_NIFTY.txt", dates=["2022-06-09"])
    assert capsys.readouterr().out.splitlines() == ["h", str(day["high"].max())]
    assert research.sql_main(["--format", "json", "-p", "3", "SELECT ? + 1 AS x"]) == 0
    assert json.loads(capsys.readouterr().out) == [{"x": 4}]


def test_refused_and_failed_queries_exit_1_with_one_line(cli, capsys):
    for sql in ("DELETE FROM ticks", "COPY ticks TO '/tmp/x.csv'", "SELECT nope FROM ticks"):
        assert research.sql_main([sql]) == 1
        err = capsys.readouterr().err.strip()
        assert err.startswith("run.py sql: ") and "\n" not in err
    assert research.sql_main(["--max-rows", "10", "--format", "csv", "SELECT * FROM ticks"]) == 1
    assert "row limit" in capsys.readouterr().err


def test_bad_arguments_exit_2(cli, capsys, tmp_path):
    assert research.sql_main(["--format", "parquet", "SELECT 1"]) == 2
    assert research.sql_main(["--nope"]) == 2
    assert research.sql_main(["-f", str(tmp_path / "missing.sql")]) == 2
    assert research.export_main(["--from", "2022-06-09", "--to", "2022-06-01", str(tmp_path)]) == 2
    assert research.export_main(["--from", "2022-6-x", "--to", "2022-06-01", str(tmp_path)]) == 2
    assert research.export_main(["--from", "2022-06-01", "--to", "2022-06-01", "--tables", "nope",
                                 str(tmp_path)]) == 2


def test_run_py_sql_from_another_terminal(db, tmp_path):
    sql_file = tmp_path / "q.sql"
    sql_file.write_text("SELECT count(*) AS n FROM candles_1m;\n")
    out = subprocess.run([sys.executable, str(ROOT / "run.py"), "sql", "--db", str(db), "--query-endpoint",
                          f"tcp://127.0.0.1:{free_port()}", "--format", "json", "-f", str(sql_file)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    bars = read_bars(INDEX_1MIN / "2022_JUN_NIFTY.txt").height + read_bars(INDEX_1MIN / "2022_JUN_BNF.txt").height
    assert json.loads(out.stdout) == [{"n": bars}]


def test_export_writes_hive_partitions_that_other_tools_read(cli, tmp_path, capsys):
    out = tmp_path / "export"
    assert research.export_main(["--from", "2022-06-08", "--to", "2022-06-09",
                                 "--tables", "ticks,candles_1m,sessions", str(out)]) == 0
    dirs = sorted(p.relative_to(out).as_posix() for p in out.glob("ticks/*/*"))
    assert dirs == ["ticks/date=2022-06-08/instrument_key=NSE_INDEX%7CNifty%2050",
                    "ticks/date=2022-06-08/instrument_key=NSE_INDEX%7CNifty%20Bank",
                    "ticks/date=2022-06-09/instrument_key=NSE_INDEX%7CNifty%2050",
                    "ticks/date=2022-06-09/instrument_key=NSE_INDEX%7CNifty%20Bank"]
    con = duckdb.connect()
    got = con.execute(f"SELECT date, instrument_key, count(*), sum(ltp) FROM read_parquet("
                      f"'{out}/ticks/**/*.parquet', hive_partitioning = true) GROUP BY ALL ORDER BY ALL").fetchall()
    src = duckdb.connect(str(cli), read_only=True)
    want = src.execute("SELECT date_ist, instrument_key, count(*), sum(ltp) FROM ticks_ist WHERE date_ist "
                       "BETWEEN DATE '2022-06-08' AND DATE '2022-06-09' GROUP BY ALL ORDER BY ALL").fetchall()
    src.close()
    assert [(str(d), k, n, s) for d, k, n, s in got] == [(str(d), k, n, s) for d, k, n, s in want]
    candles = pl.scan_parquet(out / "candles_1m" / "**" / "*.parquet", hive_partitioning=True).collect()
    assert candles.height == sum(read_bars(INDEX_1MIN / f, dates=["2022-06-08", "2022-06-09"]).height
                                 for f in ("2022_JUN_NIFTY.txt", "2022_JUN_BNF.txt"))
    sessions = pl.scan_parquet(out / "sessions" / "**" / "*.parquet", hive_partitioning=True).collect()
    assert sessions.height == 4 and sessions["poc"].null_count() == 0
    # Exporting the same day again replaces it instead of adding files.
    assert research.export_main(["--from", "2022-06-09", "--to", "2022-06-09", str(out)]) == 0
    again = con.execute(f"SELECT count(*) FROM read_parquet('{out}/ticks/**/*.parquet', hive_partitioning = true)"
                        ).fetchone()[0]
    assert again == sum(n for _, _, n, _ in want)


def test_export_splits_a_day_larger_than_the_row_limit(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("AMT_QUERY_MAX_ROWS", "10000")          # NIFTY-I alone has 16,687 prints
    out = tmp_path / "fo"
    assert research.export_main(["--from", "2022-11-18", "--to", "2022-11-18", str(out)]) == 0
    got = pl.scan_parquet(out / "ticks" / "**" / "*.parquet", hive_partitioning=True).collect()
    nifty = read_ticks(FO_TICKS / "Futures" / "NIFTY-I.csv")
    assert got.filter(pl.col("instrument_key") == "NSE_FO|NIFTY-I")["ltp"].to_list() == nifty["ltp"].to_list()
    assert got.height == nifty.height + read_ticks(FO_TICKS / "Futures" / "BANKNIFTY-I.csv").height


def test_export_of_an_empty_range_says_so(cli, tmp_path, capsys):
    assert research.export_main(["--from", "2020-01-01", "--to", "2020-01-31", str(tmp_path)]) == 1
    assert "nothing recorded" in capsys.readouterr().err


# --- the browser console's endpoint ----------------------------------------------------------


def api(settings, body, content_type="application/json"):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return asyncio.run(research.api_sql(settings, content_type, data))


def test_api_sql_returns_columns_and_rows(db):
    settings = dataclasses.replace(settings_mod.load(), duckdb_path=db,
                                   query_endpoint=f"tcp://127.0.0.1:{free_port()}")
    status, body = api(settings, {"sql": "SELECT date_ist, max(high) AS h FROM candles_1m_ist WHERE "
                                         "instrument_key = ? GROUP BY ALL ORDER BY 1", "params": ["NSE_INDEX|Nifty 50"]})
    assert status == 200
    assert [c["name"] for c in body["columns"]] == ["date_ist", "h"]
    assert body["row_count"] == 22 and body["rows"][0][0].isoformat() == "2022-06-01"
    status, body = api(settings, {"sql": "SELECT * FROM ticks"})
    assert status == 200 and body["shown"] == research.API_DISPLAY_ROWS and body["truncated"]


@pytest.mark.parametrize("body,ctype,status,kind", [
    ({"sql": "DROP TABLE ticks"}, "application/json", 422, "refused"),
    ({"sql": "SELECT nope"}, "application/json", 422, "sql"),
    ({"sql": "SELECT 1", "params": [[1]]}, "application/json", 400, "error"),
    ({"nosql": 1}, "application/json", 400, "error"),
    (b"not json", "application/json", 400, "error"),
    ({"sql": "SELECT 1"}, "text/plain", 415, "error"),
    ({"sql": "SELECT sum(hash(a.ltp + b.ltp + c.range)) FROM ticks a, ticks b, range(1000) c",
      "timeout_s": 0.5}, "application/json", 504, "timeout"),
])
def test_api_sql_errors(db, body, ctype, status, kind):
    settings = dataclasses.replace(settings_mod.load(), duckdb_path=db,
                                   query_endpoint=f"tcp://127.0.0.1:{free_port()}")
    got_status, got = api(settings, body, ctype)
    assert (got_status, got["kind"]) == (status, kind)
    assert got["error"] and "\n" not in got["error"]


def test_examples_are_served_and_each_runs(db):
    settings = dataclasses.replace(settings_mod.load(), duckdb_path=db,
                                   query_endpoint=f"tcp://127.0.0.1:{free_port()}")
    examples = research.api_examples()["examples"]
    assert {e["name"] for e in examples} >= {"volume_at_price", "ib_stats", "close_in_prior_value",
                                             "strategy_pnl_by_day_type"}
    for e in examples:
        status, body = api(settings, {"sql": e["sql"]})
        assert status == 200, (e["name"], body)
    status, body = api(settings, {"sql": next(e["sql"] for e in examples if e["name"] == "ib_stats")})
    assert {r[0] for r in body["rows"]} == {"NSE_INDEX|Nifty 50", "NSE_INDEX|Nifty Bank"}
