"""``python3 run.py sql`` and ``python3 run.py export``: research on the recorded market from a
terminal, whether or not the system runs (see :mod:`trading_core.query_client`).

    python3 run.py sql "SELECT date_ist, count(*) FROM ticks_ist GROUP BY ALL ORDER BY 1"
    python3 run.py sql --format csv --out ib.csv "FROM sessions"
    python3 run.py sql -p 2022-06-09 "SELECT * FROM candles(30) WHERE date_ist = ?::DATE"
    python3 run.py export --from 2022-11-18 --to 2022-11-18 exports/

Exit codes: 0 done, 1 the query failed (refused, timed out, too large, SQL error, no database),
2 bad arguments or configuration.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import polars as pl  # noqa: E402
import pyarrow as pa  # noqa: E402

from trading_core import query as q, query_client, settings as settings_mod  # noqa: E402

EXIT_FAILED = 1
EXIT_CONFIG = 2
TABLE_ROWS = 100            # rows printed by --format table unless --rows


def _settings(args: argparse.Namespace) -> settings_mod.Settings:
    """Settings from --config, with --db / --query-endpoint applied. Raises ValueError."""
    s = settings_mod.load(args.config or os.environ.get("AMT_CONFIG"))
    changes = {}
    if args.db:
        changes["duckdb_path"] = Path(args.db).expanduser().resolve()
    if args.query_endpoint:
        changes["query_endpoint"] = args.query_endpoint
    return dataclasses.replace(s, **changes) if changes else s


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", metavar="FILE", help="the DuckDB file (DUCKDB_PATH); without it a running "
                                                "system is queried whatever file it records to")
    p.add_argument("--query-endpoint", metavar="ENDPOINT",
                   help="the running system's query service (QUERY_ENDPOINT, default tcp://127.0.0.1:5557)")
    p.add_argument("--config", metavar="FILE", help="config file (default config.py, else config.example.py)")
    p.add_argument("--timeout", type=float, metavar="S", help="time limit per query in seconds "
                                                               "(QUERY_TIMEOUT_S, default 30)")


def _param(text: str):
    """A --param value: JSON numbers, true/false/null as such, anything else a string."""
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return value if isinstance(value, (int, float, bool)) or value is None else text


def _print_table(df: pl.DataFrame, rows: int, truncated: bool, elapsed_ms: float, via: str,
                 out=None) -> None:
    out = out or sys.stdout
    shown = df.head(rows)
    with pl.Config(tbl_rows=rows, tbl_cols=-1, fmt_str_lengths=60, tbl_width_chars=200,
                   tbl_hide_dataframe_shape=True, tbl_hide_column_data_types=False,
                   float_precision=None, thousands_separator=False):
        print(shown, file=out)
    more = " or more" if truncated else ""
    note = f"{df.height:,}{more} row{'s' if df.height != 1 else ''}"
    if df.height > rows:
        note += f", first {rows} shown (--rows N, or --format csv --out FILE for all)"
    print(f"{note}; {elapsed_ms:.0f} ms via {via}", file=out)


def sql_main(argv: list[str]) -> int:
    """``run.py sql``: run one read-only query and print or save its result. Returns the exit code."""
    p = argparse.ArgumentParser(
        prog="run.py sql", description="Run one read-only SQL query on the recorded market, "
        "through the running system or on the file when it is stopped.",
        epilog="Tables and views: ticks, ticks_ist, candles_1m, candles_1m_ist, candles(N) and "
               "tick_candles(SECONDS) table macros, sessions, signals, signals_ist, "
               "signal_outcomes, feed_runs; orders, fills, positions, trades (the execution "
               "service's audit trail). Only SELECT / EXPLAIN / DESCRIBE / SHOW / read-only "
               "PRAGMA run.")
    p.add_argument("sql", nargs="?", help="the query; '-' or omitted: read it from --file or stdin")
    p.add_argument("-f", "--file", metavar="SQLFILE", help="read the query from this file")
    p.add_argument("-e", "--example", metavar="NAME", help="run a saved example query (--list-examples)")
    p.add_argument("--list-examples", action="store_true", help="print the saved example queries and exit")
    p.add_argument("-p", "--param", action="append", default=[], metavar="VALUE",
                   help="a value for the next ? placeholder (repeatable); numbers stay numbers")
    p.add_argument("--format", choices=["table", "csv", "json", "parquet"], default="table")
    p.add_argument("-o", "--out", metavar="FILE", help="write the result here (needed for parquet)")
    p.add_argument("--rows", type=int, default=TABLE_ROWS, metavar="N",
                   help=f"rows printed by --format table (default {TABLE_ROWS})")
    p.add_argument("--max-rows", type=int, metavar="N",
                   help="fail when the result has more rows (QUERY_MAX_ROWS, default 1,000,000); "
                        "--format table shows the first rows instead")
    _common(p)
    try:
        args = p.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0) and EXIT_CONFIG
    if args.list_examples:
        from trading_core.views import EXAMPLES
        for e in EXAMPLES:
            print(f"-- {e['name']}: {e['title']}\n{e['sql']};\n")
        return 0
    try:
        if args.example:
            from trading_core.views import EXAMPLES
            chosen = [e for e in EXAMPLES if e["name"] == args.example]
            if not chosen:
                raise ValueError(f"no example {args.example!r}; choose from "
                                 f"{', '.join(e['name'] for e in EXAMPLES)}")
            sql = chosen[0]["sql"]
        elif args.file:
            sql = Path(args.file).read_text()
        elif args.sql in (None, "-"):
            if sys.stdin.isatty():
                p.print_usage(sys.stderr)
                print("run.py sql: error: give a query, -f FILE, or pipe one in", file=sys.stderr)
                return EXIT_CONFIG
            sql = sys.stdin.read()
        else:
            sql = args.sql
        if args.format == "parquet" and not args.out:
            raise ValueError("--format parquet needs --out FILE")
        if args.rows <= 0:
            raise ValueError("--rows must be positive")
        settings = _settings(args)
    except (OSError, ValueError, SyntaxError) as exc:
        print(f"run.py sql: error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    params = [_param(v) for v in args.param] or None
    try:
        result = query_client.query_result(
            sql, params, timeout_s=args.timeout, max_rows=args.max_rows,
            truncate=args.format == "table", settings=settings, any_db=not args.db)
    except q.QueryError as exc:
        print(f"run.py sql: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except ValueError as exc:
        print(f"run.py sql: error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    df = result.frame()
    try:
        if args.format == "table":
            if args.out:
                with open(args.out, "w") as fh:
                    _print_table(df, args.rows, result.truncated, result.elapsed_ms, result.via, fh)
            else:
                _print_table(df, args.rows, result.truncated, result.elapsed_ms, result.via)
        elif args.format == "csv":
            if args.out:
                df.write_csv(args.out)
            else:
                sys.stdout.write(df.write_csv())
        elif args.format == "json":
            text = df.write_json()
            if args.out:
                Path(args.out).write_text(text + "\n")
            else:
                print(text)
        else:
            df.write_parquet(args.out)
    except OSError as exc:
        print(f"run.py sql: error: cannot write {args.out}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_CONFIG
    if args.out:
        print(f"{df.height:,} rows written to {args.out} ({result.elapsed_ms:.0f} ms via {result.via})",
              file=sys.stderr)
    return 0


# --- export ----------------------------------------------------------------------------------

ORDER = {"ticks": "ts, seq", "candles_1m": "ts", "signals": "ts", "sessions": "date"}
EXPORTS = {
    # table -> (SQL reading one IST day of it, columns added for the partitioning)
    "ticks": "SELECT *, CAST(make_timestamp((ts + 19800000) * 1000) AS DATE) AS date FROM ticks "
             "WHERE ts >= ? AND ts < ?",
    "candles_1m": "SELECT *, CAST(make_timestamp((ts + 19800000) * 1000) AS DATE) AS date "
                  "FROM candles_1m WHERE ts >= ? AND ts < ?",
    "signals": "SELECT *, CAST(make_timestamp((ts + 19800000) * 1000) AS DATE) AS date "
               "FROM signals WHERE ts >= ? AND ts < ?",
    "sessions": "SELECT * FROM sessions WHERE date >= CAST(make_timestamp((? + 19800000) * 1000) AS DATE) "
                "AND date < CAST(make_timestamp((? + 19800000) * 1000) AS DATE)",
}
DEFAULT_EXPORT = ("ticks", "candles_1m")
IST_MS = 19_800_000
DAY_MS = 86_400_000


def _day_bounds(day: dt.date) -> tuple[int, int]:
    """[start, end) of IST ``day`` in epoch ms UTC."""
    start = (day - dt.date(1970, 1, 1)).days * DAY_MS - IST_MS
    return start, start + DAY_MS


def _date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {text!r}") from None


def export_day(table: str, day: dt.date, out_dir: Path, settings: settings_mod.Settings,
               instruments: list[str] | None, timeout_s: float | None, any_db: bool) -> int:
    """Write one IST day of ``table`` under ``out_dir/table`` as hive-partitioned Parquet
    (``date=YYYY-MM-DD/instrument_key=<url-encoded>/part-0.parquet``), replacing that day's
    earlier export. Fetches in pieces of at most ``QUERY_MAX_ROWS`` rows (instruments grouped by
    their row counts). Returns rows written. Raises :class:`trading_core.query.QueryError`."""
    import pyarrow.dataset as ds
    lo, hi = _day_bounds(day)
    base = EXPORTS[table]
    where_keys = ""
    params: list = [lo, hi]
    if instruments:
        where_keys = f" AND instrument_key IN ({', '.join('?' * len(instruments))})"
        params += instruments
    counts = query_client.query_result(
        f"SELECT instrument_key, count(*) AS n FROM ({base}) WHERE true{where_keys} GROUP BY ALL ORDER BY 1",
        params, timeout_s=timeout_s, settings=settings, any_db=any_db).frame()
    target = out_dir / table
    stale = target / f"date={day.isoformat()}"
    if stale.exists():                      # re-export of a day replaces it (instruments may differ)
        import shutil
        shutil.rmtree(stale)
    if counts.height == 0:
        return 0
    limit = settings.query_max_rows
    groups: list[list[str]] = [[]]
    size = 0
    for key, n in counts.iter_rows():
        if groups[-1] and size + n > limit:
            groups.append([])
            size = 0
        groups[-1].append(key)
        size += n
    written = 0
    partitioning = ds.partitioning(pa.schema([("date", pa.string()), ("instrument_key", pa.string())]),
                                   flavor="hive")
    for i, keys in enumerate(groups):
        sql = (f"SELECT * REPLACE (strftime(date, '%Y-%m-%d') AS date) FROM ({base}) "
               f"WHERE instrument_key IN ({', '.join('?' * len(keys))}) ORDER BY instrument_key, {ORDER[table]}")
        result = query_client.query_result(sql, [lo, hi, *keys], timeout_s=timeout_s,
                                           max_rows=max(limit, sum(counts.filter(
                                               pl.col("instrument_key").is_in(keys))["n"])),
                                           settings=settings, any_db=any_db)
        ds.write_dataset(result.table, target, format="parquet", partitioning=partitioning,
                         basename_template=f"part-{i}-{{i}}.parquet",
                         existing_data_behavior="overwrite_or_ignore",
                         max_rows_per_group=1 << 20)
        written += result.table.num_rows
    return written


def export_main(argv: list[str]) -> int:
    """``run.py export``: hive-partitioned Parquet of the recorded days. Returns the exit code."""
    p = argparse.ArgumentParser(
        prog="run.py export",
        description="Write recorded days as hive-partitioned Parquet (DIR/<table>/date=YYYY-MM-DD/"
                    "instrument_key=<key>/part-*.parquet), through the running system or from the "
                    "stopped file. Any tool reads the result while the system runs, e.g. "
                    "duckdb: SELECT * FROM read_parquet('DIR/ticks/**/*.parquet', hive_partitioning=true).")
    p.add_argument("--from", dest="date_from", type=_date, required=True, metavar="DATE",
                   help="first IST date, YYYY-MM-DD")
    p.add_argument("--to", dest="date_to", type=_date, required=True, metavar="DATE",
                   help="last IST date (inclusive)")
    p.add_argument("dir", help="output folder (created); a day exported again is replaced")
    p.add_argument("--tables", default=",".join(DEFAULT_EXPORT),
                   help=f"comma-separated, of {', '.join(EXPORTS)} (default {','.join(DEFAULT_EXPORT)})")
    p.add_argument("--instrument", action="append", default=[], metavar="KEY",
                   help="only this instrument key (repeatable)")
    _common(p)
    try:
        args = p.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0) and EXIT_CONFIG
    tables = [t.strip() for t in args.tables.split(",") if t.strip()]
    unknown = [t for t in tables if t not in EXPORTS]
    if unknown or not tables:
        print(f"run.py export: error: unknown table(s) {unknown}; choose from {', '.join(EXPORTS)}",
              file=sys.stderr)
        return EXIT_CONFIG
    if args.date_to < args.date_from:
        print(f"run.py export: error: --to {args.date_to} is before --from {args.date_from}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        settings = _settings(args)
        out = Path(args.dir).expanduser().resolve()
        out.mkdir(parents=True, exist_ok=True)
    except (OSError, ValueError, SyntaxError) as exc:
        print(f"run.py export: error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    started = time.monotonic()
    total = 0
    try:
        days = query_client.query_result(
            "SELECT DISTINCT CAST(make_timestamp((ts + 19800000) * 1000) AS DATE) AS d FROM candles_1m "
            "WHERE ts >= ? AND ts < ? UNION SELECT DISTINCT CAST(make_timestamp((ts + 19800000) * 1000) "
            "AS DATE) FROM ticks WHERE ts >= ? AND ts < ? ORDER BY 1",
            [*(_day_bounds(args.date_from)[0], _day_bounds(args.date_to)[1])] * 2,
            timeout_s=args.timeout, settings=settings, any_db=not args.db).frame()["d"].to_list()
        for day in days:
            for table in tables:
                n = export_day(table, day, out, settings, args.instrument or None, args.timeout,
                               not args.db)
                total += n
                if n:
                    print(f"{day} {table}: {n:,} rows", file=sys.stderr)
    except q.QueryError as exc:
        print(f"run.py export: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except OSError as exc:
        print(f"run.py export: error: cannot write under {out}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if not days:
        print(f"run.py export: nothing recorded between {args.date_from} and {args.date_to}",
              file=sys.stderr)
        return EXIT_FAILED
    print(f"exported {total:,} rows of {len(days)} day(s) to {out} in {time.monotonic() - started:.1f} s; "
          f"read with: SELECT * FROM read_parquet('{out}/ticks/**/*.parquet', hive_partitioning=true)",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(sql_main(sys.argv[1:]))


# --- the browser console's endpoint (api/server.py: POST /api/sql, GET /api/sql/examples) ------

API_DISPLAY_ROWS = 5_000     # rows sent to the browser at most (the console shows a table)
API_CONCURRENT = 2           # console queries running at once per API process
_api_slots = None


def _status(exc: BaseException) -> int:
    return {"refused": 422, "sql": 422, "too_large": 413, "timeout": 504,
            "unavailable": 503, "busy": 503}.get(getattr(exc, "kind", ""), 500)


def payload(result: q.Result, display_rows: int = API_DISPLAY_ROWS) -> dict:
    """A result as JSON-ready ``{"columns": [{"name", "type"}], "rows": [[...]], "row_count",
    "shown", "truncated", "elapsed_ms", "via"}``; at most ``display_rows`` rows are included."""
    table = result.table
    shown = table.slice(0, display_rows)
    cols = [{"name": f.name, "type": str(f.type)} for f in table.schema]
    rows = [list(r.values()) for r in shown.to_pylist()]
    return {"columns": cols, "rows": rows, "row_count": table.num_rows, "shown": shown.num_rows,
            "truncated": result.truncated or table.num_rows > shown.num_rows,
            "elapsed_ms": round(result.elapsed_ms, 1), "via": result.via}


async def api_sql(settings: settings_mod.Settings, content_type: str, body: bytes) -> tuple[int, dict]:
    """Handle ``POST /api/sql``: JSON ``{"sql": str, "params": [..] | {..} | null,
    "timeout_s": number | null}`` -> ``(HTTP status, JSON body)``. Runs the query through
    :func:`trading_core.query_client.query_result` in a worker thread (the event loop never
    waits), at most :data:`API_CONCURRENT` at once, with the row limit of the settings and
    the first :data:`API_DISPLAY_ROWS` rows returned. Errors: ``{"kind", "error"}`` with 400
    (bad request), 415 (not JSON: also keeps other web sites' plain form posts out), 413, 422
    (refused or SQL error), 503, 504 (time limit)."""
    import asyncio
    import msgspec
    global _api_slots
    if not content_type.split(";")[0].strip().lower() == "application/json":
        return 415, {"kind": "error", "error": "send the query as application/json"}
    try:
        req = msgspec.json.decode(body)
        if not isinstance(req, dict) or not isinstance(req.get("sql"), str):
            raise ValueError("body must be a JSON object with a string 'sql'")
        timeout = req.get("timeout_s")
        if timeout is not None and not isinstance(timeout, (int, float)):
            raise ValueError("timeout_s must be a number")
        params = q.check_params(req.get("params"))
    except (ValueError, msgspec.DecodeError) as exc:
        return 400, {"kind": "error", "error": f"bad request: {exc}"}
    if _api_slots is None:
        _api_slots = asyncio.Semaphore(API_CONCURRENT)
    async with _api_slots:
        try:
            result = await asyncio.to_thread(
                query_client.query_result, req["sql"], params, timeout_s=timeout, truncate=True,
                settings=settings)
        except q.QueryError as exc:
            return _status(exc), q.describe(exc)
        except ValueError as exc:
            return 400, {"kind": "error", "error": str(exc)}
    return 200, payload(result)


def api_examples() -> dict:
    """``GET /api/sql/examples``: ``{"examples": [{"name", "title", "sql"}]}``."""
    from trading_core.views import EXAMPLES
    return {"examples": EXAMPLES}
