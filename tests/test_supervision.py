"""Restart policy of supervised processes: backoff, crash-loop limit, config errors, no orphans."""

from __future__ import annotations

import logging
import sys
import time

import psutil

from trading_core import logs
from trading_core.supervision import Child, RestartPolicy, stop_all


def test_backoff_doubles_and_is_capped():
    policy = RestartPolicy(base_s=0.5, cap_s=30.0)
    assert [policy.delay(n) for n in range(1, 9)] == [0.5, 1, 2, 4, 8, 16, 30, 30]


def run_until(child: Child, events: set[str], timeout: float = 10.0) -> list[str]:
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        event = child.check()
        if event:
            seen.append(event)
            if event in events:
                return seen
        time.sleep(0.01)
    raise AssertionError(f"no {events} within {timeout} s; saw {seen}")


def test_a_crashing_child_is_restarted_then_given_up_on():
    policy = RestartPolicy(base_s=0.02, cap_s=0.1, max_restarts=3, window_s=60)
    child = Child("crasher", [sys.executable, "-c", "import sys; sys.exit(1)"], policy=policy)
    child.start()
    seen = run_until(child, {"crash_loop"})
    assert seen == ["exited", "restarted"] * 3 + ["crash_loop"]
    assert child.restarts == 3 and child.gave_up and child.last_exit == 1


def test_a_configuration_error_is_never_restarted():
    child = Child("bad-config", [sys.executable, "-c", "import sys; sys.exit(2)"])
    child.start()
    assert run_until(child, {"config_error"}) == ["config_error"]
    time.sleep(0.2)
    assert child.check() is None and child.restarts == 0


def test_stop_all_kills_grandchildren_too():
    code = ("import subprocess, sys, time; "
            "subprocess.Popen([sys.executable, '-c', 'import time, signal; "
            "signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)']); time.sleep(60)")
    child = Child("parent", [sys.executable, "-c", code])
    child.start()
    deadline = time.monotonic() + 5
    while not psutil.Process(child.pid).children() and time.monotonic() < deadline:
        time.sleep(0.05)
    grandchild = psutil.Process(child.pid).children()[0]
    started = time.monotonic()
    stop_all([child], timeout_s=1.0)
    assert time.monotonic() - started < 4
    assert not child.alive()

    def gone() -> bool:
        try:
            return not grandchild.is_running() or grandchild.status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    deadline = time.monotonic() + 2
    while not gone() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert gone(), "the grandchild that ignores SIGTERM survived"


def test_the_access_token_is_masked_in_every_log_line(tmp_path, capsys):
    token = "eyJ0eXAiOiJKV1QiLCJrZXlfaWQiOiJza192MS4wIn0.secret-part"
    log = logs.setup("unit", tmp_path, [token])
    log.info("connecting with token %s", token)
    log.warning(f"authorize failed for Bearer {token}")
    logging.getLogger().handlers[1].flush()
    text = (tmp_path / "unit.log").read_text() + capsys.readouterr().err
    assert token not in text and text.count("***") == 4


def test_stats_report_real_cpu_of_a_busy_child():
    child = Child("busy", [sys.executable, "-c", "while True: pass"])
    child.start()
    try:
        child.stats()
        time.sleep(1.0)
        info = child.stats()
        assert info["alive"] and info["cpu_percent"] > 20, info
        assert info["rss_bytes"] > 1_000_000
    finally:
        stop_all([child], timeout_s=1.0)
