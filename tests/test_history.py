"""History mode (``api/history.py``) on real recorded days.

A DuckDB file is recorded the way the ingestor records it (``persistence.BatchWriter`` fed by
``data_handling.replay.ReplaySource``, 1-minute candles from ``CandleBuilder``, and the signals
the real ``ib_breakout`` strategy emits on those candles); the ingestor's query service serves it
from another process, as in the running system; the history routes run on a real uvicorn server, and a real WebSocket client
(the ``websockets`` package) drives them. Expected values are computed independently: candles
from the ``candles_1m`` rows, profiles from ``trading_core.profile_batch`` on the day's ticks,
counts from the vendor files.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import polars as pl
import pytest
import uvicorn
from fastapi import FastAPI
from websockets.sync.client import connect

from api import history
from data_handling.candles import CandleBuilder
from data_handling.replay import ReplaySource
from strategy.ib_breakout import IBBreakout
from tests.conftest import FO_TICKS, INDEX_1MIN
from tests.system_harness import ROOT, free_port
from trading_core import audit, messages as m, persistence, query as q, query_client, settings as settings_mod, views
from trading_core.messages import Signal
from trading_core.profile_batch import compute_profiles

pytestmark = pytest.mark.timeout(120)

MONTH = INDEX_1MIN / "2022_JUN_NIFTY.txt"
FUT_FILE = FO_TICKS / "Futures" / "NIFTY-I.csv"
KEY = "NSE_INDEX|Nifty 50"
FUT = "NSE_FO|NIFTY-I"
DAYS = ["2022-06-08", "2022-06-09"]
DAY = "2022-06-09"
FUT_DAY = "2022-11-18"


@dataclasses.dataclass
class Recorded:
    path: Path
    settings: settings_mod.Settings
    signals: list[Signal]

    def sql(self, query: str, params: list | None = None) -> pl.DataFrame:
        """Expected values, read through the query service like everything else."""
        return query_client.query(query, params, settings=self.settings)


# The ingestor's query service on a recorded file, in its own process as in the running system
# (so this process - the API's stand-in - does not share its interpreter lock with DuckDB's
# catalog work). It serves until its stdin closes.
SERVE = """
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[3])
from trading_core import persistence, query as q, query_server, views
con = persistence.connect(Path(sys.argv[1]))
views.install(con)
server = query_server.QueryServer(con, sys.argv[2], q.Limits(30.0, 2_000_000),
                                  before_query=views.before_query, db_label=sys.argv[1])
server.start()
print("ready", flush=True)
sys.stdin.read()
server.stop()
con.close()
"""


def record(con, source: ReplaySource, run_id: str, strategy=None) -> None:
    """Record ``source`` as the ingestor does: every tick, the 1-minute candles (the last one
    flushed at the end), and the signals ``strategy`` emits on the closed candles."""
    persistence.start_run(con, run_id, "replay", str(source.path))
    writer = persistence.BatchWriter(con, run_id, "replay")
    builder = CandleBuilder("1m")

    def closed(candles):
        for c in candles:
            writer.add_candle(c)
            if strategy is not None:
                strategy.on_candle(c)

    for tick in source.ticks():
        writer.add_tick(tick)
        closed(builder.update(tick))
    closed(builder.flush())
    writer.close()


@pytest.fixture(scope="module")
def recorded(tmp_path_factory, shared_data):
    path = tmp_path_factory.mktemp("history") / "market.duckdb"
    con = persistence.connect(path)
    views.install(con)
    signals: list[Signal] = []
    strategy = IBBreakout("ib_breakout_nifty", [KEY], {}, signals.append)
    record(con, ReplaySource(MONTH, dates=DAYS), "run-index", strategy)
    record(con, ReplaySource(FUT_FILE), "run-fut")
    assert signals, "the strategy should have signalled on these days (2022-06-09 broke its IB)"
    trail = audit.AuditRecorder(con, "", "", "replay", "run-index")    # not started: no bus
    for s in signals:
        trail.add(m.encode(m.signal_topic(s.strategy), s), s.ts)
    trail.flush()
    con.close()
    settings = dataclasses.replace(settings_mod.load(), duckdb_path=path,
                                   query_endpoint=f"tcp://127.0.0.1:{free_port()}")
    proc = subprocess.Popen([sys.executable, "-c", SERVE, str(path), settings.query_endpoint, str(ROOT)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready", "the query service did not start"
        yield Recorded(path, settings, signals)
    finally:
        proc.stdin.close()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclasses.dataclass
class Api:
    port: int
    service: history.HistoryService

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws/history"


@pytest.fixture(scope="module")
def api(recorded):
    """The history routes on a real uvicorn server (as api/server.py installs them), plus
    ``/loop-gap``: the longest the event loop went without running a 1 ms ticker since the last
    ``?reset=true`` (how long anything, e.g. a replay, held the loop)."""
    app = FastAPI()
    service = history.install(app, recorded.settings)
    gap = {"max_s": 0.0, "task": None}

    async def ticker() -> None:
        loop = asyncio.get_running_loop()
        while True:
            t = loop.time()
            await asyncio.sleep(0.001)
            gap["max_s"] = max(gap["max_s"], loop.time() - t - 0.001)

    @app.get("/loop-gap")
    async def loop_gap(reset: bool = False) -> dict:
        if gap["task"] is None:
            gap["task"] = asyncio.create_task(ticker())
        if reset:
            gap["max_s"] = 0.0
        return {"max_s": gap["max_s"]}

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None,
                                           lifespan="off", ws="websockets-sansio"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield Api(port, service)
    finally:
        server.should_exit = True
        thread.join(5)


def frames_until(ws, done, timeout: float = 60.0) -> list[tuple[float, dict]]:
    """Receive ``(monotonic time, message)`` pairs until ``done(message)`` or fail after ``timeout``."""
    out = []
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        assert left > 0, f"timed out; last frames: {[f[1].get('type') for f in out[-5:]]}"
        msg = json.loads(ws.recv(timeout=left))
        out.append((time.monotonic(), msg))
        if done(msg):
            return out


def play(api: Api, date: str, key: str, speed: int = 0) -> list[dict]:
    with connect(api.ws, open_timeout=5) as ws:
        ws.send(json.dumps({"type": "history", "date": date, "instrument_key": key, "speed": speed}))
        msgs = [m for _, m in frames_until(ws, lambda m: m["type"] in ("history_end", "history_error"))]
    assert msgs[-1]["type"] == "history_end", msgs[-1]
    return msgs


def streamed_candles(msgs: list[dict]) -> list[dict]:
    return [c for m in msgs if m["type"] == "history_batch" for c in m["candles"] if c["final"]]


def last_profile(msgs: list[dict], key: str) -> dict:
    return [m["profiles"][key] for m in msgs if m["type"] == "history_batch" and key in m["profiles"]][-1]


def day_bounds(date: str) -> tuple[int, int]:
    return history.ist_day_bounds(date)


def db_candles(recorded: Recorded, key: str, date: str) -> list[tuple]:
    lo, hi = day_bounds(date)
    return recorded.sql("SELECT ts, open, high, low, close, volume, oi, ticks FROM candles_1m "
                        "WHERE instrument_key = ? AND ts >= ? AND ts < ? ORDER BY ts", [key, lo, hi]).rows()


def db_ticks(recorded: Recorded, key: str, date: str) -> pl.DataFrame:
    lo, hi = day_bounds(date)
    return recorded.sql("SELECT ts, ltp AS price, ltq AS qty FROM ticks WHERE instrument_key = ? AND ts >= ? "
                        "AND ts < ? ORDER BY ts, seq", [key, lo, hi])


# --- GET /api/history/days ----------------------------------------------------------------------


def test_days_list_every_recorded_day_with_its_instruments_and_tick_counts(api, recorded):
    r = httpx.get(f"http://127.0.0.1:{api.port}/api/history/days", timeout=30)
    assert r.status_code == 200, r.text
    body = r.json()
    assert [d["date"] for d in body["days"]] == [FUT_DAY, DAYS[1], DAYS[0]]     # newest first
    got = {(d["date"], i["instrument_key"]): (i["source"], i["ticks"], i["signals"])
           for d in body["days"] for i in d["instruments"]}
    expected = {(day, KEY): ("replay", len(ReplaySource(MONTH, dates=[day])),
                             sum(1 for s in recorded.signals if history.ist_day_bounds(day)[0] <= s.ts
                                 < history.ist_day_bounds(day)[1]))
                for day in DAYS}
    expected[(FUT_DAY, FUT)] = ("replay", len(ReplaySource(FUT_FILE)), 0)
    assert got == expected
    assert body["truncated"] is False
    day = next(d for d in body["days"] if d["date"] == DAY)
    lo, hi = history.ist_day_bounds(DAY)
    inst = day["instruments"][0]
    assert lo <= inst["first_ts"] <= inst["last_ts"] < hi


def test_without_a_query_service_the_days_are_a_clear_error_and_the_file_is_not_opened(recorded, tmp_path):
    dead = dataclasses.replace(recorded.settings, query_endpoint=f"tcp://127.0.0.1:{free_port()}")
    started = time.monotonic()
    with pytest.raises(q.QueryUnavailable, match="no query service on tcp://127.0.0.1:"):
        asyncio.run(history.HistoryService(dead).days())
    assert time.monotonic() - started < 5


# --- replaying a day -----------------------------------------------------------------------------


def test_a_day_flat_out_streams_the_recorded_candles_the_engine_profile_and_the_signals(api, recorded):
    msgs = play(api, DAY, KEY, speed=0)
    start, end = msgs[0], msgs[-1]
    assert start["type"] == "history_start" and start["source"] == "replay"
    total = len(ReplaySource(MONTH, dates=[DAY]))
    assert start["ticks"] == total and end["ticks"] == total

    # Candles: exactly the candles_1m rows the recording wrote for that day, in order.
    streamed = streamed_candles(msgs)
    rows = db_candles(recorded, KEY, DAY)
    assert len(rows) > 370
    assert [(c["ts"], c["open"], c["high"], c["low"], c["close"], c["volume"], c["oi"], c["ticks"])
            for c in streamed] == rows
    assert end["candles"] == len(rows)

    # Profile: the engine's levels equal the batch path's on the same ticks; the prior day comes
    # from the day before, as a live engine fed both days would have it.
    profiles = compute_profiles(db_ticks(recorded, KEY, DAY), instrument_key=KEY)
    [expected] = profiles
    shown = last_profile(msgs, KEY)
    assert (shown["poc"], shown["vah"], shown["val"]) == (expected.poc, expected.vah, expected.val)
    assert (shown["ib_high"], shown["ib_low"]) == (expected.ib_high, expected.ib_low)
    [prior_day] = compute_profiles(db_ticks(recorded, KEY, DAYS[0]), instrument_key=KEY)
    assert start["prior"]["date"] == DAYS[0]
    assert (shown["prior_poc"], shown["prior_vah"], shown["prior_val"]) == \
        (prior_day.poc, prior_day.vah, prior_day.val)

    # Signals: the day's recorded ones, each in the first frame whose market clock reached it.
    lo, hi = day_bounds(DAY)
    want = [s for s in recorded.signals if lo <= s.ts < hi]
    got = [(m["market_ts"], s) for m in msgs if m["type"] == "history_batch" for s in m["signals"]]
    assert [(s["strategy"], s["ts"], s["side"], s["entry"]) for _, s in got] == \
        [(s.strategy, s.ts, s.side, s.entry) for s in want]
    assert all(s["ts"] <= market_ts for market_ts, s in got)
    assert end["signals"] == len(want) == start["signals"]


def test_a_tick_day_in_small_windows_gives_the_recorded_candles_and_volume_profile(api, recorded, monkeypatch):
    # Small windows: the day is read in many time windows; nothing is lost or doubled at their edges.
    monkeypatch.setattr(history, "CHUNK_ROWS", 1_500)
    monkeypatch.setattr(history, "MAX_WINDOW_ROWS", 6_000)
    msgs = play(api, FUT_DAY, FUT, speed=0)
    rows = db_candles(recorded, FUT, FUT_DAY)
    assert [(c["ts"], c["open"], c["high"], c["low"], c["close"], c["volume"], c["oi"], c["ticks"])
            for c in streamed_candles(msgs)] == rows
    ticks = db_ticks(recorded, FUT, FUT_DAY)
    assert msgs[-1]["ticks"] == ticks.height == len(ReplaySource(FUT_FILE))
    [expected] = compute_profiles(ticks, instrument_key=FUT)
    shown = last_profile(msgs, FUT)
    assert expected.volume_source != "tpo"        # a future: real traded volume
    assert (shown["poc"], shown["vah"], shown["val"], shown["vpoc"], shown["vvah"], shown["vval"]) == \
        (expected.poc, expected.vah, expected.val, expected.volume_poc, expected.volume_vah, expected.volume_val)
    assert shown["volume"] == expected.volume.tolist()
    assert shown["prior_poc"] is None             # nothing recorded before that day
    # batched like the live stream: many frames, each the last tick of its window
    batches = [m for m in msgs if m["type"] == "history_batch"]
    assert all(len(m["ticks"]) <= 1 for m in batches)
    assert [m["done"] for m in batches] == sorted(m["done"] for m in batches)


def test_tick_windows_partition_the_day_and_stay_bounded(recorded, monkeypatch):
    monkeypatch.setattr(history, "CHUNK_ROWS", 1_000)
    monkeypatch.setattr(history, "MAX_WINDOW_ROWS", 4_000)
    lo, hi = day_bounds(FUT_DAY)
    expect = recorded.sql("SELECT ts, seq FROM ticks WHERE instrument_key = ? AND ts >= ? AND ts < ? "
                          "ORDER BY ts, seq", [FUT, lo, hi]).rows()

    async def read_all():
        fetch = history.service_fetch(recorded.settings)
        windows = history.TickWindows(fetch, FUT, "replay", expect[0][0], expect[-1][0], len(expect))
        parts = []
        while not windows.done:
            parts.append(await windows.next())
        return parts

    parts = asyncio.run(read_all())
    assert len(parts) >= 10
    assert max(len(p["ts"]) for p in parts) <= 4_000
    got = [(int(t), int(s)) for p in parts for t, s in zip(p["ts"], p["seq"])]
    assert got == expect


def frames_for(ws, seconds: float) -> list[tuple[float, dict]]:
    """Every frame received during the next ``seconds``."""
    out = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        try:
            msg = json.loads(ws.recv(timeout=left))
        except TimeoutError:
            break
        out.append((time.monotonic(), msg))
    return out


def test_speed_pause_and_speed_change_pace_the_market_clock(api, recorded):
    with connect(api.ws, open_timeout=5) as ws:
        ws.send(json.dumps({"type": "history", "date": DAY, "instrument_key": KEY, "speed": 300}))
        fast = frames_for(ws, 4.0)
        ws.send(json.dumps({"type": "history_pause"}))
        frames_until(ws, lambda m: m["type"] == "history_state" and m["state"] == "paused")
        during_pause = frames_for(ws, 1.2)
        ws.send(json.dumps({"type": "history_speed", "speed": 60}))
        ws.send(json.dumps({"type": "history_resume"}))
        slow = frames_for(ws, 2.5)

    def rate(frames):
        pts = [(t, m["market_ts"]) for t, m in frames if m["type"] == "history_batch" and m["market_ts"]]
        assert len(pts) > 8
        (ta, ma), (tb, mb) = pts[1], pts[-1]
        return (mb - ma) / 1000 / (tb - ta)

    assert 150 < rate(fast) < 450, rate(fast)         # 300x, generously
    assert 25 < rate(slow) < 100, rate(slow)          # 60x
    # paused: at most the one frame that was pending when the pause arrived, then silence
    assert len([m for _, m in during_pause if m["type"] == "history_batch"]) <= 1, during_pause
    # nothing is shown before its time: closed minutes and signals are behind the clock
    for _, m in fast + slow:
        if m["type"] == "history_batch":
            assert all(c["ts"] + 60_000 <= m["market_ts"] for c in m["candles"] if c["final"])
            assert all(s["ts"] <= m["market_ts"] for s in m["signals"])
    assert any(c["final"] for _, m in fast if m["type"] == "history_batch" for c in m["candles"])


def test_reading_duckdb_never_holds_the_event_loop(recorded):
    # A query that keeps DuckDB busy for a good half second (16,687 x 16,687 tick pairs): the
    # event loop the fetch is awaited on keeps running a 1 ms ticker meanwhile.
    heavy = "SELECT sum(a.ltp * b.ltp) AS x FROM ticks a, ticks b WHERE a.instrument_key = ? AND b.instrument_key = ?"

    async def measure() -> tuple[float, float]:
        fetch = history.service_fetch(recorded.settings)
        loop = asyncio.get_running_loop()
        held = [0.0]

        async def ticker() -> None:
            while True:
                t = loop.time()
                await asyncio.sleep(0.001)
                held[0] = max(held[0], loop.time() - t - 0.001)

        task = asyncio.create_task(ticker())
        await asyncio.sleep(0.05)
        held[0] = 0.0
        t0 = loop.time()
        await fetch(heavy, [FUT, FUT], 10)
        took = loop.time() - t0
        task.cancel()
        return took, held[0]

    took, held = asyncio.run(measure())
    assert took > 0.2, took               # the query really took a while ...
    assert held < took / 4, (held, took)  # ... and the loop was not held for it


def test_a_flat_out_replay_keeps_the_event_loop_responsive(api, monkeypatch):
    # The day is processed in slices of SLICE_TICKS with the loop free in between, and fetched
    # in windows: the longest the loop is held stays far below what a user would notice.
    monkeypatch.setattr(history, "CHUNK_ROWS", 4_000)
    url = f"http://127.0.0.1:{api.port}/loop-gap"
    httpx.get(url)
    time.sleep(0.1)
    httpx.get(url, params={"reset": "true"})
    msgs = play(api, FUT_DAY, FUT, speed=0)
    held = httpx.get(url).json()["max_s"]
    assert msgs[-1]["ticks"] > 16_000
    assert held < 0.2, held


# --- sessions: one per connection, cancelled on disconnect, bounded -------------------------------


def wait_for(pred, timeout: float = 10.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_closing_the_socket_cancels_the_replay(api):
    svc = api.service
    cancelled = svc.cancelled
    with connect(api.ws, open_timeout=5) as ws:
        ws.send(json.dumps({"type": "history", "date": DAY, "instrument_key": KEY, "speed": 1}))
        frames_until(ws, lambda m: m["type"] == "history_start")
        assert len(svc.sessions) == 1
    wait_for(lambda: not svc.sessions and svc.cancelled == cancelled + 1, what="the session to be cancelled")


def test_history_stop_cancels_the_replay_and_the_socket_stays_usable(api):
    svc = api.service
    cancelled = svc.cancelled
    with connect(api.ws, open_timeout=5) as ws:
        ws.send(json.dumps({"type": "history", "date": DAY, "instrument_key": KEY, "speed": 1}))
        started = frames_until(ws, lambda m: m["type"] == "history_start")[-1][1]
        ws.send(json.dumps({"type": "history_stop"}))
        stopped = frames_until(ws, lambda m: m["type"] == "history_state")[-1][1]
        assert (stopped["state"], stopped["sid"]) == ("stopped", started["sid"])
        assert not svc.sessions and svc.cancelled == cancelled + 1
        ws.send(json.dumps({"type": "history_stop"}))            # nothing running: still fine
        assert frames_until(ws, lambda m: m["type"] in ("history_state", "history_error"))[-1][1] == \
            {"type": "history_state", "sid": None, "state": "stopped", "speed": None}
        ws.send(json.dumps({"type": "history", "date": DAYS[0], "instrument_key": KEY, "speed": 0}))
        assert frames_until(ws, lambda m: m["type"] in ("history_end", "history_error"))[-1][1]["type"] == "history_end"


def test_one_session_per_connection_a_new_start_replaces_the_old(api, recorded):
    svc = api.service
    cancelled = svc.cancelled
    with connect(api.ws, open_timeout=5) as ws:
        ws.send(json.dumps({"type": "history", "date": DAY, "instrument_key": KEY, "speed": 1}))
        first = frames_until(ws, lambda m: m["type"] == "history_start")[-1][1]
        ws.send(json.dumps({"type": "history", "date": DAYS[0], "instrument_key": KEY, "speed": 0}))
        msgs = [m for _, m in frames_until(ws, lambda m: m["type"] == "history_end")]
    wait_for(lambda: not svc.sessions, what="sessions to end")
    assert svc.cancelled == cancelled + 1
    second = next(m for m in msgs if m["type"] == "history_start")
    assert second["sid"] != first["sid"] and second["date"] == DAYS[0]
    after = msgs[msgs.index(second):]
    assert {m.get("sid") for m in after} == {second["sid"]}
    assert len(streamed_candles(after)) == len(db_candles(recorded, KEY, DAYS[0]))


def test_bad_requests_get_one_line_errors_and_the_connection_stays_usable(api):
    with connect(api.ws, open_timeout=5) as ws:
        def ask(payload) -> str:
            ws.send(payload if isinstance(payload, str) else json.dumps(payload))
            msg = frames_until(ws, lambda m: m["type"] in ("history_error", "history_start"))[-1][1]
            assert msg["type"] == "history_error", msg
            assert "\n" not in msg["error"]
            return msg["error"]

        assert "date must be YYYY-MM-DD" in ask({"type": "history", "date": "09-06-2022", "instrument_key": KEY, "speed": 0})
        assert "speed must be one of 0, 1, 10, 60, 300" in ask({"type": "history", "date": DAY, "instrument_key": KEY, "speed": 7})
        assert "instrument_key" in ask({"type": "history", "date": DAY, "speed": 0})
        assert "no ticks recorded for NSE_INDEX|Nifty Bank on 2022-06-09" in ask(
            {"type": "history", "date": DAY, "instrument_key": "NSE_INDEX|Nifty Bank", "speed": 0})
        assert "no replay running" in ask({"type": "history_pause"})
        assert "unknown message type" in ask({"type": "hello"})
        assert "JSON objects" in ask("not json")
        ws.send(json.dumps({"type": "history", "date": DAY, "instrument_key": KEY, "speed": 0}))
        assert frames_until(ws, lambda m: m["type"] in ("history_end", "history_error"))[-1][1]["type"] == "history_end"


def test_the_number_of_concurrent_replays_is_bounded(api):
    svc = api.service
    svc.max_sessions = 1
    try:
        with connect(api.ws, open_timeout=5) as a, connect(api.ws, open_timeout=5) as b:
            a.send(json.dumps({"type": "history", "date": DAY, "instrument_key": KEY, "speed": 1}))
            frames_until(a, lambda m: m["type"] == "history_start")
            b.send(json.dumps({"type": "history", "date": DAY, "instrument_key": KEY, "speed": 1}))
            msg = frames_until(b, lambda m: m["type"] in ("history_error", "history_start"))[-1][1]
            assert msg["type"] == "history_error" and "1 replays are already running" in msg["error"]
    finally:
        svc.max_sessions = history.MAX_SESSIONS
    wait_for(lambda: not svc.sessions, what="sessions to end")


# --- pure parts ----------------------------------------------------------------------------------


def test_market_clock_runs_at_its_speed_pauses_and_rebases():
    c = history.MarketClock(1_000_000, 60, now_s=10.0)
    assert c.at(11.0) == 1_060_000
    c.pause(c.at(11.0), 11.0)
    assert c.at(50.0) == 1_060_000
    c.resume(50.0)
    assert c.at(50.5) == 1_090_000
    c.set_speed(0, c.at(50.5), 50.5)
    assert c.at(51.0) == float("inf")
    c.set_speed(10, 2_000_000, 60.0)
    assert c.at(61.0) == 2_010_000


def test_requests_are_validated():
    assert history.parse_request({"date": DAY, "instrument_key": KEY, "speed": 60}) == \
        history.Request(DAY, KEY, 60, None)
    with pytest.raises(history.HistoryError, match="source must be one of"):
        history.parse_request({"date": DAY, "instrument_key": KEY, "speed": 0, "source": "x"})
    with pytest.raises(history.HistoryError, match="date must be"):
        history.parse_request({"date": "2022-02-30", "instrument_key": KEY, "speed": 0})
    with pytest.raises(history.HistoryError, match="speed"):
        history.parse_request({"date": DAY, "instrument_key": KEY, "speed": True})
    assert history.ist_day_bounds("2022-06-09") == (1654713000000, 1654799400000)   # 00:00 IST = 18:30 UTC
