"""Initial-balance breakout (range extension), on closed 1-minute candles.

Rule source
-----------
Market Profile / Auction Market Theory: J. Peter Steidlmayer (CBOT, 1980s;
Steidlmayer & Koy, *Markets and Market Logic*, 1986) and James F. Dalton,
E. T. Jones, R. B. Dalton, *Mind Over Markets* (1990; rev. 2013). The *initial
balance* (IB) is the range of the first hour of the regular session (the A and
B 30-minute periods), set mostly by day-timeframe traders. When price extends
beyond it ("range extension"), other-timeframe participants are entering on
that side, and the day often builds away from the IB (trend / normal-variation
days); a day that stays inside its IB is a balance (non-trend / normal) day.

The rule implemented
--------------------
Per instrument and IST calendar day, with the regular session 09:15–15:30 IST:

* IB = highest high / lowest low of the candles whose *open* time is in
  ``[09:15, 09:15 + ib_minutes)``. Candles opening before 09:15 (the 09:08
  pre-open auction print) or at/after 15:30 (post-close prints, Muhurat evening
  sessions, the session extension of an outage day) are ignored.
* The IB is complete at the first candle opening at or after ``09:15 + ib_minutes``
  (missing minutes inside the IB are tolerated). It counts only if the day's first
  regular candle was the 09:15 one: a strategy started late does not trade a
  truncated IB. A zero-range IB is not traded.
* Then the first candle whose *close* is above IB high gives a BUY, the first
  close below IB low a SELL: ``entry`` = that close, ``stop_loss`` = IB mid
  (``stop="ib_mid"``) or the opposite IB extreme (``stop="ib_opposite"``: IB low
  for a BUY, IB high for a SELL), ``target`` = entry ± ``target_ib_multiple`` × IB
  range. Wicks beyond the IB without a close beyond it do not count.
* At most one signal per side per day and ``max_signals_per_day`` in all; none
  once the candle closes after ``last_entry`` (IST). The signal's ``ts`` is the
  candle's close time (open + 60 s), when the decision could first be made.
* State resets on a new IST date. Candles of other instruments, not ``final``,
  not ``"1m"``, or not newer than the last one seen (duplicates, replays out of
  order) are ignored.

Prices in rupees (floats as computed, not rounded to the tick).
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from typing import Any, ClassVar

from strategy.base import Strategy, hhmm_minutes, ist_date, ist_minutes
from trading_core.messages import Candle

SESSION_OPEN = 9 * 60 + 15    # 09:15 IST, minutes since midnight
SESSION_CLOSE = 15 * 60 + 30  # 15:30 IST
CANDLE_MS = 60_000


@dataclass
class _Day:
    """IB state of one instrument on one IST date."""

    date: _dt.date
    high: float | None = None
    low: float | None = None
    saw_regular: bool = False    # any regular-session candle yet
    valid: bool = False          # the first regular candle was the 09:15 one
    complete: bool = False       # a candle at/after the IB end has been seen
    fired: list[str] = field(default_factory=list)


class IBBreakout(Strategy):
    """Initial-balance breakout; see the module docstring for the rule and its sources.

    Params (defaults in :attr:`params_schema`): ``ib_minutes`` (int, 60), ``stop``
    (``"ib_mid"`` | ``"ib_opposite"``), ``target_ib_multiple`` (float 0.1–10, 1.0),
    ``max_signals_per_day`` (1 or 2, 2), ``last_entry`` (``"HH:MM"`` IST, ``"14:30"``).
    """

    params_schema: ClassVar[dict[str, Any]] = {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "ib_minutes": {
                "type": "integer", "minimum": 1, "maximum": 360, "default": 60,
                "description": "IB length in minutes from 09:15 IST (Dalton: 60)"},
            "stop": {
                "enum": ["ib_mid", "ib_opposite"], "default": "ib_mid",
                "description": "stop at IB mid, or at the opposite IB extreme"},
            "target_ib_multiple": {
                "type": "number", "minimum": 0.1, "maximum": 10, "default": 1.0,
                "description": "target = entry +/- this x IB range"},
            "max_signals_per_day": {
                "type": "integer", "minimum": 1, "maximum": 2, "default": 2,
                "description": "per instrument; at most one per side anyway"},
            "last_entry": {
                "type": "string", "pattern": "^([01][0-9]|2[0-3]):[0-5][0-9]$", "default": "14:30",
                "description": "no signal from a candle closing after this IST time"},
        },
    }

    @classmethod
    def check_params(cls, params: dict[str, Any]) -> None:
        """``last_entry`` must fall after the IB end and by 15:30. Raises ``ValueError``."""
        ib_end = SESSION_OPEN + params["ib_minutes"]
        last = hhmm_minutes(params["last_entry"])
        if not ib_end < last <= SESSION_CLOSE:
            raise ValueError(
                f"params.last_entry: {params['last_entry']!r} must be after the IB end "
                f"{ib_end // 60:02d}:{ib_end % 60:02d} (ib_minutes={params['ib_minutes']}) "
                f"and not after 15:30")

    def __init__(self, name, instruments, params, emit) -> None:
        super().__init__(name, instruments, params, emit)
        p = self.params
        self._ib_end = SESSION_OPEN + p["ib_minutes"]
        self._last_entry = hhmm_minutes(p["last_entry"])
        self._days: dict[str, _Day] = {}
        self._last_ts: dict[str, int] = {}

    def initial_balance(self, instrument_key: str) -> tuple[float, float] | None:
        """``(low, high)`` of today's completed, valid IB for ``instrument_key``, else ``None``."""
        day = self._days.get(instrument_key)
        if day is None or not (day.complete and day.valid) or day.high is None:
            return None
        return day.low, day.high

    def on_candle(self, candle: Candle) -> None:
        key = candle.instrument_key
        if key not in self.instruments or candle.interval != "1m" or not candle.final:
            return
        if candle.ts <= self._last_ts.get(key, -1):
            return
        self._last_ts[key] = candle.ts

        date, minute = ist_date(candle.ts), ist_minutes(candle.ts)
        day = self._days.get(key)
        if day is None or day.date != date:
            day = self._days[key] = _Day(date)
        if not SESSION_OPEN <= minute < SESSION_CLOSE:
            return  # pre-open auction print, post-close, evening (Muhurat) session
        if not day.saw_regular:
            day.saw_regular, day.valid = True, minute == SESSION_OPEN

        if minute < self._ib_end:  # building the IB
            day.high = candle.high if day.high is None else max(day.high, candle.high)
            day.low = candle.low if day.low is None else min(day.low, candle.low)
            return
        day.complete = True
        if not day.valid or day.high is None or day.high <= day.low:
            return
        if minute + 1 > self._last_entry or len(day.fired) >= self.params["max_signals_per_day"]:
            return
        if candle.close > day.high and "BUY" not in day.fired:
            self._fire(candle, day, "BUY")
        elif candle.close < day.low and "SELL" not in day.fired:
            self._fire(candle, day, "SELL")

    def _fire(self, candle: Candle, day: _Day, side: str) -> None:
        high, low = day.high, day.low
        rng, mid = high - low, (high + low) / 2
        entry = candle.close
        reach = self.params["target_ib_multiple"] * rng
        if side == "BUY":
            stop = mid if self.params["stop"] == "ib_mid" else low
            target, where = entry + reach, f"above IB high {_fmt(high)}"
        else:
            stop = mid if self.params["stop"] == "ib_mid" else high
            target, where = entry - reach, f"below IB low {_fmt(low)}"
        reason = (f"1m close {_fmt(entry)} {where} "
                  f"(IB {_fmt(low)}\u2013{_fmt(high)}, range {_fmt(rng)})")
        day.fired.append(side)
        self.signal(candle.instrument_key, side, entry, stop, target, reason,
                    candle.ts + CANDLE_MS)


def _fmt(price: float) -> str:
    """``16702.5 -> "16702.5"``, ``130.00000001 -> "130.0"`` (rupees, at most 2 decimals)."""
    return repr(round(price, 2))
