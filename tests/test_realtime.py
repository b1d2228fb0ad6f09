"""REALTIME_PRIORITY: the tick path (bus, ingestor feed process, strategy processes) runs under
SCHED_FIFO when asked and permitted; the recorder, the API and execution never do; without the
right it is one line and a normal run. Setting a real-time policy needs root or CAP_SYS_NICE:
the parts that need it are skipped elsewhere."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from tests.system_harness import ROOT, System
from tests.test_system import write_strategies
from trading_core import settings as settings_mod

PRIVILEGED = os.geteuid() == 0
needs_root = pytest.mark.skipif(not PRIVILEGED, reason="SCHED_FIFO needs root or CAP_SYS_NICE")
needs_setpriv = pytest.mark.skipif(not shutil.which("setpriv"), reason="util-linux's setpriv drops the capability")

PROBE = """
import logging, os, sys, threading
sys.path.insert(0, {root!r})
from scripts import service
logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
applied = service.use_realtime_priority(int(sys.argv[1]), logging.getLogger("probe"))
seen = {{}}
t = threading.Thread(target=lambda: seen.update(thread=os.sched_getscheduler(0)))
t.start(); t.join()
print("applied", applied, os.sched_getscheduler(0) == os.SCHED_FIFO, seen["thread"] == os.SCHED_FIFO,
      os.sched_getparam(0).sched_priority)
service.use_normal_priority()
print("after", os.sched_getscheduler(0) == os.SCHED_OTHER)
"""


def probe(priority: int, prefix: tuple[str, ...] = ()) -> list[str]:
    out = subprocess.run([*prefix, sys.executable, "-c", PROBE.format(root=str(ROOT)), str(priority)],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return out.stdout.splitlines()


def test_priority_zero_changes_nothing():
    assert probe(0) == ["applied False False False 0", "after True"]


@needs_root
def test_the_process_and_the_threads_it_starts_run_fifo_until_reset():
    lines = probe(7)
    assert lines[0] == "running under SCHED_FIFO priority 7 (REALTIME_PRIORITY)"
    assert lines[1:] == ["applied True True True 7", "after True"]


@needs_root
@needs_setpriv
def test_without_the_right_it_is_one_line_and_a_normal_run():
    without_cap = ("setpriv", "--bounding-set", "-sys_nice", "--inh-caps", "-sys_nice")   # root, no CAP_SYS_NICE
    lines = probe(7, without_cap)
    assert len(lines) == 3, lines
    assert lines[0].startswith("REALTIME_PRIORITY=7 not applied (") and "CAP_SYS_NICE" in lines[0]
    assert lines[1:] == ["applied False False False 0", "after True"]


@pytest.mark.parametrize("value", ["-1", "99", "high"])
def test_a_bad_priority_is_refused_naming_the_setting(value, monkeypatch):
    monkeypatch.setenv("AMT_REALTIME_PRIORITY", value)
    with pytest.raises(ValueError, match=r"REALTIME_PRIORITY must be 0 \(off\) or a SCHED_FIFO priority 1-98"):
        settings_mod.load()
    monkeypatch.setenv("AMT_REALTIME_PRIORITY", "12")
    assert settings_mod.load().realtime_priority == 12


@needs_root
def test_run_py_puts_only_the_tick_path_under_fifo(tmp_path):
    strategies = write_strategies(tmp_path / "strategies.json", [("ib_nifty", "NSE_INDEX|Nifty 50")])
    system = System(tmp_path, "--speed", "1", "--feed", "sim", strategies=strategies,
                    env={"AMT_REALTIME_PRIORITY": "9"})
    try:
        def pids(h):
            s = h.get("strategy_manager", {}).get("details", {}).get("strategies", {})
            ing = h.get("ingestor", {})
            if (len(s) == 1 and ing.get("status") == "running" and ing["details"].get("recorder", {}).get("pid")
                    and all(h.get(n, {}).get("pid") for n in ("api", "execution", "strategy_manager"))):
                return {"strategy": s["ib_nifty"]["pid"], "ingestor": ing["pid"],
                        "recorder": ing["details"]["recorder"]["pid"],
                        **{n: h[n]["pid"] for n in ("api", "execution", "strategy_manager")}}
            return None

        got = system.wait(pids, 60, "every service running")
        import psutil
        bus = [p.pid for p in psutil.Process(system.proc.pid).children()
               if any("scripts/bus.py" in a for a in p.cmdline())]
        assert len(bus) == 1
        got["bus"] = bus[0]
        policy = {name: os.sched_getscheduler(pid) for name, pid in got.items()}
        fifo = {name for name, p in policy.items() if p == os.SCHED_FIFO}
        assert fifo == {"bus", "ingestor", "strategy"}, policy
        assert os.sched_getparam(got["strategy"]).sched_priority == 9
        assert os.getpriority(os.PRIO_PROCESS, got["recorder"]) == 10      # the recorder's nice
        system.terminate(timeout=20)
    finally:
        system.close()
