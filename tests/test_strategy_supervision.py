"""Strategy supervision through the whole system (``run.py``), replaying a real day (NIFTY
2022-11-09 at 1000x) with a well-behaved strategy next to three that misbehave on purpose
(:mod:`tests.test_strategy_fault_classes`):

- ``boom`` raises in ``on_tick`` at 10:00: logged with its traceback, the process exits and is
  restarted (warm start), and runs on;
- ``stuck`` never returns from ``on_candle`` at 10:30: its heartbeat stops, the manager kills it
  after its ``heartbeat_timeout_s`` (3 s) and restarts it;
- ``never`` raises in ``on_start`` every time: after more than 5 deaths in 2 minutes it is given
  up and shown as ``failed``, never as running; ``run.py restart never`` still starts it again;
- ``ib`` (IB breakout) is untouched: same process throughout, and its signals equal an
  in-process run over the recorded candles.

``python3 run.py status`` is checked on the same system.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import duckdb
import psutil

from strategy import registry
from strategy.runner import StrategyRunner
from tests.conftest import INDEX_1MIN
from tests.system_harness import ROOT, System
from trading_core import messages as m

DAY = "2022-11-09"
DAY_FILE = INDEX_1MIN / "2022_NOV_NIFTY.txt"
NIFTY = "NSE_INDEX|Nifty 50"
FAULTS = "tests.test_strategy_fault_classes"
STRATEGIES = {"strategies": [
    {"name": "ib", "class": "ib_breakout", "instruments": [NIFTY]},
    {"name": "boom", "class": f"{FAULTS}:RaiseOnTick", "instruments": [NIFTY], "params": {"at": "10:00"}},
    {"name": "stuck", "class": f"{FAULTS}:LoopOnCandle", "instruments": [NIFTY], "params": {"at": "10:30"},
     "heartbeat_timeout_s": 3},
    {"name": "never", "class": f"{FAULTS}:FailsToStart", "instruments": [NIFTY]},
]}
LIVE = ("waiting", "warming", "running")
END_MS = 1667988000000          # 2022-11-09 15:30 IST, epoch ms UTC


def strategies_of(health: dict) -> dict:
    return health.get("strategy_manager", {}).get("details", {}).get("strategies", {})


def ctl(system: System, *args: str) -> subprocess.CompletedProcess:
    cmd = list(system.proc.args)
    bus = ["--bus-pub", cmd[cmd.index("--bus-pub") + 1], "--bus-sub", cmd[cmd.index("--bus-sub") + 1]]
    return subprocess.run([sys.executable, str(ROOT / "run.py"), *args, *bus], capture_output=True,
                          text=True, timeout=60, cwd=ROOT)


def test_crash_stuck_and_crash_loop_are_contained(tmp_path):
    path = tmp_path / "strategies.json"
    path.write_text(json.dumps(STRATEGIES))
    system = System(tmp_path, "--replay", str(DAY_FILE), "--date", DAY, "--speed", "1000", strategies=path)
    snapshots: list[dict] = []

    def watch(predicate):
        def check(h):
            s = strategies_of(h)
            if s:
                snapshots.append(s)
            return predicate(s) if s else None
        return check

    try:
        first = system.wait(watch(lambda s: all(s.get(n, {}).get("state") in LIVE for n in ("ib", "boom", "stuck"))
                                  and s), 60, "ib, boom and stuck running")
        pids = {n: first[n]["pid"] for n in ("ib", "boom", "stuck")}
        system.wait(watch(lambda s: s["boom"]["pid"] != pids["boom"] and s["boom"]["state"] in LIVE),
                    60, "boom to crash and come back")
        system.wait(watch(lambda s: s["stuck"]["pid"] != pids["stuck"] and s["stuck"]["state"] in LIVE),
                    60, "stuck to be killed and come back")
        failed = system.wait(watch(lambda s: s["never"]["state"] == "failed" and s["never"]), 90,
                             "never to be given up")
        assert failed["alive"] is False and failed["gave_up"] is True

        status = ctl(system, "status")
        assert status.returncode == 0, status.stderr
        rows = {line.split()[0]: line.split() for line in status.stdout.splitlines() if line.strip()}
        for name in ("bus", "api", "strategy_manager", "ingestor", "ib", "boom", "stuck", "never"):
            assert name in rows, status.stdout
        assert rows["never"][2] == "failed" and rows["ib"][3] == str(pids["ib"]), status.stdout
        assert rows["boom"][5] == "1" and rows["stuck"][5] == "1", status.stdout    # RESTARTS

        again = ctl(system, "restart", "never")
        assert again.returncode == 0 and again.stdout.startswith("restarted never (pid "), again.stdout + again.stderr
        system.wait(watch(lambda s: s["never"]["state"] != "failed" and s["never"]["restarts"] > failed["restarts"]),
                    30, "never to be tried again")
        unknown = ctl(system, "restart", "nobody")
        assert unknown.returncode == 1 and "no strategy named 'nobody'" in unknown.stderr

        done = system.wait(watch(lambda s: s["ib"].get("market_ts", 0) >= END_MS and s), 90,
                           "ib to reach 15:30")
        time.sleep(1.0)
        assert system.terminate() < 5
    finally:
        system.close()

    # ib untouched
    assert done["ib"]["pid"] == pids["ib"] and done["ib"]["restarts"] == 0
    # a dead process is never shown as live: once replaced, the old pid never reappears
    for name in ("boom", "stuck"):
        replaced = False
        for snap in snapshots:
            replaced = replaced or snap[name]["pid"] != pids[name]
            assert not (replaced and snap[name]["pid"] == pids[name]), (name, snap[name])
        assert not psutil.pid_exists(pids[name]) or psutil.Process(pids[name]).status() == psutil.STATUS_ZOMBIE
    # the failed one was never shown live while it had no process
    assert all(s["never"]["alive"] or s["never"]["state"] not in LIVE for s in snapshots)

    logs = system.logs
    boom_log = (logs / "strategy.boom.log").read_text()
    assert "Traceback (most recent call last)" in boom_log and "deliberate failure in on_tick at 10:00" in boom_log
    assert "boom raised in handling Tick" in boom_log
    manager_log = (logs / "strategy_manager.log").read_text()
    assert "strategy stuck (pid %d) sent no heartbeat for" % pids["stuck"] in manager_log
    assert "strategy boom (pid %d) exited with code 3" % pids["boom"] in manager_log
    assert "strategy never died 6 times" in manager_log

    con = duckdb.connect(str(system.db), read_only=True)
    got = con.execute("SELECT instrument_key, side, ts, entry, stop_loss, target, reason FROM signals "
                      "WHERE strategy = 'ib' ORDER BY ts").fetchall()
    candles = [m.Candle(instrument_key=r[0], interval="1m", ts=r[1], open=r[2], high=r[3], low=r[4], close=r[5])
               for r in con.execute("SELECT instrument_key, ts, open, high, low, close FROM candles_1m "
                                    "ORDER BY ts").fetchall()]
    con.close()
    [config] = [c for c in registry.parse_strategies(json.dumps(STRATEGIES)) if c.name == "ib"]
    out: list[m.Signal] = []
    runner = StrategyRunner(lambda emit: registry.build(config, emit), out.append)
    for c in candles:
        runner.candle(c)
    assert got == [(s.instrument_key, s.side, s.ts, s.entry, s.stop_loss, s.target, s.reason) for s in out]
    assert len(got) == 1
