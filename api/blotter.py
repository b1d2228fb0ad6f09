"""The API's blotter: every signal with its risk decision, orders, fills and position, as the
execution service publishes them (``signal.``, ``risk.``, ``order.``, ``fill.``, ``position.``,
``event.execution``, ``health.execution``; see ``scripts/execution.py``).

Runs on the API's event loop (no locks, never blocks). ``GET /api/execution`` returns
:meth:`Blotter.snapshot`; the page (``frontend/blotter.js``) polls it once a second. At start
(:func:`backfill`) the latest trading day is read back from the audit trail in DuckDB through the
ingestor's query service, so a restarted API shows the trades it missed; the whole history is
there too (the ``trades`` and ``signal_outcomes_live`` views of :mod:`trading_core.audit`).

Snapshot (prices rupees, quantities units, ``ts`` epoch ms UTC)::

    {"version": n, "kill_switch": bool|null, "client": "paper"|"upstox"|null,
     "execution": {...health.execution details...} | null, "last_event": ServiceEvent | null,
     "day": "YYYY-MM-DD", "totals": {"signals", "approved", "rejected", "open", "closed",
                                     "realised", "unrealised"},     (of the latest IST day)
     "rows": [{"signal_id", "strategy", "instrument_key", "side", "entry", "stop_loss", "target",
               "signal_ts", "reason", "status": undecided|rejected|pending|open|closed|cancelled,
               "decision": RiskDecision|null, "position": Position|null,
               "orders": [Order...], "fills": [Fill...]}, ...]}       (newest first)
"""

from __future__ import annotations

import collections
import logging
from typing import Any

import msgspec
import msgspec.structs

from trading_core import messages as m
from trading_core.risk import ist_date, signal_id

log = logging.getLogger("api")

MAX_ROWS = 1000
_PREFIXES = (b"signal.", b"risk.", b"order.", b"fill.", b"position.", b"event.execution",
             b"health.execution")
_signal = msgspec.json.Decoder(m.Signal)
_any = msgspec.json.Decoder()


class Blotter:
    """Rows by signal id (oldest dropped beyond :data:`MAX_ROWS`) and the execution service's state."""

    def __init__(self) -> None:
        self.rows: collections.OrderedDict[str, dict[str, Any]] = collections.OrderedDict()
        self.version = 0
        self.kill_switch: bool | None = None
        self.client: str | None = None
        self.execution: dict[str, Any] | None = None
        self.last_event: dict[str, Any] | None = None
        self.bad = 0

    def _row(self, sid: str, data: dict[str, Any], about_signal: bool = False) -> dict[str, Any]:
        """The row of signal ``sid``; the signal's own fields are taken from a signal or a risk
        decision (``about_signal``), never from an order, fill or position update."""
        row = self.rows.get(sid)
        if row is None:
            row = self.rows[sid] = {
                "signal_id": sid, "strategy": data.get("strategy"), "instrument_key": data.get("instrument_key"),
                "side": None, "entry": None, "stop_loss": None, "target": None, "signal_ts": None,
                "reason": "", "status": "undecided", "decision": None, "position": None, "orders": {},
                "fills": []}
            while len(self.rows) > MAX_ROWS:
                self.rows.popitem(last=False)
        if about_signal and row["signal_ts"] is None:
            row.update(side=data.get("side"), entry=data.get("entry"), stop_loss=data.get("stop_loss"),
                       target=data.get("target"), signal_ts=data.get("signal_ts", data.get("ts")))
        return row

    def ingest(self, frame: bytes) -> None:
        """Take one bus frame (any topic; the irrelevant ones cost a prefix test). Never raises."""
        if frame[:1] == b"t" or not frame.startswith(_PREFIXES):
            return
        i = frame.find(b"\x00")
        payload = frame[i + 1:]
        try:
            if frame.startswith(b"signal."):
                sig = _signal.decode(payload)
                row = self._row(signal_id(sig), msgspec.structs.asdict(sig), about_signal=True)
                row["reason"] = sig.reason
            else:
                data = _any.decode(payload)
                if not isinstance(data, dict):
                    raise ValueError("not a JSON object")
                self._apply(frame, data)
        except (msgspec.DecodeError, msgspec.ValidationError, ValueError, KeyError) as exc:
            self.bad += 1
            if self.bad <= 5:
                log.warning("blotter: bad %r frame skipped (%s)", frame[:40], exc)
            return
        self.version += 1

    def _apply(self, frame: bytes, data: dict[str, Any]) -> None:
        kind = data.get("type")
        if kind == "risk":
            row = self._row(data["signal_id"], data, about_signal=True)
            if row["decision"] is None:              # a re-sent signal's "duplicate" keeps the first
                row["decision"] = data
            if row["status"] == "undecided":
                row["status"] = "pending" if data.get("approved") else "rejected"
        elif kind == "order":
            row = self._row(data["signal_id"], data)
            row["orders"][data["order_id"]] = data
            if data.get("kind") == "entry" and data.get("status") in ("cancelled", "rejected") \
                    and row["position"] is None:
                row["status"] = "cancelled"
        elif kind == "fill":
            self._row(data["signal_id"], data)["fills"].append(data)
        elif kind == "position":
            row = self._row(data["signal_id"], data)
            row["position"] = data
            row["status"] = data.get("status", "open")
        elif kind == "service_event":
            self.last_event = data
            if data.get("event") in ("kill_switch", "recovery_failed"):
                self.kill_switch = True
            elif data.get("event") == "resumed":
                self.kill_switch = False
            if data.get("details", {}).get("client"):
                self.client = data["details"]["client"]
        elif kind == "health":
            details = data.get("details") or {}
            self.execution = {"status": data.get("status"), "pid": data.get("pid"), "ts": data.get("ts"),
                              **details}
            if "kill_switch" in details:
                self.kill_switch = bool(details["kill_switch"])
            self.client = details.get("client", self.client)

    def snapshot(self) -> dict[str, Any]:
        """The blotter as described in the module docstring."""
        rows = []
        for row in reversed(self.rows.values()):
            rows.append({**row, "orders": sorted(row["orders"].values(), key=lambda o: (o.get("ts", 0),
                                                                                         o.get("order_id")))})
        rows.sort(key=lambda r: r.get("signal_ts") or 0, reverse=True)        # newest signal first
        day = max((ist_date(r["signal_ts"]) for r in self.rows.values() if r.get("signal_ts")), default=None)
        totals = {"signals": 0, "approved": 0, "rejected": 0, "open": 0, "closed": 0,
                  "realised": 0.0, "unrealised": 0.0}
        for r in self.rows.values():
            if day is None or not r.get("signal_ts") or ist_date(r["signal_ts"]) != day:
                continue
            totals["signals"] += 1
            d, p = r["decision"], r["position"]
            if d is not None:
                totals["approved" if d.get("approved") else "rejected"] += 1
            if p is not None:
                if p.get("status") == "closed":
                    totals["closed"] += 1
                    totals["realised"] += p.get("realised_pnl", 0.0)
                else:
                    totals["open"] += 1
                    totals["unrealised"] += p.get("unrealised_pnl", 0.0)
        totals["realised"] = round(totals["realised"], 2)
        totals["unrealised"] = round(totals["unrealised"], 2)
        return {"version": self.version, "kill_switch": self.kill_switch, "client": self.client,
                "execution": self.execution, "last_event": self.last_event,
                "day": day.isoformat() if day else None, "totals": totals, "rows": rows}

    def merge_older(self, older: "Blotter") -> int:
        """Fold in rows read back from the audit trail (older than anything seen live): new rows go
        first; a row seen live only gets what it lacks. Returns rows added."""
        added = collections.OrderedDict((sid, row) for sid, row in older.rows.items() if sid not in self.rows)
        for sid, row in older.rows.items():
            live = self.rows.get(sid)
            if live is None:
                continue
            for key in ("decision", "position", "strategy", "instrument_key", "side", "entry", "stop_loss",
                        "target", "signal_ts"):
                if live.get(key) is None:
                    live[key] = row.get(key)
            live["reason"] = live["reason"] or row["reason"]
            for oid, order in row["orders"].items():
                live["orders"].setdefault(oid, order)
            have = {f.get("fill_id") for f in live["fills"]}
            live["fills"][:0] = [f for f in row["fills"] if f.get("fill_id") not in have]
            if live["status"] == "undecided":
                live["status"] = row["status"]
        if added:
            self.rows = collections.OrderedDict([*added.items(), *self.rows.items()])
            while len(self.rows) > MAX_ROWS:
                self.rows.popitem(last=False)
            self.version += 1
        return len(added)


BACKFILL_SQL = """
    WITH e AS (SELECT *, CAST(make_timestamp(ts * 1000) + INTERVAL 330 MINUTE AS DATE) AS day FROM events
               WHERE kind IN ('signal', 'risk', 'order', 'fill', 'position'))
    SELECT topic, payload FROM e WHERE day = (SELECT max(day) FROM e WHERE kind = 'signal') ORDER BY seq"""


def _in_daemon_thread(fn, *args, **kwargs):
    """Run a blocking call on a daemon thread (so a stuck query never holds up the API's exit);
    returns an awaitable of its result."""
    import asyncio
    import threading
    loop = asyncio.get_running_loop()
    fut = loop.create_future()

    def settle(method, value) -> None:
        if not fut.done():
            method(value)

    def run() -> None:
        try:
            result, method = fn(*args, **kwargs), fut.set_result
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting coroutine
            result, method = exc, fut.set_exception
        try:
            loop.call_soon_threadsafe(settle, method, result)
        except RuntimeError:          # the loop is closed: the API is stopping
            pass

    threading.Thread(target=run, name="blotter-backfill", daemon=True).start()
    return fut


async def backfill(blotter: Blotter, settings, wait_s: float = 60.0) -> int:
    """Read the latest trading day back from the audit trail into ``blotter`` (see the module
    docstring). Only through the running ingestor's query service (never opening the DuckDB file,
    which the ingestor is about to own); gives up quietly after ``wait_s``. Returns rows added."""
    import asyncio
    import time
    from trading_core import query_client

    deadline = time.monotonic() + wait_s
    while not await _in_daemon_thread(query_client.server_listening, settings.query_endpoint):
        if time.monotonic() >= deadline:
            log.info("blotter: no query service within %.0f s; showing live events only", wait_s)
            return 0
        await asyncio.sleep(1.0)
    try:
        result = await _in_daemon_thread(query_client.query_result, BACKFILL_SQL, None, settings=settings,
                                         via="server", max_rows=200_000, timeout_s=10)
    except Exception as exc:  # noqa: BLE001 - an older file without events, a busy server: live only
        log.info("blotter: audit trail not read back (%s)", exc)
        return 0
    older = Blotter()
    for topic, payload in result.frame().rows():
        older.ingest(topic.encode() + b"\x00" + payload.encode())
    added = blotter.merge_older(older)
    log.info("blotter: %d signal(s) of the latest trading day read back from the audit trail", added)
    return added

