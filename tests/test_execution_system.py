"""The whole desk (``run.py``) on replayed real days: every signal ends rejected with a reason or
as a closed position with its PnL, on the bus, in DuckDB and in the browser's blotter; the day
rebuilt from the audit trail equals the live message stream; the kill switch from the command
line and from the browser; and an execution service killed mid-trade recovers its position."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import duckdb
import httpx

from tests.conftest import INDEX_1MIN
from tests.execution_days import NIFTY, day_ticks, replay_day
from tests.system_harness import ROOT, System, free_port
from trading_core import messages as m
from trading_core.bus import BusClient
from trading_core.risk import signal_id

TRADING = ("signal.", "risk.", "order.", "fill.", "position.")


class Tape:
    """A bus subscriber recording every trading message (topic, message) in arrival order."""

    def __init__(self, pub: str, sub: str):
        self.pub, self.sub = pub, sub
        self.got: list[tuple[str, m.Message]] = []
        self.ready = threading.Event()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        assert self.ready.wait(30), "the test's bus subscriber did not get through"

    def _run(self) -> None:
        bus = BusClient(self.pub, self.sub, TRADING)
        try:
            bus.wait_ready(30)
            self.ready.set()
            while not self.stop.is_set():
                got = bus.recv(100)
                if got is not None:
                    self.got.append(got)
        finally:
            bus.close()

    def of(self, cls) -> list:
        return [msg for _, msg in list(self.got) if isinstance(msg, cls)]

    def resolved(self) -> bool:
        """Every signal has a decision, and every approved one a closed position (or a cancelled entry)."""
        signals = self.of(m.Signal)
        decided = {d.signal_id: d for d in self.of(m.RiskDecision)}
        closed = {p.position_id for p in self.of(m.Position) if p.status == "closed"}
        cancelled = {o.signal_id for o in self.of(m.Order) if o.kind == "entry" and o.status in ("cancelled", "rejected")}
        return bool(signals) and all(
            signal_id(s) in decided and (not decided[signal_id(s)].approved or signal_id(s) in closed
                                         or signal_id(s) in cancelled) for s in signals)


def replay_folder(tmp_path: Path, *names: str) -> Path:
    folder = tmp_path / "replay"
    folder.mkdir()
    for n in names:
        (folder / n).symlink_to(INDEX_1MIN / n)
    return folder


def start(tmp_path: Path, folder: Path, day: str, speed: str, config: str) -> tuple[System, Tape, str, str]:
    pub, sub = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    cfg = tmp_path / "config_test.py"
    cfg.write_text(config)
    system = System(tmp_path, "--replay", str(folder), "--date", day, "--speed", speed, "--bus-pub", pub,
                    "--bus-sub", sub, "--config", str(cfg), "--query-endpoint", f"tcp://127.0.0.1:{free_port()}")
    return system, Tape(pub, sub), pub, sub


def wait_until(system: System, cond, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert system.proc.poll() is None, f"run.py exited early:\n{system.output()[-4000:]}"
        value = cond()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}\n{system.output()[-5000:]}")


def test_replayed_day_every_signal_resolved_on_bus_duckdb_and_browser(tmp_path):
    day = "2021-06-22"          # 4 breakouts: two trades stopped out, two rejected by the intraday lock
    names = ("2021_JUNE_NIFTY.txt", "2021_JUNE_BNF.txt")
    folder = replay_folder(tmp_path, *names)
    expected = replay_day(day_ticks(sorted(INDEX_1MIN / n for n in names), day))   # the pure pipeline
    system, tape, pub, sub = start(tmp_path, folder, day, "0", "MAX_SIGNAL_DELAY_S = 120\n")
    base = f"http://127.0.0.1:{system.port}"
    try:
        system.wait(lambda h: h.get("ingestor", {}).get("status") == "finished", 90, "the replay to finish")
        wait_until(system, lambda: len(tape.of(m.Signal)) == len(expected.signals) and tape.resolved(), 60,
                   "every signal resolved on the bus")
        signals = tape.of(m.Signal)
        decisions = {d.signal_id: d for d in tape.of(m.RiskDecision)}
        closed = {p.position_id: p for p in tape.of(m.Position) if p.status == "closed"}
        assert len(signals) == 4 and any(d.approved for d in decisions.values())
        assert any(not d.approved and d.reason for d in decisions.values())
        # at full speed the running system trades exactly as the pure pipeline on the same ticks
        assert {sid: (d.approved, d.rule, d.quantity) for sid, d in decisions.items()} == \
            {sid: (d.approved, d.rule, d.quantity) for sid, d in expected.decisions().items()}
        assert {pid: (p.exit_reason, p.exit_ts, p.exit_price, p.realised_pnl) for pid, p in closed.items()} == \
            {pid: (p.exit_reason, p.exit_ts, p.exit_price, p.realised_pnl) for pid, p in expected.closed().items()}

        # the browser's blotter says the same
        def blotter():
            snap = httpx.get(f"{base}/api/execution", timeout=5).json()
            return snap if len(snap["rows"]) == len(signals) and all(
                r["status"] in ("rejected", "closed") for r in snap["rows"]) else None
        snap = wait_until(system, blotter, 20, "the blotter to show every outcome")
        for row in snap["rows"]:
            d = decisions[row["signal_id"]]
            assert row["decision"]["approved"] == d.approved and row["decision"]["reason"] == d.reason
            if d.approved:
                assert row["status"] == "closed"
                assert row["position"]["realised_pnl"] == closed[row["signal_id"]].realised_pnl
            else:
                assert row["status"] == "rejected" and row["decision"]["rule"]
        assert snap["totals"]["realised"] == round(sum(p.realised_pnl for p in closed.values()), 2)
        # a restarted API reads the day back from the audit trail
        api_pid = system.health()["api"]["pid"]
        os.kill(api_pid, signal.SIGKILL)
        system.wait(lambda h: h.get("api", {}).get("pid") not in (None, api_pid), 60, "the API to come back")
        again = wait_until(system, blotter, 60, "the restarted API's blotter to be read back")
        assert [(r["signal_id"], r["status"], (r["position"] or {}).get("realised_pnl")) for r in again["rows"]] \
            == [(r["signal_id"], r["status"], (r["position"] or {}).get("realised_pnl")) for r in snap["rows"]]
        page = httpx.get(f"{base}/", timeout=5).text
        assert 'id="kill-switch"' in page and "/blotter.js" in page
        assert httpx.get(f"{base}/blotter.js", timeout=5).status_code == 200

        # kill switch from the command line, release from the browser
        cli = subprocess.run([sys.executable, str(ROOT / "run.py"), "kill-switch", "--bus-pub", pub,
                              "--bus-sub", sub, "--timeout", "20"], capture_output=True, text=True,
                             timeout=60, cwd=ROOT)
        assert cli.returncode == 0 and "kill switch ENGAGED" in cli.stdout, cli.stdout + cli.stderr
        wait_until(system, lambda: httpx.get(f"{base}/api/execution", timeout=5).json()["kill_switch"] is True,
                   20, "the blotter to show the kill switch")
        assert httpx.post(f"{base}/api/kill-switch", content=b"resume=1",
                          headers={"Content-Type": "application/x-www-form-urlencoded"}).status_code == 415
        r = httpx.post(f"{base}/api/kill-switch", json={"resume": True}, timeout=5)
        assert r.status_code == 200 and r.json() == {"sent": "resume"}
        wait_until(system, lambda: httpx.get(f"{base}/api/execution", timeout=5).json()["kill_switch"] is False,
                   20, "the kill switch to be released")
        time.sleep(0.5)
        system.terminate(timeout=30)      # (the 5 s shutdown is test_system's; this machine may be busy)
        assert system.proc.returncode == 0
    finally:
        tape.stop.set()
        system.close()

    con = duckdb.connect(str(system.db), read_only=True)
    stored = [m.decode(t.encode() + b"\x00" + p.encode()) for t, p in con.execute(
        "SELECT topic, payload FROM events WHERE kind IN ('signal', 'risk', 'order', 'fill', 'position') "
        "ORDER BY seq").fetchall()]
    assert stored == tape.got, "the audit trail differs from the live stream"
    outcomes = con.execute("SELECT outcome, count(*) FROM signal_outcomes_live GROUP BY ALL").fetchall()
    assert dict(outcomes) == {"closed": len(closed), "rejected": len(signals) - len(closed)}
    assert con.execute("SELECT count(*) FROM trades").fetchone()[0] == len(closed)
    events = [r[0] for r in con.execute("SELECT event FROM service_events WHERE kind IN ('control', "
                                        "'service_event') AND service = 'execution' ORDER BY seq").fetchall()]
    # command (control) and what the service did (service_event), in order
    assert events == ["started", "recovered", "kill_switch", "kill_switch", "resume", "resumed", "stopped"]
    con.close()


def test_execution_service_killed_mid_trade_recovers_the_position(tmp_path, shared_data):
    day = "2022-06-09"          # NIFTY breaks out at 10:22 and is held to its 30-minute time exit
    names = ("2022_JUN_NIFTY.txt", "2022_JUN_BNF.txt")
    folder = replay_folder(tmp_path, *names)
    expected = replay_day(day_ticks(sorted(INDEX_1MIN / n for n in names), day))
    [nifty] = [p for p in expected.closed().values() if p.instrument_key == NIFTY]
    system, tape, _, _ = start(tmp_path, folder, day, "600", "MAX_SIGNAL_DELAY_S = 120\n")
    try:
        first_pid = system.wait(lambda h: h.get("execution", {}).get("pid"), 60, "the execution service")
        wait_until(system, lambda: any(p.position_id == nifty.position_id and p.event == "opened"
                                       for p in tape.of(m.Position)), 90, "the NIFTY position to open")
        os.kill(first_pid, signal.SIGKILL)
        system.wait(lambda h: h.get("execution", {}).get("pid") not in (None, first_pid)
                    and h["execution"].get("details", {}).get("recovered") == 1, 60,
                    "a new execution service that recovered the position")
        got = wait_until(system, lambda: [p for p in tape.of(m.Position) if p.position_id == nifty.position_id
                                          and p.status == "closed"], 60, "the recovered position to close")
        system.terminate(timeout=30)
    finally:
        tape.stop.set()
        system.close()
    closed = got[0]
    assert (closed.exit_reason, closed.exit_ts, closed.exit_price, closed.realised_pnl) == (
        nifty.exit_reason, nifty.exit_ts, nifty.exit_price, nifty.realised_pnl)
    assert "restarted execution" in (tmp_path / "run.out").read_text()
    assert any(p.event == "recovered" and p.position_id == nifty.position_id for p in tape.of(m.Position))
    con = duckdb.connect(str(system.db), read_only=True)
    row = con.execute("SELECT exit_reason, exit_price, realised_pnl FROM trades WHERE position_id = ?",
                      [nifty.position_id]).fetchone()
    assert row == (nifty.exit_reason, nifty.exit_price, nifty.realised_pnl)
    recovered = con.execute("SELECT payload FROM service_events WHERE event = 'recovered' ORDER BY seq").fetchall()
    assert [json.loads(p)["details"]["positions"] for (p,) in recovered] == [0, 1]
    con.close()
