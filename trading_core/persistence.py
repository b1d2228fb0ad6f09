"""DuckDB persistence of ticks and 1-minute candles, written in Arrow batches by one thread
(in the system, of the recorder process: ``scripts/recorder.py``).

Tables (all timestamps ``ts`` are epoch milliseconds UTC, prices in rupees):

``ticks(instrument_key, ts, ltp, ltq, oi, seq, source, backfilled, <quote columns>)``
    every tick published on the bus; ``seq`` is the feed's sequence number
    (keeps the order of prints sharing a timestamp); ``source`` is
    ``sim`` | ``replay`` | ``upstox``. ``backfilled`` is true for ticks made after a
    live-feed gap from the broker's 1-minute candles (4 per candle: open, nearer extreme,
    other extreme, close at +0/15/30/45 s; see ``data_handling/upstox_backfill.py``); they
    were never on the bus. One wide table rather than a separate depth table: every
    field a live feed carries sits on its tick's row (no join on a key that is only unique
    per run), and the quote columns are NULL for sources that have none (sim, replay),
    which DuckDB stores for almost nothing. The quote columns (see ``messages.Quote``):
    ``feed_ts, mode, cp, vtt, atp, tbq, tsq, bid, bid_qty, ask, ask_qty, iv, delta, theta,
    gamma, vega, rho, iep, ieq, rp, iiq_total, iiq_m, cas_eligible`` and two lists,
    ``depth`` (``STRUCT(bid_qty, bid, ask_qty, ask)[]``, best level first) and ``ohlc``
    (``STRUCT(interval, open, high, low, close, volume, ts)[]``). Inserts go BY NAME, so a
    batch with only the first seven columns still inserts (the rest NULL/false).
``candles_1m(instrument_key, ts, open, high, low, close, volume, oi, ticks, source)``
    1-minute OHLCV bars built from the ticks; ``ts`` is the bar's open time.
``feed_runs(run_id, source, path, started_ms, last_seq, finished)``
    one row per ingestor feed run; ``last_seq`` is the last tick persisted,
    so a restarted replay resumes exactly where the recording stopped.

Views ``ticks_ist`` and ``candles_1m_ist`` add ``time_ist`` (TIMESTAMP in
Asia/Kolkata, UTC+05:30, no DST) and ``date_ist`` for research.

Row-by-row INSERT manages a few thousand rows per second; an Arrow batch
insert manages millions, so rows are buffered and written as Arrow tables.
"""

from __future__ import annotations

import logging
import queue
import re
import threading
import time
from pathlib import Path

import duckdb
import pyarrow as pa

from trading_core import messages as m

log = logging.getLogger("persistence")

SCHEMA = """
CREATE TABLE IF NOT EXISTS ticks (
    instrument_key VARCHAR NOT NULL, ts BIGINT NOT NULL, ltp DOUBLE NOT NULL,
    ltq BIGINT NOT NULL, oi DOUBLE NOT NULL, seq BIGINT NOT NULL, source VARCHAR NOT NULL);
{tick_columns_added}
CREATE TABLE IF NOT EXISTS candles_1m (
    instrument_key VARCHAR NOT NULL, ts BIGINT NOT NULL, open DOUBLE NOT NULL,
    high DOUBLE NOT NULL, low DOUBLE NOT NULL, close DOUBLE NOT NULL, volume BIGINT NOT NULL,
    oi DOUBLE NOT NULL, ticks INTEGER NOT NULL, source VARCHAR NOT NULL);
CREATE TABLE IF NOT EXISTS feed_runs (
    run_id VARCHAR PRIMARY KEY, source VARCHAR, path VARCHAR, started_ms BIGINT,
    last_seq BIGINT, finished BOOLEAN);
CREATE OR REPLACE VIEW ticks_ist AS
    SELECT *, make_timestamp(ts * 1000) + INTERVAL 330 MINUTE AS time_ist,
           CAST(make_timestamp(ts * 1000) + INTERVAL 330 MINUTE AS DATE) AS date_ist
    FROM ticks;
CREATE OR REPLACE VIEW candles_1m_ist AS
    SELECT *, make_timestamp(ts * 1000) + INTERVAL 330 MINUTE AS time_ist,
           CAST(make_timestamp(ts * 1000) + INTERVAL 330 MINUTE AS DATE) AS date_ist
    FROM candles_1m;
"""

TICK_BASE_SCHEMA = pa.schema([("instrument_key", pa.string()), ("ts", pa.int64()), ("ltp", pa.float64()),
                              ("ltq", pa.int64()), ("oi", pa.float64()), ("seq", pa.int64()),
                              ("source", pa.string()), ("backfilled", pa.bool_())])
TICK_TABLE_SCHEMA = pa.schema(list(TICK_BASE_SCHEMA)[:6])
"""What :meth:`TickBatcher.add_tick_table` takes: :data:`TICK_BASE_SCHEMA` without ``source`` and
``backfilled`` (the batcher's source; never backfilled)."""
# Columns of messages.Quote, NULL when a tick has no quote (the order is the table's).
_DEPTH_TYPE = pa.list_(pa.struct([("bid_qty", pa.int64()), ("bid", pa.float64()),
                                  ("ask_qty", pa.int64()), ("ask", pa.float64())]))
_OHLC_TYPE = pa.list_(pa.struct([("interval", pa.string()), ("open", pa.float64()), ("high", pa.float64()),
                                 ("low", pa.float64()), ("close", pa.float64()), ("volume", pa.int64()),
                                 ("ts", pa.int64())]))
QUOTE_SCHEMA = pa.schema([
    ("feed_ts", pa.int64()), ("mode", pa.string()), ("cp", pa.float64()), ("vtt", pa.int64()),
    ("atp", pa.float64()), ("tbq", pa.float64()), ("tsq", pa.float64()), ("bid", pa.float64()),
    ("bid_qty", pa.int64()), ("ask", pa.float64()), ("ask_qty", pa.int64()), ("iv", pa.float64()),
    ("delta", pa.float64()), ("theta", pa.float64()), ("gamma", pa.float64()), ("vega", pa.float64()),
    ("rho", pa.float64()), ("iep", pa.float64()), ("ieq", pa.int64()), ("rp", pa.float64()),
    ("iiq_total", pa.int64()), ("iiq_m", pa.int64()), ("cas_eligible", pa.bool_()),
    ("depth", _DEPTH_TYPE), ("ohlc", _OHLC_TYPE)])
TICK_SCHEMA = pa.schema(list(TICK_BASE_SCHEMA) + list(QUOTE_SCHEMA))
_DUCKDB_TYPES = {pa.int64(): "BIGINT", pa.float64(): "DOUBLE", pa.string(): "VARCHAR", pa.bool_(): "BOOLEAN",
                 _DEPTH_TYPE: "STRUCT(bid_qty BIGINT, bid DOUBLE, ask_qty BIGINT, ask DOUBLE)[]",
                 _OHLC_TYPE: "STRUCT(\"interval\" VARCHAR, open DOUBLE, high DOUBLE, low DOUBLE, close DOUBLE, "
                             "volume BIGINT, ts BIGINT)[]"}
# Columns added after the first seven; ADD COLUMN IF NOT EXISTS also upgrades an older file.
SCHEMA = SCHEMA.replace("{tick_columns_added}", "\n".join(
    f"ALTER TABLE ticks ADD COLUMN IF NOT EXISTS \"{f.name}\" {_DUCKDB_TYPES[f.type]}"
    + (" DEFAULT false;" if f.name == "backfilled" else ";")
    for f in list(TICK_SCHEMA)[7:]))
CANDLE_SCHEMA = pa.schema([("instrument_key", pa.string()), ("ts", pa.int64()), ("open", pa.float64()),
                           ("high", pa.float64()), ("low", pa.float64()), ("close", pa.float64()),
                           ("volume", pa.int64()), ("oi", pa.float64()), ("ticks", pa.int32()),
                           ("source", pa.string())])


class DatabaseLockedError(RuntimeError):
    """The DuckDB file is held by another process; the message is one line naming file and holder."""


def connect(path: Path) -> duckdb.DuckDBPyConnection:
    """Open ``path`` read-write (creating folder, file and schema).

    Raises :class:`DatabaseLockedError` when another process holds the file.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        con = duckdb.connect(str(path))
    except duckdb.IOException as exc:
        text = str(exc)
        if "lock" not in text.lower():
            raise
        holder = re.search(r"PID (\d+)", text)
        who = f" (PID {holder.group(1)})" if holder else ""
        raise DatabaseLockedError(
            f"DuckDB file {path} is locked by another process{who}; stop that process "
            f"or use another file with --db / DUCKDB_PATH") from None
    # DuckDB's jemalloc frees memory back to the OS only when it allocates again, unless its
    # background threads purge it: without them, a recorder that goes idle after a CHECKPOINT
    # (the end of a replay, a night after the close) keeps that CHECKPOINT's 70-100 MB of
    # freed pages for good (benchmarks/bench_system.py --only memory --sessions 30).
    con.execute("SET allocator_background_threads = true")
    con.execute(SCHEMA)
    return con


def check_writable(path: Path) -> None:
    """Open and close ``path`` to prove it can be written. Raises :class:`DatabaseLockedError`."""
    connect(path).close()


class _Columns:
    """Column buffers for one table."""

    def __init__(self, schema: pa.Schema):
        self.schema = schema
        self.cols: list[list] = [[] for _ in schema.names]

    def __len__(self) -> int:
        return len(self.cols[0])

    def take(self) -> pa.Table | None:
        if not self.cols[0]:
            return None
        table = pa.Table.from_arrays([pa.array(c, type=f.type) for c, f in zip(self.cols, self.schema)],
                                     schema=self.schema)
        self.cols = [[] for _ in self.schema.names]
        return table


class TickBatcher:
    """The feed thread's side of the recording: buffers ticks and candles and hands them over as
    Arrow batches to :meth:`_deliver` (a :class:`BatchWriter`'s writer thread, or the recorder
    process behind ``scripts/recorder.RecorderLink``).

    Call :meth:`add_tick` / :meth:`add_candle` from one thread; batches are
    handed over every ``flush_interval_s`` or ``max_rows`` ticks. A hand-over is
    ``(ticks, candles, last_seq)``: the :data:`TICK_SCHEMA` (or :data:`TICK_BASE_SCHEMA`) and
    :data:`CANDLE_SCHEMA` tables, either may be None, and the run's last tick ``seq``.
    """

    def __init__(self, source: str, flush_interval_s: float = 0.1, max_rows: int = 50_000):
        self.source = source
        self.flush_interval_s = flush_interval_s
        self.max_rows = max_rows
        self._ticks = _Columns(TICK_BASE_SCHEMA)
        self._tables: list[pa.Table] = []               # from add_tick_table, in TICK_TABLE_SCHEMA
        self._candle_tables: list = []                  # polars frames from add_candle_table
        self._table_rows = 0
        self._quotes: list[tuple[int, m.Quote]] = []   # (row in the tick buffer, quote)
        self._candles = _Columns(CANDLE_SCHEMA)
        self._last_seq = -1
        self._last_handover = time.monotonic()

    def add_tick(self, t: m.Tick) -> None:
        """Buffer one tick (hands the batch over when full or due)."""
        c = self._ticks.cols
        c[0].append(t.instrument_key); c[1].append(t.ts); c[2].append(t.ltp); c[3].append(t.ltq)
        c[4].append(t.oi); c[5].append(t.seq); c[6].append(t.source); c[7].append(t.backfilled)
        if t.quote is not None:
            self._quotes.append((len(c[0]) - 1, t.quote))
        self._last_seq = t.seq
        if len(c[0]) >= self.max_rows:
            self.handover()

    def add_tick_table(self, ticks) -> None:
        """Buffer many ticks held as a table with columns ``instrument_key, ts, ltp, ltq, oi,
        seq`` (units as in ``ticks``; no quotes, not backfilled): a ``pyarrow.Table`` (cheapest
        in :data:`TICK_TABLE_SCHEMA`, e.g. a replay's :class:`data_handling.replay.TickBatch`
        ``rows``: a few microseconds a call) or a ``polars.DataFrame`` (converted here, about
        1 ms a call). No Python object per tick. ``seq`` must increase across calls. Hands the
        batch over when full or due."""
        if not len(ticks):
            return
        if not isinstance(ticks, pa.Table):
            ticks = ticks.to_arrow()
        if ticks.schema != TICK_TABLE_SCHEMA:
            ticks = ticks.select(TICK_TABLE_SCHEMA.names).cast(TICK_TABLE_SCHEMA)
        self._tables.append(ticks)
        self._table_rows += len(ticks)
        self._last_seq = ticks.column("seq")[-1].as_py()
        if len(self._ticks) + self._table_rows >= self.max_rows:
            self.handover()

    def add_candle(self, k: m.Candle) -> None:
        """Buffer one closed candle."""
        c = self._candles.cols
        for i, value in enumerate((k.instrument_key, k.ts, k.open, k.high, k.low, k.close, k.volume,
                                   k.oi, k.ticks, self.source)):
            c[i].append(value)

    def add_candle_table(self, candles) -> None:
        """Buffer closed candles held as a ``polars.DataFrame`` with (at least) the columns of
        ``candles_1m`` but ``source`` (e.g. :meth:`data_handling.candles.CandleBuilder.update_table`)."""
        if len(candles):
            self._candle_tables.append(candles.select(CANDLE_SCHEMA.names[:-1]))

    def maybe_handover(self) -> None:
        """Hand the buffers over if ``flush_interval_s`` has passed."""
        if time.monotonic() - self._last_handover >= self.flush_interval_s:
            self.handover()

    def handover(self) -> None:
        """Hand the current buffers over now (may block while the writer is behind)."""
        self._last_handover = time.monotonic()
        ticks, candles = _with_quotes(self._ticks.take(), self._quotes), self._candles.take()
        self._quotes = []
        if self._tables:
            tables = self._tick_tables(self._tables)
            ticks = tables if ticks is None else pa.concat_tables([ticks, tables], promote_options="default")
            self._tables, self._table_rows = [], 0
        if self._candle_tables:
            tables = self._table_arrow(self._candle_tables, CANDLE_SCHEMA)
            candles = tables if candles is None else pa.concat_tables([candles, tables])
            self._candle_tables = []
        if ticks is None and candles is None:
            return
        self._deliver(ticks, candles, self._last_seq)

    def _deliver(self, ticks: pa.Table | None, candles: pa.Table | None, last_seq: int) -> None:
        raise NotImplementedError

    def _tick_tables(self, tables: list[pa.Table]) -> pa.Table:
        rows = pa.concat_tables(tables).combine_chunks()
        n = rows.num_rows
        return rows.append_column(TICK_BASE_SCHEMA.field("source"), pa.repeat(pa.scalar(self.source), n)) \
                   .append_column(TICK_BASE_SCHEMA.field("backfilled"), pa.repeat(pa.scalar(False), n))

    def _table_arrow(self, frames: list, schema: pa.Schema) -> pa.Table:
        import polars as pl
        table = pl.concat(frames, rechunk=True).with_columns(source=pl.lit(self.source)).select(schema.names)
        return table.to_arrow().cast(schema)


class BatchWriter(TickBatcher):
    """A :class:`TickBatcher` whose batches a writer thread inserts into DuckDB.

    Each batch (ticks, candles and the run's ``last_seq``) commits in one
    transaction, so the database never holds a candle without its ticks.
    :meth:`close` writes the last partial batch and waits for the writer. A failed insert is
    logged and kept in ``error``; the next hand-over raises ``RuntimeError``.
    """

    def __init__(self, con: duckdb.DuckDBPyConnection, run_id: str, source: str,
                 flush_interval_s: float = 0.1, max_rows: int = 50_000):
        super().__init__(source, flush_interval_s, max_rows)
        self.con = con.cursor()  # the writer thread's own handle on the shared database
        self.run_id = run_id
        self._queue: queue.Queue = queue.Queue(maxsize=64)
        self.rows_written = 0
        self.batches_written = 0
        self.checkpoints = 0
        self.checkpoints_skipped = 0
        self.last_flush_ms = 0.0
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="duckdb-writer", daemon=True)
        self._thread.start()

    def submit(self, ticks: pa.Table | None, candles: pa.Table | None, last_seq: int) -> None:
        """Queue an already built hand-over (see :class:`TickBatcher`) for the writer thread;
        blocks while 64 are queued. Raises ``RuntimeError`` if an earlier insert failed."""
        if self.error is not None:
            raise RuntimeError(f"DuckDB writer failed: {self.error}") from self.error
        self._queue.put((ticks, candles, last_seq))

    _deliver = submit

    def checkpoint(self) -> None:
        """Hand over what is buffered, then have the writer thread run DuckDB's ``CHECKPOINT``
        (after the batches queued before it). Called by the ingestor when a session ends: DuckDB
        holds the many small appends of a day in memory until a checkpoint folds them into the
        file, so without one the ingestor's memory grew about 10 MB a session
        (benchmarks/ingestor_memory.py). A failed checkpoint is logged, never raised: the data is
        already committed."""
        self.handover()
        self._queue.put(_CHECKPOINT)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            if item is _CHECKPOINT:
                self._checkpoint()
                continue
            # Group commit: when the writer is behind (a full-speed replay), the batches already
            # queued go into one transaction, since each COMMIT costs more than its INSERTs
            # (benchmarks/bench_storage.py).
            items, marker = [item], _NOTHING
            while len(items) < GROUP_COMMIT_MAX:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None or more is _CHECKPOINT:
                    marker = more                 # written after the batches before it
                    break
                items.append(more)
            self._write(items)
            if marker is _CHECKPOINT:
                self._checkpoint()
            elif marker is None:
                return

    def _checkpoint(self, attempts: int = 10, pause_s: float = 0.05) -> None:
        # DuckDB refuses a CHECKPOINT while another cursor has a write transaction open; those
        # are short, so try for half a second. Not FORCE CHECKPOINT: it waits for every open
        # transaction, and a long one would stall the writer (and so the recording).
        for _ in range(attempts):
            try:
                self.con.execute("CHECKPOINT")
                self.checkpoints += 1
                return
            except duckdb.TransactionException as exc:
                reason = exc
                time.sleep(pause_s)
            except duckdb.Error as exc:
                reason = exc
                break
        self.checkpoints_skipped += 1
        if self.checkpoints_skipped == 1:
            log.warning("DuckDB CHECKPOINT skipped (later ones are counted in health, not logged): %s", reason)

    def _write(self, items: list[tuple]) -> None:
        """Insert the ``(ticks, candles, last_seq)`` hand-overs in one transaction."""
        ticks = _concat([t for t, _, _ in items])
        candles = _concat([c for _, c, _ in items])
        last_seq = items[-1][2]
        started = time.perf_counter()
        try:
            self.con.execute("BEGIN")
            if ticks is not None:
                self.con.register("_tick_batch", ticks)
                self.con.execute("INSERT INTO ticks BY NAME SELECT * FROM _tick_batch")
                self.con.unregister("_tick_batch")
            if candles is not None:
                self.con.register("_candle_batch", candles)
                self.con.execute("INSERT INTO candles_1m SELECT * FROM _candle_batch")
                self.con.unregister("_candle_batch")
            self.con.execute("UPDATE feed_runs SET last_seq = ? WHERE run_id = ?",
                             [last_seq, self.run_id])
            self.con.execute("COMMIT")
            if ticks is not None:
                self.rows_written += ticks.num_rows
            self.batches_written += 1
            self.last_flush_ms = (time.perf_counter() - started) * 1000
        except BaseException as exc:  # keep the feed alive; report through handover()
            log.exception("DuckDB batch insert failed")
            self.error = exc
            try:
                self.con.execute("ROLLBACK")
            except duckdb.Error:
                pass

    def close(self) -> None:
        """Write what is buffered, stop the writer thread and wait for it."""
        self.handover()
        self._queue.put(None)
        self._thread.join()


WRITER_STATS = ("rows_written", "batches_written", "last_flush_ms", "checkpoints", "checkpoints_skipped")
"""The :class:`BatchWriter` counters a health report carries (and the recorder sends back)."""
GROUP_COMMIT_MAX = 8
"""At most this many queued hand-overs share one transaction (BatchWriter._run)."""
_CHECKPOINT = object()          # a queue item: run CHECKPOINT (BatchWriter.checkpoint)
_NOTHING = object()


def _concat(tables: list) -> pa.Table | None:
    """The non-None Arrow tables as one (columns missing from some are NULL there), or None."""
    tables = [t for t in tables if t is not None]
    if len(tables) <= 1:
        return tables[0] if tables else None
    return pa.concat_tables(tables, promote_options="default")


def _with_quotes(table: pa.Table | None, quotes: list[tuple[int, m.Quote]]) -> pa.Table | None:
    """``table`` (the base tick columns) with the :data:`QUOTE_SCHEMA` columns appended: NULL
    except at the rows of ``quotes`` (``(row, Quote)`` pairs)."""
    if table is None:
        return None
    n = table.num_rows
    if not quotes:
        arrays = [pa.nulls(n, type=f.type) for f in QUOTE_SCHEMA]
    else:
        arrays = []
        for f in QUOTE_SCHEMA:
            col: list = [None] * n
            name = f.name
            for row, q in quotes:
                value = getattr(q, name)
                if name == "depth" and value is not None:
                    value = [(d.bid_qty, d.bid, d.ask_qty, d.ask) for d in value]
                elif name == "ohlc" and value is not None:
                    value = [(b.interval, b.open, b.high, b.low, b.close, b.volume, b.ts) for b in value]
                elif name in ("mode", "feed_ts") and not value:
                    value = None
                col[row] = value
            arrays.append(pa.array(col, type=f.type))
    return pa.Table.from_arrays(table.columns + arrays, schema=TICK_SCHEMA)


def start_run(con: duckdb.DuckDBPyConnection, run_id: str, source: str, path: str) -> int:
    """Register feed run ``run_id``; return the seq to start from (0, or last_seq + 1 on resume)."""
    rows = con.execute("SELECT last_seq FROM feed_runs WHERE run_id = ?", [run_id]).fetchall()
    if rows:
        return int(rows[0][0]) + 1
    con.execute("INSERT INTO feed_runs VALUES (?, ?, ?, ?, -1, false)",
                [run_id, source, path, int(time.time() * 1000)])
    return 0


def finish_run(con: duckdb.DuckDBPyConnection, run_id: str) -> None:
    """Mark feed run ``run_id`` finished (a replay that reached its end)."""
    con.execute("UPDATE feed_runs SET finished = true WHERE run_id = ?", [run_id])


def clear_replayed_range(con: duckdb.DuckDBPyConnection, keys: list[str], first_ts: int,
                         last_ts: int) -> int:
    """Delete earlier *replay* rows of ``keys`` in ``[first_ts, last_ts]`` so replaying a day twice
    does not double it. Live and simulated rows are never touched. Returns ticks deleted."""
    if not keys:
        return 0
    placeholders = ",".join("?" * len(keys))
    n = con.execute(f"SELECT count(*) FROM ticks WHERE source = 'replay' AND instrument_key IN "
                    f"({placeholders}) AND ts BETWEEN ? AND ?", [*keys, first_ts, last_ts]).fetchall()[0][0]
    for table, lo in (("ticks", first_ts), ("candles_1m", first_ts - first_ts % 60_000)):
        con.execute(f"DELETE FROM {table} WHERE source = 'replay' AND instrument_key IN "
                    f"({placeholders}) AND ts BETWEEN ? AND ?", [*keys, lo, last_ts])
    return int(n)


def forming_ticks(con: duckdb.DuckDBPyConnection, source: str) -> list[m.Tick]:
    """Ticks of ``source`` in each instrument's last, not yet closed, minute (ordered by seq).

    A restarted ingestor feeds them to a fresh candle builder so the bar that
    was forming at the crash closes with its true OHLCV.
    """
    rows = con.execute("""
        WITH last_bar AS (
            SELECT t.instrument_key, max(t.ts) // 60000 * 60000 AS bar FROM ticks t
            WHERE t.source = ? GROUP BY t.instrument_key)
        SELECT t.instrument_key, t.ts, t.ltp, t.ltq, t.oi, t.seq, t.source
        FROM ticks t JOIN last_bar b USING (instrument_key)
        WHERE t.source = ? AND t.ts >= b.bar
          AND NOT EXISTS (SELECT 1 FROM candles_1m c WHERE c.instrument_key = t.instrument_key
                          AND c.ts = b.bar AND c.source = ?)
        ORDER BY t.seq""", [source, source, source]).fetchall()
    return [m.Tick(instrument_key=r[0], ts=r[1], ltp=r[2], ltq=r[3], oi=r[4], seq=r[5], source=r[6])
            for r in rows]
