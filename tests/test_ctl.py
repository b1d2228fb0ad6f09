"""``python3 run.py status`` / ``restart`` (scripts/ctl.py): the tables built from health
reports, and clear one-line errors when no desk is running. (Both commands against a running
desk are exercised in tests/test_strategy_supervision.py and tests/test_strategy_control.py.)"""

from __future__ import annotations

import subprocess
import sys
import threading

import zmq

from scripts.ctl import collect_health, status_rows, table
from tests.conftest import ROOT
from tests.system_harness import free_port
from trading_core import messages as m
from trading_core.bus import BusClient, run_proxy


def health(service: str, status: str, pid: int, **details) -> m.Health:
    return m.Health(service=service, pid=pid, status=status, ts=0, details=details)


def test_status_rows_from_health_reports():
    reports = {
        "supervisor": health("supervisor", "running", 10, services={
            "bus": {"pid": 11, "alive": True, "restarts": 0, "uptime_s": 75.2, "gave_up": False},
            "api": {"pid": 12, "alive": True, "restarts": 1, "uptime_s": 3700.0, "gave_up": False},
            "strategy_manager": {"pid": 13, "alive": True, "restarts": 0, "uptime_s": 75.0},
            "ingestor": {"pid": 14, "alive": False, "restarts": 2, "uptime_s": 0, "gave_up": True}}),
        "api": health("api", "ready", 12, cpu_percent=2.5, rss_bytes=56_000_000),
        "strategy_manager": health("strategy_manager", "ready", 13, market_date="2022-06-09", strategies={
            "ib_nifty": {"cls": "ib_breakout", "state": "running", "pid": 21, "alive": True, "uptime_s": 70,
                         "restarts": 0, "cpu_percent": 0.4, "rss_bytes": 120_000_000, "signals_today": 2},
            "boom": {"cls": "rule", "state": "failed", "pid": 22, "alive": False, "uptime_s": 0,
                     "restarts": 6, "signals_today": 0}},
            last_command={"command": "restart", "target": "boom", "ok": True, "message": "restarted boom"}),
    }
    services, strategies, details = status_rows(reports)
    assert services == [
        ["bus", "alive", 11, "1m15s", 0, "-", "-"],
        ["api", "ready", 12, "1h01m", 1, "2.5", "56 MB"],
        ["strategy_manager", "ready", 13, "1m15s", 0, "-", "-"],
        ["ingestor", "failed", 14, "-", 2, "-", "-"]]
    assert strategies == [
        ["boom", "rule", "failed", None, "-", 6, "-", "-", 0],
        ["ib_nifty", "ib_breakout", "running", 21, "1m10s", 0, "0.4", "120 MB", 2]]
    assert details["market_date"] == "2022-06-09"
    text = table(["STRATEGY", "CLASS", "STATE", "PID", "UPTIME", "RESTARTS", "CPU%", "RSS", "SIGNALS TODAY"], strategies)
    lines = text.splitlines()
    assert lines[0].split() == ["STRATEGY", "CLASS", "STATE", "PID", "UPTIME", "RESTARTS", "CPU%", "RSS", "SIGNALS", "TODAY"]
    assert lines[1].split() == ["boom", "rule", "failed", "-", "-", "6", "-", "-", "0"]
    # columns are aligned: every row's state starts under the STATE header
    assert [line[lines[0].index("STATE"):].split()[0] for line in lines[1:]] == ["failed", "running"]


def test_collect_health_listens_on_the_bus():
    pub, sub = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    ctx = zmq.Context()
    threading.Thread(target=run_proxy, args=(pub, sub, ctx), daemon=True).start()
    stop = threading.Event()

    def reporter():
        bus = BusClient(pub, sub, context=ctx)
        while not stop.wait(0.1):
            for svc in ("supervisor", "strategy_manager", "api"):
                bus.publish(m.health_topic(svc), health(svc, "ready", 1))
        bus.pub.close(0)
        bus.sub.close(0)

    t = threading.Thread(target=reporter, daemon=True)
    t.start()
    try:
        got = collect_health(pub, sub, timeout_s=10)
    finally:
        stop.set()
        t.join()
        ctx.term()
    assert {"supervisor", "strategy_manager", "api"} <= set(got)


def run_py(*args: str) -> subprocess.CompletedProcess:
    bus = ["--bus-pub", f"tcp://127.0.0.1:{free_port()}", "--bus-sub", f"tcp://127.0.0.1:{free_port()}"]
    return subprocess.run([sys.executable, str(ROOT / "run.py"), *args, *bus], capture_output=True, text=True,
                          timeout=60, cwd=ROOT)


def test_no_running_desk_is_one_clear_line():
    r = run_py("status", "--timeout", "1")
    assert r.returncode == 1 and r.stdout == ""
    [line] = r.stderr.splitlines()
    assert line.startswith("error: no running desk answered on tcp://127.0.0.1:") and "run.py" in line
    r = run_py("restart", "ib_breakout_nifty", "--timeout", "1")
    assert r.returncode == 1 and r.stdout == ""
    [line] = r.stderr.splitlines()
    assert line.startswith("error: no answer from the strategy manager on tcp://127.0.0.1:")


def test_usage_errors():
    r = subprocess.run([sys.executable, str(ROOT / "run.py"), "restart"], capture_output=True, text=True,
                       timeout=60, cwd=ROOT)
    assert r.returncode == 2 and "STRATEGY" in r.stderr
    r = subprocess.run([sys.executable, str(ROOT / "run.py"), "status", "--help"], capture_output=True,
                       text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 0 and "--bus-sub" in r.stdout and "--json" in r.stdout
