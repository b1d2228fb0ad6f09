"""The one entry point for research SQL, whether or not the system runs.

>>> from trading_core.query_client import query
>>> query("SELECT instrument_key, count(*) AS ticks FROM ticks GROUP BY ALL")   # polars DataFrame

While ``python3 run.py`` records, the ingestor holds the DuckDB file (no other process can open
it) and answers queries on ``QUERY_ENDPOINT`` (:mod:`trading_core.query_server`): the query is
sent there. When nothing listens on that endpoint, the file is opened read-only here (with
DuckDB's external access switched off), queried and closed at once, so a system starting a
moment later finds it free. If the file is locked but no server answers (the ingestor is
starting up), the client keeps trying both until the time limit. A service that answers but
records another file (a second system on the same endpoint) is not used: the client reads its
own file if it is free, else says which system holds what.

Either way the same guard and limits apply (:mod:`trading_core.query`): one read-only statement,
``timeout_s`` seconds, ``max_rows`` rows. Results are identical: the views and table macros of
:mod:`trading_core.views` exist in both (installed as temporary objects on an older file), and
the ``sessions`` table is brought up to date first (by the server, or in memory here).

Safe to call from any thread and any process (strategy processes, the API server, notebooks);
each call uses its own socket or connection.
"""

from __future__ import annotations

import re
import socket
import time
from pathlib import Path
from urllib.parse import urlparse

import duckdb
import msgspec
import polars as pl
import zmq

from trading_core import query as q, settings as settings_mod
from trading_core.query import (QueryError, QueryRefused, QuerySQLError, QueryTimeout,  # noqa: F401
                                QueryTooLarge, QueryUnavailable, Result)
from trading_core.query_server import PROTOCOL_VERSION, next_id

TRANSFER_SLACK_S = 10.0      # beyond the query's own time limit, for queueing and sending the result
LOCK_RETRY_S = 0.2


def query(sql: str, params: q.Params = None, *, timeout_s: float | None = None,
          max_rows: int | None = None, settings: settings_mod.Settings | None = None,
          any_db: bool = False) -> pl.DataFrame:
    """Run one read-only SQL statement on the recorded market and return a polars DataFrame.

    ``params``: values for ``?`` / ``$1`` (a list) or ``$name`` (a dict); str, int, float, bool
    or None. ``timeout_s`` (default ``QUERY_TIMEOUT_S``, 30) and ``max_rows`` (default
    ``QUERY_MAX_ROWS``, 1,000,000) are capped by the server's settings. ``settings`` default
    :func:`trading_core.settings.load` (so ``AMT_QUERY_ENDPOINT`` / ``AMT_DUCKDB_PATH`` apply).
    The running system's service must be serving ``settings.duckdb_path`` (else
    :class:`QueryUnavailable` says which file it serves); ``any_db=True`` accepts whichever.

    Raises :class:`QueryRefused` (not a read query), :class:`QueryTimeout`,
    :class:`QueryTooLarge` (more than ``max_rows`` rows: nothing is silently cut),
    :class:`QuerySQLError` (DuckDB's message), :class:`QueryUnavailable` (no server and no file);
    all are :class:`QueryError`. ``ValueError`` for bad ``params`` or limits.
    """
    return query_result(sql, params, timeout_s=timeout_s, max_rows=max_rows,
                        settings=settings, any_db=any_db).frame()


def query_result(sql: str, params: q.Params = None, *, timeout_s: float | None = None,
                 max_rows: int | None = None, truncate: bool = False,
                 settings: settings_mod.Settings | None = None, via: str = "auto",
                 any_db: bool = False) -> Result:
    """As :func:`query`, returning a :class:`trading_core.query.Result` (Arrow table, elapsed ms,
    ``via`` = ``server`` | ``file``). ``truncate=True`` returns the first ``max_rows`` rows with
    ``truncated=True`` instead of raising :class:`QueryTooLarge`. ``via``: ``auto`` (server if it
    listens, else the file), ``server`` or ``file`` (force one; for tests and diagnosis).
    """
    settings = settings or settings_mod.load()
    limits = q.Limits(timeout_s=float(timeout_s) if timeout_s is not None else settings.query_timeout_s,
                      max_rows=int(max_rows) if max_rows is not None else settings.query_max_rows,
                      truncate=truncate).validate()
    params = q.check_params(params)
    if via not in ("auto", "server", "file"):
        raise ValueError(f"via must be auto, server or file, got {via!r}")
    expect_db = None if any_db else settings.duckdb_path
    if via == "server":
        try:
            return _via_server(settings.query_endpoint, sql, params, limits, expect_db)
        except _WrongDb as exc:
            raise QueryUnavailable(str(exc)) from None
    if via == "file":
        return _via_file(settings.duckdb_path, sql, params, limits)
    deadline = time.monotonic() + limits.timeout_s
    while True:
        wrong_db = None
        if server_listening(settings.query_endpoint):
            try:
                return _via_server(settings.query_endpoint, sql, params, limits, expect_db)
            except _WrongDb as exc:          # another system: our file may well be free
                wrong_db = exc
        try:
            return _via_file(settings.duckdb_path, sql, params, limits)
        except _Locked as exc:
            if wrong_db is not None:
                raise QueryUnavailable(f"{wrong_db}; and {settings.duckdb_path} is held by {exc.holder}; "
                                       f"set QUERY_ENDPOINT / --query-endpoint to the system recording "
                                       f"it") from None
            if time.monotonic() >= deadline:
                raise QueryUnavailable(
                    f"{settings.duckdb_path} is held by {exc.holder} and no query service answers on "
                    f"{settings.query_endpoint}; is the ingestor starting, or running an older "
                    f"version? (check QUERY_ENDPOINT / AMT_QUERY_ENDPOINT)") from None
            time.sleep(LOCK_RETRY_S)


def server_listening(endpoint: str) -> bool:
    """True when something accepts connections on ``endpoint`` (a plain TCP connect, or an
    existing socket file for ``ipc://``): the query service of a running system."""
    url = urlparse(endpoint)
    if url.scheme == "ipc":
        return Path(endpoint[len("ipc://"):]).exists()
    try:
        with socket.create_connection((url.hostname or "127.0.0.1", url.port or 0), timeout=0.5):
            return True
    except OSError:
        return False


def ping(settings: settings_mod.Settings | None = None, timeout_s: float = 2.0) -> dict | None:
    """The query service's answer to a ping (``{"pong": true, "db", "pid", counters...}``), or
    ``None`` when none answers within ``timeout_s``."""
    settings = settings or settings_mod.load()
    if not server_listening(settings.query_endpoint):
        return None
    try:
        header, _ = _exchange(settings.query_endpoint, {"op": "ping"}, timeout_s)
    except QueryUnavailable:
        return None
    return header


# --- via the running system's query service ---------------------------------------------------


def _exchange(endpoint: str, request: dict, wait_s: float) -> tuple[dict, zmq.Frame | bytes]:
    request = {"v": PROTOCOL_VERSION, "id": next_id(), **request}
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVHWM, 0)
    try:
        sock.connect(endpoint)
        sock.send_multipart([b"", msgspec.json.encode(request)])
        deadline = time.monotonic() + wait_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not sock.poll(int(left * 1000) + 1):
                raise QueryUnavailable(f"no answer from the query service on {endpoint} within "
                                       f"{wait_s:g} s")
            frames = sock.recv_multipart(copy=False)
            if len(frames) < 3:
                continue
            header = msgspec.json.decode(frames[-2].bytes)
            if header.get("id") not in (None, request["id"]):
                continue                              # a stale answer; not ours
            return header, frames[-1]
    finally:
        sock.close(0)


def _via_server(endpoint: str, sql: str, params: q.Params, limits: q.Limits,
                expect_db: Path | None = None) -> Result:
    header, body = _exchange(endpoint, {"sql": sql, "params": params, "timeout_s": limits.timeout_s,
                                        "max_rows": limits.max_rows, "truncate": limits.truncate,
                                        "db": str(Path(expect_db).resolve()) if expect_db else None},
                             limits.timeout_s + TRANSFER_SLACK_S)
    if header.get("kind") == "wrong_db":
        raise _WrongDb(str(header.get("error")))
    if not header.get("ok"):
        raise q.error_from(str(header.get("kind", "error")), str(header.get("error", "query failed")))
    table = q.from_ipc(body.buffer if hasattr(body, "buffer") else body)
    return Result(table, bool(header.get("truncated")), float(header.get("elapsed_ms", 0.0)), "server")


# --- on the file itself (system stopped) ------------------------------------------------------


class _WrongDb(Exception):
    """The service answering serves another database file."""


class _Locked(Exception):
    def __init__(self, holder: str):
        super().__init__(holder)
        self.holder = holder


def open_read_only(path: Path) -> duckdb.DuckDBPyConnection:
    """Open the database file read-only with external access off, and make sure the research
    views exist (as temporary objects if the file predates them).

    Raises :class:`QueryUnavailable` if there is no such file; ``_Locked`` if a writer holds it.
    """
    if not Path(path).exists():
        raise QueryUnavailable(f"no database at {path}: nothing recorded yet (start python3 run.py), "
                               f"or point DUCKDB_PATH / --db at the file")
    try:
        con = duckdb.connect(str(path), read_only=True, config={"enable_external_access": False})
    except duckdb.IOException as exc:
        text = str(exc)
        if "lock" not in text.lower():
            raise QueryUnavailable(f"cannot open {path}: {' '.join(text.split())}") from None
        pid = re.search(r"PID (\d+)", text)
        raise _Locked(f"PID {pid.group(1)}" if pid else "another process") from None
    try:
        from trading_core import views
        views.ensure_temp(con)
    except Exception:
        con.close()
        raise
    return con


def _via_file(path: Path, sql: str, params: q.Params, limits: q.Limits) -> Result:
    started = time.perf_counter()
    con = open_read_only(path)
    try:
        from trading_core import views
        checked = q.check_sql(con, sql)
        views.before_query_read_only(con, checked)
        result = q.run_bounded(con, sql, params, limits, checked=checked)
    finally:
        con.close()
    result.via = "file"
    result.elapsed_ms = (time.perf_counter() - started) * 1000
    return result


def describe_source(settings: settings_mod.Settings | None = None) -> str:
    """One line saying where a query would run now (for the CLI's ``--verbose``)."""
    settings = settings or settings_mod.load()
    if server_listening(settings.query_endpoint):
        return f"query service on {settings.query_endpoint} (the running system)"
    return f"{settings.duckdb_path} opened read-only (system not running)"


__all__ = ["query", "query_result", "ping", "server_listening", "open_read_only", "Result",
           "QueryError", "QueryRefused", "QueryTimeout", "QueryTooLarge", "QuerySQLError",
           "QueryUnavailable"]
