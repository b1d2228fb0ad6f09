"""Research tables, views and table macros in the ingestor's DuckDB file, and how they are kept.

All timestamps ``ts`` are epoch milliseconds UTC; ``time_ist`` is a TIMESTAMP in Asia/Kolkata
(UTC+05:30, no DST) and ``date_ist`` its DATE; prices are rupees, quantities units.

From :mod:`trading_core.persistence` (recorded by the ingestor):

``ticks`` / ``ticks_ist``
    every tick: ``instrument_key, ts, ltp, ltq, oi, seq, source`` (+ ``time_ist, date_ist``).
``candles_1m`` / ``candles_1m_ist``
    closed 1-minute bars: ``instrument_key, ts`` (bar open), ``open, high, low, close, volume,
    oi, ticks, source`` (+ ``time_ist, date_ist``).
``feed_runs``
    one row per ingestor feed run.

Added here:

``candles(interval_minutes)`` (table macro)
    N-minute bars built from ``candles_1m``, aligned to 09:15 IST every day (a 75-minute bar
    starts at 09:15, 10:30, 11:45, …; pre-open minutes fall in the bar before 09:15):
    ``instrument_key, source, ts, time_ist, date_ist, open, high, low, close, volume, oi,
    ticks, bars`` (``bars``: 1-minute bars inside). Example: ``FROM candles(15)``.
``tick_candles(interval_seconds)`` (table macro)
    bars of any number of seconds built from ``ticks`` (aligned to 09:15:00 IST), same columns
    with ``ticks`` the prints inside; first/last print by ``seq``.
``signals`` / ``signals_ist`` (views)
    every ``signal.<strategy>`` message the recorder saw on the bus, read from the audit trail's
    ``events`` (:mod:`trading_core.audit`, ``kind = 'signal'``): ``strategy, instrument_key, ts,
    side, entry, stop_loss, target, reason, received_ms`` (wall clock), ``source`` (the
    ingestor's feed: sim | replay | upstox), ``run_id``, ``signal_id`` (joins
    ``risk_decisions``, ``positions``). Replaying a range again replaces the earlier replay's
    signals of those instruments in that range, like ticks (:func:`trading_core.audit.clear_replayed`).
    Signals published while the ingestor is down are not recorded. (Files written before
    2026-12-03 kept signals in a table of their own; :func:`install` folds it into ``events``.)
``signal_outcomes`` (view)
    a *simulated* outcome of each signal on the recorded 1-minute candles of its day, starting
    with the minute after the signal: ``exit_reason`` = ``stop`` (the stop-loss traded; checked
    first when a bar touches both), ``target``, or ``close`` (last bar of the day); ``exit``,
    ``exit_ts``, ``pnl_points`` (rupees per unit, signed by side), ``r_multiple`` (PnL over the
    planned risk). No fills, slippage or costs: orders and real trades belong to the execution
    service (issue 6), which will add its own ``orders``/``trades`` tables.
``sessions``
    one row per instrument, feed source and IST date with the Market Profile levels
    (:func:`trading_core.profile_batch.compute_profiles` on that instrument's 1-minute candles,
    so TPO levels equal the live engine's; volume-at-price is at 1-minute resolution):
    ``session_kind, closed, open, high, low, close, poc, vah, val, volume_poc, volume_vah,
    volume_val, volume_source, ib_high, ib_low, ib_range, ext_up, ext_down, open_type, day_type,
    open_vs_prior_value, open_vs_prior_range, value_relation, balance, prior_high, prior_low,
    prior_close, prior_poc, prior_vah, prior_val, poor_high, poor_low, row_size, prints, bars,
    last_bar_ts, computed_ms``.

How ``sessions`` stays current (decision): it is derived data, so it is computed on demand,
not on every tick. Before any query that reads ``sessions``, the query service (in the
ingestor, the file's only writer) finds, per instrument and source, the first date whose
candles changed since its session was stored (bar count or last bar differs, or the day is
gone), recomputes that date and every later one (reading :data:`HISTORY_MARGIN` earlier dates
too, so prior-day references and the typical range are exactly those of a computation over the
whole history) and stores them; a day still trading is stored with ``closed = false`` and
recomputed on the next query that reads ``sessions``. This work runs before the query's time
limit starts (a first query on a long history pays for all of it once). When the system is stopped and the file is
opened read-only, stale sessions are computed in memory for that query (a temporary table that
shadows the stored one). So ``sessions`` is always consistent with ``candles_1m`` at query time.
"""

from __future__ import annotations

import datetime as _dt
import logging
import threading
import time

import duckdb
import polars as pl
import pyarrow as pa

from trading_core import audit

log = logging.getLogger("views")

TABLES = {
    "sessions": """(
    instrument_key VARCHAR NOT NULL, source VARCHAR NOT NULL, date DATE NOT NULL,
    session_kind VARCHAR, closed BOOLEAN, open DOUBLE, high DOUBLE, low DOUBLE, close DOUBLE,
    poc DOUBLE, vah DOUBLE, val DOUBLE, volume_poc DOUBLE, volume_vah DOUBLE, volume_val DOUBLE,
    volume_source VARCHAR, ib_high DOUBLE, ib_low DOUBLE, ib_range DOUBLE, ext_up DOUBLE,
    ext_down DOUBLE, open_type VARCHAR, day_type VARCHAR, open_vs_prior_value VARCHAR,
    open_vs_prior_range VARCHAR, value_relation VARCHAR, balance VARCHAR, prior_high DOUBLE,
    prior_low DOUBLE, prior_close DOUBLE, prior_poc DOUBLE, prior_vah DOUBLE, prior_val DOUBLE,
    poor_high BOOLEAN, poor_low BOOLEAN, row_size DOUBLE, prints BIGINT, bars BIGINT,
    last_bar_ts BIGINT, computed_ms BIGINT)""",
}

# 09:15 IST as minutes after midnight; IST offset in ms.
_IST_MS = 19_800_000
_DAY_MS = 86_400_000
_OPEN_MS = (9 * 60 + 15) * 60_000

VIEWS = {
    "signals": """
    SELECT strategy, instrument_key, ts, side, price AS entry,
           CAST(payload->>'$.stop_loss' AS DOUBLE) AS stop_loss,
           CAST(payload->>'$.target' AS DOUBLE) AS target, reason, received_ms, source, run_id,
           signal_id
    FROM events WHERE kind = 'signal'""",
    "signals_ist": """
    SELECT *, make_timestamp(ts * 1000) + INTERVAL 330 MINUTE AS time_ist,
           CAST(make_timestamp(ts * 1000) + INTERVAL 330 MINUTE AS DATE) AS date_ist
    FROM signals""",
    "signal_outcomes": """
    WITH s AS (
        SELECT strategy, instrument_key, ts, side, entry, stop_loss, target, reason, source, run_id,
               time_ist, date_ist, ts - ts % 60000 + 60000 AS from_ts
        FROM signals_ist),
    path AS (
        SELECT s.strategy, s.instrument_key, s.ts, s.source,
               min(c.ts) FILTER (WHERE CASE WHEN s.side = 'BUY' THEN c.low <= s.stop_loss
                                            ELSE c.high >= s.stop_loss END) AS stop_ts,
               min(c.ts) FILTER (WHERE CASE WHEN s.side = 'BUY' THEN c.high >= s.target
                                            ELSE c.low <= s.target END) AS target_ts,
               arg_max(c.close, c.ts) AS last_close, max(c.ts) AS last_ts, count(*) AS bars
        FROM s JOIN candles_1m_ist c
          ON c.instrument_key = s.instrument_key AND c.source = s.source
         AND c.date_ist = s.date_ist AND c.ts >= s.from_ts
        GROUP BY ALL),
    o AS (
        SELECT s.*, p.bars,
               CASE WHEN p.stop_ts IS NOT NULL AND (p.target_ts IS NULL OR p.stop_ts <= p.target_ts)
                         THEN 'stop'
                    WHEN p.target_ts IS NOT NULL THEN 'target'
                    WHEN p.last_ts IS NOT NULL THEN 'close' END AS exit_reason,
               CASE WHEN p.stop_ts IS NOT NULL AND (p.target_ts IS NULL OR p.stop_ts <= p.target_ts)
                         THEN p.stop_ts
                    WHEN p.target_ts IS NOT NULL THEN p.target_ts ELSE p.last_ts END AS exit_ts,
               CASE WHEN p.stop_ts IS NOT NULL AND (p.target_ts IS NULL OR p.stop_ts <= p.target_ts)
                         THEN s.stop_loss
                    WHEN p.target_ts IS NOT NULL THEN s.target ELSE p.last_close END AS exit
        FROM s LEFT JOIN path p USING (strategy, instrument_key, ts, source))
    SELECT strategy, instrument_key, ts, time_ist, date_ist, side, entry, stop_loss, target, reason,
           source, run_id, exit_reason, exit, exit_ts, coalesce(bars, 0) AS bars,
           round((exit - entry) * CASE WHEN side = 'BUY' THEN 1 ELSE -1 END, 4) AS pnl_points,
           round((exit - entry) * CASE WHEN side = 'BUY' THEN 1 ELSE -1 END
                 / nullif(abs(entry - stop_loss), 0), 3) AS r_multiple
    FROM o""",
}

def _bar_ts(width_ms: str) -> str:
    """SQL for the open (epoch ms UTC) of the bar of width ``width_ms`` (an SQL expression) that
    holds ``ts``, counted from 09:15 IST of ``ts``'s IST day."""
    return (f"""(ts + {_IST_MS}) // {_DAY_MS} * {_DAY_MS} + {_OPEN_MS}
                  + CAST(floor(((ts + {_IST_MS}) % {_DAY_MS} - {_OPEN_MS})
                               / (CAST({width_ms} AS DOUBLE))) AS BIGINT)
                    * CAST({width_ms} AS BIGINT) - {_IST_MS}""")


_BAR_TIMES = """make_timestamp(bar_ts * 1000) + INTERVAL 330 MINUTE AS time_ist,
           CAST(make_timestamp(bar_ts * 1000) + INTERVAL 330 MINUTE AS DATE) AS date_ist"""

MACROS = {
    "candles": f"""(interval_minutes) AS TABLE
    WITH b AS (SELECT *, {_bar_ts("interval_minutes * 60000")} AS bar_ts FROM candles_1m)
    SELECT instrument_key, source, bar_ts AS ts, {_BAR_TIMES},
           arg_min(open, ts) AS open, max(high) AS high, min(low) AS low,
           arg_max(close, ts) AS close, CAST(sum(volume) AS BIGINT) AS volume, arg_max(oi, ts) AS oi,
           CAST(sum(ticks) AS BIGINT) AS ticks, count(*) AS bars
    FROM b GROUP BY instrument_key, source, bar_ts""",
    "tick_candles": f"""(interval_seconds) AS TABLE
    WITH b AS (SELECT *, {_bar_ts("interval_seconds * 1000")} AS bar_ts FROM ticks)
    SELECT instrument_key, source, bar_ts AS ts, {_BAR_TIMES},
           arg_min(ltp, seq) AS open, max(ltp) AS high, min(ltp) AS low,
           arg_max(ltp, seq) AS close, CAST(sum(ltq) AS BIGINT) AS volume, arg_max(oi, seq) AS oi,
           count(*) AS ticks
    FROM b GROUP BY instrument_key, source, bar_ts""",
}

OBJECTS = (*TABLES, *VIEWS, *MACROS)


def install(con: duckdb.DuckDBPyConnection) -> None:
    """Create the research tables and the audit trail's ``events`` (if missing), fold a
    ``signals`` table of an older file into ``events``, and (re)create the views and macros in
    ``con``'s database. Needs the tables of :mod:`trading_core.persistence` (run after
    ``connect``)."""
    audit.install(con)
    _fold_signals_table(con)
    for name, cols in TABLES.items():
        con.execute(f"CREATE TABLE IF NOT EXISTS {name} {cols}")
    for name, body in VIEWS.items():
        con.execute(f"CREATE OR REPLACE VIEW {name} AS {body}")
    for name, body in MACROS.items():
        con.execute(f"CREATE OR REPLACE MACRO {name}{body}")


def ensure_temp(con: duckdb.DuckDBPyConnection) -> list[str]:
    """On a read-only connection: create, as temporary objects, whatever research object the file
    lacks (a file recorded before they existed). Returns the names created."""
    tables = {r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
    views = {r[0] for r in con.execute("SELECT view_name FROM duckdb_views()").fetchall()}
    macros = {r[0] for r in con.execute("SELECT function_name FROM duckdb_functions() "
                                        "WHERE function_type = 'table_macro'").fetchall()}
    made = []
    if "events" not in tables:              # a file older than the audit trail: ``signals`` reads it
        con.execute(audit.TABLE_SQL.replace("CREATE TABLE IF NOT EXISTS", "CREATE TEMP TABLE", 1))
        made.append("events")
    for name, cols in TABLES.items():
        if name not in tables:
            con.execute(f"CREATE TEMP TABLE {name} {cols}")
            made.append(name)
    for name, sql in [*((n, f"CREATE TEMP VIEW {n} AS {b}") for n, b in VIEWS.items() if n not in views),
                      *((n, f"CREATE TEMP MACRO {n}{b}") for n, b in MACROS.items() if n not in macros)]:
        try:
            con.execute(sql)
            made.append(name)
        except duckdb.Error as exc:      # a file without the recorder's tables: leave it as it is
            log.debug("research object %s not created: %s", name, exc)
    return made


# --- signals ----------------------------------------------------------------------------------


def _fold_signals_table(con: duckdb.DuckDBPyConnection) -> int:
    """Move the rows of a ``signals`` *table* (files written before 2026-12-03, when a second
    recorder stored signals beside the audit trail) into ``events`` as ``kind = 'signal'`` rows,
    skipping those the trail already holds (same strategy, instrument, ts and reason), then drop
    the table so the ``signals`` view can take its name. Returns the rows moved."""
    found = con.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = 'signals' "
                        "AND schema_name = current_schema()").fetchall()[0][0]
    if not found:
        return 0
    con.execute("BEGIN")
    try:
        moved = con.execute("""
            INSERT INTO events (seq, received_ms, topic, kind, ts, strategy, instrument_key, side,
                                price, reason, payload, source, run_id)
            SELECT (SELECT coalesce(max(seq), 0) FROM events) + row_number() OVER (ORDER BY s.received_ms, s.ts),
                   s.received_ms, 'signal.' || s.strategy, 'signal', s.ts, s.strategy, s.instrument_key,
                   s.side, s.entry, s.reason,
                   json_object('strategy', s.strategy, 'instrument_key', s.instrument_key, 'ts', s.ts,
                               'side', s.side, 'entry', s.entry, 'stop_loss', s.stop_loss,
                               'target', s.target, 'reason', s.reason),
                   s.source, s.run_id
            FROM signals s
            WHERE NOT EXISTS (SELECT 1 FROM events e WHERE e.kind = 'signal' AND e.strategy = s.strategy
                              AND e.instrument_key = s.instrument_key AND e.ts = s.ts
                              AND e.reason = s.reason)""").fetchall()[0][0]
        con.execute("DROP TABLE signals CASCADE")
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    log.info("signals: the old signals table folded into events (%d rows not already there)", moved)
    return int(moved)


# --- sessions ---------------------------------------------------------------------------------

# Sessions recomputed before the first stale one, so its prior-day references and typical range
# (the median range of the last ``history_sessions`` = 10 trading days) come out exactly as over
# the whole history.
HISTORY_MARGIN = 15

_STALE_SQL = """
    WITH c AS (SELECT instrument_key, source, date_ist AS date, count(*) AS bars, max(ts) AS last_bar_ts
               FROM candles_1m_ist GROUP BY ALL)
    SELECT instrument_key, source, min(date) AS first_stale
    FROM c FULL OUTER JOIN sessions s USING (instrument_key, source, date)
    WHERE c.bars IS DISTINCT FROM s.bars OR c.last_bar_ts IS DISTINCT FROM s.last_bar_ts
    GROUP BY ALL"""

SESSION_COLUMNS = [c.split()[0] for c in " ".join(TABLES["sessions"].strip("()").split()).split(", ")]


def stale_sessions(con: duckdb.DuckDBPyConnection) -> dict[tuple[str, str], int]:
    """``{(instrument_key, source): first stale IST date as epoch days}``: the dates whose stored
    session differs from its candles (bar count or last bar), or has no candles any more."""
    out = {}
    for key, source, first in con.execute(_STALE_SQL).fetchall():
        out[(key, source)] = (first - _dt.date(1970, 1, 1)).days
    return out


def compute_sessions(con: duckdb.DuckDBPyConnection, stale: dict[tuple[str, str], int]) -> pa.Table:
    """Session rows (the ``sessions`` columns) of each (instrument_key, source) in ``stale`` from
    its first stale date on, computed from 1-minute candles read through ``con`` (starting
    :data:`HISTORY_MARGIN` trading dates earlier for the prior-day references). Instruments whose
    candles cannot be profiled are logged and skipped."""
    from trading_core.profile_batch import compute_profiles
    rows: list[dict] = []
    if not stale:
        return _sessions_arrow(rows)
    con.execute("CREATE OR REPLACE TEMP TABLE _stale_keys (instrument_key VARCHAR, source VARCHAR, "
                "first_day BIGINT)")
    con.executemany("INSERT INTO _stale_keys VALUES (?, ?, ?)", [(k, s, d) for (k, s), d in stale.items()])
    df = con.sql(f"""
        WITH days AS (
            SELECT DISTINCT c.instrument_key, c.source, (c.ts + {_IST_MS}) // {_DAY_MS} AS day
            FROM candles_1m c JOIN _stale_keys k USING (instrument_key, source)),
        ranked AS (
            SELECT d.instrument_key, d.source, d.day,
                   row_number() OVER (PARTITION BY d.instrument_key, d.source ORDER BY d.day DESC) AS rank
            FROM days d JOIN _stale_keys k USING (instrument_key, source) WHERE d.day < k.first_day),
        start AS (
            SELECT k.instrument_key, k.source, k.first_day,
                   coalesce(min(r.day) FILTER (WHERE r.rank <= {HISTORY_MARGIN}), k.first_day) AS from_day
            FROM _stale_keys k LEFT JOIN ranked r USING (instrument_key, source)
            GROUP BY k.instrument_key, k.source, k.first_day)
        SELECT c.instrument_key, c.source, c.ts, c.open, c.high, c.low, c.close, c.volume, s.first_day
        FROM candles_1m c JOIN start s USING (instrument_key, source)
        WHERE c.ts >= s.from_day * {_DAY_MS} - {_IST_MS}
        ORDER BY c.instrument_key, c.source, c.ts""").pl()
    con.execute("DROP TABLE IF EXISTS _stale_keys")
    if df.height == 0:
        return _sessions_arrow(rows)
    day = (pl.col("ts") + _IST_MS) // _DAY_MS
    stats = {(r[0], r[1], r[2]): (r[3], r[4]) for r in df.group_by(
        "instrument_key", "source", day.alias("day")).agg(pl.len(), pl.col("ts").max()).iter_rows()}
    now = int(time.time() * 1000)
    for (key, source), part in df.partition_by(["instrument_key", "source"], as_dict=True,
                                               maintain_order=True).items():
        first_day = int(part["first_day"][0])
        try:
            profiles = compute_profiles(part.select("ts", "open", "high", "low", "close", "volume"),
                                        instrument_key=key)
        except (ValueError, KeyError) as exc:
            log.warning("sessions: cannot profile %s (%s): %s", key, source, exc)
            continue
        for p in profiles:
            d = _date_day(p.session)
            if d < first_day:
                continue
            bars, last = stats.get((key, source, d), (0, None))
            pr = p.prior
            rows.append(dict(
                instrument_key=key, source=source, date=p.session, session_kind=p.session_kind,
                closed=p.closed, open=p.open, high=p.high, low=p.low, close=p.last, poc=p.poc,
                vah=p.vah, val=p.val, volume_poc=p.volume_poc, volume_vah=p.volume_vah,
                volume_val=p.volume_val, volume_source=p.volume_source, ib_high=p.ib_high,
                ib_low=p.ib_low, ib_range=p.ib_range, ext_up=p.ext_up, ext_down=p.ext_down,
                open_type=p.open_type, day_type=p.day_type,
                open_vs_prior_value=p.open_vs_prior_value, open_vs_prior_range=p.open_vs_prior_range,
                value_relation=p.value_relation, balance=p.balance,
                prior_high=pr.high if pr else None, prior_low=pr.low if pr else None,
                prior_close=pr.close if pr else None, prior_poc=pr.poc if pr else None,
                prior_vah=pr.vah if pr else None, prior_val=pr.val if pr else None,
                poor_high=p.poor_high, poor_low=p.poor_low, row_size=p.row_size,
                prints=p.prints, bars=bars, last_bar_ts=last, computed_ms=now))
    return _sessions_arrow(rows)


def _date_day(iso: str) -> int:
    return (_dt.date.fromisoformat(iso) - _dt.date(1970, 1, 1)).days


def _sessions_arrow(rows: list[dict]) -> pa.Table:
    types = {"VARCHAR": pa.string(), "DATE": pa.date32(), "BOOLEAN": pa.bool_(), "DOUBLE": pa.float64(),
             "BIGINT": pa.int64()}
    fields = []
    for col in " ".join(TABLES["sessions"].strip("()").split()).split(", "):
        parts = col.split()
        fields.append(pa.field(parts[0], types[parts[1]]))
    schema = pa.schema(fields)
    if not rows:
        return schema.empty_table()
    for r in rows:
        r["date"] = _dt.date.fromisoformat(r["date"])
    return pa.Table.from_pylist(rows, schema=schema)


def _stale_table(con: duckdb.DuckDBPyConnection, stale: dict[tuple[str, str], int]) -> None:
    con.execute("CREATE OR REPLACE TEMP TABLE _stale (instrument_key VARCHAR, source VARCHAR, first_date DATE)")
    con.executemany("INSERT INTO _stale VALUES (?, ?, ?)",
                    [(k, s, _dt.date(1970, 1, 1) + _dt.timedelta(days=d)) for (k, s), d in stale.items()])


_refresh_lock = threading.Lock()


def refresh_sessions(con: duckdb.DuckDBPyConnection) -> int:
    """Recompute and store the stale sessions (see the module doc). Writes: call only on the
    owner's read-write connection (the query service's cursor). Returns session rows written."""
    with _refresh_lock:
        stale = stale_sessions(con)
        if not stale:
            return 0
        started = time.perf_counter()
        table = compute_sessions(con, stale)
        _stale_table(con, stale)
        con.execute("BEGIN")
        try:
            con.execute("DELETE FROM sessions USING _stale WHERE sessions.instrument_key = _stale.instrument_key "
                        "AND sessions.source = _stale.source AND sessions.date >= _stale.first_date")
            con.register("_session_rows", table)
            con.execute(f"INSERT INTO sessions ({', '.join(SESSION_COLUMNS)}) SELECT * FROM _session_rows")
            con.unregister("_session_rows")
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        finally:
            con.execute("DROP TABLE IF EXISTS _stale")
        log.info("sessions: %d rows of %d instruments refreshed in %.0f ms", table.num_rows, len(stale),
                 (time.perf_counter() - started) * 1000)
        return table.num_rows


def before_query(con: duckdb.DuckDBPyConnection, checked) -> None:
    """The query service's hook: refresh ``sessions`` before a query that reads it."""
    if "sessions" in checked.tables:
        refresh_sessions(con)


def before_query_read_only(con: duckdb.DuckDBPyConnection, checked) -> None:
    """On a read-only connection: if the query reads ``sessions`` and some are stale, shadow the
    stored table with a temporary one holding the stored rows that are current plus the stale
    ones computed now."""
    if "sessions" not in checked.tables:
        return
    stale = stale_sessions(con)
    if not stale:
        return
    fresh = compute_sessions(con, stale)
    cols = ", ".join(SESSION_COLUMNS)
    stored = fresh.schema.empty_table()
    db = con.execute("SELECT current_database()").fetchall()[0][0]
    if con.execute("SELECT count(*) FROM duckdb_tables() WHERE database_name = ? AND schema_name = 'main' "
                   "AND table_name = 'sessions'", [db]).fetchall()[0][0]:
        _stale_table(con, stale)
        stored = con.sql(f"""SELECT {cols} FROM "{db}".main.sessions s WHERE NOT EXISTS (
            SELECT 1 FROM _stale k WHERE k.instrument_key = s.instrument_key AND k.source = s.source
            AND s.date >= k.first_date)""").to_arrow_table()
        con.execute("DROP TABLE _stale")
    both = pa.concat_tables([stored.cast(fresh.schema), fresh])
    con.register("_session_rows", both)
    con.execute("CREATE OR REPLACE TEMP TABLE sessions AS SELECT * FROM _session_rows")
    con.unregister("_session_rows")


# --- saved example queries (README, browser console, ``run.py sql --example NAME``) ------------

EXAMPLES: list[dict[str, str]] = [
    {"name": "days", "title": "Ticks per day and instrument, with the day's range",
     "sql": """SELECT date_ist, instrument_key, count(*) AS ticks, min(ltp) AS low, max(ltp) AS high
FROM ticks_ist
GROUP BY ALL
ORDER BY date_ist DESC, instrument_key"""},
    {"name": "candles15", "title": "15-minute candles of the latest day (aligned to 09:15 IST)",
     "sql": """SELECT instrument_key, time_ist, open, high, low, close, volume, bars
FROM candles(15)
WHERE date_ist = (SELECT max(date_ist) FROM candles_1m_ist)
ORDER BY instrument_key, ts"""},
    {"name": "volume_at_price", "title": "Volume at price (5-point rows) of the latest day, most traded instrument",
     "sql": """WITH day AS (SELECT max(date_ist) AS d FROM ticks_ist),
inst AS (SELECT instrument_key FROM ticks_ist, day WHERE date_ist = day.d
         GROUP BY ALL ORDER BY sum(ltq) DESC, count(*) DESC LIMIT 1)
SELECT instrument_key, floor(ltp / 5) * 5 AS price_row, CAST(sum(ltq) AS BIGINT) AS volume, count(*) AS prints
FROM ticks_ist JOIN inst USING (instrument_key), day
WHERE date_ist = day.d
GROUP BY ALL
ORDER BY price_row DESC"""},
    {"name": "ib_stats", "title": "Initial balance statistics per instrument",
     "sql": """SELECT instrument_key, count(*) AS days,
       round(avg(ib_range), 2) AS avg_ib_range, round(median(ib_range), 2) AS median_ib_range,
       round(avg(ib_range / nullif(high - low, 0)) * 100, 1) AS ib_pct_of_day_range,
       round(avg(CASE WHEN ext_up > 0 THEN 1 ELSE 0 END) * 100, 1) AS pct_days_extended_up,
       round(avg(CASE WHEN ext_down > 0 THEN 1 ELSE 0 END) * 100, 1) AS pct_days_extended_down,
       round(avg(CASE WHEN ext_up > 0 AND ext_down > 0 THEN 1 ELSE 0 END) * 100, 1) AS pct_both_sides
FROM sessions
WHERE session_kind = 'regular' AND closed AND ib_range IS NOT NULL
GROUP BY instrument_key
ORDER BY instrument_key"""},
    {"name": "close_in_prior_value", "title": "How often the day closes inside the prior day's value area",
     "sql": """SELECT instrument_key, count(*) AS days,
       count(*) FILTER (WHERE close BETWEEN prior_val AND prior_vah) AS closed_inside,
       round(100.0 * count(*) FILTER (WHERE close BETWEEN prior_val AND prior_vah) / count(*), 1) AS pct_inside,
       round(100.0 * count(*) FILTER (WHERE open BETWEEN prior_val AND prior_vah
                                      AND close BETWEEN prior_val AND prior_vah)
             / nullif(count(*) FILTER (WHERE open BETWEEN prior_val AND prior_vah), 0), 1)
             AS pct_inside_when_opened_inside
FROM sessions
WHERE session_kind = 'regular' AND closed AND prior_vah IS NOT NULL
GROUP BY instrument_key
ORDER BY instrument_key"""},
    {"name": "open_vs_day_type", "title": "Open type against day type (count of days)",
     "sql": """SELECT open_type, day_type, count(*) AS days
FROM sessions
WHERE session_kind = 'regular' AND closed
GROUP BY ALL
ORDER BY open_type, days DESC"""},
    {"name": "strategy_pnl_by_day_type", "title": "Each strategy's simulated PnL by day type",
     "sql": """SELECT o.strategy, s.day_type, count(*) AS signals,
       count(*) FILTER (WHERE o.exit_reason = 'target') AS targets,
       count(*) FILTER (WHERE o.exit_reason = 'stop') AS stops,
       round(sum(o.pnl_points), 2) AS pnl_points, round(avg(o.r_multiple), 2) AS avg_r
FROM signal_outcomes o
JOIN sessions s ON s.instrument_key = o.instrument_key AND s.source = o.source AND s.date = o.date_ist
GROUP BY ALL
ORDER BY o.strategy, pnl_points DESC"""},
    {"name": "trades_by_day_type", "title": "Each strategy's paper-trade PnL by day type (execution's trades)",
     "sql": """SELECT t.strategy, s.day_type, count(*) AS trades,
       count(*) FILTER (WHERE t.realised_pnl > 0) AS winners,
       round(sum(t.realised_pnl), 2) AS realised_pnl_rupees, round(avg(t.r_multiple), 2) AS avg_r
FROM trades t
JOIN sessions s ON s.instrument_key = t.instrument_key AND s.source = t.source AND s.date = t.date_ist
GROUP BY ALL
ORDER BY t.strategy, realised_pnl_rupees DESC"""},
    {"name": "signals", "title": "Latest signals with their simulated outcome",
     "sql": """SELECT time_ist, strategy, instrument_key, side, entry, stop_loss, target, exit_reason, exit,
       pnl_points, r_multiple, reason
FROM signal_outcomes
ORDER BY ts DESC
LIMIT 200"""},
    {"name": "storage", "title": "Database size and bytes per tick",
     "sql": """SELECT d.database_size, d.block_size, d.used_blocks, t.ticks,
       round(d.used_blocks * d.block_size / nullif(t.ticks, 0), 1) AS bytes_per_tick_upper_bound
FROM pragma_database_size() d, (SELECT count(*) AS ticks FROM ticks) t"""},
]
