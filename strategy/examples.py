"""The README's example strategy: buy the first close above the previous session's high.

Run it by naming it in ``configs/strategies.json`` (no registration needed)::

    {"name": "pdh_nifty", "class": "strategy.examples:PriorHighBreakout",
     "instruments": ["NSE_INDEX|Nifty 50"], "params": {"stop_points": 30, "reward_risk": 2}}

Rule: the previous session's high is the level (the high of the candles opening 09:15-15:29 IST
of the previous trading day the strategy saw, e.g. during its warm start); the first 1-minute
close above it gives a BUY at that close, ``stop_points`` below the level, with the target
``reward_risk`` times the risk above the entry. One signal per instrument and day. A classic
breakout level (the prior day's extreme), shown here for the mechanics, not as advice.
"""

from __future__ import annotations

from strategy.base import Strategy, ist_date, ist_minutes


class PriorHighBreakout(Strategy):
    """BUY the first 1-minute close above the previous session's high; see the module doc.

    Params: ``stop_points`` (rupees below the level, > 0, default 30), ``reward_risk``
    (0.5-10, default 2).
    """

    params_schema = {
        "type": "object", "additionalProperties": False,
        "properties": {
            "stop_points": {"type": "number", "exclusiveMinimum": 0, "default": 30.0},
            "reward_risk": {"type": "number", "minimum": 0.5, "maximum": 10, "default": 2.0},
        },
    }

    def on_start(self) -> None:
        self.days = {}                       # instrument -> [date, today's high, prior high, done]

    def on_candle(self, candle) -> None:
        if not 9 * 60 + 15 <= ist_minutes(candle.ts) < 15 * 60 + 30:     # the regular session only
            return
        date = ist_date(candle.ts)
        day = self.days.get(candle.instrument_key)
        if day is None or day[0] != date:    # a new session: yesterday's high becomes the level
            day = self.days[candle.instrument_key] = [date, candle.high, day[1] if day else None, False]
        day[1] = max(day[1], candle.high)
        level, done = day[2], day[3]
        if done or level is None or candle.close <= level:
            return
        day[3] = True
        entry = candle.close
        stop = level - self.params["stop_points"]
        target = entry + self.params["reward_risk"] * (entry - stop)
        self.signal(candle.instrument_key, "BUY", entry, stop, target,
                    f"close {entry} above the prior day's high {level}", candle.ts + 60_000)
