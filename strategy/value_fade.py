"""Responsive fade at the prior day's value-area edges: sell a failed probe above prior VAH, buy
a failed probe below prior VAL, with the stop beyond the probe's extreme.

Rule source
-----------
J. F. Dalton, E. T. Jones, R. B. Dalton, *Mind Over Markets* (1990; rev. 2013), ch. 2 and 7, and
J. P. Steidlmayer: *responsive* activity is selling above value and buying below it, expecting
price to return to value; in a balanced (bracketing) market the prior day's value-area edges are
where responsive sellers and buyers appear. A probe beyond value that is rejected (price comes
back into value) is faded back toward the prior POC. A probe that goes far beyond value is
*initiative* activity (value is moving) and is not faded.

The rule implemented
--------------------
Per instrument and regular session (which must start with its 09:15 candle), with the prior
trading day's POC, VAL and VAH (row prices; value spans ``[VAL, VAH + row_size)``):

* With ``require_open_inside_value`` (default) the day must open inside prior value (balance).
* SELL: the session has traded at or above the value top edge ``VAH + row_size`` (a probe), the
  previous 1-minute close was at or above that edge and this one closes back below it (the probe
  is rejected), and the session high is no more than ``max_probe_rows`` rows beyond the edge.
  ``entry`` = the close, ``stop_loss`` = session high + ``stop_buffer_rows`` rows (beyond the
  extreme), ``target`` = prior POC (``target="poc"``) or prior VAL (``"other_side"``).
* BUY mirrors it at the bottom edge VAL: low below VAL, previous close below, this close at or
  above VAL; stop = session low - buffer; target = prior POC or the value top edge.
* Only candles closing within ``first_entry``-``last_entry`` (IST) can signal; one signal per
  side per day; none when the entry is not strictly between stop and target. Signal ``ts`` = the
  candle's close time (open + 60 s).

Prices in rupees; ``ts`` epoch ms UTC.
"""

from __future__ import annotations

from typing import Any, ClassVar

from strategy.auction import (CANDLE_MS, AuctionStrategy, Book, check_window, fmt, hhmm_of,
                              hhmm_param, session_minute_ms)
from trading_core.messages import Candle


class ValueFade(AuctionStrategy):
    """Responsive fade of a rejected probe beyond prior value; rule and sources in the module doc.

    Params: ``max_probe_rows`` (0-50, 4), ``stop_buffer_rows`` (0-10, 1), ``target`` (``poc`` |
    ``other_side``), ``require_open_inside_value`` (bool, true), ``first_entry`` (``"09:45"``),
    ``last_entry`` (``"14:30"``), IST.
    """

    params_schema: ClassVar[dict[str, Any]] = {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "max_probe_rows": {
                "type": "integer", "minimum": 0, "maximum": 50, "default": 4,
                "description": "deeper probes beyond value are initiative, not faded (rows)"},
            "stop_buffer_rows": {
                "type": "integer", "minimum": 0, "maximum": 10, "default": 1,
                "description": "stop this many rows beyond the probe's extreme"},
            "target": {
                "enum": ["poc", "other_side"], "default": "poc",
                "description": "prior POC, or the other edge of prior value"},
            "require_open_inside_value": {
                "type": "boolean", "default": True,
                "description": "trade only days that open inside prior value (balance)"},
            "first_entry": hhmm_param("09:45", "no signal from a candle closing before this IST time"),
            "last_entry": hhmm_param("14:30", "no signal from a candle closing after this IST time"),
        },
    }

    @classmethod
    def check_params(cls, params: dict[str, Any]) -> None:
        """``first_entry`` < ``last_entry``, both within 09:15-15:30 IST."""
        check_window(params, "first_entry", "last_entry")

    def on_session_candle(self, book: Book, candle: Candle) -> None:
        s, p = book.session, self.params
        prev_close, s.state["prev_close"] = s.state.get("prev_close"), candle.close
        prior = book.prior
        if not s.full or prior is None or prev_close is None:
            return
        row = prior.row_size
        bottom, top = prior.val, prior.vah + row
        if p["require_open_inside_value"] and not bottom <= s.open < top:
            return
        close_ms = candle.ts + CANDLE_MS
        if not session_minute_ms(s, p["first_entry"]) <= close_ms <= session_minute_ms(s, p["last_entry"]):
            return
        entry, reach = candle.close, p["max_probe_rows"] * row
        value = f"prior value {fmt(bottom)}\u2013{fmt(top)} ({prior.date})"
        if ("SELL" not in s.fired and s.high >= top and prev_close >= top and entry < top
                and s.high - top <= reach):
            stop = s.high + p["stop_buffer_rows"] * row
            target = prior.poc if p["target"] == "poc" else bottom
            if target < entry < stop:
                s.fired.add("SELL")
                self.signal(book.instrument_key, "SELL", entry, stop, target,
                            f"responsive sell: probe above {value} to {fmt(s.high)} rejected, "
                            f"{hhmm_of(close_ms)} close {fmt(entry)} back inside; target "
                            f"{'prior POC' if p['target'] == 'poc' else 'prior VAL'} {fmt(target)}",
                            close_ms)
        elif ("BUY" not in s.fired and s.low < bottom and prev_close < bottom and entry >= bottom
              and bottom - s.low <= reach):
            stop = s.low - p["stop_buffer_rows"] * row
            target = prior.poc if p["target"] == "poc" else top
            if stop < entry < target:
                s.fired.add("BUY")
                self.signal(book.instrument_key, "BUY", entry, stop, target,
                            f"responsive buy: probe below {value} to {fmt(s.low)} rejected, "
                            f"{hhmm_of(close_ms)} close {fmt(entry)} back inside; target "
                            f"{'prior POC' if p['target'] == 'poc' else 'value top'} {fmt(target)}",
                            close_ms)
