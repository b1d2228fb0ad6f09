"""Warm start in-process (strategy/runner.py): a strategy "crashes" at some point of a real day
(NIFTY 2022-11-09, where every auction strategy fires), misses some candles while it is down,
and a new instance warm-starts from the recorded candles with the keys of the signals the first
one sent. Together they send exactly the signals of an uninterrupted run, in order, none twice,
and nothing of the earlier days replayed for context."""

from __future__ import annotations

import json

import pytest

from strategy import registry
from strategy.runner import StrategyRunner, signal_key
from tests.test_strategies import KEYS, load_days
from trading_core.messages import Candle, Signal

NIFTY = KEYS["NIFTY"]
DAY = "20221109"
PRIOR_DAYS = 3
CONFIGS = {c.name: c for c in registry.parse_strategies(json.dumps({"strategies": [
    {"name": "ib", "class": "ib_breakout", "instruments": [NIFTY]},
    {"name": "acc", "class": "ib_acceptance", "instruments": [NIFTY]},
    {"name": "eighty", "class": "eighty_percent", "instruments": [NIFTY]},
    {"name": "od", "class": "open_drive", "instruments": [NIFTY]},
    {"name": "fade", "class": "value_fade", "instruments": [NIFTY],
     "params": {"require_open_inside_value": False, "max_probe_rows": 50}},
    {"name": "rule", "class": "rule", "instruments": [NIFTY], "params": {
        "buy": {"when": "crosses_above(ema(close, 5), ema(close, 13)) and close > profile.prior_val",
                "stop_loss": "close - 3 * atr(14)", "target": "close + 3 * atr(14)"},
        "sell": {"when": "crosses_below(ema(close, 5), ema(close, 13))",
                 "stop_loss": "close + 3 * atr(14)", "target": "close - 3 * atr(14)"},
        "max_signals_per_day": 50}},
]}))}


def day_data() -> tuple[list[Candle], list[Candle], int]:
    dates = [d for d in load_days("NIFTY") if d <= DAY][-(PRIOR_DAYS + 1):]
    prior = [b.candle() for d in dates[:-1] for b in load_days("NIFTY")[d]]
    today = [b.candle() for b in load_days("NIFTY")[DAY]]
    return prior, today, today[0].ts - (today[0].ts + 19_800_000) % 86_400_000


def runner(name: str, sent: list, already=()) -> StrategyRunner:
    return StrategyRunner(lambda emit: registry.build(CONFIGS[name], emit), sent.append, already)


@pytest.fixture(scope="module")
def uninterrupted(shared_data) -> dict[str, list[Signal]]:
    prior, today, day_start = day_data()
    out = {}
    for name in CONFIGS:
        sent: list[Signal] = []
        r = runner(name, sent)
        r.warm_up(prior, send_from_ts=day_start)
        for c in today:
            r.handle(c)
        if name == "rule":                    # it trades every day: the earlier days' were held back
            assert r.history > 5
        out[name] = sent
    return out


def test_every_strategy_trades_that_day(uninterrupted):
    assert all(uninterrupted.values()), {n: len(v) for n, v in uninterrupted.items()}
    assert all(s.ts >= day_data()[2] for v in uninterrupted.values() for s in v)
    assert len(uninterrupted["rule"]) >= 5


@pytest.mark.parametrize("crash_at,down", [(20, 0), (150, 30), (250, 3)])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_restart_equals_uninterrupted(uninterrupted, name, crash_at, down):
    prior, today, day_start = day_data()
    first: list[Signal] = []
    r1 = runner(name, first)
    r1.warm_up(prior, send_from_ts=day_start)
    for c in today[:crash_at]:
        r1.handle(c)
    # the new process: the manager hands over the keys it saw; the DB holds what was recorded
    # until the restart (the candles of the downtime too); live resumes with an overlap
    second: list[Signal] = []
    r2 = runner(name, second, [signal_key(s) for s in first])
    r2.warm_up(prior + today[:crash_at + down], send_from_ts=day_start)
    for c in today[max(0, crash_at - 2):]:
        r2.handle(c)
    assert first + second == uninterrupted[name]
    assert r2.suppressed == len(first) and r2.stale == min(crash_at + down, len(today)) - max(0, crash_at - 2)
    assert r2.late == len([s for s in uninterrupted[name]
                           if today[crash_at - 1].ts + 60_000 <= s.ts <= today[min(crash_at + down, len(today)) - 1].ts + 60_000
                           and s not in first])


def test_suppression_counts_each_key_once():
    sent: list[Signal] = []
    sig = Signal(strategy="x", instrument_key=NIFTY, side="BUY", entry=100.0, stop_loss=99.0, target=102.0,
                 reason="r", ts=1_700_000_000_000)

    class Twice(registry.STRATEGY_CLASSES["ib_breakout"]):
        def on_candle(self, candle):
            self.signal(NIFTY, "BUY", 100.0, 99.0, 102.0, "r", sig.ts)

    r = StrategyRunner(lambda emit: Twice("x", [NIFTY], {}, emit), sent.append, [signal_key(sig)])
    r.remember([signal_key(sig)])                                   # also in the DB: still one
    c = Candle(instrument_key=NIFTY, interval="1m", ts=sig.ts - 60_000, open=1, high=1, low=1, close=1)
    r.handle(c)
    r.handle(Candle(**{**{f: getattr(c, f) for f in c.__struct_fields__}, "ts": c.ts + 60_000}))
    assert sent == [sig] and r.suppressed == 1 and r.signals == 1
    r.handle(c)                                                     # not newer: dropped
    r.handle(Candle(**{**{f: getattr(c, f) for f in c.__struct_fields__}, "instrument_key": "NSE_INDEX|Nifty Bank",
                       "ts": c.ts + 120_000}))                      # not ours
    assert r.stale == 1 and r.candles == 2
    r.warm_up([Candle(**{**{f: getattr(c, f) for f in c.__struct_fields__}, "ts": c.ts + 180_000})],
              send_from_ts=sig.ts + 1)
    assert r.history == 1 and len(sent) == 1 and not r.strategy.warming


def test_hook_exceptions_propagate():
    class Boom(registry.STRATEGY_CLASSES["ib_breakout"]):
        def on_candle(self, candle):
            raise ZeroDivisionError("bug")

    r = StrategyRunner(lambda emit: Boom("x", [NIFTY], {}, emit), lambda s: None)
    with pytest.raises(ZeroDivisionError):
        r.warm_up([Candle(instrument_key=NIFTY, interval="1m", ts=0, open=1, high=1, low=1, close=1)])
    assert r.strategy.warming is False
