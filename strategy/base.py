"""The strategy interface: subclass :class:`Strategy`, override the hooks you need, call ``self.signal``.

A strategy is a pure event handler. The process wrapper (``scripts/strategy_process.py``,
through :class:`strategy.runner.StrategyRunner`) subscribes to the bus for it and calls the
hooks; the strategy never opens a socket, file or terminal. It reports a trade idea only
through ``self.signal``, which builds a :class:`trading_core.messages.Signal` and hands it to
``emit``. So the same class runs live, in a replay and in a backtest (feed it candles in a loop).

Warm start contract: a strategy (re)started mid-session is first fed the session's recorded
1-minute candles (``self.warming`` is True meanwhile), then the live stream. Its state must
therefore be a deterministic function of the candles (and ticks) it was fed, and a signal's
``ts`` the market time of the event that caused it, never the wall clock: then the runner can
recognise and drop the signals it already emitted before the restart. State built only from
ticks is not rebuilt (ticks are not replayed).

Units: prices in rupees (float); timestamps ``ts`` epoch milliseconds UTC (int),
displayed in IST (Asia/Kolkata, UTC+05:30, no DST). A candle's ``ts`` is its
*open* time.

Example: :mod:`strategy.examples` (``PriorHighBreakout``, the README's example), run by naming it
in ``configs/strategies.json`` as ``"class": "strategy.examples:PriorHighBreakout"``. The built-in
ones: :mod:`strategy.ib_breakout`, the auction strategies (:mod:`strategy.auction` and its
subclasses, which keep a Market Profile per instrument), and :mod:`strategy.rule` (expressions
written in JSON).
"""

from __future__ import annotations

import datetime as _dt
import math
from typing import Any, Callable, ClassVar

import jsonschema

from trading_core.messages import Candle, Signal, Tick


class Strategy:
    """Base class of every strategy.

    ``name``: the instance name from ``configs/strategies.json`` (also its
    signal topic ``signal.<name>`` and process name). ``instruments``: the
    instrument keys it trades, e.g. ``["NSE_INDEX|Nifty 50"]``. ``params``:
    its parameters; missing ones take the defaults of :attr:`params_schema`,
    then everything is validated against it. ``emit``: called with each
    :class:`Signal` (the wrapper publishes it on the bus; tests collect it).

    Raises ``ValueError`` (message ``params.<field>: <why>``) on invalid params.
    """

    #: JSON-Schema of ``params`` (an object with one property per parameter, each with a
    #: ``default``). ``configs/strategies.json`` is validated against it.
    params_schema: ClassVar[dict[str, Any]] = {
        "type": "object", "properties": {}, "additionalProperties": False}

    #: Warm start: recorded trading days *before* the current one to replay at start (the current
    #: day's candles always are). Override per instance with ``warm_days`` in the config.
    warm_days: ClassVar[int] = 0

    def __init__(self, name: str, instruments: list[str], params: dict[str, Any],
                 emit: Callable[[Signal], None]) -> None:
        self.name = name
        self.instruments = list(instruments)
        self.params = self.resolve_params(params)
        self._emit = emit
        #: True while the runner replays history (warm start). Signals are still called for: the
        #: runner drops those already emitted before a restart. Strategies rarely need to look.
        self.warming = False

    # --- hooks: override what you need; all default to doing nothing ------------------------
    def on_start(self) -> None:
        """Called once, before the first event."""

    def on_tick(self, tick: Tick) -> None:
        """Called on every tick of a subscribed instrument."""

    def on_candle(self, candle: Candle) -> None:
        """Called on every *closed* 1-minute candle (``ts`` = open time) of a subscribed instrument."""

    def on_profile(self, profile: Any) -> None:
        """Called on every :class:`trading_core.messages.Profile` published on the bus
        (``profile.<instrument_key>``). Profiles are not replayed on warm start: strategies that
        need the profile during warm-up run their own ``LiveAuctionEngine`` fed from candles
        (see :class:`strategy.auction.AuctionStrategy`)."""

    # --- the one output ----------------------------------------------------------------------
    def signal(self, instrument_key: str, side: str, entry: float, stop_loss: float,
               target: float, reason: str, ts: int) -> Signal:
        """Build a :class:`Signal` (``strategy=self.name``), pass it to ``emit`` and return it.

        ``side`` ``"BUY"`` needs ``stop_loss < entry < target``; ``"SELL"`` needs
        ``target < entry < stop_loss`` (prices in rupees, finite). ``ts``: epoch ms UTC of the
        decision. Raises ``ValueError`` on a bad side, price order, non-finite price or an
        instrument this strategy was not configured for; nothing is emitted then.
        """
        if instrument_key not in self.instruments:
            raise ValueError(f"{self.name}: signal on {instrument_key!r}, not one of {self.instruments}")
        prices = (float(entry), float(stop_loss), float(target))
        if not all(math.isfinite(p) for p in prices):
            raise ValueError(f"{self.name}: non-finite price in entry/stop/target {prices}")
        entry, stop_loss, target = prices
        if side == "BUY":
            ok = stop_loss < entry < target
        elif side == "SELL":
            ok = target < entry < stop_loss
        else:
            raise ValueError(f"{self.name}: side must be 'BUY' or 'SELL', not {side!r}")
        if not ok:
            order = "stop_loss < entry < target" if side == "BUY" else "target < entry < stop_loss"
            raise ValueError(f"{self.name}: {side} needs {order}; got entry={entry}, "
                             f"stop_loss={stop_loss}, target={target}")
        sig = Signal(strategy=self.name, instrument_key=instrument_key, side=side, entry=entry,
                     stop_loss=stop_loss, target=target, reason=reason, ts=int(ts))
        self._emit(sig)
        return sig

    # --- parameters ----------------------------------------------------------------------------
    @classmethod
    def param_defaults(cls) -> dict[str, Any]:
        """``{param: default}`` for every property of :attr:`params_schema` that has one."""
        props = cls.params_schema.get("properties", {})
        return {k: v["default"] for k, v in props.items() if "default" in v}

    @classmethod
    def check_params(cls, params: dict[str, Any]) -> None:
        """Cross-field checks JSON-Schema cannot express; raise ``ValueError("params.<field>: why")``."""

    @classmethod
    def param_problems(cls, params: dict[str, Any]) -> list[str]:
        """Every cross-field problem, one line each (default: the one :meth:`check_params` raises).

        Override to report several at once (the rule strategy lists every bad expression).
        """
        try:
            cls.check_params(params)
        except ValueError as exc:
            return [str(exc).replace("\n", " ")]
        return []

    @classmethod
    def resolve_params(cls, params: dict[str, Any] | None) -> dict[str, Any]:
        """Defaults filled in, then validated (schema, then :meth:`check_params`).

        Returns a new dict. Raises ``ValueError("params.<field>: <why>")`` on the first error.
        """
        errors = param_errors(cls, params)
        if errors:
            raise ValueError(errors[0])
        return {**cls.param_defaults(), **(params or {})}


# --- pure helpers ----------------------------------------------------------------------------
IST = _dt.timezone(_dt.timedelta(hours=5, minutes=30), "IST")
_IST_OFFSET_MS = 19_800_000  # 5 h 30 min


def ist_date(ts_ms: int) -> _dt.date:
    """IST calendar date of an epoch-ms-UTC timestamp, e.g. ``1654055160000 -> date(2022, 6, 1)``."""
    return _dt.date(1970, 1, 1) + _dt.timedelta(days=(int(ts_ms) + _IST_OFFSET_MS) // 86_400_000)


def ist_minutes(ts_ms: int) -> int:
    """Whole minutes since IST midnight of an epoch-ms-UTC timestamp (09:15 IST -> 555)."""
    return ((int(ts_ms) + _IST_OFFSET_MS) % 86_400_000) // 60_000


def hhmm_minutes(hhmm: str) -> int:
    """``"14:30" -> 870`` (minutes since midnight). Raises ``ValueError`` unless ``HH:MM``, 00:00–23:59."""
    try:
        h, m = hhmm.split(":")
        if len(h) != 2 or len(m) != 2:
            raise ValueError
        hours, minutes = int(h), int(m)
    except (AttributeError, ValueError):
        raise ValueError(f"{hhmm!r} is not a time HH:MM") from None
    if not (0 <= hours < 24 and 0 <= minutes < 60):
        raise ValueError(f"{hhmm!r} is not a time HH:MM")
    return hours * 60 + minutes


def schema_error_line(error: jsonschema.ValidationError, skip: int = 0, prefix: str = "",
                      whole: str = "(top level)") -> str:
    """One line ``<field path>: <message>`` for a jsonschema error.

    The field path is ``prefix`` followed by ``error.absolute_path`` minus its first ``skip``
    parts, e.g. ``params.ib_minutes`` or ``instruments[0]``. For a missing required property or
    an unknown one, that property is named as the field; ``whole`` names an empty path.
    """
    parts = ([prefix] if prefix else []) + list(error.absolute_path)[skip:]
    message = error.message
    if error.validator == "required" and isinstance(error.instance, dict):
        missing = [p for p in error.validator_value if p not in error.instance]
        parts, message = parts + missing[:1], "required field is missing"
    elif error.validator == "pattern":
        message = f"{error.instance!r} does not match {error.validator_value}"
    elif error.validator == "additionalProperties" and isinstance(error.instance, dict):
        allowed = sorted(error.schema.get("properties", {}))
        extra = sorted(k for k in error.instance if k not in allowed)
        parts = parts + extra[:1]
        message = f"unknown field (allowed: {', '.join(allowed) or 'none'})"
    path = ""
    for p in parts:
        path += f"[{p}]" if isinstance(p, int) else (f".{p}" if path else str(p))
    return f"{path or whole}: {message}".replace("\n", " ")


def param_errors(cls: type[Strategy], params: Any) -> list[str]:
    """Every problem of ``params`` for strategy class ``cls``, one line each (``params.<field>: why``).

    Schema errors first (sorted by field); the class's :meth:`Strategy.param_problems` (by default
    :meth:`Strategy.check_params`) runs only when the schema accepts ``params`` (``None`` counts
    as ``{}``).
    """
    params = {} if params is None else params
    validator = jsonschema.Draft202012Validator(cls.params_schema)
    errors = sorted(validator.iter_errors(params), key=lambda e: [str(p) for p in e.absolute_path])
    lines = [schema_error_line(e, prefix="params") for e in errors]
    if not lines:
        lines.extend(line.replace("\n", " ")
                     for line in cls.param_problems({**cls.param_defaults(), **params}))
    return lines
