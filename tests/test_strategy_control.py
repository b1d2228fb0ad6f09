"""Strategy control without a feed: a real bus proxy, ``api/server.py`` and
``scripts/strategy_manager.py`` as subprocesses (each strategy in its own process).

- the browser's REST endpoint ``POST /api/strategies/control`` restarts, disables and enables one
  strategy through the bus, never touching the other; malformed requests are refused;
- hot config: after an edit of the strategies file, a restart applies the new params to that
  strategy only; a broken file refuses the restart with one line and keeps the running process;
- ``python3 run.py restart`` (scripts/ctl.py) gets the manager's answer.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import zmq

from trading_core import messages as m
from trading_core.bus import run_proxy
from tests.system_harness import free_port

ROOT = Path(__file__).resolve().parent.parent
NIFTY, BANK = "NSE_INDEX|Nifty 50", "NSE_INDEX|Nifty Bank"
pytestmark = pytest.mark.timeout(120)


def doc(nifty_params: dict) -> dict:
    return {"strategies": [
        {"name": "ib_nifty", "class": "ib_breakout", "instruments": [NIFTY], "params": nifty_params},
        {"name": "ib_bank", "class": "ib_breakout", "instruments": [BANK]},
        {"name": "spare", "class": "open_drive", "enabled": False, "instruments": [NIFTY]},
    ]}


@pytest.fixture
def desk(tmp_path):
    pub, sub = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    ctx = zmq.Context()
    threading.Thread(target=run_proxy, args=(pub, sub, ctx), daemon=True).start()
    strategies = tmp_path / "strategies.json"
    strategies.write_text(json.dumps(doc({"ib_minutes": 60})))
    port = free_port()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("AMT_", "UPSTOX_"))},
           "AMT_BUS_PUB": pub, "AMT_BUS_SUB": sub, "AMT_API_PORT": str(port), "AMT_LOG_DIR": str(tmp_path / "logs"),
           "AMT_STRATEGIES": str(strategies), "AMT_DUCKDB_PATH": str(tmp_path / "none.duckdb"),
           "AMT_QUERY_ENDPOINT": f"tcp://127.0.0.1:{free_port()}"}
    procs = [subprocess.Popen([sys.executable, str(ROOT / script)], env=env, cwd=ROOT,
                              stdout=open(tmp_path / f"{Path(script).stem}.out", "wb"), stderr=subprocess.STDOUT)
             for script in ("api/server.py", "scripts/strategy_manager.py")]
    try:
        yield {"http": f"http://127.0.0.1:{port}", "pub": pub, "sub": sub, "file": strategies, "tmp": tmp_path}
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        ctx.term()               # the proxy thread sees ContextTerminated and closes its sockets


def wait_for(http: str, predicate, what: str, timeout: float = 40.0):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = httpx.get(f"{http}/health", timeout=2).json()["services"].get("strategy_manager")
        except (httpx.HTTPError, ValueError, KeyError):
            last = None
        value = predicate(last["details"]) if last else None
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}: {json.dumps(last, indent=1)[:3000]}")


def both_live(d):
    s = d.get("strategies", {})
    ok = all(s.get(n, {}).get("state") == "waiting" for n in ("ib_nifty", "ib_bank"))
    return {n: s[n] for n in ("ib_nifty", "ib_bank", "spare")} if ok else None


def post(http: str, body, content_type="application/json") -> httpx.Response:
    data = body if isinstance(body, (str, bytes)) else json.dumps(body)
    return httpx.post(f"{http}/api/strategies/control", content=data,
                      headers={"content-type": content_type}, timeout=5)


def test_rest_restart_disable_enable_and_hot_config(desk):
    http = desk["http"]
    s0 = wait_for(http, both_live, "both strategies waiting for data")
    assert s0["spare"]["state"] == "disabled" and s0["spare"]["pid"] is None
    assert s0["ib_nifty"]["params"]["ib_minutes"] == 60
    bank_pid = s0["ib_bank"]["pid"]

    # malformed requests change nothing
    assert post(http, {"command": "restart", "target": "ib_nifty"}, "text/plain").status_code == 415
    assert post(http, {"command": "reboot", "target": "ib_nifty"}).status_code == 400
    assert post(http, {"command": "restart", "target": "../etc"}).status_code == 400
    assert post(http, "not json").status_code == 400
    assert httpx.get(f"{http}/strategies.js", timeout=5).text.startswith("// Strategies panel")

    # hot config: edit ib_nifty's params, restart it from the browser
    desk["file"].write_text(json.dumps(doc({"ib_minutes": 30, "last_entry": "13:00"})))
    r = post(http, {"command": "restart", "target": "ib_nifty"})
    assert r.status_code == 202 and r.json()["sent"]["command"] == "restart"
    s1 = wait_for(http, lambda d: both_live(d) and d["strategies"]["ib_nifty"]["pid"] != s0["ib_nifty"]["pid"]
                  and d["strategies"]["ib_nifty"].get("params", {}).get("ib_minutes") == 30 and d,
                  "ib_nifty restarted with ib_minutes 30")
    assert s1["strategies"]["ib_nifty"]["params"]["last_entry"] == "13:00"
    assert s1["strategies"]["ib_nifty"]["restarts"] == 1
    assert s1["last_command"]["ok"] and "with the new configuration" in s1["last_command"]["message"]
    assert s1["strategies"]["ib_bank"]["pid"] == bank_pid and s1["strategies"]["ib_bank"]["restarts"] == 0

    # a broken edit: the restart is refused with one line naming the file and field; nothing stops
    desk["file"].write_text(json.dumps(doc({"ib_minutes": "thirty"})))
    reply = control(desk, "restart", "ib_nifty")
    assert not reply.ok and "strategies.json: strategy 'ib_nifty': params.ib_minutes:" in reply.message
    assert "the running process is kept" in reply.message and "\n" not in reply.message
    s2 = wait_for(http, both_live, "both still running")
    assert s2["ib_nifty"]["pid"] == s1["strategies"]["ib_nifty"]["pid"]

    # the same through `run.py restart` once the file is fixed
    desk["file"].write_text(json.dumps(doc({"ib_minutes": 45})))
    cli = subprocess.run([sys.executable, str(ROOT / "run.py"), "restart", "ib_nifty", "--bus-pub", desk["pub"],
                          "--bus-sub", desk["sub"]], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert cli.returncode == 0, cli.stderr
    assert cli.stdout.startswith(f"restarted ib_nifty with the new configuration (pid {s2['ib_nifty']['pid']} -> ")

    # disable stops the process; enable starts it again; the other is never touched
    assert post(http, {"command": "disable", "target": "ib_nifty"}).status_code == 202
    d = wait_for(http, lambda d: d["strategies"]["ib_nifty"]["state"] == "disabled" and d, "ib_nifty disabled")
    assert d["strategies"]["ib_nifty"]["alive"] is False
    assert post(http, {"command": "enable", "target": "spare"}).status_code == 202
    assert post(http, {"command": "enable", "target": "ib_nifty"}).status_code == 202
    d = wait_for(http, lambda d: all(d["strategies"][n]["state"] == "waiting" for n in ("ib_nifty", "spare", "ib_bank"))
                 and d, "ib_nifty and spare enabled")
    assert d["strategies"]["ib_bank"]["pid"] == bank_pid
    assert d["strategies"]["ib_nifty"]["params"]["ib_minutes"] == 45


def control(desk, command: str, target: str) -> m.ControlReply:
    from scripts.ctl import send_control
    reply = send_control(desk["pub"], desk["sub"], command, target, timeout_s=20)
    assert reply is not None, "no reply from the strategy manager"
    return reply


def test_enabled_false_in_the_file_wins_on_restart(desk):
    s0 = wait_for(desk["http"], both_live, "both strategies waiting for data")
    edited = doc({"ib_minutes": 60})
    edited["strategies"][1]["enabled"] = False
    desk["file"].write_text(json.dumps(edited))
    reply = control(desk, "restart", "ib_bank")
    assert reply.ok and reply.message == f"ib_bank disabled (pid {s0['ib_bank']['pid']} stopped)"
    again = control(desk, "restart", "ib_bank")
    assert not again.ok and again.message == "ib_bank is disabled; enable it first"
    d = wait_for(desk["http"], lambda d: d["strategies"]["ib_bank"]["state"] == "disabled" and d, "ib_bank disabled")
    assert d["strategies"]["ib_nifty"]["pid"] == s0["ib_nifty"]["pid"]
