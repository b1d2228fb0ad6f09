"""Supervision of child OS processes: start, watch, restart with backoff, stop without orphans.

Used by ``run.py`` (the services) and ``scripts/strategy_manager.py`` (one process per
strategy). Restart policy: the n-th consecutive restart waits ``min(base * 2**(n-1), cap)``
seconds (0.5 s, 1 s, 2 s … capped at 30 s); a child that stayed up for ``stable_s`` resets
the count; more than ``max_restarts`` deaths within ``window_s`` is a crash loop and the
supervisor gives up on that child. A child that exits with ``EXIT_CONFIG`` (2) reported
a configuration error and is never restarted.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections import deque
from dataclasses import dataclass, field

import psutil

EXIT_CONFIG = 2


@dataclass
class RestartPolicy:
    """Exponential backoff with a cap and a crash-loop limit (times in seconds)."""

    base_s: float = 0.5
    cap_s: float = 30.0
    stable_s: float = 60.0
    max_restarts: int = 5
    window_s: float = 120.0

    def delay(self, consecutive: int) -> float:
        """Wait before the ``consecutive``-th restart (1-based)."""
        return min(self.base_s * 2 ** max(consecutive - 1, 0), self.cap_s)


@dataclass
class Child:
    """One supervised process. ``argv`` is the full command; ``env`` its environment."""

    name: str
    argv: list[str]
    env: dict[str, str] | None = None
    policy: RestartPolicy = field(default_factory=RestartPolicy)
    proc: subprocess.Popen | None = None
    started_at: float = 0.0
    restarts: int = 0
    consecutive: int = 0
    deaths: deque = field(default_factory=deque)
    restart_at: float | None = None
    gave_up: bool = False
    last_exit: int | None = None
    _ps: psutil.Process | None = field(default=None, repr=False)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        """Start the process in its own process group (Ctrl-C reaches only the supervisor,
        which stops children in order)."""
        self.proc = subprocess.Popen(self.argv, env=self.env, process_group=0)
        self.started_at = time.monotonic()
        self.restart_at = None

    def check(self, now: float | None = None) -> str | None:
        """Poll the child. Returns an event: ``"exited"`` (restart scheduled), ``"config_error"``,
        ``"crash_loop"`` (given up), ``"restarted"``, or None."""
        now = time.monotonic() if now is None else now
        if self.gave_up:
            return None
        if self.restart_at is not None:
            if now >= self.restart_at:
                self.restarts += 1
                self.start()
                return "restarted"
            return None
        if self.proc is None or self.proc.poll() is None:
            return None
        self.last_exit = self.proc.returncode
        if self.last_exit == EXIT_CONFIG:
            self.gave_up = True
            return "config_error"
        if now - self.started_at >= self.policy.stable_s:
            self.consecutive = 0
        self.deaths.append(now)
        while self.deaths and now - self.deaths[0] > self.policy.window_s:
            self.deaths.popleft()
        if len(self.deaths) > self.policy.max_restarts:
            self.gave_up = True
            return "crash_loop"
        self.consecutive += 1
        self.restart_at = now + self.policy.delay(self.consecutive)
        return "exited"

    def restart_now(self, timeout_s: float = 3.0) -> None:
        """Stop (if running) and start again at once, e.g. on a user's request."""
        self.stop(timeout_s)
        self.restarts += 1
        self.gave_up = False
        self.start()

    def stop(self, timeout_s: float = 3.0) -> int | None:
        """SIGTERM, wait up to ``timeout_s``, then SIGKILL the child and any descendants left."""
        if self.proc is None:
            return None
        self.restart_at = None
        descendants = _descendants(self.proc.pid)
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(2)
        kill_all(descendants, timeout_s=1.0)
        self.last_exit = self.proc.returncode
        return self.last_exit

    def stats(self) -> dict:
        """pid, alive, restarts, uptime (s), CPU %, RSS (bytes) of the child, for health reports."""
        info = {"pid": self.pid, "alive": self.alive(), "restarts": self.restarts,
                "uptime_s": round(time.monotonic() - self.started_at, 1) if self.alive() else 0,
                "gave_up": self.gave_up, "last_exit": self.last_exit}
        if self.alive():
            try:
                # One psutil.Process per child process: cpu_percent measures since the last call
                # on the same object, so a fresh object would always report 0 %.
                if self._ps is None or self._ps.pid != self.proc.pid:
                    self._ps = psutil.Process(self.proc.pid)
                    self._ps.cpu_percent(None)
                p = self._ps
                with p.oneshot():
                    info["cpu_percent"] = p.cpu_percent(None)
                    info["rss_bytes"] = p.memory_info().rss
            except psutil.Error:
                pass
        return info


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def kill_all(procs: list[psutil.Process], timeout_s: float = 1.0) -> None:
    """SIGTERM ``procs``, then SIGKILL whatever is still alive after ``timeout_s``."""
    for p in procs:
        try:
            p.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(procs, timeout=timeout_s)
    for p in alive:
        try:
            p.kill()
        except psutil.Error:
            pass
    if alive:
        psutil.wait_procs(alive, timeout=1.0)


def python_cmd(script: str, *args: str) -> list[str]:
    """``[sys.executable, script, *args]`` with the interpreter that runs us."""
    import sys
    return [sys.executable, script, *args]


def child_env(extra: dict[str, str]) -> dict[str, str]:
    """A copy of our environment plus ``extra`` (unbuffered output so lines appear at once)."""
    env = dict(os.environ)
    env.update(extra)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def stop_all(children: list[Child], timeout_s: float = 2.0) -> None:
    """Stop several children at once: SIGTERM to all, one shared wait, then SIGKILL stragglers
    and every descendant left behind."""
    descendants = [d for c in children if c.alive() for d in _descendants(c.proc.pid)]
    for c in children:
        c.restart_at = None
        if c.alive():
            try:
                c.proc.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + timeout_s
    for c in children:
        if c.proc is None:
            continue
        try:
            c.proc.wait(max(deadline - time.monotonic(), 0.01))
        except subprocess.TimeoutExpired:
            c.proc.kill()
            c.proc.wait(2)
        c.last_exit = c.proc.returncode
    kill_all([d for d in descendants if d.is_running()], timeout_s=0.5)
