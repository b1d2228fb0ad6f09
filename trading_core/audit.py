"""The audit trail: every signal, risk decision, order, fill, position update and service event,
persisted to DuckDB by the ingestor (the file's only writer) from the bus.

Decision: **one append-only table, ``events``**, with typed columns for what every kind shares
and the message itself as JSON, rather than a table per kind. One table keeps the day's story in
one order (``seq``, the order the ingestor received the messages, which is the bus's order), so
a day is replayed with one query and the JSON decodes back into exactly the message that was
published (``tests/test_audit*.py`` check that the trail equals the live stream); per-kind
*views* give typed columns for SQL. Ids link the kinds: ``signal_id`` (= position id),
``order_id``, ``position_id``.

``events``
    ``seq`` (BIGINT, unique, increasing across runs), ``received_ms`` (wall clock, epoch ms
    UTC), ``topic``, ``kind`` (the message type: ``signal`` | ``risk`` | ``order`` | ``fill`` |
    ``position`` | ``service_event`` | ``control`` | ``control_reply`` | ``health``), ``ts``
    (market time of a trading event, wall time of a service event; epoch ms UTC), ``service``,
    ``strategy``, ``instrument_key``, ``signal_id``, ``order_id``, ``position_id``, ``event``
    (position event, service event, control command), ``status`` (risk: approved | rejected;
    order status; position open | closed; health status), ``side``, ``quantity`` (units),
    ``price`` (rupees: signal/risk entry, order limit or fill price, fill price, position last
    or exit price), ``pnl`` (rupees: position unrealised while open, realised when closed),
    ``reason``, ``payload`` (JSON, the message as on the bus), ``source`` (the ingestor's feed:
    sim | replay | upstox) and ``run_id``. ``health`` rows are written only when a service's
    status or pid changes (starts, restarts, stops), not once a second.

Views (all add ``time_ist`` / ``date_ist``; prices rupees, quantities units):

``events_ist``        every event.
``risk_decisions``    ``signal_id, strategy, instrument_key, side, entry, stop_loss, target,
                      approved, rule, reason, quantity, lots, lot_size, risk_per_unit,
                      risk_amount, budget, reward_risk``.
``orders``            every order state: ``order_id, signal_id, position_id, kind, order_type,
                      side, quantity, price, fill_price, status, reason, client, broker_order_id``.
``order_book``        the latest state of each order.
``fills``             ``fill_id, order_id, position_id, kind, side, quantity, price, ltp, slippage``.
``position_updates``  every position update (``event``: opened | stop_moved | mark | recovered |
                      closed) with ``stop_loss, trailed, last_price, unrealised_pnl, realised_pnl``.
``positions``         the latest update of each position (``status`` open | closed).
``trades``            closed positions as round trips: ``entry_price, entry_ts, exit_price,
                      exit_ts, exit_reason, realised_pnl, r_multiple`` (PnL over the planned
                      risk, |entry - initial stop| x quantity), ``minutes`` held.
``signal_outcomes_live`` each signal with its decision and what became of it: ``outcome`` =
                      ``rejected`` (with ``reason``), ``closed`` (with ``realised_pnl``),
                      ``open``, ``pending`` (approved, entry not filled), ``cancelled`` or
                      ``undecided``.
``service_events``    service events, control commands and replies, health transitions.

Replaying a range again replaces the earlier replay's trading events of those instruments in
that range (:func:`clear_replayed`, like ticks and signals); service events are kept.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import duckdb
import msgspec
import pyarrow as pa

from trading_core import messages as m
from trading_core.risk import signal_id as _signal_id

log = logging.getLogger("audit")

SUBSCRIPTIONS = ("signal.", "risk.", "order.", "fill.", "position.", "event.", "control.", "reply.",
                 "health.")
TRADING_KINDS = ("signal", "risk", "order", "fill", "position")

SCHEMA = pa.schema([
    ("seq", pa.int64()), ("received_ms", pa.int64()), ("topic", pa.string()), ("kind", pa.string()),
    ("ts", pa.int64()), ("service", pa.string()), ("strategy", pa.string()),
    ("instrument_key", pa.string()), ("signal_id", pa.string()), ("order_id", pa.string()),
    ("position_id", pa.string()), ("event", pa.string()), ("status", pa.string()), ("side", pa.string()),
    ("quantity", pa.int64()), ("price", pa.float64()), ("pnl", pa.float64()), ("reason", pa.string()),
    ("payload", pa.string()), ("source", pa.string()), ("run_id", pa.string())])

TABLE_SQL = """CREATE TABLE IF NOT EXISTS events (
    seq BIGINT NOT NULL, received_ms BIGINT NOT NULL, topic VARCHAR NOT NULL, kind VARCHAR NOT NULL,
    ts BIGINT, service VARCHAR, strategy VARCHAR, instrument_key VARCHAR, signal_id VARCHAR,
    order_id VARCHAR, position_id VARCHAR, event VARCHAR, status VARCHAR, side VARCHAR,
    quantity BIGINT, price DOUBLE, pnl DOUBLE, reason VARCHAR, payload JSON NOT NULL,
    source VARCHAR NOT NULL, run_id VARCHAR NOT NULL)"""

_IST = ("make_timestamp(ts * 1000) + INTERVAL 330 MINUTE AS time_ist, "
        "CAST(make_timestamp(ts * 1000) + INTERVAL 330 MINUTE AS DATE) AS date_ist")
_BASE = f"seq, received_ms, source, run_id, ts, {_IST}, strategy, instrument_key"


def _j(field: str, sql_type: str = "") -> str:
    expr = f"(payload->>'$.{field}')"
    return f"CAST({expr} AS {sql_type}) AS {field}" if sql_type else f"{expr} AS {field}"


VIEWS = {
    "events_ist": f"SELECT *, {_IST} FROM events",
    "risk_decisions": f"""SELECT {_BASE}, signal_id, side, {_j('entry', 'DOUBLE')},
        {_j('stop_loss', 'DOUBLE')}, {_j('target', 'DOUBLE')}, {_j('approved', 'BOOLEAN')}, {_j('rule')},
        reason, quantity, {_j('lots', 'BIGINT')}, {_j('lot_size', 'BIGINT')},
        {_j('risk_per_unit', 'DOUBLE')}, {_j('risk_amount', 'DOUBLE')}, {_j('budget', 'DOUBLE')},
        {_j('reward_risk', 'DOUBLE')} FROM events WHERE kind = 'risk'""",
    "orders": f"""SELECT {_BASE}, order_id, signal_id, position_id, {_j('kind')}, {_j('order_type')},
        side, quantity, {_j('price', 'DOUBLE')}, {_j('fill_price', 'DOUBLE')}, status, reason,
        {_j('client')}, {_j('broker_order_id')} FROM events WHERE kind = 'order'""",
    "order_book": """SELECT * FROM orders
        QUALIFY row_number() OVER (PARTITION BY order_id ORDER BY seq DESC) = 1""",
    "fills": f"""SELECT {_BASE}, {_j('fill_id')}, order_id, signal_id, position_id, {_j('kind')}, side,
        quantity, price, {_j('ltp', 'DOUBLE')}, {_j('slippage', 'DOUBLE')}, {_j('client')}
        FROM events WHERE kind = 'fill'""",
    "position_updates": f"""SELECT {_BASE}, position_id, signal_id, event, status, side, quantity,
        {_j('lots', 'BIGINT')}, {_j('lot_size', 'BIGINT')}, {_j('entry_price', 'DOUBLE')},
        {_j('entry_ts', 'BIGINT')}, {_j('stop_loss', 'DOUBLE')}, {_j('initial_stop', 'DOUBLE')},
        {_j('target', 'DOUBLE')}, {_j('trailed', 'BOOLEAN')}, {_j('last_price', 'DOUBLE')},
        {_j('unrealised_pnl', 'DOUBLE')}, {_j('realised_pnl', 'DOUBLE')}, {_j('exit_price', 'DOUBLE')},
        {_j('exit_ts', 'BIGINT')}, {_j('exit_reason')}, {_j('client')}
        FROM events WHERE kind = 'position'""",
    "positions": """SELECT * FROM position_updates
        QUALIFY row_number() OVER (PARTITION BY position_id ORDER BY seq DESC) = 1""",
    "trades": """SELECT position_id, signal_id, strategy, instrument_key, side, quantity, lots, lot_size,
        entry_price, entry_ts, exit_price, exit_ts, exit_reason, realised_pnl, initial_stop, target,
        trailed, round(realised_pnl / nullif(abs(entry_price - initial_stop) * quantity, 0), 3)
            AS r_multiple,
        round((exit_ts - entry_ts) / 60000.0, 2) AS minutes, source, run_id,
        make_timestamp(exit_ts * 1000) + INTERVAL 330 MINUTE AS exit_time_ist,
        CAST(make_timestamp(entry_ts * 1000) + INTERVAL 330 MINUTE AS DATE) AS date_ist
        FROM positions WHERE status = 'closed'""",
    "signal_outcomes_live": f"""
        WITH s AS (SELECT {_BASE}, signal_id, side, price AS entry, reason AS signal_reason
                   FROM events WHERE kind = 'signal'),
             r AS (SELECT signal_id, approved, rule, reason FROM risk_decisions
                   QUALIFY row_number() OVER (PARTITION BY signal_id ORDER BY seq) = 1),
             e AS (SELECT position_id, status AS entry_status FROM order_book WHERE kind = 'entry')
        SELECT s.*, r.approved, r.rule, r.reason, p.status AS position_status, p.exit_reason,
               p.realised_pnl, p.unrealised_pnl,
               CASE WHEN r.signal_id IS NULL THEN 'undecided'
                    WHEN NOT r.approved THEN 'rejected'
                    WHEN p.status = 'closed' THEN 'closed'
                    WHEN p.status = 'open' THEN 'open'
                    WHEN e.entry_status IN ('cancelled', 'rejected') THEN 'cancelled'
                    ELSE 'pending' END AS outcome
        FROM s LEFT JOIN r USING (signal_id) LEFT JOIN positions p ON p.position_id = s.signal_id
        LEFT JOIN e ON e.position_id = s.signal_id""",
    "service_events": f"""SELECT seq, received_ms, source, run_id, ts, {_IST}, kind, service, event,
        status, reason, payload FROM events
        WHERE kind IN ('service_event', 'control', 'control_reply', 'health')""",
}


def install(con: duckdb.DuckDBPyConnection) -> None:
    """Create ``events`` (if missing) and (re)create the views. Call on the owner's read-write
    connection (the ingestor), before the query service starts."""
    con.execute(TABLE_SQL)
    for name, body in VIEWS.items():
        con.execute(f"CREATE OR REPLACE VIEW {name} AS {body}")


def clear_replayed(con: duckdb.DuckDBPyConnection, keys: list[str], first_ts: int, last_ts: int) -> int:
    """Delete earlier *replay* trading events (signal, risk, order, fill, position) of ``keys``
    with ``ts`` in ``[first_ts, last_ts]``, so replaying a day again starts its trading afresh.
    Returns rows deleted."""
    if not keys:
        return 0
    marks = ",".join("?" * len(keys))
    kinds = ",".join(f"'{k}'" for k in TRADING_KINDS)
    where = (f"source = 'replay' AND kind IN ({kinds}) AND instrument_key IN ({marks}) "
             f"AND ts BETWEEN ? AND ?")
    # fetchall, not fetchone: an unfinished result keeps this connection's transaction open, and
    # DuckDB then refuses every CHECKPOINT of the ingestor (BatchWriter.checkpoint)
    n = con.execute(f"SELECT count(*) FROM events WHERE {where}", [*keys, first_ts, last_ts]).fetchall()[0][0]
    if n:
        con.execute(f"DELETE FROM events WHERE {where}", [*keys, first_ts, last_ts])
    return int(n)


def row_of(topic: str, msg: Any) -> dict[str, Any] | None:
    """The typed columns of one bus message (without seq, received_ms, payload, source, run_id);
    None for a message the trail does not keep."""
    r: dict[str, Any] = {"topic": topic}
    if isinstance(msg, m.Signal):
        r.update(kind="signal", ts=msg.ts, strategy=msg.strategy, instrument_key=msg.instrument_key,
                 signal_id=_signal_id(msg), side=msg.side, price=msg.entry, reason=msg.reason)
    elif isinstance(msg, m.RiskDecision):
        r.update(kind="risk", ts=msg.ts, strategy=msg.strategy, instrument_key=msg.instrument_key,
                 signal_id=msg.signal_id, side=msg.side, quantity=msg.quantity, price=msg.entry,
                 status="approved" if msg.approved else "rejected", event=msg.rule, reason=msg.reason)
    elif isinstance(msg, m.Order):
        r.update(kind="order", ts=msg.ts, strategy=msg.strategy, instrument_key=msg.instrument_key,
                 signal_id=msg.signal_id, order_id=msg.order_id, position_id=msg.position_id,
                 event=msg.kind, status=msg.status, side=msg.side, quantity=msg.quantity,
                 price=msg.fill_price or msg.price, reason=msg.reason)
    elif isinstance(msg, m.Fill):
        r.update(kind="fill", ts=msg.ts, strategy=msg.strategy, instrument_key=msg.instrument_key,
                 signal_id=msg.signal_id, order_id=msg.order_id, position_id=msg.position_id,
                 event=msg.kind, status="filled", side=msg.side, quantity=msg.quantity, price=msg.price)
    elif isinstance(msg, m.Position):
        closed = msg.status == "closed"
        r.update(kind="position", ts=msg.ts, strategy=msg.strategy, instrument_key=msg.instrument_key,
                 signal_id=msg.signal_id, position_id=msg.position_id, event=msg.event, status=msg.status,
                 side=msg.side, quantity=msg.quantity,
                 price=msg.exit_price if closed else msg.last_price,
                 pnl=msg.realised_pnl if closed else msg.unrealised_pnl, reason=msg.exit_reason)
    elif isinstance(msg, m.ServiceEvent):
        r.update(kind="service_event", ts=msg.ts, service=msg.service, event=msg.event, reason=msg.message)
    elif isinstance(msg, m.Control):
        r.update(kind="control", ts=msg.ts, service=topic.partition(".")[2], event=msg.command,
                 reason=msg.target)
    elif isinstance(msg, m.ControlReply):
        r.update(kind="control_reply", ts=msg.ts, service=msg.service, event=msg.command,
                 status="ok" if msg.ok else "failed", reason=msg.message)
    elif isinstance(msg, m.Health):
        r.update(kind="health", ts=msg.ts, service=msg.service, event="health", status=msg.status,
                 reason=f"pid {msg.pid}")
    else:
        return None
    return r


class AuditRecorder:
    """Subscribes to :data:`SUBSCRIPTIONS` and appends every message to ``events`` from its own
    thread and cursor, in Arrow batches (every ``flush_s`` or ``max_rows``). Health reports are
    kept only when a service's status or pid changes. :meth:`start` waits until the subscription
    is live at the bus; :meth:`stop` stores what already arrived, then stops."""

    def __init__(self, con: duckdb.DuckDBPyConnection, bus_pub: str, bus_sub: str, source: str,
                 run_id: str, flush_s: float = 0.1, max_rows: int = 5000):
        self.cur = con.cursor()
        self.bus_pub, self.bus_sub = bus_pub, bus_sub
        self.source, self.run_id = source, run_id
        self.flush_s, self.max_rows = flush_s, max_rows
        self.recorded = 0
        self.errors = 0
        self.next_seq = int(self.cur.execute("SELECT coalesce(max(seq), 0) FROM events").fetchall()[0][0]) + 1
        self._rows: list[dict[str, Any]] = []
        self._health: dict[str, tuple[str, int]] = {}
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="audit-recorder", daemon=True)

    def start(self, ready_timeout_s: float = 10.0) -> bool:
        """Start; True once the subscription is live (False after ``ready_timeout_s``)."""
        self._thread.start()
        return self._ready.wait(ready_timeout_s)

    def add(self, frame: bytes, received_ms: int) -> bool:
        """Buffer one bus frame; returns whether it is kept. Undecodable frames are counted."""
        topic, payload = m.split(frame)
        if topic.startswith("health.__probe__"):
            return False
        try:
            _, msg = m.decode(frame)
        except (ValueError, msgspec.ValidationError) as exc:
            self.errors += 1
            log.warning("audit: undecodable %s frame skipped (%s)", topic, exc)
            return False
        if isinstance(msg, m.Health):
            key = (msg.status, msg.pid)
            if self._health.get(msg.service) == key:
                return False
            self._health[msg.service] = key
        row = row_of(topic, msg)
        if row is None:
            return False
        row.update(seq=self.next_seq, received_ms=received_ms, payload=payload.decode("utf-8", "replace"),
                   source=self.source, run_id=self.run_id)
        self.next_seq += 1
        self._rows.append(row)
        return True

    def flush(self) -> int:
        """Insert the buffered rows (one transaction); returns rows written."""
        if not self._rows:
            return 0
        rows, self._rows = self._rows, []
        table = pa.Table.from_pylist([{f.name: r.get(f.name) for f in SCHEMA} for r in rows], schema=SCHEMA)
        try:
            self.cur.register("_audit_batch", table)
            self.cur.execute("INSERT INTO events BY NAME SELECT * FROM _audit_batch")
            self.cur.unregister("_audit_batch")
        except duckdb.Error:
            self.errors += 1
            log.exception("audit: %d events could not be stored", len(rows))
            return 0
        self.recorded += len(rows)
        return len(rows)

    def _run(self) -> None:
        from trading_core.bus import BusClient, now_ms
        bus = BusClient(self.bus_pub, self.bus_sub, SUBSCRIPTIONS)
        try:
            if not bus.wait_ready(10):
                log.warning("audit: no bus round trip within 10 s; recording anyway")
            self._ready.set()
            due = time.monotonic() + self.flush_s
            drain_until = None
            while True:
                frame = bus.recv_raw(int(self.flush_s * 1000))
                if frame is not None:
                    try:
                        self.add(frame, now_ms())
                    except ValueError as exc:
                        self.errors += 1
                        log.warning("audit: bad frame skipped (%s)", exc)
                if len(self._rows) >= self.max_rows or time.monotonic() >= due:
                    self.flush()
                    due = time.monotonic() + self.flush_s
                if self._stop.is_set():
                    drain_until = drain_until or time.monotonic() + 0.4
                    if frame is None or time.monotonic() >= drain_until:
                        self.flush()
                        return
        finally:
            self._ready.set()
            bus.close()

    def stop(self, timeout_s: float = 1.5) -> None:
        """Store what already arrived (until the bus is quiet), then stop and close the cursor."""
        self._stop.set()
        self._thread.join(timeout_s)
        try:
            self.cur.close()
        except duckdb.Error:
            pass

    def stats(self) -> dict[str, int]:
        """Counters for the ingestor's health report."""
        return {"audit_events": self.recorded, "audit_errors": self.errors}
