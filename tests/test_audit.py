"""The audit trail in DuckDB: a recorded real day reads back as exactly the messages that were
published, the per-kind views agree with the trades, and replaying a range replaces its rows."""

from __future__ import annotations

import duckdb
import msgspec
import pytest

from tests.execution_days import day_ticks, month_files, replay_day
from trading_core import audit, messages as m, persistence, views
from trading_core.paper import PaperConfig


def recorder(path):
    con = persistence.connect(path)
    views.install(con)
    audit.install(con)
    return con, audit.AuditRecorder(con, "tcp://127.0.0.1:1", "tcp://127.0.0.1:2", "replay", "run-a")


@pytest.fixture(scope="module")
def day(tmp_path_factory, shared_data):
    """2021-06-22 (both indices, stops, trailing, locks) replayed and its messages recorded."""
    files = sorted(month_files(2021, "JUN"))
    run = replay_day(day_ticks(files, "2021-06-22"), paper=PaperConfig(time_exit_minutes=0))
    path = tmp_path_factory.mktemp("audit") / "m.duckdb"
    con, rec = recorder(path)
    for i, (topic, msg) in enumerate(run.published):
        assert rec.add(m.encode(topic, msg), 1_000 + i)
    assert rec.flush() == len(run.published)
    rec.cur.close()
    con.close()
    return run, duckdb.connect(str(path), read_only=True)


def test_the_trail_reads_back_as_the_published_stream(day):
    run, con = day
    rows = con.execute("SELECT topic, kind, payload FROM events ORDER BY seq").fetchall()
    decoded = [m.decode(topic.encode() + b"\x00" + payload.encode()) for topic, _, payload in rows]
    assert decoded == run.published
    kinds = {k for _, k, _ in rows}
    assert kinds == {"signal", "risk", "order", "fill", "position"}


def test_views_give_every_signal_its_outcome(day):
    run, con = day
    outcomes = con.execute("SELECT signal_id, outcome, rule, reason, realised_pnl FROM signal_outcomes_live "
                           "ORDER BY ts").fetchall()
    assert len(outcomes) == len(run.signals) >= 4
    decisions = run.decisions()
    closed = run.closed()
    for sid, outcome, rule, reason, pnl in outcomes:
        d = decisions[sid]
        if d.approved:
            assert outcome == "closed" and pnl == pytest.approx(closed[sid].realised_pnl)
        else:
            assert outcome == "rejected" and rule == d.rule and reason == d.reason and reason
    trades = con.execute("SELECT position_id, exit_reason, exit_price, realised_pnl, quantity, r_multiple "
                         "FROM trades ORDER BY exit_ts").fetchall()
    assert {t[0]: t[1:5] for t in trades} == {
        p.position_id: (p.exit_reason, p.exit_price, p.realised_pnl, p.quantity) for p in closed.values()}
    for pid, *_, r in trades:
        p = closed[pid]
        assert r == pytest.approx(p.realised_pnl / (abs(p.entry_price - p.initial_stop) * p.quantity), abs=1e-3)
    assert con.execute("SELECT count(*) FROM positions WHERE status = 'open'").fetchone()[0] == 0
    fills = con.execute("SELECT count(*), sum(quantity) FROM fills").fetchone()
    assert fills == (2 * len(closed), sum(2 * p.quantity for p in closed.values()))
    book = dict(con.execute("SELECT order_id, status FROM order_book").fetchall())
    for pid, p in closed.items():
        assert book[pid + "-E"] == "filled"
        legs = {book[pid + "-SL"], book[pid + "-TP"]}
        assert legs == {"filled", "cancelled"}, (pid, legs)
    approved = con.execute("SELECT count(*) FROM risk_decisions WHERE approved").fetchone()[0]
    assert approved == len(closed)


def test_service_events_controls_and_health_transitions(tmp_path):
    con, rec = recorder(tmp_path / "m.duckdb")
    frames = [
        (m.health_topic("execution"), m.Health(service="execution", pid=11, status="ready", ts=1)),
        (m.health_topic("execution"), m.Health(service="execution", pid=11, status="ready", ts=2)),
        (m.health_topic("execution"), m.Health(service="execution", pid=11, status="running", ts=3)),
        (m.health_topic("execution"), m.Health(service="execution", pid=12, status="running", ts=4)),
        ("health.__probe__.1.x", m.Health(service="probe", pid=1, status="probe", ts=0)),
        (m.control_topic("execution"), m.Control(command="kill_switch", target="cli", ts=5)),
        (m.reply_topic("execution"), m.ControlReply(service="execution", command="kill_switch", ok=True,
                                                    message="kill switch ENGAGED", request_ts=5, ts=6)),
        (m.event_topic("execution"), m.ServiceEvent(service="execution", event="kill_switch",
                                                    message="kill switch ENGAGED", ts=6)),
    ]
    kept = [rec.add(m.encode(t, msg), 100) for t, msg in frames]
    assert kept == [True, False, True, True, False, True, True, True]
    assert rec.add(b"event.execution\x00{not json", 100) is False and rec.errors == 1
    rec.flush()
    rows = con.execute("SELECT kind, service, event, status FROM service_events ORDER BY seq").fetchall()
    assert rows == [("health", "execution", "health", "ready"), ("health", "execution", "health", "running"),
                    ("health", "execution", "health", "running"), ("control", "execution", "kill_switch", None),
                    ("control_reply", "execution", "kill_switch", "ok"),
                    ("service_event", "execution", "kill_switch", None)]
    seqs = [r[0] for r in con.execute("SELECT seq FROM events ORDER BY seq").fetchall()]
    assert seqs == list(range(1, 7))
    rec.cur.close()
    # a new recorder continues the sequence
    again = audit.AuditRecorder(con, "tcp://127.0.0.1:1", "tcp://127.0.0.1:2", "sim", "run-b")
    assert again.next_seq == 7
    again.cur.close()
    con.close()


def test_replaying_a_range_again_replaces_its_trading_events(day, tmp_path):
    run, _ = day
    con, rec = recorder(tmp_path / "m.duckdb")
    for topic, msg in run.published:
        rec.add(m.encode(topic, msg), 1)
    rec.add(m.encode(m.event_topic("execution"), m.ServiceEvent(service="execution", event="started",
                                                                message="paper", ts=5)), 1)
    rec.flush()
    ts = [msg.ts for _, msg in run.published if hasattr(msg, "ts")]
    keys = sorted({msg.instrument_key for _, msg in run.published})
    assert audit.clear_replayed(con, ["NSE_FO|OTHER"], min(ts), max(ts)) == 0
    n = audit.clear_replayed(con, keys, min(ts), max(ts))
    assert n == len(run.published)
    assert con.execute("SELECT kind FROM events").fetchall() == [("service_event",)]
    rec.cur.close()
    con.close()


def test_payload_json_is_the_bus_json(day):
    run, con = day
    topic, payload = con.execute("SELECT topic, payload FROM events WHERE kind = 'risk' LIMIT 1").fetchone()
    msg = msgspec.json.decode(payload)
    assert msg["type"] == "risk" and topic == f"risk.{msg['strategy']}"


def test_the_signals_view_is_every_published_signal(day):
    """``signals`` reads the trail's signal events: field for field the Signal messages of the
    replayed day, each with the signal_id the risk guard decided it under."""
    run, con = day
    got = con.execute("SELECT strategy, instrument_key, ts, side, entry, stop_loss, target, reason, "
                      "signal_id FROM signals ORDER BY received_ms").fetchall()
    want = [(s.strategy, s.instrument_key, s.ts, s.side, s.entry, s.stop_loss, s.target, s.reason)
            for topic, s in run.published if isinstance(s, m.Signal)]
    assert [g[:8] for g in got] == want and len(want) >= 4
    decided = {d.signal_id for d in run.decisions().values()}
    assert {g[8] for g in got} == decided


OLD_SIGNALS_TABLE = """CREATE TABLE signals (
    strategy VARCHAR NOT NULL, instrument_key VARCHAR NOT NULL, ts BIGINT NOT NULL,
    side VARCHAR NOT NULL, entry DOUBLE NOT NULL, stop_loss DOUBLE NOT NULL, target DOUBLE NOT NULL,
    reason VARCHAR NOT NULL, received_ms BIGINT NOT NULL, source VARCHAR NOT NULL,
    run_id VARCHAR NOT NULL)"""


def test_an_older_files_signals_table_is_folded_into_the_trail(day, tmp_path):
    """Files written before 2026-12-03 kept signals in a table beside ``events``. Opening one
    moves the signals the trail lacks into it (once), drops the table, and ``signals`` then
    reads the same rows as before."""
    run, _ = day
    signals = [s for _, s in run.published if isinstance(s, m.Signal)]
    path = tmp_path / "old.duckdb"
    con = persistence.connect(path)
    audit.install(con)
    con.execute(OLD_SIGNALS_TABLE)
    rows = [(s.strategy, s.instrument_key, s.ts, s.side, s.entry, s.stop_loss, s.target, s.reason,
             2_000 + i, "replay", "run-old") for i, s in enumerate(signals)]
    con.executemany("INSERT INTO signals VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
    rec = audit.AuditRecorder(con, "tcp://127.0.0.1:1", "tcp://127.0.0.1:2", "replay", "run-old")
    half = signals[: len(signals) // 2]                 # the trail already holds the first half
    for i, s in enumerate(half):
        rec.add(m.encode(m.signal_topic(s.strategy), s), 2_000 + i)
    rec.flush()
    rec.cur.close()
    before = con.execute("SELECT * EXCLUDE (run_id) FROM signals ORDER BY received_ms").fetchall()
    views.install(con)
    views.install(con)                                  # a second opening moves nothing again
    tables = {r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
    assert "signals" not in tables
    after = con.execute("SELECT strategy, instrument_key, ts, side, entry, stop_loss, target, reason, "
                        "received_ms, source FROM signals ORDER BY received_ms").fetchall()
    assert after == before
    assert con.execute("SELECT count(DISTINCT seq) = count(*) FROM events").fetchall()[0][0]
    con.close()
