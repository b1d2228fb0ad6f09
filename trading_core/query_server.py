"""The research query service: read-only SQL answered by the process that owns the DuckDB file.

DuckDB lets one process open a database file for writing, and while it does no other process can
open it at all. So the ingestor, which owns the file, also answers queries: a
:class:`QueryServer` binds a ZeroMQ ROUTER socket on ``QUERY_ENDPOINT`` (default
``tcp://127.0.0.1:5557``, loopback only) and runs each query on a cursor of its own in a worker
thread, beside the writer thread's cursor. DuckDB releases the GIL while it executes, and its
MVCC gives each query a consistent snapshot of what the writer has committed so far, so a heavy
query neither blocks nor sees half of a tick batch (``benchmarks/bench_query.py`` measures the
writer's flush latency during one).

Wire protocol (version 1). The client sends ``[b"", request]`` from a DEALER (or REQ) socket;
``request`` is JSON::

    {"v": 1, "id": "any", "sql": "SELECT ...", "params": [..] | {..} | null,
     "timeout_s": 30, "max_rows": 1000000, "truncate": false, "db": "/abs/path.duckdb" | null}
    {"v": 1, "id": "any", "op": "ping"}

and gets ``[b"", header, body]``: ``header`` is JSON ``{"v":1, "id", "ok": true, "rows",
"truncated", "elapsed_ms", "timeout_s", "max_rows"}`` with ``body`` the result as an Arrow IPC
stream, or ``{"v":1, "id", "ok": false, "kind", "error"}`` with an empty ``body``; ``kind`` is
one of ``refused`` | ``timeout`` | ``too_large`` | ``sql`` | ``busy`` | ``error`` (see
:mod:`trading_core.query`), or ``wrong_db`` when the request names a ``db`` other than the one
served (answered at once, nothing runs). Every query reply also carries ``"db"``: the database file served,
so a client can tell it reached the system it meant. A ping answers ``{"ok": true, "pong":
true, "db": path, "pid", counters...}``.

Limits: a request's ``timeout_s`` / ``max_rows`` are clamped to the server's ceilings
(``QUERY_TIMEOUT_S`` / ``QUERY_MAX_ROWS``); the time limit counts from the request's arrival,
so time spent queued behind other queries counts too. At most ``workers`` queries run at once
and ``max_queue`` wait; beyond that a request is answered ``busy`` at once.
"""

from __future__ import annotations

import itertools
import logging
import os
import queue
import threading
import time
from typing import Any, Callable

import duckdb
import msgspec
import zmq

from trading_core import query as q

log = logging.getLogger("query")

PROTOCOL_VERSION = 1
_json_encode = msgspec.json.Encoder().encode
_json_decode = msgspec.json.decode

BeforeQuery = Callable[[duckdb.DuckDBPyConnection, q.Checked], None]


class QueryServer:
    """Answers research queries on ``endpoint`` from ``workers`` threads, each with its own cursor
    of ``con`` (the owner's connection).

    ``ceiling``: the largest limits a request may ask for. ``before_query(cursor, checked)`` runs
    in the worker before an accepted query (e.g. refresh a derived table the query reads; it may
    write). Call :meth:`start` (raises ``zmq.ZMQError`` if the endpoint cannot be bound) and
    :meth:`stop`, which cancels running queries and closes everything, before closing ``con``.
    """

    def __init__(self, con: duckdb.DuckDBPyConnection, endpoint: str, ceiling: q.Limits = q.Limits(),
                 workers: int = 2, max_queue: int = 16, before_query: BeforeQuery | None = None,
                 db_label: str = ""):
        self.endpoint = endpoint
        self.ceiling = ceiling.validate()
        self.before_query = before_query
        self.db_label = db_label
        self.max_queue = max_queue
        self._ctx = zmq.Context()
        self._router: zmq.Socket | None = None
        self._results_addr = f"inproc://query-results-{id(self)}"
        self._cursors = [con.cursor() for _ in range(max(1, workers))]
        self._requests: queue.Queue = queue.Queue()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._pending = 0
        self._lock = threading.Lock()
        self.served = 0
        self.failed = 0
        self.refused = 0
        self.timeouts = 0
        self.running = 0
        self.last_ms = 0.0
        self.max_ms = 0.0

    # --- lifecycle -----------------------------------------------------------------------
    def start(self) -> None:
        """Bind the endpoint and start the socket thread and the workers."""
        router = self._ctx.socket(zmq.ROUTER)
        router.setsockopt(zmq.LINGER, 0)
        router.setsockopt(zmq.ROUTER_MANDATORY, 0)
        try:
            router.bind(self.endpoint)
        except zmq.ZMQError:
            router.close(0)
            raise
        self._router = router
        results = self._ctx.socket(zmq.PULL)
        results.bind(self._results_addr)
        self._threads.append(threading.Thread(target=self._serve, args=(router, results),
                                              name="query-router", daemon=True))
        for i, cur in enumerate(self._cursors):
            self._threads.append(threading.Thread(target=self._work, args=(cur,),
                                                  name=f"query-worker-{i}", daemon=True))
        for t in self._threads:
            t.start()
        log.info("query service on %s (%d workers, ceilings %g s, %d rows)", self.endpoint,
                 len(self._cursors), self.ceiling.timeout_s, self.ceiling.max_rows)

    def stop(self, timeout_s: float = 2.0) -> None:
        """Cancel running queries, stop the threads (waiting up to ``timeout_s``) and close the
        cursors and sockets. Safe to call twice."""
        if self._stop.is_set():
            return
        self._stop.set()
        for cur in self._cursors:
            try:
                cur.interrupt()
            except Exception:  # noqa: BLE001 - nothing running
                pass
        for _ in self._cursors:
            self._requests.put(None)
        deadline = time.monotonic() + timeout_s
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        for cur in self._cursors:
            try:
                cur.close()
            except Exception:  # noqa: BLE001
                pass
        self._ctx.destroy(0)

    def stats(self) -> dict[str, Any]:
        """Counters for the owner's health report."""
        return {"endpoint": self.endpoint, "served": self.served, "failed": self.failed,
                "refused": self.refused, "timeouts": self.timeouts, "running": self.running,
                "queued": self._requests.qsize(), "last_ms": round(self.last_ms, 1),
                "max_ms": round(self.max_ms, 1)}

    # --- the socket thread ---------------------------------------------------------------
    def _serve(self, router: zmq.Socket, results: zmq.Socket) -> None:
        poller = zmq.Poller()
        poller.register(router, zmq.POLLIN)
        poller.register(results, zmq.POLLIN)
        try:
            while not self._stop.is_set():
                try:
                    ready = dict(poller.poll(100))
                except zmq.ZMQError:
                    return
                if results in ready:
                    while True:
                        try:
                            frames = results.recv_multipart(zmq.NOBLOCK, copy=False)
                        except zmq.Again:
                            break
                        self._pending -= 1
                        router.send_multipart(frames, copy=False)
                if router in ready:
                    while True:
                        try:
                            frames = router.recv_multipart(zmq.NOBLOCK)
                        except zmq.Again:
                            break
                        self._accept(router, frames)
        except zmq.ContextTerminated:
            pass
        finally:
            router.close(0)
            results.close(0)

    def _accept(self, router: zmq.Socket, frames: list[bytes]) -> None:
        arrived = time.monotonic()
        ident, envelope, body = frames[0], frames[1:-1], frames[-1]
        try:
            req = _json_decode(body)
            if not isinstance(req, dict):
                raise ValueError("request is not a JSON object")
        except (ValueError, msgspec.DecodeError) as exc:
            self._reply_now(router, ident, envelope, {"ok": False, "kind": "error",
                                                      "error": f"bad request: {exc}"})
            return
        rid = req.get("id")
        if req.get("op") == "ping":
            self._reply_now(router, ident, envelope, {"id": rid, "ok": True, "pong": True,
                                                      "db": self.db_label, "pid": os.getpid(),
                                                      **self.stats()})
            return
        want = req.get("db")
        if want and self.db_label and os.path.realpath(str(want)) != os.path.realpath(self.db_label):
            self._reply_now(router, ident, envelope, {
                "id": rid, "ok": False, "kind": "wrong_db", "db": self.db_label,
                "error": f"the system answering on {self.endpoint} records {self.db_label}, not {want}"})
            return
        if self._pending >= len(self._cursors) + self.max_queue:
            self._reply_now(router, ident, envelope, {
                "id": rid, "ok": False, "kind": "busy",
                "error": f"query service busy: {self._pending} queries running or queued; retry"})
            return
        self._pending += 1
        self._requests.put((ident, envelope, req, arrived))

    def _reply_now(self, router: zmq.Socket, ident: bytes, envelope: list[bytes], header: dict) -> None:
        header.setdefault("v", PROTOCOL_VERSION)
        router.send_multipart([ident, *envelope, _json_encode(header), b""])

    # --- workers ---------------------------------------------------------------------------
    def _work(self, cur: duckdb.DuckDBPyConnection) -> None:
        out = self._ctx.socket(zmq.PUSH)
        out.setsockopt(zmq.LINGER, 0)
        out.connect(self._results_addr)
        try:
            while True:
                item = self._requests.get()
                if item is None or self._stop.is_set():
                    return
                ident, envelope, req, arrived = item
                header, body = self._execute(cur, req, arrived)
                header["id"] = req.get("id")
                header["v"] = PROTOCOL_VERSION
                header["db"] = self.db_label
                try:
                    out.send_multipart([ident, *envelope, _json_encode(header), body], copy=False)
                except zmq.ZMQError:
                    return
        finally:
            out.close(0)

    def _execute(self, cur: duckdb.DuckDBPyConnection, req: dict, arrived: float) -> tuple[dict, Any]:
        with self._lock:
            self.running += 1
        started = time.perf_counter()
        try:
            limits = q.Limits(
                timeout_s=float(req.get("timeout_s") or self.ceiling.timeout_s),
                max_rows=int(req.get("max_rows") or self.ceiling.max_rows),
                truncate=bool(req.get("truncate", False))).validate().clamp(self.ceiling)
            waited = time.monotonic() - arrived
            if waited >= limits.timeout_s:
                raise q.QueryTimeout(f"query waited {waited:.1f} s in the queue, past its time "
                                     f"limit of {limits.timeout_s:g} s")
            sql = req.get("sql")
            if not isinstance(sql, str):
                raise q.QueryRefused("request has no 'sql' string")
            checked = q.check_sql(cur, sql)
            if self.before_query is not None:
                self.before_query(cur, checked)
            run_limits = q.Limits(limits.timeout_s - (time.monotonic() - arrived), limits.max_rows,
                                  limits.truncate)
            try:
                result = q.run_bounded(cur, sql, req.get("params"), run_limits, checked=checked)
            except q.QueryTimeout:
                raise q.QueryTimeout(f"query cancelled after its time limit of {limits.timeout_s:g} s") from None
            body = q.to_ipc(result.table)
            header = {"ok": True, "rows": result.table.num_rows, "truncated": result.truncated,
                      "elapsed_ms": round(result.elapsed_ms, 2), "timeout_s": limits.timeout_s,
                      "max_rows": limits.max_rows}
            self.served += 1
            return header, body
        except Exception as exc:  # noqa: BLE001 - every failure becomes a reply, never a dead worker
            info = q.describe(exc) if isinstance(exc, q.QueryError) else (
                {"kind": "error", "error": str(exc)} if isinstance(exc, ValueError) else q.describe(exc))
            if info["kind"] == "refused":
                self.refused += 1
            elif info["kind"] == "timeout":
                self.timeouts += 1
            else:
                self.failed += 1
            if not isinstance(exc, (q.QueryError, ValueError)):
                log.exception("query failed unexpectedly")
            return {"ok": False, **info}, b""
        finally:
            self.last_ms = (time.perf_counter() - started) * 1000
            self.max_ms = max(self.max_ms, self.last_ms)
            with self._lock:
                self.running -= 1


_ids = itertools.count(1)


def next_id() -> str:
    """A request id unique within this process."""
    return f"{os.getpid()}-{next(_ids)}"
