"""Rule strategies in JSON (strategy/rule.py, strategy/expressions.py) on real NSE 1-minute data:
indicators against independent computations, the trading semantics against a plain-Python
re-implementation, profile fields against the batch Market Profile path, and the safety of the
expression language (bad expressions, unknown fields, no internals, a time limit), including the
errors ``scripts/validate_strategies.py`` prints."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
from talipp.indicators import RSI

from strategy.expressions import Evaluator, ExpressionError, Program
from strategy.registry import StrategyConfigError, load_strategies
from strategy.rule import RuleStrategy
from tests.conftest import ROOT
from tests.test_strategies import KEYS, as_tuples, load_days
from tests.test_strategies_auction import batch_profiles, session
from trading_core.messages import Signal

NIFTY = KEYS["NIFTY"]


def candles(symbol: str, first: str, last: str):
    return [b.candle() for d, bars in load_days(symbol).items() if first <= d <= last for b in bars]


def values(exprs: dict[str, str], cs) -> dict[str, list]:
    """Evaluate expressions on every candle (as the rule strategy does, but on all candles)."""
    program = Program()
    for field, text in exprs.items():
        program.compile(field, text)
    ev = Evaluator(program)
    out = {f: [] for f in exprs}
    for c in cs:
        ev.update({"open": c.open, "high": c.high, "low": c.low, "close": c.close, "volume": c.volume,
                   "oi": c.oi, "ts": c.ts, "time": "", "date": ""}, (c.open, c.high, c.low, c.close, c.volume))
        for f in exprs:
            out[f].append(ev.value(f))
    return out


def same(a: list, b: list) -> bool:
    return len(a) == len(b) and all((math.isnan(x) and math.isnan(y)) if isinstance(x, float) and isinstance(y, float)
                                    and (math.isnan(x) or math.isnan(y)) else x == pytest.approx(y, rel=1e-12)
                                    for x, y in zip(a, b))


# --- indicators ---------------------------------------------------------------------------------
def test_indicators_match_independent_computations(shared_data):
    cs = candles("NIFTY", "20220601", "20220615")          # 11 days: long enough to purge history
    assert len(cs) > 4000
    got = values({"ema": "ema(close, 20)", "sma": "sma(close, 20)", "hi": "highest(high, 30)",
                  "prev": "prev(close, 3)", "atr": "atr(14)", "rsi": "rsi(close, 14)",
                  "ema_of_range": "ema(high - low, 10)", "x": "crosses_above(ema(close, 5), ema(close, 13))"}, cs)
    close = [c.close for c in cs]
    nan = float("nan")
    ema, sma = [], []
    for i in range(len(close)):                             # talipp's definitions, by hand
        sma.append(sum(close[i - 19:i + 1]) / 20 if i >= 19 else nan)
        ema.append(nan if i < 19 else sma[19] if i == 19 else 2 / 21 * close[i] + (1 - 2 / 21) * ema[-1])
    assert same(got["sma"], sma) and same(got["ema"], ema)
    assert same(got["hi"], [max(c.high for c in cs[i - 29:i + 1]) if i >= 29 else nan for i in range(len(cs))])
    assert got["prev"][3:] == close[:-3] and all(math.isnan(v) for v in got["prev"][:3])
    tr = [cs[0].high - cs[0].low] + [max(c.high - c.low, abs(c.high - p.close), abs(c.low - p.close))
                                     for p, c in zip(cs, cs[1:])]
    atr = []
    for i in range(len(tr)):
        atr.append(nan if i < 13 else sum(tr[:14]) / 14 if i == 13 else (atr[-1] * 13 + tr[i]) / 14)
    assert same(got["atr"], atr)
    rsi = RSI(14)                                          # never purged: the reference
    for x in close:
        rsi.add(x)
    assert same(got["rsi"], [nan if v is None else v for v in rsi])
    rng = [c.high - c.low for c in cs]
    e10 = []
    for i in range(len(rng)):
        e10.append(nan if i < 9 else sum(rng[:10]) / 10 if i == 9 else 2 / 11 * rng[i] + (1 - 2 / 11) * e10[-1])
    assert same(got["ema_of_range"], e10)
    e5 = [values({"a": "ema(close, 5)"}, cs)["a"], values({"b": "ema(close, 13)"}, cs)["b"]]
    crosses = [False] + [not any(math.isnan(v) for v in (a0, b0, a1, b1)) and a1 > b1 and a0 <= b0
                         for a0, b0, a1, b1 in zip(e5[0], e5[1], e5[0][1:], e5[1][1:])]
    assert got["x"] == crosses and sum(crosses) > 50


# --- trading semantics ----------------------------------------------------------------------------
RULE = {"buy": {"when": "close > sma(close, 20) + 5", "stop_loss": "close - 10", "target": "close + 20",
                "exit": "close < sma(close, 20)"},
        "sell": {"when": "close < sma(close, 20) - 5", "stop_loss": "close + 10", "target": "close - 20"},
        "first_entry": "09:45", "last_entry": "15:00", "max_signals_per_day": 3}


def reference(cs) -> list[tuple]:
    """RULE by hand: SMA(20) over every regular-session candle; edge-triggered entries when flat,
    inside 09:45-15:00 (candle close), at most 3 a day; a position ends when a later candle touches
    its stop or target or the exit holds; everything but the SMA resets each day."""
    out, closes, day = [], [], None
    for c in cs:
        minute = ((c.ts + 19_800_000) % 86_400_000) // 60_000
        if not 555 <= minute < 930:
            continue
        d = (c.ts + 19_800_000) // 86_400_000
        if d != day:
            day, pos, was, count = d, None, {"BUY": False, "SELL": False}, 0
        closes.append(c.close)
        sma = sum(closes[-20:]) / 20 if len(closes) >= 20 else float("nan")
        if pos:
            side, stop, target = pos
            if (c.low <= stop or c.high >= target or c.close < sma) if side == "BUY" else \
                    (c.high >= stop or c.low <= target):
                pos = None
        now = {"BUY": c.close > sma + 5, "SELL": c.close < sma - 5}
        edge = {s: now[s] and not was[s] for s in now}
        was = now
        if pos is None and count < 3 and 585 <= minute + 1 <= 900:
            for side in ("BUY", "SELL"):
                if edge[side]:
                    stop, target = (c.close - 10, c.close + 20) if side == "BUY" else (c.close + 10, c.close - 20)
                    pos, count = (side, stop, target), count + 1
                    out.append((side, c.ts + 60_000, c.close, stop, target))
                    break
    return out


def test_rule_strategy_matches_plain_python(shared_data):
    cs = candles("NIFTY", "20220601", "20220630")
    out: list[Signal] = []
    strat = RuleStrategy("r", [NIFTY], RULE, out.append)
    for c in cs:
        strat.on_candle(c)
    expected = reference(cs)
    assert as_tuples(out) == expected
    assert len(expected) > 40 and {s[0] for s in expected} == {"BUY", "SELL"}
    assert out[0].reason == "close < sma(close, 20) - 5 at 09:52 (close 16573.85)" and out[0].strategy == "r"
    assert len(strat.exits) >= len(out) - 22                 # positions do end (at most one open a day)


def test_profile_fields_follow_the_batch_profile(shared_data):
    """The first close above the prior day's value (batch path's prior VAH + a row) once the IB is
    complete (10:15), up to 15:00 (the default last_entry), stop the IB low, target one IB range
    up: at most one a day."""
    rule = {"buy": {"when": "close > profile.prior_vah + profile.row_size and profile.ib_complete",
                    "stop_loss": "profile.ib_low", "target": "close + profile.ib_range"},
            "max_signals_per_day": 1}
    dates = [d for d in load_days("NIFTY") if "20220801" <= d <= "20220819"]
    out: list[Signal] = []
    strat = RuleStrategy("p", [NIFTY], rule, out.append)
    for c in candles("NIFTY", "20220725", "20220819"):
        strat.on_candle(c)
    expected = []
    for d in dates:
        s = session("NIFTY", d)
        if not s or s["prior"] is None:
            continue
        final = batch_profiles("NIFTY")[d]
        top = s["prior"].vah + s["prior"].row_size
        was = False
        for b in s["bars"]:
            now = b.close > top and b.label >= 10 * 60 + 15          # the IB is complete at 10:15
            if now and not was and b.label <= 15 * 60 and final.ib_low < b.close < b.close + final.ib_range:
                expected.append(("BUY", b.close_ts, b.close, final.ib_low, b.close + final.ib_range))
                break
            was = now
    got = [s for s in as_tuples(out) if s[1] >= session("NIFTY", dates[0])["mid"]]
    assert got == expected and len(got) >= 5


def test_division_by_zero_is_nan_and_other_errors_raise(shared_data):
    cs = candles("NIFTY", "20220601", "20220601")
    program = Program()
    program.compile("f", "close / (high - high)")
    ev = Evaluator(program)
    ev.update({"open": 1.0, "high": 2.0, "low": 1.0, "close": 1.5, "volume": 0, "oi": 0.0, "ts": 0,
               "time": "09:15", "date": "2022-06-01"}, (1.0, 2.0, 1.0, 1.5, 0))
    assert math.isnan(ev.value("f")) and ev.arith_errors == 1
    bad = {"buy": {"when": "profile.open_type > 3", "stop_loss": "close - 1", "target": "close + 1"}}
    strat = RuleStrategy("b", [NIFTY], bad, lambda s: None)
    with pytest.raises(ExpressionError, match=r"^params\.buy\.when: TypeError"):
        for c in cs:
            strat.on_candle(c)


def test_time_limit():
    program = Program()
    program.compile("slow", " + ".join(["close"] * 200))
    ev = Evaluator(program, max_eval_ms=1e-6)
    ev.update({"close": 1.0}, (1.0, 1.0, 1.0, 1.0, 0))
    with pytest.raises(ExpressionError, match=r"^slow: evaluation took longer than"):
        ev.value("slow")
    ev_ok = Evaluator(program, max_eval_ms=1000)
    ev_ok.update({"close": 1.0}, (1.0, 1.0, 1.0, 1.0, 0))
    assert ev_ok.value("slow") == 200.0


# --- safety and errors ------------------------------------------------------------------------------
@pytest.mark.parametrize("expr,why", [
    ("close >", "invalid syntax"),
    ("clsoe > 1", "unknown name 'clsoe'"),
    ("profile.vahh > 1", "unknown field profile.vahh"),
    ("profile.__class__", "unknown field profile.__class__"),
    ("close.__class__", "attribute access is only allowed as profile.<field>"),
    ("(1).__class__.__bases__", "attribute access is only allowed as profile.<field>"),
    ("__import__('os').system('true')", "only the listed functions may be called"),
    ("open('/etc/passwd')", "only the listed functions may be called"),
    ("[c for c in range(10**9)]", "ListComp is not allowed"),
    ("lambda: 1", "Lambda is not allowed"),
    ("x := 1", "invalid syntax"),
    ("import os", "invalid syntax"),
    ("close if 1 else 2; 3", "invalid syntax"),
    ("2 ** close", "literal exponent"),
    ("9 ** 99", "literal exponent"),
    ("ema(close)", "ema() takes (x, n), got 1 argument(s)"),
    ("ema(close, 2.5)", "n must be a whole number"),
    ("ema(close, n=5)", "positional arguments only"),
    ("sma(close, 0)", "n=0 is outside 1..1000"),
    ("macd(close, 26, 12, 9)", "fast (26) must be below slow (12)"),
    ("ema", "ema is a function"),
    ("profile", "use profile.<field>"),
    ("'x' * 1000000 == time", "arithmetic on a string is not allowed"),
    ("'%s' % close", "arithmetic on a string is not allowed"),
    ("time == '" + "x" * 70 + "'", "string literal longer than 64 characters"),
    ("close > " + "1 + " * 600 + "1", "longer than 2000 characters"),
])
def test_bad_expressions_are_refused_with_field(expr, why):
    problems = RuleStrategy.param_problems({**RuleStrategy.param_defaults(),
                                            "buy": {"when": expr, "stop_loss": "close - 1", "target": "close + 1"}})
    assert len(problems) == 1 and problems[0].startswith("params.buy.when: ") and why in problems[0], problems


def test_validate_script_reports_every_bad_expression(tmp_path):
    path = tmp_path / "strategies.json"
    path.write_text(json.dumps({"strategies": [
        {"name": "good", "class": "rule", "instruments": [NIFTY],
         "params": {"sell": {"when": "crosses_below(ema(close, 9), ema(close, 21))", "stop_loss": "high + 5",
                             "target": "close - 2 * atr(14)"}}},
        {"name": "typo", "class": "rule", "instruments": [NIFTY],
         "params": {"buy": {"when": "close > profile.vha", "stop_loss": "close - 1", "target": "close + 1"},
                    "sell": {"when": "close < 1", "stop_loss": "close +", "target": "close - 1"}}},
        {"name": "empty", "class": "rule", "instruments": [NIFTY], "params": {"max_signals_per_day": 2}},
        {"name": "extra", "class": "rule", "instruments": [NIFTY],
         "params": {"buy": {"when": "close > 1", "stop_loss": "close - 1", "target": "close + 1", "size": "2"}}},
    ]}))
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "validate_strategies.py"), str(path)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and r.stdout == ""
    lines = r.stderr.splitlines()
    where = str(path)
    assert lines == [
        f"{where}: strategy 'typo': params.buy.when: unknown field profile.vha (known: " + lines[0].split("(known: ")[1],
        f"{where}: strategy 'typo': params.sell.stop_loss: invalid syntax at column " + lines[1].split("at column ")[1],
        f"{where}: strategy 'empty': params: a rule strategy needs \"buy\" or \"sell\" (or both)",
        f"{where}: strategy 'extra': params.buy.size: unknown field (allowed: exit, stop_loss, target, when)",
    ]
    with pytest.raises(StrategyConfigError):
        load_strategies(path)


def test_shipped_rule_example_runs(shared_data):
    [config] = [c for c in load_strategies(ROOT / "configs" / "strategies.json") if c.cls_name == "rule"]
    out: list[Signal] = []
    strat = RuleStrategy(config.name, config.instruments, config.params, out.append)
    for c in candles("NIFTY", "20220601", "20220610"):
        strat.on_candle(c)
    assert out and all(s.strategy == "ema_value_nifty" for s in out)
    per_day: dict = {}
    for s in out:
        per_day[s.ts // 86_400_000] = per_day.get(s.ts // 86_400_000, 0) + 1
    assert max(per_day.values()) <= 4
