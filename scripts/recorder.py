"""The recorder: the ingestor's second process, which owns the DuckDB file.

It inserts the ticks and candles the ingestor hands over (Arrow batches through a pipe), records
the audit trail (signals, risk decisions, orders, fills, positions) and serves research SQL on
``QUERY_ENDPOINT``. The ingestor starts it (``RecorderLink``) as it starts, lets it open the file
once its own start-up reads are done (where a replay resumes, the forming bar's ticks) and stops
it when it stops; the supervisor does not watch it (a recorder that dies takes the ingestor down
with it, and the supervisor restarts that).

Why a process of its own: pyzmq releases the GIL around every send, so in one process each tick
the feed thread published let the DuckDB writer, the recorders or the query service take the GIL
for up to the 5 ms switch interval, and that was most of the tick -> strategy latency tail at
10,000 ticks/s (benchmarks/RESULTS.md, issue 9). The feed process now runs one busy Python
thread.

Wire (ingestor -> recorder, ``multiprocessing.connection`` framing on an OS pipe): first
``b"O"`` (open the database: the ingestor has closed its own connection), then any of: a header
message, ``b"B"`` + ``<qBB`` (the run's ``last_seq``, has ticks, has candles) followed by one
Arrow IPC stream per table present; ``b"C"`` a DuckDB ``CHECKPOINT`` after the batches before
it; ``b"F"`` the replay finished (``feed_runs.finished``); ``b"Q"`` or end of file: write what
is queued, stop, exit. Back (recorder -> ingestor): JSON stats, on change and at most four times
a second, the first with ``"ready": true`` once the recorders are subscribed, the last with
``"closed": true``. The pipe blocks when the recorder is behind, which holds the feed back
rather than dropping ticks, as the in-process writer's bounded queue did.

Run by the ingestor only: ``python3 scripts/recorder.py --in FD --out FD --run-id ID --source
FEED``. It ignores SIGINT and SIGTERM (Ctrl-C reaches the whole process group): only the
ingestor closing the pipe, or dying, stops it, so nothing handed over is lost. Logs to
``logs/recorder.log``.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import signal
import struct
import subprocess
import sys
import threading
import time
from multiprocessing.connection import Connection
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import orjson  # noqa: E402
import psutil  # noqa: E402
import pyarrow as pa  # noqa: E402

from trading_core import audit, logs, persistence, query as query_mod, query_server  # noqa: E402
from trading_core import settings as settings_mod, views  # noqa: E402
from scripts import scheduling  # noqa: E402

SERVICE = "recorder"
SCRIPT = Path(__file__).resolve()
_BATCH = struct.Struct("<qBB")
STATS_EVERY_S = 0.25
PIPE_BYTES = 1 << 20
"""Capacity asked for the ingestor -> recorder pipe (Linux ``F_SETPIPE_SZ``; 1 MiB is the default
``/proc/sys/fs/pipe-max-size``). At the default 64 KiB a 100 ms hand-over at 10,000 ticks/s
(about 90 KB of Arrow) did not fit, so each one blocked the feed until the recorder (then at nice 10)
had read it: 0.4 ms at the median and up to 15-70 ms, the largest part of how late the feed
sent ticks against the replay's schedule (benchmarks/RESULTS.md, issue 9). 1 MiB holds about a second of hand-overs at that rate."""


class RecorderError(RuntimeError):
    """The recorder process failed: it did not start, it exited, or DuckDB refused a batch."""


def connect_waiting(path: Path, wait_s: float = 10.0):
    """``persistence.connect`` with the views and the audit trail installed, retrying for up to
    ``wait_s`` while the file is locked: a research query that opened it read-only a moment
    before the system started holds it briefly. Raises :class:`persistence.DatabaseLockedError`."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            con = persistence.connect(path)
            break
        except persistence.DatabaseLockedError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.2)
    views.install(con)         # with the audit trail's events (trading_core/audit.py)
    return con


def start_query_server(con, settings: settings_mod.Settings, log) -> query_server.QueryServer | None:
    """Serve research SQL on ``QUERY_ENDPOINT`` (see trading_core/query_server.py). Recording
    matters more than research: if the endpoint cannot be bound, log it and go on without."""
    server = query_server.QueryServer(
        con, settings.query_endpoint,
        query_mod.Limits(settings.query_timeout_s, settings.query_max_rows),
        before_query=views.before_query, db_label=str(settings.duckdb_path))
    try:
        server.start()
    except Exception as exc:  # noqa: BLE001 - zmq.ZMQError (address in use), bad endpoint
        log.error("query service not started on %s (%s); research queries will fail until the "
                  "ingestor restarts", settings.query_endpoint, exc)
        server.stop()
        return None
    return server


def _widen_pipe(fd: int, size: int = PIPE_BYTES) -> int:
    """Ask for a pipe buffer of ``size`` bytes on ``fd``; returns the capacity it has (bytes).
    Where the system refuses (not Linux, or ``size`` above ``/proc/sys/fs/pipe-max-size`` for a
    user without ``CAP_SYS_RESOURCE``) the pipe keeps its capacity, said in one warning line:
    recording still works, but hand-overs larger than it make the feed wait."""
    set_size, get_size = getattr(fcntl, "F_SETPIPE_SZ", None), getattr(fcntl, "F_GETPIPE_SZ", None)
    if set_size is None:
        return 0
    try:
        return fcntl.fcntl(fd, set_size, size)
    except OSError as exc:
        have = fcntl.fcntl(fd, get_size)
        persistence.log.warning("recorder pipe kept at %d bytes (asked for %d: %s); large "
                                "hand-overs will hold the feed back", have, size, exc.strerror)
        return have


def _ipc(table: pa.Table) -> pa.Buffer:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as out:
        out.write_table(table)
    return sink.getvalue()


def _table(payload: bytes) -> pa.Table:
    return pa.ipc.open_stream(pa.py_buffer(payload)).read_all()


class RecorderLink(persistence.TickBatcher):
    """The ingestor's handle on its recorder process: a :class:`persistence.TickBatcher` whose
    batches go down a pipe to ``scripts/recorder.py``, with the stats a :class:`BatchWriter`
    has (``rows_written``, ``batches_written``, ``last_flush_ms``, ``checkpoints``,
    ``checkpoints_skipped``, ``error``), ``research`` (audit trail, query
    service) and ``process`` (its pid, RSS in bytes, CPU %) as of the last :meth:`poll_stats`.

    Starts the process at once (its imports overlap the ingestor's start-up, e.g. parsing a
    replay); :meth:`open`, once the ingestor has closed its own connection, lets it open the
    database and waits for it to subscribe its recorders.
    A hand-over raises :class:`RecorderError` once the recorder has reported a failed insert or
    has gone (the ingestor then exits and the supervisor restarts both; a replay resumes after
    the last committed tick).
    """

    def __init__(self, run_id: str, source: str, flush_interval_s: float = 0.1,
                 max_rows: int = 50_000):
        super().__init__(source, flush_interval_s, max_rows)
        self.rows_written = 0
        self.batches_written = 0
        self.checkpoints = 0
        self.checkpoints_skipped = 0
        self.last_flush_ms = 0.0
        self.error: str | None = None
        self.research: dict = {}
        self.process: dict = {}                   # the recorder's pid, rss_bytes, cpu_percent
        self._lock = threading.Lock()            # the feed thread's close() and health's polls
        self._closed = False
        to_child_r, to_child_w = os.pipe()
        _widen_pipe(to_child_w)
        from_child_r, from_child_w = os.pipe()
        try:
            self.proc = subprocess.Popen(
                [sys.executable, str(SCRIPT), "--in", str(to_child_r), "--out", str(from_child_w),
                 "--run-id", run_id, "--source", source], pass_fds=(to_child_r, from_child_w))
        finally:
            os.close(to_child_r)
            os.close(from_child_w)
        self._tx = Connection(to_child_w, readable=False)
        self._rx = Connection(from_child_r, writable=False)

    def open(self, ready_timeout_s: float = 60.0) -> None:
        """Let the recorder open the database; wait (up to ``ready_timeout_s``) until it is
        recording. Raises :class:`RecorderError` if it exits first or is not ready in time."""
        self._send(b"O")
        deadline = time.monotonic() + ready_timeout_s
        while not self.poll_stats().get("ready"):
            if self.proc.poll() is not None:
                raise RecorderError(f"recorder process exited with code {self.proc.returncode} "
                                    f"before it was ready (see recorder.log)")
            if time.monotonic() > deadline:
                self.proc.kill()
                raise RecorderError(f"recorder process not ready after {ready_timeout_s:.0f} s "
                                    f"(see recorder.log)")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _deliver(self, ticks: pa.Table | None, candles: pa.Table | None, last_seq: int) -> None:
        if self.error is not None:
            raise RecorderError(f"DuckDB recorder failed: {self.error}")
        self._send(b"B" + _BATCH.pack(last_seq, ticks is not None, candles is not None),
                   *(_ipc(t) for t in (ticks, candles) if t is not None))

    def maybe_handover(self) -> None:
        """As :meth:`persistence.TickBatcher.maybe_handover`; raises :class:`RecorderError`
        once the recorder is gone or failed, even with nothing to hand over (a quiet feed)."""
        if self.error is not None:
            raise RecorderError(f"DuckDB recorder failed: {self.error}")
        super().maybe_handover()

    def checkpoint(self) -> None:
        """Hand over what is buffered, then have the recorder run DuckDB's ``CHECKPOINT`` after
        it (see :meth:`persistence.BatchWriter.checkpoint`)."""
        self.handover()
        self._send(b"C")

    def finish_run(self) -> None:
        """Mark the run finished in ``feed_runs`` (a replay that reached its end), after the
        batches handed over before."""
        self.handover()
        self._send(b"F")

    def _send(self, *parts) -> None:
        try:
            for part in parts:
                self._tx.send_bytes(part)
        except OSError as exc:                    # BrokenPipeError: the recorder is gone
            code = self.proc.poll()
            raise RecorderError(f"recorder process (pid {self.proc.pid}) is gone"
                                f"{f' (exit code {code})' if code is not None else ''}: {exc}") from None

    def poll_stats(self, wait_s: float = 0.1) -> dict:
        """Read the recorder's latest stats (waiting up to ``wait_s`` for the first); returns
        the last one read, ``{}`` if none came. Safe from any thread."""
        latest: dict = {}
        with self._lock:
            try:
                if not self._rx.closed and self._rx.poll(wait_s):
                    while True:
                        latest = orjson.loads(self._rx.recv_bytes())
                        if not self._rx.poll(0):
                            break
            except (EOFError, OSError):
                if not self._closed and self.error is None:
                    self.error = f"recorder process (pid {self.proc.pid}) exited"
                self._rx.close()
        if latest:
            for name in persistence.WRITER_STATS:
                setattr(self, name, latest.get(name, getattr(self, name)))
            self.research = latest.get("research", self.research)
            self.process = latest.get("process", self.process)
            if latest.get("error"):
                self.error = latest["error"]
        return latest

    def close(self, timeout_s: float = 30.0) -> None:
        """Hand over what is buffered, tell the recorder to write it and stop, and wait for it
        (up to ``timeout_s``). Never raises: the final counts are whatever it last reported."""
        try:
            self.handover()
            self._send(b"Q")
        except RecorderError as exc:
            persistence.log.error("recorder: last batch not handed over: %s", exc)
        self._tx.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not self._rx.closed:
            if self.poll_stats(0.2).get("closed"):
                break
        self._closed = True
        try:
            self.proc.wait(max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            persistence.log.error("recorder (pid %d) did not stop in %.0f s; killing it",
                                  self.proc.pid, timeout_s)
            self.proc.kill()
        if not self._rx.closed:
            self._rx.close()


# --------------------------------------------------------------------------- the process
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--in", dest="fd_in", type=int, required=True)
    p.add_argument("--out", dest="fd_out", type=int, required=True)
    p.add_argument("--run-id", required=True)
    p.add_argument("--source", required=True)
    args = p.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    rx, tx = Connection(args.fd_in, writable=False), Connection(args.fd_out, readable=False)
    settings = settings_mod.load()
    log = logs.setup(SERVICE, settings.log_dir, [settings.access_token])
    scheduling.use_background_priority(log)     # before DuckDB starts its threads
    try:
        if rx.recv_bytes() != b"O":                 # the ingestor's start-up is done with the file
            log.error("recorder: the ingestor sent something before opening")
            return 2
    except EOFError:                                # the ingestor stopped during its start-up
        return 0
    try:
        con = connect_waiting(settings.duckdb_path)
    except persistence.DatabaseLockedError as exc:
        log.error("recorder: %s", exc)
        return 2
    writer = persistence.BatchWriter(con, args.run_id, args.source)
    queries = start_query_server(con, settings, log)
    trail = audit.AuditRecorder(con, settings.bus_pub, settings.bus_sub, args.source, args.run_id)
    if not trail.start():
        log.warning("audit recorder not subscribed after 10 s; early events may be missed")
    failure: str | None = None
    me = psutil.Process()
    me.cpu_percent()

    def stats(**flags) -> dict:
        return {"process": {"pid": me.pid, "rss_bytes": me.memory_info().rss,
                            "cpu_percent": me.cpu_percent()},
                **{name: getattr(writer, name) for name in persistence.WRITER_STATS},
                "error": failure or (str(writer.error) if writer.error else None),
                "research": {**trail.stats(),
                             "query": queries.stats() if queries else
                             {"endpoint": settings.query_endpoint, "status": "unavailable"}},
                **flags}

    def report(payload: dict) -> None:
        try:
            tx.send_bytes(orjson.dumps(payload))
        except OSError:                             # the ingestor is gone; its EOF comes next
            pass

    report(stats(ready=True))
    log.info("recording run %s (%s) to %s", args.run_id, args.source, settings.duckdb_path)
    sent, sent_at = None, 0.0
    try:
        while True:
            if rx.poll(STATS_EVERY_S):
                try:
                    head = rx.recv_bytes()
                except EOFError:
                    break
                kind = head[:1]
                if kind == b"B":
                    last_seq, has_ticks, has_candles = _BATCH.unpack_from(head, 1)
                    ticks = _table(rx.recv_bytes()) if has_ticks else None
                    candles = _table(rx.recv_bytes()) if has_candles else None
                    if failure is None:
                        try:
                            writer.submit(ticks, candles, last_seq)
                        except RuntimeError as exc:  # an earlier insert failed: the run stops here
                            failure = str(exc)
                elif kind == b"C":
                    writer.checkpoint()
                elif kind == b"F":
                    persistence.finish_run(con, args.run_id)
                elif kind == b"Q":
                    break
            now = time.monotonic()
            if now - sent_at >= STATS_EVERY_S and (current := stats()) != sent:
                report(current)
                sent, sent_at = current, now
    finally:
        if queries:
            queries.stop()       # cancels a running research query first: the flush matters more
        writer.close()
        trail.stop()
        report(stats(closed=True))
        con.close()
        log.info("stopped: %d ticks written to %s", writer.rows_written, settings.duckdb_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
