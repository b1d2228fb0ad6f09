"""One benchmark run of the whole ``run.py`` system, and what it measured.

Used by ``benchmarks/bench_system.py``. :func:`run_system` starts ``python3 run.py`` through
``tests/system_harness.System`` (free ports, a temporary DuckDB file and log folder) with a
replay and :mod:`benchmarks.echo_strategy` strategies subscribed to the replayed instruments,
listens beside it, waits until every tick has reached every strategy and DuckDB (or it gives
up), stops it and reads everything back:

- the ingestor's receive stamps (``AMT_LATENCY_PROBE``: ``ingestor_recv.npy``, ``[seq, recv_ns]``);
- each echo strategy's ``on_tick`` arrival stamps and emitted signals (``AMT_BENCH_ECHO_DIR``);
- a bus subscriber of our own (:class:`BusTap`): every ``signal.*`` with its arrival time, every
  ``health.*`` (the progress counters), and optionally one instrument's candles (session
  boundaries for the memory test);
- a WebSocket client (:class:`WsTap`) like one browser on ``/ws``, watching one instrument:
  the arrival time of every signal in the 100 ms batches;
- psutil RSS of every process of the system, when asked;
- DuckDB after the stop: ``count(*)`` and distinct ``seq`` of the replayed ticks.

All times are ``time.time_ns()`` (CLOCK_REALTIME, epoch ns), shared by every process of one
machine, so differences between processes are latencies. Nothing here busy-waits: every loop
blocks on a socket with a timeout or sleeps.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

import msgspec
import numpy as np
import psutil

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.echo_strategy import ENV_DIR, FLUSH_S, read_samples  # noqa: E402
from data_handling.instruments import tick_file_key  # noqa: E402
from tests.system_harness import System  # noqa: E402
from trading_core import messages as m  # noqa: E402
from trading_core.bus import BusClient  # noqa: E402

PROBE_ENV = "AMT_LATENCY_PROBE"
PROBE_FILE = "ingestor_recv.npy"
ECHO_CLASS = "benchmarks.echo_strategy:EchoStrategy"
_SEQ = re.compile(r"echo seq=(\d+)")


def tick_files_keys(folder: Path) -> list[str]:
    """Instrument keys of every tick file (``*.csv``) under ``folder``, from the file names
    (no parsing), sorted and unique, e.g. ``["NSE_FO|BANKNIFTY-I", ...]``."""
    return sorted({tick_file_key(p) for p in folder.rglob("*.csv")})


# --------------------------------------------------------------------------- listeners
class BusTap(threading.Thread):
    """Our own subscriber on the system's bus (its own thread and sockets).

    Keeps the latest ``health.*`` report per service (``health[service] = dict``), every echo
    signal as ``(strategy, seq, rx_ns)`` in ``signals``, and calls ``on_candle(candle, rx_ns)``
    for the candles of ``candle_key`` (if given).
    """

    def __init__(self, pub: str, sub: str, candle_key: str | None = None,
                 on_candle: Callable[[m.Candle, int], None] | None = None) -> None:
        super().__init__(name="bus-tap", daemon=True)
        self.pub, self.sub = pub, sub
        self.subscriptions: list[str | bytes] = ["signal.", "health."]
        if candle_key:
            self.subscriptions.append(m.exact(m.candle_topic(candle_key)))
        self.on_candle = on_candle
        self.health: dict[str, dict[str, Any]] = {}
        self.signals: list[tuple[str, int, int]] = []
        self.other_signals = 0
        self.stop = threading.Event()
        self.ready = threading.Event()
        self._signal = msgspec.json.Decoder(m.Signal)
        self._health = msgspec.json.Decoder(m.Health)
        self._candle = msgspec.json.Decoder(m.Candle)

    def run(self) -> None:
        bus = BusClient(self.pub, self.sub, self.subscriptions)
        if bus.wait_ready(30):
            self.ready.set()
        try:
            while not self.stop.is_set():
                frame = bus.recv_raw(100)
                if frame is None:
                    continue
                now = time.time_ns()
                topic, _, payload = frame.partition(m.SEPARATOR)
                if topic.startswith(b"signal."):
                    sig = self._signal.decode(payload)
                    found = _SEQ.fullmatch(sig.reason)
                    if found:
                        self.signals.append((sig.strategy, int(found.group(1)), now))
                    else:
                        self.other_signals += 1
                elif topic.startswith(b"health."):
                    h = self._health.decode(payload)
                    self.health[h.service] = {"status": h.status, "pid": h.pid, "ts": h.ts,
                                              "rx_ns": now, **h.details}
                elif topic.startswith(b"candle.") and self.on_candle is not None:
                    self.on_candle(self._candle.decode(payload), now)
        finally:
            bus.close()


class WsTap(threading.Thread):
    """A WebSocket client like one browser: connects to ``/ws`` (retrying until the API is up),
    subscribes to ``watch`` (one instrument, like the desk's chart) and keeps every echo signal of
    the ``batch`` frames as ``(strategy, seq, rx_ns)``; counts frames, bytes and snapshots."""

    def __init__(self, port: int, watch: str | None) -> None:
        super().__init__(name="ws-tap", daemon=True)
        self.url = f"ws://127.0.0.1:{port}/ws"
        self.watch = watch
        self.signals: list[tuple[str, int, int]] = []
        self.frames = self.bytes = self.snapshots = 0
        self.error: str | None = None
        self.stop = threading.Event()
        self.connected = threading.Event()

    def run(self) -> None:
        from websockets.exceptions import ConnectionClosed
        from websockets.sync.client import connect
        ws = None
        while ws is None and not self.stop.is_set():
            try:
                ws = connect(self.url, max_size=None, open_timeout=2, close_timeout=1)
            except (OSError, TimeoutError, Exception):  # noqa: BLE001 - not up yet: retry
                self.stop.wait(0.2)
        if ws is None:
            return
        self.connected.set()
        try:
            if self.watch:
                ws.send(json.dumps({"subscribe": [self.watch]}))
            while not self.stop.is_set():
                try:
                    text = ws.recv(timeout=0.2)
                except TimeoutError:
                    continue
                now = time.time_ns()
                self.frames += 1
                self.bytes += len(text)
                frame = msgspec.json.decode(text)
                if frame.get("type") == "snapshot":
                    self.snapshots += 1
                    continue
                for sig in frame.get("signals") or ():
                    found = _SEQ.fullmatch(str(sig.get("reason", "")))
                    if found:
                        self.signals.append((sig.get("strategy"), int(found.group(1)), now))
        except ConnectionClosed as exc:
            self.error = f"connection closed: {exc}"
        finally:
            ws.close()


# --------------------------------------------------------------------------- processes
def system_processes(root_pid: int) -> dict[str, psutil.Process]:
    """The processes of one ``run.py`` by role: ``supervisor``, ``bus``, ``api``,
    ``strategy_manager``, ``execution``, ``ingestor``, ``recorder`` (the ingestor's DuckDB process),
    ``strategy.<NAME>``."""
    out: dict[str, psutil.Process] = {}
    try:
        root = psutil.Process(root_pid)
        out["supervisor"] = root
        children = root.children(recursive=True)
    except psutil.Error:
        return out
    roles = {"scripts/bus.py": "bus", "api/server.py": "api", "strategy_manager.py": "strategy_manager",
             "scripts/execution.py": "execution", "scripts/ingestor.py": "ingestor",
             "scripts/recorder.py": "recorder"}
    for p in children:
        try:
            cmd = p.cmdline()
        except psutil.Error:
            continue
        joined = " ".join(cmd)
        if "strategy_process.py" in joined:
            out[f"strategy.{cmd[-1]}"] = p
            continue
        for needle, role in roles.items():
            if needle in joined:
                out[role] = p
    return out


def cpu_seconds(procs: dict[str, psutil.Process]) -> dict[str, float]:
    """User + system CPU seconds used so far by each process (children not included)."""
    out = {}
    for role, p in procs.items():
        try:
            t = p.cpu_times()
            out[role] = t.user + t.system
        except psutil.Error:
            pass
    return out


def rss_mb(procs: dict[str, psutil.Process]) -> dict[str, float]:
    """Resident set size in MB (2**20 bytes) of each process; a gone one is left out."""
    out = {}
    for role, p in procs.items():
        try:
            out[role] = p.memory_info().rss / 2**20
        except psutil.Error:
            pass
    return out


# --------------------------------------------------------------------------- one run
@dataclasses.dataclass
class RunSpec:
    """What to run. ``replay``: file or folder; ``rate`` ticks/s (0: use ``speed``; ``speed`` 0 =
    flat out); ``limit``: first N ticks; ``instruments``: replay only these keys (``--instrument``);
    ``subscribe``: the echo strategies' instruments (default: ``instruments``, else every tick
    file's key under ``replay``); ``dates``: ``--date`` filters; ``strategies``: how many echo
    strategy processes; ``signal_every``: one echo signal per this many ticks; ``watch``: the
    instrument the WebSocket client subscribes to; ``candle_key`` + ``on_candle``: candles to
    hand to a callback (with the system's processes) as they pass; ``timeout_s``: give up after
    this long from the first tick, but if DuckDB does not hold every tick by then, wait for it up
    to ``db_timeout_s`` from the first tick (stopping earlier loses the writer's queue);
    ``before_stop(system, endpoints)``: called once everything arrived, before the stop, with
    the run's ``--bus-pub``/``--bus-sub``/``--query-endpoint``; its value lands in
    ``RunResult.extra``. ``keep``: keep the temporary folder. ``realtime``: the system's
    ``REALTIME_PRIORITY`` (0: off, as a user starts it); ``latency_slice_us``: its
    ``LATENCY_SLICE_US`` (None: the configured default)."""

    replay: Path
    rate: float = 0.0
    speed: float = 0.0
    limit: int | None = None
    instruments: list[str] | None = None
    subscribe: list[str] | None = None
    dates: list[str] | None = None
    strategies: int = 4
    signal_every: int = 100
    watch: str | None = "NSE_FO|NIFTY-I"
    candle_key: str | None = None
    on_candle: Callable[[m.Candle, int, dict[str, psutil.Process]], None] | None = None
    timeout_s: float = 120.0
    db_timeout_s: float = 0.0
    before_stop: Callable[[System, dict[str, str]], Any] | None = None
    start_timeout_s: float = 90.0
    keep: bool = False
    realtime: int = 0
    latency_slice_us: int | None = None

    def args(self) -> list[str]:
        """The run.py options of this replay."""
        out = ["--replay", str(self.replay)]
        if self.rate:
            out += ["--rate", f"{self.rate:g}"]
        else:
            out += ["--speed", f"{self.speed:g}"]
        if self.limit:
            out += ["--limit", str(self.limit)]
        for key in self.instruments or ():
            out += ["--instrument", key]
        for d in self.dates or ():
            out += ["--date", d]
        return out


@dataclasses.dataclass
class RunResult:
    """What one run measured. Times are epoch ns (``time.time_ns()``) unless named ``_s``."""

    spec: RunSpec
    command: str
    total: int = 0                        # ticks the ingestor replayed (health replay_total)
    ok: bool = False                      # every tick reached every strategy and DuckDB in time
    failure: str = ""                     # why not, one line
    started_ns: int = 0                   # run.py launched
    recv: np.ndarray | None = None        # (n, 2) [seq, recv_ns] from the ingestor's probe
    arrivals: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)   # strategy -> (n, 2)
    emitted: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)    # strategy -> (k, 2)
    bus_signals: list[tuple[str, int, int]] = dataclasses.field(default_factory=list)
    ws_signals: list[tuple[str, int, int]] = dataclasses.field(default_factory=list)
    ws_stats: dict[str, Any] = dataclasses.field(default_factory=dict)
    health_counts: dict[str, int] = dataclasses.field(default_factory=dict)    # strategy -> ticks
    strategy_health: dict[str, dict] = dataclasses.field(default_factory=dict)  # last health details
    ingestor_health: dict = dataclasses.field(default_factory=dict)           # its last health.ingestor
    written_ns: int | None = None         # the first health report with every tick committed to DuckDB
    strategies_done_ns: int | None = None  # first time health showed every strategy at total
    written_before_ns: int | None = None  # the last health report before, with rows missing
    flush_ms: list[float] = dataclasses.field(default_factory=list)   # the writer's last batch, per report
    db_rows: int | None = None
    db_distinct_seq: int | None = None
    db_seq_range: tuple[int, int] | None = None
    rss_end: dict[str, float] = dataclasses.field(default_factory=dict)
    cpu_s: dict[str, float] = dataclasses.field(default_factory=dict)   # CPU seconds during the replay
    busy_s: float = 0.0                   # wall seconds those CPU seconds were measured over
    restarts: dict[str, int] = dataclasses.field(default_factory=dict)
    extra: Any = None
    tmp: str = ""
    log_tail: str = ""


def write_strategies(path: Path, names: list[str], instruments: list[str], signal_every: int) -> None:
    """The strategies file of a run: one echo strategy per name, all on ``instruments``."""
    entries = [{"name": n, "class": ECHO_CLASS, "instruments": instruments,
                "params": {"signal_every": signal_every}, "heartbeat_timeout_s": 30}
               for n in names]
    path.write_text(json.dumps({"strategies": entries}))


def _endpoint(cmd: list[str], option: str) -> str:
    return str(cmd[cmd.index(option) + 1])


def run_system(spec: RunSpec, say: Callable[[str], None] = lambda s: None) -> RunResult:
    """Run ``spec`` through the whole system; see the module doc. Never raises for a run that
    fails to keep up: ``ok`` is False and ``failure`` says why (a missing probe file, i.e. an
    ingestor without ``AMT_LATENCY_PROBE`` support, raises ``RuntimeError``)."""
    tmp = Path(tempfile.mkdtemp(prefix="amt-bench-system-"))
    echo_dir, probe_dir = tmp / "echo", tmp / "probe"
    echo_dir.mkdir()
    probe_dir.mkdir()
    subscribe = spec.subscribe or spec.instruments or tick_files_keys(Path(spec.replay))
    names = [f"echo_{i + 1}" for i in range(spec.strategies)]
    strategies = tmp / "strategies.json"
    write_strategies(strategies, names, subscribe, spec.signal_every)

    result = RunResult(spec=spec, command="", tmp=str(tmp))
    result.started_ns = time.time_ns()
    system = System(tmp, *spec.args(), strategies=strategies,
                    env={ENV_DIR: str(echo_dir), PROBE_ENV: str(probe_dir),
                         **({"AMT_REALTIME_PRIORITY": str(spec.realtime)} if spec.realtime else {}),
                         **({"AMT_LATENCY_SLICE_US": str(spec.latency_slice_us)}
                            if spec.latency_slice_us is not None else {})})
    cmd = [str(a) for a in system.proc.args]
    result.command = "python3 run.py " + " ".join(_quote(a) for a in cmd[2:])
    procs: dict[str, psutil.Process] = {}

    def candle_cb(candle: m.Candle, rx_ns: int) -> None:
        if spec.on_candle is not None:
            spec.on_candle(candle, rx_ns, procs)

    tap = BusTap(_endpoint(cmd, "--bus-pub"), _endpoint(cmd, "--bus-sub"), spec.candle_key,
                 candle_cb if spec.on_candle else None)
    ws = WsTap(system.port, spec.watch)
    tap.start()
    ws.start()
    try:
        _wait(system, tap, ws, names, spec, result, procs, say)
        time.sleep(FLUSH_S * 2 + 0.3)          # the echo files' last append; the last WS batch
        procs.update(system_processes(system.proc.pid))
        result.rss_end = rss_mb(procs)
        result.strategy_health = {n: dict(tap.health.get(f"strategy.{n}", {})) for n in names}
        result.ingestor_health = dict(tap.health.get("ingestor", {}))
        if spec.before_stop is not None:
            result.extra = spec.before_stop(system, {o: _endpoint(cmd, o) for o in
                                                     ("--bus-pub", "--bus-sub", "--query-endpoint")})
        mgr = tap.health.get("strategy_manager", {})
        result.restarts = {n: int((mgr.get("strategies", {}).get(n) or {}).get("restarts", 0)) for n in names}
    finally:
        tap.stop.set()
        ws.stop.set()
        try:
            system.terminate(timeout=15)
        except AssertionError as exc:
            result.failure = result.failure or f"run.py did not stop within 15 s: {str(exc).splitlines()[0]}"
        result.log_tail = system.output()[-3000:]
        system.close()
        tap.join(3)
        ws.join(3)

    result.bus_signals = list(tap.signals)
    result.ws_signals = list(ws.signals)
    result.ws_stats = {"frames": ws.frames, "bytes": ws.bytes, "snapshots": ws.snapshots,
                       "connected": ws.connected.is_set(), "error": ws.error}
    for n in names:
        result.arrivals[n] = read_samples(echo_dir, n, "ticks")
        result.emitted[n] = read_samples(echo_dir, n, "signals")
    _count_db(system.db, result)
    probe = probe_dir / PROBE_FILE
    if not probe.exists():
        if not spec.keep:
            shutil.rmtree(tmp, ignore_errors=True)
        raise RuntimeError(f"{probe} was not written: does scripts/ingestor.py support {PROBE_ENV}? "
                           f"run.py output:\n{result.log_tail}")
    result.recv = np.load(probe)
    _judge(result, names)
    if spec.keep:
        say(f"kept {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    return result


def _quote(a: str) -> str:
    return f"'{a}'" if any(c in a for c in " |") else a


def _wait(system: System, tap: BusTap, ws: WsTap, names: list[str], spec: RunSpec,
          result: RunResult, procs: dict[str, psutil.Process], say: Callable[[str], None]) -> None:
    """Poll (every 0.2 s) the health reports our bus tap collects until the replay is finished,
    DuckDB holds every tick and every strategy has counted every tick; stop early when run.py
    exits, when nothing moves for 20 s after the replay finished, or after ``spec.timeout_s``.
    Sets the CPU seconds each process used from the first tick on, over ``busy_s``."""
    state: dict[str, Any] = {"first": None, "cpu0": {}}
    try:
        _poll(system, tap, names, spec, result, procs, say, state)
    finally:
        if state["first"] is not None:
            cpu1 = cpu_seconds(procs)
            result.cpu_s = {k: round(v - state["cpu0"].get(k, 0.0), 2) for k, v in cpu1.items()}
            result.busy_s = time.monotonic() - state["first"]


def _poll(system: System, tap: BusTap, names: list[str], spec: RunSpec, result: RunResult,
          procs: dict[str, psutil.Process], say: Callable[[str], None], state: dict[str, Any]) -> None:
    start_deadline = time.monotonic() + spec.start_timeout_s
    last_progress, last_counts = time.monotonic(), None
    while True:
        time.sleep(0.2)
        if system.proc.poll() is not None:
            result.failure = f"run.py exited with code {system.proc.returncode}"
            return
        if not procs.get("ingestor") or not procs.get("recorder"):
            procs.update(system_processes(system.proc.pid))
        ing = tap.health.get("ingestor", {})
        total = ing.get("replay_total")
        published = ing.get("ticks_published") or 0
        now = time.monotonic()
        if state["first"] is None:
            if published:
                state["first"] = now
                procs.update(system_processes(system.proc.pid))
                procs["bench (this process)"] = psutil.Process()
                state["cpu0"] = cpu_seconds(procs)
                say(f"  replay of {total:,} ticks started")
            elif now > start_deadline:
                result.failure = f"no tick published {spec.start_timeout_s:.0f} s after start"
                return
            continue
        result.total = int(total or 0)
        if ing.get("rx_ns") != state.get("last_rx") and ing.get("last_flush_ms") is not None:
            state["last_rx"] = ing.get("rx_ns")
            result.flush_ms.append(float(ing["last_flush_ms"]))
        counts = {n: int(tap.health.get(f"strategy.{n}", {}).get("ticks", 0)) for n in names}
        written = int(ing.get("ticks_written") or 0)
        finished = ing.get("status") == "finished"
        if result.written_ns is None and result.total:
            # The ingestor's health report (about once a second, from its own thread) carries the
            # rows its DuckDB writer committed: 1 s resolution, but no extra work for the ingestor
            # (asking DuckDB through its query service would compete with the writer).
            if written >= result.total:
                result.written_ns = tap.health["ingestor"]["rx_ns"]
            else:
                result.written_before_ns = tap.health["ingestor"]["rx_ns"]
        if finished and all(c >= result.total for c in counts.values()) and result.strategies_done_ns is None:
            result.strategies_done_ns = max(tap.health[f"strategy.{n}"]["rx_ns"] for n in names)
        result.health_counts = counts
        if result.written_ns and result.strategies_done_ns:
            return
        progress = (published, written, tuple(counts.values()))
        if progress != last_counts:
            last_counts, last_progress = progress, now
        elif now - last_progress > 20:
            result.failure = (f"stalled: ingestor {ing.get('status')} published {published:,} written "
                              f"{written:,} of {result.total:,}; strategies {counts}")
            return
        if now - state["first"] > spec.timeout_s and (result.written_ns or now - state["first"] > max(
                spec.timeout_s, spec.db_timeout_s)):
            result.failure = (f"timed out after {spec.timeout_s:.0f} s: published {published:,} written "
                              f"{written:,} of {result.total:,}; strategies {counts}")
            return


def _count_db(db: Path, result: RunResult, wait_s: float = 20.0) -> None:
    """Read the replayed ticks' count back from DuckDB (read-only, after the stop; retried for up
    to ``wait_s`` while a process that is going away still holds the file)."""
    import duckdb
    deadline = time.monotonic() + wait_s
    while True:
        try:
            con = duckdb.connect(str(db), read_only=True)
            break
        except duckdb.Error as exc:
            if time.monotonic() >= deadline:
                result.failure = result.failure or f"DuckDB not readable: {str(exc).splitlines()[0]}"
                return
            time.sleep(0.5)
    try:
        rows, distinct, lo, hi = con.execute(
            "SELECT count(*), count(DISTINCT seq), min(seq), max(seq) FROM ticks WHERE source = 'replay'"
        ).fetchone()
    finally:
        con.close()
    result.db_rows, result.db_distinct_seq = int(rows), int(distinct)
    result.db_seq_range = (int(lo), int(hi)) if rows else None


def _judge(result: RunResult, names: list[str]) -> None:
    """Zero loss: the probe saw ``total`` ticks ``0..total-1``; each strategy's samples hold every
    seq exactly once; DuckDB holds ``total`` rows with ``total`` distinct seqs."""
    n = result.total
    problems = [result.failure] if result.failure else []
    recv = result.recv
    if recv is None or len(recv) != n or (n and not np.array_equal(np.sort(recv[:, 0]), np.arange(n))):
        problems.append(f"probe has {0 if recv is None else len(recv):,} stamps for {n:,} ticks")
    for name in names:
        a = result.arrivals.get(name)
        got = 0 if a is None else len(a)
        uniq = 0 if a is None else len(np.unique(a[:, 0]))
        if got != n or uniq != n:
            problems.append(f"{name} got {got:,} ticks ({uniq:,} distinct) of {n:,}")
    if result.db_rows != n or result.db_distinct_seq != n:
        problems.append(f"DuckDB holds {result.db_rows} rows ({result.db_distinct_seq} distinct seq) of {n:,}")
    if any(result.restarts.values()):
        problems.append(f"strategy restarts {result.restarts}")
    result.failure = "; ".join(p for p in problems if p)
    result.ok = not result.failure
