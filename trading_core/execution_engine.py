"""The execution pipeline: signal -> risk guard -> entry order -> fill -> managed position -> exit.

Pure (no I/O): ``scripts/execution.py`` feeds it the bus (signals, ticks, control commands)
and publishes what it returns through ``publish(topic, message)``; tests feed it recorded days.
The same code runs paper (default) and live: the client (:mod:`trading_core.execution_client`)
only carries orders out; the position management is :mod:`trading_core.paper`'s.

Messages published, in order, for one signal (topics of :mod:`trading_core.messages`):

* ``risk.<strategy>`` :class:`RiskDecision` (every signal: approved with its size, or rejected
  with the rule and a reason);
* if approved: ``order.<instrument>`` entry ``placed``; at the fill: ``fill.<instrument>``,
  the entry order ``filled``, ``position.<instrument>`` ``opened``, and the position's working
  ``stop`` (SL-M at the stop) and ``target`` (LIMIT) orders ``placed``;
* while open: the stop order ``modified`` and the position ``stop_moved`` when it trails to
  break-even, ``mark`` updates with the unrealised PnL;
* at the exit: the exit's fill, its order ``filled`` (the stop, the target, or an ``exit``
  market order placed for a time exit / square-off / kill switch), the other working orders
  ``cancelled``, and the position ``closed`` with its realised PnL.

Ids are derived from the signal (:func:`trading_core.risk.signal_id`): the position's id is the
signal's, order ids add ``-E`` (entry), ``-SL``, ``-TP``, ``-X`` (exit), a fill adds ``-F``.

Late signals: a signal is acted on as of its own time. Ticks are kept for the current IST day
of each instrument in ``watch`` (``None``: all), so a signal that arrives after later ticks were
already seen (a replay at full speed) fills at the first tick at or after its ``ts`` and its
position is managed through the ticks since, exactly as if it had arrived at once. A signal
arriving more than ``max_signal_delay_ms`` of *wall* time after that first tick came in (a
strategy restarted and re-computing old signals, a stalled process) is rejected as ``stale``.
"""

from __future__ import annotations

import array
import dataclasses
import time
from typing import Any, Callable, Iterable

import msgspec
import msgspec.structs

from trading_core import messages as m
from trading_core.execution_client import ExecutionClient
from trading_core.paper import PaperConfig, PositionBook, PositionState, Update, opposite
from trading_core.risk import RiskBook, ist_date, rejection, signal_id
from trading_core.sessions import ist_day

Publish = Callable[[str, m.Message], None]
EXIT_RETRY_MS = 5_000        # a rejected exit order is sent again at most this often (wall ms)


def wall_ms() -> int:
    """Wall clock, epoch ms UTC."""
    return time.time_ns() // 1_000_000


class TickBuffer:
    """The current IST day's ticks of one instrument, in compact arrays: ``ts``, ``seq``, ``ltp``
    and ``rx`` (wall ms when received). At most ``cap`` ticks (the oldest are dropped)."""

    __slots__ = ("day", "ts", "seq", "ltp", "rx", "cap", "dropped", "_day_no")

    def __init__(self, cap: int):
        self.cap = cap
        self.day = None
        self._day_no = None                        # ist_day() of ``day``: an int compare per tick, not a date
        self.ts, self.seq, self.ltp, self.rx = array.array("q"), array.array("q"), array.array("d"), array.array("q")
        self.dropped = False

    def add(self, ts: int, seq: int, ltp: float, rx: int) -> None:
        day_no = ist_day(ts)
        if day_no != self._day_no:
            self._day_no, self.day = day_no, ist_date(ts)
            del self.ts[:], self.seq[:], self.ltp[:], self.rx[:]
            self.dropped = False
        if len(self.ts) >= self.cap:
            half = self.cap // 2
            del self.ts[:half], self.seq[:half], self.ltp[:half], self.rx[:half]
            self.dropped = True
        self.ts.append(ts)
        self.seq.append(seq)
        self.ltp.append(ltp)
        self.rx.append(rx)

    def since(self, ts: int) -> tuple[int, bool]:
        """Index of the first tick at or after ``ts``, and whether the buffer covers ``ts`` (False
        when earlier ticks of that day were dropped or belong to another day)."""
        import bisect
        i = bisect.bisect_left(self.ts, ts)
        covered = self.day == ist_date(ts) and not (self.dropped and i == 0)
        return i, covered


@dataclasses.dataclass
class _Entry:
    """An approved signal whose entry order is not filled yet."""

    order: m.Order
    decision: m.RiskDecision


class ExecutionEngine:
    """Risk, orders and positions for every signal; see the module docstring.

    ``risk``: the rules; ``paper``: position management settings; ``client``: paper or live;
    ``publish(topic, message)``: where messages go; ``watch``: instruments whose day of ticks
    is kept for late signals (None: all); ``max_signal_delay_ms``: see the module docstring;
    ``clock``: wall ms (tests pass their own). Not thread-safe: call from one thread.
    """

    def __init__(self, risk: RiskBook, paper: PaperConfig, client: ExecutionClient, publish: Publish,
                 watch: Iterable[str] | None = None, max_signal_delay_ms: int = 10_000,
                 buffer_cap: int = 500_000, clock: Callable[[], int] = wall_ms):
        self.risk = risk
        self.book = PositionBook(paper)
        self.client = client
        self.publish = publish
        self.watch = set(watch) if watch is not None else None
        self.max_signal_delay_ms = max_signal_delay_ms
        self.buffer_cap = buffer_cap
        self.clock = clock
        self.kill_switch = False
        self.entries: dict[str, _Entry] = {}                 # entry order id -> pending entry
        self.legs: dict[str, dict[str, m.Order]] = {}        # position id -> {"stop": .., "target": ..}
        self.exits: dict[str, tuple[str, str]] = {}          # exit order id -> (position id, reason)
        self.buffers: dict[str, TickBuffer] = {}
        self.last: dict[str, tuple[int, int, float]] = {}    # instrument -> (ts, seq, ltp) of its last tick
        self._retry_at: dict[str, int] = {}                  # position id -> wall ms to retry a failed exit
        self.counters = {"signals": 0, "approved": 0, "rejected": 0, "orders": 0, "fills": 0,
                         "closed": 0, "ticks": 0, "stale": 0, "recovered": 0}

    # --- inputs ---------------------------------------------------------------------------------
    def on_tick(self, instrument_key: str, ts: int, ltp: float, seq: int = 0, rx_ms: int | None = None) -> None:
        """One print from the bus (``rx_ms``: wall ms it arrived, default now)."""
        self.counters["ticks"] += 1
        if self.watch is None or instrument_key in self.watch:
            buf = self.buffers.get(instrument_key)
            if buf is None:
                buf = self.buffers[instrument_key] = TickBuffer(self.buffer_cap)
            buf.add(ts, seq, ltp, self.clock() if rx_ms is None else rx_ms)
        prev = self.last.get(instrument_key)
        if prev is None or (ts, seq) >= prev[:2]:
            self.last[instrument_key] = (ts, seq, ltp)
        self._process(instrument_key, ts, seq, ltp)

    def on_signal(self, sig: m.Signal) -> m.RiskDecision:
        """Decide ``sig``, publish the decision and, if approved, place its entry order and catch up
        with the ticks since its time. Returns the decision."""
        self.counters["signals"] += 1
        key = sig.instrument_key
        buf = self.buffers.get(key)
        start, covered = (buf.since(sig.ts) if buf is not None else (0, True))
        last = self.last.get(key)
        stale = None
        if last is not None and last[0] >= sig.ts:          # we have seen ticks after its time
            if buf is None or not covered:
                stale = (f"stale: ticks of {key} after the signal's time were not kept "
                         f"(instrument not watched, or another day); not acted on")
            else:
                late = self.clock() - buf.rx[start]
                if late > self.max_signal_delay_ms:
                    stale = (f"stale: arrived {late / 1000:.1f} s after the first tick at or after its "
                             f"time (limit {self.max_signal_delay_ms / 1000:g} s)")
        if stale and signal_id(sig) not in self.risk.seen:
            decision = rejection("stale", stale)
            self.risk.record(sig, False)
            self.counters["stale"] += 1
        else:
            day_pnl = self.book.day_pnl(ist_date(sig.ts))
            decision = self.risk.decide(sig, day_pnl=day_pnl, kill_switch=self.kill_switch)
        msg = decision.message(sig, self.clock())
        self.publish(m.risk_topic(sig.strategy), msg)
        self.counters["approved" if decision.approved else "rejected"] += 1
        if not decision.approved:
            return msg
        sid = msg.signal_id
        order = m.Order(order_id=f"{sid}-E", signal_id=sid, position_id=sid, strategy=sig.strategy,
                        instrument_key=key, side=sig.side, quantity=msg.quantity, kind="entry",
                        order_type="MARKET", status="placed", ts=sig.ts, reason=sig.reason[:200],
                        client=self.client.name)
        self.entries[order.order_id] = _Entry(order, msg)
        if not self._send(order):
            return msg
        if buf is not None and covered:
            for i in range(start, len(buf.ts)):
                self._process(key, buf.ts[i], buf.seq[i], buf.ltp[i])
        return msg

    def reject(self, sig: m.Signal, rule: str, reason: str) -> m.RiskDecision | None:
        """Publish a rejection of ``sig`` decided outside the rules (e.g. ``missed``: published
        while this service was down); a signal already decided is left alone (returns None)."""
        if signal_id(sig) in self.risk.seen:
            return None
        self.counters["signals"] += 1
        self.counters["rejected"] += 1
        self.risk.record(sig, False)
        msg = rejection(rule, reason).message(sig, self.clock())
        self.publish(m.risk_topic(sig.strategy), msg)
        return msg

    def wants(self, instrument_key: str) -> bool:
        """Whether ticks of ``instrument_key`` matter: watched, or with a position or entry order."""
        if self.watch is None or instrument_key in self.watch:
            return True
        return any(p.instrument_key == instrument_key for p in self.book.open.values()) or \
            any(e.order.instrument_key == instrument_key for e in self.entries.values())

    def poll(self) -> None:
        """Apply the client's asynchronous outcomes (live fills and rejections). A live fill is
        stamped with the market time: the latest tick of its instrument (at least the order's
        ``ts``), so position management runs on one clock, the feed's."""
        for order, fill in self.client.poll():
            if fill is not None:
                last = self.last.get(order.instrument_key)
                ts = max(order.ts, last[0]) if last else fill.ts
                fill = msgspec.structs.replace(fill, ts=ts, ltp=fill.ltp or (last[2] if last else 0.0))
                order = msgspec.structs.replace(order, ts=ts)
            self._outcome(order, fill)

    def kill(self, reason: str = "kill switch") -> dict[str, Any]:
        """Engage the kill switch: cancel unfilled entries, exit every open position at its last
        price (paper) or at market (live), and refuse new signals until :meth:`resume`. Returns
        ``{"cancelled": n, "flattened": n, "realised": rupees}`` of what it did."""
        self.kill_switch = True
        cancelled = 0
        for oid in list(self.entries):
            entry = self.entries.pop(oid)
            done = self.client.cancel(entry.order)
            self._pub_order(msgspec.structs.replace(done, status="cancelled", reason=reason))
            cancelled += 1
        before = sum(p.realised_pnl for p in self.book.closed.values())
        flattened = 0
        for pid in list(self.book.open):
            pos = self.book.open[pid]
            if pos.exiting:
                continue
            self._exit(self.book.exit_now(pid, "kill_switch"))
            flattened += 1
        self.poll()
        realised = sum(p.realised_pnl for p in self.book.closed.values()) - before
        return {"cancelled": cancelled, "flattened": flattened, "realised": round(realised, 2),
                "still_open": sum(1 for p in self.book.open.values())}

    def resume(self) -> None:
        """Release the kill switch: new signals are decided again."""
        self.kill_switch = False

    # --- restart --------------------------------------------------------------------------------
    def restore(self, decisions: Iterable[m.RiskDecision], positions: Iterable[m.Position],
                orders: Iterable[m.Order], kill_switch: bool = False) -> dict[str, int]:
        """Take over after a restart from the audit trail: every earlier decision (the day's trades
        and decided signals), the latest update of every position and the latest state of every
        order. Open positions are managed again (a ``recovered`` update is published for each),
        unfilled entries re-sent (paper) or tracked again (live). Returns counts."""
        decisions = list(decisions)
        by_signal: dict[str, m.RiskDecision] = {}
        for d in decisions:
            by_signal.setdefault(d.signal_id, d)         # the first decision (later ones: duplicates)
        self.risk.restore(decisions)
        self.kill_switch = kill_switch
        latest_orders = {o.order_id: o for o in orders}
        n_open = n_entries = 0
        for p in positions:
            if p.status == "closed":
                self.book.restore_closed(p)
                continue
            if p.position_id in self.book.open:
                continue
            state = PositionState.from_message(p)
            self.book.add(state)
            legs = {}
            for kind, suffix, order_type, price in (("stop", "-SL", "SL-M", p.stop_loss),
                                                     ("target", "-TP", "LIMIT", p.target)):
                known = latest_orders.get(p.position_id + suffix)
                legs[kind] = known if known is not None and known.status in ("placed", "modified") else m.Order(
                    order_id=p.position_id + suffix, signal_id=p.signal_id, position_id=p.position_id,
                    strategy=p.strategy, instrument_key=p.instrument_key, side=opposite(p.side),
                    quantity=p.quantity, kind=kind, order_type=order_type, status="placed", ts=p.ts,
                    price=price, client=self.client.name)
            self.legs[p.position_id] = legs
            self.counters["recovered"] += 1
            n_open += 1
            self.publish(m.position_topic(p.instrument_key), state.message("recovered", p.ts))
        for o in latest_orders.values():
            if o.status != "placed":
                continue
            if o.kind == "entry" and o.position_id not in self.book.open \
                    and o.position_id not in self.book.closed and o.signal_id in by_signal:
                self.entries[o.order_id] = _Entry(o, by_signal[o.signal_id])
                self.client.resume(o)
                n_entries += 1
            elif o.kind in ("exit", "stop", "target") and o.broker_order_id \
                    and o.position_id in self.book.open:
                # a live exit on its way before the restart: keep waiting for its fill
                self.book.open[o.position_id].exiting = o.reason or o.kind
                self.exits[o.order_id] = (o.position_id, o.reason or o.kind)
                self.client.resume(o)
        return {"positions": n_open, "entries": n_entries, "decisions": len(decisions)}

    def catch_up(self, instrument_key: str, ticks: Iterable[tuple[int, int, float]]) -> int:
        """Apply recorded ticks ``(ts, seq, ltp)`` (after a restart: those since the last update)
        to the recovered positions and entries of ``instrument_key``; returns ticks applied."""
        n = 0
        for ts, seq, ltp in ticks:
            self._process(instrument_key, int(ts), int(seq), float(ltp))
            prev = self.last.get(instrument_key)
            if prev is None or (ts, seq) >= prev[:2]:
                self.last[instrument_key] = (int(ts), int(seq), float(ltp))
            n += 1
        return n

    # --- state for health and the UI -------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """Counters, open positions, PnL (rupees) and the kill switch, for ``health.execution``."""
        today = max((ist_date(t[0]) for t in self.last.values()), default=None)
        realised = self.book.realised_by_day.get(today, 0.0) if today else 0.0
        return {**self.counters, "client": self.client.name, "kill_switch": self.kill_switch,
                "open_positions": len(self.book.open), "pending_entries": len(self.entries),
                "day": today.isoformat() if today else "", "realised_pnl": round(realised, 2),
                "unrealised_pnl": round(self.book.unrealised(), 2),
                "trades_today": self.risk.trades_on(today) if today else 0}

    # --- internals -------------------------------------------------------------------------------
    def _pub_order(self, order: m.Order) -> None:
        self.publish(m.order_topic(order.instrument_key), order)

    def _send(self, order: m.Order) -> bool:
        """Publish ``placed`` and hand the order to the client; False if the client rejected it."""
        self.counters["orders"] += 1
        self._pub_order(order)
        ack = self.client.place(order)
        if ack.status == "rejected":
            self._outcome(ack, None)
            return False
        if ack.broker_order_id and ack.broker_order_id != order.broker_order_id:
            self._pub_order(ack)                      # live: the broker's id, for the record
            self._remember(ack)
        return True

    def _remember(self, order: m.Order) -> None:
        if order.order_id in self.entries:
            self.entries[order.order_id].order = order
        elif order.kind in ("stop", "target") and order.position_id in self.legs:
            self.legs[order.position_id][order.kind] = order

    def _process(self, key: str, ts: int, seq: int, ltp: float) -> None:
        for order, fill in self.client.on_tick(key, ts, ltp):
            self._outcome(order, fill)
        for upd in self.book.on_tick(key, ts, ltp, seq):
            if upd.kind == "exit":
                if self._retry_at.get(upd.position.position_id, 0) > self.clock():
                    upd.position.exiting = ""         # a rejected exit is retried at most every 5 s
                    continue
                self._exit(upd)
            elif upd.kind == "trail":
                pos = upd.position
                legs = self.legs.get(pos.position_id, {})
                if "stop" in legs:
                    legs["stop"] = msgspec.structs.replace(legs["stop"], status="modified", price=pos.stop_loss,
                                                       ts=upd.ts, reason="trailed to break-even")
                    self._pub_order(legs["stop"])
                self.publish(m.position_topic(key), pos.message("stop_moved", upd.ts))
            else:
                self.publish(m.position_topic(key), upd.position.message("mark", upd.ts))

    def _exit(self, upd: Update) -> None:
        """Send the exit a position-management trigger asks for, and fill it at once on paper."""
        pos, reason = upd.position, upd.reason
        legs = self.legs.get(pos.position_id, {})
        if reason in ("stop", "breakeven_stop") and "stop" in legs:
            order = msgspec.structs.replace(legs.pop("stop"), status="placed", ts=upd.ts, reason=reason)
        elif reason == "target" and "target" in legs:
            order = msgspec.structs.replace(legs.pop("target"), status="placed", ts=upd.ts, reason=reason)
            if not self.client.resting_limits:        # live: take the price that is there now
                order = msgspec.structs.replace(order, order_type="MARKET")
        else:
            order = m.Order(order_id=f"{pos.position_id}-X", signal_id=pos.signal_id,
                            position_id=pos.position_id, strategy=pos.strategy,
                            instrument_key=pos.instrument_key, side=opposite(pos.side),
                            quantity=pos.quantity, kind="exit", order_type="MARKET", status="placed",
                            ts=upd.ts, reason=reason, client=self.client.name)
        self.exits[order.order_id] = (pos.position_id, reason)
        if order.kind == "exit":
            self._send(order)
        else:
            self.counters["orders"] += 1
            ack = self.client.place(order)
            if ack.status == "rejected":
                self._outcome(ack, None)
                return
            if ack.broker_order_id:
                self._pub_order(ack)
        for order_fill in self.client.on_tick(pos.instrument_key, upd.ts, upd.price):
            self._outcome(*order_fill)

    def _outcome(self, order: m.Order, fill: m.Fill | None) -> None:
        """An order filled, or was rejected / cancelled by the market."""
        if fill is None:
            self._pub_order(order)
            if order.order_id in self.entries:            # the entry never happened
                self.entries.pop(order.order_id)
            elif order.order_id in self.exits:            # the exit failed: manage the position again
                pid, _ = self.exits.pop(order.order_id)
                self._retry_at[pid] = self.clock() + EXIT_RETRY_MS
                pos = self.book.open.get(pid)
                if pos is not None:
                    pos.exiting = ""
                    if order.kind in ("stop", "target"):
                        self.legs.setdefault(pid, {})[order.kind] = msgspec.structs.replace(
                            order, status="placed", reason="")
            return
        self.counters["fills"] += 1
        key = order.instrument_key
        self.publish(m.fill_topic(key), fill)
        self._pub_order(order)
        if order.kind == "entry":
            entry = self.entries.pop(order.order_id, None)
            if entry is None:
                return
            d = entry.decision
            pos = self.book.open_from_fill(fill, lots=d.lots, lot_size=d.lot_size, stop_loss=d.stop_loss,
                                           target=d.target, client=self.client.name)
            self.publish(m.position_topic(key), pos.message("opened", fill.ts))
            legs = {}
            for kind, suffix, order_type, price in (("stop", "-SL", "SL-M", d.stop_loss),
                                                     ("target", "-TP", "LIMIT", d.target)):
                legs[kind] = m.Order(order_id=pos.position_id + suffix, signal_id=pos.signal_id,
                                     position_id=pos.position_id, strategy=pos.strategy, instrument_key=key,
                                     side=opposite(pos.side), quantity=pos.quantity, kind=kind,
                                     order_type=order_type, status="placed", ts=fill.ts, price=price,
                                     client=self.client.name)
                self._pub_order(legs[kind])
            self.legs[pos.position_id] = legs
            return
        pid, reason = self.exits.pop(order.order_id, (order.position_id, order.reason or order.kind))
        if pid not in self.book.open:
            return
        for leg in self.legs.pop(pid, {}).values():
            self._pub_order(msgspec.structs.replace(self.client.cancel(leg), status="cancelled", ts=fill.ts,
                                                reason=f"position closed ({reason})"))
        pos = self.book.close(pid, fill, reason)
        self.counters["closed"] += 1
        self.publish(m.position_topic(key), pos.message("closed", fill.ts))
