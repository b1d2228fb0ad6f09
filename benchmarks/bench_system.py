"""The whole ``run.py`` system end to end: zero-loss rate, latency, memory and a real day at full speed.

    python3 benchmarks/bench_system.py                  # about 6 minutes on 2 cores; prints a markdown section
    python3 benchmarks/bench_system.py --append         # ... and appends it to benchmarks/RESULTS.md
    python3 benchmarks/bench_system.py --smoke          # one short run (tests/test_benchmarks.py)
    python3 benchmarks/bench_system.py --bus-json bus.json   # ratio to bench_bus.py's raw limit
    python3 benchmarks/bench_system.py --only latency,day    # parts: latency, latency_rt, latency_slice0, rate, memory, day

Every run is the real system as a user starts it (``python3 run.py`` through
``tests/system_harness.System``: free ports, a temporary DuckDB file): bus, API server, strategy
manager with 4 strategy processes, execution service, and the ingestor (with its DuckDB recorder process) replaying the real F&O day
``../shared/data/nse-fo-ticks/2022-11-18`` (2,777,447 prints of 1,381 contracts, merged in time
order) with the replay options ``--rate`` (constant ticks/s), ``--limit`` and ``--speed 0``. The
strategies are ``benchmarks/echo_strategy.py``, each subscribed to every replayed instrument; a
WebSocket client watches like one browser, and our own bus subscriber listens. See
``benchmarks/_system_run.py`` for how a run is driven and read back.

Parts (issue 9, items 2, 3, 5, 7):

1. ``latency``: replays at 1,000 and 10,000 ticks/s (``--latency-rates``) for ``--warm`` + ``--window``
   seconds (all 1,381 contracts subscribed; each strategy emits about 10 signals a second).
   Latencies come from ``time.time_ns()`` stamps (CLOCK_REALTIME, shared by every process):
   the ingestor's when it takes a tick from the source (``AMT_LATENCY_PROBE``), each strategy's on
   arrival in ``on_tick``, ours when the strategy's signal comes off the bus, and the WebSocket
   client's when the signal arrives in a batch. Ticks of the first ``--warm`` seconds are left out
   of the steady-state numbers: each strategy process first warm-starts from DuckDB (it waits for
   the first tick to be committed and reads the day's candles), holding the first ticks back; that
   start-up delay is reported on its own. The API sends batches every 100 ms by design, so
   signal -> browser includes up to 100 ms of batching and is reported apart from tick -> strategy.
   The ingestor stamps a tick when its feed thread takes it, so a stall of that thread (a
   hand-over to the recorder, frames built ahead) delays the stamp too and is invisible to
   tick -> strategy; the rows "tick due -> ..." measure from when the constant-rate schedule made
   each tick due (``i / rate`` after the schedule's start, put where no batch is taken before its
   first tick is due), which such stalls cannot hide from.
1b. ``latency_rt``: the same runs with ``REALTIME_PRIORITY = 10`` (the bus, the feed process
   and the strategies under SCHED_FIFO, see config.example.py); skipped, with a row saying so,
   where this process may not set a real-time policy (root or CAP_SYS_NICE). The other parts
   run as a user starts the system (``--realtime P`` runs every part with ``P``).
1c. ``latency_slice0``: the same runs with ``LATENCY_SLICE_US = 0``: every process on the
   kernel's default scheduler slice, as before the tick and order path asked for short ones
   (scripts/scheduling.py), so each run reports that change's before/after from one hour of
   the machine (``--slice US`` runs every other part with ``US``).
2. ``rate``: the highest tick rate at which every tick reaches every strategy and DuckDB (zero
   loss) and the system keeps up: the ingestor achieves >= 95 % of the asked rate, the last tick
   reaches every strategy within 1 s and DuckDB within 2 s of the ingestor taking it (DuckDB's
   progress is read from the ingestor's health reports, sent about once a second: the time of the
   first report with every row committed is an upper bound, at most about 1 s late). Rates of ``--rates`` are searched between the highest that passed and the
   lowest that failed (starting from the latency part's runs, which are reused), within
   ``--rate-budget`` seconds; each run is ``--warm`` + ``--window`` seconds of ticks. The ratio to the raw bus limit of
   ``bench_bus.py`` (4 subscribers) is given with ``--bus-json``.
3. ``memory``: RSS (psutil) of every process after each of 10 sessions in a row: the real day's
   ``NIFTY-I`` future (16,687 ticks, the busiest contract) replayed on 10 consecutive weekdays
   from 2022-11-21 (copies with the date changed, in a temporary folder) at ``--memory-rate``
   ticks/s; a sample when the first candle of the next session passes, and one after the end.
   Also the RSS after the full F&O day (part 4), the one real full session we have.
4. ``day``: the whole F&O day at ``--speed 0``: wall time from the first tick taken to every tick in
   DuckDB and in every strategy, ticks/s, and DuckDB's ``count(*)`` against the line count of the
   source files. Gives up waiting for the strategies after ``--day-timeout`` seconds (then gives
   their progress and a projection), and for DuckDB after ``--day-db-timeout`` seconds.

Targets (issue 9; reported met / missed, they are not checks): the F&O day in < 30 s with zero
loss; zero-loss rate >= 50,000 ticks/s and >= half the raw bus limit; p99 tick -> strategy < 1 ms
at 10 k/s; flat memory across sessions. Checks (exit code 1 when one fails): zero loss (every
tick in every strategy exactly once and in DuckDB) in the latency runs, the memory run and the
DuckDB count of the full day.

The machine is shared: other engineers' tests run on the same 2 cores; the load average before
and after and the CPU seconds each process used are recorded with the results.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent
for p in (str(ROOT), str(HERE)):
    if p not in sys.path:
        sys.path.insert(0, p)

import numpy as np  # noqa: E402

import common  # noqa: E402
from benchmarks._system_run import RunResult, RunSpec, rss_mb, run_system, tick_files_keys  # noqa: E402
from strategy.base import ist_date  # noqa: E402

DAY = common.FO_DAY
DAY_TICKS = 2_777_447
LADDER = [1_000, 2_000, 3_000, 5_000, 7_500, 10_000, 15_000, 20_000, 30_000, 40_000, 50_000, 60_000,
          80_000, 100_000]
MEMORY_FILES = ["Futures/NIFTY-I.csv"]
MEMORY_SESSIONS = 10
ACHIEVED_MIN = 0.95        # the ingestor must reach this fraction of the asked rate
STRATEGY_LAG_S = 1.0       # the last tick must reach every strategy within this
DUCKDB_LAG_S = 2.0         # ... and DuckDB within this (health reports: an upper bound, 1 s resolution)
TARGETS = {"day_s": 30.0, "rate": 50_000, "bus_fraction": 0.5, "p99_us_10k": 1000.0}


def log(msg: str) -> None:
    print(f"[system] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- statistics
def pct(values: np.ndarray, unit_ns: float = 1e3) -> dict[str, float] | None:
    """p50, p99, p99.9, min and max of ``values`` (ns) in units of ``unit_ns`` (default µs), with n."""
    if values is None or len(values) == 0:
        return None
    p50, p99, p999 = np.percentile(values, [50, 99, 99.9])
    return {"n": int(len(values)), "p50": p50 / unit_ns, "p99": p99 / unit_ns, "p99_9": p999 / unit_ns,
            "min": float(values.min()) / unit_ns, "max": float(values.max()) / unit_ns}


def fmt_us(s: dict | None) -> str:
    """``p50 / p99 / p99.9 / max`` in µs (ms above 10 ms), with n."""
    if not s:
        return "no samples"

    def one(v: float) -> str:
        return f"{v / 1000:,.1f} ms" if v >= 10_000 else f"{v:,.0f} us"
    return (f"p50 {one(s['p50'])}, p99 {one(s['p99'])}, p99.9 {one(s['p99_9'])}, max {one(s['max'])} "
            f"(n = {s['n']:,})")


def analyse(r: RunResult, warm_s: float, after_warm_start: bool = True, rate: float = 0.0) -> dict[str, Any]:
    """Numbers of one run: achieved rate, lags, tick -> strategy latency (steady state: ticks taken
    ``warm_s`` s after the first and, if ``after_warm_start``, 1 s after the last strategy's warm
    start; and the warm-up), the signal path, CPU seconds and RSS. With the run's constant replay
    ``rate`` (ticks/s), also each tick's delay from when the replay schedule made it due (its
    start + ``i / rate``) to its taking and to each strategy: the stamp taken when
    the ingestor takes a tick comes after any stall of its feed thread, which only this shows."""
    out: dict[str, Any] = {"ticks": r.total, "zero_loss": r.ok, "failure": r.failure,
                           "command": r.command, "cpu_s": r.cpu_s, "busy_s": round(r.busy_s, 1),
                           "rss_mb_end": {k: round(v, 1) for k, v in r.rss_end.items()},
                           "ws": r.ws_stats, "restarts": r.restarts}
    if r.recv is None or not len(r.recv):
        return out
    recv_by_seq = np.zeros(int(r.recv[:, 0].max()) + 1, dtype=np.int64)
    recv_by_seq[r.recv[:, 0]] = r.recv[:, 1]
    t0, t_last = int(r.recv[:, 1].min()), int(r.recv[:, 1].max())
    span = (t_last - t0) / 1e9
    out["ingest_s"] = round(span, 3)
    out["achieved_rate"] = round((len(r.recv) - 1) / span, 1) if span > 0 else None
    out["startup_s"] = round((t0 - r.started_ns) / 1e9, 1)
    # Steady state: ticks taken at least warm_s after the first, and at least 1 s after the last
    # strategy finished its warm start (its first on_tick), when that came later.
    firsts = [int(a[:, 1].min()) for a in r.arrivals.values() if len(a)]
    steady_from = t0 + int(warm_s * 1e9)
    if after_warm_start and firsts:
        steady_from = max(steady_from, max(firsts) + int(1e9))
    out["steady_from_s"] = round((steady_from - t0) / 1e9, 2)
    out["first_on_tick_s"] = round((max(firsts) - t0) / 1e9, 2) if firsts else None
    lat_steady, lat_warm, last_arrival, due_steady = [], [], [], []
    due_by_seq = None
    if rate > 0:
        # The schedule's start: as late as lets no batch (ticks sharing a stamp) be taken before
        # its first tick was due; the other ticks of a batch may be up to a quantum early.
        seq0, stamps = int(r.recv[:, 0].min()), r.recv[:, 1]
        first = np.r_[True, stamps[1:] != stamps[:-1]]
        offset_ns = ((np.arange(len(recv_by_seq)) - seq0) * (1e9 / rate)).astype(np.int64)
        due_by_seq = (stamps[first] - offset_ns[r.recv[first, 0]]).min() + offset_ns
        taken = r.recv[recv_by_seq[r.recv[:, 0]] >= steady_from]
        out["due_to_taken_us"] = pct(taken[:, 1] - due_by_seq[taken[:, 0]])
    per_strategy = {}
    tail_from = t_last - int(2e9)
    tail = []
    for name, a in r.arrivals.items():
        if not len(a):
            continue
        seqs = a[:, 0]
        ok = seqs < len(recv_by_seq)
        rec = recv_by_seq[seqs[ok]]
        lat = a[ok, 1] - rec
        steady = rec >= steady_from
        lat_steady.append(lat[steady])
        lat_warm.append(lat[~steady])
        tail.append(lat[rec >= tail_from])
        if due_by_seq is not None:
            due_steady.append((a[ok, 1] - due_by_seq[seqs[ok]])[steady])
        last_arrival.append(int(a[:, 1].max()))
        per_strategy[name] = pct(lat[steady])
    if lat_steady:
        out["tick_to_strategy_us"] = pct(np.concatenate(lat_steady))
        out["tick_to_strategy_warmup_us"] = pct(np.concatenate(lat_warm))
        out["tick_to_strategy_last_2s_us"] = pct(np.concatenate(tail))
        if due_steady:
            out["due_to_strategy_us"] = pct(np.concatenate(due_steady))
        out["per_strategy_us"] = per_strategy
        out["strategies_done_after_s"] = round((max(last_arrival) - t_last) / 1e9, 3)
        out["all_done_s"] = round((max(max(last_arrival), r.written_ns or 0) - t0) / 1e9, 2)
    out["duckdb_done_after_s"] = round((r.written_ns - t_last) / 1e9, 2) if r.written_ns else None
    if r.flush_ms:
        f = np.array(r.flush_ms)
        out["duckdb_batch_ms"] = {"n": len(f), "p50": float(np.median(f)), "max": float(f.max())}
    out["duckdb_not_done_at_s"] = (round((r.written_before_ns - t_last) / 1e9, 2)
                                   if r.written_before_ns else None)     # lower bound of the above
    out["warm_start_ms"] = {n: (h.get("warm") or {}).get("took_ms") for n, h in r.strategy_health.items()}
    # the signal path: strategy on_tick -> our bus subscriber -> the WebSocket client
    arrival = {n: dict(zip(a[:, 0].tolist(), a[:, 1].tolist())) for n, a in r.arrivals.items() if len(a)}
    bus = {(s, q): ns for s, q, ns in r.bus_signals}
    ws = {(s, q): ns for s, q, ns in r.ws_signals}
    emitted = sum(len(e) for e in r.emitted.values())
    t2b, b2w, t2w, s2b = [], [], [], []
    for (s, q), ns in bus.items():
        if q >= len(recv_by_seq) or recv_by_seq[q] < steady_from:
            continue
        on_tick = arrival.get(s, {}).get(q)
        if on_tick is not None:
            s2b.append(ns - on_tick)
        t2b.append(ns - recv_by_seq[q])
        if (s, q) in ws:
            b2w.append(ws[(s, q)] - ns)
            t2w.append(ws[(s, q)] - recv_by_seq[q])
    out["signals"] = {"emitted": emitted, "on_bus": len(bus), "at_ws": len(ws),
                      "strategy_to_bus_us": pct(np.array(s2b)), "tick_to_bus_us": pct(np.array(t2b)),
                      "bus_to_ws_us": pct(np.array(b2w)), "tick_to_ws_us": pct(np.array(t2w))}
    return out


def keeps_up(a: dict[str, Any], rate: float) -> tuple[bool, str]:
    """The zero-loss-and-no-lag verdict of one rated run (see the module doc, part 2)."""
    why = []
    if not a.get("zero_loss"):
        why.append(f"loss: {a.get('failure')}")
    achieved = a.get("achieved_rate") or 0
    if achieved < ACHIEVED_MIN * rate:
        why.append(f"ingestor reached {achieved:,.0f}/s of {rate:,.0f}/s")
    lag = a.get("strategies_done_after_s")
    if lag is None or lag > STRATEGY_LAG_S:
        why.append(f"last tick reached the strategies {lag} s after the ingestor took it")
    db = a.get("duckdb_done_after_s")
    if db is None or db > DUCKDB_LAG_S:
        why.append(f"DuckDB complete {db} s after the last tick")
    return not why, "; ".join(why)


# --------------------------------------------------------------------------- parts
PARTS = ("latency", "latency_rt", "latency_slice0", "rate", "memory", "day")
PART_HEADLINES = {"latency_rt": " (real-time)", "latency_slice0": " (kernel's default slice)"}
RT_PRIORITY = 10
"""REALTIME_PRIORITY of the ``latency_rt`` part (any 1-98 gives the same order here: nothing else
on the machine runs real-time)."""


def _scheduling(realtime: int, slice_us: int | None) -> str:
    """How a run's tick path was scheduled, for its rows ("" for the configured default)."""
    return (f", REALTIME_PRIORITY = {realtime}" if realtime else "") + \
        (f", LATENCY_SLICE_US = {slice_us}" if slice_us is not None else "")


def can_use_realtime() -> bool:
    """Whether processes started from here may take SCHED_FIFO (tried in a child, so this one's
    policy is left alone)."""
    probe = "import os; os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))"
    return subprocess.run([sys.executable, "-c", probe], capture_output=True).returncode == 0


class Parts:
    """Runs the parts and keeps their numbers in ``bench.data``."""

    def __init__(self, bench: common.Bench, args) -> None:
        self.bench, self.args = bench, args
        self.keys = tick_files_keys(DAY)
        self.rated: dict[float, dict[str, Any]] = {}
        self._rated_other: dict[tuple[int, int | None], dict[float, dict[str, Any]]] = {}

    def rated_run(self, rate: float, signal_rate: float = 10.0, realtime: int | None = None,
                  slice_us: int | None = None) -> dict[str, Any]:
        """One run of the real day's first ``rate * (warm + window)`` ticks at ``rate`` ticks/s, all
        1,381 contracts subscribed; each strategy emits about ``signal_rate`` signals a second;
        ``realtime``: the system's REALTIME_PRIORITY (None: ``--realtime``); ``slice_us``: its
        LATENCY_SLICE_US (None: ``--slice``)."""
        a = self.args
        realtime = a.realtime if realtime is None else realtime
        slice_us = a.slice if slice_us is None else slice_us
        runs = self.rated if (realtime, slice_us) == (a.realtime, a.slice) else \
            self._rated_other.setdefault((realtime, slice_us), {})
        if rate not in runs:
            runs[rate] = self._rated_run(rate, signal_rate, realtime, slice_us)
        return runs[rate]

    def _rated_run(self, rate: float, signal_rate: float, realtime: int, slice_us: int | None) -> dict[str, Any]:
        a = self.args
        n = int(rate * (a.warm + a.window))
        every = max(100, int(rate / signal_rate))
        log(f"rate {rate:,.0f} ticks/s: {n:,} ticks, signal every {every} ticks" + _scheduling(realtime, slice_us))
        spec = RunSpec(DAY, rate=rate, limit=n, subscribe=self.keys, signal_every=every,
                       timeout_s=a.window * 6 + 60, keep=a.keep, realtime=realtime, latency_slice_us=slice_us)
        res = analyse(run_system(spec, log), a.warm, rate=rate)
        res["rate"], res["signal_every"] = rate, every
        res["keeps_up"], res["why_not"] = keeps_up(res, rate)
        log(f"  -> {res.get('achieved_rate')}/s achieved; zero loss {res['zero_loss']}; keeps up "
            f"{res['keeps_up']} {res['why_not']}; tick->strategy {fmt_us(res.get('tick_to_strategy_us'))}")
        return res

    # part 3 of the issue: latency
    def latency(self, realtime: int | None = None, slice_us: int | None = None, part: str = "latency") -> None:
        b = self.bench
        out = {}
        priority = self.args.realtime if realtime is None else realtime
        how = _scheduling(priority, self.args.slice if slice_us is None else slice_us)
        for rate in self.args.latency_rates:
            r = self.rated_run(rate, realtime=realtime, slice_us=slice_us)
            out[str(int(rate))] = r
            tag = f"{rate / 1000:g} k ticks/s" + how
            b.row(f"latency at {tag}: tick taken by the ingestor -> strategy `on_tick` (steady state)",
                  fmt_us(r.get("tick_to_strategy_us")))
            b.row(f"latency at {tag}: the same, first {self.args.warm:g} s (strategies' warm start)",
                  fmt_us(r.get("tick_to_strategy_warmup_us")) + "; warm start took "
                  + ", ".join(f"{v} ms" for v in r.get("warm_start_ms", {}).values() if v is not None))
            b.row(f"latency at {tag}: tick due by the replay's schedule -> taken by the ingestor "
                  f"(up to 2 ms early: ticks due within a sleep quantum go together)",
                  fmt_us(r.get("due_to_taken_us")))
            b.row(f"latency at {tag}: tick due -> strategy `on_tick` (includes stalls of the feed)",
                  fmt_us(r.get("due_to_strategy_us")))
            s = r.get("signals", {})
            b.row(f"latency at {tag}: strategy `on_tick` -> its signal off the bus",
                  fmt_us(s.get("strategy_to_bus_us")))
            b.row(f"latency at {tag}: signal off the bus -> WebSocket client (100 ms batches by design)",
                  fmt_us(s.get("bus_to_ws_us")))
            b.row(f"latency at {tag}: tick taken -> signal at the WebSocket client",
                  fmt_us(s.get("tick_to_ws_us")))
            b.check(f"zero loss at {tag}", r["zero_loss"], r["failure"] or
                    f"{r['ticks']:,} ticks in each of 4 strategies and DuckDB")
            if s.get("emitted") is not None:
                b.check(f"every signal reached the bus and the WebSocket client at {tag}",
                        s["emitted"] == s["on_bus"] == s["at_ws"],
                        f"{s['emitted']} emitted, {s['on_bus']} on the bus, {s['at_ws']} at the client")
        self.bench.data[part] = out
        ten = out.get("10000", {}).get("tick_to_strategy_us")
        if ten:
            b.headline("p99 tick -> strategy at 10 k ticks/s" + PART_HEADLINES.get(part, ""),
                       ten["p99"], "us", f"{ten['p99']:,.0f} us")

    def latency_rt(self) -> None:
        """The latency part again with the tick path under SCHED_FIFO (REALTIME_PRIORITY =
        :data:`RT_PRIORITY`), where this process may set it (root or CAP_SYS_NICE)."""
        if not can_use_realtime():
            self.bench.row("latency with REALTIME_PRIORITY", "not measured: needs root or CAP_SYS_NICE")
            return
        self.latency(realtime=RT_PRIORITY, part="latency_rt")

    def latency_slice0(self) -> None:
        """The latency part again with LATENCY_SLICE_US = 0 (every process on the kernel's default
        slice, as before 2026-12-06): the short slice's before/after within one run."""
        self.latency(slice_us=0, part="latency_slice0")

    # part 2 of the issue: the highest zero-loss rate
    def rate(self) -> None:
        b = self.bench
        ladder = sorted(set(self.args.rates))
        deadline = time.monotonic() + self.args.rate_budget
        tried = {k: v for k, v in self.rated.items()}
        if not tried:
            start = min(ladder, key=lambda r: abs(r - 10_000))
            tried[start] = self.rated_run(start)
        while time.monotonic() < deadline:
            passed = [k for k, v in tried.items() if v["keeps_up"]]
            failed = [k for k, v in tried.items() if not v["keeps_up"]]
            lo = max(passed) if passed else None
            hi = min((k for k in failed if lo is None or k > lo), default=None)
            between = [r for r in ladder if (lo is None or r > lo) and (hi is None or r < hi)]
            if not between:
                break
            if lo is None:
                nxt = max(between)                  # nothing passed yet: the next rate down
            elif hi is None:
                nxt = min(between)                  # nothing failed yet: the next rate up
            else:                                   # the middle (geometric) of what is left
                nxt = min(between, key=lambda r: abs(np.log(r) - (np.log(lo) + np.log(hi)) / 2))
            tried[nxt] = self.rated_run(nxt)
        passed = [k for k, v in tried.items() if v["keeps_up"]]
        best = max(passed) if passed else None
        bus = self.raw_bus_limit()
        data = {"best": best, "tried": {str(int(k)): {kk: v.get(kk) for kk in
                                                      ("keeps_up", "why_not", "achieved_rate", "zero_loss",
                                                       "strategies_done_after_s", "duckdb_done_after_s",
                                                       "duckdb_batch_ms", "cpu_s", "busy_s")}
                                        for k, v in sorted(tried.items())},
                "raw_bus_limit": bus}
        self.bench.data["rate"] = data
        for k, v in sorted(tried.items()):
            b.row(f"zero loss and keeping up at {k:,.0f} ticks/s",
                  ("yes" if v["keeps_up"] else f"no ({v['why_not']})")
                  + f"; achieved {v.get('achieved_rate') or 0:,.0f}/s; DuckDB batch p50 "
                  + f"{(v.get('duckdb_batch_ms') or {}).get('p50', float('nan')):,.0f} ms, max "
                  + f"{(v.get('duckdb_batch_ms') or {}).get('max', float('nan')):,.0f} ms; CPU s "
                  + ", ".join(f"{p} {s:.1f}" for p, s in v["cpu_s"].items() if s >= 0.3)
                  + f" over {v['busy_s']} s")
        text = f"{best:,.0f} ticks/s" if best else f"none of the rates tried ({min(tried):,.0f}/s and up)"
        if bus:
            ratio = (best or 0) / bus["rate"]
            data["ratio"] = ratio
            text += f" = {ratio:.1%} of the raw bus limit ({bus['rate']:,.0f} msg/s, {bus['what']})"
        else:
            text += " (no raw bus limit given: run with --bus-json from bench_bus.py)"
        b.row("**highest zero-loss rate, whole system**", f"**{text}**")
        b.headline("zero-loss rate, whole system", best or 0.0, "ticks/s",
                   f"{best:,.0f} ticks/s" if best else "none passed")

    def raw_bus_limit(self) -> dict | None:
        """The 4-subscriber delivery rate of ``bench_bus.py --json`` (else its 1-subscriber one)."""
        path = self.args.bus_json
        if not path:
            return None
        phases = json.loads(Path(path).read_text()).get("data", {}).get("phases", [])
        plain = [p for p in phases if not (p.get("decode") or p.get("multipart") or p.get("copy"))
                 and p.get("delivery_rate")]
        if not plain:
            raise SystemExit(f"--bus-json {path}: no data.phases[].delivery_rate of a plain phase")
        four = [p for p in plain if p.get("subscribers") == 4]
        p = (four or plain)[0]
        return {"rate": float(p["delivery_rate"]), "what": f"{p['subscribers']} subscriber(s), bench_bus.py"}

    # part 5 of the issue: memory
    def memory(self) -> None:
        b, a = self.bench, self.args
        with tempfile.TemporaryDirectory(prefix="amt-bench-sessions-") as tmp:
            folder, dates = make_sessions(Path(tmp), MEMORY_FILES, a.sessions)
            per_session = sum(count_lines(DAY / f) for f in MEMORY_FILES)
            samples: list[dict] = []
            seen: list[dt.date] = []

            def on_candle(candle, rx_ns, procs) -> None:
                day = ist_date(candle.ts)
                if seen and day != seen[-1] and procs:
                    samples.append({"after_sessions": len(seen), "rx_ns": rx_ns,
                                    "rss_mb": {k: round(v, 1) for k, v in rss_mb(procs).items()}})
                if not seen or day != seen[-1]:
                    seen.append(day)

            keys = tick_files_keys(folder)
            log(f"memory: {a.sessions} sessions x {per_session:,} ticks at {a.memory_rate:,.0f} ticks/s")
            spec = RunSpec(folder, rate=a.memory_rate, subscribe=keys, watch=keys[0],
                           signal_every=max(100, int(a.memory_rate / 10)), candle_key="NSE_FO|NIFTY-I",
                           on_candle=on_candle, timeout_s=a.sessions * per_session / a.memory_rate * 3 + 60,
                           before_stop=duckdb_memory, keep=a.keep)
            r = run_system(spec, log)
        res = analyse(r, a.warm)
        samples.append({"after_sessions": a.sessions, "rx_ns": None, "rss_mb": res["rss_mb_end"]})
        res["keeps_up"], res["why_not"] = keeps_up(res, a.memory_rate)
        res["samples"] = samples
        res["sessions"], res["ticks_per_session"] = a.sessions, per_session
        res["dates"] = [d.isoformat() for d in dates]
        table = memory_table(samples)
        if r.extra and "recorder" in table:
            net_of_duckdb_cache(table["recorder"], sum(r.extra.values()), a.sessions)
        res["growth"] = table
        res["duckdb_memory_mb"] = r.extra
        self.bench.data["memory"] = res
        b.check(f"zero loss over {a.sessions} sessions", r.ok,
                r.failure or f"{r.total:,} ticks in each of 4 strategies and DuckDB")
        flat = all(t["flat"] for t in table.values())
        for role, t in table.items():
            b.row(f"RSS {role}: after 1 session / after {a.sessions} (finished, idle); largest while replaying",
                  f"{t['after_first']:,.0f} MB / {t['after_last']:,.0f} MB ({t['growth']:+,.1f} MB); "
                  f"{t['peak_during']:,.0f} MB, {t['slope']:+.2f} MB a session over sessions 2-{a.sessions - 1}")
        b.row(f"memory across {a.sessions} sessions ({per_session:,} ticks each at {a.memory_rate:,.0f}/s; "
              f"kept up: {'yes' if res['keeps_up'] else 'no, ' + res['why_not']})",
              "**flat**" if flat else "**grows**: " + ", ".join(
                  f"{k} {t['slope']:+.2f} MB a session while replaying, {t['growth']:+.1f} MB at the end"
                  for k, t in table.items() if not t["flat"]))
        if r.extra:
            b.row(f"the recorder's DuckDB after {a.sessions} sessions (`duckdb_memory()`, MB)",
                  ", ".join(f"{k} {v:,.1f}" for k, v in r.extra.items() if v >= 0.1) or "nothing above 0.1 MB")
            h = r.ingestor_health
            b.row("the recorder's DuckDB CHECKPOINTs (one at each new IST day and at the end of the replay)",
                  f"{h.get('checkpoints', '?')} done, {h.get('checkpoints_skipped', '?')} skipped")
            if "net_slope" in (t := table.get("recorder", {})):
                b.row("RSS recorder beside DuckDB's block cache (what DuckDB holds is the recorded data, "
                      "evicted at its `memory_limit`; judged flat on this)",
                      f"{t['net_slope']:+.2f} MB a session while replaying, {t['net_growth']:+.1f} MB at the end")
        b.headline(f"largest RSS growth over {a.sessions} sessions",
                   max((t["growth"] for t in table.values()), default=0.0), "MB",
                   f"{max((t['growth'] for t in table.values()), default=0.0):+.1f} MB")

    # part 7 of the issue: the real day at full speed
    def day(self) -> None:
        b, a = self.bench, self.args
        source = sum(count_lines(p) for p in DAY.rglob("*.csv"))
        log(f"full day: {source:,} ticks in the source files, --speed 0")
        spec = RunSpec(DAY, speed=0, subscribe=self.keys, signal_every=10_000,
                       timeout_s=a.day_timeout, db_timeout_s=a.day_db_timeout, keep=a.keep,
                       realtime=a.realtime)
        r = run_system(spec, log)
        res = analyse(r, a.warm)
        res["source_lines"] = source
        res["db_rows"], res["db_distinct_seq"] = r.db_rows, r.db_distinct_seq
        res["health_counts"] = r.health_counts
        self.bench.data["day"] = res
        t0 = r.recv[:, 1].min() if r.recv is not None and len(r.recv) else None
        ingest = res.get("ingest_s")
        db_s = round((r.written_ns - t0) / 1e9, 1) if (r.written_ns and t0) else None
        res["duckdb_complete_s"] = db_s
        b.check("full day: DuckDB count == source", r.db_rows == source == r.db_distinct_seq,
                f"DuckDB {_n(r.db_rows)} rows ({_n(r.db_distinct_seq)} distinct seq), source files {source:,} "
                f"lines" + (f"; {r.failure}" if r.db_rows != source else ""))
        b.row("full F&O day (1,381 contracts), `--speed 0`: ticks taken by the ingestor",
              f"{r.total:,} ticks in {ingest} s = {(res.get('achieved_rate') or 0):,.0f} ticks/s "
              f"(run.py start to first tick: {res.get('startup_s')} s, CSV parsing included)")
        b.row("full day: every tick in DuckDB (count == source files' lines)",
              f"{_n(r.db_rows)} == {source:,}: {'yes' if r.db_rows == source else 'NO'}; complete {db_s} s "
              f"after the first tick")
        done = res.get("strategies_done_after_s")
        counts = ", ".join(f"{v:,}" for v in r.health_counts.values())
        if r.ok:
            b.row("full day: every tick in all 4 strategies",
                  f"yes; the last one {done} s after the ingestor took it; "
                  f"whole system done in **{res.get('all_done_s')} s**")
        else:
            slowest = min(r.health_counts.values(), default=0)
            per_s = slowest / r.busy_s if r.busy_s else 0
            res["strategy_rate"] = per_s
            res["projected_all_done_s"] = round(r.total / per_s, 0) if per_s else None
            b.row("full day: every tick in all 4 strategies",
                  f"**no**: after {r.busy_s:.0f} s the slowest strategy had {slowest:,} of {r.total:,} "
                  f"({per_s:,.0f} ticks/s; all of them would take about {res['projected_all_done_s']} s); "
                  f"counts {counts}")
        b.row("full day: tick -> strategy latency (queueing at full speed)", fmt_us(res.get("tick_to_strategy_us")))
        b.row("full day: CPU seconds by process", ", ".join(f"{p} {s:.1f}" for p, s in res["cpu_s"].items())
              + f" over {res['busy_s']} s")
        b.row("RSS after the full F&O day (MB)", ", ".join(f"{k} {v:,.0f}" for k, v in res["rss_mb_end"].items()))
        if r.ok:
            b.headline("full F&O day through the whole system", res["all_done_s"], "s",
                       f"{res['all_done_s']} s ({DAY_TICKS / res['all_done_s']:,.0f} ticks/s)")
        b.headline("full F&O day into DuckDB", db_s or 0.0, "s", f"{db_s} s")

    # smoke: one short run
    def smoke(self) -> None:
        b = self.bench
        key = "NSE_FO|NIFTY-I"
        spec = RunSpec(DAY, rate=1000, limit=1500, instruments=[key], strategies=2, signal_every=100,
                       timeout_s=60, keep=self.args.keep)
        r = run_system(spec, log)
        res = analyse(r, 0.0, after_warm_start=False, rate=spec.rate)
        self.bench.data["smoke"] = res
        b.check("zero loss", r.ok, r.failure or f"{r.total:,} ticks in each of 2 strategies and DuckDB")
        s = res.get("signals", {})
        b.row("1,500 NIFTY-I ticks at 1,000/s, 2 echo strategies: tick -> strategy (warm start included)",
              fmt_us(res.get("tick_to_strategy_us")))
        b.row("the same from each tick's due time by the replay's schedule", fmt_us(res.get("due_to_strategy_us")))
        b.row("ticks taken by the ingestor", f"{r.total:,} at {res.get('achieved_rate') or 0:,.0f}/s; "
              f"all in DuckDB {res.get('duckdb_done_after_s')} s and in both strategies "
              f"{res.get('strategies_done_after_s')} s after the last")
        b.row("signals emitted / on the bus / at the WebSocket client",
              f"{s.get('emitted')} / {s.get('on_bus')} / {s.get('at_ws')}")
        b.check("every signal reached the bus and the WebSocket client",
                bool(s.get("emitted")) and s.get("emitted") == s.get("on_bus") == s.get("at_ws"),
                f"{s.get('emitted')} emitted, {s.get('on_bus')} on the bus, {s.get('at_ws')} at the client")
        b.headline("ticks through the whole system (smoke)", float(r.total), "ticks",
                   f"{r.total:,} ticks, zero loss: {r.ok}")


def _n(value: int | None) -> str:
    """``1,234`` or ``?`` for a count that could not be read."""
    return "?" if value is None else f"{value:,}"


# --------------------------------------------------------------------------- data helpers
def count_lines(path: Path) -> int:
    """Data lines of a recorded CSV file (blank lines and lines of only commas do not count,
    as in the replay)."""
    data = Path(path).read_bytes()
    return sum(1 for line in data.split(b"\n") if line.strip(b", \r\t"))


def make_sessions(tmp: Path, files: list[str], n: int) -> tuple[Path, list[dt.date]]:
    """``n`` copies of ``files`` of the real day, each on the next weekday from 2022-11-21 (the
    date field rewritten, nothing else), as ``tmp/sessions/dNN/<file>``. Returns the folder and
    the dates."""
    dates, d = [], dt.date(2022, 11, 21)
    while len(dates) < n:
        if d.weekday() < 5:
            dates.append(d)
        d += dt.timedelta(days=1)
    root = tmp / "sessions"
    for i, day in enumerate(dates):
        for f in files:
            text = (DAY / f).read_text()
            out = root / f"d{i:02d}" / f
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(text.replace("20221118,", day.strftime("%Y%m%d") + ","))
    return root, dates


def duckdb_memory(system, endpoints: dict[str, str]) -> dict[str, float] | None:
    """DuckDB's own memory use by tag (``duckdb_memory()``, MB) in the running recorder (the ingestor's DuckDB process), asked
    through its query service as ``python3 run.py sql`` would; None if it does not answer."""
    import dataclasses
    from trading_core import query_client, settings as settings_mod
    settings = dataclasses.replace(settings_mod.load(), query_endpoint=endpoints["--query-endpoint"],
                                   duckdb_path=system.db)
    try:
        res = query_client.query_result("SELECT tag, memory_usage_bytes FROM duckdb_memory()",
                                        settings=settings, via="server", timeout_s=10)
    except Exception as exc:  # noqa: BLE001 - a diagnostic: say why and go on
        log(f"duckdb_memory() not answered: {exc}")
        return None
    rows = res.table.to_pylist()
    return {str(r["tag"]).lower(): round(int(r["memory_usage_bytes"]) / 2**20, 1) for r in rows}


def net_of_duckdb_cache(t: dict[str, Any], cache_mb: float, sessions: int) -> None:
    """Add ``net_slope`` / ``net_growth`` to the recorder's :func:`memory_table` entry: its RSS
    slope and growth less DuckDB's own count of what it holds after ``sessions`` sessions
    (``duckdb_memory()``, ``cache_mb``), taken as growing evenly with the sessions recorded,
    and judge ``flat`` on those. DuckDB keeps the blocks of the tables it wrote in its buffer
    pool until its ``memory_limit`` makes it evict them, so that part grows with the data and
    is bounded; a leak is what is left."""
    per_session = cache_mb / sessions
    t["duckdb_cache_mb"] = cache_mb
    t["net_slope"] = t["slope"] - per_session
    t["net_growth"] = t["growth"] - per_session * (sessions - 1)
    t["flat"] = t["net_slope"] < 1.0 and t["net_growth"] < 10.0


def memory_table(samples: list[dict]) -> dict[str, dict[str, Any]]:
    """Per process: RSS after the first session and after the last one (the replay finished, the
    system idle), the largest RSS seen while replaying, the least-squares slope over the samples
    taken while replaying (after sessions 2 .. n-1; MB a session) and ``flat``: that slope below
    1 MB a session and the end less than 10 MB above the first (session 1 includes start-up's
    one-off allocations)."""
    by_role: dict[str, list[tuple[int, float]]] = {}
    for s in samples:
        for role, mb in s["rss_mb"].items():
            if role.startswith("bench"):
                continue
            by_role.setdefault(role, []).append((s["after_sessions"], mb))
    out = {}
    for role, pts in by_role.items():
        pts.sort()
        first, last = pts[0][1], pts[-1][1]
        during = pts[:-1]
        tail = [(k, v) for k, v in during if k >= 2]
        slope = float(np.polyfit([k for k, _ in tail], [v for _, v in tail], 1)[0]) if len(tail) >= 3 else 0.0
        out[role] = {"after_first": first, "after_last": last, "growth": last - first,
                     "peak_during": max(v for _, v in during) if during else first, "slope": slope,
                     "flat": slope < 1.0 and last - first < 10.0, "points": pts}
    return out


# --------------------------------------------------------------------------- report
def targets(bench: common.Bench) -> None:
    """Met / missed against issue 9's targets, and a paragraph reading the numbers."""
    d = bench.data
    lines = ["Targets (issue 9):", ""]
    day = d.get("day")
    if day:
        s = day.get("all_done_s") if day.get("zero_loss") else None
        lines.append(f"- F&O day < {TARGETS['day_s']:.0f} s with zero loss: "
                     + (f"**{'met' if s < TARGETS['day_s'] else 'missed'}** ({s} s)" if s else
                        f"**missed** (the strategies had not got every tick after {day.get('busy_s')} s; "
                        f"projected {day.get('projected_all_done_s')} s; DuckDB complete after "
                        f"{day.get('duckdb_complete_s')} s)"))
    rate = d.get("rate")
    if rate:
        best = rate.get("best") or 0
        ok = best >= TARGETS["rate"]
        ratio = rate.get("ratio")
        lines.append(f"- zero-loss rate >= {TARGETS['rate']:,} ticks/s: **{'met' if ok else 'missed'}** "
                     f"({best:,.0f}/s)" + (f"; >= half the raw bus limit: **{'met' if ratio >= 0.5 else 'missed'}** "
                                           f"({ratio:.1%})" if ratio is not None else "; raw bus ratio not measured "
                                           "(no --bus-json)"))
    for part, how in (("latency", ""), ("latency_slice0", " with LATENCY_SLICE_US = 0 (the kernel's default slice)"),
                      ("latency_rt", f" with REALTIME_PRIORITY = {RT_PRIORITY}")):
        lat = (d.get(part) or {}).get("10000", {}).get("tick_to_strategy_us")
        if lat:
            lines.append(f"- p99 tick -> strategy < 1 ms at 10 k/s{how}: "
                         f"**{'met' if lat['p99'] < 1000 else 'missed'}** ({fmt_us(lat)})")
    mem = d.get("memory")
    if mem:
        flat = all(t["flat"] for t in mem["growth"].values())
        lines.append(f"- flat memory across sessions: **{'met' if flat else 'missed'}**")
    bench.footer += lines


def reading(parts: Parts) -> list[str]:
    """A paragraph reading the numbers: CPU per tick by process in the busiest rated run, where the
    ticks wait, and the warm start."""
    runs = [v for v in parts.rated.values() if v.get("cpu_s") and v.get("ticks")]
    if not runs:
        return []
    r = max(runs, key=lambda v: v["rate"])
    n = r["ticks"]
    cpu = {k: v for k, v in r["cpu_s"].items() if not k.startswith("bench")}
    total = sum(cpu.values())
    strat = [v for k, v in cpu.items() if k.startswith("strategy.")]
    per = ", ".join(f"{k} {v / n * 1e6:,.0f}" for k, v in sorted(cpu.items(), key=lambda kv: -kv[1])
                    if v / n * 1e6 >= 1)
    text = (f"Reading the numbers: at {r['rate']:,.0f} ticks/s ({n:,} ticks, every contract subscribed by 4 "
            f"strategies) the system's processes used {total:,.1f} CPU seconds, {total / n * 1e6:,.0f} us of CPU "
            f"per tick, over {r['busy_s']} s of wall time on {os.cpu_count()} cores shared with other work. "
            f"Per tick, in us of CPU: {per}. ")
    if strat:
        text += (f"The 4 strategy processes together take {sum(strat) / total:.0%} of it (each receives, "
                 f"decodes and dispatches every tick), so {os.cpu_count()} cores carry at most about "
                 f"{os.cpu_count() / (total / n):,.0f} ticks/s through this set-up even when nothing else "
                 f"runs; beyond that ticks queue in the bus (high-water marks of 2 M messages, so they wait "
                 f"rather than drop) and latency grows by the second, which is what the steady-state "
                 f"latencies above show when they are in seconds. ")
    w = [v for v in r.get("warm_start_ms", {}).values() if v is not None]
    if w:
        text += (f"Each strategy's warm start (waiting for the first tick in DuckDB, reading the day's "
                 f"candles) took {min(w) / 1000:.1f}-{max(w) / 1000:.1f} s, during which its ticks queue.")
    return ["", text]


def main() -> int:
    ap = common.parser(__doc__)
    ap.add_argument("--only", default=",".join(PARTS),
                    help="comma-separated parts: " + ", ".join(PARTS) + " (default all)")
    ap.add_argument("--bus-json", metavar="PATH", help="bench_bus.py --json output: the raw bus limit")
    ap.add_argument("--latency-rates", type=float, nargs="+", default=[1_000, 10_000], metavar="N")
    ap.add_argument("--rates", type=float, nargs="+", default=LADDER, metavar="N",
                    help="the ladder of ticks/s for the zero-loss rate")
    ap.add_argument("--rate-budget", type=float, default=150, metavar="S",
                    help="stop climbing the ladder after this many seconds")
    ap.add_argument("--warm", type=float, default=3.0, metavar="S",
                    help="seconds of ticks left out of steady-state latency (strategies' warm start)")
    ap.add_argument("--window", type=float, default=8.0, metavar="S", help="steady-state seconds per rated run")
    ap.add_argument("--memory-rate", type=float, default=3_000, metavar="N")
    ap.add_argument("--sessions", type=int, default=MEMORY_SESSIONS)
    ap.add_argument("--day-timeout", type=float, default=150, metavar="S",
                    help="give up waiting for the strategies this long after the full day's first tick")
    ap.add_argument("--day-db-timeout", type=float, default=300, metavar="S",
                    help="... but wait for DuckDB to hold the whole day up to this long after its first tick")
    ap.add_argument("--keep", action="store_true", help="keep each run's temporary folder (logs, DuckDB)")
    ap.add_argument("--slice", type=int, default=None, metavar="US",
                    help="run the system with LATENCY_SLICE_US = US (0: the kernel's default slice); "
                         "default: the configured value")
    ap.add_argument("--realtime", type=int, default=0, metavar="P",
                    help="run the system with REALTIME_PRIORITY = P (SCHED_FIFO for the bus, the feed and "
                         "the strategies; needs root or CAP_SYS_NICE); default 0, as a user starts it")
    args = ap.parse_args()
    mode = common.mode_of(args)
    bench = common.Bench("system", "The whole system end to end (bench_system.py)",
                         ["zmq", "msgspec", "duckdb", "polars", "numpy", "psutil"], mode,
                         note=("2" if args.smoke else "4") + " echo strategy processes, API server with one "
                              "WebSocket client, execution, ingestor and its DuckDB recorder; real ticks of 2022-11-18")
    parts = Parts(bench, args)
    if args.smoke:
        parts.smoke()
    else:
        wanted = [p.strip() for p in args.only.split(",") if p.strip()]
        unknown = set(wanted) - set(PARTS)
        if unknown:
            ap.error(f"--only: unknown part(s) {', '.join(sorted(unknown))}")
        for part in PARTS:
            if part in wanted:
                try:
                    getattr(parts, part)()
                except Exception as exc:  # noqa: BLE001 - one broken part must not lose the others
                    import traceback
                    traceback.print_exc()
                    bench.check(f"part {part} ran", False, f"{type(exc).__name__}: {str(exc)[:300]}")
        targets(bench)
        bench.footer += reading(parts)
    return bench.finish(args)


if __name__ == "__main__":
    sys.exit(main())
