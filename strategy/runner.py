"""Drives one strategy from events: warm-up replay, live events, and no signal given twice.

Pure (no I/O): the process wrapper ``scripts/strategy_process.py`` reads the bus and DuckDB and
calls this; tests and backtests call it directly. So the live, warm-started and backtested paths
are the same code.

Warm start (a strategy started or restarted mid-session): the runner is first fed the session's
recorded 1-minute candles (:meth:`StrategyRunner.warm_up`, ``strategy.warming`` True): the
current day's so far and, for strategies that need them, earlier days' (their signals are history
and never sent); then the live stream (:meth:`StrategyRunner.handle`). Candles not newer than the last one of their
instrument are dropped, so history and live may overlap. Signals are identified by
:func:`signal_key` ``(instrument_key, side, ts)``: one already emitted before the restart (the
``already_emitted`` keys the manager and the ``signals`` table remember) is suppressed; any other,
even one computed during warm-up (a candle that closed while the strategy was down), is emitted.
So the stream of a restarted strategy equals that of an uninterrupted one, with no gap and no
duplicate.
"""

from __future__ import annotations

import collections
from typing import Any, Callable, Iterable

from strategy.base import Strategy
from trading_core.messages import Candle, Profile, Signal, Tick

SignalKey = tuple[str, str, int]


def signal_key(sig: Signal) -> SignalKey:
    """``(instrument_key, side, ts)``: what makes a strategy's signal the same signal again."""
    return (sig.instrument_key, sig.side, int(sig.ts))


class StrategyRunner:
    """Feeds one strategy and filters its signals.

    ``make(emit)`` builds the strategy with the runner's emit callback (e.g.
    ``lambda emit: registry.build(config, emit)``); ``publish(signal)`` receives every signal to
    send; ``already_emitted``: keys (see :func:`signal_key`) of signals sent before a restart.
    Exceptions raised by the strategy's hooks propagate (the wrapper decides what to do).

    Counters (for health reports): ``signals`` published, ``suppressed`` (already emitted),
    ``late`` (published during warm-up), ``history`` (warm-up signals of earlier days, never
    sent), ``candles``, ``ticks``, ``profiles``, ``stale`` (candles
    dropped as not newer), ``market_ts`` (latest event time, epoch ms UTC).
    """

    def __init__(self, make: Callable[[Callable[[Signal], None]], Strategy],
                 publish: Callable[[Signal], None], already_emitted: Iterable[SignalKey] = ()) -> None:
        self._publish = publish
        self._already = collections.Counter(tuple(k) for k in already_emitted)
        self.strategy = make(self._on_signal)
        self._keys = frozenset(self.strategy.instruments)    # a set: a strategy may watch 1,000+ contracts
        self._last_candle: dict[str, int] = {}
        self.signals = self.suppressed = self.late = self.history = 0
        self._send_from = 0
        self.candles = self.ticks = self.profiles = self.stale = 0
        self.market_ts = 0
        self.started = False

    # --- driving ------------------------------------------------------------------------------
    def start(self) -> None:
        """Call the strategy's ``on_start`` (once)."""
        if not self.started:
            self.started = True
            self.strategy.on_start()

    def warm_up(self, candles: Iterable[Candle], send_from_ts: int = 0,
                every: Callable[[], None] | None = None, every_n: int = 64) -> int:
        """Replay recorded candles (time-ordered) with ``strategy.warming`` set. Signals they give
        with ``ts`` before ``send_from_ts`` (epoch ms; the wrapper passes the start of the current
        IST day) belong to history and are not sent (counted in ``history``); later ones are sent
        unless already emitted. ``every()`` is called each ``every_n`` candles (the wrapper sends
        heartbeats there). Returns the number of candles fed."""
        self.start()
        fed = 0
        self._send_from = send_from_ts
        self.strategy.warming = True
        try:
            for candle in candles:
                fed += self.candle(candle)
                if every is not None and fed % every_n == 0:
                    every()
        finally:
            self.strategy.warming = False
            self._send_from = 0
        return fed

    def handle(self, msg: Any) -> None:
        """One live bus message: ``Tick``, ``Candle`` or ``Profile`` (others are ignored)."""
        cls = msg.__class__                     # ticks first: nearly every message is one
        if cls is Tick:
            if msg.instrument_key in self._keys:
                self.ticks += 1
                if msg.ts > self.market_ts:
                    self.market_ts = msg.ts
                self.strategy.on_tick(msg)
        elif cls is Candle:
            self.candle(msg)
        elif cls is Profile:
            if msg.instrument_key in self._keys:
                self.profiles += 1
                self.strategy.on_profile(msg)

    def candle(self, candle: Candle) -> int:
        """Feed one closed candle unless it is not newer than its instrument's last one.
        Returns 1 if fed, else 0."""
        key = candle.instrument_key
        if key not in self._keys or not candle.final:
            return 0
        if candle.ts <= self._last_candle.get(key, -1):
            self.stale += 1
            return 0
        self._last_candle[key] = candle.ts
        self.candles += 1
        self.market_ts = max(self.market_ts, candle.ts + 60_000)
        self.strategy.on_candle(candle)
        return 1

    def last_candle_ts(self, instrument_key: str) -> int | None:
        """Open time of the last candle fed for ``instrument_key`` (``None`` if none)."""
        return self._last_candle.get(instrument_key)

    def remember(self, keys: Iterable[SignalKey]) -> None:
        """Add keys of signals already emitted (e.g. read from the ``signals`` table); a key
        given both here and to the constructor still suppresses only one signal."""
        for key in set(tuple(k) for k in keys) - set(self._already):
            self._already[key] += 1

    # --- output -------------------------------------------------------------------------------
    def _on_signal(self, sig: Signal) -> None:
        key = signal_key(sig)
        if sig.ts < self._send_from:
            self.history += 1
            return
        if self._already[key] > 0:
            self._already[key] -= 1
            self.suppressed += 1
            return
        if self.strategy.warming:
            self.late += 1
        self.signals += 1
        self._publish(sig)

    def stats(self) -> dict[str, int]:
        """The counters, for a health report."""
        return {"signals": self.signals, "suppressed": self.suppressed, "late": self.late,
                "history": self.history,
                "candles": self.candles, "ticks": self.ticks, "profiles": self.profiles,
                "stale": self.stale, "market_ts": self.market_ts}
