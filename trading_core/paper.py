"""Paper execution: fills simulated on the tick stream, and the management of open positions.

Pure (no I/O): :class:`trading_core.execution_engine.ExecutionEngine` drives it from the bus
ticks; tests replay recorded days through it. Units: prices rupees, quantities units,
``ts`` epoch ms UTC, PnL rupees (gross: no brokerage, taxes or exchange charges).

Fills (:class:`PaperFills`, the paper market)
    * A ``MARKET`` order (entry, time exit, square-off, kill switch) and a triggered stop
      (``SL-M``) fill at the first tick of the instrument whose ``ts`` is at or after the order's
      ``ts``, at that tick's price plus ``slippage`` rupees per unit against us (a BUY pays more,
      a SELL gets less). An entry's ``ts`` is the signal's, so on a replay of 1-minute bars the
      entry fills at the next bar's open, the first print after the decision.
    * A ``LIMIT`` order (the profit target) fills at its limit price, without slippage, at the
      first such tick that trades at or through it (a resting limit order; price improvement on
      a gap is ignored, which is conservative).

Position management (:class:`PositionBook`), on every tick of the instrument, in this order:
    1. **stop**: a long whose tick trades at or below its stop (a short: at or above) exits
       (``stop``, or ``breakeven_stop`` once trailed), at that tick's price less slippage;
    2. **target**: a long trading at or above its target exits at the target (``target``);
    3. **square-off**: at or after ``square_off`` (15:15 IST) every position exits
       (``square_off``); a position still open when a tick of a later IST day arrives (the
       session ended without a tick after 15:15) is squared off at its last price;
    4. **time exit**: ``time_exit_minutes`` (30) after the entry fill it exits (``time``);
    5. **trail to break-even**: once the price has covered ``trail_trigger`` (half) of the
       distance from the entry fill to the target, the stop moves to the entry fill price
       (once; a ``stop_moved`` update and the stop order ``modified``);
    6. **mark**: the unrealised PnL at that tick, published at most every ``mark_interval_ms``
       of market time.

PnL: a long's is ``(price - entry) * quantity``, a short's ``(entry - price) * quantity``;
realised on the exit fill, unrealised at the last tick while open.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import math
from typing import Any, Mapping

import msgspec
import msgspec.structs

from trading_core import messages as m
from trading_core.risk import hhmm, ist_date, ist_minute, underlying_of

EXIT_REASONS = ("stop", "breakeven_stop", "target", "time", "square_off", "kill_switch")


@dataclasses.dataclass(frozen=True)
class PaperConfig:
    """Paper execution and position management settings (config names in brackets).

    ``slippage`` [SLIPPAGE]: rupees per unit paid on market fills; a number, or a dict by
    underlying with a ``"default"`` (e.g. ``{"NIFTY": 0.5, "BANKNIFTY": 1.0, "default": 0.5}``).
    ``time_exit_minutes`` [TIME_EXIT_MINUTES] (0: no time exit); ``trail_trigger``
    [TRAIL_TRIGGER] fraction of the target distance after which the stop goes to break-even (0:
    never); ``square_off`` [SQUARE_OFF] ``HH:MM`` IST; ``mark_interval_ms``: least market time
    between two PnL marks of a position. :meth:`validate` raises ``ValueError`` naming the setting.
    """

    slippage: float | Mapping[str, float] = 0.5
    time_exit_minutes: float = 30.0
    trail_trigger: float = 0.5
    square_off: str = "15:15"
    mark_interval_ms: int = 1000

    def validate(self) -> "PaperConfig":
        """Return self, or raise ``ValueError("SETTING: why")``."""
        values = self.slippage.values() if isinstance(self.slippage, Mapping) else [self.slippage]
        for v in values:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ValueError(f"SLIPPAGE: rupees per unit must be a number >= 0 (or a dict of them "
                                 f"by underlying with a 'default'), got {self.slippage!r}")
        if isinstance(self.slippage, Mapping) and "default" not in self.slippage:
            raise ValueError("SLIPPAGE: a dict by underlying needs a 'default' entry")
        for name, v in (("TIME_EXIT_MINUTES", self.time_exit_minutes), ("TRAIL_TRIGGER", self.trail_trigger)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ValueError(f"{name}: must be a number >= 0, got {v!r}")
        if self.trail_trigger > 1:
            raise ValueError(f"TRAIL_TRIGGER: a fraction of the target distance in [0, 1], got {self.trail_trigger!r}")
        hhmm(self.square_off, "SQUARE_OFF")
        return self

    def slippage_for(self, instrument_key: str) -> float:
        """Rupees per unit of slippage on ``instrument_key``'s market fills."""
        if isinstance(self.slippage, Mapping):
            under = underlying_of(instrument_key) or ""
            return float(self.slippage.get(under, self.slippage["default"]))
        return float(self.slippage)


def market_price(side: str, ltp: float, slippage: float) -> float:
    """Fill price of a market order of ``side`` on a print at ``ltp``: ``ltp + slippage`` for a
    BUY, ``ltp - slippage`` for a SELL (never below 0.05, NSE's smallest tick)."""
    return round(ltp + slippage, 4) if side == "BUY" else round(max(ltp - slippage, 0.05), 4)


def opposite(side: str) -> str:
    """``"BUY" <-> "SELL"``."""
    return "SELL" if side == "BUY" else "BUY"


class PaperFills:
    """The paper market: orders submitted here fill on later ticks (see the module docstring).

    :meth:`on_tick` returns ``(filled order, fill)`` pairs; the order carries ``status="filled"``
    and ``fill_price``.
    """

    def __init__(self, config: PaperConfig):
        self.config = config.validate()
        self.pending: dict[str, m.Order] = {}
        self._by_key: dict[str, list[str]] = {}

    def submit(self, order: m.Order) -> None:
        """Add a MARKET, LIMIT or (triggered) SL-M order. Raises ``ValueError`` on another type."""
        if order.order_type not in ("MARKET", "LIMIT", "SL-M"):
            raise ValueError(f"paper: order {order.order_id}: unknown order type {order.order_type!r}")
        self.pending[order.order_id] = order
        self._by_key.setdefault(order.instrument_key, []).append(order.order_id)

    def cancel(self, order_id: str) -> m.Order | None:
        """Remove a pending order; returns it (None if it was not pending)."""
        order = self.pending.pop(order_id, None)
        if order is not None:
            self._by_key[order.instrument_key].remove(order_id)
        return order

    def on_tick(self, instrument_key: str, ts: int, ltp: float) -> list[tuple[m.Order, m.Fill]]:
        """Fill what this print fills: pending orders of the instrument with ``ts`` at or before it."""
        ids = self._by_key.get(instrument_key)
        if not ids:
            return []
        out = []
        for oid in list(ids):
            order = self.pending[oid]
            if order.ts > ts:
                continue
            if order.order_type == "LIMIT":
                crossed = ltp <= order.price if order.side == "BUY" else ltp >= order.price
                if not crossed:
                    continue
                price, slip = order.price, 0.0
            else:
                slippage = self.config.slippage_for(instrument_key)
                price = market_price(order.side, ltp, slippage)
                slip = round(abs(price - ltp), 4)
            self.cancel(oid)
            filled = msgspec.structs.replace(order, status="filled", fill_price=price, ts=ts)
            out.append((filled, m.Fill(
                fill_id=f"{oid}-F", order_id=oid, position_id=order.position_id, signal_id=order.signal_id,
                strategy=order.strategy, instrument_key=instrument_key, side=order.side,
                quantity=order.quantity, price=price, kind=order.kind, ts=ts, ltp=ltp, slippage=slip,
                client="paper")))
        return out


@dataclasses.dataclass
class PositionState:
    """One position as :class:`PositionBook` manages it (fields as :class:`messages.Position`).

    ``exiting``: the exit reason once an exit was triggered and its order is on its way;
    ``last_ts``/``last_seq``: the last tick applied (ticks not after it are ignored, so the same
    tick may be offered twice); ``last_mark_ts``: market time of the last PnL mark.
    """

    position_id: str
    signal_id: str
    strategy: str
    instrument_key: str
    side: str
    quantity: int
    lots: int
    lot_size: int
    entry_price: float
    entry_ts: int
    initial_stop: float
    stop_loss: float
    target: float
    client: str = "paper"
    trailed: bool = False
    status: str = "open"
    last_price: float = 0.0
    last_ts: int = 0
    last_seq: int = -1
    last_mark_ts: int = 0
    exiting: str = ""
    exit_price: float = 0.0
    exit_ts: int = 0
    exit_reason: str = ""
    realised_pnl: float = 0.0

    @property
    def sign(self) -> int:
        """+1 for a long, -1 for a short."""
        return 1 if self.side == "BUY" else -1

    def pnl_at(self, price: float) -> float:
        """PnL in rupees were the position closed at ``price``."""
        return (price - self.entry_price) * self.sign * self.quantity

    def message(self, event: str, ts: int) -> m.Position:
        """This state as a ``position.<instrument>`` message of ``event`` at market time ``ts``."""
        open_ = self.status == "open"
        return m.Position(
            position_id=self.position_id, signal_id=self.signal_id, strategy=self.strategy,
            instrument_key=self.instrument_key, side=self.side, quantity=self.quantity,
            entry_price=self.entry_price, entry_ts=self.entry_ts, stop_loss=self.stop_loss,
            target=self.target, status=self.status, event=event, ts=ts, lots=self.lots,
            lot_size=self.lot_size, initial_stop=self.initial_stop, trailed=self.trailed,
            last_price=self.last_price,
            unrealised_pnl=round(self.pnl_at(self.last_price), 2) if open_ else 0.0,
            realised_pnl=round(self.realised_pnl, 2), exit_price=self.exit_price, exit_ts=self.exit_ts,
            exit_reason=self.exit_reason, client=self.client)

    @classmethod
    def from_message(cls, p: m.Position) -> "PositionState":
        """Rebuild from the latest update of a position (the audit trail, after a restart)."""
        return cls(position_id=p.position_id, signal_id=p.signal_id, strategy=p.strategy,
                   instrument_key=p.instrument_key, side=p.side, quantity=p.quantity, lots=p.lots,
                   lot_size=p.lot_size, entry_price=p.entry_price, entry_ts=p.entry_ts,
                   initial_stop=p.initial_stop or p.stop_loss, stop_loss=p.stop_loss, target=p.target,
                   client=p.client, trailed=p.trailed, status=p.status,
                   last_price=p.last_price or p.entry_price, last_ts=p.ts, last_seq=-1,
                   last_mark_ts=p.ts, exit_price=p.exit_price, exit_ts=p.exit_ts,
                   exit_reason=p.exit_reason, realised_pnl=p.realised_pnl)


@dataclasses.dataclass
class Update:
    """What a tick did to a position: ``kind`` ``exit`` (with ``reason``, and the print ``ts`` /
    ``price`` the exit fills on), ``trail`` (stop moved to break-even) or ``mark``."""

    kind: str
    position: PositionState
    reason: str = ""
    ts: int = 0
    price: float = 0.0


class PositionBook:
    """Open positions and the day's realised PnL; the rules of the module docstring."""

    def __init__(self, config: PaperConfig):
        self.config = config.validate()
        self._square_off = hhmm(config.square_off, "SQUARE_OFF")
        self.open: dict[str, PositionState] = {}
        self.closed: dict[str, PositionState] = {}
        self.realised_by_day: dict[_dt.date, float] = {}
        self._by_key: dict[str, list[str]] = {}

    # --- lifecycle ------------------------------------------------------------------------------
    def add(self, pos: PositionState) -> PositionState:
        """Start managing ``pos`` (opened now, or recovered after a restart)."""
        self.open[pos.position_id] = pos
        self._by_key.setdefault(pos.instrument_key, []).append(pos.position_id)
        return pos

    def open_from_fill(self, fill: m.Fill, *, lots: int, lot_size: int, stop_loss: float,
                       target: float, client: str = "paper") -> PositionState:
        """Open the position an entry fill creates; ``stop_loss``/``target`` from the signal."""
        pos = PositionState(
            position_id=fill.position_id, signal_id=fill.signal_id, strategy=fill.strategy,
            instrument_key=fill.instrument_key, side=fill.side, quantity=fill.quantity, lots=lots,
            lot_size=lot_size, entry_price=fill.price, entry_ts=fill.ts, initial_stop=stop_loss,
            stop_loss=stop_loss, target=target, client=client, last_price=fill.ltp or fill.price,
            last_ts=fill.ts, last_seq=-1, last_mark_ts=fill.ts)
        return self.add(pos)

    def close(self, position_id: str, fill: m.Fill, reason: str) -> PositionState:
        """Close a position on its exit fill; books the realised PnL on the fill's IST date."""
        pos = self.open.pop(position_id)
        self._by_key[pos.instrument_key].remove(position_id)
        pos.status, pos.exiting = "closed", ""
        pos.exit_price, pos.exit_ts, pos.exit_reason = fill.price, fill.ts, reason
        pos.realised_pnl = pos.pnl_at(fill.price)
        pos.last_price, pos.last_ts = (fill.ltp or fill.price), max(pos.last_ts, fill.ts)
        day = ist_date(fill.ts)
        self.realised_by_day[day] = self.realised_by_day.get(day, 0.0) + pos.realised_pnl
        self.closed[position_id] = pos
        return pos

    def restore_closed(self, p: m.Position) -> None:
        """Count a position closed before a restart in its day's realised PnL."""
        if p.position_id in self.closed or p.status != "closed":
            return
        self.closed[p.position_id] = PositionState.from_message(p)
        day = ist_date(p.exit_ts or p.ts)
        self.realised_by_day[day] = self.realised_by_day.get(day, 0.0) + p.realised_pnl

    def day_pnl(self, day: _dt.date) -> float:
        """Realised PnL of positions closed on IST date ``day`` plus the unrealised PnL of every
        open position at its last price, rupees."""
        return self.realised_by_day.get(day, 0.0) + sum(p.pnl_at(p.last_price) for p in self.open.values())

    def unrealised(self) -> float:
        """Unrealised PnL of the open positions, rupees."""
        return sum(p.pnl_at(p.last_price) for p in self.open.values())

    # --- the rules --------------------------------------------------------------------------------
    def on_tick(self, instrument_key: str, ts: int, ltp: float, seq: int = 0) -> list[Update]:
        """Apply one print to the open positions of ``instrument_key``; see the module docstring."""
        ids = self._by_key.get(instrument_key)
        if not ids:
            return []
        out: list[Update] = []
        for pid in list(ids):
            pos = self.open[pid]
            if (ts, seq) <= (pos.last_ts, pos.last_seq) or ts < pos.entry_ts:
                continue
            prev_ts, prev_price = pos.last_ts, pos.last_price
            pos.last_ts, pos.last_seq, pos.last_price = ts, seq, ltp
            if pos.exiting:
                continue
            if ist_date(ts) > ist_date(pos.entry_ts):
                pos.last_ts, pos.last_price = prev_ts, prev_price
                out.append(self._exit(pos, "square_off", prev_ts, prev_price))
                continue
            long_ = pos.side == "BUY"
            if (ltp <= pos.stop_loss) if long_ else (ltp >= pos.stop_loss):
                out.append(self._exit(pos, "breakeven_stop" if pos.trailed else "stop", ts, ltp))
                continue
            if (ltp >= pos.target) if long_ else (ltp <= pos.target):
                out.append(self._exit(pos, "target", ts, ltp))
                continue
            if ist_minute(ts) >= self._square_off:
                out.append(self._exit(pos, "square_off", ts, ltp))
                continue
            minutes = self.config.time_exit_minutes
            if minutes and ts - pos.entry_ts >= minutes * 60_000:
                out.append(self._exit(pos, "time", ts, ltp))
                continue
            trigger = self.config.trail_trigger
            if trigger and not pos.trailed:
                reach = (pos.target - pos.entry_price) * pos.sign
                if reach > 0 and (ltp - pos.entry_price) * pos.sign >= trigger * reach \
                        and (pos.entry_price - pos.stop_loss) * pos.sign > 0:
                    pos.stop_loss, pos.trailed = pos.entry_price, True
                    out.append(Update("trail", pos, ts=ts, price=ltp))
            if ts - pos.last_mark_ts >= self.config.mark_interval_ms:
                pos.last_mark_ts = ts
                out.append(Update("mark", pos, ts=ts, price=ltp))
        return out

    def exit_now(self, position_id: str, reason: str) -> Update:
        """Trigger an exit at the position's last print (the kill switch)."""
        pos = self.open[position_id]
        return self._exit(pos, reason, pos.last_ts, pos.last_price)

    @staticmethod
    def _exit(pos: PositionState, reason: str, ts: int, price: float) -> Update:
        pos.exiting = reason
        return Update("exit", pos, reason=reason, ts=ts, price=price)


def summary(pos: PositionState) -> dict[str, Any]:
    """A one-line-able dict of a closed position (for logs)."""
    return {"position": pos.position_id, "instrument": pos.instrument_key, "side": pos.side,
            "qty": pos.quantity, "entry": pos.entry_price, "exit": pos.exit_price,
            "reason": pos.exit_reason, "pnl": round(pos.realised_pnl, 2)}
