"""The execution pipeline on recorded days: late signals, stale signals, the kill switch, a
restart mid-day recovered from the DuckDB audit trail, the live (Upstox) client against a local
fake order endpoint, and the start-up gate of live trading."""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
import time

import pyarrow as pa
import pytest

from tests.conftest import ROOT
from tests.execution_days import (NIFTY, Replayer, day_ticks, month_files, paper_engine,
                                  replay_day)
from tests.fake_upstox_orders import FakeUpstoxOrders
from trading_core import audit, messages as m, persistence, settings as settings_mod, views
from trading_core.execution_client import UpstoxExecutionClient
from trading_core.execution_engine import ExecutionEngine
from trading_core.paper import PaperConfig
from trading_core.risk import RiskBook, RiskConfig, ist_minute, signal_id

log = logging.getLogger("test")


def outcome(run) -> dict[str, tuple]:
    """Closed positions by id: (reason, exit ts, exit price, PnL, quantity)."""
    return {p.position_id: (p.exit_reason, p.exit_ts, p.exit_price, round(p.realised_pnl, 2), p.quantity)
            for p in run.closed().values()}


def decisions(run) -> dict[str, tuple]:
    return {d.signal_id: (d.approved, d.rule, d.quantity) for d in run.of(m.RiskDecision)}


def at(ticks: list[m.Tick], hhmm: str) -> int:
    """Index of the first tick at or after ``hhmm`` IST."""
    h, mm = map(int, hhmm.split(":"))
    return next(i for i, t in enumerate(ticks) if ist_minute(t.ts) >= h * 60 + mm)


def test_signals_arriving_late_trade_exactly_as_if_on_time(shared_data):
    """At full replay speed a signal reaches the execution service long after the ticks that
    follow it; it must still fill at the first tick at or after its time and be managed through
    the ticks since, as if it had arrived at once."""
    files = sorted(month_files(2021, "JUN"))
    compared = 0
    for day in ("2021-06-04", "2021-06-09", "2021-06-21", "2021-06-22"):
        ticks = day_ticks(files, day)
        on_time = replay_day(ticks, paper=PaperConfig(time_exit_minutes=0))
        late = Replayer(paper_engine(paper=PaperConfig(time_exit_minutes=0)))
        held: list[m.Signal] = []
        late.engine.on_signal, deliver = held.append, late.engine.on_signal
        late.feed(ticks)                       # the whole day's ticks first, signals held back
        for sig in held:
            deliver(sig)
        run = late.run()
        assert outcome(run) == outcome(on_time) and decisions(run) == decisions(on_time)
        compared += len(outcome(run))
    assert compared >= 6


def test_a_signal_too_late_in_wall_time_is_rejected_as_stale(shared_data):
    files = sorted(month_files(2022, "JUN"))
    ticks = day_ticks(files, "2022-06-09")
    now = [0]
    engine = paper_engine(clock=lambda: now[0], max_signal_delay_ms=10_000)
    replayer = Replayer(engine)
    held: list[m.Signal] = []
    engine.on_signal, deliver = held.append, engine.on_signal
    for t in ticks:
        now[0] = t.seq * 10                     # 10 ms of wall time per tick
        replayer.feed([t])
    assert held
    now[0] = max(t.seq for t in ticks) * 10 + 25_000     # 25 s after the last tick came in
    for sig in held:
        d = deliver(sig)
        assert d.rule == "stale" and "s after the first tick" in d.reason, d
    assert not engine.book.open and not engine.entries


def test_kill_switch_flattens_cancels_and_blocks(shared_data):
    files = sorted(month_files(2021, "JUN"))
    ticks = day_ticks(files, "2021-06-22")
    replayer = Replayer(paper_engine(paper=PaperConfig(time_exit_minutes=0)))
    replayer.feed(ticks[:at(ticks, "11:00")])
    engine = replayer.engine
    open_ = {p.position_id: (p.last_price, p.side) for p in engine.book.open.values()}
    assert len(open_) == 2, "both indices are in a trade at 11:00"
    # an approved signal whose next tick has not come yet: its entry order is pending
    nxt = ticks[at(ticks, "11:00")]
    pending = m.Signal(strategy="probe", instrument_key="NSE_FO|NIFTY-I", side="BUY", entry=100.0,
                       stop_loss=90.0, target=130.0, reason="pending entry", ts=nxt.ts)
    assert engine.on_signal(pending).approved and engine.entries
    summary = engine.kill()
    assert summary["flattened"] == 2 and summary["cancelled"] == 1 and summary["still_open"] == 0
    run = replayer.run()
    for pid, (last, side) in open_.items():
        pos = run.closed()[pid]
        assert pos.exit_reason == "kill_switch"
        assert pos.exit_price == pytest.approx(last - 0.5 if side == "BUY" else last + 0.5)
    assert [o.status for o in run.of(m.Order) if o.order_id == signal_id(pending) + "-E"] == ["placed", "cancelled"]
    replayer.feed(ticks[at(ticks, "11:00"):at(ticks, "13:00")])
    later = [d for d in run.of(m.RiskDecision) if d.signal_ts >= nxt.ts and d.strategy != "probe"]
    assert later and all(d.rule == "kill_switch" for d in later)
    engine.resume()
    fresh = m.Signal(strategy="probe", instrument_key="NSE_FO|BANKNIFTY-I", side="SELL", entry=35000.0,
                     stop_loss=35100.0, target=34800.0, reason="after resume", ts=ticks[at(ticks, "13:00")].ts)
    assert engine.on_signal(fresh).approved


def _record(path, published, ticks, received_ms):
    """What the ingestor would have stored: the ticks, and the audit trail of ``published``."""
    con = persistence.connect(path)
    views.install(con)
    audit.install(con)
    rec = audit.AuditRecorder(con, "tcp://127.0.0.1:1", "tcp://127.0.0.1:2", "replay", "run-test")
    for topic, msg in published:
        rec.add(m.encode(topic, msg), received_ms)
    rec.flush()
    table = pa.table({"instrument_key": [t.instrument_key for t in ticks], "ts": [t.ts for t in ticks],
                      "ltp": [t.ltp for t in ticks], "ltq": [0] * len(ticks), "oi": [0.0] * len(ticks),
                      "seq": [t.seq for t in ticks], "source": ["replay"] * len(ticks)})
    con.register("_t", table)
    con.execute("INSERT INTO ticks BY NAME SELECT * FROM _t")
    con.close()


def test_restart_mid_day_recovers_open_positions_from_duckdb(shared_data, tmp_path, monkeypatch):
    """The execution service dies at 11:00 with two positions open and comes back at 11:20: it
    recovers them (and the day's locks) from the audit trail, takes the stop that was hit while
    it was down from the recorded ticks, manages the other live, and the day ends exactly as an
    uninterrupted one."""
    from scripts import execution
    files = sorted(month_files(2021, "JUN"))
    ticks = day_ticks(files, "2021-06-22")
    paper = PaperConfig(time_exit_minutes=0)
    whole = replay_day(ticks, paper=paper)
    down, up = at(ticks, "11:00"), at(ticks, "11:20")

    replayer = Replayer(paper_engine(paper=paper))
    replayer.feed(ticks[:down])
    before = {p.position_id for p in replayer.engine.book.open.values()}
    assert len(before) == 2
    replayer.feed(ticks[down:up], engine_up=False)        # the ingestor records, nobody trades
    db = tmp_path / "m.duckdb"
    _record(db, replayer.published, ticks[:up], received_ms=1)
    monkeypatch.setenv("AMT_DUCKDB_PATH", str(db))
    monkeypatch.setenv("AMT_QUERY_ENDPOINT", "tcp://127.0.0.1:9")        # nothing listens: the file
    settings = settings_mod.load()
    restarted = paper_engine(paper=paper)
    replayer.use(restarted)
    summary = execution.recover(restarted, settings, log, started_ms=2, stopping=threading.Event(), wait_s=0)
    assert summary["positions"] == 2 and summary["via"] == "file" and summary["ticks_replayed"] > 0
    assert {p.position_id for p in replayer.run().of(m.Position) if p.event == "recovered"} == before
    replayer.feed(ticks[up:])
    run = replayer.run()
    assert outcome(run) == outcome(whole)
    assert decisions(run) == decisions(whole)             # the later signals hit the restored locks
    caught = [p for p in run.closed().values() if ticks[down].ts <= p.exit_ts < ticks[up].ts]
    assert caught, "a stop was hit while the service was down"
    assert any(d.rule == "instrument_locked" and d.signal_ts > ticks[up].ts for d in run.of(m.RiskDecision))


def test_signals_published_while_down_are_rejected_as_missed(shared_data, tmp_path, monkeypatch):
    from scripts import execution
    files = sorted(month_files(2022, "JUN"))
    ticks = day_ticks(files, "2022-06-09")
    down, up = at(ticks, "10:00"), at(ticks, "10:40")
    replayer = Replayer(paper_engine())
    replayer.feed(ticks[:down])
    replayer.feed(ticks[down:up], engine_up=False)
    missed = list(replayer.signals)
    assert len(missed) == 3
    _record(tmp_path / "m.duckdb", replayer.published, ticks[:up], received_ms=1)
    monkeypatch.setenv("AMT_DUCKDB_PATH", str(tmp_path / "m.duckdb"))
    monkeypatch.setenv("AMT_QUERY_ENDPOINT", "tcp://127.0.0.1:9")
    engine = paper_engine()
    replayer.use(engine)
    summary = execution.recover(engine, settings_mod.load(), log, 2, threading.Event(), wait_s=0)
    assert summary["missed_signals"] == 3
    got = replayer.run().of(m.RiskDecision)
    assert sorted(d.signal_id for d in got) == sorted(signal_id(s) for s in missed)
    assert all(d.rule == "missed" and not d.approved for d in got)


# --- live orders: the Upstox client against a local fake ---------------------------------------------
@pytest.fixture
def fake_upstox():
    fake = FakeUpstoxOrders("live-token-5e1f9a", market_price=0.0)
    url = fake.start()
    yield fake, url
    fake.stop()


def wait_for(cond, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError("condition not met in time")


def test_upstox_client_places_polls_and_cancels(fake_upstox, caplog):
    fake, url = fake_upstox
    fake.market_price = 16350.5
    caplog.set_level(logging.DEBUG)
    client = UpstoxExecutionClient("live-token-5e1f9a", url, url, resolve=lambda k: "NSE_FO|43885",
                                   poll_interval_s=0.02)
    try:
        order = m.Order(order_id="a1b2c3d4e5f60718-E", signal_id="a1b2c3d4e5f60718", position_id="a1b2c3d4e5f60718",
                        strategy="ib", instrument_key="NSE_FO|NIFTY22JUNFUT", side="BUY", quantity=150,
                        kind="entry", order_type="MARKET", status="placed", ts=1654750320000)
        ack = client.place(order)
        assert ack.status == "placed" and ack.broker_order_id and ack.client == "upstox"
        body = fake.placed()[0]
        assert body == {"quantity": 150, "product": "I", "validity": "DAY", "price": 0.0,
                        "tag": "a1b2c3d4e5f60718-E", "slice": False, "instrument_token": "NSE_FO|43885",
                        "order_type": "MARKET", "transaction_type": "BUY", "disclosed_quantity": 0,
                        "trigger_price": 0.0, "is_amo": False}
        assert fake.requests[0]["headers"]["Authorization"] == "Bearer live-token-5e1f9a"
        [(filled, fill)] = wait_for(client.poll)
        assert (filled.status, filled.fill_price, fill.price, fill.quantity) == ("filled", 16350.5, 16350.5, 150)
        limit = client.place(m.Order(**{**{f: getattr(order, f) for f in order.__struct_fields__},
                                         "order_id": "x-TP", "order_type": "LIMIT", "price": 16500.0,
                                         "side": "SELL", "kind": "target"}))
        assert fake.placed()[-1]["order_type"] == "LIMIT" and fake.placed()[-1]["price"] == 16500.0
        fake.polls_before_fill = 10**6
        resting = client.place(m.Order(**{**{f: getattr(order, f) for f in order.__struct_fields__},
                                          "order_id": "x-X", "side": "SELL", "kind": "exit"}))
        assert client.cancel(resting).status == "cancelled"
        assert fake.orders[resting.broker_order_id]["status"] == "cancelled"
        assert limit.status == "placed"
        fake.reject_instruments.add("NSE_FO|43885")
        refused = client.place(order)
        assert refused.status == "rejected" and "Instrument key is invalid" in refused.reason
        index = UpstoxExecutionClient("live-token-5e1f9a", url, url).place(
            m.Order(**{**{f: getattr(order, f) for f in order.__struct_fields__}, "instrument_key": NIFTY}))
        assert index.status == "rejected" and "index" in index.reason
        wrong = UpstoxExecutionClient("expired-token", url, url, resolve=lambda k: "NSE_FO|43885").place(order)
        assert wrong.status == "rejected" and "401" in wrong.reason and "Invalid token" in wrong.reason
    finally:
        client.close()
    assert "live-token-5e1f9a" not in caplog.text


def test_live_engine_trades_a_real_signal_through_the_fake_broker(shared_data, fake_upstox):
    """Entry and exit as market orders at the (fake) broker; fills come back asynchronously and
    the position is managed on the real ticks in between."""
    fake, url = fake_upstox
    files = sorted(month_files(2022, "JUN"))
    ticks = [t for t in day_ticks(files, "2022-06-09") if t.instrument_key == NIFTY]
    last_ltp = {"p": 0.0}
    fake.fill_price = lambda order: last_ltp["p"]
    client = UpstoxExecutionClient("live-token-5e1f9a", url, url, resolve=lambda k: "NSE_FO|43885",
                                   poll_interval_s=0.01)
    engine = ExecutionEngine(RiskBook(RiskConfig()), PaperConfig(), client, lambda t, msg: None,
                             clock=lambda: 0)
    replayer = Replayer(engine)
    try:
        for t in ticks:
            last_ltp["p"] = t.ltp
            replayer.feed([t])
            # a live fill takes a round trip to the broker: wait for it before the next tick
            deadline = time.monotonic() + 10
            while (engine.entries or any(p.exiting for p in engine.book.open.values())) \
                    and time.monotonic() < deadline:
                engine.poll()
                time.sleep(0.01)
            if engine.counters["closed"]:
                break
    finally:
        client.close()
    published = [msg for _, msg in replayer.published]
    closed = [p for p in published if isinstance(p, m.Position) and p.status == "closed"]
    assert len(closed) == 1 and closed[0].client == "upstox"
    pos = closed[0]
    sides = [b["transaction_type"] for b in fake.placed()]
    assert sides == ["BUY", "SELL"] and all(b["order_type"] == "MARKET" for b in fake.placed())
    assert all(b["quantity"] == pos.quantity for b in fake.placed())
    assert pos.exit_reason == "time" and pos.realised_pnl == pytest.approx(
        (pos.exit_price - pos.entry_price) * pos.quantity, abs=0.01)
    fills = [p for p in published if isinstance(p, m.Fill)]
    assert [f.client for f in fills] == ["upstox", "upstox"]


def test_a_rejected_live_exit_keeps_the_position_and_is_retried(shared_data, fake_upstox):
    fake, url = fake_upstox
    ticks = [t for t in day_ticks(sorted(month_files(2022, "JUN")), "2022-06-09") if t.instrument_key == NIFTY]
    last = {"p": 0.0}
    fake.fill_price = lambda order: last["p"]
    now = [0]
    client = UpstoxExecutionClient("live-token-5e1f9a", url, url, resolve=lambda k: "NSE_FO|43885",
                                   poll_interval_s=0.01)
    engine = ExecutionEngine(RiskBook(RiskConfig()), PaperConfig(), client, lambda t, msg: None,
                             clock=lambda: now[0])
    replayer = Replayer(engine)
    rejected_at = None
    try:
        for t in ticks:
            last["p"] = t.ltp
            replayer.feed([t])
            deadline = time.monotonic() + 10
            while (engine.entries or any(p.exiting for p in engine.book.open.values())) \
                    and time.monotonic() < deadline:
                engine.poll()
                time.sleep(0.01)
            if engine.book.open and not fake.reject_instruments and rejected_at is None:
                fake.reject_instruments.add("NSE_FO|43885")        # the broker refuses from now on
            if rejected_at is None and any(o.status == "rejected" for o in replayer.run().of(m.Order)):
                rejected_at = t.ts
                assert engine.book.open, "the position stays open and managed"
            elif rejected_at is not None and engine.book.open:
                sells = [b for b in fake.placed() if b["transaction_type"] == "SELL"]
                assert len(sells) == 1, "no retry within 5 s"
                now[0] += 6_000                                  # 6 s later the exit is sent again
                fake.reject_instruments.clear()
            if engine.counters["closed"]:
                break
    finally:
        client.close()
    run = replayer.run()
    assert rejected_at is not None
    [pos] = run.closed().values()
    assert pos.exit_reason == "time" and pos.exit_ts > rejected_at
    assert [b["transaction_type"] for b in fake.placed()] == ["BUY", "SELL", "SELL"]


# --- LIVE_TRADING start-up gate ------------------------------------------------------------------------
def test_live_trading_needs_the_live_feed_and_a_typed_confirmation(tmp_path):
    from scripts.execution import LIVE_ENV, live_gate
    paper = settings_mod.load()
    assert live_gate(paper, "upstox") == (None, {})
    cfg = tmp_path / "live.py"
    cfg.write_text("LIVE_TRADING = True\nACCESS_TOKEN = 'tok-live-0001'\n")
    live = settings_mod.load(cfg)
    problem, env = live_gate(live, "replay", ask=lambda q: "LIVE", interactive=True)
    assert "Upstox live feed" in problem and env == {}
    problem, _ = live_gate(live, "upstox", ask=lambda q: "LIVE", interactive=False)
    assert "confirmation" in problem
    problem, _ = live_gate(live, "upstox", ask=lambda q: "yes", interactive=True)
    assert problem == "live trading not confirmed; nothing was started"
    assert live_gate(live, "upstox", ask=lambda q: " LIVE\n", interactive=True) == (None, {LIVE_ENV: "1"})
    from tests.system_harness import free_port
    result = subprocess.run([sys.executable, str(ROOT / "run.py"), "--config", str(cfg), "--replay",
                             str(month_files(2022, "JUN")[0]), "--port", str(free_port()),
                             "--db", str(tmp_path / "m.duckdb"), "--bus-pub", f"tcp://127.0.0.1:{free_port()}",
                             "--bus-sub", f"tcp://127.0.0.1:{free_port()}",
                             "--query-endpoint", f"tcp://127.0.0.1:{free_port()}"],
                            capture_output=True, text=True, timeout=60, cwd=ROOT, stdin=subprocess.DEVNULL)
    lines = [ln for ln in (result.stdout + result.stderr).splitlines() if ln.strip()]
    assert result.returncode == 2 and len(lines) == 1 and "LIVE_TRADING" in lines[0], lines
