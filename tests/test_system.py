"""The whole system started by ``run.py``, on real recorded NSE data: feed -> bus -> DuckDB,
strategies -> signals -> WebSocket, supervision and clean shutdown, and start-up errors."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import duckdb
from websockets.sync.client import connect

from tests.conftest import INDEX_1MIN
from trading_core.profile_batch import profile_from_duckdb
from tests.system_harness import ROOT, System, free_port

IST = timezone(timedelta(hours=5, minutes=30))
DAY_FILE = INDEX_1MIN / "2022_JUN_NIFTY.txt"
DAY = "2022-06-09"  # NIFTY broke above its initial balance in the afternoon


def source_bars(path: Path, day: str) -> dict[int, tuple[float, float, float, float]]:
    """Bars of one IST day straight from the vendor file: {open time epoch ms UTC: (O, H, L, C)}.

    The file's HH:MM labels the bar's close, so the open is one minute earlier."""
    ymd = day.replace("-", "")
    bars = {}
    for line in path.read_text().splitlines():
        sym, date, hhmm, o, h, l, c, _v, _oi = line.split(",")
        if date != ymd:
            continue
        close_time = datetime.strptime(date + hhmm, "%Y%m%d%H:%M").replace(tzinfo=IST)
        open_ms = int((close_time - timedelta(minutes=1)).timestamp() * 1000)
        bars[open_ms] = (float(o), float(h), float(l), float(c))
    return bars


def collect_ws(port: int, into: list, stop: threading.Event) -> None:
    """Keep a WebSocket client connected to /ws and store every JSON message it receives."""
    while not stop.is_set():
        try:
            with connect(f"ws://127.0.0.1:{port}/ws", open_timeout=2) as ws:
                while not stop.is_set():
                    try:
                        into.append(json.loads(ws.recv(timeout=0.5)))
                    except TimeoutError:
                        continue
        except (OSError, Exception):
            time.sleep(0.2)


def last_profile(messages: list, key: str) -> dict | None:
    found = None
    for msg in messages:
        found = (msg.get("profiles") or {}).get(key) or found
    return found


def signals_seen(messages: list) -> list:
    found = []
    for msg in messages:
        found += msg.get("signals", []) or []
        found += (msg.get("snapshot") or {}).get("signals", []) if isinstance(msg.get("snapshot"), dict) else []
    return found


def test_replay_of_a_real_day_reaches_duckdb_and_the_browser(tmp_path):
    bars = source_bars(DAY_FILE, DAY)
    assert len(bars) > 370, "a full NSE day has 375 regular minutes plus pre-open"
    system = System(tmp_path, "--replay", str(DAY_FILE), "--date", DAY, "--speed", "0")
    received: list = []
    stop = threading.Event()
    try:
        system.wait(lambda h: h.get("api"), 30, "the API server")
        client = threading.Thread(target=collect_ws, args=(system.port, received, stop), daemon=True)
        client.start()
        system.wait(lambda h: h.get("ingestor", {}).get("status") == "finished", 60, "the replay to finish")
        deadline = time.monotonic() + 15
        while not signals_seen(received) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert signals_seen(received), "no signal reached the WebSocket client"
        took = system.terminate()
        assert took < 5
        assert system.proc.returncode == 0, system.output()[-2000:]
        assert system.leftovers() == []
    finally:
        stop.set()
        system.close()

    sig = signals_seen(received)[0]
    assert sig["strategy"] == "ib_breakout_nifty" and sig["instrument_key"] == "NSE_INDEX|Nifty 50"

    con = duckdb.connect(str(system.db), read_only=True)
    n_ticks = con.execute("SELECT count(*) FROM ticks").fetchall()[0][0]
    assert n_ticks == 4 * len(bars)
    assert con.execute("SELECT count(DISTINCT seq) FROM ticks").fetchall()[0][0] == n_ticks
    rows = con.execute("SELECT ts, open, high, low, close, volume FROM candles_1m "
                       "WHERE instrument_key = 'NSE_INDEX|Nifty 50' ORDER BY ts").fetchall()
    candles = {r[0]: tuple(r[1:5]) for r in rows}
    assert candles == bars
    assert all(r[5] == 0 for r in rows), "an index has no volume"
    ist = con.execute("SELECT min(time_ist)::VARCHAR FROM candles_1m_ist").fetchall()[0][0]
    assert ist.startswith(f"{DAY} 09:0"), ist  # the pre-open call-auction bar

    # The Market Profile the browser got is the one the batch path computes from the recorded ticks.
    [batch] = profile_from_duckdb(con, "SELECT ts, ltp AS price, ltq AS qty FROM ticks ORDER BY seq",
                                  instrument_key="NSE_INDEX|Nifty 50")
    con.close()
    live = last_profile(received, "NSE_INDEX|Nifty 50")
    assert live is not None, "no profile reached the WebSocket client"
    assert (live["session"], live["poc"], live["vah"], live["val"], live["ib_high"], live["ib_low"]) == (
        DAY, batch.poc, batch.vah, batch.val, batch.ib_high, batch.ib_low)


def write_strategies(path: Path, names_keys: list[tuple[str, str]]) -> Path:
    path.write_text(json.dumps({"strategies": [
        {"name": n, "class": "ib_breakout", "enabled": True, "instruments": [k], "params": {}}
        for n, k in names_keys]}))
    return path


def test_supervision_restarts_killed_processes_and_stops_cleanly(tmp_path):
    strategies = write_strategies(tmp_path / "strategies.json",
                                  [("ib_nifty", "NSE_INDEX|Nifty 50"), ("ib_bank", "NSE_INDEX|Nifty Bank")])
    token = "test-token-must-never-leak-5f1c"
    system = System(tmp_path, "--speed", "1", "--feed", "sim", strategies=strategies,
                    env={"UPSTOX_ACCESS_TOKEN": token})
    try:
        def strategy_pids(h):
            s = h.get("strategy_manager", {}).get("details", {}).get("strategies", {})
            if h.get("strategy_manager", {}).get("status") == "ready" and len(s) == 2:
                return {n: v["pid"] for n, v in s.items()}
            return None

        pids = system.wait(strategy_pids, 40, "both strategies running")
        ingestor_pid = system.wait(lambda h: h.get("ingestor", {}).get("status") == "running"
                                   and h["ingestor"]["pid"], 30, "the simulated feed")
        bank_proc = psutil_process(pids["ib_bank"])

        os.kill(pids["ib_nifty"], signal.SIGKILL)
        killed_at = time.monotonic()
        new = system.wait(lambda h: (p := strategy_pids(h)) and p["ib_nifty"] != pids["ib_nifty"] and p,
                          10, "the killed strategy to come back")
        assert time.monotonic() - killed_at < 5
        assert new["ib_bank"] == pids["ib_bank"] and bank_proc.is_running(), "the other strategy was touched"
        assert bank_proc.create_time() == psutil_process(pids["ib_bank"]).create_time()

        os.kill(ingestor_pid, signal.SIGKILL)
        system.wait(lambda h: h.get("ingestor", {}).get("pid") not in (None, ingestor_pid)
                    and h["ingestor"]["status"] == "running", 20, "the ingestor to be restarted")
        assert "ingestor (pid" in system.output() and "restarted ingestor" in system.output()

        # The ingestor's recorder process (DuckDB): its death takes the ingestor down, and the
        # supervisor restarts the pair.
        def pair(h):
            ing = h.get("ingestor", {})
            return ing.get("status") == "running" and (ing["pid"], ing["details"]["recorder"]["pid"])

        ingestor_pid, recorder_pid = system.wait(pair, 10, "a recorder")
        os.kill(recorder_pid, signal.SIGKILL)
        system.wait(lambda h: (p := pair(h)) and p[0] != ingestor_pid and p[1] not in (None, recorder_pid),
                    20, "the ingestor and its recorder restarted")
        ingestor_log = (system.logs / "ingestor.log").read_text()
        assert f"recorder process (pid {recorder_pid})" in ingestor_log, ingestor_log[-2000:]

        import httpx
        page_data = httpx.get(f"http://127.0.0.1:{system.port}/api/snapshot").text + json.dumps(system.health())
        assert token not in page_data

        took = system.terminate()
        assert took < 5
        assert system.leftovers() == [], "orphan processes after SIGTERM"
    finally:
        system.close()
    con = duckdb.connect(str(system.db), read_only=True)
    assert con.execute("SELECT count(*) FROM ticks WHERE source = 'sim'").fetchall()[0][0] > 0
    con.close()
    for f in [*system.logs.iterdir(), system.db, tmp_path / "run.out"]:
        assert token.encode() not in f.read_bytes(), f"the access token leaked into {f.name}"


def psutil_process(pid: int):
    import psutil
    return psutil.Process(pid)


def run_briefly(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(ROOT / "run.py"), "--db", str(tmp_path / "m.duckdb"),
           "--query-endpoint", f"tcp://127.0.0.1:{free_port()}",
           "--log-dir", str(tmp_path / "logs"), "--bus-pub", f"tcp://127.0.0.1:{free_port()}",
           "--bus-sub", f"tcp://127.0.0.1:{free_port()}", *args]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AMT_", "UPSTOX_"))}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30, cwd=ROOT, env=env)


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: ")
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert "started" not in result.stdout, "a service was started"


def test_bad_strategies_file_is_one_clear_line(tmp_path):
    bad = tmp_path / "strategies.json"
    bad.write_text(json.dumps({"strategies": [{"name": "ib_x", "class": "ib_breakout", "enabled": True,
                                               "instruments": ["NSE_INDEX|Nifty 50"],
                                               "params": {"ib_minutes": "sixty"}}]}))
    result = run_briefly(tmp_path, "--port", str(free_port()), "--strategies", str(bad))
    assert_one_line_error(result, "strategies.json", "ib_x", "ib_minutes")


def test_port_in_use_is_one_clear_line(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        result = run_briefly(tmp_path, "--port", str(port))
    assert_one_line_error(result, f"port {port}", "in use")


def test_locked_duckdb_file_is_one_clear_line(tmp_path):
    db = tmp_path / "m.duckdb"
    holder = subprocess.Popen([sys.executable, "-c",
                               f"import duckdb, time; c = duckdb.connect({str(db)!r}); print('ok', flush=True); "
                               "time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ok"
        result = run_briefly(tmp_path, "--port", str(free_port()))
    finally:
        holder.kill()
        holder.wait()
    assert_one_line_error(result, "m.duckdb", "locked", str(holder.pid))


def test_help_documents_every_option():
    out = subprocess.run([sys.executable, str(ROOT / "run.py"), "--help"], capture_output=True, text=True,
                         timeout=30).stdout
    for option in ("--replay", "--date", "--speed", "--feed", "--config", "--db", "--host", "--port",
                   "--bus-pub", "--bus-sub", "--strategies", "--log-dir"):
        assert option in out
