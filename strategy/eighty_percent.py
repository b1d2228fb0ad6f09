"""The 80 % rule: an open outside the prior day's value that gets back into value and is accepted
there tends to traverse the whole value area.

Rule source
-----------
CBOT *Market Profile Handbook* and J. F. Dalton, E. T. Jones, R. B. Dalton, *Mind Over Markets*
(1990; rev. 2013), ch. 3 and 7: "if the market opens above or below the previous day's value area
and then trades back into value for two consecutive half-hour periods, there is a high (the
traders' "80 %") probability that it will fill the value area", i.e. reach its other side. The
market has tested outside value, found no acceptance there, and returned to the prior day's fair
price zone.

The rule implemented
--------------------
Per instrument and regular session (which must start with its 09:15 candle), with the prior
trading day's value area from the Market Profile the strategy builds (prior VAL and VAH are row
prices, so value spans ``[VAL, VAH + row_size)``; the prior day must have been seen, see
:class:`strategy.auction.Book`):

* The day *opens outside value*: the 09:15 open at or above the top edge ``VAH + row_size`` (look
  for a SELL) or below ``VAL`` (look for a BUY). An open inside value gives nothing that day.
* *Re-entry accepted*: ``acceptance_periods`` (default 2) consecutive TPO periods (A counts) each
  *closing* inside value.
* Then, at the end of the last of those periods: SELL (opened above) with ``entry`` = its close,
  ``target`` = prior VAL (the other side of value), ``stop_loss`` = the highest of the value top
  edge and the accepting periods' highs (back above value, the rule has failed); BUY mirrors it
  with target = the top edge ``VAH + row_size`` and the stop below VAL / the periods' lows.
* One signal per instrument and day, none from a period ending after ``last_entry`` (IST), none
  when the entry is not strictly between stop and target. Signal ``ts`` = the period's end.

Prices in rupees; ``ts`` epoch ms UTC.
"""

from __future__ import annotations

from typing import Any, ClassVar

from strategy.auction import (AuctionStrategy, Book, Period, check_window, fmt, hhmm_of,
                              hhmm_param, session_minute_ms)


class EightyPercentRule(AuctionStrategy):
    """The 80 % rule of Market Profile; rule and sources in the module docstring.

    Params: ``acceptance_periods`` (1-4, 2), ``last_entry`` (IST ``HH:MM``, ``"14:30"``).
    """

    params_schema: ClassVar[dict[str, Any]] = {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "acceptance_periods": {
                "type": "integer", "minimum": 1, "maximum": 4, "default": 2,
                "description": "consecutive TPO periods closing inside prior value (CBOT/Dalton: 2)"},
            "last_entry": hhmm_param("14:30", "no signal from a period ending after this IST time"),
        },
    }

    @classmethod
    def check_params(cls, params: dict[str, Any]) -> None:
        """``last_entry`` within the session, after the first possible acceptance."""
        check_window(params, None, "last_entry")
        earliest = 9 * 60 + 15 + 30 * params["acceptance_periods"]
        h, m = params["last_entry"].split(":")
        if int(h) * 60 + int(m) < earliest:
            raise ValueError(f"params.last_entry: {params['last_entry']!r} is before the first "
                             f"possible acceptance at {earliest // 60:02d}:{earliest % 60:02d}")

    def on_period_close(self, book: Book, period: Period) -> None:
        s, p = book.session, self.params
        if not s.full or s.fired or period.end_ms > session_minute_ms(s, p["last_entry"]):
            return
        prior = book.prior
        if prior is None:
            return
        bottom, top = prior.val, prior.vah + prior.row_size
        if s.open >= top:
            side = "SELL"
        elif s.open < bottom:
            side = "BUY"
        else:
            return
        n = p["acceptance_periods"]
        window = s.periods[-n:]
        if len(window) < n or window[0].index != period.index - n + 1:
            return
        if not all(bottom <= w.close < top for w in window):
            return
        entry = period.close
        letters = "".join(w.letter for w in window)
        value = f"prior value {fmt(bottom)}\u2013{fmt(top)} ({prior.date})"
        if side == "SELL":
            stop, target = max([top] + [w.high for w in window]), bottom
            where = "above"
        else:
            stop, target = min([bottom] + [w.low for w in window]), top
            where = "below"
        if not (min(stop, target) < entry < max(stop, target)):
            return
        s.fired.add(side)
        self.signal(book.instrument_key, side, entry, stop, target,
                    f"80% rule: opened {where} {value} at {fmt(s.open)}, periods {letters} closed "
                    f"inside value; {hhmm_of(period.end_ms)} close {fmt(entry)}, target the other "
                    f"side {fmt(target)}", period.end_ms)
