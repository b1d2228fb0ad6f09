"""How each service asks Linux to schedule it: the tick and order path first, recording last.

On a machine with few cores a tick waits whenever both cores are busy with something else when
it arrives. Linux's fair scheduler (EEVDF, 6.6+) lets a task that has just started running keep
its core for a whole slice (about 1.4 ms here) before a task that wakes up may take it, and
with ``PREEMPT_NONE`` kernels and 250 Hz ticks that is what a waking strategy waits behind (traced
with ``perf sched``: benchmarks/RESULTS.md, 2026-12-06). Three requests, made once at start-up,
before the process starts threads (threads inherit them):

- :func:`use_latency_slice` (``LATENCY_SLICE_US``, default 100 us, no privilege needed): the
  bus, the ingestor's feed process, every strategy process and execution ask for a short slice
  (``sched_setattr``'s ``sched_runtime`` for ``SCHED_OTHER``, Linux 6.12+). A waking task with a
  shorter slice than the running one preempts it when it is owed CPU time ("sched/eevdf: Allow
  shorter slices to wakeup-preempt", Linux 6.12), so a tick need not wait out the API's or the
  recorder's slice. Their share of the CPU is unchanged: only when they get it.
- :func:`use_realtime_priority` (``REALTIME_PRIORITY``, off by default, needs root or
  ``CAP_SYS_NICE``): the bus, the feed and the strategies under ``SCHED_FIFO``.
- :func:`use_background_priority`: the recorder (DuckDB writes, the audit trail, research SQL)
  runs at nice 10 with the kernel's default slice, so a tick-path process that wakes can
  preempt it. When it falls behind, the pipe from the feed fills and holds the feed back (nothing is
  lost). ``SCHED_IDLE`` was measured too and not adopted: no gain over the short slice, and an
  unprivileged process cannot leave it, so another program's busy loop would starve the
  recorder and through its pipe hold back a live feed.

The ``use_*`` functions never raise: what they cannot do they say in one log line.
"""

from __future__ import annotations

import ctypes
import os
import platform

# (sched_setattr, sched_getattr) syscall numbers; Python's os module has neither.
_SYSCALLS = {"x86_64": (314, 315), "aarch64": (274, 275), "arm64": (274, 275), "riscv64": (274, 275)}
BACKGROUND_NICE = 10
"""The recorder's nice value (benchmarks/RESULTS.md, 2026-12-03: at 80,000 ticks/s asked, the
feed reached 71,339/s with the recorder at nice 10 against 62,039/s at 0)."""


class _SchedAttr(ctypes.Structure):
    """``struct sched_attr``, SCHED_ATTR_SIZE_VER0 (48 bytes): enough for ``sched_runtime``."""

    _fields_ = [("size", ctypes.c_uint32), ("sched_policy", ctypes.c_uint32),
                ("sched_flags", ctypes.c_uint64), ("sched_nice", ctypes.c_int32),
                ("sched_priority", ctypes.c_uint32), ("sched_runtime", ctypes.c_uint64),
                ("sched_deadline", ctypes.c_uint64), ("sched_period", ctypes.c_uint64)]


def _syscalls() -> tuple[object, int, int] | None:
    numbers = _SYSCALLS.get(platform.machine().lower())
    if numbers is None or not hasattr(os, "SCHED_OTHER"):
        return None
    return ctypes.CDLL(None, use_errno=True).syscall, *numbers


def _set_fair(calls, tid: int, policy: int, nice: int, runtime_ns: int) -> None:
    """``sched_setattr`` of thread ``tid`` (0: the calling thread) to a fair ``policy`` at
    ``nice`` with slice ``runtime_ns`` (0: the kernel's default). Raises ``OSError``."""
    syscall, set_number, _ = calls
    attr = _SchedAttr(size=ctypes.sizeof(_SchedAttr), sched_policy=policy, sched_nice=nice,
                      sched_runtime=runtime_ns)
    if syscall(set_number, tid, ctypes.byref(attr), 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def slice_ns(tid: int = 0) -> int | None:
    """The scheduler slice of thread ``tid`` (0: the calling thread) in nanoseconds: the one it
    asked for, else the kernel's default (about 1.4 ms on 2 cores); 0 under a policy without a
    slice, or on a kernel before 6.12 (no per-task slice); None where ``sched_getattr`` is
    unavailable. Raises ``OSError`` for a thread that does not exist."""
    calls = _syscalls()
    if calls is None:
        return None
    syscall, _, get_number = calls
    attr = _SchedAttr()
    if syscall(get_number, tid, ctypes.byref(attr), ctypes.sizeof(attr), 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return int(attr.sched_runtime) if attr.sched_policy in (os.SCHED_OTHER, os.SCHED_BATCH) else 0


def use_latency_slice(slice_us: int, log) -> bool:
    """Ask for a scheduler slice of ``slice_us`` microseconds (``LATENCY_SLICE_US``, 100-100,000)
    for this thread and the threads it starts from now on, keeping its nice value; 0 does
    nothing. Returns True when the kernel took it (Linux 6.12+); otherwise logs one line (an
    older kernel ignores the request; a platform without ``sched_setattr``; a real-time policy
    already set) and returns False."""
    if slice_us <= 0:
        return False
    calls = _syscalls()
    if calls is None:
        log.info("LATENCY_SLICE_US=%d not applied: no sched_setattr on %s", slice_us, platform.machine())
        return False
    policy = os.sched_getscheduler(0)
    if policy not in (os.SCHED_OTHER, os.SCHED_BATCH):
        return False                              # REALTIME_PRIORITY took precedence
    try:
        _set_fair(calls, 0, policy, os.getpriority(os.PRIO_PROCESS, 0), slice_us * 1000)
    except OSError as exc:
        log.warning("LATENCY_SLICE_US=%d not applied: sched_setattr failed (%s)", slice_us, exc.strerror)
        return False
    if slice_ns() != slice_us * 1000:
        log.info("LATENCY_SLICE_US=%d not applied: Linux %s has no per-task slice (6.12+); running "
                 "with the kernel's default", slice_us, platform.release())
        return False
    log.info("scheduler slice %d us (LATENCY_SLICE_US): on waking, this process may preempt work "
             "with a longer slice", slice_us)
    return True


def use_realtime_priority(priority: int, log) -> bool:
    """Run this process (and every thread it starts from now on) under ``SCHED_FIFO`` at
    ``priority`` (``REALTIME_PRIORITY``, 1-98; 0 does nothing and returns False). Call it before
    the process creates threads (a ZeroMQ context, polars): threads inherit the policy of the
    thread that starts them. Without the right (root or ``CAP_SYS_NICE``) or where Linux's
    scheduler calls are missing, logs one line and returns False: the process runs on at normal
    priority. See ``REALTIME_PRIORITY`` in config.example.py for why and the cost."""
    if priority <= 0:
        return False
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))
    except (AttributeError, OSError) as exc:      # PermissionError without the right
        log.warning("REALTIME_PRIORITY=%d not applied (%s): needs root or CAP_SYS_NICE; running at "
                    "normal priority", priority, getattr(exc, "strerror", None) or exc)
        return False
    log.info("running under SCHED_FIFO priority %d (REALTIME_PRIORITY)", priority)
    return True


def use_tick_path_priority(settings, log) -> str:
    """What the bus, the ingestor's feed process and each strategy process call first:
    ``SCHED_FIFO`` when ``settings.realtime_priority`` is set and permitted, else the short slice
    of ``settings.latency_slice_us``. Returns ``"realtime"``, ``"slice"`` or ``"default"``."""
    if use_realtime_priority(settings.realtime_priority, log):
        return "realtime"
    return "slice" if use_latency_slice(settings.latency_slice_us, log) else "default"


def use_background_priority(log) -> bool:
    """Run every thread of this process, and those it starts later, as background work:
    ``SCHED_OTHER`` at nice :data:`BACKGROUND_NICE` with the kernel's default slice, dropping a
    real-time policy or a short slice inherited from the parent (the recorder is the feed
    process's child). Raising nice needs no privilege. Returns True when every thread was set;
    otherwise logs one line and returns False."""
    calls = _syscalls()
    try:
        for tid in _threads():
            try:
                if calls is not None:
                    _set_fair(calls, tid, os.SCHED_OTHER, BACKGROUND_NICE, 0)
                else:
                    if hasattr(os, "SCHED_OTHER") and os.sched_getscheduler(tid) != os.SCHED_OTHER:
                        os.sched_setscheduler(tid, os.SCHED_OTHER, os.sched_param(0))
                    os.setpriority(os.PRIO_PROCESS, tid, BACKGROUND_NICE)
            except ProcessLookupError:
                pass                              # a thread that has just ended
    except OSError as exc:
        log.warning("background priority not applied (%s); running at the parent's priority",
                    exc.strerror or exc)
        return False
    return True


def _threads() -> list[int]:
    try:
        return sorted(int(t) for t in os.listdir("/proc/self/task"))
    except OSError:                               # not Linux: this thread only
        return [0]
