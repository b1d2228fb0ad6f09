"""Open-drive continuation: trade in the direction of an Open Drive once the opening period ends.

Rule source
-----------
J. F. Dalton, E. T. Jones, R. B. Dalton, *Mind Over Markets* (1990; rev. 2013), ch. 3, "Open
types": the Open Drive is the strongest open, where the market opens and auctions aggressively in
one direction, never trading back to the open; it shows other-timeframe conviction and often
starts a trend day, so the trader goes with it and keeps the position while the open holds. The
Open Test Drive (a brief test the other way first) is the next-strongest. The classification is
the engine's (:func:`trading_core.profile_rules.classify_open`, thresholds in
:class:`trading_core.profile_config.ProfileConfig`: the open within 10 % of A's range from one
extreme and A closing at least 75 % of its range away).

The rule implemented
--------------------
Per instrument and regular session (which must start with its 09:15 candle):

* At the close of period A (09:15-09:45 IST) the profile's open type is read. ``Open Drive Up``
  (and ``Open Test Drive Up`` when ``include_test_drive``) gives a BUY, the ``Down`` forms a SELL.
* With ``require_outside_value`` the open must also lie outside the prior day's value in the
  drive's direction (``open_vs_prior_value`` above for a BUY, below for a SELL).
* ``entry`` = A's last close; ``stop_loss`` = A's low for a BUY / high for a SELL
  (``stop="a_extreme"``) or the session open (``"open"``: Dalton's "the drive must not return to
  the open"); ``target`` = entry +/- ``target_multiple`` x A's range.
* At most one signal per instrument and day; signal ``ts`` = the end of period A (09:45 IST).

Prices in rupees; ``ts`` epoch ms UTC.
"""

from __future__ import annotations

from typing import Any, ClassVar

from strategy.auction import AuctionStrategy, Book, Period, fmt
from trading_core import profile_rules as rules

UP = {rules.OPEN_DRIVE_UP}
DOWN = {rules.OPEN_DRIVE_DOWN}


class OpenDrive(AuctionStrategy):
    """Open-drive continuation; rule and sources in the module docstring.

    Params: ``include_test_drive`` (bool, false), ``require_outside_value`` (bool, false),
    ``stop`` (``a_extreme`` | ``open``), ``target_multiple`` (0.1-10, 1.0).
    """

    params_schema: ClassVar[dict[str, Any]] = {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "include_test_drive": {
                "type": "boolean", "default": False,
                "description": "also trade Open Test Drive (a brief test, then the drive)"},
            "require_outside_value": {
                "type": "boolean", "default": False,
                "description": "the open must be outside prior value in the drive's direction"},
            "stop": {
                "enum": ["a_extreme", "open"], "default": "a_extreme",
                "description": "stop at period A's opposite extreme, or at the session open"},
            "target_multiple": {
                "type": "number", "minimum": 0.1, "maximum": 10, "default": 1.0,
                "description": "target = entry +/- this x period A's range"},
        },
    }

    def on_period_close(self, book: Book, period: Period) -> None:
        s, p = book.session, self.params
        if period.index != 0 or not s.full:
            return
        prof = book.profile
        up, down = set(UP), set(DOWN)
        if p["include_test_drive"]:
            up.add(rules.OPEN_TEST_DRIVE_UP)
            down.add(rules.OPEN_TEST_DRIVE_DOWN)
        if prof.open_type in up:
            side, stop = "BUY", period.low if p["stop"] == "a_extreme" else s.open
        elif prof.open_type in down:
            side, stop = "SELL", period.high if p["stop"] == "a_extreme" else s.open
        else:
            return
        if p["require_outside_value"] and prof.open_vs_prior_value != ("above" if side == "BUY" else "below"):
            return
        entry, rng = period.close, period.high - period.low
        target = entry + p["target_multiple"] * rng * (1 if side == "BUY" else -1)
        if not (min(stop, target) < entry < max(stop, target)):
            return
        s.fired.add(side)
        self.signal(book.instrument_key, side, entry, stop, target,
                    f"{prof.open_type}: open {fmt(s.open)}, period A {fmt(period.low)}\u2013"
                    f"{fmt(period.high)} closed {fmt(entry)}; continuation", period.end_ms)
