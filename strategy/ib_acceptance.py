"""Initial-balance breakout *with acceptance*: range extension that holds for two TPO periods.

Rule source
-----------
J. F. Dalton, E. T. Jones, R. B. Dalton, *Mind Over Markets* (1990; rev. 2013), ch. 2-3, and the
CBOT *Market Profile Handbook*: the initial balance (IB, periods A and B, 09:15-10:15 IST) is set
by day-timeframe traders; range extension beyond it shows other-timeframe participants entering.
Price *accepted* at a level is price that trades there over time, and the usual yardstick of time
is two TPO periods (one hour): a break that holds for two periods is accepted and tends to
continue (the day becomes a normal-variation or trend day, the range often extending to a second
IB range); a break that is quickly rejected is a failed auction. Compare
:mod:`strategy.ib_breakout`, which enters on the first 1-minute close beyond the IB.

The rule implemented
--------------------
Per instrument and regular session (which must start with its 09:15 candle):

* IB = high/low of periods A and B from the Market Profile (``profile.ib_high``/``ib_low``).
* Upward acceptance: ``acceptance_periods`` (default 2) *consecutive* closed periods from C on,
  each *closing* (its last 1-minute close) above IB high. Downward: each closing below IB low.
* BUY at the end of the last accepting period: ``entry`` = its close; ``target`` = IB high +
  ``target_ib_multiple`` x IB range (default 1: the IB doubled); ``stop_loss`` = IB mid
  (``stop="ib_mid"``), IB low (``"ib_opposite"``) or the lowest low of the accepting periods
  (``"acceptance_extreme"``: the acceptance fails if price gets back there). SELL mirrors it.
* No signal when the entry is already at or beyond the target, or the stop is not below (BUY) /
  above (SELL) the entry; at most one signal per side and ``max_signals_per_day`` in all; none
  from a period ending after ``last_entry`` (IST). Signal ``ts`` = the period's end.

Prices in rupees; ``ts`` epoch ms UTC.
"""

from __future__ import annotations

from typing import Any, ClassVar

from strategy.auction import (AuctionStrategy, Book, Period, check_window, fmt, hhmm_of,
                              hhmm_param, session_minute_ms)


class IBAcceptance(AuctionStrategy):
    """IB breakout confirmed by two TPO periods of acceptance; rule and sources in the module doc.

    Params: ``acceptance_periods`` (1-6, 2), ``stop`` (``ib_mid`` | ``ib_opposite`` |
    ``acceptance_extreme``), ``target_ib_multiple`` (0.1-10, 1.0), ``max_signals_per_day`` (1-2, 2),
    ``last_entry`` (IST ``HH:MM``, ``"14:30"``).
    """

    params_schema: ClassVar[dict[str, Any]] = {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "acceptance_periods": {
                "type": "integer", "minimum": 1, "maximum": 6, "default": 2,
                "description": "consecutive TPO periods that must close beyond the IB (Dalton: 2)"},
            "stop": {
                "enum": ["ib_mid", "ib_opposite", "acceptance_extreme"], "default": "ib_mid",
                "description": "IB mid, the opposite IB extreme, or the accepting periods' extreme"},
            "target_ib_multiple": {
                "type": "number", "minimum": 0.1, "maximum": 10, "default": 1.0,
                "description": "target = broken IB edge +/- this x IB range"},
            "max_signals_per_day": {
                "type": "integer", "minimum": 1, "maximum": 2, "default": 2,
                "description": "per instrument; at most one per side anyway"},
            "last_entry": hhmm_param("14:30", "no signal from a period ending after this IST time"),
        },
    }

    @classmethod
    def check_params(cls, params: dict[str, Any]) -> None:
        """``last_entry`` must leave room for the acceptance periods after the IB (10:15)."""
        check_window(params, None, "last_entry")
        earliest = 10 * 60 + 15 + 30 * params["acceptance_periods"]
        h, m = params["last_entry"].split(":")
        if int(h) * 60 + int(m) < earliest:
            raise ValueError(f"params.last_entry: {params['last_entry']!r} is before the first "
                             f"possible acceptance at {earliest // 60:02d}:{earliest % 60:02d} "
                             f"(acceptance_periods={params['acceptance_periods']})")

    def on_period_close(self, book: Book, period: Period) -> None:
        s, p = book.session, self.params
        n = p["acceptance_periods"]
        if not s.full or period.index < 2 + n - 1 or len(s.fired) >= p["max_signals_per_day"]:
            return
        if period.end_ms > session_minute_ms(s, p["last_entry"]):
            return
        window = s.periods[-n:]
        if len(window) < n or window[0].index != period.index - n + 1 or window[0].index < 2:
            return                                   # not n consecutive post-IB periods
        prof = book.profile
        hi, lo = prof.ib_high, prof.ib_low
        if hi is None or lo is None or hi <= lo:
            return
        rng = hi - lo
        entry = period.close
        letters = "".join(w.letter for w in window)
        if "BUY" not in s.fired and all(w.close > hi for w in window):
            target = hi + p["target_ib_multiple"] * rng
            stop = {"ib_mid": (hi + lo) / 2, "ib_opposite": lo,
                    "acceptance_extreme": min(w.low for w in window)}[p["stop"]]
            if stop < entry < target:
                s.fired.add("BUY")
                self.signal(book.instrument_key, "BUY", entry, stop, target,
                            f"range extension above IB high {fmt(hi)} accepted: periods {letters} "
                            f"closed above it (IB {fmt(lo)}\u2013{fmt(hi)}); {hhmm_of(period.end_ms)} "
                            f"close {fmt(entry)}", period.end_ms)
        elif "SELL" not in s.fired and all(w.close < lo for w in window):
            target = lo - p["target_ib_multiple"] * rng
            stop = {"ib_mid": (hi + lo) / 2, "ib_opposite": hi,
                    "acceptance_extreme": max(w.high for w in window)}[p["stop"]]
            if target < entry < stop:
                s.fired.add("SELL")
                self.signal(book.instrument_key, "SELL", entry, stop, target,
                            f"range extension below IB low {fmt(lo)} accepted: periods {letters} "
                            f"closed below it (IB {fmt(lo)}\u2013{fmt(hi)}); {hhmm_of(period.end_ms)} "
                            f"close {fmt(entry)}", period.end_ms)
