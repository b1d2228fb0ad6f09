"""Strategies that misbehave on purpose, for the supervision tests (this module has no tests).

A strategies file names them as ``"class": "tests.test_strategy_fault_classes:RaiseOnTick"``
(the ``module:Class`` form of :func:`strategy.registry.resolve_class`); the strategy processes
import this module from the project root.
"""

from __future__ import annotations

from typing import Any, ClassVar

from strategy.base import Strategy, ist_minutes
from trading_core.messages import Candle, Tick

_AT = {"type": "string", "pattern": "^([01][0-9]|2[0-3]):[0-5][0-9]$", "default": "10:00"}


def _minutes(hhmm: str) -> int:
    h, m = hhmm.split(":")
    return int(h) * 60 + int(m)


class RaiseOnTick(Strategy):
    """Raises ``ValueError`` in ``on_tick`` on the ticks of the IST minute ``at``. Ticks are not
    replayed on warm start, so the restarted process runs on once that minute has passed."""

    params_schema: ClassVar[dict[str, Any]] = {
        "type": "object", "additionalProperties": False, "properties": {"at": _AT}}

    def on_tick(self, tick: Tick) -> None:
        if ist_minutes(tick.ts) == _minutes(self.params["at"]):
            raise ValueError(f"deliberate failure in on_tick at {self.params['at']} (tick ts {tick.ts})")


class LoopOnCandle(Strategy):
    """Never returns from ``on_candle`` for the live candle opening at IST minute ``at`` (an
    endless loop: only a heartbeat timeout can catch it). Not while warming up, so the restarted
    process gets past that candle."""

    params_schema: ClassVar[dict[str, Any]] = {
        "type": "object", "additionalProperties": False, "properties": {"at": _AT}}

    def on_candle(self, candle: Candle) -> None:
        if not self.warming and ist_minutes(candle.ts) == _minutes(self.params["at"]):
            n = 0
            while True:
                n += 1


class FailsToStart(Strategy):
    """Raises in ``on_start``, every time: a crash loop the manager must give up on."""

    def on_start(self) -> None:
        raise RuntimeError("deliberate failure in on_start")
