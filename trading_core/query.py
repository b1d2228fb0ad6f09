"""Read-only research SQL: the guard that decides which statements may run, and the bounded
runner (time limit, row limit, read-only transaction) shared by the ingestor's query server and
the client's own read-only connection.

What may run (decided by DuckDB's own parser, not by a regular expression):

- exactly one statement per request (a trailing ``;`` is fine);
- ``SELECT`` in all its forms: ``WITH … SELECT``, ``FROM t``, ``VALUES``, ``UNION``,
  ``DESCRIBE``, ``SHOW``, ``SUMMARIZE``, ``UNPIVOT`` (``PIVOT`` is refused: DuckDB runs it as
  several statements; write ``sum(x) FILTER (WHERE …)`` columns instead);
- ``EXPLAIN [ANALYZE]`` of such a ``SELECT``;
- the read-only ``PRAGMA`` s of :data:`SAFE_PRAGMAS` (``PRAGMA x = y`` is a ``SET`` and refused).

Everything else is refused with :class:`QueryRefused`: ``INSERT``/``UPDATE``/``DELETE``/
``MERGE``/``CREATE``/``DROP``/``ALTER``, ``COPY``, ``ATTACH``/``DETACH``/``USE``, ``INSTALL``/
``LOAD``, ``SET``/``RESET``, ``CALL``, ``CHECKPOINT``, ``VACUUM``/``ANALYZE``, ``EXPORT``/
``IMPORT``, transactions, ``PREPARE``/``EXECUTE``.

Inside an allowed ``SELECT`` the statement's syntax tree (``json_serialize_sql``) is walked:

- a table function must be in :data:`SAFE_TABLE_FUNCTIONS` or be a table macro installed in the
  database (``candles(...)``); so ``read_csv``, ``read_text``, ``read_parquet``, ``glob``,
  ``query``, ``checkpoint``, ``enable_logging``… are refused: research reads the recorded market,
  not the machine's files (export to Parquet with ``run.py export`` and read that with any tool);
- a table name must be a CTE in scope or a table/view of the database; DuckDB would otherwise
  treat ``FROM 'file.csv'`` or a Python variable name as a *replacement scan*;
- scalar functions with side effects (:data:`REFUSED_FUNCTIONS`: ``nextval``, ``setval``,
  ``write_log``) are refused.

And each statement runs inside ``BEGIN TRANSACTION READ ONLY`` … ``ROLLBACK``, so even a
statement the guard missed cannot write to the database (DuckDB raises). The time limit is a
timer that calls ``interrupt()`` on the query's own cursor (DuckDB cancels that connection
only); the row limit stops fetching after ``max_rows`` (streamed in Arrow record batches, so a
``SELECT *`` of millions of rows never materialises past the limit).

Decision recorded: the ingestor's database is *not* opened with ``enable_external_access =
false`` (a database-wide switch that would also bind every other piece of code in the
ingestor); the guard above plus the read-only transaction are the enforcement there. The
client's own read-only connection (system stopped) does set it.
"""

from __future__ import annotations

import dataclasses
import json
import re
import threading
import time
from typing import Any, Mapping, Sequence

import duckdb
import pyarrow as pa

# --- errors -----------------------------------------------------------------------------------


class QueryError(RuntimeError):
    """A research query failed; the message is one line meant for the user."""

    kind = "error"


class QueryRefused(QueryError):
    """The statement is not a read-only query (or reads outside the database)."""

    kind = "refused"


class QueryTimeout(QueryError):
    """The query ran past its time limit and was cancelled."""

    kind = "timeout"


class QueryTooLarge(QueryError):
    """The result has more rows than the row limit (and truncation was not asked for)."""

    kind = "too_large"


class QuerySQLError(QueryError):
    """DuckDB rejected the query (syntax, unknown column, type error...)."""

    kind = "sql"


class QueryUnavailable(QueryError):
    """Neither the running system's query server nor the database file could be reached."""

    kind = "unavailable"


ERRORS: dict[str, type[QueryError]] = {c.kind: c for c in (QueryError, QueryRefused, QueryTimeout,
                                                           QueryTooLarge, QuerySQLError,
                                                           QueryUnavailable)}

# --- limits -----------------------------------------------------------------------------------

DEFAULT_TIMEOUT_S = 30.0
DEFAULT_MAX_ROWS = 1_000_000
BATCH_ROWS = 65_536


@dataclasses.dataclass(frozen=True)
class Limits:
    """Per-query limits: ``timeout_s`` seconds of wall time (execution and fetch), ``max_rows``
    rows of result; ``truncate``: return the first ``max_rows`` rows (and say so) instead of
    raising :class:`QueryTooLarge`."""

    timeout_s: float = DEFAULT_TIMEOUT_S
    max_rows: int = DEFAULT_MAX_ROWS
    truncate: bool = False

    def clamp(self, ceiling: "Limits") -> "Limits":
        """These limits, never above ``ceiling``'s (the server's configured maximum)."""
        return Limits(timeout_s=min(self.timeout_s, ceiling.timeout_s),
                      max_rows=min(self.max_rows, ceiling.max_rows), truncate=self.truncate)

    def validate(self) -> "Limits":
        """Return self; raises ``ValueError`` naming the field when a limit is not positive."""
        if not (self.timeout_s > 0):
            raise ValueError(f"query timeout must be > 0 seconds, got {self.timeout_s!r}")
        if not (isinstance(self.max_rows, int) and self.max_rows > 0):
            raise ValueError(f"query max_rows must be a positive integer, got {self.max_rows!r}")
        return self


# --- the guard --------------------------------------------------------------------------------

SAFE_TABLE_FUNCTIONS = frozenset({
    "range", "generate_series", "unnest", "repeat", "repeat_row", "json_each", "json_tree",
    "histogram", "histogram_values", "pg_timezone_names", "icu_calendar_names",
    "duckdb_tables", "duckdb_views", "duckdb_columns", "duckdb_functions", "duckdb_types",
    "duckdb_schemas", "duckdb_databases", "duckdb_constraints", "duckdb_indexes",
    "duckdb_keywords", "duckdb_dependencies", "duckdb_sequences", "duckdb_settings",
    "duckdb_memory", "duckdb_optimizers",
    "pragma_table_info", "pragma_storage_info", "pragma_database_size", "pragma_version",
    "pragma_platform", "pragma_show", "pragma_metadata_info", "pragma_collations",
    "pragma_user_agent",
})
SAFE_PRAGMAS = frozenset({
    "table_info", "storage_info", "database_size", "version", "platform", "show", "show_tables",
    "show_tables_expanded", "show_databases", "metadata_info", "collations", "user_agent",
    "functions",
})
REFUSED_FUNCTIONS = frozenset({"nextval", "setval", "write_log"})
SYSTEM_SCHEMAS = frozenset({"information_schema", "pg_catalog"})

_EXPLAIN = re.compile(r"^\s*EXPLAIN(\s+ANALYZE)?\b", re.IGNORECASE)
_PRAGMA = re.compile(r"^\s*PRAGMA\s+([A-Za-z_][A-Za-z0-9_]*)\s*(\(.*\))?\s*;?\s*$", re.IGNORECASE | re.DOTALL)

_REFUSED_TYPES = {
    "INSERT": "INSERT writes", "UPDATE": "UPDATE writes", "DELETE": "DELETE/TRUNCATE writes",
    "MERGE_INTO": "MERGE writes", "CREATE": "CREATE changes the database",
    "DROP": "DROP changes the database", "ALTER": "ALTER changes the database",
    "COPY": "COPY reads or writes files", "ATTACH": "ATTACH opens another database",
    "DETACH": "DETACH changes the attached databases", "LOAD": "INSTALL/LOAD adds extensions",
    "SET": "SET/RESET/USE (and PRAGMA x = y) change settings",
    "VARIABLE_SET": "SET VARIABLE changes state", "CALL": "CALL runs procedures (use SELECT * FROM f())",
    "VACUUM": "VACUUM/ANALYZE change the database", "EXPORT": "EXPORT writes files",
    "TRANSACTION": "transactions are managed by the query service",
    "PREPARE": "PREPARE is not needed (pass params)", "EXECUTE": "EXECUTE is not needed (pass params)",
    "MULTI": "PIVOT runs several statements (aggregate with FILTER (WHERE ...) instead)",
    "EXTENSION": "extension statements are refused", "UPDATE_EXTENSIONS": "UPDATE EXTENSIONS is refused",
    "COPY_DATABASE": "COPY DATABASE writes", "LOGICAL_PLAN": "refused", "RELATION": "refused",
    "DROP_INDEX": "refused",
}


@dataclasses.dataclass(frozen=True)
class Checked:
    """A statement the guard accepted: ``sql`` (one statement, no trailing ``;``) and its ``kind``
    (``select`` | ``explain`` | ``pragma``), and the tables/views it reads (lower case)."""

    sql: str
    kind: str
    tables: frozenset[str]


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _short(sql: str, n: int = 60) -> str:
    s = _one_line(sql)
    return s if len(s) <= n else s[: n - 1] + "…"


def _catalog_names(con: duckdb.DuckDBPyConnection) -> tuple[set[str], set[str]]:
    """(table and view names, installed table macro names) of the database, lower case."""
    rel = {r[0].lower() for r in con.execute(
        "SELECT table_name FROM duckdb_tables() UNION ALL SELECT view_name FROM duckdb_views()").fetchall()}
    macros = {r[0].lower() for r in con.execute(
        "SELECT function_name FROM duckdb_functions() WHERE function_type = 'table_macro' "
        "AND NOT internal").fetchall()}
    return rel, macros


def _walk_select(tree: Any, relations: set[str], macros: set[str], read: set[str],
                 sql: str) -> None:
    """Walk a ``json_serialize_sql`` statement tree; raise :class:`QueryRefused` on the first
    forbidden table function, unknown table name or refused scalar function."""

    def where(node: dict) -> str:
        loc = node.get("query_location")
        if isinstance(loc, int) and 0 <= loc < len(sql):
            return f" at character {loc + 1}"
        return ""

    def visit(node: Any, scope: frozenset[str]) -> None:
        if isinstance(node, list):
            for item in node:
                visit(item, scope)
            return
        if not isinstance(node, dict):
            return
        ctes = node.get("cte_map")
        if isinstance(ctes, dict) and ctes.get("map"):
            names = scope
            for entry in ctes["map"]:
                key = str(entry.get("key", "")).lower()
                names = names | {key}
                visit(entry.get("value"), names)     # a CTE sees itself (recursive) and earlier ones
            scope = names
            node = {k: v for k, v in node.items() if k != "cte_map"}
        kind = node.get("type")
        if kind == "BASE_TABLE":
            name = str(node.get("table_name", "")).lower()
            schema = str(node.get("schema_name", "")).lower()
            catalog = str(node.get("catalog_name", "")).lower()
            if schema in SYSTEM_SCHEMAS or catalog in SYSTEM_SCHEMAS:
                return
            if name in scope and not schema and not catalog:
                return
            if name not in relations:
                raise QueryRefused(
                    f"unknown table {node.get('table_name')!r}{where(node)}: only the database's "
                    f"tables and views can be read (files and other sources are refused)")
            read.add(name)
            return
        if kind == "TABLE_FUNCTION":
            fn = node.get("function") or {}
            name = str(fn.get("function_name", "")).lower()
            if name not in SAFE_TABLE_FUNCTIONS and name not in macros:
                raise QueryRefused(
                    f"table function {name}(){where(node)} is refused: it reads outside the "
                    f"database or changes state")
            if name in macros:
                read.add(name)
        if node.get("class") == "FUNCTION" and str(node.get("function_name", "")).lower() in REFUSED_FUNCTIONS:
            raise QueryRefused(f"function {node['function_name']}(){where(node)} changes state")
        for value in node.values():
            if isinstance(value, (dict, list)):
                visit(value, scope)

    visit(tree, frozenset())


def check_sql(con: duckdb.DuckDBPyConnection, sql: str) -> Checked:
    """Decide whether ``sql`` may run as a research query on ``con``'s database.

    Returns a :class:`Checked`. Raises :class:`QueryRefused` (one line naming the statement and
    the reason) for anything but one read-only query, :class:`QuerySQLError` when DuckDB cannot
    parse it. Needs a connection only to parse and to look names up in the catalog; it runs
    nothing of ``sql``.
    """
    if not isinstance(sql, str) or not sql.strip():
        raise QueryRefused("empty query: give one SELECT statement")
    try:
        statements = con.extract_statements(sql)
    except duckdb.Error as exc:
        raise QuerySQLError(_one_line(exc)) from None
    except ValueError as exc:                # a statement type the Python binding does not know
        raise QueryRefused(f"statement refused ({_one_line(exc)}): only read queries run") from None
    if len(statements) != 1:
        raise QueryRefused(f"{len(statements)} statements given: send exactly one read query per request")
    st = statements[0]
    text = st.query.strip().rstrip(";").strip() if getattr(st, "query", None) else sql.strip().rstrip(";")
    try:
        type_name = str(st.type).rsplit(".", 1)[-1]
    except ValueError as exc:                # a statement type the Python binding does not know
        raise QueryRefused(f"statement refused ({_one_line(exc)}): only read queries run") from None
    if type_name == "PRAGMA":
        mt = _PRAGMA.match(text)
        name = mt.group(1).lower() if mt else "?"
        if name not in SAFE_PRAGMAS:
            raise QueryRefused(f"PRAGMA {name} refused: only the read-only pragmas "
                               f"{', '.join(sorted(SAFE_PRAGMAS))} run")
        return Checked(text, "pragma", frozenset())
    if type_name == "EXPLAIN":
        inner = _EXPLAIN.sub("", text, count=1)
        checked = check_sql(con, inner)
        if checked.kind != "select":
            raise QueryRefused("EXPLAIN is allowed only of a SELECT")
        return Checked(text, "explain", checked.tables)
    if type_name != "SELECT":
        why = _REFUSED_TYPES.get(type_name, f"{type_name} statements are refused")
        raise QueryRefused(f"refused: {why}; only read queries run ({_short(text)})")
    serialised = con.execute("SELECT json_serialize_sql(?)", [text]).fetchall()[0][0]
    tree = json.loads(serialised)
    if tree.get("error"):
        raise QueryRefused(f"refused: {tree.get('error_message', 'cannot analyse the statement')} "
                           f"({_short(text)})")
    relations, macros = _catalog_names(con)
    read: set[str] = set()
    _walk_select(tree.get("statements", []), relations, macros, read, text)
    return Checked(text, "select", frozenset(read))


# --- the bounded runner -----------------------------------------------------------------------


@dataclasses.dataclass
class Result:
    """A query's result: ``table`` (Arrow), ``truncated`` (more rows existed than ``max_rows``),
    ``elapsed_ms`` (execution and fetch), ``via`` (``server`` | ``file``)."""

    table: pa.Table
    truncated: bool = False
    elapsed_ms: float = 0.0
    via: str = ""

    def frame(self):
        """The result as a polars DataFrame."""
        import polars as pl
        return pl.from_arrow(self.table) if self.table.num_columns else pl.DataFrame()


Params = Sequence[Any] | Mapping[str, Any] | None


def check_params(params: Any) -> Params:
    """Validate query parameters: ``None``, a list of scalars (``?`` / ``$1``) or a dict of
    scalars (``$name``). Scalars: str, int, float, bool, None. Raises ``ValueError``."""
    if params is None:
        return None
    scalars = (str, int, float, bool, type(None))
    if isinstance(params, Mapping):
        bad = [k for k, v in params.items() if not isinstance(k, str) or not isinstance(v, scalars)]
        if bad:
            raise ValueError(f"query params: value of {bad[0]!r} is not a str/int/float/bool/None")
        return dict(params)
    if isinstance(params, (list, tuple)):
        for i, v in enumerate(params):
            if not isinstance(v, scalars):
                raise ValueError(f"query params: item {i} ({type(v).__name__}) is not a "
                                 f"str/int/float/bool/None")
        return list(params)
    raise ValueError(f"query params must be a list or a dict, got {type(params).__name__}")


def _rollback(cur: duckdb.DuckDBPyConnection) -> None:
    """End the query's read-only transaction, whatever state the connection is in."""
    try:
        cur.execute("ROLLBACK")
    except duckdb.Error:
        try:
            cur.rollback()
        except duckdb.Error:
            pass


def run_bounded(cur: duckdb.DuckDBPyConnection, sql: str, params: Params = None,
                limits: Limits = Limits(), checked: Checked | None = None) -> Result:
    """Check ``sql`` (unless ``checked`` is given) and run it on ``cur`` within ``limits``.

    ``cur`` must be a cursor used by this call alone (``interrupt()`` cancels whatever that
    connection runs). The statement runs in a read-only transaction that is always rolled back.
    Raises :class:`QueryRefused`, :class:`QueryTimeout`, :class:`QueryTooLarge` (unless
    ``limits.truncate``), :class:`QuerySQLError`.
    """
    limits.validate()
    params = check_params(params)
    started = time.perf_counter()
    if checked is None:
        checked = check_sql(cur, sql)
    fired = threading.Event()

    def cancel() -> None:
        fired.set()
        try:
            cur.interrupt()
        except Exception:  # noqa: BLE001 - the connection may be closing; nothing to cancel then
            pass

    remaining = limits.timeout_s - (time.perf_counter() - started)
    timer = threading.Timer(max(remaining, 0.001), cancel)
    timer.daemon = True
    batches: list[pa.RecordBatch] = []
    rows = 0
    truncated = False
    schema = None
    try:
        timer.start()
        cur.execute("BEGIN TRANSACTION READ ONLY")
        try:
            rel = cur.sql(checked.sql, params=params)
            if rel is None:
                raise QueryRefused("the statement returned no result set")
            reader = rel.to_arrow_reader(BATCH_ROWS)
            try:
                schema = reader.schema
                for batch in reader:
                    if rows + batch.num_rows > limits.max_rows:
                        keep = limits.max_rows - rows
                        if keep > 0:
                            batches.append(batch.slice(0, keep))
                        rows += keep
                        truncated = True
                        break
                    batches.append(batch)
                    rows += batch.num_rows
            finally:
                reader.close()          # a pending streamed result would keep the transaction open
                del rel
        finally:
            timer.cancel()
            _rollback(cur)
    except QueryError:
        raise
    except (duckdb.Error, OSError, pa.ArrowException) as exc:
        if fired.is_set() or isinstance(exc, duckdb.InterruptException):
            raise QueryTimeout(f"query cancelled after its time limit of {limits.timeout_s:g} s "
                               f"({_short(checked.sql)})") from None
        raise QuerySQLError(_one_line(exc)) from None
    finally:
        timer.cancel()
    if truncated and not limits.truncate:
        raise QueryTooLarge(f"the result has more than {limits.max_rows:,} rows (the row limit); "
                            f"add a LIMIT or WHERE, aggregate, or raise max_rows")
    table = pa.Table.from_batches(batches, schema=schema) if schema is not None else pa.table({})
    return Result(table, truncated, (time.perf_counter() - started) * 1000)


# --- Arrow IPC (the wire format of results) ---------------------------------------------------


def to_ipc(table: pa.Table) -> bytes:
    """Serialise ``table`` as an Arrow IPC stream."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def from_ipc(data: bytes | memoryview) -> pa.Table:
    """Read an Arrow IPC stream written by :func:`to_ipc`."""
    return pa.ipc.open_stream(pa.py_buffer(data)).read_all()


def error_from(kind: str, message: str) -> QueryError:
    """Rebuild the exception a server reported as ``{"kind": ..., "error": ...}``."""
    return ERRORS.get(kind, QueryError)(message)


def describe(exc: BaseException) -> dict[str, str]:
    """``{"kind", "error"}`` of an exception, for the wire and the API."""
    if isinstance(exc, QueryError):
        return {"kind": exc.kind, "error": str(exc)}
    return {"kind": "error", "error": _one_line(f"{type(exc).__name__}: {exc}")}

