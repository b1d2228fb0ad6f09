"""Rule strategies written in JSON: entry, stop, target and exit as expressions (no Python).

Example entry of ``configs/strategies.json``::

    {"name": "ema_value_nifty", "class": "rule", "instruments": ["NSE_INDEX|Nifty 50"],
     "params": {
       "buy":  {"when": "close > profile.vah and ema(close, 20) > ema(close, 50)",
                "stop_loss": "close - 2 * atr(14)", "target": "close + 3 * atr(14)",
                "exit": "close < ema(close, 20)"},
       "sell": {"when": "close < profile.val and ema(close, 20) < ema(close, 50)",
                "stop_loss": "close + 2 * atr(14)", "target": "close - 3 * atr(14)"},
       "first_entry": "09:30", "last_entry": "15:00", "max_signals_per_day": 4}}

The expression language (candle names, ``profile.<field>``, indicators from ``talipp``, the time
limit) is described in :mod:`strategy.expressions`. Every expression is compiled when the file is
loaded, so ``python3 scripts/validate_strategies.py`` reports a bad one with strategy and field.

How it trades (per instrument, on each 1-minute candle of a regular session, see
:class:`strategy.auction.AuctionStrategy`):

1. Every indicator and series is updated (on every candle, so ``crosses_above`` and ``prev`` see
   each candle once, whatever the conditions short-circuit).
2. If a virtual position is open it is closed when this candle touches its stop-loss or target,
   or when the side's ``exit`` expression is true. Exits emit no signal; they re-arm entries.
3. When flat, a side *fires* when its ``when`` expression turns true (it was false on the
   previous candle of the session: edge-triggered, so a condition that stays true gives one
   signal) and the candle closes within ``first_entry``-``last_entry`` IST, fewer than
   ``max_signals_per_day`` signals were given today, and ``stop_loss``/``target`` evaluate to
   prices on the right sides of the close (BUY: stop < close < target). ``entry`` = the close;
   signal ``ts`` = the candle's close time. If both sides fire on one candle, BUY wins.
4. At a new session the position and the edges reset; indicators carry on.
"""

from __future__ import annotations

import collections
import math
from typing import Any, ClassVar

from strategy.auction import (CANDLE_MS, AuctionStrategy, Book, check_window, fmt, hhmm_of,
                              hhmm_param, session_minute_ms)
from strategy.expressions import NAN, PROFILE_FIELDS, Evaluator, ExpressionError, Program
from trading_core.messages import Candle
from trading_core.sessions import fmt_ist

SIDES = ("buy", "sell")
_EXPR = {"type": "string", "minLength": 1, "maxLength": 2000}


class RuleStrategy(AuctionStrategy):
    """A strategy defined by expressions in ``configs/strategies.json``; see the module doc.

    Params: ``buy`` / ``sell`` (at least one; each ``{"when", "stop_loss", "target"[, "exit"]}``
    expressions), ``first_entry`` (``"09:15"``), ``last_entry`` (``"15:00"``) IST,
    ``max_signals_per_day`` (1-100, 4), ``max_eval_ms`` (time limit of one evaluation, 1-1000,
    50). Raises ``ValueError`` naming the field when an expression does not compile.
    """

    params_schema: ClassVar[dict[str, Any]] = {
        "type": "object",
        "additionalProperties": False,
        "$defs": {"side": {
            "type": "object", "additionalProperties": False,
            "required": ["when", "stop_loss", "target"],
            "properties": {"when": {**_EXPR, "description": "entry condition"},
                           "stop_loss": {**_EXPR, "description": "stop-loss price (rupees)"},
                           "target": {**_EXPR, "description": "target price (rupees)"},
                           "exit": {**_EXPR, "description": "closes the virtual position"}}}},
        "properties": {
            "buy": {"$ref": "#/$defs/side"},
            "sell": {"$ref": "#/$defs/side"},
            "first_entry": hhmm_param("09:15", "no signal from a candle closing before this IST time"),
            "last_entry": hhmm_param("15:00", "no signal from a candle closing after this IST time"),
            "max_signals_per_day": {"type": "integer", "minimum": 1, "maximum": 100, "default": 4,
                                    "description": "per instrument and day"},
            "max_eval_ms": {"type": "number", "minimum": 1, "maximum": 1000, "default": 50,
                            "description": "time limit of one expression evaluation"},
        },
    }

    @classmethod
    def compile_params(cls, params: dict[str, Any]) -> tuple[Program, list[str]]:
        """Compile every expression of ``params``; return the program and every problem found
        (one line each, ``params.<side>.<field>: why``)."""
        program, problems = Program(), []
        for side in SIDES:
            for field in ("when", "stop_loss", "target", "exit"):
                text = (params.get(side) or {}).get(field)
                if text is None:
                    continue
                try:
                    program.compile(f"params.{side}.{field}", text)
                except ExpressionError as exc:
                    problems.append(str(exc))
        return program, problems

    @classmethod
    def param_problems(cls, params: dict[str, Any]) -> list[str]:
        """At least one side, a valid entry window, and every expression compiling."""
        problems = []
        if not any(side in params for side in SIDES):
            problems.append("params: a rule strategy needs \"buy\" or \"sell\" (or both)")
        try:
            check_window(params, "first_entry", "last_entry")
        except ValueError as exc:
            problems.append(str(exc))
        return problems + cls.compile_params(params)[1]

    def __init__(self, name, instruments, params, emit) -> None:
        super().__init__(name, instruments, params, emit)
        self.program, problems = self.compile_params(self.params)
        if problems:
            raise ValueError(problems[0])
        self.sides = [s for s in SIDES if s in self.params]
        self.evaluators = {k: Evaluator(self.program, self.params["max_eval_ms"]) for k in self.instruments}
        #: The last 200 virtual exits: ``(instrument_key, side, ts, why)``.
        self.exits: collections.deque = collections.deque(maxlen=200)

    def on_session_candle(self, book: Book, candle: Candle) -> None:
        s, p = book.session, self.params
        ev = self.evaluators[book.instrument_key]
        symbols = {"open": candle.open, "high": candle.high, "low": candle.low, "close": candle.close,
                   "volume": candle.volume, "oi": candle.oi, "ts": candle.ts,
                   "time": hhmm_of(candle.ts), "date": fmt_ist(candle.ts)[:10]}
        if self.program.uses_profile:
            book.profile                  # built now (cached), so no expression's time limit pays for it
            symbols["profile"] = ProfileView(book)
        ev.update(symbols, (candle.open, candle.high, candle.low, candle.close, candle.volume))
        st = s.state
        close_ms = candle.ts + CANDLE_MS

        pos = st.get("position")
        if pos is not None:
            side, stop, target = pos
            why = None
            if (candle.low <= stop) if side == "buy" else (candle.high >= stop):
                why = f"stop-loss {fmt(stop)} touched"
            elif (candle.high >= target) if side == "buy" else (candle.low <= target):
                why = f"target {fmt(target)} touched"
            elif "exit" in p[side] and _truthy(ev.value(f"params.{side}.exit")):
                why = f"exit: {p[side]['exit']}"
            if why:
                st["position"] = None
                self.exits.append((book.instrument_key, side.upper(), close_ms, why))

        fired = {side: _truthy(ev.value(f"params.{side}.when")) for side in self.sides}
        edges = {side: fired[side] and not st.get(f"was_{side}", False) for side in self.sides}
        for side in self.sides:
            st[f"was_{side}"] = fired[side]
        if st.get("position") is not None or st.get("count", 0) >= p["max_signals_per_day"]:
            return
        if not session_minute_ms(s, p["first_entry"]) <= close_ms <= session_minute_ms(s, p["last_entry"]):
            return
        for side in self.sides:
            if not edges[side]:
                continue
            entry = candle.close
            stop = _price(ev.value(f"params.{side}.stop_loss"))
            target = _price(ev.value(f"params.{side}.target"))
            ok = (stop < entry < target) if side == "buy" else (target < entry < stop)
            if not ok:
                continue
            st["position"] = (side, stop, target)
            st["count"] = st.get("count", 0) + 1
            self.signal(book.instrument_key, side.upper(), entry, stop, target,
                        f"{p[side]['when']} at {hhmm_of(close_ms)} (close {fmt(entry)})", close_ms)
            return


class ProfileView:
    """``profile.<field>`` inside expressions: today's profile and the prior day of a
    :class:`Book`, with NaN / ``""`` / False for what is not known yet. Read-only and lazy: the
    profile is built (once per candle) only if an expression actually reads a field."""

    __slots__ = ("_book",)

    def __init__(self, book: Book) -> None:
        object.__setattr__(self, "_book", book)

    def __getattr__(self, field: str) -> Any:
        kind = PROFILE_FIELDS.get(field)
        if kind is None:
            raise AttributeError(f"profile has no field {field!r}")
        book = self._book
        if field.startswith("prior_"):
            prior = book.prior
            value = getattr(prior, field[6:], None) if prior is not None else None
        else:
            prof = book.profile
            name = f"{field}_ib" if field in ("ext_up", "ext_down") else field
            value = getattr(prof, name, None) if prof is not None else None
        if kind == "num":
            return NAN if value is None else float(value)
        if kind == "str":
            return "" if value is None else str(value)
        return bool(value)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("profile fields are read-only")


def _truthy(value: Any) -> bool:
    """Condition result: NaN (unknown) counts as false."""
    if isinstance(value, float) and math.isnan(value):
        return False
    return bool(value)


def _price(value: Any) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return NAN
    return v if math.isfinite(v) else NAN
