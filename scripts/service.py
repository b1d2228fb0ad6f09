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

from trading_core import bus as bus_mod, messages as m
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


class BusRates:
    """Bus frames per second of this process, from cumulative counters, for health reports.

    ``counts``: a function returning cumulative ``(published, received)`` frames; default
    :func:`trading_core.bus.process_totals` (every :class:`BusClient` of the process, whichever
    thread owns it). :meth:`sample` returns ``{"bus_out_per_s", "bus_in_per_s"}`` (frames per
    second since the previous sample, or since construction for the first; 1 decimal) and the
    totals ``{"bus_out", "bus_in"}``. A counter that went backwards (a client garbage collected
    unclosed) gives a rate of 0, not a negative one. ``last``: the latest sample ({} before the
    first), for a report built elsewhere without taking a new sample.
    """

    def __init__(self, counts: Callable[[], tuple[int, int]] | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.counts = counts or bus_mod.process_totals
        self.clock = clock
        self._t = clock()
        self._out, self._in = self.counts()
        self.last: dict[str, float | int] = {}

    def sample(self) -> dict[str, float | int]:
        """Rates since the last call (see the class doc); cheap (a few integer reads)."""
        t = self.clock()
        out, inn = self.counts()
        dt = t - self._t
        if dt > 0:
            out_rate = max(0, out - self._out) / dt
            in_rate = max(0, inn - self._in) / dt
        else:
            out_rate = in_rate = 0.0
        self._t, self._out, self._in = t, out, inn
        self.last = {"bus_out_per_s": round(out_rate, 1), "bus_in_per_s": round(in_rate, 1),
                     "bus_out": out, "bus_in": inn}
        return self.last


class HealthReporter:
    """Publishes ``health.<service>`` at most once per ``interval_s`` when :meth:`maybe_send` is called.

    Every report's details carry ``cpu_percent``, ``rss_bytes`` (bytes) and the process's bus
    traffic from :class:`BusRates` (``bus_out_per_s``, ``bus_in_per_s``: frames per second since
    the previous report; ``bus_out``, ``bus_in``: totals). ``bus_counts``: where the traffic is
    counted, a function returning cumulative ``(published, received)`` frames; default every
    :class:`trading_core.bus.BusClient` of this process (so a service whose threads each own a
    client, like the ingestor, reports them all without passing anything).
    """

    def __init__(self, bus: BusClient, service: str, interval_s: float = 1.0,
                 bus_counts: Callable[[], tuple[int, int]] | None = None):
        self.bus = bus
        self.service = service
        self.interval_s = interval_s
        self.status = "starting"
        self._last = 0.0
        self._proc = psutil.Process()
        self._proc.cpu_percent(None)
        self.rates = BusRates(bus_counts)

    def send(self, status: str | None = None, **details: Any) -> None:
        """Publish now, with CPU %, RSS (bytes), bus rates and ``details``."""
        if status:
            self.status = status
        details.setdefault("cpu_percent", self._proc.cpu_percent(None))
        details.setdefault("rss_bytes", self._proc.memory_info().rss)
        for key, value in self.rates.sample().items():
            details.setdefault(key, value)
        self.bus.publish(m.health_topic(self.service),
                         m.Health(service=self.service, pid=os.getpid(), status=self.status,
                                  ts=now_ms(), details=details))
        self._last = time.monotonic()

    def due(self) -> bool:
        """True once ``interval_s`` has passed since the last report: check it before building
        an expensive ``details`` (a loop that wakes every 100 ms should not read ``/proc`` for
        every child each time)."""
        return time.monotonic() - self._last >= self.interval_s

    def maybe_send(self, status: str | None = None, **details: Any) -> None:
        """Publish if ``interval_s`` has passed since the last report."""
        if self.due():
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
