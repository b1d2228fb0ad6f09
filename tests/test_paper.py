"""Paper execution on recorded NSE days: every fill and every exit the engine produced is checked
against the tick stream itself (the first tick that crosses the stop, reaches the target, passes
the time limit or 15:15 IST), with the configured slippage and the PnL recomputed here."""

from __future__ import annotations

import pytest

from tests.execution_days import BANK, NIFTY, Run, day_ticks, month_files, replay_day
from trading_core import messages as m
from trading_core.paper import PaperConfig, PaperFills, PositionBook, market_price
from trading_core.risk import ist_minute

JUNE_2021 = ("2021-06-01", "2021-06-03", "2021-06-04", "2021-06-10", "2021-06-11", "2021-06-18",
             "2021-06-21", "2021-06-23", "2021-06-28", "2021-06-30")


_RUNS: dict = {}


def runs(days, **paper) -> list[tuple[list[m.Tick], Run]]:
    """The days replayed through the engine (cached: several tests read the same runs)."""
    key = (tuple(days), repr(sorted(paper.items())))
    if key not in _RUNS:
        files = sorted(month_files(2021, "JUN"))
        out = []
        for day in days:
            ticks = day_ticks(files, day)
            out.append((ticks, replay_day(ticks, paper=PaperConfig(**paper))))
        _RUNS[key] = out
    return _RUNS[key]


def path_after(ticks: list[m.Tick], key: str, ts: int) -> list[m.Tick]:
    return [t for t in ticks if t.instrument_key == key and t.ts >= ts]


def first(ticks, cond):
    return next((t for t in ticks if cond(t)), None)


def crossed_stop(side, price, stop):
    return price <= stop if side == "BUY" else price >= stop


def reached(side, price, level):
    return price >= level if side == "BUY" else price <= level


def check_entry(run: Run, ticks: list[m.Tick], slippage: dict[str, float]) -> int:
    """Every entry filled at the first tick at or after its signal, price +- slippage."""
    n = 0
    signals = {s.ts: s for s in run.signals}
    for f in run.of(m.Fill):
        if f.kind != "entry":
            continue
        decision = run.decisions()[f.signal_id]
        tick = first(path_after(ticks, f.instrument_key, decision.signal_ts), lambda t: True)
        slip = slippage[f.instrument_key]
        assert (f.ts, f.ltp) == (tick.ts, tick.ltp)
        assert f.price == pytest.approx(tick.ltp + slip if f.side == "BUY" else tick.ltp - slip)
        assert f.quantity == decision.quantity and decision.signal_ts in signals
        n += 1
    return n


def test_entries_fill_at_the_next_tick_with_slippage(shared_data):
    slip = {"NIFTY": 0.5, "BANKNIFTY": 1.25, "default": 0.1}
    n = 0
    for ticks, run in runs(JUNE_2021[:5], slippage=slip):
        n += check_entry(run, ticks, {NIFTY: 0.5, BANK: 1.25})
    assert n >= 8


def expected_exit(pos: m.Position, path: list[m.Tick]) -> tuple[str, m.Tick]:
    """The rules written out on the tick path (no time exit): the stop (the initial one, the
    entry price once half the target was made), the target, then 15:15 IST."""
    sign = 1 if pos.side == "BUY" else -1
    stop, trailed = pos.initial_stop, False
    for t in path:
        if crossed_stop(pos.side, t.ltp, stop):
            return ("breakeven_stop" if trailed else "stop"), t
        if reached(pos.side, t.ltp, pos.target):
            return "target", t
        if ist_minute(t.ts) >= 15 * 60 + 15:
            return "square_off", t
        if not trailed and (t.ltp - pos.entry_price) * sign >= 0.5 * (pos.target - pos.entry_price) * sign:
            stop, trailed = pos.entry_price, True
    raise AssertionError(f"no exit for {pos}")


def test_stop_loss_and_target_exits(shared_data):
    seen = {"stop": 0, "target": 0, "breakeven_stop": 0, "square_off": 0}
    for ticks, run in runs(JUNE_2021, time_exit_minutes=0):
        for pos in run.closed().values():
            reason, hit = expected_exit(pos, path_after(ticks, pos.instrument_key, pos.entry_ts))
            assert (pos.exit_reason, pos.exit_ts) == (reason, hit.ts), pos
            if reason == "target":
                assert pos.exit_price == pos.target           # a resting limit fills at its price
            else:
                assert pos.exit_price == pytest.approx(market_price("SELL" if pos.side == "BUY" else "BUY",
                                                                    hit.ltp, 0.5))
            sign = 1 if pos.side == "BUY" else -1
            assert pos.realised_pnl == pytest.approx((pos.exit_price - pos.entry_price) * sign * pos.quantity, abs=0.01)
            seen[reason] += 1
    assert seen["stop"] >= 2 and seen["target"] >= 2, seen


def test_trailing_stop_moves_to_break_even_at_half_the_target(shared_data):
    trailed_exits = 0
    for ticks, run in runs(JUNE_2021, time_exit_minutes=0):
        moved = {p.position_id: p for p in run.of(m.Position) if p.event == "stop_moved"}
        modified = {o.position_id: o for o in run.of(m.Order) if o.status == "modified"}
        for pos in run.closed().values():
            path = path_after(ticks, pos.instrument_key, pos.entry_ts)
            sign = 1 if pos.side == "BUY" else -1
            half = first(path, lambda t: (t.ltp - pos.entry_price) * sign >= 0.5 * (pos.target - pos.entry_price) * sign)
            stopped = first(path, lambda t: crossed_stop(pos.side, t.ltp, pos.initial_stop))
            if half is None or (stopped is not None and stopped.ts <= half.ts) or half.ts > pos.exit_ts:
                assert pos.position_id not in moved, pos
                continue
            move = moved[pos.position_id]
            assert move.ts == half.ts and move.stop_loss == pos.entry_price and move.trailed
            assert modified[pos.position_id].price == pos.entry_price      # the stop order, modified
            if pos.exit_reason == "breakeven_stop":
                back = first([t for t in path if t.ts > half.ts], lambda t: crossed_stop(pos.side, t.ltp, pos.entry_price))
                assert back.ts == pos.exit_ts
                assert pos.exit_price == pytest.approx(back.ltp - 0.5 * sign)
                trailed_exits += 1
    assert trailed_exits >= 3


def test_time_exit_after_thirty_minutes(shared_data):
    n = 0
    for ticks, run in runs(JUNE_2021[:6]):
        for pos in run.closed().values():
            if pos.exit_reason != "time":
                continue
            path = path_after(ticks, pos.instrument_key, pos.entry_ts)
            due = first(path, lambda t: t.ts >= pos.entry_ts + 30 * 60_000)
            assert due.ts == pos.exit_ts
            _, other = expected_exit(pos, path)               # no stop, target or 15:15 came first
            assert other.ts >= due.ts
            assert pos.exit_price == pytest.approx(market_price("SELL" if pos.side == "BUY" else "BUY", due.ltp, 0.5))
            n += 1
    assert n >= 4


def test_square_off_at_1515(shared_data):
    n = 0
    for ticks, run in runs(JUNE_2021, time_exit_minutes=0):
        for pos in run.closed().values():
            if pos.exit_reason != "square_off":
                continue
            tick = first(path_after(ticks, pos.instrument_key, pos.entry_ts),
                         lambda t: ist_minute(t.ts) >= 15 * 60 + 15)
            assert tick.ts == pos.exit_ts and ist_minute(pos.exit_ts) == 15 * 60 + 15
            n += 1
        assert not run.engine.book.open, "nothing stays open after the session"
    assert n >= 4


def test_a_session_that_ends_before_1515_squares_off_at_its_last_price(shared_data):
    files = sorted(month_files(2021, "JUN"))
    day1 = [t for t in day_ticks(files, "2021-06-01") if ist_minute(t.ts) < 13 * 60]   # the feed died at 13:00
    day2 = day_ticks(files, "2021-06-02")
    run = replay_day(day1, paper=PaperConfig(time_exit_minutes=0))
    open_ = list(run.engine.book.open.values())
    assert open_, "a position is open when the feed stops"
    last = {p.position_id: (p.last_ts, p.last_price) for p in open_}
    run2 = replay_day(day2[:4], engine=run.engine)
    closed = run2.closed()
    for pid, (ts, price) in last.items():
        pos = closed[pid]
        assert pos.exit_reason == "square_off" and pos.exit_ts == ts
        assert pos.exit_price == pytest.approx(market_price("SELL" if pos.side == "BUY" else "BUY", price, 0.5))


def test_unrealised_pnl_marks_follow_the_ticks(shared_data):
    n = 0
    for ticks, run in runs(JUNE_2021[:3]):
        by_ts = {(t.instrument_key, t.ts): t.ltp for t in ticks}
        for p in run.of(m.Position):
            if p.event != "mark":
                continue
            ltp = by_ts[(p.instrument_key, p.ts)]
            sign = 1 if p.side == "BUY" else -1
            assert p.last_price == ltp and p.status == "open"
            assert p.unrealised_pnl == pytest.approx((ltp - p.entry_price) * sign * p.quantity, abs=0.01)
            n += 1
    assert n > 50


def test_paper_market_rules():
    fills = PaperFills(PaperConfig(slippage=0.5))
    base = dict(signal_id="s", position_id="s", strategy="x", instrument_key=NIFTY, quantity=50,
                kind="entry", status="placed", ts=1000)
    fills.submit(m.Order(order_id="a", side="BUY", order_type="MARKET", **base))
    fills.submit(m.Order(order_id="b", side="SELL", order_type="LIMIT", price=105.0, **{**base, "kind": "target"}))
    assert fills.on_tick(NIFTY, 999, 100.0) == []                 # before the order's time
    got = fills.on_tick(NIFTY, 1000, 100.0)
    assert [(o.order_id, f.price, f.slippage) for o, f in got] == [("a", 100.5, 0.5)]
    assert fills.on_tick(NIFTY, 1001, 104.95) == []               # the limit is not reached
    [(o, f)] = fills.on_tick(NIFTY, 1002, 107.0)                  # through it: filled at the limit
    assert (o.status, f.price, f.slippage) == ("filled", 105.0, 0.0)
    with pytest.raises(ValueError, match="order type"):
        fills.submit(m.Order(order_id="c", side="BUY", order_type="SL", **base))
    for bad, name in (({"slippage": -1}, "SLIPPAGE"), ({"slippage": {"NIFTY": 1}}, "default"),
                      ({"trail_trigger": 2}, "TRAIL_TRIGGER"), ({"square_off": "3pm"}, "SQUARE_OFF"),
                      ({"time_exit_minutes": -5}, "TIME_EXIT_MINUTES")):
        with pytest.raises(ValueError, match=name):
            PositionBook(PaperConfig(**bad))
