"""How the services are scheduled (scripts/scheduling.py): the tick and order path ask for a short
scheduler slice (LATENCY_SLICE_US, no privilege needed, Linux 6.12+), or run under SCHED_FIFO
when REALTIME_PRIORITY is set and permitted; the recorder runs at nice 10; the API, the
strategy manager and the supervisor keep the defaults. Without a right or a kernel feature it is
one line and a normal run. Setting a real-time policy needs root or CAP_SYS_NICE: the parts that
need it are skipped elsewhere."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys

import psutil
import pytest

from scripts import scheduling
from tests.system_harness import ROOT, System
from tests.test_system import write_strategies
from trading_core import settings as settings_mod

PRIVILEGED = os.geteuid() == 0
needs_root = pytest.mark.skipif(not PRIVILEGED, reason="SCHED_FIFO needs root or CAP_SYS_NICE")
needs_setpriv = pytest.mark.skipif(not shutil.which("setpriv"), reason="util-linux's setpriv drops the capability")
WITHOUT_CAP_SYS_NICE = ("setpriv", "--bounding-set", "-sys_nice", "--inh-caps", "-sys_nice")

PROBE = """
import logging, os, subprocess, sys, threading
sys.path.insert(0, {root!r})
from scripts import scheduling
logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
log = logging.getLogger("probe")
{body}
"""

RT_BODY = """
applied = scheduling.use_realtime_priority(int(sys.argv[1]), log)
seen = {}
t = threading.Thread(target=lambda: seen.update(thread=os.sched_getscheduler(0)))
t.start(); t.join()
print("applied", applied, os.sched_getscheduler(0) == os.SCHED_FIFO, seen["thread"] == os.SCHED_FIFO,
      os.sched_getparam(0).sched_priority)
scheduling.use_background_priority(log)
print("after", os.sched_getscheduler(0) == os.SCHED_OTHER, os.getpriority(os.PRIO_PROCESS, 0))
"""

SLICE_BODY = """
applied = scheduling.use_latency_slice(int(sys.argv[1]), log)
seen = {}
t = threading.Thread(target=lambda: seen.update(thread=scheduling.slice_ns()))
t.start(); t.join()
child = subprocess.run([sys.executable, "-c", "import sys; sys.path.insert(0, %r); "
                        "from scripts import scheduling; print(scheduling.slice_ns())" % sys.path[0]],
                       capture_output=True, text=True).stdout.strip()
print("applied", applied, scheduling.slice_ns(), seen["thread"], child, os.getpriority(os.PRIO_PROCESS, 0))
"""

BACKGROUND_BODY = """
scheduling.use_latency_slice(200, log)                  # inherited from the feed process, as the recorder is
started, stop = threading.Event(), threading.Event()
t = threading.Thread(target=lambda: (started.set(), stop.wait()), daemon=True); t.start(); started.wait()
applied = scheduling.use_background_priority(log)
tids = [int(tid) for tid in os.listdir("/proc/self/task")]
each = sorted({(os.sched_getscheduler(tid), os.getpriority(os.PRIO_PROCESS, tid), scheduling.slice_ns(tid))
               for tid in tids})
later = {}
t2 = threading.Thread(target=lambda: later.update(nice=os.getpriority(os.PRIO_PROCESS, 0),
                                                   slice=scheduling.slice_ns()))
t2.start(); t2.join()
stop.set()
print("applied", applied, len(tids), each, later)
"""


def probe(body: str, arg: int = 0, prefix: tuple[str, ...] = ()) -> list[str]:
    out = subprocess.run([*prefix, sys.executable, "-c", PROBE.format(root=str(ROOT), body=body), str(arg)],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return out.stdout.splitlines()


def kernel_has_slices() -> bool:
    """Linux 6.12+ keeps a per-task slice (``sched_attr.sched_runtime`` for SCHED_OTHER)."""
    lines = probe("print(scheduling.use_latency_slice(300, log))")
    return lines[-1] == "True"


needs_slices = pytest.mark.skipif(not kernel_has_slices(), reason="the kernel has no per-task slice (Linux 6.12+)")


# --- REALTIME_PRIORITY -----------------------------------------------------------------------------
def test_priority_zero_changes_nothing():
    assert probe(RT_BODY, 0) == ["applied False False False 0", "after True 10"]


@needs_root
def test_the_process_and_the_threads_it_starts_run_fifo_until_reset():
    lines = probe(RT_BODY, 7)
    assert lines[0] == "running under SCHED_FIFO priority 7 (REALTIME_PRIORITY)"
    assert lines[1] == "applied True True True 7"
    assert lines[-1] == "after True 10"                  # the recorder leaves FIFO for nice 10


@needs_root
@needs_setpriv
def test_without_the_right_it_is_one_line_and_a_normal_run():
    lines = probe(RT_BODY, 7, WITHOUT_CAP_SYS_NICE)       # root, no CAP_SYS_NICE
    assert lines[0].startswith("REALTIME_PRIORITY=7 not applied (") and "CAP_SYS_NICE" in lines[0]
    assert lines[1] == "applied False False False 0"


@pytest.mark.parametrize("value", ["-1", "99", "high"])
def test_a_bad_priority_is_refused_naming_the_setting(value, monkeypatch):
    monkeypatch.setenv("AMT_REALTIME_PRIORITY", value)
    with pytest.raises(ValueError, match=r"REALTIME_PRIORITY must be 0 \(off\) or a SCHED_FIFO priority 1-98"):
        settings_mod.load()
    monkeypatch.setenv("AMT_REALTIME_PRIORITY", "12")
    assert settings_mod.load().realtime_priority == 12


# --- LATENCY_SLICE_US ------------------------------------------------------------------------------
@needs_slices
def test_the_slice_is_kept_by_threads_and_children_and_leaves_nice_alone():
    lines = probe(SLICE_BODY, 250, ("nice", "-n", "5"))
    assert lines[0] == ("scheduler slice 250 us (LATENCY_SLICE_US): on waking, this process may preempt "
                        "work with a longer slice")
    assert lines[1] == "applied True 250000 250000 250000 5"


def test_zero_keeps_the_slice_it_had():
    assert probe(SLICE_BODY, 0) == [f"applied False {scheduling.slice_ns()} {scheduling.slice_ns()} "
                                    f"{scheduling.slice_ns()} 0"]


def test_on_a_kernel_without_slices_it_is_one_line():
    lines = probe("scheduling.slice_ns = lambda tid=0: 0          # what Linux before 6.12 reads back\n"
                  "scheduling.platform.release = lambda: '6.6.0'\n"
                  "print(scheduling.use_latency_slice(100, log))")
    assert lines == ["LATENCY_SLICE_US=100 not applied: Linux 6.6.0 has no per-task slice (6.12+); running "
                     "with the kernel's default", "False"]


@needs_setpriv
@needs_root
@needs_slices
def test_the_slice_needs_no_privilege():
    assert probe(SLICE_BODY, 100, WITHOUT_CAP_SYS_NICE)[1] == "applied True 100000 100000 100000 0"


@pytest.mark.parametrize("value", ["50", "100001", "-100", "fast"])
def test_a_bad_slice_is_refused_naming_the_setting(value, monkeypatch):
    monkeypatch.setenv("AMT_LATENCY_SLICE_US", value)
    with pytest.raises(ValueError, match=r"LATENCY_SLICE_US must be 0 \(the kernel's default\) or 100-100000"):
        settings_mod.load()
    for ok in ("0", "100", "2000"):
        monkeypatch.setenv("AMT_LATENCY_SLICE_US", ok)
        assert settings_mod.load().latency_slice_us == int(ok)


# --- the recorder: background priority -------------------------------------------------------------
@needs_slices
def test_background_priority_covers_every_thread_and_drops_an_inherited_slice():
    default = scheduling.slice_ns()                       # this test's own: the kernel's default
    line = probe(BACKGROUND_BODY)[-1]
    assert line == (f"applied True 2 [({os.SCHED_OTHER}, 10, {default})] "
                    f"{{'nice': 10, 'slice': {default}}}"), line


# --- the whole system ------------------------------------------------------------------------------
@contextlib.contextmanager
def running_system(tmp_path, env: dict[str, str]):
    """``run.py`` on the simulator with one strategy, under ``env``; yields the pid of every
    service (``bus``, ``api``, ``strategy_manager``, ``execution``, ``strategy``, ``ingestor``,
    ``recorder``, ``supervisor``) once all run, and stops it cleanly afterwards."""
    strategies = write_strategies(tmp_path / "strategies.json", [("ib_nifty", "NSE_INDEX|Nifty 50")])
    system = System(tmp_path, "--speed", "1", "--feed", "sim", strategies=strategies, env=env)

    def pids(h):
        s = h.get("strategy_manager", {}).get("details", {}).get("strategies", {})
        ing = h.get("ingestor", {})
        if (len(s) == 1 and ing.get("status") == "running" and ing["details"].get("recorder", {}).get("pid")
                and all(h.get(n, {}).get("pid") for n in ("api", "execution", "strategy_manager"))):
            return {"strategy": s["ib_nifty"]["pid"], "ingestor": ing["pid"],
                    "recorder": ing["details"]["recorder"]["pid"],
                    **{n: h[n]["pid"] for n in ("api", "execution", "strategy_manager")}}
        return None

    try:
        got = system.wait(pids, 60, "every service running")
        bus = [p.pid for p in psutil.Process(system.proc.pid).children()
               if any("scripts/bus.py" in a for a in p.cmdline())]
        assert len(bus) == 1
        yield {**got, "bus": bus[0], "supervisor": system.proc.pid}
        system.terminate(timeout=20)
    finally:
        system.close()


@needs_slices
def test_run_py_gives_the_short_slice_to_the_tick_and_order_path_only(tmp_path):
    with running_system(tmp_path, {"AMT_LATENCY_SLICE_US": "400"}) as got:
        slices = {name: scheduling.slice_ns(pid) for name, pid in got.items()}
        assert {name for name, ns in slices.items() if ns == 400_000} == \
            {"bus", "ingestor", "strategy", "execution"}, slices
        default = scheduling.slice_ns()                   # this test's own: the kernel's default
        assert {slices[n] for n in ("api", "strategy_manager", "supervisor")} == {default}, slices
        recorder = psutil.Process(got["recorder"])
        assert {(os.sched_getscheduler(t.id), os.getpriority(os.PRIO_PROCESS, t.id), scheduling.slice_ns(t.id))
                for t in recorder.threads()} == {(os.SCHED_OTHER, 10, default)}


@needs_root
def test_run_py_puts_only_the_tick_path_under_fifo(tmp_path):
    with running_system(tmp_path, {"AMT_REALTIME_PRIORITY": "9"}) as got:
        policy = {name: os.sched_getscheduler(pid) for name, pid in got.items()}
        fifo = {name for name, p in policy.items() if p == os.SCHED_FIFO}
        assert fifo == {"bus", "ingestor", "strategy"}, policy
        assert os.sched_getparam(got["strategy"]).sched_priority == 9
        assert policy["recorder"] == os.SCHED_OTHER
        assert os.getpriority(os.PRIO_PROCESS, got["recorder"]) == 10
