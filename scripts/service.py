"""What every service process shares: exit codes, signal handling, parent-death, health reports."""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time
from typing import Any, Callable

import psutil

from trading_core import messages as m
from trading_core.bus import BusClient, now_ms

# Exit code of a service that must not be restarted: its configuration is wrong
# (bad strategies.json, port in use, locked DuckDB file, invalid token...).
EXIT_CONFIG = 2

_PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """Ask Linux to send ``sig`` to this process when its parent dies, so no orphan survives a
    ``kill -9`` of the supervisor. A no-op where ``prctl`` is unavailable."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)
        if os.getppid() == 1:  # the parent died before prctl took effect
            os.kill(os.getpid(), sig)
    except OSError:
        pass


def stop_on_signals(on_stop: Callable[[], None]) -> threading.Event:
    """Call ``on_stop`` once on SIGTERM or SIGINT; return an Event set at that moment."""
    stopping = threading.Event()

    def handler(signum, frame):
        if not stopping.is_set():
            stopping.set()
            on_stop()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    return stopping


class HealthReporter:
    """Publishes ``health.<service>`` at most once per ``interval_s`` when :meth:`maybe_send` is called."""

    def __init__(self, bus: BusClient, service: str, interval_s: float = 1.0):
        self.bus = bus
        self.service = service
        self.interval_s = interval_s
        self.status = "starting"
        self._last = 0.0
        self._proc = psutil.Process()
        self._proc.cpu_percent(None)

    def send(self, status: str | None = None, **details: Any) -> None:
        """Publish now, with CPU %, RSS (bytes) and ``details``."""
        if status:
            self.status = status
        details.setdefault("cpu_percent", self._proc.cpu_percent(None))
        details.setdefault("rss_bytes", self._proc.memory_info().rss)
        self.bus.publish(m.health_topic(self.service),
                         m.Health(service=self.service, pid=os.getpid(), status=self.status,
                                  ts=now_ms(), details=details))
        self._last = time.monotonic()

    def maybe_send(self, status: str | None = None, **details: Any) -> None:
        """Publish if ``interval_s`` has passed since the last report."""
        if time.monotonic() - self._last >= self.interval_s:
            self.send(status, **details)


def fatal(log, message: str) -> "None":
    """Log one clear line and exit with :data:`EXIT_CONFIG` (the supervisor will not restart)."""
    log.error(message)
    sys.exit(EXIT_CONFIG)


def exit_now(code: int) -> None:
    """Flush the logs and end the process at once, skipping the interpreter's teardown of numpy,
    polars and DuckDB (about 0.4 s on a loaded machine): shutdown budgets are tight (run.py stops
    everything within 5 s) and nothing is left to clean up (the bus sockets are closed). What the
    closed sockets still hold (a last signal or health report) gets up to 0.5 s to leave."""
    import logging
    import threading

    import zmq
    flusher = threading.Thread(target=zmq.Context.instance().term, daemon=True)
    flusher.start()
    flusher.join(0.5)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
